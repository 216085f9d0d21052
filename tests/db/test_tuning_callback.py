"""The persisting Tune callback, driven by calling its hooks directly (as Ray would)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select

from tunix_rt.tuning.ray_tune import PersistCallback
from tunix_rt.tuning import studies
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Trial, TrialResult
from tunix_rt.tuning.sweep import parse_sweep


@dataclass
class FakeTrial:
    """What the callback reads of a Ray Tune trial."""

    trial_id: str
    config: dict[str, Any] = field(default_factory=dict)
    status: str = "RUNNING"
    error: str | None = None

    def get_error(self) -> Exception:
        return RuntimeError(self.error)


@pytest.fixture
def study_id(engine) -> str:  # noqa: ANN001
    sweep = parse_sweep({"name": "cb", "param_space": {"lr": {"choice": [0.1]}}})
    with session_scope(engine) as session:
        return studies.create_study(session, sweep, storage_path="/tmp/cb").id


def _count(engine, model) -> int:  # noqa: ANN001
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def _result(i: int, acc: float, **extra: Any) -> dict[str, Any]:
    # Ray adds its own keys to every result; the callback stores only the trainable's.
    return {"accuracy": acc, "training_iteration": i, "time_this_iter_s": 0.1, "pid": 1,
            "config": {"lr": 0.1}, "done": False, **extra}


def test_results_are_written_in_batches_and_trials_summarized(engine, study_id) -> None:  # noqa: ANN001
    cb = PersistCallback(study_id, batch=3, interval_s=3600)
    cb.metric = "accuracy"
    a, b = FakeTrial("a", {"lr": 0.1}), FakeTrial("b", {"lr": 0.01})
    cb.on_trial_start(0, [a, b], a)
    cb.on_trial_start(0, [a, b], b)
    assert _count(engine, Trial) == 2

    cb.on_trial_result(1, [a, b], a, _result(1, 0.2))
    cb.on_trial_result(2, [a, b], b, _result(1, 0.1))
    assert _count(engine, TrialResult) == 0  # buffered
    cb.on_trial_result(3, [a, b], a, _result(2, 0.5, predictions_uri="file:///p.jsonl"))
    assert _count(engine, TrialResult) == 3  # the batch of three, in one write

    cb.stopped_early.add("b")
    cb.on_trial_complete(4, [a, b], b)
    cb.on_trial_complete(5, [a, b], a)
    with session_scope(engine) as session:
        rows = {t.trial_id: t for t in session.scalars(select(Trial))}
        assert rows["a"].status == "completed" and rows["b"].status == "stopped"
        assert rows["a"].iterations == 2 and rows["a"].last_metrics == {
            "accuracy": 0.5, "predictions_uri": "file:///p.jsonl"}
        assert rows["a"].predictions_uri == "file:///p.jsonl"
        assert rows["a"].config == {"lr": 0.1} and rows["a"].finished_at is not None
        assert "pid" not in rows["b"].last_metrics


def test_a_failed_trial_records_its_error(engine, study_id) -> None:  # noqa: ANN001
    cb = PersistCallback(study_id)
    trial = FakeTrial("x", error="CUDA out of memory")
    cb.on_trial_start(0, [trial], trial)
    cb.on_trial_result(1, [trial], trial, _result(1, 0.0))
    cb.on_trial_error(2, [trial], trial)
    with session_scope(engine) as session:
        row = session.scalar(select(Trial))
        assert row.status == "failed" and "CUDA out of memory" in row.error
    assert _count(engine, TrialResult) == 1  # flushed when the trial ended


def test_replayed_results_write_no_duplicates(engine, study_id) -> None:  # noqa: ANN001
    """A resumed study replays a trial from its start: same iterations, no new rows."""
    for _attempt in range(2):
        cb = PersistCallback(study_id, batch=1)
        trial = FakeTrial("r")
        cb.on_trial_start(0, [trial], trial)
        for i in range(1, 5):
            cb.on_trial_result(i, [trial], trial, _result(i, i / 10))
        cb.on_trial_complete(5, [trial], trial)
        cb.on_experiment_end([trial])
    assert _count(engine, Trial) == 1
    assert _count(engine, TrialResult) == 4
    with session_scope(engine) as session:
        assert studies.iterations_by_trial(session, study_id) == {"r": [1, 2, 3, 4]}


def test_non_finite_metrics_are_stored_as_null(engine, study_id) -> None:  # noqa: ANN001
    import numpy as np

    cb = PersistCallback(study_id, batch=1)
    trial = FakeTrial("n")
    cb.on_trial_result(1, [trial], trial, _result(1, float("nan"), loss=np.float32(1.5)))
    with session_scope(engine) as session:
        assert session.scalar(select(TrialResult.metrics)) == {"accuracy": None, "loss": 1.5}
