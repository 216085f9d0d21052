"""The webhook receiver is safe to expose: hostile or odd deliveries are refused or stored safely.

- The dedupe key is the id that was verified: a request with more than one webhook-id,
  webhook-timestamp or webhook-signature header is a 400 naming it, and the hook's ids
  cannot be computed from public data (the external id).
- NaN, Infinity, NUL bytes and over-long ids are never a 500: a NUL is a 422 naming the
  field, an over-long webhook-id a 400 naming the header, and non-finite numbers are
  stored as null with a note on the run (also on the job supervisor's metrics path).
- A webhook changes only runs that webhooks created, and, with per-source secrets, only
  runs its own source created: anything else is a 409 naming the run, nothing stored.
"""

from __future__ import annotations

import base64
import json
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.http.conftest import (SECRET, SECRET_BYTES, Service, delivery_counts, event,  # noqa: F401
                                 serve_app, service, sign, webhook_env)
from tunix_rt.client import TunixRtHook
from tunix_rt.store import runs
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.store.models import Run, RunOrigin, RunStatus, WebhookDelivery
from tunix_rt.training.jobs import run_job

pytestmark = pytest.mark.reliability

FAST = {"backoff": 0.001, "timeout": 5.0}
NOTE = "tunix_rt_note"


def _run(db_url: str, external_id: str) -> dict[str, Any]:
    with session_scope(get_engine(db_url)) as session:
        run = session.scalar(select(Run).where(Run.external_id == external_id))
        return runs.run_to_dict(run)


def _post_raw(service: Service, body: bytes, headers: list[tuple[str, str]]) -> httpx.Response:
    return httpx.post(f"{service.url}/webhooks/training", content=body, headers=headers,
                      timeout=30)


# --- the dedupe key is the verified id ------------------------------------------------------

@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_repeated_webhook_header_is_refused(service: Service, db_url: str,
                                              header: str) -> None:
    """A replayed, validly signed request with a second header in front (a victim's future
    delivery id, say) must not be stored under the header the verifier did not check."""
    body = event("run.started", "attacker-job")
    signed = sign(body, msg_id="msg_attacker")
    decoy = {"webhook-id": "msg_victims_future_id", "webhook-timestamp": "1",
             "webhook-signature": "v1,AAAA"}[header]
    headers = [(header, decoy)] + list(signed.items())

    response = _post_raw(service, body, headers)

    assert response.status_code == 400, response.text
    assert header in response.json()["error"] and response.json()["header"] == header
    assert delivery_counts(db_url) == (0, 0, 0)
    # The same request without the decoy is fine, and is stored under the signed id.
    assert service.post(body, signed).status_code == 202
    with session_scope(get_engine(db_url)) as session:
        assert session.scalars(select(WebhookDelivery.id)).all() == ["msg_attacker"]


def test_the_hooks_delivery_ids_cannot_be_computed_from_the_external_id(
        service: Service, db_url: str) -> None:
    """Stable across a job's retries (same secret), but not derivable from public data."""
    other = "whsec_" + base64.b64encode(b"another job's secret, 32 bytes!!").decode()
    fields = {"external_id": "job-9", "dataset": "arith", "model": "tiny"}
    first = TunixRtHook(**fields, url=service.url, secret=SECRET, **FAST)
    retry = TunixRtHook(**fields, url=service.url, secret=SECRET, **FAST)
    elsewhere = TunixRtHook(**fields, url="http://127.0.0.1:9", secret=other, retries=1,
                            timeout=1.0)

    first.on_train_start(None)
    retry.on_train_start(None)
    elsewhere.on_train_start(None)

    public = f"msg_{uuid.uuid5(uuid.NAMESPACE_URL, 'tunix-rt:job-9:run.started').hex}"
    ids = [h.results[0].delivery_id for h in (first, retry, elsewhere)]
    assert ids[0] == ids[1], "a retried job must reuse its delivery id"
    assert ids[0] != ids[2], "the id must depend on the job's secret"
    assert public not in ids
    assert [r.status for r in first.results + retry.results] == [202, 200]


# --- NaN, Infinity, NUL and over-long ids ---------------------------------------------------

