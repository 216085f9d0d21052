"""Supervise one training job as a child process: pure stdlib, no Prefect, Ray or database.

:func:`job_command` turns a :class:`~tunix_rt.training.runfile.RunSpec` into an argv;
:func:`run_job` runs it and answers a :class:`JobResult`.

The child runs in its own process group (its own session) with stdout and stderr
merged into one pipe. Every line it prints is appended to a log file and handed to
``on_line``; lines of the form ::

    TUNIX_RT_METRICS {"accuracy": 0.8, "step": 100}
    TUNIX_RT_PREDICTIONS file:///data/runs/x/predictions.jsonl

report metrics (merged, the last value of a key wins; NaN and the infinities become
null, named under ``tunix_rt_note``; ``tunix_rt_points`` carries time series points, handed
to ``on_metrics`` but not merged) and the predictions URI (the last one wins).
:mod:`tunix_rt.training.job_entry` prints them for a trainable; a command of
the user's own may print them too.

A timeout or ``should_cancel()`` stops the whole process group: SIGTERM, then SIGKILL
after ``grace_s``. Whatever way the job ends, what is left of its process group is
stopped the same way, so no grandchild outlives it. On Linux the child also gets
SIGKILL if the supervising thread dies (``PR_SET_PDEATHSIG``); grandchildren are not
covered by that (they are stopped by the group kill while the supervisor lives).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunix_rt import procs

if TYPE_CHECKING:
    from tunix_rt.training.runfile import RunSpec

__all__ = ["METRICS_PREFIX", "PREDICTIONS_PREFIX", "JobResult", "JobStatus", "job_command",
           "job_environment", "run_job"]

log = logging.getLogger(__name__)

METRICS_PREFIX = "TUNIX_RT_METRICS"
PREDICTIONS_PREFIX = "TUNIX_RT_PREDICTIONS"
#: In a metrics line: the time series points since the last line,
#: ``[{"step": int, "metrics": {name: number}}]`` (TunixRtHooks sends them). They go to
#: the run's series, never to its last values.
POINTS_KEY = "tunix_rt_points"
METRICS_NOTE = "tunix_rt_note"  # names the metrics stored as null (NaN, Infinity)
_NOTE_TEXT = "non-finite numbers (NaN, Infinity) stored as null: "
NOTE_PREFIX = "[tunix-rt]"
MAX_LINE_BYTES = 1 << 20   # a longer "line" is split into pieces of this size

JobStatus = Literal["completed", "failed", "timeout", "cancelled"]


@dataclass(frozen=True)
class JobResult:
    """How a job ended.

    ``exit_code`` is the child's return code (negative: killed by that signal) or
    ``None`` when it could not start; ``status`` is ``timeout`` or ``cancelled`` when the
    supervisor stopped it, else ``completed`` for exit code 0 and ``failed`` otherwise.
    """

    exit_code: int | None
    status: JobStatus
    log_tail: str
    metrics: dict[str, Any] = field(default_factory=dict)
    predictions_uri: str | None = None
    duration_s: float = 0.0
    pid: int | None = None
    # Every metrics line, in order, each as reported (its points included): what a
    # supervisor that ran elsewhere (a Ray task) hands back for the run's series.
    reports: list[dict[str, Any]] = field(default_factory=list)


def job_command(spec: RunSpec, *, out_dir: str | Path | None = None,
                python: str | None = None) -> list[str]:
    """The argv that runs ``spec``: its ``command``, or :mod:`tunix_rt.training.job_entry` for a trainable.

    ``out_dir`` is where a trainable writes its predictions (passed as ``--out``; without
    it the trainable chooses, the built-in one a new temporary directory). ``python``
    defaults to this interpreter.
    """
    if spec.command is not None:
        return list(spec.command)
    assert spec.trainable is not None
    argv = [python or sys.executable, "-m", "tunix_rt.training.job_entry", "--trainable", spec.trainable,
            "--config", json.dumps(spec.config or {}, sort_keys=True)]
    if out_dir is not None:
        argv += ["--out", str(out_dir)]
    return argv


# --- the job's environment --------------------------------------------------------------

#: Variables a job gets from the launcher's environment, by exact name ...
ENV_ALLOW = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM",
    "TMPDIR", "TEMP", "TMP", "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "CONDA_PREFIX",
    "LD_LIBRARY_PATH", "TUNIX_RT_URL",
})
#: ... and by prefix: locale, accelerators (CUDA, JAX, XLA, TPU, NVIDIA, ROCm), model hubs.
ENV_ALLOW_PREFIXES = ("LC_", "CUDA_", "JAX_", "XLA_", "TPU_", "NVIDIA_", "ROCR_", "HIP_",
                      "HF_", "TUNIX_")
#: Never by prefix: tunix-rt's own settings (the webhook secret, the LLM key, the database
#: URL with its password). A run file's ``env`` may still name one of them.
ENV_DENY_PREFIX = "TUNIX_RT_"


def job_environment(names: Sequence[str] = (), extra: Mapping[str, str] | None = None,
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a launched job sees: the allow-list, the ``names`` its run file lists, ``extra``.

    From ``environ`` (default: this process's environment) a job gets the variables of
    :data:`ENV_ALLOW` and :data:`ENV_ALLOW_PREFIXES`, never a ``TUNIX_RT_*`` setting but
    ``TUNIX_RT_URL``, plus each of ``names`` that is set; ``extra`` (the variables tunix-rt
    sets for the job) goes on top.
    """
    source = os.environ if environ is None else environ
    wanted = set(names)
    env = {key: value for key, value in source.items()
           if key in wanted or key in ENV_ALLOW
           or (key.startswith(ENV_ALLOW_PREFIXES) and not key.startswith(ENV_DENY_PREFIX))}
    env.update(extra or {})
    return env


