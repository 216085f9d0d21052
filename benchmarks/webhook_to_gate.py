"""webhook_to_gate: from a signed ``run.completed`` to the stored gate decision.

Signed deliveries for 500-item runs, one at a time (the next only once the last has its
gate), into the setups started here as a user starts them, on one PostgreSQL:

- ``tunix-rt up`` with Prefect's defaults for what tunix-rt can tune
  (PREFECT_WORKER_QUERY_SECONDS=10, the pull step, the engine as it would be without
  tuning, Prefect's server on SQLite: see ``DEFAULTS``);
- ``tunix-rt up`` tuned (``--prefect-db postgres``: Prefect's server on a PostgreSQL
  database of its own), and the same with Prefect's server on its default SQLite;
- the embedded mode: ``tunix-rt serve`` with no Prefect server, the loop run in the
  receiver's own process (SQLite, the newcomer's default, and PostgreSQL).

Each stage is read from the timestamps the parts store, on one machine's clock: the
client's send; the delivery's ``received_at``; the flow run's creation (the receiver
creates it through Prefect's API); its Pending state (the worker took it); its Running
state (the engine process started, imported, ran the pull step, loaded the flow); the
evaluation's ``started_at`` and ``finished_at``; the gate's ``created_at``. The
``tunix.run.completed`` event, emitted after the flow run is created, is off the path:
its arrival is reported beside the stages (``event``).
``python -m benchmarks.webhook_to_gate [--quick]`` runs it alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import httpx

from benchmarks.common import Result, Scale

TARGET_P95_S = 3.0
ITEMS = 500
IDLE_S = 15.0  # how long the idle stack's CPU use is measured, before the webhooks
ROOT = Path(__file__).resolve().parents[1]
# Prefect's own defaults for what `tunix-rt up` tunes ({home}: the setup's PREFECT_HOME).
PREFECT_SQLITE = {"PREFECT_API_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:///{home}/prefect.db"}
DEFAULTS = {"PREFECT_WORKER_QUERY_SECONDS": "10", "TUNIX_RT_WARM_ENGINE": "0",
            **PREFECT_SQLITE}
SQLITE_PREFECT = "stack tuned, Prefect on SQLite"
STAGES = ["receive", "dispatch", "worker pick-up", "engine start", "flow setup", "scoring",
          "gate", "event"]
EMBEDDED_STAGES = ["receive", "dispatch", "scoring", "gate"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ts(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _wait(predicate: Callable[[], Any], timeout: float, what: str,
          proc: subprocess.Popen | None = None, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"{what}: the process exited ({proc.returncode}): {tail}")
        time.sleep(0.05)
    tail = log.read_text()[-3000:] if log else ""
    raise RuntimeError(f"{what}: not within {timeout:g} s. {tail}")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _gate_row(db_url: str, external_id: str) -> dict[str, float] | None:
    from sqlalchemy import select

    from tunix_rt.store import db
    from tunix_rt.store.db import session_scope
    from tunix_rt.store.models import Evaluation, GateResult, Run, WebhookDelivery

    with session_scope(db.get_engine(db_url)) as session:
        run = session.scalar(select(Run).where(Run.external_id == external_id))
        if run is None:
            return None
        gate = session.scalar(select(GateResult).where(GateResult.run_id == run.id))
        if gate is None:
            return None
        evaluation = session.scalar(select(Evaluation).where(Evaluation.run_id == run.id))
        delivery = session.scalar(select(WebhookDelivery).where(WebhookDelivery.run_id == run.id)
                                  .where(WebhookDelivery.event_type == "run.completed"))
        return {"run_id": run.id, "received": _ts(delivery.received_at),
                "eval_started": _ts(evaluation.started_at),
                "eval_finished": _ts(evaluation.finished_at), "gate": _ts(gate.created_at),
                "decision": gate.decision}


def _prefect_times(api: str, run_id: str) -> dict[str, float]:
    """The event's receipt, the flow run's creation and its Pending and Running states."""
    with httpx.Client(base_url=api, timeout=30) as client:
        # The event follows the flow run's creation and Prefect stores events on their
        # own schedule: a fast loop can reach its gate before the event is readable.
        deadline = time.monotonic() + 60
        while True:
            events = client.post("/events/filter", json={"filter": {
                "event": {"name": ["tunix.run.completed"]},
                "resource": {"id": [f"tunix.run.{run_id}"]}}, "limit": 5}).json()["events"]
            if events or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not events:
            raise RuntimeError(f"no tunix.run.completed event for run {run_id} after 60 s")
        runs = [r for r in client.post("/flow_runs/filter", json={
            "flow_runs": {"tags": {"all_": ["tunix-rt"]}}, "sort": "EXPECTED_START_TIME_DESC",
            "limit": 50}).json() if r["parameters"].get("run_id") == run_id]
        flow_run = runs[-1]
        states = client.get("/flow_run_states/", params={"flow_run_id": flow_run["id"]}).json()
    when: dict[str, float] = {}
    for state in sorted(states, key=lambda s: s["timestamp"]):
        # The first Pending is the worker's (the engine proposes another as it starts).
        when.setdefault(state["type"], _ts(state["timestamp"]))
    return {"event": _ts(events[0]["received"]), "created": _ts(flow_run["created"]),
            "pending": when["PENDING"], "running": when["RUNNING"]}


def _send(url: str, folder: Path, external_id: str, secret: bytes) -> float:
    from tests.factories import correctness, write_predictions
    from tests.http.conftest import event, sign

    predictions = write_predictions(folder / f"{external_id}.jsonl",
                                    correctness(ITEMS, 0.8, hash(external_id) % 1000))
    body = event(external_id=external_id, predictions_uri=predictions)
    sent = time.time()
    response = httpx.post(f"{url}/webhooks/training", content=body,
                          headers=sign(body, secret=secret), timeout=60)
    if response.status_code != 202:
        raise RuntimeError(f"webhook answered {response.status_code}: {response.text}")
    return sent


def _tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its living descendants."""
    parent, cpu = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            parent[int(entry.name)] = int(fields[1])
            cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += [child for child, ppid in parent.items() if ppid == pid]
    return total


