"""Soak: one spfmilter serves many sessions in a row; every answer is checked, nothing leaks.

The load is the benchmark's (bench/loadclient.py driving the DNS world of bench/zones.py, served
by the loopback test DNS server): every session is a whole Postfix-like SMTP transaction on a new
milter connection, and its Authentication-Results header must carry the sender domain's expected
SPF result.  The worker process's RSS, open fds and threads are read from /proc after a warm-up
and again once the load is over; they must come back to the warm-up values.

``SPFMILTER_LONG=1`` runs 100,000 sessions instead of the short CI run.
"""
from __future__ import annotations

import asyncio
import os
import time

import pytest

from bench.loadclient import run_load
from bench.zones import generate
from tests.reliability.figures import long_run, record, size
from tests.support.procs import children

SESSIONS = size(36_000, 100_000)
CONCURRENCY = 32
WARMUP_FRACTION = 0.10

# Tolerances, all against the warm-up sample (taken, like the end one, with no session open):
# - fds: libmilter holds one socket per connection and closes it when the session ends; the idle
#   set (stdio, log, listener, libmilter's pool-controller pipe, ...) does not depend on the load.
#   Allow 0.
# - threads: Debian's libmilter is built with _FFR_WORKERS_POOL: a controller thread and a pool of
#   worker threads that grows with the sessions in flight; a pool thread with nothing to do leaves
#   once more than MIN_WORKERS (2) exist and more than one is idle, re-checking at least every
#   COND_TIMEOUT (10 s).  So once idle the pool is back to its minimum and the count to the warm-up
#   one (main/listener, libmilter's signal thread, pool controller, 2 pool workers, our drain
#   thread); we poll up to SETTLE_TIMEOUT (> COND_TIMEOUT) for that, then allow 0 more.
# - RSS: after the warm-up the DNS cache holds every name of the world (the warm-up runs every case
#   at least once) and the heap has reached its working size for CONCURRENCY sessions at once.  What
#   may still move is allocator fragmentation (pool threads come and go, glibc arenas); measured
#   growth is 0.2-0.5 MB, in the short run and in the long one alike.  4 MB catches a leak of
#   ~130 bytes per session over the short run (32,400 sessions after the warm-up); the long run
#   (90,000 after it) must stay within 10 % of the warm-up RSS (~2.6 MB, ~30 bytes per session).
FD_SLACK = 0
THREAD_SLACK = 0
RSS_SLACK_KB_SHORT = 4 * 1024
RSS_GROWTH_LONG = 0.10
SETTLE_TIMEOUT = 15.0


def _sample(pid: int) -> dict:
    status = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    return {"rss_kb": int(status["VmRSS"].split()[0]), "threads": int(status["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def _settled(pid: int, floor: dict | None) -> dict:
    """The worker's figures once its connection threads are gone (polled, with a deadline).

    With ``floor`` (the warm-up sample), wait until fds and threads are back to it; without,
    until two samples in a row agree on them.  Either way the last sample is returned and the
    caller asserts on it.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last = _sample(pid)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = _sample(pid)
        if floor is not None:
            if now["fds"] <= floor["fds"] + FD_SLACK and now["threads"] <= floor["threads"] + THREAD_SLACK:
                return now
        elif (now["fds"], now["threads"]) == (last["fds"], last["threads"]):
            return now
        last = now
    return last


@pytest.fixture(scope="module")
def world(dns_server):
    world = generate(n_domains=200, n_helos=40, seed=11)
    world.apply(dns_server)
    return world


def _load(addr, cases, sessions: int):
    return asyncio.run(run_load(addr, cases, concurrency=CONCURRENCY, duration=3600.0, warmup=0.0,
                                max_sessions=sessions, timeout=30.0))


def test_soak_every_answer_right_and_no_leak(start_milter, world):
    milter = start_milter("trusted_networks =", fresh=True)
    [worker] = children(milter.proc.pid)
    cases = world.cases
    # at least one pass over every case, so the DNS cache is full before the first sample
    warm_sessions = max(int(SESSIONS * WARMUP_FRACTION), len(cases))
    started = time.monotonic()
    warm = _load(milter.addr, cases, warm_sessions)
    first = _settled(worker, None)
    main = _load(milter.addr, cases, SESSIONS - warm_sessions)
    seconds = time.monotonic() - started
    end = _settled(worker, first)
    errors = warm.errors + main.errors
    wrong = len(warm.mismatches) + len(main.mismatches)
    done = warm.sessions + main.sessions
    record("soak", sessions=done, concurrency=CONCURRENCY, errors=errors, wrong=wrong,
           rss_start_kb=first["rss_kb"], rss_end_kb=end["rss_kb"], fds_start=first["fds"], fds_end=end["fds"],
           threads_start=first["threads"], threads_end=end["threads"], seconds=round(seconds, 1),
           rate=round(done / seconds, 1))
    print(f"soak: {done} sessions in {seconds:.1f}s ({done / seconds:.0f}/s) c={CONCURRENCY} errors={errors} "
          f"wrong={wrong} warm={first} end={end} p99={main.p99_ms:.1f}ms max={main.max_ms:.1f}ms")
    assert done == SESSIONS
    assert errors == 0, {**warm.error_kinds, **main.error_kinds}
    assert wrong == 0, (warm.to_dict()["mismatch_examples"], main.to_dict()["mismatch_examples"])
    assert warm.checked + main.checked == SESSIONS  # every session carried a mailfrom result
    assert end["fds"] <= first["fds"] + FD_SLACK, (first, end)
    assert end["threads"] <= first["threads"] + THREAD_SLACK, (first, end)
    if long_run():
        assert end["rss_kb"] <= first["rss_kb"] * (1 + RSS_GROWTH_LONG), (first, end)
    else:
        assert end["rss_kb"] <= first["rss_kb"] + RSS_SLACK_KB_SHORT, (first, end)
    assert children(milter.proc.pid) == [worker]  # the same worker served it all
    assert milter.proc.poll() is None
    assert "Traceback" not in milter.full_log()
