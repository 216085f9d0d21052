"""Chunked scoring: a large predictions file scored in bounded memory, chunk by chunk.

A file of more than ``TUNIX_RT_SCORE_CHUNK_ITEMS`` items (10,000 by default) is not
read into memory. Instead:

1. **Plan** (:func:`plan_scoring`, the ``score-run`` task): one streaming pass checks
   every line as the one-piece reader does (JSON, fields, limits: the bytes parsed by
   orjson, anything unusual by :func:`parse_line`, :func:`_line_fields`), checks each
   line's reference against the dataset's in the database, which sends back only the
   lines whose item it lacks (``n_extra``) or whose reference differs (or, for a
   dataset with no record, registers it from the file, batch by batch), and cuts the
   file into chunks of that many items, each a byte range (from its first item's line
   to the next chunk's, or the end of the file) with a digest of its bytes. Duplicate ids are found without a set of the ids: each id's 64-bit hash
   (Python's, salted per process: the plan is one process) goes into an array (8 bytes
   an item, 8 MB at a million), sorted at the end; a hash seen twice sends a second
   pass looking for those ids, which names both lines. A bad
   file therefore fails here, before any verdict is written, and a completed evaluation
   on record is kept (``store_failed_evaluation``). Then the evaluation row is set
   ``running``: it is never ranked or gated until every chunk is in.
2. **Chunks** (:func:`score_chunk`, mapped ``score-chunk`` tasks): each reads its byte
   range again (the digest must match, before any line is parsed: a file changed since
   the plan is an error),
   lays its items over the dataset (prompts, references) with one query, has the judge
   score them and writes its verdicts, and a row in ``evaluation_chunks``, in one
   transaction. A chunk whose row is there (same range, same digest) is skipped: a
   chunk is idempotent, retries on its own, and a killed evaluation resumes where it
   stopped (the plan of a re-run keeps the stored chunks when the file and the dataset
   version are the same, and discards them otherwise).
3. **Finish** (:func:`finish_evaluation`, the ``finish-evaluation`` task): unless the
   chunks' verdicts are as many as the dataset's items, the items without a verdict are
   inserted as wrong answers ("missing from the predictions file") by one ``INSERT ...
   SELECT``; the scores come back as each distinct score and its count (``GROUP BY``)
   for the mean and the bootstrap CI; the chunks' costs are summed; the evaluation
   becomes ``completed``.

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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, literal, select, text, update
from sqlalchemy.orm import Session

from tunix_rt.errors import PredictionsError, TunixRtError
from tunix_rt.judges import Item, ScoringContext, judge_spec
from tunix_rt.judges.base import Ledger, costs, is_empty, per_item, samples
from tunix_rt.quality import datasets
from tunix_rt.quality.evaluation import (MISSING, EvaluationSummary, RunInfo, _upsert_evaluation,
                                         aggregate_counts, write_verdicts)
from tunix_rt.quality.predictions import (MAX_ID_LENGTH, _decode, allowed_for, lines_at,
                                          no_items_message, open_binary, parse_line, raw_lines)
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


def _fast_fields(raw: bytes) -> tuple[str, str, str | None, str | None, Any] | None:
    """(id, response, prompt, reference, None) of a line in the common form, or None.

    orjson parses the bytes (checking UTF-8 as it goes) and the fields are checked by
    type; it accepts less than ``json`` (no NaN, no integer beyond 64 bits, no lone
    surrogate), so a line it refuses, and one with metadata, a number for a string or
    a NUL escape, goes to :func:`parse_line`: the same items, the same errors, slower.
    """
    if b"\\u0000" in raw:
        return None
    try:
        obj = _loads(raw)
    except ValueError:
        return None
    if type(obj) is not dict or obj.get("metadata") is not None:
        return None
    item_id = obj.get("id")
    response = obj.get("response")
    prompt = obj.get("prompt")
    reference = obj.get("reference")
    if (type(item_id) is not str or type(response) is not str
            or not (prompt is None or type(prompt) is str)
            or not (reference is None or type(reference) is str)
            or len(item_id) > MAX_ID_LENGTH or not item_id.strip()):
        return None
    return item_id, response, prompt, reference, None


def _line_fields(raw: bytes, uri: str, lineno: int,
                 max_line_bytes: int) -> tuple[str, str, str | None, str | None, Any] | None:
    """(id, response, prompt, reference, metadata) of one line's bytes, checked as
    :func:`parse_line` checks it; None for a blank line."""
    if raw[:1] == b"{":  # the common line: not blank, no copy of it stripped
        fields = _fast_fields(raw)
        if fields is not None:
            return fields
    elif not raw.strip():
        return None
    text = _decode(raw, 0, len(raw) - 1 if raw.endswith(b"\n") else len(raw), uri, lineno,
                   max_line_bytes)
    item = parse_line(text, f"{uri}, line {lineno}")
    if item is None:
        return None
    return item.id, item.response, item.prompt, item.reference, item.metadata


def _loads(raw: bytes) -> Any:
    import orjson

    global _loads
    _loads = orjson.loads  # the import once, then the C function itself
    return _loads(raw)


def _json_param(values: Any) -> str:
    import orjson

    return orjson.dumps(values).decode()


def _reference_exceptions(session: Session, dataset_id: int, ids: Sequence[str],
                          references: Sequence[str | None]
                          ) -> list[tuple[int, bool, str | None]]:
    """(index, whether the dataset has the item, its reference) of each of ``ids`` the
    dataset lacks or whose reference differs in text from the line's, in order.

    The database compares: one JSON parameter goes in, and only the exceptions come
    back (none, for a good file), instead of every item's prompt and reference.
    """
    rows = _json_param([[i, r] for i, r in zip(ids, references, strict=True)])
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        query = text(
            "SELECT t.ord - 1, d.item_id IS NOT NULL, d.reference "
            "FROM json_array_elements(CAST(:rows AS json)) WITH ORDINALITY AS t(e, ord) "
            "LEFT JOIN dataset_items d ON d.dataset_id = :ds AND d.item_id = t.e->>0 "
            "WHERE d.item_id IS NULL OR (t.e->>1 IS NOT NULL AND d.reference IS NOT NULL "
            "AND d.reference <> t.e->>1) ORDER BY t.ord")
    else:
        query = text(
            "SELECT t.key, d.item_id IS NOT NULL, d.reference FROM json_each(:rows) AS t "
            "LEFT JOIN dataset_items d ON d.dataset_id = :ds "
            "AND d.item_id = json_extract(t.value, '$[0]') "
            "WHERE d.item_id IS NULL OR (json_extract(t.value, '$[1]') IS NOT NULL "
            "AND d.reference IS NOT NULL AND d.reference <> json_extract(t.value, '$[1]')) "
            "ORDER BY t.key")
    return [(int(i), bool(known), reference) for i, known, reference
            in connection.execute(query, {"ds": dataset_id, "rows": rows}).all()]


def _dataset_rows(session: Session, dataset_id: int,
                  ids: Sequence[str]) -> list[tuple[str | None, str | None] | None]:
    """(prompt, reference) of each of ``ids`` in the dataset, in order; None where the
    dataset lacks the item. The ids go as one JSON parameter: building and planning
    an ``IN`` list (or dumping an array) of 10,000 ids cost more than scoring them."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        query = text(
            "SELECT t.ord - 1, d.prompt, d.reference "
            "FROM json_array_elements_text(CAST(:ids AS json)) WITH ORDINALITY AS t(id, ord) "
            "JOIN dataset_items d ON d.dataset_id = :ds AND d.item_id = t.id")
    else:
        query = text(
            "SELECT t.key, d.prompt, d.reference FROM json_each(:ids) AS t "
            "JOIN dataset_items d ON d.dataset_id = :ds AND d.item_id = t.value")
    found: list[tuple[str | None, str | None] | None] = [None] * len(ids)
    for index, prompt, reference in connection.execute(
            query, {"ds": dataset_id, "ids": _json_param(list(ids))}).all():
        found[index] = (prompt, reference)
    return found


