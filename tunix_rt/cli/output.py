"""Rendering command output: aligned tables, CSV, or one JSON document.

Output goes to the ``sys.stdout`` of the moment of the call, not of import time, so
``main()`` called in-process (redirect_stdout, pytest's capsys) is captured.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO


def to_json(document: Any, stream: TextIO | None = None) -> None:
    stream = sys.stdout if stream is None else stream
    json.dump(document, stream, indent=2, default=str)
    stream.write("\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def to_table(rows: Sequence[dict[str, Any]], columns: Sequence[str],
             stream: TextIO | None = None, headers: Sequence[str] | None = None) -> None:
    """Left-aligned columns with a header; numbers right-aligned."""
    stream = sys.stdout if stream is None else stream
    headers = list(headers or columns)
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool)
                   for row in rows if row.get(c) is not None) and bool(rows)
               for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    stream.write(line(headers) + "\n")
    for row in cells:
        stream.write(line(row) + "\n")
    if not rows:
        stream.write("(none)\n")


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str],
           stream: TextIO | None = None) -> None:
    stream = sys.stdout if stream is None else stream
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    stream.write(buffer.getvalue())


def key_values(pairs: dict[str, Any], stream: TextIO | None = None) -> None:
    """A record as ``key: value`` lines (``runs show``, ``baseline show``)."""
    stream = sys.stdout if stream is None else stream
    width = max((len(k) for k in pairs), default=0)
    for key, value in pairs.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str) if value else "-"
        stream.write(f"{key.ljust(width)}  {_cell(value)}\n")
