"""The leaderboard: ranking, deterministic ties, what is left off, and paging by rank."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from tunix_rt.judges import judge_spec
from tunix_rt.judges.base import Verdict as JudgeVerdict
from tests.db.support import JUDGE, count, evaluate, evaluated_run, set_created_at
from tests.factories import make_run, write_predictions
from tunix_rt.store.cursor import encode_cursor
from tunix_rt.store.db import session_scope
from tunix_rt.errors import InvalidInputError, NotFoundError
from tunix_rt.quality.evaluation import (RunInfo, ScoredRun, score_items, store_evaluation,
                                 store_failed_evaluation)
from tunix_rt.quality.leaderboard import (MAX_PAGE, board_judges, leaderboard_page, rebuild_leaderboard,
                                  resolve_judge)
from tunix_rt.quality.datasets import EvalItem, register_dataset
from tunix_rt.store.models import Dataset, LeaderboardEntry, Run, utcnow
from tunix_rt.quality.predictions import read_predictions
from tunix_rt.store.runs import get_run

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)


def _rebuild(engine: Engine, dataset: str = "arith", judge: str = JUDGE) -> int:
    with session_scope(engine) as session:
        return rebuild_leaderboard(session, dataset, judge)


def _board(engine: Engine, dataset: str = "arith", judge: str = JUDGE) -> list:
    with session_scope(engine) as session:
        page = leaderboard_page(session, dataset, judge, limit=MAX_PAGE)
    assert page.next_cursor is None
    return page.entries


def _hits(n_right: int, n: int) -> list[bool]:
    return [True] * n_right + [False] * (n - n_right)


def test_runs_are_ranked_by_score(engine: Engine, tmp_path: Path) -> None:
    mid = evaluated_run(engine, tmp_path, "mid", _hits(6, 10))
    best = evaluated_run(engine, tmp_path, "best", _hits(9, 10))
    worst = evaluated_run(engine, tmp_path, "worst", _hits(2, 10))
    assert _rebuild(engine) == 3
    entries = _board(engine)
    assert [e.run_id for e in entries] == [best, mid, worst]
    assert [e.rank for e in entries] == [1, 2, 3]
    assert [e.run_name for e in entries] == ["best", "mid", "worst"]
    assert [e.score for e in entries] == [0.9, 0.6, 0.2]
    assert all(e.ci_low <= e.score <= e.ci_high for e in entries)
    assert all(e.n_items == 10 and e.model == "m" for e in entries)
    assert set(entries[0].to_dict()) >= {"rank", "run_id", "run_name", "score", "ci_low",
                                         "ci_high", "n_items"}


def _stored(engine: Engine, tmp_path: Path, name: str, scores: list[float | None]) -> str:
    """A run whose evaluation has exactly these item scores (None: the judge could not
    score the item), over the board's dataset: the verdicts are the test's input."""
    run_id = make_run(engine, tmp_path, name, [True] * len(scores))
    with session_scope(engine) as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == "arith"))
        if dataset is None:
            dataset = register_dataset(session, "arith", [
                EvalItem(f"q{i:05d}", None, str(i)) for i in range(len(scores))]).dataset
        verdicts = [JudgeVerdict(f"q{i:05d}", s, None if s is None else s >= 0.5, "", JUDGE,
                                 judge_spec(JUDGE).version) for i, s in enumerate(scores)]
        scored = [s for s in scores if s is not None]
        mean = sum(scored) / len(scored)
        store_evaluation(session, ScoredRun(run_id, JUDGE, judge_spec(JUDGE).version, verdicts,
                                            mean, mean, mean, utcnow(), 0.0,
                                            dataset_id=dataset.id, n_missing=0))
    return run_id


def test_ties_are_broken_by_items_scored_then_earlier_run_then_id(engine: Engine,
                                                                  tmp_path: Path) -> None:
    # Five runs at exactly 0.5 over a 40-item set. "wide" scored all 40; the others had
    # one item the judge could not score (2.5%, within the 5% allowed): "old" and "new"
    # differ in age, "twin_a"/"twin_b" in nothing but the id.
    wide = _stored(engine, tmp_path, "wide", [1.0] * 20 + [0.0] * 20)
    tie = [1.0] * 19 + [0.0] * 20 + [None]
    runs = {name: _stored(engine, tmp_path, name, tie) for name in ("new", "old", "twin_a",
                                                                    "twin_b")}
    top = _stored(engine, tmp_path, "top", [1.0] * 30 + [0.0] * 10)
    # The older run gets the larger id, so an accidental order by id would show.
    old_id, new_id = sorted([runs["old"], runs["new"]], reverse=True)
    runs["old"], runs["new"] = old_id, new_id
    set_created_at(engine, wide, T0 + timedelta(hours=5))  # the newest of all: age can't help
    set_created_at(engine, runs["old"], T0)
    set_created_at(engine, runs["new"], T0 + timedelta(hours=1))
    set_created_at(engine, runs["twin_a"], T0 + timedelta(hours=2))
    set_created_at(engine, runs["twin_b"], T0 + timedelta(hours=2))

    _rebuild(engine)
    twins = sorted([runs["twin_a"], runs["twin_b"]])
    expected = [top, wide, runs["old"], runs["new"], *twins]
    assert [e.run_id for e in _board(engine)] == expected
    assert [e.flag for e in _board(engine)] == [None] * 6
    # Deterministic: the same order on every rebuild.
    for _ in range(3):
        _rebuild(engine)
        assert [e.run_id for e in _board(engine)] == expected


def test_a_run_the_judge_could_not_score_enough_is_listed_below_complete_runs(
        engine: Engine, tmp_path: Path) -> None:
    # 40 items. "partial" scored 1.0 on the 30 items its judge could score: 25% unscored.
    partial = _stored(engine, tmp_path, "partial", [1.0] * 30 + [None] * 10)
    modest = _stored(engine, tmp_path, "modest", [1.0] * 24 + [0.0] * 16)
    edge = _stored(engine, tmp_path, "edge", [1.0] * 20 + [0.0] * 18 + [None] * 2)  # 5%: fine
    _rebuild(engine)
    entries = _board(engine)
    assert [(e.run_id, e.flag) for e in entries] == [
        (modest, None), (edge, None), (partial, "unscored")]
    assert (entries[2].score, entries[2].n_unscored, entries[2].n_items) == (1.0, 10, 40)
    with session_scope(engine) as session:
        rebuild_leaderboard(session, "arith", JUDGE, max_unscored=0.25)
    assert [e.run_id for e in _board(engine)] == [partial, modest, edge]


def test_answering_less_never_ranks_higher(engine: Engine, tmp_path: Path) -> None:
    """A run right on 85% of 400 items against one that answers 150, all correctly."""
    full = evaluated_run(engine, tmp_path, "full", _hits(340, 400))
    picked = make_run(engine, tmp_path, "cherry", [], predictions=write_predictions(
        tmp_path / "cherry.jsonl", [True] * 150))
    blank = make_run(engine, tmp_path, "blank", [], predictions=write_predictions(
        tmp_path / "blank.jsonl", [True] * 150 + [None] * 250))
    evaluate(engine, picked)
    evaluate(engine, blank)
    _rebuild(engine)
    entries = _board(engine)
    # picked and blank tie; picked is the older run.
    assert [e.run_id for e in entries] == [full, picked, blank]
    by_run = {e.run_id: e for e in entries}
    assert by_run[full].score == 0.85 and by_run[full].coverage == 1.0
    assert by_run[picked].score == 0.375 and by_run[picked].coverage == 0.375
    assert by_run[picked].n_missing == 250 and by_run[picked].flag is None
    assert by_run[blank].score == 0.375 and by_run[blank].coverage == 1.0
    # Cherry-picking and leaving blanks score the same: both are 150 right of 400.
    assert by_run[picked].ci_high < by_run[full].ci_low


def test_dry_runs_failed_and_unscored_evaluations_are_left_off(engine: Engine,
                                                               tmp_path: Path) -> None:
    shown = evaluated_run(engine, tmp_path, "shown", _hits(3, 10))
    # A dry run can't be evaluated through the loop; store one directly to be sure the
    # board itself leaves it off.
    dry = make_run(engine, tmp_path, "dry", _hits(10, 10), dry_run=True)
    spec = judge_spec(JUDGE)
    verdicts = [JudgeVerdict(f"q{i}", 1.0, True, "", JUDGE, spec.version) for i in range(10)]
    with session_scope(engine) as session:
        store_evaluation(session, ScoredRun(dry, JUDGE, spec.version, verdicts, 1.0, 1.0, 1.0,
                                            utcnow(), 0.0))
    failed = make_run(engine, tmp_path, "failed", _hits(10, 10))
    with session_scope(engine) as session:
        store_failed_evaluation(session, failed, JUDGE, "boom")
    unscored_path = tmp_path / "unscored.jsonl"
    unscored_path.write_text('{"id": "a", "response": ""}\n')
    unscored = make_run(engine, tmp_path, "unscored", [], predictions=str(unscored_path))
    with session_scope(engine) as session:
        info = RunInfo.of(get_run(session, unscored))
    with session_scope(engine) as session:
        store_evaluation(session, score_items(info, JUDGE, read_predictions(str(unscored_path))))
    other_dataset = evaluated_run(engine, tmp_path, "other", _hits(10, 10), dataset="other")
    other_judge = make_run(engine, tmp_path, "mocked", _hits(10, 10))
    evaluate(engine, other_judge, "mock")

    assert _rebuild(engine) == 1
    assert [e.run_id for e in _board(engine)] == [shown]
    assert _rebuild(engine, "other") == 1
    assert [e.run_id for e in _board(engine, "other")] == [other_dataset]
    assert _rebuild(engine, judge="mock") == 1
    assert [e.run_id for e in _board(engine, judge="mock")] == [other_judge]


def test_a_re_evaluated_run_is_ranked_by_its_latest_evaluation(engine: Engine,
                                                               tmp_path: Path) -> None:
    path = tmp_path / "moving.jsonl"
    moving = make_run(engine, tmp_path, "moving", [], predictions=write_predictions(
        path, _hits(9, 10)))
    evaluate(engine, moving)
    steady = evaluated_run(engine, tmp_path, "steady", _hits(5, 10))
    _rebuild(engine)
    assert [(e.run_id, e.score) for e in _board(engine)] == [(moving, 0.9), (steady, 0.5)]

    # Same judge version, scored again (--force) on a rewritten file.
    write_predictions(path, _hits(1, 10))
    latest = evaluate(engine, moving)
    _rebuild(engine)
    entries = _board(engine)
    assert [(e.run_id, e.score) for e in entries] == [(steady, 0.5), (moving, 0.1)]

    # A newer judge version: its evaluation is a second row, and the newer one counts.
    spec = judge_spec(JUDGE)
    verdicts = [JudgeVerdict(f"q{i:05d}", 1.0, True, "", JUDGE, "9.9") for i in range(10)]
    with session_scope(engine) as session:
        dataset_id = session.scalar(select(Dataset.id).where(Dataset.name == "arith"))
        newer = store_evaluation(session, ScoredRun(moving, JUDGE, "9.9", verdicts, 1.0, 1.0,
                                                    1.0, utcnow(), 0.0, dataset_id=dataset_id))
    assert newer.evaluation_id != latest.evaluation_id and spec.version != "9.9"
    assert _rebuild(engine) == 2
    with session_scope(engine) as session:
        rows = session.scalars(select(LeaderboardEntry)
                               .order_by(LeaderboardEntry.score.desc())).all()
        assert [(r.run_id, r.evaluation_id, r.judge_version, r.score) for r in rows] == [
            (moving, newer.evaluation_id, "9.9", 1.0),
            (steady, rows[1].evaluation_id, spec.version, 0.5)]


def test_rebuilding_twice_gives_the_same_board(engine: Engine, tmp_path: Path) -> None:
    for i in range(6):
        evaluated_run(engine, tmp_path, f"r{i}", _hits(i, 8))
    assert _rebuild(engine) == 6
    first = [e.to_dict() for e in _board(engine)]
    assert _rebuild(engine) == 6
    assert [e.to_dict() for e in _board(engine)] == first
    assert count(engine, LeaderboardEntry) == 6

    # A run that no longer qualifies (here: re-labelled a dry run) leaves no stale row,
    # and the ranks close up.
    run_id = first[0]["run_id"]
    with session_scope(engine) as session:
        session.execute(update(Run).where(Run.id == run_id).values(dry_run=True))
    assert _rebuild(engine) == 5
    entries = _board(engine)
    assert run_id not in {e.run_id for e in entries}
    assert [e.rank for e in entries] == [1, 2, 3, 4, 5]


def test_keyset_pagination_walks_every_entry_once(engine: Engine, tmp_path: Path) -> None:
    ids = {evaluated_run(engine, tmp_path, f"r{i:02d}", _hits(i % 7, 8)) for i in range(12)}
    _rebuild(engine)
    seen = []
    cursor = None
    pages = 0
    while True:
        with session_scope(engine) as session:
            page = leaderboard_page(session, "arith", JUDGE, limit=5, cursor=cursor)
        pages += 1
        assert len(page.entries) == (5 if page.next_cursor else 2)
        seen.extend(page.entries)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert [e.rank for e in seen] == list(range(1, 13))
    assert {e.run_id for e in seen} == ids and len(seen) == 12
    assert [e.score for e in seen] == sorted((e.score for e in seen), reverse=True)
    assert [e.run_id for e in seen] == [e.run_id for e in _board(engine)]


def test_empty_board_page(engine: Engine) -> None:
    with session_scope(engine) as session:
        page = leaderboard_page(session, "nothing", JUDGE)
    assert page.entries == [] and page.next_cursor is None
    assert page.to_dict() == {"dataset": "nothing", "judge": JUDGE, "entries": [],
                              "next_cursor": None}


def test_leaderboard_page_rejects_an_invalid_limit(engine: Engine) -> None:
    for limit in (0, -1, MAX_PAGE + 1):
        with session_scope(engine) as session:
            with pytest.raises(InvalidInputError,
                               match=f"limit must be between 1 and {MAX_PAGE}, got {limit}"):
                leaderboard_page(session, "arith", JUDGE, limit=limit)


def test_leaderboard_page_rejects_an_invalid_cursor(engine: Engine) -> None:
    for cursor in ["%%%", encode_cursor("3"), encode_cursor(1, 2), encode_cursor(None),
                   encode_cursor(2.5), encode_cursor(True)]:
        with session_scope(engine) as session:
            with pytest.raises(InvalidInputError, match="invalid cursor"):
                leaderboard_page(session, "arith", JUDGE, cursor=cursor)


def test_resolve_judge(engine: Engine, tmp_path: Path) -> None:
    with session_scope(engine) as session:
        with pytest.raises(NotFoundError, match="no leaderboard for dataset 'arith'.*evaluate"):
            resolve_judge(session, "arith", None)
        assert resolve_judge(session, "arith", "format") == "format"  # asked for: as is

    run_id = evaluated_run(engine, tmp_path, "r", _hits(3, 4))
    _rebuild(engine)
    with session_scope(engine) as session:
        assert resolve_judge(session, "arith", None) == JUDGE

    evaluate(engine, run_id, "mock")
    _rebuild(engine, judge="mock")
    with session_scope(engine) as session:
        assert board_judges(session, "arith") == [JUDGE, "mock"]
        with pytest.raises(InvalidInputError) as excinfo:
            resolve_judge(session, "arith", None)
        message = str(excinfo.value)
        assert "several judges" in message and "exact_match, mock" in message
        assert "--judge" in message
        assert resolve_judge(session, "arith", "mock") == "mock"



def test_a_latest_evaluation_without_scores_takes_the_run_off_the_board(
        engine: Engine, tmp_path: Path) -> None:
    # The run's newest completed evaluation (a newer judge version) could score nothing.
    # The board must not fall back to the older version's score: the gate uses the newest
    # evaluation, and the two would disagree about which evaluation is the run's.
    run_id = evaluated_run(engine, tmp_path, "r", _hits(9, 10))
    other = evaluated_run(engine, tmp_path, "other", _hits(5, 10))
    unscored = [JudgeVerdict.unscored(f"q{i:05d}", "cannot parse", judge=JUDGE,
                                      judge_version="9.9") for i in range(10)]
    with session_scope(engine) as session:
        store_evaluation(session, ScoredRun(run_id, JUDGE, "9.9", unscored, None, None, None,
                                            utcnow(), 0.0))
    assert _rebuild(engine) == 1
    assert [e.run_id for e in _board(engine)] == [other]
