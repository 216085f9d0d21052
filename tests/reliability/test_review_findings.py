"""The findings of the last review of issue 14, each a fault first seen here.

- A webhook's predictions file replaced by a symbolic link after the delivery was
  accepted is not read: the path is checked again as it is opened.
- A URI whose filesystem cannot be had (hdfs:// without a JVM, a backend not
  installed) is one failed evaluation, never retried; a refused connection is retried.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.db.support import evaluate
from tests.factories import correctness, make_run, write_predictions
from tests.flows.support import task_states
from tests.http.conftest import Service, event, serve_app, sign, webhook_env  # noqa: F401
from tunix_rt.errors import PredictionsError, is_transient
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Evaluation, Run

pytestmark = pytest.mark.reliability

N = 12


# --- 1. a symbolic link planted after the delivery was accepted ------------------------------

@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "runs"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def receiver(webhook_env: str, runs_dir: Path,  # noqa: F811
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """The receiver (no dispatcher: the test runs the loop), reading from ``runs_dir`` only."""
    from tunix_rt.service.server import create_app

    monkeypatch.setenv("TUNIX_RT_PREDICTIONS_ALLOW", f"{runs_dir.as_uri()}/")
    yield from serve_app(create_app())


def _accepted(service: Service, engine, runs_dir: Path) -> tuple[str, Path]:  # noqa: ANN001
    """A real signed delivery of a completed run whose predictions are under ``runs_dir``."""
    path = Path(write_predictions(runs_dir / "job-1" / "p.jsonl", correctness(N, 0.5, seed=4)))
    body = event(predictions_uri=path.as_uri())
    response = service.post(body, sign(body))
    assert response.status_code == 202, response.text
    with session_scope(engine) as session:
        run = session.scalar(select(Run))
        assert run.origin == "webhook"
        return run.id, path


def _outside_file(tmp_path: Path) -> Path:
    """A good predictions file outside the allowed folder: it would score if it were read."""
    return Path(write_predictions(tmp_path / "elsewhere" / "p.jsonl", correctness(N, 1.0, 5)))


def _swap(path: Path, kind: str, tmp_path: Path) -> None:
    if kind == "link-to-a-file-outside":
        path.unlink()
        path.symlink_to(_outside_file(tmp_path))
    elif kind == "link-to-etc-passwd":
        path.unlink()
        path.symlink_to("/etc/passwd")
    elif kind == "folder-swapped-for-a-link":
        outside = _outside_file(tmp_path).parent
        folder = path.parent
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
        folder.symlink_to(outside, target_is_directory=True)
    elif kind == "link-to-a-fifo-outside":
        fifo = tmp_path / "fifo.jsonl"
        os.mkfifo(fifo)
        path.unlink()
        path.symlink_to(fifo)
    else:
        raise AssertionError(kind)


SWAPS = ["link-to-a-file-outside", "link-to-etc-passwd", "folder-swapped-for-a-link",
         "link-to-a-fifo-outside"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", SWAPS)
def test_a_link_swapped_in_after_acceptance_is_not_read(
        receiver: Service, engine, runs_dir: Path, tmp_path: Path,  # noqa: ANN001
        kind: str) -> None:
    run_id, path = _accepted(receiver, engine, runs_dir)
    _swap(path, kind, tmp_path)

    with pytest.raises(PredictionsError) as excinfo:
        evaluate(engine, run_id)

    message = str(excinfo.value)
    assert "TUNIX_RT_PREDICTIONS_ALLOW" in message and "checked again" in message, message
    assert path.as_uri() in message
    assert not is_transient(excinfo.value)


@pytest.mark.timeout(60)
def test_an_unchanged_webhook_file_and_an_operators_link_are_read(
        receiver: Service, engine, runs_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """The control: the check refuses only what left the list, and only for webhook runs."""
    run_id, _ = _accepted(receiver, engine, runs_dir)
    assert evaluate(engine, run_id).status == "completed"

    link = tmp_path / "operator" / "p.jsonl"
    link.parent.mkdir()
    link.symlink_to(_outside_file(tmp_path))
    operators = make_run(engine, tmp_path, "by-hand", [], predictions=str(link))
    summary = evaluate(engine, operators)
    assert summary.status == "completed" and summary.n_items == N


@pytest.mark.flows
@pytest.mark.postgres
@pytest.mark.timeout(120)
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_loop_fails_a_swapped_file_once_naming_why(
        prefect_api_url: str, receiver: Service, engine, runs_dir: Path,  # noqa: ANN001
        tmp_path: Path) -> None:
    from tunix_rt.flows.quality_loop import quality_loop

    run_id, path = _accepted(receiver, engine, runs_dir)
    _swap(path, "link-to-a-file-outside", tmp_path)

    state = quality_loop(run_id, judges=["exact_match"], return_state=True)

    assert state.is_failed()
    states = task_states(state.state_details.flow_run_id, "score-run")
    assert states.count("Running") == 1 and "Retrying" not in states, states
    with session_scope(engine) as session:
        [ev] = session.scalars(select(Evaluation)).all()
        assert ev.status == "failed", ev.error
        assert "TUNIX_RT_PREDICTIONS_ALLOW" in (ev.error or ""), ev.error
        assert str(tmp_path / "elsewhere") in (ev.error or ""), ev.error


# --- 2. a filesystem that cannot be had, and a store that cannot be reached -------------------

def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: connecting is refused


# hdfs:// needs pyarrow and a JVM with libhdfs: without them it cannot be set up. Each
# error names the URI; the operator's CLI path has no allow-list, so only this stops it.
UNREACHABLE_BACKENDS = {
    "hdfs": "hdfs://namenode.internal:8020/runs/p.jsonl",
    "hdfs-chained": "simplecache::hdfs://namenode.internal:8020/runs/p.jsonl",
    "hdfs-no-host": "hdfs:///runs/p.jsonl",
}


@pytest.mark.flows
@pytest.mark.postgres
@pytest.mark.timeout(120)
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("case", list(UNREACHABLE_BACKENDS))
def test_a_filesystem_that_cannot_be_set_up_fails_once(
        prefect_api_url: str, engine, tmp_path: Path, case: str) -> None:  # noqa: ANN001
    from tunix_rt.flows.quality_loop import quality_loop

    uri = UNREACHABLE_BACKENDS[case]
    run_id = make_run(engine, tmp_path, "hdfs", [], predictions=uri)  # the operator's CLI path

    state = quality_loop(run_id, judges=["exact_match"], return_state=True)

    assert state.is_failed()
    states = task_states(state.state_details.flow_run_id, "score-run")
    assert states.count("Running") == 1 and "Retrying" not in states, states
    with session_scope(engine) as session:
        [ev] = session.scalars(select(Evaluation)).all()
        assert ev.status == "failed" and f"cannot open predictions URI {uri!r}" in ev.error


def test_a_refused_connection_to_a_store_is_transient(engine, tmp_path: Path) -> None:  # noqa: ANN001
    """Decided: a store that refuses or cannot be reached may be restarting; the task
    retries it (three times, backing off), so this one is an OSError, not a verdict."""
    port = _closed_port()
    for uri in (f"ftp://127.0.0.1:{port}/p.jsonl", f"webhdfs://127.0.0.1:{port}/p.jsonl"):
        run_id = make_run(engine, tmp_path, f"store-{uri[:3]}", [], predictions=uri)
        with pytest.raises(OSError) as excinfo:
            evaluate(engine, run_id)
        assert not isinstance(excinfo.value, PredictionsError)
        assert is_transient(excinfo.value), repr(excinfo.value)
