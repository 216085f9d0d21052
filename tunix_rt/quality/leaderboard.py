"""The leaderboard: one row per run, ranked at read time, read a page at a time.

Why no stored rank: with ranks on the rows, one new evaluation near the top moves
every rank below it, so each update cost as much as a full rebuild (612 ms at 20,000
runs on PostgreSQL, linear in the board). Instead each row carries its sort key, and
``ix_leaderboard_entries_order`` keeps the board in order: (dataset, judge, then 1
when flagged, minus the score, minus the items scored, the run's creation time, the
run id), every column ascending, so that "the rows after this key" is one row-value
comparison the index seeks to. The order is the one it always was: complete entries
first (coverage known, judge-side unscored share within the threshold), then score
over the whole item set, ties broken by more items scored, the earlier run, the run id.

- ``update_board_for_run`` (the quality loop, after storing an evaluation) deletes the
  run's row and inserts it again from its latest completed evaluation, with the same
  ``SELECT`` a rebuild uses restricted to that run, so the two cannot disagree: an
  index update, O(log n).
- ``rebuild_leaderboard`` re-derives the whole board (repair, the nightly flow, a new
  board, or a changed threshold).
- ``leaderboard_page`` seeks to the cursor's key and reads ``limit`` rows, O(page).
  A rank is 1 + the entries ahead. The first page counts none; a cursor carries the
  rank of its last row and the board's generation, so the next page of an unchanged
  board is O(page) too. When the board changed between two pages (a generation
  bumped by every update), the rows ahead are counted again, in the same statement
  as the page (one snapshot): an index-only count from the nearer end of the board,
  so ranks are always exact; only that page costs O(distance to the nearer end).
  A forged cursor can only mislabel its own page's ranks: it reads no other data.

The threshold (``TUNIX_RT_LEADERBOARD_MAX_UNSCORED``) decides each entry's flag, so it
is part of the sort key: each board records the threshold its flags were computed
with, and an update under another threshold rebuilds the board once instead.
Writers of one board serialize on an advisory lock (PostgreSQL; SQLite has one writer).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import (Integer, Select, String, bindparam, case, delete, func, insert, literal,
                        null, select, text, tuple_)
from sqlalchemy.orm import Session

from tunix_rt.errors import InvalidInputError
from tunix_rt.quality.judge_choice import choose_judge
from tunix_rt.store.cursor import (FLOAT, ID, RANK, TIMESTAMP, decode_cursor, encode_cursor,
                                   integer)
from tunix_rt.store.models import (Dataset, Evaluation, EvaluationStatus, LeaderboardBoard,
                                   LeaderboardEntry, Run, coverage, utcnow)

MAX_PAGE = 500
E = LeaderboardEntry
TABLE = LeaderboardEntry.__table__  # Core inserts: no ORM bulk-insert reading of parameters
# The board's order: the columns of ix_leaderboard_entries_order after (dataset, judge).
ORDER = (E.order_flagged, E.order_score, E.order_n_scored, E.run_created_at, E.run_id)
_INT32 = 2**31 - 1
# A cursor: the board generation, the rank of the page's last row, then its ORDER key.
CURSOR_KINDS = (integer(0, 2**63 - 1), RANK, integer(0, 1), FLOAT, integer(-_INT32, _INT32),
                TIMESTAMP, ID)
_COLUMNS = ["dataset", "judge", "run_id", "evaluation_id", "judge_version", "score", "ci_low",
            "ci_high", "n_items", "n_missing", "n_unscored", "dataset_version", "flag",
            "updated_at", "order_flagged", "order_score", "order_n_scored", "run_created_at"]


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
    """Serialize the writers of one board (PostgreSQL; SQLite has one writer)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.blake2b(f"leaderboard:{dataset}:{judge}".encode(), digest_size=8).digest()
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": int.from_bytes(digest, "big", signed=True)})


_THRESHOLD_VARIABLE = "TUNIX_RT_LEADERBOARD_MAX_UNSCORED"
_threshold_read: tuple[tuple[str, ...], float] | None = None


def _threshold(max_unscored: float | None) -> float:
    """The unscored threshold: the argument, else the setting, parsed again only when its
    variable changed (reading every setting costs milliseconds, more than an update)."""
    global _threshold_read
    if max_unscored is not None:
        return float(max_unscored)
    raw = tuple(v for k, v in os.environ.items() if k.upper() == _THRESHOLD_VARIABLE)
    if _threshold_read is None or _threshold_read[0] != raw:
        from tunix_rt.settings import get_settings

        _threshold_read = (raw, float(get_settings().leaderboard_max_unscored))
    return _threshold_read[1]


