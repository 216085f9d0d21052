"""``python -m tunix_rt.flows.engine [FLOW_RUN_ID]``: Prefect's engine, with our heartbeats.

The command a Prefect process worker runs for tunix-rt's deployments (the work pool's
command, set by ``tunix-rt up``) in place of ``python -m prefect.engine``. It runs
Prefect's own engine module unchanged, inside :func:`tunix_rt.flows.heartbeats.heartbeats`:
the same heartbeat events at Prefect's configured frequency (or TUNIX_RT_HEARTBEAT_S),
without the up-to-a-second wait for Prefect's heartbeat thread at the end of every run.

A warm engine. A fresh interpreter spends most of a short flow run importing Prefect,
SQLAlchemy, numpy and the flow's modules (about 1.5 s on an idle 2-core machine, many
seconds on a loaded one), every run again. ``python -m tunix_rt.flows.engine --serve
SOCKET`` imports all of that once and waits on a Unix socket; ``tunix-rt up`` starts it
beside the worker and names its socket in ``TUNIX_RT_ENGINE_SOCKET``. The command the
worker starts then only connects (a bare interpreter: no Prefect imported), hands over
its arguments, environment, working directory and standard streams, and the warm
engine forks a child that runs the flow run as the command would have, already
imported. The command stays what the worker watches: it passes SIGTERM/SIGINT on to
the child, and exits with the child's exit status. Without the variable, or with no
warm engine answering, the command runs the flow run itself, as before.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any

SOCKET_ENV = "TUNIX_RT_ENGINE_SOCKET"
# What the warm engine imports once, before it forks any flow run: what a quality loop
# imports on its way (the engine, the pull step, the flow and what it uses).
PRELOAD = ("prefect", "prefect.flow_engine", "prefect.task_engine",
           "prefect.client.orchestration", "prefect.deployments.steps.core",
           "prefect.events", "prefect.logging.handlers", "prefect.futures",
           "sqlalchemy", "sqlalchemy.dialects.postgresql.psycopg", "psycopg",
           "tunix_rt.flows.heartbeats", "tunix_rt.flows.steps", "tunix_rt.store.db",
           "tunix_rt.flows.quality_loop", "tunix_rt.judges")
_MAX_MESSAGE = 4 << 20


def run_engine() -> None:
    """Prefect's engine for the flow run in argv/env, inside our heartbeats."""
    from prefect.settings import get_current_settings

    from tunix_rt.flows.heartbeats import heartbeats
    from tunix_rt.settings import get_settings

    flow_run_id = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PREFECT__FLOW_RUN_ID")
    ours = get_settings().heartbeat_s  # 0: no heartbeats at all
    interval = ours if ours is not None else get_current_settings().flows.heartbeat_frequency
    with heartbeats(flow_run_id, interval):
        # Prefect's engine exits through SystemExit; the block still stops the heartbeats.
        runpy_main("prefect.engine")


def runpy_main(module: str) -> None:
    import runpy
    import warnings

    with warnings.catch_warnings():
        # In a warm engine's child the module may be imported already: that is expected.
        warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
        runpy.run_module(module, run_name="__main__", alter_sys=True)


# --- the command's side: hand the flow run to the warm engine --------------------------------

def _read_line(sock: socket.socket, buffer: bytearray) -> dict[str, Any] | None:
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return json.loads(line)


