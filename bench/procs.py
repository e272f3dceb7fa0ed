"""Process helpers for the benchmark: start, find the tree, sample memory, stop."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from tests.support.postfix import free_port  # noqa: F401 - one helper for the bench and the tests
from tests.support.procs import child_map


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children = child_map()
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB of one process; (0, 0) if it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def parse_stat_cpu_ticks(stat: str) -> int:
    """utime + stime + cutime + cstime (clock ticks) from the text of ``/proc/PID/stat``.

    The command name (field 2) may hold spaces and parentheses, so the fields are counted from
    the last ``)``; utime, stime, cutime and cstime are fields 14-17 (proc(5))."""
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state), so field n is fields[n - 3]
    return sum(int(value) for value in fields[11:15])


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid``'s tree, as :func:`cpu_seconds` counts them."""
    user = system = 0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        user += int(fields[11]) + int(fields[13])  # utime + cutime
        system += int(fields[12]) + int(fields[14])  # stime + cstime
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its living descendants (and of the children
    they have reaped).  0 for processes that are gone."""
    ticks = 0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/stat") as handle:
                ticks += parse_stat_cpu_ticks(handle.read())
        except (OSError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class MemorySampler:
    """Samples the summed RSS and PSS of a process tree in a thread; keeps the peaks."""

    pid: int
    interval: float = 0.2
    peak_rss_kib: int = 0
    peak_pss_kib: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def sample(self) -> None:
        total_rss = total_pss = 0
        for pid in tree(self.pid):
            rss, pss = memory_kib(pid)
            total_rss += rss
            total_pss += pss
        self.peak_rss_kib = max(self.peak_rss_kib, total_rss)
        self.peak_pss_kib = max(self.peak_pss_kib, total_pss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __exit__(self, *exc):
        self.sample()
        self._stop.set()
        self._thread.join()


def wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 30.0) -> str:
    """Read the child's stdout until a line starting with ``prefix`` (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process exited before printing {prefix!r} (rc={proc.poll()})")
        if line.startswith(prefix):
            return line.strip()
    raise RuntimeError(f"no {prefix!r} line within {timeout}s")


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
