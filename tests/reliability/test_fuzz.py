"""Fuzzing: the read API with schemathesis, the webhook with hypothesis. No 5xx, ever.

schemathesis generates requests from the schema the service serves (/openapi.json,
fetched over HTTP from uvicorn on loopback), valid and invalid ones, for every
operation, against runs, a board, a gate, a loss curve, a study and a comparison, and
applies every check to each answer: never a server error; the status codes, content
types, headers and bodies the schema declares; an invalid request refused; a valid one
accepted (its cursor a real next_cursor, its ids real one time in two:
tests/reliability/schemathesis_hooks.py). hypothesis sends the webhook random
bodies and headers (none, wrong or garbage signatures, signed garbage, oversize,
unicode, NUL, NaN): never a 5xx, and no unsigned or wrongly signed request leaves a
row in webhook_deliveries or runs.

Both are seeded (derandomize=True) so a CI failure reproduces, and bounded in size
(FUZZ_SCALE scales the example counts; the counts run are printed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from tests.db.support import JUDGE, evaluated_run
from tests.http.conftest import SECRET_BYTES, Service, event, serve_app, sign, webhook_env  # noqa: F401
from tests.reliability.schemathesis_hooks import realistic
from tunix_rt.quality.gating import gate_run, set_baseline
from tunix_rt.quality.leaderboard import rebuild_leaderboard
from tunix_rt.quality.stats import GatePolicy
from tunix_rt.store.metrics import record_points
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Run, WebhookDelivery
from tunix_rt.service.webhooks import MAX_BODY_BYTES

pytestmark = pytest.mark.reliability

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
# Cases over all operations, shared out evenly, so that the time stays put as operations
# are added: 5,400 is 300 an operation at 18 (165 valid, 135 invalid, each well past
# hypothesis's default of 100), after which the coverage phase below goes through every
# boundary systematically. It was 10,500 (~5 min of the CI's 30); FUZZ_SCALE=2 for that depth.
API_CASES = int(5_400 * SCALE)
POSITIVE_SHARE = 0.55   # requests the schema allows; the rest it does not
WEBHOOK_CASES = int(2500 * SCALE)
# PostgreSQL only: it is the stricter database (NULs, integer ranges), and one is enough.
ON_POSTGRES = pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
SEEDED = dict(deadline=None, derandomize=True, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck))


@pytest.fixture
def fuzz_service(webhook_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """The service with the read API open (TUNIX_RT_API_TOKEN unset)."""
    monkeypatch.delenv("TUNIX_RT_API_TOKEN", raising=False)
    from tunix_rt.service.server import create_app

    yield from serve_app(create_app())


def _seed(engine: Engine, tmp_path: Path) -> list[str]:
    """What every read answers about: two evaluated runs of ``arith`` on a rebuilt board,
    a baseline and a gate (so a comparison), a loss curve, a study with trials."""
    from tests.tuning.test_study_page import make_study

    ids = [evaluated_run(engine, tmp_path, name, hits)
           for name, hits in (("one", [True, False, True] * 12),
                              ("two", [True, True, False] * 12))]
    with session_scope(engine) as session:
        rebuild_leaderboard(session, "arith", JUDGE)
        set_baseline(session, ids[0], JUDGE)
    with session_scope(engine) as session:
        gate_run(session, ids[1], JUDGE, GatePolicy(min_items=30))
        record_points(session, ids[1], [("train_loss", step, 2.0 / step)
                                        for step in range(1, 6)])
    make_study(engine)
    return ids


def _rows(engine: Engine) -> tuple[int, int]:
    with session_scope(engine) as session:
        return tuple(session.scalar(select(func.count()).select_from(m)) or 0
                     for m in (WebhookDelivery, Run))


# --- the HTTP API, from its served schema -------------------------------------------------


@ON_POSTGRES
# Its own limit: on a loaded 2-core machine the cases and the coverage phase can outlast
# the suite's 300 s per test.
@pytest.mark.timeout(1200)
def test_schemathesis_finds_no_failure_with_every_check(fuzz_service: Service, engine: Engine,
                                                        tmp_path: Path) -> None:
    import schemathesis
    from schemathesis.checks import load_all_checks
    from schemathesis.generation import GenerationMode

    load_all_checks()
    from schemathesis.checks import CHECKS

    _seed(engine, tmp_path)
    rows_before = _rows(engine)
    schema = schemathesis.openapi.from_url(f"{fuzz_service.url}/openapi.json")
    # Every check, the webhook included: its schema declares its headers, its body and
    # every answer (schemathesis cannot sign, so it sees the 4xx;
    # test_the_webhook_survives_hypothesis sends signed garbage). Only the response-time
    # check is not applied: no test here bounds elapsed time.
    checks = [c for c in CHECKS.get_all() if c.__name__ != "max_response_time"]
    http = requests.Session()
    counts: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    skipped: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    per_operation = API_CASES // len(operations)
    started = time.monotonic()

    for operation in operations:
        for mode, n in ((GenerationMode.POSITIVE, int(per_operation * POSITIVE_SHARE)),
                        (GenerationMode.NEGATIVE, int(per_operation * (1 - POSITIVE_SHARE)))):

            @settings(max_examples=n, **SEEDED)
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:
                case = realistic(case, http, fuzz_service.url)
                response = case.call(base_url=fuzz_service.url, session=http, timeout=30)
                counts[operation.label] += 1
                statuses[response.status_code] += 1
                assert response.status_code < 500, (case.as_curl_command(), response.text)
                if response.status_code == 413:
                    # A body over the limit, refused unread: the right 4xx, though not
                    # one of the statuses schemathesis expects for a negative case.
                    body = response.request.body or b""
                    assert len(body) > MAX_BODY_BYTES, (len(body), response.text)
                    case.validate_response(response, checks=[
                        c for c in checks if c.__name__ != "negative_data_rejection"])
                    return
                case.validate_response(response, checks=checks)

            try:
                fuzz()
            except Unsatisfiable:
                # No parameters to break (GET /healthz, a bare path string): no negative cases.
                assert mode is GenerationMode.NEGATIVE, operation.label
                skipped.append(f"{operation.label} [{mode.value}]")
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - reported at the end
                failures.append(f"{operation.label} [{mode.value}]: {exc}")

    elapsed = time.monotonic() - started
    total = sum(counts.values())
    print(f"\nschemathesis: {total} cases over {len(counts)} operations in {elapsed:.0f} s; "
          f"statuses {dict(sorted(statuses.items()))}")
    for label, n in sorted(counts.items()):
        print(f"  {n:6d}  {label}")
    print(f"  no negative cases possible: {', '.join(skipped)}")
    assert not failures, "\n\n".join(failures)
    assert total >= 0.6 * API_CASES  # bounded, and still every operation, both ways
    assert len(counts) == len(operations)
    assert not any(code >= 500 for code in statuses)
    # Valid requests got past the 404: real ids and cursors reached the data.
    assert statuses[200] >= 0.1 * total, statuses
    # Fuzzed webhook posts are never signed: nothing was stored.
    assert _rows(engine) == rows_before

    # The command line the issue ran, with every check, on its coverage phase: boundary
    # and empty values, missing and unexpected parameters, each operation systematically.
    root = Path(__file__).resolve().parents[2]
    command = [str(Path(sys.executable).parent / "schemathesis"), "run",
               f"{fuzz_service.url}/openapi.json", "--checks", "all", "--phases", "coverage",
               "--workers", "1", "--no-color", "--suppress-health-check", "all"]
    cli = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root),
                              "SCHEMATHESIS_HOOKS": "tests.reliability.schemathesis_hooks"})
    summary = [line for line in cli.stdout.splitlines() if "generated" in line]
    print(f"schemathesis run --checks all --phases coverage: {summary}")
    assert cli.returncode == 0, cli.stdout[-6000:] + cli.stderr[-2000:]
    assert _rows(engine) == rows_before


# --- the webhook, with hypothesis ---------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
                | st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)
NASTY = st.sampled_from(["", "\x00", "NaN", "Infinity", "-1", "9" * 40, "\u202e", "\ud7ff",
                         "é", "v1,", "v1,AAAA", "v2,xyz", " ", "whsec_", "\x00v1,"])


NEVER_SENT = b"\x00a body no strategy here draws\x00" * 100  # signed headers, another body


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Random webhook bodies: JSON events with hostile fields, raw garbage, oversize."""
    kind = draw(st.sampled_from(["event"] * 4 + ["json"] * 2 + ["bytes"] * 2 + ["nan", "big"]))
    if kind == "event":
        fields = draw(st.dictionaries(st.sampled_from(
            ["external_id", "name", "dataset", "model", "predictions_uri", "status", "metrics",
             "config", "dry_run", "exit_code"]), JSON_VALUES | NASTY, max_size=4))
        body = json.loads(event(draw(st.sampled_from(["run.completed", "run.started",
                                                      "run.failed", "x", ""])),
                                external_id=draw(TEXT | NASTY)))
        body["data"].update(fields)
        return json.dumps(body, allow_nan=True).encode()
    if kind == "json":
        return json.dumps(draw(JSON_VALUES), allow_nan=True).encode()
    if kind == "nan":
        return b'{"type": "run.completed", "data": {"external_id": NaN, "metrics": {"a": Infinity}}}'
    if kind == "big":
        size = draw(st.sampled_from([-1, 0, 1, 1000]) | st.integers(-64, 64))
        return b'{"type":"run.completed","data":{"name":"' + b"x" * (MAX_BODY_BYTES + size) + b'"}}'
    return draw(st.binary(max_size=300))


