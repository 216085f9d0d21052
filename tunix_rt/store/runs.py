"""Runs: registering, finding and listing the training runs tunix-rt judges.

Query functions take a session and never commit: the caller owns the transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tunix_rt.store.cursor import ID, TIMESTAMP, decode_cursor, encode_cursor
from tunix_rt.errors import InvalidInputError, NotFoundError, RunNotEvaluableError
from tunix_rt.store.models import Run, RunOrigin, RunStatus, utcnow

MAX_PAGE = 500


def _require_text(value: str | None, field: str, max_len: int = 255) -> str:
    if value is None or not str(value).strip():
        raise InvalidInputError(f"{field} must not be empty")
    value = str(value).strip()
    if len(value) > max_len:
        raise InvalidInputError(f"{field} is longer than {max_len} characters")
    return value


def register_run(session: Session, *, name: str, dataset: str, model: str,
                 predictions_uri: str | None, config: dict[str, Any] | None = None,
                 metrics: dict[str, Any] | None = None, external_id: str | None = None,
                 status: RunStatus = RunStatus.completed, dry_run: bool = False,
                 origin: RunOrigin = RunOrigin.cli) -> Run:
    """Record a run. A completed run needs a predictions URI; external ids are unique."""
    name = _require_text(name, "name")
    dataset = _require_text(dataset, "dataset")
    model = _require_text(model, "model")
    if config is not None and not isinstance(config, dict):
        raise InvalidInputError("config must be a JSON object")
    if metrics is not None and not isinstance(metrics, dict):
        raise InvalidInputError("metrics must be a JSON object")
    if status is RunStatus.completed and not dry_run and not predictions_uri:
        raise InvalidInputError("a completed run needs a predictions URI (--predictions)")
    if external_id is not None:
        external_id = _require_text(external_id, "external_id")
        existing = session.scalar(select(Run.id).where(Run.external_id == external_id))
        if existing:
            raise InvalidInputError(
                f"a run with external id {external_id!r} already exists: {existing}")
    now = utcnow()
    run = Run(name=name, dataset=dataset, model=model, predictions_uri=predictions_uri,
              config=config or {}, metrics=metrics or {}, external_id=external_id,
              status=status.value, dry_run=dry_run, origin=origin.value, created_at=now,
              updated_at=now, completed_at=now if status is RunStatus.completed else None)
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, run_id: str) -> Run:
    """The run with this id (or, failing that, this external id)."""
    run = session.get(Run, run_id)
    if run is None:
        run = session.scalar(select(Run).where(Run.external_id == run_id))
    if run is None:
        raise NotFoundError(f"no run with id or external id {run_id!r} (see `tunix-rt runs list`)")
    return run


def ensure_evaluable(run: Run) -> None:
    """Refuse, with the reason, a run the judges cannot score."""
    if run.dry_run:
        raise RunNotEvaluableError(f"run {run.id} ({run.name}) is a dry run: it has no "
                                   "predictions to judge")
    if run.status != RunStatus.completed.value:
        raise RunNotEvaluableError(f"run {run.id} ({run.name}) is {run.status}; only completed "
                                   "runs can be evaluated")
    if not run.predictions_uri:
        raise RunNotEvaluableError(f"run {run.id} ({run.name}) has no predictions URI")


# The orders /api/runs (and ``runs list``) may sort by: a field, descending with a "-".
# Each is a keyset order of (field, id), ties broken by id in the same direction.
SORTS: dict[str, tuple[Any, bool]] = {
    "-created_at": (Run.created_at, True), "created_at": (Run.created_at, False),
    "name": (Run.name, False), "-name": (Run.name, True),
    "status": (Run.status, False), "-status": (Run.status, True),
}
DEFAULT_SORT = "-created_at"
RunSort = Literal["-created_at", "created_at", "name", "-name", "status", "-status"]
# The fields /api/runs filters on (exact match), besides the page parameters.
FILTERS = ("dataset", "status", "origin", "model")


def _text_key(value: Any) -> str:
    """A name or status in a cursor: a string a run could hold (up to 255 characters)."""
    if not isinstance(value, str) or len(value) > 255 or "\x00" in value:
        raise ValueError("a key must be a string of at most 255 characters")
    return value


def _sort_kind(sort: str) -> Any:
    """The cursor's first element: the sort it was made for, which must be this one."""

    def kind(value: Any) -> str:
        if value != sort:
            made = f"sort={value}" if isinstance(value, str) and value in SORTS else "no sort"
            raise ValueError(f"it was made for {made}, this request has sort={sort}")
        return value

    return kind


