"""Processes as /proc shows them: who a command's children are, and whether one still runs.

The tests' one reader of /proc, kept apart from the product's (``tunix_rt.procs``) so
that a test of process handling does not check the product with its own code.
"""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """The running processes whose parent is ``pid``."""
    return [child for child, fields in _table().items()
            if fields[1] == str(pid) and fields[0] not in ("Z", "X")]


def processes() -> list[int]:
    """Every process /proc shows, zombies too."""
    return list(_table())


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, or a process that is gone, does not)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def group_running(pgid: int) -> bool:
    """Whether any process of group ``pgid`` runs (zombies keep their group: they do not
    count, as init may never reap an orphan's zombie here)."""
    return any(fields[2] == str(pgid) and fields[0] not in ("Z", "X")
               for fields in _table().values())


def tree(root: int) -> dict[int, int]:
    """pid -> process group of ``root`` and everything descended from it, zombies too."""
    table = _table()
    kids: dict[int, list[int]] = {}
    for pid, fields in table.items():
        kids.setdefault(int(fields[1]), []).append(pid)
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        found[pid] = int(table[pid][2]) if pid in table else pid
        todo += kids.get(pid, [])
    return found


def _table() -> dict[int, list[str]]:
    """pid -> the fields of /proc/<pid>/stat after the command (state, parent, group...)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if len(fields) > 2:
                table[int(entry.name)] = fields
    return table


def _stat(pid: int) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rfind(")") + 2:].split()


def command_line(pid: int) -> str:
    """The command ``pid`` runs, its arguments joined by spaces; "" for one that is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.decode(errors="replace").replace("\0", " ")
