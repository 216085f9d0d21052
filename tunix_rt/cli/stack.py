"""``tunix-rt serve`` and ``tunix-rt up``: the service, and a local stack as production runs it.

``up`` starts a Prefect server (with its own database, under PREFECT_HOME), creates
the work pool, deploys prefect.yaml, starts a worker, and serves the tunix-rt HTTP
service in this process. Ctrl-C stops all of it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from tunix_rt.errors import InvalidInputError

WORK_POOL = "tunix-rt"


def serve(host: str, port: int, dispatcher: object | None = None) -> None:
    """Run the HTTP service until interrupted."""
    import uvicorn

    from tunix_rt.service.server import create_app

    if dispatcher is None:
        from tunix_rt.flows.dispatch import receiver_dispatcher

        dispatcher = receiver_dispatcher()
    app = create_app(dispatcher=dispatcher)
    print(f"tunix-rt service on http://{host}:{port} (dispatch: {dispatcher.target})",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def project_dir() -> Path:
    """The folder with prefect.yaml: this checkout's root."""
    from tunix_rt import flows

    root = Path(flows.__file__).resolve().parents[1]
    if not (root / "prefect.yaml").exists():
        raise InvalidInputError(f"no prefect.yaml in {root}: run `tunix-rt up` from a checkout "
                                "of tunix-rt (pip install -e .)")
    return root


def _prefect() -> str:
    exe = shutil.which("prefect", path=os.path.dirname(sys.executable)) or shutil.which("prefect")
    if not exe:
        raise InvalidInputError("the `prefect` command is not on PATH")
    return exe


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
    handle = log.open("ab")
    # A process group of its own, so Ctrl-C in the terminal reaches us first and we
    # stop the children in order.
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen, name: str) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    print(f"stopped {name}", flush=True)


def up(host: str = "127.0.0.1", port: int = 8000, prefect_port: int = 4200,
       logs: str = ".tunix-rt/logs") -> int:
    """Start the local stack and block until Ctrl-C (or SIGTERM)."""
    root = project_dir()
    log_dir = Path(logs).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    env = {**os.environ, "PREFECT_API_URL": api_url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # Pick up scheduled and triggered runs within a couple of seconds.
           "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "2")}
    env.pop("PREFECT_API_KEY", None)
    prefect = _prefect()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with ExitStack() as stack:
        server_env = {**env}
        server_env.pop("PREFECT_API_URL")
        server = _start([prefect, "server", "start", "--host", "127.0.0.1", "--port",
                         str(prefect_port)], server_env, log_dir / "prefect-server.log", root)
        stack.callback(_stop, server, "Prefect server")
        try:
            _wait_healthy(api_url, server, timeout=120)
            subprocess.run([prefect, "work-pool", "create", WORK_POOL, "--type", "process",
                            "--overwrite"], env=env, cwd=root, check=True,
                           capture_output=True)
            subprocess.run([prefect, "--no-prompt", "deploy", "--all"], env=env, cwd=root,
                           check=True, capture_output=True)
        except subprocess.CalledProcessError as exc:
            raise InvalidInputError(f"`{' '.join(exc.cmd[1:])}` failed: "
                                    f"{exc.stderr.decode(errors='replace')[-2000:]}") from None
        worker = _start([prefect, "worker", "start", "--pool", WORK_POOL], env,
                        log_dir / "worker.log", root)
        stack.callback(_stop, worker, "worker")
        print(f"Prefect UI      http://127.0.0.1:{prefect_port}\n"
              f"tunix-rt        http://{host}:{port}  (leaderboard page, /api, /webhooks)\n"
              f"logs            {log_dir}\n"
              "Ctrl-C stops everything.", flush=True)
        os.environ["PREFECT_API_URL"] = api_url
        try:
            from tunix_rt.flows.dispatch import EventDispatcher

            serve(host, port, dispatcher=EventDispatcher())
        except KeyboardInterrupt:
            pass
    return 0
