"""The sweeper's tasks: find the quality loops that are owed, and start each again."""

from __future__ import annotations

from datetime import timedelta

from prefect import task

from tunix_rt.service import deliveries
from tunix_rt.service.deliveries import Dispatcher, Owed
from tunix_rt.store.db import session_scope
from tunix_rt.tasks.quality import RETRY_POLICY


@task(name="find-owed-loops", **RETRY_POLICY)
def find_owed(older_than_minutes: float, limit: int) -> list[Owed]:
    with session_scope() as session:
        return deliveries.owed_dispatches(session, older_than=timedelta(
            minutes=older_than_minutes), limit=limit)


@task(name="redispatch", **RETRY_POLICY)
def redispatch(owed: Owed, dispatcher: Dispatcher) -> str | None:
    # A new key per attempt: the idempotency key of a deployment run that crashed
    # would otherwise hand back that same dead run.
    key = f"{owed.key}#retry{owed.attempts}"
    return deliveries.dispatch_now(session_scope, dispatcher, owed.dispatch_id, owed.run_id, key)
