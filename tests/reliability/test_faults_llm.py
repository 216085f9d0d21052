"""Faults under the llm judge, with real processes: a killed loop, a failing provider.

``tunix-rt evaluate`` runs as a subprocess (on the session's Prefect server, or on
none), against a real PostgreSQL and the fake OpenAI server (a real HTTP server: the
only stand-in, for the LLM provider). The tests watch the provider's request log, the
database and the process table, never the loop's insides.

- SIGKILL to the process group in the middle of LLM scoring, then the same command
  again: the evaluation completes once, with one verdict per item, and the second
  process pays only for the items whose verdicts were not in the cache when the first
  one died (the judge writes its cache while it scores; in process too, below).
- SIGKILL to the command alone, as the OOM killer sends it, with no Prefect server
  configured: the local Prefect server the command needed goes down with it.
- A provider failing 30% of calls (500, 502, 503, and hangs past the client's
  timeout), decided by a seeded hash of (item, attempt): every evaluation completes;
  each item is scored, or unscored and counted when all its attempts failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from tests.cli.conftest import COMMAND
from tests.factories import make_run
from tests.fakes.openai_server import FakeOpenAI, Reply, fake_openai
from tests.proctable import children, running
from tests.waiting import wait_for
from tunix_rt.judges import Item, ScoringContext
from tunix_rt.judges.llm import LLMConfig, LLMJudge, MemoryCache
from tunix_rt.quality.leaderboard import leaderboard_page
from tunix_rt.store.db import session_scope
from tunix_rt.store.models import Evaluation, JudgeCacheEntry, Verdict

pytestmark = pytest.mark.reliability


def on_postgres(test: Any) -> Any:
    """A test of real processes (the CLI running the loop) on PostgreSQL."""
    for mark in (pytest.mark.parametrize("db_url", ["postgres"], indirect=True),
                 pytest.mark.postgres, pytest.mark.cli, pytest.mark.flows):
        test = mark(test)
    return test


# Safety nets for a hung process on a loaded machine, never a claim about speed.
PROCESS_TIMEOUT_S = 300
WAIT_S = 120
SERVER_WAIT_S = 240  # a Prefect server's first start migrates its database

PROMPT = re.compile(r"(?:run (\d+): )?what is (\d+)\?")


def item_of(request: dict[str, Any]) -> tuple[int, int]:
    """(run, item) of a grading request, read from the item's prompt in the message."""
    match = PROMPT.search(request["messages"][-1]["content"])
    assert match, "a grading request without an item prompt"
    return int(match.group(1) or 0), int(match.group(2))


def grade(request: dict[str, Any], i: int) -> Reply:
    """The right grade: the candidate's answer is right iff it is the item's number."""
    right = f"<answer>{i}</answer>" in request["messages"][-1]["content"]
    return Reply.json(1.0 if right else 0.0, f"item {i}")


