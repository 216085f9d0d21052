"""The outbox: which loops are owed, and how dispatch attempts are recorded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.db.support import JUDGE, evaluate
from tunix_rt.quality.gating import gate_run
from tunix_rt.quality.stats import GatePolicy
from tunix_rt.store.db import session_scope
from tunix_rt.service.deliveries import (MAX_DISPATCH_ATTEMPTS, claim_owed, dispatch_now,
                                         mark_dispatched, owed_dispatches, receive,
                                         release_lease, renew_lease)
from tunix_rt.store.models import Dispatch, utcnow
from tunix_rt.service.webhooks import RunEvent


def _completed(engine, tmp_path, external_id: str, delivery: str) -> int:  # noqa: ANN001
    from tests.factories import write_predictions

    uri = write_predictions(tmp_path / f"{external_id}.jsonl", [True] * 5)
    event = RunEvent.model_validate({"type": "run.completed", "data": {
        "external_id": external_id, "dataset": "arith", "model": "m", "predictions_uri": uri}})
    with session_scope(engine) as session:
        return receive(session, delivery, event).dispatch_id


class Recorder:
    """A dispatcher that records what it was asked to start (and can refuse)."""

    target = "recorder"

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    def dispatch(self, run_id: str, key: str) -> str | None:
        self.calls.append((run_id, key))
        if self.fail:
            raise ConnectionError("Prefect server unreachable")
        return "flow-run-1"


def test_pending_and_fruitless_dispatches_are_owed_after_the_grace_period(engine, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("TUNIX_RT_PREDICTIONS_ALLOW", str(tmp_path))  # read as webhook runs are
    pending = _completed(engine, tmp_path, "a", "d-a")
    sent = _completed(engine, tmp_path, "b", "d-b")
    done = _completed(engine, tmp_path, "c", "d-c")
    with session_scope(engine) as session:
        mark_dispatched(session, sent, "event")
        mark_dispatched(session, done, "event")
        done_run = session.get(Dispatch, done).run_id
    evaluate(engine, done_run)
    with session_scope(engine) as session:  # the loop got as far as its gate: done
        gate_run(session, done_run, JUDGE, GatePolicy())

    with session_scope(engine) as session:
        assert owed_dispatches(session, older_than=timedelta(minutes=10)) == []
        later = utcnow() + timedelta(minutes=11)
        owed = owed_dispatches(session, older_than=timedelta(minutes=10), now=later)
    assert sorted(o.dispatch_id for o in owed) == sorted([pending, sent])
    assert {o.key for o in owed} == {"d-a", "d-b"}


def test_a_dispatch_is_not_retried_forever(engine, tmp_path) -> None:  # noqa: ANN001
    dispatch_id = _completed(engine, tmp_path, "a", "d-a")
    with session_scope(engine) as session:
        session.get(Dispatch, dispatch_id).attempts = MAX_DISPATCH_ATTEMPTS
    with session_scope(engine) as session:
        assert owed_dispatches(session, older_than=timedelta(0),
                               now=utcnow() + timedelta(seconds=1)) == []


@pytest.mark.parametrize("fail", [False, True])
def test_dispatch_now_records_the_attempt(engine, tmp_path, fail: bool) -> None:  # noqa: ANN001
    dispatch_id = _completed(engine, tmp_path, "a", "d-a")
    with session_scope(engine) as session:
        run_id = session.get(Dispatch, dispatch_id).run_id
    recorder = Recorder(fail=fail)

    result = dispatch_now(lambda: session_scope(engine), recorder, dispatch_id, run_id, "d-a")

    assert recorder.calls == [(run_id, "d-a")]
    with session_scope(engine) as session:
        row = session.scalar(select(Dispatch).where(Dispatch.id == dispatch_id))
        assert row.attempts == 1
        if fail:
            assert result is None and row.status == "pending"
            assert "Prefect server unreachable" in row.last_error
        else:
            assert result == "flow-run-1" and row.status == "dispatched"
            assert row.target == "recorder" and row.dispatched_at is not None


def test_a_dispatch_with_a_live_lease_is_not_owed(engine, tmp_path) -> None:  # noqa: ANN001
    """A slow loop renews its lease: it is not owed however long ago it was dispatched."""
    dispatch_id = _completed(engine, tmp_path, "a", "d-a")
    with session_scope(engine) as session:
        mark_dispatched(session, dispatch_id, "event")
        run_id = session.get(Dispatch, dispatch_id).run_id
    an_hour_later = utcnow() + timedelta(hours=1)
    with session_scope(engine) as session:
        assert [o.dispatch_id for o in owed_dispatches(
            session, older_than=timedelta(minutes=10), now=an_hour_later)] == [dispatch_id]
        renew_lease(session, run_id, "loop:1", lease=timedelta(hours=2))
    with session_scope(engine) as session:
        assert owed_dispatches(session, older_than=timedelta(minutes=10), now=an_hour_later) == []
        assert claim_owed(session, older_than=timedelta(0), holder="s", now=an_hour_later) == []
        release_lease(session, run_id, "loop:other")  # not the holder: the lease stands
    with session_scope(engine) as session:
        assert session.get(Dispatch, dispatch_id).claimed_by == "loop:1"
        release_lease(session, run_id, "loop:1")  # the loop ended without an evaluation
    with session_scope(engine) as session:
        row = session.get(Dispatch, dispatch_id)
        assert (row.lease_until, row.claimed_by) == (None, None)
        assert [o.dispatch_id for o in owed_dispatches(
            session, older_than=timedelta(0), now=utcnow() + timedelta(seconds=1))] == [dispatch_id]


def test_a_claim_holds_the_row_and_names_its_lease_period(engine, tmp_path) -> None:  # noqa: ANN001
    dispatch_id = _completed(engine, tmp_path, "a", "d-a")
    soon = utcnow() + timedelta(seconds=1)
    with session_scope(engine) as session:
        [owed] = claim_owed(session, older_than=timedelta(0), holder="sweeper-1", now=soon)
    assert (owed.dispatch_id, owed.key) == (dispatch_id, "d-a#claim1")
    with session_scope(engine) as session:  # claimed: a second sweeper finds nothing
        assert claim_owed(session, older_than=timedelta(0), holder="sweeper-2", now=soon) == []
        row = session.get(Dispatch, dispatch_id)
        assert (row.claimed_by, row.claims) == ("sweeper-1", 1) and row.lease_until > soon

    # The start failed: the claim is given up, and the next sweep claims a new period.
    dispatch_now(lambda: session_scope(engine), Recorder(fail=True), dispatch_id, owed.run_id,
                 owed.key)
    with session_scope(engine) as session:
        [again] = claim_owed(session, older_than=timedelta(0), holder="sweeper-2", now=soon)
    assert again.key == "d-a#claim2"

    # Started, and its loop died: once the lease expires the row is claimed again.
    recorder = Recorder()
    dispatch_now(lambda: session_scope(engine), recorder, dispatch_id, again.run_id, again.key)
    assert recorder.calls == [(again.run_id, "d-a#claim2")]
    with session_scope(engine) as session:
        assert claim_owed(session, older_than=timedelta(0), holder="s", now=soon) == []
        expired = session.get(Dispatch, dispatch_id).lease_until + timedelta(seconds=1)
        [third] = claim_owed(session, older_than=timedelta(0), holder="s", now=expired)
    assert third.key == "d-a#claim3"
