"""Two Prefect process workers on one work pool drain quality loops started by webhooks.

A Prefect server of real processes keeps its state in PostgreSQL (a database of its own
on the session's server); a work pool of type process whose default command is
tunix-rt's engine (``tunix_rt.cli.stack.pool_template``), the quality-loop deployment of
the packaged prefect.yaml (with auto-promotion, so the loops race for the baseline), two
``prefect worker start`` on the pool (each with a warm engine of its own, as ``tunix-rt up``
starts one), and a ``tunix-rt serve`` that dispatches by Prefect events, as ``tunix-rt up``
does. LOOPS signed ``run.completed`` webhooks arrive at once.
Afterwards: one evaluation and one completed quality-loop flow run per run, each run's
loop submitted by exactly one worker and both workers used, the board equal to a full
rebuild, and the baseline the end of one unbroken chain of promotions, each earned by a
gate against the baseline it replaced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tests.factories import correctness, write_predictions
from tests.http.conftest import SECRET, _free_port, sign
from tests.pgserver import create_database
from tests.waiting import wait_for
from tunix_rt import procs
from tunix_rt.cli.stack import ENGINE_SOCKET_ENV, WORK_POOL, pool_template, prefect_file
from tunix_rt.quality.leaderboard import leaderboard_page, rebuild_leaderboard
from tunix_rt.store import db
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import (Baseline, BaselinePromotion, Evaluation, GateResult, Run)

pytestmark = [pytest.mark.cluster, pytest.mark.postgres, pytest.mark.flows, pytest.mark.cli]

BIN = Path(sys.executable).parent
# 10 in the suite: more than the 8 flow runs the two workers take at once (WORKER_LIMIT
# each), so runs queue and both workers race for them, as at any larger count; the
# issue's 50 by hand: TUNIX_RT_TEST_CLUSTER_LOOPS=50 pytest tests/cluster/test_prefect_workers.py
LOOPS = int(os.environ.get("TUNIX_RT_TEST_CLUSTER_LOOPS", "10"))
ITEMS = 50
WORKERS = ("worker-a", "worker-b")
WORKER_LIMIT = 4  # flow runs a worker runs at once: 8 processes on a 2-core machine
START_S = 180
DRAIN_S = 1200  # a safety net for a hung stack, not a claim about speed


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def stack(pg_admin_url: str, pg_template: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Prefect server on PostgreSQL, the pool, the deployment, two workers, a receiver."""
    tmp = tmp_path_factory.mktemp("prefect-cluster")
    prefect_db = make_url(create_database(pg_admin_url, prefix="prefect")).set(
        drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    url = create_database(pg_admin_url, template=pg_template)
    prefect_port, port = _free_port(), _free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO",
           "PREFECT_WORKER_QUERY_SECONDS": "0.5", "TUNIX_RT_DATABASE_URL": url,
           "TUNIX_RT_WEBHOOK_SECRET": SECRET, "TUNIX_RT_PREDICTIONS_ALLOW": str(tmp)}
    env.pop("PREFECT_API_URL", None)
    logs = tmp / "logs"
    logs.mkdir()
    started: list[subprocess.Popen] = []
    sockets: dict[str, str] = {}

    def start(name: str, cmd: list[str], extra: dict[str, str]) -> subprocess.Popen:
        with (logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(cmd, env={**env, **extra}, cwd=tmp, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        started.append(proc)
        return proc

    def run(cmd: list[str]) -> None:
        result = subprocess.run(cmd, env={**env, "PREFECT_API_URL": api}, cwd=tmp,
                                capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    try:
        server = start("prefect-server", _prefect("server", "start", "--host", "127.0.0.1",
                                                  "--port", str(prefect_port)),
                       {"PREFECT_API_DATABASE_CONNECTION_URL": prefect_db})
        wait_for(lambda: _healthy(f"{api}/health"), START_S, "the Prefect server",
                 proc=server, log=logs / "prefect-server.log", interval=1)
        run(_prefect("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite",
                     "--base-job-template", str(pool_template(tmp / "work-pool.json"))))
        # The packaged quality-loop deployment, auto-promoting: the loops race for the
        # baseline, which the assertions below check.
        spec = yaml.safe_load(prefect_file(tmp).read_text())
        [loop] = [d for d in spec["deployments"] if d["name"] == "quality-loop"]
        loop["parameters"]["policy"]["auto_promote"] = True
        spec["deployments"] = [loop]
        (tmp / "prefect.yaml").write_text(yaml.safe_dump(spec))
        run(_prefect("--no-prompt", "deploy", "--all", "--prefect-file",
                     str(tmp / "prefect.yaml")))
        # Each worker with a warm engine of its own, as each worker host of a deployment
        # would have (tunix-rt up's: its flow runs are forked from an imported process).
        sockets = {name: os.path.join(tempfile.mkdtemp(prefix="trt-engine-"), "engine.sock")
                   for name in WORKERS}
        for name, socket in sockets.items():
            start(f"{name}-engine", [sys.executable, "-m", "tunix_rt.flows.engine", "--serve",
                                     socket], {"PREFECT_API_URL": api})
        workers = {name: start(name, _prefect("worker", "start", "--pool", WORK_POOL,
                                              "--name", name, "--limit", str(WORKER_LIMIT)),
                               {"PREFECT_API_URL": api, ENGINE_SOCKET_ENV: sockets[name]})
                   for name in WORKERS}
        receiver = start("receiver", [str(BIN / "tunix-rt"), "serve", "--port", str(port)],
                         {"PREFECT_API_URL": api})
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(f"{base}/healthz"), START_S, "the receiver",
                 proc=receiver, log=logs / "receiver.log", interval=1)
        wait_for(lambda: all(os.path.exists(path) for path in sockets.values()), START_S,
                 "the warm engines' sockets", interval=1)
        yield {"url": base, "api": api, "db_url": url, "tmp": tmp, "logs": logs,
               "workers": workers, "server": server}
    finally:
        # The receiver, workers (their flow runs with them) and engines at once, then the
        # server they talk to: each takes seconds to stop, one after another they took ~40 s.
        procs.stop_groups(started[1:], 15, descendants=True)
        procs.stop_groups(started[:1], 15, descendants=True)
        for path in sockets.values():
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _flow_runs(api: str) -> list[dict]:
    runs, offset = [], 0
    while True:
        page = httpx.post(f"{api}/flow_runs/filter", json={
            "flows": {"name": {"any_": ["quality-loop"]}}, "limit": 200, "offset": offset},
            timeout=60).json()
        runs += page
        if len(page) < 200:
            return runs
        offset += 200


def _count(session, query) -> int:  # noqa: ANN001
    return session.scalar(select(func.count()).select_from(query.subquery()))


@pytest.mark.timeout(START_S * 3 + DRAIN_S)
def test_two_workers_drain_concurrent_loops_each_once(stack: dict) -> None:
    tmp = stack["tmp"]
    bodies = []
    for i in range(LOOPS):
        # Accuracies spread over 0.55..0.95, so some runs pass with a better score.
        uri = write_predictions(tmp / "predictions" / f"run-{i}.jsonl",
                                correctness(ITEMS, 0.55 + 0.4 * i / LOOPS, i))
        bodies.append(json.dumps({"type": "run.completed", "data": {
            "external_id": f"loop-{i}", "name": f"loop-{i}", "dataset": "arith",
            "model": "tiny", "predictions_uri": uri}}).encode())

    def deliver(body: bytes) -> int:
        return httpx.post(f"{stack['url']}/webhooks/training", content=body,
                          headers=sign(body), timeout=120).status_code

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(deliver, bodies))
    assert answers == [202] * LOOPS

    engine = db.get_engine(stack["db_url"])

    def drained() -> list[dict] | None:
        with session_scope(engine) as session:
            gated = _count(session, select(GateResult.run_id).distinct())
        if gated < LOOPS:
            return None
        runs = _flow_runs(stack["api"])
        return runs if all(r["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
                           for r in runs) else None

    flow_runs = wait_for(drained, DRAIN_S, f"{LOOPS} gated runs, every loop ended",
                         proc=stack["server"], interval=2)

    # Prefect: one completed loop per run.
    by_run = Counter(r["parameters"]["run_id"] for r in flow_runs)
    assert len(flow_runs) == LOOPS and set(by_run.values()) == {1}
    assert {r["state_type"] for r in flow_runs} == {"COMPLETED"}
    # Each loop ran by exactly one worker, both workers ran some. Both workers may reach
    # for the same run (each logs "submitting"); Prefect lets one move it to Pending and
    # aborts the other's submission.
    ran: dict[str, set[str]] = {}
    for name in WORKERS:
        text = (stack["logs"] / f"{name}.log").read_text(errors="replace")
        tried = set(re.findall(rf"Worker '{name}' submitting flow run '([0-9a-f-]+)'", text))
        aborted = set(re.findall(r"Aborted submission of flow run '([0-9a-f-]+)'", text))
        ran[name] = tried - aborted
    assert all(ran.values()), {name: len(ids) for name, ids in ran.items()}
    assert not set.intersection(*ran.values())
    assert set.union(*ran.values()) == {r["id"] for r in flow_runs}

    with session_scope(engine) as session:
        runs = {r.id: r.external_id for r in session.scalars(select(Run))}
        assert set(by_run) == set(runs) and len(runs) == LOOPS
        # One evaluation per run.
        evaluations = Counter(session.scalars(select(Evaluation.run_id).where(
            Evaluation.status == "completed")))
        assert set(evaluations) == set(runs) and set(evaluations.values()) == {1}
        judge = "exact_match"
        # The baseline: one unbroken chain of promotions, each earned by its gate.
        promotions = list(session.scalars(select(BaselinePromotion).where(
            BaselinePromotion.dataset == "arith").order_by(BaselinePromotion.id)))
        baseline = session.scalar(select(Baseline.run_id).where(Baseline.dataset == "arith",
                                                               Baseline.judge == judge))
        assert promotions and promotions[0].previous_run_id is None
        assert all(p.source == "auto" for p in promotions)
        for before, after in zip(promotions, promotions[1:]):
            assert after.previous_run_id == before.run_id
        assert baseline == promotions[-1].run_id
        for promotion in promotions[1:]:
            gate = session.scalar(select(GateResult).where(
                GateResult.run_id == promotion.run_id,
                GateResult.baseline_run_id == promotion.previous_run_id))
            assert gate.decision == "pass" and gate.delta > 0
        # Every run but the first baseline was gated against a baseline in the end (a
        # loop that found none while another was promoting is gated again).
        against = set(session.scalars(select(GateResult.run_id).where(
            GateResult.baseline_run_id.is_not(None))))
        assert against == set(runs) - {promotions[0].run_id}
    # The board as the loops left it equals a rebuild from the evaluations (rolled back).
    with Session(engine) as session:
        stored = leaderboard_page(session, "arith", judge, limit=LOOPS + 1).entries
        rebuild_leaderboard(session, "arith", judge)
        rebuilt = leaderboard_page(session, "arith", judge, limit=LOOPS + 1).entries
        session.rollback()
    assert len(stored) == LOOPS
    assert [(e.run_id, e.score, e.ci_low, e.ci_high) for e in stored] == \
        [(e.run_id, e.score, e.ci_low, e.ci_high) for e in rebuilt]
