"""`tunix-rt train`'s flow on a real Prefect server: jobs launched, followed and judged."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from tunix_rt.flows.training import train_flow
from tests.flows.test_quality_loop import _events
from tests.waiting import wait_for
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.errors import RunNotEvaluableError
from tunix_rt.store.models import GateResult, LeaderboardEntry, Run
from tunix_rt.training.runfile import parse_run_spec
from tunix_rt.store.runs import request_cancel

pytestmark = pytest.mark.flows


@pytest.fixture(autouse=True)
def _jobs(prefect_api_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNIX_RT_JOBS_DIR", str(tmp_path / "jobs"))


def _run(db_url: str, run_id: str) -> Run:
    with session_scope(get_engine(db_url)) as session:
        return session.get(Run, run_id)


def _command(name: str, code: str, timeout_s: float = 60, **extra) -> object:  # noqa: ANN003
    return parse_run_spec({"name": name, "dataset": "arith", "model": "m",
                           "command": [sys.executable, "-c", code],
                           "predictions": "file:///nowhere/predictions.jsonl",
                           "timeout_s": timeout_s, **extra})


def test_the_builtin_trainable_is_trained_judged_and_gated(db_url: str) -> None:
    spec = parse_run_spec({"name": "arith-lr03", "dataset": "arithmetic", "model": "tiny-jax",
                           "trainable": "builtin",
                           "config": {"learning_rate": 0.03, "hidden_size": 64, "steps": 100,
                                      "seed": 0}})
    result = train_flow(spec=spec)

    run = _run(db_url, result["run_id"])
    assert run.status == "completed" and run.exit_code == 0 and run.origin == "train"
    assert run.started_at is not None and run.completed_at >= run.started_at
    assert 0.0 <= run.metrics["accuracy"] <= 1.0 and run.metrics["step"] == 100
    log = Path(run.log_uri.removeprefix("file://")).read_text()
    assert "TUNIX_RT_METRICS" in log and "TUNIX_RT_PREDICTIONS" in log
    assert result["gate"]["decision"] == "no_baseline"
    with session_scope(get_engine(db_url)) as session:
        assert session.scalar(select(GateResult).where(GateResult.run_id == run.id))
        entry = session.scalar(select(LeaderboardEntry).where(LeaderboardEntry.run_id == run.id))
        assert entry.score == pytest.approx(run.metrics["accuracy"])


def test_a_failing_command_marks_the_run_failed_with_its_log_tail(db_url: str) -> None:
    code = "import sys; print('loading checkpoint'); print('CUDA error: out of memory'); " \
           "sys.exit(3)"
    state = train_flow(spec=_command("oom", code), return_state=True)

    assert state.is_failed()
    with pytest.raises(Exception, match="exit code 3"):
        state.result()
    [run] = _all_runs(db_url)
    assert run.status == "failed" and run.exit_code == 3
    assert "CUDA error: out of memory" in run.error
    [event] = _events("tunix.run.failed", f"tunix.run.{run.id}")
    assert event.payload["exit_code"] == 3


def test_a_dry_run_trains_nothing_and_is_refused_by_the_judges(db_url: str) -> None:
    result = train_flow(spec=_command("dry", "raise SystemExit(1)"), dry_run=True)

    run = _run(db_url, result["run_id"])
    assert run.dry_run and run.log_uri is None and run.started_at is None
    from tunix_rt.flows.quality_loop import quality_loop

    state = quality_loop(run.id, return_state=True)
    with pytest.raises(RunNotEvaluableError, match="is a dry run"):
        state.result()


def test_a_dry_run_refuses_a_missing_executable(db_url: str) -> None:
    spec = parse_run_spec({"name": "dry", "dataset": "arith", "model": "m",
                           "command": ["no-such-trainer", "--lr", "1"],
                           "predictions": "file:///p.jsonl"})
    state = train_flow(spec=spec, dry_run=True, return_state=True)
    with pytest.raises(Exception, match="command"):
        state.result()
    assert _all_runs(db_url) == []


def test_a_job_past_its_timeout_is_stopped(db_url: str) -> None:
    state = train_flow(spec=_command("slow", "import time; time.sleep(60); print('woke up')",
                                     timeout_s=1),
                       return_state=True)

    assert state.is_failed()
    [run] = _all_runs(db_url)
    assert run.status == "failed" and "timed out after 1 s" in run.error
    # Stopped by a signal before it got to the end of its sleep.
    assert run.exit_code is not None and run.exit_code < 0, run.exit_code
    assert "woke up" not in Path(run.log_uri.removeprefix("file://")).read_text()


def test_runs_cancel_stops_a_running_job(db_url: str) -> None:
    outcome = {}
    spec = _command("long", "import time; print('step 1', flush=True); time.sleep(120)")
    thread = threading.Thread(target=lambda: outcome.update(
        state=train_flow(spec=spec, return_state=True)))
    thread.start()
    runs = wait_for(lambda: [r for r in _all_runs(db_url) if r.status == "running"], 60,
                    "the job to be running", alive=thread.is_alive)
    with session_scope(get_engine(db_url)) as session:
        request_cancel(session, runs[0].id)
    thread.join(timeout=60)

    assert not thread.is_alive() and outcome["state"].is_failed()
    run = _run(db_url, runs[0].id)
    assert run.status == "failed" and run.error.startswith("cancelled")
    assert "step 1" in run.error  # the log tail


def _all_runs(db_url: str) -> list[Run]:
    with session_scope(get_engine(db_url)) as session:
        return list(session.scalars(select(Run)))


@pytest.mark.tuning
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_with_a_ray_cluster_the_job_runs_there_with_its_gpus(
        db_url: str, ray_cluster: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setenv("TUNIX_RT_RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    code = ("import json, os; print('TUNIX_RT_METRICS ' + json.dumps("
            "{'visible': os.environ.get('CUDA_VISIBLE_DEVICES')}))")
    state = train_flow(spec=_command("on-ray", code, resources={"cpu": 1, "gpu": 1}),
                       return_state=True)

    [run] = _all_runs(db_url)
    assert run.exit_code == 0, run.error
    assert run.metrics["visible"] in {"0", "1"}  # one of the cluster's two GPUs
    assert state.is_failed()  # the command's predictions file does not exist: not judged
    assert run.status == "completed"
