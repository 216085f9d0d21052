"""One Ray for the tuning tests: 2 CPUs and 2 logical GPUs (fan-out is tested without GPUs)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 1024 * 1024,
             runtime_env={"env_vars": {"JAX_PLATFORMS": "cpu"}},
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray.cluster_resources()
    ray.shutdown()


@pytest.fixture
def tune_storage(tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: ANN001
    path = str(tmp_path / "tune")
    monkeypatch.setenv("TUNIX_RT_TUNE_STORAGE", path)
    return path
