"""Building a judge for the loop, and measuring a judge's self-consistency.

Judges are pure (tunix_rt.judges); what the loop adds around them lives here: the
database's verdict cache for judges that cache (a composite gets one per caching
member), and repeated gradings for judges that sample.
"""

from __future__ import annotations

import hashlib
from typing import Any

from tunix_rt.judges import Item, judge_spec
from tunix_rt.judges.base import is_empty, samples


def build_judge(judge_name: str, engine: Any = None) -> Any:
    """The named judge; one that caches gets the database's verdict cache.

    A judge whose factory takes ``cache`` gets a :class:`DatabaseVerdictCache` under
    its own name and version; a composite (its factory takes ``cache_factory``) gets
    a factory that gives each caching member such a cache under the member's name and
    version, so its members' verdicts are bought once, as the same judge's alone are.
    """
    from tunix_rt.quality.judge_config import ensure_configured_judges

    ensure_configured_judges()
    spec = judge_spec(judge_name)
    parameter = spec.cache_parameter
    if parameter is None:
        return spec.build()
    from tunix_rt.quality.judge_cache import DatabaseVerdictCache
    from tunix_rt.store.db import get_engine

    bound = engine or get_engine()

    def cache_for(name: str, version: str) -> DatabaseVerdictCache:
        return DatabaseVerdictCache(bound, name, version)

    if parameter == "cache_factory":
        return spec.build(cache_factory=cache_for)
    return spec.build(cache=cache_for(spec.name, spec.version))


SELF_CONSISTENCY_SAMPLE = 50


def self_consistency(judge: Any, items: list[Item], verdicts: list[Any], context: Any,
                     repeat: int) -> tuple[float | None, int]:
    """Agreement of ``repeat`` gradings on a fixed sample; (rate, provider calls spent).

    Measured only for a judge that samples (it has ``variant``, see
    ``tunix_rt.judges.base.samples``): up to ``SELF_CONSISTENCY_SAMPLE`` scored items,
    chosen by a hash of their ids, are graded ``repeat - 1`` more times by variants
    with other seeds, and the rate is the share of them on which every grading passed
    or every grading failed. Items with an empty response are left out of the sample:
    every judge calls them wrong without grading, so they would agree by construction. A judge that does not sample gets ``(None, 0)``: its
    self-consistency was not measured, so none is reported (never a 1.0 by
    construction). None too when no item could be compared (nothing scored).
    """
    counts = agreement_counts(judge, items, verdicts, context, repeat)
    if counts is None:
        return None, 0
    agreed, compared, calls = counts
    return (agreed / compared if compared else None), calls


def sample_key(item_id: str) -> bytes:
    """The order the sample is drawn in: a hash of the id, the same in every process."""
    return hashlib.blake2b(item_id.encode(), digest_size=8).digest()


def agreement_counts(judge: Any, items: list[Item], verdicts: list[Any], context: Any,
                     repeat: int) -> tuple[int, int, int] | None:
    """(items on which every grading agreed, items compared, provider calls) over the
    sample :func:`self_consistency` describes; None for a judge that does not sample.

    Counts, not a rate, so that the parts of a file scored apart (chunks) add up to the
    rate over their whole sample.
    """
    if repeat < 2 or not samples(judge):
        return None
    order = sorted(range(len(items)), key=lambda i: sample_key(items[i].id))
    sample = [i for i in order if verdicts[i].scored and not is_empty(items[i].response)]
    sample = sample[:SELF_CONSISTENCY_SAMPLE]
    if not sample:
        return 0, 0, 0
    outcomes = {i: [verdicts[i].passed] for i in sample}
    calls = 0
    for offset in range(1, repeat):
        variant = judge.variant(offset)
        again = variant.score([items[i] for i in sample], context)
        calls += getattr(getattr(variant, "ledger", None), "calls", 0)
        for i, verdict in zip(sample, again):
            outcomes[i].append(verdict.passed if verdict.scored else None)
    agreed = [len(set(v)) == 1 for v in outcomes.values() if None not in v]
    return sum(agreed), len(agreed), calls