def _open_log(path: Path) -> Any:
    """The job log, appended to, readable by its owner only (an existing file is tightened)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                 0o600)
    try:
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8", errors="replace")
    except BaseException:
        os.close(fd)
        raise


# --- the child process ------------------------------------------------------------------

def _stop_group(proc: subprocess.Popen[bytes], grace_s: float, note: Callable[[str], None],
                *, leader_done: bool) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace_s``; reap the leader."""
    if leader_done:
        if not procs.group_alive(proc.pid):
            return
        note(f"{NOTE_PREFIX} the job left processes running: stopping them")
    if procs.stop_group(proc, grace_s):
        note(f"{NOTE_PREFIX} still running {grace_s:g} s after SIGTERM: sent SIGKILL")


# --- reading the output -----------------------------------------------------------------

class _Reader(threading.Thread):
    """Reads the child's lines: log file, tail, callbacks, metrics and predictions."""

    def __init__(self, stream: Any, log_file: Any, lock: threading.Lock, tail_lines: int,
                 on_line: Callable[[str], None] | None,
                 on_metrics: Callable[[dict[str, Any]], None] | None) -> None:
        super().__init__(name="tunix-rt-job-reader", daemon=True)
        self.stream = stream
        self.log_file = log_file
        self.lock = lock
        self.tail: collections.deque[str] = collections.deque(maxlen=max(tail_lines, 1))
        self.tail_lines = tail_lines
        self.on_line = on_line
        self.on_metrics = on_metrics
        self.metrics: dict[str, Any] = {}
        self.reports: list[dict[str, Any]] = []
        self.predictions_uri: str | None = None

    def note(self, line: str) -> None:
        """A line of the supervisor's own, in the log and the tail."""
        self._keep(line)

    def _keep(self, line: str) -> None:
        with self.lock:
            if self.tail_lines > 0:
                self.tail.append(line)
            try:
                self.log_file.write(line + "\n")
                self.log_file.flush()
            except (OSError, ValueError) as exc:  # a full disk must not stall the child
                log.warning("cannot write the job log: %s", exc)

    def run(self) -> None:
        while True:
            try:
                raw = self.stream.readline(MAX_LINE_BYTES)
            except (OSError, ValueError):
                break
            if not raw:
                break
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self._keep(line)
            self._parse(line)
            if self.on_line is not None:
                try:
                    self.on_line(line)
                except Exception:  # keep draining the pipe, or the child blocks
                    log.exception("on_line callback failed")

    def _parse(self, line: str) -> None:
        text = line.lstrip()
        if text.startswith(METRICS_PREFIX + " "):
            try:
                metrics = json.loads(text[len(METRICS_PREFIX) + 1:])
            except json.JSONDecodeError:
                return
            if not isinstance(metrics, dict):
                return
            metrics = _finite_metrics(metrics, self.metrics.get(METRICS_NOTE))
            self.reports.append(dict(metrics))
            points = metrics.pop(POINTS_KEY, None)  # a series, not a last value
            self.metrics.update(metrics)
            if self.on_metrics is not None:
                try:
                    self.on_metrics({**metrics, POINTS_KEY: points} if points else dict(metrics))
                except Exception:
                    log.exception("on_metrics callback failed")
        elif text.startswith(PREDICTIONS_PREFIX + " "):
            uri = text[len(PREDICTIONS_PREFIX) + 1:].strip()
            if uri:
                self.predictions_uri = uri


