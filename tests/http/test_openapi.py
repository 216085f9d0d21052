"""The served /openapi.json is a complete contract: a client can be generated from it.

Over real HTTP from uvicorn: the document is valid OpenAPI (openapi-spec-validator),
every ``$ref`` resolves, every JSON route declares its body's model, and every status a
route answers here (2xx, 400, 401, 404, 422, 429, 503) is documented for it, with a
body that the documented schema accepts and that holds no key the schema does not
declare (a field added to a ``to_dict`` must be added to tunix_rt/service/api_models.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate
from sqlalchemy import Engine

from tests.db.support import JUDGE, evaluated_run
from tests.http.conftest import Service, serve_app
from tests.tuning.test_study_page import make_study
from tunix_rt.quality.gating import gate_run, set_baseline
from tunix_rt.quality.leaderboard import rebuild_leaderboard
from tunix_rt.quality.stats import GatePolicy
from tunix_rt.store.db import session_scope
from tunix_rt.store.metrics import record_points

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
TOKEN = "openapi-test-token"
JSON_ROUTES = {("get", "/healthz"), ("get", "/api/runs"), ("get", "/api/runs/{run_id}"),
               ("get", "/api/runs/{run_id}/metrics"), ("get", "/api/runs/{run_id}/gate"),
               ("get", "/api/leaderboard"), ("get", "/api/datasets"),
               ("get", "/api/datasets/{name}"), ("post", "/webhooks/training")}


@pytest.fixture
def seeded(engine: Engine, tmp_path: Path) -> dict[str, str]:
    """Two evaluated runs on a board, a baseline and a gate, a loss curve, a study."""
    baseline = evaluated_run(engine, tmp_path, "baseline", [True, False] * 20)
    candidate = evaluated_run(engine, tmp_path, "candidate", [True, True, False, True] * 10)
    with session_scope(engine) as session:
        rebuild_leaderboard(session, "arith", JUDGE)
        set_baseline(session, baseline, JUDGE)
    with session_scope(engine) as session:
        gate_run(session, candidate, JUDGE, GatePolicy(min_items=30))
        record_points(session, candidate, [("train_loss", 1, 2.5), ("train_loss", 2, None),
                                           ("accuracy", 2, 0.5)])
    study_id, _ = make_study(engine)
    return {"baseline": baseline, "candidate": candidate, "study": study_id}


@pytest.fixture
def protected(webhook_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """The service with TUNIX_RT_API_TOKEN set, throttling after two failures."""
    monkeypatch.setenv("TUNIX_RT_API_TOKEN", TOKEN)
    monkeypatch.setenv("TUNIX_RT_AUTH_MAX_FAILURES", "2")
    from tunix_rt.service.server import create_app

    yield from serve_app(create_app())


def _document(service: Service, **headers: str) -> dict[str, Any]:
    response = httpx.get(f"{service.url}/openapi.json", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _deref(document: dict[str, Any], schema: Any) -> Any:
    while isinstance(schema, dict) and "$ref" in schema:
        schema = _resolve(document, schema["$ref"])
    return schema


def _undeclared(document: dict[str, Any], schema: Any, body: Any, where: str = "$"
                ) -> list[str]:
    """Keys of ``body`` its schema does not name (extra="allow" lets them through)."""
    schema = _deref(document, schema)
    if not isinstance(schema, dict):
        return []
    for variant in schema.get("anyOf", []) + schema.get("allOf", []):
        if body is not None and _deref(document, variant).get("type") != "null":
            return _undeclared(document, variant, body, where)
    if isinstance(body, list) and "items" in schema:
        return [k for i, item in enumerate(body)
                for k in _undeclared(document, schema["items"], item, f"{where}[{i}]")]
    if not isinstance(body, dict) or schema.get("type") != "object":
        return []
    properties = schema.get("properties")
    if properties is None:  # a map (series by metric name): its values' schema
        extra = schema.get("additionalProperties")
        return [k for key, value in body.items() if isinstance(extra, dict)
                for k in _undeclared(document, extra, value, f"{where}.{key}")]
    out = [f"{where}.{key}" for key in body if key not in properties]
    for key, value in body.items():
        if key in properties:
            out += _undeclared(document, properties[key], value, f"{where}.{key}")
    return out


def _operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    assert path in document["paths"], f"{path} is not in the served schema"
    assert method in document["paths"][path], f"{method.upper()} {path} is not served"
    return document["paths"][path][method]


def _conforms(document: dict[str, Any], method: str, template: str,
              response: httpx.Response) -> None:
    """The answer's status is documented for the operation, and its body fits the schema."""
    operation = _operation(document, method, template)
    status = str(response.status_code)
    assert status in operation["responses"], \
        f"{method.upper()} {template} answered {status}, documented: {list(operation['responses'])}"
    content = operation["responses"][status].get("content", {})
    kind = response.headers["content-type"].split(";")[0]
    assert kind in content, (template, status, kind, list(content))
    if kind != "application/json":
        return
    schema = content[kind]["schema"]
    body = response.json()
    # The schema with the document's components beside it, so its $refs resolve.
    validator = jsonschema.Draft202012Validator({**schema,
                                                 "components": document["components"]})
    problems = [e.message for e in validator.iter_errors(body)]
    assert not problems, (template, status, problems, body)
    assert not _undeclared(document, schema, body), \
        (template, status, _undeclared(document, schema, body))


