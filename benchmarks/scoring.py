"""Benchmarks ``score_throughput`` and ``score_memory``: scoring a large predictions file.

``score_throughput``: ``exact_match`` over one file, end to end: read and check the file,
lay it over its dataset, judge every item, store every verdict and the aggregate on
PostgreSQL. Ours is the chunked path of the quality loop's tasks, called directly
(``tunix_rt.quality.chunks``: plan, each chunk, finish); the naive side is the path as it
was before chunking, kept here as it was: the whole file read into memory
(``prepare_items``), ``score_items``, and the verdicts inserted with batched
``executemany`` in one transaction. Both give the same score and the same number of
verdicts (checked). **Target: at least 100,000 items/s.** The floor is timed in the same
run: a bare ``COPY`` of the same verdict rows, already formatted, into ``verdicts`` (its
foreign key and two indexes), which any side storing the verdicts pays.

``score_memory``: the peak resident memory (``VmHWM``) of a fresh process scoring a file
of 10,000, 100,000 and 1,000,000 items whose responses are about 2 KB, on PostgreSQL,
the dataset registered implicitly from the file. Ours is the chunked path; the naive
side, the one-piece path, runs up to 100,000 items (a million would need gigabytes).
**Target: the peak does not grow with the eval set** (1M within 1.5x of 10k).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Result, Scale

DATASET = "bench-scoring"
THROUGHPUT_TARGET = 100_000  # items/s
MEMORY_GROWTH_LIMIT = 1.5    # peak RSS at the largest size over the smallest


def write_file(path: Path, n: int, *, response_bytes: int = 0, prefix: str = "q") -> int:
    """A predictions file of ``n`` items, 70% right; responses padded to ``response_bytes``."""
    pad = "x" * max(0, response_bytes - 60)
    with path.open("w") as handle:
        for start in range(0, n, 10_000):
            lines = []
            for i in range(start, min(n, start + 10_000)):
                ok = (i * 2654435761) % 10 < 7
                lines.append(json.dumps({
                    "id": f"{prefix}{i:07d}", "prompt": f"what is {i}?",
                    "response": f"<reasoning>{pad}</reasoning><answer>{i if ok else i + 1}"
                                "</answer>",
                    "reference": str(i)}))
            handle.write("\n".join(lines) + "\n")
    return path.stat().st_size


def _new_run(engine: Any, uri: str, name: str, dataset: str = DATASET) -> Any:
    from tunix_rt.quality.evaluation import RunInfo
    from tunix_rt.store.db import session_scope
    from tunix_rt.store.models import RunStatus
    from tunix_rt.store.runs import register_run

    with session_scope(engine) as session:
        run = register_run(session, name=name, dataset=dataset, model="m", predictions_uri=uri,
                           status=RunStatus.completed)
        return RunInfo.of(run)


def ours(engine: Any, run: Any, chunk_items: int = 10_000) -> Any:
    """The chunked path, as the score-run, score-chunk and finish-evaluation tasks call it."""
    from tunix_rt.quality import chunks
    from tunix_rt.store.db import session_scope

    def scope() -> Any:
        return session_scope(engine)

    plan = chunks.plan_scoring(scope, run, "exact_match", chunk_items=chunk_items)
    for chunk in plan.chunks:
        chunks.score_chunk(scope, plan, chunk, engine)
    return chunks.finish_evaluation(scope, plan)


def naive(engine: Any, run: Any) -> Any:
    """The path before chunking: everything in memory, verdicts by batched executemany."""
    from sqlalchemy import delete, insert

    from tunix_rt.quality.evaluation import (VERDICT_BATCH, EvaluationSummary,
                                             _upsert_evaluation, prepare_items, score_items,
                                             stored_response)
    from tunix_rt.store.db import session_scope
    from tunix_rt.store.models import Evaluation, EvaluationStatus, Verdict, utcnow

    aligned = prepare_items(lambda: session_scope(engine), run)
    scored = score_items(run, "exact_match", aligned.items, missing=aligned.missing,
                         dataset=aligned.dataset, n_extra=aligned.extra)
    with session_scope(engine) as session:
        ev_id = _upsert_evaluation(
            session, scored.run_id, scored.judge, scored.judge_version,
            status=EvaluationStatus.completed.value, score=scored.score, ci_low=scored.ci_low,
            ci_high=scored.ci_high, n_items=scored.n_items, n_scored=scored.n_scored,
            n_unscored=scored.n_unscored, error=None, started_at=scored.started_at,
            finished_at=utcnow(), duration_s=scored.duration_s, cost=scored.cost,
            dataset_id=scored.dataset_id, n_missing=scored.n_missing, n_extra=scored.n_extra)
        session.execute(delete(Verdict).where(Verdict.evaluation_id == ev_id))
        rows = [{"evaluation_id": ev_id, "item_id": v.item_id, "score": v.score,
                 "passed": v.passed, "rationale": v.rationale,
                 "raw": dict(v.raw) if v.raw is not None else None,
                 "response": stored_response(r)}
                for v, r in zip(scored.verdicts, scored.responses, strict=True)]
        for start in range(0, len(rows), VERDICT_BATCH):
            session.execute(insert(Verdict), rows[start:start + VERDICT_BATCH])
        return EvaluationSummary.of(session.get(Evaluation, ev_id))


def copy_floor(engine: Any, evaluation_id: int, run: Any) -> float:
    """Seconds for a bare COPY of ``evaluation_id``'s verdicts, formatted beforehand (COPY
    TO), into a new evaluation of ``run``: PostgreSQL's own cost of storing them."""
    from tunix_rt.quality.evaluation import VERDICT_COLUMNS, _upsert_evaluation
    from tunix_rt.store.db import session_scope
    from tunix_rt.store.models import utcnow

    with session_scope(engine) as session:
        now = utcnow()
        target = _upsert_evaluation(session, run.id, "exact_match", "1.0", status="running",
                                    n_items=0, n_scored=0, n_unscored=0, started_at=now,
                                    finished_at=now, duration_s=0.0)
    columns = ", ".join(VERDICT_COLUMNS)
    raw = engine.raw_connection()
    try:
        cursor = raw.driver_connection.cursor()
        data = bytearray()
        with cursor.copy(f"COPY (SELECT {int(target)}, {columns.split(', ', 1)[1]} FROM verdicts "
                         f"WHERE evaluation_id = {int(evaluation_id)}) TO STDOUT") as copy:
            for block in copy:
                data += block
        raw.driver_connection.commit()
        start = time.perf_counter()
        with cursor.copy(f"COPY verdicts ({columns}) FROM STDIN") as copy:
            copy.write(bytes(data))
        raw.driver_connection.commit()
        return time.perf_counter() - start
    finally:
        raw.close()


