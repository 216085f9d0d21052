"""The leaderboard: materialized per dataset and judge, read a page at a time.

A rebuild replaces the board of one dataset and judge in the caller's transaction
with a single ``INSERT ... SELECT``: each run's latest completed evaluation, complete
entries first (coverage known, judge-side unscored share within the threshold), then
by score over the whole item set, ties broken by more items scored, then the earlier
run, then the run id, so the order never depends on the database's mood. Reads page by rank on the
``(dataset, judge, rank)`` unique index; they never fetch the whole board.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import case, delete, func, insert, literal, null, select, text
from sqlalchemy.orm import Session

from tunix_rt.store.cursor import RANK, decode_cursor, encode_cursor
from tunix_rt.errors import InvalidInputError
from tunix_rt.quality.evaluation import choose_judge
from tunix_rt.store.models import (Dataset, Evaluation, EvaluationStatus, LeaderboardEntry, Run,
                                   coverage, utcnow)

MAX_PAGE = 500


@dataclass(frozen=True)
class Entry:
    rank: int
    run_id: str
    run_name: str
    model: str
    score: float
    ci_low: float
    ci_high: float
    n_items: int
    judge_version: str
    n_missing: int | None = None
    n_unscored: int = 0
    dataset_version: int | None = None
    flag: str | None = None

    @property
    def coverage(self) -> float | None:
        """The share of the item set the run answered (None: not known)."""
        return coverage(self.n_items, self.n_missing)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "coverage": self.coverage}


@dataclass(frozen=True)
class Page:
    dataset: str
    judge: str
    entries: list[Entry]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "judge": self.judge,
                "entries": [e.to_dict() for e in self.entries], "next_cursor": self.next_cursor}


def _lock_board(session: Session, dataset: str, judge: str) -> None:
    """Serialize concurrent rebuilds of one board (PostgreSQL; SQLite has one writer)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.blake2b(f"leaderboard:{dataset}:{judge}".encode(), digest_size=8).digest()
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": int.from_bytes(digest, "big", signed=True)})


def rebuild_leaderboard(session: Session, dataset: str, judge: str, *,
                        max_unscored: float | None = None) -> int:
    """Re-rank the board of ``dataset`` under ``judge``; returns its number of entries.

    Scores are over each run's whole item set (missing items count 0). An entry whose
    judge could not score more than ``max_unscored`` of its items (default: the
    ``TUNIX_RT_LEADERBOARD_MAX_UNSCORED`` setting, 5%), or whose coverage is not known
    (evaluated before datasets existed), is listed with a flag and ranked below every
    complete entry.
    """
    if max_unscored is None:
        from tunix_rt.settings import get_settings

        max_unscored = get_settings().leaderboard_max_unscored
    _lock_board(session, dataset, judge)
    latest = (
        select(
            Evaluation.id.label("evaluation_id"), Evaluation.run_id, Evaluation.judge_version,
            Evaluation.score, Evaluation.ci_low, Evaluation.ci_high, Evaluation.n_scored,
            Evaluation.n_items, Evaluation.n_missing, Evaluation.n_unscored,
            Dataset.version.label("dataset_version"),
            Run.created_at.label("run_created_at"),
            func.row_number().over(partition_by=Evaluation.run_id,
                                   order_by=(Evaluation.finished_at.desc(),
                                             Evaluation.id.desc())).label("recency"))
        .join(Run, Run.id == Evaluation.run_id)
        .outerjoin(Dataset, Dataset.id == Evaluation.dataset_id)
        .where(Run.dataset == dataset, Run.dry_run.is_(False), Evaluation.judge == judge,
               Evaluation.status == EvaluationStatus.completed.value)
        .subquery())
    flag = case((latest.c.n_missing.is_(None), literal("coverage_unknown")),
                (latest.c.n_unscored > literal(max_unscored) * latest.c.n_items,
                 literal("unscored")), else_=null())
    flagged = case((flag.is_(None), 0), else_=1)
    # Unscored evaluations are dropped only after picking each run's latest: a latest
    # evaluation that scored nothing takes the run off the board rather than bringing
    # back an older one (the gate, too, compares the latest).
    ranked = select(
        literal(dataset), literal(judge), latest.c.run_id, latest.c.evaluation_id,
        latest.c.judge_version,
        func.row_number().over(order_by=(flagged.asc(), latest.c.score.desc(),
                                         latest.c.n_scored.desc(),
                                         latest.c.run_created_at.asc(), latest.c.run_id.asc())),
        latest.c.score, latest.c.ci_low, latest.c.ci_high, latest.c.n_items,
        latest.c.n_missing, latest.c.n_unscored, latest.c.dataset_version, flag,
        literal(utcnow(), LeaderboardEntry.updated_at.type),
    ).where(latest.c.recency == 1, latest.c.score.is_not(None))
    session.execute(delete(LeaderboardEntry).where(LeaderboardEntry.dataset == dataset,
                                                   LeaderboardEntry.judge == judge))
    columns = ["dataset", "judge", "run_id", "evaluation_id", "judge_version", "rank", "score",
               "ci_low", "ci_high", "n_items", "n_missing", "n_unscored", "dataset_version",
               "flag", "updated_at"]
    session.execute(insert(LeaderboardEntry).from_select(columns, ranked))
    return session.scalar(select(func.count()).select_from(LeaderboardEntry).where(
        LeaderboardEntry.dataset == dataset, LeaderboardEntry.judge == judge)) or 0


def board_judges(session: Session, dataset: str) -> list[str]:
    """The judges that have a board for ``dataset``."""
    return list(session.scalars(select(LeaderboardEntry.judge).where(
        LeaderboardEntry.dataset == dataset).distinct().order_by(LeaderboardEntry.judge)))


def resolve_judge(session: Session, dataset: str, judge: str | None) -> str:
    """The judge to show: the one asked for, or the dataset's only one."""
    return choose_judge(judge, lambda: board_judges(session, dataset),
                        none=f"no leaderboard for dataset {dataset!r} yet: evaluate a run of "
                             "it first (`tunix-rt evaluate RUN_ID`)",
                        several=f"dataset {dataset!r} has boards for several judges "
                                "({judges}); name one (--judge, or ?judge= in the API)")


def leaderboard_page(session: Session, dataset: str, judge: str, *, limit: int = 20,
                     cursor: str | None = None) -> Page:
    """One page of the board, best first; ``next_cursor`` is None on the last page."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    after = 0
    if cursor:
        (after,) = decode_cursor(cursor, RANK)  # an integer rank >= 1, never 10**30
    rows = session.execute(
        select(LeaderboardEntry, Run.name, Run.model)
        .join(Run, Run.id == LeaderboardEntry.run_id)
        .where(LeaderboardEntry.dataset == dataset, LeaderboardEntry.judge == judge,
               LeaderboardEntry.rank > after)
        .order_by(LeaderboardEntry.rank).limit(limit + 1)).all()
    entries = [Entry(e.rank, e.run_id, name, model, e.score, e.ci_low, e.ci_high, e.n_items,
                     e.judge_version, e.n_missing, e.n_unscored, e.dataset_version, e.flag)
               for e, name, model in rows[:limit]]
    next_cursor = encode_cursor(entries[-1].rank) if len(rows) > limit else None
    return Page(dataset, judge, entries, next_cursor)
