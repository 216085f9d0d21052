"""``tunix-rt train``: launch a training job from a run file, then judge, rank and gate it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tunix_rt.cli import CliError
from tunix_rt.cli._args import add_command
from tunix_rt.cli.output import to_json


def cmd_train(args: argparse.Namespace) -> int:
    from tunix_rt.training.runfile import load_run_spec

    spec = load_run_spec(args.config)
    if args.dry_run:
        spec.check()  # fail here, before Prefect starts, on what a dry run would refuse
    from tunix_rt.cli.prefect_server import local_prefect_server
    from tunix_rt.flows.training import train_flow

    with local_prefect_server():
        state = train_flow(spec=spec, dry_run=args.dry_run, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        from tunix_rt.errors import TunixRtError

        if isinstance(result, TunixRtError):
            raise result
        raise CliError(f"the train flow failed: {result}")
    if args.format == "json":
        to_json(result)
    else:
        print(result["run_id"])
        if result["dry_run"]:
            print("dry run: validated and recorded; nothing trained", file=sys.stderr)
        else:
            gate = result["gate"]
            print(f"gate: {gate['decision']} - {gate['reason']}")
    return 0


def register(subparsers: Any) -> None:
    p = add_command(subparsers, "train", cmd_train, "launch a training job (a run file), then "
                    "judge, rank and gate it; exits non-zero when the job fails")
    p.add_argument("--config", required=True, metavar="RUN.yaml", help="the run file")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and record a dry-run run; train nothing")
