"""The training-side client (tunix_rt.client) against the real receiver over real HTTP."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.http.conftest import SECRET, Service, delivery_counts, sign
from tunix_rt import client, retrying
from tunix_rt.client import NotifyError, TunixRtHook, notify, sign_delivery
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.store.models import Run

ROOT = Path(__file__).resolve().parents[2]
OTHER_SECRET = "whsec_" + "QW5vdGhlciBzZWNyZXQsIG5vdCB0aGUgcmVjZWl2ZXIncw=="
FAST = {"backoff": 0.001, "timeout": 5.0}


def _run(db_url: str, external_id: str) -> dict[str, Any]:
    with session_scope(get_engine(db_url)) as session:
        run = session.scalar(select(Run).where(Run.external_id == external_id))
        assert run is not None, f"no run {external_id}"
        return {c: getattr(run, c) for c in ("id", "name", "dataset", "model", "status",
                                             "origin", "predictions_uri", "config",
                                             "metrics", "error")}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait notify makes between attempts, in seconds, in order (still waited)."""
    seen: list[float] = []

    def sleep(seconds: float) -> None:
        seen.append(seconds)
        time.sleep(seconds)

    clock = SimpleNamespace(**{name: getattr(time, name) for name in dir(time)
                               if not name.startswith("_")})
    clock.sleep = sleep
    monkeypatch.setattr(client, "time", clock)  # only the client's time, not other threads'
    return seen