def idle_cpu_share(pid: int, seconds: float) -> float:
    """The share of one core the idle stack uses (its polling), over ``seconds``."""
    before, start = _tree_cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return (_tree_cpu_s(pid) - before) / (time.monotonic() - start)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _measure(label: str, db_url: str, folder: Path, n: int, *, stack: bool,
             extra_env: dict[str, str], up_args: tuple[str, ...] = ()
             ) -> list[dict[str, float]]:
    """Start the setup, send ``n`` webhooks one at a time, return each one's stage times."""
    from tests.http.conftest import SECRET, SECRET_BYTES

    port, prefect_port = _free_port(), _free_port()
    home = folder / f"prefect-home-{port}"
    env = {**os.environ, "TUNIX_RT_DATABASE_URL": db_url, "TUNIX_RT_WEBHOOK_SECRET": SECRET,
           "TUNIX_RT_PREDICTIONS_ALLOW": str(folder), "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_HOME": str(home),
           **{k: v.replace("{home}", str(home)) for k, v in extra_env.items()}}
    env.pop("PREFECT_API_URL", None)
    log = folder / f"{label.replace(' ', '_')}.log"
    bindir = Path(sys.executable).parent
    if stack:
        cmd = [str(bindir / "tunix-rt"), "up", "--port", str(port), "--prefect-port",
               str(prefect_port), "--logs", str(folder / f"logs-{port}"), *up_args]
    else:
        cmd = [str(bindir / "tunix-rt"), "serve", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    url, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prefect_port}/api"
    rows = []
    try:
        _wait(lambda: _healthy(f"{url}/healthz"), 900, f"{label}: start", proc, log)
        idle = idle_cpu_share(proc.pid, IDLE_S)
        print(f"           {label}: idle, the stack uses {idle:.1%} of a core", file=sys.stderr,
              flush=True)
        for i in range(n + 1):  # the first one warms up (caches, first imports): not counted
            external_id = f"{label.replace(' ', '-')}-{i:03d}"
            sent = _send(url, folder, external_id, SECRET_BYTES)
            got = _wait(lambda: _gate_row(db_url, external_id), 180,
                        f"{label}: the gate of {external_id}", proc, log)
            times = {"sent": sent, **got}
            if stack:
                times.update(_prefect_times(api, got["run_id"]))
            if i:
                rows.append({**times, "idle_cpu": idle})
            print(f"           {label} #{i}: {times['gate'] - sent:.2f} s", file=sys.stderr,
                  flush=True)
    finally:
        _stop(proc)
    return rows


