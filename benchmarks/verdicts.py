"""Benchmark 4: storing an evaluation's verdicts, and the memory of scoring + storing.

Ours is ``tunix_rt.quality.evaluation.store_evaluation`` (Core ``executemany`` in batches of
VERDICT_BATCH rows). The naive sides add one ORM ``Verdict`` per item, with a flush
after each (one INSERT round trip per row), or all at once with one flush (the ORM
unit of work, which SQLAlchemy 2 batches itself).
"""

from __future__ import annotations

import dataclasses
import gc
import time
import tracemalloc
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, insert, select

from benchmarks.common import Result, Scale
from tunix_rt.judges import Item
from tunix_rt.store.db import make_engine, session_scope
from tunix_rt.quality.evaluation import (VERDICT_BATCH, RunInfo, ScoredRun, score_items,
                                 store_evaluation)
from tunix_rt.store.models import Evaluation, EvaluationStatus, Run, Verdict, utcnow

DATASET = "bench-verdicts"


def make_items(n: int, *, seed: int = 0) -> list[Item]:
    """Items shaped like tests/factories.py writes them; about 70% answered right."""
    items = []
    for i in range(n):
        ok = (i * 2654435761 + seed) % 10 < 7
        answer = i if ok else i + 1
        items.append(Item(id=f"q{i:06d}", prompt=f"what is {i}?",
                          response=f"<reasoning>r</reasoning><answer>{answer}</answer>",
                          reference=str(i)))
    return items


class Runs:
    """Fresh runs on demand, so no side pays for deleting the other's verdicts."""

    def __init__(self, engine: Any, prefix: str) -> None:
        self.engine, self.prefix, self.count = engine, prefix, 0

    def new(self) -> RunInfo:
        self.count += 1
        rid = f"{self.prefix}{self.count:08d}".ljust(32, "0")[:32]
        now = utcnow() - timedelta(hours=1)
        with self.engine.begin() as conn:
            conn.execute(insert(Run), [{
                "id": rid, "name": f"verdicts-{self.count}", "dataset": DATASET, "model": "m",
                "config": {}, "metrics": {}, "predictions_uri": "/dev/null",
                "status": "completed", "dry_run": False, "origin": "cli", "created_at": now,
                "updated_at": now}])
        return RunInfo(rid, f"verdicts-{self.count}", DATASET, "m", "/dev/null")


def naive_store(session: Any, scored: ScoredRun, *, flush_each: bool) -> int:
    """Evaluation and verdicts through the ORM, one ``session.add`` per verdict."""
    ev = Evaluation(run_id=scored.run_id, judge=scored.judge, judge_version=scored.judge_version,
                    status=EvaluationStatus.completed.value, score=scored.score,
                    ci_low=scored.ci_low, ci_high=scored.ci_high, n_items=scored.n_items,
                    n_scored=scored.n_scored, n_unscored=scored.n_unscored,
                    started_at=scored.started_at, finished_at=utcnow(),
                    duration_s=scored.duration_s)
    session.add(ev)
    session.flush()
    for v in scored.verdicts:
        session.add(Verdict(evaluation_id=ev.id, item_id=v.item_id, score=v.score,
                            passed=v.passed, rationale=v.rationale,
                            raw=dict(v.raw) if v.raw is not None else None))
        if flush_each:
            session.flush()
    session.flush()
    return ev.id


