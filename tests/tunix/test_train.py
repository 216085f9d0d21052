"""`tunix-rt train` with the `tunix-sft` trainable: a real Tunix PeftTrainer in a job.

The run file is examples/tunix/run_sft.yaml, as the README gives it. The job reports its
loss curve directly (TunixRtHooks with the job's report()), and the run goes pending,
running, completed, then is judged and gated.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from tests.tunix.conftest import ROOT, job_env, tunix_rt_command
from tunix_rt.store import db
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import GateResult, Run

pytestmark = [pytest.mark.flows, pytest.mark.postgres, pytest.mark.slow]


def _status(db_url: str) -> tuple[str, str] | None:
    with session_scope(db.get_engine(db_url)) as session:
        row = session.execute(select(Run.id, Run.status).where(Run.origin == "train",
                                                               Run.dry_run.is_(False))).first()
        return tuple(row) if row else None


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_train_with_tunix_sft_ends_with_the_loss_curve_and_the_gate(
        db_url: str, prefect_api_url: str, tmp_path: Path) -> None:
    run_file = ROOT / "examples" / "tunix" / "run_sft.yaml"
    spec = yaml.safe_load(run_file.read_text())
    assert spec["trainable"] == "tunix-sft"
    env = job_env(TUNIX_RT_DATABASE_URL=db_url, PREFECT_API_URL=prefect_api_url,
                  TUNIX_RT_JOBS_DIR=str(tmp_path / "jobs"))
    dry = subprocess.run([*tunix_rt_command(), "train", "--config", str(run_file), "--dry-run",
                          "--format", "json"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert dry.returncode == 0, dry.stderr[-3000:]

    seen: list[str] = []
    out_path, err_path = tmp_path / "train.out", tmp_path / "train.err"
    with out_path.open("w") as stdout, err_path.open("w") as stderr:
        proc = subprocess.Popen([*tunix_rt_command(), "train", "--config", str(run_file)],
                                env=env, stdout=stdout, stderr=stderr, text=True)
        while proc.poll() is None:  # the statuses the run goes through, as a reader sees them
            now = _status(db_url)
            if now and (not seen or seen[-1] != now[1]):
                seen.append(now[1])
            time.sleep(0.2)
    out, err = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 0, err[-4000:]
    run_id, gate_line = out.splitlines()[:2]
    assert gate_line.startswith("gate: ")
    seen.append(_status(db_url)[1])
    assert "running" in seen and seen[-1] == "completed"
    assert [s for s in dict.fromkeys(seen)] == [s for s in ("pending", "running", "completed")
                                                if s in seen]

    shown = subprocess.run([*tunix_rt_command(), "runs", "show", run_id, "--format", "json"],
                           env=env, capture_output=True, text=True, timeout=120)
    data = json.loads(shown.stdout)
    assert data["status"] == "completed" and data["exit_code"] == 0
    assert data["created_at"] <= data["started_at"] <= data["completed_at"]
    assert data["metrics"]["step"] == 30 and "tunix_rt_points" not in data["metrics"]
    assert data["predictions_uri"].endswith("/predictions.jsonl")
    series = data["series"]
    assert [p["step"] for p in series["train_loss"]] == list(range(1, 31))
    assert [p["step"] for p in series["eval_loss"]] == [0, 10, 20, 30]
    assert data["evaluations"][0]["judge"] == "exact_match"
    assert data["evaluations"][0]["n_items"] == 200

    text = subprocess.run([*tunix_rt_command(), "runs", "show", run_id], env=env,
                          capture_output=True, text=True, timeout=120).stdout
    assert "train_loss  30 points  step 1:" in text and "eval_loss" in text
    with session_scope(db.get_engine(db_url)) as session:
        gate = session.scalar(select(GateResult).where(GateResult.run_id == run_id))
    assert gate is not None and gate.judge == "exact_match"
