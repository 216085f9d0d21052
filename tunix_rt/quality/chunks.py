"""Chunked scoring: a large predictions file scored in bounded memory, chunk by chunk.

A file of more than ``TUNIX_RT_SCORE_CHUNK_ITEMS`` items (10,000 by default) is not
read into memory. Instead:

1. **Plan** (:func:`plan_scoring`, the ``score-run`` task): one streaming pass checks
   every line as the one-piece reader does (JSON, fields, limits), checks each line's
   reference against the dataset's (or, for a dataset with no record, registers it from
   the file, batch by batch), counts the lines whose item the dataset lacks (``n_extra``)
   and cuts the file into chunks of that many items, each a byte range with a digest of
   its bytes. Duplicate ids are found without a set of the ids: each id's 64-bit hash
   goes into an array (8 bytes an item, 8 MB at a million), sorted at the end; a hash
   seen twice sends a second pass looking for those ids, which names both lines. A bad
   file therefore fails here, before any verdict is written, and a completed evaluation
   on record is kept (``store_failed_evaluation``). Then the evaluation row is set
   ``running``: it is never ranked or gated until every chunk is in.
2. **Chunks** (:func:`score_chunk`, mapped ``score-chunk`` tasks): each reads its byte
   range again (the digest must match: a file changed since the plan is an error),
   lays its items over the dataset (prompts, references) with one query, has the judge
   score them and writes its verdicts, and a row in ``evaluation_chunks``, in one
   transaction. A chunk whose row is there (same range, same digest) is skipped: a
   chunk is idempotent, retries on its own, and a killed evaluation resumes where it
   stopped (the plan of a re-run keeps the stored chunks when the file and the dataset
   version are the same, and discards them otherwise).
3. **Finish** (:func:`finish_evaluation`, the ``finish-evaluation`` task): the dataset's
   items without a verdict are inserted as wrong answers ("missing from the predictions
   file") by one ``INSERT ... SELECT``; the scores are read back as one numpy array (8
   bytes an item) for the mean and the bootstrap CI; the chunks' costs are summed; the
   evaluation becomes ``completed``.

The result is the one-piece path's: the same verdicts, score, interval (computed over
the sorted scores, :func:`tunix_rt.quality.evaluation.aggregate`), ``n_missing`` and
``n_extra``. A file of at most one chunk takes the one-piece path (the demo, the tests).

The chunks are Prefect tasks mapped by the quality loop; ``TUNIX_RT_TASK_RUNNER`` picks
what runs them (:func:`tunix_rt.tasks.runners.task_runner`): ``default``, Prefect's thread pool with one worker
(one chunk at a time in the flow's process: memory holds one chunk, and the llm judge's
``TUNIX_RT_LLM_MAX_CONCURRENCY`` is the bound on requests in flight), or ``ray``,
prefect-ray's ``RayTaskRunner`` on ``TUNIX_RT_RAY_ADDRESS`` (a local Ray when unset),
which runs chunks side by side on the cluster's workers, each with its own bound.

With ``repeat`` > 1, self-consistency is measured on a sample of the whole file: the
plan finds the bound of the one-piece path's sample (the 50 answered items of smallest
id hash), each chunk grades again its own items under it and stores the counts in its
row, and finish adds the counts up (:func:`_chunk_agreement`, :func:`_combined_agreement`).
"""

from __future__ import annotations

import hashlib
import io
import json
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, literal, select, text, update
from sqlalchemy.orm import Session

from tunix_rt.errors import PredictionsError, TunixRtError
from tunix_rt.judges import Item, ScoringContext, judge_spec
from tunix_rt.judges.base import Ledger, is_empty
from tunix_rt.quality import datasets
from tunix_rt.quality.evaluation import (MISSING, EvaluationSummary, RunInfo, _upsert_evaluation,
                                         aggregate, write_verdicts)
from tunix_rt.quality.predictions import (_optional_str, allowed_for, lines_at, no_items_message,
                                          open_binary, parse_line)
from tunix_rt.store.models import (Dataset, DatasetItem, DatasetSource, Evaluation,
                                   EvaluationChunk, EvaluationStatus, JSONType, Verdict, utcnow)

# Ids per query when looking items up in a dataset (well under SQLite's parameter limit).
LOOKUP_BATCH = 5_000