def start_evaluate(run_id: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``tunix-rt evaluate RUN --judge llm`` in its own process group: stderr to ``log``,
    the JSON result to ``log`` with the suffix .json (files: no pipe to fill up)."""
    with log.open("w") as err, log.with_suffix(".json").open("w") as out:
        return subprocess.Popen([*COMMAND, "evaluate", run_id, "--judge", "llm",
                                 "--format", "json"], env=env, stdout=out, stderr=err,
                                text=True, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path) -> dict[str, Any]:
    """Wait for the command; its JSON result."""
    code = proc.wait(timeout=PROCESS_TIMEOUT_S)
    assert code == 0, f"tunix-rt evaluate exited {code}\n{log.read_text(errors='replace')[-6000:]}"
    return json.loads(log.with_suffix(".json").read_text())


def env_for(prefect_api_url: str | None, provider: FakeOpenAI, **extra: str) -> dict[str, str]:
    """The command's environment: the session's Prefect server, or (None) none at all."""
    env = dict(os.environ, TUNIX_RT_LLM_BASE_URL=provider.base_url,
               TUNIX_RT_LLM_MODEL="judge-model", **extra)
    env.pop("PREFECT_API_URL", None)
    if prefect_api_url is not None:
        env["PREFECT_API_URL"] = prefect_api_url
    return env


def cached_items(engine: Engine) -> list[int]:
    """The item of every judge_cache row (the grader puts it in the rationale)."""
    with session_scope(engine) as session:
        verdicts = session.scalars(select(JudgeCacheEntry.verdict)).all()
    return [int(v["rationale"].removeprefix("item ")) for v in verdicts]


# --- the judge writes its cache while it scores (in process) ----------------------------

def items(n: int) -> list[Item]:
    return [Item(id=f"q{i:03d}", prompt=f"what is {i}?", response=f"<answer>{i}</answer>",
                 reference=str(i)) for i in range(n)]


def until(predicate: Any, timeout: float = WAIT_S) -> bool:
    """Whether ``predicate`` came true before ``timeout`` (a provider waiting on the judge)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


class FailingCache(MemoryCache):
    """A cache whose first ``failures`` writes fail (a database that went away)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    def put_many(self, entries: dict[str, dict]) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise OSError("the database went away")
        super().put_many(entries)


def judge_on(provider: FakeOpenAI, cache: Any) -> LLMJudge:
    config = LLMConfig(base_url=provider.base_url, model="judge-model", backoff_s=0.01,
                       timeout_s=float(PROCESS_TIMEOUT_S), max_concurrency=4)
    return LLMJudge("correctness", config, cache=cache)


CTX = ScoringContext(run_id="run-1", dataset="arith", model="policy")


def test_bought_verdicts_reach_the_cache_while_other_items_are_still_asked() -> None:
    cache = MemoryCache()
    seen: dict[str, int] = {}

    def grader(request: dict[str, Any], attempt: int) -> Reply:
        _, i = item_of(request)
        if i == 5:  # the last item is answered only once the others are in the cache
            until(lambda: len(cache.entries) == 5)
            seen["cached"] = len(cache.entries)
        return grade(request, i)

    with fake_openai(grader) as provider:
        verdicts = judge_on(provider, cache).score(items(6), CTX)
    assert seen["cached"] == 5
    assert [v.score for v in verdicts] == [1.0] * 6 and len(cache.entries) == 6


def test_a_failed_cache_write_is_tried_again_and_nothing_bought_is_lost() -> None:
    cache = FailingCache(failures=1)

    def grader(request: dict[str, Any], attempt: int) -> Reply:
        _, i = item_of(request)
        if i >= 3:  # the first write (items 0-2) fails before these are answered
            until(lambda: cache.attempts >= 1)
        return grade(request, i)

    with fake_openai(grader) as provider:
        verdicts = judge_on(provider, cache).score(items(6), CTX)
    assert cache.attempts >= 2 and len(cache.entries) == 6
    assert all(v.scored for v in verdicts)


def test_a_cache_that_takes_no_write_fails_the_scoring_as_before() -> None:
    with fake_openai(Reply.json(1.0)) as provider, pytest.raises(OSError, match="went away"):
        judge_on(provider, FailingCache(failures=10**6)).score(items(3), CTX)


# --- SIGKILL in the middle of scoring ----------------------------------------------------

N = 60
PAID_BEFORE_KILL = 24  # the provider answers this many items, then holds every request
CONCURRENCY = 8  # TUNIX_RT_LLM_MAX_CONCURRENCY: requests the judge keeps in flight


class GatedGrader:
    """Answers the first ``limit`` items (after a short delay), then holds each request
    until ``opened``: the loop is stopped mid-scoring at a point the test knows."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.answered: set[int] = set()
        self.opened = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any], attempt: int) -> Reply:
        _, i = item_of(request)
        with self._lock:
            let_through = (self.opened.is_set() or i in self.answered
                           or len(self.answered) < self.limit)
            if let_through and not self.opened.is_set():
                self.answered.add(i)
        if not let_through:
            self.opened.wait(PROCESS_TIMEOUT_S)
        return Reply(content=grade(request, i).content, delay=0.1)


