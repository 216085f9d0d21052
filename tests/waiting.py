"""Waiting for something another thread or process does, with one shape everywhere.

``wait_for(predicate, timeout, what)`` polls until ``predicate()`` returns something
truthy and returns it; it fails the test naming ``what`` (and the tail of a log, and
why a watched process ended) when the timeout passes or the watched process exits.
Timeouts here are generous safety nets for a hung test, never a claim about speed.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.2,
             proc: subprocess.Popen | None = None, log: Path | None = None,
             alive: Callable[[], bool] | None = None) -> T:
    """Poll ``predicate`` until it is truthy; fail the test with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    reason = f"timed out after {timeout:g} s"
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            reason = f"the process exited with code {proc.returncode}"
            break
        if alive is not None and not alive():
            reason = "what it waited on stopped"
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    detail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
    pytest.fail(f"waiting for {what}: {reason}\n{detail}".rstrip())
