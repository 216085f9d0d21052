"""The tuning flow: a Ray Tune sweep, then the quality loop for its best trials."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tunix_rt.flows.quality_loop import quality_loop
from tunix_rt.flows.subflows import without_heartbeats
from tunix_rt.tasks.tuning import (check_cluster, publish_trials, register_best_trials, run_sweep,
                                   start_study)
from tunix_rt.quality.stats import GatePolicy
from tunix_rt.tuning.sweep import Sweep


@flow(name="tune", flow_run_name="tune-{sweep.name}", validate_parameters=True)
def tune_flow(sweep: Sweep, policy: GatePolicy = GatePolicy(auto_promote=True),
              resume_study: str | None = None) -> dict[str, Any]:
    """Run the sweep, store every trial, and judge, rank and gate the best trials.

    Args:
        sweep: The sweep (the fields of a sweep file: search space, scheduler, resources).
        policy: The gate policy for the best trials' quality loops.
        resume_study: Resume this study (its unfinished trials) instead of starting anew.
    """
    check_cluster(sweep)  # before any trial: resources the cluster lacks are refused
    study_id = resume_study or start_study(sweep)
    outcome = run_sweep(study_id, resume=resume_study is not None)
    if outcome.unfinished:  # interrupted: the trials so far; judge nothing until it is whole
        publish_trials(study_id)
        return {"study_id": study_id, "trials": outcome.trials, "errors": outcome.errors,
                "unfinished": outcome.unfinished, "best_trial_id": outcome.best_trial_id,
                "best_value": outcome.best_value, "runs": []}
    run_ids = register_best_trials(study_id, sweep.top_k)
    publish_trials(study_id)  # after registering: the best trials' rows name their runs
    with without_heartbeats():  # the tune flow's own heartbeat covers its subflows
        loops = [quality_loop(run_id, judges=[sweep.judge], policy=policy)
                 for run_id in run_ids]
    return {"study_id": study_id, "trials": outcome.trials, "errors": outcome.errors,
            "unfinished": 0, "best_trial_id": outcome.best_trial_id, "best_value": outcome.best_value,
            "runs": [{"run_id": r, "gate": loop["judges"][sweep.judge]["gate"]}
                     for r, loop in zip(run_ids, loops)]}
