"""``tunix-rt demo``: the whole quality loop on sample data, from nothing.

SAMPLE DATA. The eval set is generated arithmetic word problems, and the three
"runs" are simulated: their responses are written by this module, not by a model.
Their skills differ and, as with real checkpoints of one model, they tend to get
the same items right (an item's difficulty is shared), so the paired gate has the
correlation it has in practice.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASET = "demo-arithmetic"
JUDGES = ["exact_match", "format"]
NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Farah", "Goro", "Hana", "Ivan", "Jun"]
THINGS = ["apples", "marbles", "stickers", "coins", "books", "shells", "cards", "pencils"]


@dataclass(frozen=True)
class SimulatedRun:
    name: str
    model: str
    skill: float        # items with difficulty below this are (mostly) solved
    trace_format: float  # share of responses in the <reasoning>/<answer> format
    config: dict[str, Any]


# Evaluated in this order: the first becomes the baseline, the second beats it,
# the third regresses.
RUNS = [
    SimulatedRun("sft-baseline", "gemma-3-1b-sft", 0.62, 0.90,
                 {"learning_rate": 2e-5, "epochs": 2, "method": "sft"}),
    SimulatedRun("grpo-step-800", "gemma-3-1b-grpo", 0.80, 0.98,
                 {"learning_rate": 3e-6, "steps": 800, "method": "grpo"}),
    SimulatedRun("grpo-lr-3e-5", "gemma-3-1b-grpo", 0.45, 0.65,
                 {"learning_rate": 3e-5, "steps": 800, "method": "grpo", "note": "diverged"}),
]


def make_eval_set(n_items: int, seed: int = 17) -> list[dict[str, Any]]:
    """Arithmetic word problems with reference answers and a difficulty in [0, 1]."""
    rng = random.Random(seed)
    items = []
    for i in range(n_items):
        who, what = rng.choice(NAMES), rng.choice(THINGS)
        op = rng.choice(["add", "sub", "mul", "two-step"])
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        if op == "add":
            prompt, answer = f"{who} has {a} {what} and gets {b} more. How many now?", a + b
        elif op == "sub":
            a, b = max(a, b), min(a, b)
            prompt, answer = f"{who} has {a} {what} and gives away {b}. How many are left?", a - b
        elif op == "mul":
            prompt, answer = f"{who} fills {c} boxes with {a} {what} each. How many in all?", a * c
        else:
            prompt = (f"{who} buys {c} packs of {a} {what}, then gives away {b}. "
                      "How many are left?")
            answer = a * c - b
        base = {"add": 0.0, "sub": 0.15, "mul": 0.3, "two-step": 0.5}[op]
        difficulty = min(1.0, base + rng.random() * 0.5)
        items.append({"id": f"arith-{i:04d}", "prompt": prompt, "reference": str(answer),
                      "difficulty": round(difficulty, 4), "working": f"{op} of {a}, {b}, {c}"})
    return items


def simulate_predictions(run: SimulatedRun, items: list[dict[str, Any]],
                         seed: int) -> list[dict[str, Any]]:
    """Responses of a simulated run: right where the item is easy enough for its skill."""
    rng = random.Random(seed)
    out = []
    for item in items:
        correct = item["difficulty"] + rng.gauss(0.0, 0.08) < run.skill
        answer = int(item["reference"])
        if not correct:
            answer += rng.choice([-10, -2, -1, 1, 2, 10])
        reasoning = f"This is {item['working']}, so the result is {answer}."
        style = rng.random()
        if style < run.trace_format:
            response = f"<reasoning>{reasoning}</reasoning><answer>{answer}</answer>"
        elif style < run.trace_format + (1 - run.trace_format) / 2:
            response = f"{reasoning}\n#### {answer}"
        else:
            response = f"{reasoning} The answer is {answer:,}."
        out.append({"id": item["id"], "prompt": item["prompt"], "response": response,
                    "reference": item["reference"], "metadata": {"simulated": True}})
    return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


# The demo's sweep: the built-in JAX trainable learning two-digit addition, where the
# learning rate decides everything (ASHA stops the hopeless trials early).
SWEEP_DATASET = "demo-addition"
SWEEP = {
    "name": "demo-sweep", "trainable": "builtin", "dataset": SWEEP_DATASET,
    "judge": "exact_match", "metric": "accuracy", "mode": "max", "num_samples": 1,
    "max_concurrent_trials": 2,
    "scheduler": {"type": "asha", "max_t": 20, "grace_period": 4, "reduction_factor": 2},
    "resources": {"cpu": 1},
    "param_space": {"learning_rate": {"grid": [0.0003, 0.003, 0.03, 0.1]}, "hidden_size": 64,
                    "steps": 200, "seed": 0},
}


def _reset_demo_dataset() -> int:
    """Remove what an earlier demo recorded, so the demo always starts from nothing."""
    from sqlalchemy import delete, select

    from tunix_rt.store.db import session_scope
    from tunix_rt.store.models import (Baseline, BaselinePromotion, LeaderboardBoard,
                                       LeaderboardEntry, Run, Study)

    datasets = (DATASET, SWEEP_DATASET)
    with session_scope() as session:
        ids = list(session.scalars(select(Run.id).where(Run.dataset.in_(datasets))))
        for model in (Baseline, BaselinePromotion, LeaderboardEntry, LeaderboardBoard):
            session.execute(delete(model).where(model.dataset.in_(datasets)))
        session.execute(delete(Run).where(Run.dataset.in_(datasets)))
        session.execute(delete(Study).where(Study.name == SWEEP["name"]))
    return len(ids)


def _run_sweep(say: Any) -> dict[str, Any]:
    """A small Ray Tune sweep through the tuning flow; its best trial goes through the loop."""
    from tunix_rt.flows.tuning import tune_flow
    from tunix_rt.tuning.sweep import parse_sweep

    sweep = parse_sweep(SWEEP, source="demo sweep")
    say(f"Tuning: {sweep.total_trials} trials of the built-in JAX trainable on Ray "
        "(two-digit addition; learning rate 3e-4 to 0.1, ASHA)")
    return tune_flow(sweep=sweep)


def run_demo(workdir: str = "tunix_rt_demo", items: int = 300,
             output_format: str = "table", tune: bool = True) -> int:
    """A small sweep, then three sample runs through the loop; print it all."""
    from tunix_rt.quality import gating, leaderboard
    from tunix_rt.store import runs
    from tunix_rt.store.db import session_scope
    from tunix_rt.cli.output import to_json, to_table
    from tunix_rt.quality.stats import GatePolicy

    say = (lambda *a: print(*a, file=sys.stderr)) if output_format == "json" else print
    root = Path(workdir).resolve()
    eval_set = make_eval_set(items)
    _write_jsonl(root / "eval_set.jsonl",
                 [{k: v for k, v in it.items() if k != "working"} for it in eval_set])
    removed = _reset_demo_dataset()
    if removed:
        say(f"removed the {removed} runs of the previous demo")
    tuning = _run_sweep(say) if tune else None
    if tuning is not None:
        say(f"  study {tuning['study_id']}: {tuning['trials']} trials; best accuracy "
            f"{tuning['best_value']:.3f}; its run's gate: "
            f"{tuning['runs'][0]['gate']['decision'] if tuning['runs'] else 'none'}")
    say(f"SAMPLE DATA: {items} arithmetic word problems and 3 simulated runs in {root}")

    run_ids = []
    with session_scope() as session:
        for i, sim in enumerate(RUNS):
            path = root / "runs" / sim.name / "predictions.jsonl"
            _write_jsonl(path, simulate_predictions(sim, eval_set, seed=100 + i))
            run = runs.register_run(session, name=sim.name, dataset=DATASET, model=sim.model,
                                    predictions_uri=path.as_uri(), config=sim.config,
                                    external_id=f"demo-{sim.name}")
            run_ids.append(run.id)

    from tunix_rt.flows.quality_loop import quality_loop

    policy = GatePolicy(auto_promote=True)
    results = [quality_loop(run_id=run_id, judges=JUDGES, policy=policy) for run_id in run_ids]

    with session_scope() as session:
        boards = {j: leaderboard.leaderboard_page(session, DATASET, j, limit=10).to_dict()
                  for j in JUDGES}
        baselines = {j: gating.get_baseline(session, DATASET, j) for j in JUDGES}
    gates = [{"run": sim.name, "judge": judge, **r["judges"][judge]["gate"],
              "promoted": r["judges"][judge]["promoted"]}
             for sim, r in zip(RUNS, results) for judge in JUDGES]
    if output_format == "json":
        to_json({"dataset": DATASET, "run_ids": run_ids, "leaderboards": boards, "gates": gates,
                 "baselines": {j: b.run_id if b else None for j, b in baselines.items()},
                 "tuning": tuning})
        return 0
    for judge, board in boards.items():
        print(f"\nLeaderboard: {DATASET} / {judge}")
        to_table(board["entries"], ["rank", "run_name", "score", "ci_low", "ci_high", "n_items",
                                    "coverage"])
    print("\nGate decisions (each run against the baseline of its time):")
    to_table(gates, ["run", "judge", "decision", "delta", "ci_low", "ci_high", "n_paired",
                     "promoted"])
    for judge, base in baselines.items():
        print(f"\nbaseline for {judge}: {base.run_name if base else 'none'}")
    if tuning is not None:
        print(f"\nTuning study {tuning['study_id']}: tunix-rt tune show {tuning['study_id']}")
    print(f"\nNext: tunix-rt leaderboard --dataset {DATASET} --judge exact_match\n"
          f"      tunix-rt gate {run_ids[2]} --judge exact_match   (exit code 1: fail)\n"
          f"      tunix-rt serve, then open http://127.0.0.1:8000/ (the leaderboards) and\n"
          f"      http://127.0.0.1:8000/runs/{run_ids[2]}/gate?judge=exact_match "
          f"(why it failed)")
    return 0


def cmd_demo(args: Any) -> int:
    from tunix_rt.cli.prefect_server import local_prefect_server

    with local_prefect_server():
        return run_demo(workdir=args.workdir, items=args.items, output_format=args.format,
                    tune=not args.no_tune)


def register(subparsers: Any) -> None:
    from tunix_rt.cli._args import add_command

    p = add_command(subparsers, "demo", cmd_demo,
                    "the whole loop on sample data, on the embedded default, from nothing")
    p.add_argument("--workdir", default="tunix_rt_demo",
                   help="where the sample eval set and predictions are written")
    p.add_argument("--items", type=int, default=300, help="items in the sample eval set")
    p.add_argument("--no-tune", action="store_true",
                   help="skip the opening Ray Tune sweep (the quality loop only)")
