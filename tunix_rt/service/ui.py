"""The pages people look at: leaderboards (``/``), a run (``/runs/{id}``), datasets.

Each view reads through the same query functions as the JSON API and renders a
template from tunix_rt/service/templates (tunix_rt.service.templating).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from tunix_rt.settings import Settings


def install(app: FastAPI, scope: Callable[[], Any], settings: Settings) -> None:
    """Register the HTML routes on ``app``; ``scope()`` opens a session."""
