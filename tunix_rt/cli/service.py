"""``tunix-rt serve``, ``up``, ``sweep`` and ``notify``: the service and its upkeep.

``serve`` and ``up`` hand over to :mod:`tunix_rt.cli.stack`; ``sweep`` runs the
sweeper flow once; ``notify`` is the webhook a shell-driven trainer sends.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tunix_rt.cli import EXIT_ERROR, CliError
from tunix_rt.cli._args import add_command, json_object
from tunix_rt.cli.output import to_json


def cmd_serve(args: argparse.Namespace) -> int:
    from tunix_rt.cli.stack import serve

    if args.workers < 1:
        raise CliError(f"--workers: {args.workers} is not a number of processes (1 or more)")
    serve(args.host, args.port, workers=args.workers, dispatch=args.dispatch,
          access_log=args.access_log)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from tunix_rt.cli.stack import up

    return up(host=args.host, port=args.port, prefect_port=args.prefect_port, logs=args.logs,
              prefect_db=args.prefect_db)


def cmd_sweep(args: argparse.Namespace) -> int:
    from tunix_rt.flows.sweeper import sweep_owed_loops

    count = sweep_owed_loops(older_than_minutes=args.older_than_minutes, limit=args.limit)
    if args.format == "json":
        to_json({"redispatched": count})
    else:
        print(f"re-dispatched {count} owed quality loop(s)")
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    from tunix_rt.client import notify

    result = notify(f"run.{args.event}", external_id=args.external_id, name=args.name,
                    dataset=args.dataset, model=args.model, predictions_uri=args.predictions,
                    config=json_object(args.config, "--config"),
                    metrics=json_object(args.metrics, "--metrics"), error=args.error,
                    url=args.url)
    if args.format == "json":
        to_json(result.to_dict() if hasattr(result, "to_dict") else result.__dict__)
    elif result.ok:
        print(f"delivered {result.delivery_id}: HTTP {result.status}")
    if not result.ok:
        print(f"tunix-rt: error: notification not delivered after {result.attempts} "
              f"attempt(s): {result.error}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def register(subparsers: Any) -> None:
    p = add_command(subparsers, "serve", cmd_serve, "the HTTP service: training webhook, API, "
                    "leaderboard page", formats=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1,
                   help="processes serving the port (default 1); each stores its deliveries")
    p.add_argument("--no-dispatch", dest="dispatch", action="store_false",
                   help="only store: the loops completed runs owe stay in the outbox for the "
                   "sweeper or a worker elsewhere (an ingest-only receiver)")
    p.add_argument("--no-access-log", dest="access_log", action="store_false",
                   help="no log line per request")

    p = add_command(subparsers, "up", cmd_up, "a local stack: Prefect server, deployments, a "
                    "worker and the service; Ctrl-C stops it all", formats=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="the tunix-rt service's port")
    p.add_argument("--prefect-port", type=int, default=4200)
    p.add_argument("--logs", default=".tunix-rt/logs", help="where the children's logs go")
    p.add_argument("--prefect-db", choices=("sqlite", "postgres"), default="sqlite",
                   help="the Prefect server's database: SQLite under PREFECT_HOME, or "
                        "<database>_prefect beside tunix-rt's PostgreSQL database (created "
                        "if missing; faster: no 2 s retries on SQLite's busy errors)")

    p = add_command(subparsers, "sweep", cmd_sweep, "start again the quality loops a crash or "
                    "a lost event left owed (the sweeper flow)")
    p.add_argument("--older-than-minutes", type=float, default=10.0)
    p.add_argument("--limit", type=int, default=100)

    _register_notify(subparsers)


def _register_notify(subparsers: Any) -> None:
    p = add_command(subparsers, "notify", cmd_notify, "tell a tunix-rt service about a training "
                    "run (a signed webhook; for shell-driven trainers)")
    p.add_argument("event", choices=["started", "completed", "failed"])
    p.add_argument("--external-id", required=True, help="the training job's own id")
    p.add_argument("--name")
    p.add_argument("--dataset")
    p.add_argument("--model")
    p.add_argument("--predictions", metavar="URI")
    p.add_argument("--config", metavar="JSON")
    p.add_argument("--metrics", metavar="JSON")
    p.add_argument("--error", help="why the run failed (with `failed`)")
    p.add_argument("--url", help="the service's base URL (default: $TUNIX_RT_URL)")
