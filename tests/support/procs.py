"""Process helpers for tests: the direct children of a process (the milter's workers, Postfix's daemons)."""
from __future__ import annotations

import os


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    out = []
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
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out
