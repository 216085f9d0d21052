"""Reading a predictions file (JSON Lines, see docs/CONTRACT.md) into judge items.

The whole file is validated before any item is returned, so a bad line fails the
evaluation before anything is written. Every error names the URI and the line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tunix_rt.judges.base import Item
from tunix_rt.errors import PredictionsError

MAX_ID_LENGTH = 255
T = TypeVar("T")


def read_predictions(uri: str, *, require_reference: bool = False,
                     line_of: dict[str, int] | None = None) -> list[Item]:
    """Open ``uri`` with fsspec and parse it; raises :class:`PredictionsError` on bad input.

    I/O errors other than a missing file propagate unchanged: they may be transient
    (a flaky object store) and the calling task retries them. ``line_of``, when given,
    is filled with each item's line number.
    """
    return read_jsonl(uri, lambda lines: parse_predictions(
        lines, uri=uri, require_reference=require_reference, line_of=line_of))


def read_jsonl(uri: str, parse: Callable[[Iterable[str]], T], *, what: str = "predictions") -> T:
    """Open ``uri`` (a path or anything fsspec opens) as UTF-8 text and ``parse`` its lines.

    A missing file, text that is not UTF-8 and an unopenable URI are
    :class:`PredictionsError`s naming the URI.
    """
    import fsspec  # fsspec registers many protocols on import; only evaluation needs it.

    target = uri
    if uri.startswith("file://"):
        # A file URI is percent-encoded (RFC 8089: Path.as_uri() writes a space as %20);
        # fsspec would look for the encoded name.
        from urllib.parse import unquote, urlsplit

        target = unquote(urlsplit(uri).path)
    try:
        with fsspec.open(target, "rt", encoding="utf-8") as handle:
            return parse(handle)
    except FileNotFoundError:
        raise PredictionsError(f"{what} file not found: {uri}") from None
    except UnicodeDecodeError as exc:
        raise PredictionsError(f"{uri}: not UTF-8 text ({exc.reason} at byte {exc.start})") \
            from None
    except IsADirectoryError:
        raise PredictionsError(f"{uri}: is a directory, not a {what} file") from None
    except ValueError as exc:
        # fsspec raises ValueError for an unknown protocol or a malformed URL.
        raise PredictionsError(f"cannot open {what} URI {uri!r}: {exc}") from None


def parse_predictions(lines: Iterable[str], *, uri: str = "<predictions>",
                      require_reference: bool = False, require_response: bool = True,
                      line_of: dict[str, int] | None = None) -> list[Item]:
    """Parse JSON Lines into items; blank lines are allowed, everything else is checked.

    Without ``require_response`` (an eval-set file: ids, prompts, references) a line
    may leave the response out. ``line_of``, when given, maps each id to its line.
    """
    items: list[Item] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{uri}, line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PredictionsError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") \
                from None
        if not isinstance(obj, dict):
            raise PredictionsError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        item_id = _required_str(obj, "id", where)
        if not item_id.strip():
            raise PredictionsError(f"{where}: field 'id' is empty")
        if len(item_id) > MAX_ID_LENGTH:
            raise PredictionsError(f"{where}: field 'id' is longer than {MAX_ID_LENGTH} characters")
        if item_id in seen:
            raise PredictionsError(
                f"{where}: duplicate id {item_id!r} (first seen on line {seen[item_id]})")
        seen[item_id] = lineno
        response = (_required_str(obj, "response", where) if require_response
                    else _optional_str(obj, "response", where) or "")
        reference = _optional_str(obj, "reference", where)
        if require_reference and reference is None:
            raise PredictionsError(
                f"{where}: field 'reference' is required by the judge but missing")
        metadata = obj.get("metadata")
        if metadata is None:
            metadata = {}
        elif not isinstance(metadata, dict):
            raise PredictionsError(f"{where}: field 'metadata' must be an object")
        items.append(Item(id=item_id, response=response, prompt=_optional_str(obj, "prompt", where),
                          reference=reference, metadata=metadata))
    if not items:
        what = "predictions file" if require_response else "items file"
        raise PredictionsError(f"{uri}: the {what} has no items")
    if line_of is not None:
        line_of.update(seen)
    return items


def _required_str(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj or obj[key] is None:
        raise PredictionsError(f"{where}: required field {key!r} is missing")
    value = obj[key]
    if not isinstance(value, str):
        raise PredictionsError(f"{where}: field {key!r} must be a string, "
                               f"got {type(value).__name__}")
    return value


def _optional_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A numeric reference ("reference": 42) is common in math sets; keep its text.
        return json.dumps(value)
    if not isinstance(value, str):
        raise PredictionsError(f"{where}: field {key!r} must be a string, "
                               f"got {type(value).__name__}")
    return value
