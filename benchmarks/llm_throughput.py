"""Benchmark: the ``llm`` judge's throughput against a provider with fixed latency.

The provider is ``tests/fakes/openai_server.py``: a real local OpenAI-compatible HTTP
server (HTTP/1.1, kept-alive connections) that answers every request after
``LATENCY_S``, run in a process of its own as a real provider is: its request threads
then do not compete with the judge's event loop for the GIL (it still shares the
machine's cores). With ``max_concurrency`` c and no overhead, n items take
``n / c x LATENCY_S``: that ideal time is the "naive" side, so the ratio ideal / ours
is the throughput achieved over the bound (c / latency), 1.0 at best.

The timed window is one ``score()`` call: it includes what every evaluation (and
every chunk) pays once, its event loop, clients and first connections, but not the
process's one-off imports and TLS context (a warm-up call before). The rows use
``ITEMS`` items (16 waves at c = 16) so that this once-per-call cost is amortised as
over a real eval set; the notes give the 64-item figure too (4 waves at c = 16), and,
at c = 8 and 16, the figure with the fake provider inside the judge's process.

A second pass with a warm ``MemoryCache`` must make no provider call; its "naive" side
is the same items scored cold (no cache), at concurrency 8.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import Result, Scale
from tunix_rt.judges import Item, ScoringContext
from tunix_rt.judges.llm import LLMConfig, LLMJudge, MemoryCache
from tests.fakes.openai_server import Reply, fake_openai, fake_openai_process

LATENCY_S = 0.1
CONCURRENCY = (1, 4, 8, 16)
ITEMS = 256  # per row at c >= 4 (c = 1: SHORT items, once: it is n x latency)
SHORT = 64  # the old figure: 4 waves at c = 16
CACHE_CONCURRENCY = 8
TARGET_SHARE = 0.9  # of the bound c / latency, at the concurrencies below
TARGET_CONCURRENCY = (8, 16)
CTX = ScoringContext(run_id="bench-llm", dataset="bench", model="policy")


def make_items(n: int) -> list[Item]:
    return [Item(id=f"q{i:04d}", prompt=f"What is {i} + {i}?",
                 response=f"<answer>{2 * i}</answer>", reference=str(2 * i)) for i in range(n)]


def judge_for(base_url: str, concurrency: int, cache: MemoryCache | None = None) -> LLMJudge:
    config = LLMConfig(base_url=base_url, model="bench-judge", max_concurrency=concurrency,
                       timeout_s=30.0, max_retries=0)
    return LLMJudge(rubric="correctness", config=config, cache=cache)


def _score(judge: LLMJudge, items: list[Item]) -> tuple[float, float]:
    """Seconds of one ``score()`` call, and the ``time.monotonic()`` it started at."""
    started = time.monotonic()
    start = time.perf_counter()
    verdicts = judge.score(items, CTX)
    elapsed = time.perf_counter() - start
    if len(verdicts) != len(items) or not all(v.scored for v in verdicts):
        raise RuntimeError("the llm judge left items unscored against the fake server")
    return elapsed, started


def _timed(base_url: str, c: int, items: list[Item], reps: int,
           stats: Callable[[], dict[str, Any]]
           ) -> tuple[float, list[float], float | None, int]:
    """The median time of ``reps`` scorings, the times, the median setup (from the call
    to the first request's arrival at the provider; None if it cannot tell), and the
    most requests the provider had in flight at once."""
    times, setups, peak = [], [], 0
    for _ in range(reps):
        before = stats()["calls"]
        elapsed, started = _score(judge_for(base_url, c), items)
        after = stats()
        if after["calls"] - before != len(items):
            raise RuntimeError(f"expected {len(items)} provider calls, got {after['calls'] - before}")
        times.append(elapsed)
        peak = max(peak, after.get("max_in_flight", 0))
        if after.get("first_arrival") is not None:
            setups.append(after["first_arrival"] - started)
    return (statistics.median(times), times, statistics.median(setups) if setups else None,
            peak)


def run(scale: Scale) -> list[Result]:
    n_long, n_short = (32, 16) if scale.quick else (ITEMS, SHORT)
    reps = 1 if scale.quick else 3
    results: list[Result] = []
    # The fake provider inside the judge's process (its threads share our GIL): notes only.
    in_process: dict[int, float] = {}
    with fake_openai(Reply.json(0.9, "right", delay=LATENCY_S)) as local:
        _score(judge_for(local.base_url, 4), make_items(4))  # warm-up: imports, TLS context
        for c in TARGET_CONCURRENCY:
            t, _, _, _ = _timed(local.base_url, c, make_items(n_long), reps,
                                lambda: {"calls": local.calls})
            in_process[c] = n_long / c * LATENCY_S / t

    with fake_openai_process(0.9, "right", delay=LATENCY_S) as server:
        _score(judge_for(server.base_url, 4), make_items(4))  # warm-up: first connect
        for c in CONCURRENCY:
            n = n_short if c == 1 else n_long
            items = make_items(n)
            t, times, setup, peak = _timed(server.base_url, c, items, 1 if c == 1 else reps,
                                           server.stats)
            ideal = n / c * LATENCY_S
            rate, bound = n / t, c / LATENCY_S
            share = rate / bound
            notes = [f"{rate:.1f} items/s vs bound {bound:g} items/s ({share:.0%} of the bound); "
                     f"peak in flight at the server {peak}; median of {len(times)}"]
            extra: dict[str, Any] = {"items_per_s": rate, "bound_items_per_s": bound,
                                     "share": share, "max_in_flight": peak, "runs_s": times}
            if setup is not None:
                extra["setup_s"] = setup
                extra["share_from_first_request"] = ideal / (t - setup)
                notes.append(f"{setup * 1000:.0f} ms from the call to the first request "
                             f"(loop, clients); from the first request: {ideal / (t - setup):.0%}")
            if c != 1:
                t_short, _, _, _ = _timed(server.base_url, c, items[:n_short], reps, server.stats)
                extra["share_short"] = share_short = n_short / c * LATENCY_S / t_short
                notes.append(f"{n_short} items: {share_short:.0%} of the bound")
            if c in in_process:
                extra["share_provider_in_process"] = in_process[c]
                notes.append(f"fake provider in the judge's process: {in_process[c]:.0%}")
            target = (f">= {TARGET_SHARE:.0%} of the bound: "
                      f"{'met' if share >= TARGET_SHARE else 'NOT MET'} ({share:.0%})"
                      if c in TARGET_CONCURRENCY else "")
            results.append(Result(
                f"llm_throughput_c{c}", "-", f"{n} items, {LATENCY_S:g} s latency, concurrency {c}",
                t, ideal, f"bound: n / c x {LATENCY_S:g} s, no overhead", notes="; ".join(notes),
                target=target, extra=extra,
                met=(share >= TARGET_SHARE) if c in TARGET_CONCURRENCY else None))

        # A warm cache: the same items again make no provider call.
        items = make_items(n_short)
        cache = MemoryCache()
        cold_judge = judge_for(server.base_url, CACHE_CONCURRENCY, cache)
        t_cold, _ = _score(cold_judge, items)
        cold_calls = cold_judge.ledger.calls
        warm_judge = judge_for(server.base_url, CACHE_CONCURRENCY, cache)
        calls_before = server.stats()["calls"]
        warm_times = [_score(warm_judge, items)[0] for _ in range(max(reps, 3))]
        provider_calls = server.stats()["calls"] - calls_before
        if (provider_calls != 0 or warm_judge.ledger.calls != 0
                or warm_judge.ledger.cache_hits != n_short):
            raise RuntimeError(f"a warm cache made {provider_calls} provider calls "
                               f"(ledger {warm_judge.ledger.as_dict()})")
        t_warm = statistics.median(warm_times)
        results.append(Result(
            "llm_throughput_cached", "-", f"{n_short} items, MemoryCache warm", t_warm, t_cold,
            f"cold: no cache, concurrency {CACHE_CONCURRENCY}",
            notes=(f"warm: 0 provider calls, {warm_judge.ledger.cache_hits} cache hits "
                   f"(cold: {cold_calls} calls); {n_short / t_warm:,.0f} items/s; median of "
                   f"{len(warm_times)}"),
            extra={"provider_calls_warm": provider_calls, "cache_hits": n_short,
                   "provider_calls_cold": cold_calls}))
    return results
