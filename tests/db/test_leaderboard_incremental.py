"""The board updated one evaluation at a time equals the board rebuilt from scratch.

Boards are made of random evaluations with ties on every key (score, items scored,
creation time), re-evaluations, dry runs, failed and unscored evaluations, flagged
entries. After each update the board, read page by page through cursors, is compared
with an ordering computed here in Python from the stored evaluations and with a
full rebuild's.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, func, select

from tunix_rt.quality.leaderboard import (Entry, leaderboard_page, rebuild_leaderboard,
                                          update_board_for_run)
from tunix_rt.store import db
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Evaluation, LeaderboardBoard, LeaderboardEntry, Run

DATASET, JUDGE = "arith", "exact_match"
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
N_ITEMS = 40


@dataclass
class Board:
    """Runs and evaluations written straight to the database, with a clock."""

    engine: Engine
    rng: random.Random
    clock: int = 0
    versions: int = 0

    def add_runs(self, n: int, *, dry_share: float = 0.1) -> list[str]:
        ids = []
        with session_scope(self.engine) as session:
            for _ in range(n):
                # Three creation times only, so ties on it reach the run id.
                created = T0 + timedelta(hours=self.rng.randrange(3))
                run = Run(id=f"{self.rng.getrandbits(64):016x}", name=f"r{len(ids)}",
                          dataset=DATASET, model="m", predictions_uri="x.jsonl",
                          status="completed", dry_run=self.rng.random() < dry_share,
                          created_at=created, updated_at=created)
                session.add(run)
                ids.append(run.id)
        return ids

    def evaluate(self, session: object, run_id: str) -> None:
        """A random evaluation of ``run_id`` (a new judge version), finished now; now and
        then one finished before the run's latest, which must not replace it."""
        self.clock += 1
        self.versions += 1
        late = self.rng.random() < 0.1
        finished = T0 + timedelta(days=1, seconds=self.clock - (10_000 if late else 0))
        status = "failed" if self.rng.random() < 0.05 else "completed"
        n_unscored = self.rng.choice([0, 0, 1, 2, 3, 10, 10, N_ITEMS])
        n_scored = N_ITEMS - n_unscored
        score = (None if n_scored == 0 or status == "failed"
                 else self.rng.choice([0.25, 0.5, 0.5, 0.75, 1.0]))
        session.add(Evaluation(  # type: ignore[attr-defined]
            run_id=run_id, judge=JUDGE, judge_version=f"v{self.versions}", status=status,
            score=score, ci_low=None if score is None else score - 0.1,
            ci_high=None if score is None else min(1.0, score + 0.1), n_items=N_ITEMS,
            n_scored=n_scored, n_unscored=n_unscored,
            n_missing=None if self.rng.random() < 0.1 else self.rng.choice([0, 0, 5]),
            started_at=finished, finished_at=finished, duration_s=1.0))
        session.flush()  # type: ignore[attr-defined]


def expected_board(engine: Engine, max_unscored: float = 0.05) -> list[tuple]:
    """The documented order, computed in Python from every stored evaluation."""
    with session_scope(engine) as session:
        runs = {r.id: r for r in session.scalars(select(Run).where(Run.dataset == DATASET))}
        latest: dict[str, Evaluation] = {}
        for ev in session.scalars(select(Evaluation).where(Evaluation.judge == JUDGE,
                                                           Evaluation.status == "completed")):
            seen = latest.get(ev.run_id)
            if seen is None or (ev.finished_at, ev.id) > (seen.finished_at, seen.id):
                latest[ev.run_id] = ev
    rows = []
    for run_id, ev in latest.items():
        run = runs[run_id]
        if run.dry_run or ev.score is None:
            continue
        flag = ("coverage_unknown" if ev.n_missing is None
                else "unscored" if ev.n_unscored > max_unscored * ev.n_items else None)
        key = (flag is not None, -ev.score, -ev.n_scored, run.created_at, run_id)
        rows.append((key, (run_id, ev.score, ev.ci_low, ev.ci_high, ev.n_items,
                           ev.judge_version, ev.n_missing, ev.n_unscored, flag)))
    rows.sort(key=lambda r: r[0])
    return [(rank, *row) for rank, (_, row) in enumerate(rows, start=1)]


