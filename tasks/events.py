"""tunix-rt's Prefect events: their names, and the ``tunix.run.<id>`` resource they are about.

Automations and deployment triggers match on these (prefect.yaml, examples/automations),
so the names and the resource id are part of the external contract (docs/CONTRACT.md).
"""

from __future__ import annotations

import uuid
from typing import Any

RUN_COMPLETED = "tunix.run.completed"
RUN_FAILED = "tunix.run.failed"
GATE_EVENTS = {"pass": "tunix.gate.passed", "fail": "tunix.gate.failed",
               "inconclusive": "tunix.gate.inconclusive", "no_baseline": "tunix.gate.no_baseline"}


def run_resource(run_id: str, **labels: str) -> dict[str, str]:
    """The resource of an event about a run: ``tunix.run.<id>``, with extra labels."""
    return {"prefect.resource.id": f"tunix.run.{run_id}", "prefect.resource.name": run_id,
            **labels}


def emit_run_event(event: str, run_id: str, payload: dict[str, Any], *,
                   labels: dict[str, str] | None = None, baseline_run_id: str | None = None,
                   event_id: uuid.UUID | None = None) -> Any:
    """Emit ``event`` about run ``run_id``; the baseline, when given, is a related resource.

    Returns Prefect's event, or None when events are disabled in this process.
    """
    from prefect.events import emit_event

    related = ([{"prefect.resource.id": f"tunix.run.{baseline_run_id}",
                 "prefect.resource.role": "baseline"}] if baseline_run_id else None)
    return emit_event(event=event, resource=run_resource(run_id, **(labels or {})),
                      related=related, payload=payload, id=event_id)
