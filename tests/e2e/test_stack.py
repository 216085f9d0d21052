"""End to end: `tunix-rt up` (a real Prefect server, deployments, a worker, our service).

A signed webhook for a completed run goes: receiver → Prefect event → the
quality-loop deployment's trigger → a worker runs the flow → a gate row in the
database. And a receiver killed between its 202 and its dispatch loses nothing:
the sweeper deployment finds the owed loop and starts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.factories import correctness, write_predictions
from tests.http.conftest import SECRET, _free_port, event, sign
from tests.pgserver import create_database
from tunix_rt.store import db
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Dispatch, Evaluation, GateResult, Run

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WAIT_S = 120


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None,  # noqa: ANN001
          log: Path | None = None):  # noqa: ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    detail = log.read_text()[-4000:] if log and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{detail}")


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


@pytest.fixture(scope="module")
def stack(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`tunix-rt up` against a fresh PostgreSQL database; SIGINT at the end."""
    tmp = tmp_path_factory.mktemp("stack")
    url = create_database(pg_admin_url)
    db.upgrade(db.make_engine(url))
    port, prefect_port = _free_port(), _free_port()
    env = {**os.environ, "TUNIX_RT_DATABASE_URL": url, "TUNIX_RT_WEBHOOK_SECRET": SECRET,
           "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_LOGGING_LEVEL": "INFO", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PREFECT_API_URL", None)
    log = tmp / "up.log"
    proc = subprocess.Popen([str(BIN / "tunix-rt"), "up", "--port", str(port),
                             "--prefect-port", str(prefect_port), "--logs", str(tmp / "logs")],
                            env=env, cwd=tmp, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    _wait(lambda: _get(f"{base}/healthz") == 200, WAIT_S, "tunix-rt up", proc, log)
    yield {"url": base, "db_url": url, "tmp": tmp, "env": env, "proc": proc, "log": log,
           "prefect_api": f"http://127.0.0.1:{prefect_port}/api"}
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("tunix-rt up did not stop on Ctrl-C")
    out = log.read_text()
    assert "stopped worker" in out and "stopped Prefect server" in out, out[-2000:]
    assert _get(f"http://127.0.0.1:{prefect_port}/api/health") is None


def _gate(db_url: str, external_id: str) -> GateResult | None:
    with session_scope(db.get_engine(db_url)) as session:
        return session.scalar(select(GateResult).join(Run, Run.id == GateResult.run_id)
                              .where(Run.external_id == external_id))


def test_a_signed_webhook_ends_in_a_gate_decision(stack: dict) -> None:
    predictions = write_predictions(stack["tmp"] / "job-e2e.jsonl", correctness(60, 0.8, 5))
    body = event(external_id="job-e2e", predictions_uri=predictions)

    response = httpx.post(f"{stack['url']}/webhooks/training", content=body, headers=sign(body),
                          timeout=30)

    assert response.status_code == 202, response.text
    gate = _wait(lambda: _gate(stack["db_url"], "job-e2e"), WAIT_S, "the gate row",
                 stack["proc"], stack["log"])
    assert gate.decision == "no_baseline"
    with session_scope(db.get_engine(stack["db_url"])) as session:
        dispatch = session.scalar(select(Dispatch).where(Dispatch.run_id == gate.run_id))
        assert dispatch.status == "dispatched" and dispatch.target == "event"


def test_a_receiver_killed_after_its_202_loses_nothing(stack: dict) -> None:
    """The receiver here has no Prefect server (it would run the loop in-process) and is
    SIGKILLed right after answering; the sweeper deployment then finds the owed loop."""
    predictions = write_predictions(stack["tmp"] / "job-crash.jsonl", correctness(60, 0.7, 6))
    port = _free_port()
    env = {**stack["env"]}
    receiver = subprocess.Popen([str(BIN / "tunix-rt"), "serve", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: _get(f"http://127.0.0.1:{port}/healthz") == 200, 60, "the receiver",
              receiver)
        body = event(external_id="job-crash", predictions_uri=predictions)
        response = httpx.post(f"http://127.0.0.1:{port}/webhooks/training", content=body,
                              headers=sign(body), timeout=30)
        receiver.kill()  # between the 202 and any loop: its in-process queue dies with it
        assert response.status_code == 202
    finally:
        receiver.kill()
        receiver.wait()
    with session_scope(db.get_engine(stack["db_url"])) as session:
        run = session.scalar(select(Run).where(Run.external_id == "job-crash"))
        assert run is not None and run.status == "completed"
        assert session.scalar(select(Evaluation).where(Evaluation.run_id == run.id)) is None
        assert session.scalar(select(Dispatch).where(Dispatch.run_id == run.id)) is not None

    subprocess.run([str(BIN / "prefect"), "deployment", "run", "sweep-owed-loops/sweep-owed-loops",
                    "--param", "older_than_minutes=0"],
                   env={**stack["env"], "PREFECT_API_URL": stack["prefect_api"]}, check=True,
                   capture_output=True)

    gate = _wait(lambda: _gate(stack["db_url"], "job-crash"), WAIT_S, "the swept loop's gate",
                 stack["proc"], stack["log"])
    assert gate.decision == "no_baseline"  # the deployment does not auto-promote


def test_a_deployment_run_with_parameters_runs_the_loop(stack: dict) -> None:
    """What a click on Run in the UI does: the deployment with parameters from the form."""
    predictions = write_predictions(stack["tmp"] / "job-ui.jsonl", correctness(60, 0.6, 7))
    with session_scope(db.get_engine(stack["db_url"])) as session:
        from tunix_rt.store.runs import register_run

        run_id = register_run(session, name="job-ui", dataset="ui-set", model="m",
                              predictions_uri=predictions, external_id="job-ui").id

    subprocess.run([str(BIN / "prefect"), "deployment", "run", "quality-loop/quality-loop",
                    "--param", f"run_id={run_id}", "--param", 'judges=["exact_match", "format"]'],
                   env={**stack["env"], "PREFECT_API_URL": stack["prefect_api"]}, check=True,
                   capture_output=True)

    def judges() -> set[str]:
        with session_scope(db.get_engine(stack["db_url"])) as session:
            return set(session.scalars(select(GateResult.judge)
                                       .where(GateResult.run_id == run_id)))

    assert _wait(lambda: judges() == {"exact_match", "format"}, WAIT_S,
                 "gates under both judges", stack["proc"], stack["log"])


def test_tunix_rt_notify_reports_a_shell_driven_run(stack: dict) -> None:
    predictions = write_predictions(stack["tmp"] / "job-sh.jsonl", correctness(60, 0.9, 8))
    env = {**stack["env"], "TUNIX_RT_URL": stack["url"]}
    common = ["--external-id", "job-sh", "--name", "job-sh", "--dataset", "arith", "--model", "m"]

    started = subprocess.run([str(BIN / "tunix-rt"), "notify", "started", *common], env=env,
                             capture_output=True, text=True)
    done = subprocess.run([str(BIN / "tunix-rt"), "notify", "completed", *common,
                           "--predictions", predictions, "--metrics", '{"loss": 0.1}'],
                          env=env, capture_output=True, text=True)

    assert started.returncode == 0 and done.returncode == 0, done.stderr
    assert "HTTP 202" in done.stdout
    gate = _wait(lambda: _gate(stack["db_url"], "job-sh"), WAIT_S, "the gate row",
                 stack["proc"], stack["log"])
    assert gate.decision == "no_baseline"
