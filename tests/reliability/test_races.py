"""Races that corrupt records, run with real concurrency against a real PostgreSQL.

Each test starts its contenders at once (threads behind a barrier, each with its own
connection) and checks the records afterwards: what must be unique is, and every
contender got an answer it can live with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.factories import correctness, write_predictions
from tests.http.conftest import event, serve_app, sign, webhook_env  # noqa: F401
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.store.models import Dispatch, Run, WebhookDelivery

pytestmark = [pytest.mark.reliability, pytest.mark.postgres]

# Every test here runs on PostgreSQL only: SQLite has one writer, so it has no such races.
on_postgres = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


def all_at_once(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(0..n-1)`` in n threads released together; their results, or raise."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def contender(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a contender hung"
    if errors:
        raise errors[0]
    return results


# --- Two first deliveries for a new external id -------------------------------------

@on_postgres
def test_concurrent_first_deliveries_for_a_new_external_id_make_one_run(
        webhook_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """6 distinct deliveries (different webhook-ids) for a run not seen before: all are
    accepted, there is one run, each delivery is stored once, and one loop is owed."""
    from tunix_rt.service.server import create_app

    monkeypatch.setenv("TUNIX_RT_PREDICTIONS_ALLOW", f"{tmp_path.as_uri()}/")

    uri = write_predictions(tmp_path / "p.jsonl", correctness(20, 0.7, 1))
    rounds, n = 5, 6
    for service in serve_app(create_app()):  # no dispatcher: the loop stays owed
        for r in range(rounds):
            external_id = f"job-race-{r}"
            bodies = [event("run.started" if i % 2 else "run.completed",
                            external_id=external_id, predictions_uri=uri) for i in range(n)]
            statuses = all_at_once(n, lambda i: service.post(
                bodies[i], sign(bodies[i], msg_id=f"msg_{r}_{i}")).status_code)
            assert statuses == [202] * n, f"round {r}: {statuses}"
    with session_scope(get_engine(webhook_env)) as session:
        runs = session.execute(select(Run.external_id, Run.status, func.count())
                               .group_by(Run.external_id, Run.status)).all()
        assert sorted(runs) == [(f"job-race-{r}", "completed", 1) for r in range(rounds)]
        deliveries = session.execute(select(WebhookDelivery.id, WebhookDelivery.run_id)).all()
        assert len(deliveries) == rounds * n and all(run_id for _, run_id in deliveries)
        owed = session.execute(select(Dispatch.run_id, func.count())
                               .group_by(Dispatch.run_id)).all()
        assert len(owed) == rounds and all(c == 1 for _, c in owed)


# --- Two first baselines ------------------------------------------------------------

@on_postgres
def test_runs_gated_at_once_without_a_baseline_promote_only_one(
        engine, tmp_path: Path) -> None:  # noqa: ANN001
    """4 runs gated at the same time on a dataset with no baseline, then promoted at once:
    one becomes the first baseline; the others were never compared with it, so they are
    not promoted, their gate says so, and they are gated again against it."""
    from tests.db.support import JUDGE, evaluated_run
    from tunix_rt.quality.gating import gate_run, get_baseline, promote_if_allowed
    from tunix_rt.quality.stats import GatePolicy
    from tunix_rt.store.models import BaselinePromotion, GateResult

    policy = GatePolicy(auto_promote=True)
    n, rounds = 4, 3
    for r in range(rounds):
        dataset = f"race-{r}"
        runs = [evaluated_run(engine, tmp_path, f"{dataset}-{i}",
                              correctness(60, 0.5, 10 * r + i), dataset=dataset)
                for i in range(n)]
        gated = threading.Barrier(n)

        def gate_then_promote(i: int) -> str | None:
            with session_scope(engine) as session:
                report = gate_run(session, runs[i], JUDGE, policy)
            assert report.decision == "no_baseline"
            gated.wait(timeout=60)  # every run gated with no baseline before any promotes
            with session_scope(engine) as session:
                return promote_if_allowed(session, report, policy)

        promoted = all_at_once(n, gate_then_promote)

        winners = [runs[i] for i, why in enumerate(promoted) if why]
        assert len(winners) == 1, f"round {r}: promoted {promoted}"
        [winner] = winners
        assert "first evaluated run" in promoted[runs.index(winner)]
        with session_scope(engine) as session:
            assert get_baseline(session, dataset, JUDGE).run_id == winner
            history = session.execute(select(BaselinePromotion.run_id,
                                             BaselinePromotion.previous_run_id).where(
                BaselinePromotion.dataset == dataset)).all()
            assert history == [(winner, None)]
            for loser in set(runs) - {winner}:
                gates = {g.baseline_key: g for g in session.scalars(
                    select(GateResult).where(GateResult.run_id == loser))}
                assert set(gates) == {"", winner}
                assert f"changed from no baseline to run {winner}" in gates[""].reason
                assert "not promoted" in gates[""].reason
                assert gates[winner].baseline_run_id == winner
                assert "gated again" in gates[winner].reason


# --- The sweeper and slow loops -----------------------------------------------------

class RecordingDispatcher:
    """A Dispatcher that starts nothing and records each start it was asked for."""

    target = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def dispatch(self, run_id: str, key: str) -> str | None:
        with self._lock:
            self.calls.append((run_id, key))
        return None

    def runs(self) -> list[str]:
        with self._lock:
            return [run_id for run_id, _ in self.calls]


def _owed_runs(engine, tmp_path: Path, n: int, prefix: str) -> list[str]:  # noqa: ANN001
    """n completed runs, each with a dispatch that no receiver started: owed loops."""
    from tunix_rt.service.deliveries import receive
    from tunix_rt.service.webhooks import RunEvent

    uri = write_predictions(tmp_path / f"{prefix}.jsonl", correctness(10, 0.7, 1))
    run_ids = []
    for i in range(n):
        body = {"type": "run.completed", "data": {
            "external_id": f"{prefix}-{i}", "dataset": "arith", "model": "m",
            "predictions_uri": uri}}
        with session_scope(engine) as session:
            received = receive(session, f"d-{prefix}-{i}", RunEvent.model_validate(body))
        run_ids.append(received.run_id)
    return run_ids


def _sweep(dispatcher: RecordingDispatcher, holder: str) -> int:
    """One sweep, as the sweep-owed-loops flow does it: claim, then start each."""
    from tunix_rt.tasks.sweeper import find_owed, redispatch

    owed = find_owed.fn(0.0, 100, holder)
    for item in owed:
        redispatch.fn(item, dispatcher)
    return len(owed)


@on_postgres
def test_two_sweepers_at_once_dispatch_each_owed_loop_exactly_once(
        engine, tmp_path: Path) -> None:  # noqa: ANN001
    from collections import Counter

    run_ids = _owed_runs(engine, tmp_path, 12, "owed")
    dispatcher = RecordingDispatcher()

    for _ in range(3):  # sweeping again, at once, dispatches nothing more
        all_at_once(2, lambda i: _sweep(dispatcher, f"sweeper-{i}"))

    assert Counter(dispatcher.runs()) == Counter(run_ids)  # each once, none missed
    assert {key for _, key in dispatcher.calls} == {f"d-owed-{i}#claim1" for i in range(12)}
    with session_scope(engine) as session:
        rows = session.scalars(select(Dispatch)).all()
        assert {(r.status, r.attempts, r.claims) for r in rows} == {("dispatched", 1, 1)}


@on_postgres
def test_a_loop_whose_lease_is_renewed_is_never_redispatched(
        engine, tmp_path: Path) -> None:  # noqa: ANN001
    """A slow loop (its lease renewed by the loop's LeaseKeeper) is left alone by two
    sweepers sweeping over and over, for many lease periods; a dead loop (no renewal) is
    re-dispatched once; the slow loop, once it ends without an evaluation, once too."""
    from datetime import timedelta

    from tunix_rt.flows.dispatch import LeaseKeeper
    from tunix_rt.service.deliveries import mark_dispatched

    slow, dead = _owed_runs(engine, tmp_path, 2, "lease")
    with session_scope(engine) as session:  # both started, with a lease that has lapsed
        for dispatch in session.scalars(select(Dispatch)):
            mark_dispatched(session, dispatch.id, "event", lease=timedelta(0))
    dispatcher = RecordingDispatcher()
    lease, every = timedelta(seconds=3), timedelta(seconds=0.2)

    with LeaseKeeper(slow, "loop:slow", lease=lease, every=every) as keeper:
        def sweep_while_the_loop_runs(i: int) -> int:
            sweeps = 0
            # Until the lease has been renewed over five lease periods' worth of time.
            while keeper.renewals < 5 * (lease / every):
                _sweep(dispatcher, f"sweeper-{i}")
                sweeps += 1
            return sweeps

        sweeps = all_at_once(2, sweep_while_the_loop_runs)
        assert min(sweeps) > 1
        assert dispatcher.runs() == [dead]  # the slow loop never; the dead one once
    # The slow loop ended (no evaluation came of it): its lease is released, it is owed.
    all_at_once(2, lambda i: _sweep(dispatcher, f"sweeper-{i}"))
    assert dispatcher.calls == [(dead, "d-lease-1#claim1"), (slow, "d-lease-0#claim1")]
