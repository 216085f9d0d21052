"""The Judge protocol: the one thing every judge implements.

A judge turns a batch of evaluation items into verdicts. It is pure: it reads no
database, starts no Prefect run and imports no Ray; the caller hands it the items
and stores what it returns. An item the judge cannot score comes back as an
*unscored* verdict carrying the reason, never as a silent zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Item:
    """One line of a predictions file (see the predictions format in CONTRACT.md)."""

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

    ``score`` is in [0, 1], or ``None`` when the item could not be scored; then
    ``passed`` is ``None`` too and ``rationale`` says why. ``raw`` holds a small
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
        return cls(item_id=item_id, score=None, passed=None, rationale=reason,
                   judge=judge, judge_version=judge_version, raw=raw)


@runtime_checkable
class Judge(Protocol):
    """Scores a batch of items. ``name`` and ``version`` identify its verdicts."""

    name: str
    version: str
    requires_reference: bool

    def score(self, items: Sequence[Item], context: ScoringContext) -> list[Verdict]:
        """Return one verdict per item, in the order given."""
        ...
