"""Benchmark: the ``llm`` judge's throughput against a provider with fixed latency.

The provider is ``tests/fakes/openai_server.py``: a real local OpenAI-compatible HTTP
server that answers every request after ``LATENCY_S``. With ``max_concurrency`` c and
no overhead, n items take ``n / c x LATENCY_S``: that ideal time is the "naive" side,
so the ratio ideal / ours is the throughput achieved over the bound (c / latency),
1.0 at best. A second pass with a warm ``MemoryCache`` must make no provider call;
its "naive" side is the same items scored cold (no cache), at concurrency 8.
"""

from __future__ import annotations

import statistics
import time

from benchmarks.common import Result, Scale
from tunix_rt.judges import Item, ScoringContext
from tunix_rt.judges.llm import LLMConfig, LLMJudge, MemoryCache
from tests.fakes.openai_server import Reply, fake_openai

LATENCY_S = 0.1
CONCURRENCY = (1, 4, 8, 16)
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


def _score(judge: LLMJudge, items: list[Item]) -> float:
    start = time.perf_counter()
    verdicts = judge.score(items, CTX)
    elapsed = time.perf_counter() - start
    if len(verdicts) != len(items) or not all(v.scored for v in verdicts):
        raise RuntimeError("the llm judge left items unscored against the fake server")
    return elapsed


def run(scale: Scale) -> list[Result]:
    n = 32 if scale.quick else 64
    reps = 1 if scale.quick else 3
    items = make_items(n)
    results: list[Result] = []
    with fake_openai(Reply.json(0.9, "right", delay=LATENCY_S)) as server:
        _score(judge_for(server.base_url, 4), items[:4])  # warm-up: imports, first connect
        for c in CONCURRENCY:
            times, peaks = [], []
            for _ in range(1 if c == 1 else reps):  # c=1 is n x latency: once is enough
                server.max_in_flight = 0
                calls_before = server.calls
                times.append(_score(judge_for(server.base_url, c), items))
                if server.calls - calls_before != n:
                    raise RuntimeError(f"expected {n} provider calls, got "
                                       f"{server.calls - calls_before}")
                peaks.append(server.max_in_flight)
            t = statistics.median(times)
            ideal = n / c * LATENCY_S
            rate, bound = n / t, c / LATENCY_S
            share = rate / bound
            target = (f">= {TARGET_SHARE:.0%} of the bound: "
                      f"{'met' if share >= TARGET_SHARE else 'NOT MET'} ({share:.0%})"
                      if c in TARGET_CONCURRENCY else "")
            results.append(Result(
                f"llm_throughput_c{c}", "-", f"{n} items, {LATENCY_S:g} s latency, concurrency {c}",
                t, ideal, f"bound: n / c x {LATENCY_S:g} s, no overhead",
                notes=(f"{rate:.1f} items/s vs bound {bound:g} items/s ({rate / bound:.0%} of "
                       f"the bound); peak in flight at the server {max(peaks)}; median of "
                       f"{len(times)}"),
                target=target,
                extra={"items_per_s": rate, "bound_items_per_s": bound,
                       "max_in_flight": max(peaks), "runs_s": times}))

        # A warm cache: the same items again make no provider call.
        cache = MemoryCache()
        cold_judge = judge_for(server.base_url, CACHE_CONCURRENCY, cache)
        t_cold = _score(cold_judge, items)
        cold_calls = cold_judge.ledger.calls
        warm_judge = judge_for(server.base_url, CACHE_CONCURRENCY, cache)
        calls_before = server.calls
        warm_times = [_score(warm_judge, items) for _ in range(max(reps, 3))]
        provider_calls = server.calls - calls_before
        if provider_calls != 0 or warm_judge.ledger.calls != 0 or warm_judge.ledger.cache_hits != n:
            raise RuntimeError(f"a warm cache made {provider_calls} provider calls "
                               f"(ledger {warm_judge.ledger.as_dict()})")
        t_warm = statistics.median(warm_times)
        results.append(Result(
            "llm_throughput_cached", "-", f"{n} items, MemoryCache warm", t_warm, t_cold,
            f"cold: no cache, concurrency {CACHE_CONCURRENCY}",
            notes=(f"warm: 0 provider calls, {warm_judge.ledger.cache_hits} cache hits "
                   f"(cold: {cold_calls} calls); {n / t_warm:,.0f} items/s; median of "
                   f"{len(warm_times)}"),
            extra={"provider_calls_warm": provider_calls, "cache_hits": n,
                   "provider_calls_cold": cold_calls}))
    return results
