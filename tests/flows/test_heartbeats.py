"""Deployed flow runs beat through `python -m tunix_rt.flows.engine`, and a killed one is
marked Crashed by the example automation: crash detection kept, Prefect's heartbeat thread
(and its up-to-a-second join at the end of every run) gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import yaml

from tests.waiting import wait_for

pytestmark = pytest.mark.flows

ROOT = Path(__file__).resolve().parents[2]
BEAT_S = 0.5


def _client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _flow_run(seconds: float, report: Path | None = None) -> tuple[UUID, UUID]:
    """A flow run of a deployment of tests/flows/heartbeat_probe.py; (run id, deployment id)."""
    with _client() as client:
        flow_id = client.create_flow_from_name("heartbeat-probe")
        deployment_id = client.create_deployment(
            flow_id=flow_id, name=f"probe-{uuid4().hex[:8]}", path=str(ROOT),
            entrypoint="tests/flows/heartbeat_probe.py:probe")
        run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"seconds": seconds,
                                       "report": str(report) if report else None})
    return run.id, deployment_id


def _engine(api_url: str, flow_run_id: UUID) -> subprocess.Popen:
    env = dict(os.environ, PREFECT_API_URL=api_url, TUNIX_RT_HEARTBEAT_S=str(BEAT_S))
    return subprocess.Popen([sys.executable, "-m", "tunix_rt.flows.engine", str(flow_run_id)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _heartbeats(api_url: str, flow_run_id: UUID) -> int:
    since = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    body = {"filter": {"occurred": {"since": since},
                       "event": {"name": ["prefect.flow-run.heartbeat"]},
                       "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}},
            "limit": 50}
    response = httpx.post(f"{api_url}/events/filter", json=body, timeout=30)
    response.raise_for_status()
    return len(response.json()["events"])


def _state(flow_run_id: UUID) -> str:
    with _client() as client:
        return client.read_flow_run(flow_run_id).state.type.value


def test_a_deployed_run_beats_from_our_thread_not_prefects(prefect_api_url: str,
                                                           tmp_path: Path) -> None:
    report = tmp_path / "inside.json"
    flow_run_id, _ = _flow_run(seconds=3.0, report=report)
    proc = _engine(prefect_api_url, flow_run_id)
    output = proc.communicate(timeout=240)[0].decode(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    assert _state(flow_run_id) == "COMPLETED"
    inside = json.loads(report.read_text())
    # Prefect's own heartbeat thread was off for the run; ours was beating.
    assert inside["prefect_heartbeat_frequency"] is None
    assert f"heartbeat-{flow_run_id}" in inside["threads"]
    # A beat every 0.5 s over a 3 s run: several, stored by the server as Prefect's are.
    wait_for(lambda: _heartbeats(prefect_api_url, flow_run_id) >= 3, 60,
             "three heartbeat events of the run on the server")


def test_a_killed_deployed_run_is_marked_crashed_when_its_heartbeats_stop(
        prefect_api_url: str) -> None:
    from prefect.events.schemas.automations import AutomationCore

    flow_run_id, deployment_id = _flow_run(seconds=300.0)
    # The example automation, narrowed to this test's deployment and to a short wait.
    doc = yaml.safe_load((ROOT / "examples" / "automations" /
                          "crashed-flow-runs.yaml").read_text())
    doc["trigger"]["within"] = 10  # Prefect's least
    doc["trigger"]["match_related"] = {"prefect.resource.id":
                                       f"prefect.deployment.{deployment_id}"}
    with _client() as client:
        automation_id = client.create_automation(AutomationCore.model_validate(doc))
    proc = _engine(prefect_api_url, flow_run_id)
    try:
        wait_for(lambda: _state(flow_run_id) == "RUNNING", 120, "the flow run running",
                 proc=proc)
        wait_for(lambda: _heartbeats(prefect_api_url, flow_run_id) >= 2, 60,
                 "two heartbeats of the running flow run")
        proc.send_signal(signal.SIGKILL)  # the process dies without telling anyone
        proc.wait(timeout=30)
        assert _state(flow_run_id) == "RUNNING"  # nobody reported it
        wait_for(lambda: _state(flow_run_id) == "CRASHED", 120,
                 "the automation marking the silent flow run Crashed")
    finally:
        if proc.poll() is None:
            proc.kill()
        with _client() as client:
            client.delete_automation(automation_id)
