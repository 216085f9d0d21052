"""`tunix-rt train` and `tunix-rt runs cancel` from the shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent / "tunix-rt"
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.flows


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_train_runs_a_job_and_ends_with_the_gate(db_url: str, prefect_api_url: str,
                                                 tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "examples" / "run.yaml").read_text())
    spec["config"]["steps"] = 60
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(spec))

    dry = _cli("train", "--config", str(config), "--dry-run", "--format", "json",
               PREFECT_API_URL=prefect_api_url, TUNIX_RT_JOBS_DIR=str(tmp_path / "jobs"))
    real = _cli("train", "--config", str(config), PREFECT_API_URL=prefect_api_url,
                TUNIX_RT_JOBS_DIR=str(tmp_path / "jobs"))

    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dry_run"] is True
    assert real.returncode == 0, real.stderr[-3000:]
    run_id, gate = real.stdout.splitlines()[:2]
    assert gate.startswith("gate: ")
    shown = json.loads(_cli("runs", "show", run_id, "--format", "json").stdout)
    assert shown["status"] == "completed" and shown["exit_code"] == 0
    assert shown["metrics"]["step"] == 60 and shown["log_uri"].startswith("file://")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_train_refuses_a_bad_run_file_naming_the_key(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"name": "x", "dataset": "d", "model": "m",
                                      "trainable": "builtin", "command": ["python"]}))
    result = _cli("train", "--config", str(config))
    assert result.returncode == 3
    assert "trainable" in result.stderr and "command" in result.stderr


def test_cancelling_a_finished_run_is_refused(db_url: str, tmp_path: Path) -> None:
    from tests.factories import make_run
    from tunix_rt.store.db import get_engine

    run_id = make_run(get_engine(db_url), tmp_path, "done", [True])
    result = _cli("runs", "cancel", run_id)
    assert result.returncode == 3
    assert "only a pending or running run can be cancelled" in result.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_train_killed_alone_leaves_neither_its_job_nor_a_prefect_server(
        db_url: str, tmp_path: Path) -> None:
    """Without PREFECT_API_URL, SIGKILL to `tunix-rt train` alone (the OOM killer's way)
    takes down what it started: the job, and the local Prefect server its flow talks to
    (Prefect's own ephemeral server outlived such a kill)."""
    import signal

    from tests.proctable import children, running
    from tests.waiting import wait_for
    from tunix_rt.store import runs
    from tunix_rt.store.db import get_engine, session_scope

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "name": "sleeper", "dataset": "arithmetic", "model": "none",
        "command": [sys.executable, "-c", "import time; time.sleep(600)"],
        "predictions": (tmp_path / "never.jsonl").as_uri()}))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(TUNIX_RT_JOBS_DIR=str(tmp_path / "jobs"), PREFECT_HOME=str(tmp_path / "prefect"))
    log = (tmp_path / "train.log").open("w")
    proc = subprocess.Popen([str(BIN), "train", "--config", str(config)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started: list[int] = []
    try:
        def job_running() -> bool:
            with session_scope(get_engine(db_url)) as session:
                return bool(runs.list_runs(session, status="running")[0])

        wait_for(job_running, 240, "the job to run", alive=lambda: proc.poll() is None)
        started = children(proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    try:
        # Two at least: the Prefect server and the job (each in a process group of its own).
        assert len(started) >= 2, (started, (tmp_path / "train.log").read_text()[-3000:])
        wait_for(lambda: not any(running(pid) for pid in started), 60,
                 "the job and the local Prefect server to stop with the command")
    finally:
        for pid in started:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
