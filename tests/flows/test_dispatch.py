"""Dispatching the loop without a deployment: the receiver's local worker, the sweeper."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tests.factories import correctness, write_predictions
from tests.http.conftest import event, serve_app, sign, webhook_env  # noqa: F401
from tests.waiting import wait_for
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.store.models import Dispatch, GateResult

pytestmark = pytest.mark.flows


@pytest.fixture(autouse=True)
def _prefect(prefect_api_url: str) -> None:
    """Every test here talks to the session's Prefect server."""


def _gated_and_dispatched(db_url: str) -> tuple[GateResult, Dispatch] | None:
    """The gate result and the dispatch once the loop has gated and the row is marked."""
    with session_scope(get_engine(db_url)) as session:
        gate = session.scalar(select(GateResult))
        dispatch = session.scalar(select(Dispatch))
    if gate is not None and dispatch is not None and dispatch.status == "dispatched":
        return gate, dispatch
    return None


def test_the_receivers_local_worker_runs_the_loop(webhook_env: str, tmp_path: Path) -> None:
    from tunix_rt.flows.dispatch import LocalDispatcher
    from tunix_rt.service.server import create_app

    dispatcher = LocalDispatcher()
    predictions = write_predictions(tmp_path / "p.jsonl", correctness(40, 0.7, 1))
    body = event(external_id="job-local", predictions_uri=predictions)
    try:
        for service in serve_app(create_app(dispatcher=dispatcher)):
            assert service.post(body, sign(body)).status_code == 202
            gate, dispatch = wait_for(lambda: _gated_and_dispatched(webhook_env), 60,
                                      "the local worker to gate the run and mark it dispatched")
            # The run's lease was held from the dispatch through its loop, then released.
            wait_for(lambda: _gated_and_dispatched(webhook_env)[1].claimed_by is None, 60,
                     "the local worker to release the run's lease")
    finally:
        dispatcher.close()
    assert gate.decision == "no_baseline"
    assert dispatch.target == "local" and dispatch.attempts == 1


def test_loops_waiting_in_the_local_queue_hold_their_leases_without_a_thread_each(
        webhook_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog costs no thread per waiting loop (a thread each made a receiver under
    load grow without bound); one thread renews every waiting loop's lease."""
    import threading
    from datetime import timedelta

    from tunix_rt.flows.dispatch import LocalDispatcher
    from tunix_rt.service import deliveries
    from tunix_rt.service.server import create_app

    monkeypatch.setattr(deliveries, "RENEW_EVERY", timedelta(seconds=0.2))
    dispatcher = LocalDispatcher()
    predictions = write_predictions(tmp_path / "p.jsonl", correctness(40, 0.7, 3))
    n = 12
    try:
        for service in serve_app(create_app(dispatcher=dispatcher)):
            for i in range(n):
                body = event(external_id=f"job-q{i}", predictions_uri=predictions)
                assert service.post(body, sign(body)).status_code == 202
            # The worker runs one loop at a time (a quarter of a second at least), so most
            # of the twelve wait: the queue renews their leases (each keeper counts).
            wait_for(lambda: sum(k.renewals >= 2 for k in dispatcher._waiting.values()) >= 4,
                     60, "the queue's thread to renew the waiting loops' leases")
            # The loop that runs has two (the dispatcher's keeper and the flow's own).
            lease_threads = [t for t in threading.enumerate() if t.name == "tunix-rt-lease"]
            assert len(lease_threads) <= 2 < 4 <= dispatcher.waiting()
            with session_scope(get_engine(webhook_env)) as session:
                held = session.scalars(select(Dispatch.claimed_by)).all()
            assert sum(1 for h in held if h and h.startswith("local:")) >= 4
            dispatcher.join()
    finally:
        dispatcher.close()
    with session_scope(get_engine(webhook_env)) as session:
        assert len(session.scalars(select(GateResult)).all()) == n
        assert session.scalars(select(Dispatch.claimed_by)).all() == [None] * n
    assert dispatcher.waiting() == 0


def test_the_sweeper_runs_owed_loops_inline(webhook_env: str, tmp_path: Path) -> None:
    from tunix_rt.flows.dispatch import InlineDispatcher
    from tunix_rt.tasks.sweeper import find_owed, redispatch
    from tunix_rt.service.server import create_app

    predictions = write_predictions(tmp_path / "p.jsonl", correctness(40, 0.7, 2))
    body = event(external_id="job-owed", predictions_uri=predictions)
    for service in serve_app(create_app(dispatcher=None)):  # a receiver that never dispatches
        assert service.post(body, sign(body)).status_code == 202

    [owed] = find_owed.fn(0.0, 10)
    assert redispatch.fn(owed, InlineDispatcher()) is not None
    assert find_owed.fn(0.0, 10) == []  # the run has its evaluation now
    with session_scope(get_engine(webhook_env)) as session:
        assert session.scalar(select(GateResult)).decision == "no_baseline"
        dispatch = session.scalar(select(Dispatch))
        assert (dispatch.status, dispatch.target) == ("dispatched", "inline")
        # Claimed once by the sweep; the loop took the lease over and released it.
        assert (dispatch.claims, dispatch.claimed_by) == (1, None)