def _finite_metrics(metrics: dict[str, Any], earlier_note: Any = None) -> dict[str, Any]:
    """``metrics`` storable as JSON: NaN and the infinities (Python's json reads them; a
    diverged loss prints them) become None, and ``tunix_rt_note`` names them, after the
    note of earlier lines; a NUL character in a string or key becomes U+FFFD. PostgreSQL
    refuses both, which would leave the run running."""
    found: list[str] = []

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            found.append(path)
            return None
        if isinstance(value, str):
            return value.replace("\x00", "\ufffd")
        if isinstance(value, dict):
            return {clean(k, path): clean(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    cleaned = {clean(k, k): clean(v, k) for k, v in metrics.items()}
    if found:
        earlier = (earlier_note[len(_NOTE_TEXT):].split(", ")
                   if isinstance(earlier_note, str) and earlier_note.startswith(_NOTE_TEXT)
                   else [])
        cleaned[METRICS_NOTE] = _NOTE_TEXT + ", ".join(dict.fromkeys(earlier + found))
    return cleaned


# --- the supervisor ---------------------------------------------------------------------

def run_job(cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
            cwd: str | Path | None = None, timeout_s: float, log_path: str | Path,
            on_line: Callable[[str], None] | None = None,
            on_metrics: Callable[[dict[str, Any]], None] | None = None,
            should_cancel: Callable[[], bool] | None = None, poll_s: float = 0.5,
            tail_lines: int = 50, grace_s: float = 5.0) -> JobResult:
    """Run ``cmd`` to its end, a timeout or a cancellation; never leaves a process behind.

    ``env`` defaults to this process's environment; ``PYTHONUNBUFFERED=1`` is added unless
    set, so a Python child's lines arrive as printed. Every line goes to ``log_path``
    (appended, flushed) and to ``on_line``; metrics lines to ``on_metrics`` (one report
    each; both callbacks run on the reader thread and their exceptions are logged, not
    raised). ``should_cancel`` is asked every ``poll_s`` seconds.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s: must be > 0, got {timeout_s}")
    if not cmd:
        raise ValueError("cmd: must not be empty")
    argv = [str(part) for part in cmd]
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    lock = threading.Lock()

    with _open_log(log_path) as log_file:
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=child_env, cwd=cwd, start_new_session=True,
                preexec_fn=procs.parent_death_signal(signal.SIGKILL), close_fds=True)
        except (OSError, subprocess.SubprocessError) as exc:
            message = f"{NOTE_PREFIX} cannot start {argv[0]!r}: {exc}"
            log_file.write(message + "\n")
            log_file.flush()
            return JobResult(exit_code=None, status="failed", log_tail=message,
                             duration_s=time.monotonic() - started)

        reader = _Reader(proc.stdout, log_file, lock, tail_lines, on_line, on_metrics)
        reader.start()
        stopped: JobStatus | None = None
        try:
            deadline = started + timeout_s
            while True:
                remaining = deadline - time.monotonic()
                try:
                    proc.wait(timeout=max(0.0, min(poll_s, remaining)))
                    break
                except subprocess.TimeoutExpired:
                    pass
                if should_cancel is not None and should_cancel():
                    stopped = "cancelled"
                    reader.note(f"{NOTE_PREFIX} cancelled: stopping the job")
                    break
                if time.monotonic() >= deadline:
                    stopped = "timeout"
                    reader.note(f"{NOTE_PREFIX} timed out after {timeout_s:g} s: "
                                f"stopping the job")
                    break
        finally:
            # Also on KeyboardInterrupt or a failing should_cancel: nothing is left behind.
            _stop_group(proc, grace_s, reader.note, leader_done=proc.poll() is not None)
            reader.join(timeout=max(grace_s, 1.0))
            if reader.is_alive():  # a process outside the group still holds the pipe open
                reader.note(f"{NOTE_PREFIX} output still open after the job ended: "
                            f"stopped reading")
            else:
                assert proc.stdout is not None
                proc.stdout.close()

        exit_code = proc.returncode
        status: JobStatus = stopped or ("completed" if exit_code == 0 else "failed")
        if status == "failed":
            reader.note(f"{NOTE_PREFIX} killed by signal {-exit_code}" if exit_code < 0
                        else f"{NOTE_PREFIX} exited with code {exit_code}")
        with lock:
            tail = "\n".join(reader.tail)
        return JobResult(exit_code=exit_code, status=status, log_tail=tail,
                         metrics=dict(reader.metrics), predictions_uri=reader.predictions_uri,
                         duration_s=time.monotonic() - started, pid=proc.pid,
                         reports=list(reader.reports))
