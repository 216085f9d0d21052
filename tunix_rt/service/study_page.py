"""(work in progress)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from tunix_rt.settings import Settings


def install(app: FastAPI, scope: Callable[[], Any], settings: Settings) -> None:
    """Register this module's routes on ``app``; ``scope()`` opens a session."""
