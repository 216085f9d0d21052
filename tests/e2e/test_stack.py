"""End to end: `tunix-rt up` (a real Prefect server, deployments, a worker, our service).

The stack is started as a newcomer starts it: by the absolute path of the venv's
`tunix-rt`, with a PATH that lacks the venv, from a directory that is not the checkout
(so the prefect.yaml shipped in the package is deployed). A signed webhook for a
completed run goes: receiver → the quality-loop deployment's flow run, created through
Prefect's API (and the `tunix.run.completed` event, for observers) → a worker runs the flow
→ a gate row in the database. A receiver killed between its 202
and its dispatch loses nothing: the sweeper deployment finds the owed loop and starts
it. A loop that cannot run says why on its run. Ctrl-C stops every process it started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.factories import correctness, write_predictions
from tests.http.conftest import SECRET, _free_port, event, sign
from tests.pgserver import create_database
from tests.proctable import command_line, running
from tests.proctable import tree as process_tree
from tests.waiting import wait_for
from tunix_rt import procs
from tunix_rt.store import db
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Dispatch, DispatchStatus, Evaluation, GateResult, Run

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
BIN = Path(sys.executable).parent
WAIT_S = 120


def _path_without_the_venv() -> str:
    """This PATH minus every folder holding a `tunix-rt` or a `prefect` command."""
    keep = [entry for entry in os.environ.get("PATH", "").split(os.pathsep)
            if entry and not any((Path(entry) / name).exists() for name in ("tunix-rt", "prefect"))]
    return os.pathsep.join(keep or ["/usr/bin", "/bin"])


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def _prefect(stack: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "prefect"), *args], cwd=stack["tmp"],
                          env={**stack["env"], "PREFECT_API_URL": stack["prefect_api"]},
                          check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def stack(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`tunix-rt up` against a fresh PostgreSQL database; SIGINT at the end."""
    tmp = tmp_path_factory.mktemp("stack")
    url = create_database(pg_admin_url)
    db.upgrade(db.make_engine(url))
    port, prefect_port = _free_port(), _free_port()
    path = _path_without_the_venv()
    assert shutil.which("tunix-rt", path=path) is None and shutil.which("prefect", path=path) is None
    env = {**os.environ, "TUNIX_RT_DATABASE_URL": url, "TUNIX_RT_WEBHOOK_SECRET": SECRET,
           "TUNIX_RT_PREDICTIONS_ALLOW": str(tmp),  # the webhooks name files under tmp
           "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_LOGGING_LEVEL": "INFO", "PATH": path}
    env.pop("PREFECT_API_URL", None)
    env.pop("VIRTUAL_ENV", None)
    workdir = tmp / "elsewhere"  # not the checkout, and no prefect.yaml of its own
    workdir.mkdir()
    log = tmp / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "tunix-rt"), "up", "--port", str(port),
                                 "--prefect-port", str(prefect_port), "--logs", str(tmp / "logs")],
                                env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                # A test run killed outright must not leave a stack running.
                                preexec_fn=procs.parent_death_signal(signal.SIGTERM))
    base = f"http://127.0.0.1:{port}"
    # A Prefect server's first start (its database, migrations) takes minutes on a busy machine.
    wait_for(lambda: _get(f"{base}/healthz") == 200, 3 * WAIT_S, "tunix-rt up", proc=proc,
             log=log)
    yield {"url": base, "db_url": url, "tmp": tmp, "env": env, "proc": proc, "log": log,
           "prefect_api": f"http://127.0.0.1:{prefect_port}/api"}
    if proc.poll() is None:  # test_ctrl_c_stops_every_process_it_started did not run
        _interrupt(proc)
    out = log.read_text()
    assert "stopped worker" in out and "stopped Prefect server" in out, out[-2000:]
    assert _get(f"http://127.0.0.1:{prefect_port}/api/health") is None


def _wait(stack: dict, predicate, what: str):  # noqa: ANN001, ANN202
    return wait_for(predicate, WAIT_S, what, proc=stack["proc"], log=stack["log"])


def _gate(db_url: str, external_id: str) -> GateResult | None:
    with session_scope(db.get_engine(db_url)) as session:
        return session.scalar(select(GateResult).join(Run, Run.id == GateResult.run_id)
                              .where(Run.external_id == external_id))


