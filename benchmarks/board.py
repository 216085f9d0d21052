"""Benchmarks 2 and 3: reading a page of a big board, and rebuilding it.

Both sides run on the same database, on the same board, in the same run.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from benchmarks.common import JUDGE, Result, Scale, analyze, bulk_board, interleaved
from tunix_rt.store.cursor import encode_cursor
from tunix_rt.store.db import make_engine, session_scope
from tunix_rt.quality.leaderboard import Entry, leaderboard_page, rebuild_leaderboard
from tunix_rt.store.models import Evaluation, EvaluationStatus, LeaderboardEntry, Run, utcnow

DATASET = "bench-board"
PAGE = 20


# --- the naive sides --------------------------------------------------------------------------


def naive_page(session: Session, dataset: str, judge: str, *, limit: int = PAGE,
               offset: int = 0) -> list[Entry]:
    """The same join, ordered by score with the same tie-breakers, paged by OFFSET."""
    rows = session.execute(
        select(LeaderboardEntry, Run.name, Run.model)
        .join(Run, Run.id == LeaderboardEntry.run_id)
        .where(LeaderboardEntry.dataset == dataset, LeaderboardEntry.judge == judge)
        .order_by(LeaderboardEntry.score.desc(), LeaderboardEntry.n_items.desc(),
                  Run.created_at.asc(), Run.id.asc())
        .offset(offset).limit(limit + 1)).all()
    return [Entry(e.rank, e.run_id, name, model, e.score, e.ci_low, e.ci_high, e.n_items,
                  e.judge_version) for e, name, model in rows[:limit]]


def naive_rebuild(session: Session, dataset: str, judge: str) -> int:
    """Fetch every evaluation, pick and sort in Python, insert with ``session.add``."""
    rows = session.execute(
        select(Evaluation, Run.created_at).join(Run, Run.id == Evaluation.run_id)
        .where(Run.dataset == dataset, Run.dry_run.is_(False), Evaluation.judge == judge,
               Evaluation.status == EvaluationStatus.completed.value,
               Evaluation.score.is_not(None))).all()
    latest: dict[str, tuple[Evaluation, Any]] = {}
    for ev, created_at in rows:
        seen = latest.get(ev.run_id)
        if seen is None or (ev.finished_at, ev.id) > (seen[0].finished_at, seen[0].id):
            latest[ev.run_id] = (ev, created_at)
    ranked = sorted(latest.values(),
                    key=lambda p: (-p[0].score, -p[0].n_scored, p[1], p[0].run_id))
    session.execute(delete(LeaderboardEntry).where(LeaderboardEntry.dataset == dataset,
                                                   LeaderboardEntry.judge == judge))
    now = utcnow()
    for rank, (ev, _) in enumerate(ranked, start=1):
        session.add(LeaderboardEntry(
            dataset=dataset, judge=judge, run_id=ev.run_id, evaluation_id=ev.id,
            judge_version=ev.judge_version, rank=rank, score=ev.score, ci_low=ev.ci_low,
            ci_high=ev.ci_high, n_items=ev.n_scored, updated_at=now))
    session.flush()
    return len(ranked)


def _board(engine: Any) -> list[tuple[int, str, int]]:
    with session_scope(engine) as session:
        return list(session.execute(
            select(LeaderboardEntry.rank, LeaderboardEntry.run_id, LeaderboardEntry.evaluation_id)
            .where(LeaderboardEntry.dataset == DATASET, LeaderboardEntry.judge == JUDGE)
            .order_by(LeaderboardEntry.rank)))


# --- the benchmarks ---------------------------------------------------------------------------


def run(url: str, backend: str, scale: Scale) -> list[Result]:
    engine = make_engine(url)
    n = scale.board_runs
    bulk_board(engine, DATASET, n)
    with session_scope(engine) as session:
        entries = rebuild_leaderboard(session, DATASET, JUDGE)
    assert entries == n, (entries, n)
    if backend == "postgresql":
        analyze(engine)
    results = [*_pages(engine, backend, scale), _rebuilds(engine, backend, scale)]
    engine.dispose()
    return results


def _pages(engine: Any, backend: str, scale: Scale) -> list[Result]:
    n = scale.board_runs
    deep = int(n * 0.95)  # rank 19,000 of 20,000 at full size
    out = []
    for label, after in (("leaderboard_page_deep", deep), ("leaderboard_page_first", 0)):
        cursor = encode_cursor(after) if after else None
        with session_scope(engine) as session:
            ours_rows = leaderboard_page(session, DATASET, JUDGE, limit=PAGE, cursor=cursor)
            naive_rows = naive_page(session, DATASET, JUDGE, offset=after)
            assert [e.run_id for e in ours_rows.entries] == [e.run_id for e in naive_rows], \
                "the two pages differ"

            def ours() -> None:
                leaderboard_page(session, DATASET, JUDGE, limit=PAGE, cursor=cursor)

            def naive() -> None:
                naive_page(session, DATASET, JUDGE, offset=after)

            t_ours, t_naive = interleaved(ours, naive, scale.page_reps)
        where = f"ranks {after + 1}-{after + PAGE}"
        out.append(Result(
            label, backend, f"{n:,} runs, {where}", t_ours, t_naive,
            "ORDER BY score ... OFFSET on the same join",
            notes=f"keyset on (dataset, judge, rank); median of {scale.page_reps}, one session"))
    return out


def _rebuilds(engine: Any, backend: str, scale: Scale) -> Result:
    n = scale.board_runs
    expected = _board(engine)

    # The naive rebuild must produce the very same board, or the race is meaningless.
    with session_scope(engine) as session:
        naive_rebuild(session, DATASET, JUDGE)
    assert _board(engine) == expected, "the naive rebuild ranks differently"

    def ours() -> None:
        with session_scope(engine) as session:
            rebuild_leaderboard(session, DATASET, JUDGE)

    def naive() -> None:
        with session_scope(engine) as session:
            naive_rebuild(session, DATASET, JUDGE)

    t_ours, t_naive = interleaved(ours, naive, scale.rebuild_reps)
    assert _board(engine) == expected
    with session_scope(engine) as session:
        n_evals = session.scalar(select(func.count()).select_from(Evaluation))
    return Result("leaderboard_rebuild", backend, f"{n:,} runs, {n_evals:,} evaluations",
                  t_ours, t_naive, "fetch all, sort in Python, session.add each",
                  notes=f"one INSERT ... SELECT with window functions; commit included; "
                        f"median of {scale.rebuild_reps}; boards checked identical")
