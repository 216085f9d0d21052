"""Starting the quality loop for a run: the dispatchers the receiver and the sweeper use.

- ``EventDispatcher`` (a Prefect server is configured): emits ``tunix.run.completed``
  for resource ``tunix.run.<id>``; the quality-loop deployment's trigger in
  prefect.yaml turns it into a flow run.
- ``DeploymentDispatcher``: starts the deployment directly, with the delivery id as
  the idempotency key, so the same dispatch twice is one flow run. The sweeper uses it.
- ``LocalDispatcher`` (no server: the embedded default): an in-process worker
  thread runs the flow.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid

from tunix_rt.service.deliveries import Dispatcher
from tunix_rt.tasks import events

QUALITY_LOOP_DEPLOYMENT = "quality-loop/quality-loop"
# Event ids derive from the delivery id: the same delivery emitted twice is one event.
_EVENT_NAMESPACE = uuid.UUID("9b1f3c2e-6a55-4f0e-9d43-2b7f1d7d5a10")

log = logging.getLogger("tunix_rt.dispatch")


def has_prefect_server() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


class EventDispatcher:
    target = "event"

    def dispatch(self, run_id: str, key: str) -> str | None:
        event = events.emit_run_event(events.RUN_COMPLETED, run_id,
                                      {"run_id": run_id, "delivery_id": key},
                                      event_id=uuid.uuid5(_EVENT_NAMESPACE, key))
        if event is None:
            raise RuntimeError("Prefect events are disabled in this process")
        return None


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
    """Runs the quality loop in a worker thread of this process, one run at a time."""

    target = "local"

    def __init__(self) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="tunix-rt-loop", daemon=True)
        self._thread.start()

    def dispatch(self, run_id: str, key: str) -> str | None:
        self._queue.put(run_id)
        return None

    def join(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far has run (tests, graceful shutdown)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        from tunix_rt.flows.quality_loop import quality_loop

        while True:
            run_id = self._queue.get()
            try:
                if run_id is None:
                    return
                quality_loop(run_id=run_id)
            except Exception:  # noqa: BLE001 - a failed loop is on record in Prefect
                log.exception("quality loop for run %s failed", run_id)
            finally:
                self._queue.task_done()


class InlineDispatcher:
    """Runs the loop right here, as a subflow of the caller (the sweeper without a server)."""

    target = "inline"

    def dispatch(self, run_id: str, key: str) -> str | None:
        from tunix_rt.flows.quality_loop import quality_loop
        from tunix_rt.flows.subflows import without_heartbeats

        with without_heartbeats():  # the calling flow (the sweeper) sends heartbeats
            state = quality_loop(run_id=run_id, return_state=True)
        return str(state.state_details.flow_run_id) if state.state_details else None


def receiver_dispatcher() -> Dispatcher:
    """What ``tunix-rt serve`` uses: events with a server, a local worker without."""
    return EventDispatcher() if has_prefect_server() else LocalDispatcher()