# --- the document -----------------------------------------------------------------------


@SQLITE
def test_the_served_schema_is_valid_and_every_ref_resolves(service: Service) -> None:
    document = _document(service)
    validate(document)  # OpenAPI 3.1, the JSON Schema dialect included
    refs = set(_refs(document))
    assert refs, "no $ref at all: the models are not in the schema"
    for ref in refs:
        _resolve(document, ref)
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique to name client methods"


@SQLITE
def test_every_json_route_declares_its_model_and_its_errors(service: Service) -> None:
    document = _document(service)
    for method, path in JSON_ROUTES:
        operation = _operation(document, method, path)
        answers = operation["responses"]
        ok = [code for code in answers if code.startswith("2")]
        assert ok, (method, path)
        for code in ok:
            schema = answers[code]["content"]["application/json"]["schema"]
            model = _deref(document, schema)
            assert model.get("properties"), f"{method.upper()} {path} {code}: no model"
        for code in ("400",) + (("404",) if "{" in path else ()):
            assert code in answers, (method, path, code)
        for code, answer in answers.items():
            if code[0] in "45" and path != "/webhooks/training":
                assert _deref(document, answer["content"]["application/json"]["schema"]) \
                    .get("required") is not None, (path, code)
        for parameter in operation.get("parameters", []):
            schema = parameter["schema"]
            assert {"type": "null"} not in schema.get("anyOf", []), (path, parameter)
            if parameter["in"] == "query" and schema.get("type") == "string":
                assert "pattern" in schema or "enum" in schema or "format" in schema, \
                    (path, parameter)
    runs = _operation(document, "get", "/api/runs")
    by_name = {p["name"]: p["schema"] for p in runs["parameters"]}
    enum = lambda s: _deref(document, s).get("enum")  # noqa: E731
    assert enum(by_name["status"]) == ["pending", "running", "completed", "failed"]
    assert enum(by_name["origin"]) == ["cli", "webhook", "tuning", "train", "api"]
    assert set(enum(by_name["sort"])) == {"created_at", "-created_at", "name", "-name",
                                         "status", "-status"}
    assert by_name["cursor"]["format"] == "cursor"
    gate = _deref(document, _operation(document, "get", "/api/runs/{run_id}/gate")
                  ["responses"]["200"]["content"]["application/json"]["schema"])
    assert enum(gate["properties"]["decision"]) == ["pass", "fail", "inconclusive",
                                                    "no_baseline"]
    # No token configured: no security requirement, no 401 promised.
    assert "securitySchemes" not in document["components"]
    assert "401" not in runs["responses"]


# --- every answer, as documented ------------------------------------------------------


