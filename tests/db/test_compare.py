"""The gate's item-level evidence (tunix_rt.quality.compare) against a brute-force pairing.

Random verdicts on both sides (right, wrong, fractional, unscored, a passed flag left
NULL), items the candidate lacks and items only it has: the SQL counts must equal
the gate's own pairing done in Python, and paging must return every item once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, insert

from tunix_rt.errors import InvalidInputError, NotFoundError
from tunix_rt.quality import compare as cmp
from tunix_rt.quality.datasets import EvalItem, register_dataset
from tunix_rt.quality.evaluation import item_outcomes
from tunix_rt.quality.gating import gate_run, set_baseline
from tunix_rt.quality.stats import GatePolicy, decide_gate
from tunix_rt.store.cursor import InvalidCursorError, encode_cursor
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Evaluation, Verdict, utcnow
from tunix_rt.store.runs import register_run

JUDGE = "exact_match"
N = 240


@dataclass
class Pair:
    candidate: str
    baseline: str
    cand_ev: int
    base_ev: int
    dataset_id: int
    expected: dict[str, str]  # item id -> outcome, by brute force
    cand_rows: dict[str, dict]
    base_rows: dict[str, dict]


def _verdict(rng: random.Random, item_id: str) -> dict:
    kind = rng.random()
    if kind < 0.08:
        return {"item_id": item_id, "score": None, "passed": None, "rationale": "unscored: 503"}
    if kind < 0.25:  # fractional (an llm grade), passed by the judge's own rule or NULL
        score = rng.choice([0.2, 0.5, 0.7, 0.49])
        passed = rng.choice([score >= 0.5, None])
        return {"item_id": item_id, "score": score, "passed": passed, "rationale": f"{score}"}
    right = rng.random() < 0.55
    return {"item_id": item_id, "score": 1.0 if right else 0.0, "passed": right,
            "rationale": "42 == 42" if right else "41 != 42",
            "response": rng.choice([f"<answer>{item_id}</answer>", None])}


def _right(row: dict | None) -> bool:
    if row is None or row["score"] is None:
        return False
    return row["passed"] if row["passed"] is not None else row["score"] >= 0.5


def _brute_force(cand: dict[str, dict], base: dict[str, dict]) -> dict[str, str]:
    """The gate's pairing (stats.decide_gate), in plain Python, one item at a time."""
    out = {}
    for item_id, b in base.items():
        c = cand.get(item_id)
        if b["score"] is None or (c is not None and c["score"] is None):
            out[item_id] = "excluded"
            continue
        out[item_id] = {(True, True): "both_right", (True, False): "only_candidate",
                        (False, True): "only_baseline",
                        (False, False): "both_wrong"}[(_right(c), _right(b))]
    return out


def _evaluation(session, run_id: str, rows: list[dict], dataset_id: int) -> int:  # noqa: ANN001
    ev = Evaluation(run_id=run_id, judge=JUDGE, judge_version="2", status="completed",
                    n_items=len(rows), dataset_id=dataset_id, finished_at=utcnow())
    session.add(ev)
    session.flush()
    session.execute(insert(Verdict), [{"evaluation_id": ev.id, "response": None, **r}
                                      for r in rows])
    return ev.id


@pytest.fixture
def pair(engine: Engine) -> Pair:
    rng = random.Random(5)
    ids = [f"it-{i:04d}" for i in range(N)]
    base = {i: _verdict(rng, i) for i in ids}
    # The candidate lacks 20 of the baseline's items and has 5 of its own.
    cand = {i: _verdict(rng, i) for i in ids if rng.random() > 20 / N}
    cand.update({f"zz-{i}": _verdict(rng, f"zz-{i}") for i in range(5)})
    with session_scope(engine) as session:
        ds = register_dataset(session, "arith", [EvalItem(i, f"what is {i}?", f"ref {i}")
                                                 for i in ids]).dataset.id
        runs = [register_run(session, name=n, dataset="arith", model="m",
                             predictions_uri=f"file:///{n}.jsonl").id for n in ("cand", "base")]
        cand_ev = _evaluation(session, runs[0], list(cand.values()), ds)
        base_ev = _evaluation(session, runs[1], list(base.values()), ds)
        set_baseline(session, runs[1], JUDGE)
    return Pair(runs[0], runs[1], cand_ev, base_ev, ds, _brute_force(cand, base), cand, base)


def _pages(engine: Engine, pair: Pair, outcome: str, limit: int) -> list[cmp.ItemDiff]:
    """Every page of ``outcome``, following next_cursor (the first page through compare)."""
    with session_scope(engine) as session:
        first = cmp.compare(session, pair.candidate, judge=JUDGE, outcome=outcome, limit=limit)
        seen, cursor = list(first.items), first.next_cursor
        while cursor is not None:
            items, cursor = cmp.outcome_page(session, pair.cand_ev, pair.base_ev,
                                             pair.dataset_id, outcome, limit=limit,
                                             cursor=cursor)
            assert 0 < len(items) <= limit
            seen += items
    return seen


