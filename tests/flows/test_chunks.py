"""A large evaluation runs as mapped chunk tasks on a real Prefect server.

The chunk size is made small (``TUNIX_RT_SCORE_CHUNK_ITEMS``) so that a few dozen
items make several chunks; the files are read through a real fsspec filesystem that
fails chosen opens, as an object store having a bad minute does.
"""

from __future__ import annotations

import threading
from pathlib import Path
from uuid import UUID

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from sqlalchemy import select

from tests.factories import correctness, make_run, write_predictions
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Evaluation, EvaluationChunk, Verdict

pytestmark = pytest.mark.flows

N = 35
CHUNK = 10  # 4 chunks


class ChosenFailures(LocalFileSystem):
    """Local files whose opens numbered in ``fail`` raise ``error`` (opens count from 1)."""

    protocol = "chosenfail"
    fail: set[int] = set()
    error: type[OSError] = ConnectionError
    opens = 0
    _lock = threading.Lock()

    def _open(self, path, mode="rb", **kwargs):  # noqa: ANN001, ANN202
        with ChosenFailures._lock:
            ChosenFailures.opens += 1
            if ChosenFailures.opens in ChosenFailures.fail:
                raise ChosenFailures.error(f"open #{ChosenFailures.opens} of {path} failed")
        return super()._open(path, mode=mode, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):  # noqa: ANN001, ANN206
        prefix = "chosenfail://"
        path = path[len(prefix):] if str(path).startswith(prefix) else path
        return super()._strip_protocol(path)


fsspec.register_implementation("chosenfail", ChosenFailures, clobber=True)


@pytest.fixture(autouse=True)
def _setup(prefect_api_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNIX_RT_SCORE_CHUNK_ITEMS", str(CHUNK))
    ChosenFailures.fail, ChosenFailures.error, ChosenFailures.opens = set(), ConnectionError, 0


def _task_runs(flow_run_id: UUID, prefix: str) -> dict[str, list[str]]:
    """Each task run of the flow run whose name starts with ``prefix``: its state names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])))
        return {run.name: [s.name for s in sorted(client.read_task_run_states(run.id),
                                                  key=lambda s: s.timestamp)]
                for run in runs if run.name.startswith(prefix)}


def _evaluation(engine) -> Evaluation:  # noqa: ANN001
    with session_scope(engine) as session:
        return session.scalars(select(Evaluation)).one()


# One database each: tests/db/test_chunked_scoring.py runs the chunked path on both.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_chunks_are_mapped_tasks_and_one_failing_once_is_retried_alone(
        engine, tmp_path: Path) -> None:  # noqa: ANN001
    from tunix_rt.flows.quality_loop import quality_loop

    correct = correctness(N, 0.6, seed=4)
    path = write_predictions(tmp_path / "p.jsonl", correct)
    run_id = make_run(engine, tmp_path, "big", [], predictions=f"chosenfail://{path}")
    # Opens 1 and 2 are the plan's (count, then check); 3-6 the four chunks': one fails.
    ChosenFailures.fail = {4}

    state = quality_loop(run_id, return_state=True)

    assert state.is_completed(), state.message
    flow_run_id = state.state_details.flow_run_id
    chunk_runs = _task_runs(flow_run_id, "score-chunk-")
    assert sorted(chunk_runs) == [f"score-chunk-{i}" for i in range(4)]
    retried = [name for name, states in chunk_runs.items() if "Retrying" in states]
    assert len(retried) == 1, chunk_runs
    assert all(states[-1] == "Completed" for states in chunk_runs.values())
    assert ChosenFailures.opens == 2 + 4 + 1
    assert _task_runs(flow_run_id, "finish-evaluation")
    ev = _evaluation(engine)
    assert ev.status == "completed" and ev.n_items == N and ev.n_missing == 0
    assert ev.score == pytest.approx(sum(correct) / N)
    with session_scope(engine) as session:
        assert session.scalars(select(Verdict.item_id)).all().__len__() == N
        assert len(session.scalars(select(EvaluationChunk)).all()) == 4


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_stopped_evaluation_resumes_skipping_the_stored_chunks(engine,  # noqa: ANN001
                                                                 tmp_path: Path) -> None:
    from tunix_rt.flows.quality_loop import quality_loop

    correct = correctness(N, 0.5, seed=5)
    path = write_predictions(tmp_path / "p.jsonl", correct)
    run_id = make_run(engine, tmp_path, "big", [], predictions=f"chosenfail://{path}")
    # The third and fourth chunks cannot open the file (not retried): the loop fails
    # with two chunks stored and the evaluation still running.
    ChosenFailures.fail, ChosenFailures.error = {5, 6}, PermissionError
    first = quality_loop(run_id, return_state=True)
    assert first.is_failed()
    ev = _evaluation(engine)
    assert ev.status == "running"
    with session_scope(engine) as session:
        stored = sorted(session.scalars(select(EvaluationChunk.chunk_index)).all())
    assert len(stored) == 2

    ChosenFailures.fail = set()
    second = quality_loop(run_id, return_state=True)

    assert second.is_completed(), second.message
    chunk_runs = _task_runs(second.state_details.flow_run_id, "score-chunk-")
    skipped = sorted(int(name.rsplit("-", 1)[1]) for name, states in chunk_runs.items()
                     if states[-1] == "Skipped")
    assert skipped == stored
    ev = _evaluation(engine)
    assert ev.status == "completed" and ev.n_items == N
    assert ev.score == pytest.approx(sum(correct) / N)


@pytest.mark.tuning
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # Ray's start is the cost
def test_chunks_run_on_ray_with_the_ray_task_runner(db_url: str, engine,  # noqa: ANN001
                                                    ray_cluster: dict, tmp_path: Path) -> None:
    from tunix_rt.flows.quality_loop import quality_loop
    from tunix_rt.tasks.runners import task_runner

    correct = correctness(N, 0.7, seed=6)
    path = write_predictions(tmp_path / "p.jsonl", correct)
    run_id = make_run(engine, tmp_path, "ray", [], predictions=path)

    state = quality_loop.with_options(task_runner=task_runner("ray"))(run_id, return_state=True)

    assert state.is_completed(), state.message
    chunk_runs = _task_runs(state.state_details.flow_run_id, "score-chunk-")
    assert len(chunk_runs) == 4 and all(s[-1] == "Completed" for s in chunk_runs.values())
    ev = _evaluation(engine)
    assert ev.status == "completed" and ev.score == pytest.approx(sum(correct) / N)
