"""Tuning tests: a results folder per test (Ray itself is the session's, in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def tune_storage(tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: ANN001
    path = str(tmp_path / "tune")
    monkeypatch.setenv("TUNIX_RT_TUNE_STORAGE", path)
    return path
