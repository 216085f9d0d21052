"""With TUNIX_RT_API_TOKEN set, every read needs the token; webhooks keep their signatures.

The API takes ``Authorization: Bearer <token>``; the page takes a login form (no
JavaScript) that sets an HttpOnly, SameSite=Strict cookie holding an HMAC of the
token, never the token. /healthz stays open and says only ok or unavailable.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from tests.db.support import evaluated_run
from tests.http.conftest import Service, event, serve_app, sign, webhook_env  # noqa: F401
from tunix_rt.quality.leaderboard import rebuild_leaderboard
from tunix_rt.store.db import session_scope

pytestmark = pytest.mark.reliability

TOKEN = "tok_3f9a1c2e8b7d6a5f4e3d2c1b0a998877"
SECRET_CONFIG = "hf_config_token_do_not_serve"


@pytest.fixture
def guarded(webhook_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:  # noqa: F811
    from tunix_rt.service.server import create_app

    monkeypatch.setenv("TUNIX_RT_API_TOKEN", TOKEN)
    # These tests present many wrong tokens on purpose; the throttle has tests of its own.
    monkeypatch.setenv("TUNIX_RT_AUTH_MAX_FAILURES", "1000")
    yield from serve_app(create_app())


@pytest.fixture
def run_id(engine: Engine, tmp_path: Path) -> str:
    """An evaluated run on a rebuilt board whose config holds a secret."""
    from tests.db.support import JUDGE
    from tunix_rt.store.models import Run

    rid = evaluated_run(engine, tmp_path, "secretive", [True, False, True])
    with session_scope(engine) as session:
        session.get(Run, rid).config = {"hf_token": SECRET_CONFIG}
        rebuild_leaderboard(session, "arith", JUDGE)
    return rid


def _read_paths(run_id: str) -> list[str]:
    return ["/api/runs", f"/api/runs/{run_id}", f"/api/runs/{run_id}/gate",
            "/api/leaderboard?dataset=arith", "/api/datasets", "/api/datasets/arith", "/",
            "/?dataset=arith", "/openapi.json", "/docs", "/redoc", "/nowhere"]


def _get(service: Service, path: str, **kwargs) -> httpx.Response:  # noqa: ANN003
    return httpx.get(service.url + path, timeout=30, follow_redirects=False, **kwargs)


def test_every_read_without_the_token_is_401(guarded: Service, run_id: str) -> None:
    for path in _read_paths(run_id):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            response = _get(guarded, path, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer"), path
            assert SECRET_CONFIG not in response.text and "secretive" not in response.text


def test_the_token_opens_every_read(guarded: Service, run_id: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = _get(guarded, f"/api/runs/{run_id}", headers=auth)
    assert response.status_code == 200 and response.json()["config"]["hf_token"] == SECRET_CONFIG
    assert _get(guarded, "/api/runs", headers={"Authorization": f"bearer {TOKEN}"}).json()["runs"]
    assert _get(guarded, "/api/leaderboard?dataset=arith", headers=auth).status_code == 200
    assert _get(guarded, "/api/datasets", headers=auth).status_code == 200
    page = _get(guarded, "/", headers=auth)
    assert page.status_code == 200 and "secretive" in page.text


def test_a_token_in_the_query_string_is_not_accepted(guarded: Service, run_id: str) -> None:
    response = _get(guarded, f"/?token={TOKEN}")
    assert response.status_code == 401 and "secretive" not in response.text
    assert "set-cookie" not in response.headers


def test_the_page_logs_in_with_a_form_and_a_cookie(guarded: Service, run_id: str) -> None:
    form = _get(guarded, "/")
    assert form.status_code == 401 and form.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/login"' in form.text and "<script" not in form.text

    wrong = httpx.post(guarded.url + "/login", data={"token": "guess"}, timeout=30)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers

    ok = httpx.post(guarded.url + "/login", data={"token": TOKEN}, timeout=30,
                    follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    name, _, rest = cookie.partition("=")
    value = rest.split(";")[0]
    assert value and value != TOKEN

    page = _get(guarded, "/?dataset=arith", cookies={name: value})
    assert page.status_code == 200 and "secretive" in page.text
    assert _get(guarded, "/api/runs", cookies={name: value}).status_code == 200
    forged = _get(guarded, "/", cookies={name: value[:-1] + ("0" if value[-1] != "0" else "1")})
    assert forged.status_code == 401 and "secretive" not in forged.text


def test_webhooks_keep_their_signatures_and_healthz_stays_open(guarded: Service) -> None:
    body = event(predictions_uri="file:///p.jsonl")
    assert guarded.post(body, sign(body)).status_code == 202
    assert guarded.post(body, {"content-type": "application/json",
                               "Authorization": f"Bearer {TOKEN}"}).status_code == 400
    health = _get(guarded, "/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok", "database": "ok"}


@pytest.fixture
def open_service(webhook_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:  # noqa: F811
    from tunix_rt.service.server import create_app

    monkeypatch.delenv("TUNIX_RT_API_TOKEN", raising=False)
    yield from serve_app(create_app())


def test_without_the_token_reads_stay_open(open_service: Service, run_id: str) -> None:
    """Unset, nothing changes: the README says plainly that everything is readable."""
    service = open_service
    assert _get(service, f"/api/runs/{run_id}").json()["config"]["hf_token"] == SECRET_CONFIG
    assert _get(service, "/").status_code == 200


# --- guessing the token is throttled per client address ------------------------------------

@pytest.fixture
def throttled(webhook_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:  # noqa: F811
    """The service with the default throttle: 10 failed checks a minute per address."""
    from tunix_rt.service.server import create_app

    monkeypatch.setenv("TUNIX_RT_API_TOKEN", TOKEN)
    for name in ("TUNIX_RT_AUTH_MAX_FAILURES", "TUNIX_RT_AUTH_FAILURE_WINDOW_S"):
        monkeypatch.delenv(name, raising=False)
    yield from serve_app(create_app())


def _from(address: str) -> httpx.Client:
    """A client whose requests come from ``address`` (any of 127.0.0.0/8 on loopback)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30,
                        follow_redirects=False)