@st.composite
def headers(draw: st.DrawFn) -> dict[str, Any]:
    """Header sets that are not a valid signature: missing, garbage, or nearly right."""
    good = sign(NEVER_SENT, msg_id=draw(st.sampled_from(["msg_a", "msg_b"])))
    out: dict[str, Any] = {}
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        choice = draw(st.sampled_from(["absent", "garbage", "nasty", "good"]))
        if choice == "garbage":
            out[name] = draw(TEXT)
        elif choice == "nasty":
            out[name] = draw(NASTY)
        elif choice == "good":
            out[name] = good[name]
    if draw(st.booleans()):
        out["content-type"] = draw(st.sampled_from(["application/json", "text/plain", "",
                                                    "application/json; charset=utf-16"]))
    return out


def _encodable(values: dict[str, Any]) -> dict[str, bytes]:
    """Headers as bytes; the client refuses control characters (NUL, CR, LF...), so drop those."""
    out = {}
    for name, value in values.items():
        raw = value.encode("utf-8", "surrogatepass")
        if not any((c < 0x20 and c != 0x09) or c == 0x7F for c in raw):
            out[name] = raw.strip()
    return out


@ON_POSTGRES
def test_the_webhook_survives_hypothesis(fuzz_service: Service, engine: Engine) -> None:
    """Unsigned, wrongly signed and signed-garbage bodies: never a 5xx, no row unsigned."""
    counts: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    client = httpx.Client(base_url=fuzz_service.url, timeout=60)

    def post(body: bytes, header_values: dict[str, Any]) -> httpx.Response:
        response = client.post("/webhooks/training", content=body,
                               headers=_encodable(header_values))
        statuses[response.status_code] += 1
        assert response.status_code < 500, (response.status_code, response.text, body[:200])
        return response

    @settings(max_examples=WEBHOOK_CASES // 2, **SEEDED)
    @given(body=bodies(), header_values=headers(),
           secret=st.sampled_from([None, b"another secret, also 32 bytes!!!", SECRET_BYTES[:-1]]))
    def unsigned_or_wrongly_signed(body: bytes, header_values: dict[str, Any],
                                   secret: bytes | None) -> None:
        if secret is not None:  # a well-formed signature, by the wrong key
            header_values = sign(body, secret=secret)
        before = _rows(engine)
        response = post(body, header_values)
        counts["unsigned or wrongly signed"] += 1
        assert response.status_code in (400, 401, 413), (response.status_code, response.text)
        assert _rows(engine) == before, "an unsigned request left a row"

    @settings(max_examples=WEBHOOK_CASES // 2, **SEEDED)
    @given(body=bodies(), stale=st.sampled_from([None, 0, 10**10, -1]))
    def signed_garbage(body: bytes, stale: int | None) -> None:
        response = post(body, sign(body, timestamp=stale))
        counts["signed (garbage or stale)"] += 1
        if stale is not None:
            assert response.status_code in (400, 401, 413), response.text

    unsigned_or_wrongly_signed()
    signed_garbage()
    elapsed = time.monotonic() - started
    total = sum(counts.values())
    print(f"\nhypothesis webhook: {total} cases in {elapsed:.0f} s ({dict(counts)}); "
          f"statuses {dict(sorted(statuses.items()))}")
    assert total >= 2000 * SCALE
    assert not any(code >= 500 for code in statuses)
