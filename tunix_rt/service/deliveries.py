"""Storing webhook deliveries, moving runs forward, and the dispatch outbox.

``receive`` runs in the receiver's transaction, before the 202: the delivery row (its
primary key is the ``webhook-id``, so a second copy finds it and does nothing), the
run change, and, when a run has just completed, an outbox row owing it a quality
loop. Dispatch happens after the commit; the sweeper finds what a crash left owed.

A delivery changes only a run that webhooks created (origin ``webhook``), and only when
it comes from the source that created it (the sender whose secret verified the run's
first delivery; None for the anonymous secret). Anything else is a
:class:`RunConflictError` (409) and nothing is stored. NaN and infinities arrive as null
(:func:`tunix_rt.service.webhooks.parse_event`); the run notes which fields they were in
its metrics under ``tunix_rt_note``.

A dispatch holds a lease (``lease_until``): set when it is dispatched or claimed by a
sweeper, renewed while its loop runs (``flows.dispatch.LeaseKeeper``), released when
the loop ends. The sweeper claims only rows whose lease has expired, so it re-runs a
loop that stopped, never one that is only slow, and two sweepers never claim one row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, exists, literal_column, select, text, update
from sqlalchemy.orm import Session

from tunix_rt.errors import InvalidInputError, is_transient
from tunix_rt.store.models import (Dispatch, DispatchStatus, Evaluation, GateResult, Run,
                                   RunOrigin, RunStatus, WebhookDelivery, new_run_id, utcnow)
from tunix_rt.store.metrics import record_points
from tunix_rt.store.upsert import insert_ignore
from tunix_rt.service.webhooks import RunEvent

log = logging.getLogger("tunix_rt.service.deliveries")

# Status order: a delivery never moves a run backwards (a late run.started after
# run.completed changes nothing), and the first terminal status stands.
_RANK = {RunStatus.pending.value: 0, RunStatus.running.value: 1,
         RunStatus.completed.value: 2, RunStatus.failed.value: 2}
# run.progress is news that the run is running; its points go to the run's series.
_TARGET = {"run.started": RunStatus.running, "run.progress": RunStatus.running,
           "run.completed": RunStatus.completed, "run.failed": RunStatus.failed}
MAX_DISPATCH_ATTEMPTS = 5
# How long a claim or a dispatch holds a loop without news, and how often a running loop
# renews its lease (flows.dispatch.LeaseKeeper): several renewals fit in one lease, so a
# slow database or a busy worker does not let a live loop's lease lapse.
LEASE = timedelta(minutes=5)
RENEW_EVERY = timedelta(minutes=1)
# How long a started loop has to begin renewing its lease (a deployment run waiting for
# a worker, a pull step): the grace period the sweeper used to give every dispatch.
START_LEASE = timedelta(minutes=10)


NOTE_KEY = "tunix_rt_note"  # in run.metrics: what was stored differently from what was sent
_NOTE_TEXT = "non-finite numbers (NaN, Infinity) stored as null: "


class RunConflictError(InvalidInputError):
    """The delivery names a run it may not change: another origin's or another source's."""

    def __init__(self, message: str, *, run_id: str, field: str = "data.external_id") -> None:
        super().__init__(message, field=field)
        self.run_id = run_id


@dataclass(frozen=True)
class Received:
    duplicate: bool
    run_id: str | None
    dispatch_id: int | None = None


class Dispatcher(Protocol):
    """Starts the quality loop for a run; ``key`` makes a repeated start a no-op."""

    target: str

    def dispatch(self, run_id: str, key: str) -> str | None:
        """Start (or enqueue) the loop; returns a flow run id when one is known."""
        ...


def receive(session: Session, delivery_id: str, event: RunEvent, *,
            source: str | None = None) -> Received:
    """Record a verified delivery and its effect; a repeated ``delivery_id`` does nothing.

    ``source`` is the sender whose secret verified it (None: the anonymous secret).
    Raises :class:`InvalidInputError` (naming the field) when the event cannot apply
    to the run, e.g. a first ``run.completed`` without a predictions URI, and
    :class:`RunConflictError` when the run is not this source's webhook run; the caller
    rolls back, so nothing of the delivery is stored.
    """
    payload = event.model_dump(mode="json")
    if (event.data.dataset and event.data.model and not event.data.progress
            and session.get_bind().dialect.name == "postgresql"):
        return _receive_pg(session, delivery_id, event, payload, source)
    inserted = insert_ignore(session, WebhookDelivery,
                             {"id": delivery_id, "event_type": event.type, "payload": payload,
                              "received_at": utcnow()}, key=("id",))
    if not inserted:
        run_id = session.scalar(select(WebhookDelivery.run_id)
                                .where(WebhookDelivery.id == delivery_id))
        return Received(duplicate=True, run_id=run_id)
    run, completed_now = _apply(session, event, source)
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                    .values(run_id=run.id))
    dispatch_id = None
    if completed_now:
        dispatch = Dispatch(key=delivery_id, run_id=run.id, status=DispatchStatus.pending.value,
                            created_at=utcnow())
        session.add(dispatch)
        session.flush()
        dispatch_id = dispatch.id
    session.flush()
    return Received(duplicate=False, run_id=run.id, dispatch_id=dispatch_id)


# The run's columns a delivery reads or changes (see _change), in the fast path's rows.
_RUN_FIELDS = ("id", "origin", "source", "status", "dry_run", "name", "dataset", "model",
               "predictions_uri", "config", "metrics", "error", "started_at", "completed_at",
               "updated_at")
_RECEIVE_PG = """
WITH delivery AS (
    INSERT INTO webhook_deliveries (id, event_type, payload, run_id, received_at)
    VALUES (:id, :event_type, :payload, :run_id, :now)
    ON CONFLICT (id) DO NOTHING RETURNING id
), changed AS (
    UPDATE runs SET {set_clause} WHERE id = :run_id AND :change AND EXISTS (SELECT FROM delivery)
    RETURNING id
), dispatch AS (
    INSERT INTO dispatches (key, run_id, status, attempts, claims, created_at)
    SELECT id, :run_id, 'pending', 0, 0, :now FROM delivery WHERE :owed
    RETURNING id
)
SELECT (SELECT id FROM delivery), (SELECT id FROM dispatch), (SELECT count(*) FROM changed)
"""


def _receive_pg(session: Session, delivery_id: str, event: RunEvent, payload: dict[str, Any],
                source: str | None) -> Received:
    """:func:`receive` in two statements on PostgreSQL, for an event naming its run's
    dataset and model and carrying no points (nearly every delivery).

    The ORM path takes ten round trips (the delivery, the run looked up, created, looked
    up again, changed, the delivery's run set, the dispatch), each a wait for the
    server, which on a busy machine is a wait for a core: that bounded a receiver to
    ~130 deliveries a second. Here one upsert creates or locks the run and returns it
    (``ON CONFLICT DO UPDATE`` locks an existing row as ``FOR UPDATE`` would, a new one
    waits for a concurrent creator's commit), :func:`_change` decides in Python exactly
    as the ORM path does, and one statement stores the delivery (deduplicated on its
    id), the run's changes and the dispatch, the latter two only if the delivery is new.
    """
    data = event.data
    now = utcnow()
    runs = Run.__table__
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    upsert = (pg_insert(runs).values(
        id=new_run_id(), external_id=data.external_id, name=data.name or data.external_id,
        dataset=data.dataset, model=data.model, status=RunStatus.pending.value,
        origin=RunOrigin.webhook.value, source=source, config={}, metrics={}, dry_run=False,
        created_at=now, updated_at=now)
        .on_conflict_do_update(index_elements=["external_id"],
                               set_={"updated_at": runs.c.updated_at})
        .returning(*(runs.c[f] for f in _RUN_FIELDS), literal_column("xmax = 0")))
    *row, created = session.execute(upsert).one()
    before = dict(zip(_RUN_FIELDS, row))
    run = _RunValues(**before)
    try:
        owed = _change(run, event, source, now)
    except InvalidInputError:
        duplicate = _duplicate(session, delivery_id, run.id if created else None)
        if duplicate is not None:  # a copy of a delivery received before: nothing to do
            return duplicate
        raise
    changes = {f: getattr(run, f) for f in _RUN_FIELDS if getattr(run, f) != before[f]}
    if changes:
        changes.setdefault("updated_at", now)  # as the ORM's onupdate does
    set_clause = ", ".join(f"{f} = :set_{f}" for f in changes) or "id = id"
    statement = text(_RECEIVE_PG.format(set_clause=set_clause)).bindparams(
        bindparam("payload", type_=WebhookDelivery.__table__.c.payload.type),
        bindparam("now", type_=runs.c.updated_at.type),
        *(bindparam(f"set_{f}", type_=runs.c[f].type) for f in changes))
    delivery, dispatch_id, _ = session.execute(statement, {
        "id": delivery_id, "event_type": event.type, "payload": payload, "run_id": run.id,
        "now": now, "change": bool(changes), "owed": owed,
        **{f"set_{f}": value for f, value in changes.items()}}).one()
    if delivery is None:
        return _duplicate(session, delivery_id, run.id if created else None)
    return Received(duplicate=False, run_id=run.id, dispatch_id=dispatch_id)


def _duplicate(session: Session, delivery_id: str, created: str | None) -> Received | None:
    """The answer to a copy of a stored delivery (None: the id is new). A run this
    transaction ``created`` for it is removed: a copy changes nothing."""
    stored = session.execute(select(WebhookDelivery.run_id)
                             .where(WebhookDelivery.id == delivery_id)).first()
    if stored is None:
        return None
    if created is not None:
        session.execute(delete(Run).where(Run.id == created))
    return Received(duplicate=True, run_id=stored[0])


class _RunValues:
    """A run's row as attributes, for :func:`_change` to read and set."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def _apply(session: Session, event: RunEvent, source: str | None) -> tuple[Run, bool]:
    data = event.data
    by_external_id = select(Run).where(Run.external_id == data.external_id).with_for_update()
    run = session.scalar(by_external_id)
    now = utcnow()
    if run is None:
        missing = [f for f in ("dataset", "model") if getattr(data, f) is None]
        if missing:
            raise InvalidInputError(f"data.{missing[0]}: required for a run tunix-rt has not "
                                    "seen before", field=f"data.{missing[0]}")
        # FOR UPDATE locks nothing while the row does not exist: concurrent first
        # deliveries would all insert, and all but one fail on the unique external id.
        # ON CONFLICT DO NOTHING makes the later ones wait for the first transaction
        # and insert nothing; the SELECT ... FOR UPDATE that follows then finds the
        # committed run (a new statement sees it under READ COMMITTED) and locks it.
        insert_ignore(session, Run, {
            "id": new_run_id(), "external_id": data.external_id,
            "name": data.name or data.external_id, "dataset": data.dataset,
            "model": data.model, "status": RunStatus.pending.value,
            "origin": RunOrigin.webhook.value, "source": source, "config": {}, "metrics": {},
            "dry_run": False, "created_at": now, "updated_at": now}, key=("external_id",))
        run = session.scalar(by_external_id.execution_options(populate_existing=True))
    completed_now = _change(run, event, source, now)
    if data.progress:  # stored whatever the status: a late last step is not lost
        record_points(session, run.id, [(name, point.step, value) for point in data.progress
                                        for name, value in point.metrics.items()])
    session.flush()
    return run, completed_now


def _change(run: Any, event: RunEvent, source: str | None, now: datetime) -> bool:
    """Apply the event to ``run`` (a locked Run, or the row's values as attributes);
    True when it completed the run just now, so a quality loop is owed. Raises
    :class:`RunConflictError` or :class:`InvalidInputError`; the caller rolls back."""
    data = event.data
    target = _TARGET[event.type]
    if run.origin != RunOrigin.webhook.value:
        raise RunConflictError(
            f"data.external_id: {data.external_id!r} is run {run.id}, of origin {run.origin}: "
            "a webhook changes only runs that webhooks created", run_id=run.id)
    if run.source != source:
        raise RunConflictError(
            f"data.external_id: {data.external_id!r} is run {run.id}, created by "
            f"{_named(run.source)}: a delivery from {_named(source)} cannot change it",
            run_id=run.id)
    for field in ("name", "dataset", "model", "predictions_uri"):
        value = getattr(data, field)
        if value is not None and not getattr(run, field):
            setattr(run, field, value)
    if data.config:
        run.config = {**(run.config or {}), **data.config}
    if data.metrics:
        run.metrics = {**(run.metrics or {}), **data.metrics}
    if event.nonfinite:  # the fields named once each, however many deliveries had them
        earlier = (run.metrics or {}).get(NOTE_KEY)
        fields = (earlier[len(_NOTE_TEXT):].split(", ")
                  if isinstance(earlier, str) and earlier.startswith(_NOTE_TEXT) else [])
        run.metrics = {**(run.metrics or {}), NOTE_KEY: _NOTE_TEXT + ", ".join(
            dict.fromkeys(fields + event.nonfinite))}
    if _RANK[target.value] <= _RANK[run.status]:
        return False  # late or repeated news: never move backwards
    if target is RunStatus.completed:
        if data.predictions_uri:
            run.predictions_uri = data.predictions_uri
        if not run.predictions_uri:
            raise InvalidInputError("data.predictions_uri: required for run.completed",
                                    field="data.predictions_uri")
    run.status = target.value
    run.updated_at = now
    if target is RunStatus.running:
        run.started_at = run.started_at or now
    else:
        run.completed_at = now
        if target is RunStatus.failed:
            run.error = data.error or "the training job reported run.failed"
    return target is RunStatus.completed and not run.dry_run


def _named(source: str | None) -> str:
    return f"source {source}" if source is not None else "the anonymous secret"


def mark_dispatched(session: Session, dispatch_id: int, target: str, *,
                    lease: timedelta = START_LEASE) -> None:
    # last_error stays: a loop started is not yet a loop that ran. The error of the last
    # attempt is shown on the run until a loop for it completes (clear_loop_error).
    # The lease gives the loop ``lease`` to start and renew it before it counts as lost.
    dispatch = session.get(Dispatch, dispatch_id, with_for_update=True)
    dispatch.status = DispatchStatus.dispatched.value
    dispatch.target = target
    dispatch.attempts += 1
    dispatch.dispatched_at = utcnow()
    dispatch.lease_until = dispatch.dispatched_at + lease


def mark_failed_attempt(session: Session, dispatch_id: int, error: str) -> None:
    # Nothing was started: the claim is given up, and the next sweep may try again.
    dispatch = session.get(Dispatch, dispatch_id, with_for_update=True)
    dispatch.attempts += 1
    dispatch.last_error = error[:2000]
    dispatch.lease_until = None
    dispatch.claimed_by = None


def renew_lease(session: Session, run_id: str, holder: str, *,
                lease: timedelta = LEASE) -> int:
    """The run's quality loop is alive: its dispatches are leased for ``lease`` more, to
    ``holder``. Answers how many dispatch rows the run has (0: none to renew)."""
    result = session.execute(update(Dispatch).where(Dispatch.run_id == run_id)
                             .values(lease_until=utcnow() + lease, claimed_by=holder))
    return result.rowcount


def release_lease(session: Session, run_id: str, holder: str) -> None:
    """The run's loop ended: its lease is given up (when ``holder`` still holds it). A
    loop that ended without an evaluation is owed again at the next sweep."""
    session.execute(update(Dispatch).where(Dispatch.run_id == run_id,
                                           Dispatch.claimed_by == holder)
                    .values(lease_until=None, claimed_by=None))


def note_loop_error(session: Session, run_id: str, error: str, *,
                    at: datetime | None = None) -> bool:
    """Record why the run's quality loop could not run, on its latest dispatch (the run
    shows it as ``loop_error``). False when the run has no dispatch, or when ``at`` (when
    it went wrong) is older than the run's latest evaluation: a loop has run since.
    """
    dispatch = session.scalar(select(Dispatch).where(Dispatch.run_id == run_id)
                              .order_by(Dispatch.id.desc()).limit(1).with_for_update())
    if dispatch is None:
        return False
    if at is not None and session.scalar(
            select(exists().where(Evaluation.run_id == run_id, Evaluation.finished_at > at))):
        return False
    dispatch.last_error = error[:2000]
    return True


def clear_loop_error(session: Session, run_id: str) -> None:
    """A quality loop for the run completed: no error of an earlier attempt stands."""
    session.execute(update(Dispatch).where(Dispatch.run_id == run_id,
                                           Dispatch.last_error.is_not(None))
                    .values(last_error=None))


@dataclass(frozen=True)
class Owed:
    """A loop owed to a run. ``key``: the dispatch's key, or, once claimed by a sweeper,
    the idempotency key of that claim's lease period."""

    dispatch_id: int
    run_id: str
    key: str
    attempts: int


def _owed(now: datetime, older_than: timedelta) -> Any:
    """Which dispatches are owed at ``now``: the run's loop has not got as far as its gate
    (see below), attempts left, and no live lease. A pending row is owed ``older_than``
    after it was written (the receiver dispatches right after its commit); a dispatched
    row when its lease has expired or, without a lease (rows from before leases, a loop
    that ended without an evaluation), ``older_than`` after it was dispatched.

    A loop got as far as its gate when the run has an evaluation and none of its
    completed evaluations lacks a gate decision under its judge. A loop killed between
    storing the evaluation and gating (a receiver stopped mid-loop) is owed again; the
    loop then reuses the evaluation. A failed evaluation (a bad predictions file) is an
    answer: not owed again.
    """
    cutoff = now - older_than
    has_evaluation = exists().where(Evaluation.run_id == Dispatch.run_id)
    ungated = exists().where(
        Evaluation.run_id == Dispatch.run_id, Evaluation.status == "completed",
        ~exists().where(GateResult.run_id == Evaluation.run_id,
                        GateResult.judge == Evaluation.judge))
    no_lease = Dispatch.lease_until.is_(None)
    lease_free = no_lease | (Dispatch.lease_until < now)
    return ((~has_evaluation | ungated) & (Dispatch.attempts < MAX_DISPATCH_ATTEMPTS)
            & (((Dispatch.status == DispatchStatus.pending.value)
                & (Dispatch.created_at < cutoff) & lease_free)
               | ((Dispatch.status == DispatchStatus.dispatched.value)
                  & ((no_lease & (Dispatch.dispatched_at < cutoff))
                     | (Dispatch.lease_until < now)))))


def owed_dispatches(session: Session, *, older_than: timedelta, limit: int = 100,
                    now: datetime | None = None) -> list[Owed]:
    """Loops owed (see :func:`_owed`): never dispatched, or dispatched and their loop lost
    (the event was lost, the worker died). Reads only; the sweeper claims with
    :func:`claim_owed`."""
    rows = session.execute(
        select(Dispatch.id, Dispatch.run_id, Dispatch.key, Dispatch.attempts)
        .where(_owed(now or utcnow(), older_than)).order_by(Dispatch.created_at).limit(limit))
    return [Owed(*row) for row in rows]


def claim_owed(session: Session, *, older_than: timedelta, holder: str, limit: int = 100,
               lease: timedelta = LEASE, now: datetime | None = None) -> list[Owed]:
    """Claim the owed loops for ``holder`` (a sweeper) until ``lease`` from now.

    Rows are selected FOR UPDATE SKIP LOCKED: a second sweeper at the same time skips
    what the first is claiming, and once the first commits the rows hold a live lease
    and are not owed. The claim is also a compare-and-set on ``claims`` and the lease,
    for SQLite, where a SELECT takes no lock. Each claim opens a lease period; its
    idempotency key, ``<key>#claim<n>``, is the same for every attempt in the period
    (a retried start is one flow run) and new in the next (a crashed flow run is not
    handed back).
    """
    now = now or utcnow()
    rows = session.execute(
        select(Dispatch.id, Dispatch.run_id, Dispatch.key, Dispatch.attempts, Dispatch.claims)
        .where(_owed(now, older_than)).order_by(Dispatch.created_at).limit(limit)
        .with_for_update(skip_locked=True, of=Dispatch)).all()
    claimed = []
    for dispatch_id, run_id, key, attempts, claims in rows:
        won = session.execute(
            update(Dispatch).where(Dispatch.id == dispatch_id, Dispatch.claims == claims,
                                   Dispatch.lease_until.is_(None) | (Dispatch.lease_until < now))
            .values(claims=claims + 1, lease_until=now + lease, claimed_by=holder))
        if won.rowcount == 1:
            claimed.append(Owed(dispatch_id, run_id, f"{key}#claim{claims + 1}", attempts))
    return claimed


def dispatch_now(session_scope: Callable[[], Any], dispatcher: Dispatcher, dispatch_id: int,
                 run_id: str, key: str) -> str | None:
    """Start the loop and record it. Never raises: it runs after the answer was sent.

    A failed start is recorded for the sweeper. When the record itself cannot be written
    (the database went away right after the delivery's commit), the row stays as it
    was, pending, and is only logged: the sweeper finds a pending row, and a loop that
    did start renews its lease once it runs.
    """
    try:
        flow_run_id = dispatcher.dispatch(run_id, key)
    except Exception as exc:  # noqa: BLE001 - recorded; the sweeper retries
        _record(session_scope, mark_failed_attempt, dispatch_id, run_id,
                f"{type(exc).__name__}: {exc}")
        return None
    _record(session_scope, mark_dispatched, dispatch_id, run_id, dispatcher.target)
    return flow_run_id


def _record(session_scope: Callable[[], Any], mark: Callable[..., None], dispatch_id: int,
            run_id: str, detail: str) -> None:
    try:
        with session_scope() as session:
            mark(session, dispatch_id, detail)
    except Exception as exc:  # noqa: BLE001 - the row stays pending: the sweeper's to find
        if is_transient(exc):
            log.warning("dispatch %s of run %s: cannot record %s (%s); it stays pending for "
                        "the sweeper", dispatch_id, run_id, mark.__name__, exc)
        else:
            log.exception("dispatch %s of run %s: cannot record %s", dispatch_id, run_id,
                          mark.__name__)
