"""Opaque keyset-pagination cursors: base64url of a small JSON list.

A cursor comes back from a caller, so it is untrusted input: ``decode_cursor``
checks its length, its JSON (no NaN or Infinity), and each element against the
kind of key the caller made (``RANK``, ``TIMESTAMP``, ``ID``, ``FLOAT``,
``integer(low, high)``), ranges included, so
that nothing a cursor holds can fail later in ``datetime`` or in the database.
Anything else is an ``InvalidCursorError`` naming the ``cursor`` parameter.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from tunix_rt.errors import InvalidInputError

MAX_CURSOR_CHARS = 1024
MAX_RANK = 2**31 - 1  # a PostgreSQL INTEGER
MAX_ID_CHARS = 255


class InvalidCursorError(InvalidInputError):
    """A cursor this service did not make; ``field`` is always ``cursor``."""

    def __init__(self, cursor: str, why: str) -> None:
        shown = cursor if len(cursor) <= 60 else cursor[:60] + "..."
        super().__init__(f"invalid cursor {shown!r} ({why}): pass the next_cursor of a "
                         "previous page, or no cursor for the first page", field="cursor")


def RANK(value: Any) -> int:  # noqa: N802 - used like a type
    """A leaderboard rank: an integer from 1 to 2**31 - 1."""
    if type(value) is not int or not 1 <= value <= MAX_RANK:
        raise ValueError(f"a rank must be an integer from 1 to {MAX_RANK}")
    return value


def TIMESTAMP(value: Any) -> datetime:  # noqa: N802
    """An ISO 8601 timestamp with a UTC offset, whose UTC time is within years 1-9999."""
    # fromisoformat alone lets some oddities through (a trailing NUL, on 3.12).
    if not isinstance(value, str) or len(value) > 64 or not (value.isascii()
                                                             and value.isprintable()):
        raise ValueError("a timestamp must be an ISO 8601 string")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("a timestamp must be an ISO 8601 string") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("a timestamp must carry a UTC offset")
    try:
        utc = when.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("the timestamp is out of range") from None
    if not 1 < utc.year < 9999:
        raise ValueError("the timestamp is out of range")
    return when


def FLOAT(value: Any) -> float:  # noqa: N802
    """A finite number (JSON writes a float's ``.0``; an integer is taken as one too)."""
    if type(value) not in (int, float) or (type(value) is int and abs(value) > 2**63):
        raise ValueError("a key must be a finite number")
    number = float(value)
    if not math.isfinite(number) or abs(number) > 1e300:
        raise ValueError("a key must be a finite number")
    return number


def integer(low: int, high: int) -> Callable[[Any], int]:
    """The kind of an integer key from ``low`` to ``high`` (both included)."""

    def kind(value: Any) -> int:
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"a key must be an integer from {low} to {high}")
        return value

    return kind


def ID(value: Any) -> str:  # noqa: N802
    """A row id: a non-empty string of at most 255 printable characters."""
    if (not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS
            or not value.isprintable()):
        raise ValueError(f"an id must be a string of 1 to {MAX_ID_CHARS} printable characters")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a cursor value")


def encode_cursor(*key: Any) -> str:
    raw = json.dumps(list(key), separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *kinds: Callable[[Any], Any]) -> list[Any]:
    """The key a cursor stands for, one element per kind, each checked and converted.

    A cursor that was not made here is refused with an ``InvalidCursorError``.
    """
    if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidCursorError(str(cursor), f"longer than {MAX_CURSOR_CHARS} characters")
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4))
        key = json.loads(raw, parse_constant=_no_constants)
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidCursorError(cursor, "not base64url of JSON") from None
    if not isinstance(key, list) or len(key) != len(kinds):
        raise InvalidCursorError(cursor, f"not a list of {len(kinds)}")
    try:
        return [kind(value) for kind, value in zip(kinds, key)]
    except ValueError as exc:
        raise InvalidCursorError(cursor, str(exc)) from None
