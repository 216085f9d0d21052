"""The quality loop on a real Prefect server, against SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from sqlalchemy import func, select

from tunix_rt.flows.quality_loop import quality_loop
from tests.flows.support import task_states
from tests.factories import correctness, make_run, write_predictions
from tests.waiting import wait_for
from tunix_rt.store.db import session_scope
from tunix_rt.quality.leaderboard import leaderboard_page
from tunix_rt.store.models import (BaselinePromotion, Evaluation, GateResult, LeaderboardEntry,
                             RunStatus, Verdict)
from tunix_rt.quality.stats import GatePolicy

pytestmark = pytest.mark.flows

N = 120
POLICY = GatePolicy(auto_promote=True)


@pytest.fixture(autouse=True)
def _prefect(prefect_api_url: str) -> None:
    """Every test here talks to the session's Prefect server."""


class FlakyFileSystem(LocalFileSystem):
    """Local files behind a connection that drops the first ``failures`` opens.

    A stand-in for an object store having a bad minute: the errors are real
    ``ConnectionError``s raised by a real fsspec filesystem, counted per test.
    """

    protocol = "flaky"
    failures = 0
    opens = 0
    _lock = threading.Lock()

    def _open(self, path, mode="rb", **kwargs):  # noqa: ANN001, ANN202
        with FlakyFileSystem._lock:
            FlakyFileSystem.opens += 1
            if FlakyFileSystem.opens <= FlakyFileSystem.failures:
                raise ConnectionError(f"connection reset while opening {path}")
        return super()._open(path, mode=mode, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):  # noqa: ANN001, ANN206
        path = path[len("flaky://"):] if str(path).startswith("flaky://") else path
        return super()._strip_protocol(path)


fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)


@pytest.fixture
def flaky() -> type[FlakyFileSystem]:
    FlakyFileSystem.failures = 0
    FlakyFileSystem.opens = 0
    return FlakyFileSystem


def _count(engine, model, *where) -> int:  # noqa: ANN001
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_loop_scores_ranks_gates_and_promotes(engine, tmp_path: Path) -> None:
    base = correctness(N, 0.6, seed=1)
    better = [True if i % 3 == 0 else ok for i, ok in enumerate(base)]
    first = make_run(engine, tmp_path, "first", base)
    second = make_run(engine, tmp_path, "second", better)

    out1 = quality_loop(first, judges=["exact_match", "format"], policy=POLICY)
    out2 = quality_loop(second, judges=["exact_match"], policy=POLICY)

    em1 = out1["judges"]["exact_match"]
    assert em1["evaluation"]["n_items"] == N
    assert em1["evaluation"]["score"] == pytest.approx(sum(base) / N)
    assert em1["gate"]["decision"] == "no_baseline"
    assert em1["promoted"] == "first evaluated run of the dataset"
    assert out1["judges"]["format"]["evaluation"]["score"] == 1.0
    em2 = out2["judges"]["exact_match"]
    assert em2["gate"]["decision"] == "pass"
    assert em2["gate"]["baseline_run_id"] == first
    assert em2["gate"]["n_paired"] == N
    assert em2["promoted"].startswith("passed the gate")
    with session_scope(engine) as session:
        board = [(e.rank, e.run_id) for e in leaderboard_page(session, "arith",
                                                             "exact_match").entries]
    assert board == [(1, second), (2, first)]


