"""Sweep files are refused, key named, before any trial starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunix_rt.errors import InvalidInputError
from tunix_rt.tuning.sweep import load_sweep, parse_sweep

ROOT = Path(__file__).resolve().parents[2]

VALID = {
    "name": "lr-width-sweep", "trainable": "builtin", "dataset": "arithmetic",
    "judge": "exact_match", "metric": "accuracy", "mode": "max", "num_samples": 8,
    "max_concurrent_trials": 2, "time_budget_s": 600,
    "scheduler": {"type": "asha", "max_t": 20, "grace_period": 2, "reduction_factor": 2},
    "resources": {"cpu": 1, "gpu": 0.5},
    "param_space": {"learning_rate": {"loguniform": [0.0001, 0.1]},
                    "hidden_size": {"choice": [16, 32, 64]}, "steps": {"randint": [50, 200]},
                    "seed": {"grid": [0, 1]}},
}


def test_the_contracts_example_is_valid() -> None:
    sweep = parse_sweep(VALID)
    assert sweep.grid_size() == 2 and sweep.total_trials == 16
    assert sweep.resources == {"cpu": 1.0, "gpu": 0.5}


def test_the_shipped_example_sweep_is_valid() -> None:
    sweep = load_sweep(ROOT / "examples" / "sweep.yaml")
    assert sweep.trainable == "builtin" and sweep.param_space


@pytest.mark.parametrize("change, message", [
    ({"learning_rate": 0.1}, "learning_rate: unknown key"),
    ({"scheduler": {"type": "asha", "max_steps": 3}}, "scheduler.max_steps: unknown key"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler.type"),
    ({"scheduler": {"type": "asha", "max_t": 2, "grace_period": 5}}, "grace_period (5) is larger"),
    ({"param_space": {"hidden_size": {"choice": []}}},
     "param_space.hidden_size.choice: needs a non-empty list"),
    ({"param_space": {"lr": {"loguniform": [0, 0.1]}}}, "param_space.lr.loguniform: low must"),
    ({"param_space": {"lr": {"uniform": [0.5, 0.1]}}}, "low (0.5) must be below high (0.1)"),
    ({"param_space": {"lr": {"normal": [0, 1]}}}, "unknown distribution 'normal'"),
    ({"param_space": {"n": {"randint": [1.5, 3]}}}, "param_space.n.randint: needs two integers"),
    ({"param_space": {"n": {"choice": [1], "grid": [2]}}}, "give exactly one of"),
    ({"resources": {"cpu": -1}}, "resources: cpu: must not be negative"),
    ({"resources": {"gpu": 1.5}}, "fractions are allowed below 1 only"),
    ({"resources": {"cpu": 0}}, "needs at least some cpu"),
    ({"trainable": "mypkg.train"}, 'must be "builtin" or "package.module:function"'),
    ({"mode": "maximize"}, "mode"),
    ({"num_samples": 0}, "num_samples"),
    ({"top_k": 99, "num_samples": 2}, "top_k (99) is more than the trials"),
])
def test_bad_sweeps_name_the_key(change: dict, message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_sweep({**VALID, **change}, source="sweep.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("sweep.yaml: ")


def test_custom_accelerator_resources_are_kept() -> None:
    sweep = parse_sweep({**VALID, "resources": {"cpu": 1, "TPU-v5e": 4}})
    assert sweep.resources["TPU-v5e"] == 4


def test_a_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="sweep file not found"):
        load_sweep(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_sweep(bad)


def test_a_trainable_path_that_cannot_load_is_refused_before_any_trial() -> None:
    """The same form check as tunix_rt.training.trainable.load_trainable: no trial fails on it later."""
    for path in ("pkg.mod:fn:extra", "pkg-mod:fn", "pkg.mod:"):
        with pytest.raises(InvalidInputError, match="trainable: must be"):
            parse_sweep({**VALID, "trainable": path})
