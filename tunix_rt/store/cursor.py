"""Opaque keyset-pagination cursors: base64url of a small JSON list."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from tunix_rt.errors import InvalidInputError


def encode_cursor(*key: Any) -> str:
    raw = json.dumps(list(key), separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    """The key a cursor stands for; a cursor that was not made here is refused."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError):
        key = None
    if not isinstance(key, list) or len(key) != arity:
        raise InvalidInputError(f"invalid cursor {cursor!r}: pass the next_cursor of a previous page")
    return key
