"""Run metrics as time series: the points a run reported, by metric name and step.

Query functions take a session and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunix_rt.store.models import RunMetric, utcnow
from tunix_rt.store.upsert import insert_ignore

MAX_NAME = 255
MAX_STEP = 2**63 - 1


def _number(value: Any) -> float | None | bool:
    """The value as a float, None for NaN/infinity/null; False for a non-number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    value = float(value)
    return value if math.isfinite(value) else None


def points_from_metrics(step: Any, metrics: Mapping[str, Any]) -> list[tuple[str, int, float | None]]:
    """The numeric metrics of one report as ``(name, step, value)``; others are skipped.

    ``step`` must be a non-negative integer (``64.0`` counts); without one nothing is a
    point (a report with no step is not on a curve).
    """
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        return []
    out = []
    for name, value in metrics.items():
        number = _number(value)
        if name == "step" or number is False or not isinstance(name, str) \
                or not 0 < len(name) <= MAX_NAME:
            continue
        out.append((name, step, number))
    return out


def series_points(report: Mapping[str, Any]) -> list[tuple[str, int, float | None]]:
    """The points of one metrics report of a job: its ``tunix_rt_points`` when it has
    them (``[{"step", "metrics"}]``, as TunixRtHooks sends), else its numeric metrics at
    its ``step`` (the built-in trainable's ``accuracy`` and ``loss``)."""
    given = report.get("tunix_rt_points")
    if isinstance(given, list):
        out = []
        for point in given:
            if isinstance(point, Mapping) and isinstance(point.get("metrics"), Mapping):
                out += points_from_metrics(point.get("step"), point["metrics"])
        return out
    return points_from_metrics(report.get("step"), report)


def record_points(session: Session, run_id: str,
                  points: Iterable[tuple[str, int, float | None]]) -> int:
    """Add the points to the run's series; one already stored (same name and step) stays.

    Answers how many were new.
    """
    now = utcnow()
    added = 0
    for name, step, value in points:
        added += insert_ignore(session, RunMetric,
                               {"run_id": run_id, "name": name, "step": int(step),
                                "value": value, "recorded_at": now},
                               key=("run_id", "name", "step"))
    return added


def series(session: Session, run_id: str, name: str | None = None
           ) -> dict[str, list[dict[str, Any]]]:
    """The run's series, ``{name: [{"step", "value"}, ...]}``, each in step order."""
    query = (select(RunMetric.name, RunMetric.step, RunMetric.value)
             .where(RunMetric.run_id == run_id).order_by(RunMetric.name, RunMetric.step))
    if name is not None:
        query = query.where(RunMetric.name == name)
    out: dict[str, list[dict[str, Any]]] = {}
    for metric, step, value in session.execute(query):
        out.setdefault(metric, []).append({"step": step, "value": value})
    return out
