"""Run files are refused, key named, before anything trains; --dry-run resolves what they name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tunix_rt.errors import InvalidInputError
from tunix_rt.training.runfile import RunSpec, load_run_spec, parse_run_spec

CONTRACT_EXAMPLE = """\
name: arith-lr01
dataset: arithmetic
model: tiny-jax
trainable: builtin              # or "package.module:function"
config: {learning_rate: 0.01, hidden_size: 32, steps: 200, seed: 0}
# or, instead of trainable/config, a command line and the predictions it will write:
# command: ["python", "-m", "tunix.cli.peft_main", "base_config.yaml", "training.learning_rate=1e-4"]
# predictions: file:///data/runs/arith-lr01/predictions.jsonl
resources: {cpu: 1}             # gpu and custom accelerator resources when Ray or a work pool provides them
timeout_s: 1800
judges: [exact_match]
"""

BASE = {"name": "arith-lr01", "dataset": "arithmetic", "model": "tiny-jax"}
COMMAND = {**BASE, "command": ["python", "-m", "tunix.cli.peft_main", "base_config.yaml"],
           "predictions": "file:///data/runs/arith-lr01/predictions.jsonl"}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_contracts_example_parses(tmp_path: Path) -> None:
    spec = load_run_spec(_write(tmp_path, CONTRACT_EXAMPLE))
    assert spec.trainable == "builtin" and not spec.is_command
    assert spec.config == {"learning_rate": 0.01, "hidden_size": 32, "steps": 200, "seed": 0}
    assert spec.resources == {"cpu": 1.0} and spec.timeout_s == 1800
    assert spec.judges == ["exact_match"] and spec.external_id is None
    spec.check()  # the builtin resolves and its config is valid


def test_the_contracts_command_form_parses(tmp_path: Path) -> None:
    text = CONTRACT_EXAMPLE.replace("trainable: builtin", "# trainable").replace(
        "config: {", "# config: {").replace("# command:", "command:").replace(
        "# predictions:", "predictions:")
    spec = load_run_spec(_write(tmp_path, text))
    assert spec.is_command and spec.trainable is None and spec.config is None
    assert spec.command == ["python", "-m", "tunix.cli.peft_main", "base_config.yaml",
                            "training.learning_rate=1e-4"]
    assert spec.predictions == "file:///data/runs/arith-lr01/predictions.jsonl"


def test_defaults() -> None:
    spec = parse_run_spec({**BASE, "trainable": "builtin"})
    assert spec.config == {} and spec.resources == {"cpu": 1.0}
    assert spec.timeout_s == 3600 and spec.judges == ["exact_match"]
    spec = parse_run_spec({**COMMAND, "external_id": "job-7", "resources": {"cpu": 2, "gpu": 1}})
    assert spec.external_id == "job-7" and spec.resources == {"cpu": 2.0, "gpu": 1.0}


@pytest.mark.parametrize("extra, named", [
    ({"trainable": "builtin"}, "trainable, command, predictions"),
    ({"config": {"steps": 3}}, "config, command, predictions"),
])
def test_mixing_the_forms_is_refused(extra: dict, named: str) -> None:
    with pytest.raises(InvalidInputError, match=f"{named}: give either trainable/config "
                                                f"or command/predictions, not both"):
        parse_run_spec({**COMMAND, **extra})


@pytest.mark.parametrize("document, message", [
    (BASE, "trainable, command: give either"),
    ({**BASE, "command": ["train.sh"]}, "predictions: required with command"),
    ({**BASE, "predictions": "p.jsonl"}, "command: required with predictions"),
    ({**BASE, "config": {"steps": 3}}, "trainable: required with config"),
    ({**COMMAND, "command": []}, "command: .*must not be empty"),
    ({**COMMAND, "command": ["  "]}, "command: the program"),
    ({**COMMAND, "command": "python train.py"}, "command: Input should be a valid list"),
    ({**COMMAND, "predictions": " "}, "predictions: must be a non-empty URI"),
    ({**BASE, "trainable": "my_module.train"}, "trainable: must be"),
    ({**BASE, "trainable": "pkg:mod:fn"}, "trainable: must be"),
    ({**BASE, "trainable": "builtin", "config": [1]}, "config: Input should be a valid dict"),
    ({**BASE, "trainable": "builtin", "learning_rate": 0.1}, "learning_rate: unknown key"),
    ({**COMMAND, "timeout_s": 0}, "timeout_s: Input should be greater than 0"),
    ({**COMMAND, "resources": {"cpu": -1}}, "resources: cpu: must not be negative"),
    ({**COMMAND, "resources": {"gpu": 1.5}}, "resources: gpu: fractions"),
    ({**COMMAND, "resources": {"cpu": 0}}, "resources: a job needs"),
    ({**COMMAND, "judges": []}, "judges: List should have at least 1 item"),
    ({**COMMAND, "judges": ["exact_match", "exact_match"]}, "judges: a judge is named twice"),
    ({**COMMAND, "name": " "}, "name: must not be blank"),
    ({"dataset": "arithmetic", "model": "m", "trainable": "builtin"}, "name: Field required"),
])
def test_bad_run_files_are_refused_with_the_key_named(document: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_run_spec(document)


def test_every_problem_is_listed() -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_run_spec({**COMMAND, "timeout_s": -1, "colour": "red", "model": ""}, source="r.yaml")
    message = str(caught.value)
    assert message.startswith("r.yaml: ")
    for key in ("timeout_s:", "colour: unknown key", "model:"):
        assert key in message


def test_dry_run_finds_the_program() -> None:
    parse_run_spec({**COMMAND, "command": [sys.executable, "train.py"]}).check()
    parse_run_spec({**COMMAND, "command": ["sh", "-c", "true"]}).check()  # on PATH


def test_dry_run_refuses_a_missing_program(tmp_path: Path) -> None:
    spec = parse_run_spec({**COMMAND, "command": [str(tmp_path / "no-such-trainer"), "x"]})
    with pytest.raises(InvalidInputError, match="command: program .*no-such-trainer.* not found"):
        spec.check()
    spec = parse_run_spec({**COMMAND, "command": ["tunix-rt-no-such-program-xyz"]})
    with pytest.raises(InvalidInputError, match="command: program"):
        spec.check()


def test_dry_run_refuses_an_unknown_uri_protocol() -> None:
    spec = parse_run_spec({**COMMAND, "command": [sys.executable],
                           "predictions": "nosuchproto://bucket/p.jsonl"})
    with pytest.raises(InvalidInputError, match="predictions: unknown URI protocol"):
        spec.check()
    parse_run_spec({**COMMAND, "command": [sys.executable], "predictions": "p.jsonl"}).check()


@pytest.mark.parametrize("trainable, message", [
    ("no_such_package_xyz.train:run", "module 'no_such_package_xyz.train' not found"),
    ("tunix_rt.training.trainable:no_such_function", "has no attribute 'no_such_function'"),
    ("tunix_rt.training.trainable:DATASET", "is not callable"),
])
def test_dry_run_refuses_an_unresolvable_trainable(trainable: str, message: str) -> None:
    spec = parse_run_spec({**BASE, "trainable": trainable})
    with pytest.raises(InvalidInputError, match=f"trainable .*{message}"):
        spec.check()


def test_dry_run_resolves_a_users_trainable() -> None:
    parse_run_spec({**BASE, "trainable": "tunix_rt.training.trainable:builtin_trainable"}).check()


def test_dry_run_checks_the_builtins_config() -> None:
    spec = parse_run_spec({**BASE, "trainable": "builtin", "config": {"learning_rate": -1}})
    with pytest.raises(InvalidInputError, match="config.learning_rate: must be"):
        spec.check()


def test_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="run file not found"):
        load_run_spec(tmp_path / "missing.yaml")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_run_spec(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(InvalidInputError, match="expected a mapping of run fields"):
        load_run_spec(_write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(InvalidInputError, match="expected a mapping of run fields"):
        load_run_spec(_write(tmp_path, ""))
    with pytest.raises(InvalidInputError, match=r"run\.yaml: .*timeout_s"):
        load_run_spec(_write(tmp_path, CONTRACT_EXAMPLE.replace("1800", "soon")))


def test_the_spec_is_a_pydantic_model() -> None:
    assert RunSpec.model_json_schema()["properties"]["timeout_s"]["default"] == 3600
