"""Helpers shared by the tests that run real Prefect flows."""

from __future__ import annotations

from uuid import UUID


def task_states(flow_run_id: UUID, task_name: str) -> list[str]:
    """The names of the states a flow run's task went through, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])))
        [run] = [r for r in runs if r.name.startswith(task_name)]
        states = client.read_task_run_states(run.id)
    return [s.name for s in sorted(states, key=lambda s: s.timestamp)]