def _add_items(session: Session, dataset_id: int, ids: Sequence[str],
               prompts: Sequence[str | None], references: Sequence[str | None]) -> None:
    """A batch of a dataset registered from the file (COPY on PostgreSQL)."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        _copy(connection, "COPY dataset_items (dataset_id, item_id, prompt, reference) "
              "FROM STDIN", ((dataset_id, i, p, r)
                             for i, p, r in zip(ids, prompts, references, strict=True)))
        return
    connection.execute(insert(DatasetItem.__table__), [
        {"dataset_id": dataset_id, "item_id": i, "prompt": p, "reference": r}
        for i, p, r in zip(ids, prompts, references, strict=True)])


def _copy(connection: Any, statement: str, rows: Any) -> None:
    """``rows`` by COPY on the connection's PostgreSQL transaction; a failure raised as
    SQLAlchemy raises its own statements' (a duplicate key: ``IntegrityError``)."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    cursor = connection.connection.driver_connection.cursor()
    try:
        with cursor.copy(statement) as copy:
            write = copy.write_row
            for row in rows:
                write(row)
    except psycopg.Error as exc:
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc


def _mismatch(uri: str, lineno: int, item_id: str, given: str | None, reference: str | None,
              label: str) -> None:
    """Raise as :func:`datasets.align` does when the line brings its own answer key."""
    if (given is not None and reference is not None and given != reference
            and given.strip() != reference.strip()):
        clip = datasets._clip
        raise PredictionsError(
            f"{uri}, line {lineno}: item {item_id!r} has reference {clip(given)!r}, but "
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
        if hash(item.id) not in suspects:
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

        # The batch being checked, as columns (no Item per line).
        linenos: list[int] = []
        ids: list[str] = []
        prompts: list[str | None] = []
        references: list[str | None] = []
        chunk_start = chunk_line = n_in_chunk = last_end = 0
        digest: Any = None  # of the open chunk's bytes

        def check(linenos: list[int], ids: list[str], prompts: list[str | None],
                  references: list[str | None]) -> None:
            nonlocal n_extra, first_extra
            if created:
                _add_items(session, info.id, ids, prompts, references)
                return
            for index, known, reference in _reference_exceptions(session, info.id, ids,
                                                                 references):
                if not known:
                    n_extra += 1
                    if first_extra is None:
                        first_extra = f"{uri}, line {linenos[index]}: item {ids[index]!r}"
                    continue
                _mismatch(uri, linenos[index], ids[index], references[index], reference,
                          info.label)

        def close_chunk(end: int) -> None:
            chunks.append(Chunk(len(chunks), chunk_start, end, chunk_line, n_in_chunk,
                                digest.hexdigest()))

        # On PostgreSQL a batch is checked by a second thread while this one reads the
        # next: the server's work (half the plan's time) overlaps the parsing. One batch
        # at a time, in file order; the session is only the checker's while it checks.
        # (SQLite works in this process: nothing to overlap.)
        overlap = session.get_bind().dialect.name == "postgresql"
        pool = ThreadPoolExecutor(1, thread_name_prefix="tunix-rt-plan-check")
        checking: Future[None] | None = None

        def submit() -> None:
            nonlocal checking
            if checking is not None:
                checking.result()  # the earlier batch's error first
            if overlap:
                checking = pool.submit(check, linenos, ids, prompts, references)
            else:
                check(linenos, ids, prompts, references)

        max_bytes, max_line_bytes = _limits()
        try:
            with open_binary(uri, allowed_for(run.origin)) as handle:
                for lineno, start, end, raw in raw_lines(handle, uri, max_bytes,
                                                         max_line_bytes):
                    last_end = end
                    fields = _line_fields(raw, uri, lineno, max_line_bytes)
                    if fields is None:  # a blank line: in the open chunk's bytes, no item
                        if digest is not None:
                            digest.update(raw)
                        continue
                    if n_in_chunk == chunk_items:  # this line opens the next chunk
                        close_chunk(start)
                        digest = None
                    if digest is None:
                        digest = hashlib.blake2b(digest_size=32)
                        chunk_start, chunk_line, n_in_chunk = start, lineno, 0
                    digest.update(raw)  # each line's bytes as read, newline and all
                    n_in_chunk += 1
                    item_id = fields[0]
                    hashes.append(hash(item_id))
                    if repeat > 1 and not is_empty(fields[1]):
                        answered.append(_id_hash(item_id))
                    linenos.append(lineno)
                    ids.append(item_id)
                    prompts.append(fields[2])
                    references.append(fields[3])
                    if len(ids) == chunk_items:
                        submit()
                        linenos, ids, prompts, references = [], [], [], []
                if ids:
                    submit()
                if checking is not None:
                    checking.result()
                if n_in_chunk:
                    close_chunk(last_end)  # the last chunk runs to the end of the file
        except BaseException:
            # A bad line read while an earlier batch was checked: the earlier error first.
            if checking is not None and checking.exception() is not None:
                raise checking.exception() from None  # type: ignore[misc]
            raise
        finally:
            pool.shutdown(wait=True)  # the session is this thread's again
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
    changed = (f"{uri}: changed while it was being scored (from line {chunk.first_line}, the "
               "file differs from when it was first read); score the run again")
    # The bytes first, in one call: the lines parsed below are the ones the plan checked.
    if hashlib.blake2b(data, digest_size=32).hexdigest() != chunk.digest:
        raise PredictionsError(changed)
    _max_bytes, max_line_bytes = _limits()
    linenos: list[int] = []
    parsed: list[tuple[str, str, str | None, str | None, Any]] = []
    try:
        # One line at a time (BytesIO shares the bytes): the chunk is held once, not twice.
        for offset, raw in enumerate(io.BytesIO(data), start=chunk.first_line):
            fields = _line_fields(raw, uri, offset, max_line_bytes)
            if fields is not None:
                linenos.append(offset)
                parsed.append(fields)
    except PredictionsError as exc:  # the plan read these lines whole and well formed
        raise PredictionsError(f"{changed}: {exc}") from None
    del data
    if len(parsed) != chunk.n_lines:
        raise PredictionsError(changed)
    with session_scope() as session:
        found = _dataset_rows(session, plan.dataset_id, [fields[0] for fields in parsed])
    items: list[Item] = []
    extra = 0
    for lineno, (item_id, response, prompt, given, metadata), key in zip(
            linenos, parsed, found, strict=True):
        if key is None:
            extra += 1
            continue
        if given is not None and given != key[1]:
            _mismatch(uri, lineno, item_id, given, key[1], plan.dataset_label)
        items.append(Item(item_id, response, key[0] if key[0] is not None else prompt, key[1],
                          metadata or {}))
    del parsed, found
    judge = build_judge(plan.judge, engine)
    context = ScoringContext(run_id=run.id, dataset=run.dataset, model=run.model)
    cost = None
    if per_item(judge) and not costs(judge) and not samples(judge):
        # Judged part by part as the verdicts are written: the server stores one part
        # while this process judges the next (a cheap judge, whose work holds the
        # transaction open for no longer than writing takes).
        verdicts: Any = _judged_in_parts(judge, items, context, plan.judge)
    else:
        verdicts = _judged(judge, items, context, plan.judge)
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
                "n_verdicts": len(items), "n_extra": extra, "cost": cost,
                "finished_at": utcnow()}, key=("evaluation_id", "chunk_index")):
            return None
        write_verdicts(session, plan.evaluation_id, verdicts, [i.response for i in items])
    return {"chunk": chunk.index, "verdicts": len(items), "extra": extra}


