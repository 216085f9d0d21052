"""The ``exact_match`` judge: the response's final answer equals the reference.

Wrong (a scored 0): an empty or whitespace-only response, and an answer that is not
the reference. A response that states no answer in a known form (``<answer>``,
``\\boxed``, ``####``, "the answer is") is compared whole, so a bare "42" counts and
anything else is wrong. Unscored: only an item whose reference is missing (or has no
answer left after normalization), whatever its response: the judge cannot tell.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunix_rt.judges._text import extract_answer, normalize_answer
from tunix_rt.judges.base import Item, ScoringContext, Verdict, is_empty
from tunix_rt.judges.registry import register_judge

NAME = "exact_match"
VERSION = "1.0"


class ExactMatchJudge:
    """Extracts the final answer from each response and compares it, normalized,
    with the normalized reference."""

    name = NAME
    version = VERSION
    requires_reference = True
    per_item = True  # each verdict is its item's alone (tunix_rt.judges.base.per_item)

    def score(self, items: Sequence[Item], context: ScoringContext) -> list[Verdict]:
        """Return one verdict per item, in the order given."""
        score_one = self._score_one  # one attribute lookup a batch, not an item
        return [score_one(item) for item in items]

    def _score_one(self, item: Item) -> Verdict:
        # The reference first: an item the judge cannot judge stays unscored even when
        # its response is empty, or only the failures of such items would be scored.
        if item.reference is None or not item.reference.strip():
            return self._unscored(item, "item has no reference; exact_match needs one")
        reference = normalize_answer(_reference_answer(item.reference))
        if not reference:
            return self._unscored(item, f"reference {item.reference!r} has no answer left after "
                                        "normalization")
        if is_empty(item.response):
            return Verdict.wrong(item.id, "empty response", judge=self.name,
                                 judge_version=self.version,
                                 raw={"extracted": None, "reference": reference})

        found = extract_answer(item.response)
        # A bare "42" is a perfectly good answer, so no marker means the whole reply.
        extracted = normalize_answer(found if found is not None else item.response)
        # Positional, in Verdict's field order: a chunk of 10,000 items pays for every
        # keyword of a frozen dataclass's __init__.
        if extracted == reference:
            return Verdict(item.id, 1.0, True, f"extracted {extracted!r} == reference "
                           f"{reference!r}", self.name, self.version,
                           {"extracted": extracted, "reference": reference})
        return Verdict(item.id, 0.0, False, f"extracted {extracted!r} != reference {reference!r}",
                       self.name, self.version, {"extracted": extracted, "reference": reference})

    def _unscored(self, item: Item, reason: str) -> Verdict:
        return Verdict.unscored(item.id, reason, judge=self.name, judge_version=self.version)


def _reference_answer(reference: str) -> str:
    """The answer part of a reference; GSM8K references carry their working too."""
    if "####" in reference or "<answer>" in reference.lower():
        found = extract_answer(reference)
        if found is not None:
            return found
    return reference


@register_judge(NAME, version=VERSION, requires_reference=True,
                description="final answer equals the reference after normalization")
def exact_match_judge() -> ExactMatchJudge:
    """Build the exact-match judge."""
    return ExactMatchJudge()
