"""Hostile DKIM input against spf_fail_hold = dkim (issue 11 item 5) -- with figures.

Each case is a held SPF fail whose message carries signatures meant to make verification
expensive: keys with huge moduli or exponents, an oversized key record, an oversized b=,
many signatures, a huge header section.  Every case must get the SPF refusal (550 5.7.23)
at end of message, quickly and with little CPU in the worker, and say why in the log.
Sent through the real milter socket; keys come from the loopback test DNS server.
"""
from __future__ import annotations

import os
import re
import time

import pytest

from tests.support.sessions import MESSAGE, send_signed, zones
from tests.reliability.figures import record
from tests.support.dkimsign import hostile_key_record, publish, rsa_key_record, sign
from tests.support.procs import children

MAX_SECONDS = 2.0  # end of message answered within this, CPU and wall clock


def _signed(domain: str, count: int, extra_headers: bytes = b"") -> bytes:
    message = extra_headers + MESSAGE.replace(b"alice@fail.example", f"alice@{domain}".encode())
    for _ in range(count):
        message = sign(message, domain)
    return message


def _long_b(message: bytes) -> bytes:
    """The top signature's b= replaced by 8 KB of base64 (a 64 Kbit "signature")."""
    return re.sub(rb"b=[A-Za-z0-9+/=\s]+$", lambda m: b"b=" + b"QUJD" * 2048, message, count=1, flags=re.M)


# (case, domain, key record or None for the test key, message, words expected in the log)
CASES = [
    ("8192-bit modulus and exponent, 5 signatures", "h1.example", hostile_key_record(),
     _signed("h1.example", 5), "RSA key of 8192 bits is larger than 4096"),
    ("4096-bit modulus, 65-bit exponent, 5 signatures", "h2.example", rsa_key_record(2 ** 4095 + 1, 2 ** 64 + 1),
     _signed("h2.example", 5), "RSA public exponent of 65 bits is larger than 2^32"),
    ("32768-bit modulus (5.5 KB key record)", "h3.example", rsa_key_record(2 ** 32767 + 1, 65537),
     _signed("h3.example", 2), "is longer than 4096"),
    ("8 KB b= value", "h4.example", None, _long_b(_signed("h4.example", 1)),
     "is longer than a 4096-bit key gives"),
    ("30 signatures with an 8192-bit key", "h5.example", hostile_key_record(),
     _signed("h5.example", 30), "not verified: at most 3 signatures"),
    # (one milter packet holds at most 64 KB, so a big header section comes as several fields)
    ("300 KB header section", "h6.example", hostile_key_record(),
     _signed("h6.example", 3, b"".join(b"X-Padding: %s\r\n" % (b"p" * 30_000) for _ in range(10))),
     "dkim=not-checked; header section larger"),
    ("5000 folded header lines", "h7.example", hostile_key_record(),
     _signed("h7.example", 3, b"X-Folded: start" + b"\r\n x" * 5000 + b"\r\n"),
     "dkim=not-checked; header section longer"),
]


@pytest.fixture(scope="module")
def world(dns_server):
    zones(dns_server)
    for _, domain, key, _, _ in CASES:
        dns_server.add(domain, "TXT", "v=spf1 -all")
        if key is None:
            publish(dns_server, domain)
        else:
            dns_server.add(f"test._domainkey.{domain}", "TXT", key)
    return dns_server


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_hostile_dkim_input_gets_the_spf_refusal_quickly(start_milter, world):
    milter = start_milter("mode = enforce\nspf_fail_hold = dkim\nworkers = 1", fresh=True)
    [worker] = children(milter.proc.pid)
    figures = {"cases": 0, "refused": 0, "spared": 0, "worst_seconds": 0.0, "worst_cpu_seconds": 0.0}
    failures = []
    for case, domain, _, message, words in CASES:
        milter.mark()
        cpu, started = cpu_seconds(worker), time.monotonic()
        _, reply, _ = send_signed(milter, message, sender=f"<alice@{domain}>")
        took, used = time.monotonic() - started, cpu_seconds(worker) - cpu
        figures["cases"] += 1
        refused = (reply.action, reply.code, reply.xcode) == ("replycode", 550, "5.7.23")
        figures["refused"] += refused
        figures["spared"] += reply.action == "continue"
        figures["worst_seconds"] = round(max(figures["worst_seconds"], took), 3)
        figures["worst_cpu_seconds"] = round(max(figures["worst_cpu_seconds"], used), 3)
        if not refused or took > MAX_SECONDS or used > MAX_SECONDS or words not in milter.logs():
            failures.append(f"{case}: {reply.action} {reply.code} in {took:.2f} s ({used:.2f} s CPU); "
                            f"log has {words!r}: {words in milter.logs()}")
    record("hostile_dkim", **figures)
    assert not failures, failures
    assert figures["refused"] == len(CASES) and figures["spared"] == 0
    assert "Traceback" not in milter.full_log()
    assert milter.stop() == 0
