"""A local Prefect server that dies with the command that started it.

Without ``PREFECT_API_URL`` the commands that run flows (``evaluate``, ``train``, ``tune``,
``demo``) need a Prefect API. (``sweep`` keeps Prefect's own: with an API URL set it would
take the server for one with deployments, and it runs for seconds.) Prefect's own ephemeral server is a
child that outlives a parent killed outright (SIGKILL, the OOM killer): each such crash
left a server running, holding a port and Prefect's database. :func:`local_prefect_server`
starts the same server with a parent-death signal instead.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tunix_rt import procs
from tunix_rt.cli import CliError

SERVER_STOP_S = 10  # how long the local server gets to stop on SIGTERM before SIGKILL
SERVER_STARTS = 3  # attempts, each on a fresh port (another process may take the one chosen)


@contextmanager
def local_prefect_server() -> Iterator[str | None]:
    """Prefect's API for this process: the configured one, else a server that dies with us.

    Without ``PREFECT_API_URL`` Prefect would start its ephemeral server as a child
    that outlives a parent killed outright (SIGKILL, the OOM killer): each such crash
    left a server running, holding a port and Prefect's database. This starts the
    same server (Prefect's app under uvicorn, no UI) with a parent-death signal, and
    points this process's Prefect settings at it for the block; it stops when the
    process exits. Yields its API URL, or None when a server is configured or ephemeral
    mode is turned off (Prefect decides then).
    """
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED,
                                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  temporary_settings)

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield None
        return
    import tempfile

    log = tempfile.TemporaryFile()
    server, url = _start_prefect_server(
        log, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    # Stopped at exit, as Prefect stops its own: after Prefect's log and event workers
    # (threading's exit hooks run first) have sent what they hold.
    atexit.register(_stop_prefect_server, server, log)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


def _stop_prefect_server(server: subprocess.Popen, log: Any) -> None:
    procs.stop_group(server, SERVER_STOP_S)
    log.close()


def _start_prefect_server(log: Any, timeout_s: float) -> tuple[subprocess.Popen, str]:
    """A Prefect server on a free loopback port, healthy; (process, API URL)."""
    import urllib.request

    import prefect
    from prefect.settings import get_current_settings

    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0",
           # What Prefect's own ephemeral server is told: serve only, this process's API.
           "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    for _ in range(SERVER_STARTS):
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=procs.parent_death_signal(signal.SIGTERM))
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + timeout_s
        while server.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        return server, url
            except OSError:
                pass
            time.sleep(0.1)
        if server.poll() is None:  # alive but not answering: not worth another port
            procs.stop_group(server, SERVER_STOP_S)
            break
    log.seek(0)
    output = log.read().decode(errors="replace").strip()[-2000:]
    log.close()
    raise CliError(f"the local Prefect server did not start (exit code {server.returncode}, "
                       f"{timeout_s:g} s allowed; set PREFECT_API_URL to use a running server)"
                       + (f": {output}" if output else ""))


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
