"""A Ray Tune sweep over `tunix-sft`: ASHA stops the weak trials, the best one is gated.

The sweep is examples/tunix/sweep_sft.yaml, run through the real tuning flow on the
session's Ray (2 CPUs) and Prefect server, with PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from tests.tunix.conftest import ROOT
from tunix_rt.flows.tuning import tune_flow
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.quality.leaderboard import leaderboard_page
from tunix_rt.store.models import GateResult, LeaderboardEntry, Run, Trial
from tunix_rt.tuning import studies
from tunix_rt.tuning.sweep import parse_sweep

pytestmark = [pytest.mark.flows, pytest.mark.tuning, pytest.mark.postgres, pytest.mark.slow]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_an_asha_sweep_over_tunix_sft_stops_weak_trials_and_gates_the_best(
        db_url: str, prefect_api_url: str, ray_cluster: dict, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNIX_RT_TUNE_STORAGE", str(tmp_path / "tune"))
    sweep = parse_sweep(yaml.safe_load((ROOT / "examples/tunix/sweep_sft.yaml").read_text()))
    assert sweep.trainable == "tunix-sft" and sweep.metric == "eval_loss"
    max_t = sweep.scheduler.max_t

    result = tune_flow(sweep=sweep)

    with session_scope(get_engine(db_url)) as session:
        trials = list(session.scalars(select(Trial).where(Trial.study_id == result["study_id"])))
        iterations = studies.iterations_by_trial(session, result["study_id"])
        [run] = session.scalars(select(Run).where(Run.origin == "tuning"))
        board = session.scalar(select(LeaderboardEntry).where(LeaderboardEntry.run_id == run.id))
        top = board and leaderboard_page(session, run.dataset, board.judge,
                                         limit=1).entries[0].run_id  # rank 1
        gate = session.scalar(select(GateResult).where(GateResult.run_id == run.id))
    assert len(trials) == 4 and result["trials"] == 4
    for trial in trials:  # every trial stored, every iteration of it
        assert iterations[trial.trial_id] == list(range(1, trial.iterations + 1))
        assert "eval_loss" in trial.last_metrics
    lengths = {t.config["learning_rate"]: t.iterations for t in trials}
    assert max(lengths.values()) == max_t, lengths
    stopped = [t for t in trials if t.iterations < max_t]
    assert stopped and {t.status for t in stopped} == {"stopped"}, lengths
    # The weakest rate learns least, and ASHA cut it short.
    assert lengths[min(lengths)] < max_t, lengths
    best = min(trials, key=lambda t: t.last_metrics["eval_loss"])
    assert best.iterations == max_t and best.predictions_uri.startswith("file://")
    assert run.trial_id == best.trial_id and run.model == "tuning:tunix-sft"
    assert board is not None and top == run.id
    assert gate is not None and result["runs"][0]["gate"]["decision"] == gate.decision
