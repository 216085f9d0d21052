"""The CLI layer: the installed ``tunix-rt`` command, run in a subprocess.

A command sees the test's database through ``TUNIX_RT_DATABASE_URL`` (the ``db_url``
fixture sets it in this process's environment, which the subprocess inherits).

Only ``evaluate`` and ``demo`` start Prefect. They get, through ``prefect_cli``, the
URL of the one Prefect server of the session (``prefect_api_url``, started on first
use by tests/conftest.py and shared with the flow tests), so no subprocess starts an
ephemeral server of its own (10-15 s each). Every other command gets a Prefect URL
that nothing listens on: a command that reached for Prefect by mistake fails
instead of quietly starting a server.

A command costs 0.5-1 s of interpreter start and imports (``evaluate`` about 4 s) on
a 2-core machine, so independent commands run concurrently, and runs of read
commands whose output is all a test wants run as a *batch*: ``main(argv)`` called
once per command in one subprocess, which also reports whether Prefect or pandas
got imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The discard port: connections are refused at once.
UNREACHABLE_PREFECT = "http://127.0.0.1:9/api"
TIMEOUT_S = 180
# What a read command must not import: it would cost seconds at every start.
HEAVY_MODULES = ("prefect", "pandas", "flows", "ray")


def tunix_rt_command() -> list[str]:
    """The console script installed with this interpreter, else ``python -m tunix_rt.cli``."""
    script = shutil.which("tunix-rt", path=str(Path(sys.prefix) / "bin"))
    return [script] if script else [sys.executable, "-m", "tunix_rt.cli"]


COMMAND = tunix_rt_command()

BATCH_SCRIPT = r"""
import contextlib, io, json, sys
from tunix_rt.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code
    results.append({"args": argv, "code": code, "stdout": out.getvalue(),
                    "stderr": err.getvalue()})
imported = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
sys.__stdout__.write("\n" + json.dumps({"results": results, "imported": imported}) + "\n")
"""


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float = 0.0

    def json(self) -> Any:
        assert self.stdout.strip(), f"nothing on stdout\n{self}"
        return json.loads(self.stdout)

    def __str__(self) -> str:  # what a failed assertion shows
        return (f"$ tunix-rt {' '.join(self.args)}\nexit code {self.returncode} "
                f"after {self.seconds:.2f} s\n--- stdout\n{self.stdout[-4000:]}\n"
                f"--- stderr\n{self.stderr[-6000:]}")


@dataclass(frozen=True)
class Batch:
    results: list[Result]
    imported: list[str]  # the HEAVY_MODULES the batch's commands imported


class Cli:
    """Runs ``tunix-rt`` with this process's environment plus a Prefect API URL.

    ``expect`` is the exit code a call must end with (None: any); keyword arguments
    override environment variables (None removes one).
    """

    def __init__(self, prefect_api_url: str = UNREACHABLE_PREFECT) -> None:
        self.prefect_api_url = prefect_api_url

    def env(self, overrides: dict[str, str | None]) -> dict[str, str]:
        env = dict(os.environ, PREFECT_API_URL=self.prefect_api_url)
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def __call__(self, *args: str, expect: int | None = 0, cwd: Path | None = None,
                 **env: str | None) -> Result:
        start = time.monotonic()
        proc = subprocess.run([*COMMAND, *args], env=self.env(env), cwd=cwd, text=True,
                              capture_output=True, timeout=TIMEOUT_S)
        return expect_code(Result(args, proc.returncode, proc.stdout, proc.stderr,
                                  time.monotonic() - start), expect)

    def concurrently(self, *commands: Sequence[str],
                     expect: int | Sequence[int | None] | None = 0, cwd: Path | None = None,
                     **env: str | None) -> list[Result]:
        """Start every command at once and wait for all of them.

        Output goes to files, not pipes, so a chatty process never blocks on a full
        pipe while it holds a database lock another one waits for.
        """
        expects = list(expect) if isinstance(expect, Sequence) else [expect] * len(commands)
        assert len(expects) == len(commands)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.monotonic()
            started = []
            for i, args in enumerate(commands):
                out = Path(tmp, f"{i}.out").open("w+")
                err = Path(tmp, f"{i}.err").open("w+")
                proc = subprocess.Popen([*COMMAND, *args], env=self.env(env), cwd=cwd,
                                        text=True, stdout=out, stderr=err)
                started.append((tuple(args), out, err, proc))
            results = []
            for args, out, err, proc in started:
                code = proc.wait(timeout=TIMEOUT_S)
                with out, err:
                    out.seek(0)
                    err.seek(0)
                    results.append(Result(args, code, out.read(), err.read(),
                                          time.monotonic() - start))
        return [expect_code(r, e) for r, e in zip(results, expects)]

    def batch(self, *argvs: Sequence[str]) -> Batch:
        """``main(argv)`` for each argv, in order, in one subprocess (see the module doc)."""
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", BATCH_SCRIPT, json.dumps([list(a) for a in argvs]),
             json.dumps(HEAVY_MODULES)],
            env=self.env({}), text=True, capture_output=True, timeout=TIMEOUT_S)
        assert proc.returncode == 0, f"the batch failed\n{proc.stdout}\n{proc.stderr}"
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        seconds = time.monotonic() - start
        return Batch([Result(tuple(r["args"]), r["code"], r["stdout"], r["stderr"], seconds)
                      for r in report["results"]], report["imported"])


def expect_code(result: Result, expect: int | None) -> Result:
    if expect is not None:
        assert result.returncode == expect, f"expected exit code {expect}\n{result}"
    return result


@pytest.fixture
def cli() -> Cli:
    """``tunix-rt`` for commands that must not need Prefect."""
    return Cli()


@pytest.fixture
def prefect_cli(prefect_api_url: str) -> Cli:
    """``tunix-rt`` for ``evaluate`` and ``demo``, on the session's Prefect server."""
    return Cli(prefect_api_url)
