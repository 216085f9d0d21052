"""``tunix-rt evaluate``: one run through the quality loop (score, leaderboard, gate).

It starts Prefect: the flow is imported when the command runs, once the judges and the
run are checked, so a bad judge or run id fails fast. Without ``PREFECT_API_URL`` the
loop talks to a local Prefect server that dies with this process
(:func:`tunix_rt.cli.prefect_server.local_prefect_server`).
"""

from __future__ import annotations

import argparse
from typing import Any

from tunix_rt.cli import CliError
from tunix_rt.cli._args import add_command, policy, policy_args
from tunix_rt.cli.judges import check_judges
from tunix_rt.cli.output import to_json
from tunix_rt.cli.prefect_server import local_prefect_server


def cmd_evaluate(args: argparse.Namespace) -> int:
    if not 1 <= args.repeat <= 20:
        raise CliError(f"--repeat must be between 1 and 20, got {args.repeat}")
    judges = args.judge or None
    check_judges(judges or [])
    gate_policy = policy(args, auto_promote=args.auto_promote)
    run_id = _evaluable_run_id(args.run_id)
    from tunix_rt.flows.quality_loop import quality_loop

    chosen = {"judges": judges} if judges else {}  # else the flow's default judges
    with local_prefect_server():
        result = quality_loop(run_id=run_id, policy=gate_policy, force=args.force,
                              repeat=args.repeat, **chosen)
    if args.format == "json":
        to_json(result)
    else:
        _print_outcomes(result["judges"])
    return 0


def _evaluable_run_id(run_ref: str) -> str:
    """The run's id; fails fast, before Prefect starts, on a bad or unevaluable run."""
    from tunix_rt.store import runs
    from tunix_rt.store.db import session_scope

    with session_scope() as session:
        run = runs.get_run(session, run_ref)
        runs.ensure_evaluable(run)
        return run.id


def _print_outcomes(outcomes: dict[str, Any]) -> None:
    for judge, outcome in outcomes.items():
        ev, gate = outcome["evaluation"], outcome["gate"]
        if ev.get("dataset_created"):
            print(f"dataset {ev['dataset']} registered implicitly from this run "
                  f"({ev['n_items']} items): later runs are scored over these items and "
                  "references")
        reused = " (stored evaluation reused; --force to re-score)" if ev["reused"] else ""
        print(f"{judge} {ev['judge_version']}: score {_num(ev['score'])} "
              f"[{_num(ev['ci_low'])}, {_num(ev['ci_high'])}] over {ev['n_items']} items"
              f"{_coverage(ev)}{reused}")
        print(f"  gate: {gate['decision']} - {gate['reason']}")
        if outcome["promoted"]:
            print(f"  promoted to baseline: {outcome['promoted']}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _coverage(ev: dict[str, Any]) -> str:
    """``; 250 missing (scored 0), 3 unscored by the judge`` or nothing."""
    parts = []
    if ev.get("n_missing") is None:
        parts.append("coverage unknown")
    elif ev["n_missing"]:
        parts.append(f"{ev['n_missing']} missing (scored 0)")
    if ev["n_unscored"]:
        parts.append(f"{ev['n_unscored']} unscored by the judge")
    if ev.get("n_extra"):
        parts.append(f"{ev['n_extra']} lines outside the dataset, not scored")
    return "; " + ", ".join(parts) if parts else ""


def register(subparsers: Any) -> None:
    p = add_command(subparsers, "evaluate", cmd_evaluate,
                    "run the quality loop (score, leaderboard, gate) for one run through Prefect")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--judge", action="append", metavar="NAME",
                   help="a registered judge; repeat for several (default: exact_match)")
    p.add_argument("--force", action="store_true", help="score again even if already evaluated")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="grade a sample K times and store the agreement rate (llm judges)")
    p.add_argument("--auto-promote", action="store_true",
                   help="make the run the baseline when there is none, or when it passes "
                        "with a better score")
    policy_args(p)