def test_non_finite_numbers_are_stored_as_null_with_a_note(service: Service,
                                                           db_url: str) -> None:
    body = (b'{"type": "run.started", "data": {"external_id": "job-nan", "dataset": "arith",'
            b' "model": "tiny", "metrics": {"loss": NaN, "grad": -Infinity, "ok": 1.5},'
            b' "config": {"lr": Infinity, "nested": [1, NaN]}}}')

    headers = sign(body)
    response = service.post(body, headers)

    assert response.status_code == 202, response.text
    run = _run(db_url, "job-nan")
    assert run["metrics"]["loss"] is None and run["metrics"]["grad"] is None
    assert run["metrics"]["ok"] == 1.5
    assert run["config"] == {"lr": None, "nested": [1, None]}
    note = run["metrics"][NOTE]
    for field in ("data.metrics.loss", "data.metrics.grad", "data.config.lr",
                  "data.config.nested[1]"):
        assert field in note
    json.dumps(run, allow_nan=False)  # the API can show it
    assert service.get(f"/api/runs/{run['id']}").status_code == 200
    # The sender's retry is a duplicate, not another 500.
    assert service.post(body, headers).status_code == 200
    assert delivery_counts(db_url) == (1, 1, 0)
    # Later deliveries with the same NaN name it once; a new field is added to the note.
    again = (b'{"type": "run.started", "data": {"external_id": "job-nan",'
             b' "metrics": {"loss": NaN, "acc": NaN}}}')
    assert service.post(again, sign(again)).status_code == 202
    note = _run(db_url, "job-nan")["metrics"][NOTE]
    assert note.count("data.metrics.loss") == 1 and "data.metrics.acc" in note


@pytest.mark.parametrize("where, field", [
    ({"name": "a\u0000b"}, "data.name"),
    ({"external_id": "job\u0000"}, "data.external_id"),
    ({"error": "boom\u0000"}, "data.error"),
    ({"metrics": {"loss\u0000": 1.0}}, "data.metrics"),
    ({"config": {"tag": ["x", "y\u0000"]}}, "data.config.tag[1]"),
    ({"notes": "extra field\u0000"}, "data.notes"),
])
def test_a_nul_character_is_a_422_naming_the_field(service: Service, db_url: str,
                                                   where: dict[str, Any], field: str) -> None:
    body = json.loads(event("run.started", "job-nul"))
    body["data"].update(where)
    raw = json.dumps(body).encode()

    response = service.post(raw, sign(raw))

    assert response.status_code == 422, response.text
    assert response.json()["field"].startswith(field)
    assert delivery_counts(db_url) == (0, 0, 0)


def test_an_over_long_webhook_id_is_a_400_naming_the_header(service: Service,
                                                            db_url: str) -> None:
    body = event("run.started", "job-long")
    response = service.post(body, sign(body, msg_id="msg_" + "x" * 252))

    assert response.status_code == 400, response.text
    assert response.json()["header"] == "webhook-id" and "255" in response.json()["error"]
    assert delivery_counts(db_url) == (0, 0, 0)
    # 255 characters is fine.
    assert service.post(body, sign(body, msg_id="msg_" + "x" * 251)).status_code == 202


def test_a_nan_metric_from_a_supervised_job_is_stored_as_null_and_the_run_ends(
        engine: Any, db_url: str, tmp_path: Path) -> None:
    """The job supervisor's path (tunix-rt train): metrics lines go to the run while it
    runs, and the rest when it ends; a diverged loss must not leave the run running."""
    with session_scope(engine) as session:
        run_id = runs.register_run(session, name="diverged", dataset="arith", model="m",
                                   predictions_uri=None, status=RunStatus.pending,
                                   origin=RunOrigin.train, external_id="train-nan").id
        runs.mark_running(session, run_id)
    reports: list[dict[str, Any]] = []

    def on_metrics(metrics: dict[str, Any]) -> None:
        reports.append(metrics)
        with session_scope(engine) as session:
            runs.record_metrics(session, run_id, metrics)

    source = """
        print('TUNIX_RT_METRICS {"loss": 0.5, "step": 1}', flush=True)
        print('TUNIX_RT_METRICS {"loss": NaN, "step": 2, "norm": Infinity}', flush=True)
        print('TUNIX_RT_METRICS {"tag": "a\\\\u0000b", "k\\\\u0000": 1}', flush=True)
    """
    result = run_job([sys.executable, "-c", textwrap.dedent(source)], timeout_s=60,
                     log_path=tmp_path / "job.log", on_metrics=on_metrics)
    with session_scope(engine) as session:
        runs.mark_finished(session, run_id, completed=True, exit_code=result.exit_code,
                           predictions_uri="file:///p.jsonl", metrics=result.metrics)

    assert result.status == "completed"
    assert result.metrics["loss"] is None and result.metrics["norm"] is None
    assert "loss" in result.metrics[NOTE] and "norm" in result.metrics[NOTE]
    assert reports[1]["loss"] is None
    with session_scope(engine) as session:
        run = runs.run_to_dict(runs.get_run(session, run_id))
    assert run["status"] == "completed"
    assert run["metrics"]["loss"] is None and run["metrics"]["step"] == 2
    assert "loss" in run["metrics"][NOTE]
    assert run["metrics"]["tag"] == "a\ufffdb" and run["metrics"]["k\ufffd"] == 1
    json.dumps(run, allow_nan=False)


