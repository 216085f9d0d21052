"""Benchmarks 2 and 3: reading a page of a big board, and rebuilding it; and
board_update: adding one evaluation to a board of 10k, 100k and 1M runs.

Both sides run on the same database, on the same board, in the same run.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from benchmarks.common import (JUDGE, Result, Scale, analyze, bulk_board, fmt_seconds,
                               interleaved)
from tunix_rt.store.db import make_engine, session_scope
from tunix_rt.quality.leaderboard import (ORDER, Entry, cursor_at, leaderboard_page,
                                          rebuild_leaderboard, update_board_for_run)
from tunix_rt.store.models import Evaluation, EvaluationStatus, LeaderboardEntry, Run, utcnow

DATASET = "bench-board"
PAGE = 20


# --- the naive sides --------------------------------------------------------------------------


def naive_page(session: Session, dataset: str, judge: str, *, limit: int = PAGE,
               offset: int = 0) -> list[Entry]:
    """The same join, ordered by flag, score and the same tie-breakers, paged by OFFSET."""
    rows = session.execute(
        select(LeaderboardEntry, Run.name, Run.model)
        .join(Run, Run.id == LeaderboardEntry.run_id)
        .where(LeaderboardEntry.dataset == dataset, LeaderboardEntry.judge == judge)
        .order_by(LeaderboardEntry.flag.is_not(None), LeaderboardEntry.score.desc(),
                  LeaderboardEntry.order_n_scored, Run.created_at.asc(), Run.id.asc())
        .offset(offset).limit(limit + 1)).all()
    return [Entry(offset + i, e.run_id, name, model, e.score, e.ci_low, e.ci_high, e.n_items,
                  e.judge_version) for i, (e, name, model) in enumerate(rows[:limit], start=1)]


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
    session.execute(delete(LeaderboardEntry).where(LeaderboardEntry.dataset == dataset,
                                                   LeaderboardEntry.judge == judge))
    now = utcnow()
    for ev, created_at in latest.values():
        flag = ("coverage_unknown" if ev.n_missing is None
                else "unscored" if ev.n_unscored > 0.05 * ev.n_items else None)
        session.add(LeaderboardEntry(
            dataset=dataset, judge=judge, run_id=ev.run_id, evaluation_id=ev.id,
            judge_version=ev.judge_version, score=ev.score, ci_low=ev.ci_low,
            ci_high=ev.ci_high, n_items=ev.n_items, n_missing=ev.n_missing,
            n_unscored=ev.n_unscored, flag=flag, updated_at=now,
            order_flagged=int(flag is not None), order_score=-ev.score,
            order_n_scored=-ev.n_scored, run_created_at=created_at))
    session.flush()
    return len(latest)


def _board(engine: Any) -> list[tuple[str, int]]:
    with session_scope(engine) as session:
        return list(session.execute(
            select(LeaderboardEntry.run_id, LeaderboardEntry.evaluation_id)
            .where(LeaderboardEntry.dataset == DATASET, LeaderboardEntry.judge == JUDGE)
            .order_by(*ORDER)))


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
        with session_scope(engine) as session:
            cursor = cursor_at(session, DATASET, JUDGE, after) if after else None
        with session_scope(engine) as session:
            ours_rows = leaderboard_page(session, DATASET, JUDGE, limit=PAGE, cursor=cursor)
            naive_rows = naive_page(session, DATASET, JUDGE, offset=after)
            assert ([(e.rank, e.run_id) for e in ours_rows.entries]
                    == [(e.rank, e.run_id) for e in naive_rows]), "the two pages differ"

            def ours() -> None:
                leaderboard_page(session, DATASET, JUDGE, limit=PAGE, cursor=cursor)

            def naive() -> None:
                naive_page(session, DATASET, JUDGE, offset=after)

            t_ours, t_naive = interleaved(ours, naive, scale.page_reps)
        where = f"ranks {after + 1}-{after + PAGE}"
        out.append(Result(
            label, backend, f"{n:,} runs, {where}", t_ours, t_naive,
            "ORDER BY score ... OFFSET on the same join",
            notes=f"keyset on the board's order index, rank carried by the cursor; median of "
                  f"{scale.page_reps}, one session"))
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


# --- board_update: one evaluation on a busy board ------------------------------------------

BUSY = "bench-busy"
FULL_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (2_000, 10_000)
WALK_PAGE = 500


def _fill(engine: Any, n: int) -> None:
    """``n`` runs with an evaluation each (a fifth with an older one too), by
    ``INSERT ... SELECT generate_series``: a million runs in well under a minute.

    Scores are multiples of 1/500 and creation times come in threes, so ties reach
    every key; one run in 50 is flagged unscored, one in 97 has unknown coverage.
    """
    from sqlalchemy import text

    t0 = utcnow() - timedelta(days=60)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO runs (id, name, dataset, model, config, metrics, predictions_uri, "
            "status, dry_run, origin, created_at, updated_at, completed_at) "
            "SELECT lpad(to_hex(i), 32, '0'), 'run-' || i, :ds, 'model-' || (i % 7), '{}', "
            "'{}', '/data/' || i || '.jsonl', 'completed', false, 'cli', c, c, c "
            "FROM (SELECT i, :t0 + (i / 3) * interval '1 second' AS c "
            "FROM generate_series(1, :n) AS i) g"), {"ds": BUSY, "t0": t0, "n": n})
        for version, share, back in (("1.0", 1, 0), ("0.9", 5, 1)):
            conn.execute(text(
                "INSERT INTO evaluations (run_id, judge, judge_version, status, score, ci_low, "
                "ci_high, n_items, n_scored, n_unscored, n_missing, started_at, finished_at, "
                "duration_s) SELECT lpad(to_hex(i), 32, '0'), :judge, :version, 'completed', "
                "s, greatest(0, s - 0.04), least(1, s + 0.04), 500, 500 - u, u, m, t, t, 3.0 "
                "FROM (SELECT i, ((i::bigint * 2654435761) % 301 + 150) / 500.0 AS s, "
                "CASE WHEN i % 50 = 0 THEN 30 ELSE (i::bigint * 7919) % 4 END AS u, "
                "CASE WHEN i % 97 = 0 THEN NULL ELSE 0 END AS m, "
                ":t0 + interval '1 day' - :back * interval '1 hour' "
                "+ i * interval '1 millisecond' AS t "
                "FROM generate_series(1, :n) AS i WHERE i % :share = 0) g"),
                {"judge": JUDGE, "version": version, "back": back, "share": share, "t0": t0,
                 "n": n})


def _vacuum(engine: Any) -> None:
    from sqlalchemy import text

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE runs, evaluations, leaderboard_entries"))


class _Adder:
    """Adds one evaluation: to a new run half the time, else to an existing run."""

    def __init__(self, n: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.n = n
        self.k = 0

    def __call__(self, session: Session) -> str:
        self.k += 1
        now = utcnow()
        if self.rng.random() < 0.5:
            run_id = f"f{self.k:031x}"
            session.add(Run(id=run_id, name=f"new-{self.k}", dataset=BUSY, model="model-new",
                            config={}, metrics={}, predictions_uri=f"/data/{run_id}.jsonl",
                            status="completed", created_at=now, updated_at=now))
            session.flush()
        else:
            run_id = f"{int(self.rng.integers(1, self.n + 1)):032x}"
        score = int(self.rng.integers(150, 451)) / 500
        unscored = int(self.rng.integers(0, 4))
        session.add(Evaluation(run_id=run_id, judge=JUDGE, judge_version=f"u{self.k}",
                               status="completed", score=score, ci_low=score - 0.04,
                               ci_high=score + 0.04, n_items=500, n_scored=500 - unscored,
                               n_unscored=unscored, n_missing=0, started_at=now,
                               finished_at=now, duration_s=3.0))
        session.flush()
        return run_id


def _walk_digest(engine: Any) -> tuple[int, str]:
    """Every entry read page by page through the cursors: its count and a digest of the
    ranks, runs, scores, CIs, counts and flags, in order."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    count, cursor = 0, None
    while True:
        with session_scope(engine) as session:
            page = leaderboard_page(session, BUSY, JUDGE, limit=WALK_PAGE, cursor=cursor)
        for e in page.entries:
            count += 1
            assert e.rank == count, (e.rank, count)
            digest.update(repr((e.rank, e.run_id, e.score, e.ci_low, e.ci_high, e.n_items,
                                e.n_missing, e.n_unscored, e.judge_version, e.flag)).encode())
        cursor = page.next_cursor
        if cursor is None:
            return count, digest.hexdigest()


