"""The Judge protocol: the one thing every judge implements.

A judge turns a batch of evaluation items into verdicts. It is pure: it reads no
database, starts no Prefect run and imports no Ray; the caller hands it the items
and stores what it returns.

What is wrong and what is unscored:

- The candidate's failures are *wrong* answers (:meth:`Verdict.wrong`: score 0.0,
  passed False, the reason in the rationale): an empty or whitespace-only response,
  a response with no usable answer, a response in the wrong format. Leaving them
  out of the mean would reward a model for saying nothing.
- *Unscored* (:meth:`Verdict.unscored`: score None, with the reason) is only for
  the judge's own failures: the item has no reference to compare with, the provider
  kept failing, the grader's reply could not be parsed. The item says nothing about
  the candidate, so it stays out of the mean, never a silent zero. A judge that
  cannot score an item (no reference) leaves it unscored whatever the response, so
  that it does not score only the failures of items it otherwise cannot judge.

Optional capabilities, declared on the judge's registry entry (``JudgeSpec``) and
checked against the judge it builds:

- *sampling*: ``variant(seed_offset)`` returns the same judge grading with another
  seed, so its self-consistency can be measured (see :func:`samples`);
- *costing*: ``ledger`` is a :class:`Ledger` (or anything with ``as_dict()`` and the
  same counters) of what the last ``score()`` spent (see :func:`costs`);
- *caching*: the factory takes ``cache`` (a verdict cache) or ``cache_factory``.

A judge whose every verdict depends on its own item alone says so with ``per_item =
True`` (see :func:`per_item`): it may be given a batch in parts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Item:
    """One line of a predictions file (see the predictions format in docs/CONTRACT.md)."""

    id: str
    response: str
    prompt: str | None = None
    reference: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScoringContext:
    """What a judge may know about the run whose items it scores."""

    run_id: str
    dataset: str = ""
    model: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A judge's decision on one item.

    ``score`` is in [0, 1], or ``None`` when the judge could not score the item (its
    own failure, see the module docstring); then ``passed`` is ``None`` too and
    ``rationale`` says why. A wrong answer is a scored 0, never unscored. ``raw`` holds a small
    JSON-able record of what the judge saw (an extracted answer, a model reply).
    ``judge`` and ``judge_version`` record the verdict's source.
    """

    item_id: str
    score: float | None
    passed: bool | None
    rationale: str
    judge: str
    judge_version: str
    raw: Mapping[str, Any] | None = None

    @property
    def scored(self) -> bool:
        return self.score is not None

    @classmethod
    def unscored(cls, item_id: str, reason: str, *, judge: str, judge_version: str,
                 raw: Mapping[str, Any] | None = None) -> Verdict:
        """The judge could not score the item (no reference, provider failure, a grade
        it could not read): left out of the mean, with ``reason``."""
        return cls(item_id=item_id, score=None, passed=None, rationale=reason,
                   judge=judge, judge_version=judge_version, raw=raw)

    @classmethod
    def wrong(cls, item_id: str, reason: str, *, judge: str, judge_version: str,
              raw: Mapping[str, Any] | None = None) -> Verdict:
        """The candidate failed the item (an empty response, no answer, a bad format):
        a scored 0.0, not passed, with ``reason``."""
        return cls(item_id=item_id, score=0.0, passed=False, rationale=reason,
                   judge=judge, judge_version=judge_version, raw=raw)


def is_empty(response: str) -> bool:
    """True for an empty or whitespace-only response: a wrong answer for every judge."""
    return not response.strip()


@dataclass(slots=True)
class Ledger:
    """Usage of the last ``score()`` call. ``calls`` counts HTTP requests, retries
    included; ``retries`` the requests beyond each item's first; ``cache_hits`` the
    verdicts a cache gave without a call."""

    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def total(cls, ledgers: Iterable[Any]) -> Ledger:
        """The sum of several ledgers, each read through its ``as_dict()``."""
        names = [f.name for f in fields(cls)]
        sums = dict.fromkeys(names, 0)
        for ledger in ledgers:
            counts = ledger.as_dict()
            for name in names:
                sums[name] += int(counts.get(name) or 0)
        return cls(**sums)


def samples(judge: Any) -> bool:
    """Whether ``judge`` grades by sampling: it has ``variant(seed_offset)``, so its
    self-consistency can be measured. A deterministic judge has none."""
    return callable(getattr(judge, "variant", None))


def per_item(judge: Any) -> bool:
    """Whether ``judge`` judges each item on its own (``per_item = True``): a batch given
    in parts gets the same verdicts, so chunked scoring stores one part's verdicts while
    the judge works on the next."""
    return getattr(judge, "per_item", False) is True


def costs(judge: Any) -> bool:
    """Whether ``judge`` keeps a cost ledger (``ledger.as_dict()``)."""
    return callable(getattr(getattr(judge, "ledger", None), "as_dict", None))


@runtime_checkable
class Judge(Protocol):
    """Scores a batch of items. ``name`` and ``version`` identify its verdicts."""

    name: str
    version: str
    requires_reference: bool

    def score(self, items: Sequence[Item], context: ScoringContext) -> list[Verdict]:
        """Return one verdict per item, in the order given."""
        ...
