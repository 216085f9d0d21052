"""Real processes for the fault and load tests: ``tunix-rt serve``, ``tunix-rt sweep``, senders.

The receiver runs as the installed command in a subprocess of its own session, against
the database URL it is given, on a free loopback port, with no Prefect server
configured: it runs the quality loops in its own worker thread on Prefect's ephemeral
API, whose SQLite database lives under the ``PREFECT_HOME`` given here, so a test can
count afterwards how many quality-loop flow runs there were for each run. Its memory
is the resident set of the process and every process it started (the ephemeral
Prefect server is a child), read from ``/proc``.

Senders are the client library (:func:`tunix_rt.client.notify` with
``raise_on_error=True``) in several threads: what a fleet of training jobs does. The
load generator (:func:`start_load`) runs in a process of its own, an asyncio client
signing with :func:`tunix_rt.client.sign_delivery`, so its CPU is not the test's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.cli.conftest import tunix_rt_command
from tests.http.conftest import SECRET
from tests.waiting import wait_for
from tunix_rt import procs
from tunix_rt.client import NotifyResult, notify

START_S = 120  # a generous start deadline: imports on a loaded 2-core machine
STOP_GRACE_S = 15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """``pid`` and every live process descended from it (from /proc, zombies left out)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def rss_kib(pid: int, *, with_children: bool = True) -> int:
    """Resident memory (VmRSS, KiB) of ``pid``, plus its descendants' by default."""
    total = 0
    for each in (_descendants(pid) if with_children else [pid]):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:  # it ended between the listing and the read
            continue
    return total


def threads(pid: int) -> int:
    """How many threads ``pid`` runs (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tunix_rt_env(db_url: str, prefect_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``tunix-rt`` subprocess: this one's, the given database, the
    tests' webhook secret, a Prefect home of its own and no Prefect server."""
    env = dict(os.environ)
    for name in ("PREFECT_API_URL", "TUNIX_RT_API_TOKEN", "TUNIX_RT_WEBHOOK_SECRETS"):
        env.pop(name, None)
    env.update({"TUNIX_RT_DATABASE_URL": db_url, "TUNIX_RT_WEBHOOK_SECRET": SECRET,
                "PREFECT_HOME": str(prefect_home), "PREFECT_LOGGING_LEVEL": "WARNING",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra})
    return env


@dataclass
class Receiver:
    """A running ``tunix-rt serve``; ``url`` is its base URL, ``log`` its output."""

    proc: subprocess.Popen
    url: str
    log: Path
    prefect_home: Path

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhooks/training"

    def rss_kib(self) -> int:
        """The receiver's resident memory with its children's (the Prefect API's)."""
        return rss_kib(self.proc.pid)

    def healthz(self) -> int | None:
        """The status of GET /healthz, or None when nothing answered."""
        try:
            return httpx.get(f"{self.url}/healthz", timeout=10).status_code
        except httpx.HTTPError:
            return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL to its process group (with the Prefect API it started): a crash."""
        procs.signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM to its process group (and what it started), SIGKILL after a grace."""
        if self.proc.poll() is None:
            procs.stop_group(self.proc, STOP_GRACE_S, descendants=True)
        self.proc.wait()


