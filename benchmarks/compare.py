"""The gate's evidence at 100k items: counts and a page in SQL vs everything in Python.

``tunix_rt.quality.compare`` joins the two evaluations' verdicts in the database, counts
the 2x2 table in one pass (a count FILTER per class) and reads one keyset page. The
naive side does what a first version would: read both evaluations' verdicts and the
dataset's items into Python, pair them, count, sort, filter, and cut the page. Both
answer the same counts and the same page (checked).

Run alone: ``python -m benchmarks.compare [--quick]``.
"""

from __future__ import annotations

import random
import sys
from typing import Any

from sqlalchemy import insert, select

from benchmarks.common import Result, Scale, databases, fmt_seconds, interleaved
from tunix_rt.quality import compare as cmp
from tunix_rt.store.cursor import encode_cursor

FULL_ITEMS, QUICK_ITEMS = 100_000, 10_000
PAGE = 50
REPS = 5


def build(url: str, n: int, seed: int = 0) -> tuple[Any, str, int, int, int]:
    """A dataset of ``n`` items and two evaluated runs of it, bulk-inserted."""
    from tunix_rt.store.db import get_engine, session_scope
    from tunix_rt.store.models import Dataset, DatasetItem, Evaluation, Run, Verdict, utcnow

    engine = get_engine(url)
    rng = random.Random(seed)
    ids = [f"q{i:07d}" for i in range(n)]
    with session_scope(engine) as session:
        ds = Dataset(name="bench", version=1, content_hash="0" * 64, n_items=n,
                     source="registered", created_at=utcnow())
        session.add(ds)
        session.flush()
        for start in range(0, n, 5_000):
            session.execute(insert(DatasetItem), [
                {"dataset_id": ds.id, "item_id": i, "prompt": f"What is {i} plus one?",
                 "reference": "42"} for i in ids[start:start + 5_000]])
        evs = []
        for name in ("candidate", "baseline"):
            run = Run(name=name, dataset="bench", model="m", predictions_uri="/x.jsonl",
                      status="completed")
            session.add(run)
            session.flush()
            ev = Evaluation(run_id=run.id, judge="exact_match", judge_version="2",
                            status="completed", n_items=n, dataset_id=ds.id,
                            finished_at=utcnow())
            session.add(ev)
            session.flush()
            evs.append((run.id, ev.id))
        for (_, ev_id), share in zip(evs, (0.6, 0.7)):
            for start in range(0, n, 5_000):
                rows = []
                for item_id in ids[start:start + 5_000]:
                    u = rng.random()
                    score = None if u < 0.01 else (1.0 if u < share else 0.0)
                    rows.append({"evaluation_id": ev_id, "item_id": item_id, "score": score,
                                 "passed": None if score is None else score == 1.0,
                                 "rationale": "extracted '41' != reference '42'",
                                 "response": "<reasoning>" + "step " * 20 +
                                 "</reasoning><answer>41</answer>"})
                session.execute(insert(Verdict), rows)
    if engine.dialect.name == "postgresql":
        from benchmarks.common import analyze

        analyze(engine)
    return engine, evs[0][0], evs[0][1], evs[1][1], ds.id


