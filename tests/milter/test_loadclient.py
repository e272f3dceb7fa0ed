"""The benchmark's load client (bench/loadclient.py): against the real spfmilter, and against a
scripted fake milter for the protocol rules that spfmilter alone cannot show."""
from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
import time

import pytest

from bench.loadclient import parse_address, run_load, spf_results
from bench.zones import RESULTS, generate
from tests.support.milterclient import packet

# ------------------------------------------------------------------------------------------ spfmilter


@pytest.fixture(scope="module")
def world(dns_server):
    world = generate(n_domains=60, n_helos=40, seed=2)
    world.apply(dns_server)
    return world


def test_load_against_spfmilter_matches_every_expectation(start_milter, world):
    milter = start_milter("", inet=True)
    stats = asyncio.run(run_load(milter.addr, world.cases, concurrency=8, duration=2.0, warmup=0.5))
    assert stats.errors == 0, stats.error_kinds
    assert stats.mismatches == []
    assert stats.sessions > 0 and stats.checked == stats.sessions
    assert stats.unchecked == 0 and stats.rejected == 0 and stats.helo_mismatches == 0
    assert stats.warmup_sessions > 0
    assert set(stats.results) == set(RESULTS)  # every result came through the A-R header
    assert stats.msgs_per_s > 0 and 0 < stats.p50_ms <= stats.p99_ms <= stats.max_ms
    assert stats.negotiated["version"] == 6 and stats.negotiated["protocol"] & 0x10  # no body wanted


def test_a_wrong_expectation_is_reported(start_milter, world):
    milter = start_milter("", inet=True)
    cases = list(world.cases)
    original = cases[5]
    wrong = "fail" if original.expected_mailfrom != "fail" else "pass"
    cases[5] = dataclasses.replace(original, expected_mailfrom=wrong)
    # every case exactly once
    stats = asyncio.run(run_load(milter.addr, cases, concurrency=8, duration=60.0, warmup=0.0,
                                 max_sessions=len(cases)))
    assert stats.errors == 0, stats.error_kinds
    assert stats.sessions == len(cases)
    assert stats.mismatches == [(cases[5], original.expected_mailfrom)]


def test_unix_socket(start_milter, world):
    milter = start_milter("")
    assert isinstance(milter.addr, str)
    stats = asyncio.run(run_load(f"unix:{milter.addr}", world.cases, concurrency=4, duration=60.0, warmup=0.0,
                                 max_sessions=len(world.cases)))
    assert (stats.errors, stats.mismatches, stats.sessions) == (0, [], len(world.cases))


# ------------------------------------------------------------------------------------------ a fake milter

CASE = generate(n_domains=10, n_helos=8, seed=4).cases[0]
_NR = {b"C": 0x1000, b"H": 0x2000, b"M": 0x4000, b"R": 0x8000, b"T": 0x10000, b"L": 0x80, b"N": 0x40000,
       b"B": 0x80000}


class FakeMilter(asyncio.Protocol):
    """Replies per ``behaviour``; records every packet and what ended each received chunk."""

    def __init__(self, protocol: int, behaviour: str, log: dict):
        self.protocol = protocol
        self.behaviour = behaviour
        self.log = log
        self.buffer = bytearray()

    def connection_made(self, transport):
        self.transport = transport
        self.commands = []
        self.log.setdefault("sessions", []).append(self.commands)

    def data_received(self, data):
        self.buffer += data
        last = None
        while len(self.buffer) >= 5:
            length = int.from_bytes(self.buffer[:4], "big")
            if len(self.buffer) < 4 + length:
                break
            cmd, body = bytes(self.buffer[4:5]), bytes(self.buffer[5:4 + length])
            del self.buffer[:4 + length]
            self.commands.append((cmd, body))
            last = cmd
            self.answer(cmd, body)
        self.log.setdefault("chunk_ends", []).append(last)

    def answer(self, cmd, body):
        if cmd == b"O":
            self.log["offer"] = struct.unpack(">III", body[:12])
            self.transport.write(packet(b"O", struct.pack(">III", 6, 0x11, self.protocol)))
        elif cmd == b"R" and self.behaviour == "reject":
            self.transport.write(packet(b"y", b"550 5.7.23 SPF fail\0"))
        elif cmd in _NR and not self.protocol & _NR[cmd]:
            self.transport.write(packet(b"c"))
        elif cmd == b"E":
            if self.behaviour == "silent":
                return
            if self.behaviour == "helo-only":
                value = "mx.test; spf=pass smtp.helo=mx.example"
                self.transport.write(packet(b"h", b"Authentication-Results\0" + value.encode() + b"\0"))
            elif self.behaviour == "both":
                value = (f"mx.test; spf=pass (ok)\n\tsmtp.helo={CASE.helo};\n\tspf={CASE.expected_mailfrom} "
                         f"smtp.mailfrom={CASE.sender}")
                self.transport.write(packet(b"p"))  # progress: keep waiting
                self.transport.write(packet(b"i", struct.pack(">I", 0) + b"Authentication-Results\0"
                                             + value.encode() + b"\0"))
            self.transport.write(packet(b"c"))
        elif cmd == b"Q":
            self.transport.close()


