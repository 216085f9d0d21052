"""The outbox: which loops are owed, and how dispatch attempts are recorded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.db.support import evaluate
from tunix_rt.store.db import session_scope
from tunix_rt.service.deliveries import (MAX_DISPATCH_ATTEMPTS, dispatch_now, mark_dispatched,
                                 owed_dispatches, receive)
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


def test_pending_and_fruitless_dispatches_are_owed_after_the_grace_period(engine, tmp_path) -> None:  # noqa: ANN001
    pending = _completed(engine, tmp_path, "a", "d-a")
    sent = _completed(engine, tmp_path, "b", "d-b")
    done = _completed(engine, tmp_path, "c", "d-c")
    with session_scope(engine) as session:
        mark_dispatched(session, sent, "event")
        mark_dispatched(session, done, "event")
        done_run = session.get(Dispatch, done).run_id
    evaluate(engine, done_run)

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