def naive(session: Any, cand_ev: int, base_ev: int, dataset_id: int,
          after: str | None) -> tuple[dict[str, int], list[str]]:
    """Everything into Python: both evaluations' verdicts, the items; pair, count, page."""
    from tunix_rt.store.models import DatasetItem, Verdict

    def verdicts(ev: int) -> dict[str, Any]:
        return {r.item_id: r for r in session.execute(select(
            Verdict.item_id, Verdict.score, Verdict.passed, Verdict.rationale,
            Verdict.response).where(Verdict.evaluation_id == ev))}

    cand, base = verdicts(cand_ev), verdicts(base_ev)
    items = {r.item_id: r for r in session.execute(select(
        DatasetItem.item_id, DatasetItem.prompt, DatasetItem.reference).where(
        DatasetItem.dataset_id == dataset_id))}
    counts = dict.fromkeys((*cmp.CELLS, cmp.EXCLUDED), 0)
    disagree = []
    for item_id in sorted(base):
        b, c = base[item_id], cand.get(item_id)
        if b.score is None or (c is not None and c.score is None):
            counts[cmp.EXCLUDED] += 1
            continue
        cr = c is not None and bool(c.passed)
        br = bool(b.passed)
        cell = {(True, True): cmp.BOTH_RIGHT, (True, False): cmp.ONLY_CANDIDATE,
                (False, True): cmp.ONLY_BASELINE, (False, False): cmp.BOTH_WRONG}[(cr, br)]
        counts[cell] += 1
        if cell in (cmp.ONLY_CANDIDATE, cmp.ONLY_BASELINE) and (after is None
                                                                or item_id > after):
            disagree.append((item_id, items.get(item_id)))
    return counts, [i for i, _ in disagree[:PAGE]]


def run(scale: Scale, want_postgres: bool = True) -> list[Result]:
    from tunix_rt.store.db import session_scope

    n = QUICK_ITEMS if scale.quick else FULL_ITEMS
    results = []
    with databases(want_postgres) as factories:
        for backend, make in factories.items():
            engine, run_id, cand_ev, base_ev, ds_id = build(make("compare"), n)
            mid_key = f"q{n // 2:07d}"
            cursor = encode_cursor(mid_key)  # a page half-way down the list
            with session_scope(engine) as session:
                first = cmp.compare(session, run_id, baseline=_baseline(session, base_ev),
                                    judge="exact_match", limit=PAGE)
                check = naive(session, cand_ev, base_ev, ds_id, mid_key)
                mid = cmp.compare(session, run_id, baseline=first.baseline_run_id,
                                  judge="exact_match", limit=PAGE, cursor=cursor)
            assert check[0] == first.counts, (check[0], first.counts)
            assert check[1] == [i.item_id for i in mid.items]

            def ours() -> None:
                with session_scope(engine) as session:
                    cmp.compare(session, run_id, baseline=first.baseline_run_id,
                                judge="exact_match", limit=PAGE, cursor=cursor)

            def slow() -> None:
                with session_scope(engine) as session:
                    naive(session, cand_ev, base_ev, ds_id, mid_key)

            t_ours, t_naive = interleaved(ours, slow, REPS)

            def page() -> None:
                with session_scope(engine) as session:
                    cmp.outcome_page(session, cand_ev, base_ev, ds_id, limit=PAGE,
                                     cursor=cursor)

            def counts() -> None:
                with session_scope(engine) as session:
                    cmp.outcome_counts(session, cand_ev, base_ev)

            t_page, t_counts = interleaved(page, counts, REPS)
            results.append(Result(
                "gate_compare", backend, f"{n:,} items, 2 evaluations, page of {PAGE}",
                t_ours, t_naive, "all verdicts and items into Python, paired there",
                notes=(f"of which the 2x2 counts (one pass) {fmt_seconds(t_counts)}, a "
                       f"page half-way down the disagreeing items {fmt_seconds(t_page)}"),
                extra={"counts": first.counts, "counts_s": t_counts, "page_s": t_page}))
    return results


def _baseline(session: Any, base_ev: int) -> str:
    from tunix_rt.store.models import Evaluation

    return session.scalar(select(Evaluation.run_id).where(Evaluation.id == base_ev))


if __name__ == "__main__":
    from benchmarks.common import FULL, QUICK

    for result in run(QUICK if "--quick" in sys.argv else FULL,
                      want_postgres="--no-postgres" not in sys.argv):
        print(f"{result.benchmark} [{result.backend}] {result.size}: ours "
              f"{fmt_seconds(result.ours_s)}, naive {fmt_seconds(result.naive_s)} "
              f"({result.ratio:.1f}x); {result.notes}")