def list_runs(session: Session, *, dataset: str | None = None, status: str | None = None,
              origin: str | None = None, model: str | None = None, sort: str = DEFAULT_SORT,
              limit: int = 50, cursor: str | None = None) -> tuple[list[Run], str | None]:
    """Runs in ``sort`` order (newest first by default), a page at a time.

    Keyset pagination on (field, id): the cursor carries the sort it was made for, so a
    cursor of one order is refused (a 400 naming ``cursor``) by a request of another
    rather than skipping or repeating runs.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    if sort not in SORTS:
        raise InvalidInputError(f"cannot sort by {sort!r}; one of: {', '.join(SORTS)}",
                                field="sort")
    for field, value, allowed in (("status", status, RunStatus), ("origin", origin, RunOrigin)):
        if value is not None and value not in allowed.__members__:
            raise InvalidInputError(f"unknown {field} {value!r}; one of: "
                                    f"{', '.join(allowed.__members__)}", field=field)
    column, descending = SORTS[sort]
    order = (column.desc(), Run.id.desc()) if descending else (column.asc(), Run.id.asc())
    query = select(Run).order_by(*order).limit(limit + 1)
    for field, value in (("dataset", dataset), ("status", status), ("origin", origin),
                         ("model", model)):
        if value is not None:
            query = query.where(getattr(Run, field) == value)
    if cursor:
        # Cursors made here carry their sort, a key of its field's kind and a string id;
        # decode_cursor refuses anything else (it would fail in the database, or, on
        # SQLite, compare as nonsense), out-of-range dates and NULs included.
        key_kind = TIMESTAMP if column is Run.created_at else _text_key
        _, key, last_id = decode_cursor(cursor, _sort_kind(sort), key_kind, ID)
        if descending:
            query = query.where(or_(column < key, (column == key) & (Run.id < last_id)))
        else:
            query = query.where(or_(column > key, (column == key) & (Run.id > last_id)))
    runs = list(session.scalars(query))
    next_cursor = None
    if len(runs) > limit:
        runs = runs[:limit]
        last = runs[-1]
        key = last.created_at.isoformat() if column is Run.created_at \
            else getattr(last, column.key)
        next_cursor = encode_cursor(sort, key, last.id)
    return runs, next_cursor


def run_to_dict(run: Run) -> dict[str, Any]:
    """A run as the API and ``--format json`` show it (docs/CONTRACT.md)."""
    return {
        "id": run.id,
        "external_id": run.external_id,
        "name": run.name,
        "dataset": run.dataset,
        "model": run.model,
        "status": run.status,
        "dry_run": run.dry_run,
        "origin": run.origin,
        "predictions_uri": run.predictions_uri,
        "config": run.config,
        "metrics": run.metrics,
        "error": run.error,
        # Why its quality loop could not run (None when nothing is wrong), not the job's.
        "loop_error": run.loop_error,
        "exit_code": run.exit_code,
        "log_uri": run.log_uri,
        "study_id": run.study_id,
        "trial_id": run.trial_id,
        "created_at": _iso(run.created_at),
        "updated_at": _iso(run.updated_at),
        "started_at": _iso(run.started_at),
        "completed_at": _iso(run.completed_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def mark_running(session: Session, run_id: str, *, log_uri: str | None = None) -> None:
    """A launched job has started."""
    run = get_run(session, run_id)
    run.status = RunStatus.running.value
    run.started_at = run.started_at or utcnow()
    run.log_uri = log_uri or run.log_uri


def record_metrics(session: Session, run_id: str, metrics: dict[str, Any]) -> None:
    """Merge metrics a running job reported into the run (the last value of a key wins)."""
    run = get_run(session, run_id)
    run.metrics = {**(run.metrics or {}), **metrics}


def mark_finished(session: Session, run_id: str, *, completed: bool, exit_code: int | None,
                  error: str | None = None, predictions_uri: str | None = None,
                  metrics: dict[str, Any] | None = None) -> None:
    """A launched job ended: completed (with its predictions) or failed (with why)."""
    run = get_run(session, run_id)
    run.status = (RunStatus.completed if completed else RunStatus.failed).value
    run.exit_code = exit_code
    run.error = None if completed else (error or "the job failed")
    run.completed_at = utcnow()
    if predictions_uri:
        run.predictions_uri = predictions_uri
    if metrics:
        run.metrics = {**(run.metrics or {}), **metrics}


def request_cancel(session: Session, run_id: str) -> Run:
    """Ask the job of a pending or running run to stop; its supervisor polls for this."""
    run = get_run(session, run_id)
    if run.status not in (RunStatus.pending.value, RunStatus.running.value):
        raise InvalidInputError(f"run {run.id} is {run.status}: only a pending or running run "
                                "can be cancelled")
    run.cancel_requested_at = run.cancel_requested_at or utcnow()
    return run


def cancel_requested(session: Session, run_id: str) -> bool:
    return session.scalar(select(Run.cancel_requested_at).where(Run.id == run_id)) is not None


def select_run_by_external_id(external_id: str):  # noqa: ANN201 - a Select
    return select(Run).where(Run.external_id == external_id)