@SQLITE
def test_every_answer_of_the_read_api_is_documented_and_fits(service: Service,
                                                            seeded: dict[str, str]) -> None:
    document = _document(service)
    run, baseline = seeded["candidate"], seeded["baseline"]
    cases = [
        ("/healthz", "/healthz", {}, 200),
        ("/api/runs", "/api/runs", {"limit": 1, "sort": "name"}, 200),
        ("/api/runs", "/api/runs", {"status": "finished"}, 422),
        ("/api/runs", "/api/runs", {"owner": "me"}, 400),
        ("/api/runs", "/api/runs", {"cursor": "bm9wZQ"}, 400),
        ("/api/runs", "/api/runs", {"dataset": "a\x00b"}, 400),
        ("/api/runs/{run_id}", f"/api/runs/{run}", {}, 200),
        ("/api/runs/{run_id}", "/api/runs/nope", {}, 404),
        ("/api/runs/{run_id}/metrics", f"/api/runs/{run}/metrics", {}, 200),
        ("/api/runs/{run_id}/metrics", f"/api/runs/{run}/metrics", {"name": ""}, 422),
        ("/api/runs/{run_id}/metrics", "/api/runs/nope/metrics", {}, 404),
        ("/api/runs/{run_id}/gate", f"/api/runs/{run}/gate", {}, 200),
        ("/api/runs/{run_id}/gate", f"/api/runs/{baseline}/gate", {}, 404),
        ("/api/leaderboard", "/api/leaderboard", {"dataset": "arith"}, 200),
        ("/api/leaderboard", "/api/leaderboard", {"dataset": "none"}, 404),
        ("/api/leaderboard", "/api/leaderboard", {}, 422),
        ("/api/leaderboard", "/api/leaderboard", {"dataset": "arith", "limit": 0}, 422),
        ("/api/datasets", "/api/datasets", {}, 200),
        ("/api/datasets/{name}", "/api/datasets/arith", {}, 200),
        ("/api/datasets/{name}", "/api/datasets/arith", {"version": 9}, 404),
        ("/api/datasets/{name}", "/api/datasets/arith", {"version": "x"}, 422),
    ]
    for template, path, params, status in cases:
        response = httpx.get(f"{service.url}{path}", params=params, timeout=30)
        assert response.status_code == status, (path, params, response.text)
        _conforms(document, "get", template, response)
    metrics = httpx.get(f"{service.url}/api/runs/{run}/metrics", timeout=30).json()
    assert metrics["series"] == {"accuracy": [{"step": 2, "value": 0.5}],
                                 "train_loss": [{"step": 1, "value": 2.5},
                                                {"step": 2, "value": None}]}


@SQLITE
def test_the_other_engineers_json_routes_are_documented_and_fit(service: Service,
                                                                seeded: dict[str, str]) -> None:
    """The comparison and the studies (their own tests check content; this, the schema)."""
    document = _document(service)
    run, baseline = seeded["candidate"], seeded["baseline"]
    cases = [
        ("/api/runs/{run_id}/compare", f"/api/runs/{run}/compare", {"baseline": baseline}, 200),
        ("/api/runs/{run_id}/compare", "/api/runs/nope/compare", {}, 404),
        ("/api/studies", "/api/studies", {}, 200),
        ("/api/studies/{study_id}", f"/api/studies/{seeded['study']}", {}, 200),
        ("/api/studies/{study_id}", "/api/studies/nope", {}, 404),
    ]
    for template, path, params, status in cases:
        if template not in document["paths"]:
            pytest.skip(f"{template} is not served yet")
        response = httpx.get(f"{service.url}{path}", params=params, timeout=30)
        assert response.status_code == status, (path, params, response.text)
        _conforms(document, "get", template, response)


@SQLITE
def test_with_a_token_the_schema_says_how_to_authenticate(protected: Service) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    document = _document(protected, **bearer)
    validate(document)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer",
                                 "description": schemes["bearer"]["description"]}
    assert schemes["session"]["in"] == "cookie"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            open_route = (method, path) in {("post", "/webhooks/training"), ("get", "/healthz")}
            assert ("security" in operation) is not open_route, (method, path)
            assert ("401" in operation["responses"]) is not open_route or \
                path == "/webhooks/training", (method, path)

    url = f"{protected.url}/api/runs"
    missing = httpx.get(url, timeout=30)
    assert missing.status_code == 401 and "Bearer" in missing.headers["www-authenticate"]
    _conforms(document, "get", "/api/runs", missing)
    for _ in range(2):  # wrong twice: the address is throttled
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"},
                         timeout=30).status_code == 401
    throttled = httpx.get(url, headers=bearer, timeout=30)
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
    _conforms(document, "get", "/api/runs", throttled)
    assert throttled.json()["retry_after"] >= 1
    assert json.loads(httpx.get(f"{protected.url}/healthz", timeout=30).text)["status"] == "ok"
    # A page asked for by a browser is answered the login form, as documented.
    form = httpx.get(f"{protected.url}/", headers={"Accept": "text/html"}, timeout=30)
    assert form.status_code == 401 and "<form" in form.text
    _conforms(document, "get", "/", form)
