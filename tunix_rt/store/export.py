"""Exports of the record to files: runs, evaluations, verdicts or trials, as Parquet or CSV.

A table is read in chunks, each a pandas DataFrame, and each chunk is appended to the
file as it comes (a Parquet row group through ``pyarrow.parquet.ParquetWriter``, or CSV
lines), so memory is bounded by the chunk, not the table: a million verdicts export
in about the memory of one chunk. The rows come from one statement, streamed
(``yield_per``: a server-side cursor on PostgreSQL, the cursor's own lazy fetching on
SQLite), so the file is one consistent snapshot, in primary-key order.

The file appears only when complete: it is written to a temporary file beside the
target and renamed over it at the end, so an export that fails (a lost database, a
full disk, Ctrl-C) leaves no half file and the previous file, if any, intact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, Float, Integer, Select, String, Text, cast, select
from sqlalchemy.orm import Session
from sqlalchemy.types import JSON, TypeEngine

from tunix_rt.errors import InvalidInputError
from tunix_rt.store.models import (Evaluation, Run, Study, Trial, UtcDateTime, Verdict)

WHAT = ("runs", "evaluations", "verdicts", "trials")
FORMATS = ("parquet", "csv")
DEFAULT_CHUNK_ROWS = 10_000
MAX_CHUNK_ROWS = 1_000_000


def _query(what: str, dataset: str | None) -> Select:
    """The columns of one export, in primary-key order, for one dataset or all; JSON
    columns as their text (a file's column has one type, and the database's text is
    taken as it is instead of parsed into objects and dumped again)."""
    query = _columns(what, dataset)
    return query.with_only_columns(
        *(cast(c, Text).label(c.name) if _is_json(c.type) else c
          for c in query.selected_columns), maintain_column_froms=True)


def _columns(what: str, dataset: str | None) -> Select:
    if what == "runs":
        query = select(Run.id, Run.external_id, Run.name, Run.dataset, Run.model, Run.status,
                       Run.dry_run, Run.origin, Run.predictions_uri, Run.config, Run.metrics,
                       Run.error, Run.exit_code, Run.log_uri, Run.study_id, Run.trial_id,
                       Run.created_at, Run.updated_at, Run.started_at,
                       Run.completed_at).order_by(Run.id)
        return query if dataset is None else query.where(Run.dataset == dataset)
    if what == "evaluations":
        query = (select(Evaluation.id, Evaluation.run_id, Run.name.label("run_name"),
                        Run.dataset, Evaluation.judge, Evaluation.judge_version,
                        Evaluation.status, Evaluation.score, Evaluation.ci_low,
                        Evaluation.ci_high, Evaluation.n_items, Evaluation.n_scored,
                        Evaluation.n_unscored, Evaluation.n_missing, Evaluation.n_extra,
                        Evaluation.dataset_id, Evaluation.error, Evaluation.started_at,
                        Evaluation.finished_at, Evaluation.duration_s, Evaluation.cost,
                        Evaluation.agreement_rate, Evaluation.agreement_repeats)
                 .join(Run, Run.id == Evaluation.run_id).order_by(Evaluation.id))
        return query if dataset is None else query.where(Run.dataset == dataset)
    if what == "verdicts":
        query = (select(Verdict.id, Verdict.evaluation_id, Evaluation.run_id, Run.dataset,
                        Evaluation.judge, Evaluation.judge_version, Verdict.item_id,
                        Verdict.score, Verdict.passed, Verdict.rationale, Verdict.response,
                        Verdict.raw)
                 .join(Evaluation, Evaluation.id == Verdict.evaluation_id)
                 .join(Run, Run.id == Evaluation.run_id).order_by(Verdict.id))
        return query if dataset is None else query.where(Run.dataset == dataset)
    if what == "trials":
        query = (select(Trial.id, Trial.study_id, Study.name.label("study_name"),
                        Study.dataset, Study.metric, Study.mode, Trial.trial_id, Trial.status,
                        Trial.iterations, Trial.config, Trial.last_metrics, Trial.error,
                        Trial.predictions_uri, Trial.run_id, Trial.started_at,
                        Trial.finished_at)
                 .join(Study, Study.id == Trial.study_id).order_by(Trial.id))
        return query if dataset is None else query.where(Study.dataset == dataset)
    raise InvalidInputError(f"unknown export {what!r}; one of: {', '.join(WHAT)}",
                            field="what")


def _arrow_type(sql_type: TypeEngine) -> Any:
    """The Parquet column type of a SQL column: declared once, so every chunk (a column
    all null in one chunk, text in the next) has the same schema."""
    import pyarrow as pa

    if isinstance(sql_type, UtcDateTime):
        return pa.timestamp("us", tz="UTC")
    if isinstance(sql_type, Boolean):
        return pa.bool_()
    if isinstance(sql_type, Integer):
        return pa.int64()
    if isinstance(sql_type, Float):
        return pa.float64()
    if isinstance(sql_type, (String, Text, JSON)):
        return pa.string()
    raise TypeError(f"no Parquet type for {sql_type!r}")  # a column added without one


def _is_json(sql_type: TypeEngine) -> bool:
    return isinstance(sql_type, JSON) or isinstance(getattr(sql_type, "impl", None), JSON)


@dataclass(frozen=True)
class ExportResult:
    what: str
    path: str
    format: str
    rows: int
    chunks: int


def chunks(session: Session, what: str, dataset: str | None = None,
           chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Any]:
    """The export's rows as pandas DataFrames of at most ``chunk_rows`` rows each.

    JSON columns are JSON text; timestamps are UTC.
    An export with no rows yields one empty frame, so the file still has its columns.
    """
    import pandas as pd

    if not 1 <= chunk_rows <= MAX_CHUNK_ROWS:
        raise InvalidInputError(f"chunk rows must be between 1 and {MAX_CHUNK_ROWS}, got "
                                f"{chunk_rows}", field="chunk_rows")
    query = _query(what, dataset)
    columns = [c.name for c in query.selected_columns]
    # Nullable integers (an exit code) stay integers, not floats with NaN.
    int_columns = [c.name for c in query.selected_columns if isinstance(c.type, Integer)]
    # Core, not the ORM's execute: plain rows, without the ORM's per-row loading.
    result = session.connection().execute(query.execution_options(yield_per=chunk_rows))
    emitted = False
    for part in result.partitions():
        frame = pd.DataFrame.from_records(part, columns=columns)
        for name in int_columns:
            frame[name] = frame[name].astype("Int64")
        emitted = True
        yield frame
    if not emitted:
        yield pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})


def schema(what: str) -> Any:
    """The pyarrow schema of an export's file."""
    import pyarrow as pa

    query = _query(what, None)
    return pa.schema([pa.field(c.name, _arrow_type(c.type)) for c in query.selected_columns])