def shown(entries: list[Entry]) -> list[tuple]:
    return [(e.rank, e.run_id, e.score, e.ci_low, e.ci_high, e.n_items, e.judge_version,
             e.n_missing, e.n_unscored, e.flag) for e in entries]


def walk(engine: Engine, limit: int = 7) -> list[Entry]:
    """Every entry, a page at a time through the cursors."""
    seen: list[Entry] = []
    cursor = None
    while True:
        with session_scope(engine) as session:
            page = leaderboard_page(session, DATASET, JUDGE, limit=limit, cursor=cursor)
        seen.extend(page.entries)
        cursor = page.next_cursor
        if cursor is None:
            return seen


def board_size(engine: Engine) -> tuple[int, int]:
    with session_scope(engine) as session:
        board = session.get(LeaderboardBoard, (DATASET, JUDGE))
        rows = session.scalar(select(func.count()).select_from(LeaderboardEntry))
        return (board.n_entries if board else 0), rows or 0


def completed(run_id: str, *, score: float = 0.5, ci: tuple[float, float] = (0.4, 0.6),
              unscored: int = 0) -> Evaluation:
    """A completed evaluation of ``run_id`` at T0 over N_ITEMS, ``unscored`` of them unscored."""
    return Evaluation(run_id=run_id, judge=JUDGE, judge_version="1", status="completed",
                      score=score, ci_low=ci[0], ci_high=ci[1], n_items=N_ITEMS,
                      n_scored=N_ITEMS - unscored, n_unscored=unscored, n_missing=0,
                      finished_at=T0, started_at=T0)


def test_updates_one_at_a_time_equal_a_rebuild(engine: Engine) -> None:
    board = Board(engine, random.Random(7))
    runs = board.add_runs(30)
    for step in range(80):
        run_id = board.rng.choice(runs)
        with session_scope(engine) as session:
            board.evaluate(session, run_id)
            update_board_for_run(session, DATASET, JUDGE, run_id)
        if step % 20 == 19:
            assert shown(walk(engine)) == expected_board(engine), f"after step {step}"
    final = shown(walk(engine))
    assert final == expected_board(engine)
    # The random board has what the test means to cover.
    assert {row[-1] for row in final} == {None, "unscored", "coverage_unknown"}
    assert len(final) > 15 and len({row[2] for row in final}) < len(final)  # score ties
    assert board_size(engine) == (len(final), len(final))
    with session_scope(engine) as session:
        assert rebuild_leaderboard(session, DATASET, JUDGE) == len(final)
    assert shown(walk(engine, limit=4)) == final


def test_a_run_that_stops_qualifying_leaves_the_board(engine: Engine) -> None:
    board = Board(engine, random.Random(3))
    runs = board.add_runs(5, dry_share=0.0)
    with session_scope(engine) as session:
        for run_id in runs:
            session.add(completed(run_id))
        session.flush()
        for run_id in runs:
            update_board_for_run(session, DATASET, JUDGE, run_id)
    assert len(walk(engine)) == 5
    with session_scope(engine) as session:
        session.get(Run, runs[0]).dry_run = True
        session.add(Evaluation(run_id=runs[1], judge=JUDGE, judge_version="2",
                               status="completed", score=None, n_items=N_ITEMS, n_scored=0,
                               n_unscored=N_ITEMS, n_missing=0, finished_at=T0 + timedelta(1),
                               started_at=T0))
        session.flush()
        for run_id in runs[:2]:
            assert update_board_for_run(session, DATASET, JUDGE, run_id) in (4, 3)
    entries = walk(engine)
    assert [e.rank for e in entries] == [1, 2, 3]
    assert {e.run_id for e in entries} == set(runs[2:])
    assert shown(entries) == expected_board(engine)
    assert board_size(engine) == (3, 3)


