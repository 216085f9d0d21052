"""Composite judges: a majority vote, or a weighted score, of other registered judges.

Defined in configuration, not code (``TUNIX_RT_JUDGES_CONFIG``, read by tunix-rt):

    composites:
      strict: {type: majority, judges: [exact_match, format, llm]}
      blended: {type: weighted, judges: {exact_match: 0.7, format: 0.3}}

A composite's version is a hash of its definition and of its members' versions, so
changing either makes new verdicts rather than mixing old and new.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tunix_rt.judges.base import Item, Judge, ScoringContext, Verdict
from tunix_rt.judges.registry import judge_spec, register_judge


@dataclass
class CompositeJudge:
    name: str
    version: str
    mode: str                      # "majority" | "weighted"
    members: list[tuple[Judge, float]]

    @property
    def requires_reference(self) -> bool:
        return any(j.requires_reference for j, _ in self.members)

    def score(self, items: Sequence[Item], context: ScoringContext) -> list[Verdict]:
        per_member = [(judge, weight, judge.score(items, context))
                      for judge, weight in self.members]
        return [self._combine(i, item, per_member) for i, item in enumerate(items)]

    def _combine(self, i: int, item: Item, per_member: list) -> Verdict:
        scored = [(judge, weight, verdicts[i]) for judge, weight, verdicts in per_member
                  if verdicts[i].scored]
        detail = {judge.name: verdicts[i].score for judge, _, verdicts in per_member}
        missing = [judge.name for judge, _, verdicts in per_member if not verdicts[i].scored]
        if self.mode == "majority":
            if len(scored) * 2 <= len(per_member):
                return Verdict.unscored(item.id, f"only {len(scored)} of {len(per_member)} judges "
                                        f"scored the item (unscored: {', '.join(missing)})",
                                        judge=self.name, judge_version=self.version, raw=detail)
            votes = sum(1 for _, _, v in scored if v.passed)
            passed = votes * 2 > len(scored)
            return Verdict(item.id, votes / len(scored), passed,
                           f"{votes} of {len(scored)} judges passed it", self.name, self.version,
                           detail)
        total = sum(weight for _, weight, _ in scored)
        if not scored or total <= 0:
            return Verdict.unscored(item.id, "no weighted member scored the item",
                                    judge=self.name, judge_version=self.version, raw=detail)
        score = sum(weight * (v.score or 0.0) for _, weight, v in scored) / total
        note = f"; renormalized without {', '.join(missing)}" if missing else ""
        return Verdict(item.id, score, score >= 0.5, f"weighted mean of {len(scored)} judges{note}",
                       self.name, self.version, detail)


def register_composites(definitions: Mapping[str, Any]) -> list[str]:
    """Register each composite of a ``composites:`` mapping; errors name the composite."""
    names = []
    for name, spec in definitions.items():
        if not isinstance(spec, Mapping) or spec.get("type") not in ("majority", "weighted"):
            raise ValueError(f"composites.{name}: needs type: majority or type: weighted")
        members = spec.get("judges")
        if spec["type"] == "majority":
            if not isinstance(members, list) or len(members) < 2:
                raise ValueError(f"composites.{name}.judges: a majority needs a list of 2+ judges")
            weights = {m: 1.0 for m in members}
        else:
            if not isinstance(members, Mapping) or not members or not all(
                    isinstance(w, (int, float)) and w > 0 for w in members.values()):
                raise ValueError(f"composites.{name}.judges: a weighted composite needs "
                                 "{judge: positive weight, ...}")
            weights = {m: float(w) for m, w in members.items()}
        specs = {m: judge_spec(m) for m in weights}  # unknown members raise, listing judges
        digest = hashlib.sha256(json.dumps(
            [spec["type"], sorted(weights.items()), sorted((m, s.version) for m, s in specs.items())],
        ).encode()).hexdigest()[:8]

        def factory(_specs=specs, _weights=weights, _mode=spec["type"], _name=name,
                    _version=f"c-{digest}") -> CompositeJudge:
            return CompositeJudge(_name, _version, _mode,
                                  [(s.build(), _weights[m]) for m, s in _specs.items()])

        register_judge(name, version=f"c-{digest}", description=(
            f"{spec['type']} of {', '.join(weights)}"),
            requires_reference=any(s.requires_reference for s in specs.values()))(factory)
        names.append(name)
    return names