def export(session: Session, what: str, out: str | Path, *, fmt: str = "parquet",
           dataset: str | None = None, force: bool = False,
           chunk_rows: int = DEFAULT_CHUNK_ROWS,
           on_chunk: Callable[[int], None] | None = None) -> ExportResult:
    """Write ``what`` to ``out`` chunk by chunk; the file appears only when complete.

    Refuses (``InvalidInputError``, naming the problem) an unknown ``what`` or format,
    an ``out`` that exists without ``force``, and a folder that cannot be written.
    """
    if what not in WHAT:
        raise InvalidInputError(f"unknown export {what!r}; one of: {', '.join(WHAT)}",
                                field="what")
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown format {fmt!r}; one of: {', '.join(FORMATS)}",
                                field="format")
    target = Path(out)
    _check_target(target, force)
    handle, tmp = _temporary(target)
    rows = parts = 0
    try:
        with os.fdopen(handle, "wb") as stream:
            writer = _Parquet(stream, schema(what)) if fmt == "parquet" else _Csv(stream)
            try:
                for frame in chunks(session, what, dataset, chunk_rows):
                    writer.write(frame)
                    rows += len(frame)
                    parts += 1
                    if on_chunk is not None:
                        on_chunk(rows)
            finally:
                writer.close()  # before the stream: a writer closed later writes to nothing
            stream.flush()
            os.fsync(stream.fileno())
        _publish(tmp, target, force)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ExportResult(what, str(target), fmt, rows, parts)


class _Parquet:
    """Row groups appended to one Parquet file: one per chunk."""

    def __init__(self, stream: Any, arrow_schema: Any) -> None:
        import pyarrow.parquet as pq

        self.schema = arrow_schema
        self.writer = pq.ParquetWriter(stream, arrow_schema)

    def write(self, frame: Any) -> None:
        import pyarrow as pa

        table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
        self.writer.write_table(table, row_group_size=max(1, len(frame)))

    def close(self) -> None:
        self.writer.close()


class _Csv:
    """CSV appended chunk by chunk: the header once, then each chunk's lines."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.header = True

    def write(self, frame: Any) -> None:
        text = frame.to_csv(index=False, header=self.header, lineterminator="\n",
                            date_format="%Y-%m-%dT%H:%M:%S.%f%z")
        self.stream.write(text.encode())
        self.header = False

    def close(self) -> None:
        pass


def _check_target(target: Path, force: bool) -> None:
    if target.is_dir():
        raise InvalidInputError(f"--out {target} is a folder: name the file to write",
                                field="out")
    if target.exists() and not force:
        raise InvalidInputError(f"--out {target} exists: pass --force to replace it",
                                field="out")
    folder = target.parent
    if not folder.is_dir():
        raise InvalidInputError(f"cannot write {target}: the folder {folder} does not exist",
                                field="out")


def _temporary(target: Path) -> tuple[int, str]:
    """A new file beside ``target`` (same filesystem, so the final rename is atomic)."""
    try:
        return tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                suffix=".partial")
    except OSError as exc:
        raise InvalidInputError(f"cannot write {target}: {exc.strerror or exc}",
                                field="out") from None


def _publish(tmp: str, target: Path, force: bool) -> None:
    """Rename the finished file into place; without ``force``, never over a file that
    appeared meanwhile (a hard link fails if the name exists)."""
    os.chmod(tmp, 0o644 & ~_umask())
    if force:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise InvalidInputError(f"--out {target} exists: pass --force to replace it",
                                field="out") from None
    except OSError:  # a filesystem without hard links: check, then rename
        if target.exists():
            raise InvalidInputError(f"--out {target} exists: pass --force to replace it",
                                    field="out") from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
