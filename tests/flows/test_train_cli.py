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
