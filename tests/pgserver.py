"""A throwaway PostgreSQL cluster for the test session (and the benchmarks).

``TUNIX_RT_TEST_POSTGRES_URL`` points the tests at a server you already run
(a ``postgresql+psycopg://`` URL of a database the tests may create databases
from). Otherwise the session runs ``initdb`` into a temporary folder and starts
a cluster on a free loopback port with fsync off, and stops it at the end. The test
session's cluster lives in memory (``/dev/shm``) when the machine has room for it
(:func:`memory_folder`).
Fault tests that stop and restart PostgreSQL start a :class:`PostgresCluster` of their
own, so the session's server is never the one restarted.
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


class PostgresCluster:
    """A cluster in a folder of its own, on a fixed loopback port, that can be stopped
    and started again: the same data directory, the same port, the same URL.

    For fault tests (a PostgreSQL restarted under load); the session's server
    (:func:`postgres_server`) is one of these, never restarted. ``stop`` takes a
    ``pg_ctl`` shutdown mode: ``fast`` ends every session with an error, ``immediate``
    is a crash. With ``durable`` a commit is acknowledged only once its WAL is written,
    so it survives a crash of the server as on a production one (the session's server
    runs with ``synchronous_commit=off``, which loses the last commits to a crash);
    fsync stays off either way: the machine itself does not crash in a test.
    """

    def __init__(self, *, durable: bool = False, parent: str | None = None) -> None:
        initdb, pg_ctl = _find_bin("initdb"), _find_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise PostgresUnavailable(
                "no PostgreSQL server binaries (initdb, pg_ctl) found; install them "
                "(Debian: apt-get install postgresql) or set TUNIX_RT_TEST_POSTGRES_URL")
        self._initdb, self._pg_ctl = initdb, pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="tunix-rt-pg-", dir=parent))
        self.data, self.log = self.root / "data", self.root / "server.log"
        sock = self.root / "sock"
        sock.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(sock, "postgres")
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._options = (f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 "
                         "-c fsync=off -c full_page_writes=off -c max_connections=200 "
                         f"-c synchronous_commit={'on' if durable else 'off'}")
        try:
            self._run([initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust",
                       "-E", "UTF8", "--no-locale"])
            self.start()
        except PostgresUnavailable:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _run(self, cmd: list[str]) -> None:
        try:
            subprocess.run(_as_user(cmd), check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            detail = self.log.read_text() if self.log.exists() else ""
            raise PostgresUnavailable(f"`{' '.join(cmd[:1] + cmd[-1:])}` failed: "
                                      f"{exc.stderr}\n{detail[-4000:]}") from exc

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run([self._pg_ctl, "-D", str(self.data), "-o", self._options, "-l",
                   str(self.log), "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m mode``) and wait until it is down."""
        self._run([self._pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])

    def close(self) -> None:
        """Stop the server if it runs, and delete its folder."""
        subprocess.run(_as_user([self._pg_ctl, "-D", str(self.data), "-m", "immediate",
                                 "stop"]), capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# What the test session's cluster may grow to: a database per PostgreSQL test (~450 in
# the suite, ~9.5 MB each, copies of the migrated template) and its WAL. Twice that free.
MEMORY_NEEDED = 12 * 1024**3


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory_folder(needed: int = MEMORY_NEEDED) -> str | None:
    """``/dev/shm`` when it is a tmpfs with ``needed`` bytes free and the machine has them
    available, else None (the temporary folder, on disk).

    For the test session's cluster: on disk (ext4 mounted with ``discard`` here), copying
    the template into a database cost 0.3-0.35 s once a hundred or so existed (200 in
    57-72 s), and deleting the ~4.5 GB folder of a whole session's ~20 s; in memory, 200
    in 8 s and 1 s to delete. Durability is no part of what these tests prove (fsync is
    off either way); the fault tests that crash PostgreSQL start a cluster of their own,
    on disk.
    """
    try:
        fs = os.statvfs("/dev/shm")
    except OSError:
        return None
    if fs.f_bavail * fs.f_frsize < needed or _mem_available() < needed:
        return None
    return "/dev/shm"


@contextmanager
def postgres_server(*, in_memory: bool = False) -> Iterator[str]:
    """Yield a SQLAlchemy URL of a superuser connection to a running server.

    ``in_memory``: its data folder in ``/dev/shm`` when there is room (:func:`memory_folder`;
    the test session's), else on disk (the benchmarks', which time PostgreSQL).
    """
    external = os.environ.get("TUNIX_RT_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    with PostgresCluster(parent=memory_folder() if in_memory else None) as cluster:
        yield cluster.url


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
