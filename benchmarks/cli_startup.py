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
        url = f"sqlite:///{tmp / 'board.db'}"
        engine = db.make_engine(url)
        db.upgrade(engine)
        bulk_board(engine, DATASET, BOARD_RUNS)
        with session_scope(engine) as session:
            rebuild_leaderboard(session, DATASET, JUDGE)
        engine.dispose()

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
