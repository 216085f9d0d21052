"""Waiting for something another thread or process does, with one shape everywhere.

``wait_for(predicate, timeout, what)`` polls until ``predicate()`` returns something
truthy and returns it; it fails the test naming ``what`` (and the tail of a log, and
why a watched process ended) when the timeout passes or the watched process exits.
With ``retry_on``, those exceptions from ``predicate`` mean "not yet" (a server still
starting refuses connections); the last one is named in the failure.
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
             alive: Callable[[], bool] | None = None,
             retry_on: type[BaseException] | tuple[type[BaseException], ...] = ()) -> T:
    """Poll ``predicate`` until it is truthy; fail the test with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    reason = f"timed out after {timeout:g} s"
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except retry_on as exc:
            last_error, value = exc, None
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
    if last_error is not None:
        reason += f"; last error: {type(last_error).__name__}: {last_error}"
    detail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
    pytest.fail(f"waiting for {what}: {reason}\n{detail}".rstrip())