def _dies_with_the_test() -> Callable[[], None] | None:
    """A test run killed outright must not leave its receiver running: the parent-death
    signal, set only from the main thread, since Linux sends it when the *thread* that
    started the child ends (a pool thread ends long before the test does)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return procs.parent_death_signal(signal.SIGTERM)


def start_receiver(db_url: str, tmp: Path, *, allow: Path, **env: str) -> Receiver:
    """Start ``tunix-rt serve`` on a free loopback port and wait for its /healthz.

    ``allow`` is the folder predictions files may be named under
    (``TUNIX_RT_PREDICTIONS_ALLOW``); ``env`` adds variables.
    """
    port = free_port()
    prefect_home = tmp / "prefect-home"
    prefect_home.mkdir(parents=True, exist_ok=True)
    log = tmp / f"serve-{port}.log"
    environment = tunix_rt_env(db_url, prefect_home, TUNIX_RT_PREDICTIONS_ALLOW=str(allow),
                               **env)
    with log.open("wb") as out:
        proc = subprocess.Popen([*tunix_rt_command(), "serve", "--port", str(port)],
                                env=environment, cwd=tmp, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_dies_with_the_test())
    receiver = Receiver(proc, f"http://127.0.0.1:{port}", log, prefect_home)
    try:
        wait_for(lambda: receiver.healthz() == 200, START_S, "tunix-rt serve's /healthz",
                 proc=proc, log=log, interval=0.25)
    except BaseException:
        receiver.stop()
        raise
    return receiver


def run_sweep(db_url: str, prefect_home: Path, cwd: Path, *, limit: int = 1000) -> int:
    """``tunix-rt sweep --older-than-minutes 0`` once; answers how many loops it started.

    It shares the receiver's Prefect home, so its quality-loop subflows are counted
    with the receiver's.
    """
    proc = subprocess.run([*tunix_rt_command(), "sweep", "--older-than-minutes", "0",
                           "--limit", str(limit), "--format", "json"],
                          env=tunix_rt_env(db_url, prefect_home), cwd=cwd, text=True,
                          capture_output=True, timeout=900)
    assert proc.returncode == 0, f"tunix-rt sweep failed\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return int(json.loads(proc.stdout)["redispatched"])


@dataclass(frozen=True)
class Completion:
    """One run.completed a sender sends (``delivery_id`` None: the client picks one)."""

    external_id: str
    predictions_uri: str
    dataset: str = "arithmetic"
    delivery_id: str | None = None


def send_completions(url: str, completions: Iterable[Completion], *, threads: int,
                     retries: int = 12, backoff: float = 0.2,
                     on_sent: Callable[[NotifyResult], None] | None = None
                     ) -> list[NotifyResult]:
    """Send each completion with the client library, from ``threads`` threads at once.

    ``retries`` and ``backoff`` are the client's: enough attempts to ride out a
    database restart (a 503 asks for 5 s). A notification that is still not delivered
    raises :class:`tunix_rt.client.NotifyError` here (``raise_on_error=True``).
    """
    def send(item: Completion) -> NotifyResult:
        result = notify("run.completed", external_id=item.external_id, name=item.external_id,
                        dataset=item.dataset, model="tiny", predictions_uri=item.predictions_uri,
                        metrics={"loss": 0.5}, url=url, secret=SECRET, retries=retries,
                        backoff=backoff, timeout=30, raise_on_error=True,
                        delivery_id=item.delivery_id)
        if on_sent is not None:
            on_sent(result)
        return result

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(send, list(completions)))


def write_arithmetic(path: Path, n: int = 5, *, wrong: Sequence[int] = ()) -> str:
    """A tiny predictions file of the arithmetic eval set (``n`` sums; the items whose
    index is in ``wrong`` are answered wrong); answers its absolute path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for i in range(n):
            a, b = 10 + i, 20 + 2 * i
            answer = a + b + (1 if i in wrong else 0)
            handle.write(json.dumps({
                "id": f"add-{i:03d}", "prompt": f"{a}+{b}=", "reference": str(a + b),
                "response": f"<reasoning>{a} plus {b}</reasoning><answer>{answer}</answer>",
            }) + "\n")
    return str(path.resolve())


def quality_loop_flow_runs(prefect_home: Path) -> dict[str, list[str]]:
    """run id -> the state types of its quality-loop flow runs, from the Prefect database
    of ``prefect_home`` (the receiver's ephemeral API and every sweep's write there)."""
    database = prefect_home / "prefect.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute(
            "SELECT flow_run.name, flow_run.state_type FROM flow_run "
            "JOIN flow ON flow.id = flow_run.flow_id WHERE flow.name = 'quality-loop'").fetchall()
    runs: dict[str, list[str]] = {}
    for name, state in rows:
        runs.setdefault(name.removeprefix("quality-loop-"), []).append(state)
    return runs


