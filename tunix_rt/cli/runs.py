"""``tunix-rt runs``: register, list, show and cancel training runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tunix_rt.cli._args import add_command, add_group, json_object
from tunix_rt.cli.output import key_values, to_json, to_table

RUN_COLUMNS = ["id", "name", "dataset", "model", "status", "origin", "created_at"]
EVALUATION_COLUMNS = ["judge", "judge_version", "status", "score", "ci_low", "ci_high",
                      "n_items", "coverage", "n_unscored", "error"]


def cmd_register(args: argparse.Namespace) -> int:
    from tunix_rt.store import runs
    from tunix_rt.store.db import session_scope
    from tunix_rt.store.models import RunStatus

    config = json_object(args.config, "--config")
    metrics = json_object(args.metrics, "--metrics")
    with session_scope() as session:
        run = runs.register_run(session, name=args.name, dataset=args.dataset, model=args.model,
                                predictions_uri=args.predictions, config=config, metrics=metrics,
                                external_id=args.external_id, status=RunStatus.completed)
        data = runs.run_to_dict(run)
    if args.format == "json":
        to_json(data)
    else:
        print(data["id"])
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from tunix_rt.store import runs
    from tunix_rt.store.db import session_scope

    with session_scope() as session:
        page, cursor = runs.list_runs(session, dataset=args.dataset, status=args.status,
                                      limit=args.limit, cursor=args.cursor)
        rows = [runs.run_to_dict(r) for r in page]
    if args.format == "json":
        to_json({"runs": rows, "next_cursor": cursor})
    else:
        to_table(rows, RUN_COLUMNS)
        if cursor:
            print(f"next page: --cursor {cursor}", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from tunix_rt.store import runs
    from tunix_rt.store.db import session_scope

    from tunix_rt.store.metrics import series

    with session_scope() as session:
        run = runs.get_run(session, args.run_id)
        data = runs.run_to_dict(run)
        data["evaluations"] = _evaluations(session, run.id)
        data["series"] = series(session, run.id)
    if args.format == "json":
        to_json(data)
    else:
        evaluations = data.pop("evaluations")
        curves = data.pop("series")
        key_values(data)
        if curves:
            print()
            for line in curve_lines(curves):
                print(line)
        print()
        to_table(evaluations, EVALUATION_COLUMNS)
    return 0


BARS = "▁▂▃▄▅▆▇█"


def curve_lines(curves: dict[str, list[dict[str, Any]]], width: int = 40) -> list[str]:
    """One line per metric series: its points, first and last values, and a sparkline of
    at most ``width`` bars (evenly spaced points; a NaN or infinity is a blank)."""
    lines = []
    name_width = max(len(name) for name in curves)
    for name, points in sorted(curves.items()):
        values = [p["value"] for p in points]
        finite = [v for v in values if v is not None]
        shown = values if len(values) <= width else [
            values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
        low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
        span = (high - low) or 1.0
        spark = "".join(" " if v is None else BARS[int((v - low) / span * (len(BARS) - 1))]
                        for v in shown)
        first, last = points[0], points[-1]
        lines.append(f"{name:<{name_width}}  {len(points)} points  step {first['step']}: "
                     f"{_fmt(first['value'])} -> step {last['step']}: {_fmt(last['value'])}"
                     f"  {spark}")
    return lines


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{value:.4g}"


def _evaluations(session: Any, run_id: str) -> list[dict[str, Any]]:
    """The run's evaluations, one dict each, by judge and judge version."""
    from sqlalchemy import select

    from tunix_rt.store.models import Dataset, Evaluation, coverage

    rows = session.execute(select(Evaluation, Dataset.version).outerjoin(
        Dataset, Dataset.id == Evaluation.dataset_id).where(Evaluation.run_id == run_id)
        .order_by(Evaluation.judge, Evaluation.judge_version))
    return [{"judge": e.judge, "judge_version": e.judge_version, "status": e.status,
             "score": e.score, "ci_low": e.ci_low, "ci_high": e.ci_high, "n_items": e.n_items,
             "n_missing": e.n_missing, "n_unscored": e.n_unscored, "n_extra": e.n_extra,
             "coverage": coverage(e.n_items, e.n_missing), "dataset_version": version,
             "agreement_rate": e.agreement_rate, "cost": e.cost, "error": e.error,
             "finished_at": e.finished_at.isoformat()} for e, version in rows]


def cmd_cancel(args: argparse.Namespace) -> int:
    from tunix_rt.store import runs
    from tunix_rt.store.db import session_scope

    with session_scope() as session:
        run = runs.request_cancel(session, args.run_id)
        data = runs.run_to_dict(run)
    if args.format == "json":
        to_json(data)
    else:
        print(f"cancellation requested for run {data['id']}; its job stops within seconds")
    return 0


def register(subparsers: Any) -> None:
    runs = add_group(subparsers, "runs", "training runs")
    p = add_command(runs, "register", cmd_register, "record a completed run; prints its id")
    p.add_argument("--name", required=True)
    p.add_argument("--dataset", required=True, help="the eval set the predictions answer")
    p.add_argument("--model", required=True)
    p.add_argument("--predictions", required=True, metavar="URI",
                   help="JSON Lines predictions: a path, file://, s3:// ... (fsspec)")
    p.add_argument("--config", metavar="JSON", help="training config, a JSON object")
    p.add_argument("--metrics", metavar="JSON", help="training metrics, a JSON object")
    p.add_argument("--external-id", help="the training job's own id (unique)")
    p = add_command(runs, "list", cmd_list, "list runs, newest first", short=True)
    p.add_argument("--dataset")
    p.add_argument("--status", choices=["pending", "running", "completed", "failed"])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor")
    p = add_command(runs, "show", cmd_show, "one run with its evaluations", short=True)
    p.add_argument("run_id", metavar="RUN_ID")
    p = add_command(runs, "cancel", cmd_cancel, "stop the job of a run `tunix-rt train` launched")
    p.add_argument("run_id", metavar="RUN_ID")
