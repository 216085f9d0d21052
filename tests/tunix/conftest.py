"""The tunix extra's tests: the real google-tunix, a real `tunix-rt serve`, PostgreSQL.

Skipped only where the extra is not installed and this is not CI; CI installs it
(`make install`), so there they always run.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import IN_CI
from tests.http.conftest import SECRET
from tests.pgserver import create_database
from tests.waiting import wait_for
from tunix_rt import procs
from tunix_rt.store import db

if importlib.util.find_spec("tunix") is None:
    if IN_CI:
        raise RuntimeError("the tunix extra is required in CI: make install installs it")
    pytest.skip("the tunix extra is not installed (pip install -e '.[test,tunix]')",
                allow_module_level=True)

# One JAX compilation cache for the session's processes (this one, jobs, Ray trials): the
# tiny model's steps compile once instead of once per process (a job here: ~55 s -> ~13 s).
_CACHE = Path(tempfile.gettempdir()) / f"tunix-rt-test-jax-cache-{os.getuid()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

BIN = Path(sys.executable).parent
START_S = 120
ROOT = Path(__file__).resolve().parents[2]


def tunix_rt_command() -> list[str]:
    script = BIN / "tunix-rt"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tunix_rt.cli"]


def job_env(**extra: str) -> dict[str, str]:
    """A subprocess's environment: this one's, on CPU, with no Prefect server."""
    env = dict(os.environ)
    for name in ("PREFECT_API_URL", "TUNIX_RT_API_TOKEN", "TUNIX_RT_WEBHOOK_SECRETS"):
        env.pop(name, None)
    env.update({"JAX_PLATFORMS": "cpu", "PREFECT_LOGGING_LEVEL": "WARNING",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra})
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Receiver:
    """A running `tunix-rt serve` on its own PostgreSQL database."""

    proc: subprocess.Popen
    url: str
    db_url: str
    log: Path
    tmp: Path

    def get(self, path: str, **params: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, timeout=30)

    def env(self, **extra: str) -> dict[str, str]:
        """What a training script reporting to this receiver runs with."""
        return job_env(TUNIX_RT_URL=self.url, TUNIX_RT_WEBHOOK_SECRET=SECRET, **extra)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def receiver(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    """`tunix-rt serve` as a subprocess: it verifies the hooks' deliveries and, with no
    Prefect server configured, runs each completed run's quality loop itself."""
    tmp = tmp_path_factory.mktemp("tunix-serve")
    url = create_database(pg_admin_url)
    db.upgrade(db.make_engine(url))
    port = _free_port()
    log = tmp / "serve.log"
    env = job_env(TUNIX_RT_DATABASE_URL=url, TUNIX_RT_WEBHOOK_SECRET=SECRET,
                  TUNIX_RT_PREDICTIONS_ALLOW=str(tmp), PREFECT_HOME=str(tmp / "prefect-home"))
    with log.open("wb") as out:
        proc = subprocess.Popen([*tunix_rt_command(), "serve", "--port", str(port)], env=env,
                                cwd=tmp, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base), START_S, "tunix-rt serve's /healthz", proc=proc, log=log)
        yield Receiver(proc, base, url, log, tmp)
    finally:
        if proc.poll() is None:
            procs.stop_group(proc, 10.0)
        proc.wait()
