"""Starting the quality loop for a run: the dispatchers the receiver and the sweeper use.

- ``EventDispatcher`` (a Prefect server is configured): creates the quality-loop
  deployment's flow run directly (the delivery id its idempotency key), then emits
  ``tunix.run.completed`` for resource ``tunix.run.<id>`` for whatever else watches.
  (A deployment trigger on the event took ~1 s, and up to 6 s under load, in the
  server's trigger and action services before the flow run existed.)
- ``DeploymentDispatcher``: starts the deployment directly, with the delivery id as
  the idempotency key, so the same dispatch twice is one flow run. The sweeper uses it.
- ``LocalDispatcher`` (no server: the embedded default): an in-process worker
  thread runs the flow.

A loop that cannot run says so on its run (``loop_error``, the last error of the run's
dispatch): a failed dispatch is recorded by ``dispatch_now``, a failed or crashed loop
by the quality-loop flow's hooks, and a flow run that crashed before the loop's code
even ran (a failing pull step, a flow that cannot be imported) by ``CrashWatcher``,
which the receiver runs beside an ``EventDispatcher``.

A loop has a deadline, ``TUNIX_RT_LOOP_TIMEOUT_S`` (:func:`loop_timeout_s`): Prefect
times the flow run out, and, for a loop stuck where Prefect cannot interrupt it (a
worker thread blocked in a read), its :class:`LeaseKeeper` stops renewing and lets the
lease lapse, noting why on the run, so the sweeper may start the loop again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from tunix_rt.errors import NotFoundError
from tunix_rt.service import deliveries
from tunix_rt.service.deliveries import Dispatcher
from tunix_rt.tasks import events

QUALITY_LOOP_FLOW = "quality-loop"
QUALITY_LOOP_DEPLOYMENT = f"{QUALITY_LOOP_FLOW}/quality-loop"
# Event ids derive from the delivery id: the same delivery emitted twice is one event.
_EVENT_NAMESPACE = uuid.UUID("9b1f3c2e-6a55-4f0e-9d43-2b7f1d7d5a10")

log = logging.getLogger("tunix_rt.dispatch")


def loop_timeout_s() -> float:
    """``TUNIX_RT_LOOP_TIMEOUT_S``: the most seconds one quality loop may run."""
    from tunix_rt.settings import get_settings

    return get_settings().loop_timeout_s


def timed_out_error(run_ref: Any, seconds: float) -> str:
    """What a run shows when its loop outlived its deadline."""
    return (f"the quality loop for run {run_ref} ran longer than {seconds:g} s "
            "(TUNIX_RT_LOOP_TIMEOUT_S) and was given up: its lease lapsed, so the sweeper "
            "may start it again")


def has_prefect_server() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


class EventDispatcher:
    """With a Prefect server: the quality-loop deployment's flow run, created here, and
    the ``tunix.run.completed`` event.

    The flow run is created by one API call, with ``key`` (the delivery id, or a sweeper
    claim's key) as its idempotency key: the same dispatch twice is one flow run. The
    event follows, whether or not the flow run could be created (automations watch for
    it; its id derives from ``key``, so a retried dispatch is one event); it no longer
    starts the loop: a trigger took ~1 s (6 s under load) in the server's trigger and
    action services before the flow run existed. A failed creation raises, so
    ``dispatch_now`` records it and the sweeper retries.
    """

    target = "event"

    def __init__(self, deployment: str = QUALITY_LOOP_DEPLOYMENT) -> None:
        self.deployment = deployment
        self._deployment_id: uuid.UUID | None = None  # read once, by name

    def dispatch(self, run_id: str, key: str) -> str | None:
        flow_run_id: str | None = None
        try:
            flow_run_id = self._create_flow_run(run_id, key)
        finally:
            payload = {"run_id": run_id, "delivery_id": key,
                       **({"flow_run_id": flow_run_id} if flow_run_id else {})}
            if events.emit_run_event(events.RUN_COMPLETED, run_id, payload,
                                     event_id=uuid.uuid5(_EVENT_NAMESPACE, key)) is None:
                log.warning("run %s: tunix.run.completed not emitted (Prefect events are "
                            "disabled in this process)", run_id)
        return flow_run_id

    def _create_flow_run(self, run_id: str, key: str) -> str:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        with get_client(sync_client=True) as client:
            for attempt in range(2):
                if self._deployment_id is None:
                    self._deployment_id = client.read_deployment_by_name(self.deployment).id
                try:
                    flow_run = client.create_flow_run_from_deployment(
                        self._deployment_id, parameters={"run_id": run_id},
                        idempotency_key=key, tags=["tunix-rt"])
                    return str(flow_run.id)
                except ObjectNotFound:
                    if attempt:
                        raise
                    self._deployment_id = None  # deleted and deployed again: a new id
        raise AssertionError("unreachable")


class DeploymentDispatcher:
    target = "deployment"

    def __init__(self, deployment: str = QUALITY_LOOP_DEPLOYMENT) -> None:
        self.deployment = deployment

    def dispatch(self, run_id: str, key: str) -> str | None:
        from prefect.deployments import run_deployment

        flow_run = run_deployment(self.deployment, parameters={"run_id": run_id},
                                  idempotency_key=key, timeout=0, as_subflow=False,
                                  tags=["tunix-rt", "dispatch"])
        return str(flow_run.id)


class LocalDispatcher:
    """Runs the quality loop in a worker thread of this process, one run at a time.

    A run waiting in the queue is alive as long as this process is: its lease is held
    from the dispatch until its loop has run, so the sweeper does not start again a loop
    that only waits behind a slow one. The waiting runs' leases are renewed by one thread
    for the whole queue; only the loop that runs has a :class:`LeaseKeeper` thread of its
    own. (A thread per waiting run made threads and memory grow with the backlog.) A loop that outlives its
    deadline (``TUNIX_RT_LOOP_TIMEOUT_S``) cannot be stopped from outside its thread:
    its lease lapses, and another worker thread takes over the queue behind it.
    """

    target = "local"

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, LeaseKeeper] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._waiting: dict[int, LeaseKeeper] = {}  # by id(): queued, not yet running
        self._closed = threading.Event()
        self._renewer = threading.Thread(target=self._renew_waiting, daemon=True,
                                         name="tunix-rt-queue-lease")
        self._renewer.start()
        self._add_worker()

    def dispatch(self, run_id: str, key: str) -> str | None:
        keeper = LeaseKeeper(run_id, f"local:{key}")
        keeper.renew()  # held from now on; renewed by _renew_waiting while it waits
        with self._lock:
            self._waiting[id(keeper)] = keeper
        self._queue.put((run_id, keeper))
        return None

    def waiting(self) -> int:
        """How many dispatched loops wait in the queue."""
        with self._lock:
            return len(self._waiting)

    def _renew_waiting(self) -> None:
        every = deliveries.RENEW_EVERY.total_seconds()
        while not self._closed.wait(every):
            with self._lock:
                keepers = list(self._waiting.values())
            for keeper in keepers:
                with self._lock:
                    if id(keeper) not in self._waiting:
                        continue  # its loop has started: its own keeper renews it
                keeper.renew()

    def join(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far has run (tests, graceful shutdown)."""
        self._queue.join()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            threads = [t for t in self._threads if t.is_alive()]
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join(timeout=30)

    def _add_worker(self) -> None:
        """One more worker thread: at start, and in place of one stuck past its deadline."""
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            thread = threading.Thread(target=self._work, daemon=True,
                                      name=f"tunix-rt-loop-{len(self._threads) + 1}")
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        from tunix_rt.flows.quality_loop import quality_loop
        from tunix_rt.flows.subflows import without_heartbeats

        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                run_id, keeper = item
                with self._lock:
                    self._waiting.pop(id(keeper), None)
                timeout = loop_timeout_s()
                # From here the queued lease is held for the loop, at most until its deadline.
                keeper.arm(timeout, on_expire=self._add_worker)
                # No heartbeat thread (its join costs ~0.9 s a loop): this dispatcher
                # runs only without a Prefect server, so the API that would watch the
                # heartbeats lives and dies with this process; the lease is what lets
                # the sweeper see a loop that died.
                with keeper, without_heartbeats():  # the lease is released once it ran
                    quality_loop.with_options(timeout_seconds=timeout)(run_id=run_id)
            except Exception:  # noqa: BLE001 - a failed loop is on record in Prefect
                log.exception("quality loop for run %s failed", item[0] if item else None)
            finally:
                self._queue.task_done()


class InlineDispatcher:
    """Runs the loop right here, as a subflow of the caller (the sweeper without a server)."""

    target = "inline"

    def dispatch(self, run_id: str, key: str) -> str | None:
        from tunix_rt.flows.quality_loop import quality_loop
        from tunix_rt.flows.subflows import without_heartbeats

        loop = quality_loop.with_options(timeout_seconds=loop_timeout_s())
        with without_heartbeats():  # the calling flow (the sweeper) sends heartbeats
            state = loop(run_id=run_id, return_state=True)
        return str(state.state_details.flow_run_id) if state.state_details else None


def note_loop_error(run_ref: Any, error: str, *, at: datetime | None = None) -> bool:
    """Show ``error`` on the run (its id or external id) as why its quality loop did not
    run. Never raises: it is called from hooks and from a watcher thread."""
    from tunix_rt.store import runs
    from tunix_rt.store.db import session_scope

    if not run_ref:
        return False
    try:
        with session_scope() as session:
            run = runs.get_run(session, str(run_ref))
            return deliveries.note_loop_error(session, run.id, error, at=at)
    except NotFoundError:
        return False
    except Exception:  # noqa: BLE001 - the database may be what is wrong
        log.exception("could not record on run %s why its quality loop did not run: %s",
                      run_ref, error)
        return False


def clear_loop_error(run_ref: Any) -> None:
    """A quality loop for the run completed: the run shows no loop error any more."""
    from tunix_rt.store import runs
    from tunix_rt.store.db import session_scope

    try:
        with session_scope() as session:
            deliveries.clear_loop_error(session, runs.get_run(session, str(run_ref)).id)
    except NotFoundError:
        pass
    except Exception:  # noqa: BLE001
        log.exception("could not clear the loop error of run %s", run_ref)


class LeaseKeeper:
    """Holds the lease of a run's dispatches while its quality loop runs.

    A context manager around the loop: it renews the lease once on entry, then every
    ``every`` from a daemon thread, and releases it on exit. A thread rather than a
    renewal at the start of each task: one task (scoring 20,000 items with an LLM
    judge) can run far longer than any lease, and a lease that lapses mid-task would let
    the sweeper start the loop again. A process that dies takes the thread with it, so
    the lease of a dead loop lapses and the sweeper re-dispatches it. Never raises: the
    database may be what is wrong, and the loop is worth running anyway.

    A loop that hangs (a stuck call, a deadlock) would renew forever, so the keeper has
    a deadline (``deadline_s``, or :meth:`arm`): past it, it stops renewing, lets the
    lease lapse at once, notes why on the run and calls ``on_expire``; the sweeper may
    then start the loop again (up to ``MAX_DISPATCH_ATTEMPTS``).
    """

    def __init__(self, run_ref: Any, holder: str | None = None, *,
                 lease: timedelta = deliveries.LEASE,
                 every: timedelta = deliveries.RENEW_EVERY,
                 deadline_s: float | None = None) -> None:
        self.run_ref = str(run_ref) if run_ref else ""
        self.holder = holder or f"loop:{uuid.uuid4().hex}"
        self.lease = lease
        self.every = every
        self.renewals = 0
        self.expired = False
        self._entered = False
        self._run_id: str | None = None
        self._held_at: float | None = None  # when a renewal last found the run's dispatches
        self._stop = threading.Event()
        self._poke = threading.Event()  # the deadline changed, or stop: look again
        self._deadline: float | None = None
        self._timeout_s: float | None = None
        self._on_expire: Callable[[], None] | None = None
        # Made on entry: a keeper waiting in a queue costs no thread (LocalDispatcher).
        self._thread: threading.Thread | None = None
        if deadline_s is not None:
            self.arm(deadline_s)

    def arm(self, seconds: float | None, on_expire: Callable[[], None] | None = None) -> None:
        """Hold the lease at most ``seconds`` from now (None: no deadline)."""
        self._timeout_s = seconds
        self._deadline = None if seconds is None else time.monotonic() + seconds
        self._on_expire = on_expire
        self._poke.set()

    def __enter__(self) -> LeaseKeeper:
        """Hold the lease from now on (again: no effect). A keeper that renewed moments
        ago (a queued loop's, renewed at its dispatch) does not renew again on entry: that
        was three more round trips before the loop's first line."""
        if not self._entered:
            self._entered = True
            fresh = (self._held_at is not None
                     and time.monotonic() - self._held_at < self.every.total_seconds() / 2)
            if fresh or self.renew():
                self._thread = threading.Thread(target=self._keep, name="tunix-rt-lease",
                                                daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        """Stop renewing, then release the lease (when this keeper still holds it)."""
        self._stop.set()
        self._poke.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=30)
        if self._run_id is None:
            return
        from tunix_rt.store.db import session_scope

        try:
            with session_scope() as session:
                deliveries.release_lease(session, self._run_id, self.holder)
        except Exception:  # noqa: BLE001 - the lease lapses by itself
            log.exception("could not release the lease of run %s", self._run_id)

    def renew(self) -> bool:
        """Extend the lease now; False when the run has no dispatch (nothing to hold)."""
        from tunix_rt.store import runs
        from tunix_rt.store.db import session_scope

        if not self.run_ref or self.expired:
            return False
        try:
            with session_scope() as session:
                if self._run_id is None:
                    self._run_id = runs.get_run(session, self.run_ref).id
                held = deliveries.renew_lease(session, self._run_id, self.holder,
                                              lease=self.lease)
        except NotFoundError:
            return False
        except Exception:  # noqa: BLE001 - try again at the next renewal
            log.exception("could not renew the lease of run %s", self.run_ref)
            return True
        self.renewals += 1
        if held > 0:
            self._held_at = time.monotonic()
        return held > 0

    def _keep(self) -> None:
        next_renewal = time.monotonic() + self.every.total_seconds()
        while True:
            deadline = self._deadline
            until = next_renewal if deadline is None else min(next_renewal, deadline)
            self._poke.wait(max(0.0, until - time.monotonic()))
            self._poke.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            if self._deadline is not None and now >= self._deadline:
                self._expire()
                return
            if now >= next_renewal:
                self.renew()
                next_renewal = now + self.every.total_seconds()

    def _expire(self) -> None:
        """Past the deadline: the lease lapses now (a zero-length renewal) and the run
        says why. Whoever claims it next holds it; this keeper's exit releases nothing."""
        from tunix_rt.store.db import session_scope

        seconds = self._timeout_s or 0.0
        error = timed_out_error(self.run_ref, seconds)
        log.warning("%s", error)
        try:
            if self._run_id is not None:
                with session_scope() as session:
                    deliveries.renew_lease(session, self._run_id, self.holder,
                                           lease=timedelta(0))
        except Exception:  # noqa: BLE001 - without it the lease lapses by itself
            log.exception("could not give up the lease of run %s", self.run_ref)
        self.expired = True
        note_loop_error(self.run_ref, error)
        if self._on_expire is not None:
            try:
                self._on_expire()
            except Exception:  # noqa: BLE001
                log.exception("after the deadline of run %s", self.run_ref)


# Loggers of the worker and the runner around a flow run, as opposed to the flow run's own.
_SUPERVISOR_LOGGERS = ("prefect.flow_runs.worker", "prefect.workers", "prefect.runner")


class CrashWatcher:
    """Notes on the run why a quality-loop flow run crashed before the loop's own code ran.

    The flow's hooks record a loop that fails or crashes once its code is loaded; a
    flow run that dies earlier (a failing pull step, a flow that cannot be imported, a
    worker that cannot start the process) leaves its state message and its last log
    line only in Prefect. This thread polls Prefect for such crashes and puts them on
    the run. It sees crashes from its start on (and ``lookback`` before it).
    """

    def __init__(self, interval_s: float = 3.0, lookback: timedelta = timedelta(minutes=1),
                 flow_name: str = QUALITY_LOOP_FLOW) -> None:
        self.interval_s = interval_s
        self.flow_name = flow_name
        self._since = datetime.now(timezone.utc) - lookback
        self._seen: dict[uuid.UUID, datetime] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tunix-rt-crash-watcher",
                                        daemon=True)
        self._failing = False

    def start(self) -> CrashWatcher:
        # Prefect's client is imported here, not first in the thread: importing a package
        # from two threads at once can see it half initialized.
        import prefect.client.orchestration  # noqa: F401
        import prefect.client.schemas.filters  # noqa: F401

        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
                self._failing = False
            except Exception as exc:  # noqa: BLE001 - Prefect may be restarting; try again
                if not self._failing:
                    log.warning("could not read crashed quality loops from Prefect: %s", exc)
                self._failing = True

    def check(self) -> int:
        """Record each crash not seen before; answers how many were recorded."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter,
                                                    FlowRunFilterEndTime, FlowRunFilterState,
                                                    FlowRunFilterStateType, LogFilter,
                                                    LogFilterFlowRunId, LogFilterTimestamp)
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort, LogSort

        # A window, not all history: a crash is seen within seconds of happening.
        window_start = max(self._since, datetime.now(timezone.utc) - timedelta(minutes=10))
        self._seen = {k: v for k, v in self._seen.items() if v >= window_start}
        recorded = 0
        with get_client(sync_client=True) as client:
            crashed = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[self.flow_name])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(
                        any_=[StateType.CRASHED])),
                    end_time=FlowRunFilterEndTime(after_=window_start)),
                sort=FlowRunSort.END_TIME_DESC, limit=200)
            for flow_run in crashed:
                if flow_run.id in self._seen:
                    continue
                ended = flow_run.end_time or datetime.now(timezone.utc)
                self._seen[flow_run.id] = ended
                # Where it died: the flow run's own last line before the crash (say, the
                # pull step it was running), not what the worker said about it.
                crashed_at = flow_run.state.timestamp if flow_run.state else None
                logs = client.read_logs(LogFilter(
                    flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]),
                    timestamp=LogFilterTimestamp(before_=crashed_at) if crashed_at else None),
                    limit=50, sort=LogSort.TIMESTAMP_DESC)
                last = next((entry.message.strip().splitlines()[0] for entry in logs
                             if not entry.name.startswith(_SUPERVISOR_LOGGERS)
                             and entry.message.strip()), None)
                message = flow_run.state.message if flow_run.state else None
                error = (f"quality-loop flow run {flow_run.name!r} ({flow_run.id}) crashed: "
                         f"{message or 'no message'}")
                if last:
                    error += f" Its last log line before the crash: {last}"
                if note_loop_error(flow_run.parameters.get("run_id"), error, at=ended):
                    recorded += 1
                    log.warning("run %s: %s", flow_run.parameters.get("run_id"), error)
        return recorded


def receiver_dispatcher() -> Dispatcher:
    """What ``tunix-rt serve`` uses: events with a server, a local worker without."""
    return EventDispatcher() if has_prefect_server() else LocalDispatcher()
