"""Chunked scoring gives the one-piece path's result, refuses what it refuses, and resumes.

Each evaluation is made twice on the same run: read in one piece (tests/db/support.py's
``evaluate``, the score task's path) and in chunks (plan, every chunk, finish), and the
two must agree on everything stored: score, interval, counts, every verdict.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from tests.db.support import JUDGE, count, evaluate
from tests.factories import correctness, make_run, write_predictions
from tunix_rt.errors import PredictionsError
from tunix_rt.quality import chunks
from tunix_rt.quality.datasets import EvalItem, register_dataset
from tunix_rt.quality.evaluation import RunInfo, find_evaluation
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Evaluation, EvaluationChunk, Run, Verdict

CHUNK = 7  # small chunks, so that a few dozen items make several


def _info(engine: Engine, run_id: str) -> RunInfo:
    with session_scope(engine) as session:
        return RunInfo.of(session.get(Run, run_id))


def _plan(engine: Engine, run_id: str, judge: str = JUDGE) -> chunks.ChunkPlan:
    return chunks.plan_scoring(lambda: session_scope(engine), _info(engine, run_id), judge,
                               chunk_items=CHUNK)


def evaluate_chunked(engine: Engine, run_id: str, judge: str = JUDGE) -> chunks.ChunkPlan:
    plan = _plan(engine, run_id, judge)
    for chunk in plan.chunks:
        chunks.score_chunk(lambda: session_scope(engine), plan, chunk, engine)
    chunks.finish_evaluation(lambda: session_scope(engine), plan)
    return plan


def _record(engine: Engine, run_id: str) -> tuple[dict, list]:
    """The stored evaluation (what compares) and its verdicts, by item."""
    with session_scope(engine) as session:
        ev = session.scalar(select(Evaluation).where(Evaluation.run_id == run_id))
        fields = {k: getattr(ev, k) for k in ("status", "score", "ci_low", "ci_high", "n_items",
                                              "n_scored", "n_unscored", "n_missing", "n_extra",
                                              "dataset_id", "error")}
        verdicts = session.execute(
            select(Verdict.item_id, Verdict.score, Verdict.passed, Verdict.rationale, Verdict.raw,
                   Verdict.response).where(Verdict.evaluation_id == ev.id)
            .order_by(Verdict.item_id)).all()
    return fields, [tuple(v) for v in verdicts]


def _lines(n: int, *, skip: set[int] = frozenset(), prefix: str = "q") -> list[dict]:
    """Items i < n (those not in ``skip``): right when i % 3, blank when i % 11 == 5."""
    rows = []
    for i in range(n):
        if i in skip:
            continue
        response = "" if i % 11 == 5 else f"<answer>{i if i % 3 else i + 1}</answer>"
        rows.append({"id": f"{prefix}{i:05d}", "prompt": f"what is {i}?", "response": response,
                     "reference": str(i)})
    return rows


def _write(path: Path, rows: list[dict], *, blank_every: int = 0) -> str:
    with path.open("w") as handle:
        for i, row in enumerate(rows):
            handle.write(json.dumps(row) + "\n")
            if blank_every and i % blank_every == 0:
                handle.write("\n")
    return str(path)


def _register(engine: Engine, name: str, n: int) -> None:
    with session_scope(engine) as session:
        register_dataset(session, name, [EvalItem(f"q{i:05d}", f"what is {i}?", str(i))
                                         for i in range(n)])


def test_chunked_equals_one_piece_with_missing_extra_and_unscored(engine: Engine,
                                                                  tmp_path: Path) -> None:
    n = 50
    _register(engine, "arith", n)
    rows = _lines(n, skip={3, 17, 40})  # three items missing from the file
    rows += [{"id": "zz-extra-1", "response": "1"}, {"id": "zz-extra-2", "response": "2"}]
    rows[10]["reference"] = None  # the dataset's reference is used: still scored
    uri = _write(tmp_path / "p.jsonl", rows, blank_every=9)
    one = make_run(engine, tmp_path, "one", [], predictions=uri)
    two = make_run(engine, tmp_path, "two", [], predictions=uri)

    evaluate(engine, one)
    plan = evaluate_chunked(engine, two)

    assert len(plan.chunks) == -(-len(rows) // CHUNK) >= 3
    a, verdicts_a = _record(engine, one)
    b, verdicts_b = _record(engine, two)
    assert a == b
    assert a["status"] == "completed" and a["n_items"] == n and a["n_missing"] == 3
    assert a["n_extra"] == 2
    assert verdicts_a == verdicts_b
    missing = {v[0]: v for v in verdicts_b if v[3] == "missing from the predictions file"}
    assert set(missing) == {"q00003", "q00017", "q00040"}
    assert all(v[1] == 0.0 and v[2] is False and v[5] is None for v in missing.values())
    assert count(engine, EvaluationChunk) == len(plan.chunks)


def test_chunked_registers_the_dataset_as_the_one_piece_path_does(db_url: str,
                                                                  tmp_path: Path) -> None:
    """A dataset with no record is registered from the file: same hash, items, result."""
    from tunix_rt.store.db import get_engine
    from tunix_rt.store.models import Dataset

    engine = get_engine(db_url)
    rows = _lines(30)
    rows[4]["id"] = "ü-naïve"  # ids sort by code point in both
    uri_a = _write(tmp_path / "a.jsonl", rows)
    a = make_run(engine, tmp_path, "a", [], dataset="one", predictions=uri_a)
    b = make_run(engine, tmp_path, "b", [], dataset="two", predictions=uri_a)
    evaluate(engine, a)
    plan = evaluate_chunked(engine, b)
    assert plan.dataset_created
    with session_scope(engine) as session:
        one, two = (session.scalar(select(Dataset).where(Dataset.name == name))
                    for name in ("one", "two"))
        assert (one.content_hash, one.n_items) == (two.content_hash, two.n_items)
        assert two.source == "implicit" and two.source_run_id == b
    ra, va = _record(engine, a)
    rb, vb = _record(engine, b)
    assert {k: v for k, v in ra.items() if k != "dataset_id"} == \
        {k: v for k, v in rb.items() if k != "dataset_id"}
    assert va == vb


def test_a_duplicate_id_across_chunks_is_refused_naming_both_lines(engine: Engine,
                                                                   tmp_path: Path) -> None:
    rows = _lines(30)
    rows[25]["id"] = rows[2]["id"]  # chunk 0 and chunk 3
    uri = _write(tmp_path / "dup.jsonl", rows)
    run_id = make_run(engine, tmp_path, "dup", [], predictions=uri)
    with pytest.raises(PredictionsError, match=r"line 26: duplicate id 'q00002' "
                                               r"\(first seen on line 3\)"):
        _plan(engine, run_id)
    assert count(engine, Evaluation) == 0 and count(engine, Verdict) == 0


def test_a_reference_that_disagrees_is_refused_before_anything_is_written(
        engine: Engine, tmp_path: Path) -> None:
    _register(engine, "arith", 30)
    rows = _lines(30)
    rows[20]["reference"] = "999"
    uri = _write(tmp_path / "ref.jsonl", rows)
    run_id = make_run(engine, tmp_path, "ref", [], predictions=uri)
    with pytest.raises(PredictionsError, match=r"line 21: item 'q00020' has reference '999'"):
        _plan(engine, run_id)
    assert count(engine, Evaluation) == 0 and count(engine, Verdict) == 0


def test_a_bad_line_in_a_late_chunk_keeps_a_completed_evaluation(engine: Engine,
                                                                 tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    run_id = make_run(engine, tmp_path, "r", [], predictions=write_predictions(
        path, correctness(30, 0.5, seed=1)))
    evaluate_chunked(engine, run_id)
    before = _record(engine, run_id)
    with path.open("a") as handle:
        handle.write("{not json\n")
    with pytest.raises(PredictionsError, match=r"line 31: not valid JSON"):
        _plan(engine, run_id)
    assert _record(engine, run_id) == before


def test_a_resumed_evaluation_skips_the_chunks_it_stored(engine: Engine, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after two chunks: the re-run asks the llm judge only for the rest."""
    from tests.fakes.openai_server import Reply, fake_openai

    rows = _lines(40)
    uri = _write(tmp_path / "p.jsonl", rows)
    run_id = make_run(engine, tmp_path, "r", [], predictions=uri)
    with fake_openai(Reply.json(1.0, "right")) as server:
        monkeypatch.setenv("TUNIX_RT_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("TUNIX_RT_LLM_MODEL", "judge")
        plan = _plan(engine, run_id, "llm")
        for chunk in plan.chunks[:2]:  # then the process died
            chunks.score_chunk(lambda: session_scope(engine), plan, chunk, engine)
        calls_before = server.calls
        with session_scope(engine) as session:
            ev = find_evaluation(session, run_id, "llm")
            assert ev.status == "running"
        # The llm cache would spare the calls too: empty it, so only the chunk rows can.
        from tunix_rt.store.models import JudgeCacheEntry
        with session_scope(engine) as session:
            session.query(JudgeCacheEntry).delete()
        again = _plan(engine, run_id, "llm")
        assert again.evaluation_id == plan.evaluation_id and again.chunks_stored == 2
        for chunk in again.chunks:
            chunks.score_chunk(lambda: session_scope(engine), again, chunk, engine)
        summary = chunks.finish_evaluation(lambda: session_scope(engine), again)
        answered = sum(1 for r in rows if r["response"])
        first_two = sum(1 for r in rows[:2 * CHUNK] if r["response"])
        assert server.calls - calls_before == answered - first_two
    assert summary.status == "completed" and summary.n_items == 40
    assert summary.n_scored == 40 and count(engine, Verdict) == 40


def test_a_file_changed_since_the_plan_starts_afresh(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    _write(path, _lines(30))
    run_id = make_run(engine, tmp_path, "r", [], predictions=str(path))
    plan = _plan(engine, run_id)
    chunks.score_chunk(lambda: session_scope(engine), plan, plan.chunks[0], engine)
    rows = _lines(30)
    rows[0]["response"] = "<answer>0</answer>"  # now right, in chunk 0 and in chunk 1
    rows[9]["response"] = "<answer>9</answer>"
    _write(path, rows)
    with pytest.raises(PredictionsError, match="changed while it was being scored"):
        chunks.score_chunk(lambda: session_scope(engine), plan, plan.chunks[1], engine)
    again = _plan(engine, run_id)
    assert again.chunks_stored == 0  # chunk 0's bytes differ: nothing kept
    for chunk in again.chunks:
        chunks.score_chunk(lambda: session_scope(engine), again, chunk, engine)
    summary = chunks.finish_evaluation(lambda: session_scope(engine), again)
    with session_scope(engine) as session:
        passed = session.scalar(select(Verdict.passed).where(
            Verdict.evaluation_id == summary.evaluation_id, Verdict.item_id == "q00009"))
    assert passed is True and summary.n_items == 30


def test_unusual_lines_score_as_in_one_piece(engine: Engine, tmp_path: Path) -> None:
    """Lines the fast parser hands to parse_line (metadata, a number for a reference, an
    integer beyond 64 bits, escapes, a blank line of non-ASCII space, CRLF) score as the
    one-piece reader scores them."""
    n = 24
    _register(engine, "arith", n)
    lines = [json.dumps(row) for row in _lines(n)]
    lines[1] = json.dumps({"id": "q00001", "response": "<answer>1</answer>", "reference": 1})
    lines[4] = json.dumps({"id": "q00004", "response": "4", "metadata": {"big": 2**70}})
    lines[8] = '{"id": "q00008", "response": "<answer>\\u0038</answer>", "prompt": "caf\\u00e9"}'
    lines[9] = json.dumps({"id": "q00009", "response": "naïve 9", "reference": "9"},
                          ensure_ascii=False)
    lines[15] = json.dumps({"id": "q00015", "response": "15", "prompt": 2**80, "reference": 15})
    path = tmp_path / "p.jsonl"
    text = "\r\n".join(lines[:12]) + "\r\n\u3000\n" + "\n".join(lines[12:])  # no final newline
    path.write_bytes(text.encode())
    one = make_run(engine, tmp_path, "one", [], predictions=str(path))
    two = make_run(engine, tmp_path, "two", [], predictions=str(path))

    evaluate(engine, one)
    plan = evaluate_chunked(engine, two)

    assert len(plan.chunks) == 4
    a, verdicts_a = _record(engine, one)
    b, verdicts_b = _record(engine, two)
    assert a == b and a["n_items"] == n and a["n_missing"] == 0
    assert verdicts_a == verdicts_b


@pytest.mark.parametrize("bad", [
    b'{"id": "q00020", "response": NaN}',  # JSON to Python's reader, not a string
    b'{"id": "q00020", "response": "a\\u0000b"}',
    b'{"id": "q00020", "response": "caf\xe9"}',  # Latin-1, not UTF-8
    b'{"id": "q00020", "response": "\\ud800"}',  # a lone surrogate: no text to store
    b'{"id": 20, "response": "20"}',
    b'{"id": "   ", "response": "20"}',
    b'["q00020", "20"]',
    b'{"id": "q00020", "response": "20", "metadata": [1]}',
])
def test_a_line_the_fast_parser_refuses_is_named_as_the_one_piece_reader_names_it(
        engine: Engine, tmp_path: Path, bad: bytes) -> None:
    from tunix_rt.quality.predictions import read_predictions

    lines = [json.dumps(row).encode() for row in _lines(30)]
    lines[20] = bad
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    run_id = make_run(engine, tmp_path, "bad", [], predictions=str(path))
    with pytest.raises(PredictionsError, match="line 21") as one:
        read_predictions(str(path))
    with pytest.raises(PredictionsError) as two:
        _plan(engine, run_id)
    assert str(two.value) == str(one.value)
    assert count(engine, Evaluation) == 0 and count(engine, Verdict) == 0


def test_aggregate_counts_gives_aggregate_of_the_scores() -> None:
    """The finish task's aggregate from GROUP BY (value, count) rows, in any order, is the
    aggregate of the scores themselves: few distinct values, and more than the counts path
    takes."""
    import numpy as np

    from tunix_rt.quality.evaluation import COUNTS_MAX_DISTINCT, aggregate, aggregate_counts

    rng = np.random.default_rng(3)
    for scores in (rng.integers(0, 2, 5_000).astype(float),
                   rng.integers(0, 5, 999) / 4,
                   rng.random(COUNTS_MAX_DISTINCT * 3).round(3),
                   np.array([0.5] * 7)):
        values, counts = np.unique(scores, return_counts=True)
        order = rng.permutation(values.size)
        assert aggregate_counts(values[order].tolist(), counts[order].tolist()) == \
            aggregate(rng.permutation(scores))
    assert aggregate_counts([], []) == (None, None, None)


def test_a_bad_reference_is_named_before_a_bad_line_after_it(engine: Engine,
                                                             tmp_path: Path) -> None:
    """The plan checks a batch's references while it reads the next batch's lines: the
    earlier line's error is the one raised, as when the two ran one after the other."""
    _register(engine, "arith", 30)
    lines = [json.dumps(row) for row in _lines(30)]
    lines[3] = json.dumps({"id": "q00003", "response": "3", "reference": "999"})  # batch 1
    lines[9] = "{not json"  # batch 2
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    run_id = make_run(engine, tmp_path, "r", [], predictions=str(path))
    with pytest.raises(PredictionsError, match=r"line 4: item 'q00003' has reference '999'"):
        _plan(engine, run_id)
    lines[3] = json.dumps(_lines(30)[3])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PredictionsError, match=r"line 10: not valid JSON"):
        _plan(engine, run_id)
    assert count(engine, Evaluation) == 0 and count(engine, Verdict) == 0


def test_a_judge_failing_mid_chunk_leaves_nothing_of_the_chunk(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """exact_match judges a chunk in parts as its verdicts are written: a part that fails
    rolls the whole chunk back (no row, no verdict), and the chunk scores when retried."""
    from tunix_rt.judges.exact_match import ExactMatchJudge

    uri = _write(tmp_path / "p.jsonl", _lines(30))
    run_id = make_run(engine, tmp_path, "r", [], predictions=uri)
    plan = _plan(engine, run_id)
    monkeypatch.setattr(chunks, "JUDGE_PART", 2)  # chunks of 7: four parts
    real = ExactMatchJudge.score
    calls = []

    def flaky(self, items, context):  # noqa: ANN001, ANN202
        calls.append(len(items))
        if len(calls) == 3:
            raise RuntimeError("the judge failed on its third part")
        return real(self, items, context)

    monkeypatch.setattr(ExactMatchJudge, "score", flaky)
    with pytest.raises(RuntimeError, match="third part"):
        chunks.score_chunk(lambda: session_scope(engine), plan, plan.chunks[0], engine)
    assert calls == [2, 2, 2]
    assert count(engine, EvaluationChunk) == 0 and count(engine, Verdict) == 0
    assert chunks.score_chunk(lambda: session_scope(engine), plan, plan.chunks[0], engine) \
        == {"chunk": 0, "verdicts": 7, "extra": 0}
    assert count(engine, Verdict) == 7 and calls[3:] == [2, 2, 2, 1]