@functools.lru_cache(maxsize=64)
def _entry_rows(max_unscored: float, one_run: bool) -> Select[Any]:
    """The board's rows (one run's when ``one_run``), in ``_COLUMNS`` order; parameters
    ``board_dataset``, ``board_judge``, ``board_now`` (and ``board_run_id``). Built once
    per threshold: building it costs more than running it for one run.

    Each run's latest completed evaluation; unscored evaluations are dropped only after
    picking it: a latest evaluation that scored nothing takes the run off the board
    rather than bringing back an older one (the gate, too, compares the latest).
    """
    dataset = bindparam("board_dataset", type_=String())
    judge = bindparam("board_judge", type_=String())
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
               Evaluation.status == EvaluationStatus.completed.value))
    if one_run:
        latest = latest.where(Evaluation.run_id == bindparam("board_run_id", type_=String()))
    latest = latest.subquery()
    flag = case((latest.c.n_missing.is_(None), literal("coverage_unknown")),
                (latest.c.n_unscored > literal(max_unscored) * latest.c.n_items,
                 literal("unscored")), else_=null())
    return select(
        dataset, judge, latest.c.run_id, latest.c.evaluation_id,
        latest.c.judge_version, latest.c.score, latest.c.ci_low, latest.c.ci_high,
        latest.c.n_items, latest.c.n_missing, latest.c.n_unscored, latest.c.dataset_version,
        flag, bindparam("board_now", type_=E.updated_at.type),
        case((flag.is_(None), 0), else_=1), -latest.c.score, -latest.c.n_scored,
        latest.c.run_created_at,
    ).where(latest.c.recency == 1, latest.c.score.is_not(None))


def _board_row(session: Session, dataset: str, judge: str) -> LeaderboardBoard | None:
    return session.scalars(select(LeaderboardBoard).where(
        LeaderboardBoard.dataset == dataset, LeaderboardBoard.judge == judge)
        .execution_options(populate_existing=True)).first()


def rebuild_leaderboard(session: Session, dataset: str, judge: str, *,
                        max_unscored: float | None = None) -> int:
    """Re-derive the board of ``dataset`` under ``judge``; returns its number of entries.

    Scores are over each run's whole item set (missing items count 0). An entry whose
    judge could not score more than ``max_unscored`` of its items (default: the
    ``TUNIX_RT_LEADERBOARD_MAX_UNSCORED`` setting, 5%), or whose coverage is not known
    (evaluated before datasets existed), is listed with a flag and ranked below every
    complete entry.
    """
    max_unscored = _threshold(max_unscored)
    _lock_board(session, dataset, judge)
    session.execute(delete(E).where(E.dataset == dataset, E.judge == judge))
    session.execute(insert(TABLE).from_select(_COLUMNS, _entry_rows(max_unscored, False)),
                    {"board_dataset": dataset, "board_judge": judge, "board_now": utcnow()})
    n = session.scalar(select(func.count()).select_from(E).where(
        E.dataset == dataset, E.judge == judge)) or 0
    board = _board_row(session, dataset, judge)
    if board is None:
        session.add(LeaderboardBoard(dataset=dataset, judge=judge, max_unscored=max_unscored,
                                     n_entries=n, generation=1, updated_at=utcnow()))
    else:
        board.max_unscored, board.n_entries = max_unscored, n
        board.generation += 1
        board.updated_at = utcnow()
    session.flush()
    return n


def update_board_for_run(session: Session, dataset: str, judge: str, run_id: str, *,
                         max_unscored: float | None = None) -> int:
    """Bring one run's entry up to date after an evaluation; returns the board's size.

    The run's row is replaced by its latest completed evaluation's (or removed, when
    it no longer qualifies): the same rows a rebuild would write. A board that does not
    exist yet, or whose flags were computed under another threshold, is rebuilt.
    """
    max_unscored = _threshold(max_unscored)
    _lock_board(session, dataset, judge)
    board = _board_row(session, dataset, judge)
    if board is None or board.max_unscored != max_unscored:
        return rebuild_leaderboard(session, dataset, judge, max_unscored=max_unscored)
    # RETURNING, not rowcount: the driver may not count an INSERT ... SELECT (psycopg).
    removed = len(session.execute(delete(E).where(E.dataset == dataset, E.judge == judge,
                                                  E.run_id == run_id).returning(E.run_id)).all())
    added = len(session.execute(
        insert(TABLE).from_select(_COLUMNS, _entry_rows(max_unscored, True))
        .returning(TABLE.c.run_id),
        {"board_dataset": dataset, "board_judge": judge, "board_now": utcnow(),
         "board_run_id": run_id}).all())
    board.n_entries += added - removed
    board.generation += 1
    board.updated_at = utcnow()
    session.flush()
    return board.n_entries


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