async def _against_fake(protocol: int, behaviour: str, **kwargs):
    log: dict = {}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeMilter(protocol, behaviour, log), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        options = {"concurrency": 2, "duration": 30.0, "warmup": 0.0, "max_sessions": 4}
        options.update(kwargs)
        stats = await run_load(("127.0.0.1", port), [CASE], **options)
    finally:
        server.close()
        await server.wait_closed()
    return stats, log


SPFMILTER_LIKE = 0x10 | 0x40 | 0x200 | 0x100 | 0x1000 | 0x2000 | 0x4000 | 0x80


def test_postfix_like_negotiation_skips_and_no_reply_stages():
    stats, log = asyncio.run(_against_fake(SPFMILTER_LIKE, "both"))
    assert (stats.errors, stats.mismatches, stats.checked, stats.sessions) == (0, [], 4, 4)
    assert log["offer"] == (6, 0x1FF, 0x1FFFFF)
    for commands in log["sessions"]:
        sent = [cmd for cmd, _ in commands if cmd != b"D"]
        assert sent == [b"O", b"C", b"H", b"M", b"R", b"L", b"L", b"E", b"Q"]  # no T, N, B
        macros = {body[:1]: body[1:].split(b"\0")[:-1] for cmd, body in commands if cmd == b"D"}
        assert set(macros) == {b"C", b"M", b"R", b"E"}  # no macros for HELO without TLS
        connect = dict(zip(macros[b"C"][::2], macros[b"C"][1::2]))
        assert connect[b"{client_addr}"] == CASE.client_ip.encode() and b"j" in connect and b"_" in connect
        mail = dict(zip(macros[b"M"][::2], macros[b"M"][1::2]))
        assert mail[b"{mail_addr}"] == CASE.sender.encode() and mail[b"i"]
        connect_packet = next(body for cmd, body in commands if cmd == b"C")
        assert connect_packet[connect_packet.index(b"\0") + 1:][:1] == (b"6" if ":" in CASE.client_ip else b"4")
    # macros and their command go out in one write, so no received chunk ends on a macro packet
    assert b"D" not in log["chunk_ends"]


def test_every_stage_answered_when_the_milter_wants_all():
    stats, log = asyncio.run(_against_fake(0, "both", max_sessions=2))
    assert (stats.errors, stats.mismatches, stats.checked) == (0, [], 2)
    sent = [cmd for cmd, _ in log["sessions"][0] if cmd != b"D"]
    assert sent == [b"O", b"C", b"H", b"M", b"R", b"T", b"L", b"L", b"N", b"B", b"E", b"Q"]


def test_helo_only_header_is_unchecked_not_a_mismatch():
    stats, _ = asyncio.run(_against_fake(SPFMILTER_LIKE, "helo-only"))
    assert (stats.errors, stats.mismatches, stats.checked, stats.unchecked) == (0, [], 0, 4)


def test_missing_header_is_a_mismatch():
    stats, _ = asyncio.run(_against_fake(SPFMILTER_LIKE, "none"))
    assert stats.errors == 0
    assert stats.mismatches == [(CASE, "missing")] * 4


def test_refusal_at_rcpt_is_counted_as_rejected_and_aborted():
    stats, log = asyncio.run(_against_fake(SPFMILTER_LIKE, "reject"))
    assert (stats.errors, stats.mismatches, stats.rejected, stats.unchecked) == (0, [], 4, 4)
    sent = [cmd for cmd, _ in log["sessions"][0] if cmd != b"D"]
    assert sent == [b"O", b"C", b"H", b"M", b"R", b"A", b"Q"]


