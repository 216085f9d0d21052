"""flow_fixed_cost: what one flow run costs before its first task, against a real server.

An empty flow run, its flow run created first as a worker's would be, then run in this
process three ways, alternating: Prefect's engine as it ships (its heartbeat thread,
joined at the end: it sleeps in one-second steps), inside tunix-rt's heartbeats (what
``python -m tunix_rt.flows.engine`` does for every deployed run: the same heartbeat
events, from a thread that stops at once), and with no heartbeats at all (the floor).
Target: at most 0.2 s with heartbeats kept.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from prefect import flow

from benchmarks.common import Result, Scale

TARGET_S = 0.2


@flow(name="fixed-cost-probe")
def empty() -> int:
    return 1


def run(scale: Scale) -> list[Result]:
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    from tunix_rt.flows.heartbeats import heartbeats

    reps = 4 if scale.quick else 12
    with prefect_test_harness(server_startup_timeout=120):
        frequency = get_current_settings().flows.heartbeat_frequency
        times: dict[str, list[float]] = {"prefect": [], "ours": [], "off": []}
        with get_client(sync_client=True) as client:
            def once(how: str) -> float:
                flow_run = client.create_flow_run(empty)  # not timed: the worker's part
                start = time.perf_counter()
                if how == "prefect":
                    run_flow(empty, flow_run=flow_run)
                else:
                    with heartbeats(flow_run.id, frequency if how == "ours" else None):
                        run_flow(empty, flow_run=flow_run)
                elapsed = time.perf_counter() - start
                state = client.read_flow_run(flow_run.id).state
                assert state is not None and state.is_completed(), state
                return elapsed

            for how in times:  # warm-up: imports, the server's caches
                once(how)
            for _ in range(reps):
                for how in times:
                    times[how].append(once(how))
    med: dict[str, Any] = {how: statistics.median(ts) for how, ts in times.items()}
    met = med["ours"] <= TARGET_S
    return [Result(
        "flow_fixed_cost", "-", "an empty flow run against a Prefect server", med["ours"],
        med["prefect"], "Prefect's engine as shipped (heartbeat thread joined)",
        notes=f"medians of {reps}, alternating; without any heartbeat {med['off'] * 1e3:.0f} ms "
              f"(the floor); heartbeats every {frequency} s, sent by both",
        target=f"at most {TARGET_S:g} s with heartbeats kept: "
               f"{'met' if met else 'NOT MET'} ({med['ours']:.2f} s)",
        met=met, extra={f"{how}_runs_s": ts for how, ts in times.items()})]
