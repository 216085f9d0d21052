"""Helpers shared by the tests that run real Prefect flows."""

from __future__ import annotations

from typing import Any
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


def loop_fails_once(run_id: str, engine: Any) -> Any:
    """Run the quality loop on ``run_id``: it fails, its score-run task ran once (no
    retry), and the run's one evaluation is failed; answers that evaluation."""
    from sqlalchemy import select

    from tunix_rt.flows.quality_loop import quality_loop
    from tunix_rt.store.db import session_scope
    from tunix_rt.store.models import Evaluation

    state = quality_loop(run_id, judges=["exact_match"], return_state=True)
    assert state.is_failed()
    states = task_states(state.state_details.flow_run_id, "score-run")
    assert states.count("Running") == 1 and "Retrying" not in states, states
    with session_scope(engine) as session:
        [ev] = session.scalars(select(Evaluation)).all()
    assert ev.status == "failed", ev.error
    return ev
