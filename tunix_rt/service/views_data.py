"""Read-only queries behind the pages (tunix_rt.service.ui): one query per question.

The pages ask for a page of runs at a time, so every helper that takes several run
ids answers them in one query (a page of 500 runs costs the same few queries as a
page of 5). Nothing here writes; the caller's session is read from and closed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from sqlalchemy import BigInteger, case, func, literal, select
from sqlalchemy.orm import Session, aliased

from tunix_rt.store.models import (Baseline, Evaluation, GateResult, LeaderboardBoard,
                                   LeaderboardEntry, Run, RunMetric, Study, Trial)

#: How much of a launched job's log the run page shows: its last lines, read from its end.
LOG_TAIL_LINES = 200
LOG_TAIL_BYTES = 64 * 1024
#: Points per series drawn on a run page: a longer series is read as this many step
#: buckets (each its lowest and highest value), not point by point.
PLOT_BUCKETS = 800
#: Gate results listed on a run page (re-gating with the same inputs updates a row, so a
#: run rarely has more than a handful).
GATE_HISTORY = 200


def board_sizes(session: Session) -> dict[tuple[str, str], int]:
    """Every (dataset, judge) with a non-empty board, in name order, with its entries.

    Read from the boards' bookkeeping (one row per board), not by a DISTINCT over the
    entries, which would scan every entry of every board on each page view.
    """
    rows = session.execute(select(LeaderboardBoard.dataset, LeaderboardBoard.judge,
                                  LeaderboardBoard.n_entries)
                           .where(LeaderboardBoard.n_entries > 0)
                           .order_by(LeaderboardBoard.dataset, LeaderboardBoard.judge))
    return {(d, j): n for d, j, n in rows}


def boards(session: Session) -> list[tuple[str, str]]:
    """Every (dataset, judge) that has a board, in name order."""
    return list(board_sizes(session))


@dataclass(frozen=True)
class BaselineMark:
    """A board's baseline: its run, and its score on the board (None if not on it)."""

    run_id: str
    run_name: str
    score: float | None


def board_baseline(session: Session, dataset: str, judge: str) -> BaselineMark | None:
    """The baseline of a board with its score there, in one query."""
    row = session.execute(
        select(Baseline.run_id, Run.name, LeaderboardEntry.score)
        .join(Run, Run.id == Baseline.run_id)
        .outerjoin(LeaderboardEntry, (LeaderboardEntry.dataset == Baseline.dataset)
                   & (LeaderboardEntry.judge == Baseline.judge)
                   & (LeaderboardEntry.run_id == Baseline.run_id))
        .where(Baseline.dataset == dataset, Baseline.judge == judge)).first()
    return BaselineMark(row[0], row[1], row[2]) if row else None


def latest_gates(session: Session, run_ids: Sequence[str], judge: str | None = None
                 ) -> dict[str, GateResult]:
    """Each run's most recent gate result (under ``judge`` when given), in one query."""
    if not run_ids:
        return {}
    where = [GateResult.run_id.in_(list(run_ids))]
    if judge is not None:
        where.append(GateResult.judge == judge)
    recency = func.row_number().over(partition_by=GateResult.run_id,
                                     order_by=(GateResult.updated_at.desc(),
                                               GateResult.id.desc())).label("recency")
    ranked = select(GateResult, recency).where(*where).subquery()
    gate = aliased(GateResult, ranked)
    return {g.run_id: g for g in session.scalars(select(gate).where(ranked.c.recency == 1))}


@dataclass(frozen=True)
class GateRow:
    result: GateResult
    baseline_name: str | None


def gate_history(session: Session, run_id: str, limit: int = GATE_HISTORY) -> list[GateRow]:
    """Every gate result of the run, newest first, with its baseline's name."""
    baseline = aliased(Run)
    rows = session.execute(
        select(GateResult, baseline.name)
        .outerjoin(baseline, baseline.id == GateResult.baseline_run_id)
        .where(GateResult.run_id == run_id)
        .order_by(GateResult.updated_at.desc(), GateResult.id.desc()).limit(limit))
    return [GateRow(g, name) for g, name in rows]


def evaluations(session: Session, run_id: str) -> list[Evaluation]:
    """The run's evaluations, newest first (every judge, every status)."""
    return list(session.scalars(select(Evaluation).where(Evaluation.run_id == run_id)
                                .order_by(Evaluation.finished_at.desc(), Evaluation.id.desc())))


def boards_of(session: Session, run_id: str) -> list[tuple[str, str]]:
    """The boards (dataset, judge) the run is on."""
    return [(d, j) for d, j in session.execute(
        select(LeaderboardEntry.dataset, LeaderboardEntry.judge)
        .where(LeaderboardEntry.run_id == run_id)
        .order_by(LeaderboardEntry.dataset, LeaderboardEntry.judge))]


def baseline_of(session: Session, run_id: str) -> list[tuple[str, str]]:
    """The boards (dataset, judge) whose baseline this run is."""
    return [(d, j) for d, j in session.execute(
        select(Baseline.dataset, Baseline.judge).where(Baseline.run_id == run_id)
        .order_by(Baseline.dataset, Baseline.judge))]


@dataclass(frozen=True)
class Lineage:
    """Where a run came from: the study and trial that produced it, if any."""

    study: Study | None
    trial: Trial | None
    study_id: str | None
    trial_id: str | None


