"""The ``format`` judge: the response is ``<reasoning>...</reasoning><answer>...</answer>``.

A malformed response (an empty one included) is a wrong answer, a scored 0 whose
rationale names the problem. The judge needs nothing it could lack, so it never
returns an unscored verdict.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunix_rt.judges.base import Item, ScoringContext, Verdict
from tunix_rt.judges.registry import register_judge

NAME = "format"
VERSION = "1.0"
_BLOCKS = ("reasoning", "answer")


def format_problems(response: str) -> list[str]:
    """Everything wrong with ``response`` as a reasoning-then-answer trace; empty if fine.

    A structural problem (a missing, repeated, unclosed or misordered tag) is reported
    alone, since the checks after it would not mean anything; otherwise every content
    problem (text outside the tags, an empty block) is listed.
    """
    if not response.strip():
        return ["empty response"]

    for block in _BLOCKS:
        opens, closes = response.count(f"<{block}>"), response.count(f"</{block}>")
        if opens == 0 and closes == 0:
            return [f"missing <{block}> block"]
        if opens > 1 or closes > 1:
            return [f"more than one <{block}> block"]
        if opens != closes:
            return [f"unclosed <{block}> block" if opens > closes
                    else f"</{block}> without a matching <{block}>"]

    # Exactly one of each tag now; their positions must run in this order.
    positions = [response.index(tag) for tag in
                 ("<reasoning>", "</reasoning>", "<answer>", "</answer>")]
    if positions != sorted(positions):
        if positions[2] < positions[0]:
            return ["<answer> block comes before the <reasoning> block"]
        return ["tags are nested or out of order"]

    r_open, r_close, a_open, a_close = positions
    outside = (response[:r_open], response[r_close + len("</reasoning>"):a_open],
               response[a_close + len("</answer>"):])
    problems = []
    if any(part.strip() for part in outside):
        problems.append("text outside the tags")
    if not response[r_open + len("<reasoning>"):r_close].strip():
        problems.append("empty <reasoning> block")
    if not response[a_open + len("<answer>"):a_close].strip():
        problems.append("empty <answer> block")
    return problems


class TraceFormatJudge:
    """Scores 1.0 when the response is a well-formed reasoning-then-answer trace."""

    name = NAME
    version = VERSION
    requires_reference = False

    def score(self, items: Sequence[Item], context: ScoringContext) -> list[Verdict]:
        """Return one verdict per item, in the order given."""
        verdicts = []
        for item in items:
            problems = format_problems(item.response)
            if problems:
                verdicts.append(Verdict.wrong(item.id, "; ".join(problems), judge=self.name,
                                              judge_version=self.version,
                                              raw={"problems": problems}))
            else:
                verdicts.append(Verdict(
                    item_id=item.id, score=1.0, passed=True,
                    rationale="well-formed <reasoning> then <answer>", judge=self.name,
                    judge_version=self.version, raw={"problems": problems}))
        return verdicts


@register_judge(NAME, version=VERSION, requires_reference=False,
                description="response is <reasoning>...</reasoning><answer>...</answer>")
def trace_format_judge() -> TraceFormatJudge:
    """Build the trace-format judge."""
    return TraceFormatJudge()
