"""Group commit for the webhook receiver on PostgreSQL: one transaction per batch.

A delivery stored on its own costs five round trips to PostgreSQL (a pool ping, BEGIN,
the run's upsert, the delivery's statement, COMMIT) plus a hop into a worker thread, and
under load each round trip is a wait for a core: that, not the work, bounded a receiver
to a few hundred deliveries a second. Here the deliveries that arrive together share
those costs. Each request queues its delivery and waits; one writer task per process
takes what is queued (at most ``max_batch``) and stores it in one transaction, in two
round trips on one connection of its own, each one message (BEGIN with the runs' upsert;
then one statement for the deliveries, the runs' changes and the dispatches, with
COMMIT), so PostgreSQL is woken twice per batch, not once per statement or message.
No batch waits to fill: a batch is what queued while the previous one was written.

The semantics are :func:`tunix_rt.service.deliveries.receive`'s, item by item:

- a request is answered only after its batch committed: a crash before the commit
  sends no 2xx, the sender retries, and the ``webhook-id`` dedupes the retry;
- each run is locked (``ON CONFLICT DO UPDATE``) before it is read, and changed by
  :func:`deliveries._change`, the same decision as the one-at-a-time path; a batch
  holds each run and each ``webhook-id`` once (a second delivery for either waits
  for the next batch, in arrival order), and locks its runs in ``external_id`` order,
  so two writers (two workers, two receivers) cannot deadlock on them;
- a delivery the decision refuses (409, 422) stores nothing, and a run created for
  it in this batch is removed, as a rollback would; its copy of a stored delivery is a
  duplicate (200), as before;
- a connection lost, or PostgreSQL down: every delivery of the batch gets
  :class:`StoreUnavailable` (503 with Retry-After), nothing is half-written, and the
  next batch connects again; a deadlock or serialization failure is retried;
- any other database error (a row the batch statements did not foresee): the
  batch is rolled back and its deliveries are stored one at a time by the ordinary
  path, so one bad delivery cannot fail the others.

Only the fast path's deliveries come here (PostgreSQL, an event naming its dataset and
model, no progress points: nearly all); the others take the ordinary path.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tunix_rt.errors import InvalidInputError
from tunix_rt.service import deliveries
from tunix_rt.service.deliveries import Received
from tunix_rt.service.webhooks import RunEvent
from tunix_rt.store.models import (DispatchStatus, RunOrigin, RunStatus, new_run_id,
                                   utcnow)

log = logging.getLogger("tunix_rt.service.group_commit")

MAX_BATCH = 256
DEADLOCK_RETRIES = 3
# The run columns a delivery may change (deliveries._change); a changed run gets all of
# them written from the locked row's values as changed in Python.
_CHANGEABLE = ("name", "dataset", "model", "predictions_uri", "config", "metrics", "status",
               "error", "started_at", "completed_at", "updated_at")

# Creates each run not seen before, locks each (new or not), and returns its columns.
# ORDER BY external_id: every writer locks in the same order.
_UPSERT_RUNS = """
INSERT INTO runs (id, external_id, name, dataset, model, status, origin, source, config,
                  metrics, dry_run, created_at, updated_at)
SELECT v.id, v.external_id, v.name, v.dataset, v.model, %(pending)s, %(origin)s, v.source,
       '{{}}'::jsonb, '{{}}'::jsonb, false, %(now)s, %(now)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(id text, external_id text, name text,
                                               dataset text, model text, source text)
ORDER BY v.external_id
ON CONFLICT (external_id) DO UPDATE SET updated_at = runs.updated_at
RETURNING runs.external_id, {fields}, xmax = 0
""".format(fields=", ".join(f"runs.{f}" for f in deliveries._RUN_FIELDS))

# Stores the new deliveries (ordered by id, so two writers wait on copies in one order),
# changes the runs of those that were new, writes their dispatches, and removes the runs
# created for deliveries that turned out to be copies or were refused. Answers, per
# delivery, whether it was new, its dispatch, and a copy's stored run.
_STORE = """
WITH v AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(
        did text, event_type text, payload jsonb, run_id text, created boolean,
        change boolean, owed boolean, {columns})
), delivery AS (
    INSERT INTO webhook_deliveries (id, event_type, payload, run_id, received_at)
    SELECT did, event_type, payload, run_id, %(now)s FROM v ORDER BY did
    ON CONFLICT (id) DO NOTHING RETURNING id
), changed AS (
    UPDATE runs AS r SET {assignments}
    FROM v WHERE r.id = v.run_id AND v.change AND v.did IN (SELECT id FROM delivery)
    RETURNING r.id
), dispatch AS (
    INSERT INTO dispatches (key, run_id, status, attempts, claims, created_at)
    SELECT did, run_id, %(dispatch_pending)s, 0, 0, %(now)s FROM v
    WHERE owed AND did IN (SELECT id FROM delivery)
    RETURNING key, id
), dropped AS (
    DELETE FROM runs WHERE id = ANY(%(drop)s::text[])
        OR id IN (SELECT run_id FROM v WHERE created AND did NOT IN (SELECT id FROM delivery))
    RETURNING id
)
SELECT v.did, v.did IN (SELECT id FROM delivery), (SELECT id FROM dispatch WHERE key = v.did),
       w.id IS NOT NULL, w.run_id, (SELECT count(*) FROM changed) + (SELECT count(*) FROM dropped)
