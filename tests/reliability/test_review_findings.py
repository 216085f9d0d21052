"""The findings of the last review of issue 14, each a fault first seen here.

- A webhook's predictions file replaced by a symbolic link after the delivery was
  accepted is not read: the path is checked again as it is opened.
- A URI whose filesystem cannot be had (hdfs:// without a JVM, a backend not
  installed) is one failed evaluation, never retried; a refused connection is retried.
- A loop that hangs stops renewing its lease at its deadline (TUNIX_RT_LOOP_TIMEOUT_S):
  the lease lapses, the run says why, and the sweeper may start the loop again.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.db.support import evaluate
from tests.factories import correctness, make_run, write_predictions
from tests.flows.support import loop_fails_once, task_states
from tests.http.conftest import Service, event, serve_app, service, sign, webhook_env  # noqa: F401
from tunix_rt.errors import PredictionsError, is_transient
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Evaluation, Run

pytestmark = pytest.mark.reliability

N = 12


# --- 1. a symbolic link planted after the delivery was accepted ------------------------------

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

    run_id, path = _accepted(receiver, engine, runs_dir)
    _swap(path, "link-to-a-file-outside", tmp_path)

    ev = loop_fails_once(run_id, engine)
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
    uri = UNREACHABLE_BACKENDS[case]
    run_id = make_run(engine, tmp_path, "hdfs", [], predictions=uri)  # the operator's CLI path

    ev = loop_fails_once(run_id, engine)
    assert f"cannot open predictions URI {uri!r}" in (ev.error or ""), ev.error


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


# --- 5. a loop that hangs gives its lease up at its deadline ---------------------------------

class SilentStore:
    """A TCP server that accepts connections and never answers: a store that hangs."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so that the accepting thread sees close()
        self.port = self._listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        """The hung reads end, and new connections are refused."""
        self._closed.set()
        self._thread.join(timeout=10)
        self._listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_store() -> Iterator[SilentStore]:
    store = SilentStore()
    try:
        yield store
    finally:
        store.close()


def _loop_error(engine, run_id: str) -> str | None:  # noqa: ANN001
    from tunix_rt.store.runs import get_run, run_to_dict

    with session_scope(engine) as session:
        return run_to_dict(get_run(session, run_id))["loop_error"]


def _claimable(engine, run_id: str) -> bool:  # noqa: ANN001
    """Whether a sweeper may take the run's loop now (its lease has lapsed); claims it."""
    from datetime import timedelta

    from tunix_rt.service.deliveries import claim_owed

    with session_scope(engine) as session:
        owed = claim_owed(session, older_than=timedelta(0), holder="sweeper:test")
    return any(o.run_id == run_id for o in owed)


@pytest.mark.flows
@pytest.mark.postgres
@pytest.mark.timeout(180)
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_loop_hung_in_a_worker_thread_lets_its_lease_lapse(
        prefect_api_url: str, webhook_env: str, engine, tmp_path: Path,  # noqa: ANN001, F811
        silent_store: SilentStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The receiver's own worker thread reads predictions from a store that never
    answers: nothing can interrupt that read, so before the deadline existed its lease
    was renewed forever and no sweeper could give the run its evaluation."""
    from tests.waiting import wait_for
    from tunix_rt.flows.dispatch import LocalDispatcher
    from tunix_rt.service.server import create_app

    store = f"webhdfs://127.0.0.1:{silent_store.port}/runs/"
    monkeypatch.setenv("TUNIX_RT_PREDICTIONS_ALLOW", f"{store} {tmp_path.as_uri()}/")
    monkeypatch.setenv("TUNIX_RT_LOOP_TIMEOUT_S", "3")
    dispatcher = LocalDispatcher()
    try:
        for service in serve_app(create_app(dispatcher=dispatcher)):
            body = event(external_id="hung", predictions_uri=store + "p.jsonl")
            response = service.post(body, sign(body))
            assert response.status_code == 202, response.text
            hung = response.json()["run_id"]
            wait_for(lambda: silent_store.accepted, 60, "the loop to reach the store")

            wait_for(lambda: _claimable(engine, hung), 60, "the hung loop's lease to lapse")
            error = _loop_error(engine, hung) or ""
            assert "TUNIX_RT_LOOP_TIMEOUT_S" in error and "3 s" in error, error

            # The worker thread is still stuck; the next run is not stuck behind it.
            path = write_predictions(tmp_path / "next.jsonl", correctness(N, 0.5, seed=6))
            body = event(external_id="next", predictions_uri=path)
            following = service.post(body, sign(body)).json()["run_id"]
            wait_for(lambda: _evaluation_status(engine, following), 90,
                     "the next run's loop to run on another worker thread")
    finally:
        silent_store.close()  # the stuck read ends, and its thread with it
        dispatcher.close()


def _evaluation_status(engine, run_id: str) -> str | None:  # noqa: ANN001
    with session_scope(engine) as session:
        return session.scalar(select(Evaluation.status).where(Evaluation.run_id == run_id))


@pytest.mark.flows
@pytest.mark.cli
@pytest.mark.postgres
@pytest.mark.timeout(180)
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_prefect_times_a_hung_loop_out_and_the_run_shows_why(
        prefect_api_url: str, webhook_env: str, engine, tmp_path: Path,  # noqa: ANN001, F811
        silent_store: SilentStore) -> None:
    """``tunix-rt evaluate`` in its own process, the flow in its main thread as a worker
    runs a deployment: Prefect interrupts the stuck read at the deadline (TimedOut), the
    read is not retried, the run says why and its lease is free."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from tests.cli.conftest import Cli
    from tunix_rt.service.deliveries import mark_dispatched, receive
    from tunix_rt.service.webhooks import RunEvent
    from tunix_rt.store.models import Dispatch

    store = f"webhdfs://127.0.0.1:{silent_store.port}/runs/"
    with session_scope(engine) as session:  # a webhook's run, its loop started
        run_id = receive(session, "d-hung", RunEvent.model_validate({
            "type": "run.completed", "data": {"external_id": "hung", "dataset": "arith",
                                              "model": "m", "predictions_uri": store + "p"}}
        )).run_id
    with session_scope(engine) as session:
        mark_dispatched(session, session.scalar(select(Dispatch.id)), "deployment")

    result = Cli(prefect_api_url)("evaluate", run_id, expect=None,
                                  TUNIX_RT_LOOP_TIMEOUT_S="3", TUNIX_RT_PREDICTIONS_ALLOW=store)

    assert result.returncode != 0, result
    with get_client(sync_client=True) as client:
        [flow_run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=[f"quality-loop-{run_id}"])))
    assert flow_run.state.name == "TimedOut", flow_run.state
    states = task_states(flow_run.id, "score-run")
    assert states.count("Running") == 1 and "Retrying" not in states, states
    # Said by the flow's hook, or by the lease keeper that gave up at the same moment.
    error = _loop_error(engine, run_id) or ""
    assert "TUNIX_RT_LOOP_TIMEOUT_S" in error and "longer than 3 s" in error, error
    assert _claimable(engine, run_id)