@on_postgres
def test_a_loop_killed_mid_scoring_completes_on_rerun_and_pays_only_for_the_rest(
        engine: Engine, prefect_api_url: str, tmp_path: Path) -> None:
    run_id = make_run(engine, tmp_path, "killed", [i % 3 != 0 for i in range(N)])
    grader = GatedGrader(PAID_BEFORE_KILL)
    with fake_openai(grader) as provider:
        # A timeout far beyond the test: held requests stay in flight until the kill.
        env = env_for(prefect_api_url, provider, TUNIX_RT_LLM_TIMEOUT_S="600",
                      TUNIX_RT_LLM_MAX_CONCURRENCY=str(CONCURRENCY))
        first_log = tmp_path / "first.log"
        first = start_evaluate(run_id, env, first_log)
        try:
            # Every verdict bought is committed while the rest are still being asked
            # (every slot of the judge holds a request the provider has not answered).
            wait_for(lambda: len(grader.answered) == PAID_BEFORE_KILL
                     and provider.in_flight == CONCURRENCY
                     and len(cached_items(engine)) == PAID_BEFORE_KILL,
                     WAIT_S, f"{PAID_BEFORE_KILL} verdicts in judge_cache mid-scoring",
                     proc=first, log=first_log)
            assert len(provider.requests) == PAID_BEFORE_KILL + CONCURRENCY < N
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=PROCESS_TIMEOUT_S)
        assert first.returncode == -signal.SIGKILL
        cached_at_kill = Counter(cached_items(engine))
        paid_before = set(grader.answered)
        asked_before = len(provider.requests)
        grader.opened.set()  # the provider answers everything from now on

        second_log = tmp_path / "second.log"
        result = finish(start_evaluate(run_id, env, second_log), second_log)
        asked_after = [item_of(r)[1] for r in provider.requests[asked_before:]]

    assert set(cached_at_kill) == paid_before and max(cached_at_kill.values()) == 1
    assert len(cached_at_kill) == PAID_BEFORE_KILL
    # The second process asked for each item not cached at the kill, once, and nothing else.
    assert sorted(asked_after) == sorted(set(range(N)) - paid_before)
    assert paid_before | set(asked_after) == set(range(N))

    ev = result["judges"]["llm"]["evaluation"]
    assert ev["status"] == "completed" and ev["n_items"] == N and ev["n_unscored"] == 0
    assert ev["cost"]["cache_hits"] == PAID_BEFORE_KILL
    assert ev["cost"]["calls"] == N - PAID_BEFORE_KILL and ev["cost"]["retries"] == 0
    assert ev["score"] == pytest.approx(sum(i % 3 != 0 for i in range(N)) / N)
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Evaluation)) == 1
        verdict_items = session.scalars(select(Verdict.item_id)).all()
        assert len(verdict_items) == N and len(set(verdict_items)) == N
        assert session.scalar(select(func.count()).select_from(JudgeCacheEntry)) == N
    assert sorted(Counter(cached_items(engine)).values()) == [1] * N


# --- killed alone, as the OOM killer does: no Prefect server left behind -----------------

@on_postgres
def test_a_loop_killed_alone_leaves_no_prefect_server_behind(engine: Engine,
                                                              tmp_path: Path) -> None:
    """Without PREFECT_API_URL the command needs a local Prefect server; SIGKILL to the
    command alone (not its group) must take that server down too."""
    run_id = make_run(engine, tmp_path, "alone", [True] * 4)
    held = threading.Event()

    def holding_grader(request: dict[str, Any], attempt: int) -> Reply:
        held.wait(PROCESS_TIMEOUT_S)
        return grade(request, item_of(request)[1])

    servers: list[int] = []
    with fake_openai(holding_grader) as provider:
        env = env_for(None, provider, PREFECT_HOME=str(tmp_path / "prefect"))
        log = tmp_path / "alone.log"
        proc = start_evaluate(run_id, env, log)
        try:
            # The command first starts a Prefect server on a fresh Prefect home.
            wait_for(lambda: provider.calls > 0, SERVER_WAIT_S, "the loop asking the provider",
                     proc=proc, log=log)
            servers = children(proc.pid)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=PROCESS_TIMEOUT_S)
            held.set()
    try:
        assert servers, "tunix-rt evaluate ran a loop with no Prefect server process under it"
        wait_for(lambda: not any(running(pid) for pid in servers), WAIT_S,
                 "the local Prefect server to stop with the command")
    finally:  # never leave one running, whatever the outcome
        for pid in servers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


# --- a provider failing 30% of calls -----------------------------------------------------

RUNS, ITEMS = 3, 40
SEED = 20  # with this seed, one of the 120 items fails all 5 attempts (checked below)
FAIL_RATE = 0.3
MAX_ATTEMPTS = 5  # the llm judge's default: 4 retries
TIMEOUT_S = 2.0  # TUNIX_RT_LLM_TIMEOUT_S for the test; a hang lasts longer
HANG_S = 10.0


def planned(run: int, i: int, attempt: int) -> Reply | None:
    """The seeded fault for this item's ``attempt``: None (answer) in 70% of calls, else
    a 500, a 502, a 503 with Retry-After: 1, or a hang past the client's timeout, one
    quarter each."""
    digest = hashlib.blake2b(f"{SEED}:{run}:{i}:{attempt}".encode(), digest_size=8).digest()
    if int.from_bytes(digest[:4], "big") / 2**32 >= FAIL_RATE:
        return None
    return (Reply.http(500), Reply.http(502), Reply.http(503, retry_after=1),
            Reply.hang(HANG_S))[digest[4] % 4]


