"""Nothing secret leaks: not in answers, not into jobs, not through file modes or paths.

- /healthz and the webhook's 401 answer generic text; the detail goes to the log.
- A launched job gets an allow-list of the environment plus what its run file names:
  never the webhook secret, the LLM API key or the database URL unless named; on Ray
  the database URL is not a task argument.
- The LLM config's repr hides the key.
- The embedded SQLite file and job logs are readable by their owner only.
- A sweep name cannot escape the tuning storage folder.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http.conftest import SECRET, Service, event, serve_app, service, sign, webhook_env  # noqa: F401
from tunix_rt.errors import InvalidInputError
from tunix_rt.settings import Settings

pytestmark = pytest.mark.reliability

WEBHOOK_SECRET = "whsec_bGVha3kgbGVha3kgbGVha3kgbGVha3kgbGVha3k="
LLM_KEY = "sk-live-llm-key-never-in-a-job"
DB_URL = "postgresql+psycopg://tunix:db-password-never-in-a-job@db.internal:5432/tunix_rt"


# --- answers: generic text, detail in the log -----------------------------------------

def test_healthz_says_unavailable_and_logs_why(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from tunix_rt.service.server import create_app
    from tunix_rt.store.db import dispose_engines

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    app = create_app(Settings(database_url=url, webhook_secret=SECRET))
    (tmp_path / "db.sqlite").unlink()
    (tmp_path / "db.sqlite").mkdir()  # cannot be opened: the driver explains why
    dispose_engines()
    caplog.set_level(logging.WARNING, logger="tunix_rt.service.server")
    for service in serve_app(app):
        response = service.get("/healthz")
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "database": "unavailable"}
    assert any("unable to open database file" in r.getMessage() for r in caplog.records)


def test_the_webhook_401_is_generic_and_the_reason_is_logged(
        service: Service, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tunix_rt.service.server")
    body = event()
    headers = [sign(body, secret=b"another secret, also 32 bytes!!!"),
               sign(body, timestamp=1_000_000_000),
               {**sign(body), "webhook-signature": "v1,not base64 at all"}]
    errors = set()
    for h in headers:
        response = service.post(body, h)
        assert response.status_code == 401
        errors.add(response.json()["error"])
    assert len(errors) == 1, errors  # the same text whatever the library said
    [error] = errors
    assert error.startswith("signature rejected")
    assert "No matching" not in error and "timestamp" not in error.lower()
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "timestamp" in logged.lower()


# --- jobs get an allow-list of the environment ----------------------------------------

@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNIX_RT_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("TUNIX_RT_LLM_API_KEY", LLM_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-never-in-a-job")
    monkeypatch.setenv("HF_HOME", "/models/hf")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("TUNIX_RT_URL", "http://tunix-rt.internal:8000")
    monkeypatch.setenv("MY_TRAINING_FLAG", "on")


def test_a_job_environment_is_an_allow_list(secret_env: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from tunix_rt.training.jobs import job_environment

    monkeypatch.setenv("TUNIX_RT_DATABASE_URL", DB_URL)
    env = job_environment(extra={"JAX_PLATFORMS": "cpu"})
    for name in ("TUNIX_RT_WEBHOOK_SECRET", "TUNIX_RT_LLM_API_KEY", "TUNIX_RT_DATABASE_URL",
                 "AWS_SECRET_ACCESS_KEY", "MY_TRAINING_FLAG"):
        assert name not in env, name
    assert not any(LLM_KEY in v or "db-password" in v or WEBHOOK_SECRET in v
                   for v in env.values())
    for name in ("PATH", "HF_HOME", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES", "LC_ALL",
                 "TUNIX_RT_URL"):
        assert env[name] == os.environ[name], name
    assert env["JAX_PLATFORMS"] == "cpu"

    named = job_environment(["TUNIX_RT_WEBHOOK_SECRET", "MY_TRAINING_FLAG", "NOT_SET_ANYWHERE"])
    assert named["TUNIX_RT_WEBHOOK_SECRET"] == WEBHOOK_SECRET and named["MY_TRAINING_FLAG"] == "on"
    assert "NOT_SET_ANYWHERE" not in named and "TUNIX_RT_LLM_API_KEY" not in named


@pytest.mark.parametrize("names, problem", [
    (["A=B"], "env"), (["$(id)"], "env"), ([""], "env"), (["PATH", "PATH"], "env"),
    ("PATH", "env"), ([1], "env")])
def test_the_run_file_env_key_takes_names_only(names: object, problem: str) -> None:
    from tunix_rt.training.runfile import parse_run_spec

    with pytest.raises(InvalidInputError, match=problem):
        parse_run_spec({"name": "n", "dataset": "d", "model": "m", "trainable": "builtin",
                        "env": names})
    spec = parse_run_spec({"name": "n", "dataset": "d", "model": "m", "trainable": "builtin",
                           "env": ["HF_TOKEN", "WANDB_API_KEY"]})
    assert spec.env == ["HF_TOKEN", "WANDB_API_KEY"]


_PRINT_ENV = ("import json, os; print('TUNIX_RT_METRICS ' + json.dumps({'names': "
              "sorted(k for k in os.environ if k.startswith(('TUNIX_RT_', 'AWS_', 'MY_'))), "
              "'values': ' '.join(os.environ.values())}))")


@pytest.mark.flows
def test_a_launched_job_sees_only_the_allow_list_and_what_its_run_file_names(
        db_url: str, prefect_api_url: str, secret_env: None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tunix_rt.flows.training import train_flow
    from tunix_rt.store.db import get_engine, session_scope
    from tunix_rt.store.models import Run
    from tunix_rt.training.runfile import parse_run_spec

    monkeypatch.setenv("TUNIX_RT_JOBS_DIR", str(tmp_path / "jobs"))
    spec = parse_run_spec({"name": "env", "dataset": "arith", "model": "m",
                           "command": [sys.executable, "-c", _PRINT_ENV],
                           "predictions": "file:///nowhere/predictions.jsonl",
                           "env": ["MY_TRAINING_FLAG"]})
    train_flow(spec=spec, return_state=True)
    with session_scope(get_engine(db_url)) as session:
        [run] = session.query(Run).all()
        metrics = run.metrics
        log_path = Path(run.log_uri.removeprefix("file://"))
    assert run.exit_code == 0, run.error
    assert metrics["names"] == ["MY_TRAINING_FLAG", "TUNIX_RT_URL"]
    for secret in (WEBHOOK_SECRET, LLM_KEY, db_url):
        assert secret not in metrics["values"]
    # The job's log is its owner's only.
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600


def test_on_ray_the_database_url_is_not_a_task_argument() -> None:
    """The remote supervisor reads TUNIX_RT_DATABASE_URL from its own node's environment."""
    from tunix_rt.tasks import training

    assert "database_url" not in inspect.signature(training._supervise_remotely).parameters
    source = inspect.getsource(training._run_on_ray)
    assert "database_url" not in source


