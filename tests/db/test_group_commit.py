"""Group commit (PostgreSQL): deliveries stored together, each outcome what it is alone.

A batch mixing new runs, news of known runs, copies of stored deliveries and of one in
the same batch, a delivery that conflicts (409) and one that cannot apply (422) must
leave exactly what receiving them one by one leaves, and give each its own answer.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from sqlalchemy import select

from tunix_rt.errors import InvalidInputError
from tunix_rt.service import group_commit
from tunix_rt.service.deliveries import Received, RunConflictError, receive
from tunix_rt.service.webhooks import RunEvent
from tunix_rt.store.db import make_engine, session_scope
from tunix_rt.store.models import Dispatch, Run, WebhookDelivery, new_run_id, utcnow

pytestmark = pytest.mark.postgres
on_postgres = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
URI = "file:///data/p.jsonl"


def _event(kind: str, external_id: str, **data: object) -> RunEvent:
    return RunEvent.model_validate({"type": kind, "data": {
        "external_id": external_id, "dataset": "arith", "model": "m", **data}})


def _store(engine):  # noqa: ANN001, ANN202
    def one_at_a_time(delivery_id: str, event: RunEvent, source: str | None) -> Received:
        with session_scope(engine) as session:
            return receive(session, delivery_id, event, source=source)

    return group_commit.for_engine(engine, one_at_a_time, group_commit.MAX_BATCH)


async def _all(store, items) -> list[object]:  # noqa: ANN001
    """Every item sent at once (queued before the writer runs): answers or exceptions."""
    return await asyncio.gather(*(store(d, e, s) for d, e, s in items), return_exceptions=True)


@on_postgres
def test_a_mixed_batch_leaves_what_one_by_one_would(engine) -> None:  # noqa: ANN001
    with session_scope(engine) as session:
        now = utcnow()
        session.add(Run(id=new_run_id(), external_id="by-hand", name="h", dataset="arith",
                        model="m", origin="cli", created_at=now, updated_at=now))
        receive(session, "old", _event("run.started", "known"))
    items = [
        ("a1", _event("run.started", "a", metrics={"loss": 1.0}), None),
        ("a2", _event("run.completed", "a", predictions_uri=URI, metrics={"loss": 0.5}), None),
        ("b1", _event("run.completed", "b"), None),          # no predictions: 422
        ("b2", _event("run.started", "b"), None),            # then news of b: a new run
        ("h1", _event("run.started", "by-hand"), None),      # not a webhook run: 409
        ("old", _event("run.completed", "known", predictions_uri=URI), None),  # a copy
        ("k1", _event("run.completed", "known", predictions_uri=URI), None),
        ("a1", _event("run.started", "a"), None),            # a copy within the batch
        ("s1", _event("run.started", "c"), "team"),
        ("s2", _event("run.started", "c"), None),            # another source: 409
    ]
    store = _store(engine)
    outcomes = asyncio.run(_all(store, items))

    kinds = [type(o).__name__ if isinstance(o, Exception) else
             ("copy" if o.duplicate else "new") for o in outcomes]
    assert kinds == ["new", "new", "InvalidInputError", "new", "RunConflictError", "copy", "new",
                     "copy", "new", "RunConflictError"]
    assert isinstance(outcomes[2], InvalidInputError) and "predictions_uri" in str(outcomes[2])
    assert isinstance(outcomes[4], RunConflictError) and outcomes[4].field == "data.external_id"
    with session_scope(engine) as session:
        deliveries = dict(session.execute(
            select(WebhookDelivery.id, WebhookDelivery.run_id)).all())
        runs = {e: (s, m) for e, s, m in session.execute(
            select(Run.external_id, Run.status, Run.metrics)).all()}
        owed = dict(session.execute(select(Dispatch.key, Dispatch.run_id)).all())
    assert set(deliveries) == {"old", "a1", "a2", "b2", "k1", "s1"}
    assert runs == {"by-hand": ("pending", {}), "known": ("completed", {}),
                    "a": ("completed", {"loss": 0.5}), "b": ("running", {}),
                    "c": ("running", {})}
    assert set(owed) == {"a2", "k1"} and owed["a2"] == deliveries["a2"]
    assert outcomes[1].dispatch_id is not None and outcomes[6].dispatch_id is not None
    assert outcomes[0].dispatch_id is None
    assert outcomes[5].run_id == outcomes[6].run_id == deliveries["old"]
    assert outcomes[7] == Received(duplicate=True, run_id=outcomes[0].run_id)
    assert store.writer.batches < len(items)  # grouped: a run or an id twice waits its turn


@on_postgres
def test_concurrent_deliveries_share_transactions_and_each_gets_its_answer(
        engine) -> None:  # noqa: ANN001
    items = [(f"d{i}", _event("run.started" if i % 2 == 0 else "run.failed", f"r{i // 2}"),
              None) for i in range(40)]
    store = _store(engine)
    outcomes = asyncio.run(_all(store, items))

    assert all(isinstance(o, Received) and not o.duplicate for o in outcomes), outcomes
    assert outcomes[0].run_id == outcomes[1].run_id != outcomes[2].run_id
    assert store.writer.largest > 1 and store.writer.batches < 40
    with session_scope(engine) as session:
        states = dict(session.execute(select(Run.external_id, Run.status)).all())
        stored = dict(session.execute(
            select(WebhookDelivery.id, WebhookDelivery.run_id)).all())
    assert states == {f"r{r}": "failed" for r in range(20)}
    assert {d: stored[d] for d in stored} == {f"d{i}": o.run_id for i, o in enumerate(outcomes)}


def test_an_unreachable_database_is_a_store_unavailable_for_each(
        engine_unreachable_url: str) -> None:
    engine = make_engine(engine_unreachable_url)
    store = _store(engine)
    items = [(f"u{i}", _event("run.started", f"u{i}"), None) for i in range(5)]
    outcomes = asyncio.run(_all(store, items))
    assert all(isinstance(o, group_commit.StoreUnavailable) for o in outcomes), outcomes
    engine.dispose()


@pytest.fixture
def engine_unreachable_url() -> str:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/nothing"