def test_answering_less_raises_no_score_rank_or_gate(engine, tmp_path: Path) -> None:
    """400 items. The baseline is right on 70%, "full" on 85%; "cherry" answers only the
    150 items it gets right, "blank" leaves the other 250 empty. Neither is 1.000, neither
    tops the board, and neither passes against the baseline."""
    n = 400
    baseline = make_run(engine, tmp_path, "baseline", [i % 10 < 7 for i in range(n)])
    full = make_run(engine, tmp_path, "full", [i % 20 < 17 for i in range(n)])
    cherry = make_run(engine, tmp_path, "cherry", [], predictions=write_predictions(
        tmp_path / "cherry.jsonl", [True] * 150))
    blank = make_run(engine, tmp_path, "blank", [], predictions=write_predictions(
        tmp_path / "blank.jsonl", [True] * 150 + [None] * 250))

    first = quality_loop(baseline, policy=POLICY)["judges"]["exact_match"]
    assert first["evaluation"]["dataset_created"] is True
    assert first["evaluation"]["dataset"].startswith("arith v1")
    out = {name: quality_loop(run_id, policy=POLICY)["judges"]["exact_match"]
           for name, run_id in (("full", full), ("cherry", cherry), ("blank", blank))}

    assert out["full"]["evaluation"]["score"] == 0.85
    assert out["full"]["gate"]["decision"] == "pass"
    for name in ("cherry", "blank"):
        ev, gate = out[name]["evaluation"], out[name]["gate"]
        assert (ev["score"], ev["n_items"], ev["n_scored"], ev["n_unscored"]) == (
            0.375, n, n, 0)
        assert (gate["decision"], gate["n_paired"], gate["n_excluded"]) == ("fail", n, 0)
        assert gate["delta"] == pytest.approx(0.375 - 0.85)  # against "full", promoted
        assert out[name]["promoted"] is None
    assert out["cherry"]["evaluation"]["n_missing"] == 250
    assert out["cherry"]["evaluation"]["coverage"] == 0.375
    assert out["blank"]["evaluation"]["n_missing"] == 0
    with session_scope(engine) as session:
        board = [(e.run_id, e.score) for e in leaderboard_page(session, "arith",
                                                              "exact_match").entries]
    assert board == [(full, 0.85), (baseline, 0.7), (cherry, 0.375), (blank, 0.375)]


def test_a_run_cannot_bring_its_own_answer_key(engine, tmp_path: Path) -> None:
    first = make_run(engine, tmp_path, "first", correctness(40, 0.5, seed=4))
    quality_loop(first, policy=POLICY)
    path = tmp_path / "forged.jsonl"
    write_predictions(path, [True] * 40)
    lines = path.read_text().splitlines()
    lines[6] = lines[6].replace('"reference": "6"', '"reference": "7"')  # and answers 7
    lines[6] = lines[6].replace("<answer>6</answer>", "<answer>7</answer>")
    path.write_text("\n".join(lines) + "\n")
    forged = make_run(engine, tmp_path, "forged", [], predictions=str(path))
    state = quality_loop(forged, policy=POLICY, return_state=True)
    assert state.is_failed()
    with session_scope(engine) as session:
        ev = session.scalars(select(Evaluation).where(Evaluation.run_id == forged)).one()
    assert ev.status == "failed"
    assert "line 7: item 'q00006' has reference '7', but dataset arith v1" in ev.error
    assert "a run cannot bring its own answer key" in ev.error


def test_rerunning_does_no_work_twice_and_writes_no_duplicates(engine, tmp_path: Path) -> None:
    run_id = make_run(engine, tmp_path, "again", correctness(N, 0.7, seed=2))
    first = quality_loop(run_id, policy=POLICY)
    state = quality_loop(run_id, policy=POLICY, return_state=True)
    second = state.result()

    assert second["judges"]["exact_match"]["evaluation"]["reused"] is True
    assert second["judges"]["exact_match"]["gate"] == first["judges"]["exact_match"]["gate"]
    assert task_states(state.state_details.flow_run_id, "score-run")[-1] == "Skipped"
    assert _count(engine, Evaluation) == 1
    assert _count(engine, Verdict) == N
    assert _count(engine, GateResult) == 1
    assert _count(engine, LeaderboardEntry) == 1
    assert _count(engine, BaselinePromotion) == 1

    forced = quality_loop(run_id, policy=POLICY, force=True)
    assert forced["judges"]["exact_match"]["evaluation"]["reused"] is False
    assert _count(engine, Evaluation) == 1
    assert _count(engine, Verdict) == N


def test_transient_io_errors_are_retried(engine, tmp_path: Path, flaky) -> None:  # noqa: ANN001
    path = write_predictions(tmp_path / "p.jsonl", correctness(N, 0.5, seed=3))
    run_id = make_run(engine, tmp_path, "flaky", [], predictions=f"flaky://{path}")
    flaky.failures = 2

    state = quality_loop(run_id, return_state=True)

    assert state.is_completed()
    assert flaky.opens == 3  # two dropped connections, then success
    states = task_states(state.state_details.flow_run_id, "score-run")
    assert states.count("Retrying") == 2
    assert states[-1] == "Completed"
    assert _count(engine, Verdict) == N