@dataclass(frozen=True)
class Chunk:
    """A byte range of the predictions file holding up to ``chunk_items`` items."""

    index: int
    byte_start: int
    byte_end: int
    first_line: int
    n_lines: int  # items (non-blank lines) in it
    digest: str


@dataclass(frozen=True)
class ChunkPlan:
    """What the chunk tasks and the finish task need: small, whatever the file's size."""

    run: RunInfo
    judge: str
    judge_version: str
    evaluation_id: int
    dataset_id: int
    dataset_label: str
    dataset_created: bool
    n_extra: int
    first_extra: str | None
    chunks: tuple[Chunk, ...]
    chunks_stored: int  # chunks already stored when planned (a resumed evaluation)
    repeat: int = 1
    sample_below: int | None = None  # the self-consistency sample's largest id hash


def chunk_items_setting() -> int:
    from tunix_rt.settings import get_settings

    return get_settings().score_chunk_items


def _id_hash(item_id: str) -> int:
    """A 64-bit hash of an id, the same in every process (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "big",
                          signed=True)


def _limits() -> tuple[int, int]:
    from tunix_rt.settings import get_settings

    settings = get_settings()
    return settings.predictions_max_bytes, settings.predictions_max_line_bytes


def _items_of(run: RunInfo) -> Iterator[tuple[int, int, int, Item]]:
    """(line, first byte, end byte, item) of each non-blank line of the run's file."""
    max_bytes, max_line_bytes = _limits()
    uri = run.predictions_uri
    with open_binary(uri, allowed_for(run.origin)) as handle:
        for number, start, end, line in lines_at(handle, uri, max_bytes, max_line_bytes):
            item = parse_line(line, f"{uri}, line {number}")
            if item is not None:
                yield number, start, end, item


