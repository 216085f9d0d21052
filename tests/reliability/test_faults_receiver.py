"""Faults around the receiver, with real processes: ``tunix-rt serve`` as a subprocess, a
real PostgreSQL that is stopped and started again, and the client library as the sender.

What must hold afterwards is read from the database: each run stored once, each
delivery once, one dispatch row (the owed loop) per run, and each run's loop run once:
one evaluation, one gate decision and one quality-loop flow run in the Prefect database
the receiver wrote to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.http.conftest import event, sign
from tests.pgserver import PostgresCluster, PostgresUnavailable, create_database
from tests.reliability import processes
from tests.reliability.processes import Completion, Counter, Receiver
from tests.waiting import wait_for
from tunix_rt.client import NotifyResult
from tunix_rt.store import db
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import (Dispatch, Evaluation, GateResult, LeaderboardEntry, Run,
                                   WebhookDelivery, utcnow)

pytestmark = [pytest.mark.reliability, pytest.mark.postgres, pytest.mark.cli]

# How long the test waits for the owed loops: a safety net for a hung loop, never a
# claim about speed (a loop costs 0.4-1 s on a loaded 2-core machine).
LOOPS_WAIT_S = 600
OUTAGE_S = 4.0  # how long PostgreSQL stays down: several client retries' worth


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL of this test's own: the session's server is never restarted."""
    try:
        with PostgresCluster() as own:
            yield own
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


def _migrated(admin_url: str) -> str:
    url = create_database(admin_url)
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    return url


def _count(db_url: str, model: type) -> int:
    with session_scope(db.get_engine(db_url)) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def _per_run(db_url: str, model: type) -> dict[str, int]:
    """run id -> how many rows of ``model`` name it."""
    with session_scope(db.get_engine(db_url)) as session:
        return dict(session.execute(select(model.run_id, func.count())
                                    .group_by(model.run_id)).all())


def _owed(db_url: str) -> list[str]:
    """Runs whose loop is still owed, however long any lease still runs."""
    from datetime import timedelta

    from tunix_rt.service.deliveries import owed_dispatches

    with session_scope(db.get_engine(db_url)) as session:
        later = utcnow() + timedelta(days=1)
        return [o.run_id for o in owed_dispatches(session, older_than=timedelta(0), now=later,
                                                  limit=10_000)]


def _assert_each_loop_ran_once(db_url: str, receiver: Receiver, looped: set[str]) -> None:
    """Each run in ``looped``: one evaluation, one gate decision and one quality-loop flow
    run, completed; no other run has a completed loop, nor a failed evaluation."""
    evaluations = _per_run(db_url, Evaluation)
    gates = _per_run(db_url, GateResult)
    assert {run: evaluations.get(run) for run in looped} == dict.fromkeys(looped, 1)
    assert gates == dict.fromkeys(looped, 1)
    flow_runs = processes.quality_loop_flow_runs(receiver.prefect_home)
    assert {run: flow_runs.get(run) for run in looped} == dict.fromkeys(looped, ["COMPLETED"])
    assert {run for run, states in flow_runs.items() if "COMPLETED" in states} == looped
    with session_scope(db.get_engine(db_url)) as session:
        assert session.scalars(select(Evaluation.run_id)
                               .where(Evaluation.status != "completed")).all() == []


def _wait_for_loops(db_url: str, receiver: Receiver, n: int) -> None:
    wait_for(lambda: _count(db_url, GateResult) >= n, LOOPS_WAIT_S,
             f"{n} gate decisions (one quality loop per run)", proc=receiver.proc,
             log=receiver.log, interval=1.0)


def _direct_post(receiver: Receiver, external_id: str, uri: str) -> httpx.Response:
    body = event(external_id=external_id, dataset="arithmetic", predictions_uri=uri)
    return httpx.post(receiver.webhook_url, content=body, headers=sign(body), timeout=30)


