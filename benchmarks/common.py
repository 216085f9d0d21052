"""Shared pieces: results, timing, databases and bulk-built boards."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np


@dataclass
class Result:
    """One line of the table: our time, the naive time, and what was measured."""

    benchmark: str
    backend: str           # "postgresql", "sqlite" or "-" (no database)
    size: str              # the data the two sides worked on
    ours_s: float
    naive_s: float
    naive_label: str       # what the naive side is
    notes: str = ""
    target: str = ""       # a target shown by this result, with met / NOT MET
    extra: dict[str, Any] = field(default_factory=dict)
    met: bool | None = None  # whether the target is met (None: no target)

    @property
    def ratio(self) -> float:
        return self.naive_s / self.ours_s if self.ours_s > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = round(self.ratio, 2)
        if out["met"] is None and self.target:
            out["met"] = "NOT MET" not in self.target and "not met" not in self.target
        return out


@dataclass(frozen=True)
class Scale:
    """Sizes and repetitions; ``--quick`` shrinks them to a smoke run."""

    quick: bool
    board_runs: int        # runs on the leaderboard (benchmarks 2, 3)
    page_reps: int         # page fetches per side (median)
    rebuild_reps: int      # rebuilds per side (median)
    verdicts: int          # verdicts stored (benchmark 4)
    verdict_reps: int
    naive_verdicts: int    # verdicts the flush-per-row side stores (scaled up to `verdicts`)
    gate_items: int
    gate_resamples: int
    naive_resamples: int   # resamples the pure-Python side draws (scaled up)
    gate_reps: int
    cli_reps: int
    flow_items: int
    flow_reps: int
    flow_large_items: int  # a second, large run through the flow (0: skip)


FULL = Scale(quick=False, board_runs=20_000, page_reps=100, rebuild_reps=3, verdicts=20_000,
             verdict_reps=3, naive_verdicts=20_000, gate_items=5_000, gate_resamples=2_000,
             naive_resamples=200, gate_reps=5, cli_reps=7, flow_items=500, flow_reps=5,
             flow_large_items=20_000)
QUICK = Scale(quick=True, board_runs=2_000, page_reps=50, rebuild_reps=2, verdicts=2_000,
              verdict_reps=1, naive_verdicts=2_000, gate_items=5_000, gate_resamples=2_000,
              naive_resamples=20, gate_reps=2, cli_reps=2, flow_items=500, flow_reps=2,
              flow_large_items=0)


def median_time(fn: Callable[[], Any], reps: int, *, setup: Callable[[], Any] | None = None
                ) -> tuple[float, Any]:
    """Median wall time of ``fn()`` over ``reps`` calls (``setup()`` untimed before each)."""
    times, value = [], None
    for _ in range(reps):
        if setup is not None:
            setup()
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def interleaved(ours: Callable[[], Any], naive: Callable[[], Any], reps: int, *,
                naive_reps: int | None = None) -> tuple[float, float]:
    """Median times of the two sides, calls alternating so drift hits both alike."""
    t_ours, t_naive = [], []
    naive_reps = reps if naive_reps is None else naive_reps
    for i in range(max(reps, naive_reps)):
        if i < reps:
            start = time.perf_counter()
            ours()
            t_ours.append(time.perf_counter() - start)
        if i < naive_reps:
            start = time.perf_counter()
            naive()
            t_naive.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_naive)


def fmt_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


# --- databases ------------------------------------------------------------------------------


@contextmanager
def databases(want_postgres: bool = True) -> Iterator[dict[str, Callable[[str], str]]]:
    """Factories of fresh, migrated database URLs: {"postgresql": f, "sqlite": f}.

    PostgreSQL is a throwaway cluster from tests/pgserver.py (fsync off, as in the
    tests); SQLite files live in a temporary folder.
    """
    import tempfile
    from pathlib import Path

    from tunix_rt.store import db

    tmp = Path(tempfile.mkdtemp(prefix="tunix-rt-bench-"))
    counter = iter(range(1_000_000))

    def sqlite(prefix: str) -> str:
        url = f"sqlite:///{tmp / f'{prefix}_{next(counter)}.db'}"
        db.upgrade(db.make_engine(url))
        return url

    factories: dict[str, Callable[[str], str]] = {"sqlite": sqlite}
    try:
        if want_postgres:
            from tests.pgserver import create_database, postgres_server

            with postgres_server() as admin_url:
                def postgres(prefix: str) -> str:
                    url = create_database(admin_url, prefix=prefix)
                    engine = db.make_engine(url)
                    db.upgrade(engine)
                    engine.dispose()
                    return url

                factories["postgresql"] = postgres
                yield factories
                db.dispose_engines()
        else:
            yield factories
    finally:
        db.dispose_engines()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def analyze(engine: Any) -> None:
    """Fresh planner statistics after a bulk load (autovacuum would do it, later)."""
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))


# --- bulk-built data ------------------------------------------------------------------------

JUDGE = "exact_match"
JUDGE_VERSION = "1.0"
OLD_VERSION = "0.9"


def bulk_board(engine: Any, dataset: str, n_runs: int, *, seed: int = 0,
               older_share: float = 0.2, batch: int = 5_000) -> list[str]:
    """``n_runs`` completed runs of ``dataset`` with evaluations, inserted with Core.

    Every run has a completed evaluation at the judge's version; ``older_share`` of
    them also have an older one (an earlier judge version, finished earlier), so the
    rebuild's "latest evaluation per run" has something to choose. Scores are
    multiples of 1/500 (500-item runs), so ties are common and the tie-breakers count.
    """
    from sqlalchemy import insert

    from tunix_rt.store.models import Evaluation, Run, utcnow

    rng = np.random.default_rng(seed)
    t0 = utcnow() - timedelta(days=30)
    n_items = 500
    run_ids = [f"{seed:04x}{i:028x}" for i in range(n_runs)]
    runs = [{"id": rid, "name": f"run-{i:06d}", "dataset": dataset, "model": f"model-{i % 7}",
             "config": {}, "metrics": {}, "predictions_uri": f"/data/{rid}.jsonl",
             "status": "completed", "dry_run": False, "origin": "cli",
             "created_at": t0 + timedelta(seconds=i), "updated_at": t0 + timedelta(seconds=i),
             "completed_at": t0 + timedelta(seconds=i)}
            for i, rid in enumerate(run_ids)]
    correct = rng.binomial(n_items, rng.uniform(0.3, 0.9, n_runs))
    unscored = rng.binomial(5, 0.2, n_runs)
    evaluations = []
    for i, rid in enumerate(run_ids):
        finished = t0 + timedelta(seconds=i, minutes=5)
        n_scored = n_items - int(unscored[i])
        score = float(correct[i]) / n_items
        evaluations.append(_evaluation(rid, JUDGE_VERSION, score, n_items, n_scored, finished))
        if rng.random() < older_share:
            evaluations.append(_evaluation(rid, OLD_VERSION, float(rng.uniform(0.2, 0.95)),
                                           n_items, n_items, finished - timedelta(minutes=1)))
    with engine.begin() as conn:
        for start in range(0, len(runs), batch):
            conn.execute(insert(Run), runs[start:start + batch])
        for start in range(0, len(evaluations), batch):
            conn.execute(insert(Evaluation), evaluations[start:start + batch])
    return run_ids


def _evaluation(run_id: str, version: str, score: float, n_items: int, n_scored: int,
                finished: Any) -> dict[str, Any]:
    half = 1.96 * (max(score * (1 - score), 1e-6) / n_scored) ** 0.5
    return {"run_id": run_id, "judge": JUDGE, "judge_version": version, "status": "completed",
            "score": score, "ci_low": max(0.0, score - half), "ci_high": min(1.0, score + half),
            "n_items": n_items, "n_scored": n_scored, "n_unscored": n_items - n_scored,
            "error": None, "started_at": finished - timedelta(seconds=3), "finished_at": finished,
            "duration_s": 3.0}
