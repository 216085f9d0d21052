"""Processes as /proc shows them: who a command's children are, and whether one still runs."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """The running processes whose parent is ``pid``."""
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and running(int(entry.name))
            and _stat(int(entry.name))[1] == str(pid)]


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, or a process that is gone, does not)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def _stat(pid: int) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rfind(")") + 2:].split()
