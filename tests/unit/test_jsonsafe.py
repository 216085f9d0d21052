"""The one conversion of reported values to plain JSON (client, job entry point, studies)."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from tunix_rt.jsonsafe import json_safe


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


@pytest.mark.parametrize("value, expected", [
    (None, None), (True, True), (3, 3), ("x", "x"), (1.5, 1.5),
    (float("nan"), None), (float("inf"), None), (float("-inf"), None),
    (np.float32(1.5), 1.5), (np.float64("nan"), None), (np.int64(7), 7), (np.bool_(True), True),
    (np.array([1, 2]), [1, 2]), (np.array([[0.5, np.nan]]), [[0.5, None]]),
    (PurePosixPath("/data/p.jsonl"), "/data/p.jsonl"),
    (datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "2026-01-02T03:04:05+00:00"),
    (date(2026, 1, 2), "2026-01-02"),
    ((1, "a"), [1, "a"]), (frozenset({4}), [4]), ({1: {"b": np.float32(2.0)}}, {"1": {"b": 2.0}}),
    (Opaque(), "opaque!"),
])
def test_json_safe(value: object, expected: object) -> None:
    converted = json_safe(value)
    assert converted == expected
    json.dumps(converted, allow_nan=False)  # plain JSON, strictly


def test_numpy_scalars_become_python_values() -> None:
    converted = json_safe({"loss": np.float32(0.25), "step": np.int32(3)})
    assert type(converted["loss"]) is float and type(converted["step"]) is int


def test_the_job_protocol_line_is_strict_json(capsys: pytest.CaptureFixture[str]) -> None:
    from tunix_rt.training.job_entry import emit_metrics
    from tunix_rt.training.jobs import METRICS_PREFIX

    emit_metrics({"loss": np.float32(0.5), "accuracy": float("nan"), "out": Path("/o")})
    prefix, _, line = capsys.readouterr().out.strip().partition(" ")
    assert prefix == METRICS_PREFIX
    assert json.loads(line) == {"loss": 0.5, "accuracy": None, "out": "/o"}
