"""An interrupted sweep resumes where it stopped, and writes no duplicate rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from tunix_rt.flows.tuning import tune_flow
from tunix_rt.tuning import studies
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.store.models import Study, Trial, TrialResult
from tests.waiting import wait_for
from tunix_rt.tuning.sweep import Sweep

pytestmark = [pytest.mark.flows, pytest.mark.tuning]
SWEEP = {"name": "resumable", "trainable": "builtin", "dataset": "arithmetic",
         "num_samples": 1, "max_concurrent_trials": 1, "scheduler": {"type": "none"},
         "resources": {"cpu": 1},
         "param_space": {"learning_rate": {"grid": [0.01, 0.02, 0.03, 0.05]},
                         "hidden_size": 32, "steps": 300, "steps_per_report": 5, "seed": 0}}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_interrupted_study_resumes_without_duplicates(
        db_url: str, prefect_api_url: str, ray_cluster: dict, tune_storage: str,
        tmp_path: Path) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "RAY_AUTH_MODE": "disabled",
           "TUNIX_RT_DATABASE_URL": db_url, "TUNIX_RT_TUNE_STORAGE": tune_storage}
    log = tmp_path / "tune.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "tunix-rt"), "tune", "--config",
                             str(config)], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    engine = get_engine(db_url)

    def finished() -> int:
        with session_scope(engine) as session:
            return session.scalar(select(func.count()).select_from(Trial).where(
                Trial.status == "completed")) or 0

    wait_for(lambda: finished() >= 1, 180, "a first trial to complete", interval=0.3,
             proc=proc, log=log)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    with session_scope(engine) as session:
        study = session.scalar(select(Study))
        assert study.status == "interrupted", study.error
        assert "tunix-rt tune --resume" in study.error
        done_before = finished()
    assert done_before < 4

    result = tune_flow(sweep=Sweep.model_validate(study.spec), resume_study=study.id)

    with session_scope(engine) as session:
        trials = list(session.scalars(select(Trial)))
        stored = session.scalar(select(func.count()).select_from(TrialResult))
        iterations = studies.iterations_by_trial(session, study.id)
        assert session.get(Study, study.id).status == "completed"
    assert result["unfinished"] == 0 and len(result["runs"]) == 1
    assert len(trials) == 4 and {t.status for t in trials} == {"completed"}
    assert all(v == list(range(1, 61)) for v in iterations.values())  # 300 steps / 5
    assert stored == 4 * 60
