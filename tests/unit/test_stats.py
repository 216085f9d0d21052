"""Unit tests for tunix_rt.quality.stats: bootstrap intervals, the gate and its policy."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pydantic
import pytest

from tunix_rt.quality import stats
from tunix_rt.quality.stats import (
    GateOutcome,
    GatePolicy,
    MeanCI,
    bootstrap_mean_ci,
    decide_gate,
    paired_bootstrap_delta,
)

# --------------------------------------------------------------------------
# bootstrap_mean_ci
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores",
    [
        np.random.default_rng(1).normal(0.6, 0.2, size=200),
        (np.random.default_rng(2).random(150) < 0.7).astype(float),
        np.random.default_rng(3).beta(0.2, 0.2, size=60),
        [0.0, 1.0],
    ],
    ids=["normal", "bernoulli", "beta-u", "two-values"],
)
def test_ci_contains_the_mean(scores):
    ci = bootstrap_mean_ci(scores, seed=7)
    assert isinstance(ci, MeanCI)
    assert ci.n == len(scores)
    assert ci.mean == pytest.approx(float(np.mean(scores)))
    assert ci.ci_low <= ci.mean <= ci.ci_high
    assert ci.ci_low < ci.ci_high


def test_ci_narrows_with_n():
    rng = np.random.default_rng(11)
    widths = []
    for n in (50, 500, 5000):
        ci = bootstrap_mean_ci((rng.random(n) < 0.6).astype(float), seed=0)
        widths.append(ci.ci_high - ci.ci_low)
    assert widths[0] > widths[1] > widths[2]
    # Width shrinks like 1/sqrt(n): a factor ~sqrt(10) per step.
    assert 2.0 < widths[0] / widths[1] < 5.0
    assert 2.0 < widths[1] / widths[2] < 5.0


def test_ci_matches_normal_approximation_for_large_n():
    x = np.random.default_rng(5).normal(0.0, 1.0, size=4000)
    ci = bootstrap_mean_ci(x, confidence=0.95, n_resamples=4000, seed=1)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(x.size)
    assert ci.ci_low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert ci.ci_high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_higher_confidence_gives_wider_interval():
    x = np.random.default_rng(4).random(300)
    ci90 = bootstrap_mean_ci(x, confidence=0.90, seed=3)
    ci99 = bootstrap_mean_ci(x, confidence=0.99, seed=3)
    assert ci99.ci_low < ci90.ci_low and ci99.ci_high > ci90.ci_high


def test_deterministic_for_fixed_seed():
    x = np.random.default_rng(9).random(257)
    a = bootstrap_mean_ci(x, seed=42)
    b = bootstrap_mean_ci(list(x), seed=42)
    assert a == b  # bit-identical, not just close
    c = bootstrap_mean_ci(x, seed=43)
    assert (c.ci_low, c.ci_high) != (a.ci_low, a.ci_high)
    assert c.mean == a.mean


def test_single_value_collapses():
    assert bootstrap_mean_ci([0.37]) == MeanCI(mean=0.37, ci_low=0.37, ci_high=0.37, n=1)


def test_identical_values_collapse_exactly():
    # 0.1 summed 3 times is not exactly 0.3; the collapse must not drift.
    ci = bootstrap_mean_ci([0.1] * 3)
    assert ci == MeanCI(mean=0.1, ci_low=0.1, ci_high=0.1, n=3)


@pytest.mark.parametrize("empty", [[], (), np.array([])])
def test_empty_input_raises(empty):
    with pytest.raises(ValueError, match="empty"):
        bootstrap_mean_ci(empty)


@pytest.mark.parametrize(
    ("scores", "kwargs", "match"),
    [
        ([0.1, float("nan")], {}, "NaN or infinite"),
        ([0.1, float("inf")], {}, "NaN or infinite"),
        ([[0.1, 0.2], [0.3, 0.4]], {}, "1-D"),
        ([0.1, 0.2], {"confidence": 1.0}, "confidence"),
        ([0.1, 0.2], {"confidence": 0.0}, "confidence"),
        ([0.1, 0.2], {"n_resamples": 0}, "n_resamples"),
    ],
)
def test_invalid_input_raises(scores, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_mean_ci(scores, **kwargs)


# --------------------------------------------------------------------------
# Chunked resampling
# --------------------------------------------------------------------------


def test_chunk_size_does_not_change_the_resampled_means():
    x = np.random.default_rng(21).random(301)
    reference = stats._bootstrap_means(x, n_resamples=1000, seed=5, chunk_rows=1000)
    for rows in (1, 7, 333, 999, 5000, None):
        got = stats._bootstrap_means(x, n_resamples=1000, seed=5, chunk_rows=rows)
        np.testing.assert_array_equal(got, reference)


def test_memory_cap_forces_chunking_without_changing_results(monkeypatch):
    x = np.random.default_rng(22).random(1000)
    unchunked = bootstrap_mean_ci(x, n_resamples=2000, seed=8)
    assert stats._chunk_rows(x.size) >= 2000  # default cap: one chunk

    # 48 resamples of 1000 items per chunk -> 42 chunks.
    monkeypatch.setattr(stats, "_MAX_CHUNK_BYTES", 48 * 16 * 1000)
    assert stats._chunk_rows(x.size) == 48
    chunked = bootstrap_mean_ci(x, n_resamples=2000, seed=8)

    assert chunked == unchunked


def test_default_chunk_respects_memory_cap():
    for n in (10, 1000, 100_000, 2_000_000):
        rows = stats._chunk_rows(n)
        assert rows >= 1
        assert rows * n * 16 <= stats._MAX_CHUNK_BYTES
    assert stats._MAX_CHUNK_BYTES == 32 * 1024 * 1024
    # A small eval (n=500) with the default 2000 resamples is one chunk.
    assert stats._chunk_rows(500) >= 2000


# --------------------------------------------------------------------------
# paired_bootstrap_delta
# --------------------------------------------------------------------------


def test_paired_delta_mean_and_determinism():
    rng = np.random.default_rng(31)
    base = (rng.random(400) < 0.5).astype(float)
    cand = base.copy()
    cand[:40] = 1.0  # candidate fixes some items
    d = paired_bootstrap_delta(cand, base, confidence=0.95, n_resamples=2000, seed=3)
    assert d.n == 400
    assert d.mean == pytest.approx(float((cand - base).mean()))
    assert d.ci_low <= d.mean <= d.ci_high
    assert d == paired_bootstrap_delta(cand, base, confidence=0.95, n_resamples=2000, seed=3)
    # Same as bootstrapping the per-item differences directly.
    assert d == bootstrap_mean_ci(cand - base, confidence=0.95, n_resamples=2000, seed=3)


def test_pairing_is_much_tighter_than_independent_intervals():
    rng = np.random.default_rng(32)
    p = rng.beta(0.2, 0.2, size=500)
    base = (rng.random(500) < p).astype(float)
    cand = (rng.random(500) < p).astype(float)
    paired = paired_bootstrap_delta(cand, base, seed=0)
    ci_b = bootstrap_mean_ci(base, seed=0)
    ci_c = bootstrap_mean_ci(cand, seed=1)
    independent_half = math.hypot(ci_b.ci_high - ci_b.ci_low, ci_c.ci_high - ci_c.ci_low) / 2
    assert (paired.ci_high - paired.ci_low) / 2 < 0.6 * independent_half


def test_paired_delta_identical_runs_collapse_to_zero():
    x = np.random.default_rng(33).random(50)
    assert paired_bootstrap_delta(x, x.copy()) == MeanCI(0.0, 0.0, 0.0, 50)


def test_paired_delta_rejects_bad_input():
    with pytest.raises(ValueError, match="pair item for item"):
        paired_bootstrap_delta([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap_delta([], [])


# --------------------------------------------------------------------------
# decide_gate
# --------------------------------------------------------------------------


def _runs(diffs, base_value=0.5, prefix="item"):
    """Baseline 0.5 on every item, candidate 0.5 + diff; ids item-000..."""
    base = {f"{prefix}-{i:03d}": base_value for i in range(len(diffs))}
    cand = {f"{prefix}-{i:03d}": base_value + d for i, d in enumerate(diffs)}
    return cand, base


def test_no_baseline():
    cand, _ = _runs([0.0] * 50)
    out = decide_gate(cand, None, GatePolicy())
    assert out == GateOutcome("no_baseline", None, None, None, 0, out.reason)
    assert "baseline" in out.reason


def test_too_few_paired_items_is_inconclusive_but_reports_delta():
    cand, base = _runs([0.1] * 10 + [0.0] * 10)
    out = decide_gate(cand, base, GatePolicy(min_items=30))
    assert out.decision == "inconclusive"
    assert out.n_paired == 20
    assert out.reason == "only 20 paired items; the policy needs at least 30"
    assert out.delta == pytest.approx(0.05)
    assert out.ci_low is not None and out.ci_high is not None
    assert out.ci_low <= out.delta <= out.ci_high


def test_the_candidate_is_compared_on_the_baseline_s_items():
    # The candidate answered none of the baseline's items: each counts 0 for it.
    out = decide_gate({"a": 1.0, "b": 0.0}, {"c": 1.0}, GatePolicy(min_items=1))
    assert (out.decision, out.n_paired, out.n_excluded, out.delta) == ("fail", 1, 0, -1.0)
    assert decide_gate({}, {}, GatePolicy()).decision == "inconclusive"
    assert decide_gate({}, {}, GatePolicy()).n_paired == 0


def test_items_outside_the_baseline_s_set_are_ignored_and_order_does_not_matter():
    rng = np.random.default_rng(41)
    diffs = rng.choice([-1.0, 0.0, 0.0, 0.0, 1.0], size=80) * 0.5
    cand, base = _runs(diffs)
    policy = GatePolicy()
    reference = decide_gate(cand, base, policy)
    assert reference.n_paired == 80

    # Extra, wildly scored items the baseline's set does not have.
    cand_extra = dict(cand) | {f"only-cand-{i}": 1.0 for i in range(50)}
    assert decide_gate(cand_extra, base, policy) == reference

    # Dict order must not matter: pairs are taken in sorted-id order.
    shuffled = dict(reversed(list(cand_extra.items())))
    assert decide_gate(shuffled, base, policy) == reference


def test_an_item_the_candidate_lacks_counts_as_wrong():
    cand, base = _runs([0.1] * 100)
    dropped = {k: v for k, v in cand.items() if k >= "item-020"}  # 20 items left out
    wrong = {k: (v if k in dropped else 0.0) for k, v in cand.items()}
    assert len(dropped) == 80
    out = decide_gate(dropped, base, GatePolicy())
    assert out == decide_gate(wrong, base, GatePolicy())
    assert out.n_paired == 100 and out.delta == pytest.approx((80 * 0.1 - 20 * 0.5) / 100)


def test_items_the_judge_could_not_score_are_left_out_and_counted():
    cand, base = _runs([0.0] * 100)
    policy = GatePolicy()
    few = {**cand, **{k: None for k in sorted(cand)[:5]}}  # 5%: allowed
    out = decide_gate(few, base, policy)
    assert (out.n_paired, out.n_excluded) == (95, 5)
    assert "5 left out: the judge could not score them" in out.reason
    many = {**base, **{k: None for k in sorted(base)[:6]}}  # 6% on the baseline's side
    out = decide_gate(cand, many, policy)
    assert (out.decision, out.n_paired, out.n_excluded, out.delta) == ("inconclusive", 94, 6, None)
    assert "6 of the baseline's 100 items are left out" in out.reason
    assert decide_gate(cand, many, GatePolicy(max_unscored=0.1)).decision == "pass"


def test_pass_non_inferiority():
    cand, base = _runs([0.5] * 10 + [0.0] * 90)  # better on 10 items of 100
    out = decide_gate(cand, base, GatePolicy())
    assert out.decision == "pass"
    assert out.n_paired == 100
    assert out.delta == pytest.approx(0.05)
    assert out.ci_low > -0.01
    assert "lies above -0.01 (non-inferiority margin)" in out.reason
    assert out.reason.startswith("95% CI of the difference")


def test_equal_runs_pass_non_inferiority():
    cand, base = _runs([0.0] * 50)
    out = decide_gate(cand, base, GatePolicy())
    assert (out.decision, out.delta, out.ci_low, out.ci_high) == ("pass", 0.0, 0.0, 0.0)


def test_fail():
    cand, base = _runs([-0.5] * 30 + [0.0] * 70)
    out = decide_gate(cand, base, GatePolicy())
    assert out.decision == "fail"
    assert out.delta == pytest.approx(-0.15)
    assert out.ci_high < -0.01
    assert "lies below -0.01 (non-inferiority margin)" in out.reason


def test_inconclusive_when_interval_contains_threshold():
    # Worse on 2 items, better on 1, out of 40: delta -0.0125, wide CI.
    cand, base = _runs([-0.5, -0.5, 0.5] + [0.0] * 37)
    out = decide_gate(cand, base, GatePolicy())
    assert out.decision == "inconclusive"
    assert out.ci_low < -0.01 < out.ci_high
    assert "contains -0.01 (non-inferiority margin)" in out.reason


def test_require_improvement_uses_zero_threshold():
    # Slightly worse on 1% of items (delta -0.005): non-inferior, but
    # credibly not an improvement.
    cand, base = _runs([-0.5] * 10 + [0.0] * 990)
    assert decide_gate(cand, base, GatePolicy()).decision == "pass"
    strict = decide_gate(cand, base, GatePolicy(require_improvement=True))
    assert strict.decision == "fail"
    assert "lies below 0 (superiority" in strict.reason

    cand, base = _runs([0.5] * 20 + [0.0] * 80)
    better = decide_gate(cand, base, GatePolicy(require_improvement=True))
    assert better.decision == "pass"
    assert "lies above 0 (superiority" in better.reason

    # Identical runs: the collapsed interval [0, 0] touches the threshold.
    cand, base = _runs([0.0] * 50)
    assert decide_gate(cand, base, GatePolicy(require_improvement=True)).decision == "inconclusive"


def test_margin_changes_the_decision():
    cand, base = _runs([-0.5] * 6 + [0.0] * 194)  # delta -0.015
    assert decide_gate(cand, base, GatePolicy(margin=0.01)).decision in {"fail", "inconclusive"}
    assert decide_gate(cand, base, GatePolicy(margin=0.1)).decision == "pass"


def test_reason_reports_confidence_level_and_counts():
    cand, base = _runs([0.5] * 10 + [0.0] * 90)
    out = decide_gate(cand, base, GatePolicy(confidence=0.9))
    assert out.reason.startswith("90% CI of the difference")
    assert "over 100 paired items" in out.reason
    assert f"{out.ci_low:.4g}" in out.reason and f"{out.ci_high:.4g}" in out.reason


def test_gate_is_reproducible_and_seed_sensitive():
    rng = np.random.default_rng(42)
    cand, base = _runs(rng.choice([-0.5, 0.0, 0.5], size=200))
    a = decide_gate(cand, base, GatePolicy(seed=1))
    assert a == decide_gate(cand, base, GatePolicy(seed=1))
    b = decide_gate(cand, base, GatePolicy(seed=2))
    assert a.delta == b.delta and (a.ci_low, a.ci_high) != (b.ci_low, b.ci_high)


# --------------------------------------------------------------------------
# GatePolicy
# --------------------------------------------------------------------------


def test_policy_defaults():
    p = GatePolicy()
    assert (p.margin, p.confidence, p.min_items) == (0.01, 0.95, 30)
    assert (p.require_improvement, p.auto_promote) == (False, False)
    assert (p.n_resamples, p.seed) == (2000, 0)


def test_policy_digest_is_stable():
    d = GatePolicy().digest()
    assert len(d) == 16 and set(d) <= set("0123456789abcdef")  # 16 lowercase hex digits
    assert d == GatePolicy().digest()
    # Pinned: the digest is stored with gate results, so its canonical form
    # must not change silently across releases.
    # (0.6.0 added max_unscored: gates of earlier releases keep their own rows.)
    canonical = (
        '{"confidence":0.95,"margin":0.01,"max_unscored":0.05,"min_items":30,'
        '"n_resamples":2000,"require_improvement":false,"seed":0}'
    )
    assert d == hashlib.sha256(canonical.encode()).hexdigest()[:16] == "d8b30f2f33eaac86"
    # Ints given for float fields hash the same as the floats.
    assert GatePolicy(margin=0, confidence=0.95).digest() == GatePolicy(margin=0.0).digest()


def test_policy_digest_ignores_auto_promote():
    assert GatePolicy(auto_promote=True).digest() == GatePolicy(auto_promote=False).digest()


@pytest.mark.parametrize(
    "change",
    [
        {"margin": 0.02},
        {"confidence": 0.9},
        {"min_items": 31},
        {"require_improvement": True},
        {"n_resamples": 2001},
        {"seed": 1},
        {"max_unscored": 0.1},
    ],
)
def test_policy_digest_covers_decision_fields(change):
    assert GatePolicy(**change).digest() != GatePolicy().digest()


def test_every_decision_field_is_in_the_digest():
    # Guard against a new field being added to the policy but not the digest.
    covered = {"margin", "confidence", "min_items", "require_improvement", "n_resamples", "seed",
               "max_unscored"}
    assert set(GatePolicy.model_fields) == covered | {"auto_promote"}


def test_policy_is_frozen():
    p = GatePolicy()
    with pytest.raises(pydantic.ValidationError):
        p.margin = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad",
    [
        {"margin": -0.01},
        {"margin": 1.5},
        {"confidence": 0.5},
        {"confidence": 1.0},
        {"min_items": 0},
        {"n_resamples": 99},
        {"n_resamples": 100_001},
        {"seed": -1},
        {"unknown_field": 1},
    ],
)
def test_policy_bounds(bad):
    with pytest.raises(pydantic.ValidationError):
        GatePolicy(**bad)


def test_policy_schema_documents_every_field():
    props = GatePolicy.model_json_schema()["properties"]
    assert set(props) == set(GatePolicy.model_fields)
    for name, prop in props.items():
        assert prop.get("description"), name
        assert "default" in prop, name
    assert props["margin"]["minimum"] == 0 and props["margin"]["maximum"] == 1
    assert props["n_resamples"]["minimum"] == 100 and props["n_resamples"]["maximum"] == 100_000