def test_bad_predictions_fail_once_without_retries(engine, tmp_path: Path, flaky) -> None:  # noqa: ANN001
    path = tmp_path / "bad.jsonl"
    write_predictions(path, [True] * 5)
    lines = path.read_text().splitlines()
    lines[2] = '{"id": "q00002", "response": '  # truncated JSON on line 3
    path.write_text("\n".join(lines) + "\n")
    run_id = make_run(engine, tmp_path, "bad", [], predictions=f"flaky://{path}")

    state = quality_loop(run_id, return_state=True)

    assert state.is_failed()
    with pytest.raises(Exception, match="line 3"):
        state.result()
    assert flaky.opens == 1
    assert "Retrying" not in task_states(state.state_details.flow_run_id, "score-run")
    with session_scope(engine) as session:
        ev = session.scalar(select(Evaluation))
        assert ev is not None and ev.status == "failed" and "line 3" in (ev.error or "")
    assert _count(engine, Verdict) == 0
    assert _count(engine, GateResult) == 0


def test_a_run_that_is_not_completed_is_refused(engine, tmp_path: Path) -> None:
    run_id = make_run(engine, tmp_path, "pending", [True] * 3, status=RunStatus.pending)

    state = quality_loop(run_id, return_state=True)

    assert state.is_failed()
    with pytest.raises(Exception, match="pending; only completed runs"):
        state.result()
    assert _count(engine, Evaluation) == 0


def test_artifacts_record_the_board_and_the_decision(engine, tmp_path: Path) -> None:
    run_id = make_run(engine, tmp_path, "art", correctness(N, 0.8, seed=4), dataset="Art Set")
    state = quality_loop(run_id, policy=POLICY, return_state=True)
    flow_run_id = state.state_details.flow_run_id

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["leaderboard-art-set-exact-match",
                                        "gate-art-set-exact-match"])))
    mine = {a.key: a for a in artifacts if a.flow_run_id == flow_run_id}
    assert set(mine) == {"leaderboard-art-set-exact-match", "gate-art-set-exact-match"}
    assert run_id in str(mine["leaderboard-art-set-exact-match"].data)
    assert "no_baseline" in str(mine["gate-art-set-exact-match"].data)


def _events(prefix: str, resource: str, timeout: float = 20.0) -> list:
    """Events named ``prefix*`` about ``resource``, as the Prefect server stored them.

    Waits (up to ``timeout``) for at least one: the server stores events asynchronously.
    """
    from datetime import datetime, timedelta, timezone

    from prefect.events.filters import (EventFilter, EventNameFilter, EventOccurredFilter,
                                        EventResourceFilter)

    event_filter = EventFilter(
        occurred=EventOccurredFilter(since=datetime.now(timezone.utc) - timedelta(hours=1)),
        event=EventNameFilter(prefix=[prefix]),
        resource=EventResourceFilter(id=[resource]))

    def read() -> list:
        with get_client(sync_client=True) as client:
            return client.read_events(filter=event_filter, limit=50).events

    return wait_for(read, timeout, f"Prefect events {prefix}* about {resource}", interval=0.5)


def test_gate_decisions_are_emitted_as_prefect_events(engine, tmp_path: Path) -> None:
    base = correctness(N, 0.7, seed=8)
    first = make_run(engine, tmp_path, "ev-first", base)
    worse = make_run(engine, tmp_path, "ev-worse", [ok and i % 3 != 0 for i, ok in
                                                     enumerate(base)])
    quality_loop(first, policy=POLICY)
    quality_loop(worse, policy=POLICY)

    [no_baseline] = _events("tunix.gate.", f"tunix.run.{first}")
    [failed] = _events("tunix.gate.", f"tunix.run.{worse}")
    assert no_baseline.event == "tunix.gate.no_baseline"
    assert failed.event == "tunix.gate.failed"
    assert failed.payload["baseline_run_id"] == first and failed.payload["decision"] == "fail"
    assert failed.resource["tunix.judge"] == "exact_match"
    assert any(r.id == f"tunix.run.{first}" and r.role == "baseline" for r in failed.related)


def test_the_nightly_rebuild_restores_every_board(engine, tmp_path: Path) -> None:
    from tunix_rt.flows.maintenance import rebuild_leaderboards

    run_id = make_run(engine, tmp_path, "nightly", correctness(N, 0.5, seed=12))
    quality_loop(run_id, judges=["exact_match", "format"])
    with session_scope(engine) as session:
        session.execute(LeaderboardEntry.__table__.delete())

    assert rebuild_leaderboards() == 2
    assert _count(engine, LeaderboardEntry) == 2
