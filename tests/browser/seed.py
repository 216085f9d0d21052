"""What the browser tests add to a finished ``tunix-rt demo``: more runs, and a study.

Run as ``python -m tests.browser.seed DEMO_WORKDIR ITEMS`` with the demo's database and
Prefect server; prints the ids it made as one JSON document. The two extra runs go
through the real quality loop (so the board has five entries and needs pages at a small
``?limit=``), one of them with loss curves; the study is written through the tuning
module's own write functions (no Ray: the pages read the same rows a sweep leaves).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tunix_rt.cli.demo import DATASET, JUDGES, SimulatedRun, _write_jsonl, make_eval_set
from tunix_rt.cli.demo import simulate_predictions

EXTRA_RUNS = [
    SimulatedRun("sft-long-context", "gemma-3-1b-sft", 0.70, 0.92,
                 {"learning_rate": 1e-5, "epochs": 3, "method": "sft"}),
    SimulatedRun("grpo-step-400", "gemma-3-1b-grpo", 0.74, 0.95,
                 {"learning_rate": 3e-6, "steps": 400, "method": "grpo"}),
]

STUDY = {
    "name": "browser-sweep", "trainable": "builtin", "dataset": DATASET,
    "judge": "exact_match", "metric": "accuracy", "mode": "max", "num_samples": 1,
    "scheduler": {"type": "asha", "max_t": 8, "grace_period": 2, "reduction_factor": 2},
    "resources": {"cpu": 1},
    "param_space": {"learning_rate": {"grid": [0.0003, 0.003, 0.03, 0.3]},
                    "hidden_size": 32, "steps": 100, "seed": 0},
}
# (trial id, learning rate, final status, accuracy per reported iteration)
TRIALS = [
    ("t0001", 0.0003, "stopped", [0.05, 0.08]),
    ("t0002", 0.003, "completed", [0.20, 0.41, 0.55, 0.62, 0.66, 0.70, 0.71, 0.72]),
    ("t0003", 0.03, "completed", [0.30, 0.52, 0.60, 0.64, 0.65, 0.66, 0.66, 0.67]),
    ("t0004", 0.3, "failed", [0.02]),
]


def extra_runs(workdir: Path, items: int) -> list[str]:
    """Two more simulated runs of the demo's dataset, judged, ranked and gated."""
    from tunix_rt.flows.quality_loop import quality_loop
    from tunix_rt.quality.stats import GatePolicy
    from tunix_rt.store import runs
    from tunix_rt.store.db import session_scope

    eval_set = make_eval_set(items)
    ids = []
    with session_scope() as session:
        for i, sim in enumerate(EXTRA_RUNS):
            path = workdir / "runs" / sim.name / "predictions.jsonl"
            _write_jsonl(path, simulate_predictions(sim, eval_set, seed=200 + i))
            ids.append(runs.register_run(session, name=sim.name, dataset=DATASET,
                                         model=sim.model, predictions_uri=path.as_uri(),
                                         config=sim.config, external_id=f"browser-{sim.name}").id)
    for run_id in ids:
        quality_loop(run_id=run_id, judges=JUDGES, policy=GatePolicy())
    return ids


def study(workdir: Path, best_run_id: str) -> str:
    """A finished four-trial study: one stopped early, two completed, one failed."""
    from datetime import timedelta

    from tunix_rt.store.db import session_scope
    from tunix_rt.store.models import StudyStatus, utcnow
    from tunix_rt.tuning import studies
    from tunix_rt.tuning.sweep import parse_sweep

    sweep = parse_sweep(STUDY, source="browser tests")
    start = utcnow() - timedelta(minutes=10)
    with session_scope() as session:
        study_id = studies.create_study(session, sweep, str(workdir / "tune")).id
        for trial_id, lr, status, curve in TRIALS:
            config = {"learning_rate": lr, "hidden_size": 32, "steps": 100, "seed": 0}
            studies.upsert_trial(session, study_id, trial_id, config=config,
                                 started_at=start)
            studies.record_results(session, study_id, [
                studies.ResultRow(trial_id, i + 1, {"accuracy": acc, "loss": 1.0 - acc})
                for i, acc in enumerate(curve)])
            values: dict[str, Any] = {"status": status, "finished_at": utcnow()}
            if status == "failed":
                values["error"] = "FloatingPointError: loss is nan at iteration 2"
            if trial_id == "t0002":
                values["run_id"] = best_run_id
            studies.upsert_trial(session, study_id, trial_id, **values)
        studies.finish_study(session, study_id, status=StudyStatus.completed,
                             best_trial_id="t0002")
    return study_id


def loss_curves(run_id: str) -> None:
    """What a training job reports over its steps: a train and an eval loss, one step of
    the train loss non-finite (stored as null, a break in the line)."""
    import math

    from tunix_rt.store.db import session_scope
    from tunix_rt.store.metrics import record_points

    points: list[tuple[str, int, float | None]] = []
    for step in range(0, 401, 10):
        train = 2.3 * math.exp(-step / 120) + 0.35
        points.append(("train_loss", step, None if step == 200 else round(train, 4)))
        if step % 50 == 0:
            points.append(("eval_loss", step, round(train + 0.08, 4)))
    with session_scope() as session:
        record_points(session, run_id, points)


def main(argv: list[str]) -> int:
    workdir, items = Path(argv[0]).resolve(), int(argv[1])
    run_ids = extra_runs(workdir, items)
    loss_curves(run_ids[1])
    print(json.dumps({"run_ids": run_ids, "study_id": study(workdir, run_ids[1])}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
