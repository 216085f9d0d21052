"""``tunix-rt tune``: a Ray Tune sweep through the tuning flow, its resumption, and
``tune show STUDY`` to list a study's trials.

The sweep starts Prefect and Ray when it runs; ``tune show`` needs pandas, imported
when it runs too.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tunix_rt.cli import EXIT_INTERRUPTED, CliError
from tunix_rt.cli._args import add_command
from tunix_rt.cli.output import key_values, to_json


def cmd_tune(args: argparse.Namespace) -> int:
    if args.what:
        if args.what[0] != "show" or len(args.what) != 2:
            raise CliError("usage: tunix-rt tune --config SWEEP.yaml | tunix-rt tune show STUDY")
        return _show(args.what[1], args.format)
    if not args.config and not args.resume:
        raise CliError("tune needs --config SWEEP.yaml (or --resume STUDY)")
    sweep, resume = _sweep(args)
    print(f"tune: {sweep.name}: {sweep.total_trials} trial(s), {sweep.max_concurrent_trials} at "
          f"a time, {sweep.resources} each", file=sys.stderr)
    from tunix_rt.cli.prefect_server import local_prefect_server
    from tunix_rt.flows.tuning import tune_flow

    with local_prefect_server():
        result = tune_flow(sweep=sweep, resume_study=resume)
    if args.format == "json":
        to_json(result)
        return EXIT_INTERRUPTED if result["unfinished"] else 0
    if result["unfinished"]:
        print(f"tune: interrupted with {result['unfinished']} trial(s) unfinished; resume with "
              f"`tunix-rt tune --resume {result['study_id']}`", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_study(result, sweep.metric)
    return 0


def _sweep(args: argparse.Namespace) -> tuple[Any, str | None]:
    """(the sweep, the id of the study it resumes or None) from --config or --resume."""
    from tunix_rt.tuning.sweep import Sweep, load_sweep

    if args.resume:
        from tunix_rt.store.db import session_scope
        from tunix_rt.tuning import studies

        with session_scope() as session:
            study = studies.get_study(session, args.resume)
            sweep, resume = Sweep.model_validate(study.spec), study.id
    else:
        sweep, resume = load_sweep(args.config), None
    if args.smoke:
        sweep = sweep.model_copy(update={"num_samples": 1, "time_budget_s": 120})
    return sweep, resume


def _print_study(result: dict[str, Any], metric: str) -> None:
    print(f"study {result['study_id']}: {result['trials']} trials, {result['errors']} failed; "
          f"best {metric} {result['best_value']} (trial {result['best_trial_id']})")
    for run in result["runs"]:
        print(f"  run {run['run_id']}: gate {run['gate']['decision']} - {run['gate']['reason']}")
    print(f"trials: tunix-rt tune show {result['study_id']}")


def _show(study_ref: str, fmt: str) -> int:
    """``tune show STUDY``: the study, then its trials (a pandas frame, printed as is)."""
    from tunix_rt.store.db import session_scope
    from tunix_rt.tuning import studies

    with session_scope() as session:
        study = studies.get_study(session, study_ref)
        frame = studies.trials_frame(session, study.id)
        head = {"study_id": study.id, "name": study.name, "status": study.status,
                "metric": study.metric, "mode": study.mode, "best_trial_id": study.best_trial_id}
    if fmt == "json":
        to_json({**head, "trials": json.loads(frame.to_json(orient="records", date_format="iso"))})
    elif fmt == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    else:
        key_values(head)
        print()
        print(frame.to_string(index=False) if len(frame) else "(no trials)")
    return 0


def register(subparsers: Any) -> None:
    p = add_command(subparsers, "tune", cmd_tune, "a Ray Tune sweep through the tuning flow "
                    "(every trial stored), or `tune show STUDY` to list its trials",
                    formats=("table", "json", "csv"))
    p.add_argument("what", nargs="*", metavar="show STUDY", help="list a study's trials")
    p.add_argument("--config", metavar="SWEEP.yaml", help="the sweep file")
    p.add_argument("--resume", metavar="STUDY", help="resume a study's unfinished trials")
    p.add_argument("--smoke", action="store_true",
                   help="one sample of each grid point, for a quick check of a sweep file")
