"""Sweep files (``tunix-rt tune --config SWEEP.yaml``): parsed and validated before any trial.

Pure: no Ray here. Unknown keys, empty choices, inverted ranges and impossible
values are refused with the key named; whether the cluster has the resources a
trial asks for is checked by the tuning task, against the cluster it joins.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunix_rt.specfile import check_resources, check_trainable, read_yaml, validate_spec

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
#: A sweep's name names its folder under TUNIX_RT_TUNE_STORAGE: no "/", no leading dot.
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class Scheduler(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["asha", "none"] = "asha"
    max_t: int = Field(20, ge=1, description="Most iterations a trial may run")
    grace_period: int = Field(2, ge=1, description="Iterations before a trial can be stopped")
    reduction_factor: float = Field(2, gt=1)

    @model_validator(mode="after")
    def _grace_within_max(self) -> Scheduler:
        if self.type == "asha" and self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) is larger than max_t "
                             f"({self.max_t})")
        return self


class Sweep(BaseModel):
    """A hyperparameter sweep (docs/CONTRACT.md, "Sweep file")."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    trainable: str = Field("builtin", description='"builtin" or "package.module:function"')
    dataset: str = Field("arithmetic", min_length=1, max_length=255)
    judge: str = "exact_match"
    metric: str = "accuracy"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(8, ge=1, le=10_000)
    max_concurrent_trials: int = Field(2, ge=1, le=1_000)
    time_budget_s: float | None = Field(None, gt=0)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    searcher: Literal["random", "optuna"] = "random"
    resources: dict[str, float] = Field(default_factory=lambda: {"cpu": 1.0})
    param_space: dict[str, Any] = Field(default_factory=dict)
    top_k: int = Field(1, ge=1, le=100, description="Best trials registered as runs")
    seed: int | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not SAFE_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a safe folder name: letters, digits and -_. "
                             f"only, not starting with a dot")
        return value

    @field_validator("trainable")
    @classmethod
    def _trainable_path(cls, value: str) -> str:
        return check_trainable(value)

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, float]) -> dict[str, float]:
        return check_resources(value, unit="trial")

    @field_validator("param_space")
    @classmethod
    def _space(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, spec in value.items():
            _check_param(name, spec)
        return value

    @model_validator(mode="after")
    def _num_samples_vs_grid(self) -> Sweep:
        if self.top_k > self.num_samples * max(1, self.grid_size()):
            raise ValueError(f"top_k ({self.top_k}) is more than the trials the sweep runs")
        return self

    def grid_size(self) -> int:
        size = 1
        for spec in self.param_space.values():
            if isinstance(spec, dict) and "grid" in spec:
                size *= len(spec["grid"])
        return size

    @property
    def total_trials(self) -> int:
        """Ray Tune runs ``num_samples`` samples of every grid point."""
        return self.num_samples * self.grid_size()


def _check_param(name: str, spec: Any) -> None:
    where = f"param_space.{name}"
    if not isinstance(spec, dict):
        return  # a constant, passed to every trial as is
    if len(spec) != 1:
        raise ValueError(f"{where}: give exactly one of {', '.join(DISTRIBUTIONS)}, "
                         f"got {', '.join(spec) or 'nothing'}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"{where}: unknown distribution {kind!r}; one of "
                         f"{', '.join(DISTRIBUTIONS)}")
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ValueError(f"{where}.{kind}: needs a non-empty list of values")
        return
    if not isinstance(args, list) or len(args) != 2 or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ValueError(f"{where}.{kind}: needs [low, high] as two numbers")
    low, high = args
    if low >= high:
        raise ValueError(f"{where}.{kind}: low ({low}) must be below high ({high})")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{where}.loguniform: low must be above 0, got {low}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ValueError(f"{where}.randint: needs two integers")


def parse_sweep(document: Any, *, source: str = "sweep") -> Sweep:
    """Validate a parsed sweep; the error lists every problem with its key named."""
    return validate_spec(Sweep, document, source=source, what="sweep")


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep YAML file."""
    return parse_sweep(read_yaml(path, what="sweep"), source=str(path))
