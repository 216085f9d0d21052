"""Several receivers on one PostgreSQL: every delivery is processed exactly once.

Two ``tunix-rt serve`` processes (the installed command, each running its quality loops
in its own worker thread, each with a Prefect home of its own) share one database and
receive the same deliveries at the same time: each delivery goes to both, from two
sender pools, one per receiver. Whichever stores a delivery first answers 202; the
other finds its id taken and answers 200. Afterwards: each delivery is stored once,
each run changed by each delivery once (its progress points stored once), one dispatch
per completed run, and one quality loop per run across both receivers' Prefect records.

``tunix-rt serve --workers 2`` (uvicorn's multi-process mode) answers and stores too.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tunix_rt import procs
from tests.cli.conftest import tunix_rt_command
from tests.http.conftest import sign
from tests.pgserver import create_database
from tests.reliability import processes
from tests.waiting import wait_for
from tunix_rt.store import db
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Dispatch, Evaluation, RunMetric, Run, WebhookDelivery

pytestmark = [pytest.mark.reliability, pytest.mark.postgres, pytest.mark.cluster,
              pytest.mark.cli]

RUNS = 4
POINTS = 48  # run.progress deliveries per run, one point each: 50 deliveries a run
LOOPS_S = 600  # generous: four loops on a loaded 2-core machine


def _deliveries(uri: str) -> list[list[tuple[str, bytes]]]:
    """Per run, in order: run.started, POINTS run.progress, run.completed (id, body)."""
    runs = []
    for r in range(RUNS):
        data = {"external_id": f"two-{r}", "name": f"two-{r}", "dataset": "arithmetic",
                "model": "tiny"}
        bodies = [{"type": "run.started", "data": {**data, "config": {"lr": 0.1 * r}}}]
        bodies += [{"type": "run.progress",
                    "data": {**data, "progress": [{"step": s, "metrics": {"loss": 1 / (s + 1)}}]}}
                   for s in range(POINTS)]
        bodies.append({"type": "run.completed",
                       "data": {**data, "predictions_uri": uri, "metrics": {"loss": 0.1}}})
        runs.append([(f"msg_two_{r}_{i}", json.dumps(b).encode()) for i, b in enumerate(bodies)])
    return runs


def _send_all(url: str, runs: list[list[tuple[str, bytes]]]) -> list[tuple[str, int]]:
    """Every run's deliveries in order, runs at once (one thread each); (id, status)."""
    def one_run(deliveries: list[tuple[str, bytes]]) -> list[tuple[str, int]]:
        with httpx.Client(timeout=60) as client:
            return [(msg_id, client.post(f"{url}/webhooks/training", content=body,
                                         headers=sign(body, msg_id=msg_id)).status_code)
                    for msg_id, body in deliveries]

    with ThreadPoolExecutor(len(runs)) as pool:
        return [answer for answers in pool.map(one_run, runs) for answer in answers]


