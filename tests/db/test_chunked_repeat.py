"""Self-consistency of a chunked evaluation is measured on a sample of the whole file:
the same items, and the same rate, as the one-piece path's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from tests.factories import make_run
from tests.fakes.openai_server import Reply, fake_openai
from tunix_rt.quality import chunks
from tunix_rt.quality.datasets import EvalItem, register_dataset
from tunix_rt.quality.evaluation import RunInfo, prepare_items, score_items, store_evaluation
from tunix_rt.quality.judging import SELF_CONSISTENCY_SAMPLE, sample_key
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Evaluation, EvaluationChunk, Run

N = 64  # more answered items than the sample, in CHUNK-item chunks
CHUNK = 16
QUESTION = re.compile(r"what is (\d+)\?")


def moody_grader(request: dict, attempt: int) -> Reply:
    """Grades the answer; on every fourth item its verdict follows its seed instead."""
    prompt = request["messages"][-1]["content"]
    i = int(QUESTION.search(prompt).group(1))
    if i % 4 == 0:
        return Reply.json(float(request.get("seed", 0) % 2), "hmm")
    return Reply.json(1.0 if f"<answer>{i}</answer>" in prompt else 0.0, "sure")


def _file(path: Path) -> str:
    """Every item, a third answered wrong and every eleventh blank (never sampled)."""
    with path.open("w") as handle:
        for i in range(N):
            response = "" if i % 11 == 5 else f"<answer>{i if i % 3 else i + 1}</answer>"
            handle.write(json.dumps({"id": f"q{i:04d}", "prompt": f"what is {i}?",
                                     "response": response}) + "\n")
    return str(path)


def _info(engine: Engine, run_id: str) -> RunInfo:
    with session_scope(engine) as session:
        return RunInfo.of(session.get(Run, run_id))


def _regraded(requests: list[dict]) -> set[int]:
    """The items graded again with the first other seed."""
    return {int(QUESTION.search(r["messages"][-1]["content"]).group(1))
            for r in requests if r.get("seed") == 1}


def test_a_chunked_repeat_samples_the_whole_file_as_the_one_piece_path_does(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with session_scope(engine) as session:
        register_dataset(session, "arith", [EvalItem(f"q{i:04d}", f"what is {i}?", str(i))
                                            for i in range(N)])
    uri = _file(tmp_path / "p.jsonl")
    one = make_run(engine, tmp_path, "one", [], predictions=uri)
    two = make_run(engine, tmp_path, "two", [], predictions=uri)
    answered = sorted((i for i in range(N) if i % 11 != 5), key=lambda i: sample_key(f"q{i:04d}"))
    expected = set(answered[:SELF_CONSISTENCY_SAMPLE])

    with fake_openai(moody_grader) as provider:
        monkeypatch.setenv("TUNIX_RT_LLM_BASE_URL", provider.base_url)
        monkeypatch.setenv("TUNIX_RT_LLM_MODEL", "judge-model")
        scope = lambda: session_scope(engine)  # noqa: E731
        plan = chunks.plan_scoring(scope, _info(engine, two), "llm", chunk_items=CHUNK, repeat=3)
        for chunk in plan.chunks:
            chunks.score_chunk(scope, plan, chunk, engine)
        chunked = chunks.finish_evaluation(scope, plan)
        chunked_regraded = _regraded(provider.requests)
        seen = len(provider.requests)

        aligned = prepare_items(scope, _info(engine, one))
        scored = score_items(_info(engine, one), "llm", aligned.items, missing=aligned.missing,
                             repeat=3, dataset=aligned.dataset)
        with session_scope(engine) as session:
            whole = store_evaluation(session, scored)
        whole_regraded = _regraded(provider.requests[seen:])

    # The one-piece path's sample, found in chunk after chunk, not only in the first.
    assert chunked_regraded == whole_regraded == expected
    with session_scope(engine) as session:
        rows = session.execute(select(EvaluationChunk.chunk_index, EvaluationChunk.cost)
                               .where(EvaluationChunk.evaluation_id == plan.evaluation_id)).all()
        stored = session.scalar(select(Evaluation).where(Evaluation.run_id == two))
    per_chunk = {index: cost["agreement_compared"] for index, cost in rows}
    assert len(plan.chunks) == N // CHUNK
    assert sum(per_chunk.values()) == SELF_CONSISTENCY_SAMPLE
    assert len([n for n in per_chunk.values() if n]) > 1
    # The flipping items (every fourth) disagree; every other sampled item agrees.
    rate = 1 - len([i for i in expected if i % 4 == 0]) / SELF_CONSISTENCY_SAMPLE
    assert chunked.agreement_rate == pytest.approx(rate) == whole.agreement_rate
    assert stored.agreement_repeats == 3
    assert stored.cost["repeat_calls"] == 2 * SELF_CONSISTENCY_SAMPLE
