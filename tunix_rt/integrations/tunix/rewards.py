"""Judges as Tunix rewards: the judge that gates a run can be the reward that trains it.

``judge_reward("exact_match")`` (any registered judge: ``llm``, ``format``, a composite,
a plugin) is a reward function as Tunix's RL learners call them,
``fn(prompts=[...], completions=[...], **kwargs) -> list[float]``, one reward per
completion. Each (prompt, completion) is scored by the judge as one item, its reference
read from the kwarg ``reference_key`` (default ``reference``: the dataset column of that
name, which Tunix passes through to the reward functions).

How verdicts become rewards:

- a scored verdict is its score, in [0, 1] (exact_match: 1.0 right, 0.0 wrong; a wrong
  answer, an empty reply and a missing answer are scored 0, as in the loop);
- an *unscored* verdict (the judge's own failure: no reference, a provider that kept
  failing, a grade it could not read) is ``unscored`` (default 0.0, so a failing judge
  teaches nothing either way; pass ``float("nan")`` to have Tunix's reward manager,
  which sums rewards with ``nansum``, treat it the same but see it in its logs).

The judge is built as the loop builds it (:func:`tunix_rt.quality.judging.build_judge`),
so the ``llm`` judge's verdict cache in the database applies (the same completion is
graded once, across steps and runs), and its cost is added up in ``reward.ledger``.
``reward.last_verdicts`` keeps the verdicts of the last call, ``reward.mean`` the mean
reward given so far.

Importing this module does not import Tunix: a reward function is plain Python.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

from tunix_rt.judges import Item, ScoringContext, judge_spec
from tunix_rt.judges.base import Ledger

__all__ = ["JudgeReward", "judge_reward"]


class JudgeReward:
    """A tunix-rt judge as a Tunix reward function (see the module docstring)."""

    def __init__(self, judge: Any, *, reference_key: str = "reference",
                 unscored: float = 0.0, context: ScoringContext | None = None) -> None:
        self.judge = judge
        self.reference_key = reference_key
        self.unscored = float(unscored)
        self.context = context or ScoringContext(run_id="tunix-reward")
        self.ledger = Ledger()
        self.last_verdicts: list[Any] = []
        self.count = 0          # rewards given so far
        self.total = 0.0        # their sum
        self.__name__ = f"judge_reward_{judge.name}"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        references = kwargs.get(self.reference_key)
        if references is None:
            if getattr(self.judge, "requires_reference", False):
                raise ValueError(f"judge {self.judge.name!r} needs references: give the "
                                 f"dataset a {self.reference_key!r} column (Tunix passes it "
                                 f"to reward functions), or name it with reference_key=")
            references = [None] * len(prompts)
        references = [None if r is None else str(r) for r in _as_list(references)]
        if len(references) != len(prompts):
            raise ValueError(f"kwarg {self.reference_key!r} has {len(references)} values for "
                             f"{len(prompts)} completions")
        items = [Item(id=_item_id(i, p), response=str(c), prompt=str(p), reference=r)
                 for i, (p, c, r) in enumerate(zip(prompts, completions, references))]
        verdicts = self.judge.score(items, self.context)
        if len(verdicts) != len(items):
            raise RuntimeError(f"judge {self.judge.name!r} returned {len(verdicts)} verdicts "
                               f"for {len(items)} completions")
        self.last_verdicts = list(verdicts)
        ledger = getattr(self.judge, "ledger", None)
        if hasattr(ledger, "as_dict"):
            self.ledger = Ledger.total([self.ledger, ledger])
        rewards = [self.reward(v.score) for v in verdicts]
        finite = [r for r in rewards if not math.isnan(r)]
        self.count += len(finite)
        self.total += sum(finite)
        return rewards

    @property
    def mean(self) -> float | None:
        """The mean reward given so far (NaN rewards left out); None before any."""
        return self.total / self.count if self.count else None

    def reward(self, score: float | None) -> float:
        """The reward for one verdict's score (None: unscored)."""
        if score is None or (isinstance(score, float) and math.isnan(score)):
            return self.unscored
        return float(score)


def _as_list(values: Any) -> list[Any]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    return list(values)


def _item_id(index: int, prompt: Any) -> str:
    """Stable for the same prompt (the llm judge's cache keys on the id and the content)."""
    return "reward-" + hashlib.sha256(str(prompt).encode()).hexdigest()[:16]


def judge_reward(name: str, *, reference_key: str = "reference", unscored: float = 0.0,
                 engine: Any = None) -> JudgeReward:
    """The registered judge ``name`` as a Tunix reward function.

    ``engine`` is the database whose verdict cache a caching judge uses (default: the
    configured one, ``TUNIX_RT_DATABASE_URL`` or the embedded SQLite file). An unknown
    name raises, listing the registered judges.
    """
    from tunix_rt.quality.judging import build_judge

    judge_spec(name)  # an unknown name fails here, naming the registered ones
    return JudgeReward(build_judge(name, engine), reference_key=reference_key,
                       unscored=unscored)
