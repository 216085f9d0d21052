"""Deliveries stored in batches (PostgreSQL): each outcome is what it would be alone.

``receive_batch`` stores many deliveries in one transaction; the receiver's
``BatchWriter`` groups concurrent requests into such batches. A batch mixing new runs,
news of known runs, copies, a delivery that conflicts (409) and one that cannot apply
(422) must leave exactly what receiving them one by one leaves.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest
from sqlalchemy import func, select

from tunix_rt.errors import InvalidInputError
from tunix_rt.service.deliveries import (BatchWriter, Incoming, Received, RunConflictError,
                                         receive, receive_batch)
from tunix_rt.service.webhooks import RunEvent
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Dispatch, Run, WebhookDelivery, new_run_id, utcnow

pytestmark = pytest.mark.postgres
on_postgres = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


def _event(kind: str, external_id: str, **data: object) -> RunEvent:
    return RunEvent.model_validate({"type": kind, "data": {
        "external_id": external_id, "dataset": "arith", "model": "m", **data}})


def _rows(engine) -> tuple[dict, dict, dict]:  # noqa: ANN001
    with session_scope(engine) as session:
        deliveries = dict(session.execute(select(WebhookDelivery.id, WebhookDelivery.run_id)).all())
        runs = {e: (s, m) for e, s, m in session.execute(
            select(Run.external_id, Run.status, Run.metrics)).all()}
        owed = dict(session.execute(select(Dispatch.key, Dispatch.run_id)).all())
    return deliveries, runs, owed


@on_postgres
def test_a_mixed_batch_leaves_what_one_by_one_would(engine) -> None:  # noqa: ANN001
    uri = "file:///data/p.jsonl"
    with session_scope(engine) as session:
        now = utcnow()
        session.add(Run(id=new_run_id(), external_id="by-hand", name="h", dataset="arith",
                        model="m", origin="cli", created_at=now, updated_at=now))
        receive(session, "old", _event("run.started", "known"))
    items = [
        Incoming("a1", _event("run.started", "a", metrics={"loss": 1.0})),
        Incoming("a2", _event("run.completed", "a", predictions_uri=uri,
                              metrics={"loss": 0.5})),
        Incoming("b1", _event("run.completed", "b")),          # no predictions: 422
        Incoming("b2", _event("run.started", "b")),            # then news of b: a new run
        Incoming("h1", _event("run.started", "by-hand")),      # not a webhook run: 409
        Incoming("old", _event("run.completed", "known", predictions_uri=uri)),  # a copy
        Incoming("k1", _event("run.completed", "known", predictions_uri=uri)),
        Incoming("a1", _event("run.started", "a")),            # a copy within the batch
        Incoming("s1", _event("run.started", "c"), source="team"),
        Incoming("s2", _event("run.started", "c")),            # another source: 409
    ]
    with session_scope(engine) as session:
        outcomes, deferred = receive_batch(session, items)
    for i in deferred:  # as the writer does, after the commit
        with session_scope(engine) as session:
            outcomes[i] = receive(session, items[i].delivery_id, items[i].event,
                                  source=items[i].source)

    kinds = [type(o).__name__ if isinstance(o, Exception) else
             ("copy" if o.duplicate else "new") for o in outcomes]
    assert kinds == ["new", "new", "InvalidInputError", "new", "RunConflictError", "copy", "new",
                     "copy", "new", "RunConflictError"]
    assert isinstance(outcomes[2], InvalidInputError) and "predictions_uri" in str(outcomes[2])
    deliveries, runs, owed = _rows(engine)
    assert set(deliveries) == {"old", "a1", "a2", "b2", "k1", "s1"}
    assert runs == {"by-hand": ("pending", {}), "known": ("completed", {}),
                    "a": ("completed", {"loss": 0.5}), "b": ("running", {}),
                    "c": ("running", {})}
    assert set(owed) == {"a2", "k1"}
    assert outcomes[1].dispatch_id is not None and outcomes[6].dispatch_id is not None
    assert outcomes[5].run_id == outcomes[6].run_id == deliveries["old"]
    assert outcomes[7] == Received(duplicate=True, run_id=outcomes[0].run_id)


@on_postgres
def test_the_writer_groups_concurrent_deliveries_and_answers_each(engine) -> None:  # noqa: ANN001
    writer = BatchWriter(lambda: session_scope(engine), writers=1)
    sizes: list[int] = []
    from tunix_rt.service import deliveries

    real = deliveries.receive_batch

    def counting(session, items):  # noqa: ANN001, ANN202 - records the batch sizes
        sizes.append(len(items))
        return real(session, items)

    deliveries.receive_batch = counting
    try:
        barrier = threading.Barrier(40)
        futures: list[Future] = [None] * 40  # type: ignore[list-item]

        def send(i: int) -> None:
            barrier.wait(timeout=60)
            kind = "run.started" if i % 2 == 0 else "run.failed"
            futures[i] = writer.submit(Incoming(f"d{i}", _event(kind, f"r{i // 2}")))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        results = [f.result(timeout=120) for f in futures]
    finally:
        deliveries.receive_batch = real
    assert all(not r.duplicate for r in results)
    assert sum(sizes) == 40 and len(sizes) < 40, f"batches: {sizes}"
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 40
        assert session.scalar(select(func.count()).select_from(Run)) == 20
    with pytest.raises(RunConflictError):  # an error reaches its own request only
        writer.submit(Incoming("x", _event("run.started", "r0"), source="other")).result(60)