def via_warm_engine(path: str) -> int | None:
    """Run this flow run in the warm engine at ``path``; its exit status, or None when
    no warm engine took it (then the caller runs it here)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = json.dumps({"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd()})
        socket.send_fds(sock, [request.encode() + b"\n"], [0, 1, 2])
        buffer = bytearray()
        started = _read_line(sock, buffer)
    except OSError:
        sock.close()
        return None
    if not started or "pid" not in started:
        sock.close()
        return None
    child = int(started["pid"])

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        ended = _read_line(sock, buffer)
    finally:
        sock.close()
    if not ended or "exit" not in ended:
        print(f"tunix-rt: the warm engine ({path}) stopped before flow run process {child} "
              "ended", file=sys.stderr, flush=True)
        return 1
    code = int(ended["exit"])
    if code < 0:  # killed by a signal: end the same way, so the worker reports the same
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


# --- the warm engine: import once, fork a child per flow run ----------------------------------

def serve(path: str) -> None:
    """Import what a flow run needs, then run each flow run handed over at ``path`` in a
    forked child, until SIGTERM/SIGINT."""
    import importlib
    import logging
    import selectors
    import threading

    log = logging.getLogger("tunix_rt.engine")
    share_ca_bundle()
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - a flow run that needs it will say why, itself
            log.warning("warm engine: cannot preload %s", module, exc_info=True)
    if threading.active_count() > 1:  # fork copies only this thread: none may hold a lock
        raise SystemExit(f"warm engine: {threading.active_count()} threads after the imports; "
                         "forking would be unsafe")
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)  # only this user may hand it flow runs
    try:
        listener.bind(path + ".new")
    finally:
        os.umask(old_umask)
    listener.listen(64)
    os.replace(path + ".new", path)  # the socket appears ready, never half made
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    stopping: list[int] = []
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda signum, _f: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _f: stopping.append(signum))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    print(f"tunix-rt warm engine on {path} (pid {os.getpid()})", flush=True)
    try:
        while not stopping:
            for key, _ in selector.select():
                if key.fileobj is listener:
                    _accept(listener, children, (listener.fileno(), wake_r, wake_w))
                else:
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
            _reap(children)
    finally:
        for pid in list(children):  # flow runs end with their engine, as with a worker's
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            os.unlink(path)
        except OSError:
            pass


def share_ca_bundle() -> None:
    """One verified TLS context for every Prefect API client of this process and its forks.

    Prefect builds a new context for each API client, loading certifi's CA bundle
    (~150 certificates: 25 ms of CPU, 0.1-0.3 s on a loaded machine), even for an
    ``http://`` API, and a flow run makes several clients (loading the flow run, the
    flow, the engine, the heartbeats, the event and log workers). The warm engine builds
    it once, before any fork; the receiver beside a Prefect server (each dispatch and
    crash check makes a client) shares one too. Only that exact call (certifi's bundle,
    nothing else asked) is answered with the shared context; a context asked for
    anything else (another CA file, a client certificate) is built as before.
    """
    import ssl

    import certifi

    build = ssl.create_default_context
    if getattr(build, "shares_ca_bundle", False):
        return
    bundle = certifi.where()
    shared = build(cafile=bundle)

    def create_default_context(purpose: Any = ssl.Purpose.SERVER_AUTH, *, cafile: Any = None,
                               capath: Any = None, cadata: Any = None) -> ssl.SSLContext:
        if (cafile == bundle and purpose == ssl.Purpose.SERVER_AUTH and capath is None
                and cadata is None):
            return shared
        return build(purpose, cafile=cafile, capath=capath, cadata=cadata)

    create_default_context.shares_ca_bundle = True  # type: ignore[attr-defined]
    ssl.create_default_context = create_default_context  # type: ignore[assignment]


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode()
                             + b"\n")
            except OSError:
                pass
            conn.close()


def _accept(listener: socket.socket, children: dict[int, socket.socket],
            own_fds: tuple[int, ...]) -> None:
    conn, _ = listener.accept()
    conn.settimeout(10)  # one stalled command may not hold up the others for long
    fds: list[int] = []
    try:
        data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
        buffer = bytearray(data)
        while b"\n" not in buffer and len(buffer) < _MAX_MESSAGE:
            chunk = conn.recv(65536)
            if not chunk:
                raise OSError("the command hung up before its request ended")
            buffer += chunk
        request = json.loads(bytes(buffer).partition(b"\n")[0])
        if len(fds) != 3:
            raise OSError(f"expected 3 standard streams, got {len(fds)}")
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        conn.close()  # the command runs its flow run itself
        return
    pid = os.fork()
    if pid == 0:
        conn.close()
        _child(request, fds, own_fds)  # never returns
    for fd in fds:
        os.close(fd)
    env = request.get("env") or {}
    run = (request.get("argv") or [])[1:2] or [env.get("PREFECT__FLOW_RUN_ID", "?")]
    print(f"flow run {run[0]}: process {pid}", flush=True)
    try:
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        pass
    children[pid] = conn


def _child(request: dict[str, Any], fds: list[int], own_fds: tuple[int, ...]) -> None:
    """The forked flow run: the command's streams, arguments, environment and folder."""
    code: int = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        for fd in own_fds:
            os.close(fd)
        os.setsid()  # a process group of its own, as the worker gives each flow run
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        _fresh_settings()
        code = _exit_code(run_engine)
    except BaseException:  # noqa: BLE001 - the child must never return to the loop
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        code = _shutdown(code)
        os._exit(code)


def _fresh_settings() -> None:
    """Settings read at import, before the command's environment: read them again."""
    import prefect.context
    from prefect.logging.configuration import setup_logging

    from tunix_rt.settings import get_settings

    prefect.context.refresh_global_settings_context()
    setup_logging()
    cache_clear = getattr(get_settings, "cache_clear", None)
    if cache_clear is not None:
        cache_clear()


def _exit_code(fn: Any) -> int:
    import traceback

    try:
        fn()
        return 0
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - as the interpreter would: print it, exit 1
        traceback.print_exc()
        return 1


def _shutdown(code: int) -> int:
    """What the interpreter does at exit (join threads, run exit hooks: Prefect's log and
    event workers send what they hold), then flush the streams."""
    import atexit
    import threading

    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    return code


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
        return
    path = os.environ.get(SOCKET_ENV)
    if path:
        code = via_warm_engine(path)
        if code is not None:
            sys.exit(code)
    run_engine()


if __name__ == "__main__":
    main()
