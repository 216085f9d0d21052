"""POST /webhooks/training over real HTTP: verification, storage, dedupe, ordering."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from tests.http.conftest import SECRET, Service, event, serve_app, sign
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.store.models import Dispatch, Run, WebhookDelivery
from tunix_rt.settings import Settings


def _counts(db_url: str) -> tuple[int, int, int]:
    with session_scope(get_engine(db_url)) as session:
        return tuple(session.scalar(select(func.count()).select_from(m)) or 0
                     for m in (WebhookDelivery, Run, Dispatch))


def _run(db_url: str, external_id: str) -> Run:
    with session_scope(get_engine(db_url)) as session:
        return session.scalar(select(Run).where(Run.external_id == external_id))


def test_a_signed_completion_is_stored_with_an_owed_dispatch(service: Service, db_url) -> None:  # noqa: ANN001
    body = event(predictions_uri="file:///data/p.jsonl", metrics={"loss": 0.5})
    response = service.post(body, sign(body))

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "accepted"
    run = _run(db_url, "job-1")
    assert run.status == "completed" and run.origin == "webhook"
    assert run.predictions_uri == "file:///data/p.jsonl" and run.metrics == {"loss": 0.5}
    assert response.json()["run_id"] == run.id
    assert _counts(db_url) == (1, 1, 1)


@pytest.mark.parametrize("tamper", ["body", "secret", "expired", "future", "garbage-signature",
                                    "unknown-version"])
def test_bad_signatures_are_rejected_and_nothing_is_stored(service: Service, db_url,  # noqa: ANN001
                                                           tamper: str) -> None:
    body = event(predictions_uri="file:///p.jsonl")
    headers = sign(body)
    if tamper == "body":
        body = body.replace(b"job-1", b"job-2")
    elif tamper == "secret":
        headers = sign(body, secret=b"another secret entirely, 32 byte")
    elif tamper == "expired":
        headers = sign(body, timestamp=int(time.time()) - 301)
    elif tamper == "future":
        headers = sign(body, timestamp=int(time.time()) + 400)
    elif tamper == "garbage-signature":
        headers["webhook-signature"] = "v1,not base64 at all!!"
    else:
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")

    response = service.post(body, headers)

    assert response.status_code == 401, response.text
    assert "signature rejected" in response.json()["error"]
    assert _counts(db_url) == (0, 0, 0)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_a_bad_request(service: Service, db_url, header: str) -> None:  # noqa: ANN001
    body = event(predictions_uri="file:///p.jsonl")
    headers = sign(body)
    del headers[header]

    response = service.post(body, headers)

    assert response.status_code == 400
    assert header in response.json()["error"]
    assert _counts(db_url) == (0, 0, 0)


@pytest.mark.parametrize("body, field", [
    (b'{"type": "run.finished", "data": {"external_id": "x"}}', "type"),
    (b'{"type": "run.completed", "data": {"name": "x"}}', "data.external_id"),
    (b'{"type": "run.completed", "data": {"external_id": "x", "config": [1]}}', "data.config"),
    (b'{"type": "run.completed"', "body"),
    (event(predictions_uri=None), "data.predictions_uri"),
    (event("run.started", dataset=None), "data.dataset"),
])
def test_invalid_payloads_name_the_field(service: Service, db_url, body: bytes,  # noqa: ANN001
                                         field: str) -> None:
    response = service.post(body, sign(body))

    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert field in response.json()["error"]
    assert _counts(db_url) == (0, 0, 0)


def test_every_problem_of_a_payload_is_named(service: Service, db_url) -> None:  # noqa: ANN001
    body = b'{"type": "run.finished", "data": {"name": ""}}'

    response = service.post(body, sign(body))

    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["field"] == "type"  # the first problem's field, as given, not parsed back
    for where in ("type: ", "data.external_id: ", "data.name: "):
        assert where in answer["error"]
    assert _counts(db_url) == (0, 0, 0)


def test_a_repeated_delivery_is_processed_once(service: Service, db_url) -> None:  # noqa: ANN001
    body = event(predictions_uri="file:///p.jsonl")
    headers = sign(body, msg_id="msg_repeat")

    first, second = service.post(body, headers), service.post(body, headers)

    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json() == {"status": "duplicate", "run_id": first.json()["run_id"]}
    assert _counts(db_url) == (1, 1, 1)


def test_an_id_received_before_changes_nothing_whatever_its_body(service: Service,
                                                                db_url) -> None:  # noqa: ANN001
    """A copy under a stored id is answered 200 and changes nothing, even with a body
    naming a run never seen (the receiver creates a run before it learns the id is taken
    on PostgreSQL, and must take it back) or one that could not apply (a completion
    without predictions)."""
    first = event("run.started")
    assert service.post(first, sign(first, msg_id="msg_taken")).status_code == 202
    run_id = _run(db_url, "job-1").id

    for body in (event("run.started", external_id="job-2"),
                 event(external_id="job-3"),                      # completed, no predictions
                 event(external_id="job-1", predictions_uri="file:///p.jsonl")):
        response = service.post(body, sign(body, msg_id="msg_taken"))
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "duplicate", "run_id": run_id}

    assert _run(db_url, "job-1").status == "running"
    assert _counts(db_url) == (1, 1, 0)


def test_ten_concurrent_copies_are_processed_once(service: Service, db_url) -> None:  # noqa: ANN001
    body = event(predictions_uri="file:///p.jsonl")
    headers = sign(body, msg_id="msg_concurrent")

    with ThreadPoolExecutor(10) as pool:
        codes = sorted(r.status_code for r in pool.map(lambda _: service.post(body, headers),
                                                       range(10)))

    assert codes == [200] * 9 + [202]
    assert _counts(db_url) == (1, 1, 1)


def test_late_deliveries_never_move_a_run_backwards(service: Service, db_url) -> None:  # noqa: ANN001
    completed = event(predictions_uri="file:///p.jsonl")
    started = event("run.started")
    failed = event("run.failed", error="OOM")

    assert service.post(completed, sign(completed)).status_code == 202
    assert service.post(started, sign(started)).status_code == 202
    assert service.post(failed, sign(failed)).status_code == 202

    run = _run(db_url, "job-1")
    assert run.status == "completed" and run.error is None
    assert _counts(db_url) == (3, 1, 1)  # three deliveries, one run, one loop owed


def test_started_then_completed_moves_forward_once(service: Service, db_url) -> None:  # noqa: ANN001
    started = event("run.started", config={"lr": 0.1})
    assert service.post(started, sign(started)).status_code == 202
    assert _run(db_url, "job-1").status == "running"
    assert _run(db_url, "job-1").started_at is not None

    completed = event(predictions_uri="file:///p.jsonl", metrics={"acc": 0.9})
    again = event(predictions_uri="file:///p.jsonl")
    assert service.post(completed, sign(completed)).status_code == 202
    assert service.post(again, sign(again)).status_code == 202  # same news, new id

    run = _run(db_url, "job-1")
    assert run.status == "completed" and run.config == {"lr": 0.1}
    assert run.metrics == {"acc": 0.9}
    assert _counts(db_url) == (3, 1, 1)  # the second completion owes no second loop


def test_failed_runs_record_the_error_and_owe_no_loop(service: Service, db_url) -> None:  # noqa: ANN001
    body = event("run.failed", error="exit code 137")
    assert service.post(body, sign(body)).status_code == 202
    run = _run(db_url, "job-1")
    assert run.status == "failed" and run.error == "exit code 137"
    assert _counts(db_url) == (1, 1, 0)


def test_rotated_secrets_are_all_accepted(webhook_env, monkeypatch) -> None:  # noqa: ANN001
    from tunix_rt.service.server import create_app

    new = b"the next secret, also 32 bytes!!"
    monkeypatch.setenv("TUNIX_RT_WEBHOOK_SECRET",
                       f"whsec_{base64.b64encode(new).decode()} {SECRET}")
    for service in serve_app(create_app()):
        for i, secret in enumerate((new, b"tunix-rt test secret, 32 bytes!!")):
            body = event(external_id=f"job-{i}", predictions_uri="file:///p.jsonl")
            assert service.post(body, sign(body, secret=secret)).status_code == 202


def test_an_oversized_body_is_refused_before_parsing(webhook_env) -> None:  # noqa: ANN001
    from tunix_rt.service.server import create_app

    for service in serve_app(create_app(max_body_bytes=1024)):
        body = event(predictions_uri="file:///p.jsonl", config={"blob": "x" * 2000})
        response = service.post(body, sign(body))
        assert response.status_code == 413
        assert _counts(webhook_env) == (0, 0, 0)


def test_without_a_secret_the_pages_serve_and_webhooks_are_refused(db_url) -> None:  # noqa: ANN001
    """A newcomer's `tunix-rt serve` after the demo shows the pages; the receiver stays
    off (503, naming the variable, nothing stored) until a secret is set. A secret that
    is set but malformed still stops the start, as `tunix-rt up` does without one."""
    from tunix_rt.errors import InvalidInputError
    from tunix_rt.service.server import create_app, require_webhook_secret

    settings = Settings(database_url=db_url, webhook_secret=None)
    for service in serve_app(create_app(settings)):
        body = event(predictions_uri="file:///p.jsonl")
        refused = service.post(body, sign(body))
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert "TUNIX_RT_WEBHOOK_SECRET is not set" in refused.json()["error"]
        assert service.get("/").status_code in (200, 404)  # no boards yet: a page saying so
        assert service.get("/api/runs").json()["runs"] == []
    with pytest.raises(InvalidInputError, match="TUNIX_RT_WEBHOOK_SECRET is not set"):
        require_webhook_secret(settings)
    with pytest.raises(InvalidInputError, match="does not start with whsec_"):
        create_app(Settings(database_url=db_url, webhook_secret="hunter2"))


def test_healthz_reports_the_database(service: Service) -> None:
    response = service.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_healthz_reports_an_unreachable_database(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from tunix_rt.service.server import create_app

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    app = create_app(Settings(database_url=url, webhook_secret=SECRET))
    (tmp_path / "db.sqlite").unlink()
    (tmp_path / "db.sqlite").mkdir()  # a directory where the file was: cannot open
    from tunix_rt.store.db import dispose_engines

    dispose_engines()
    for service in serve_app(app):
        response = service.get("/healthz")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"


def test_payload_json_is_stored_as_received(service: Service, db_url) -> None:  # noqa: ANN001
    body = event(predictions_uri="file:///p.jsonl", config={"nested": {"a": [1, 2]}})
    service.post(body, sign(body, msg_id="msg_payload"))
    with session_scope(get_engine(db_url)) as session:
        delivery = session.get(WebhookDelivery, "msg_payload")
        assert delivery.event_type == "run.completed"
        assert delivery.payload["data"]["config"] == json.loads(body)["data"]["config"]
