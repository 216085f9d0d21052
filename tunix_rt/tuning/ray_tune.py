"""Ray Tune adapters: a sweep as Ray domains and resources, the persisting callback,
the trial function Ray runs, and running (or resuming) a study.

Ray is imported here at module level, so only the tuning tasks import this module;
the rest of the core never pays for Ray.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from tunix_rt.errors import InvalidInputError
from tunix_rt.ray_cluster import RESOURCE_NAMES, connect, ray_resources
from tunix_rt.settings import get_settings
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import RunOrigin, RunStatus, Study, StudyStatus, TrialStatus, utcnow
from tunix_rt.store.runs import register_run
from tunix_rt.tuning import studies
from tunix_rt.tuning.studies import ResultRow
from tunix_rt.tuning.sweep import Sweep

log = logging.getLogger("tunix_rt.tuning")

# Keys Ray Tune adds to every result; the rest are the trainable's own metrics.
RAY_RESULT_KEYS = {
    "config", "date", "done", "experiment_id", "experiment_tag", "hostname", "node_ip", "pid",
    "time_since_restore", "time_this_iter_s", "timestamp", "timesteps_since_restore",
    "iterations_since_restore", "trial_id", "checkpoint_dir_name", "should_checkpoint",
    "timesteps_total", "episodes_total", "training_iteration", "time_total_s",
}


def search_space(sweep: Sweep) -> dict[str, Any]:
    """The sweep's param_space as Ray Tune domains (randint's high is exclusive, as in Ray)."""
    space: dict[str, Any] = {}
    for name, spec in sweep.param_space.items():
        if not isinstance(spec, dict):
            space[name] = spec
            continue
        (kind, args), = spec.items()
        space[name] = {
            "choice": lambda a: tune.choice(a),
            "grid": lambda a: tune.grid_search(a),
            "uniform": lambda a: tune.uniform(*a),
            "loguniform": lambda a: tune.loguniform(*a),
            "randint": lambda a: tune.randint(*a),
        }[kind](args)
    return space


def trial_resources(sweep: Sweep) -> dict[str, float]:
    """Resources per trial in Ray's names; without ``cpu`` a trial takes none."""
    return ray_resources(sweep.resources)


def runtime_env(sweep: Sweep) -> dict[str, Any]:
    """JAX settings for the trial processes."""
    if sweep.resources.get("gpu"):
        # Trials share GPUs: JAX must not grab 75% of a device's memory up front.
        return {"env_vars": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}}
    return {"env_vars": {"JAX_PLATFORMS": "cpu"}}


def ensure_ray(sweep: Sweep) -> None:
    """Join TUNIX_RT_RAY_ADDRESS, or start a local Ray; an already started Ray is kept."""
    connect(runtime_env(sweep))


def check_resources(sweep: Sweep) -> None:
    """Refuse, before any trial starts, a trial the cluster could never place."""
    cluster = ray.cluster_resources()
    for key, amount in sweep.resources.items():
        have = cluster.get(RESOURCE_NAMES.get(key, key), 0.0)
        if amount > have:
            raise InvalidInputError(f"resources.{key}: a trial asks for {amount:g}, the Ray "
                                    f"cluster has {have:g}")