def _references(session: Session, dataset_id: int,
                ids: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
    """Item id to (prompt, reference) for those of ``ids`` the dataset has.

    The ids go as one parameter (an array on PostgreSQL, a JSON array on SQLite), not
    as thousands: building and planning an ``IN`` list of 5,000 binds cost more than
    scoring the items.
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        query = text("SELECT item_id, prompt, reference FROM dataset_items "
                     "WHERE dataset_id = :ds AND item_id = ANY(:ids)")
        batches = [list(ids)]
    else:
        query = text("SELECT item_id, prompt, reference FROM dataset_items "
                     "WHERE dataset_id = :ds AND item_id IN (SELECT value FROM json_each(:ids))")
        batches = [json.dumps(list(ids[start:start + LOOKUP_BATCH]))
                   for start in range(0, len(ids), LOOKUP_BATCH)]
    found: dict[str, tuple[str | None, str | None]] = {}
    for batch in batches:
        rows = connection.execute(query, {"ds": dataset_id, "ids": batch}).all()  # one fetch
        found.update((item_id, (prompt, reference)) for item_id, prompt, reference in rows)
    return found


def _mismatch(uri: str, lineno: int, item: Item, reference: str | None, label: str) -> None:
    """Raise as :func:`datasets.align` does when the line brings its own answer key."""
    if (item.reference is not None and reference is not None
            and item.reference.strip() != reference.strip()):
        clip = datasets._clip
        raise PredictionsError(
            f"{uri}, line {lineno}: item {item.id!r} has reference {clip(item.reference)!r}, but "
            f"dataset {label} says {clip(reference)!r}: a run cannot bring its own answer key "
            "(leave the reference out, or register a new dataset version)")


def _duplicate_error(run: RunInfo, hashes: array) -> None:
    """Raise naming both lines when two lines share an id (a second pass, only then)."""
    import numpy as np

    values = np.frombuffer(hashes, dtype=np.int64)
    if values.size < 2:
        return
    ordered = np.sort(values)
    twice = ordered[1:][ordered[1:] == ordered[:-1]]
    if twice.size == 0:
        return
    suspects = set(int(h) for h in twice)
    first: dict[str, int] = {}
    for lineno, _s, _e, item in _items_of(run):
        if _id_hash(item.id) not in suspects:
            continue
        if item.id in first:
            raise PredictionsError(f"{run.predictions_uri}, line {lineno}: duplicate id "
                                   f"{item.id!r} (first seen on line {first[item.id]})")
        first[item.id] = lineno


def plan_scoring(session_scope: Callable[[], Any], run: RunInfo, judge_name: str, *,
                 chunk_items: int, repeat: int = 1) -> ChunkPlan:
    """Check the whole file in one streaming pass and cut it into chunks (module docstring).

    A bad file is a :class:`PredictionsError` naming the line, raised before anything
    is written; the evaluation row is then set ``running`` and the plan returned.
    """
    from sqlalchemy.exc import IntegrityError

    hashes = array("q")
    try:
        return _plan(session_scope, run, judge_name, chunk_items, repeat, hashes)
    except IntegrityError:
        # A dataset registered from this file got the same id twice: name both lines.
        _duplicate_error(run, hashes)
        raise


def _plan(session_scope: Callable[[], Any], run: RunInfo, judge_name: str, chunk_items: int,
          repeat: int, hashes: array) -> ChunkPlan:
    spec = judge_spec(judge_name)
    uri = run.predictions_uri
    chunks: list[Chunk] = []
    n_extra = 0
    first_extra: str | None = None
    created = False
    answered = array("q")  # the id hashes of the items with an answer (repeat > 1)
    with session_scope() as session:
        latest = datasets.latest_dataset(session, run.dataset)
        if latest is None:  # look again under the lock: two first runs register once
            datasets._lock(session, run.dataset)
            latest = datasets.latest_dataset(session, run.dataset)
        if latest is None:  # registered from this file, batch by batch, in this transaction
            row = Dataset(name=run.dataset, version=1, content_hash="", n_items=0,
                          source=DatasetSource.implicit.value, source_run_id=run.id,
                          created_at=utcnow())
            session.add(row)
            session.flush()
            info = datasets.DatasetInfo.of(row)
            created = True
        else:
            info = datasets.DatasetInfo.of(latest)

        batch: list[tuple[int, Item]] = []
        chunk_start = chunk_line = 0
        digest = hashlib.blake2b(digest_size=32)
        position = 0

        def check(batch: list[tuple[int, Item]]) -> None:
            nonlocal n_extra, first_extra
            if created:
                session.connection().execute(insert(DatasetItem.__table__), [
                    {"dataset_id": info.id, "item_id": item.id, "prompt": item.prompt,
                     "reference": item.reference} for _n, item in batch])
                return
            key = _references(session, info.id, [item.id for _n, item in batch])
            for lineno, item in batch:
                found = key.get(item.id)
                if found is None:
                    n_extra += 1
                    if first_extra is None:
                        first_extra = f"{uri}, line {lineno}: item {item.id!r}"
                    continue
                _mismatch(uri, lineno, item, found[1], info.label)

        def close_chunk(end: int) -> None:
            nonlocal digest
            chunks.append(Chunk(len(chunks), chunk_start, end, chunk_line, len(batch),
                                digest.hexdigest()))
            digest = hashlib.blake2b(digest_size=32)

        with open_binary(uri, allowed_for(run.origin)) as handle:
            max_bytes, max_line_bytes = _limits()
            for lineno, start, end, line in lines_at(handle, uri, max_bytes, max_line_bytes):
                item = parse_line(line, f"{uri}, line {lineno}")
                if item is None:
                    continue
                if not batch:
                    chunk_start, chunk_line, position = start, lineno, start
                hashes.append(_id_hash(item.id))
                if repeat > 1 and not is_empty(item.response):
                    answered.append(hashes[-1])
                batch.append((lineno, item))
                digest.update(line.encode())  # each item line's text, as read
                position = end
                if len(batch) == chunk_items:
                    check(batch)
                    close_chunk(position)
                    batch = []
            if batch:
                check(batch)
                close_chunk(position)
        if not hashes:
            raise PredictionsError(no_items_message(uri))
        _duplicate_error(run, hashes)
        if created:
            info = _finish_registration(session, info.id)
        ev_id, stored = _start_evaluation(session, run, spec.name, spec.version, info.id,
                                          n_extra, chunks)
    return ChunkPlan(run, spec.name, spec.version, ev_id, info.id, info.label, created, n_extra,
                     first_extra, tuple(chunks), stored, repeat,
                     _sample_bound(answered) if repeat > 1 else None)


def _sample_bound(keys: array) -> int:
    """The largest id hash in the self-consistency sample, read unsigned (the order of
    the one-piece path's sample, :func:`tunix_rt.quality.judging.sample_key`): the
    ``SELF_CONSISTENCY_SAMPLE``-th smallest of the answered items' hashes. Each chunk
    grades again its items at or below it, so the chunks' samples make the file's."""
    import numpy as np

    from tunix_rt.quality.judging import SELF_CONSISTENCY_SAMPLE as size

    values = np.frombuffer(keys, dtype=np.int64).view(np.uint64)
    if values.size <= size:
        return 2**64 - 1
    return int(np.partition(values, size - 1)[size - 1])


def _chunk_agreement(judge: Any, items: list[Item], verdicts: list[Any],
                     context: ScoringContext, plan: ChunkPlan) -> dict[str, Any] | None:
    """This chunk's share of the file's self-consistency sample, graded again: counts for
    its cost row, which finish adds up; None for a judge that does not sample."""
    from tunix_rt.quality.judging import agreement_counts

    bound = plan.sample_below
    picked = [i for i, item in enumerate(items)
              if bound is None or _id_hash(item.id) % 2**64 <= bound]
    counts = agreement_counts(judge, [items[i] for i in picked], [verdicts[i] for i in picked],
                              context, plan.repeat)
    if counts is None:
        return None
    agreed, compared, calls = counts
    return {"repeat_calls": calls, "agreement_agreed": agreed, "agreement_compared": compared,
            "agreement_repeats": plan.repeat}


def _combined_agreement(costs: Sequence[dict[str, Any]]) -> tuple[float | None, int | None]:
    """(agreement rate, repeats) over every chunk's sampled items together, as the
    one-piece path defines it: the share of the items compared on which all agreed."""
    measured = [c for c in costs if c.get("agreement_compared")]
    compared = sum(int(c["agreement_compared"]) for c in measured)
    if not compared:
        return None, None
    agreed = sum(int(c.get("agreement_agreed") or 0) for c in measured)
    return agreed / compared, int(measured[0]["agreement_repeats"])


def _finish_registration(session: Session, dataset_id: int) -> datasets.DatasetInfo:
    """The content hash and size of a dataset registered batch by batch, read back in id
    order (byte order: what Python's sort of the ids gives)."""
    postgres = session.get_bind().dialect.name == "postgresql"
    order = text('item_id COLLATE "C"') if postgres else DatasetItem.item_id
    rows = session.execute(select(DatasetItem.item_id, DatasetItem.prompt, DatasetItem.reference)
                           .where(DatasetItem.dataset_id == dataset_id).order_by(order)
                           .execution_options(yield_per=LOOKUP_BATCH))
    digest = hashlib.sha256()
    n = 0
    for item_id, prompt, reference in rows:
        digest.update(json.dumps([item_id, prompt, reference], ensure_ascii=False).encode())
        digest.update(b"\n")
        n += 1
    session.execute(update(Dataset).where(Dataset.id == dataset_id)
                    .values(content_hash=digest.hexdigest(), n_items=n))
    return datasets.DatasetInfo.of(session.get(Dataset, dataset_id, populate_existing=True))


def _start_evaluation(session: Session, run: RunInfo, judge: str, version: str, dataset_id: int,
                      n_extra: int, chunks: Sequence[Chunk]) -> tuple[int, int]:
    """Set the evaluation ``running``; (its id, how many chunks are already stored).

    A running evaluation of the same file over the same dataset version keeps its
    stored chunks (it resumes); any other state starts afresh.
    """
    existing = session.scalar(select(Evaluation).where(
        Evaluation.run_id == run.id, Evaluation.judge == judge,
        Evaluation.judge_version == version).with_for_update())
    resume = (existing is not None and existing.status == EvaluationStatus.running.value
              and existing.dataset_id == dataset_id)
    now = utcnow()
    values: dict[str, Any] = dict(
        status=EvaluationStatus.running.value, score=None, ci_low=None, ci_high=None,
        n_items=0, n_scored=0, n_unscored=0, error=None, finished_at=now, duration_s=0.0,
        cost=None, agreement_rate=None, agreement_repeats=None, dataset_id=dataset_id,
        n_missing=None, n_extra=n_extra)
    if not resume:
        values["started_at"] = now
    ev_id = _upsert_evaluation(session, run.id, judge, version, **values)
    assert ev_id is not None
    stored = 0
    if resume:
        planned = {(c.index, c.byte_start, c.byte_end, c.digest) for c in chunks}
        rows = session.execute(select(EvaluationChunk.chunk_index, EvaluationChunk.byte_start,
                                      EvaluationChunk.byte_end, EvaluationChunk.digest)
                               .where(EvaluationChunk.evaluation_id == ev_id)).all()
        resume = all(tuple(r) in planned for r in rows)
        stored = len(rows) if resume else 0
    if not resume:
        session.execute(delete(Verdict).where(Verdict.evaluation_id == ev_id))
        session.execute(delete(EvaluationChunk).where(EvaluationChunk.evaluation_id == ev_id))
    return ev_id, stored


def chunk_stored(session: Session, plan: ChunkPlan, chunk: Chunk) -> bool:
    row = session.get(EvaluationChunk, (plan.evaluation_id, chunk.index))
    return (row is not None and row.digest == chunk.digest and row.byte_start == chunk.byte_start
            and row.byte_end == chunk.byte_end)


def _checked_item(line: str, where: str) -> Item:
    """A line the plan has checked, as an item: the fields only, not the checks again
    (the chunk's digest says the bytes are the ones checked). Anything unexpected is a
    :class:`PredictionsError`: the file changed after all."""
    try:
        obj = json.loads(line)
        reference = obj.get("reference")
        prompt = obj.get("prompt")
        if not (isinstance(reference, str) or reference is None):
            reference = _optional_str(obj, "reference", where)
        if not (isinstance(prompt, str) or prompt is None):
            prompt = _optional_str(obj, "prompt", where)
        return Item(id=obj["id"], response=obj["response"], prompt=prompt, reference=reference,
                    metadata=obj.get("metadata") or {})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PredictionsError(f"{where}: {type(exc).__name__}: {exc}") from None


def read_chunk(run: RunInfo, chunk: Chunk) -> bytes:
    """The chunk's bytes, read again; a file changed since the plan is an error."""
    with open_binary(run.predictions_uri, allowed_for(run.origin)) as handle:
        handle.seek(chunk.byte_start)
        data = handle.read(chunk.byte_end - chunk.byte_start)
    return data


def score_chunk(session_scope: Callable[[], Any], plan: ChunkPlan, chunk: Chunk,
                engine: Any = None) -> dict[str, Any] | None:
    """Score one chunk and store its verdicts with its row; None when it was stored already."""
    from tunix_rt.quality.judging import build_judge

    with session_scope() as session:
        if chunk_stored(session, plan, chunk):
            return None
    run = plan.run
    uri = run.predictions_uri
    data = read_chunk(run, chunk)
    digest = hashlib.blake2b(digest_size=32)
    parsed: list[tuple[int, Item]] = []
    max_bytes, max_line_bytes = _limits()
    changed = (f"{uri}: changed while it was being scored (from line {chunk.first_line}, the "
               "file differs from when it was first read); score the run again")
    try:
        for lineno, _s, _e, line in lines_at(io.BytesIO(data), uri, max_bytes, max_line_bytes,
                                             offset=chunk.byte_start,
                                             lineno=chunk.first_line - 1):
            if not line.strip():
                continue
            digest.update(line.encode())
            parsed.append((lineno, _checked_item(line, f"{uri}, line {lineno}")))
    except PredictionsError as exc:  # the plan read these lines whole and well formed
        raise PredictionsError(f"{changed}: {exc}") from None
    del data
    if len(parsed) != chunk.n_lines or digest.hexdigest() != chunk.digest:
        raise PredictionsError(changed)
    with session_scope() as session:
        key = _references(session, plan.dataset_id, [item.id for _n, item in parsed])
    items: list[Item] = []
    extra = 0
    for lineno, item in parsed:
        found = key.get(item.id)
        if found is None:
            extra += 1
            continue
        prompt, reference = found
        _mismatch(run.predictions_uri, lineno, item, reference, plan.dataset_label)
        items.append(Item(id=item.id, response=item.response,
                          prompt=prompt if prompt is not None else item.prompt,
                          reference=reference, metadata=item.metadata))
    del parsed
    judge = build_judge(plan.judge, engine)
    context = ScoringContext(run_id=run.id, dataset=run.dataset, model=run.model)
    verdicts = judge.score(items, context) if items else []
    if len(verdicts) != len(items):
        raise TunixRtError(f"judge {plan.judge!r} returned {len(verdicts)} verdicts for "
                           f"{len(items)} items")
    ledger = getattr(judge, "ledger", None)
    cost = ledger.as_dict() if hasattr(ledger, "as_dict") else None
    if plan.repeat > 1 and items:
        sampled = _chunk_agreement(judge, items, list(verdicts), context, plan)
        if sampled is not None:
            cost = {**(cost or {}), **sampled}
    with session_scope() as session:
        # The chunk's row first: a second writer of the same chunk (two loops at once)
        # waits here for the first, then finds the row and writes nothing.
        from tunix_rt.store.upsert import insert_ignore

        if not insert_ignore(session, EvaluationChunk, {
                "evaluation_id": plan.evaluation_id, "chunk_index": chunk.index,
                "byte_start": chunk.byte_start, "byte_end": chunk.byte_end,
                "first_line": chunk.first_line, "digest": chunk.digest,
                "n_verdicts": len(verdicts), "n_extra": extra, "cost": cost,
                "finished_at": utcnow()}, key=("evaluation_id", "chunk_index")):
            return None
        write_verdicts(session, plan.evaluation_id, verdicts, [i.response for i in items])
    return {"chunk": chunk.index, "verdicts": len(verdicts), "extra": extra}


def finish_evaluation(session_scope: Callable[[], Any], plan: ChunkPlan) -> EvaluationSummary:
    """Missing items as wrong answers, the aggregate from the database: ``completed``."""
    import numpy as np

    with session_scope() as session:
        ev = session.scalar(select(Evaluation).where(Evaluation.id == plan.evaluation_id)
                            .with_for_update())
        if ev is None or ev.status != EvaluationStatus.running.value:
            raise TunixRtError(f"evaluation {plan.evaluation_id} is no longer running "
                               f"({ev.status if ev else 'deleted'}): another loop replaced it")
        chunk_rows = session.execute(select(EvaluationChunk.chunk_index, EvaluationChunk.cost,
                                            EvaluationChunk.n_verdicts)
                                     .where(EvaluationChunk.evaluation_id == ev.id)).all()
        done = {index for index, _cost, _n in chunk_rows}
        left = [c.index for c in plan.chunks if c.index not in done]
        if left:
            raise TunixRtError(f"evaluation {ev.id}: chunks {left[:10]} are not stored")
        exists = select(Verdict.id).where(Verdict.evaluation_id == ev.id,
                                          Verdict.item_id == DatasetItem.item_id).exists()
        session.connection().execute(insert(Verdict).from_select(
            ["evaluation_id", "item_id", "score", "passed", "rationale", "raw", "response"],
            select(literal(ev.id), DatasetItem.item_id, literal(0.0), literal(False),
                   literal(MISSING), literal({"missing": True}, JSONType), literal(None))
            .where(DatasetItem.dataset_id == plan.dataset_id, ~exists)))
        n_items = session.scalar(select(func.count()).select_from(Verdict)
                                 .where(Verdict.evaluation_id == ev.id))
        n_missing = n_items - sum(n for _index, _cost, n in chunk_rows)
        rows = session.connection().execute(
            select(Verdict.score).where(Verdict.evaluation_id == ev.id,
                                        Verdict.score.is_not(None))
            .execution_options(yield_per=50_000))
        scores = np.fromiter((score for (score,) in rows), dtype=np.float64)
        mean, ci_low, ci_high = aggregate(scores)
        costs = [cost for _index, cost, _n in chunk_rows if cost is not None]
        cost = agreement = repeats = None
        if costs:
            ledger = Ledger.total(_Counts(c) for c in costs).as_dict()
            calls = sum(int(c.get("repeat_calls") or 0) for c in costs)
            cost = {**ledger, "repeat_calls": calls} if calls else ledger
            agreement, repeats = _combined_agreement(costs)
        now = utcnow()
        session.execute(update(Evaluation).where(Evaluation.id == ev.id).values(
            status=EvaluationStatus.completed.value, score=mean, ci_low=ci_low, ci_high=ci_high,
            n_items=n_items, n_scored=int(scores.size), n_unscored=n_items - int(scores.size),
            n_missing=n_missing, n_extra=plan.n_extra, finished_at=now,
            duration_s=(now - ev.started_at).total_seconds(), cost=cost,
            agreement_rate=agreement, agreement_repeats=repeats))
        return EvaluationSummary.of(session.get(Evaluation, ev.id, populate_existing=True),
                                    dataset=plan.dataset_label,
                                    dataset_created=plan.dataset_created)


class _Counts:
    """A stored chunk cost as :meth:`Ledger.total` reads ledgers."""

    def __init__(self, counts: dict[str, Any]) -> None:
        self.counts = counts

    def as_dict(self) -> dict[str, Any]:
        return self.counts
