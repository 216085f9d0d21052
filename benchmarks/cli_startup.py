"""Benchmark 1: wall time of a read command in a fresh process.

Ours: the installed ``tunix-rt leaderboard --dataset x --format json``, which does
not import Prefect. Naive: the same ``main()`` in a process that imports Prefect
first, as a CLI that imported its flows at the top would.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import JUDGE, Result, Scale, bulk_board
from tunix_rt.store import db
from tunix_rt.store.db import session_scope
from tunix_rt.quality.leaderboard import rebuild_leaderboard

DATASET = "x"
BOARD_RUNS = 50
TARGET_S = 1.0


def _tunix_rt_command() -> list[str]:
    script = Path(sys.executable).with_name("tunix-rt")
    if script.exists():
        return [str(script)]
    found = shutil.which("tunix-rt")
    if found:
        return [found]
    return [sys.executable, "-m", "tunix_rt.cli"]


def _board_database(folder: Path) -> str:
    """A migrated SQLite file in ``folder`` with a board of BOARD_RUNS runs; its URL."""
    url = f"sqlite:///{folder / 'board.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    bulk_board(engine, DATASET, BOARD_RUNS)
    with session_scope(engine) as session:
        rebuild_leaderboard(session, DATASET, JUDGE)
    engine.dispose()
    return url


def _time(cmd: list[str], env: dict[str, str], cwd: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:2]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def run(scale: Scale) -> list[Result]:
    tmp = Path(tempfile.mkdtemp(prefix="tunix-rt-bench-cli-"))
    try:
        url = _board_database(tmp)

        env = dict(os.environ, TUNIX_RT_DATABASE_URL=url,
                   PREFECT_HOME=str(tmp / "prefect-home"),
                   PREFECT_SERVER_ANALYTICS_ENABLED="false")
        args = ["leaderboard", "--dataset", DATASET, "--format", "json"]
        ours_cmd = [*_tunix_rt_command(), *args]
        naive_cmd = [sys.executable, "-c",
                     "import sys, prefect; from tunix_rt.cli import main; "
                     f"sys.exit(main({args!r}))"]
        # Warm-up: bytecode caches and the page cache, for both.
        _, out_ours = _time(ours_cmd, env, str(tmp))
        _, out_naive = _time(naive_cmd, env, str(tmp))
        assert json.loads(out_ours) == json.loads(out_naive), "the two outputs differ"
        assert len(json.loads(out_ours)["entries"]) == 20
        t_ours, t_naive = [], []
        for _ in range(scale.cli_reps):
            t_ours.append(_time(ours_cmd, env, str(tmp))[0])
            t_naive.append(_time(naive_cmd, env, str(tmp))[0])
        ours, naive = statistics.median(t_ours), statistics.median(t_naive)
        met = "met" if ours < TARGET_S else "NOT MET"
        return [Result(
            "cli_startup", "sqlite", f"{BOARD_RUNS} runs, first page", ours, naive,
            "same main() after `import prefect`",
            notes=f"subprocess wall time, median of {scale.cli_reps} (slowest ours "
                  f"{max(t_ours):.2f} s)",
            target=f"read command < {TARGET_S:g} s (median): {met}",
            extra={"ours_runs_s": t_ours, "naive_runs_s": t_naive})]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# cli_cold_start: a read command's start-up against the floor set by its own database
# layer. The baseline is `python -c 'import sqlalchemy'` in a fresh process; the target
# is a ratio, so a slower machine moves both sides.
COLD_TARGET_RATIO = 2.0
_PACKAGES = {"tunix_rt": "tunix_rt", "tunix_rt/flows": "flows", "tunix_rt/tasks": "tasks",
             "tunix_rt/judges": "judges", "tunix_rt/migrations": "migrations"}


def _source_tree(dest: Path) -> Path:
    """The package laid out as installed (pyproject's package-dir), without bytecode.

    Put first on PYTHONPATH, it shadows the editable install (whose finder comes after
    the path finder), so "no bytecode of the project" can be measured without touching
    the checkout's own __pycache__ folders.
    """
    root = Path(__file__).resolve().parents[1]
    for target, source in _PACKAGES.items():
        shutil.copytree(root / source, dest / target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _cold(cmd: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Wall and CPU seconds (the child's user + system) of one run. On a loaded machine the
    CPU time is the steadier figure: waiting for a core inflates only the wall time."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    elapsed = _time(cmd, env, cwd)[0]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_cold_start(scale: Scale) -> list[Result]:
    """`tunix-rt runs list` and `leaderboard` vs `import sqlalchemy`, three ways:
    PYTHONDONTWRITEBYTECODE set with and without the project's bytecode on disk (an
    editable install on these machines; `make install` now compiles it), and unset."""
    import compileall

    tmp = Path(tempfile.mkdtemp(prefix="tunix-rt-bench-cold-"))
    try:
        url = _board_database(tmp)
        tree = _source_tree(tmp / "src")
        base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        base.update(TUNIX_RT_DATABASE_URL=url, PREFECT_HOME=str(tmp / "prefect-home"),
                    PREFECT_SERVER_ANALYTICS_ENABLED="false")
        commands = {"runs list": [sys.executable, "-m", "tunix_rt.cli", "runs", "list"],
                    "leaderboard": [sys.executable, "-m", "tunix_rt.cli", "leaderboard",
                                    "--dataset", DATASET, "--format", "json"]}
        floor = [sys.executable, "-c", "import sqlalchemy"]
        reps = max(3, scale.cli_reps)
        results = []
        for mode in ("no project bytecode", "project compiled", "bytecode written"):
            env = dict(base, PYTHONPATH=str(tree))
            if mode != "bytecode written":
                env["PYTHONDONTWRITEBYTECODE"] = "1"
            if mode == "project compiled":
                compileall.compile_dir(str(tree), quiet=1)
            for name, cmd in commands.items():
                _time(cmd, env, str(tmp))  # warm the page cache (and, unset, write bytecode)
                _time(floor, env, str(tmp))
                ours, naive, ours_cpu, naive_cpu = [], [], [], []
                for _ in range(reps):  # alternate, so drift hits both alike
                    for walls, cpus, argv in ((ours, ours_cpu, cmd), (naive, naive_cpu, floor)):
                        wall, cpu = _cold(argv, env, str(tmp))
                        walls.append(wall)
                        cpus.append(cpu)
                o, n = statistics.median(ours), statistics.median(naive)
                ratio = o / n
                cpu_ratio = statistics.median(ours_cpu) / statistics.median(naive_cpu)
                met = ratio <= COLD_TARGET_RATIO
                results.append(Result(
                    "cli_cold_start", "sqlite", f"`{name}`, {mode}", o, n,
                    "`python -c 'import sqlalchemy'`",
                    notes=f"subprocess wall time, medians of {reps} alternating; "
                          f"ours / import sqlalchemy = {ratio:.2f} (CPU time: {cpu_ratio:.2f})"
                          + ("; PYTHONDONTWRITEBYTECODE=1" if mode != "bytecode written"
                             else "; PYTHONDONTWRITEBYTECODE unset"),
                    target=f"at most {COLD_TARGET_RATIO:g}x `import sqlalchemy`: "
                           f"{'met' if met else 'NOT MET'} ({ratio:.2f}x)",
                    met=met, extra={"ours_runs_s": ours, "naive_runs_s": naive,
                                    "over_import": round(ratio, 3),
                                    "ours_cpu_s": ours_cpu, "naive_cpu_s": naive_cpu,
                                    "cpu_over_import": round(cpu_ratio, 3)}))
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
