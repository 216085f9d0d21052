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
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, exists, insert, literal_column, select, update
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
    if batchable(session, event):
        (outcome,), _ = receive_batch(session, [Incoming(delivery_id, event, source)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    payload = event.model_dump(mode="json")
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


# The run's columns a delivery reads, and those it may change (see _change).
_RUN_FIELDS = ("id", "external_id", "origin", "source", "status", "dry_run", "name", "dataset",
               "model", "predictions_uri", "config", "metrics", "error", "started_at",
               "completed_at", "updated_at")
_RUN_CHANGES = ("name", "dataset", "model", "predictions_uri", "config", "metrics", "error",
                "status", "started_at", "completed_at", "updated_at")


@dataclass
class Incoming:
    """A verified delivery, to be stored with others in one transaction."""

    delivery_id: str
    event: RunEvent
    source: str | None = None


def batchable(session_or_dialect: Any, event: RunEvent) -> bool:
    """Whether :func:`receive_batch` takes the event: on PostgreSQL, naming its run's
    dataset and model (so the run can be created in the batch's one upsert) and carrying
    no points (nearly every delivery). Others take :func:`receive`'s ORM path."""
    dialect = (session_or_dialect if isinstance(session_or_dialect, str)
               else session_or_dialect.get_bind().dialect.name)
    data = event.data
    return dialect == "postgresql" and bool(data.dataset and data.model) and not data.progress


def receive_batch(session: Session, items: list[Incoming]
                  ) -> tuple[list[Received | InvalidInputError | None], list[int]]:
    """Store many deliveries in one transaction, in a few statements (PostgreSQL).

    The ORM path takes ten round trips per delivery, each a wait for the server, which on
    a busy machine is a wait for a core: it bounded a receiver to ~130 deliveries a
    second. Here, for the whole batch: one upsert creates or locks every run named
    (``ON CONFLICT DO UPDATE`` locks an existing row as ``FOR UPDATE`` would; rows in
    external-id order, so two batches never wait on each other in a cycle), one insert
    stores the deliveries (those whose id is taken are copies: answered as duplicates),
    :func:`_change` applies each new delivery in arrival order exactly as the ORM path
    does, and the runs' changes and the owed dispatches are written in one statement
    each. A delivery that cannot apply (409, 422) is taken back with what it created,
    and its outcome is the error; nothing of it stays.

    Answers each item's outcome (None: deferred) and the indexes of the deferred ones,
    to be received one by one after this commits: a second copy of an id within the
    batch, and the later deliveries of a run this batch created when its first failed.
    """
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    runs, table = Run.__table__, WebhookDelivery.__table__
    now = utcnow()
    outcomes: list[Received | InvalidInputError | None] = [None] * len(items)
    deferred: list[int] = []
    first: dict[str, int] = {}  # delivery id -> index of its first copy in the batch
    for i, item in enumerate(items):
        if item.delivery_id in first:
            deferred.append(i)
        else:
            first[item.delivery_id] = i
    creators: dict[str, Incoming] = {}  # external id -> the first delivery naming it
    for i in first.values():
        creators.setdefault(items[i].event.data.external_id, items[i])
    rows = session.execute(
        pg_insert(runs).values([{
            "id": new_run_id(), "external_id": external_id,
            "name": item.event.data.name or external_id, "dataset": item.event.data.dataset,
            "model": item.event.data.model, "status": RunStatus.pending.value,
            "origin": RunOrigin.webhook.value, "source": item.source, "config": {},
            "metrics": {}, "dry_run": False, "created_at": now, "updated_at": now}
            for external_id, item in sorted(creators.items())])
        .on_conflict_do_update(index_elements=["external_id"],
                               set_={"updated_at": runs.c.updated_at})
        .returning(*(runs.c[f] for f in _RUN_FIELDS), literal_column("xmax = 0"))).all()
    state: dict[str, _RunValues] = {}
    created: set[str] = set()
    for *values, was_created in rows:
        run = _RunValues(**dict(zip(_RUN_FIELDS, values)))
        run.before = dict(zip(_RUN_FIELDS, values))
        state[run.external_id] = run
        if was_created:
            created.add(run.external_id)
    new = set(session.scalars(
        pg_insert(table).values([{
            "id": items[i].delivery_id, "event_type": items[i].event.type,
            "payload": items[i].event.model_dump(mode="json"),
            "run_id": state[items[i].event.data.external_id].id, "received_at": now}
            for _, i in sorted(first.items())])
        .on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)))
    copies = [d for d in first if d not in new]
    stored = dict(session.execute(select(table.c.id, table.c.run_id)
                                  .where(table.c.id.in_(copies))).all()) if copies else {}
    taken_back: list[str] = []
    owed: dict[str, str] = {}  # delivery id -> run id
    failed_creation: set[str] = set()
    for i in sorted(first.values()):
        item = items[i]
        external_id = item.event.data.external_id
        run = state[external_id]
        if item.delivery_id not in new:
            outcomes[i] = Received(duplicate=True, run_id=stored.get(item.delivery_id))
            continue
        if external_id in failed_creation:
            taken_back.append(item.delivery_id)
            deferred.append(i)
            continue
        snapshot = dict(run.__dict__)
        try:
            if _change(run, item.event, item.source, now):
                owed[item.delivery_id] = run.id
            outcomes[i] = Received(duplicate=False, run_id=run.id)
            run.applied = True
        except InvalidInputError as exc:
            run.__dict__ = snapshot
            outcomes[i] = exc
            taken_back.append(item.delivery_id)
            if external_id in created and not getattr(run, "applied", False):
                failed_creation.add(external_id)  # created for it: its later news waits
    if taken_back:
        session.execute(delete(table).where(table.c.id.in_(taken_back)))
    unused = [state[e].id for e in created
              if e in failed_creation or not getattr(state[e], "applied", False)]
    if unused:
        session.execute(delete(runs).where(runs.c.id.in_(unused)))
    changed = [run for e, run in state.items() if e not in failed_creation
               and any(getattr(run, f) != run.before[f] for f in _RUN_CHANGES)]
    if changed:
        session.execute(
            update(runs).where(runs.c.id == bindparam("run_id"))
            .values({f: bindparam(f"new_{f}") for f in _RUN_CHANGES}),
            [{"run_id": run.id, **{f"new_{f}": getattr(run, f) for f in _RUN_CHANGES},
              "new_updated_at": now} for run in changed])
    if owed:
        dispatches = Dispatch.__table__
        ids = dict(session.execute(
            insert(dispatches).returning(dispatches.c.key, dispatches.c.id,
                                         sort_by_parameter_order=True),
            [{"key": key, "run_id": run_id, "status": DispatchStatus.pending.value,
              "attempts": 0, "claims": 0, "created_at": now}
             for key, run_id in owed.items()]).all())
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Received) and not outcome.duplicate:
                key = items[i].delivery_id
                if key in ids:
                    outcomes[i] = Received(False, outcome.run_id, ids[key])
    return outcomes, sorted(deferred)


