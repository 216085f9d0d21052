"""Tuning studies on record: the study, each trial, each reported result.

Writes are upserts on (study, trial) and (trial, iteration), so a resumed study that
replays trials, or a callback that flushes the same batch twice, writes no
duplicates. Query functions take a session and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunix_rt.errors import NotFoundError
from tunix_rt.jsonsafe import json_safe
from tunix_rt.store.models import Study, StudyStatus, Trial, TrialResult, TrialStatus, utcnow
from tunix_rt.tuning.sweep import Sweep
from tunix_rt.store.upsert import upsert

TRIAL_COLUMNS = ["trial_id", "status", "iterations", "config", "last_metrics", "error",
                 "predictions_uri", "run_id", "started_at", "finished_at"]


def create_study(session: Session, sweep: Sweep, storage_path: str) -> Study:
    study = Study(name=sweep.name, dataset=sweep.dataset, metric=sweep.metric, mode=sweep.mode,
                  spec=sweep.model_dump(mode="json"), storage_path=storage_path,
                  status=StudyStatus.running.value, created_at=utcnow())
    session.add(study)
    session.flush()
    return study


def get_study(session: Session, study: str) -> Study:
    """A study by id, or the latest study of that name."""
    found = session.get(Study, study) or session.scalar(
        select(Study).where(Study.name == study).order_by(Study.created_at.desc()).limit(1))
    if found is None:
        raise NotFoundError(f"no study with id or name {study!r}")
    return found


def upsert_trial(session: Session, study_id: str, trial_id: str, **values: Any) -> int:
    """Insert or update a trial row; returns its primary key."""
    row = upsert(session, Trial, {"study_id": study_id, "trial_id": trial_id, **values},
                 key=("study_id", "trial_id"), update=list(values) or ["trial_id"],
                 returning=Trial.id)
    return row[0]


@dataclass(frozen=True)
class ResultRow:
    trial_id: str
    iteration: int
    metrics: dict[str, Any]


def record_results(session: Session, study_id: str, results: Sequence[ResultRow]) -> None:
    """Store a batch of reported results and move each trial's summary forward."""
    latest: dict[str, ResultRow] = {}
    for result in results:
        if result.trial_id not in latest or result.iteration >= latest[result.trial_id].iteration:
            latest[result.trial_id] = result
    pks = {trial_id: upsert_trial(session, study_id, trial_id) for trial_id in latest}
    for result in results:
        upsert(session, TrialResult, {"trial_pk": pks[result.trial_id],
                                      "iteration": result.iteration,
                                      "metrics": json_safe(result.metrics),
                                      "reported_at": utcnow()},
               key=("trial_pk", "iteration"), update=("metrics", "reported_at"))
    for trial_id, result in latest.items():
        trial = session.get(Trial, pks[trial_id])
        if result.iteration >= trial.iterations:
            trial.iterations = result.iteration
            trial.last_metrics = json_safe(result.metrics)
            uri = result.metrics.get("predictions_uri")
            if isinstance(uri, str):
                trial.predictions_uri = uri
            if trial.status == TrialStatus.pending.value:
                trial.status = TrialStatus.running.value
    session.flush()


def ended_trials(session: Session, study_id: str) -> int:
    """Trials of the study that completed, were stopped early, or failed."""
    from sqlalchemy import func

    ended = (TrialStatus.completed.value, TrialStatus.stopped.value, TrialStatus.failed.value)
    return session.scalar(select(func.count()).select_from(Trial).where(
        Trial.study_id == study_id, Trial.status.in_(ended))) or 0


def finish_study(session: Session, study_id: str, *, status: StudyStatus,
                 best_trial_id: str | None = None, error: str | None = None) -> None:
    study = session.get(Study, study_id)
    study.status = status.value
    study.best_trial_id = best_trial_id
    study.error = error
    study.finished_at = utcnow()


def best_trials(session: Session, study: Study, k: int = 1) -> list[Trial]:
    """The k best finished trials by the study's metric (ties: fewer iterations, then id)."""
    trials = [t for t in session.scalars(select(Trial).where(Trial.study_id == study.id))
              if t.status in (TrialStatus.completed.value, TrialStatus.stopped.value)
              and isinstance(t.last_metrics.get(study.metric), (int, float))]
    sign = -1.0 if study.mode == "max" else 1.0
    trials.sort(key=lambda t: (sign * t.last_metrics[study.metric], t.iterations, t.trial_id))
    return trials[:k]


def trials_frame(session: Session, study_id: str):  # noqa: ANN201 - pandas is imported lazily
    """The trials of a study as a pandas DataFrame, one row per trial, config flattened."""
    import pandas as pd

    rows = []
    for trial in session.scalars(select(Trial).where(Trial.study_id == study_id)
                                 .order_by(Trial.trial_id)):
        row = {c: getattr(trial, c) for c in TRIAL_COLUMNS if c not in ("config", "last_metrics")}
        row.update({f"config.{k}": v for k, v in (trial.config or {}).items()})
        row.update({f"metric.{k}": v for k, v in (trial.last_metrics or {}).items()
                    if not isinstance(v, (dict, list))})
        rows.append(row)
    return pd.DataFrame(rows)


def iterations_by_trial(session: Session, study_id: str) -> dict[str, list[int]]:
    """Every stored iteration of every trial (to show what a scheduler stopped)."""
    out: dict[str, list[int]] = {}
    for trial_id, iteration in session.execute(
            select(Trial.trial_id, TrialResult.iteration)
            .join(TrialResult, TrialResult.trial_pk == Trial.id)
            .where(Trial.study_id == study_id).order_by(Trial.trial_id, TrialResult.iteration)):
        out.setdefault(trial_id, []).append(iteration)
    return out
