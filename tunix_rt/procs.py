"""Stopping a child's whole process group: SIGTERM, a grace period, then SIGKILL.

Standard library only. A child started with ``start_new_session=True`` leads a process
group of its own (its pid is the group id), so signalling the group reaches whatever
it started too: a training job's data loaders, a Prefect worker's flow runs. Used by
the training-job supervisor (:mod:`tunix_rt.training.jobs`) and by ``tunix-rt up``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["descendant_groups", "group_alive", "parent_death_signal", "signal_group",
           "stop_group", "stop_groups"]


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process still running."""
    found: dict[int, tuple[int, int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[0] not in ("Z", "X"):
            found[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return found


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc").is_dir():
        return True
    # Zombies keep their group id until reaped; an orphan's zombie waits for init, which in
    # some containers never reaps. Only a process that still runs holds anything.
    return any(group == pgid for _, group in _processes().values())


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the group; a group that is gone (or not ours) is left alone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def descendant_groups(pid: int) -> set[int]:
    """The process groups of everything descended from ``pid`` (its own not included).

    A descendant may lead a group, or a session, of its own: a Prefect worker starts
    each flow run so, and a flow run its training job. Signalling the worker's group
    reaches none of them; these groups do.
    """
    table = _processes()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    groups, todo = set(), list(children.get(pid, []))
    while todo:
        child = todo.pop()
        groups.add(table[child][1])
        todo += children.get(child, [])
    groups.discard(pid)
    groups.discard(os.getpgrp())
    return groups


def _done(proc: subprocess.Popen) -> bool:
    return proc.poll() is not None and not group_alive(proc.pid)


def stop_groups(procs: Sequence[subprocess.Popen], grace_s: float, *,
                sig: signal.Signals = signal.SIGTERM, descendants: bool = False,
                poll_s: float = 0.05) -> list[subprocess.Popen]:
    """Stop the process groups led by ``procs`` at once; answer those that needed SIGKILL.

    Every group gets ``sig``; a group with a process still running ``grace_s`` later
    gets SIGKILL. Each leader is reaped, and the call returns once every group is gone
    (or, for a process that cannot die, such as one stuck in the kernel, 5 s after the
    SIGKILL). Each process must lead its group (``start_new_session=True``). With
    ``descendants``, the groups of everything they started go the same way (see
    :func:`descendant_groups`), read when the call begins.
    """
    procs = [p for p in procs if not _done(p)]
    extra = set().union(*(descendant_groups(p.pid) for p in procs)) if descendants else set()
    extra -= {p.pid for p in procs}
    for pgid in [*(p.pid for p in procs), *extra]:
        signal_group(pgid, sig)
    deadline = time.monotonic() + grace_s
    waiting, others = list(procs), set(extra)
    while (waiting or others) and time.monotonic() < deadline:
        waiting = [p for p in waiting if not _done(p)]
        others = {g for g in others if group_alive(g)}
        if waiting or others:
            time.sleep(poll_s)
    killed = [p for p in waiting if not _done(p)]
    others = {g for g in others if group_alive(g)}
    for pgid in [*(p.pid for p in killed), *others]:
        signal_group(pgid, signal.SIGKILL)
    for proc in procs:
        proc.wait()
    deadline = time.monotonic() + 5
    while (any(group_alive(p.pid) for p in killed) or any(group_alive(g) for g in others)) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    return killed


def stop_group(proc: subprocess.Popen, grace_s: float, *,
               sig: signal.Signals = signal.SIGTERM, descendants: bool = False) -> bool:
    """Stop the process group led by ``proc`` (see :func:`stop_groups`); True if SIGKILLed."""
    return bool(stop_groups([proc], grace_s, sig=sig, descendants=descendants))


def parent_death_signal(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send the child ``sig`` when its parent thread dies.

    For children that must not outlive a parent killed outright (SIGKILL, a crash),
    which never gets to stop them. None where the platform has no such thing.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent = os.getpid()

    def preexec() -> None:  # runs in the forked child: nothing that takes locks
        prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: it will never fire
            os.kill(os.getpid(), sig)

    return preexec
