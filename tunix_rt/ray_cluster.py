"""Joining Ray, and naming resources as Ray does: shared by tuning trials and training jobs.

Ray is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from tunix_rt.settings import get_settings

# Our resource keys (run and sweep files) to Ray's; any other key is a custom resource.
RESOURCE_NAMES = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}


def ray_resources(resources: Mapping[str, float]) -> dict[str, float]:
    """``{"cpu": 2, "gpu": 1, "tpu": 4}`` in Ray's names: ``{"CPU": 2.0, "GPU": 1.0, "tpu": 4.0}``."""
    return {RESOURCE_NAMES.get(k, k): float(v) for k, v in resources.items()}


def task_options(resources: Mapping[str, float]) -> dict[str, Any]:
    """``.options(...)`` for a Ray task holding these resources (a task takes no CPU unless asked)."""
    wanted = ray_resources(resources)
    return {"num_cpus": wanted.pop("CPU", 0.0), "num_gpus": wanted.pop("GPU", 0.0),
            "resources": wanted}


def connect(runtime_env: dict[str, Any] | None = None) -> None:
    """Join TUNIX_RT_RAY_ADDRESS, or start a local Ray; a Ray already started is kept."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=get_settings().ray_address or None, runtime_env=runtime_env,
             include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