def _stages(row: dict[str, float], stack: bool) -> dict[str, float]:
    if not stack:
        return {"receive": row["received"] - row["sent"],
                "dispatch": row["eval_started"] - row["received"],
                "scoring": row["eval_finished"] - row["eval_started"],
                "gate": row["gate"] - row["eval_finished"]}
    return {"receive": row["received"] - row["sent"],
            "dispatch": row["created"] - row["received"],
            "worker pick-up": row["pending"] - row["created"],
            "engine start": row["running"] - row["pending"],
            "flow setup": row["eval_started"] - row["running"],
            "scoring": row["eval_finished"] - row["eval_started"],
            "gate": row["gate"] - row["eval_finished"],
            # Not a stage: the event follows the flow run's creation (observers only).
            "event": row["event"] - row["received"]}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def summarize(rows: list[dict[str, float]], stack: bool) -> dict[str, Any]:
    totals = [r["gate"] - r["sent"] for r in rows]
    stages = [_stages(r, stack) for r in rows]
    names = STAGES if stack else EMBEDDED_STAGES
    return {"n": len(rows), "idle_cpu_share": round(rows[0]["idle_cpu"], 4),
            "p50_s": round(_pct(totals, 50), 3),
            "p95_s": round(_pct(totals, 95), 3), "max_s": round(max(totals), 3),
            "stages_median_s": {k: round(statistics.median(s[k] for s in stages), 3)
                                for k in names},
            "stages_p95_s": {k: round(_pct([s[k] for s in stages], 95), 3) for k in names},
            "totals_s": [round(t, 3) for t in totals]}


def _fmt_stages(summary: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in summary["stages_median_s"].items())


def run(new_db: Callable[[str], str], scale: Scale, sqlite_db: Callable[[str], str] | None = None
        ) -> list[Result]:
    n = 5 if scale.quick else 20
    # The defaults' side only sets the scale of the comparison: half as many (each ~10 s+).
    n_defaults = n if scale.quick else n // 2
    folder = Path(tempfile.mkdtemp(prefix="tunix-rt-bench-w2g-"))
    load = [os.getloadavg()[0]]
    figures: dict[str, dict[str, Any]] = {}
    setups: list[tuple[str, str, bool, dict[str, str], int]] = [
        ("stack defaults", new_db("w2g"), True, DEFAULTS, n_defaults),
        # Tuned, but Prefect's server on its default SQLite (`up` without --prefect-db).
        (SQLITE_PREFECT, new_db("w2g"), True, PREFECT_SQLITE, n),
        ("stack tuned", new_db("w2g"), True, {}, n),
        ("embedded postgresql", new_db("w2g"), False, {}, n),
    ]
    if sqlite_db is not None:
        setups.append(("embedded sqlite", sqlite_db("w2g"), False, {}, n))
    try:
        for label, url, stack, env, count in setups:
            figures[label] = summarize(_measure(
                label, url, folder, count, stack=stack, extra_env=env,
                up_args=("--prefect-db", "postgres") if label == "stack tuned" else ()), stack)
            load.append(os.getloadavg()[0])
            print(f"           {label}: p50 {figures[label]['p50_s']:.2f} s, p95 "
                  f"{figures[label]['p95_s']:.2f} s; medians: {_fmt_stages(figures[label])}; "
                  f"load {load[-1]:.2f}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    loads = f"load average (1 min) {' → '.join(f'{x:.2f}' for x in load)}"
    base = figures["stack defaults"]
    results = []
    for label, _, stack, _, _ in setups:
        if label == "stack defaults":
            continue
        ours = figures[label]
        met: bool | None = ours["p95_s"] <= TARGET_P95_S
        target = (f"p95 at most {TARGET_P95_S:g} s: {'met' if met else 'NOT MET'} "
                  f"({ours['p95_s']:.2f} s)")
        if label == SQLITE_PREFECT:  # the before, beside the after
            met = None
            target = (f"none (for comparison: `up` with Prefect's server on its default "
                      f"SQLite; p95 {ours['p95_s']:.2f} s)")
        results.append(Result(
            benchmark="webhook_to_gate", backend="postgresql" if "sqlite" not in label
            else "sqlite",
            size=f"{label}: {n} signed run.completed of {ITEMS} items, one at a time",
            ours_s=ours["p95_s"], naive_s=base["p95_s"],
            naive_label="tunix-rt up with Prefect's defaults (worker polls every 10 s), p95",
            notes=(f"p50 {ours['p50_s']:.2f} s, p95 {ours['p95_s']:.2f} s (defaults, "
                   f"{base['n']} webhooks: p50 "
                   f"{base['p50_s']:.2f} s, p95 {base['p95_s']:.2f} s); stage medians, s: "
                   f"{_fmt_stages(ours)} (defaults: {_fmt_stages(base)}); idle CPU "
                   f"{ours['idle_cpu_share']:.1%} of a core (defaults "
                   f"{base['idle_cpu_share']:.1%}); {loads}"),
            target=target, met=met,
            extra={"figures": ours, "defaults": base, "loadavg_1min": load}))
    return results


def main() -> None:
    from benchmarks.common import FULL, QUICK, databases

    quick = "--quick" in sys.argv
    with databases() as dbs:
        for r in run(dbs["postgresql"], QUICK if quick else FULL, dbs["sqlite"]):
            print(f"{r.size}\n  {r.notes}\n  target {r.target}")


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    main()
