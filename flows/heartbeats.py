"""Flow-run heartbeats that stop the moment the run ends.

Prefect's flow engine sends a ``prefect.flow-run.heartbeat`` event every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (180 by default) from a thread that
sleeps in one-second steps, and joins that thread when the run ends: up to a second
per flow run, 0.9 s on average here, most of a short flow run's fixed cost. The
heartbeats are what tells a crashed run from a slow one (Prefect's "zombie flow run"
automation, examples/automations/crashed-flow-runs.yaml, marks a running flow run
Crashed when they stop), so they cannot simply be turned off for deployed runs.

:func:`heartbeats` turns Prefect's thread off and sends the same events, with the same
resource and related resources, from a thread that waits on an event instead of
sleeping: it stops at once. Deployed runs get it through ``python -m
tunix_rt.flows.engine`` (the work pool's command in prefect.yaml).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

log = logging.getLogger("tunix_rt.flows.heartbeats")


def _template(flow_run_id: UUID) -> tuple[dict[str, str], list[Any]]:
    """The heartbeat's resource and related resources, as Prefect's engine builds them."""
    import prefect
    from prefect.client.orchestration import get_client
    from prefect.events import RelatedResource
    from prefect.events.related import tags_as_related_resources

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        flow = client.read_flow(flow_run.flow_id) if flow_run.flow_id else None
    resource = {"prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                "prefect.resource.name": flow_run.name or "",
                "prefect.version": prefect.__version__}
    related: list[Any] = []
    if flow is not None:
        related.append(RelatedResource.model_validate({
            "prefect.resource.id": f"prefect.flow.{flow.id}", "prefect.resource.role": "flow",
            "prefect.resource.name": flow.name}))
    if flow_run.deployment_id:
        related.append(RelatedResource.model_validate({
            "prefect.resource.id": f"prefect.deployment.{flow_run.deployment_id}",
            "prefect.resource.role": "deployment"}))
    related += tags_as_related_resources(set(flow_run.tags or []))
    return resource, related


def _beat(flow_run_id: UUID, interval_s: float, stop: threading.Event) -> None:
    from prefect.events import emit_event

    try:
        resource, related = _template(flow_run_id)
    except Exception:  # noqa: BLE001 - a run whose API is away still runs; it just can't beat
        log.warning("flow run %s: cannot read it to send heartbeats", flow_run_id,
                    exc_info=True)
        return
    while not stop.is_set():
        try:
            emit_event(event="prefect.flow-run.heartbeat", resource=resource, related=related)
        except Exception:  # noqa: BLE001 - as Prefect's own: a missed beat is not an error
            log.debug("flow run %s: heartbeat not sent", flow_run_id, exc_info=True)
        stop.wait(interval_s)


@contextmanager
def prefect_heartbeats_off() -> Iterator[None]:
    """Inside: the current settings with ``flows.heartbeat_frequency`` None, so Prefect's
    engine starts no heartbeat thread. A copy of the settings, not ``temporary_settings``:
    that builds the whole Settings again from the environment and profile (0.05 s of CPU,
    over 0.5 s on a loaded machine, at the start of every flow run)."""
    import prefect.context

    context = prefect.context.get_settings_context()
    settings = context.settings
    if settings.flows.heartbeat_frequency is None:
        yield
        return
    quiet = settings.model_copy(update={"flows": settings.flows.model_copy(
        update={"heartbeat_frequency": None})})
    with prefect.context.SettingsContext(profile=context.profile, settings=quiet):
        yield


@contextmanager
def heartbeats(flow_run_id: str | UUID | None, interval_s: float | None) -> Iterator[None]:
    """Inside: Prefect's heartbeat thread is off, and ours beats for ``flow_run_id``
    every ``interval_s`` seconds (None or 0: no heartbeats at all). Leaving the block
    stops our thread without waiting for it to wake."""
    with prefect_heartbeats_off():
        try:
            run_id = UUID(str(flow_run_id)) if flow_run_id else None
        except ValueError:
            run_id = None  # Prefect's engine refuses the id itself, with its own message
        if run_id is None or not interval_s:
            yield
            return
        stop = threading.Event()
        # The thread sees this context's settings (the API URL among them), as Prefect's does.
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(_beat, run_id, interval_s, stop),
                                  name=f"heartbeat-{run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