# Items a judge that judges each on its own is given at once, while the verdicts before
# them are being written.
JUDGE_PART = 1_000


def _judged(judge: Any, items: list[Item], context: ScoringContext, name: str) -> list[Any]:
    """The judge's verdicts on ``items``, one each, in order."""
    verdicts = judge.score(items, context) if items else []
    if len(verdicts) != len(items):
        raise TunixRtError(f"judge {name!r} returned {len(verdicts)} verdicts for "
                           f"{len(items)} items")
    return verdicts


def _judged_in_parts(judge: Any, items: list[Item], context: ScoringContext,
                     name: str) -> Iterator[Any]:
    """:func:`_judged`, ``JUDGE_PART`` items at a time, as the verdicts are consumed."""
    for start in range(0, len(items), JUDGE_PART):
        yield from _judged(judge, items[start:start + JUDGE_PART], context, name)


def finish_evaluation(session_scope: Callable[[], Any], plan: ChunkPlan) -> EvaluationSummary:
    """Missing items as wrong answers, the aggregate from the database: ``completed``."""
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
        answered = sum(n for _index, _cost, n in chunk_rows)
        # Each verdict is a distinct item of the dataset: as many as it has, none missing.
        if answered != session.scalar(select(Dataset.n_items)
                                      .where(Dataset.id == plan.dataset_id)):
            exists = select(Verdict.id).where(Verdict.evaluation_id == ev.id,
                                              Verdict.item_id == DatasetItem.item_id).exists()
            session.connection().execute(insert(Verdict).from_select(
                ["evaluation_id", "item_id", "score", "passed", "rationale", "raw", "response"],
                select(literal(ev.id), DatasetItem.item_id, literal(0.0), literal(False),
                       literal(MISSING), literal({"missing": True}, JSONType), literal(None))
                .where(DatasetItem.dataset_id == plan.dataset_id, ~exists)))
        # Each distinct score and how often it comes (two rows for exact_match), not
        # every score: the aggregate needs no more (aggregate_counts).
        counted = session.execute(select(Verdict.score, func.count())
                                  .where(Verdict.evaluation_id == ev.id)
                                  .group_by(Verdict.score)).all()
        n_items = sum(n for _score, n in counted)
        n_missing = n_items - answered
        scored = [(score, n) for score, n in counted if score is not None]
        n_scored = sum(n for _score, n in scored)
        mean, ci_low, ci_high = aggregate_counts([score for score, _n in scored],
                                                 [n for _score, n in scored])
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
            n_items=n_items, n_scored=n_scored, n_unscored=n_items - n_scored,
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
