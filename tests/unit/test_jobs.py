"""The job supervisor with real child processes: statuses, the log, metrics, and no leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.proctable import group_running, running
from tests.waiting import wait_for
from tunix_rt.training.jobs import JobResult, job_command, run_job
from tunix_rt.quality.predictions import read_predictions
from tunix_rt.training.runfile import parse_run_spec

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]


def _code(source: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(source)]


def _pids(result: JobResult, key: str) -> int:
    for line in result.log_tail.splitlines():
        if line.startswith(key + "="):
            return int(line.split("=", 1)[1])
    raise AssertionError(f"no {key}= line in {result.log_tail!r}")


# A child that starts a grandchild in its own process group, prints both pids, then sleeps.
WITH_GRANDCHILD = """
    import os, subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print(f"pgid={os.getpgrp()}", flush=True)
    print(f"grandchild={grandchild.pid}", flush=True)
    time.sleep(60)
"""


def test_a_job_that_reports_completes_with_merged_metrics(tmp_path: Path) -> None:
    log_path = tmp_path / "logs" / "job.log"
    reports: list[dict] = []
    result = run_job(_code("""
        import sys
        print("starting", flush=True)
        print('TUNIX_RT_METRICS {"accuracy": 0.5, "loss": 2.0, "step": 10}')
        print("to stderr", file=sys.stderr)
        print('TUNIX_RT_METRICS {"accuracy": 0.75, "step": 20}')
        print("TUNIX_RT_METRICS not json")
        print("TUNIX_RT_PREDICTIONS file:///tmp/p.jsonl")
    """), timeout_s=30, log_path=log_path, on_metrics=reports.append)
    assert result.status == "completed" and result.exit_code == 0
    assert result.metrics == {"accuracy": 0.75, "loss": 2.0, "step": 20}
    assert reports == [{"accuracy": 0.5, "loss": 2.0, "step": 10},
                       {"accuracy": 0.75, "step": 20}]
    assert result.predictions_uri == "file:///tmp/p.jsonl"
    assert result.duration_s > 0 and result.pid is not None
    lines = log_path.read_text().splitlines()
    for expected in ("starting", 'TUNIX_RT_METRICS {"accuracy": 0.5, "loss": 2.0, "step": 10}',
                     "to stderr", "TUNIX_RT_METRICS not json",
                     "TUNIX_RT_PREDICTIONS file:///tmp/p.jsonl"):
        assert expected in lines
    assert result.log_tail.splitlines() == lines
    assert not group_running(result.pid)


def test_a_failing_job_records_its_exit_code_and_the_tail(tmp_path: Path) -> None:
    log_path = tmp_path / "job.log"
    log_path.write_text("an earlier attempt\n")
    result = run_job(_code("""
        import sys
        for i in range(100):
            print(f"line {i}")
        sys.exit("boom: out of memory")
    """), timeout_s=30, log_path=log_path, tail_lines=5)
    assert result.status == "failed" and result.exit_code == 1
    tail = result.log_tail.splitlines()
    assert tail == ["line 97", "line 98", "line 99", "boom: out of memory",
                    "[tunix-rt] exited with code 1"]
    log = log_path.read_text().splitlines()
    assert log[0] == "an earlier attempt"  # appended, not overwritten
    assert [line for line in log if line.startswith("line ")] == [f"line {i}" for i in range(100)]


def test_a_timeout_stops_the_whole_process_group(tmp_path: Path) -> None:
    result = run_job(_code(WITH_GRANDCHILD), timeout_s=1, log_path=tmp_path / "job.log",
                     poll_s=0.1)
    assert result.status == "timeout" and result.exit_code == -signal.SIGTERM
    assert result.duration_s >= 1  # it had its whole second before it was stopped
    assert "[tunix-rt] timed out after 1 s" in result.log_tail
    pgid, grandchild = _pids(result, "pgid"), _pids(result, "grandchild")
    assert pgid == result.pid
    assert not running(grandchild) and not running(pgid)
    assert not group_running(pgid)


def test_processes_left_behind_by_a_finished_job_are_stopped(tmp_path: Path) -> None:
    woke = tmp_path / "grandchild-woke"
    result = run_job(_code(f"""
        import os, subprocess, sys
        grandchild = subprocess.Popen([sys.executable, "-c", "import time, pathlib; "
                                       "time.sleep(60); pathlib.Path({str(woke)!r}).touch()"])
        print(f"pgid={{os.getpgrp()}}", flush=True)
        print(f"grandchild={{grandchild.pid}}", flush=True)
    """), timeout_s=30, log_path=tmp_path / "job.log", grace_s=2)
    assert result.status == "completed" and result.exit_code == 0
    assert "[tunix-rt] the job left processes running" in result.log_tail
    assert not running(_pids(result, "grandchild"))
    # Stopped, not waited for: the grandchild holding the pipe did not keep it open.
    assert not woke.exists()
    assert not group_running(result.pid)


def test_cancelling_stops_the_job(tmp_path: Path) -> None:
    ready = threading.Event()
    result = run_job(_code(WITH_GRANDCHILD), timeout_s=30, log_path=tmp_path / "job.log",
                     on_line=lambda line: ready.set() if line.startswith("grandchild=") else None,
                     should_cancel=ready.is_set, poll_s=0.05)
    assert result.status == "cancelled" and result.exit_code == -signal.SIGTERM
    assert "[tunix-rt] cancelled" in result.log_tail
    assert not running(_pids(result, "grandchild"))
    assert not group_running(result.pid)


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    ready = threading.Event()
    result = run_job(_code("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
    """), timeout_s=30, log_path=tmp_path / "job.log", poll_s=0.05, grace_s=0.5,
        on_line=lambda line: ready.set() if line == "ready" else None, should_cancel=ready.is_set)
    assert result.status == "cancelled" and result.exit_code == -signal.SIGKILL
    assert result.duration_s >= 0.5  # SIGKILL only after the grace period
    assert "still running 0.5 s after SIGTERM: sent SIGKILL" in result.log_tail
    assert not group_running(result.pid)


