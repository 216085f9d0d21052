"""A flow for the heartbeat tests (tests/flows/test_heartbeats.py), loaded by entrypoint
from a deployment: it reports what its process looks like from inside the run."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from prefect import flow
from prefect.settings import get_current_settings


@flow(name="heartbeat-probe")
def probe(seconds: float = 0.0, report: str | None = None) -> float:
    if report:
        Path(report).write_text(json.dumps({
            "prefect_heartbeat_frequency": get_current_settings().flows.heartbeat_frequency,
            "threads": [t.name for t in threading.enumerate()]}))
    time.sleep(seconds)
    return seconds
