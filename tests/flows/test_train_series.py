"""A launched job's metrics lines become the run's series, locally and on a Ray cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from tunix_rt.flows.training import train_flow
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.store.metrics import series
from tunix_rt.store.models import Run
from tunix_rt.training.runfile import parse_run_spec

pytestmark = pytest.mark.flows

# A plain line at a step (as the builtin trainable reports), then a line with its points
# (as TunixRtHooks reports): the points, not the line's last values, go on the curve.
CODE = r"""
import json
print("TUNIX_RT_METRICS " + json.dumps({"step": 1, "loss": 2.0, "note": "text"}))
print("TUNIX_RT_METRICS " + json.dumps({"step": 3, "loss": 0.9, "tunix_rt_points": [
    {"step": 2, "metrics": {"loss": 1.5}}, {"step": 3, "metrics": {"loss": 1.0}}]}))
"""


@pytest.fixture(autouse=True)
def _stack(prefect_api_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session's Prefect server; job folders under the test's own tmp_path."""
    monkeypatch.setenv("TUNIX_RT_JOBS_DIR", str(tmp_path / "jobs"))


def _run_series(db_url: str) -> tuple[Run, dict]:
    with session_scope(get_engine(db_url)) as session:
        [run] = session.scalars(select(Run))
        session.expunge(run)
        return run, series(session, run.id)


def _spec(**extra: object) -> object:
    return parse_run_spec({"name": "curve", "dataset": "arith", "model": "m",
                           "command": [sys.executable, "-c", CODE],
                           "predictions": "file:///nowhere/predictions.jsonl", **extra})


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_jobs_metrics_lines_become_the_runs_series(db_url: str) -> None:
    train_flow(spec=_spec(), return_state=True)  # not judged: no predictions file
    run, curves = _run_series(db_url)
    assert curves == {"loss": [{"step": 1, "value": 2.0}, {"step": 2, "value": 1.5},
                               {"step": 3, "value": 1.0}]}
    assert run.metrics["loss"] == 0.9 and "tunix_rt_points" not in run.metrics


@pytest.mark.tuning
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_on_a_ray_cluster_the_series_comes_back_with_the_result(
        db_url: str, ray_cluster: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setenv("TUNIX_RT_RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    train_flow(spec=_spec(resources={"cpu": 1}), return_state=True)
    run, curves = _run_series(db_url)
    assert run.exit_code == 0, run.error
    assert [p["step"] for p in curves["loss"]] == [1, 2, 3]
    assert "tunix_rt_points" not in run.metrics
