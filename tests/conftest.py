"""Test session setup: an isolated Prefect home, databases on SQLite and PostgreSQL.

Layers (each a folder): unit (pure), db (the same tests on SQLite and on a real
PostgreSQL the session starts), flows (real Prefect, one harness per session), cli
(the installed command in a subprocess). With CI=true a PostgreSQL that cannot be
started fails the run instead of skipping its tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile

# Before anything imports Prefect: a private Prefect home and no analytics.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tunix-rt-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("TUNIX_RT_DATABASE_URL", None)

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

from tests.pgserver import PostgresUnavailable, create_database, postgres_server  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A running PostgreSQL server for the session, started on first use (in memory when
    the machine has room: tests/pgserver.py)."""
    try:
        with postgres_server(in_memory=True) as url:
            yield url
    except PostgresUnavailable as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test gets a copy (a migration costs ~0.3 s)."""
    from tunix_rt.store import db

    path = tmp_path_factory.mktemp("template") / "tunix_rt.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> str:
    """A PostgreSQL database migrated once, the template each test's database is cloned from."""
    from sqlalchemy.engine import make_url

    from tunix_rt.store import db

    url = create_database(pg_admin_url, prefix="template")
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()  # a template must have no open connections
    return make_url(url).database


def _database_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        path = tmp_path / "tunix_rt.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    return create_database(request.getfixturevalue("pg_admin_url"),
                           template=request.getfixturevalue("pg_template"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, migrated database, once on SQLite and once on PostgreSQL.

    It is also the configured database (TUNIX_RT_DATABASE_URL) for code that reads
    the settings, as flows and the CLI do.
    """
    from tunix_rt.store import db

    url = _database_url(request.param, tmp_path, request)
    monkeypatch.setenv("TUNIX_RT_DATABASE_URL", url)
    yield url
    db.dispose_engines()


@pytest.fixture
def engine(db_url: str) -> Engine:
    from tunix_rt.store.db import get_engine

    return get_engine(db_url)


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """One real Prefect server for the whole session (prefect_test_harness, ~12 s).

    Flows in this process talk to it; subprocesses (the CLI) get its URL as
    PREFECT_API_URL instead of starting an ephemeral server each.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One local Ray for the session: 2 CPUs and 2 logical GPUs (GPU fan-out without GPUs)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 1024 * 1024,
             runtime_env={"env_vars": {"JAX_PLATFORMS": "cpu"}},
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray.cluster_resources()
    ray.shutdown()
