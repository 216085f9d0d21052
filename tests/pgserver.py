"""A throwaway PostgreSQL cluster for the test session (and the benchmarks).

``TUNIX_RT_TEST_POSTGRES_URL`` points the tests at a server you already run
(a ``postgresql+psycopg://`` URL of a database the tests may create databases
from). Otherwise the session runs ``initdb`` into a temporary folder and starts
a cluster on a free loopback port with fsync off, and stops it at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


def _find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_user(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root: run the server as the postgres system user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL of a superuser connection to a running server."""
    external = os.environ.get("TUNIX_RT_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    initdb, pg_ctl = _find_bin("initdb"), _find_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise PostgresUnavailable(
            "no PostgreSQL server binaries (initdb, pg_ctl) found; install them "
            "(Debian: apt-get install postgresql) or set TUNIX_RT_TEST_POSTGRES_URL")
    root = Path(tempfile.mkdtemp(prefix="tunix-rt-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    try:
        subprocess.run(_as_user([initdb, "-D", str(data), "-U", "postgres", "-A", "trust",
                                 "-E", "UTF8", "--no-locale"]),
                       check=True, capture_output=True, text=True)
        options = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        subprocess.run(_as_user([pg_ctl, "-D", str(data), "-o", options, "-l",
                                 str(root / "server.log"), "-w", "-t", "60", "start"]),
                       check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        log = root / "server.log"
        detail = log.read_text() if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailable(f"could not start PostgreSQL: {exc.stderr}\n{detail}") from exc
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def create_database(admin_url: str, prefix: str = "t", template: str | None = None) -> str:
    """Create a fresh database on the server (a copy of ``template``); returns its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    from tests.waiting import wait_for

    url = make_url(admin_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    clause = f' TEMPLATE "{template}"' if template else ""

    def create() -> bool:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{clause}')
        return True

    # A server still starting refuses connections; a template still in use refuses to be
    # copied: both pass.
    wait_for(create, 10, f"database {name} to be created", retry_on=psycopg.OperationalError)
    return url.set(database=name).render_as_string(hide_password=False)
