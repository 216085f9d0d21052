"""The pages' reads: a long run's curves, and a board page's gate badges.

- ``run_page_series``: the run page draws a 100,000-step loss curve. Ours reads it in
  buckets the chart can show (tunix_rt.service.views_data.plot_series: two queries, at
  most 1,600 points back); the naive side reads every point (tunix_rt.store.metrics.series,
  as the JSON API does) and draws them all. Both end in the same chart (ui._curves).
- ``board_page_gates``: the latest gate of each of a page's 50 runs. Ours is one
  window-function query (views_data.latest_gates); the naive side asks per run
  (gating.latest_gate), the N+1 a template loop invites.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from benchmarks.common import JUDGE, Result, Scale, bulk_board, interleaved

SERIES_POINTS = {True: 20_000, False: 100_000}   # by scale.quick
PAGE_RUNS, GATES_PER_RUN = 50, 4


def _series_run(engine: Any, n_points: int) -> str:
    from sqlalchemy import insert

    from tunix_rt.store.db import session_scope
    from tunix_rt.store.models import RunMetric, utcnow
    from tunix_rt.store.runs import register_run

    with session_scope(engine) as session:
        run_id = register_run(session, name="long", dataset="bench", model="m",
                              predictions_uri="/data/long.jsonl").id
    now = utcnow()
    rows = [{"run_id": run_id, "name": "train_loss", "step": i, "recorded_at": now,
             "value": 2.0 * math.exp(-i / (n_points / 5)) + 0.3 + 0.05 * math.sin(i / 7)}
            for i in range(n_points)]
    rows += [{"run_id": run_id, "name": "eval_loss", "step": i, "recorded_at": now,
              "value": 2.1 * math.exp(-i / (n_points / 5)) + 0.35}
             for i in range(0, n_points, 100)]
    with engine.begin() as conn:
        for start in range(0, len(rows), 10_000):
            conn.execute(insert(RunMetric), rows[start:start + 10_000])
    return run_id


def _summary(points: list[tuple[int, float | None]]) -> Any:
    """The summary computed in Python from every point, as the page did before."""
    from tunix_rt.service.views_data import SeriesStats

    finite = [(step, v) for step, v in points if v is not None]
    return SeriesStats(len(points), len(finite), points[0][0], points[-1][0],
                       last=finite[-1] if finite else None,
                       lowest=min(finite, key=lambda p: (p[1], p[0])) if finite else None)


def run_series(url: str, backend: str, scale: Scale) -> list[Result]:
    from tunix_rt.service import ui, views_data
    from tunix_rt.store.db import make_engine, session_scope
    from tunix_rt.store.metrics import series

    engine = make_engine(url)
    n = SERIES_POINTS[scale.quick]
    run_id = _series_run(engine, n)
    drawn: dict[str, Any] = {}

    def ours() -> None:
        with session_scope(engine) as session:
            drawn["ours"] = ui._curves(*views_data.plot_series(session, run_id))

    def naive() -> None:
        with session_scope(engine) as session:
            everything = series(session, run_id)
        points = {k: [(p["step"], p["value"]) for p in v] for k, v in everything.items()}
        drawn["naive"] = ui._curves(points, {k: _summary(v) for k, v in points.items()})

    ours(), naive()  # warm
    t_ours, t_naive = interleaved(ours, naive, 5 if not scale.quick else 3)
    engine.dispose()
    sizes = {k: sum(len(str(c["svg"])) for c in v) for k, v in drawn.items()}
    return [Result(
        "run_page_series", backend, f"{n:,}-step loss curve (+ eval every 100)", t_ours, t_naive,
        "every point read into Python, then drawn",
        notes=(f"SVG {sizes['ours'] / 1024:.0f} KiB ours, {sizes['naive'] / 1024:.0f} KiB "
               "naive (the chart thins to its pixels either way)"),
        extra={"points": n, "svg_bytes": sizes})]


def run_gates(url: str, backend: str, scale: Scale) -> list[Result]:
    from sqlalchemy import insert

    from tunix_rt.quality import gating
    from tunix_rt.service import views_data
    from tunix_rt.store.db import make_engine, session_scope
    from tunix_rt.store.models import GateResult, utcnow

    engine = make_engine(url)
    runs = bulk_board(engine, "bench", 2_000 if scale.quick else 20_000)
    now = utcnow()
    gates = [{"run_id": rid, "dataset": "bench", "judge": JUDGE, "baseline_run_id": runs[0],
              "baseline_key": f"{k:032x}", "decision": "inconclusive", "delta": 0.01,
              "ci_low": -0.02, "ci_high": 0.04, "n_paired": 500, "n_excluded": 0,
              "reason": "", "policy": {}, "policy_digest": f"{k:016x}",
              "created_at": now - timedelta(minutes=k), "updated_at": now - timedelta(minutes=k)}
             for rid in runs for k in range(GATES_PER_RUN)]
    with engine.begin() as conn:
        for start in range(0, len(gates), 10_000):
            conn.execute(insert(GateResult), gates[start:start + 10_000])
    page = runs[len(runs) // 2:len(runs) // 2 + PAGE_RUNS]
    got: dict[str, Any] = {}

    def ours() -> None:
        with session_scope(engine) as session:
            got["ours"] = {r: g.id for r, g in views_data.latest_gates(session, page,
                                                                       JUDGE).items()}

    def naive() -> None:
        with session_scope(engine) as session:
            got["naive"] = {r: gating.latest_gate(session, r, JUDGE) for r in page}

    ours(), naive()
    t_ours, t_naive = interleaved(ours, naive, max(5, scale.page_reps // 5))
    engine.dispose()
    assert set(got["ours"]) == set(page) == {r for r, g in got["naive"].items() if g}
    return [Result(
        "board_page_gates", backend,
        f"latest gate of {PAGE_RUNS} runs ({len(runs):,} runs x {GATES_PER_RUN} gate results)",
        t_ours, t_naive, f"gating.latest_gate per run ({PAGE_RUNS} x 2 queries)")]


def run(url_for: Any, backend: str, scale: Scale) -> list[Result]:
    return (run_series(url_for("pages_series"), backend, scale)
            + run_gates(url_for("pages_gates"), backend, scale))
