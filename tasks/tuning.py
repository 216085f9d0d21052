"""The tuning tasks: thin Prefect wrappers around tunix_rt.tuning.ray_tune."""

from __future__ import annotations

from prefect import get_run_logger, task

from tunix_rt.tasks.quality import RETRY_POLICY
from tunix_rt.tuning import ray_tune
from tunix_rt.tuning.ray_tune import SweepOutcome
from tunix_rt.tuning.sweep import Sweep


@task(name="check-cluster")
def check_cluster(sweep: Sweep) -> dict[str, float]:
    """Join (or start) Ray and refuse a sweep whose trials the cluster cannot place."""
    import ray

    ray_tune.ensure_ray(sweep)
    ray_tune.check_resources(sweep)
    return {k: float(v) for k, v in ray.cluster_resources().items()}


@task(name="start-study", **RETRY_POLICY)
def start_study(sweep: Sweep) -> str:
    return ray_tune.create_study_record(sweep)


@task(name="run-sweep")
def run_sweep(study_id: str, resume: bool = False) -> SweepOutcome:
    """Run (or resume) the study's sweep on Ray; every trial and result is stored."""
    return ray_tune.run_study(study_id, resume, progress=get_run_logger().info)


@task(name="register-best-trials", **RETRY_POLICY)
def register_best_trials(study_id: str, k: int) -> list[str]:
    """Register the k best trials as runs (origin tuning), once each; returns run ids."""
    return ray_tune.register_best_trials(study_id, k)
