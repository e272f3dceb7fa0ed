"""The Prometheus metrics page: served by the main process, counted in every worker."""
from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.sessions import MESSAGE, run, send_signed
from tests.support.milterclient import wait_ready
from tests.support.postfix import free_port
from tests.support.procs import children


def scrape(port: int) -> dict:
    """{(sample name, sorted label items): value} from the metrics page (loopback only)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_counts_add_up_across_worker_processes(start_milter, world):
    """Half the sessions go to a worker that is then killed; its replacement serves the rest.
    The page must count them all: each process's counters live on after it."""
    port = free_port()
    milter = start_milter(f"metrics_listen = 127.0.0.1:{port}\nworkers = 1\nmode = enforce", fresh=True)
    plan = {"pass": 12, "fail": 7, "softfail": 5}
    [first] = children(milter.proc.pid)
    for domain, count in plan.items():
        for _ in range(count // 2):
            run(milter, sender=f"<a@{domain}.example>")
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not [pid for pid in children(milter.proc.pid) if pid != first]:
        assert time.monotonic() < deadline, "no replacement worker"
        time.sleep(0.05)
    wait_ready(milter.addr, timeout=20)
    for domain, count in plan.items():
        for _ in range(count - count // 2):
            run(milter, sender=f"<a@{domain}.example>")
    run(milter, sender="<a@pass.example>", ip="127.0.0.1")  # trusted: skipped
    pids = {line.split("]")[0].split("[")[-1] for line in milter.log_lines("identity=mailfrom")}
    assert len(pids) == 2 and str(first) in pids  # two processes served
    samples = scrape(port)

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0)

    for domain, count in plan.items():
        assert value("spfmilter_spf_results_total", identity="mailfrom", result=domain) == count
    assert value("spfmilter_spf_results_total", identity="helo", result="pass") == sum(plan.values())
    assert value("spfmilter_actions_total", action="accept") == plan["pass"] + plan["softfail"]
    assert value("spfmilter_actions_total", action="reject") == plan["fail"]
    assert value("spfmilter_actions_total", action="skipped") == 1
    assert value("spfmilter_spf_check_seconds_count") == sum(plan.values())
    assert value("spfmilter_dns_events_total", event="query") >= 4
    # repeated (client, domain) pairs are answered from the SPF result cache, without a DNS lookup
    assert value("spfmilter_dns_events_total", event="result-hit") > 0
    assert milter.stop() == 0


def test_no_page_without_metrics_listen(start_milter, world):
    port = free_port()
    milter = start_milter("mode = enforce", fresh=True)
    run(milter, sender="<a@pass.example>")
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    assert milter.stop() == 0


def test_an_oversized_held_message_is_counted_as_a_dkim_hold(start_milter, world):
    """A held SPF fail whose message is too big to verify gets the refusal, and is counted (issue 11)."""
    from spfmilter.milter import HOLD_MAX_BYTES

    port = free_port()
    milter = start_milter(f"metrics_listen = 127.0.0.1:{port}\nmode = enforce\nspf_fail_hold = dkim", fresh=True)
    big = MESSAGE + b"x" * 998 + b"\r\n"
    big += b"y" * 998 * (HOLD_MAX_BYTES // 998 + 1)
    _, reply, _ = send_signed(milter, big)
    assert (reply.action, reply.code, reply.xcode) == ("replycode", 550, "5.7.23")
    assert milter.log_lines(f"dkim=not-checked; message larger than {HOLD_MAX_BYTES} bytes")
    samples = scrape(port)
    assert samples.get(("spfmilter_dkim_holds_total", (("verdict", "reject"),))) == 1
    assert samples.get(("spfmilter_actions_total", (("action", "reject"),))) == 1
    assert milter.stop() == 0