def _timed_store(engine: Any, runs: Runs, scored: ScoredRun,
                 store: Callable[[Any, ScoredRun], int], reps: int) -> float:
    """Median seconds to store ``scored`` (for a fresh run each time), commit included.

    Checks that every call stored all the verdicts, so the sides do the same work.
    """
    times = []
    for _ in range(reps):
        mine = dataclasses.replace(scored, run_id=runs.new().id)
        gc.collect()
        start = time.perf_counter()
        with session_scope(engine) as session:
            ev_id = store(session, mine)
        times.append(time.perf_counter() - start)
        with session_scope(engine) as session:
            stored = session.scalar(select(func.count()).select_from(Verdict)
                                    .where(Verdict.evaluation_id == ev_id))
        assert stored == len(scored.verdicts), (stored, len(scored.verdicts))
    return sorted(times)[len(times) // 2]


def _peak_mib(engine: Any, runs: Runs, items: list[Item],
              store: Callable[[Any, ScoredRun], int]) -> tuple[float, float]:
    """Peak traced Python memory (MiB) of scoring ``items`` and storing the verdicts,
    and of the storing alone (scoring's peak is the bootstrap's capped chunk)."""
    info = runs.new()
    gc.collect()
    tracemalloc.start()
    try:
        scored = score_items(info, "exact_match", items)
        _, peak_score = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        held, _ = tracemalloc.get_traced_memory()
        with session_scope(engine) as session:
            store(session, scored)
        _, peak_store = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del scored
    gc.collect()
    return max(peak_score, peak_store) / 2**20, (peak_store - held) / 2**20


def run(url: str, backend: str, scale: Scale) -> list[Result]:
    engine = make_engine(url)
    runs = Runs(engine, backend[:2])
    n, n_naive = scale.verdicts, scale.naive_verdicts
    items = make_items(n)
    scored = score_items(runs.new(), "exact_match", items)
    naive_scored = (scored if n_naive == n else
                    score_items(runs.new(), "exact_match", items[:n_naive]))

    def ours(session: Any, s: ScoredRun) -> int:
        return store_evaluation(session, s).evaluation_id

    def naive_each(session: Any, s: ScoredRun) -> int:
        return naive_store(session, s, flush_each=True)

    def naive_all(session: Any, s: ScoredRun) -> int:
        return naive_store(session, s, flush_each=False)

    # Warm up both code paths (statement caches, connections) on a small evaluation.
    _timed_store(engine, runs, naive_scored if n_naive < n else scored, ours, 1)
    small = score_items(runs.new(), "exact_match", items[:200])
    _timed_store(engine, runs, small, naive_each, 1)

    t_ours = _timed_store(engine, runs, scored, ours, scale.verdict_reps)
    each_reps = 1 if n_naive >= 10_000 else scale.verdict_reps  # seconds per call
    t_each = _timed_store(engine, runs, naive_scored, naive_each, each_reps) * n / n_naive
    t_all = _timed_store(engine, runs, scored, naive_all, scale.verdict_reps)

    mem_ours = _peak_mib(engine, runs, items, ours)
    mem_naive = _peak_mib(engine, runs, items, naive_all)
    scaled = "" if n_naive == n else f"; naive stored {n_naive:,} and was scaled x{n / n_naive:g}"
    size = f"{n:,} verdicts"
    engine.dispose()
    return [
        Result("verdict_store", backend, size, t_ours, t_each, "ORM session.add + flush per row",
               notes=f"Core executemany, {VERDICT_BATCH:,} rows per batch; commit included; "
                     f"median of {scale.verdict_reps}, flush per row {each_reps} run{scaled}"),
        Result("verdict_store_orm_batch", backend, size, t_ours, t_all,
               "ORM session.add each, one flush",
               notes=(f"median of {scale.verdict_reps}; peak traced memory (tracemalloc), "
                      f"score+store {n:,} items: ours {mem_ours[0]:.1f} MiB, ORM "
                      f"{mem_naive[0]:.1f} MiB; the store step alone (above the scored "
                      f"verdicts held): ours {mem_ours[1]:.1f} MiB, "
                      f"ORM {mem_naive[1]:.1f} MiB"),
               extra={"peak_mib_score_store_ours": round(mem_ours[0], 1),
                      "peak_mib_score_store_naive": round(mem_naive[0], 1),
                      "peak_mib_store_ours": round(mem_ours[1], 1),
                      "peak_mib_store_naive": round(mem_naive[1], 1)}),
    ]