def _server_ms(session: Session, statement: Any, reps: int = 20) -> float:
    """The median execution time PostgreSQL itself reports for ``statement``
    (EXPLAIN ANALYZE): the database's share of a call, apart from the client, the
    network and the scheduler of a loaded machine."""
    import json
    import statistics

    from sqlalchemy import text
    from sqlalchemy.dialects import postgresql

    sql = str(statement.compile(dialect=postgresql.dialect(),
                                compile_kwargs={"literal_binds": True}))
    times = []
    for _ in range(reps):
        plan = session.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)).scalar()
        plan = json.loads(plan) if isinstance(plan, str) else plan
        times.append(plan[0]["Execution Time"])
    return statistics.median(times)


def _page_statement(cursor: str | None) -> Any:
    """The statement leaderboard_page runs for ``cursor`` on an unchanged board."""
    from sqlalchemy import literal, tuple_

    from tunix_rt.quality.leaderboard import CURSOR_KINDS
    from tunix_rt.store.cursor import decode_cursor

    query = (select(LeaderboardEntry, Run.name, Run.model)
             .join(Run, Run.id == LeaderboardEntry.run_id)
             .where(LeaderboardEntry.dataset == BUSY, LeaderboardEntry.judge == JUDGE)
             .order_by(*ORDER).limit(PAGE + 1))
    if cursor:
        _, _, *key = decode_cursor(cursor, *CURSOR_KINDS)
        query = query.where(tuple_(*ORDER) > tuple_(*(literal(v, type_=c.type)
                                                      for c, v in zip(ORDER, key))))
    return query


