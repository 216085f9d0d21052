"""Judges are what they say, with the loop's database: a composite's paid member is cached
and costed, and self-consistency is reported only where it was measured."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select

from tests.fakes.openai_server import Reply, fake_openai
from tunix_rt.judges import Item, ScoringContext
from tunix_rt.judges.composite import register_composites
from tunix_rt.judges.registry import unregister_judge
from tunix_rt.quality.judging import build_judge, self_consistency
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import JudgeCacheEntry

CONTEXT = ScoringContext(run_id="run-1", dataset="arith", model="m")
N = 12


def _items() -> list[Item]:
    """N items, every third answered wrong, one with an empty response."""
    items = [Item(id=f"q{i:03d}", prompt=f"what is {i}?",
                  response=f"<reasoning>r</reasoning><answer>{i if i % 3 else i + 1}</answer>",
                  reference=str(i)) for i in range(N)]
    items[5] = Item(id="q005", prompt="what is 5?", response="", reference="5")
    return items


def grader(request: dict, attempt: int) -> Reply:
    """Passes an item when its answer matches its question."""
    prompt = request["messages"][-1]["content"]
    right = any(f"what is {i}?" in prompt and f"<answer>{i}</answer>" in prompt for i in range(N))
    return Reply.json(1.0 if right else 0.0, "matches" if right else "wrong")


def moody_grader(request: dict, attempt: int) -> Reply:
    """Sure of most items; on items 0, 4 and 8 its verdict follows its seed."""
    prompt = request["messages"][-1]["content"]
    if any(f"what is {i}?" in prompt for i in (0, 4, 8)):
        return Reply.json(float(request.get("seed", 0) % 2), "hmm")
    return grader(request, attempt)


@pytest.fixture
def graded(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A registered majority of exact_match, format and llm."""
    [name] = register_composites({"graded_db": {"type": "majority",
                                                "judges": ["exact_match", "format", "llm"]}})
    yield name
    unregister_judge(name)


def _point_at(monkeypatch: pytest.MonkeyPatch, base_url: str) -> None:
    monkeypatch.setenv("TUNIX_RT_LLM_BASE_URL", base_url)
    monkeypatch.setenv("TUNIX_RT_LLM_MODEL", "judge-model")


def test_a_composites_llm_member_is_paid_for_once_and_its_cost_recorded(
        engine: Engine, graded: str, monkeypatch: pytest.MonkeyPatch) -> None:
    items = _items()
    with fake_openai(grader) as provider:
        _point_at(monkeypatch, provider.base_url)
        first_judge = build_judge(graded, engine)
        first = first_judge.score(items, CONTEXT)
        first_cost = first_judge.ledger.as_dict()
        paid = provider.calls
        again_judge = build_judge(graded, engine)  # a new judge: only the database remembers
        again = again_judge.score(items, CONTEXT)
        again_cost = again_judge.ledger.as_dict()

    # The empty response is wrong without a call; every other item is asked once.
    assert paid == N - 1 == first_cost["calls"]
    assert first_cost["cache_hits"] == 0 and first_cost["tokens_in"] > 0
    assert provider.calls == paid  # the second scoring made no provider call
    assert again_cost["calls"] == 0 and again_cost["cache_hits"] == N - 1
    assert again == first
    by_id = {v.item_id: v for v in first}
    assert (by_id["q005"].score, by_id["q005"].passed) == (0.0, False)  # 0 of 3 members passed
    assert by_id["q005"].raw == {"exact_match": 0.0, "format": 0.0, "llm": 0.0}
    assert by_id["q001"].passed and not by_id["q003"].passed
    with session_scope(engine) as session:
        rows = session.execute(select(JudgeCacheEntry.judge, JudgeCacheEntry.judge_version)).all()
    assert len(rows) == N - 1 and set(rows) == {("llm", "1.1")}  # under the member's own name


def test_a_deterministic_judge_has_no_self_consistency(engine: Engine) -> None:
    items = _items()
    judge = build_judge("exact_match", engine)
    verdicts = judge.score(items, CONTEXT)
    assert self_consistency(judge, items, verdicts, CONTEXT, repeat=3) == (None, 0)


def test_a_composite_without_a_sampling_member_has_no_self_consistency(engine: Engine) -> None:
    [name] = register_composites({"plain_db": {"type": "weighted",
                                               "judges": {"exact_match": 1, "format": 1}}})
    try:
        judge = build_judge(name, engine)
        items = _items()
        verdicts = judge.score(items, CONTEXT)
        assert getattr(judge, "ledger", None) is None  # and no cost to record
    finally:
        unregister_judge(name)
    assert self_consistency(judge, items, verdicts, CONTEXT, repeat=3) == (None, 0)


def test_the_llm_judges_self_consistency_is_measured(engine: Engine,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    items = _items()
    with fake_openai(moody_grader) as provider:
        _point_at(monkeypatch, provider.base_url)
        judge = build_judge("llm", engine)
        verdicts = judge.score(items, CONTEXT)
        rate, calls = self_consistency(judge, items, verdicts, CONTEXT, repeat=3)
        seeds = sorted({request["seed"] for request in provider.requests})

    # The sample is the N - 1 scored items with a response, graded twice more with
    # seeds 1 and 2; items 0, 4 and 8 flip with the seed, the other 8 always agree.
    assert seeds == [0, 1, 2]
    assert calls == 2 * (N - 1) == provider.calls - (N - 1)
    assert rate == pytest.approx(8 / 11)


def test_a_composites_self_consistency_is_measured_through_its_members_variants(
        engine: Engine, graded: str, monkeypatch: pytest.MonkeyPatch) -> None:
    items = _items()
    with fake_openai(moody_grader) as provider:
        _point_at(monkeypatch, provider.base_url)
        judge = build_judge(graded, engine)
        verdicts = judge.score(items, CONTEXT)
        rate, calls = self_consistency(judge, items, verdicts, CONTEXT, repeat=3)

    assert calls == 2 * (N - 1)  # only the llm member is asked again
    # Items 4 and 8 are right and well-formed: two votes of three whatever the llm says.
    # Item 0 is answered wrong, so the llm's vote decides it, and it flips.
    assert rate == pytest.approx(10 / 11)
