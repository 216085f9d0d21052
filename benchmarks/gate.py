"""Benchmark 5: the paired-bootstrap gate, vectorized vs a pure-Python loop."""

from __future__ import annotations

import random
import time

import numpy as np

from benchmarks.common import Result, Scale, interleaved
from tunix_rt.quality.stats import GateOutcome, GatePolicy, decide_gate


def paired_scores(n: int, *, seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """Two checkpoints of one model on ``n`` items: 0/1 scores that mostly agree."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    base = difficulty < 0.70
    cand = np.where(rng.random(n) < 0.9, base, difficulty < 0.72)
    ids = [f"q{i:06d}" for i in range(n)]
    return ({i: float(c) for i, c in zip(ids, cand)}, {i: float(b) for i, b in zip(ids, base)})


def naive_interval(candidate: dict[str, float], baseline: dict[str, float], policy: GatePolicy,
                   n_resamples: int) -> tuple[float, float, float, float, float]:
    """Pair, then bootstrap with ``random.choices`` per resample.

    Returns (mean, ci_low, ci_high, seconds pairing, seconds resampling).
    """
    start = time.perf_counter()
    ids = sorted(candidate.keys() & baseline.keys())
    diffs = [candidate[i] - baseline[i] for i in ids]
    n = len(diffs)
    paired = time.perf_counter()
    rng = random.Random(policy.seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(n_resamples))
    alpha = 1.0 - policy.confidence
    lo = means[int(alpha / 2 * (n_resamples - 1))]
    hi = means[int((1 - alpha / 2) * (n_resamples - 1))]
    done = time.perf_counter()
    return sum(diffs) / n, lo, hi, paired - start, done - paired


def run(scale: Scale) -> list[Result]:
    n, resamples, naive_resamples = scale.gate_items, scale.gate_resamples, scale.naive_resamples
    candidate, baseline = paired_scores(n)
    policy = GatePolicy(n_resamples=resamples)
    outcome: GateOutcome = decide_gate(candidate, baseline, policy)  # warm-up
    naive_parts: list[tuple[float, float]] = []

    def ours() -> None:
        decide_gate(candidate, baseline, policy)

    def naive() -> None:
        *_, pairing, resampling = naive_interval(candidate, baseline, policy, naive_resamples)
        naive_parts.append((pairing, resampling))

    t_ours, _ = interleaved(ours, naive, scale.gate_reps)
    # The naive side drew fewer resamples: scale its resampling time linearly.
    factor = resamples / naive_resamples
    scaled = sorted(p + r * factor for p, r in naive_parts)
    t_naive = scaled[len(scaled) // 2]
    mean, lo, hi, *_ = naive_interval(candidate, baseline, policy, naive_resamples)
    return [Result(
        "gate_bootstrap", "-", f"{n:,} paired items, {resamples:,} resamples", t_ours, t_naive,
        "pure-Python random.choices per resample",
        notes=(f"naive drew {naive_resamples:,} resamples, time scaled x{factor:g} "
               f"(linear in resamples); decide_gate CI [{outcome.ci_low:+.4f}, "
               f"{outcome.ci_high:+.4f}], naive [{lo:+.4f}, {hi:+.4f}]"),
        extra={"ours_ci": [outcome.ci_low, outcome.ci_high], "naive_ci": [lo, hi],
               "delta": outcome.delta, "naive_resamples": naive_resamples})]