class FlakyProxy:
    """A loopback HTTP server that plays a script, then forwards to the real receiver.

    Each step is "drop" (close the connection without answering), an HTTP status with
    optional headers, or "forward". Every request's webhook headers are recorded.
    """

    def __init__(self, target: str, script: list[Any]) -> None:
        self.target, self.script, self.seen = target, list(script), []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                hooks = {k: self.headers[k] for k in ("webhook-id", "webhook-timestamp",
                                                      "webhook-signature", "content-type")}
                proxy.seen.append(hooks)
                step = proxy.script.pop(0) if proxy.script else "forward"
                if step == "drop":
                    self.close_connection = True
                    return
                if step == "forward":
                    answer = httpx.post(proxy.target + self.path, content=body, headers=hooks,
                                        timeout=30)
                    status, headers, payload = answer.status_code, {}, answer.content
                else:
                    status, headers = step
                    payload = json.dumps({"error": f"scripted {status}"}).encode()
                self.send_response(status)
                for key, value in {**headers, "content-type": "application/json",
                                   "content-length": str(len(payload))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FlakyProxy:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fields() -> dict[str, Any]:
    return {"external_id": "job-7", "name": "arith-lr01", "dataset": "arithmetic",
            "model": "tiny-jax", "config": {"learning_rate": 0.01, "steps": 200}}


# --- signing and import weight: no database ------------------------------------------------

def test_sign_delivery_agrees_with_the_spec_signer_and_the_library() -> None:
    from standardwebhooks.webhooks import Webhook

    body = b'{"type":"run.started","data":{"external_id":"x"}}'
    ts = int(time.time())
    ours = sign_delivery(SECRET, "msg_abc123", ts, body)
    theirs = sign(body, msg_id="msg_abc123", timestamp=ts)

    assert ours == {k: theirs[k] for k in ("webhook-id", "webhook-timestamp",
                                           "webhook-signature")}
    Webhook(SECRET).verify(body, ours)  # raises when it disagrees
    assert sign_delivery(SECRET, "msg_abc123", ts + 1, body) != ours
    with pytest.raises(ValueError, match="whsec_"):
        sign_delivery("whsec_not base64!", "msg_1", ts, body)


def test_importing_the_client_stays_light() -> None:
    heavy = ("prefect", "sqlalchemy", "numpy", "jax", "tunix", "httpx", "fastapi", "pydantic",
             "uvicorn")
    code = ("import sys, json, tunix_rt.client; "
            f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == [], done.stdout


def test_programming_errors_raise(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="run.started, run.progress, run.completed, run.failed"):
        notify("run.finished", **fields, url="http://127.0.0.1:9", secret=SECRET)
    with pytest.raises(ValueError, match="external_id"):
        notify("run.started", external_id="", url="http://127.0.0.1:9", secret=SECRET)


def test_a_missing_configuration_is_a_failed_delivery_not_a_crash(
        fields: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNIX_RT_URL", raising=False)
    monkeypatch.delenv("TUNIX_RT_WEBHOOK_SECRET", raising=False)

    result = notify("run.started", **fields)

    assert not result.ok and result.attempts == 0 and "TUNIX_RT_URL" in result.error
    result = notify("run.started", **fields, url="http://127.0.0.1:9")
    assert not result.ok and result.attempts == 0 and "TUNIX_RT_WEBHOOK_SECRET" in result.error
    with pytest.raises(NotifyError):
        notify("run.started", **fields, raise_on_error=True)


def test_an_unreachable_receiver_is_retried_then_given_up(fields: dict[str, Any],
                                                          waits: list[float]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"

    result = notify("run.started", **fields, url=url, secret=SECRET, retries=3, **FAST)

    assert not result.ok and result.status is None and result.attempts == 3
    assert "Connect" in result.error and result.delivery_id.startswith("msg_")
    # Two waits between three attempts, each within its backoff window (full jitter).
    assert len(waits) == 2
    assert all(0 <= wait <= FAST["backoff"] * 2 ** i for i, wait in enumerate(waits)), waits
    with pytest.raises(NotifyError) as raised:
        notify("run.started", **fields, url=url, secret=SECRET, retries=2,
               raise_on_error=True, **FAST)
    assert raised.value.result.attempts == 2


# --- against the real receiver (SQLite and PostgreSQL) -------------------------------------

def test_a_completion_from_the_environment_is_stored(service: Service, db_url: str,
                                                      fields: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNIX_RT_URL", service.url + "/")
    monkeypatch.setenv("TUNIX_RT_WEBHOOK_SECRET", f"{SECRET} {OTHER_SECRET}")  # first signs

    result = notify("run.completed", **fields, predictions_uri="file:///data/p.jsonl",
                    metrics={"loss": 0.5, "nan": float("nan")}, **FAST)

    assert result.ok and result.status == 202 and result.attempts == 1, result
    assert result.error is None and result.response["status"] == "accepted"
    run = _run(db_url, "job-7")
    assert result.response["run_id"] == run["id"]
    assert run == {"id": run["id"], "name": "arith-lr01", "dataset": "arithmetic",
                   "model": "tiny-jax", "status": "completed", "origin": "webhook",
                   "predictions_uri": "file:///data/p.jsonl",
                   "config": {"learning_rate": 0.01, "steps": 200},
                   "metrics": {"loss": 0.5, "nan": None}, "error": None}
    assert delivery_counts(db_url) == (1, 1, 1)


def test_the_same_delivery_id_is_received_once(service: Service, db_url: str,
                                               fields: dict[str, Any]) -> None:
    first = notify("run.completed", **fields, predictions_uri="file:///p.jsonl",
                   url=service.url, secret=SECRET, **FAST)
    again = notify("run.completed", **fields, predictions_uri="file:///p.jsonl",
                   url=service.url, secret=SECRET, delivery_id=first.delivery_id, **FAST)

    assert first.status == 202 and again.ok and again.status == 200
    assert again.response == {"status": "duplicate", "run_id": first.response["run_id"]}
    assert delivery_counts(db_url) == (1, 1, 1)


def test_retries_after_a_dropped_connection_and_a_503_reuse_the_id(
        service: Service, db_url: str, fields: dict[str, Any]) -> None:
    script = ["drop", (503, {"Retry-After": "0"})]
    with FlakyProxy(service.url, script) as proxy:
        result = notify("run.completed", **fields, predictions_uri="file:///p.jsonl",
                        url=proxy.url, secret=SECRET, retries=5, **FAST)

    assert result.ok and result.status == 202 and result.attempts == 3, result
    assert {seen["webhook-id"] for seen in proxy.seen} == {result.delivery_id}
    assert len(proxy.seen) == 3
    assert delivery_counts(db_url) == (1, 1, 1)


def test_retry_after_is_honoured_instead_of_the_backoff(
        service: Service, db_url: str, fields: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(retrying.random, "uniform", lambda low, high: high)  # worst-case jitter
    caplog.set_level(logging.INFO, logger="tunix_rt.client")

    def announced() -> list[float]:  # the waits the client logs before each retry
        return [r.args[-1] for r in caplog.records if "retrying in" in r.getMessage()]

    script = [(429, {"Retry-After": "0"}), (503, {"Retry-After": "0"}), (500, {})]
    with FlakyProxy(service.url, script) as proxy:
        result = notify("run.started", **fields, url=proxy.url, secret=SECRET, retries=4,
                        backoff=0.01, timeout=5.0)
    # 429 and 503 wait 0 s as told; the 500 backs off 0.01 * 2**2 s.
    assert result.ok and result.attempts == 4, result
    assert announced() == pytest.approx([0.0, 0.0, 0.04])
    caplog.clear()
    with FlakyProxy(service.url, [(503, {"Retry-After": "0"})]) as proxy:
        again = notify("run.failed", **fields, error="boom", url=proxy.url, secret=SECRET,
                       retries=2, backoff=60.0, timeout=5.0)
    assert again.ok and again.attempts == 2
    assert announced() == [0.0]  # not the 60 s a backoff would have waited
    assert _run(db_url, "job-7")["status"] == "failed"


def test_a_wrong_secret_is_not_retried_and_does_not_raise(service: Service, db_url: str,
                                                          fields: dict[str, Any]) -> None:
    result = notify("run.started", **fields, url=service.url, secret=OTHER_SECRET, **FAST)

    assert not result.ok and result.status == 401 and result.attempts == 1
    assert "signature rejected" in result.error
    with pytest.raises(NotifyError) as raised:
        notify("run.started", **fields, url=service.url, secret=OTHER_SECRET,
               raise_on_error=True, **FAST)
    assert raised.value.result.status == 401 and raised.value.result.attempts == 1
    assert delivery_counts(db_url) == (0, 0, 0)


def test_an_invalid_payload_is_not_retried(service: Service, db_url: str,
                                           fields: dict[str, Any]) -> None:
    result = notify("run.completed", **fields, url=service.url, secret=SECRET, **FAST)

    assert not result.ok and result.status == 422 and result.attempts == 1
    assert result.response["field"] == "data.predictions_uri"
    assert delivery_counts(db_url) == (0, 0, 0)


def test_the_hook_moves_a_run_to_running_then_completed(service: Service, db_url: str,
                                                        fields: dict[str, Any],
                                                        tmp_path: Path) -> None:
    ctx = SimpleNamespace(out_dir=tmp_path, loss=0.25)
    hook = TunixRtHook(**fields, url=service.url, secret=SECRET,
                       predictions_uri=lambda c: (c.out_dir / "p.jsonl").as_uri(),
                       metrics_fn=lambda c: {"train_loss": c.loss}, **FAST)

    hook.on_train_start(ctx)
    assert _run(db_url, "job-7")["status"] == "running"
    hook.on_train_step_start(ctx)
    hook.on_train_step_end(ctx, 1, {"batch": 1}, 0.3)
    hook.on_eval_end(ctx, 0.4)
    hook.on_some_future_hook(ctx, extra=True)  # unknown on_* hooks are accepted
    assert _run(db_url, "job-7")["status"] == "running"
    hook.on_train_end(ctx)

    run = _run(db_url, "job-7")
    assert run["status"] == "completed" and run["config"] == fields["config"]
    assert run["predictions_uri"] == (tmp_path / "p.jsonl").as_uri()
    assert run["metrics"] == {"train_loss": 0.25}
    assert [(r.ok, r.status) for r in hook.results] == [(True, 202), (True, 202)]
    # Another process of the same job reports the same events: the receiver keeps one.
    twin = TunixRtHook(**fields, url=service.url, secret=SECRET,
                       predictions_uri="file:///elsewhere.jsonl", **FAST)
    twin.on_train_start(ctx)
    twin.on_train_end(ctx)
    assert [r.status for r in twin.results] == [200, 200]
    assert delivery_counts(db_url) == (2, 1, 1)
    with pytest.raises(AttributeError):
        hook.not_a_hook  # noqa: B018


def test_the_hook_reports_a_failed_training_and_reraises(service: Service, db_url: str,
                                                         fields: dict[str, Any]) -> None:
    hook = TunixRtHook(**fields, url=service.url, secret=SECRET, **FAST)
    with pytest.raises(RuntimeError, match="out of memory"), hook:
        hook.on_train_start(None)
        raise RuntimeError("out of memory")

    run = _run(db_url, "job-7")
    assert run["status"] == "failed" and "RuntimeError: out of memory" in run["error"]
    assert delivery_counts(db_url) == (2, 1, 0)


def test_a_broken_metrics_fn_fails_the_run_and_raises(service: Service, db_url: str,
                                                      fields: dict[str, Any]) -> None:
    def metrics(_ctx: Any) -> dict[str, float]:
        raise KeyError("loss")

    hook = TunixRtHook(**fields, url=service.url, secret=SECRET,
                       predictions_uri="file:///p.jsonl", metrics_fn=metrics, **FAST)
    hook.on_train_start(None)
    with pytest.raises(KeyError):
        hook.on_train_end(None)

    run = _run(db_url, "job-7")
    assert run["status"] == "failed" and "KeyError('loss')" in run["error"]
