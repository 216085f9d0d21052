"""Evaluations: scored and stored whole, idempotent on re-store, failures that keep good data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from tunix_rt.judges import judge_spec
from tunix_rt.judges.base import Verdict as JudgeVerdict
from tests.db.support import JUDGE, count, evaluate
from tests.factories import correctness, make_run, write_predictions
from tunix_rt.quality import evaluation
from tunix_rt.store.db import session_scope
from tunix_rt.errors import PredictionsError
from tunix_rt.quality.evaluation import (RunInfo, ScoredRun, find_evaluation, item_outcomes,
                                 latest_evaluation, score_items, store_evaluation,
                                 store_failed_evaluation)
from tunix_rt.store.models import Evaluation, Verdict, utcnow
from tunix_rt.quality.predictions import read_predictions
from tunix_rt.store.runs import get_run


def _info(engine: Engine, run_id: str) -> RunInfo:
    with session_scope(engine) as session:
        return RunInfo.of(get_run(session, run_id))


def _verdicts(engine: Engine, evaluation_id: int) -> dict[str, Verdict]:
    with session_scope(engine) as session:
        return {v.item_id: v for v in session.scalars(
            select(Verdict).where(Verdict.evaluation_id == evaluation_id))}


def _score_task_path(engine: Engine, run_id: str) -> None:
    """What the score task does: read, and on a bad file record the failure and re-raise."""
    spec = judge_spec(JUDGE)
    info = _info(engine, run_id)
    try:
        items = read_predictions(info.predictions_uri, require_reference=True)
    except PredictionsError as exc:
        with session_scope(engine) as session:
            store_failed_evaluation(session, run_id, spec.name, str(exc))
        raise
    scored = score_items(info, spec.name, items)
    with session_scope(engine) as session:
        store_evaluation(session, scored)


def test_store_writes_one_evaluation_and_one_verdict_per_item(engine: Engine,
                                                             tmp_path: Path) -> None:
    correct = correctness(50, 0.7, seed=4)
    run_id = make_run(engine, tmp_path, "r", correct)
    summary = evaluate(engine, run_id)

    assert summary.status == "completed" and summary.error is None
    assert (summary.n_items, summary.n_scored, summary.n_unscored) == (50, 50, 0)
    assert summary.score == pytest.approx(sum(correct) / 50)
    assert summary.ci_low <= summary.score <= summary.ci_high
    assert summary.judge == JUDGE and summary.judge_version == judge_spec(JUDGE).version
    assert count(engine, Evaluation) == 1
    verdicts = _verdicts(engine, summary.evaluation_id)
    assert set(verdicts) == {f"q{i:05d}" for i in range(50)}
    for i, ok in enumerate(correct):
        v = verdicts[f"q{i:05d}"]
        assert v.score == (1.0 if ok else 0.0) and v.passed is bool(ok)
        assert v.rationale and v.raw["reference"] == str(i)
    with session_scope(engine) as session:
        scores = item_outcomes(session, summary.evaluation_id)
        assert scores == {f"q{i:05d}": (1.0 if ok else 0.0) for i, ok in enumerate(correct)}
        stored = find_evaluation(session, run_id, JUDGE)
        assert stored is not None and stored.id == summary.evaluation_id
        assert latest_evaluation(session, run_id, JUDGE).id == summary.evaluation_id


def test_storing_again_updates_the_one_row_and_replaces_verdicts(engine: Engine,
                                                                 tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    run_id = make_run(engine, tmp_path, "r", [], predictions=write_predictions(
        path, [True] * 30))
    first = evaluate(engine, run_id)
    assert first.score == 1.0
    # Same store again (a retried task): nothing doubles.
    again = evaluate(engine, run_id)
    assert again.evaluation_id == first.evaluation_id
    assert count(engine, Evaluation) == 1 and count(engine, Verdict) == 30

    # The file is rewritten (say, a re-export) and the run scored again with --force.
    write_predictions(path, [False] * 10 + [True] * 20)
    third = evaluate(engine, run_id)
    assert third.evaluation_id == first.evaluation_id
    assert third.score == pytest.approx(20 / 30)
    assert count(engine, Evaluation) == 1 and count(engine, Verdict) == 30
    verdicts = _verdicts(engine, first.evaluation_id)
    assert sum(v.score for v in verdicts.values()) == 20
    assert verdicts["q00000"].passed is False and verdicts["q00029"].passed is True

    # Fewer items than the dataset (the first file made it: 30 items): the items the
    # file lacks are wrong answers, each with a verdict saying so; none is left behind.
    write_predictions(path, [True] * 12)
    fourth = evaluate(engine, run_id)
    assert count(engine, Verdict) == 30
    assert (fourth.n_items, fourth.n_missing, fourth.n_scored) == (30, 18, 30)
    assert fourth.score == pytest.approx(12 / 30) and fourth.coverage == pytest.approx(0.4)
    verdicts = _verdicts(engine, first.evaluation_id)
    assert verdicts["q00011"].passed is True
    assert verdicts["q00012"].score == 0.0 and "missing" in verdicts["q00012"].rationale


def test_evaluations_of_different_runs_and_judges_are_separate(engine: Engine,
                                                               tmp_path: Path) -> None:
    a = make_run(engine, tmp_path, "a", [True] * 10)
    b = make_run(engine, tmp_path, "b", [False] * 10)
    ea, eb = evaluate(engine, a), evaluate(engine, b)
    em = evaluate(engine, a, "mock")
    assert len({ea.evaluation_id, eb.evaluation_id, em.evaluation_id}) == 3
    assert count(engine, Evaluation) == 3 and count(engine, Verdict) == 30
    assert (ea.score, eb.score) == (1.0, 0.0)


def test_failed_evaluation_is_recorded_when_there_is_none(engine: Engine,
                                                          tmp_path: Path) -> None:
    run_id = make_run(engine, tmp_path, "r", [True] * 5)
    with session_scope(engine) as session:
        summary = store_failed_evaluation(session, run_id, JUDGE, "the file is gone")
    assert summary.status == "failed" and summary.error == "the file is gone"
    assert summary.score is None and summary.n_items == 0
    assert count(engine, Evaluation) == 1 and count(engine, Verdict) == 0
    with session_scope(engine) as session:
        assert latest_evaluation(session, run_id, JUDGE) is None  # only completed ones count
        # Failing again keeps one row, with the latest error.
        again = store_failed_evaluation(session, run_id, JUDGE, "still gone")
    assert again.evaluation_id == summary.evaluation_id and again.error == "still gone"
    assert count(engine, Evaluation) == 1

    # A later good evaluation replaces the failure in the same row.
    good = evaluate(engine, run_id)
    assert good.evaluation_id == summary.evaluation_id
    assert good.status == "completed" and good.error is None and good.score == 1.0
    assert count(engine, Evaluation) == 1 and count(engine, Verdict) == 5


def test_failed_evaluation_does_not_overwrite_a_completed_one(engine: Engine,
                                                              tmp_path: Path) -> None:
    run_id = make_run(engine, tmp_path, "r", [True, False, True, True])
    good = evaluate(engine, run_id)
    with session_scope(engine) as session:
        kept = store_failed_evaluation(session, run_id, JUDGE, "line 9: not valid JSON")
    assert kept.evaluation_id == good.evaluation_id
    assert kept.status == "completed" and kept.error is None
    assert kept.score == good.score == 0.75
    assert count(engine, Evaluation) == 1 and count(engine, Verdict) == 4
    with session_scope(engine) as session:
        row = session.get(Evaluation, good.evaluation_id)
        assert (row.status, row.score, row.n_items, row.error) == ("completed", 0.75, 4, None)


def test_blank_responses_are_wrong_and_a_missing_reference_is_unscored(engine: Engine,
                                                                        tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    lines = [{"id": "a", "response": "<answer>1</answer>", "reference": "1"},
             {"id": "b", "response": "", "reference": "2"},          # empty response
             {"id": "c", "response": "<answer>4</answer>", "reference": "3"},
             {"id": "d", "response": "   ", "reference": "4"},       # blank response
             {"id": "e", "response": "<answer>5</answer>"}]          # no reference anywhere
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    run_id = make_run(engine, tmp_path, "r", [], predictions=str(path))
    summary = evaluate(engine, run_id)

    # The candidate's blanks are wrong answers; only the judge's own failure (no
    # reference for e) is unscored and left out of the mean.
    assert (summary.n_items, summary.n_scored, summary.n_unscored) == (5, 4, 1)
    assert summary.score == 0.25
    with session_scope(engine) as session:
        assert item_outcomes(session, summary.evaluation_id) == {
            "a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0, "e": None}
    verdicts = _verdicts(engine, summary.evaluation_id)
    assert verdicts["b"].score == 0.0 and verdicts["b"].passed is False
    assert "empty response" in verdicts["b"].rationale
    assert verdicts["e"].score is None and "reference" in verdicts["e"].rationale


def test_all_items_unscored_stores_no_score(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "response": ""}\n{"id": "b", "response": ""}\n')
    run_id = make_run(engine, tmp_path, "r", [], predictions=str(path))
    items = read_predictions(str(path))  # no reference: exact_match cannot score them
    with session_scope(engine) as session:
        summary = store_evaluation(session, score_items(_info(engine, run_id), JUDGE, items))
    assert summary.status == "completed"
    assert (summary.score, summary.ci_low, summary.ci_high) == (None, None, None)
    assert (summary.n_scored, summary.n_unscored) == (0, 2)


def test_bad_line_fails_before_anything_is_written(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = [json.dumps({"id": f"q{i}", "response": "1", "reference": "1"}) for i in range(5)]
    path.write_text("\n".join(good[:2] + ['{"id": "q2", "response": '] + good[2:]) + "\n")
    run_id = make_run(engine, tmp_path, "r", [], predictions=str(path))

    with pytest.raises(PredictionsError, match="line 3") as excinfo:
        read_predictions(str(path), require_reference=True)
    assert str(path) in str(excinfo.value)
    assert count(engine, Evaluation) == 0 and count(engine, Verdict) == 0

    # Through the task's path, the failure is recorded, and nothing else.
    with pytest.raises(PredictionsError, match="line 3"):
        _score_task_path(engine, run_id)
    with session_scope(engine) as session:
        [ev] = session.scalars(select(Evaluation)).all()
        assert ev.status == "failed" and "line 3" in ev.error
        assert (ev.score, ev.n_items) == (None, 0)
        assert latest_evaluation(session, run_id, JUDGE) is None
    assert count(engine, Verdict) == 0


def test_bad_file_on_a_forced_rerun_keeps_the_good_evaluation(engine: Engine,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    run_id = make_run(engine, tmp_path, "r", [], predictions=write_predictions(
        path, [True, True, False]))
    good = evaluate(engine, run_id)
    path.write_text(path.read_text() + '{"id": "q00000", "response": "x", "reference": "1"}\n')
    with pytest.raises(PredictionsError, match=r"line 4: duplicate id 'q00000' \(first seen "
                                               r"on line 1\)"):
        _score_task_path(engine, run_id)
    with session_scope(engine) as session:
        [ev] = session.scalars(select(Evaluation)).all()
        assert (ev.id, ev.status, ev.score, ev.error) == (good.evaluation_id, "completed",
                                                          good.score, None)
    assert count(engine, Verdict) == 3


def test_a_store_that_fails_midway_leaves_nothing(engine: Engine, tmp_path: Path) -> None:
    run_id = make_run(engine, tmp_path, "r", [True] * 3)
    spec = judge_spec(JUDGE)
    verdicts = [JudgeVerdict(f"i{i}", 1.0, True, "ok", JUDGE, spec.version)
                for i in range(evaluation.VERDICT_BATCH)]
    # A second verdict for item i0 in the second batch: the insert violates the unique
    # key after the evaluation row and a whole batch of verdicts were written.
    scored = ScoredRun(run_id, JUDGE, spec.version, [*verdicts, verdicts[0]],
                       1.0, 1.0, 1.0, utcnow(), 0.0)
    with pytest.raises(IntegrityError):
        with session_scope(engine) as session:
            store_evaluation(session, scored)
    assert count(engine, Evaluation) == 0 and count(engine, Verdict) == 0


def test_large_evaluation_writes_every_verdict_in_batches(engine: Engine,
                                                          tmp_path: Path) -> None:
    n = 5_000
    assert n > 2 * evaluation.VERDICT_BATCH  # at least three batches, the last partial
    correct = correctness(n, 0.8, seed=5)
    run_id = make_run(engine, tmp_path, "big", correct)
    summary = evaluate(engine, run_id)
    assert summary.n_items == n
    assert count(engine, Verdict) == n
    with session_scope(engine) as session:
        scores = item_outcomes(session, summary.evaluation_id)
    assert len(scores) == n
    assert set(scores) == {f"q{i:05d}" for i in range(n)}
    assert sum(scores.values()) == sum(correct)
    assert summary.score == pytest.approx(sum(correct) / n)
    # And once more: still exactly n.
    evaluate(engine, run_id)
    assert count(engine, Verdict) == n and count(engine, Evaluation) == 1


def test_each_verdict_keeps_the_candidates_response_cut_to_a_bound(engine: Engine,
                                                                    tmp_path: Path) -> None:
    """The gate's evidence shows both responses: they are on the record, not in a file."""
    long_answer = "7 " * evaluation.RESPONSE_CHARS
    items = [{"id": "short", "prompt": "1+1", "response": "2", "reference": "2"},
             {"id": "long", "prompt": "3+4", "response": long_answer, "reference": "7"}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    run_id = make_run(engine, tmp_path, "resp", [True])
    scored = score_items(_info(engine, run_id), JUDGE, read_predictions(str(path)),
                         missing=["gone"])
    with session_scope(engine) as session:
        summary = store_evaluation(session, scored)
    stored = _verdicts(engine, summary.evaluation_id)
    assert stored["short"].response == "2"
    assert len(stored["long"].response) == evaluation.RESPONSE_CHARS
    assert stored["long"].response.endswith(evaluation.CUT_MARK)
    assert stored["long"].response.startswith("7 7 ")
    assert stored["gone"].response is None and stored["gone"].score == 0.0
