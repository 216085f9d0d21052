"""Fixtures the reliability tests share."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """A folder for jobs' predictions, the one a test's allow-list names."""
    path = tmp_path / "data" / "runs"
    path.mkdir(parents=True)
    return path
