"""Benchmark 6: what Prefect costs per quality-loop run.

Ours: the ``quality_loop`` flow for one run, against a real Prefect server
(``prefect_test_harness``, started once). Naive, i.e. without orchestration: the
same core functions called directly, each step in its own transaction as the tasks
do (load, read + score, store, rebuild + first page, gate, promote). The flow also
publishes two artifacts, which have no counterpart without Prefect.

To split the difference into a per-flow and a per-task cost, the same server runs
a flow of no tasks and one of 14 no-op tasks, with Prefect's default settings and
with flow heartbeats off. At full size the loop also runs for a 20,000-item run, to
show how the cost grows with what the tasks pass each other.

Import this module only after PREFECT_HOME is set (benchmarks/run.py does it).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from benchmarks.common import Result, Scale
from tunix_rt.flows.quality_loop import quality_loop
from tunix_rt.judges import judge_spec
from tests.factories import correctness, write_predictions
from tunix_rt.quality import gating, leaderboard
from tunix_rt.store import runs
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.quality.evaluation import RunInfo, score_items, store_evaluation
from tunix_rt.quality.gating import GateReport
from tunix_rt.quality.predictions import read_predictions
from tunix_rt.quality.stats import GatePolicy

DATASET = "bench-flow"
JUDGE = "exact_match"
TASKS_PER_JUDGE = 7  # load, score, store, rebuild, gate, promote, publish
PROBE_TASKS = 14     # no-op tasks in the flow that prices one task
PAUSE = 0.5          # untimed seconds between heartbeat-off probe flows


@task(name="bench-noop")
def noop() -> int:
    return 1


@flow(name="bench-noop-tasks")
def noop_tasks_flow(n: int) -> int:
    return sum(noop() for _ in range(n))


def direct(run_id: str, judge: str, policy: GatePolicy) -> GateReport:
    """The quality loop for one judge without Prefect: the tasks' bodies, in order."""
    with session_scope() as session:
        run = runs.get_run(session, run_id)
        runs.ensure_evaluable(run)
        info = RunInfo.of(run)
    spec = judge_spec(judge)
    items = read_predictions(info.predictions_uri, require_reference=spec.requires_reference)
    scored = score_items(info, spec.name, items)
    with session_scope() as session:
        store_evaluation(session, scored)
    with session_scope() as session:
        leaderboard.rebuild_leaderboard(session, info.dataset, judge)
    with session_scope() as session:
        leaderboard.leaderboard_page(session, info.dataset, judge, limit=50)
    with session_scope() as session:
        report = gating.gate_run(session, info.id, judge, policy)
    with session_scope() as session:
        gating.promote_if_allowed(session, report, policy)
    return report


def _median(fn: Any, reps: int, *, pause: float = 0.0) -> float:
    times = []
    for _ in range(reps):
        time.sleep(pause)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _setup(engine: Any, tmp: Path, n: int, policy: GatePolicy) -> str:
    """A dataset with a baseline run (evaluated, promoted) and a candidate; the candidate."""
    dataset = f"{DATASET}-{n}"
    ids = {}
    for name, acc, seed in (("baseline", 0.70, 1), ("candidate", 0.72, 2)):
        uri = write_predictions(tmp / f"{name}-{n}.jsonl", correctness(n, acc, seed))
        with session_scope(engine) as session:
            ids[name] = runs.register_run(session, name=f"{name}-{n}", dataset=dataset,
                                          model="m", predictions_uri=uri).id
    direct(ids["baseline"], JUDGE, policy)
    with session_scope(engine) as session:
        gating.set_baseline(session, ids["baseline"], JUDGE, reason="benchmark")
    return ids["candidate"]


