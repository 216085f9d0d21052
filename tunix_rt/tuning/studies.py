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


# --- reading studies for the pages, the API and the Prefect artifact -----------------------

MAX_PAGE = 200
TRIAL_SORTS = ("metric", "trial_id", "status", "iterations")
#: Statuses in the order a reader wants them: what finished, what was cut, what broke.
STATUS_ORDER = {s.value: i for i, s in enumerate((TrialStatus.completed, TrialStatus.stopped,
                                                  TrialStatus.failed, TrialStatus.running,
                                                  TrialStatus.pending))}


def metric_value(metrics: dict[str, Any] | None, metric: str) -> float | None:
    """The study's metric in a result, when it is a finite number."""
    import math

    value = (metrics or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _better(mode: str) -> Any:
    """A sort key putting the best metric first under ``mode``, missing values last."""
    sign = -1.0 if mode == "max" else 1.0
    return lambda value: (value is None, 0.0 if value is None else sign * value)


@dataclass(frozen=True)
class StudySummary:
    """A study as the studies list shows it: counts by trial status and the best value."""

    id: str
    name: str
    dataset: str
    metric: str
    mode: str
    status: str
    created_at: Any
    finished_at: Any
    trials: int
    by_status: dict[str, int]
    best_trial_id: str | None
    best_value: float | None
    error: str | None


def list_studies(session: Session, *, dataset: str | None = None, status: str | None = None,
                 limit: int = 50, cursor: str | None = None
                 ) -> tuple[list[StudySummary], str | None]:
    """Studies newest first, a page at a time (keyset on created_at, id)."""
    from sqlalchemy import or_

    from tunix_rt.errors import InvalidInputError
    from tunix_rt.store.cursor import ID, TIMESTAMP, decode_cursor, encode_cursor

    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}",
                                field="limit")
    if status is not None and status not in StudyStatus.__members__:
        raise InvalidInputError(f"unknown status {status!r}; one of: "
                                f"{', '.join(StudyStatus.__members__)}", field="status")
    query = select(Study).order_by(Study.created_at.desc(), Study.id.desc()).limit(limit + 1)
    if dataset is not None:
        query = query.where(Study.dataset == dataset)
    if status is not None:
        query = query.where(Study.status == status)
    if cursor:
        created, last_id = decode_cursor(cursor, TIMESTAMP, ID)
        query = query.where(or_(Study.created_at < created,
                                (Study.created_at == created) & (Study.id < last_id)))
    page = list(session.scalars(query))
    next_cursor = None
    if len(page) > limit:
        page = page[:limit]
        next_cursor = encode_cursor(page[-1].created_at.isoformat(), page[-1].id)
    return summarize(session, page), next_cursor


def summarize(session: Session, page: Sequence[Study]) -> list[StudySummary]:
    """The summaries of these studies: trial counts by status, the best value."""
    from sqlalchemy import func

    ids = [s.id for s in page]
    counts: dict[str, dict[str, int]] = {i: {} for i in ids}
    for study_id, trial_status, n in session.execute(
            select(Trial.study_id, Trial.status, func.count()).where(Trial.study_id.in_(ids))
            .group_by(Trial.study_id, Trial.status)):
        counts[study_id][trial_status] = n
    best = _best_values(session, page)
    return [StudySummary(s.id, s.name, s.dataset, s.metric, s.mode, s.status, s.created_at,
                         s.finished_at, sum(counts[s.id].values()), counts[s.id],
                         *best.get(s.id, (None, None)), s.error) for s in page]


def _best_values(session: Session, page: Sequence[Study]) -> dict[str, tuple[str, float | None]]:
    """Each study's best trial and its value: the one Ray named when the study ended,
    else (still running, or interrupted) the best finished trial so far."""
    out: dict[str, tuple[str, float | None]] = {}
    by_id = {s.id: s for s in page}
    finished = (TrialStatus.completed.value, TrialStatus.stopped.value)
    rows = session.execute(select(Trial.study_id, Trial.trial_id, Trial.status,
                                  Trial.last_metrics).where(Trial.study_id.in_(list(by_id))))
    candidates: dict[str, list[tuple[str, float]]] = {}
    for study_id, trial_id, status, metrics in rows:
        study = by_id[study_id]
        value = metric_value(metrics, study.metric)
        if trial_id == study.best_trial_id:
            out[study_id] = (trial_id, value)
        if status in finished and value is not None:
            candidates.setdefault(study_id, []).append((trial_id, value))
    for study_id, trials in candidates.items():
        if study_id not in out:
            key = _better(by_id[study_id].mode)
            out[study_id] = min(trials, key=lambda t: (key(t[1]), t[0]))
    return out


@dataclass(frozen=True)
class TrialView:
    """A trial as the study page and the API show it."""

    trial_id: str
    status: str
    iterations: int
    value: float | None  # the study's metric, last reported
    config: dict[str, Any]
    last_metrics: dict[str, Any]
    error: str | None
    run_id: str | None
    started_at: Any
    finished_at: Any


def study_trials(session: Session, study: Study, *, sort: str = "metric",
                 status: str | None = None) -> list[TrialView]:
    """The study's trials, filtered by status, sorted by an allowed field (best metric
    first; status in the order completed, stopped, failed, running, pending)."""
    from tunix_rt.errors import InvalidInputError

    if sort not in TRIAL_SORTS:
        raise InvalidInputError(f"unknown sort {sort!r}; one of: {', '.join(TRIAL_SORTS)}",
                                field="sort")
    if status is not None and status not in TrialStatus.__members__:
        raise InvalidInputError(f"unknown status {status!r}; one of: "
                                f"{', '.join(TrialStatus.__members__)}", field="status")
    query = select(Trial).where(Trial.study_id == study.id)
    if status is not None:
        query = query.where(Trial.status == status)
    trials = [TrialView(t.trial_id, t.status, t.iterations,
                        metric_value(t.last_metrics, study.metric), t.config or {},
                        t.last_metrics or {}, t.error, t.run_id, t.started_at, t.finished_at)
              for t in session.scalars(query)]
    better = _better(study.mode)
    keys = {"metric": lambda t: (better(t.value), t.iterations, t.trial_id),
            "trial_id": lambda t: t.trial_id,
            "status": lambda t: (STATUS_ORDER.get(t.status, 99), better(t.value), t.trial_id),
            "iterations": lambda t: (-t.iterations, better(t.value), t.trial_id)}
    return sorted(trials, key=keys[sort])


def study_results(session: Session, study_id: str, trial_ids: Sequence[str] | None = None
                  ) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """Every reported result of the study's trials, by trial, in iteration order."""
    query = (select(Trial.trial_id, TrialResult.iteration, TrialResult.metrics)
             .join(TrialResult, TrialResult.trial_pk == Trial.id)
             .where(Trial.study_id == study_id).order_by(Trial.trial_id, TrialResult.iteration))
    if trial_ids is not None:
        query = query.where(Trial.trial_id.in_(list(trial_ids)))
    out: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for trial_id, iteration, metrics in session.execute(query):
        out.setdefault(trial_id, []).append((iteration, metrics or {}))
    return out