def test_counts_equal_the_brute_force_pairing_and_the_gate(engine: Engine, pair: Pair) -> None:
    expected = {k: 0 for k in (*cmp.CELLS, "excluded")}
    for outcome in pair.expected.values():
        expected[outcome] += 1
    # Every class occurs, so the comparison below can tell them apart.
    assert all(expected.values()), expected
    with session_scope(engine) as session:
        result = cmp.compare(session, pair.candidate, judge=JUDGE)
        gate = decide_gate(item_outcomes(session, pair.cand_ev),
                           item_outcomes(session, pair.base_ev), GatePolicy(max_unscored=1.0))
    assert result.counts == expected
    assert result.baseline_run_id == pair.baseline and result.baseline_from == "board"
    assert result.n_items == N and result.n_excluded == expected["excluded"]
    assert (result.n_paired, result.n_excluded) == (gate.n_paired, gate.n_excluded)
    assert result.incomparable is None and result.dataset_version == 1


def test_paging_returns_each_item_once_with_both_verdicts(engine: Engine, pair: Pair) -> None:
    for outcome, wanted, limit in (("disagree", {"only_candidate", "only_baseline"}, 7),
                                   ("all", None, 50), ("excluded", {"excluded"}, 7)):
        items = _pages(engine, pair, outcome, limit)
        ids = [i.item_id for i in items]
        assert len(ids) == len(set(ids))
        assert set(ids) == {k for k, v in pair.expected.items() if wanted is None or v in wanted}
        assert all(i.outcome == pair.expected[i.item_id] for i in items)
    for item in _pages(engine, pair, "all", cmp.MAX_PAGE):
        base, cand = pair.base_rows[item.item_id], pair.cand_rows.get(item.item_id)
        assert item.prompt == f"what is {item.item_id}?" and item.reference == f"ref {item.item_id}"
        assert (item.baseline.score, item.baseline.rationale) == (base["score"], base["rationale"])
        assert item.baseline.response == base.get("response")
        if cand is None:  # lacking in the candidate: a wrong answer, said so
            assert not item.candidate.recorded and item.candidate.score == 0.0
            assert item.outcome in ("only_baseline", "both_wrong", "excluded")
            assert "counts as a wrong answer" in item.candidate.rationale
        else:
            assert item.candidate.recorded and item.candidate.score == cand["score"]
            assert item.candidate.passed == cand["passed"]


def test_the_default_baseline_is_the_one_the_gate_used(engine: Engine, pair: Pair) -> None:
    with session_scope(engine) as session:
        gate_run(session, pair.candidate, JUDGE, GatePolicy(max_unscored=1.0))
        other = register_run(session, name="other", dataset="arith", model="m",
                             predictions_uri="file:///other.jsonl").id
        _evaluation(session, other, list(pair.base_rows.values()), None)
        set_baseline(session, other, JUDGE)  # the board moved on since the gate
    with session_scope(engine) as session:
        result = cmp.compare(session, pair.candidate)  # the judge of its latest gate
        assert (result.judge, result.baseline_run_id, result.baseline_from) == (
            JUDGE, pair.baseline, "gate")
        asked = cmp.compare(session, pair.candidate, baseline=other, outcome="only_baseline")
        assert asked.baseline_run_id == other and asked.baseline_from == "request"
        assert {i.outcome for i in asked.items} == {"only_baseline"}


@pytest.mark.parametrize("cursor", ["garbage!", encode_cursor(3, "it-0001"), encode_cursor(7)])
def test_a_cursor_not_made_here_is_refused(engine: Engine, pair: Pair, cursor: str) -> None:
    with session_scope(engine) as session, pytest.raises(InvalidCursorError) as err:
        cmp.compare(session, pair.candidate, judge=JUDGE, cursor=cursor)
    assert err.value.field == "cursor"


def test_what_cannot_be_compared_says_why(engine: Engine, pair: Pair) -> None:
    with session_scope(engine) as session:
        with pytest.raises(InvalidInputError, match="outcome 'maybe' is not one of"):
            cmp.compare(session, pair.candidate, judge=JUDGE, outcome="maybe")
        with pytest.raises(NotFoundError, match="no completed evaluation by judge 'format'"):
            cmp.compare(session, pair.candidate, judge="format")
        with pytest.raises(NotFoundError, match="no run"):
            cmp.compare(session, pair.candidate, judge=JUDGE, baseline="nope")
        lone = register_run(session, name="lone", dataset="other-set", model="m",
                            predictions_uri="file:///lone.jsonl").id
        _evaluation(session, lone, list(pair.base_rows.values()), None)
    with session_scope(engine) as session, pytest.raises(NotFoundError, match="no baseline"):
        cmp.compare(session, lone, judge=JUDGE)
