"""prefect.yaml: every deployment loads its flow and its parameters fit the form."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

ROOT = Path(__file__).resolve().parents[2]


def _deployments() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d["name"])
def test_deployment_entrypoint_and_parameters(deployment: dict, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    schema = parameter_schema(flow.fn).model_dump_for_openapi()
    unknown = set(deployment.get("parameters", {})) - set(schema["properties"])
    assert not unknown, f"parameters the flow does not take: {unknown}"
    # The preset parameters, plus what the form would ask for, pass the flow's validation.
    asked = {"quality-loop": {"run_id": "x"}, "tune": {"sweep": {"name": "from-the-form"}},
             "train": {"spec": {"name": "n", "dataset": "d", "model": "m",
                                "trainable": "builtin"}}}
    flow.validate_parameters({**deployment.get("parameters", {}),
                              **asked.get(deployment["name"], {})})


def test_quality_loop_form_is_typed() -> None:
    from tunix_rt.flows.quality_loop import quality_loop

    props = parameter_schema(quality_loop.fn).model_dump_for_openapi()
    assert props["required"] == ["run_id"]
    p = props["properties"]
    assert p["judges"]["type"] == "array" and p["judges"]["default"] == ["exact_match"]
    assert p["force"]["type"] == "boolean"
    policy = props["definitions"]["GatePolicy"]["properties"]
    assert policy["margin"]["type"] == "number" and policy["margin"]["minimum"] == 0


def test_unknown_judge_is_refused_before_the_run_starts() -> None:
    from tunix_rt.flows.quality_loop import quality_loop

    with pytest.raises(Exception, match="unknown judge 'nope'; registered judges: .*exact_match"):
        quality_loop.validate_parameters({"run_id": "x", "judges": ["nope"]})


def test_the_example_automations_are_valid() -> None:
    from prefect.events.schemas.automations import AutomationCore

    folder = ROOT / "examples" / "automations"
    gate = AutomationCore.model_validate(yaml.safe_load((folder / "gate-failed.yaml").read_text()))
    assert gate.trigger.expect == {"tunix.gate.failed"}
    crashed = AutomationCore.model_validate(
        yaml.safe_load((folder / "crashed-flow-runs.yaml").read_text()))
    assert crashed.trigger.after == {"prefect.flow-run.heartbeat"}
    # Longer than Prefect's default heartbeat interval (180 s), or healthy runs would crash.
    assert crashed.trigger.within.total_seconds() > 180