def exhausted(run: int, i: int) -> bool:
    """Whether every attempt the judge makes for this item is planned to fail."""
    return all(planned(run, i, a) is not None for a in range(1, MAX_ATTEMPTS + 1))


def faulty_grader(request: dict[str, Any], attempt: int) -> Reply:
    run, i = item_of(request)
    return planned(run, i, attempt) or grade(request, i)


def write_items(path: Path, run: int) -> str:
    """Predictions whose items differ from every other run's (no shared cache entries);
    item i is answered right iff i is even."""
    with path.open("w") as handle:
        for i in range(ITEMS):
            answer = i if i % 2 == 0 else i + 1
            handle.write(json.dumps({
                "id": f"r{run}-{i:03d}", "prompt": f"run {run}: what is {i}?",
                "response": f"<reasoning>r</reasoning><answer>{answer}</answer>",
                "reference": str(i)}) + "\n")
    return str(path)


@on_postgres
def test_every_evaluation_completes_with_a_provider_failing_30_percent_of_calls(
        engine: Engine, prefect_api_url: str, tmp_path: Path) -> None:
    doomed = {(r, i) for r in range(RUNS) for i in range(ITEMS) if exhausted(r, i)}
    assert doomed, "the seed should make at least one item exhaust its retries"
    run_ids = [make_run(engine, tmp_path, f"faulty-{r}", [], dataset=f"faults-{r}",
                        predictions=write_items(tmp_path / f"faulty-{r}.jsonl", r))
               for r in range(RUNS)]
    with fake_openai(faulty_grader) as provider:
        env = env_for(prefect_api_url, provider, TUNIX_RT_LLM_TIMEOUT_S=str(TIMEOUT_S))
        logs = [tmp_path / f"evaluate-{r}.log" for r in range(RUNS)]
        procs = [start_evaluate(run_id, env, log) for run_id, log in zip(run_ids, logs)]
        results = [finish(proc, log) for proc, log in zip(procs, logs)]
        asked = Counter(item_of(r) for r in provider.requests)
        n_requests = len(provider.requests)

    evaluations = [result["judges"]["llm"]["evaluation"] for result in results]
    print(f"{n_requests} requests for {RUNS * ITEMS} items; scored "
          f"{sum(ev['n_scored'] for ev in evaluations)}, unscored "
          f"{sum(ev['n_unscored'] for ev in evaluations)} (planned {len(doomed)})")
    unscored: set[tuple[int, int]] = set()
    with session_scope(engine) as session:
        for r, (run_id, ev) in enumerate(zip(run_ids, evaluations)):
            assert ev["status"] == "completed" and ev["n_items"] == ITEMS
            rows = session.execute(select(Verdict.item_id, Verdict.score, Verdict.rationale)
                                   .join(Evaluation).where(Evaluation.run_id == run_id)).all()
            assert len(rows) == ITEMS
            for item_id, score, rationale in rows:
                i = int(item_id.split("-")[1])
                if score is None:
                    unscored.add((r, i))
                    assert rationale.startswith(f"provider failed after {MAX_ATTEMPTS} attempts")
                else:
                    assert score == (1.0 if i % 2 == 0 else 0.0)  # the grader's own grade
            assert ev["n_unscored"] == sum(1 for row in rows if row.score is None)
            assert ev["n_scored"] == ITEMS - ev["n_unscored"]
            assert ev["score"] == pytest.approx(
                sum(1 for row in rows if row.score == 1.0) / ev["n_scored"])
            # The board counts them too (under 5% unscored: listed without a flag).
            [entry] = leaderboard_page(session, f"faults-{r}", "llm").entries
            assert (entry.run_id, entry.n_unscored, entry.flag) == (run_id, ev["n_unscored"], None)
        assert session.scalar(select(func.count()).select_from(Evaluation)) == RUNS
        assert (session.scalar(select(func.count()).select_from(JudgeCacheEntry))
                == RUNS * ITEMS - len(unscored))

    # Items whose every attempt failed are unscored and counted; an unscored item was
    # asked the full number of times (on a loaded machine a late answer may add one).
    assert doomed <= unscored
    assert all(asked[key] == MAX_ATTEMPTS for key in unscored)
    # Failed calls were retried, and the ledgers account for every request.
    assert n_requests > RUNS * ITEMS
    assert sum(ev["cost"]["calls"] for ev in evaluations) == n_requests
    assert sum(ev["cost"]["retries"] for ev in evaluations) == n_requests - RUNS * ITEMS
    assert all(asked[(r, i)] >= 1 for r in range(RUNS) for i in range(ITEMS))
