"""The sweeper's tasks: claim the quality loops that are owed, and start each again."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta

from prefect import task

from tunix_rt.service import deliveries
from tunix_rt.service.deliveries import Dispatcher, Owed
from tunix_rt.store.db import session_scope
from tunix_rt.tasks.quality import RETRY_POLICY


def sweeper_id() -> str:
    """Who claims: this host and process, and which sweep (names the lease holder)."""
    return f"sweeper:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@task(name="find-owed-loops", **RETRY_POLICY)
def find_owed(older_than_minutes: float, limit: int, holder: str | None = None) -> list[Owed]:
    """Claim the loops owed (no live lease) for this sweep; another sweeper running at the
    same time gets the others, never the same ones."""
    with session_scope() as session:
        return deliveries.claim_owed(session, older_than=timedelta(minutes=older_than_minutes),
                                     holder=holder or sweeper_id(), limit=limit)


@task(name="redispatch", **RETRY_POLICY)
def redispatch(owed: Owed, dispatcher: Dispatcher) -> str | None:
    # The claim's key: stable within its lease period, so a retried start is one flow
    # run; new in the next period, so a flow run that crashed is not handed back.
    return deliveries.dispatch_now(session_scope, dispatcher, owed.dispatch_id, owed.run_id,
                                   owed.key)
