"""``tunix-rt leaderboard``, ``baseline`` and ``gate``: ranking runs and gating them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tunix_rt.cli._args import add_command, add_group, policy, policy_args
from tunix_rt.cli.output import key_values, to_csv, to_json, to_table

BOARD_COLUMNS = ["rank", "run_id", "run_name", "score", "ci_low", "ci_high", "n_items", "coverage",
                 "n_unscored", "flag"]
HISTORY_COLUMNS = ["promoted_at", "run_id", "previous_run_id", "source", "reason"]
GATE_FIELDS = ["decision", "delta", "ci_low", "ci_high", "n_paired", "baseline_run_id",
               "run_id", "dataset", "judge", "reason"]


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from tunix_rt.quality import leaderboard
    from tunix_rt.store.db import session_scope

    with session_scope() as session:
        judge = leaderboard.resolve_judge(session, args.dataset, args.judge)
        page = leaderboard.leaderboard_page(session, args.dataset, judge, limit=args.limit,
                                            cursor=args.cursor)
    doc = page.to_dict()
    if args.format == "json":
        to_json(doc)
    elif args.format == "csv":
        to_csv(doc["entries"], BOARD_COLUMNS)
    else:
        print(f"{args.dataset} / {judge}")
        to_table(doc["entries"], BOARD_COLUMNS)
        if page.next_cursor:
            print(f"next page: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


def cmd_baseline_set(args: argparse.Namespace) -> int:
    from tunix_rt.quality import gating
    from tunix_rt.store.db import session_scope

    with session_scope() as session:
        judge = gating.resolve_gate_judge(session, args.run_id, args.judge)
        info = gating.set_baseline(session, args.run_id, judge, source="manual",
                                   reason=args.reason or "set from the command line")
    return _print_baseline(info, args.format)


def cmd_baseline_show(args: argparse.Namespace) -> int:
    from tunix_rt.errors import NotFoundError
    from tunix_rt.quality import gating, leaderboard
    from tunix_rt.store.db import session_scope

    with session_scope() as session:
        judge = leaderboard.resolve_judge(session, args.dataset, args.judge)
        info = gating.get_baseline(session, args.dataset, judge)
    if info is None:
        raise NotFoundError(f"dataset {args.dataset!r} has no baseline under judge {judge!r}: "
                            "set one with `tunix-rt baseline set RUN_ID`")
    return _print_baseline(info, args.format)


def _print_baseline(info: Any, fmt: str) -> int:
    doc = info.to_dict()
    if fmt == "json":
        to_json(doc)
        return 0
    history = doc.pop("history")
    key_values(doc)
    print("\nhistory:")
    to_table(history, HISTORY_COLUMNS)
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from tunix_rt.quality import gating
    from tunix_rt.store.db import session_scope

    gate_policy = policy(args)
    with session_scope() as session:
        judge = gating.resolve_gate_judge(session, args.run_id, args.judge)
        report = gating.gate_run(session, args.run_id, judge, gate_policy)
    if args.format == "json":
        to_json(report.to_dict())
    else:
        key_values({k: report.to_dict()[k] for k in GATE_FIELDS})
    return report.exit_code


def register(subparsers: Any) -> None:
    p = add_command(subparsers, "leaderboard", cmd_leaderboard, "ranked runs of a dataset",
                    formats=("table", "json", "csv"), short=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--judge", help="needed when the dataset has boards for several judges")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor", help="next_cursor of the previous page")

    baseline = add_group(subparsers, "baseline",
                         "the baseline a dataset's runs are gated against")
    p = add_command(baseline, "set", cmd_baseline_set, "make a run its dataset's baseline")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--judge")
    p.add_argument("--reason", help="recorded in the baseline's history")
    p = add_command(baseline, "show", cmd_baseline_show, "the current baseline and its history",
                    short=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--judge")

    p = add_command(subparsers, "gate", cmd_gate, "compare a run with its dataset's baseline, "
                    "item by item (exit 0 pass, 1 fail, 2 inconclusive or no baseline)")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--judge")
    policy_args(p)
