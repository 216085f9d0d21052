"""Baselines and the gate: decisions, their exit codes, one row per input, promotion rules."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, select

from tests.db.support import JUDGE, count, evaluate, evaluated_run
from tests.factories import correctness, make_run, write_predictions
from tunix_rt.store.db import session_scope
from tunix_rt.errors import InvalidInputError, NotFoundError, RunNotEvaluableError
from tunix_rt.quality.evaluation import store_failed_evaluation
from tunix_rt.quality.gating import (GateReport, get_baseline, gate_run, latest_gate,
                             promote_if_allowed, resolve_gate_judge, set_baseline)
from tunix_rt.store.models import Baseline, BaselinePromotion, GateResult, RunStatus
from tunix_rt.quality.stats import GatePolicy

N = 200
BASE = correctness(N, 0.6, seed=11)
_U = np.random.default_rng(12).random(N)
# Correlated with the baseline, as two checkpoints of one model are: the better run
# keeps every right answer and fixes most wrong ones; the worse one loses half.
BETTER = [b or u < 0.75 for b, u in zip(BASE, _U)]
WORSE = [b and u < 0.5 for b, u in zip(BASE, _U)]
POLICY = GatePolicy()
AUTO = GatePolicy(auto_promote=True)


def _slightly_worse(flips: int) -> list[bool]:
    """The baseline with its first ``flips`` right answers made wrong."""
    out, left = list(BASE), flips
    for i, ok in enumerate(out):
        if ok and left:
            out[i], left = False, left - 1
    return out


def _gate(engine: Engine, run_id: str, policy: GatePolicy = POLICY) -> GateReport:
    with session_scope(engine) as session:
        return gate_run(session, run_id, JUDGE, policy)


def _promote(engine: Engine, report: GateReport, policy: GatePolicy = AUTO) -> str | None:
    with session_scope(engine) as session:
        return promote_if_allowed(session, report, policy)


def _baseline_id(engine: Engine, dataset: str = "arith") -> str | None:
    with session_scope(engine) as session:
        info = get_baseline(session, dataset, JUDGE)
    return info.run_id if info else None


def _set_baseline(engine: Engine, run_id: str, **kwargs: str):  # noqa: ANN202
    with session_scope(engine) as session:
        return set_baseline(session, run_id, JUDGE, **kwargs)


@pytest.fixture
def base(engine: Engine, tmp_path: Path) -> str:
    run_id = evaluated_run(engine, tmp_path, "base", BASE)
    _set_baseline(engine, run_id)
    return run_id


def test_sanity_of_the_constructed_runs() -> None:
    assert 0.5 < np.mean(BASE) < 0.7 and np.mean(BETTER) > 0.85 and np.mean(WORSE) < 0.4


def test_no_baseline(engine: Engine, tmp_path: Path) -> None:
    run_id = evaluated_run(engine, tmp_path, "first", BASE)
    report = _gate(engine, run_id)
    assert report.decision == "no_baseline" and report.exit_code == 2
    assert report.baseline_run_id is None and report.n_paired == 0
    assert report.delta is None and report.ci_low is None
    assert "no baseline" in report.reason
    assert set(report.to_dict()) >= {"decision", "delta", "ci_low", "ci_high", "n_paired",
                                     "baseline_run_id"}
    with session_scope(engine) as session:
        [row] = session.scalars(select(GateResult)).all()
        assert (row.run_id, row.baseline_key, row.decision) == (run_id, "", "no_baseline")


def test_set_baseline_records_history(engine: Engine, tmp_path: Path) -> None:
    first = evaluated_run(engine, tmp_path, "first", BASE)
    second = evaluated_run(engine, tmp_path, "second", BETTER)
    info = _set_baseline(engine, first, reason="initial")
    assert (info.run_id, info.run_name, info.dataset, info.judge) == (first, "first", "arith",
                                                                      JUDGE)
    assert [(h["run_id"], h["previous_run_id"], h["source"], h["reason"])
            for h in info.history] == [(first, None, "manual", "initial")]

    info = _set_baseline(engine, second, source="auto", reason="better")
    assert info.run_id == second
    assert [(h["run_id"], h["previous_run_id"], h["source"]) for h in info.history] == [
        (second, first, "auto"), (first, None, "manual")]

    # Setting the current baseline again changes nothing and adds no history.
    info = _set_baseline(engine, second)
    assert len(info.history) == 2
    assert count(engine, Baseline) == 1 and count(engine, BaselinePromotion) == 2
    # Another dataset keeps its own baseline.
    other = evaluated_run(engine, tmp_path, "other", BASE, dataset="other")
    _set_baseline(engine, other)
    assert _baseline_id(engine) == second and _baseline_id(engine, "other") == other


def test_set_baseline_needs_a_completed_evaluation(engine: Engine, tmp_path: Path) -> None:
    never = make_run(engine, tmp_path, "never", BASE)
    failed = make_run(engine, tmp_path, "failed-eval", BASE)
    with session_scope(engine) as session:
        store_failed_evaluation(session, failed, JUDGE, "bad file")
    for run_id in (never, failed):
        with pytest.raises(NotFoundError) as excinfo:
            _set_baseline(engine, run_id)
        assert f"`tunix-rt evaluate {run_id} --judge {JUDGE}`" in str(excinfo.value)
    pending = make_run(engine, tmp_path, "pending", BASE, status=RunStatus.pending)
    with pytest.raises(RunNotEvaluableError, match="pending"):
        _set_baseline(engine, pending)
    with pytest.raises(NotFoundError, match="no run"):
        _set_baseline(engine, "missing")
    assert count(engine, Baseline) == 0 and count(engine, BaselinePromotion) == 0


def test_clearly_better_run_passes(engine: Engine, tmp_path: Path, base: str) -> None:
    cand = evaluated_run(engine, tmp_path, "better", BETTER)
    report = _gate(engine, cand)
    assert report.decision == "pass" and report.exit_code == 0
    assert report.baseline_run_id == base and report.n_paired == N
    assert report.delta == pytest.approx((sum(BETTER) - sum(BASE)) / N)
    assert 0 < report.ci_low <= report.delta <= report.ci_high
    assert report.policy == POLICY.model_dump(mode="json")


def test_clearly_worse_run_fails(engine: Engine, tmp_path: Path, base: str) -> None:
    cand = evaluated_run(engine, tmp_path, "worse", WORSE)
    report = _gate(engine, cand)
    assert report.decision == "fail" and report.exit_code == 1
    assert report.delta == pytest.approx((sum(WORSE) - sum(BASE)) / N)
    assert report.ci_high < -POLICY.margin
    assert "lies below" in report.reason


def test_too_few_paired_items_is_inconclusive(engine: Engine, tmp_path: Path,
                                              base: str) -> None:
    cand = evaluated_run(engine, tmp_path, "better", BETTER)
    report = _gate(engine, cand, GatePolicy(min_items=N + 1))
    assert report.decision == "inconclusive" and report.exit_code == 2
    assert report.n_paired == N
    assert f"only {N} paired items; the policy needs at least {N + 1}" in report.reason

    # A run of other items answers none of the dataset's: each item it lacks is a
    # wrong answer, so it is compared on the whole set and fails; it is never let off
    # as "too few paired items".
    elsewhere = make_run(engine, tmp_path, "elsewhere", [], predictions=write_predictions(
        tmp_path / "elsewhere.jsonl", BETTER, prefix="z"))
    summary = evaluate(engine, elsewhere)
    assert (summary.score, summary.n_missing, summary.n_extra) == (0.0, N, N)
    report = _gate(engine, elsewhere)
    assert (report.decision, report.n_paired, report.n_excluded) == ("fail", N, 0)
    assert report.delta == pytest.approx(-sum(BASE) / N)


def test_gating_twice_with_one_policy_keeps_one_row(engine: Engine, tmp_path: Path,
                                                    base: str) -> None:
    cand = evaluated_run(engine, tmp_path, "better", BETTER)
    first = _gate(engine, cand)
    second = _gate(engine, cand)
    assert count(engine, GateResult, GateResult.run_id == cand) == 1
    assert (second.decision, second.delta, second.ci_low) == (first.decision, first.delta,
                                                              first.ci_low)
    # The one row was updated (its time moved on), not merely read back.
    assert datetime.fromisoformat(second.created_at) > datetime.fromisoformat(first.created_at)
    # auto_promote does not change the decision, so it is the same policy for the key.
    _gate(engine, cand, GatePolicy(auto_promote=True))
    assert count(engine, GateResult, GateResult.run_id == cand) == 1

    # A different policy is a different question: a second row.
    strict = _gate(engine, cand, GatePolicy(require_improvement=True))
    assert strict.decision == "pass"
    assert count(engine, GateResult, GateResult.run_id == cand) == 2
    _gate(engine, cand, GatePolicy(require_improvement=True))
    assert count(engine, GateResult, GateResult.run_id == cand) == 2

    # And a new baseline is a different comparison: a third row.
    other = evaluated_run(engine, tmp_path, "other-base", WORSE)
    _set_baseline(engine, other)
    report = _gate(engine, cand)
    assert report.baseline_run_id == other
    assert count(engine, GateResult, GateResult.run_id == cand) == 3


def test_gating_the_auto_promoted_baseline_returns_its_earlier_gate(
        engine: Engine, tmp_path: Path, base: str) -> None:
    cand = evaluated_run(engine, tmp_path, "better", BETTER)
    report = _gate(engine, cand, AUTO)
    assert report.decision == "pass"
    assert _promote(engine, report) is not None
    assert _baseline_id(engine) == cand

    # The loop run again for the same run: it is now the baseline, but the answer is
    # the gate it passed on its way in, not a comparison with itself.
    again = _gate(engine, cand, AUTO)
    assert again.baseline_run_id == base
    assert (again.decision, again.delta, again.n_paired) == ("pass", report.delta, N)
    with session_scope(engine) as session:
        rows = session.scalars(select(GateResult).where(GateResult.run_id == cand)).all()
        assert [r.baseline_key for r in rows] == [base]  # no self-comparison recorded
    # And promoting it again is a no-op.
    assert _promote(engine, again) is None
    with session_scope(engine) as session:
        assert len(get_baseline(session, "arith", JUDGE).history) == 2


def test_first_run_of_a_dataset_is_promoted_and_regated_without_self_comparison(
        engine: Engine, tmp_path: Path) -> None:
    first = evaluated_run(engine, tmp_path, "first", BASE)
    report = _gate(engine, first, AUTO)
    assert report.decision == "no_baseline"
    why = _promote(engine, report)
    assert why is not None and "first" in why
    with session_scope(engine) as session:
        info = get_baseline(session, "arith", JUDGE)
    assert info.run_id == first
    assert [(h["source"], h["previous_run_id"]) for h in info.history] == [("auto", None)]
    again = _gate(engine, first, AUTO)
    assert (again.decision, again.baseline_run_id) == ("no_baseline", None)
    assert count(engine, GateResult) == 1


def test_promote_pass_with_positive_delta(engine: Engine, tmp_path: Path, base: str) -> None:
    cand = evaluated_run(engine, tmp_path, "better", BETTER)
    report = _gate(engine, cand, AUTO)
    why = _promote(engine, report)
    assert why is not None and "passed the gate" in why and f"{report.delta:+.4f}" in why
    with session_scope(engine) as session:
        info = get_baseline(session, "arith", JUDGE)
    assert info.run_id == cand
    assert (info.history[0]["source"], info.history[0]["previous_run_id"]) == ("auto", base)
    assert info.history[0]["reason"] == why


def test_no_promotion_for_a_non_inferior_but_worse_run(engine: Engine, tmp_path: Path,
                                                       base: str) -> None:
    cand = evaluated_run(engine, tmp_path, "slightly-worse", _slightly_worse(4))
    policy = GatePolicy(margin=0.1, auto_promote=True)
    report = _gate(engine, cand, policy)
    assert report.decision == "pass" and report.delta == pytest.approx(-4 / N)
    assert _promote(engine, report, policy) is None
    assert _baseline_id(engine) == base
    assert count(engine, BaselinePromotion) == 1


def test_no_promotion_on_fail_or_inconclusive(engine: Engine, tmp_path: Path,
                                              base: str) -> None:
    worse = evaluated_run(engine, tmp_path, "worse", WORSE)
    assert _promote(engine, _gate(engine, worse, AUTO)) is None
    better = evaluated_run(engine, tmp_path, "better", BETTER)
    inconclusive = _gate(engine, better, GatePolicy(min_items=1000, auto_promote=True))
    assert inconclusive.decision == "inconclusive" and inconclusive.delta > 0
    assert _promote(engine, inconclusive, GatePolicy(min_items=1000, auto_promote=True)) is None
    assert _baseline_id(engine) == base


def test_no_promotion_without_auto_promote(engine: Engine, tmp_path: Path) -> None:
    first = evaluated_run(engine, tmp_path, "first", BASE)
    report = _gate(engine, first, POLICY)
    assert report.decision == "no_baseline"
    assert _promote(engine, report, POLICY) is None
    assert _baseline_id(engine) is None and count(engine, Baseline) == 0

    _set_baseline(engine, first)
    better = evaluated_run(engine, tmp_path, "better", BETTER)
    report = _gate(engine, better, POLICY)
    assert report.decision == "pass"
    assert _promote(engine, report, POLICY) is None
    assert _baseline_id(engine) == first


def test_latest_gate_is_the_most_recent(engine: Engine, tmp_path: Path, base: str) -> None:
    cand = evaluated_run(engine, tmp_path, "better", BETTER)
    with session_scope(engine) as session:
        assert latest_gate(session, cand) is None
    lenient = GatePolicy(margin=0.05)
    _gate(engine, cand, POLICY)
    strict = _gate(engine, cand, GatePolicy(require_improvement=True))
    with session_scope(engine) as session:
        latest = latest_gate(session, cand)
        assert latest.policy == strict.policy and latest.created_at == strict.created_at
    # Re-gating under the first policy updates that row, which becomes the latest.
    again = _gate(engine, cand, POLICY)
    with session_scope(engine) as session:
        latest = latest_gate(session, cand)
        assert latest.policy == POLICY.model_dump(mode="json")
        assert latest.created_at == again.created_at
        assert latest_gate(session, cand, JUDGE).policy == latest.policy
        assert latest_gate(session, cand, "mock") is None
        with pytest.raises(NotFoundError):
            latest_gate(session, "missing")
    _gate(engine, cand, lenient)
    with session_scope(engine) as session:
        assert latest_gate(session, cand).policy["margin"] == 0.05


def test_resolve_gate_judge(engine: Engine, tmp_path: Path) -> None:
    run_id = make_run(engine, tmp_path, "r", BASE)
    with session_scope(engine) as session:
        with pytest.raises(NotFoundError, match="tunix-rt evaluate"):
            resolve_gate_judge(session, run_id, None)
    evaluate(engine, run_id)
    with session_scope(engine) as session:
        assert resolve_gate_judge(session, run_id, None) == JUDGE
    evaluate(engine, run_id, "mock")
    with session_scope(engine) as session:
        with pytest.raises(InvalidInputError, match="several judges"):
            resolve_gate_judge(session, run_id, None)
        assert resolve_gate_judge(session, run_id, "mock") == "mock"


def test_a_gate_against_a_replaced_baseline_does_not_promote(engine, tmp_path) -> None:  # noqa: ANN001
    """The baseline moved after the gate ran: the run was never compared with the new one."""
    from tests.factories import correctness, make_run
    from tests.db.support import evaluate
    from tunix_rt.store.db import session_scope
    from tunix_rt.quality.gating import gate_run, get_baseline, promote_if_allowed, set_baseline
    from tunix_rt.quality.stats import GatePolicy

    policy = GatePolicy(auto_promote=True)
    base = correctness(200, 0.5, seed=11)
    old = make_run(engine, tmp_path, "old", base)
    new = make_run(engine, tmp_path, "new", [True if i % 4 == 0 else b for i, b in enumerate(base)])
    other = make_run(engine, tmp_path, "other", base)
    for run_id in (old, new, other):
        evaluate(engine, run_id)
    with session_scope(engine) as session:
        set_baseline(session, old, "exact_match")
        report = gate_run(session, new, "exact_match", policy)
        assert report.decision == "pass" and report.baseline_run_id == old
        set_baseline(session, other, "exact_match")  # someone else moved the baseline
        assert promote_if_allowed(session, report, policy) is None
        assert get_baseline(session, "arith", "exact_match").run_id == other
