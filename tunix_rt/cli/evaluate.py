"""``tunix-rt evaluate``: one run through the quality loop (score, leaderboard, gate).

It starts Prefect: the flow is imported when the command runs, once the judges and the
run are checked, so a bad judge or run id fails fast. Without ``PREFECT_API_URL`` the
loop talks to a local Prefect server that this process starts and that dies with it
(:func:`local_prefect_server`), as Prefect's own ephemeral server does not.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tunix_rt import procs
from tunix_rt.cli import CliError
from tunix_rt.cli._args import add_command, policy, policy_args
from tunix_rt.cli.judges import check_judges
from tunix_rt.cli.output import to_json


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


SERVER_STOP_S = 10  # how long the local server gets to stop on SIGTERM before SIGKILL
SERVER_STARTS = 3  # attempts, each on a fresh port (another process may take the one chosen)


@contextmanager
def local_prefect_server() -> Iterator[str | None]:
    """Prefect's API for this process: the configured one, else a server that dies with us.

    Without ``PREFECT_API_URL`` Prefect would start its ephemeral server as a child
    that outlives a parent killed outright (SIGKILL, the OOM killer): each such crash
    left a server running, holding a port and Prefect's database. This starts the
    same server (Prefect's app under uvicorn, no UI) with a parent-death signal, and
    points this process's Prefect settings at it for the block; it stops when the
    process exits. Yields its API URL, or None when a server is configured or ephemeral
    mode is turned off (Prefect decides then).
    """
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED,
                                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  temporary_settings)

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield None
        return
    import tempfile

    log = tempfile.TemporaryFile()
    server, url = _start_prefect_server(
        log, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    # Stopped at exit, as Prefect stops its own: after Prefect's log and event workers
    # (threading's exit hooks run first) have sent what they hold.
    atexit.register(_stop_prefect_server, server, log)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


def _stop_prefect_server(server: subprocess.Popen, log: Any) -> None:
    procs.stop_group(server, SERVER_STOP_S)
    log.close()


def _start_prefect_server(log: Any, timeout_s: float) -> tuple[subprocess.Popen, str]:
    """A Prefect server on a free loopback port, healthy; (process, API URL)."""
    import urllib.request

    import prefect
    from prefect.settings import get_current_settings

    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0",
           # What Prefect's own ephemeral server is told: serve only, this process's API.
           "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    for _ in range(SERVER_STARTS):
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=procs.parent_death_signal(signal.SIGTERM))
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + timeout_s
        while server.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        return server, url
            except OSError:
                pass
            time.sleep(0.1)
        if server.poll() is None:  # alive but not answering: not worth another port
            procs.stop_group(server, SERVER_STOP_S)
            break
    log.seek(0)
    output = log.read().decode(errors="replace").strip()[-2000:]
    log.close()
    raise CliError(f"the local Prefect server did not start (exit code {server.returncode}, "
                       f"{timeout_s:g} s allowed; set PREFECT_API_URL to use a running server)"
                       + (f": {output}" if output else ""))


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
