"""``tunix-rt serve`` and ``tunix-rt up``: the service, and a local stack as production runs it.

``up`` starts a Prefect server (with its own database: SQLite under PREFECT_HOME, or
with ``--prefect-db postgres`` ``<database>_prefect`` beside tunix-rt's), creates the
work pool, deploys prefect.yaml, starts a worker, and serves the tunix-rt HTTP service
in this process. Ctrl-C (or SIGTERM, or SIGHUP) stops all of it.

Every child runs this process's own interpreter (``sys.executable -m prefect``), with
this interpreter's folder first on its PATH, so the stack works the same whether or
not a virtual environment is activated: ``/path/to/venv/bin/tunix-rt up`` is enough.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tunix_rt import procs
from tunix_rt.errors import InvalidInputError

WORK_POOL = "tunix-rt"
PREFECT_FILE = "prefect.yaml"
# How long a child may take to stop after SIGTERM before it is killed. Each stops in
# about a second; the wait is only for one that hangs.
STOP_GRACE_S = 10.0
# How long the service may take to finish the requests in flight at Ctrl-C.
SERVICE_GRACE_S = 3
# How long the Prefect server may take to answer: its first start on a new database runs
# all of Prefect's migrations, which takes minutes on a busy machine.
SERVER_START_S = 300


# How each worker process of `tunix-rt serve --workers N` dispatches: "event", "local" or
# "none" (set by the parent, read by worker_app in every worker).
WORKER_DISPATCH_ENV = "TUNIX_RT_SERVE_DISPATCH"
NO_DISPATCH = "none: completed runs stay owed in the outbox for the sweeper (`tunix-rt sweep`)"


def serve(host: str, port: int, dispatcher: object | None = None, *, workers: int = 1,
          dispatch: bool = True, access_log: bool = True) -> None:
    """Run the HTTP service until interrupted.

    ``workers`` > 1 runs that many processes on one port (uvicorn's multi-process mode).
    Without ``dispatch`` the receiver only stores: each loop a completed run owes stays
    in the outbox, for the sweeper or a worker elsewhere (an ingest-only receiver).
    """
    if workers > 1:
        _serve_workers(host, port, workers, dispatch, access_log)
        return
    if not dispatch:
        dispatcher = None
    elif dispatcher is None:
        from tunix_rt.flows.dispatch import receiver_dispatcher

        dispatcher = receiver_dispatcher()
    _serve_app(_service_app(dispatcher), host, port, dispatcher, access_log=access_log)


def _service_app(dispatcher: Any) -> Any:
    from tunix_rt.service.server import create_app

    return create_app(dispatcher=dispatcher)


def worker_app() -> Any:
    """The app of one worker process of ``serve --workers N`` (uvicorn calls this factory
    in each). Each worker has its own dispatcher: an in-process one runs the loops of the
    deliveries this worker stored, reporting to the one Prefect API the parent started."""
    mode = os.environ.get(WORKER_DISPATCH_ENV, "none")
    dispatcher: Any = None
    if mode == "local":
        from tunix_rt.flows.dispatch import LocalDispatcher

        dispatcher = LocalDispatcher()
    elif mode == "event":
        from tunix_rt.flows.dispatch import EventDispatcher

        dispatcher = EventDispatcher()
    return _service_app(dispatcher)


def _serve_workers(host: str, port: int, workers: int, dispatch: bool,
                   access_log: bool) -> None:
    """``workers`` processes of the service on one port, their dispatch chosen here once.

    In-process loops in several workers would each start Prefect's ephemeral API on the
    same database; they share one local Prefect server instead, which dies with this
    process. Crashed Prefect-run loops are watched for here, once, not in every worker.
    """
    import uvicorn

    _service_app(None)  # a missing secret or an unmigrated database: refused here, once
    mode = "none"
    if dispatch:
        from tunix_rt.flows.dispatch import has_prefect_server

        mode = "event" if has_prefect_server() else "local"
    print(f"tunix-rt service on http://{host}:{port}, {workers} workers (dispatch: "
          f"{NO_DISPATCH if mode == 'none' else mode})", flush=True)
    os.environ[WORKER_DISPATCH_ENV] = mode
    with contextlib.ExitStack() as stack:
        if mode == "local":
            from tunix_rt.cli.prefect_server import local_prefect_server

            url = stack.enter_context(local_prefect_server())
            if url:
                os.environ["PREFECT_API_URL"] = url  # for the workers, which it outlives
        if mode == "event":
            from tunix_rt.flows.dispatch import CrashWatcher

            stack.callback(CrashWatcher().start().stop)
        uvicorn.run("tunix_rt.cli.stack:worker_app", factory=True, workers=workers, host=host,
                    port=port, log_level="info", access_log=access_log,
                    timeout_graceful_shutdown=SERVICE_GRACE_S)


def _serve_app(app: Any, host: str, port: int, dispatcher: Any, *,
               access_log: bool = True) -> None:
    import uvicorn

    from tunix_rt.flows.dispatch import CrashWatcher, EventDispatcher

    target = dispatcher.target if dispatcher is not None else NO_DISPATCH
    print(f"tunix-rt service on http://{host}:{port} (dispatch: {target})", flush=True)
    # Loops started through Prefect that crash before their code runs are noted on
    # their runs by this receiver (the flow-run process had no chance to).
    watcher = None
    if isinstance(dispatcher, EventDispatcher):
        from tunix_rt.flows.engine import share_ca_bundle

        share_ca_bundle()  # each dispatch and each crash check makes a Prefect client
        watcher = CrashWatcher().start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log,
                    timeout_graceful_shutdown=SERVICE_GRACE_S)
    finally:
        if watcher is not None:
            watcher.stop()


def prefect_file(cwd: Path | None = None) -> Path:
    """The prefect.yaml ``up`` deploys: the current directory's, else the one tunix-rt ships."""
    local = (cwd or Path.cwd()) / PREFECT_FILE
    if local.is_file():
        return local.resolve()
    packaged = Path(__file__).resolve().parents[1] / PREFECT_FILE
    if packaged.is_file():
        return packaged
    raise InvalidInputError(f"no {PREFECT_FILE} in {local.parent}, and none installed with "
                            f"tunix-rt (looked for {packaged})")


def child_env(api_url: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the stack's children: this interpreter's folder first on PATH."""
    env = dict(os.environ if base is None else base)
    env.update({"PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                # Pick up a triggered run within ~0.5 s (Prefect's 10 s default is most of
                # a webhook's wait for its gate); each poll is one cheap API call.
                "PREFECT_WORKER_QUERY_SECONDS": env.get("PREFECT_WORKER_QUERY_SECONDS", "0.5")})
    env.pop("PREFECT_API_KEY", None)
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH", "")
    if path.split(os.pathsep)[0] != bindir:
        env["PATH"] = bindir + (os.pathsep + path if path else "")
    return env


def _prefect(*args: str) -> list[str]:
    # This interpreter, not a `prefect` found on PATH: the worker then runs each flow run
    # with it too (Prefect's process worker starts `sys.executable -m prefect.engine`).
    return [sys.executable, "-m", "prefect", *args]


def pool_template(path: Path) -> Path:
    """The work pool's job template: Prefect's process template whose default command is
    ``python -m tunix_rt.flows.engine`` with this interpreter (a path: nothing on PATH is
    needed). That engine sends each flow run's heartbeats from a thread that stops at once
    (tunix_rt.flows.heartbeats), saving ~0.9 s a run over Prefect's."""
    import shlex

    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["command"]["default"] = shlex.join(
        [sys.executable, "-m", "tunix_rt.flows.engine"])
    path.write_text(json.dumps(template, indent=2))
    return path


PREFECT_DATABASE_ENV = "PREFECT_API_DATABASE_CONNECTION_URL"
PREFECT_DATABASE_SUFFIX = "_prefect"


def prefect_database(env: dict[str, str], *, postgres: bool = True
                     ) -> tuple[str | None, str]:
    """The database of ``up``'s Prefect server: (the URL to give it, or None to leave
    Prefect's choice; a line saying which).

    With ``postgres`` (``up --prefect-db postgres``) and tunix-rt on PostgreSQL, Prefect's
    server gets a database of its own on the same server, ``<database>_prefect``,
    created here if it is not there. On its default SQLite, a write that meets the
    server's own background writes (the task runs and events of the loop that just
    ended) fails with SQLITE_BUSY; the server answers 503 and Prefect's client waits 2 s
    before it tries again: that was most of a webhook's time to its gate on ``up``
    (benchmarks/README.md, webhook_to_gate). A URL already in
    ``PREFECT_API_DATABASE_CONNECTION_URL`` is used as it is. (Asked for, not assumed:
    it creates a database on the user's server.)
    """
    if env.get(PREFECT_DATABASE_ENV, "").strip():
        return None, f"Prefect database: {PREFECT_DATABASE_ENV}"
    if not postgres:
        return None, ("Prefect database: SQLite under PREFECT_HOME (--prefect-db postgres: "
                      "a PostgreSQL database beside tunix-rt's, faster under load)")
    from sqlalchemy.engine import make_url

    from tunix_rt.settings import database_url

    sqlite = ("Prefect database: SQLite under PREFECT_HOME ({why}; PostgreSQL is faster "
              f"under load: set {PREFECT_DATABASE_ENV})")
    url = make_url(database_url())
    if url.get_backend_name() != "postgresql":
        return None, sqlite.format(why="tunix-rt's database is not PostgreSQL")
    if url.query:  # connection options whose spelling differs between drivers
        return None, sqlite.format(why="tunix-rt's database URL has options")
    name = f"{url.database}{PREFECT_DATABASE_SUFFIX}"
    try:
        created = _ensure_database(url, name)
    except Exception as exc:  # noqa: BLE001 - Prefect's SQLite still works
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, sqlite.format(why=f"could not create PostgreSQL database {name}: {reason}")
    prefect_url = url.set(drivername="postgresql+asyncpg", database=name)
    return (prefect_url.render_as_string(hide_password=False),
            f"Prefect database: {prefect_url.render_as_string(hide_password=True)}"
            + (" (created)" if created else ""))


def _ensure_database(url: Any, name: str) -> bool:
    """Create database ``name`` on ``url``'s server unless it exists; whether it was."""
    import psycopg
    from psycopg import sql

    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:  # another `up` created it meanwhile
            return False
    return True


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InvalidInputError(f"the Prefect server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise InvalidInputError(f"the Prefect server did not answer at {url} within {timeout:.0f} s")


def _start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    with log.open("ab") as handle:
        # A process group of its own (with whatever it starts: the worker's flow runs),
        # so Ctrl-C in the terminal reaches us alone and we stop each group whole.
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=_child_setup(procs.parent_death_signal(signal.SIGTERM)))


def _child_setup(then: Any) -> Any:
    """A ``preexec_fn``: SIGINT and SIGQUIT back to their defaults, then ``then``.

    A process started in the background by a shell (``tunix-rt up &``, ``nohup``, a
    script's job) has SIGINT ignored, and its children inherit that. Prefect's worker
    stops on SIGTERM by sending itself SIGINT: ignored, it kept running until the stop
    grace ran out and it was SIGKILLed, losing its flow runs' last reports."""
    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        if then is not None:
            then()
    return setup


def _run_cli(cmd: list[str], env: dict[str, str], cwd: Path) -> None:
    try:
        subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True,
                       stdin=subprocess.DEVNULL)
    except subprocess.CalledProcessError as exc:
        output = (exc.stdout + exc.stderr).decode(errors="replace")
        raise InvalidInputError(f"`prefect {' '.join(exc.cmd[3:])}` failed: "
                                f"{output[-2000:]}") from None


def _stop(children: list[tuple[str, subprocess.Popen]]) -> None:
    """Stop the children, the last started first: the worker while the server still
    answers (its flow runs report themselves crashed), then the server. Each with
    what it started: the worker starts each flow run in a session of its own, and a
    flow run its training job, which SIGTERM to the worker's group would not reach."""
    try:
        for name, proc in reversed(children):
            started = time.monotonic()
            killed = procs.stop_group(proc, STOP_GRACE_S, descendants=True)
            how = f"killed after {STOP_GRACE_S:g} s" if killed else "stopped"
            print(f"{how} {name} ({time.monotonic() - started:.1f} s)", flush=True)
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
        for name, proc in children:
            for group in {proc.pid, *procs.descendant_groups(proc.pid)}:
                procs.signal_group(group, signal.SIGKILL)
            proc.wait()
        print("killed " + ", ".join(name for name, _ in children), flush=True)


ENGINE_SOCKET_ENV = "TUNIX_RT_ENGINE_SOCKET"
WARM_ENGINE_ENV = "TUNIX_RT_WARM_ENGINE"  # "0": every flow run imports everything itself


def warm_engine(env: dict[str, str], log_dir: Path,
                children: list[tuple[str, subprocess.Popen]]) -> str | None:
    """Start the warm engine (tunix_rt.flows.engine --serve) the worker's flow runs are
    forked from, already imported: a flow run then starts in ~0.1 s, not the seconds of
    a fresh interpreter's imports. Returns its socket path at once (None: turned off).
    Until the socket is there (the imports take seconds), or if the engine dies, each flow
    run starts a fresh interpreter, as Prefect's worker does; engine.log says why."""
    if env.get(WARM_ENGINE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    import tempfile

    folder = tempfile.mkdtemp(prefix="tunix-rt-engine-")  # short: a socket path is <108 bytes
    path = os.path.join(folder, "engine.sock")
    children.append(("warm engine", _start(
        [sys.executable, "-m", "tunix_rt.flows.engine", "--serve", path], env,
        log_dir / "engine.log", log_dir)))
    return path


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def up(host: str = "127.0.0.1", port: int = 8000, prefect_port: int = 4200,
       logs: str = ".tunix-rt/logs", prefect_db: str = "sqlite") -> int:
    """Start the local stack and block until Ctrl-C (or SIGTERM, or SIGHUP)."""
    spec = prefect_file()
    log_dir = Path(logs).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    env = child_env(api_url)
    # Before anything here imports Prefect: its settings are read once.
    os.environ["PREFECT_API_URL"] = api_url
    from tunix_rt.flows.dispatch import EventDispatcher

    dispatcher = EventDispatcher()
    # Now, not after a minute of starting Prefect: a missing webhook secret or an
    # unmigrated database stops `up` before it starts anything.
    from tunix_rt.service.server import require_webhook_secret
    from tunix_rt.settings import get_settings

    require_webhook_secret(get_settings())  # the stack is there to take webhooks
    app = _service_app(dispatcher)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    children: list[tuple[str, subprocess.Popen]] = []
    warm: str | None = None
    try:
        server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
        prefect_url, said = prefect_database(server_env, postgres=prefect_db == "postgres")
        if prefect_url:
            server_env[PREFECT_DATABASE_ENV] = prefect_url
        print(said, flush=True)
        server = _start(_prefect("server", "start", "--host", "127.0.0.1", "--port",
                                 str(prefect_port)), server_env, log_dir / "prefect-server.log",
                        log_dir)
        children.append(("Prefect server", server))
        # Its imports overlap the server's start; a flow run before it is ready runs alone.
        warm = warm_engine(env, log_dir, children)
        _wait_healthy(api_url, server, timeout=SERVER_START_S)
        _run_cli(_prefect("work-pool", "create", WORK_POOL, "--type", "process", "--overwrite",
                          "--base-job-template", str(pool_template(log_dir / "work-pool.json"))),
                 env, log_dir)
        _run_cli(_prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(spec)), env,
                 spec.parent)
        if warm:
            env = {**env, ENGINE_SOCKET_ENV: warm}  # the worker's flow runs hand over to it
        worker = _start(_prefect("worker", "start", "--pool", WORK_POOL), env,
                        log_dir / "worker.log", log_dir)
        children.append(("worker", worker))
        print(f"Prefect UI      http://127.0.0.1:{prefect_port}\n"
              f"tunix-rt        http://{host}:{port}  (leaderboard page, /api, /webhooks)\n"
              f"deployments     {spec}\n"
              f"logs            {log_dir}\n"
              "Ctrl-C stops everything.", flush=True)
        _serve_app(app, host, port, dispatcher)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(children)
        if warm:
            import shutil

            shutil.rmtree(os.path.dirname(warm), ignore_errors=True)
    return 0
