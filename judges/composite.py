"""Composite judges: a majority vote, or a weighted score, of other registered judges.

Defined in configuration, not code (``TUNIX_RT_JUDGES_CONFIG``, read by tunix-rt):

    composites:
      strict: {type: majority, judges: [exact_match, format, llm]}
      blended: {type: weighted, judges: {exact_match: 0.7, format: 0.3}}

A composite's version is a hash of its definition and of its members' versions, so
changing either makes new verdicts rather than mixing old and new.

Wrong and unscored (the rule of ``tunix_rt.judges.base``): a member's wrong answer is
a scored 0, and counts as a failing vote (majority) or a 0 in the mean (weighted). Only
members that could not score the item (unscored) are left out: a majority is unscored
when half or more of its members are, a weighted composite when none scored.

A composite is what its members are: it caches if a member does (its factory takes a
``cache_factory``, ``(member name, member version) -> cache``, and gives each caching
member its own cache, keyed by that member's name and version); it costs if a member
does (its ``ledger`` sums the members' ledgers); it samples if a member does (its
``variant`` is the composite of the members' variants, the others unchanged).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tunix_rt.judges.base import Item, Judge, Ledger, ScoringContext, Verdict, costs, samples
from tunix_rt.judges.registry import JudgeSpec, judge_spec, register_judge

# (member name, member version) -> a verdict cache for that member.
CacheFactory = Callable[[str, str], Any]


@dataclass
class CompositeJudge:
    """Combines its members' verdicts.

    ``variant`` exists only when a member samples, and ``ledger`` only when a member
    keeps one; otherwise reading either raises AttributeError, so that the judge
    reports no capability it does not have.
    """

    name: str
    version: str
    mode: str                      # "majority" | "weighted"
    members: list[tuple[Judge, float]]

    @property
    def requires_reference(self) -> bool:
        return any(j.requires_reference for j, _ in self.members)

    @property
    def ledger(self) -> Ledger:
        """What the members spent in the last ``score()``: the sum of their ledgers."""
        paying = [judge.ledger for judge, _ in self.members if costs(judge)]
        if not paying:
            raise AttributeError(f"composite {self.name!r} has no member that keeps a ledger")
        return Ledger.total(paying)

    @property
    def variant(self) -> Callable[[int], CompositeJudge]:
        """``variant(seed_offset)``: the composite of its sampling members' variants."""
        if not any(samples(judge) for judge, _ in self.members):
            raise AttributeError(f"composite {self.name!r} has no member that samples")
        return self._variant

    def _variant(self, seed_offset: int) -> CompositeJudge:
        return CompositeJudge(self.name, self.version, self.mode,
                              [(judge.variant(seed_offset) if samples(judge) else judge, weight)
                               for judge, weight in self.members])

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


def build_member(spec: JudgeSpec, cache_factory: CacheFactory | None) -> Judge:
    """A composite's member; a caching one gets its own cache from ``cache_factory``."""
    parameter = spec.cache_parameter if cache_factory is not None else None
    if parameter == "cache":
        return spec.build(cache=cache_factory(spec.name, spec.version))
    if parameter == "cache_factory":  # a composite inside a composite
        return spec.build(cache_factory=cache_factory)
    return spec.build()


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

        def factory(cache_factory: CacheFactory | None = None, _specs=specs, _weights=weights,
                    _mode=spec["type"], _name=name, _version=f"c-{digest}") -> CompositeJudge:
            return CompositeJudge(_name, _version, _mode,
                                  [(build_member(s, cache_factory), _weights[m])
                                   for m, s in _specs.items()])

        register_judge(name, version=f"c-{digest}", description=(
            f"{spec['type']} of {', '.join(weights)}"),
            requires_reference=any(s.requires_reference for s in specs.values()),
            caches=any(s.caches for s in specs.values()),
            samples=any(s.samples for s in specs.values()),
            costs=any(s.costs for s in specs.values()))(factory)
        names.append(name)
    return names
