"""Sweeps on a real Ray through the real tuning flow; every trial and result stored."""

from __future__ import annotations

from collections import defaultdict

import pytest
from sqlalchemy import func, select

from tunix_rt.flows.tuning import tune_flow
from tunix_rt.tuning import studies
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.errors import InvalidInputError
from tunix_rt.quality.leaderboard import leaderboard_page
from tunix_rt.store.models import (GateResult, LeaderboardEntry, Run, Study, Trial, TrialResult)
from tunix_rt.tuning.sweep import parse_sweep

pytestmark = [pytest.mark.flows, pytest.mark.tuning]


@pytest.fixture(autouse=True)
def _stack(prefect_api_url: str, ray_cluster: dict, tune_storage: str) -> None:
    """Prefect server, Ray and a results folder for every test here."""


def _sweep(**overrides):  # noqa: ANN202
    base = {"name": "smoke", "trainable": "builtin", "dataset": "arithmetic",
            "metric": "accuracy", "mode": "max", "num_samples": 1, "max_concurrent_trials": 2,
            "scheduler": {"type": "asha", "max_t": 12, "grace_period": 2,
                          "reduction_factor": 2},
            "resources": {"cpu": 1},
            # Strong rates first: with two trials at a time, the weak ones start only
            # after a strong one has finished and recorded every rung, so ASHA has results
            # to cut them against however the machine schedules the trials.
            "param_space": {"learning_rate": {"grid": [0.1, 0.03, 0.001, 0.0003]},
                            "hidden_size": 64, "steps": 120, "seed": 0}}
    return parse_sweep({**base, **overrides})


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_an_asha_sweep_stores_every_trial_and_its_best_run_is_gated(db_url: str) -> None:
    result = tune_flow(sweep=_sweep(top_k=1))

    engine = get_engine(db_url)
    with session_scope(engine) as session:
        trials = list(session.scalars(select(Trial).where(Trial.study_id == result["study_id"])))
        iterations = studies.iterations_by_trial(session, result["study_id"])
        stored = session.scalar(select(func.count()).select_from(TrialResult))
        study = session.get(Study, result["study_id"])
        [run] = session.scalars(select(Run).where(Run.origin == "tuning"))
        board = session.scalar(select(LeaderboardEntry).where(LeaderboardEntry.run_id == run.id))
        top = board and leaderboard_page(session, run.dataset, board.judge,
                                         limit=1).entries[0].run_id  # rank 1
        gate = session.scalar(select(GateResult).where(GateResult.run_id == run.id))

    assert len(trials) == 4 and result["trials"] == 4
    assert study.status == "completed" and study.best_trial_id == result["best_trial_id"]
    assert stored == sum(len(v) for v in iterations.values())
    for trial in trials:
        assert iterations[trial.trial_id] == list(range(1, trial.iterations + 1))
        assert trial.config["learning_rate"] in (0.0003, 0.001, 0.03, 0.1)
        assert trial.predictions_uri and trial.predictions_uri.startswith("file://")
    # ASHA really stopped the weak trials early; at least one ran the whole way.
    lengths = {t.trial_id: t.iterations for t in trials}
    assert max(lengths.values()) == 12 and min(lengths.values()) < 12
    assert {t.status for t in trials if t.iterations < 12} == {"stopped"}
    # The best trial became a run of origin tuning, with lineage, on the board, gated.
    best = max(trials, key=lambda t: t.last_metrics["accuracy"])
    assert (run.study_id, run.trial_id) == (study.id, best.trial_id)
    assert best.run_id == run.id and run.dataset == "arithmetic"
    assert top == run.id and board.score == pytest.approx(best.last_metrics["accuracy"])
    assert gate.decision == "no_baseline"
    assert result["runs"][0]["gate"]["decision"] == "no_baseline"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_trials_see_the_logical_gpus_they_were_assigned(db_url: str) -> None:
    sweep = _sweep(name="gpus", resources={"cpu": 0.5, "gpu": 1}, scheduler={"type": "none"},
                   param_space={"learning_rate": {"grid": [0.01, 0.03]}, "steps": 60,
                                "seed": {"grid": [0, 1]}}, max_concurrent_trials=2)
    result = tune_flow(sweep=sweep)

    with session_scope(get_engine(db_url)) as session:
        rows = session.execute(select(Trial.trial_id, TrialResult.metrics, TrialResult.reported_at)
                               .join(TrialResult, TrialResult.trial_pk == Trial.id)
                               .where(Trial.study_id == result["study_id"])).all()
    ids = defaultdict(set)
    for trial_id, metrics, _ in rows:
        ids[trial_id].update(metrics["gpu_ids"])
    assert len(ids) == 4
    assert all(len(v) == 1 and v <= {"0", "1"} for v in ids.values())  # one GPU each
    assert set().union(*ids.values()) == {"0", "1"}  # both GPUs were used


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_resources_the_cluster_lacks_are_refused_before_any_trial(db_url: str) -> None:
    state = tune_flow(sweep=_sweep(resources={"cpu": 1, "gpu": 3}), return_state=True)

    assert state.is_failed()
    with pytest.raises(InvalidInputError, match="resources.gpu: a trial asks for 3, the Ray "
                                                 "cluster has 2"):
        state.result()
    with session_scope(get_engine(db_url)) as session:
        assert session.scalar(select(func.count()).select_from(Study)) == 0
