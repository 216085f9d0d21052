"""A real uvicorn server on a loopback port, and an independent webhook signer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from tests.waiting import wait_for

SECRET_BYTES = b"tunix-rt test secret, 32 bytes!!"
SECRET = "whsec_" + base64.b64encode(SECRET_BYTES).decode()


def sign(body: bytes, *, secret: bytes = SECRET_BYTES, msg_id: str | None = None,
         timestamp: int | None = None) -> dict[str, str]:
    """Standard Webhooks headers, computed here from the spec with hmac and base64 only."""
    msg_id = msg_id or f"msg_{secrets.token_hex(8)}"
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": ts,
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
            "content-type": "application/json"}


def event(kind: str = "run.completed", external_id: str = "job-1", **data: Any) -> bytes:
    body = {"type": kind, "data": {"external_id": external_id, "name": external_id,
                                   "dataset": "arith", "model": "tiny", **data}}
    return json.dumps(body).encode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    url: str
    app: Any

    def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{self.url}/webhooks/training", content=body, headers=headers,
                          timeout=30)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, timeout=30)


def serve_app(app: Any) -> Iterator[Service]:
    """Run ``app`` under uvicorn in a thread until the generator is closed."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "uvicorn to start", interval=0.02,
             alive=thread.is_alive)
    try:
        yield Service(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def webhook_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TUNIX_RT_WEBHOOK_SECRET", SECRET)
    # Any local path may be named (file:///p.jsonl ...); tests/reliability/test_predictions_uri.py
    # checks the list itself.
    monkeypatch.setenv("TUNIX_RT_PREDICTIONS_ALLOW", "/")
    return db_url


@pytest.fixture
def service(webhook_env: str) -> Iterator[Service]:
    """The receiver with no dispatcher: completed runs leave a pending dispatch row."""
    from tunix_rt.service.server import create_app

    yield from serve_app(create_app())


def delivery_counts(db_url: str) -> tuple[int, int, int]:
    """Rows in webhook_deliveries, runs and dispatches: what a request left behind."""
    from sqlalchemy import func, select

    from tunix_rt.store.db import get_engine, session_scope
    from tunix_rt.store.models import Dispatch, Run, WebhookDelivery

    with session_scope(get_engine(db_url)) as session:
        return tuple(session.scalar(select(func.count()).select_from(m)) or 0
                     for m in (WebhookDelivery, Run, Dispatch))
