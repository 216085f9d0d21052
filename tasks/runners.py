"""The Prefect task runner of an evaluation's chunks (``TUNIX_RT_TASK_RUNNER``).

Here, in the tasks layer, not beside the chunking itself (tunix_rt.quality.chunks): the
core never imports Prefect.
"""

from __future__ import annotations

from typing import Any


def task_runner(name: str | None = None) -> Any:
    """The Prefect task runner that runs an evaluation's chunks (``TUNIX_RT_TASK_RUNNER``)."""
    from tunix_rt.settings import get_settings

    settings = get_settings()
    name = name or settings.task_runner
    if name == "ray":
        import os

        from prefect_ray import RayTaskRunner

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        return RayTaskRunner(address=settings.ray_address or None,
                             init_kwargs={"include_dashboard": False,
                                          "log_to_driver": False})
    from prefect.task_runners import ThreadPoolTaskRunner

    # One chunk at a time: its memory is the bound, the llm judge's concurrency bound
    # holds as configured, and threads would not share the CPU-bound judges anyway.
    return ThreadPoolTaskRunner(max_workers=1)


def chunk_options(runner: Any) -> Any:
    """A context for mapping the chunk tasks on ``runner``: on Ray, the workers get this
    process's ``TUNIX_RT_*`` settings (its database above all) in their environment, as
    the flow's process reads them; elsewhere nothing."""
    import contextlib
    import os

    if type(runner).__name__ != "RayTaskRunner":
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    env = {k: v for k, v in os.environ.items() if k.startswith("TUNIX_RT_")}
    return remote_options(runtime_env={"env_vars": env})
