"""Subflows without a heartbeat thread of their own.

Every flow run starts a heartbeat thread and, at its end, waits for it to notice
(it sleeps in one-second steps): about 0.9 s per flow run, measured here at 1.16 s
per trivial subflow against 0.25 s without it. A subflow runs in its parent's
process, whose flow run already sends heartbeats, so the subflows of our flows
(the quality loop after tuning or training) run without their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tunix_rt.flows.heartbeats import prefect_heartbeats_off


@contextmanager
def without_heartbeats() -> Iterator[None]:
    """Subflows called inside this block start no heartbeat thread."""
    with prefect_heartbeats_off():
        yield
