"""The sweeper: re-dispatch quality loops that a crash or a lost event left owed."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tunix_rt.flows.dispatch import DeploymentDispatcher, InlineDispatcher, has_prefect_server
from tunix_rt.tasks.sweeper import find_owed, redispatch


@flow(name="sweep-owed-loops")
def sweep_owed_loops(older_than_minutes: float = 10.0, limit: int = 100) -> int:
    """Dispatch again every loop owed for longer than ``older_than_minutes``.

    A loop is owed when a completed run's dispatch is still pending, or was sent
    but no evaluation came of it. With a Prefect server the quality-loop deployment
    is started; without one the loop runs here as a subflow.

    Args:
        older_than_minutes: How long a dispatch may be outstanding before it is retried.
        limit: At most this many runs per sweep.
    """
    owed = find_owed(older_than_minutes, limit)
    dispatcher = DeploymentDispatcher() if has_prefect_server() else InlineDispatcher()
    for item in owed:
        redispatch(item, dispatcher)
    get_run_logger().info("re-dispatched %d owed quality loop(s)", len(owed))
    return len(owed)