# --- the LLM config -------------------------------------------------------------------

def test_the_llm_config_repr_hides_the_key() -> None:
    from tunix_rt.judges.llm import LLMConfig

    cfg = LLMConfig.from_settings(Settings(llm_base_url="http://127.0.0.1:9/v1",
                                           llm_model="m", llm_api_key=LLM_KEY))
    assert cfg.api_key == LLM_KEY
    for shown in (repr(cfg), str(cfg), f"{cfg}", f"{cfg!r}", repr([cfg]), repr({"c": cfg})):
        assert LLM_KEY not in shown and "**" in shown
    settings = Settings(llm_api_key=LLM_KEY, api_token="tok", webhook_secret=WEBHOOK_SECRET)
    assert LLM_KEY not in repr(settings) and WEBHOOK_SECRET not in repr(settings)
    assert "tok'" not in repr(settings)


# --- file modes -----------------------------------------------------------------------

@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # the usual default: new files world-readable
    try:
        yield
    finally:
        os.umask(previous)


def test_the_embedded_sqlite_file_is_the_owners_only(tmp_path: Path, open_umask: None) -> None:
    from tunix_rt.store import db

    path = tmp_path / "state" / "tunix_rt.db"
    engine = db.get_engine(f"sqlite:///{path}")  # created and migrated on first use
    try:
        for file in [path, *tmp_path.glob("state/tunix_rt.db*")]:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    finally:
        engine.dispose()
        db.dispose_engines()


def test_a_job_log_is_the_owners_only(tmp_path: Path, open_umask: None) -> None:
    from tunix_rt.training.jobs import run_job

    log_path = tmp_path / "jobs" / "run" / "job.log"
    result = run_job([sys.executable, "-c", "print('hello')"], timeout_s=60, log_path=log_path)
    assert result.status == "completed" and "hello" in log_path.read_text()
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    # An existing, world-readable log is tightened before the job writes to it.
    log_path.chmod(0o644)
    run_job([sys.executable, "-c", "print('again')"], timeout_s=60, log_path=log_path)
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600


# --- sweep names ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escape", "../../etc/cron.d/x", "a/b", ".hidden", "..",
                                  "/abs", "a\\b", "sp ace", "nul\x00", ""])
def test_a_sweep_name_cannot_escape_the_storage_folder(name: str) -> None:
    from tunix_rt.tuning.sweep import parse_sweep

    with pytest.raises(InvalidInputError, match="name"):
        parse_sweep({"name": name})
    assert parse_sweep({"name": "arith-lr_0.1"}).name == "arith-lr_0.1"


def test_the_storage_path_is_checked_under_the_root(tmp_path: Path) -> None:
    """A name that slipped past validation (an old study row) is still refused."""
    from tunix_rt.tuning.ray_tune import study_storage_path

    root = tmp_path / "tune"
    assert study_storage_path(root, "ok-name", "abcdef0123") == (root / "ok-name-abcdef01").resolve()
    for bad in ("../../outside", "/etc/x", "a/../../b"):
        with pytest.raises(InvalidInputError, match="name"):
            study_storage_path(root, bad, "abcdef0123")