def run_throughput(url: str, scale: Scale) -> list[Result]:
    from tunix_rt.store.db import make_engine

    n = 20_000 if scale.quick else 100_000
    reps = 1 if scale.quick else 3
    engine = make_engine(url)
    tmp = Path(tempfile.mkdtemp(prefix="tunix-rt-bench-scoring-"))
    path = tmp / "p.jsonl"
    size = write_file(path, n)
    counter = iter(range(10_000))
    first = ours(engine, _new_run(engine, str(path), "register"))  # registers the dataset
    t_ours: list[float] = []
    t_naive: list[float] = []
    t_floor: list[float] = []
    checked = None
    for _ in range(reps):
        for side, fn, times in (("ours", ours, t_ours), ("naive", naive, t_naive)):
            run = _new_run(engine, str(path), f"{side}-{next(counter)}")
            start = time.perf_counter()
            summary = fn(engine, run)
            times.append(time.perf_counter() - start)
            got = (summary.n_items, summary.n_scored, round(summary.score, 12))
            checked = checked or got
            if got != checked or got[0] != n:
                raise RuntimeError(f"{side} gave {got}, expected {checked}")
        t_floor.append(copy_floor(engine, summary.evaluation_id,
                                  _new_run(engine, str(path), f"floor-{next(counter)}")))
    engine.dispose()
    path.unlink()
    tmp.rmdir()
    ours_s, naive_s = statistics.median(t_ours), statistics.median(t_naive)
    rate, naive_rate = n / ours_s, n / naive_s
    floor_rate = n / statistics.median(t_floor)
    met = "met" if rate >= THROUGHPUT_TARGET else "NOT MET"
    return [Result(
        "score_throughput", "postgresql", f"{n:,} items, exact_match, {size / 1e6:.0f} MB file",
        ours_s, naive_s, "whole file in memory, executemany (the path before chunking)",
        notes=(f"{rate:,.0f} items/s vs {naive_rate:,.0f} items/s, end to end with verdicts "
               f"stored; chunks of 10,000; score {first.score:.4f} both sides; median of {reps}; "
               f"floor: a bare COPY of the same verdict rows stores {floor_rate:,.0f} rows/s"),
        target=f">= {THROUGHPUT_TARGET:,} items/s: {met} ({rate:,.0f})",
        extra={"items_per_s": rate, "naive_items_per_s": naive_rate, "runs_s": t_ours,
               "naive_runs_s": t_naive, "copy_floor_rows_per_s": floor_rate,
               "copy_floor_runs_s": t_floor, "target_met": rate >= THROUGHPUT_TARGET})]


