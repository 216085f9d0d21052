"""A two-node Ray cluster of real processes: ``ray start --head`` and a second ``ray start``.

Both nodes run on this machine, so they share a host name and an IP: each is named by a
custom resource (``node_a`` on the head, ``node_b`` on the other) and by an environment
variable its raylet and workers inherit (``TUNIX_NODE_NAME``), which a training job sees
through its allow-list (``TUNIX_*``, never ``TUNIX_RT_*``). Every port is a free one
picked here, so the cluster does not collide with another Ray on the machine; ``ray
stop`` is never used (it would stop every Ray of the user). Each ``ray start --block``
leads a process group that holds its node's processes; teardown stops the groups, and
checks that no process of the cluster is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import proctable
from tests.http.conftest import _free_port
from tests.waiting import wait_for
from tunix_rt import procs

RAY = str(Path(sys.executable).parent / "ray")
START_S = 240  # generous: two nodes and a dashboard on a loaded 2-core machine
B_ATTEMPTS = 3


def _ports(*names: str) -> list[str]:
    args = []
    for name in names:
        args += [f"--{name}", str(_free_port())]
    return args


def _cluster_processes(temp_dir: str) -> list[int]:
    """Running processes whose command line names the cluster's folder (Ray's own)."""
    return [pid for pid in proctable.processes() if pid != os.getpid()
            and temp_dir in proctable.command_line(pid) and proctable.running(pid)]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def nodes(dashboard: str) -> list[dict]:
    """The cluster's live nodes, from Ray's state API (the head's dashboard)."""
    response = httpx.get(f"{dashboard}/api/v0/nodes", params={"detail": "1", "limit": 100},
                         timeout=30)
    response.raise_for_status()
    return [n for n in response.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]


def tasks_named(dashboard: str, name: str) -> list[dict]:
    """Ray's record of the tasks of this name (Ray keeps finished tasks' events)."""
    response = httpx.get(f"{dashboard}/api/v0/tasks",
                         params={"detail": "1", "limit": 10000, "filter_keys": "name",
                                 "filter_predicates": "=", "filter_values": name},
                         timeout=60)
    response.raise_for_status()
    return response.json()["data"]["result"]["result"]


@pytest.fixture(scope="module")
def ray_two_nodes() -> Iterator[dict]:
    """Head (1 CPU, ``node_a``) and a second node (1 CPU, ``node_b``); their node ids."""
    # A short folder: Ray's unix sockets live under it (a path of at most 107 bytes).
    temp_dir = tempfile.mkdtemp(prefix="trt-ray-")
    gcs_port, dashboard_port = _free_port(), _free_port()
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    base = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    base.pop("RAY_ADDRESS", None)
    common = ["--block", "--num-cpus", "1", "--object-store-memory", str(80 * 1024 * 1024),
              "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]

    def node_ports() -> list[str]:
        return _ports("node-manager-port", "object-manager-port", "metrics-export-port",
                      "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                      "runtime-env-agent-port")

    head_cmd = [RAY, "start", "--head", "--port", str(gcs_port), "--temp-dir", temp_dir,
                "--resources", json.dumps({"node_a": 1}), "--include-dashboard", "true",
                "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
                *_ports("ray-client-server-port"), *common, *node_ports()]
    b_cmd = [RAY, "start", "--address", f"127.0.0.1:{gcs_port}",
             "--resources", json.dumps({"node_b": 1}), *common, *node_ports()]
    started: list[subprocess.Popen] = []
    logs = Path(temp_dir) / "start-logs"
    logs.mkdir()

    def start(cmd: list[str], name: str) -> subprocess.Popen:
        with (logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(cmd, env={**base, "TUNIX_NODE_NAME": name}, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        started.append(proc)
        return proc

    try:
        head = start(head_cmd, "node-a")
        # The second node needs only the head's GCS: it starts while the head's dashboard
        # (the slow part of the head, and only read below) is still coming up.
        wait_for(lambda: _accepts(gcs_port), START_S, "the Ray head's GCS", proc=head,
                 log=logs / "node-a.log", interval=0.5)
        for attempt in range(1, B_ATTEMPTS + 1):
            # `ray start` gives a raylet 30 s to register with the GCS (a constant of
            # Ray's); a loaded machine can miss that, and the node then exits: again.
            node_b = start(b_cmd, "node-b")
            try:
                alive = wait_for(lambda: (lambda n: n if len(n) == 2 else None)(
                    nodes(dashboard)), START_S, "the second Ray node",
                    proc=node_b, log=logs / "node-b.log", alive=lambda: head.poll() is None,
                    retry_on=httpx.HTTPError, interval=1)
                break
            except pytest.fail.Exception:
                if attempt == B_ATTEMPTS or node_b.poll() is None:
                    raise
                procs.stop_group(node_b, 10)  # what the failed start left, before again
        ids = {}
        for node in alive:
            resources = node["resources_total"]
            ids["a" if "node_a" in resources else "b"] = node["node_id"]
        assert set(ids) == {"a", "b"}, alive
        yield {"address": f"127.0.0.1:{gcs_port}", "dashboard": dashboard, "node_ids": ids,
               "temp_dir": temp_dir}
    finally:
        # Ctrl-C, as one stops `ray start --block` by hand: it stops its node's processes
        # and exits, both nodes in ~2 s. SIGTERM left both waiting out the 10 s grace for
        # their SIGKILL (10 s of every run's teardown).
        procs.stop_groups(started, 10, sig=signal.SIGINT, descendants=True)
        left = _cluster_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes left behind: {left}"
