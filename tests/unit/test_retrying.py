"""The one retry policy of the webhook client and the llm judge: Retry-After, else jitter."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from tunix_rt.retrying import backoff_delay, parse_retry_after, retry_delay

NOW = 1445412480.0 - 10.0  # 10 s before Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize("value, expected", [
    ("2", 2.0), ("0.5", 0.5), (" 7 ", 7.0), ("-3", 0.0), (None, None), ("", None),
    ("soon", None), ("nan", None), ("inf", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 10.0),
    ("Wed, 21 Oct 2015 07:28:00 -0000", 10.0),  # no zone: UTC
    ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # already past
])
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (2000, 3.0)):
        draws = [backoff_delay(attempt, 0.5, 3.0) for _ in range(400)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert min(draws) < ceiling * 0.25 and max(draws) > ceiling * 0.75  # spread, not fixed
    assert backoff_delay(3, 0.0, 60.0) == 0.0


def test_retry_after_wins_over_backoff_and_both_are_capped() -> None:
    assert retry_delay(5, base=100.0, cap=60.0, retry_after="0") == 0.0
    assert retry_delay(1, base=0.0, cap=60.0, retry_after="2.5") == 2.5
    assert retry_delay(1, base=0.0, cap=60.0, retry_after="86400") == 60.0
    assert retry_delay(1, base=0.0, cap=60.0, retry_after="later") == 0.0  # unreadable: backoff
    assert all(retry_delay(30, base=1.0, cap=4.0) <= 4.0 for _ in range(100))


@pytest.mark.parametrize("module", ["tunix_rt.client", "tunix_rt.retrying", "tunix_rt.jsonsafe"])
def test_the_client_and_its_helpers_import_the_standard_library_only(module: str) -> None:
    """The webhook client runs inside training jobs (httpx it imports when it sends)."""
    tree = ast.parse(Path(importlib.import_module(module).__file__).read_text())
    imported = set()
    for node in tree.body:  # module level
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    outside = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}
    assert outside <= {"__future__", "tunix_rt.retrying", "tunix_rt.jsonsafe"}, outside
