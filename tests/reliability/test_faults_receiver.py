"""Faults around the receiver, with real processes: ``tunix-rt serve`` as a subprocess, a
real PostgreSQL that is stopped and started again, and the client library as the sender.

What must hold afterwards is read from the database: each run stored once, each
delivery once, one dispatch row (the owed loop) per run, and each run's loop run once:
one evaluation, one gate decision and one completed quality-loop flow run in the
Prefect database the receiver wrote to (its ephemeral API's, under a Prefect home of
the test's own) -- or, after the receiver was killed, the loop owed to the sweeper,
once. Two faults found here are fixed in tunix_rt/service/deliveries.py, each with a
test of its own below.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import IN_CI
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
# The tests that wait for loops may outlast the suite's 300 s per test on a machine
# loaded many times over (each loop then takes seconds): their own waits are the limit.
loop_bound = pytest.mark.timeout(LOOPS_WAIT_S + 300)
OUTAGE_S = 4.0  # how long PostgreSQL stays down: several client retries' worth


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL of this test's own, durable (an acknowledged commit survives its
    crash): the session's server is never restarted."""
    try:
        own = PostgresCluster(durable=True)
    except PostgresUnavailable as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI: {exc}")
        pytest.skip(str(exc))
    with own:
        try:
            yield own
        finally:
            db.dispose_engines()  # before the server goes: no connection outlives it


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


def _assert_each_loop_ran_once(db_url: str, receiver: Receiver, looped: set[str], *,
                                cut_short: int = 0) -> None:
    """Each run in ``looped``: one evaluation, one gate decision and one quality-loop flow
    run, completed (up to ``cut_short`` of them killed after their gate, still running);
    no other run has a gate or a flow run that completed, and no evaluation failed."""
    evaluations = _per_run(db_url, Evaluation)
    gates = _per_run(db_url, GateResult)
    assert {run: evaluations.get(run) for run in looped} == dict.fromkeys(looped, 1)
    assert gates == dict.fromkeys(looped, 1)
    flow_runs = processes.quality_loop_flow_runs(receiver.prefect_home)
    states = {run: flow_runs.get(run) for run in looped}
    unfinished = {run for run, s in states.items() if s != ["COMPLETED"]}
    assert len(unfinished) <= cut_short, {run: states[run] for run in unfinished}
    assert all(states[run] == ["RUNNING"] for run in unfinished), states
    assert {run for run, s in flow_runs.items() if "COMPLETED" in s} == looped - unfinished
    with session_scope(db.get_engine(db_url)) as session:
        assert session.scalars(select(Evaluation.run_id)
                               .where(Evaluation.status != "completed")).all() == []


def _completed_loops(receiver: Receiver) -> set[str]:
    """Runs with a quality-loop flow run that completed (read while the receiver runs)."""
    return {run for run, states in processes.quality_loop_flow_runs(receiver.prefect_home)
            .items() if "COMPLETED" in states}


def _wait_for_loops(receiver: Receiver, runs: set[str], what: str) -> None:
    wait_for(lambda: runs <= _completed_loops(receiver), LOOPS_WAIT_S, what,
             proc=receiver.proc, log=receiver.log, interval=1.0,
             retry_on=sqlite3.OperationalError)


def _direct_post(receiver: Receiver, external_id: str, uri: str) -> httpx.Response:
    body = event(external_id=external_id, dataset="arithmetic", predictions_uri=uri)
    return httpx.post(receiver.webhook_url, content=body, headers=sign(body), timeout=30)


