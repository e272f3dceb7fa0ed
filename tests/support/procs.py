"""Process helpers for tests and the benchmark: who is whose child, who is still alive (from /proc)."""
from __future__ import annotations

import os


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...); None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def child_map() -> dict[int, list[int]]:
    """{parent pid: [child pids]} of every process visible in /proc."""
    out: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        fields = _stat_fields(entry) if entry.isdigit() else None
        if fields is not None:
            out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    return child_map().get(pid, [])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    fields = _stat_fields(pid)
    if fields is not None:
        return fields[0] != "Z"
    try:  # no /proc entry to read: ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