def test_pages_after_the_board_changed_show_exact_ranks(engine: Engine) -> None:
    """A cursor made before an update: its next page counts the rows ahead again."""
    board = Board(engine, random.Random(11))
    runs = board.add_runs(40, dry_share=0.0)
    with session_scope(engine) as session:
        for run_id in runs:
            board.evaluate(session, run_id)
        rebuild_leaderboard(session, DATASET, JUDGE)
    n = len(expected_board(engine))
    assert n >= 20
    extra = board.add_runs(4, dry_share=0.0)

    def top(session: object, run_id: str) -> None:
        session.add(Evaluation(  # type: ignore[attr-defined]
            run_id=run_id, judge=JUDGE, judge_version="top", status="completed", score=2.0,
            ci_low=1.9, ci_high=2.0, n_items=N_ITEMS, n_scored=N_ITEMS, n_unscored=0,
            n_missing=0, finished_at=T0 + timedelta(days=9), started_at=T0))
        session.flush()  # type: ignore[attr-defined]
        update_board_for_run(session, DATASET, JUDGE, run_id)

    # Near the top (counted from the start) and near the bottom (from the end).
    for limit, pages_before, new in ((4, 1, extra[:2]), (n - 6, 1, extra[2:])):
        with session_scope(engine) as session:
            page = leaderboard_page(session, DATASET, JUDGE, limit=limit)
        for _ in range(pages_before - 1):
            with session_scope(engine) as session:
                page = leaderboard_page(session, DATASET, JUDGE, limit=limit,
                                        cursor=page.next_cursor)
        with session_scope(engine) as session:
            for run_id in new:  # two runs go to the top of the board
                top(session, run_id)
        with session_scope(engine) as session:
            after = leaderboard_page(session, DATASET, JUDGE, limit=limit,
                                     cursor=page.next_cursor)
        now = {e.run_id: e.rank for e in walk(engine)}
        assert after.entries
        assert [e.rank for e in after.entries] == [now[e.run_id] for e in after.entries]
        assert after.entries[0].rank == page.entries[-1].rank + 3  # two new ahead


def test_a_changed_threshold_rebuilds_the_board_once(engine: Engine) -> None:
    board = Board(engine, random.Random(5))
    runs = board.add_runs(3, dry_share=0.0)
    with session_scope(engine) as session:
        for run_id, unscored in zip(runs, (0, 4, 8)):  # 0%, 10%, 20% of 40
            session.add(completed(run_id, score=0.5 + unscored / 100, ci=(0.1, 0.9),
                                  unscored=unscored))
        session.flush()
        for run_id in runs:
            update_board_for_run(session, DATASET, JUDGE, run_id)
    assert [e.flag for e in walk(engine)] == [None, "unscored", "unscored"]
    with session_scope(engine) as session:
        # Any run's update under the new threshold re-flags the whole board.
        update_board_for_run(session, DATASET, JUDGE, runs[0], max_unscored=0.15)
    assert [(e.run_id, e.flag) for e in walk(engine)] == [
        (runs[1], None), (runs[0], None), (runs[2], "unscored")]
    assert shown(walk(engine)) == expected_board(engine, 0.15)
    with session_scope(engine) as session:
        assert session.get(LeaderboardBoard, (DATASET, JUDGE)).max_unscored == 0.15