@loop_bound
def test_postgres_restarted_during_500_webhooks(cluster: PostgresCluster,
                                                tmp_path: Path) -> None:
    """500 runs, each one run.completed from the client library in 4 sender threads;
    after 10 have been accepted PostgreSQL crashes (``pg_ctl stop -m immediate``: every
    session is cut), stays down for a few seconds and is started again (it recovers
    from its WAL, with every acknowledged commit).

    While it is down the receiver answers 503 with Retry-After (seen here on a direct
    signed POST and on /healthz, and by the senders, who retry). Afterwards: exactly 500
    runs and 500 deliveries, and one dispatch (the owed loop) per run.

    The loops: not all 500 run here. The receiver runs them one at a time in the order
    it accepted the runs, 0.4-2 s each, so 500 would take 4-15 minutes, beyond the CI
    budget. The test waits for the loops of every run the outage could touch (accepted
    before PostgreSQL was back, or retried by its sender), 15-30 runs, and whatever
    else has run by then; each ran exactly once. (The outage came after 30 accepted,
    35-50 loops to wait for; after 10 it still cuts the stream mid-way, with the
    receiver storing and dispatching, and fewer loops are waited for: CI time.) Then the
    receiver is killed, and every other run's loop is owed, exactly once, to the sweeper
    (once the dead receiver's leases lapse).
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
        wait_for(lambda: accepted["ok"] >= 10, 300, "10 accepted deliveries",
                 alive=sender.is_alive)

        cluster.stop("immediate")  # a crash: sessions cut without a word
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

        _wait_for_loops(receiver, touched,
                        f"the loops of the {len(touched)} runs the outage touched")
    finally:
        receiver.kill()  # a crash: what it had not run yet is owed to the sweeper
    # What the kill left: each run's loop got as far as its gate exactly once, or it is
    # owed, exactly once. The loop running at the kill may have gated without finishing
    # (its artifacts and event are lost with it); at most that one.
    looped = set(_per_run(url, GateResult))
    _assert_each_loop_ran_once(url, receiver, looped, cut_short=1)
    with session_scope(db.get_engine(url)) as session:
        runs = set(session.scalars(select(Run.id)))
    owed = _owed(url)
    assert len(owed) == len(set(owed)) and set(owed) == runs - looped
    assert touched <= looped
    print(f"\n500 webhooks, {retried} retried by their senders across the restart; "
          f"{len(looped)} loops ran ({len(touched)} runs touched by the outage), "
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


COPIES = 10


def _ten_at_once(url: str, completions: list[Completion]) -> list[NotifyResult]:
    """Each group of COPIES completions (one run's) sent at the same instant: COPIES
    threads, released together by a barrier per run."""
    barriers = [threading.Barrier(COPIES) for _ in range(len(completions) // COPIES)]

    def send(numbered: tuple[int, Completion]) -> NotifyResult:
        # The pool hands out work in order and a thread waits here holding its item, so
        # the COPIES items of a run are held by COPIES different threads at once.
        i, item = numbered
        barriers[i // COPIES].wait(timeout=120)
        [result] = processes.send_completions(url, [item], threads=1)
        return result

    with ThreadPoolExecutor(max_workers=COPIES) as pool:
        return list(pool.map(send, enumerate(completions)))


RUNS = 20
PAGE = 15  # leaderboard entries a page: the RUNS entries come back on two pages


@loop_bound
def test_20_runs_each_delivered_10_times_at_once(pg_admin_url: str, pg_template: str,
                                                  tmp_path: Path) -> None:
    """20 runs, each completed by 10 concurrent deliveries to ``tunix-rt serve``: for 10
    runs the 10 copies share one webhook-id (a sender retrying), for the other 10 each
    copy has its own (ten senders of the same completion); the two kinds interleave.
    The race is one run's 10 copies released together by a barrier (10 sender threads),
    so each run is one more round of it: 20 rounds, 10 of each kind, prove what 100 did
    (it was 100 runs, then 40), at 20 quality loops, run one at a time by the receiver
    (1-2 s each in its embedded Prefect), instead of 100: CI time.

    Exactly 20 runs, 20 evaluations and 20 dispatches; a copy of a delivery answers
    200 and stores nothing, a second sender's delivery is stored but owes no second loop
    (one answer per run says ``dispatch: true``). The leaderboard lists exactly the 20
    runs (two pages of up to 15), ranks 1..20, ordered by score, each entry the run's
    one evaluation.
    """
    url = create_database(pg_admin_url, template=pg_template)
    allow = tmp_path / "predictions"
    files = [processes.write_arithmetic(allow / f"w{k}.jsonl", wrong=range(k))
             for k in range(4)]  # scores 1.0, 0.8, 0.6, 0.4
    same_id = {f"dup-{i:03d}" for i in range(0, RUNS, 2)}
    completions = []
    for i in range(RUNS):
        external_id = f"dup-{i:03d}"
        shared = f"msg_dup_{i:03d}_{time.time_ns()}" if external_id in same_id else None
        completions += [Completion(external_id, files[i % 4], delivery_id=shared)] * COPIES
    receiver = processes.start_receiver(url, tmp_path, allow=allow)
    try:
        results = _ten_at_once(receiver.webhook_url, completions)
        by_run: dict[str, list[NotifyResult]] = {}
        for item, result in zip(completions, results):
            by_run.setdefault(item.external_id, []).append(result)
        for external_id, answers in by_run.items():
            statuses = sorted(r.status for r in answers)
            dispatched = [r for r in answers if (r.response or {}).get("dispatch")]
            assert len(dispatched) == 1, (external_id, [r.response for r in answers])
            if external_id in same_id:
                assert statuses == [200] * (COPIES - 1) + [202], external_id
            else:
                assert statuses == [202] * COPIES, external_id
        assert _count(url, Run) == RUNS
        assert _count(url, WebhookDelivery) == RUNS // 2 + RUNS // 2 * COPIES
        assert set(_per_run(url, Dispatch).values()) == {1} and _count(url, Dispatch) == RUNS

        with session_scope(db.get_engine(url)) as session:
            run_ids = set(session.scalars(select(Run.id)))
        _wait_for_loops(receiver, run_ids, f"the {RUNS} runs' quality loops")
        pages = _leaderboard(receiver)
        board = [entry for page in pages for entry in page]
    finally:
        receiver.stop()
    with session_scope(db.get_engine(url)) as session:
        runs = {r.id: r.external_id for r in session.scalars(select(Run))}
        evaluations = {e.run_id: e for e in session.scalars(select(Evaluation))}
        stored = {e.run_id: e.evaluation_id for e in session.scalars(
            select(LeaderboardEntry).where(LeaderboardEntry.dataset == "arithmetic"))}
    _assert_each_loop_ran_once(url, receiver, set(runs))
    assert len(evaluations) == RUNS
    assert len(pages) == 2, [len(page) for page in pages]
    assert [e["rank"] for e in board] == list(range(1, RUNS + 1))
    assert {e["run_id"] for e in board} == set(runs)
    scores = [e["score"] for e in board]
    assert scores == sorted(scores, reverse=True)
    for entry in board:
        evaluation = evaluations[entry["run_id"]]
        assert entry["score"] == pytest.approx(evaluation.score)
        assert stored[entry["run_id"]] == evaluation.id
        expected = 1.0 - 0.2 * (int(runs[entry["run_id"]].removeprefix("dup-")) % 4)
        assert entry["score"] == pytest.approx(expected)


def _leaderboard(receiver: Receiver) -> list[list[dict]]:
    """The arithmetic / exact_match board through the API, page by page (PAGE a page)."""
    pages: list[list[dict]] = []
    cursor = None
    while True:
        params = {"dataset": "arithmetic", "judge": "exact_match", "limit": PAGE,
                  **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{receiver.url}/api/leaderboard", params=params, timeout=30)
        assert page.status_code == 200, page.text
        pages.append(page.json()["entries"])
        cursor = page.json()["next_cursor"]
        if not cursor:
            return pages


def test_a_loop_killed_between_its_evaluation_and_its_gate_is_owed_again(
        pg_admin_url: str, pg_template: str) -> None:
    """A receiver stopped mid-loop can leave a run evaluated but never gated. The sweeper
    used to count any evaluation as the loop done, so that run was never gated; now a
    completed evaluation without a gate decision under its judge is owed (the loop
    reuses the evaluation), while a gated run, or a failed evaluation, is not."""
    from tunix_rt.service.deliveries import mark_dispatched, receive
    from tunix_rt.service.webhooks import parse_event

    url = create_database(pg_admin_url, template=pg_template)
    engine = db.get_engine(url)
    run_ids = []
    with session_scope(engine) as session:
        for name in ("killed-before-gate", "gated", "bad-predictions"):
            body = event(external_id=name, dataset="arithmetic", predictions_uri="/p.jsonl")
            received = receive(session, f"msg_{name}", parse_event(body, predictions_allow=["/"]))
            mark_dispatched(session, received.dispatch_id, "local")
            run_ids.append(received.run_id)
        killed, gated, bad = run_ids
        for run_id, status in ((killed, "completed"), (gated, "completed"), (bad, "failed")):
            session.add(Evaluation(run_id=run_id, judge="exact_match", judge_version="1",
                                   status=status, score=1.0 if status == "completed" else None))
        session.add(GateResult(run_id=gated, dataset="arithmetic", judge="exact_match",
                               decision="no_baseline", policy_digest="p"))
    try:
        assert _owed(url) == [killed]
        with session_scope(engine) as session:  # the swept loop gates it
            session.add(GateResult(run_id=killed, dataset="arithmetic", judge="exact_match",
                                   decision="no_baseline", policy_digest="p"))
        assert _owed(url) == []
    finally:
        db.dispose_engines()
