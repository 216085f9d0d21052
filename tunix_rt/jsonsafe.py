"""Any value a trainer reports, made plain JSON: the one conversion tunix-rt uses.

Metrics and configs come from user code: numpy or jax scalars and arrays, NaN losses,
paths, datetimes. The webhook client sends them, the job entry point prints them on the
job protocol, and tuning studies store them; all three convert with :func:`json_safe`.

Standard library only, and numpy/jax are never imported (they are recognised by their
``.item()``/``.tolist()`` methods): :mod:`tunix_rt.client` imports this module inside
training jobs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any

__all__ = ["json_safe"]


def json_safe(value: Any) -> Any:
    """``value`` as what ``json.dumps(..., allow_nan=False)`` accepts, recursively.

    None, booleans, integers and strings stay as they are; floats too, except NaN and
    the infinities, which become None. Mappings become dicts with string keys; lists,
    tuples and sets become lists. Paths become their string, dates and datetimes their
    ISO 8601 text. Array scalars and arrays (numpy, jax, ...) are converted by their
    ``.item()`` or ``.tolist()``. Anything else becomes its ``str()``.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    for method in ("item", "tolist"):  # numpy / jax scalars and arrays, without importing them
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                converted = convert()
            except Exception:  # noqa: BLE001 - e.g. .item() of a many-element array
                continue
            if converted is not value:
                return json_safe(converted)
    return str(value)