def _p95(times: list[float]) -> float:
    return float(np.percentile(times, 95))


def run_update(url: str, scale: Scale) -> list[Result]:
    """board_update on PostgreSQL at each size: adding one evaluation (insert, board
    update, commit) against the same with a full rebuild, then first and deep pages."""
    import sys

    out: list[Result] = []
    for n in (QUICK_SIZES if scale.quick else FULL_SIZES):
        got = _update_at(url, n, scale)
        for r in got:
            print(f"           {n:,} runs: {r.benchmark} p95 {fmt_seconds(r.ours_s)} vs "
                  f"{fmt_seconds(r.naive_s)}", file=sys.stderr, flush=True)
        out.extend(got)
    return out


def _update_at(url: str, n: int, scale: Scale) -> list[Result]:
    import statistics

    from sqlalchemy import text

    engine = make_engine(url)
    with engine.begin() as conn:  # one board per database: start empty
        conn.execute(text("TRUNCATE runs CASCADE"))
        conn.execute(text("DELETE FROM leaderboard_boards"))
    started = time.perf_counter()
    _fill(engine, n)
    with session_scope(engine) as session:
        size = rebuild_leaderboard(session, BUSY, JUDGE)
    _vacuum(engine)
    built_s = time.perf_counter() - started
    adder = _Adder(n, seed=n)

    def ours() -> float:
        start = time.perf_counter()
        with session_scope(engine) as session:
            update_board_for_run(session, BUSY, JUDGE, adder(session))
        return time.perf_counter() - start

    def naive() -> float:
        start = time.perf_counter()
        with session_scope(engine) as session:
            adder(session)
            rebuild_leaderboard(session, BUSY, JUDGE)
        return time.perf_counter() - start

    reps = 50 if scale.quick else 200
    naive_reps = 2 if n >= 1_000_000 else 5 if n >= 100_000 else 10
    if scale.quick:
        naive_reps = 3
    t_ours: list[float] = []
    t_naive: list[float] = []
    chunk = reps // (naive_reps + 1)
    for i in range(naive_reps + 1):  # side by side: a rebuild between runs of updates
        t_ours.extend(ours() for _ in range(chunk if i < naive_reps else reps - len(t_ours)))
        if i < naive_reps:
            t_naive.append(naive())

    # The board the updates made is the board a rebuild makes: ranks, CIs, flags, order.
    for _ in range(20):
        ours()
    count, incremental = _walk_digest(engine)
    with session_scope(engine) as session:
        rebuilt = rebuild_leaderboard(session, BUSY, JUDGE)
    assert (count, incremental) == (rebuilt, _walk_digest(engine)[1]), \
        "the updated board differs from the rebuilt one"
    _vacuum(engine)

    size_label = f"{count:,} runs on one board"
    target_update = ""
    if n >= 1_000_000:
        ok = _p95(t_ours) <= 0.100
        target_update = f"p95 <= 100 ms at 1M runs: {'met' if ok else 'NOT MET'}"
    results = [Result(
        "board_update", "postgresql", size_label, _p95(t_ours), _p95(t_naive),
        "the same insert with a full rebuild (what each evaluation did before)",
        notes=(f"p95 of {len(t_ours)} evaluations added (half to new runs), insert + board "
               f"update + commit; median {fmt_seconds(statistics.median(t_ours))} vs "
               f"{fmt_seconds(statistics.median(t_naive))} ({len(t_naive)} rebuilds); board "
               f"identical to a full rebuild ({count:,} entries, ranks/CIs/flags checked); "
               f"built in {built_s:.0f} s"),
        target=target_update,
        extra={"ours_median_s": statistics.median(t_ours),
               "naive_median_s": statistics.median(t_naive), "naive_runs_s": t_naive,
               "ours_max_s": max(t_ours), "entries": count, "initial_entries": size,
               "build_s": built_s})]
    results.extend(_busy_pages(engine, count, scale))
    engine.dispose()
    return results


