"""tuning_persistence and tuning_asha: what the record costs a sweep, and what ASHA saves.

tuning_persistence: a sweep of the built-in JAX trainable on a real local Ray, every
trial and result written to PostgreSQL by our callback. The callback's hooks run in
Ray's driver loop, so the time they take (``SweepOutcome.persist_s``, measured inside
them) is what persisting costs the sweep; the figure is its share of the sweep's wall
time. Target: at most 5%.

tuning_asha: the same grid of trials with ASHA and with the full budget (no scheduler,
every trial runs max_t iterations): the iterations spent, the wall time, and the best
accuracy each reached. The grid (not random samples) makes both sweeps try the same
configurations.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Result, Scale

TARGET_SHARE = 0.05


def _sweep(name: str, scheduler: str, quick: bool) -> Any:
    from tunix_rt.tuning.sweep import Sweep

    rates = [0.003, 0.03] if quick else [0.001, 0.003, 0.01, 0.03]
    return Sweep.model_validate({
        "name": name, "trainable": "builtin", "dataset": "arithmetic", "metric": "accuracy",
        "mode": "max", "num_samples": 1, "max_concurrent_trials": 2,
        "scheduler": {"type": scheduler, "max_t": 20, "grace_period": 2,
                      "reduction_factor": 2},
        "resources": {"cpu": 1},
        "param_space": {"learning_rate": {"grid": rates}, "hidden_size": {"grid": [16, 32]},
                        "steps": 200, "steps_per_report": 10, "seed": 0}})


def _iterations(study_id: str) -> int:
    """Training iterations the study spent: the last reported iteration of each trial."""
    from sqlalchemy import func, select

    from tunix_rt.store.db import session_scope
    from tunix_rt.store.models import Trial, TrialResult

    with session_scope() as session:
        per_trial = (select(func.max(TrialResult.iteration).label("last"))
                     .join(Trial, Trial.id == TrialResult.trial_pk)
                     .where(Trial.study_id == study_id).group_by(Trial.id).subquery())
        return int(session.scalar(select(func.coalesce(func.sum(per_trial.c.last), 0))))


def run(url: str, scale: Scale) -> list[Result]:
    from tunix_rt.store import db
    from tunix_rt.tuning.ray_tune import create_study_record, run_study

    storage = Path(tempfile.mkdtemp(prefix="tunix-rt-bench-tune-"))
    saved = {k: os.environ.get(k) for k in ("TUNIX_RT_DATABASE_URL", "TUNIX_RT_TUNE_STORAGE")}
    os.environ.update(TUNIX_RT_DATABASE_URL=url, TUNIX_RT_TUNE_STORAGE=str(storage))
    try:
        db.upgrade(db.get_engine(url))
        outcomes = {}
        for scheduler in ("asha", "none"):
            sweep = _sweep(f"bench-{scheduler}", scheduler, scale.quick)
            study_id = create_study_record(sweep)
            outcome = run_study(study_id)
            outcomes[scheduler] = (outcome, _iterations(study_id), sweep.total_trials)
        asha, asha_iters, n_trials = outcomes["asha"]
        full, full_iters, _ = outcomes["none"]
        results = []
        for label, (outcome, _, _) in (("ASHA", outcomes["asha"]),
                                       ("full budget", outcomes["none"])):
            share = outcome.persist_s / outcome.wall_s
            met = share <= TARGET_SHARE
            results.append(Result(
                "tuning_persistence", "postgresql",
                f"{n_trials} trials x up to 20 reports, {label}", outcome.persist_s,
                outcome.wall_s, "the whole sweep (Tuner.fit), same run",
                notes=f"the callback's hooks took {outcome.persist_s:.2f} s of a "
                      f"{outcome.wall_s:.1f} s sweep ({share:.1%}); 2 trials at a time on "
                      "a local Ray",
                target=f"at most {TARGET_SHARE:.0%} of the sweep: "
                       f"{'met' if met else 'NOT MET'} ({share:.1%})",
                met=met, extra={"share": round(share, 4)}))
        results.append(Result(
            "tuning_asha", "postgresql", f"{n_trials} trials, max_t 20, grace 2, factor 2",
            asha.wall_s, full.wall_s, "the full budget (no scheduler)",
            notes=f"iterations spent: ASHA {asha_iters}, full {full_iters} "
                  f"({asha_iters / max(full_iters, 1):.0%}); best accuracy: ASHA "
                  f"{asha.best_value}, full {full.best_value}",
            extra={"asha_iterations": asha_iters, "full_iterations": full_iters,
                   "asha_best": asha.best_value, "full_best": full.best_value}))
        return results
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(storage, ignore_errors=True)
