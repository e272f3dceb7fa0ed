"""Process helpers for tests and the benchmark: who is whose child (from /proc)."""
from __future__ import annotations

import os


def child_map() -> dict[int, list[int]]:
    """{parent pid: [child pids]} of every process visible in /proc."""
    out: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
        except OSError:
            continue
        out.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    return out


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    return child_map().get(pid, [])