def test_boards_carried_over_by_the_migration_keep_their_ranks(engine: Engine) -> None:
    board = Board(engine, random.Random(13))
    runs = board.add_runs(15)
    with session_scope(engine) as session:
        for run_id in runs:
            board.evaluate(session, run_id)
        rebuild_leaderboard(session, DATASET, JUDGE)
    before = shown(walk(engine))
    assert before == expected_board(engine) and len(before) > 5

    db.downgrade(engine, "20261130_0012")  # stored ranks, as before this change
    with engine.connect() as conn:
        stored = conn.exec_driver_sql(
            "SELECT rank, run_id FROM leaderboard_entries ORDER BY rank").all()
    assert [tuple(r) for r in stored] == [(row[0], row[1]) for row in before]
    db.upgrade(engine)

    assert shown(walk(engine)) == before
    with session_scope(engine) as session:
        carried = session.get(LeaderboardBoard, (DATASET, JUDGE))
        assert (carried.max_unscored, carried.n_entries) == (None, len(before))
        # The threshold the carried flags were made with is unknown: the next update
        # rebuilds, and records it.
        board.evaluate(session, runs[0])
        update_board_for_run(session, DATASET, JUDGE, runs[0])
        assert session.get(LeaderboardBoard, (DATASET, JUDGE)).max_unscored == 0.05
    assert shown(walk(engine)) == expected_board(engine)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_concurrent_updates_end_with_the_rebuilt_board(engine: Engine) -> None:
    """Four writers at once on one board, on overlapping runs, each evaluation and its
    update in one transaction: the board equals the rebuild, its size is exact."""
    board = Board(engine, random.Random(17))
    runs = board.add_runs(24)
    lock = threading.Lock()
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait(timeout=60)
            for _ in range(15):
                run_id = rng.choice(runs)
                with session_scope(engine) as session:
                    with lock:  # the shared generator and clock, not the database
                        board.evaluate(session, run_id)
                    update_board_for_run(session, DATASET, JUDGE, run_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    final = shown(walk(engine))
    assert final == expected_board(engine)
    assert board_size(engine) == (len(final), len(final))
    with session_scope(engine) as session:
        # Every update bumped it once: none was lost to another writer.
        assert session.get(LeaderboardBoard, (DATASET, JUDGE)).generation == 4 * 15
        rebuild_leaderboard(session, DATASET, JUDGE)
    assert shown(walk(engine)) == final


def test_a_changed_threshold_setting_applies_at_the_next_update(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    board = Board(engine, random.Random(19))
    [run_id] = board.add_runs(1, dry_share=0.0)
    with session_scope(engine) as session:
        session.add(completed(run_id, unscored=4))
        session.flush()
        update_board_for_run(session, DATASET, JUDGE, run_id)
    assert [e.flag for e in walk(engine)] == ["unscored"]  # 10% > the default 5%
    monkeypatch.setenv("TUNIX_RT_LEADERBOARD_MAX_UNSCORED", "0.2")
    with session_scope(engine) as session:
        update_board_for_run(session, DATASET, JUDGE, run_id)
    assert [e.flag for e in walk(engine)] == [None]
    monkeypatch.delenv("TUNIX_RT_LEADERBOARD_MAX_UNSCORED")
    with session_scope(engine) as session:
        update_board_for_run(session, DATASET, JUDGE, run_id)
    assert [e.flag for e in walk(engine)] == ["unscored"]


def test_a_tampered_cursor_is_refused_naming_the_cursor(engine: Engine) -> None:
    from tunix_rt.errors import InvalidInputError
    from tunix_rt.store.cursor import encode_cursor

    board = Board(engine, random.Random(23))
    runs = board.add_runs(3, dry_share=0.0)
    with session_scope(engine) as session:
        for run_id in runs:
            session.add(completed(run_id))
        session.flush()
        rebuild_leaderboard(session, DATASET, JUDGE)
        good = leaderboard_page(session, DATASET, JUDGE, limit=1).next_cursor
    stamp = T0.isoformat()
    for bad in ([1, 1, 0, -0.5, -40, stamp],  # one short
                [-1, 1, 0, -0.5, -40, stamp, "r"], [1, 0, 0, -0.5, -40, stamp, "r"],
                [1, 1, 2, -0.5, -40, stamp, "r"], [1, 1, True, -0.5, -40, stamp, "r"],
                [1, 1, 0, "NaN", -40, stamp, "r"], [1, 1, 0, 10**400, -40, stamp, "r"],
                [1, 1, 0, -0.5, 2**40, stamp, "r"], [1, 1, 0, -0.5, 1.5, stamp, "r"],
                [1, 1, 0, -0.5, -40, "yesterday", "r"], [1, 1, 0, -0.5, -40, stamp, ""],
                [2**64, 1, 0, -0.5, -40, stamp, "r"]):
        with session_scope(engine) as session:
            with pytest.raises(InvalidInputError, match="invalid cursor") as info:
                leaderboard_page(session, DATASET, JUDGE, cursor=encode_cursor(*bad))
        assert info.value.field == "cursor"
    with session_scope(engine) as session:
        assert len(leaderboard_page(session, DATASET, JUDGE, cursor=good).entries) == 2
