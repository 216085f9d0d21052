"""Building a judge for the loop, and measuring a judge's self-consistency.

Judges are pure (tunix_rt.judges); what the loop adds around them lives here: the
database's verdict cache for judges that take one, and repeated gradings.
"""

from __future__ import annotations

from typing import Any

from tunix_rt.judges import judge_spec


def build_judge(judge_name: str, engine: Any = None) -> Any:
    """The named judge; one that takes a verdict cache gets the database's."""
    import inspect

    from tunix_rt.quality.judge_config import ensure_configured_judges

    ensure_configured_judges()
    spec = judge_spec(judge_name)
    if "cache" in inspect.signature(spec.factory).parameters:
        from tunix_rt.store.db import get_engine
        from tunix_rt.quality.judge_cache import DatabaseVerdictCache

        return spec.build(cache=DatabaseVerdictCache(engine or get_engine(), spec.name,
                                                     spec.version))
    return spec.build()


SELF_CONSISTENCY_SAMPLE = 50


def self_consistency(judge: Any, items: list[Item], verdicts: list[Any], context: Any,
                     repeat: int) -> tuple[float | None, int]:
    """Agreement of ``repeat`` gradings on a fixed sample; (rate, provider calls spent).

    Deterministic judges (no ``variant``) agree with themselves by construction: 1.0.
    """
    if not hasattr(judge, "variant"):
        return 1.0, 0
    import hashlib

    order = sorted(range(len(items)),
                   key=lambda i: hashlib.blake2b(items[i].id.encode(), digest_size=8).digest())
    sample = [i for i in order if verdicts[i].scored][:SELF_CONSISTENCY_SAMPLE]
    if not sample:
        return None, 0
    outcomes = {i: [verdicts[i].passed] for i in sample}
    calls = 0
    for offset in range(1, repeat):
        variant = judge.variant(offset)
        again = variant.score([items[i] for i in sample], context)
        calls += getattr(getattr(variant, "ledger", None), "calls", 0)
        for i, verdict in zip(sample, again):
            outcomes[i].append(verdict.passed if verdict.scored else None)
    agreed = [len(set(v)) == 1 for v in outcomes.values() if None not in v]
    return (sum(agreed) / len(agreed) if agreed else None), calls
