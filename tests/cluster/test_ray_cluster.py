"""Tunix-rt on a two-node Ray cluster of real processes (the cluster: conftest.py here).

The installed ``tunix-rt`` joins the cluster through ``TUNIX_RT_RAY_ADDRESS`` as a user's
would: a sweep's trials run on both nodes (each trial reports Ray's node id); a large
evaluation's chunks, mapped on prefect-ray's task runner (``TUNIX_RT_TASK_RUNNER=ray``),
run on both nodes (Ray's own task records name the node); a training job whose run file
asks for node B's custom resource runs under node B's raylet.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from tests.cluster.conftest import tasks_named
from tests.factories import correctness, make_run, write_predictions
from tests.pgserver import create_database
from tunix_rt.store import db
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Evaluation, EvaluationChunk, Run, Trial

pytestmark = [pytest.mark.cluster, pytest.mark.tuning, pytest.mark.postgres,
              pytest.mark.timeout(1200)]  # the cluster's start with the first test
BIN = Path(sys.executable).parent / "tunix-rt"
CLI_S = 600  # generous: a loaded 2-core machine


@pytest.fixture
def cluster_env(ray_two_nodes: dict, prefect_api_url: str, pg_admin_url: str,
                pg_template: str, tmp_path: Path) -> dict:
    """The environment of a ``tunix-rt`` that joins the cluster, on a fresh PostgreSQL."""
    url = create_database(pg_admin_url, template=pg_template)
    env = {**os.environ, "TUNIX_RT_RAY_ADDRESS": ray_two_nodes["address"],
           "TUNIX_RT_DATABASE_URL": url, "PREFECT_API_URL": prefect_api_url,
           "TUNIX_RT_TUNE_STORAGE": str(tmp_path / "tune"),
           "TUNIX_RT_JOBS_DIR": str(tmp_path / "jobs"),
           "TUNIX_RT_PREDICTIONS_ALLOW": str(tmp_path), "RAY_AUTH_MODE": "disabled"}
    return env


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True,
                            timeout=CLI_S, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def test_a_sweeps_trials_run_on_both_nodes(ray_two_nodes: dict, cluster_env: dict,
                                           tmp_path: Path) -> None:
    """Two trials at a time, a CPU each, on nodes of one CPU: they must spread."""
    sweep = {"name": "two-nodes", "trainable": "builtin", "dataset": "arithmetic",
             "metric": "accuracy", "mode": "max", "num_samples": 1,
             "max_concurrent_trials": 2, "scheduler": {"type": "none"},
             "resources": {"cpu": 1},
             "param_space": {"learning_rate": 0.03, "hidden_size": 16, "steps": 20,
                             "seed": {"grid": [0, 1, 2, 3]}}}
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep))

    _cli(cluster_env, "tune", "--config", str(config))

    with session_scope(db.get_engine(cluster_env["TUNIX_RT_DATABASE_URL"])) as session:
        trials = list(session.scalars(select(Trial)))
    assert len(trials) == 4 and {t.status for t in trials} == {"completed"}
    ran_on = {t.last_metrics["node_id"] for t in trials}
    assert ran_on == set(ray_two_nodes["node_ids"].values())


def test_a_large_evaluations_chunks_run_on_both_nodes(ray_two_nodes: dict, cluster_env: dict,
                                                      tmp_path: Path) -> None:
    engine = db.get_engine(cluster_env["TUNIX_RT_DATABASE_URL"])
    path = write_predictions(tmp_path / "large.jsonl", correctness(600, 0.7, 3))
    run_id = make_run(engine, tmp_path, "large", [], predictions=path)

    _cli({**cluster_env, "TUNIX_RT_TASK_RUNNER": "ray", "TUNIX_RT_SCORE_CHUNK_ITEMS": "50"},
         "evaluate", run_id)

    with session_scope(engine) as session:
        evaluation = session.scalar(select(Evaluation).where(Evaluation.run_id == run_id))
        n_chunks = len(list(session.scalars(select(EvaluationChunk).where(
            EvaluationChunk.evaluation_id == evaluation.id))))
    assert evaluation.status == "completed" and evaluation.n_items == 600
    assert n_chunks == 12  # 600 items, 50 a chunk
    records = [t for t in tasks_named(ray_two_nodes["dashboard"], "score-chunk")
               if t["state"] == "FINISHED"]
    assert len(records) >= n_chunks
    assert {t["node_id"] for t in records} == set(ray_two_nodes["node_ids"].values())


def test_a_training_job_runs_on_the_node_whose_resource_it_asks_for(
        ray_two_nodes: dict, cluster_env: dict, tmp_path: Path) -> None:
    """The job prints the name of the node whose raylet started its supervisor (an
    environment variable each ``ray start`` was given, inherited by its workers)."""
    predictions = write_predictions(tmp_path / "job.jsonl", correctness(40, 0.8, 1))
    code = ("import json, os; print('TUNIX_RT_METRICS ' + json.dumps("
            "{'node': os.environ.get('TUNIX_NODE_NAME')}))")
    spec = {"name": "on-b", "dataset": "arith", "model": "m",
            "command": [sys.executable, "-c", code], "predictions": predictions,
            "resources": {"cpu": 1, "node_b": 1}, "timeout_s": 300}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(spec))

    out = _cli(cluster_env, "train", "--config", str(config))

    run_id = out.stdout.split()[0]
    with session_scope(db.get_engine(cluster_env["TUNIX_RT_DATABASE_URL"])) as session:
        run = session.get(Run, run_id)
    assert run.status == "completed" and run.exit_code == 0
    assert run.metrics["node"] == "node-b"