def _busy_pages(engine: Any, count: int, scale: Scale) -> list[Result]:
    import statistics

    reps = 50 if scale.quick else 100
    deep = int(count * 0.95)
    out = []
    for label, after in (("board_update_page_first", 0), ("board_update_page_deep", deep)):
        with session_scope(engine) as session:
            cursor = cursor_at(session, BUSY, JUDGE, after) if after else None
            page = leaderboard_page(session, BUSY, JUDGE, limit=PAGE, cursor=cursor)
            naive_rows = naive_page(session, BUSY, JUDGE, offset=after)
            assert ([(e.rank, e.run_id) for e in page.entries]
                    == [(e.rank, e.run_id) for e in naive_rows]), "the two pages differ"

            def timed(fn: Any) -> float:
                start = time.perf_counter()
                fn()
                return time.perf_counter() - start

            t_ours, t_naive = [], []
            naive_reps = 3 if count >= 1_000_000 else reps // (10 if count >= 100_000 else 1)
            for i in range(reps):
                t_ours.append(timed(lambda: leaderboard_page(session, BUSY, JUDGE, limit=PAGE,
                                                             cursor=cursor)))
                if i < naive_reps:
                    t_naive.append(timed(lambda: naive_page(session, BUSY, JUDGE,
                                                            offset=after)))
            server_ms = _server_ms(session, _page_statement(cursor))
        extra: dict[str, Any] = {"ours_median_s": statistics.median(t_ours),
                                 "naive_median_s": statistics.median(t_naive),
                                 "ours_server_median_ms": server_ms}
        note = ""
        if after:
            # The same cursor after the board changed: the rows ahead are counted again.
            with session_scope(engine) as session:
                update_board_for_run(session, BUSY, JUDGE, f"{1:032x}")
            with session_scope(engine) as session:
                stale = [timed(lambda: leaderboard_page(session, BUSY, JUDGE, limit=PAGE,
                                                        cursor=cursor)) for _ in range(10)]
            extra["stale_cursor_median_s"] = statistics.median(stale)
            note = (f"; the same cursor after the board changed (rows ahead recounted from "
                    f"the nearer end): median {fmt_seconds(statistics.median(stale))}")
        target = ""
        if count >= 1_000_000:
            ok = _p95(t_ours) <= 0.010
            target = f"p95 <= 10 ms at 1M runs: {'met' if ok else 'NOT MET'}"
        where = f"ranks {after + 1}-{after + PAGE}"
        out.append(Result(
            label, "postgresql", f"{count:,} runs, {where}", _p95(t_ours), _p95(t_naive),
            "ORDER BY ... OFFSET on the same join",
            notes=(f"p95 of {reps} (naive {len(t_naive)}); median "
                   f"{fmt_seconds(statistics.median(t_ours))} vs "
                   f"{fmt_seconds(statistics.median(t_naive))}; PostgreSQL's own execution "
                   f"time {server_ms:.2f} ms (EXPLAIN ANALYZE median); keyset seek on the order "
                   f"index, rank carried by the cursor{note}"),
            target=target, extra=extra))
    return out
