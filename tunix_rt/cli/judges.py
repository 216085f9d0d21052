"""``tunix-rt judges``: the judges that can be named, and their agreement with people.

Also the check ``evaluate`` makes of the judges it is given, before Prefect starts.
"""

from __future__ import annotations

import argparse
from typing import Any

from tunix_rt.cli._args import add_command, add_group
from tunix_rt.cli.output import key_values, to_json, to_table

JUDGE_COLUMNS = ["name", "version", "requires_reference", "caches", "samples", "costs",
                 "description"]


def cmd_list(args: argparse.Namespace) -> int:
    from tunix_rt.judges import list_judges
    from tunix_rt.quality.judge_config import ensure_configured_judges

    ensure_configured_judges()
    # caches: re-scoring reuses bought verdicts; samples: self-consistency can be
    # measured (--repeat); costs: the evaluation records what scoring spent.
    rows = [{"name": s.name, "version": s.version, "requires_reference": s.requires_reference,
             **s.capabilities(), "description": s.description} for s in list_judges()]
    if args.format == "json":
        to_json({"judges": rows})
    else:
        to_table(rows, JUDGE_COLUMNS)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    return calibrate_command(args.judge, args.labels, args.format)


def calibrate_command(judge: str, labels_path: str, fmt: str) -> int:
    """``tunix-rt judges calibrate``: print the calibration as a table or JSON; 0."""
    from tunix_rt.errors import InvalidInputError
    from tunix_rt.quality.calibrate import calibrate

    if fmt not in ("table", "json"):
        raise InvalidInputError(f"unknown format {fmt!r}; use table or json")
    result = calibrate(judge, labels_path)
    if fmt == "json":
        to_json(result.to_dict())
    else:
        key_values(result.to_dict())
    return 0


def check_judges(names: list[str]) -> None:
    """Raise, listing the registered judges, unless every name is one."""
    from tunix_rt.judges import judge_spec
    from tunix_rt.quality.judge_config import ensure_configured_judges

    ensure_configured_judges()
    for name in names:
        judge_spec(name)


def register(subparsers: Any) -> None:
    judges = add_group(subparsers, "judges", "the judges")
    add_command(judges, "list", cmd_list, "the judges that can be named, with versions",
                short=True)
    p = add_command(judges, "calibrate", cmd_calibrate, "agreement of a judge with human "
                    "labels: accuracy and Cohen's kappa")
    p.add_argument("--judge", required=True, metavar="NAME")
    p.add_argument("--labels", required=True, metavar="FILE",
                   help='JSON Lines of predictions items, each with "label": true/false')
