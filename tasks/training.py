"""Training tasks: launch one job, follow it on the run row, and say how it ended.

The job runs as a child process (its own process group, killed with its
supervisor); its log goes to a file and, line by line, to the Prefect run log; the
metrics it reports land on the run. A timeout or a cancellation stops the job and
marks the run failed, with the reason and the tail of the log.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from tunix_rt.tasks import events
from tunix_rt.tasks.quality import RETRY_POLICY
from tunix_rt.store import runs
from tunix_rt.store.db import session_scope
from tunix_rt.errors import TunixRtError
from tunix_rt.store.metrics import record_points, series_points
from tunix_rt.training.jobs import POINTS_KEY, job_command, job_environment, run_job
from tunix_rt.store.models import RunOrigin, RunStatus
from tunix_rt.training.runfile import RunSpec
from tunix_rt.settings import ENV_PREFIX, get_settings

METRICS_EVERY_S = 2.0


class TrainingJobFailed(TunixRtError):
    """The job exited non-zero, timed out, was cancelled or wrote no predictions."""


@task(name="register-job-run", **RETRY_POLICY)
def register_job_run(spec: RunSpec, external_id: str, dry_run: bool = False) -> str:
    """Record the run before anything starts: pending, or a dry run that trains nothing."""
    if dry_run:
        spec.check()  # the trainable resolves, the command's executable exists
    config = dict(spec.config) if spec.trainable else {"command": list(spec.command)}
    with session_scope() as session:
        existing = session.scalar(runs.select_run_by_external_id(external_id))
        if existing is not None:  # the flow run was retried: same run
            return existing.id
        run = runs.register_run(
            session, name=spec.name, dataset=spec.dataset, model=spec.model,
            predictions_uri=spec.predictions, config=config, external_id=external_id,
            status=RunStatus.completed if dry_run else RunStatus.pending, dry_run=dry_run,
            origin=RunOrigin.train)
        return run.id


@task(name="run-training-job")
def run_training_job(run_id: str, spec: RunSpec) -> str:
    """Run the job to its end; returns its predictions URI or raises TrainingJobFailed.

    Not retried: a training job that failed is reported, not started again blindly.
    """
    logger = get_run_logger()
    folder = Path(get_settings().jobs_dir).resolve() / run_id
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = folder / "job.log"
    with session_scope() as session:
        runs.mark_running(session, run_id, log_uri=log_path.as_uri())

    pending: dict[str, Any] = {}
    points: list[tuple[str, int, float | None]] = []  # the run's series (its loss curve)
    last_write = [time.monotonic()]

    def on_metrics(metrics: dict[str, Any]) -> None:
        points.extend(series_points(metrics))
        pending.update({k: v for k, v in metrics.items() if k != POINTS_KEY})
        if time.monotonic() - last_write[0] >= METRICS_EVERY_S:
            _flush_metrics(run_id, pending, points)
            last_write[0] = time.monotonic()

    def should_cancel() -> bool:
        with session_scope() as session:
            return runs.cancel_requested(session, run_id)

    extra_env = {} if spec.resources.get("gpu") else {"JAX_PLATFORMS": "cpu"}
    if get_settings().ray_address:
        logger.info("running the job on the Ray cluster with %s", spec.resources)
        result = _run_on_ray(spec, job_command(spec, out_dir=folder), extra_env, log_path,
                             run_id)
        for report in result.reports:  # the series, which no callback saw here
            points.extend(series_points(report))
    else:
        # An allow-list of this environment and what the run file names: not the webhook
        # secret, the LLM key or the database URL (tunix_rt.training.jobs.job_environment).
        result = run_job(job_command(spec, out_dir=folder),
                         env=job_environment(spec.env, extra_env),
                         timeout_s=spec.timeout_s, log_path=log_path,
                         on_line=lambda line: logger.info("job: %s", line),
                         on_metrics=on_metrics, should_cancel=should_cancel, poll_s=1.0)
    _flush_metrics(run_id, pending, points)
    # A command names its predictions in the run file; a trainable returns them.
    uri = spec.predictions or result.predictions_uri
    completed = result.status == "completed" and bool(uri)
    reason = None
    if not completed:
        reason = {"timeout": f"timed out after {spec.timeout_s:g} s",
                  "cancelled": "cancelled",
                  "completed": "the job wrote no predictions URI"}.get(
                      result.status, f"exit code {result.exit_code}")
        reason = f"{reason}; last lines of the log:\n{result.log_tail}"
    with session_scope() as session:
        runs.mark_finished(session, run_id, completed=completed, exit_code=result.exit_code,
                           error=reason, predictions_uri=uri if completed else None,
                           metrics=result.metrics)
    if not completed:
        _announce_failure(run_id, result.status, result.exit_code)
        raise TrainingJobFailed(f"run {run_id} failed: {reason}")
    logger.info("job completed in %.1f s: %s", result.duration_s, uri)
    return uri


def _run_on_ray(spec: RunSpec, cmd: list[str], extra_env: dict[str, str], log_path: Path,
                run_id: str) -> Any:
    """Supervise the job from a Ray task that holds the job's resources (GPUs, accelerators).

    The log is written where the task runs (shared storage on a real cluster) and the
    metrics come back with the result. Cancellation is polled from the database there: the
    node's own TUNIX_RT_DATABASE_URL (the URL, with its password, is never a task argument;
    without it on the node the job runs to its end or its timeout).
    """
    import ray

    from tunix_rt.ray_cluster import connect, task_options

    connect()
    options = {**task_options(spec.resources), "max_retries": 0}
    ref = ray.remote(_supervise_remotely).options(**options).remote(
        cmd, extra_env, spec.timeout_s, str(log_path), run_id, list(spec.env))
    return ray.get(ref)


def _supervise_remotely(cmd: list[str], extra_env: dict[str, str], timeout_s: float,
                        log_path: str, run_id: str, env_names: list[str]) -> Any:
    import logging

    from tunix_rt.store.db import get_engine

    database_url = os.environ.get(ENV_PREFIX + "DATABASE_URL", "").strip()
    should_cancel = None
    if database_url:
        def should_cancel() -> bool:
            with session_scope(get_engine(database_url)) as session:
                return runs.cancel_requested(session, run_id)
    else:
        logging.getLogger(__name__).warning(
            "run %s: TUNIX_RT_DATABASE_URL is not set on this Ray node: a cancellation "
            "of the run is not seen until the job ends", run_id)

    # Ray has set CUDA_VISIBLE_DEVICES (and friends) for this task: the allow-list keeps them.
    Path(log_path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return run_job(cmd, env=job_environment(env_names, extra_env), timeout_s=timeout_s,
                   log_path=Path(log_path), should_cancel=should_cancel, poll_s=1.0)


def _flush_metrics(run_id: str, pending: dict[str, Any],
                   points: list[tuple[str, int, float | None]] | None = None) -> None:
    if pending or points:
        with session_scope() as session:
            if pending:
                runs.record_metrics(session, run_id, {k: v for k, v in pending.items()
                                                      if k != "predictions_uri"})
            if points:
                record_points(session, run_id, points)
        pending.clear()
        if points:
            points.clear()


def _announce_failure(run_id: str, status: str, exit_code: int | None) -> None:
    events.emit_run_event(events.RUN_FAILED, run_id,
                          {"run_id": run_id, "status": status, "exit_code": exit_code})


def mark_cancelled(external_id: str) -> None:
    """Flow hook: a cancelled or crashed flow run leaves its run failed, not running."""
    with session_scope() as session:
        run = session.scalar(runs.select_run_by_external_id(external_id))
        if run is not None and run.status in (RunStatus.pending.value, RunStatus.running.value):
            runs.mark_finished(session, run.id, completed=False, exit_code=None,
                               error="the flow run was cancelled or crashed")
