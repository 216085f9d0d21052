"""The tests' one wait helper: what it returns, and how it fails."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.waiting import wait_for


def test_returns_the_first_truthy_value_after_polling() -> None:
    answers = iter([None, [], ["ready"]])
    assert wait_for(lambda: next(answers), 30, "the third answer", interval=0) == ["ready"]


def test_exceptions_named_in_retry_on_mean_not_yet() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("still starting")
        return "up"

    assert wait_for(flaky, 30, "the server", interval=0, retry_on=ConnectionRefusedError) == "up"
    assert len(calls) == 3


def test_other_exceptions_are_not_swallowed() -> None:
    def broken() -> bool:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        wait_for(broken, 30, "anything", interval=0, retry_on=ConnectionRefusedError)


def test_a_timeout_fails_naming_what_and_the_last_error() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("port 5432")

    with pytest.raises(pytest.fail.Exception) as failed:
        wait_for(refused, 0, "the database", retry_on=ConnectionRefusedError)
    message = str(failed.value)
    assert message.startswith("waiting for the database: timed out after 0 s")
    assert "last error: ConnectionRefusedError: port 5432" in message


def test_a_watched_process_that_exits_ends_the_wait_with_its_log(tmp_path) -> None:  # noqa: ANN001
    log = tmp_path / "proc.log"
    log.write_text("starting\nboom: no config\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(4)"])
    proc.wait()

    with pytest.raises(pytest.fail.Exception) as failed:
        wait_for(lambda: False, 600, "the server", proc=proc, log=log)
    assert "the process exited with code 4" in str(failed.value)
    assert "boom: no config" in str(failed.value)


def test_a_stopped_thread_ends_the_wait() -> None:
    with pytest.raises(pytest.fail.Exception, match="what it waited on stopped"):
        wait_for(lambda: False, 600, "uvicorn to start", alive=lambda: False)