def _login(client: httpx.Client, service: Service, token: str) -> httpx.Response:
    return client.post(service.url + "/login", data={"token": token})


def test_failed_logins_are_throttled_per_address(throttled: Service) -> None:
    with _from("127.0.0.1") as guesser, _from("127.0.0.2") as other:
        codes = [_login(guesser, throttled, f"guess-{i}").status_code for i in range(10)]
        assert codes == [401] * 10

        refused = _login(guesser, throttled, "guess-10")
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "too many failed" in refused.text and "set-cookie" not in refused.headers
        # The right token looks the same while throttled, by form and by header.
        right = _login(guesser, throttled, TOKEN)
        assert right.status_code == 429 and "set-cookie" not in right.headers
        api = guesser.get(throttled.url + "/api/runs", headers={"Authorization": f"Bearer {TOKEN}"})
        assert api.status_code == 429 and api.headers["retry-after"]
        assert api.json()["retry_after"] >= 1

        # Another address is not affected.
        assert _login(other, throttled, TOKEN).status_code == 303


def test_wrong_bearer_tokens_count_and_successes_do_not(throttled: Service) -> None:
    with _from("127.0.0.3") as client:
        for _ in range(25):  # successes never count
            assert _login(client, throttled, TOKEN).status_code == 303
        client.cookies.clear()  # from here on, only what each request carries
        for i in range(10):
            response = client.get(throttled.url + "/api/runs",
                                  headers={"Authorization": f"Bearer wrong-{i}"})
            assert response.status_code == 401, (i, response.text)
        # Without credentials nothing is tested, so nothing is throttled: the plain 401.
        assert client.get(throttled.url + "/api/runs").status_code == 401
        assert _login(client, throttled, TOKEN).status_code == 429


def test_a_throttled_address_may_try_again_after_the_window(
        webhook_env: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from tests.waiting import wait_for
    from tunix_rt.service.server import create_app

    monkeypatch.setenv("TUNIX_RT_API_TOKEN", TOKEN)
    monkeypatch.setenv("TUNIX_RT_AUTH_MAX_FAILURES", "3")
    monkeypatch.setenv("TUNIX_RT_AUTH_FAILURE_WINDOW_S", "2")
    for service in serve_app(create_app()):
        with _from("127.0.0.4") as client:
            assert [_login(client, service, "no").status_code for _ in range(3)] == [401] * 3
            refused = _login(client, service, TOKEN)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) <= 2
            ok = wait_for(lambda: _login(client, service, TOKEN).status_code == 303, 60,
                          "the throttle's window to pass", interval=0.5)
            assert ok


def test_the_throttle_keeps_bounded_memory() -> None:
    from tunix_rt.service.auth import FailureLimiter, client_key

    now = [0.0]
    limiter = FailureLimiter(limit=3, window_s=60, max_clients=100, clock=lambda: now[0])
    for i in range(5000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    for _ in range(50):
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 60
    now[0] = 61.0
    assert limiter.retry_after("10.0.0.1") is None
    # One host's IPv6 /64 is one client; an IPv4-mapped address is its IPv4 address.
    assert client_key({"client": ("2001:db8::1", 1)}) == client_key({"client": ("2001:db8::ff", 1)})
    assert client_key({"client": ("::ffff:10.1.2.3", 1)}) == "10.1.2.3"
