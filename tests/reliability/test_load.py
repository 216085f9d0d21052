"""Sustained load on ``tunix-rt serve`` (PostgreSQL): nothing lost, memory flat, the rate on record.

A load generator in a process of its own (tests/reliability/processes.py: 8 keep-alive
connections, closed loop) sends signed deliveries for LOAD_SECONDS (default 60): new
runs, each ``run.started`` then ``run.completed``, and retries of deliveries already
acknowledged. The receiver runs as the installed command, with its quality loops in its
own worker thread as it does without a Prefect server; completions arrive far faster
than loops run, so a backlog of owed loops builds up while the test runs.

The test samples the receiver's resident memory every second and checks:

- nothing is lost: every delivery acknowledged with a 202 is stored, once; every retry
  was answered 200 and stored nothing; every run acknowledged is there, completed with
  exactly one dispatch; no answer was a 5xx.
- memory is flat: the receiver runs as many threads at the end as after the warm-up
  (medians of the last 20 s and of 10-30 s, within 10), and the median RSS of its own
  process over the last 20 s is within 30 MiB of the median of 10-30 s. Between the
  middles of the two windows lie 30 s of requests: 2,000 at the 65 a second a loaded
  2-core machine manages, more on a quiet one, so a leak of 15 KiB a request fails the
  test (and a few KiB a request over a run of LOAD_SECONDS=600); medians of a steady
  process differ by a few MiB at most. The Prefect API the receiver starts as a child,
  whose database grows with every flow run on record, is recorded, not held to this.

The figures (rate, RSS and thread samples, medians) go to ``load.json`` in the
module's temporary folder and to stdout (``pytest -s``), and are attached to the
memory test's report (``record_property``). One load run serves both tests.

Found and fixed: the receiver's local worker (flows/dispatch.py, LocalDispatcher) held a
lease-renewing thread for every loop waiting in its queue, so under a backlog its threads
and memory grew with the backlog (about 20 KiB and one thread per owed loop, ~20 a second
here). One thread now renews the whole queue's leases.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.pgserver import create_database
from tests.reliability import processes
from tunix_rt.store import db
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Dispatch, Run, WebhookDelivery

pytestmark = [pytest.mark.reliability, pytest.mark.postgres, pytest.mark.cli]

LOAD_SECONDS = float(os.environ.get("LOAD_SECONDS", "60"))
GROWTH_LIMIT_MIB = 30.0
THREADS_LIMIT = 10


@dataclass
class LoadRun:
    db_url: str
    folder: Path
    sent: dict[str, Any]
    log: str
    samples: list[tuple[float, int, int, int]]  # seconds in, KiB, KiB with children, threads


@pytest.fixture(scope="module")
def load_run(pg_admin_url: str, pg_template: str,
             tmp_path_factory: pytest.TempPathFactory) -> LoadRun:
    """LOAD_SECONDS of load on a receiver of its own; the receiver sampled every second."""
    assert LOAD_SECONDS >= 40, "LOAD_SECONDS: at least 40 (warm-up, two windows)"
    folder = tmp_path_factory.mktemp("load")
    url = create_database(pg_admin_url, template=pg_template)
    allow = folder / "predictions"
    uri = processes.write_arithmetic(allow / "load.jsonl", wrong=[1])
    receiver = processes.start_receiver(url, folder, allow=allow)
    out = folder / "sent.json"
    samples: list[tuple[float, int, int, int]] = []
    try:
        generator = processes.start_load(receiver.url, LOAD_SECONDS, out, predictions_uri=uri,
                                         log=folder / "load.log")
        start = time.monotonic()
        while generator.poll() is None:
            assert receiver.alive(), receiver.log_text()[-4000:]
            pid = receiver.proc.pid
            samples.append((time.monotonic() - start, processes.rss_kib(pid, with_children=False),
                            receiver.rss_kib(), processes.threads(pid)))
            time.sleep(1.0)  # the sampling period, not a wait for something to happen
        assert generator.returncode == 0, (folder / "load.log").read_text()[-4000:]
        return LoadRun(url, folder, json.loads(out.read_text()), receiver.log_text(), samples)
    finally:
        receiver.stop()


def _median(samples: list[tuple[float, int, int, int]], start: float, end: float,
            column: int) -> float:
    """Median of one column of the samples taken between ``start`` and ``end`` seconds in."""
    window = [s[column] for s in samples if start <= s[0] < end]
    assert window, f"no sample between {start:g} s and {end:g} s"
    return statistics.median(window)


def test_under_load_every_acknowledged_delivery_is_stored_once(load_run: LoadRun) -> None:
    sent = load_run.sent
    acknowledged = {m: external_id for m, (external_id, _) in sent["acknowledged"].items()}
    completed = {external_id for external_id, kind in sent["acknowledged"].values()
                 if kind == "run.completed"}
    with session_scope(db.get_engine(load_run.db_url)) as session:
        stored = set(session.scalars(select(WebhookDelivery.id)))
        runs = dict(session.execute(select(Run.external_id, Run.status)).all())
        dispatches = dict(session.execute(
            select(Run.external_id, func.count(Dispatch.id))
            .join(Dispatch, Dispatch.run_id == Run.id).group_by(Run.external_id)).all())
    assert sent["other"] == {}, f"answers other than 202 and 200: {sent['other']}"
    assert sent["requests"] > 100 and completed
    assert stored == set(acknowledged), "stored deliveries differ from those acknowledged"
    assert len(sent["duplicates"]) == sent["retries"]  # every retry: 200, nothing stored
    assert set(runs) == set(acknowledged.values())
    assert {runs[e] for e in completed} == {"completed"}
    assert dispatches == dict.fromkeys(completed, 1)
    assert " 500 Internal Server Error" not in load_run.log and "Traceback" not in load_run.log


def test_under_load_the_receivers_memory_stays_flat(
        load_run: LoadRun, record_property: pytest.RecordProperty) -> None:
    sent, samples = load_run.sent, load_run.samples
    end = samples[-1][0]
    figures: dict[str, Any] = {
        "seconds": round(sent["seconds"], 1), "requests": sent["requests"],
        "deliveries_per_s": round(sent["requests"] / sent["seconds"], 1),
        "acknowledged_202": len(sent["acknowledged"]), "retries_200": sent["retries"],
    }
    for name, column, scale in (("rss_mib_receiver", 1, 1024),
                                ("rss_mib_with_children", 2, 1024), ("threads", 3, 1)):
        warm = _median(samples, 10, 30, column) / scale
        late = _median(samples, end - 20, end + 1, column) / scale
        figures[name] = {"10-30s": round(warm, 1), "last_20s": round(late, 1),
                         "growth": round(late - warm, 1)}
    figures["samples"] = [[round(t, 1), kib, kib_all, n] for t, kib, kib_all, n in samples]
    (load_run.folder / "load.json").write_text(json.dumps(figures, indent=1))
    for key in ("deliveries_per_s", "requests", "rss_mib_receiver", "rss_mib_with_children",
                "threads"):
        record_property(key, figures[key])
    print(f"\nload: {json.dumps({k: v for k, v in figures.items() if k != 'samples'})}")
    assert figures["threads"]["growth"] <= THREADS_LIMIT, (
        f"the receiver's threads grew under load: {figures['threads']}")
    assert figures["rss_mib_receiver"]["growth"] < GROWTH_LIMIT_MIB, (
        f"the receiver's RSS grew under load: {figures['rss_mib_receiver']}")
