"""Bootstrap confidence intervals and the statistical promotion gate.

Leaderboard intervals
    A run's score is the mean of its per-item judge scores. Its 95% CI is a
    *percentile bootstrap*: resample the items with replacement many times,
    take the mean of each resample, and report the 2.5th and 97.5th
    percentiles of those means. No normality assumption is needed, which
    matters for the 0/1 and bounded scores judges produce.

The gate (candidate vs baseline)
    Both runs are scored on the same items, so the comparison is *paired*:
    for every item scored in both runs, take d_i = candidate_i - baseline_i
    and bootstrap the mean of the d_i (resampling items, keeping each pair
    together). Two checkpoints of one model agree on most items, so the
    per-item differences vary far less than the scores themselves; pairing
    gives a much narrower interval than comparing two independent CIs.

    The interval [lo, hi] of the mean difference is compared with a threshold:

    * non-inferiority (default): threshold = -margin. The candidate passes if
      it is credibly *no worse than the baseline by more than the margin*
      (lo > -margin). This is the usual release question for a retrained or
      cheaper model.
    * superiority (``require_improvement``): threshold = 0. The candidate
      passes only if it is credibly better (lo > 0).

    It fails if the whole interval lies below the threshold (hi < threshold)
    and is inconclusive when the interval contains the threshold, or when
    fewer than ``min_items`` items are paired. With a two-sided 95% interval
    each one-sided decision has an error rate of about 2.5% when the true
    difference sits exactly on the threshold.

Determinism
    Every bootstrap uses ``np.random.default_rng(seed)``, so a fixed seed and
    the same inputs give bit-identical intervals. Resampling is vectorised
    and, for large inputs, done in chunks of resamples that cap the working
    memory at about ``_MAX_CHUNK_BYTES``. Chunking does not change the result:
    the generator produces the same index stream however it is split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pydantic
from numpy.typing import ArrayLike

__all__ = [
    "GateOutcome",
    "GatePolicy",
    "MeanCI",
    "bootstrap_mean_ci",
    "decide_gate",
    "paired_bootstrap_delta",
]

# Working-memory cap for one chunk of resamples. Each resample of n items
# holds n int64 indices plus n gathered float64 values: 16 * n bytes.
_MAX_CHUNK_BYTES = 32 * 1024 * 1024
_BYTES_PER_RESAMPLED_ITEM = 16


class GatePolicy(pydantic.BaseModel):
    """How the gate compares a candidate run with the baseline run."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    margin: float = pydantic.Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        title="Non-inferiority margin",
        description=(
            "How much worse than the baseline (in mean score) the candidate may "
            "be and still pass. The candidate passes when the lower end of the "
            "confidence interval of (candidate - baseline) is above -margin. "
            "Ignored when require_improvement is set."
        ),
    )
    confidence: float = pydantic.Field(
        default=0.95,
        gt=0.5,
        lt=1.0,
        title="Confidence level",
        description=(
            "Two-sided confidence level of the bootstrap interval of the mean "
            "difference, e.g. 0.95 for a 95% interval."
        ),
    )
    min_items: int = pydantic.Field(
        default=30,
        ge=1,
        title="Minimum paired items",
        description=(
            "Fewest items scored in both runs needed for a pass or fail "
            "decision; with fewer the gate is inconclusive."
        ),
    )
    require_improvement: bool = pydantic.Field(
        default=False,
        title="Require improvement",
        description=(
            "Superiority test: pass only if the candidate is credibly better "
            "than the baseline (interval above 0) instead of merely not worse "
            "by more than the margin."
        ),
    )
    auto_promote: bool = pydantic.Field(
        default=False,
        title="Auto-promote",
        description=(
            "Make a passing candidate the new baseline automatically. Does not "
            "affect the decision itself."
        ),
    )
    max_unscored: float = pydantic.Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        title="Most items left out",
        description=(
            "The largest share of the baseline's items that may be left out of the "
            "comparison because the judge could not score them (on either side); "
            "with more, the gate is inconclusive."
        ),
    )
    n_resamples: int = pydantic.Field(
        default=2000,
        ge=100,
        le=100_000,
        title="Bootstrap resamples",
        description="Number of bootstrap resamples of the paired items.",
    )
    seed: int = pydantic.Field(
        default=0,
        ge=0,
        le=2**63 - 1,
        title="Random seed",
        description="Seed of the bootstrap; a fixed seed makes the decision reproducible.",
    )

    def digest(self) -> str:
        """Short stable fingerprint of the decision-relevant settings.

        sha256 of the canonical JSON (sorted keys, no whitespace) of every
        field except ``auto_promote``; the first 16 hex characters.
        """
        payload = {
            "margin": float(self.margin),
            "confidence": float(self.confidence),
            "min_items": int(self.min_items),
            "require_improvement": bool(self.require_improvement),
            "n_resamples": int(self.n_resamples),
            "seed": int(self.seed),
            "max_unscored": float(self.max_unscored),
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class MeanCI:
    """A mean with its bootstrap confidence interval over n items."""

    mean: float
    ci_low: float
    ci_high: float
    n: int


@dataclass(frozen=True)
class GateOutcome:
    """Result of comparing a candidate run with the baseline run."""

    decision: str  # "pass" | "fail" | "inconclusive" | "no_baseline"
    delta: float | None  # mean of (candidate - baseline) over paired items
    ci_low: float | None
    ci_high: float | None
    n_paired: int
    reason: str
    n_excluded: int = 0


# --------------------------------------------------------------------------
# Bootstrap core
# --------------------------------------------------------------------------


def _as_scores(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of scores, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: a mean and its confidence interval need at least one score")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite scores")
    return arr


def _check_bootstrap_args(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")


def _chunk_rows(n: int) -> int:
    """Resamples per chunk so that one chunk stays within _MAX_CHUNK_BYTES."""
    return max(1, _MAX_CHUNK_BYTES // (_BYTES_PER_RESAMPLED_ITEM * n))


def _bootstrap_means(
    values: np.ndarray,
    *,
    n_resamples: int,
    seed: int,
    chunk_rows: int | None = None,
) -> np.ndarray:
    """Means of ``n_resamples`` with-replacement resamples of ``values``.

    Draws the (n_resamples, n) index matrix chunk by chunk (``chunk_rows``
    resamples at a time; default from the memory cap). ``Generator.integers``
    consumes its bit stream element by element, so the result is identical
    for every chunk size.
    """
    n = values.shape[0]
    rows = _chunk_rows(n) if chunk_rows is None else int(chunk_rows)
    if rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows!r}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values.take(idx).mean(axis=1)
    return means


def _mean_ci(values: np.ndarray, *, confidence: float, n_resamples: int, seed: int) -> MeanCI:
    n = int(values.shape[0])
    first = float(values[0])
    if np.all(values == values[0]):
        # Includes n == 1: every resample is the same, the interval collapses.
        return MeanCI(mean=first, ci_low=first, ci_high=first, n=n)
    means = _bootstrap_means(values, n_resamples=n_resamples, seed=seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return MeanCI(mean=float(values.mean()), ci_low=float(low), ci_high=float(high), n=n)


def bootstrap_mean_ci(
    scores: ArrayLike,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> MeanCI:
    """Mean of ``scores`` with its percentile-bootstrap confidence interval.

    Raises ValueError for an empty input, non-finite scores or invalid
    arguments. With one score, or all scores equal, the interval is the
    value itself.
    """
    _check_bootstrap_args(confidence, n_resamples)
    values = _as_scores(scores, "scores")
    return _mean_ci(values, confidence=confidence, n_resamples=int(n_resamples), seed=seed)


def paired_bootstrap_delta(
    candidate: ArrayLike,
    baseline: ArrayLike,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> MeanCI:
    """Mean of (candidate - baseline) over paired items, with a bootstrap CI.

    ``candidate[i]`` and ``baseline[i]`` must be the scores of the same item;
    items are resampled as pairs.
    """
    _check_bootstrap_args(confidence, n_resamples)
    cand = _as_scores(candidate, "candidate")
    base = _as_scores(baseline, "baseline")
    if cand.shape != base.shape:
        raise ValueError(
            f"candidate and baseline must pair item for item, got {cand.shape[0]} and {base.shape[0]} scores"
        )
    return _mean_ci(cand - base, confidence=confidence, n_resamples=int(n_resamples), seed=seed)


# --------------------------------------------------------------------------
# Gate
# --------------------------------------------------------------------------


def _fmt(x: float) -> str:
    # 4 significant digits: small deltas stay readable (0.0021, -0.01),
    # and +0.0 never prints as "-0".
    return f"{x + 0.0:.4g}"


def decide_gate(
    candidate: Mapping[str, float | None],
    baseline: Mapping[str, float | None] | None,
    policy: GatePolicy,
) -> GateOutcome:
    """Decide whether the candidate run may replace the baseline run.

    ``candidate`` and ``baseline`` map item id -> score, with None for an item the
    judge could not score. The comparison is over the baseline's item set: an item
    the candidate lacks counts 0 for the candidate (answering less never helps), and
    an item the judge could not score on either side is left out and counted. When
    more than ``policy.max_unscored`` of the set is left out, the gate is
    inconclusive.
    """
    if baseline is None:
        return GateOutcome(
            decision="no_baseline",
            delta=None,
            ci_low=None,
            ci_high=None,
            n_paired=0,
            reason="there is no baseline run to compare the candidate against",
        )

    ids = []
    excluded = 0
    for item_id in sorted(baseline):
        if baseline[item_id] is None or candidate.get(item_id, 0.0) is None:
            excluded += 1
        else:
            ids.append(item_id)
    if baseline and excluded > policy.max_unscored * len(baseline):
        return GateOutcome(
            decision="inconclusive", delta=None, ci_low=None, ci_high=None,
            n_paired=len(ids), n_excluded=excluded,
            reason=(f"{excluded} of the baseline's {len(baseline)} items are left out because "
                    f"the judge could not score them ({excluded / len(baseline):.1%}; the policy "
                    f"allows {policy.max_unscored:.1%}): too few to compare"))
    n_paired = len(ids)
    level = f"{policy.confidence * 100:g}%"

    delta_ci: MeanCI | None = None
    if n_paired >= 1:
        delta_ci = paired_bootstrap_delta(
            np.fromiter((candidate.get(i, 0.0) for i in ids), dtype=np.float64,
                        count=n_paired),
            np.fromiter((baseline[i] for i in ids), dtype=np.float64, count=n_paired),
            confidence=policy.confidence,
            n_resamples=policy.n_resamples,
            seed=policy.seed,
        )

    if n_paired < policy.min_items:
        return GateOutcome(
            decision="inconclusive",
            delta=None if delta_ci is None else delta_ci.mean,
            ci_low=None if delta_ci is None else delta_ci.ci_low,
            ci_high=None if delta_ci is None else delta_ci.ci_high,
            n_paired=n_paired,
            n_excluded=excluded,
            reason=f"only {n_paired} paired items; the policy needs at least {policy.min_items}",
        )

    assert delta_ci is not None
    if policy.require_improvement:
        threshold = 0.0
        what = "superiority: require_improvement is set"
    else:
        threshold = -policy.margin + 0.0
        what = "non-inferiority margin"

    interval = (
        f"{level} CI of the difference (candidate - baseline) "
        f"[{_fmt(delta_ci.ci_low)}, {_fmt(delta_ci.ci_high)}]"
    )
    tail = f"mean difference {_fmt(delta_ci.mean)} over {n_paired} paired items"
    if excluded:
        tail += f" ({excluded} left out: the judge could not score them)"
    if delta_ci.ci_low > threshold:
        decision = "pass"
        reason = f"{interval} lies above {_fmt(threshold)} ({what}); {tail}"
    elif delta_ci.ci_high < threshold:
        decision = "fail"
        reason = f"{interval} lies below {_fmt(threshold)} ({what}); {tail}"
    else:
        decision = "inconclusive"
        reason = f"{interval} contains {_fmt(threshold)} ({what}); {tail}"

    return GateOutcome(
        decision=decision,
        delta=delta_ci.mean,
        ci_low=delta_ci.ci_low,
        ci_high=delta_ci.ci_high,
        n_paired=n_paired,
        reason=reason,
        n_excluded=excluded,
    )
