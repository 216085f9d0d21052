"""Baselines and the gate: is a run at least as good as the dataset's baseline?

The statistics live in :mod:`tunix_rt.quality.stats`; this module finds the verdicts to
compare, records the decision (one row per candidate, judge, baseline and policy),
and keeps the baseline and its history.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import false, select, text, update
from sqlalchemy.orm import Session

from tunix_rt.errors import NotFoundError
from tunix_rt.quality.datasets import DatasetInfo
from tunix_rt.quality.evaluation import item_outcomes, latest_evaluation
from tunix_rt.quality.judge_choice import choose_judge
from tunix_rt.store.models import (Baseline, BaselinePromotion, Dataset, Evaluation, GateDecision,
                                   GateResult, Run, utcnow)
from tunix_rt.store.runs import ensure_evaluable, get_run
from tunix_rt.quality.stats import GateOutcome, GatePolicy, decide_gate
from tunix_rt.store.upsert import upsert

EXIT_CODES = {GateDecision.passed.value: 0, GateDecision.failed.value: 1,
              GateDecision.inconclusive.value: 2, GateDecision.no_baseline.value: 2}


@dataclass(frozen=True)
class GateReport:
    """A gate decision as the CLI, the API and the flow report it (docs/CONTRACT.md)."""

    run_id: str
    dataset: str
    judge: str
    decision: str
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    n_paired: int
    baseline_run_id: str | None
    reason: str
    policy: dict[str, Any]
    created_at: str
    n_excluded: int = 0

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.decision]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, row: GateResult) -> GateReport:
        return cls(row.run_id, row.dataset, row.judge, row.decision, row.delta, row.ci_low,
                   row.ci_high, row.n_paired, row.baseline_run_id, row.reason, row.policy,
                   row.updated_at.isoformat(), row.n_excluded)


@dataclass(frozen=True)
class BaselineInfo:
    dataset: str
    judge: str
    run_id: str
    run_name: str
    promoted_at: datetime
    history: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["promoted_at"] = self.promoted_at.isoformat()
        return out


def _completed_evaluation(session: Session, run: Run, judge: str) -> Evaluation:
    ev = latest_evaluation(session, run.id, judge)
    if ev is None:
        raise NotFoundError(f"run {run.id} ({run.name}) has no completed evaluation by judge "
                            f"{judge!r}: run `tunix-rt evaluate {run.id} --judge {judge}` first")
    return ev


def resolve_gate_judge(session: Session, run_id: str, judge: str | None) -> str:
    """The judge to gate on: the one asked for, or the only one that evaluated the run."""
    def evaluated_by() -> list[str]:
        run = get_run(session, run_id)
        return sorted(set(session.scalars(select(Evaluation.judge).where(
            Evaluation.run_id == run.id, Evaluation.status == "completed"))))

    return choose_judge(judge, evaluated_by,
                        none=f"run {run_id} has no completed evaluation: run "
                             f"`tunix-rt evaluate {run_id}` first",
                        several=f"run {run_id} was evaluated by several judges ({{judges}}); "
                                "pick one with --judge")


def lock_baseline(session: Session, dataset: str, judge: str) -> None:
    """Hold the baseline of ``dataset`` under ``judge`` until the transaction ends.

    Every change of a baseline takes this lock first, so deciding whether a run may
    become the baseline and making it so are one step: two runs gated at once with no
    baseline cannot both be promoted as the first. ``SELECT ... FOR UPDATE`` on the
    baseline row would lock nothing while there is no row yet, so PostgreSQL takes a
    transaction-level advisory lock keyed by (dataset, judge). SQLite has one writer:
    a write (of nothing) takes the database's write lock now, before the baseline is
    read, rather than at the first real write, after it was read.
    """
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.blake2b(f"tunix-rt baseline\0{dataset}\0{judge}".encode(),
                                 digest_size=8).digest()
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": int.from_bytes(digest, "big", signed=True)})
    else:
        session.execute(update(Baseline).where(false()).values(judge=Baseline.judge))


def set_baseline(session: Session, run_id: str, judge: str, *, source: str = "manual",
                 reason: str = "") -> BaselineInfo:
    """Make ``run_id`` the baseline of its dataset under ``judge``, keeping the history."""
    run = get_run(session, run_id)
    ensure_evaluable(run)
    _completed_evaluation(session, run, judge)
    lock_baseline(session, run.dataset, judge)
    current = session.get(Baseline, (run.dataset, judge), with_for_update=True)
    previous = current.run_id if current else None
    if previous != run.id:
        now = utcnow()
        upsert(session, Baseline, {"dataset": run.dataset, "judge": judge, "run_id": run.id,
                                   "promoted_at": now},
               key=("dataset", "judge"), update=("run_id", "promoted_at"))
        session.add(BaselinePromotion(dataset=run.dataset, judge=judge, run_id=run.id,
                                      previous_run_id=previous, source=source, reason=reason,
                                      promoted_at=now))
        session.flush()
        session.expire_all()
    info = get_baseline(session, run.dataset, judge)
    assert info is not None
    return info


def get_baseline(session: Session, dataset: str, judge: str,
                 history: int = 10) -> BaselineInfo | None:
    """The current baseline of ``dataset`` under ``judge`` with its recent promotions."""
    row = session.execute(select(Baseline, Run.name).join(Run, Run.id == Baseline.run_id).where(
        Baseline.dataset == dataset, Baseline.judge == judge)).first()
    if row is None:
        return None
    baseline, name = row
    promotions = session.scalars(select(BaselinePromotion).where(
        BaselinePromotion.dataset == dataset, BaselinePromotion.judge == judge)
        .order_by(BaselinePromotion.promoted_at.desc(), BaselinePromotion.id.desc())
        .limit(history))
    return BaselineInfo(dataset, judge, baseline.run_id, name, baseline.promoted_at, [
        {"run_id": p.run_id, "previous_run_id": p.previous_run_id, "source": p.source,
         "reason": p.reason, "promoted_at": p.promoted_at.isoformat()} for p in promotions])


def gate_run(session: Session, run_id: str, judge: str, policy: GatePolicy, *,
             note: str = "") -> GateReport:
    """Compare the run with its dataset's baseline under ``judge`` and record the result.

    Gating the baseline itself is answered from the gate it passed on its way in,
    when there is one: comparing a run with itself proves nothing. ``note`` is added
    to the recorded reason.
    """
    run = get_run(session, run_id)
    candidate_ev = _completed_evaluation(session, run, judge)
    baseline = session.get(Baseline, (run.dataset, judge))
    if baseline is not None and baseline.run_id == run.id:
        earlier = session.scalar(select(GateResult).where(
            GateResult.run_id == run.id, GateResult.judge == judge,
            GateResult.policy_digest == policy.digest(), GateResult.baseline_key != run.id)
            .order_by(GateResult.updated_at.desc()).limit(1))
        if earlier is not None:
            return GateReport.of(earlier)

    baseline_ev = None
    if baseline is not None:
        baseline_run = get_run(session, baseline.run_id)
        baseline_ev = latest_evaluation(session, baseline_run.id, judge)
        if baseline_run.id == run.id:
            note = " (the run is the baseline itself)" + note
    if baseline_ev is None:
        outcome = decide_gate({}, None, policy)
    else:
        why_not = incomparable(session, candidate_ev, baseline_ev, judge)
        if why_not:
            outcome = GateOutcome("inconclusive", None, None, None, 0, why_not)
        else:
            outcome = decide_gate(item_outcomes(session, candidate_ev.id),
                                  item_outcomes(session, baseline_ev.id), policy)
    baseline_id = baseline.run_id if baseline_ev is not None and baseline else None
    values = {
        "run_id": run.id, "dataset": run.dataset, "judge": judge,
        "baseline_run_id": baseline_id, "baseline_key": baseline_id or "",
        "decision": outcome.decision, "delta": outcome.delta, "ci_low": outcome.ci_low,
        "ci_high": outcome.ci_high, "n_paired": outcome.n_paired,
        "n_excluded": outcome.n_excluded, "reason": outcome.reason + note, "policy": policy.model_dump(mode="json"),
        "policy_digest": policy.digest(), "created_at": utcnow(), "updated_at": utcnow(),
    }
    row = upsert(session, GateResult, values,
                 key=("run_id", "judge", "baseline_key", "policy_digest"),
                 update=("decision", "delta", "ci_low", "ci_high", "n_paired", "n_excluded",
                         "reason", "policy", "updated_at"), returning=GateResult.id)
    return GateReport.of(session.get(GateResult, row[0], populate_existing=True))


def incomparable(session: Session, candidate: Evaluation, baseline: Evaluation,
                 judge: str) -> str | None:
    """Why two evaluations cannot be compared item by item, or None when they can.

    Runs scored on different dataset versions (different content hashes), on an
    unknown one (evaluated before datasets existed), or by different versions of the
    judge are never compared silently: the gate answers inconclusive and says what to
    re-evaluate.
    """
    redo = (f"re-evaluate the baseline: `tunix-rt evaluate {baseline.run_id} --judge {judge} "
            "--force`")
    if candidate.judge_version != baseline.judge_version:
        return (f"judge versions differ (candidate {judge} {candidate.judge_version}, baseline "
                f"{judge} {baseline.judge_version}): the verdicts are not comparable; {redo}")
    if candidate.dataset_id is None or baseline.dataset_id is None:
        which = "candidate" if candidate.dataset_id is None else "baseline"
        run_id = candidate.run_id if candidate.dataset_id is None else baseline.run_id
        return (f"the {which}'s evaluation predates datasets, so its item set is unknown: "
                f"re-evaluate it: `tunix-rt evaluate {run_id} --judge {judge} --force`")
    if candidate.dataset_id != baseline.dataset_id:
        cand, base = (DatasetInfo.of(session.get(Dataset, d))
                      for d in (candidate.dataset_id, baseline.dataset_id))
        if cand.content_hash != base.content_hash:
            return (f"the runs were scored on different dataset versions (candidate "
                    f"{cand.label}, baseline {base.label}); {redo}")
    return None


def promote_if_allowed(session: Session, report: GateReport, policy: GatePolicy) -> str | None:
    """Auto-promote per the policy; returns why the run was promoted, or None.

    A run becomes the baseline when the dataset has none, or when it passed and its
    point estimate is an improvement: a non-inferiority pass alone would let a
    string of slightly worse runs ratchet the baseline down.
    """
    if not policy.auto_promote:
        return None
    if report.decision == GateDecision.no_baseline.value:
        why = "first evaluated run of the dataset"
    elif report.decision == GateDecision.passed.value and (report.delta or 0.0) > 0.0:
        why = f"passed the gate with delta {report.delta:+.4f}"
    else:
        return None
    # Under the lock, the baseline read here stays the baseline until this transaction
    # ends: a run promoted meanwhile by another loop is seen, not overwritten.
    lock_baseline(session, report.dataset, report.judge)
    current = session.scalar(select(Baseline.run_id).where(
        Baseline.dataset == report.dataset, Baseline.judge == report.judge))
    if current == report.run_id:
        return None
    if current != report.baseline_run_id:
        # The baseline moved since this gate ran (another run was promoted while this
        # one was gated): the run was never compared with the new baseline, so it must
        # not replace it. Its gate says so, and it is gated again against the new one.
        _superseded(session, report, current, policy)
        return None
    set_baseline(session, report.run_id, report.judge, source="auto", reason=why)
    return why


def _superseded(session: Session, report: GateReport, current: str | None,
                policy: GatePolicy) -> None:
    """Note on a gate that its baseline moved before it could promote; gate again."""
    was = f"run {report.baseline_run_id}" if report.baseline_run_id else "no baseline"
    now = f"run {current}" if current else "none"
    why = (f"not promoted: the baseline of {report.dataset} under {report.judge} changed "
           f"from {was} to {now} while this run was being gated, and the two runs were "
           "never compared")
    session.execute(update(GateResult).where(
        GateResult.run_id == report.run_id, GateResult.judge == report.judge,
        GateResult.baseline_key == (report.baseline_run_id or ""),
        GateResult.policy_digest == policy.digest(),
        ~GateResult.reason.contains("not promoted: the baseline")).values(
            reason=GateResult.reason + f"; {why}"))
    if current is not None:
        gate_run(session, report.run_id, report.judge, policy, note=(
            f" (gated again: {now} became the baseline while this run was being gated "
            f"against {was}; not auto-promoted: `tunix-rt baseline set {report.run_id}` "
            "promotes it if it should be)"))


def latest_gate(session: Session, run_id: str, judge: str | None = None) -> GateReport | None:
    """The run's most recent gate result (under ``judge`` when given)."""
    run = get_run(session, run_id)
    query = select(GateResult).where(GateResult.run_id == run.id)
    if judge:
        query = query.where(GateResult.judge == judge)
    row = session.scalar(query.order_by(GateResult.updated_at.desc(), GateResult.id.desc())
                         .limit(1))
    return GateReport.of(row) if row else None
