"""The tuning tasks: thin Prefect wrappers around tunix_rt.tuning.ray_tune."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from tunix_rt.tasks.quality import RETRY_POLICY, artifact_key
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


#: The longest error text a row of the trials artifact keeps (the study page has it all).
ERROR_CHARS = 200


@task(name="publish-trials", **RETRY_POLICY)
def publish_trials(study_id: str) -> str:
    """A table artifact of the study's trials (key ``trials-<study name>``): each trial's
    status, iterations, metric, searched config and error, best first; returns the key."""
    from prefect.artifacts import create_table_artifact

    from tunix_rt.settings import get_settings
    from tunix_rt.store.db import session_scope
    from tunix_rt.tuning import studies

    with session_scope() as session:
        study = studies.get_study(session, study_id)
        [summary] = studies.summarize(session, [study])
        space = (study.spec or {}).get("param_space", {})
        rows = trials_table(summary, space, studies.study_trials(session, study))
    key = artifact_key("trials", summary.name)
    public_url = get_settings().public_url
    page = (f"[the study's page]({public_url}/studies/{summary.id})" if public_url
            else f"`/studies/{summary.id}` on `tunix-rt serve` (set TUNIX_RT_PUBLIC_URL to "
                 "link it here)")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.by_status.items()))
    best = (f"best {summary.best_trial_id}: {summary.metric} {summary.best_value:.4g}"
            if summary.best_value is not None else f"no trial reported {summary.metric}")
    create_table_artifact(key=key, table=rows, description=(
        f"Trials of study **{summary.name}** ({summary.id}) on {summary.dataset}, "
        f"{summary.metric} ({summary.mode}): {summary.trials} trials ({counts}); {best}. "
        f"Curves and hyperparameters: {page}."))
    return key


def trials_table(summary: Any, space: dict[str, Any], trials: list[Any]) -> list[dict[str, Any]]:
    """The artifact's rows: one per trial, searched hyperparameters as columns."""
    searched = sorted(k for k, v in space.items() if isinstance(v, dict))
    rows = []
    for t in trials:
        error = t.error if not t.error or len(t.error) <= ERROR_CHARS \
            else t.error[:ERROR_CHARS] + "…"
        rows.append({"trial": t.trial_id, "best": t.trial_id == summary.best_trial_id,
                     "status": t.status, "iterations": t.iterations,
                     summary.metric: None if t.value is None else round(t.value, 6),
                     **{k: t.config.get(k) for k in searched},
                     "run_id": t.run_id, "error": error})
    return rows
