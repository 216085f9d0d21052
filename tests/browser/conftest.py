"""A real browser on a real service: Debian's chromium driven by Playwright.

One browser and one site per module (the suite has one: they stop when it ends, not
with the session, so the rest of the run has the cores back): the site is what a newcomer has after
``tunix-rt demo`` (the embedded default SQLite, in a temp directory: three runs, the
failing one gated against the baseline), two more runs judged by the same loop so the
board has pages at a small ``?limit=``, and a finished study; ``tunix-rt serve``,
started in the same directory, serves it on a free port.
Nothing is downloaded: the browser is the system's chromium (``executable_path``), and
axe-core comes inside axe-playwright-python. Outside CI a missing chromium skips these
tests; with CI=true it fails them, as a missing PostgreSQL does.

Screenshots (full page PNG) go to $TUNIX_RT_TEST_ARTIFACTS, else
``test-artifacts/screenshots`` under the repository (gitignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI
from tests.waiting import wait_for
from tunix_rt import procs

REPO = Path(__file__).resolve().parents[2]
ITEMS = 300  # the demo's default: what a newcomer sees
START_S = 120.0
WEBHOOK_SECRET = "whsec_" + "dHVuaXgtcnQgYnJvd3NlciB0ZXN0cywgMzIgYnl0ZXM="
SERIOUS = {"serious", "critical"}


def _command() -> list[str]:
    script = shutil.which("tunix-rt", path=str(Path(sys.prefix) / "bin"))
    return [script] if script else [sys.executable, "-m", "tunix_rt.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "TUNIX_RT_API_TOKEN", "TUNIX_RT_WEBHOOK_SECRETS",
                        "TUNIX_RT_DATABASE_URL")}
    env.update({"JAX_PLATFORMS": "cpu", "PREFECT_LOGGING_LEVEL": "WARNING",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                            os.environ.get("PYTHONPATH")])),
                **extra})
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path, what: str) -> str:
    """Run a command to its end; fail the session's setup with its output otherwise."""
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"{what} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout


@dataclass(frozen=True)
class Site:
    """The served demo: its URL and the ids the pages are about."""

    url: str
    baseline_run: str      # the baseline of exact_match after the demo (grpo-step-800)
    failing_run: str       # grpo-lr-3e-5: fails the gate against it
    run_ids: tuple[str, ...]
    study_id: str
    db_path: Path          # the SQLite file: the records the pages are checked against
    log: Path


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "Debian's chromium is not installed (apt-get install chromium; .ci/run does)"
        if IN_CI:
            pytest.fail(f"chromium is required in CI: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    """One headless chromium (its sandbox needs a non-root user)."""
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True,
                                             args=args)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(prefect_api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """``tunix-rt demo``, two more runs and a study on a temp SQLite, and ``tunix-rt serve``."""
    # As a newcomer does: no database configured, so demo, seed and serve share the
    # embedded default, ./tunix_rt.db, in the one directory they run in.
    tmp = tmp_path_factory.mktemp("browser-site")
    env = _env(PREFECT_API_URL=prefect_api_url)
    demo = json.loads(_run([*_command(), "demo", "--no-tune", "--items", str(ITEMS),
                            "--format", "json"], env, tmp, "tunix-rt demo"))
    # The service starts while the seed runs (it reads the same file; pages are read later).
    port = _free_port()
    log = tmp / "serve.log"
    serve_env = _env(TUNIX_RT_WEBHOOK_SECRET=WEBHOOK_SECRET,
                     PREFECT_HOME=str(tmp / "prefect-home"))
    with log.open("wb") as out:
        proc = subprocess.Popen([*_command(), "serve", "--port", str(port)], env=serve_env,
                                cwd=tmp, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=procs.parent_death_signal(signal.SIGTERM))
    url = f"http://127.0.0.1:{port}"
    try:
        extra = json.loads(_run([sys.executable, "-m", "tests.browser.seed", "tunix_rt_demo",
                                 str(ITEMS)], env, tmp, "the browser tests' seed")
                           .splitlines()[-1])
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=5).status_code == 200, START_S,
                 "tunix-rt serve's /healthz", proc=proc, log=log, retry_on=httpx.HTTPError)
        ids = demo["run_ids"]
        yield Site(url=url, baseline_run=ids[1], failing_run=ids[2],
                   run_ids=(*ids, *extra["run_ids"]), study_id=extra["study_id"],
                   db_path=tmp / "tunix_rt.db", log=log)
    finally:
        procs.stop_group(proc, 10.0)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (own context: no cookies shared between tests), JavaScript on."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)  # a safety net on a loaded machine, not a speed claim
    yield page
    context.close()


def artifacts_dir() -> Path:
    path = Path(os.environ.get("TUNIX_RT_TEST_ARTIFACTS") or REPO / "test-artifacts"
                / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


_saved: list[Path] = []


def screenshot(page: Any, name: str) -> Path:
    """Save the whole page as ``name``.png among the test artifacts, and say where."""
    path = artifacts_dir() / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    _saved.append(path)
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _saved:
        terminalreporter.write_line(f"browser screenshots: {len(set(_saved))} in "
                                    f"{_saved[0].parent}")


def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page, one readable line each."""
    from axe_playwright_python.sync_playwright import Axe

    found = []
    for violation in Axe().run(page).response["violations"]:
        if violation.get("impact") not in SERIOUS:
            continue
        targets = "; ".join(", ".join(map(str, node.get("target", [])))
                            for node in violation.get("nodes", [])[:5])
        found.append(f"[{violation['impact']}] {violation['id']}: {violation['help']} "
                     f"({len(violation.get('nodes', []))} element(s): {targets})")
    return found