# The first test's time counts the stack's start (up to 3 * WAIT_S on a loaded machine).
@pytest.mark.timeout(6 * WAIT_S)
def test_a_signed_webhook_ends_in_a_gate_decision(stack: dict) -> None:
    predictions = write_predictions(stack["tmp"] / "job-e2e.jsonl", correctness(60, 0.8, 5))
    body = event(external_id="job-e2e", predictions_uri=predictions)
    engine_log = stack["tmp"] / "logs" / "engine.log"
    _wait(stack, lambda: engine_log.exists() and "warm engine on" in engine_log.read_text(),
          "the warm engine")

    headers = sign(body)
    response = httpx.post(f"{stack['url']}/webhooks/training", content=body, headers=headers,
                          timeout=30)

    assert response.status_code == 202, response.text
    gate = _wait(stack, lambda: _gate(stack["db_url"], "job-e2e"), "the gate row")
    # Deployed from the prefect.yaml shipped in the package: the stack ran elsewhere.
    assert f"tunix_rt{os.sep}prefect.yaml" in stack["log"].read_text()
    assert gate.decision == "no_baseline"
    with session_scope(db.get_engine(stack["db_url"])) as session:
        dispatch = session.scalar(select(Dispatch).where(Dispatch.run_id == gate.run_id))
        assert dispatch.status == "dispatched" and dispatch.target == "event"
    # One flow run for the delivery (no trigger starts a second), and the event was emitted
    # for observers, naming that flow run.
    with httpx.Client(base_url=stack["prefect_api"], timeout=30) as client:
        loops = [r for r in client.post("/flow_runs/filter", json={
            "flow_runs": {"tags": {"all_": ["tunix-rt"]}}, "limit": 200}).json()
            if r["parameters"].get("run_id") == gate.run_id]
        assert len(loops) == 1, loops
        assert loops[0]["idempotency_key"] == headers["webhook-id"]  # the delivery's id
        emitted = _wait(stack, lambda: client.post("/events/filter", json={"filter": {
            "event": {"name": ["tunix.run.completed"]},
            "resource": {"id": [f"tunix.run.{gate.run_id}"]}}}).json()["events"],
            "the tunix.run.completed event")
    assert emitted[0]["payload"]["flow_run_id"] == loops[0]["id"]
    # The flow run was forked by the warm engine, already imported, not a fresh interpreter.
    assert "flow run " in engine_log.read_text() and ": process " in engine_log.read_text()
    # Prefect's server on its default database, and `up` said which (and how to choose
    # PostgreSQL: tests/cli/test_prefect_database.py).
    assert "Prefect database: SQLite under PREFECT_HOME" in stack["log"].read_text()


def test_a_receiver_killed_after_its_202_loses_nothing(stack: dict) -> None:
    """The receiver here has no Prefect server (it would run the loop in-process) and is
    SIGKILLed right after answering; the sweeper deployment then finds the owed loop."""
    predictions = write_predictions(stack["tmp"] / "job-crash.jsonl", correctness(60, 0.7, 6))
    port = _free_port()
    env = {**stack["env"]}
    receiver = subprocess.Popen([str(BIN / "tunix-rt"), "serve", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=procs.parent_death_signal(signal.SIGTERM))
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz") == 200, 60, "the receiver",
                 proc=receiver)
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

    _prefect(stack, "deployment", "run", "sweep-owed-loops/sweep-owed-loops",
             "--param", "older_than_minutes=0")

    gate = _wait(stack, lambda: _gate(stack["db_url"], "job-crash"), "the swept loop's gate")
    assert gate.decision == "no_baseline"  # the deployment does not auto-promote


def test_a_deployment_run_with_parameters_runs_the_loop(stack: dict) -> None:
    """What a click on Run in the UI does: the deployment with parameters from the form."""
    predictions = write_predictions(stack["tmp"] / "job-ui.jsonl", correctness(60, 0.6, 7))
    with session_scope(db.get_engine(stack["db_url"])) as session:
        from tunix_rt.store.runs import register_run

        run_id = register_run(session, name="job-ui", dataset="ui-set", model="m",
                              predictions_uri=predictions, external_id="job-ui").id

    _prefect(stack, "deployment", "run", "quality-loop/quality-loop",
             "--param", f"run_id={run_id}", "--param", 'judges=["exact_match", "format"]')

    def judges() -> set[str]:
        with session_scope(db.get_engine(stack["db_url"])) as session:
            return set(session.scalars(select(GateResult.judge)
                                       .where(GateResult.run_id == run_id)))

    assert _wait(stack, lambda: judges() == {"exact_match", "format"}, "gates under both judges")


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
    gate = _wait(stack, lambda: _gate(stack["db_url"], "job-sh"), "the gate row")
    assert gate.decision == "no_baseline"


CANNOT_START = """\
# The pull step of the issue: a command the worker's children cannot find.
name: cannot-start
pull:
  - prefect.deployments.steps.run_shell_script:
      script: tunix-rt-not-on-path db upgrade
      stream_output: false
deployments:
  - name: cannot-start
    entrypoint: tunix_rt.flows.quality_loop:quality_loop
    work_pool:
      name: tunix-rt
"""


def _loop_error(stack: dict, run_id: str) -> str | None:
    response = httpx.get(f"{stack['url']}/api/runs/{run_id}", timeout=10)
    response.raise_for_status()
    return response.json()["loop_error"]


