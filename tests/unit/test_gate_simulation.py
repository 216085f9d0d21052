"""Seeded simulations of the gate's error rates (type I error and power).

Model of one simulated gate (paired binary judge scores on n items)
--------------------------------------------------------------------
Items differ in difficulty, and two checkpoints of one model agree on most
items. Per simulated gate:

* each item i gets a latent success probability p_i ~ Beta(A, B) with
  A = 0.09, B = 0.06 (U-shaped: most items are almost always or almost never
  solved; mean accuracy mu = A / (A + B) = 0.6);
* baseline score  b_i ~ Bernoulli(p_i);
* candidate score c_i ~ Bernoulli(q_i), drawn independently of b_i given the
  item, where q_i is p_i shifted so that E[q_i] - E[p_i] is exactly delta
  while staying inside [0, 1]:
      delta <= 0:  q_i = p_i * (1 + delta / mu)             E[q] = mu + delta
      delta >  0:  q_i = 1 - (1 - p_i) * (1 - delta / (1 - mu))
                                                             E[q] = mu + delta
  So the true (population) mean difference E[c_i - b_i] is exactly delta,
  and the realised difference on the n sampled items varies around it as it
  would for a real eval set.

The shared difficulty makes b and c strongly correlated (about 94% of items
get the same score from both runs, correlation ~0.87), which is what makes a
paired gate powerful. With independent pairs instead (Bernoulli(0.60) vs
Bernoulli(0.65), no shared difficulty) the power in test (b) would be only
about 50%; in this model it is about 98-99% (normal approximation).

All simulations are seeded, so the measured rates are fixed numbers, not
flaky. The bootstrap uses n_resamples=1000 (not the default 2000) to keep
the 1500 simulated gates within a few seconds; at n=500 items this moves
the interval ends by well under a tenth of their width.
"""

from __future__ import annotations

import numpy as np
import pytest

from tunix_rt.quality.stats import GatePolicy, decide_gate

A, B = 0.09, 0.06
MU = A / (A + B)
N_ITEMS = 500
N_GATES = 500
N_RESAMPLES = 1000  # lower than the default 2000 for speed; see module docstring
ITEM_IDS = [f"item-{i:04d}" for i in range(N_ITEMS)]


def candidate_probabilities(p: np.ndarray, delta: float) -> np.ndarray:
    """Per-item candidate success probabilities with E[q] - E[p] == delta."""
    if delta <= 0:
        return p * (1.0 + delta / MU)
    return 1.0 - (1.0 - p) * (1.0 - delta / (1.0 - MU))


def simulate_runs(rng: np.random.Generator, delta: float, n: int = N_ITEMS):
    p = rng.beta(A, B, size=n)
    q = candidate_probabilities(p, delta)
    baseline = (rng.random(n) < p).astype(float)
    candidate = (rng.random(n) < q).astype(float)
    return candidate, baseline


def pass_rate(delta: float, *, sim_seed: int, **policy_kwargs) -> tuple[float, float]:
    """Run N_GATES simulated gates; return (pass rate, mean realised delta)."""
    rng = np.random.default_rng(sim_seed)
    passes = 0
    realised = []
    for k in range(N_GATES):
        cand, base = simulate_runs(rng, delta)
        policy = GatePolicy(n_resamples=N_RESAMPLES, seed=k, **policy_kwargs)
        out = decide_gate(dict(zip(ITEM_IDS, cand)), dict(zip(ITEM_IDS, base)), policy)
        assert out.n_paired == N_ITEMS
        passes += out.decision == "pass"
        realised.append(out.delta)
    return passes / N_GATES, float(np.mean(realised))


@pytest.mark.parametrize("delta", [-0.05, -0.01, 0.0, 0.01, 0.05])
def test_model_has_exact_true_delta(delta):
    """The construction shifts the expected score by exactly delta."""
    p = np.random.default_rng(0).beta(A, B, size=2_000_000)
    q = candidate_probabilities(p, delta)
    assert np.all((q >= 0) & (q <= 1))
    # Exact in expectation; Monte Carlo error on 2e6 items is ~1e-4.
    assert float(np.mean(q - p)) == pytest.approx(delta, abs=5e-4)
    # Closed form: the shift is linear in p, so E[q] = q(E[p]) = q(MU) = MU + delta.
    at_mean = float(candidate_probabilities(np.array([MU]), delta)[0])
    assert at_mean - MU == pytest.approx(delta, abs=1e-15)