FROM v LEFT JOIN webhook_deliveries AS w ON w.id = v.did
UNION ALL
SELECT p.did, false, NULL, w.id IS NOT NULL, w.run_id, 0
FROM unnest(%(probe)s::text[]) AS p(did) LEFT JOIN webhook_deliveries AS w ON w.id = p.did
""".format(
    columns=", ".join(f"{f} {t}" for f, t in (
        ("name", "text"), ("dataset", "text"), ("model", "text"), ("predictions_uri", "text"),
        ("config", "jsonb"), ("metrics", "jsonb"), ("status", "text"), ("error", "text"),
        ("started_at", "timestamptz"), ("completed_at", "timestamptz"),
        ("updated_at", "timestamptz"))),
    assignments=", ".join(f"{f} = v.{f}" for f in _CHANGEABLE))

_STORED = "SELECT id, run_id FROM webhook_deliveries WHERE id = ANY(%(ids)s::text[])"


def _prepared(name: str, sql: str, params: list[tuple[str, str]]) -> tuple[str, str]:
    """``PREPARE`` of ``sql`` (its ``%(param)s`` as ``$n`` of the given types) and the
    ``EXECUTE`` that runs it with the parameters bound by the client."""
    for n, (param, _) in enumerate(params, start=1):
        sql = sql.replace(f"%({param})s", f"${n}")
    types = ", ".join(kind for _, kind in params)
    arguments = ", ".join(f"%({param})s" for param, _ in params)
    return f"PREPARE {name}({types}) AS {sql}", f"EXECUTE {name}({arguments})"


# Each round trip is one message of the simple query protocol, parameters bound by the
# client, so the server is woken once per round trip, not once per protocol message; the
# statements are prepared once per connection, so they are not planned again per batch.
_PREPARE_UPSERT, _EXECUTE_UPSERT = _prepared("tunix_rt_upsert_runs", _UPSERT_RUNS, [
    ("rows", "jsonb"), ("now", "timestamptz"), ("pending", "text"), ("origin", "text")])
_PREPARE_STORE, _EXECUTE_STORE = _prepared("tunix_rt_store_deliveries", _STORE, [
    ("rows", "jsonb"), ("now", "timestamptz"), ("drop", "text[]"), ("probe", "text[]"),
    ("dispatch_pending", "text")])
_BEGIN_UPSERT_RUNS = "BEGIN;" + _EXECUTE_UPSERT
_STORE_COMMIT = _EXECUTE_STORE + ";COMMIT"


class StoreUnavailable(Exception):
    """The database could not be reached or could not take the batch: nothing of the
    delivery is stored, and the sender should retry (503)."""


def eligible(event: RunEvent) -> bool:
    """Whether the delivery can be stored in a batch (the fast path's deliveries)."""
    data = event.data
    return bool(data.dataset and data.model and not data.progress)


@dataclass
class _Pending:
    delivery_id: str
    event: RunEvent
    source: str | None
    future: asyncio.Future[Received]


def for_engine(engine: Any, one_at_a_time: Callable[[str, RunEvent, str | None], Received],
               max_batch: int = MAX_BATCH
               ) -> Callable[[str, RunEvent, str | None], Awaitable[Received]]:
    """How the receiver stores a verified delivery: through a :class:`GroupCommit` on
    PostgreSQL when the delivery is eligible and ``max_batch`` > 1, otherwise by
    ``one_at_a_time`` (:func:`deliveries.receive` in a session) in a worker thread."""
    from starlette.concurrency import run_in_threadpool

    writer = None
    if engine.dialect.name == "postgresql" and max_batch > 1:
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        cparams.pop("context", None)  # SQLAlchemy's adapters, for its sync connections
        cparams.setdefault("connect_timeout", 10)

        async def connect() -> Any:
            import psycopg

            conn = await psycopg.AsyncConnection.connect(
                *cargs, autocommit=True, cursor_factory=psycopg.AsyncClientCursor, **cparams)
            await conn.execute(f"{_PREPARE_UPSERT};{_PREPARE_STORE}")
            return conn

        writer = GroupCommit(connect, one_at_a_time, max_batch=max_batch)

    async def store(delivery_id: str, event: RunEvent, source: str | None) -> Received:
        if writer is not None and eligible(event):
            return await writer.receive(delivery_id, event, source)
        return await run_in_threadpool(one_at_a_time, delivery_id, event, source)

    store.writer = writer  # type: ignore[attr-defined]
    return store


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


class GroupCommit:
    """The batch writer of one process: ``await receive(...)`` stores a delivery.

    ``connect`` opens a psycopg ``AsyncConnection`` (autocommit: the transactions are
    written out); ``one_at_a_time`` stores one delivery by the ordinary path (in a
    worker thread), for a batch the statements could not store.
    """

    def __init__(self, connect: Callable[[], Any],
                 one_at_a_time: Callable[[str, RunEvent, str | None], Any], *,
                 max_batch: int = MAX_BATCH) -> None:
        self._connect = connect
        self._one_at_a_time = one_at_a_time
        self.max_batch = max(1, max_batch)
        self._queue: deque[_Pending] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # written, for tests and logs
        self.largest = 0

    async def receive(self, delivery_id: str, event: RunEvent,
                      source: str | None = None) -> Received:
        """Store the delivery with whatever else is queued; the answer of
        :func:`deliveries.receive`, or its exception, or :class:`StoreUnavailable`."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (a server started again): start over
            self._loop, self._queue, self._writer, self._conn = loop, deque(), None, None
        pending = _Pending(delivery_id, event, source, loop.create_future())
        self._queue.append(pending)
        if self._writer is None:
            self._writer = loop.create_task(self._drain())
        return await pending.future

    # --- the writer ---------------------------------------------------------------------

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                if batch:
                    await self._write(batch)
        except BaseException as exc:  # cancelled at shutdown: no one is left unanswered
            for pending in self._queue:
                _fail(pending, StoreUnavailable(f"the receiver is stopping ({exc!r})"))
            self._queue.clear()
            raise
        finally:
            self._writer = None

    def _take(self) -> list[_Pending]:
        """The next batch: queued deliveries in arrival order, each webhook-id and each
        run at most once (the others stay queued, in order, for the next batch)."""
        batch: list[_Pending] = []
        later: list[_Pending] = []
        ids: set[str] = set()
        runs: set[str] = set()
        while self._queue and len(batch) < self.max_batch:
            pending = self._queue.popleft()
            if pending.future.done():  # its request was cancelled: it was not answered
                continue
            external_id = pending.event.data.external_id
            if pending.delivery_id in ids or external_id in runs:
                later.append(pending)
                continue
            ids.add(pending.delivery_id)
            runs.add(external_id)
            batch.append(pending)
        self._queue.extendleft(reversed(later))
        return batch

    async def _write(self, batch: list[_Pending]) -> None:
        import psycopg

        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                conn = await self._connection()
                answers = await _store_batch(conn, batch)
            except asyncio.CancelledError:
                for pending in batch:
                    _fail(pending, StoreUnavailable("the receiver is stopping"))
                await self._discard()
                raise
            except psycopg.Error as exc:
                retry = (exc.sqlstate or "").startswith("40") and attempt < DEADLOCK_RETRIES
                if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) \
                        and not retry:
                    await self._discard()
                    log.warning("cannot store %d deliveries: %s", len(batch), exc)
                    for pending in batch:
                        _fail(pending, StoreUnavailable(str(exc)))
                    return
                if not await self._rollback():
                    await self._discard()
                if retry:
                    continue
                log.warning("a batch of %d deliveries failed (%s: %s); storing them one at "
                            "a time", len(batch), type(exc).__name__, exc)
                await self._each(batch)
                return
            except OSError as exc:  # the connection could not be opened
                await self._discard()
                for pending in batch:
                    _fail(pending, StoreUnavailable(str(exc)))
                return
            except Exception:  # noqa: BLE001 - unforeseen: each delivery gets its own answer
                log.exception("a batch of %d deliveries failed; storing them one at a time",
                              len(batch))
                if not await self._rollback():
                    await self._discard()
                await self._each(batch)
                return
            self.batches += 1
            self.largest = max(self.largest, len(batch))
            for pending, answer in zip(batch, answers):
                if isinstance(answer, BaseException):
                    _fail(pending, answer)
                elif not pending.future.done():
                    pending.future.set_result(answer)
            return

    async def _each(self, batch: list[_Pending]) -> None:
        from starlette.concurrency import run_in_threadpool

        for pending in batch:
            try:
                answer = await run_in_threadpool(self._one_at_a_time, pending.delivery_id,
                                                 pending.event, pending.source)
            except Exception as exc:  # noqa: BLE001 - the request's own answer
                _fail(pending, exc)
            else:
                if not pending.future.done():
                    pending.future.set_result(answer)

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = await self._connect()
        return self._conn

    async def _rollback(self) -> bool:
        try:
            await self._conn.execute("ROLLBACK")
            return True
        except Exception:  # noqa: BLE001 - the connection is dropped instead
            return False

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # noqa: BLE001 - it is gone either way
                pass


def _fail(pending: _Pending, exc: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)


async def _store_batch(conn: Any, batch: list[_Pending]) -> list[Received | BaseException]:
    """Store ``batch`` in one transaction; per delivery, its answer or its exception.

    Raises psycopg's errors (the transaction is then open or aborted: the caller rolls
    back)."""
    now = utcnow()
    new_ids = [new_run_id() for _ in batch]
    runs_json = _dumps([{"id": run_id, "external_id": p.event.data.external_id,
                         "name": p.event.data.name or p.event.data.external_id,
                         "dataset": p.event.data.dataset, "model": p.event.data.model,
                         "source": p.source} for p, run_id in zip(batch, new_ids)])
    cur = conn.cursor()
    await cur.execute(_BEGIN_UPSERT_RUNS, {"rows": runs_json, "now": now,
                                           "pending": RunStatus.pending.value,
                                           "origin": RunOrigin.webhook.value})
    cur.nextset()  # past BEGIN's result
    rows = {row[0]: row[1:] for row in await cur.fetchall()}

    answers: list[Received | BaseException | None] = [None] * len(batch)
    stored: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    probe: list[str] = []
    drop: list[str] = []
    for i, pending in enumerate(batch):
        *values, created = rows[pending.event.data.external_id]
        before = dict(zip(deliveries._RUN_FIELDS, values))
        run = deliveries._RunValues(**before)
        try:
            owed = deliveries._change(run, pending.event, pending.source, now)
        except InvalidInputError as exc:  # a copy of a stored delivery is a duplicate
            answers[i] = exc
            probe.append(pending.delivery_id)
            index[pending.delivery_id] = i
            if created:
                drop.append(run.id)
            continue
        change = any(getattr(run, f) != before[f] for f in _CHANGEABLE)
        if change:
            run.updated_at = now  # as the ORM's onupdate does
        index[pending.delivery_id] = i
        stored.append({"did": pending.delivery_id, "event_type": pending.event.type,
                       "payload": pending.event.model_dump(mode="json"), "run_id": run.id,
                       "created": bool(created), "change": change, "owed": owed,
                       **{f: getattr(run, f) for f in _CHANGEABLE}})

    await cur.execute(_STORE_COMMIT, {"rows": _dumps(stored), "now": now, "drop": drop,
                                      "probe": probe,
                                      "dispatch_pending": DispatchStatus.pending.value})
    results = await cur.fetchall()  # the first result, the statement's (then COMMIT's)
    unseen: list[str] = []  # copies stored by transactions that committed meanwhile
    for did, new, dispatch_id, seen, stored_run, _ in results:
        i = index[did]
        if new:
            run_id = rows[batch[i].event.data.external_id][0]
            answers[i] = Received(duplicate=False, run_id=run_id, dispatch_id=dispatch_id)
        elif seen:
            answers[i] = Received(duplicate=True, run_id=stored_run)
        else:
            unseen.append(did)
    if unseen:  # committed now: a new statement sees what the batch's snapshot did not
        cur = conn.cursor()
        await cur.execute(_STORED, {"ids": unseen})
        for did, stored_run in await cur.fetchall():
            answers[index[did]] = Received(duplicate=True, run_id=stored_run)
    for i, answer in enumerate(answers):
        if answer is None:  # cannot happen: every delivery has a row in the answer
            answers[i] = StoreUnavailable("the batch gave no answer for this delivery")
    return answers  # type: ignore[return-value]