# --- 3. the webhook's answers, in the served schema and in fact ------------------------------

WEBHOOK_STATUSES = {"200", "202", "400", "401", "409", "413", "422", "503"}


def _webhook_operation(service: Service) -> tuple[dict, object]:
    """The webhook's entry in the served /openapi.json, and schemathesis's operation for it."""
    import schemathesis

    document = service.get("/openapi.json").json()
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    return document, schema["/webhooks/training"]["POST"]


def test_the_served_schema_documents_the_webhook(service: Service) -> None:
    document, _ = _webhook_operation(service)
    operation = document["paths"]["/webhooks/training"]["post"]

    assert set(operation["responses"]) == WEBHOOK_STATUSES
    for status, answer in operation["responses"].items():
        content = answer["content"]["application/json"]
        assert content["schema"]["$ref"].startswith("#/components/schemas/"), status
        assert content["example"], status
    assert "Retry-After" in operation["responses"]["503"]["headers"]
    assert {p["name"] for p in operation["parameters"] if p["in"] == "header"
            and p["required"]} == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    event_schema = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert set(event_schema["required"]) == {"type", "data"}
    assert {"run.started", "run.completed", "run.failed"} <= set(
        event_schema["properties"]["type"]["enum"])
    data = document["components"]["schemas"][
        event_schema["properties"]["data"]["$ref"].rsplit("/", 1)[1]]
    assert "external_id" in data["required"] and "predictions_uri" in data["properties"]


def test_every_documented_answer_is_given_and_matches_its_schema(
        service: Service, db_url: str, tmp_path: Path) -> None:
    """Each status the schema lists, produced by a real request and checked against the
    schema's shape for it (schemathesis's validation of the served document)."""
    from tests.http.conftest import SECRET
    from tunix_rt.service.server import create_app
    from tunix_rt.settings import Settings
    from tunix_rt.store import runs
    from tunix_rt.store.db import dispose_engines, get_engine

    _, operation = _webhook_operation(service)
    with session_scope(get_engine(db_url)) as session:
        runs.register_run(session, name="by-hand", dataset="arith", model="m",
                          predictions_uri="file:///p.jsonl", external_id="hand-1")
    body = event(predictions_uri="file:///p.jsonl")
    headers = sign(body)
    conflict = event("run.failed", "hand-1", error="rewritten")
    bad = b'{"type": "run.exploded", "data": {"external_id": "x"}}'
    big = b'{"type":"run.completed","data":{"name":"' + b"x" * (256 * 1024) + b'"}}'
    unsigned = {k: v for k, v in headers.items() if k != "webhook-signature"}
    requests = {"202": (body, headers), "200": (body, headers),
                "400": (body, unsigned), "401": (body, {**headers, "webhook-signature": "v1,AAAA"}),
                "409": (conflict, sign(conflict)), "413": (big, sign(big)),
                "422": (bad, sign(bad))}
    answers = {status: service.post(b, h) for status, (b, h) in requests.items()}

    # 503: a receiver whose database went away (a directory where its SQLite file was).
    url = f"sqlite:///{tmp_path / 'gone.sqlite'}"
    broken = create_app(Settings(database_url=url, webhook_secret=SECRET))
    (tmp_path / "gone.sqlite").unlink()
    (tmp_path / "gone.sqlite").mkdir()
    dispose_engines()
    for down in serve_app(broken):
        answers["503"] = down.post(body, sign(body))

    assert set(answers) == WEBHOOK_STATUSES
    for status, response in answers.items():
        assert str(response.status_code) == status, (status, response.text)
        operation.validate_response(response)
    assert answers["503"].headers["retry-after"]
