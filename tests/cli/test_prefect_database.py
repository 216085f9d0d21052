"""Which database `tunix-rt up` gives its Prefect server (tunix_rt.cli.stack.prefect_database).

With `up --prefect-db postgres` and tunix-rt on PostgreSQL, Prefect gets
``<database>_prefect`` on the same server, created once; otherwise, or when that cannot be
done, Prefect keeps its SQLite and the line `up` prints says why.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.pgserver import create_database
from tunix_rt.cli.stack import PREFECT_DATABASE_ENV, prefect_database

pytestmark = [pytest.mark.postgres]


def _exists(admin_url: str, name: str) -> bool:
    conninfo = make_url(admin_url).set(drivername="postgresql").render_as_string(
        hide_password=False)
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (name,)).fetchone() is not None


def test_on_postgresql_prefect_gets_a_database_of_its_own_created_once(
        pg_admin_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = create_database(pg_admin_url)
    monkeypatch.setenv("TUNIX_RT_DATABASE_URL", url)
    name = f"{make_url(url).database}_prefect"

    first, said = prefect_database({})
    assert make_url(first) == make_url(url).set(drivername="postgresql+asyncpg", database=name)
    assert said.startswith("Prefect database: postgresql+asyncpg://") and said.endswith(
        f"/{name} (created)")
    assert _exists(pg_admin_url, name)

    again, said = prefect_database({})  # the next `up`: the same database, kept
    assert again == first and not said.endswith("(created)")


def test_a_database_url_given_to_prefect_is_left_as_it_is(
        pg_admin_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = create_database(pg_admin_url)
    monkeypatch.setenv("TUNIX_RT_DATABASE_URL", url)
    chosen, said = prefect_database({PREFECT_DATABASE_ENV: "sqlite+aiosqlite:////x/p.db"})
    assert chosen is None and PREFECT_DATABASE_ENV in said
    assert not _exists(pg_admin_url, f"{make_url(url).database}_prefect")


def test_without_postgresql_prefect_keeps_its_sqlite_and_says_why(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNIX_RT_DATABASE_URL", f"sqlite:///{tmp_path / 't.db'}")
    chosen, said = prefect_database({})
    assert chosen is None
    assert "SQLite under PREFECT_HOME" in said and "not PostgreSQL" in said
    assert PREFECT_DATABASE_ENV in said  # how to choose PostgreSQL anyway


def test_a_role_that_may_not_create_databases_leaves_prefect_on_sqlite(
        pg_admin_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = create_database(pg_admin_url)
    role = f"nocreate_{uuid.uuid4().hex[:8]}"
    admin = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD \'pw\' NOCREATEDB')
    monkeypatch.setenv("TUNIX_RT_DATABASE_URL", make_url(url).set(
        username=role, password="pw").render_as_string(hide_password=False))

    chosen, said = prefect_database({})

    name = f"{make_url(url).database}_prefect"
    assert chosen is None
    assert f"could not create PostgreSQL database {name}" in said
    assert "permission denied" in said
    assert not _exists(pg_admin_url, name)


def test_by_default_prefect_keeps_its_sqlite_and_names_the_option(
        pg_admin_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = create_database(pg_admin_url)
    monkeypatch.setenv("TUNIX_RT_DATABASE_URL", url)
    chosen, said = prefect_database({}, postgres=False)
    assert chosen is None
    assert "SQLite under PREFECT_HOME" in said and "--prefect-db postgres" in said
    assert not _exists(pg_admin_url, f"{make_url(url).database}_prefect")
