"""How long to wait before retrying an HTTP call: the server's word, or backoff with jitter.

One policy for every caller that retries over HTTP (the training-side webhook client
and the ``llm`` judge): when the answer carries a readable ``Retry-After``, wait that
long; otherwise back off exponentially with full jitter; never longer than a cap.

Standard library only: :mod:`tunix_rt.client` imports this module inside training jobs,
where nothing but the standard library may be assumed.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from datetime import timezone

__all__ = ["backoff_delay", "parse_retry_after", "retry_delay"]

_MAX_DOUBLINGS = 512  # 2.0 ** 512 is finite: any cap is reached long before


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date.

    None when the header is absent or unreadable (so the caller backs off instead);
    never negative (a date in the past means now). An HTTP-date is measured from
    ``now``, epoch seconds (default: the clock); a date without a zone is UTC.
    """
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """The wait after failed attempt ``attempt`` (1 for the first), with full jitter.

    Uniform in ``[0, min(cap, base * 2 ** (attempt - 1))]``: the ceiling doubles with
    each failure up to ``cap``, and the random draw keeps many clients that failed
    together from retrying together.
    """
    ceiling = min(cap, base * 2.0 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS))
    return random.uniform(0.0, max(ceiling, 0.0))


def retry_delay(attempt: int, *, base: float, cap: float, retry_after: str | None = None) -> float:
    """How long to wait after failed attempt ``attempt`` before the next one.

    ``retry_after`` is the raw ``Retry-After`` header when the caller honours it for
    this answer (typically 429 and 503), else None. A readable one is obeyed; otherwise
    :func:`backoff_delay`. Either way the wait is at most ``cap`` seconds.
    """
    told = parse_retry_after(retry_after)
    if told is not None:
        return min(told, cap)
    return backoff_delay(attempt, base, cap)