def run(url: str, scale: Scale) -> list[Result]:
    os.environ["TUNIX_RT_DATABASE_URL"] = url  # the tasks use the configured database
    engine = get_engine(url)
    tmp = Path(tempfile.mkdtemp(prefix="tunix-rt-bench-flow-"))
    n, reps = scale.flow_items, scale.flow_reps
    sizes = [n] + ([scale.flow_large_items] if scale.flow_large_items else [])
    policy = GatePolicy()
    probe_reps = reps + 1
    timings: dict[int, tuple[list[float], list[float]]] = {}
    try:
        candidates = {size: _setup(engine, tmp, size, policy) for size in sizes}

        def ours(size: int) -> dict[str, Any]:
            return quality_loop(run_id=candidates[size], judges=[JUDGE], policy=policy,
                                force=True)

        def naive(size: int) -> GateReport:
            return direct(candidates[size], JUDGE, policy)

        start = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=120):
            harness_s = time.perf_counter() - start
            for i, size in enumerate(sizes):
                # Warm-up: the first run of a flow registers it and fills caches.
                result, report = ours(size), naive(size)
                assert result["judges"][JUDGE]["gate"]["decision"] == report.decision
                assert result["judges"][JUDGE]["evaluation"]["n_items"] == size
                size_reps = reps if i == 0 else max(1, reps // 2)
                t_flow, t_direct = [], []
                for _ in range(size_reps):
                    s = time.perf_counter()
                    ours(size)
                    t_flow.append(time.perf_counter() - s)
                    s = time.perf_counter()
                    naive(size)
                    t_direct.append(time.perf_counter() - s)
                timings[size] = (t_flow, t_direct)
                if i > 0:
                    continue
                # The probes run before the large run, which leaves the server busy.
                noop_tasks_flow(0)
                empty_hb = _median(lambda: noop_tasks_flow(0), probe_reps)
                # Without the heartbeat join's wait, back-to-back flows find the test
                # server (SQLite) apparently still recording the last one's task runs,
                # and the client retries after a ~2 s back-off. An untimed pause lets
                # the server catch up.
                with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                    noop_tasks_flow(PROBE_TASKS)
                    empty_off = _median(lambda: noop_tasks_flow(0), probe_reps, pause=PAUSE)
                    tasks_off = _median(lambda: noop_tasks_flow(PROBE_TASKS), probe_reps,
                                        pause=PAUSE)
                    loop_off = _median(lambda: ours(n), probe_reps, pause=PAUSE)
            time.sleep(2)  # let the server flush its events before it is stopped
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    t_flow, t_direct = timings[n]
    flow_s, direct_s = statistics.median(t_flow), statistics.median(t_direct)
    per_task = (tasks_off - empty_off) / PROBE_TASKS
    per_loop_task = (loop_off - direct_s - empty_off) / TASKS_PER_JUDGE
    extra = {
        "prefect_harness_startup_s": round(harness_s, 2),
        "quality_loop_flow_s": round(flow_s, 3),
        "direct_s": round(direct_s, 3),
        "overhead_per_flow_run_s": round(flow_s - direct_s, 3),
        "quality_loop_flow_heartbeats_off_s": round(loop_off, 3),
        "overhead_heartbeats_off_s": round(loop_off - direct_s, 3),
        "empty_flow_s": round(empty_hb, 3),
        "empty_flow_heartbeats_off_s": round(empty_off, 3),
        "heartbeat_join_s": round(empty_hb - empty_off, 3),
        f"noop_{PROBE_TASKS}_tasks_flow_heartbeats_off_s": round(tasks_off, 3),
        "per_noop_task_s": round(per_task, 4),
        "per_quality_loop_task_heartbeats_off_s": round(per_loop_task, 4),
        "flow_runs_s": [round(t, 3) for t in t_flow],
        "direct_runs_s": [round(t, 3) for t in t_direct],
    }
    out = [Result(
        "flow_overhead", "postgresql", f"1 run x {n} items, 1 judge, {TASKS_PER_JUDGE} tasks",
        flow_s, direct_s, "same core functions, no Prefect",
        notes=(f"Prefect costs {flow_s - direct_s:.2f} s per flow run; an empty flow takes "
               f"{empty_hb:.2f} s, {empty_off:.2f} s with heartbeats off (the heartbeat "
               f"thread join, {empty_hb - empty_off:.2f} s, waits for its next 1 s tick); "
               f"a no-op task {per_task * 1e3:.0f} ms, a quality-loop task "
               f"{per_loop_task * 1e3:.0f} ms (heartbeats off: loop {loop_off:.2f} s); "
               f"median of {reps}; Prefect server start {harness_s:.1f} s not counted"),
        extra=extra)]
    for size in sizes[1:]:
        t_flow, t_direct = timings[size]
        f, d = statistics.median(t_flow), statistics.median(t_direct)
        out.append(Result(
            "flow_overhead_large", "postgresql", f"1 run x {size:,} items, 1 judge",
            f, d, "same core functions, no Prefect",
            notes=(f"Prefect costs {f - d:.2f} s per flow run at {size:,} items vs "
                   f"{flow_s - direct_s:.2f} s at {n}: it grows with the items passed "
                   f"between tasks; median of {len(t_flow)}"),
            extra={"flow_runs_s": [round(t, 3) for t in t_flow],
                   "direct_runs_s": [round(t, 3) for t in t_direct],
                   "overhead_s": round(f - d, 3)}))
    return out
