"""The ``mock`` judge: deterministic pseudo-random verdicts, for tests and demos.

The verdict is a function of (run id, item id) alone, so re-scoring a run gives the
same verdicts while two runs of the same items differ, without any model call. The
one exception is the rule every judge keeps: an empty or whitespace-only response is
a wrong answer (a scored 0), never a lucky pass. It needs no reference, so it never
returns an unscored verdict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from tunix_rt.judges.base import Item, ScoringContext, Verdict, is_empty
from tunix_rt.judges.registry import register_judge

NAME = "mock"
VERSION = "1.0"


def hash_uniform(run_id: str, item_id: str) -> float:
    """A value in [0, 1) fixed by ``run_id`` and ``item_id`` and spread uniformly."""
    # The NUL separator keeps ("ab", "c") and ("a", "bc") apart.
    digest = hashlib.blake2b(f"{run_id}\0{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class MockJudge:
    """Passes an item when its hash value falls below ``pass_rate``.

    The score is binary (1.0 passed, 0.0 failed) so that a run's mean score equals
    its pass rate, which keeps tests of aggregates easy to reason about.
    """

    name = NAME
    version = VERSION
    requires_reference = False

    def __init__(self, pass_rate: float = 0.5) -> None:
        if not 0.0 <= pass_rate <= 1.0:
            raise ValueError(f"pass_rate must be in [0, 1], got {pass_rate!r}")
        self.pass_rate = pass_rate

    def score(self, items: Sequence[Item], context: ScoringContext) -> list[Verdict]:
        """Return one verdict per item, in the order given."""
        verdicts = []
        for item in items:
            if is_empty(item.response):
                verdicts.append(Verdict.wrong(item.id, "empty response", judge=self.name,
                                              judge_version=self.version))
                continue
            u = hash_uniform(context.run_id, item.id)
            passed = u < self.pass_rate
            verdicts.append(Verdict(
                item_id=item.id, score=1.0 if passed else 0.0, passed=passed,
                rationale=f"hash value {u:.3f} {'<' if passed else '>='} pass rate {self.pass_rate}",
                judge=self.name, judge_version=self.version, raw={"uniform": u}))
        return verdicts


@register_judge(NAME, version=VERSION, requires_reference=False,
                description="deterministic pseudo-random verdicts from a hash of run and item")
def mock_judge(pass_rate: float = 0.5) -> MockJudge:
    """Build the mock judge; about ``pass_rate`` of the items pass."""
    return MockJudge(pass_rate=pass_rate)
