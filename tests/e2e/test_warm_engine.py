"""The warm engine (``python -m tunix_rt.flows.engine --serve``): a flow-run command handed
over to it behaves, for the worker that started the command, as the command itself would:
its streams, its exit status, its signals. Without a warm engine it runs the flow run itself.

The flow runs here fail early (a bad id; an API that never answers), which is all it
takes to see what passes through the handover; the stack tests run real loops in it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proctable import children
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e]
WAIT_S = 120


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen]]:
    folder = tmp_path_factory.mktemp("warm")
    path = str(folder / "engine.sock")
    log = folder / "engine.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tunix_rt.flows.engine", "--serve", path],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.exists(path), WAIT_S, "the warm engine's socket", proc=proc,
                 log=log)
        yield path, proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert not os.path.exists(path)  # it cleans up after itself


def _command(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunix_rt.flows.engine", *args], cwd=cwd,
                            env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_handed_over_flow_run_fails_as_the_command_would(warm, tmp_path: Path) -> None:
    path, engine = warm
    alone = _command({}, tmp_path, "not-a-uuid")
    handed = _command({"TUNIX_RT_ENGINE_SOCKET": path}, tmp_path, "not-a-uuid")

    alone_out, alone_err = alone.communicate(timeout=WAIT_S)
    handed_out, handed_err = handed.communicate(timeout=WAIT_S)

    assert alone.returncode == handed.returncode == 1
    # The child wrote to the command's own stderr, passed over the socket.
    assert "Invalid flow run id" in alone_err and "Invalid flow run id" in handed_err, handed_err
    assert "found in sys.modules" not in handed_err
    assert engine.poll() is None  # a failing flow run does not take the engine with it


def test_no_warm_engine_there_the_command_runs_the_flow_run_itself(tmp_path: Path) -> None:
    gone = str(tmp_path / "no-engine.sock")
    command = _command({"TUNIX_RT_ENGINE_SOCKET": gone}, tmp_path, "not-a-uuid")

    _, err = command.communicate(timeout=WAIT_S)

    assert command.returncode == 1 and "Invalid flow run id" in err, err


def test_sigterm_to_the_command_reaches_the_flow_run(warm, tmp_path: Path) -> None:
    """A flow run stuck on an API that accepts and never answers; the worker cancels it
    by signalling the command it started, which must reach the forked child."""
    path, engine = warm
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        env = {"TUNIX_RT_ENGINE_SOCKET": path,
               "PREFECT_API_URL": f"http://127.0.0.1:{silent.getsockname()[1]}/api",
               "PREFECT__FLOW_RUN_ID": "4f1c6a2e-3a8e-4b61-9e0c-5d2b7f0a9c11",
               "PREFECT_API_REQUEST_TIMEOUT": "600", "TUNIX_RT_HEARTBEAT_S": "0"}
        before = set(children(engine.pid))
        command = _command(env, tmp_path)
        child = wait_for(lambda: set(children(engine.pid)) - before, WAIT_S,
                         "the flow run forked by the warm engine").pop()
        # Its working directory is the command's, not the engine's (the child moves there
        # just after the fork: wait for it, do not race it).
        wait_for(lambda: os.readlink(f"/proc/{child}/cwd") == str(tmp_path), WAIT_S,
                 "the forked child in the command's folder", retry_on=OSError)
        assert command.poll() is None

        command.send_signal(signal.SIGTERM)
        command.communicate(timeout=WAIT_S)

        assert command.returncode != 0
        wait_for(lambda: child not in children(engine.pid), WAIT_S, "the child gone")
        assert engine.poll() is None
    finally:
        silent.close()