class Counter:
    """A thread-safe tally of what the senders saw (statuses, attempts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[Any, int] = {}

    def add(self, key: Any, n: int = 1) -> None:
        with self._lock:
            self.values[key] = self.values.get(key, 0) + n

    def __getitem__(self, key: Any) -> int:
        with self._lock:
            return self.values.get(key, 0)


# --- A load generator, run in a process of its own (python -m tests.reliability.processes)

def start_load(url: str, seconds: float, out: Path, *, predictions_uri: str,
               concurrency: int = 8, log: Path | None = None) -> subprocess.Popen:
    """Start the load generator: ``concurrency`` connections sending signed deliveries
    to ``url`` for ``seconds``; it writes what it sent and what came back to ``out``."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    args = [sys.executable, "-m", "tests.reliability.processes", "load", url, str(seconds),
            str(out), predictions_uri, str(concurrency)]
    sink = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(args, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                stdout=sink, stderr=subprocess.STDOUT,
                                preexec_fn=procs.parent_death_signal(signal.SIGTERM))
    finally:
        if log is not None:
            sink.close()


async def _load(url: str, seconds: float, out: Path, predictions_uri: str,
                concurrency: int) -> None:
    """Closed-loop load: each connection sends, waits for the answer, sends again.

    Per step: a new run (``run.started`` then ``run.completed``, each a new delivery)
    four times in five, else a retry of a delivery already acknowledged (the same
    webhook-id and body, signed anew: the receiver must answer 200 and store nothing).
    """
    import asyncio
    import random
    import time as clock
    import uuid

    from tunix_rt.client import sign_delivery

    endpoint = url.rstrip("/") + "/webhooks/training"
    acknowledged: dict[str, list[str]] = {}  # webhook-id -> [external id, type], 202s
    duplicates: list[str] = []         # webhook-ids answered 200
    other: dict[str, int] = {}         # any other answer (status or error) -> count
    bodies: list[tuple[str, bytes]] = []
    counts = {"requests": 0, "retries": 0}
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + seconds

    async def post(client: Any, msg_id: str, body: bytes) -> int | None:
        headers = sign_delivery(SECRET, msg_id, int(clock.time()), body)
        headers["content-type"] = "application/json"
        counts["requests"] += 1
        try:
            response = await client.post(endpoint, content=body, headers=headers)
        except httpx.HTTPError as exc:
            other[type(exc).__name__] = other.get(type(exc).__name__, 0) + 1
            return None
        return response.status_code

    async def connection(n: int) -> None:
        rng = random.Random(n)
        async with httpx.AsyncClient(timeout=60) as client:
            while loop.time() < deadline:
                if bodies and rng.random() < 0.2:
                    msg_id, body = rng.choice(bodies)
                    counts["retries"] += 1
                    status = await post(client, msg_id, body)
                    if status == 200:
                        duplicates.append(msg_id)
                    else:
                        other[str(status)] = other.get(str(status), 0) + 1
                    continue
                external_id = f"load-{uuid.uuid4().hex[:16]}"
                data = {"external_id": external_id, "name": external_id,
                        "dataset": "arithmetic", "model": "tiny"}
                for kind, extra in (("run.started", {"config": {"lr": rng.random()}}),
                                    ("run.completed", {"predictions_uri": predictions_uri,
                                                       "metrics": {"loss": rng.random()}})):
                    msg_id = f"msg_{uuid.uuid4().hex}"
                    body = json.dumps({"type": kind, "data": {**data, **extra}}).encode()
                    status = await post(client, msg_id, body)
                    if status == 202:
                        acknowledged[msg_id] = [external_id, kind]
                        bodies.append((msg_id, body))
                    else:
                        other[str(status)] = other.get(str(status), 0) + 1

    await asyncio.gather(*(connection(n) for n in range(concurrency)))
    elapsed = loop.time() - start
    out.write_text(json.dumps({"seconds": elapsed, "concurrency": concurrency, **counts,
                               "acknowledged": acknowledged, "duplicates": duplicates,
                               "other": other}))


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "load":
        import asyncio

        asyncio.run(_load(sys.argv[2], float(sys.argv[3]), Path(sys.argv[4]), sys.argv[5],
                          int(sys.argv[6])))
    else:
        sys.exit("usage: python -m tests.reliability.processes load URL SECONDS OUT "
                 "PREDICTIONS_URI CONCURRENCY")
