"""The benchmark's measuring tools (issue 15): CPU time from /proc/PID/stat (bench/procs.py) and
the py-spy profile summary (bench/profile.py)."""
from __future__ import annotations

import os
import time

import pytest

from bench.procs import cpu_seconds, parse_stat_cpu_ticks
from bench.profile import NO_FRAME, frame_key, parse, render, summarise


def test_stat_fields_are_counted_after_the_command_name():
    # proc(5): pid (comm) state ppid ... utime(14) stime(15) cutime(16) cstime(17) ...
    fields = ["S", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "100", "20", "3", "4", "20", "0"]
    stat = "4242 (a (weird) name) " + " ".join(fields) + "\n"
    assert parse_stat_cpu_ticks(stat) == 100 + 20 + 3 + 4


def test_cpu_seconds_grow_with_work_and_cover_children():
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    spent = cpu_seconds(os.getpid()) - before
    assert 0.2 <= spent <= 5.0, spent
    assert cpu_seconds(2 ** 22 + 12345) == 0.0  # no such process


RAW = """\
process 10:"python -m spfmilter";process 11:"python -m spfmilter";run (milter.py:10);lookup (spfmilter/dns.py:5);getrandbits (random.py:7) 6
process 10:"python -m spfmilter";process 11:"python -m spfmilter";run (milter.py:10);lookup (spfmilter/dns.py:9) 2
process 10:"python -m spfmilter";process 11:"python -m spfmilter";run (milter.py:12);fmt (logging/__init__.py:3) 1
process 10:"python -m spfmilter" 1
garbage line without a count
"""


def test_profile_summary_self_and_inclusive_shares():
    total, by_self, by_inclusive = summarise(RAW.splitlines(), top=10)
    assert total == 10
    own = {row.function: row.self_share for row in by_self}
    assert own == {"getrandbits (random.py)": 0.6, "lookup (dns.py)": 0.2, "fmt (__init__.py)": 0.1,
                   NO_FRAME: 0.1}
    assert by_self[0].function == "getrandbits (random.py)"
    inclusive = {row.function: row.inclusive_share for row in by_inclusive}
    assert inclusive["run (milter.py)"] == pytest.approx(0.9)  # two lines of one function: one key
    assert inclusive["lookup (dns.py)"] == pytest.approx(0.8)
    assert by_inclusive[0].function == "run (milter.py)"
    assert not any(name.startswith("process") for name in own | inclusive)
    text = render(total, by_self, by_inclusive)
    assert "| `getrandbits (random.py)` | 60.0 % | 60.0 % |" in text


def test_profile_parsing_edge_cases():
    assert summarise([], top=5) == (0, [], [])
    assert parse(["a (x.py:1);b (y.py:2) 3"]) == [(["a (x.py:1)", "b (y.py:2)"], 3)]
    assert frame_key("<module> (spfmilter/__main__.py:4)") == "<module> (__main__.py)"
    assert frame_key("odd frame") == "odd frame"
