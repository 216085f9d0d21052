"""Prefect flows: they sequence the tasks in tunix_rt.tasks, and do nothing else.

Installed as ``tunix_rt.flows`` (pyproject maps this folder into the package).
"""

import os

# Without PREFECT_API_URL, Prefect starts an ephemeral server and gives it 20 s. The
# first run after a fresh install (no bytecode compiled yet) on a busy machine can
# take longer than that; a user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
