"""``tunix-rt export``: runs, evaluations, verdicts or trials to a Parquet or CSV file.

The rows stream from the database in chunks, each appended to the file as it comes,
so a million verdicts export in bounded memory; the file appears only when complete
(:mod:`tunix_rt.store.export`). pandas and pyarrow are imported when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from tunix_rt.cli._args import add_command

WHAT = ("runs", "evaluations", "verdicts", "trials")  # as tunix_rt.store.export.WHAT
# About 80 MiB above the interpreter's floor for verdicts (benchmarks/export_memory.py).
# As tunix_rt.store.export.DEFAULT_CHUNK_ROWS, repeated so that building the parser
# imports no SQLAlchemy.
DEFAULT_CHUNK_ROWS = 10_000


def cmd_export(args: argparse.Namespace) -> int:
    from tunix_rt.store.db import session_scope
    from tunix_rt.store.export import export

    with session_scope() as session:
        done = export(session, args.what, args.out, fmt=args.format, dataset=args.dataset,
                      force=args.force, chunk_rows=args.chunk_rows)
    noun = args.what if done.rows != 1 else args.what.rstrip("s")
    print(f"exported {done.rows:,} {noun} to {done.path} ({done.format}, "
          f"{done.chunks} chunk{'s' if done.chunks != 1 else ''})")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000000, got {value}")
    return value


def register(subparsers: Any) -> None:
    p = add_command(subparsers, "export", cmd_export,
                    "write runs, evaluations, verdicts or trials to a Parquet or CSV file, "
                    "in chunks (bounded memory); the file appears only when complete",
                    formats=None)
    p.add_argument("--what", required=True, choices=WHAT, help="what to export")
    p.add_argument("--dataset", help="only the rows of this dataset")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet",
                   help="file format (default: parquet)")
    p.add_argument("--out", required=True, metavar="PATH", help="the file to write")
    p.add_argument("--force", action="store_true", help="replace PATH if it exists")
    p.add_argument("--chunk-rows", type=_positive, default=DEFAULT_CHUNK_ROWS, metavar="N",
                   help=f"rows read and written at a time (default {DEFAULT_CHUNK_ROWS}): "
                        "memory grows with it")
