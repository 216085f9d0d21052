"""The sweeper: re-dispatch quality loops that a crash or a lost event left owed."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tunix_rt.flows.dispatch import DeploymentDispatcher, InlineDispatcher, has_prefect_server
from tunix_rt.tasks.sweeper import find_owed, redispatch


@flow(name="sweep-owed-loops")
def sweep_owed_loops(older_than_minutes: float = 10.0, limit: int = 100) -> int:
    """Dispatch again every loop owed: pending for longer than ``older_than_minutes``,
    or sent and its lease expired (the loop stopped renewing it) with no evaluation.

    A running loop renews its lease, so a slow loop is never started twice. The owed
    rows are claimed first (FOR UPDATE SKIP LOCKED): two sweeps at once dispatch each
    owed loop once. With a Prefect server the quality-loop deployment is started;
    without one the loop runs here as a subflow.

    Args:
        older_than_minutes: How long a pending dispatch (or a dispatch without a lease)
            may be outstanding before it is retried.
        limit: At most this many runs per sweep.
    """
    owed = find_owed(older_than_minutes, limit)
    dispatcher = DeploymentDispatcher() if has_prefect_server() else InlineDispatcher()
    for item in owed:
        redispatch(item, dispatcher)
    get_run_logger().info("re-dispatched %d owed quality loop(s)", len(owed))
    return len(owed)