def test_model_runs_are_strongly_correlated():
    cand, base = simulate_runs(np.random.default_rng(1), 0.0, n=20_000)
    agreement = float(np.mean(cand == base))
    assert 0.90 < agreement < 0.97
    assert np.corrcoef(cand, base)[0, 1] > 0.8


def test_worse_by_exactly_the_margin_rarely_passes():
    """(a) True delta = -margin: passing is a type I error; want <= 5%."""
    rate, mean_delta = pass_rate(-0.01, sim_seed=101)
    print(f"\n(a) candidate worse by the margin: pass rate {rate:.3f} over {N_GATES} gates")
    assert mean_delta == pytest.approx(-0.01, abs=0.003)
    assert rate <= 0.05


def test_clearly_better_candidate_passes():
    """(b) True delta = +0.05 on 500 items, default policy: want >= 95% passes."""
    rate, mean_delta = pass_rate(0.05, sim_seed=202)
    print(f"\n(b) candidate better by 0.05: pass rate {rate:.3f} over {N_GATES} gates")
    assert mean_delta == pytest.approx(0.05, abs=0.003)
    assert rate >= 0.95


def test_equal_candidate_rarely_passes_superiority():
    """(c) require_improvement, true delta = 0: passing is a type I error."""
    rate, mean_delta = pass_rate(0.0, sim_seed=303, require_improvement=True)
    print(f"\n(c) equal candidate, require_improvement: pass rate {rate:.3f} over {N_GATES} gates")
    assert mean_delta == pytest.approx(0.0, abs=0.003)
    assert rate <= 0.05


def _worst_items(cand: np.ndarray, base: np.ndarray, share: float) -> np.ndarray:
    """Indices of the candidate's worst ``share`` of items: its wrong answers first,
    those the baseline got right first among them (where answering costs it most)."""
    order = np.lexsort((-base, cand))  # by candidate score, then baseline score descending
    return order[: int(share * len(cand))]


def test_dropping_or_blanking_the_worst_items_never_helps():
    """(d) A candidate that leaves out (or blanks) its worst 20% of items passes at most
    as often as one that answers them wrong, and the hole this closes was real: pairing
    only the items both runs have, as tunix-rt did before 0.6.0, let it pass far more."""
    rng = np.random.default_rng(404)
    wrong = dropped = blank = paired_only = 0
    for k in range(N_GATES):
        cand, base = simulate_runs(rng, -0.03)
        worst = set(_worst_items(cand, base, 0.2).tolist())
        policy = GatePolicy(n_resamples=N_RESAMPLES, seed=k)
        baseline = dict(zip(ITEM_IDS, base))
        answered = {ITEM_IDS[i]: cand[i] for i in range(N_ITEMS)}
        kept = {ITEM_IDS[i]: cand[i] for i in range(N_ITEMS) if i not in worst}
        blanked = {**kept, **{ITEM_IDS[i]: 0.0 for i in worst}}  # an empty response is wrong
        wrong += decide_gate(answered, baseline, policy).decision == "pass"
        dropped += decide_gate(kept, baseline, policy).decision == "pass"
        blank += decide_gate(blanked, baseline, policy).decision == "pass"
        old = decide_gate(kept, {i: baseline[i] for i in kept}, policy)
        paired_only += old.decision == "pass"
    print(f"\n(d) worse by 0.03, worst 20% dropped: pass rate {dropped / N_GATES:.3f}, blanked "
          f"{blank / N_GATES:.3f}, answered wrong {wrong / N_GATES:.3f}; pairing only the "
          f"answered items (before 0.6.0): {paired_only / N_GATES:.3f}")
    assert dropped <= wrong and blank <= wrong
    assert wrong / N_GATES <= 0.05
    assert paired_only / N_GATES >= 0.5  # the simulation does exercise the old hole