def lineage(session: Session, run: Run) -> Lineage:
    """The study and trial of a run, in one query (the trial that names the run first,
    else the run's own study and trial ids)."""
    if run.study_id is None and run.trial_id is None:
        found = session.execute(select(Trial, Study).join(Study, Study.id == Trial.study_id)
                                .where(Trial.run_id == run.id).limit(1)).first()
    else:
        found = session.execute(
            select(Trial, Study).select_from(Study).outerjoin(
                Trial, (Trial.study_id == Study.id) & (Trial.trial_id == run.trial_id))
            .where(Study.id == run.study_id).limit(1)).first()
    if found is None:
        return Lineage(None, None, run.study_id, run.trial_id)
    trial, study = found
    return Lineage(study, trial, study.id if study else run.study_id,
                   trial.trial_id if trial else run.trial_id)


def datasets_boards(session: Session) -> dict[str, list[str]]:
    """The judges with a board, per dataset."""
    out: dict[str, list[str]] = {}
    for dataset, judge in boards(session):
        out.setdefault(dataset, []).append(judge)
    return out


@dataclass(frozen=True)
class LogTail:
    """The end of a launched job's log, or why it cannot be shown."""

    text: str | None
    truncated: bool = False
    problem: str | None = None


def log_tail(log_uri: str | None, jobs_dir: str | os.PathLike[str], *,
             max_lines: int = LOG_TAIL_LINES, max_bytes: int = LOG_TAIL_BYTES) -> LogTail:
    """The last ``max_lines`` lines (at most ``max_bytes``) of a job's log.

    Only a ``file:`` URI inside this service's jobs folder is read: the page serves
    what ``tunix-rt train`` wrote there, never another file a row might name. The
    bytes are read from the end, so a log of gigabytes costs one seek.
    """
    if not log_uri:
        return LogTail(None, problem="no log yet (the job has not started)")
    parsed = urlparse(log_uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return LogTail(None, problem=f"the log is at {log_uri}, not a local file")
    path = Path(unquote(parsed.path))
    root = Path(jobs_dir).resolve()
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return LogTail(None, problem="the log's path cannot be resolved")
    if not resolved.is_relative_to(root):
        return LogTail(None, problem="the log is outside this service's jobs folder "
                                     "(TUNIX_RT_JOBS_DIR): it was written on another host "
                                     "or by a service configured elsewhere")
    try:
        with resolved.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            handle.seek(start)
            data = handle.read(max_bytes)
    except FileNotFoundError:
        return LogTail(None, problem="the log file is gone (the job's folder was removed, "
                                     "or the job ran on another host)")
    except OSError as exc:
        return LogTail(None, problem=f"the log cannot be read: {exc.strerror or exc}")
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    truncated = start > 0
    if truncated and lines:
        lines = lines[1:]  # the first line read is cut at its start
    if len(lines) > max_lines:
        lines, truncated = lines[-max_lines:], True
    return LogTail("\n".join(lines), truncated)


@dataclass(frozen=True)
class SeriesStats:
    """What a series' summary says: its size, its steps, its last and lowest values."""

    n: int
    n_finite: int
    first_step: int
    last_step: int
    last: tuple[int, float] | None = None
    lowest: tuple[int, float] | None = None


def plot_series(session: Session, run_id: str, *, buckets: int = PLOT_BUCKETS
                ) -> tuple[dict[str, list[tuple[int, float | None]]], dict[str, SeriesStats]]:
    """The run's series as a chart draws them, and their summaries, in two queries.

    A series of up to ``buckets`` points comes back point by point; a longer one as
    ``buckets`` ranges of steps, each its lowest and highest value (a bucket holding a
    null, a NaN or infinity as reported, ends with a break). A chart is a few hundred
    pixels wide: reading 100,000 points into Python to draw them made a long run's page
    take seconds.
    """
    mine = RunMetric.run_id == run_id
    other = aliased(RunMetric)
    same = (other.run_id == run_id, other.name == RunMetric.name, other.value.is_not(None))
    # The last finite point: an index seek on (run_id, name, step); the lowest: one scan.
    last_step = (select(other.step).where(*same).order_by(other.step.desc()).limit(1)
                 .scalar_subquery())
    last_value = (select(other.value).where(*same).order_by(other.step.desc()).limit(1)
                  .scalar_subquery())
    lowest_step = (select(other.step).where(*same).order_by(other.value, other.step).limit(1)
                   .scalar_subquery())
    summaries: dict[str, SeriesStats] = {}
    widths: dict[str, int] = {}
    for name, n, n_finite, first, last, low, at_last, final, at_low in session.execute(
            select(RunMetric.name, func.count(), func.count(RunMetric.value),
                   func.min(RunMetric.step), func.max(RunMetric.step),
                   func.min(RunMetric.value), last_step, last_value, lowest_step)
            .where(mine).group_by(RunMetric.name).order_by(RunMetric.name)):
        summaries[name] = SeriesStats(
            n, n_finite, first, last,
            last=(at_last, final) if n_finite else None,
            lowest=(at_low, low) if n_finite else None)
        if n > buckets:
            widths[name] = (last - first) // buckets + 1
    if not summaries:
        return {}, {}
    # Integer division (``//``: SQLAlchemy renders ``/`` as a float division).
    bucket = case(*[(RunMetric.name == name, RunMetric.step // literal(w, BigInteger))
                    for name, w in widths.items()], else_=RunMetric.step) if widths \
        else RunMetric.step
    rows = session.execute(
        select(RunMetric.name, func.min(RunMetric.step), func.max(RunMetric.step),
               func.min(RunMetric.value), func.max(RunMetric.value), func.count(),
               func.count(RunMetric.value))
        .where(mine).group_by(RunMetric.name, bucket)
        .order_by(RunMetric.name, func.min(RunMetric.step)))
    out: dict[str, list[tuple[int, float | None]]] = {}
    for name, first, last, low, high, n, n_finite in rows:
        points = out.setdefault(name, [])
        if n_finite:
            points.append((first, low))
            if n > 1:
                points.append((last, high))
        if n_finite < n:
            points.append((last, None))
    return out, summaries
