"""The quality loop: a completed run is scored, ranked and gated.

The flow only sequences tasks; every decision and every write lives in a task.
Re-running it for a run does no work twice: a stored evaluation is reused (unless
``force``), and every write is an upsert on a unique key.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from prefect.client.schemas.objects import FlowRun
from pydantic import Field
from prefect.states import State
from prefect.utilities.annotations import quote, unmapped

from tunix_rt.flows.dispatch import (LeaseKeeper, clear_loop_error, loop_timeout_s,
                                     note_loop_error, timed_out_error)
from tunix_rt.judges import RegisteredJudge
from tunix_rt.tasks.quality import (announce_gate, finish_evaluation, gate_run, load_run,
                                    promote_baseline, publish_artifacts, rebuild_leaderboard,
                                    score_chunk, score_run, store_evaluation)
from tunix_rt.quality.chunks import ChunkPlan
from tunix_rt.tasks.runners import chunk_options, task_runner
from tunix_rt.quality.evaluation import EvaluationSummary
from tunix_rt.quality.judge_config import ensure_configured_judges
from tunix_rt.quality.stats import GatePolicy

# Judges defined in configuration must be registered before parameters are validated.
ensure_configured_judges()

# Never mutated: safe as a parameter default, and the UI form shows it.
DEFAULT_JUDGES = ["exact_match"]


def value_of(result: Any) -> Any:
    """A task's value, also when it ended in a named state such as ``Skipped``."""
    return result.result() if isinstance(result, State) else result


def _loop_did_not_finish(flow: Any, flow_run: FlowRun, state: State) -> None:
    """on_failure, on_crashed: the reason is shown on the run, not only in Prefect."""
    run_id = flow_run.parameters.get("run_id")
    if state.name == "TimedOut":
        error = (f"{timed_out_error(run_id, flow.timeout_seconds or 0)} (flow run "
                 f"{flow_run.name!r}, {flow_run.id}: {state.message or 'timed out'})")
    else:
        error = (f"quality-loop flow run {flow_run.name!r} ({flow_run.id}) "
                 f"{state.name.lower()}: {state.message or 'no message'}")
    note_loop_error(run_id, error)


def _deadline_s() -> float | None:
    """This flow run's timeout (``with_options`` may have changed the decorator's)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow.timeout_seconds if context and context.flow else loop_timeout_s()


def _task_runner() -> Any:
    """This flow run's task runner (``with_options`` may have changed the decorator's)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.task_runner if context else None


def _lease_holder() -> str | None:
    """The lease holder's name: this flow run, when there is one."""
    from prefect.runtime import flow_run

    return f"loop:{flow_run.id}" if flow_run.id else None


def _loop_completed(_flow: Any, flow_run: FlowRun, _state: State) -> None:
    clear_loop_error(flow_run.parameters.get("run_id"))


# The deadline (TUNIX_RT_LOOP_TIMEOUT_S) as this process reads it on import: a worker
# running the deployment, the CLI; the dispatchers of a long-lived process read it again
# per loop (with_options).
# The task runner (TUNIX_RT_TASK_RUNNER) runs the chunks of a large evaluation.
@flow(name="quality-loop", flow_run_name="quality-loop-{run_id}", validate_parameters=True,
      timeout_seconds=loop_timeout_s(), task_runner=task_runner(),
      on_failure=[_loop_did_not_finish], on_crashed=[_loop_did_not_finish],
      on_completion=[_loop_completed])
def quality_loop(run_id: str, judges: list[RegisteredJudge] = DEFAULT_JUDGES,  # noqa: B006
                 policy: GatePolicy = GatePolicy(), force: bool = False,
                 repeat: Annotated[int, Field(ge=1, le=20)] = 1) -> dict[str, Any]:
    """Score the run with each judge, rebuild the leaderboards, gate against the baselines.

    Args:
        run_id: tunix-rt run id (or external id) of a completed run.
        judges: Registered judges to score with (`tunix-rt judges list`).
        policy: How the run is compared with its dataset's baseline.
        force: Score again even when an evaluation is already stored.
        repeat: Grade a sample this many times (other seeds) and store how often the
            gradings agreed (self-consistency of sampling judges such as llm).
    """
    # The lease of the run's dispatch is renewed while the loop runs: the sweeper
    # re-dispatches a loop only when it stops renewing (it died, or hung past the
    # deadline), never a slow one.
    with LeaseKeeper(run_id, holder=_lease_holder(), deadline_s=_deadline_s()):
        run = load_run(run_id)
        results: dict[str, Any] = {"run_id": run.id, "dataset": run.dataset, "judges": {}}
        for judge in judges:
            scored = value_of(score_run(run, judge, force=force, repeat=repeat))
            # quote(): Prefect would otherwise walk every verdict of the argument, twice per
            # task run (2.7-3.2 s of overhead at 20,000 items, benchmarks/README.md).
            if isinstance(scored, ChunkPlan):  # a large file: its chunks as mapped tasks
                with chunk_options(_task_runner()):
                    stored = score_chunk.map(unmapped(scored), list(scored.chunks))
                summary = finish_evaluation(scored, wait_for=stored)
            else:
                summary = (scored if isinstance(scored, EvaluationSummary)
                           else store_evaluation(quote(scored)))
            board = rebuild_leaderboard(run.dataset, judge, run.id)
            report = gate_run(run.id, judge, policy)
            promoted = value_of(promote_baseline(report, policy))
            publish_artifacts(board, report, promoted)
            announce_gate(report, promoted)
            results["judges"][judge] = {"evaluation": summary.to_dict(),
                                        "gate": report.to_dict(), "promoted": promoted}
        return results