def _busy(hook: Callable[..., None]) -> Callable[..., None]:
    """Count the hook's time in ``busy_s``: Ray's driver loop waits for every callback, so
    this is what persisting costs the sweep (``SweepOutcome.persist_s``)."""

    @functools.wraps(hook)
    def timed(self: PersistCallback, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            hook(self, *args, **kwargs)
        finally:
            self.busy_s += time.perf_counter() - start

    return timed


class PersistCallback(tune.Callback):
    """Writes the study's trials and results as Ray Tune reports them.

    Results are buffered and written in batches (every ``batch`` results or
    ``interval_s`` seconds, and whenever a trial ends) so a fast trainable does not
    pay a transaction per report. The hooks run in Ray's driver loop: ``busy_s`` is
    the time they took, so a sweep can say what its record cost it.
    """

    busy_s = 0.0  # also the value of a callback unpickled from an older release's study

    def __init__(self, study_id: str, *, batch: int = 64, interval_s: float = 2.0,
                 progress: Any = None) -> None:
        self.study_id = study_id
        self.batch = batch
        self.interval_s = interval_s
        self.progress = progress
        self._buffer: list[ResultRow] = []
        self._last_flush = time.monotonic()
        self._done = 0
        self._best: tuple[float, str] | None = None
        self.metric: str | None = None
        self.mode = "max"
        # Trials the scheduler stopped before their end (filled by EarlyStopRecorder).
        self.stopped_early: set[str] = set()
        self.busy_s = 0.0

    # -- Ray Tune hooks ------------------------------------------------------------
    @_busy
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        with session_scope() as session:
            studies.upsert_trial(session, self.study_id, trial.trial_id,
                                 config=studies.json_safe(dict(trial.config)),
                                 status=TrialStatus.running.value, started_at=utcnow())

    @_busy
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        metrics = {k: v for k, v in result.items() if k not in RAY_RESULT_KEYS}
        self._buffer.append(ResultRow(trial.trial_id, int(result.get("training_iteration", 0)),
                                      metrics))
        self._note_best(trial.trial_id, metrics)
        if (len(self._buffer) >= self.batch
                or time.monotonic() - self._last_flush >= self.interval_s):
            self.flush()

    @_busy
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        status = (TrialStatus.stopped if trial.trial_id in self.stopped_early
                  else TrialStatus.completed)
        self._finish(trial, status, None, trials)

    @_busy
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = None
        try:
            error = str(trial.get_error())
        except Exception:  # noqa: BLE001 - the message is best effort
            error = "the trial failed (see its error file in the Ray results)"
        self._finish(trial, TrialStatus.failed, error, trials)

    @_busy
    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles the callback with the experiment (for resume); the progress
        # sink (a Prefect run logger) belongs to this process only.
        return {**self.__dict__, "progress": None, "_buffer": []}

    # -- helpers -------------------------------------------------------------------
    def flush(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            with session_scope() as session:
                studies.record_results(session, self.study_id, batch)
        self._last_flush = time.monotonic()

    def _finish(self, trial: Any, status: TrialStatus, error: str | None, trials: list) -> None:
        self.flush()
        with session_scope() as session:
            studies.upsert_trial(session, self.study_id, trial.trial_id, status=status.value,
                                 error=error, finished_at=utcnow())
        self._done += 1
        running = sum(1 for t in trials if t.status == "RUNNING")
        best = f"; best {self.metric} {self._best[0]:.4f} ({self._best[1]})" if self._best else ""
        message = (f"trial {trial.trial_id} {status.value}: {self._done} done, "
                   f"{running} running{best}")
        log.info(message)
        if self.progress is not None:
            self.progress(message)

    def _note_best(self, trial_id: str, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.metric) if self.metric else None
        if not isinstance(value, (int, float)):
            return
        better = (self._best is None or (value > self._best[0] if self.mode == "max"
                                         else value < self._best[0]))
        if better:
            self._best = (float(value), trial_id)


def _trial_fn(trainable: str, out_root: str):  # noqa: ANN202 - the function Ray runs
    def run_trial(config: dict[str, Any]) -> None:
        from tunix_rt.training import trainable as builtin
        from tunix_rt.training.trainable import load_trainable

        context = tune.get_context()
        gpu_ids = [str(i) for i in ray.get_gpu_ids()]
        # Which node ran the trial: on a cluster whose nodes share a host or an IP, only
        # Ray's node id tells them apart.
        node_id = ray.get_runtime_context().get_node_id()
        reported: dict[str, Any] = {}

        def forward(metrics: dict[str, Any]) -> None:
            # Each report is one iteration, stored whole (trial_results): the points a
            # TunixRtHooks report carries for a job's series would only repeat them.
            metrics = {k: v for k, v in metrics.items() if k != "tunix_rt_points"}
            reported.clear()
            reported.update(metrics)
            tune.report({**metrics, "gpu_ids": gpu_ids, "node_id": node_id})

        # The study's own folder, not Ray's trial dir: Ray moves and prunes its dirs,
        # and the predictions must stay where the run registered from them points.
        out_dir = Path(out_root) / context.get_trial_id()
        if trainable == "builtin":
            uri = builtin.train_arithmetic(config, report=forward, out_dir=out_dir)
        else:
            # A trainable of its own (tunix-sft, a user's) finds the folder here, as in a job.
            os.environ["TUNIX_RT_OUT_DIR"] = str(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            with builtin.reporting_to(forward):
                uri = load_trainable(trainable)(config)
        if uri and reported.get("predictions_uri") != uri:
            # A user trainable that returned its URI without reporting it: one more
            # result, so the driver learns where the predictions are.
            tune.report({**reported, "gpu_ids": gpu_ids, "node_id": node_id,
                         "predictions_uri": str(uri)})

    return run_trial


@dataclass(frozen=True)
class SweepOutcome:
    study_id: str
    trials: int
    best_trial_id: str | None
    best_value: float | None
    errors: int
    unfinished: int = 0
    wall_s: float = 0.0     # the sweep (Tuner.fit), start to end
    persist_s: float = 0.0  # of which our callback's hooks: writing the record


def study_storage_path(root: str | Path, name: str, study_id: str) -> Path:
    """The study's folder, ``root/NAME-ID8``; one that would resolve outside ``root`` (a
    name with ``/`` or ``..`` that slipped past the sweep file's check) is refused."""
    root = Path(root).resolve()
    path = (root / f"{name}-{study_id[:8]}").resolve()
    if path.parent != root:
        raise InvalidInputError(f"name: {name!r} would put the study's storage outside "
                                f"{root}")
    return path


def create_study_record(sweep: Sweep) -> str:
    """Create the study, with a folder of its own under TUNIX_RT_TUNE_STORAGE."""
    root = Path(get_settings().tune_storage).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with session_scope() as session:
        study = studies.create_study(session, sweep, storage_path="")
        study.storage_path = str(study_storage_path(root, sweep.name, study.id))
        return study.id


def run_study(study_id: str, resume: bool = False,
              progress: Callable[[str], None] | None = None) -> SweepOutcome:
    """Run (or resume) the study's sweep on Ray; every trial and result is stored."""
    with session_scope() as session:
        study = session.get(Study, study_id)
        sweep = Sweep.model_validate(study.spec)
        storage = Path(study.storage_path)
    ensure_ray(sweep)
    # Progress comes from our callback (trials done, best so far); Ray's own console
    # tables would interleave with it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    callback = PersistCallback(study_id, progress=progress)
    callback.metric, callback.mode = sweep.metric, sweep.mode
    trainable = tune.with_resources(_trial_fn(sweep.trainable, str(storage / "predictions")),
                                    trial_resources(sweep))
    if resume:
        if not tune.Tuner.can_restore(str(storage)):
            raise InvalidInputError(f"study {study_id} has no Ray state to resume at {storage}")
        # The restored run config brings back its own copy of the PersistCallback
        # (it pickles by value: a study id and a few numbers), writing to this study.
        tuner = tune.Tuner.restore(str(storage), trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=search_space(sweep),
            tune_config=tune.TuneConfig(
                metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                max_concurrent_trials=sweep.max_concurrent_trials,
                time_budget_s=sweep.time_budget_s,
                scheduler=_scheduler(sweep, callback.stopped_early),
                search_alg=_searcher(sweep)),
            run_config=tune.RunConfig(name=storage.name, storage_path=str(storage.parent),
                                      callbacks=[callback], verbose=0))
    started = time.monotonic()
    try:
        grid = tuner.fit()
    except Exception as exc:
        callback.flush()
        with session_scope() as session:
            studies.finish_study(session, study_id, status=StudyStatus.failed, error=str(exc))
        raise
    callback.flush()
    wall = time.monotonic() - started
    errors = grid.num_errors
    # Ctrl-C makes fit() return early with trials never run or cut off; Ray keeps the
    # state to resume. Count what ended on our record against what the sweep asked
    # for (a spent time budget ends a sweep on purpose).
    budget_spent = bool(sweep.time_budget_s) and (
        time.monotonic() - started >= 0.99 * sweep.time_budget_s)
    with session_scope() as session:
        ended = studies.ended_trials(session, study_id)
    unfinished = 0 if budget_spent else max(0, sweep.total_trials - ended)
    best_id = best_value = None
    try:
        best = grid.get_best_result(metric=sweep.metric, mode=sweep.mode)
        best_id, best_value = best.metrics.get("trial_id"), best.metrics.get(sweep.metric)
    except RuntimeError:
        pass  # no trial reported the metric
    status = StudyStatus.interrupted if unfinished else StudyStatus.completed
    with session_scope() as session:
        studies.finish_study(session, study_id, status=status, best_trial_id=best_id,
                             error=(f"{unfinished} trial(s) unfinished: resume with "
                                    f"`tunix-rt tune --resume {study_id}`") if unfinished
                             else None)
    log.info("study %s: the record took %.2f s of the sweep's %.1f s (%.1f%%)", study_id,
             callback.busy_s, wall, 100 * callback.busy_s / wall if wall else 0.0)
    return SweepOutcome(study_id, len(grid), best_id, best_value, errors, unfinished,
                        wall_s=wall, persist_s=callback.busy_s)


def _scheduler(sweep: Sweep, stopped_early: set[str]) -> Any:
    if sweep.scheduler.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class EarlyStopRecorder(ASHAScheduler):
        """ASHA that notes which trials it cut short (reaching max_t is not early)."""

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            if (decision == TrialScheduler.STOP and not result.get("done")
                    and result.get("training_iteration", 0) < s.max_t):
                stopped_early.add(trial.trial_id)
            return decision

    s = sweep.scheduler
    return EarlyStopRecorder(time_attr="training_iteration", max_t=s.max_t,
                             grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def _searcher(sweep: Sweep) -> Any:
    if sweep.searcher == "random":
        return None
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise InvalidInputError("searcher: optuna needs the optional extra: "
                                "pip install 'tunix-rt[optuna]'") from None
    return OptunaSearch(seed=sweep.seed)


def register_best_trials(study_id: str, k: int) -> list[str]:
    """Register the k best trials as runs (origin tuning), once each; returns run ids."""
    run_ids = []
    with session_scope() as session:
        study = session.get(Study, study_id)
        for trial in studies.best_trials(session, study, k):
            if trial.run_id is None:
                if not trial.predictions_uri:
                    log.warning("trial %s wrote no predictions; not registered",
                                trial.trial_id)
                    continue
                run = register_run(
                    session, name=f"{study.name}-{trial.trial_id}", dataset=study.dataset,
                    model=f"tuning:{study.spec.get('trainable', 'builtin')}",
                    predictions_uri=trial.predictions_uri, config=trial.config,
                    metrics={k: v for k, v in trial.last_metrics.items()
                             if isinstance(v, (int, float))},
                    external_id=f"study-{study.id}-{trial.trial_id}",
                    status=RunStatus.completed, origin=RunOrigin.tuning)
                run.study_id, run.trial_id = study.id, trial.trial_id
                trial.run_id = run.id
            run_ids.append(trial.run_id)
    return run_ids