def test_two_receivers_on_one_database_process_each_delivery_once(
        pg_admin_url: str, pg_template: str, tmp_path: Path) -> None:
    url = create_database(pg_admin_url, template=pg_template)
    allow = tmp_path / "predictions"
    uri = processes.write_arithmetic(allow / "p.jsonl", wrong=[2])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with ThreadPoolExecutor(2) as pool:  # both start at once: half the wait
        started = [pool.submit(processes.start_receiver, url, tmp_path / name, allow=allow)
                   for name in ("a", "b")]
        receivers = [future.result() for future in started]
    try:
        runs = _deliveries(uri)
        with ThreadPoolExecutor(2) as pool:
            answers = [a for got in pool.map(lambda r: _send_all(r.url, runs), receivers)
                       for a in got]

        statuses = Counter(status for _, status in answers)
        assert set(statuses) <= {200, 202}, f"answers other than 200 and 202: {statuses}"
        accepted = Counter(msg_id for msg_id, status in answers if status == 202)
        every = {msg_id for deliveries in runs for msg_id, _ in deliveries}
        assert set(accepted) == every and set(accepted.values()) == {1}, (
            "each delivery is accepted by exactly one receiver")
        engine = db.get_engine(url)
        wait_for(lambda: _evaluated(engine) == RUNS, LOOPS_S, "a quality loop for every run",
                 interval=1.0)
        with session_scope(engine) as session:
            assert set(session.scalars(select(WebhookDelivery.id))) == every
            assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == len(every)
            states = dict(session.execute(select(Run.external_id, Run.status)).all())
            assert states == {f"two-{r}": "completed" for r in range(RUNS)}
            points = dict(session.execute(select(RunMetric.run_id, func.count())
                                          .group_by(RunMetric.run_id)).all())
            assert sorted(points.values()) == [POINTS] * RUNS
            dispatches = session.execute(select(Dispatch.run_id, func.count())
                                         .group_by(Dispatch.run_id)).all()
            assert len(dispatches) == RUNS and {c for _, c in dispatches} == {1}
            run_ids = set(session.scalars(select(Run.id)))
        for receiver in receivers:  # the loops' flow runs are on record once stopped
            receiver.stop()
        flow_runs: Counter[str] = Counter()
        for receiver in receivers:
            for run_id, states in processes.quality_loop_flow_runs(receiver.prefect_home).items():
                flow_runs[run_id] += len(states)
        assert set(flow_runs) == run_ids and set(flow_runs.values()) == {1}, (
            f"quality loops per run across both receivers: {dict(flow_runs)}")
        for receiver in receivers:
            log = receiver.log_text()
            assert " 500 Internal Server Error" not in log and "Traceback" not in log, log[-3000:]
    finally:
        for receiver in receivers:
            receiver.stop()


def _evaluated(engine: object) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count(func.distinct(Evaluation.run_id)))) or 0


def test_serve_with_two_workers_answers_and_stores(pg_admin_url: str, pg_template: str,
                                                   tmp_path: Path) -> None:
    """``--workers 2``: two worker processes on one port; 60 deliveries from 6 connections
    are each answered 202 and stored once; ``--no-dispatch`` leaves the loops owed."""
    url = create_database(pg_admin_url, template=pg_template)
    port = processes.free_port()
    home = tmp_path / "prefect-home"
    home.mkdir()
    log = tmp_path / "serve.log"
    env = processes.tunix_rt_env(url, home, TUNIX_RT_PREDICTIONS_ALLOW=str(tmp_path))
    with log.open("wb") as out:
        proc = subprocess.Popen([*tunix_rt_command(), "serve", "--port", str(port),
                                 "--workers", "2", "--no-dispatch"], env=env, cwd=tmp_path,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=procs.parent_death_signal(signal.SIGTERM))
    receiver = processes.Receiver(proc, f"http://127.0.0.1:{port}", log, home)
    try:
        wait_for(lambda: receiver.healthz() == 200, processes.START_S, "serve --workers 2",
                 proc=proc, log=log, interval=0.25)
        workers = [pid for pid in processes._descendants(proc.pid) if pid != proc.pid
                   and "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
        assert len(workers) == 2, f"worker processes: {workers}\n{receiver.log_text()[-2000:]}"
        runs = [[(f"msg_w_{r}_{i}", json.dumps({"type": kind, "data": {
            "external_id": f"w-{r}", "dataset": "arithmetic", "model": "tiny",
            "predictions_uri": str(tmp_path / "p.jsonl")}}).encode())
            for i, kind in enumerate(["run.started"] * 9 + ["run.completed"])] for r in range(6)]
        answers = _send_all(receiver.url, runs)
        assert [s for _, s in answers] == [202] * 60, Counter(s for _, s in answers)
        with session_scope(db.get_engine(url)) as session:
            assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 60
            owed = session.execute(select(Dispatch.status, func.count())
                                   .group_by(Dispatch.status)).all()
            assert owed == [("pending", 6)]
    finally:
        receiver.stop()
    assert "Traceback" not in receiver.log_text(), receiver.log_text()[-3000:]
