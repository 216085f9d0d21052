"""Judges: the Judge protocol, its registry and the built-in judges.

Pure code: no Prefect, no Ray, no database.
"""

from tunix_rt.judges.base import Item, Judge, ScoringContext, Verdict
from tunix_rt.judges.registry import (JudgeRegistryError, JudgeSpec, RegisteredJudge, get_judge, judge_spec,
                             list_judges, register_judge)

# Importing the built-in modules registers them.
from tunix_rt.judges import exact_match, llm, mock, trace_format  # noqa: E402,F401  isort:skip
from tunix_rt.judges.registry import load_plugins  # noqa: E402  isort:skip

PLUGINS = load_plugins()

__all__ = ["Item", "Judge", "JudgeRegistryError", "JudgeSpec", "RegisteredJudge", "ScoringContext", "Verdict",
           "get_judge", "judge_spec", "list_judges", "register_judge"]
