"""The train flow: launch one training job, then judge, rank and gate what it produced."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from tunix_rt.flows.quality_loop import quality_loop
from tunix_rt.flows.subflows import without_heartbeats
from tunix_rt.tasks.training import mark_cancelled, register_job_run, run_training_job
from tunix_rt.training.runfile import RunSpec
from tunix_rt.quality.stats import GatePolicy


def _external_id(spec: RunSpec) -> str:
    return spec.external_id or f"prefect-{flow_run.get_id()}"


def _on_cancel(flow: Any, run: Any, state: Any) -> None:
    spec = RunSpec.model_validate(run.parameters["spec"])
    mark_cancelled(spec.external_id or f"prefect-{run.id}")


@flow(name="train", flow_run_name="train-{spec.name}", validate_parameters=True,
      on_cancellation=[_on_cancel], on_crashed=[_on_cancel])
def train_flow(spec: RunSpec, dry_run: bool = False,
               policy: GatePolicy = GatePolicy(auto_promote=True)) -> dict[str, Any]:
    """Run a training job and, when it completes, the quality loop on its predictions.

    Args:
        spec: The run file's fields: name, dataset, model, and a trainable with its
            config or a command line with the predictions URI it writes.
        dry_run: Validate and record a dry-run run; train nothing.
        policy: The gate policy for the quality loop.
    """
    run_id = register_job_run(spec, _external_id(spec), dry_run=dry_run)
    if dry_run:
        return {"run_id": run_id, "dry_run": True, "gate": None}
    run_training_job(run_id, spec)
    with without_heartbeats():  # the train flow's own heartbeat covers the subflow
        loop = quality_loop(run_id, judges=spec.judges, policy=policy)
    first = spec.judges[0]
    return {"run_id": run_id, "dry_run": False, "gate": loop["judges"][first]["gate"],
            "judges": loop["judges"]}
