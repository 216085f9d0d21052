"""A predictions URI is read by the service: hostile ones are refused, bad files fail once.

A URI that arrives over the webhook must be under a prefix of
TUNIX_RT_PREDICTIONS_ALLOW (a 422 naming the field, nothing stored). Whatever its
source, reading is bounded (bytes, line length), only regular files are opened, and
every bad file is a failed evaluation naming the cause, recorded once, never retried.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.flows.support import loop_fails_once
from tests.db.support import evaluate
from tests.factories import correctness, make_run, write_predictions
from tests.http.conftest import Service, event, serve_app, sign, webhook_env  # noqa: F401
from tunix_rt.errors import PredictionsError, is_transient
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.store.models import Dispatch, Run, Verdict, WebhookDelivery

pytestmark = pytest.mark.reliability

N = 12


def _counts(db_url: str) -> tuple[int, int, int]:
    with session_scope(get_engine(db_url)) as session:
        return tuple(session.scalar(select(func.count()).select_from(m)) or 0
                     for m in (WebhookDelivery, Run, Dispatch))


# --- the webhook: only URIs under TUNIX_RT_PREDICTIONS_ALLOW ---------------------------------

@pytest.fixture
def guarded(webhook_env: str, runs_dir: Path,  # noqa: F811
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """The receiver, reading predictions from ``runs_dir`` (as a file URI prefix) only."""
    from tunix_rt.service.server import create_app

    monkeypatch.setenv("TUNIX_RT_PREDICTIONS_ALLOW", f"{runs_dir.as_uri()}/ s3://team-bucket/")
    yield from serve_app(create_app())


@pytest.mark.parametrize("kind", ["passwd", "dotdot", "sibling", "symlink", "ftp", "http",
                                  "webhdfs", "dev-zero", "other-bucket"])
@pytest.mark.parametrize("event_type", ["run.completed", "run.started"])
def test_the_webhook_refuses_uris_outside_the_allowed_prefixes(
        guarded: Service, db_url: str, runs_dir: Path, kind: str, event_type: str) -> None:
    (runs_dir.parent / "runs2").mkdir()
    (runs_dir / "etc").symlink_to("/etc")
    uri = {"passwd": "file:///etc/passwd",
           "dotdot": f"{runs_dir.as_uri()}/../../../../../../../../etc/passwd",
           "sibling": f"{runs_dir.parent.as_uri()}/runs2/p.jsonl",  # runs2 is not under runs
           "symlink": f"{runs_dir.as_uri()}/etc/passwd",
           "ftp": "ftp://fileserver.internal/p.jsonl",
           "http": "http://169.254.169.254/latest/meta-data/p.jsonl",
           "webhdfs": "webhdfs://namenode.internal:9870/p.jsonl",
           "dev-zero": "/dev/zero",
           "other-bucket": "s3://team-bucket-2/p.jsonl"}[kind]
    body = event(event_type, predictions_uri=uri)

    response = guarded.post(body, sign(body))

    assert response.status_code == 422, response.text
    assert response.json()["field"] == "data.predictions_uri"
    assert "TUNIX_RT_PREDICTIONS_ALLOW" in response.json()["error"]
    assert _counts(db_url) == (0, 0, 0)


@pytest.mark.parametrize("kind", ["file-uri", "path", "s3"])
def test_the_webhook_accepts_uris_under_an_allowed_prefix(guarded: Service, db_url: str,
                                                          runs_dir: Path, kind: str) -> None:
    path = runs_dir / "job 1" / "p.jsonl"
    uri = {"file-uri": path.as_uri(), "path": str(path),
           "s3": "s3://team-bucket/job-1/p.jsonl"}[kind]
    body = event(predictions_uri=uri)

    response = guarded.post(body, sign(body))

    assert response.status_code == 202, response.text
    assert _counts(db_url) == (1, 1, 1)


def test_by_default_the_webhook_reads_the_jobs_and_demo_directories_only(
        webhook_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from tunix_rt.service.server import create_app

    monkeypatch.delenv("TUNIX_RT_PREDICTIONS_ALLOW", raising=False)
    monkeypatch.setenv("TUNIX_RT_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.chdir(tmp_path)
    bodies = {"jobs": event(external_id="a", predictions_uri=str(tmp_path / "jobs/j1/p.jsonl")),
              "demo": event(external_id="b",
                            predictions_uri=(tmp_path / "tunix_rt_demo/runs/p.jsonl").as_uri()),
              "elsewhere": event(external_id="c", predictions_uri=str(tmp_path / "p.jsonl"))}
    for service in serve_app(create_app()):
        codes = {k: service.post(body, sign(body)).status_code for k, body in bodies.items()}
    assert codes == {"jobs": 202, "demo": 202, "elsewhere": 422}


def test_a_run_the_operator_registers_is_not_subject_to_the_list(
        engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("TUNIX_RT_PREDICTIONS_ALLOW", "s3://team-bucket/")
    run_id = make_run(engine, tmp_path / "elsewhere", "cli", correctness(N, 0.5, seed=1))

    summary = evaluate(engine, run_id)

    assert summary.status == "completed" and summary.n_items == N


# --- reading: bounded, regular files only, every bad file named -----------------------------

def _missing_backend() -> str:
    """A protocol fsspec knows whose package is not installed (s3fs, gcsfs, adlfs, ...)."""
    from fsspec.registry import known_implementations

    for protocol, spec in sorted(known_implementations.items()):
        if importlib.util.find_spec(spec["class"].split(".")[0]) is None:
            return f"{protocol}://bucket/p.jsonl"
    pytest.skip("every fsspec backend is installed")


def _lines_with(tmp_path: Path, lineno: int, line: str) -> str:
    path = tmp_path / "p.jsonl"
    write_predictions(path, correctness(N, 0.5, seed=2))
    lines = path.read_text().splitlines()
    lines[lineno - 1] = line
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _fifo(tmp_path: Path) -> str:
    path = tmp_path / "p.jsonl"
    os.mkfifo(path)  # opening it for reading blocks until a writer comes, which never does
    return path.as_uri()


def _huge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TUNIX_RT_PREDICTIONS_MAX_BYTES", "1000")
    return write_predictions(tmp_path / "p.jsonl", correctness(N, 0.5, seed=3))  # ~1.2 kB


def _long_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TUNIX_RT_PREDICTIONS_MAX_LINE_BYTES", "300")
    line = json.dumps({"id": "q00002", "response": "x" * 400})
    return _lines_with(tmp_path, 3, line)


def _id(value: str) -> str:
    return json.dumps({"id": value, "response": "<answer>1</answer>", "reference": "1"})


# Each: the URI (built in tmp_path, with the environment it needs), and what the error says.
BAD: dict[str, tuple[Callable[[Path, pytest.MonkeyPatch], str], str]] = {
    "dev-zero": (lambda tmp, mp: "/dev/zero", "/dev/zero: is a character device"),
    "dev-zero-uri": (lambda tmp, mp: "file:///dev/zero", "is a character device"),
    "fifo": (lambda tmp, mp: _fifo(tmp), "is a FIFO"),
    "directory": (lambda tmp, mp: str(tmp), "is a directory"),
    "huge": (_huge, "larger than 1000 bytes"),
    "long-line": (_long_line, "line 3: longer than 300 bytes"),
    "brackets": (lambda tmp, mp: _lines_with(tmp, 2, "[" * 100_000),
                 "line 2: not valid JSON (nested too deeply)"),
    "nul-id": (lambda tmp, mp: _lines_with(tmp, 2, _id("q\u0000")),
               "line 2: field 'id' contains a NUL character"),
    "nul-metadata": (lambda tmp, mp: _lines_with(
        tmp, 4, json.dumps({"id": "z", "response": "r", "metadata": {"k": ["\u0000"]}})),
        "line 4: field 'metadata' contains a NUL character"),
    "huge-integer": (lambda tmp, mp: _lines_with(tmp, 5, '{"id": "z", "response": "r", '
                                                 '"metadata": {"n": ' + "9" * 5000 + "}}"),
                     "line 5: not valid JSON"),
    "unknown-protocol": (lambda tmp, mp: "nosuchproto://x/p.jsonl", "nosuchproto"),
    "missing-backend": (lambda tmp, mp: _missing_backend(), "no filesystem for it"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_predictions_file_is_refused_with_its_cause(
        engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:  # noqa: ANN001
    make_uri, cause = BAD[case]
    uri = make_uri(tmp_path, monkeypatch)
    run_id = make_run(engine, tmp_path, "bad", [], predictions=uri)

    with pytest.raises(PredictionsError) as excinfo:
        evaluate(engine, run_id)

    assert cause in str(excinfo.value)
    assert not is_transient(excinfo.value)
    assert "\u0000" not in str(excinfo.value)


@pytest.mark.flows
@pytest.mark.postgres
@pytest.mark.timeout(120)
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("case", list(BAD))
def test_the_loop_records_a_bad_file_once_as_a_failed_evaluation(
        prefect_api_url: str, engine, tmp_path: Path,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    make_uri, cause = BAD[case]
    uri = make_uri(tmp_path, monkeypatch)
    run_id = make_run(engine, tmp_path, "bad", [], predictions=uri)

    ev = loop_fails_once(run_id, engine)
    assert cause in (ev.error or ""), ev.error
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Verdict)) == 0