class BatchWriter:
    """Stores deliveries from many requests together: group commit.

    A request's delivery is queued; a writer thread takes everything queued (up to
    ``max_batch``) and stores it with :func:`receive_batch` in one transaction, then
    answers each request. Alone, a delivery is a batch of one; under load the batches
    grow, so a busy receiver makes fewer round trips per delivery rather than queueing
    for connections. Each request is still answered only after its delivery is
    committed. A batch that fails on a database error that is not transient is stored
    again one delivery at a time, so one delivery's fault is not another's.
    """

    IDLE_S = 30.0

    def __init__(self, session_scope: Callable[[], Any], *, max_batch: int = 200,
                 writers: int = 2) -> None:
        self._scope = session_scope
        self.max_batch = max_batch
        self._writers = writers
        self._queue: queue.SimpleQueue[tuple[Incoming, Future[Received]]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def receive(self, delivery_id: str, event: RunEvent, source: str | None) -> Received:
        """The delivery's :class:`Received` once committed, or the error :func:`receive`
        would raise."""
        import asyncio

        return await asyncio.wrap_future(self.submit(Incoming(delivery_id, event, source)))

    def submit(self, item: Incoming) -> Future[Received]:
        future: Future[Received] = Future()
        # Writers start on first use and stop after IDLE_S without work (an app built and
        # not served, or idle, holds no thread); under the lock, so a writer that stops
        # never leaves a delivery queued with nobody to take it.
        with self._lock:
            while len(self._threads) < self._writers:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"tunix-rt-ingest-{len(self._threads) + 1}")
                self._threads.append(thread)
                thread.start()
            self._queue.put((item, future))
        return future

    def _work(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=self.IDLE_S)]
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._threads.remove(threading.current_thread())
                        return
                continue
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write(batch)
            except BaseException as exc:  # noqa: BLE001 - no request may wait forever
                log.exception("storing a batch of %d deliveries", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)

    def _write(self, batch: list[tuple[Incoming, Future[Received]]]) -> None:
        items = [item for item, _ in batch]
        try:
            with self._scope() as session:
                outcomes, deferred = receive_batch(session, items)
        except Exception as exc:  # noqa: BLE001 - answered to each request
            if len(batch) > 1 and not is_transient(exc):
                for item, future in batch:
                    self._one(item, future)
                return
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), outcome in zip(batch, outcomes):
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            elif outcome is not None:
                future.set_result(outcome)
        for i in deferred:
            self._one(*batch[i])

    def _one(self, item: Incoming, future: Future[Received]) -> None:
        try:
            with self._scope() as session:
                received = receive(session, item.delivery_id, item.event, source=item.source)
        except Exception as exc:  # noqa: BLE001 - answered to the request
            future.set_exception(exc)
            return
        future.set_result(received)


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
