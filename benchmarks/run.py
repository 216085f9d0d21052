"""Run the benchmarks: ``python -m benchmarks.run [--quick]`` (``make bench``).

Each benchmark times tunix-rt and a naive alternative in this one process, on the
same data, and prints both with the ratio naive / ours (above 1: ours is faster).
Results also go to benchmarks/results.json (or --output). See benchmarks/README.md.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Before anything imports Prefect: a private Prefect home, no analytics, quiet logs.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="tunix-rt-bench-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("TUNIX_RT_DATABASE_URL", None)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.common import FULL, QUICK, Result, Scale, databases, fmt_seconds  # noqa: E402

ALL = ["cli_startup", "cli_cold_start", "gate_bootstrap", "leaderboard", "verdict_store", "flow_overhead",
       "llm_throughput", "tuning", "board_update", "webhook_ingest", "flow_fixed_cost",
       "pages", "score_throughput", "score_memory", "webhook_to_gate"]
DEFAULT_OUTPUT = Path(__file__).with_name("results.json")


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        gpu = "yes" if shutil.which("nvidia-smi") else "none"
    except Exception:  # noqa: BLE001
        gpu = "unknown"
    return {"cores": os.cpu_count(), "cpu": cpu, "gpu": gpu, "platform": platform.platform(),
            "python": platform.python_version()}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("sqlalchemy", "psycopg", "numpy", "prefect"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _pg_version(url: str) -> str:
    from sqlalchemy import text

    from tunix_rt.store.db import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:
        v = conn.execute(text("SHOW server_version")).scalar()
    engine.dispose()
    return str(v)


def table(results: list[Result]) -> str:
    head = ["benchmark", "db", "size", "ours", "naive", "ratio", "naive is"]
    rows = [[r.benchmark, r.backend, r.size, fmt_seconds(r.ours_s), fmt_seconds(r.naive_s),
             f"{r.ratio:.1f}x" if r.ratio >= 1 else f"{r.ratio:.2f}x", r.naive_label]
            for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    right = {3, 4, 5}

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2)
                         for i, w in enumerate(widths)) + "|"
    out = [line(head), sep, *(line(r) for r in rows)]
    notes = [f"- {r.benchmark} ({r.backend}): {r.notes}" + (f". Target {r.target}" if r.target
                                                            else "")
             for r in results if r.notes or r.target]
    return "\n".join(out + [""] + notes)


def _merged(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """This run's results over those already in ``path``: a benchmark run again (``--only``)
    replaces its own rows and keeps the others, each row saying when it was measured."""
    for row in doc["results"]:
        row.setdefault("measured", doc["date"])
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return doc
    if previous.get("quick") != doc["quick"]:
        return doc  # a quick run never mixes with a full one
    rerun = {row["benchmark"] for row in doc["results"]}
    kept = [{**row, "measured": row.get("measured", previous.get("date"))}
            for row in previous.get("results", []) if row.get("benchmark") not in rerun]
    return {**doc, "results": kept + doc["results"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="smoke sizes (about a minute) instead of the full run")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(ALL)}")
    parser.add_argument("--no-postgres", action="store_true",
                        help="skip PostgreSQL (and the flow benchmark, which uses it)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"where the JSON goes (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    scale: Scale = QUICK if args.quick else FULL
    chosen = ALL if not args.only else [s.strip() for s in args.only.split(",")]
    unknown = set(chosen) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    results: list[Result] = []
    load_before = os.getloadavg()
    started = time.perf_counter()
    info: dict[str, Any] = {}

    def step(name: str, fn: Callable[[], list[Result]]) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {name} ...", file=sys.stderr,
              flush=True)
        got = fn()
        results.extend(got)
        for r in got:
            print(f"           {r.benchmark} ({r.backend}): ours {fmt_seconds(r.ours_s)}, "
                  f"naive {fmt_seconds(r.naive_s)}, ratio {r.ratio:.2f}", file=sys.stderr,
                  flush=True)

    with databases(want_postgres=not args.no_postgres) as dbs:
        backends = [b for b in ("postgresql", "sqlite") if b in dbs]
        if "postgresql" in dbs:
            info["postgresql"] = _pg_version(dbs["postgresql"]("version"))
        if "cli_startup" in chosen:
            from benchmarks import cli_startup

            step("cli_startup", lambda: cli_startup.run(scale))
        if "cli_cold_start" in chosen:
            from benchmarks import cli_startup

            step("cli_cold_start", lambda: cli_startup.run_cold_start(scale))
        if "gate_bootstrap" in chosen:
            from benchmarks import gate

            step("gate_bootstrap", lambda: gate.run(scale))
        if "llm_throughput" in chosen:
            from benchmarks import llm_throughput

            step("llm_throughput", lambda: llm_throughput.run(scale))
        if "leaderboard" in chosen:
            from benchmarks import board

            for b in backends:
                step(f"leaderboard ({b})", lambda b=b: board.run(dbs[b]("board"), b, scale))
        if "board_update" in chosen and "postgresql" in dbs:
            from benchmarks import board

            step("board_update", lambda: board.run_update(dbs["postgresql"]("busy"), scale))
        if "verdict_store" in chosen:
            from benchmarks import verdicts

            for b in backends:
                step(f"verdict_store ({b})", lambda b=b: verdicts.run(dbs[b]("verdicts"), b,
                                                                     scale))
        if "gate_compare" in chosen:
            from benchmarks import compare

            step("gate_compare", lambda: compare.run(scale, want_postgres=not args.no_postgres))
        if "flow_fixed_cost" in chosen:
            from benchmarks import flow_fixed_cost

            step("flow_fixed_cost", lambda: flow_fixed_cost.run(scale))
        if "tuning" in chosen and "postgresql" in dbs:
            from benchmarks import tuning

            step("tuning", lambda: tuning.run(dbs["postgresql"]("tuning"), scale))
        if "webhook_ingest" in chosen and "postgresql" in dbs:
            from benchmarks import ingest

            step("webhook_ingest", lambda: ingest.run(dbs["postgresql"], scale))
        if "pages" in chosen:
            from benchmarks import pages

            for b in backends:
                step(f"pages ({b})", lambda b=b: pages.run(dbs[b], b, scale))
        if "score_throughput" in chosen and "postgresql" in dbs:
            from benchmarks import scoring

            step("score_throughput",
                 lambda: scoring.run_throughput(dbs["postgresql"]("scoring"), scale))
        if "score_memory" in chosen and "postgresql" in dbs:
            from benchmarks import scoring

            step("score_memory", lambda: scoring.run_memory(dbs["postgresql"]("memory"), scale))
        if "flow_overhead" in chosen and "postgresql" in dbs:
            from benchmarks import flow

            step("flow_overhead", lambda: flow.run(dbs["postgresql"]("flow"), scale))

        if "webhook_to_gate" in chosen and "postgresql" in dbs:
            from benchmarks import webhook_to_gate

            step("webhook_to_gate",
                 lambda: webhook_to_gate.run(dbs["postgresql"], scale, dbs["sqlite"]))

    total = time.perf_counter() - started
    load_after = os.getloadavg()
    when = datetime.now(timezone.utc)
    print()
    print(f"tunix-rt benchmarks, {'quick' if scale.quick else 'full'} run, "
          f"{when:%Y-%m-%d %H:%M} UTC, {total:.0f} s; ratio = naive / ours")
    machine = _machine()
    print(f"machine: {machine['cores']} cores ({machine['cpu']}), GPU: {machine['gpu']}; "
          f"Python {machine['python']}, "
          + ", ".join(f"{k} {v}" for k, v in {**_versions(), **info}.items()))
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          "(after counts the benchmark's own PostgreSQL and Prefect server)"
          + ("; other processes were using the CPUs: absolute times may be inflated"
             if load_before[0] > 1.0 else ""))
    print()
    print(table(results))
    doc = {"date": when.isoformat(timespec="seconds"), "quick": scale.quick,
           "total_s": round(total, 1), "machine": machine,
           "loadavg_1min": {"before": round(load_before[0], 2),
                            "after": round(load_after[0], 2)},
           "versions": {**_versions(), **info},
           "scale": scale.__dict__, "results": [r.to_dict() for r in results]}
    args.output.write_text(json.dumps(_merged(args.output, doc), indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
