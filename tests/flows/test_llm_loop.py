"""The quality loop with the llm judge against a flaky provider: cached, costed, complete."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from tunix_rt.flows.quality_loop import quality_loop
from tests.factories import correctness, make_run
from tests.fakes.openai_server import Reply, fake_openai
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Evaluation, JudgeCacheEntry, Verdict

pytestmark = pytest.mark.flows
N = 40


@pytest.fixture(autouse=True)
def _prefect(prefect_api_url: str) -> None:
    """Every test here talks to the session's Prefect server."""


def flaky_grader(request: dict, attempt: int) -> Reply:
    """Grades by whether the answer matches; every 7th item fails once with a 429 or 500,
    and item 13 always gets a reply that is not JSON."""
    prompt = request["messages"][-1]["content"]
    if "q00013" in prompt or "what is 13?" in prompt:
        return Reply.text("I think it is probably fine")
    if attempt == 1 and ("7?" in prompt):
        return Reply.http(429, retry_after=0) if "17?" in prompt else Reply.http(500)
    right = any(f"<answer>{i}</answer>" in prompt and f"what is {i}?" in prompt
                for i in range(N))
    return Reply.json(1.0 if right else 0.0, "matches" if right else "wrong")


def test_an_llm_evaluation_survives_a_flaky_provider_and_is_paid_for_once(
        engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    run_id = make_run(engine, tmp_path, "llm", correctness(N, 0.6, seed=9))
    with fake_openai(flaky_grader) as provider:
        monkeypatch.setenv("TUNIX_RT_LLM_BASE_URL", provider.base_url)
        monkeypatch.setenv("TUNIX_RT_LLM_MODEL", "gemma-3-27b-it")
        first = quality_loop(run_id, judges=["llm"])["judges"]["llm"]["evaluation"]
        calls_after_first = len(provider.requests)
        again = quality_loop(run_id, judges=["llm"], force=True)["judges"]["llm"]["evaluation"]

    assert first["n_items"] == N and first["n_unscored"] == 1  # the unparseable reply
    assert first["cost"]["calls"] == calls_after_first > N  # retries were paid for
    assert first["cost"]["retries"] >= 1
    assert again["cost"]["calls"] == 1  # only the unscored item is asked again
    assert again["cost"]["cache_hits"] == N - 1
    assert again["score"] == first["score"]
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(JudgeCacheEntry)) == N - 1
        assert session.scalar(select(func.count()).select_from(Evaluation)) == 1
        reasons = list(session.scalars(select(Verdict.rationale).where(Verdict.score.is_(None))))
    assert len(reasons) == 1 and "not JSON" in reasons[0]


def test_without_a_provider_the_llm_judge_fails_clearly(engine, tmp_path: Path,
                                                        monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("TUNIX_RT_LLM_BASE_URL", raising=False)
    run_id = make_run(engine, tmp_path, "llm", [True] * 3)
    state = quality_loop(run_id, judges=["llm"], return_state=True)
    with pytest.raises(Exception, match="TUNIX_RT_LLM_BASE_URL"):
        state.result()


def moody_grader(request: dict, attempt: int) -> Reply:
    """A grader that is sure of most items and flips a coin (its seed) on some."""
    prompt = request["messages"][-1]["content"]
    unsure = any(f"what is {i}?" in prompt for i in range(0, N, 4))
    if unsure:
        return Reply.json(float(request.get("seed", 0) % 2), "hmm")
    return Reply.json(1.0, "sure")


def test_repeat_stores_the_agreement_rate(engine, tmp_path: Path,  # noqa: ANN001
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = make_run(engine, tmp_path, "moody", [True] * N)
    with fake_openai(moody_grader) as provider:
        monkeypatch.setenv("TUNIX_RT_LLM_BASE_URL", provider.base_url)
        monkeypatch.setenv("TUNIX_RT_LLM_MODEL", "m")
        ev = quality_loop(run_id, judges=["llm"], repeat=3)["judges"]["llm"]["evaluation"]
        seeds = {r.get("seed") for r in provider.requests}

    assert seeds == {0, 1, 2}
    # Items 0, 4, 8 ... (a quarter) flip with the seed; the rest always agree.
    assert ev["agreement_rate"] == pytest.approx(0.75, abs=0.05)
    assert ev["cost"]["repeat_calls"] == 2 * N  # a sample of up to 50 items: all 40, twice
    with session_scope(engine) as session:
        assert session.scalar(select(Evaluation.agreement_repeats)) == 3


def test_a_second_run_after_a_flaky_first_makes_zero_provider_calls(
        engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    def transient_only(request: dict, attempt: int) -> Reply:
        return Reply.http(503, retry_after=0) if attempt == 1 else Reply.json(1.0, "fine")

    run_id = make_run(engine, tmp_path, "flaky", [True] * N)
    with fake_openai(transient_only) as provider:
        monkeypatch.setenv("TUNIX_RT_LLM_BASE_URL", provider.base_url)
        monkeypatch.setenv("TUNIX_RT_LLM_MODEL", "m")
        first = quality_loop(run_id, judges=["llm"])["judges"]["llm"]["evaluation"]
        paid = len(provider.requests)
        again = quality_loop(run_id, judges=["llm"], force=True)["judges"]["llm"]["evaluation"]

    assert first["n_unscored"] == 0 and paid == 2 * N  # every item retried once
    assert again["cost"]["calls"] == 0 and again["cost"]["cache_hits"] == N
    assert len(provider.requests) == paid