# --- a webhook changes only the runs of its own source --------------------------------------

@pytest.mark.parametrize("origin", [RunOrigin.cli, RunOrigin.train, RunOrigin.api])
def test_a_webhook_cannot_change_a_run_it_did_not_create(service: Service, db_url: str,
                                                         origin: RunOrigin) -> None:
    with session_scope(get_engine(db_url)) as session:
        run_id = runs.register_run(session, name="by-hand", dataset="arith", model="m",
                                   predictions_uri="file:///good.jsonl", external_id="hand-1",
                                   origin=origin, metrics={"acc": 0.9}).id
    before = _run(db_url, "hand-1")
    body = event("run.failed", "hand-1", error="rewritten", metrics={"acc": 0.1})

    response = service.post(body, sign(body))

    assert response.status_code == 409, response.text
    assert run_id in response.json()["error"] and response.json()["run_id"] == run_id
    assert response.json()["field"] == "data.external_id"
    assert _run(db_url, "hand-1") == before
    assert delivery_counts(db_url) == (0, 1, 0)


ALPHA = "whsec_" + base64.b64encode(b"alpha's secret for tests, 32 b!!").decode()
BETA = "whsec_" + base64.b64encode(b"beta's secret for tests, 32 by!!").decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


@pytest.fixture
def sourced(webhook_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:  # noqa: F811
    """The receiver with a secret per source (alpha rotating to a second one), and the
    anonymous TUNIX_RT_WEBHOOK_SECRET too."""
    from tunix_rt.service.server import create_app

    rotated = "whsec_" + base64.b64encode(b"alpha's next secret, 32 bytes!!!").decode()
    monkeypatch.setenv("TUNIX_RT_WEBHOOK_SECRETS", f"alpha={ALPHA} beta={BETA} alpha={rotated}")
    yield from serve_app(create_app())


def test_per_source_secrets_keep_each_sources_runs_to_itself(sourced: Service,
                                                             db_url: str) -> None:
    started = event("run.started", "alpha-1")
    assert sourced.post(started, sign(started, secret=_key(ALPHA))).status_code == 202
    assert _run(db_url, "alpha-1")["status"] == "running"

    hijack = event("run.failed", "alpha-1", error="beta was here")
    for secret in (_key(BETA), SECRET_BYTES):  # another source, the anonymous one
        response = sourced.post(hijack, sign(hijack, secret=secret))
        assert response.status_code == 409, response.text
        assert response.json()["field"] == "data.external_id"
    assert _run(db_url, "alpha-1")["status"] == "running"
    assert delivery_counts(db_url) == (1, 1, 0)

    # Alpha's own next secret (rotation) still moves its run.
    done = event("run.completed", "alpha-1", predictions_uri="file:///p.jsonl")
    rotated = base64.b64decode(base64.b64encode(b"alpha's next secret, 32 bytes!!!"))
    assert sourced.post(done, sign(done, secret=rotated)).status_code == 202
    assert _run(db_url, "alpha-1")["status"] == "completed"
    # Beta and the anonymous source create and move runs of their own.
    for external_id, secret in (("beta-1", _key(BETA)), ("anon-1", SECRET_BYTES)):
        body = event("run.started", external_id)
        assert sourced.post(body, sign(body, secret=secret)).status_code == 202
        assert _run(db_url, external_id)["status"] == "running"


def test_per_source_secrets_alone_start_the_receiver(webhook_env: str,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tunix_rt.errors import InvalidInputError
    from tunix_rt.service.server import create_app

    monkeypatch.delenv("TUNIX_RT_WEBHOOK_SECRET")
    monkeypatch.setenv("TUNIX_RT_WEBHOOK_SECRETS", f"alpha={ALPHA}")
    for service in serve_app(create_app()):
        body = event("run.started", "alpha-2")
        assert service.post(body, sign(body, secret=_key(ALPHA))).status_code == 202
        assert service.post(body, sign(body)).status_code == 401
    for bad in ("alpha", "=whsec_x", f"al pha={ALPHA}", "alpha=nope", f"a={ALPHA} b={ALPHA}"):
        monkeypatch.setenv("TUNIX_RT_WEBHOOK_SECRETS", bad)
        with pytest.raises(InvalidInputError, match="TUNIX_RT_WEBHOOK_SECRETS"):
            create_app()