def test_postgres_restarted_during_500_webhooks(cluster: PostgresCluster,
                                                tmp_path: Path) -> None:
    """500 runs, each one run.completed from the client library in 4 sender threads;
    after 30 have been accepted PostgreSQL is stopped (``pg_ctl stop -m fast``: every
    session ends with an error), kept down for a few seconds and started again.

    While it is down the receiver answers 503 with Retry-After (seen here on a direct
    signed POST and on /healthz, and by the senders, who retry). Afterwards: exactly 500
    runs and 500 deliveries, and one dispatch (the owed loop) per run.

    The loops: not all 500 run here. The receiver runs them one at a time in the order
    it accepted the runs, 0.4-1 s each, so 500 would take 4-8 minutes, beyond the CI
    budget. The test waits for the loops of every run the outage could touch (accepted
    before PostgreSQL was back, or retried by its sender), 35-50 runs, and whatever
    else has run by then; each ran exactly once. Then the receiver is killed, and every
    other run's loop is owed, exactly once, to the sweeper (once the dead receiver's
    leases lapse).
    """
    url = _migrated(cluster.url)
    allow = tmp_path / "predictions"
    uri = processes.write_arithmetic(allow / "shared.jsonl")  # read only, shared by runs
    completions = [Completion(f"restart-{i:03d}",
                              processes.write_arithmetic(allow / f"r{i:03d}.jsonl",
                                                         wrong=[i % 5]) if i % 10 == 0 else uri)
                   for i in range(500)]
    receiver = processes.start_receiver(url, tmp_path, allow=allow)
    try:
        accepted = Counter()
        touched: set[str] = set()  # runs the outage could touch
        back = threading.Event()  # PostgreSQL is up again

        def on_sent(result: NotifyResult) -> None:
            accepted.add("ok")
            if result.attempts > 1 or not back.is_set():
                touched.add(result.response["run_id"])

        results: list[NotifyResult] = []
        failures: list[BaseException] = []

        def send() -> None:
            try:
                results.extend(processes.send_completions(receiver.webhook_url, completions,
                                                          threads=4, on_sent=on_sent))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                failures.append(exc)

        sender = threading.Thread(target=send, name="senders")
        sender.start()
        wait_for(lambda: accepted["ok"] >= 30, 300, "30 accepted deliveries",
                 alive=sender.is_alive)

        cluster.stop("fast")
        down = time.monotonic()
        # The receiver says so: the webhook and /healthz answer 503, the webhook with
        # Retry-After, and nothing is stored for the probe.
        probe = _direct_post(receiver, "restart-probe", uri)
        assert probe.status_code == 503, probe.text
        assert probe.headers.get("retry-after") == "5"
        assert receiver.healthz() == 503
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))  # the outage itself
        cluster.start()
        back.set()

        sender.join(timeout=600)
        assert not sender.is_alive(), "the senders hung"
        if failures:
            raise failures[0]
        assert len(results) == 500 and all(r.ok for r in results)
        retried = sum(r.attempts > 1 for r in results)
        assert retried > 0, "no sender had to retry: the outage missed the stream"

        # Exactly what was sent, each once (the probe refused with 503 left nothing).
        assert _count(url, Run) == 500
        assert _count(url, WebhookDelivery) == 500
        dispatches = _per_run(url, Dispatch)
        assert len(dispatches) == 500 and set(dispatches.values()) == {1}
        log = receiver.log_text()
        assert '"POST /webhooks/training HTTP/1.1" 503' in log
        assert " 500 Internal Server Error" not in log
        assert "Exception in ASGI application" not in log

        wait_for(lambda: touched <= set(_per_run(url, GateResult)), LOOPS_WAIT_S,
                 f"the loops of the {len(touched)} runs the outage touched",
                 proc=receiver.proc, log=receiver.log, interval=1.0)
    finally:
        receiver.proc.kill()  # a crash: what it had not run yet is owed to the sweeper
        receiver.stop()
    looped = set(_per_run(url, GateResult))
    _assert_each_loop_ran_once(url, receiver, looped)
    with session_scope(db.get_engine(url)) as session:
        runs = set(session.scalars(select(Run.id)))
    owed = _owed(url)
    assert len(owed) == len(set(owed)) and set(owed) == runs - looped
    print(f"\n500 webhooks, {retried} retried by their senders across the restart; "
          f"{len(looped)} loops ran ({len(touched)} touched by the outage), "
          f"{len(owed)} owed to the sweeper")


class _StopsTheDatabase:
    """A dispatcher that starts nothing and stops PostgreSQL: the database is gone between
    the delivery's commit and the dispatch's bookkeeping."""

    target = "local"

    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster

    def dispatch(self, run_id: str, key: str) -> str | None:
        self.cluster.stop("fast")
        return None


def test_a_database_lost_after_the_commit_leaves_the_dispatch_pending_for_the_sweeper(
        cluster: PostgresCluster, caplog: pytest.LogCaptureFixture) -> None:
    """The receiver dispatches after its 202, in a background task. When PostgreSQL goes
    away between the delivery's commit and the dispatch's bookkeeping, ``dispatch_now``
    logs it and returns (it used to raise out of the background task: "Exception in
    ASGI application"); the row is still pending, and owed to the sweeper."""
    from tunix_rt.service.deliveries import dispatch_now, receive
    from tunix_rt.service.webhooks import parse_event

    url = _migrated(cluster.url)
    engine = db.make_engine(url)
    body = event(external_id="lost-after-commit", dataset="arithmetic",
                 predictions_uri="/p.jsonl")
    with session_scope(engine) as session:
        received = receive(session, "msg_lost_after_commit",
                           parse_event(body, predictions_allow=["/"]))
    try:
        result = dispatch_now(lambda: session_scope(engine), _StopsTheDatabase(cluster),
                              received.dispatch_id, received.run_id, "msg_lost_after_commit")
    finally:
        cluster.start()
    assert result is None
    assert "stays pending for the sweeper" in caplog.text
    engine.dispose()  # its connections died with the server
    with session_scope(engine) as session:
        row = session.get(Dispatch, received.dispatch_id)
        assert (row.status, row.attempts) == ("pending", 0)
    assert _owed(url) == [received.run_id]
