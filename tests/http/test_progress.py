"""run.progress: a run's metrics as a time series, through the real receiver (SQLite, PostgreSQL)."""

from __future__ import annotations

import json

import pytest

from tests.http.conftest import Service, delivery_counts, event, sign


def _progress(external_id: str, points: list, **data: object) -> bytes:
    return event("run.progress", external_id, progress=points, **data)


def test_progress_points_become_the_runs_series(service: Service, db_url: str) -> None:
    first = _progress("job-p", [{"step": 1, "metrics": {"train_loss": 2.5}},
                                {"step": 2, "metrics": {"train_loss": 2.0, "eval_loss": 2.2}}],
                      metrics={"train_loss": 2.0})
    assert service.post(first, sign(first)).status_code == 202
    run = service.get("/api/runs/job-p").json()
    assert run["status"] == "running" and run["metrics"]["train_loss"] == 2.0

    # A retried delivery under a new id, a point sent again: stored once.
    again = _progress("job-p", [{"step": 2, "metrics": {"train_loss": 2.0}},
                                {"step": 3, "metrics": {"train_loss": 1.5}}])
    assert service.post(again, sign(again)).status_code == 202
    done = event("run.completed", "job-p", predictions_uri="file:///p.jsonl")
    assert service.post(done, sign(done)).status_code == 202
    # The trainer's last step after the completion: kept, and the run stays completed.
    late = _progress("job-p", [{"step": 4, "metrics": {"train_loss": float("nan")}}])
    assert service.post(late, sign(late)).status_code == 202

    answer = service.get(f"/api/runs/{run['id']}/metrics")
    assert answer.status_code == 200
    assert answer.json() == {"run_id": run["id"], "series": {
        "eval_loss": [{"step": 2, "value": 2.2}],
        "train_loss": [{"step": 1, "value": 2.5}, {"step": 2, "value": 2.0},
                       {"step": 3, "value": 1.5}, {"step": 4, "value": None}]}}
    assert service.get("/api/runs/job-p").json()["status"] == "completed"
    only = service.get("/api/runs/job-p/metrics", name="eval_loss").json()["series"]
    assert list(only) == ["eval_loss"]
    assert service.get("/api/runs/nope/metrics").status_code == 404

    # The run page draws the losses on one chart (tests/http/test_pages.py checks the rest).
    page = service.get("/runs/job-p")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "train_loss" in page.text and "eval_loss" in page.text
    assert "<svg" in page.text and "<polyline" in page.text
    assert service.get("/runs/nope").status_code == 404


@pytest.mark.parametrize(("points", "field"), [
    ([{"step": -1, "metrics": {"loss": 1.0}}], "data.progress.0.step"),
    ([{"step": 1, "metrics": {"loss": "low"}}], "data.progress.0.metrics.loss"),
    ([{"step": 1, "metrics": {}}], "data.progress.0.metrics"),
    ([{"step": 1, "metrics": {"": 1.0}}], "data.progress.0.metrics"),
    ([{"step": 1, "metrics": {"loss": 1.0}, "extra": 1}], "data.progress.0.extra"),
    ([{"step": i, "metrics": {"loss": 1.0}} for i in range(1001)], "data.progress"),
])
def test_bad_points_are_a_422_naming_the_field_and_nothing_is_stored(
        service: Service, db_url: str, points: list, field: str) -> None:
    body = _progress("job-bad", points)
    answer = service.post(body, sign(body))
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"].startswith(field), answer.json()
    assert delivery_counts(db_url)[:2] == (0, 0)


def test_progress_for_an_unknown_run_needs_its_dataset(service: Service, db_url: str) -> None:
    body = json.dumps({"type": "run.progress", "data": {
        "external_id": "job-new", "progress": [{"step": 1, "metrics": {"loss": 1.0}}]}}).encode()
    answer = service.post(body, sign(body))
    assert answer.status_code == 422 and answer.json()["field"] == "data.dataset"
    assert delivery_counts(db_url)[:2] == (0, 0)