def test_a_missing_executable_fails_with_a_message(tmp_path: Path) -> None:
    result = run_job([str(tmp_path / "no-such-trainer"), "--lr", "0.1"], timeout_s=5,
                     log_path=tmp_path / "job.log")
    assert result.status == "failed" and result.exit_code is None and result.pid is None
    assert "cannot start" in result.log_tail and "no-such-trainer" in result.log_tail
    assert result.metrics == {} and result.predictions_uri is None
    assert "cannot start" in (tmp_path / "job.log").read_text()


def test_lines_arrive_while_the_job_runs(tmp_path: Path) -> None:
    # The child waits for a file that only on_line creates: it completes only if the
    # first line reached on_line before the child ended.
    flag = tmp_path / "seen"
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line == "first":
            flag.touch()

    result = run_job(_code(f"""
        import os
        from tests.waiting import wait_for
        print("first")  # not flushed by hand: run_job sets PYTHONUNBUFFERED
        wait_for(lambda: os.path.exists({str(flag)!r}), 20, "on_line to see the first line",
                 interval=0.02)
        print("second")
    """), timeout_s=30, log_path=tmp_path / "job.log", on_line=on_line, cwd=ROOT)
    assert result.status == "completed", result.log_tail
    assert seen == ["first", "second"]


def test_the_supervisors_death_kills_the_job(tmp_path: Path) -> None:
    supervisor = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        from pathlib import Path
        from tunix_rt.training.jobs import run_job
        run_job([{PY!r}, "-c", "import os, time; print(f'child={{os.getpid()}}', flush=True); "
                 "time.sleep(60)"], timeout_s=60, log_path=Path({str(tmp_path / 'job.log')!r}),
                on_line=lambda line: print(line, flush=True))
    """)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = supervisor.stdout.readline()
        assert line.startswith("child="), line
        child = int(line.split("=")[1])
        assert running(child)
    finally:
        supervisor.kill()
        supervisor.wait()
    wait_for(lambda: not running(child), 30, f"the job (pid {child}) to die with its supervisor",
             interval=0.05)


def test_job_command_for_both_forms(tmp_path: Path) -> None:
    base = {"name": "r", "dataset": "arithmetic", "model": "m"}
    command = parse_run_spec({**base, "command": ["train.sh", "--lr", "1"],
                              "predictions": "p.jsonl"})
    assert job_command(command, out_dir=tmp_path) == ["train.sh", "--lr", "1"]
    trainable = parse_run_spec({**base, "trainable": "builtin", "config": {"steps": 3}})
    assert job_command(trainable, out_dir=tmp_path) == [
        sys.executable, "-m", "tunix_rt.training.job_entry", "--trainable", "builtin",
        "--config", '{"steps": 3}', "--out", str(tmp_path)]


def test_the_builtin_trainable_runs_as_a_job(tmp_path: Path) -> None:
    spec = parse_run_spec({"name": "arith", "dataset": "arithmetic", "model": "tiny-jax",
                           "trainable": "builtin",
                           "config": {"steps": 30, "learning_rate": 0.01, "seed": 0}})
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    reports: list[dict] = []
    result = run_job(job_command(spec, out_dir=tmp_path / "out"), env=env, cwd=ROOT,
                     timeout_s=120, log_path=tmp_path / "job.log", on_metrics=reports.append)
    assert result.status == "completed", result.log_tail
    assert [r["step"] for r in reports] == [10, 20, 30]
    assert 0 <= result.metrics["accuracy"] <= 1 and result.metrics["step"] == 30
    assert result.predictions_uri is not None
    assert result.predictions_uri == (tmp_path / "out" / "predictions.jsonl").resolve().as_uri()
    items = read_predictions(result.predictions_uri, require_reference=True)
    assert len(items) == 200


def test_a_trainable_that_raises_fails_with_its_traceback(tmp_path: Path) -> None:
    result = run_job([PY, "-m", "tunix_rt.training.job_entry", "--trainable", "builtin",
                      "--config", '{"learning_rate": -1}'], cwd=ROOT, timeout_s=60,
                     log_path=tmp_path / "job.log")
    assert result.status == "failed" and result.exit_code == 1
    assert "learning_rate: must be a finite number > 0" in result.log_tail
    result = run_job([PY, "-m", "tunix_rt.training.job_entry", "--trainable", "nope_xyz:run"], cwd=ROOT,
                     timeout_s=60, log_path=tmp_path / "job.log")
    assert result.status == "failed" and result.exit_code == 2
    assert "cannot load trainable" in result.log_tail


@pytest.mark.parametrize("kwargs, message", [
    ({"timeout_s": 0}, "timeout_s"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_job([PY, "-c", "pass"], log_path=tmp_path / "job.log", **kwargs)
