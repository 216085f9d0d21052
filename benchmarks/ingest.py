"""webhook_ingest: sustained signed deliveries per second into ``tunix-rt serve``, on PostgreSQL.

Each side is a server in a process of its own on a loopback port, loaded for the same
time by one load generator, itself a separate process (``python -m benchmarks.ingest
load``): ``connections`` keep-alive HTTP/1.1 connections on asyncio, closed loop (send,
read the answer, send again), each request signed with the client library's signer
(:func:`tunix_rt.client.sign_delivery`). The generator shares the machine's cores with
the server and PostgreSQL: on a 2-core machine every figure here is the three of them
together.

The load: new runs over and over (``run.started``, then ``run.completed``, each a new
``webhook-id``), and one request in ten a retry of a delivery already acknowledged
(the same id and body, signed anew), which must be answered 200 and stored nothing.

- ours: ``tunix-rt serve`` with 1 and 2 worker processes (``--workers``), ingest only
  (``--no-dispatch``: the loops completed runs owe stay in the outbox for a worker
  elsewhere, as in production with a Prefect server); and with 1 worker running the
  quality loops in its own process (the embedded default without a Prefect server);
  and, for the before and after side by side, 1 worker storing each delivery in a
  transaction of its own (``TUNIX_RT_WEBHOOK_BATCH=1``, the path before group commit);
- naive: a bare Starlette endpoint on the same uvicorn that does the same HMAC check
  (``standardwebhooks``) and nothing else, with as many workers.

Afterwards the rows are counted: every 202 is a stored delivery (0 lost), no retry
stored anything or was answered 202 (0 duplicated), one run per external id, one
dispatch per completed run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from benchmarks.common import Result, Scale

SECRET = "whsec_" + "dHVuaXgtcnQgYmVuY2htYXJrIHNlY3JldCwgMzIgYnl0ZXM="  # 32 bytes, base64
PATH = "/webhooks/training"
CONNECTIONS = 32
RETRY_SHARE = 0.1
TARGET_RATE = 1000.0  # deliveries a second on PostgreSQL
TARGET_SHARE = 0.5    # of the bare endpoint's rate
ROOT = Path(__file__).resolve().parents[1]


# --- the naive side: a bare endpoint -------------------------------------------------------

def bare_app() -> Any:
    """A Starlette app that checks the Standard Webhooks signature and answers 202."""
    from standardwebhooks.webhooks import Webhook
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    hook = Webhook(SECRET)

    async def receive(request: Any) -> JSONResponse:
        body = await request.body()
        try:
            hook.verify(body, dict(request.headers), json_parse=False)
        except Exception:  # noqa: BLE001 - any failure is a rejected signature
            return JSONResponse({"error": "signature rejected"}, status_code=401)
        return JSONResponse({"status": "accepted"}, status_code=202)

    async def healthz(_request: Any) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route(PATH, receive, methods=["POST"]),
                             Route("/healthz", healthz)])


# --- the load generator (a process of its own) ---------------------------------------------

async def _connection(port: int, deadline: float, warm_until: float, state: dict[str, Any],
                      rng: random.Random, uri: str) -> None:
    """One keep-alive connection sending signed deliveries until ``deadline``."""
    from tunix_rt.client import sign_delivery

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    head = f"POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"

    async def post(msg_id: str, body: bytes) -> int | None:
        nonlocal reader, writer
        headers = sign_delivery(SECRET, msg_id, int(time.time()), body)
        request = (head + f"content-length: {len(body)}\r\n"
                   + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
        sent = loop.time()
        try:
            writer.write(request + body)
            answer = await reader.readuntil(b"\r\n\r\n")
            status = int(answer[9:12])
            length = 0
            for line in answer.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            state["errors"][type(exc).__name__] = state["errors"].get(type(exc).__name__, 0) + 1
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            return None
        done = loop.time()
        if done >= warm_until and done <= deadline:
            state["measured"] += 1
            state["latencies"].append(done - sent)
        state["requests"] += 1
        return status

    try:
        while loop.time() < deadline:
            if state["acknowledged"] and rng.random() < RETRY_SHARE:
                msg_id, body = rng.choice(state["bodies"])
                status = await post(msg_id, body)
                state["retries"] += 1
                if status == 200:
                    state["retries_200"] += 1
                else:
                    key = str(status)
                    state["other"][key] = state["other"].get(key, 0) + 1
                continue
            external_id = f"ingest-{uuid.uuid4().hex[:20]}"
            data = {"external_id": external_id, "name": external_id, "dataset": "arithmetic",
                    "model": "tiny"}
            for kind, extra in (("run.started", {"config": {"lr": rng.random()}}),
                                ("run.completed", {"predictions_uri": uri,
                                                   "metrics": {"loss": rng.random()}})):
                msg_id = f"msg_{uuid.uuid4().hex}"
                body = json.dumps({"type": kind, "data": {**data, **extra}}).encode()
                status = await post(msg_id, body)
                if status == 202:
                    state["acknowledged"][msg_id] = (external_id, kind)
                    if len(state["bodies"]) < 5000:
                        state["bodies"].append((msg_id, body))
                else:
                    key = str(status)
                    state["other"][key] = state["other"].get(key, 0) + 1
                    break  # a run whose start was not acknowledged is not completed
    finally:
        writer.close()


async def _load(port: int, seconds: float, warmup: float, connections: int, uri: str,
                out: Path) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    state: dict[str, Any] = {"requests": 0, "measured": 0, "retries": 0, "retries_200": 0,
                             "acknowledged": {}, "bodies": [], "other": {}, "errors": {},
                             "latencies": []}
    await asyncio.gather(*(_connection(port, start + warmup + seconds, start + warmup, state,
                                       random.Random(n), uri) for n in range(connections)))
    lat = sorted(state.pop("latencies"))
    state.pop("bodies")
    state["acknowledged"] = {k: list(v) for k, v in state["acknowledged"].items()}
    state.update(seconds=seconds, rate=state["measured"] / seconds,
                 latency_ms={"p50": round(1e3 * lat[len(lat) // 2], 2) if lat else None,
                             "p99": round(1e3 * lat[int(len(lat) * 0.99)], 2) if lat else None})
    out.write_text(json.dumps(state))


def load(port: int, seconds: float, *, warmup: float, connections: int = CONNECTIONS,
         uri: str, folder: Path) -> dict[str, Any]:
    """Run the load generator in a process of its own; what it sent and got back."""
    out = folder / f"load-{port}.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ingest", "load", str(port),
                           str(seconds), str(warmup), str(connections), uri, str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=seconds + warmup + 300)
    if proc.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


# --- servers --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n"
                               f"{log.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server did not answer within {timeout:g} s")


@contextmanager
def server(cmd: list[str], env: dict[str, str], folder: Path, name: str,
           port: int) -> Iterator[subprocess.Popen]:
    """A server process (its own session, so its workers stop with it)."""
    log = folder / f"{name}.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(port, proc, log)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _serve_env(db_url: str, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "TUNIX_RT_API_TOKEN", "TUNIX_RT_WEBHOOK_SECRETS")}
    prefect_home = folder / f"prefect-{uuid.uuid4().hex[:8]}"
    prefect_home.mkdir()
    env.update(TUNIX_RT_DATABASE_URL=db_url, TUNIX_RT_WEBHOOK_SECRET=SECRET,
               TUNIX_RT_PREDICTIONS_ALLOW=str(folder), PREFECT_HOME=str(prefect_home),
               PREFECT_LOGGING_LEVEL="WARNING", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return env


def measure_serve(db_url: str, folder: Path, *, workers: int, dispatch: bool, seconds: float,
                  warmup: float, uri: str, batch: int | None = None) -> dict[str, Any]:
    """Load ``tunix-rt serve`` and count its rows afterwards. ``batch``: its
    TUNIX_RT_WEBHOOK_BATCH (1: one transaction per delivery, the path before group commit)."""
    port = _free_port()
    # --no-access-log as the bare side runs: a log line per request (~0.12 ms of CPU) is
    # the server's setting, not the receiver's work, and both sides run the same server.
    cmd = [sys.executable, "-m", "tunix_rt.cli", "serve", "--port", str(port),
           "--workers", str(workers), "--no-access-log"] + ([] if dispatch else ["--no-dispatch"])
    name = f"serve-w{workers}-{'loops' if dispatch else 'ingest'}-b{batch}"
    env = _serve_env(db_url, folder)
    if batch is not None:
        env["TUNIX_RT_WEBHOOK_BATCH"] = str(batch)
    with server(cmd, env, folder, name, port):
        sent = load(port, seconds, warmup=warmup, uri=uri, folder=folder)
    sent["rows"] = count_rows(db_url, sent)
    return sent


def measure_bare(folder: Path, *, workers: int, seconds: float, warmup: float,
                 uri: str) -> dict[str, Any]:
    port = _free_port()
    cmd = [sys.executable, "-m", "uvicorn", "benchmarks.ingest:bare_app", "--factory",
           "--port", str(port), "--workers", str(workers), "--log-level", "warning",
           "--no-access-log"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with server(cmd, env, folder, f"bare-w{workers}", port):
        return load(port, seconds, warmup=warmup, uri=uri, folder=folder)


def count_rows(db_url: str, sent: dict[str, Any]) -> dict[str, int]:
    """What the database holds against what was acknowledged: lost, duplicated."""
    from sqlalchemy import func, select

    from tunix_rt.store.db import make_engine, session_scope
    from tunix_rt.store.models import Dispatch, Run, WebhookDelivery

    engine = make_engine(db_url)
    try:
        with session_scope(engine) as session:
            stored = set(session.scalars(select(WebhookDelivery.id)))
            runs = dict(session.execute(select(Run.external_id, Run.status)).all())
            dispatches = dict(session.execute(
                select(Run.external_id, func.count(Dispatch.id))
                .join(Dispatch, Dispatch.run_id == Run.id).group_by(Run.external_id)).all())
    finally:
        engine.dispose()
    acknowledged = sent["acknowledged"]
    completed = {e for e, kind in acknowledged.values() if kind == "run.completed"}
    return {
        "acknowledged": len(acknowledged), "stored": len(stored),
        "lost": len(set(acknowledged) - stored),
        # A retry stores nothing (answered 200); one answered otherwise was acted on twice.
        "duplicated": sent["retries"] - sent["retries_200"],
        "runs": len(runs), "completed_runs": len(completed),
        "completed_without_one_dispatch": sum(1 for e in completed if dispatches.get(e) != 1),
        "runs_not_completed": sum(1 for e in completed if runs.get(e) != "completed"),
    }


# --- the benchmark --------------------------------------------------------------------------

def write_predictions(path: Path, n: int = 5) -> str:
    """A tiny predictions file of the arithmetic eval set (for the in-process loops)."""
    with path.open("w") as handle:
        for i in range(n):
            a, b = 10 + i, 20 + 2 * i
            handle.write(json.dumps({"id": f"add-{i:03d}", "prompt": f"{a}+{b}=",
                                     "reference": str(a + b),
                                     "response": f"<answer>{a + b}</answer>"}) + "\n")
    return str(path.resolve())


def _summary(label: str, got: dict[str, Any]) -> dict[str, Any]:
    out = {"label": label, "rate_per_s": round(got["rate"], 1), "requests": got["requests"],
           "latency_ms": got["latency_ms"], "other": got["other"], "errors": got["errors"]}
    if "rows" in got:
        out["rows"] = got["rows"]
    return out


def run(new_db: Callable[[str], str], scale: Scale) -> list[Result]:
    seconds, warmup = (5.0, 2.0) if scale.quick else (60.0, 5.0)
    seconds = float(os.environ.get("TUNIX_RT_BENCH_INGEST_S", seconds))  # a shorter full run
    folder = Path(tempfile.mkdtemp(prefix="tunix-rt-bench-ingest-"))
    uri = write_predictions(folder / "predictions.jsonl")
    figures: dict[str, dict[str, Any]] = {}
    for workers in (1, 2):
        figures[f"bare_w{workers}"] = _summary(
            f"bare Starlette + HMAC, {workers} worker(s)",
            measure_bare(folder, workers=workers, seconds=seconds, warmup=warmup, uri=uri))
        figures[f"serve_w{workers}"] = _summary(
            f"tunix-rt serve --workers {workers} --no-dispatch --no-access-log",
            measure_serve(new_db("ingest"), folder, workers=workers, dispatch=False,
                          seconds=seconds, warmup=warmup, uri=uri))
    # Before group commit, side by side: one transaction per delivery, in the threadpool.
    figures["serve_w1_per_delivery"] = _summary(
        "tunix-rt serve --workers 1 --no-dispatch --no-access-log, TUNIX_RT_WEBHOOK_BATCH=1",
        measure_serve(new_db("ingest"), folder, workers=1, dispatch=False, seconds=seconds,
                      warmup=warmup, uri=uri, batch=1))
    figures["serve_w1_loops"] = _summary(
        "tunix-rt serve, quality loops in its own process",
        measure_serve(new_db("ingest"), folder, workers=1, dispatch=True, seconds=seconds,
                      warmup=warmup, uri=uri))
    load_avg = os.getloadavg()[0]
    print(f"webhook_ingest: load average (1 min) after {load_avg:.2f}", file=sys.stderr)
    results = []
    scaling = figures["serve_w2"]["rate_per_s"] / max(figures["serve_w1"]["rate_per_s"], 1e-9)
    for key, bare_key, what in (("serve_w1", "bare_w1", "1 worker, ingest only"),
                                ("serve_w2", "bare_w2", "2 workers, ingest only"),
                                ("serve_w1_per_delivery", "bare_w1",
                                 "1 worker, one transaction per delivery (before)"),
                                ("serve_w1_loops", "bare_w1", "1 worker, loops in-process")):
        ours, bare = figures[key], figures[bare_key]
        rows = ours["rows"]
        share = ours["rate_per_s"] / max(bare["rate_per_s"], 1e-9)
        clean = rows["lost"] == 0 and rows["duplicated"] == 0 and not ours["other"] \
            and rows["completed_without_one_dispatch"] == 0
        met = ours["rate_per_s"] >= TARGET_RATE and share >= TARGET_SHARE and clean
        before = figures["serve_w1_per_delivery"]["rate_per_s"]
        gain = (f"; group commit ×{ours['rate_per_s'] / max(before, 1e-9):.2f} over one "
                f"transaction per delivery ({before:,.0f}/s)" if key == "serve_w1" else "")
        results.append(Result(
            benchmark="webhook_ingest", backend="postgresql",
            size=f"{what}, {seconds:g} s, {CONNECTIONS} connections",
            ours_s=1.0 / max(ours["rate_per_s"], 1e-9), naive_s=1.0 / max(bare["rate_per_s"],
                                                                           1e-9),
            naive_label=f"bare Starlette + HMAC check ({bare_key[-2:]})",
            notes=(f"{ours['rate_per_s']:,.0f} deliveries/s vs {bare['rate_per_s']:,.0f}/s bare; "
                   f"{rows['acknowledged']:,} acknowledged, {rows['lost']} lost, "
                   f"{rows['duplicated']} duplicated; p50 {ours['latency_ms']['p50']} ms, "
                   f"p99 {ours['latency_ms']['p99']} ms; 1→2 workers ×{scaling:.2f}{gain}; "
                   f"the load generator shares the {os.cpu_count()} cores; times are s per "
                   "delivery"),
            target=(f"≥ {TARGET_RATE:,.0f}/s and ≥ {TARGET_SHARE:.0%} of bare, 0 lost, 0 "
                    f"duplicated: {'met' if met else 'NOT MET'}"
                    if key in ("serve_w1", "serve_w2") else
                    f"none (the path before group commit, for comparison; 0 lost: "
                    f"{'met' if clean else 'NOT MET'})" if key == "serve_w1_per_delivery" else
                    f"none (loops compete for the cores; 0 lost: "
                    f"{'met' if clean else 'NOT MET'})"),
            extra={"ours": ours, "bare": bare, "scaling_1_to_2_workers": round(scaling, 2),
                   "loadavg_1min_after": round(load_avg, 2)}))
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return results


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "load":
        asyncio.run(_load(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]),
                          int(sys.argv[5]), sys.argv[6], Path(sys.argv[7])))
    else:
        sys.exit("usage: python -m benchmarks.ingest load PORT SECONDS WARMUP CONNECTIONS URI "
                 "OUT")