def test_a_loop_that_cannot_run_says_why_on_its_run(stack: dict) -> None:
    """Two loops owed to completed runs: one whose flow run crashes in its pull step,
    before any of the loop's code runs (the watcher beside the receiver notes it), and
    one that fails in the loop (its on_failure hook notes it)."""
    spec = stack["tmp"] / "cannot-start.yaml"
    spec.write_text(CANNOT_START)
    _prefect(stack, "--no-prompt", "deploy", "--all", "--prefect-file", str(spec))
    predictions = write_predictions(stack["tmp"] / "job-nostart.jsonl", correctness(60, 0.8, 9))
    with session_scope(db.get_engine(stack["db_url"])) as session:
        from tunix_rt.store.runs import register_run

        crashing = register_run(session, name="job-nostart", dataset="nostart-set", model="m",
                                predictions_uri=predictions, external_id="job-nostart").id
        # As the receiver stores a completed run: its loop is owed, and was dispatched.
        session.add(Dispatch(key="d-nostart", run_id=crashing, target="event", attempts=1,
                             status=DispatchStatus.dispatched.value))
    _prefect(stack, "deployment", "run", "quality-loop/cannot-start", "--param",
             f"run_id={crashing}")
    body = event(external_id="job-missing", predictions_uri=str(stack["tmp"] / "missing.jsonl"))
    response = httpx.post(f"{stack['url']}/webhooks/training", content=body, headers=sign(body),
                          timeout=30)
    assert response.status_code == 202, response.text
    failing = response.json()["run_id"]

    crashed = _wait(stack, lambda: _loop_error(stack, crashing), "the crash on the run")
    failed = _wait(stack, lambda: _loop_error(stack, failing), "the failure on the run")

    assert "crashed" in crashed and "Process exited with status code: 1" in crashed, crashed
    # Where it died, the flow run's last log line: its pull step (or, when the engine's own
    # error line reached the API before the exit, loading the flow), not the loop.
    assert any(f"last log line before the crash: {line}" in crashed for line in (
        "Executing deployment step: run_shell_script",
        "Unexpected exception encountered when trying to load flow")), crashed
    assert "failed" in failed and "missing.jsonl" in failed, failed
    with session_scope(db.get_engine(stack["db_url"])) as session:
        assert session.get(Run, crashing).error is None  # the job's own error is untouched
        assert session.scalar(select(Evaluation).where(Evaluation.run_id == crashing)) is None

    # Once a loop for the run completes, no error stands.
    _prefect(stack, "deployment", "run", "quality-loop/quality-loop", "--param",
             f"run_id={crashing}")
    _wait(stack, lambda: _gate(stack["db_url"], "job-nostart"), "the gate of a loop that ran")
    _wait(stack, lambda: _loop_error(stack, crashing) is None, "the loop error cleared")


def _interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C for ``tunix-rt up``; fails the test if it does not stop within a minute."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("tunix-rt up did not stop on Ctrl-C")


def _commands(tree: dict[int, int]) -> str:
    return "\n".join(line for line in map(command_line, tree) if line)


def test_ctrl_c_stops_every_process_it_started(stack: dict) -> None:
    """Last in this module: it stops the stack the others share, while a deployed
    training job runs. The worker starts each flow run in a session of its own, and the
    flow run its job: none of them may outlive the stack."""
    proc = stack["proc"]
    marker = f"sleep {9000 + os.getpid() % 1000}"  # a job to find among the processes
    spec = {"name": "job-ctrl-c", "dataset": "arith", "model": "m",
            "command": ["sh", "-c", f"{marker}; true"], "predictions": "/nonexistent.jsonl"}
    _prefect(stack, "deployment", "run", "train/train", "--param", f"spec={json.dumps(spec)}")
    tree = _wait(stack, lambda: (lambda t: t if marker in _commands(t) else None)(
        process_tree(proc.pid)), "the training job under the worker")
    commands = _commands(tree)
    assert "server start" in commands and "worker start" in commands, commands
    # The flow run, with the interpreter of the venv, though no venv is on PATH, in the
    # engine of the pool's command (our heartbeats, not Prefect's thread).
    engines = [line for line in commands.splitlines() if "-m tunix_rt.flows.engine" in line]
    assert engines and all(line.startswith(str(BIN / "python")) for line in engines), commands
    groups = set(tree.values()) - {os.getpgid(os.getpid())}

    _interrupt(proc)

    assert proc.returncode == 0, stack["log"].read_text()[-2000:]
    left = [pid for pid in tree if running(pid)]
    assert left == [], _commands(dict.fromkeys(left, 0))
    assert [group for group in groups if procs.group_alive(group)] == []
    out = stack["log"].read_text()
    assert "stopped worker" in out and "stopped Prefect server" in out, out[-2000:]
    assert "killed" not in out, out[-2000:]  # each child stopped on SIGTERM, none needed SIGKILL