def test_a_silent_milter_gives_errors_not_a_hang():
    started = time.monotonic()
    stats, _ = asyncio.run(_against_fake(SPFMILTER_LIKE, "silent", timeout=0.3))
    assert stats.errors == 4 and stats.sessions == 4
    assert all("timeout" in kind for kind in stats.error_kinds)
    assert time.monotonic() - started < 5


def test_nagle_stays_on_like_postfix_unless_asked():
    from bench.loadclient import _Connection

    async def nodelay_of(nodelay: bool) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(lambda: _Connection(loop, 1.0, nodelay), "127.0.0.1", port)
        value = transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        transport.close()
        server.close()
        await server.wait_closed()
        return value

    assert asyncio.run(nodelay_of(False)) == 0
    assert asyncio.run(nodelay_of(True)) != 0


def test_connection_refused_is_an_error():
    stats = asyncio.run(run_load(("127.0.0.1", 1), [CASE], concurrency=1, duration=5, warmup=0, max_sessions=2))
    assert stats.errors == 2 and "cannot connect" in next(iter(stats.error_kinds))


def test_spf_results_and_addresses():
    assert spf_results("mx.test; spf=softfail smtp.mailfrom=a@b.example; spf=pass smtp.helo=h.example")[:2] == \
        ("softfail", "pass")
    assert spf_results("mx.test; dkim=pass header.d=b.example")[:2] == (None, None)
    assert spf_results("mx.test; spf=pass smtp.helo=h.example")[:2] == (None, "pass")
    assert spf_results("this is ; not = an A-R")[2] is False
    assert parse_address("inet:8890@127.0.0.1") == ("127.0.0.1", 8890)
    assert parse_address("inet6:8890@[::1]") == ("::1", 8890)
    assert parse_address("unix:/run/x.sock") == "/run/x.sock"
    with pytest.raises(ValueError):
        parse_address("inet:25@192.0.2.1")


# ------------------------------------------------------------------------------------------ issue 15


def test_once_uses_every_case_exactly_once_then_stops(start_milter, world):
    """The cold scenario: no case (so no sender domain) comes twice, and the run ends when they are used."""
    milter = start_milter("", inet=True)
    started = time.monotonic()
    stats = asyncio.run(run_load(milter.addr, world.cases, concurrency=8, duration=60.0, warmup=0.0, once=True))
    assert time.monotonic() - started < 30  # ended when the cases ran out, not after 60 s
    assert (stats.errors, stats.mismatches) == (0, [])
    assert sorted(record.case_index for record in stats.records) == list(range(len(world.cases)))
    assert stats.sessions == len(world.cases) and stats.msgs_per_s > 0


def test_trivial_milter_adds_its_header_and_its_cpu_time_is_measured():
    import subprocess
    import sys

    from pathlib import Path

    from bench.procs import cpu_seconds, free_port, stop
    from tests.support.milterclient import MilterClient, wait_ready

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.trivial_milter", f"inet:{port}@127.0.0.1"],
                            cwd=str(Path(__file__).resolve().parents[2]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(("127.0.0.1", port), timeout=30, proc=proc)
        with MilterClient(("127.0.0.1", port)) as client:
            client.open()
            result = client.send_message("<a@example.org>", ["<b@mx.test>"], [("Subject", "x")],
                                         ip="192.0.2.1", helo="mail.example.org")
        assert result.completed and result.final.is_continue
        assert result.mods == [("addheader", "X-Bench", "1")]
        before = cpu_seconds(proc.pid)
        cases = generate(n_domains=20, n_helos=40, seed=4).cases
        # enough sessions to cost several of /proc's 10 ms clock ticks (with TCP_NODELAY the floor
        # runs ~1,000 sessions a second at well under a millisecond of CPU each)
        stats = asyncio.run(run_load(("127.0.0.1", port), cases, concurrency=1, duration=60.0, warmup=0.0,
                                     max_sessions=600, check=False))
        assert (stats.errors, stats.sessions, stats.results) == (0, 600, {"continue": 600})
        assert cpu_seconds(proc.pid) >= before + 0.05
    finally:
        stop(proc)
