"""The deployments' pull step, run as Prefect runs it: it migrates a new database in-process.

No `tunix-rt` command is needed on PATH (the issue: a worker whose children could not
find it crashed every deployed run), and two flow runs starting at once on a new
release migrate the database once, one after the other.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import inspect

from tests.pgserver import create_database
from tunix_rt.store import db

pytestmark = [pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]


def _pull_steps() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["pull"]


def test_prefect_yaml_pulls_with_python_not_a_shell_command() -> None:
    assert _pull_steps() == [{"tunix_rt.flows.steps.upgrade_database": {}}]


def test_prefect_runs_the_pull_step_by_its_dotted_path(
        pg_admin_url: str, prefect_api_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.deployments.steps.core import run_steps

    url = create_database(pg_admin_url)
    monkeypatch.setenv("TUNIX_RT_DATABASE_URL", url)
    monkeypatch.setenv("PATH", "/nonexistent")  # nothing to find there, and nothing needed
    try:
        output = asyncio.run(run_steps(_pull_steps(), print_function=lambda *_, **__: None))

        assert output == {"schema_revision": db.SCHEMA_HEAD}
        assert db.current_revision(db.get_engine(url)) == db.SCHEMA_HEAD
    finally:
        db.dispose_engines()


def test_flow_runs_starting_together_migrate_a_new_database_once(pg_admin_url: str) -> None:
    url = create_database(pg_admin_url)
    env = {**os.environ, "TUNIX_RT_DATABASE_URL": url, "PATH": "/nonexistent"}
    code = "from tunix_rt.flows.steps import upgrade_database; print(upgrade_database())"
    pulls = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [pull.communicate(timeout=120) + (pull.returncode,) for pull in pulls]

    for out, err, code in results:
        assert code == 0, err[-3000:]
        assert out.strip() == repr({"schema_revision": db.SCHEMA_HEAD})
    engine = db.make_engine(url)
    try:
        assert db.current_revision(engine) == db.SCHEMA_HEAD
        assert "runs" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
