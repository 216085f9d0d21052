"""The built-in trainable (a small JAX adder), its reporting helper and the plug-in loader.

No Ray here: outside a Tune trial ``report`` goes to a reporter or to the process's list.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tunix_rt.judges import ScoringContext, get_judge
from tunix_rt.training import trainable
from tunix_rt.quality.predictions import read_predictions
from tunix_rt.training.trainable import (arithmetic_items, builtin_trainable, clear_reports, load_trainable,
                                report, reporting_to, reports, set_reporter, train_arithmetic,
                                training_pairs)

GOOD = {"learning_rate": 0.03, "hidden_size": 64, "steps": 150, "seed": 0}


def _train(config: dict[str, Any], out_dir: Path) -> tuple[list[dict[str, Any]], str]:
    """Train; the reports without their predictions URI (it names out_dir), and the URI.

    Every report carries the URI of the predictions of that moment, the last one the
    URI returned.
    """
    collected: list[dict[str, Any]] = []
    uri = train_arithmetic(config, report=collected.append, out_dir=out_dir)
    uris = [r.pop("predictions_uri") for r in collected]
    assert uris and all(u == uri for u in uris)
    return collected, uri


@pytest.fixture(autouse=True)
def _no_reporter() -> Any:
    previous = set_reporter(None)
    clear_reports()
    yield
    set_reporter(previous)
    clear_reports()


# --- the dataset ------------------------------------------------------------------------

def test_eval_items_are_fixed_and_well_formed() -> None:
    items = arithmetic_items()
    assert items == arithmetic_items()
    assert len(items) == 200
    assert items[0]["id"] == "add-0000" and items[-1]["id"] == "add-0199"
    pairs = set()
    for item in items:
        assert set(item) == {"id", "prompt", "reference"}
        a, b = (int(x) for x in item["prompt"].removeprefix("What is ").removesuffix("?")
                .split(" + "))
        assert 0 <= a <= 49 and 0 <= b <= 49
        assert item["reference"] == str(a + b)
        pairs.add((a, b))
    assert len(pairs) == 200  # no pair twice
    assert arithmetic_items(10, seed=7) != arithmetic_items(10)


def test_training_pairs_are_disjoint_from_the_eval_pairs() -> None:
    train = training_pairs()
    assert train == training_pairs()
    held_out = {tuple(int(x) for x in i["prompt"][8:-1].split(" + ")) for i in arithmetic_items()}
    assert not held_out & set(train)
    assert len(train) + len(held_out) == 50 * 50


# --- training ---------------------------------------------------------------------------

def test_same_config_is_bit_identical_and_the_seed_matters(tmp_path: Path) -> None:
    first, _ = _train(GOOD, tmp_path / "one")
    second, _ = _train(dict(GOOD), tmp_path / "two")
    other, _ = _train({**GOOD, "seed": 1}, tmp_path / "three")
    assert first == second
    assert (tmp_path / "one" / "predictions.jsonl").read_bytes() == \
        (tmp_path / "two" / "predictions.jsonl").read_bytes()
    assert other != first


def test_reports_every_steps_per_report_and_at_the_end(tmp_path: Path) -> None:
    collected, _ = _train({"steps": 25, "steps_per_report": 10}, tmp_path)
    assert [r["step"] for r in collected] == [10, 20, 25]
    for r in collected:
        assert set(r) == {"accuracy", "loss", "step"}
        assert 0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0
        assert all(type(r[k]) is t for k, t in (("accuracy", float), ("loss", float),
                                                 ("step", int)))


def test_quality_depends_on_the_hyperparameters(tmp_path: Path) -> None:
    def accuracy(**overrides: Any) -> float:
        return _train({**GOOD, **overrides}, tmp_path / str(len(list(tmp_path.iterdir()))))[0][-1][
            "accuracy"]

    good = accuracy()
    assert good > 0.85
    assert accuracy(learning_rate=0.0001) < 0.3
    assert accuracy(steps=20) < 0.3
    assert accuracy(hidden_size=8) < good - 0.3


def test_predictions_file_is_valid_and_the_judge_agrees_with_the_report(tmp_path: Path) -> None:
    collected, uri = _train({**GOOD, "steps": 60}, tmp_path)
    assert uri == (tmp_path / "predictions.jsonl").resolve().as_uri()
    items = read_predictions(uri, require_reference=True)
    expected = arithmetic_items()
    assert [i.id for i in items] == [e["id"] for e in expected]
    assert [i.prompt for i in items] == [e["prompt"] for e in expected]
    assert [i.reference for i in items] == [e["reference"] for e in expected]
    first = json.loads((tmp_path / "predictions.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "prompt", "response", "reference", "metadata"}
    assert first["metadata"] == {"trainable": "builtin", "step": 60}
    assert first["response"].startswith("<reasoning>")
    assert "</reasoning><answer>" in first["response"]

    verdicts = get_judge("exact_match").score(items, ScoringContext(run_id="r"))
    assert all(v.scored for v in verdicts)
    judged = sum(v.score for v in verdicts) / len(verdicts)
    assert judged == pytest.approx(collected[-1]["accuracy"], abs=1e-12)
    assert 0.0 < judged < 1.0  # both kinds of verdict occur, so agreement means something


def test_default_out_dir_is_a_new_temporary_directory(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    uri = train_arithmetic({"steps": 5})
    path = Path(uri.removeprefix("file://"))
    assert uri.startswith("file:///") and path.name == "predictions.jsonl"
    assert path.parent.parent == tmp_path.resolve()
    assert train_arithmetic({"steps": 5}) != uri  # a new directory each time
    assert len(path.read_text().splitlines()) == 200


@pytest.mark.parametrize("config, key", [
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"hidden_size": 2.5}, "hidden_size"),
    ({"steps": 0}, "steps"),
    ({"steps": True}, "steps"),
    ({"steps_per_report": 0}, "steps_per_report"),
    ({"seed": -1}, "seed"),
])
def test_bad_config_values_name_the_key(config: dict[str, Any], key: str,
                                        tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"^{key}:"):
        train_arithmetic(config, out_dir=tmp_path)
    assert not (tmp_path / "predictions.jsonl").exists()


def test_unknown_keys_are_ignored_and_integral_floats_accepted(tmp_path: Path) -> None:
    plain, _ = _train({"steps": 10, "hidden_size": 16}, tmp_path / "a")
    extra, _ = _train({"steps": 10.0, "hidden_size": 16.0, "dropout": 0.5, "trial": "x"},
                      tmp_path / "b")
    assert plain == extra


# --- reporting --------------------------------------------------------------------------

def test_reports_without_a_reporter_go_to_the_process_list() -> None:
    report({"accuracy": 0.5})
    report({"accuracy": 0.7, "step": 2})
    assert reports() == [{"accuracy": 0.5}, {"accuracy": 0.7, "step": 2}]
    clear_reports()
    assert reports() == []


def test_reporting_to_collects_and_restores() -> None:
    outer: list[dict[str, Any]] = []
    inner: list[dict[str, Any]] = []
    with reporting_to(outer.append):
        report({"n": 1})
        with reporting_to(inner.append):
            report({"n": 2})
        report({"n": 3})
    report({"n": 4})
    assert outer == [{"n": 1}, {"n": 3}] and inner == [{"n": 2}]
    assert reports() == [{"n": 4}]


def test_set_reporter_returns_the_previous_one() -> None:
    sink: list[dict[str, Any]] = []
    assert set_reporter(sink.append) is None
    assert set_reporter(None) == sink.append
    with pytest.raises(TypeError):
        set_reporter("not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        report([("accuracy", 1.0)])  # type: ignore[arg-type]


def test_builtin_trainable_reports_through_report(tmp_path: Path, monkeypatch:
                                                  pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    collected: list[dict[str, Any]] = []
    with reporting_to(collected.append):
        uri = load_trainable("builtin")({"steps": 20, "steps_per_report": 5, "seed": 3})
    assert [r["step"] for r in collected] == [5, 10, 15, 20]
    assert read_predictions(uri)[0].metadata == {"trainable": "builtin", "step": 20}


# --- loading trainables -----------------------------------------------------------------

def test_load_trainable_resolves_builtin_and_paths() -> None:
    assert load_trainable("builtin") is builtin_trainable
    assert load_trainable("tunix_rt.training.trainable:train_arithmetic") is train_arithmetic
    assert load_trainable("tunix_rt.training.trainable:Path.cwd") == Path.cwd


@pytest.mark.parametrize("path, message", [
    ("tunix_rt.training.trainable", "package.module:function"),
    ("tunix_rt.training.trainable:", "package.module:function"),
    (":train_arithmetic", "package.module:function"),
    ("tunix rt:train", "package.module:function"),
    ("a:b:c", "package.module:function"),
    ("no_such_module_xyz:train", "module 'no_such_module_xyz' not found"),
    ("tunix_rt.no_such_module_xyz:train", "module 'tunix_rt.no_such_module_xyz' not found"),
    ("tunix_rt.training.trainable:no_such_function", "has no attribute 'no_such_function'"),
    ("tunix_rt.training.trainable:DATASET", "is not callable"),
])
def test_load_trainable_errors_name_the_path(path: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        load_trainable(path)
    assert repr(path) in str(excinfo.value)
    assert message in str(excinfo.value)


def test_a_missing_import_inside_the_users_module_is_not_hidden(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user_trainable_broken.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "user_trainable_ok.py").write_text(textwrap.dedent("""
        from tunix_rt.training.trainable import report

        def train(config):
            report({"accuracy": config["x"]})
            return "file:///dev/null"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        load_trainable("user_trainable_broken:train")
    collected: list[dict[str, Any]] = []
    with reporting_to(collected.append):
        assert load_trainable("user_trainable_ok:train")({"x": 0.25}) == "file:///dev/null"
    assert collected == [{"accuracy": 0.25}]


# --- import weight ----------------------------------------------------------------------

def test_import_and_report_load_no_jax_optax_or_ray() -> None:
    code = textwrap.dedent("""
        import sys
        import tunix_rt.training.trainable as t
        t.load_trainable("builtin")
        t.arithmetic_items()
        t.report({"accuracy": 1.0})
        assert t.reports() == [{"accuracy": 1.0}]
        heavy = sorted(m for m in ("jax", "optax", "ray", "numpy") if m in sys.modules)
        print(",".join(heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(trainable.__file__).resolve().parents[1], check=True)
    assert out.stdout.strip() == ""