@functools.lru_cache(maxsize=8)
def _page_statement(after_key: bool, recount: str | None) -> Select[Any]:
    """A page's statement, built once (building it cost more than running it): the rows
    after the key ``key_0``..``key_4`` (or from the top), with the board's generation
    and size, and with ``recount`` the entries ahead counted from the "top" or "end".
    Parameters ``board_dataset``, ``board_judge``, ``page_limit`` and the key."""
    c = TABLE.c
    dataset, judge = bindparam("board_dataset", type_=String()), bindparam("board_judge",
                                                                           type_=String())
    order = tuple_(c.order_flagged, c.order_score, c.order_n_scored, c.run_created_at,
                   c.run_id)
    key = tuple_(*(bindparam(f"key_{i}", type_=col.type) for i, col in enumerate(ORDER)))
    on_board = (c.dataset == dataset, c.judge == judge)
    board = (LeaderboardBoard.dataset == dataset, LeaderboardBoard.judge == judge)
    n_entries = select(LeaderboardBoard.n_entries).where(*board).scalar_subquery()
    columns: list[Any] = [
        c.run_id, Run.name.label("run_name"), Run.model.label("run_model"), c.score, c.ci_low,
        c.ci_high, c.n_items, c.judge_version, c.n_missing, c.n_unscored, c.dataset_version,
        c.flag, c.order_flagged, c.order_score, c.order_n_scored, c.run_created_at,
        select(LeaderboardBoard.generation).where(*board).scalar_subquery().label("generation"),
        n_entries.label("n_entries")]
    if recount == "top":
        columns.append(select(func.count()).select_from(TABLE).where(*on_board, order <= key)
                       .scalar_subquery().label("ahead"))
    elif recount == "end":
        columns.append((n_entries - select(func.count()).select_from(TABLE)
                        .where(*on_board, order > key).scalar_subquery()).label("ahead"))
    query = select(*columns).join_from(TABLE, Run, Run.id == c.run_id).where(*on_board)
    if after_key:
        query = query.where(order > key)
    return query.order_by(*order.clauses).limit(bindparam("page_limit", type_=Integer()))


def leaderboard_page(session: Session, dataset: str, judge: str, *, limit: int = 20,
                     cursor: str | None = None) -> Page:
    """One page of the board, best first; ``next_cursor`` is None on the last page."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    params: dict[str, Any] = {"board_dataset": dataset, "board_judge": judge,
                              "page_limit": limit + 1}
    ahead = 0  # entries ranked above the page's first row
    if cursor:
        generation, last_rank, *key = decode_cursor(cursor, *CURSOR_KINDS)
        params.update({f"key_{i}": v for i, v in enumerate(key)})
        rows = session.execute(_page_statement(True, None), params).all()
        ahead = last_rank
        if rows and rows[0].generation != generation:
            # The board changed since the cursor was made: count the rows ahead again,
            # from the nearer end, in the same statement (snapshot) as the page.
            size = rows[0].n_entries
            recount = "top" if size is None or last_rank <= size // 2 else "end"
            rows = session.execute(_page_statement(True, recount), params).all()
            ahead = rows[0].ahead if rows else 0
    else:
        rows = session.execute(_page_statement(False, None), params).all()
    entries = [Entry(ahead + i, r.run_id, r.run_name, r.run_model, r.score, r.ci_low,
                     r.ci_high, r.n_items, r.judge_version, r.n_missing, r.n_unscored,
                     r.dataset_version, r.flag)
               for i, r in enumerate(rows[:limit], start=1)]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = _cursor(rows[0].generation, ahead + limit, rows[limit - 1])
    return Page(dataset, judge, entries, next_cursor)


def cursor_at(session: Session, dataset: str, judge: str, rank: int) -> str | None:
    """A cursor whose page starts after ``rank`` (None: the board has fewer entries).

    Jumping to a rank costs an index walk to it, O(rank): for tools and benchmarks,
    not the read path, which only follows the cursors its pages hand out.
    """
    if rank < 1:
        raise InvalidInputError(f"rank must be at least 1, got {rank}")
    row = session.execute(
        select(E, select(LeaderboardBoard.generation).where(
            LeaderboardBoard.dataset == dataset, LeaderboardBoard.judge == judge)
            .scalar_subquery())
        .where(E.dataset == dataset, E.judge == judge).order_by(*ORDER)
        .offset(rank - 1).limit(1)).first()
    if row is None:
        return None
    return _cursor(row[1], rank, row[0])


def _cursor(generation: int | None, rank: int, last: Any) -> str:
    """The cursor of a page whose last row is ``last``, at ``rank``."""
    return encode_cursor(generation or 0, rank, last.order_flagged, last.order_score,
                         last.order_n_scored, last.run_created_at.isoformat(), last.run_id)
