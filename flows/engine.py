"""``python -m tunix_rt.flows.engine [FLOW_RUN_ID]``: Prefect's engine, with our heartbeats.

The command a Prefect process worker runs for tunix-rt's deployments (prefect.yaml,
``job_variables.command``) in place of ``python -m prefect.engine``. It runs Prefect's
own engine module unchanged, inside :func:`tunix_rt.flows.heartbeats.heartbeats`: the
same heartbeat events at Prefect's configured frequency (or TUNIX_RT_HEARTBEAT_S),
without the up-to-a-second
wait for Prefect's heartbeat thread at the end of every flow run.
"""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    from prefect.settings import get_current_settings

    from tunix_rt.flows.heartbeats import heartbeats
    from tunix_rt.settings import get_settings

    flow_run_id = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PREFECT__FLOW_RUN_ID")
    interval = get_settings().heartbeat_s or get_current_settings().flows.heartbeat_frequency
    with heartbeats(flow_run_id, interval):
        # Prefect's engine exits through SystemExit; the block still stops the heartbeats.
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
