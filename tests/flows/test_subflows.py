"""Subflows run without a heartbeat thread of their own, and the saving is real."""

from __future__ import annotations

import threading

import pytest
from prefect import flow

from tunix_rt.flows.subflows import without_heartbeats

pytestmark = pytest.mark.flows


def test_a_subflow_inside_the_block_starts_no_heartbeat_thread(prefect_api_url: str) -> None:
    seen: dict[str, int] = {}

    @flow
    def child(tag: str) -> None:
        seen[tag] = sum(1 for t in threading.enumerate() if t.daemon and t.is_alive()
                        and "heartbeat_loop" in repr(getattr(t, "_args", ())))

    @flow
    def parent() -> None:
        child("default")
        with without_heartbeats():
            child("quiet")

    parent()
    # The parent's heartbeat thread runs in both cases; the child adds one only by default.
    assert seen["default"] == seen["quiet"] + 1
