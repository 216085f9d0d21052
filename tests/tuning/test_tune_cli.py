"""`tunix-rt tune` from the shell: refusals before Ray starts, and `tune show`."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tunix_rt.tuning import studies
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.tuning.studies import ResultRow
from tunix_rt.tuning.sweep import parse_sweep

BIN = Path(sys.executable).parent / "tunix-rt"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], env=dict(os.environ), capture_output=True,
                          text=True, timeout=120)


def test_a_bad_sweep_file_is_refused_with_the_key_named(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"name": "x", "param_space": {"lr": {"choice": []}},
                                      "shceduler": {"type": "asha"}}))
    result = _cli("tune", "--config", str(config))
    assert result.returncode == 3
    assert "shceduler: unknown key" in result.stderr
    assert "ray" not in result.stderr.lower()  # refused before Ray was started


def test_tune_show_lists_the_trials(db_url: str) -> None:
    sweep = parse_sweep({"name": "shown", "param_space": {"lr": {"grid": [0.1, 0.01]}}})
    with session_scope(get_engine(db_url)) as session:
        study = studies.create_study(session, sweep, storage_path="/tmp/shown")
        for trial_id, lr, acc in (("t1", 0.1, 0.9), ("t2", 0.01, 0.4)):
            studies.upsert_trial(session, study.id, trial_id, config={"lr": lr},
                                 status="completed")
            studies.record_results(session, study.id, [ResultRow(trial_id, 1, {"accuracy": 0.1}),
                                                       ResultRow(trial_id, 2, {"accuracy": acc})])
        study_id = study.id

    as_json = _cli("tune", "show", study_id, "--format", "json")
    by_name = _cli("tune", "show", "shown", "--format", "csv")
    table = _cli("tune", "show", study_id)

    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["study_id"] == study_id and doc["metric"] == "accuracy"
    rows = {t["trial_id"]: t for t in doc["trials"]}
    assert rows["t1"]["config.lr"] == 0.1 and rows["t1"]["metric.accuracy"] == 0.9
    assert rows["t2"]["iterations"] == 2 and rows["t2"]["status"] == "completed"
    parsed = list(csv.DictReader(io.StringIO(by_name.stdout)))
    assert [r["trial_id"] for r in parsed] == ["t1", "t2"]
    assert "t1" in table.stdout and "config.lr" in table.stdout


def test_tune_show_of_an_unknown_study(db_url: str) -> None:
    result = _cli("tune", "show", "nope")
    assert result.returncode == 3 and "no study with id or name 'nope'" in result.stderr