def _child(url: str, path: str, side: str) -> dict[str, Any]:
    """Score ``path`` in a fresh process; its peak RSS (VmHWM) before and after."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scoring", "--child", url, path, side],
        capture_output=True, text=True, check=False, cwd=str(Path(__file__).parent.parent),
        env={**os.environ, "TUNIX_RT_DATABASE_URL": url})
    if proc.returncode != 0:
        raise RuntimeError(f"scoring child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child_main(url: str, path: str, side: str) -> None:
    from tunix_rt.store.db import make_engine
    import tunix_rt.quality.chunks  # noqa: F401 - imported before the baseline is read
    import numpy  # noqa: F401

    engine = make_engine(url)
    name = f"{side}-{Path(path).stem}"
    run = _new_run(engine, path, name, dataset=f"{DATASET}-{name}")
    baseline = _vm("VmRSS")
    start = time.perf_counter()
    summary = (ours if side == "ours" else naive)(engine, run)
    elapsed = time.perf_counter() - start
    print(json.dumps({"peak": _vm("VmHWM"), "baseline": baseline, "seconds": elapsed,
                      "n_items": summary.n_items, "score": summary.score}))


def run_memory(url: str, scale: Scale) -> list[Result]:
    sizes = [10_000, 50_000] if scale.quick else [10_000, 100_000, 1_000_000]
    response_bytes = 2_000
    tmp = Path(tempfile.mkdtemp(prefix="tunix-rt-bench-memory-"))
    free = os.statvfs(tmp).f_bavail * os.statvfs(tmp).f_frsize
    need = sizes[-1] * (response_bytes + 120) * 3  # the file, and the verdicts twice over
    if free < need:
        response_bytes = max(100, int(free / 3 / sizes[-1]) - 120)
    results: list[Result] = []
    peaks: dict[int, float] = {}
    for n in sizes:
        path = tmp / f"p{n}.jsonl"
        size = write_file(path, n, response_bytes=response_bytes)
        got = _child(url, str(path), "ours")
        peaks[n] = got["peak"]
        naive_got = _child(url, str(path), "naive") if n <= 100_000 else None
        path.unlink()
        mib = 1024 * 1024
        notes = (f"peak RSS {got['peak'] / mib:,.0f} MiB (after imports "
                 f"{got['baseline'] / mib:,.0f} MiB), {got['seconds']:.1f} s, "
                 f"{n / got['seconds']:,.0f} items/s")
        if naive_got is not None:
            notes += (f"; one-piece path {naive_got['peak'] / mib:,.0f} MiB, "
                      f"{naive_got['seconds']:.1f} s")
        else:
            notes += "; one-piece path not run at this size (gigabytes)"
        results.append(Result(
            "score_memory", "postgresql", f"{n:,} items of ~{response_bytes:,} B, "
            f"{size / 1e6:,.0f} MB file", got["seconds"],
            naive_got["seconds"] if naive_got else float("nan"),
            "one-piece path (times; memory in the note)", notes=notes,
            extra={"peak_rss_bytes": got["peak"], "baseline_rss_bytes": got["baseline"],
                   "seconds": got["seconds"], "response_bytes": response_bytes,
                   "naive_peak_rss_bytes": naive_got["peak"] if naive_got else None}))
    growth = peaks[sizes[-1]] / peaks[sizes[0]]
    met = growth <= MEMORY_GROWTH_LIMIT
    results[-1].target = (f"peak RSS at {sizes[-1]:,} items <= {MEMORY_GROWTH_LIMIT}x the peak "
                          f"at {sizes[0]:,}: {'met' if met else 'NOT MET'} ({growth:.2f}x)")
    results[-1].extra["target_met"] = met
    tmp.rmdir()
    return results


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child_main(*sys.argv[2:5])
