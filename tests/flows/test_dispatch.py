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
