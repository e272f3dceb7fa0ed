"""Tests for the loopback test DNS server (tests/support/dnsserver.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from tests.support.dnsserver import DNSServer

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


@pytest.fixture
def srv():
    server = DNSServer(host=HOST)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def udp(srv, name, rdtype="A", timeout=2.0, **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    return dns.query.udp(q, srv.host, port=srv.port, timeout=timeout)


def tcp(srv, name, rdtype="A", timeout=2.0, **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    return dns.query.tcp(q, srv.host, port=srv.port, timeout=timeout)


def resolver(srv, lifetime=2.0):
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [srv.host]
    res.port = srv.port
    res.timeout = lifetime
    res.lifetime = lifetime
    res.cache = None
    return res


def texts(response):
    return sorted(rd.to_text() for rrset in response.answer for rd in rrset)


def txt_strings(answer):
    return sorted(b"".join(rd.strings) for rd in answer)


# --- lifecycle -------------------------------------------------------------


def test_start_binds_same_port_udp_and_tcp_and_stop_releases_it():
    server = DNSServer(host=HOST)
    server.start()
    port = server.port
    assert isinstance(port, int) and port > 0
    server.add("example.com", "A", "192.0.2.1")
    assert texts(udp(server, "example.com")) == ["192.0.2.1"]
    assert texts(tcp(server, "example.com")) == ["192.0.2.1"]
    server.stop()
    server.stop()  # idempotent
    # the port is free again for both protocols
    again = DNSServer(host=HOST, port=port)
    again.start()
    try:
        assert again.port == port
    finally:
        again.stop()


def test_context_manager_starts_and_stops():
    with DNSServer() as server:
        server.add("a.test", "A", "192.0.2.7")
        assert server.host == "127.0.0.1"
        assert texts(udp(server, "a.test")) == ["192.0.2.7"]
    with pytest.raises((ConnectionError, OSError)):
        tcp(server, "a.test", timeout=0.5)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "example.com"])
def test_refuses_non_loopback_hosts(host):
    with pytest.raises(ValueError):
        DNSServer(host=host)


# --- answers ---------------------------------------------------------------


def test_basic_record_types(srv):
    srv.add("example.com", "TXT", "v=spf1 ip4:192.0.2.0/24 -all", ttl=300)
    srv.add("example.com", "A", "192.0.2.1")
    srv.add("example.com", "AAAA", "2001:db8::1")
    srv.add("example.com", "MX", "10 mx.example.com")
    srv.add("1.2.0.192.in-addr.arpa", "PTR", "mail.example.com")

    res = resolver(srv)
    assert [r.to_text() for r in res.resolve("example.com", "A")] == ["192.0.2.1"]
    assert [r.to_text() for r in res.resolve("example.com", "AAAA")] == ["2001:db8::1"]
    mx = list(res.resolve("example.com", "MX"))
    assert [(r.preference, r.exchange.to_text()) for r in mx] == [
        (10, "mx.example.com.")
    ]
    txt = res.resolve("example.com", "TXT")
    assert txt_strings(txt) == [b"v=spf1 ip4:192.0.2.0/24 -all"]
    assert txt.rrset.ttl == 300
    ptr = res.resolve_address("192.0.2.1")
    assert [r.target.to_text() for r in ptr] == ["mail.example.com."]


def test_response_header_echo_aa_rd_and_question(srv):
    srv.add("example.com", "A", "192.0.2.1")
    q = dns.message.make_query("example.com", "A")
    q.flags |= dns.flags.RD
    r = dns.query.udp(q, HOST, port=srv.port, timeout=2)
    assert r.id == q.id
    assert r.flags & dns.flags.QR
    assert r.flags & dns.flags.AA
    assert r.flags & dns.flags.RD
    assert r.question == q.question

    q2 = dns.message.make_query("example.com", "A")
    q2.flags &= ~dns.flags.RD
    r2 = dns.query.tcp(q2, HOST, port=srv.port, timeout=2)
    assert r2.id == q2.id
    assert not r2.flags & dns.flags.RD
    assert r2.flags & dns.flags.AA


def test_names_case_insensitive_and_trailing_dot_optional(srv):
    srv.add("MiXeD.Example.COM.", "A", "192.0.2.9")
    srv.add("plain.example.com", "A", "192.0.2.10")
    assert texts(udp(srv, "mixed.example.com")) == ["192.0.2.9"]
    assert texts(udp(srv, "PLAIN.EXAMPLE.COM.")) == ["192.0.2.10"]


def test_nxdomain_nodata_and_empty_non_terminal(srv):
    srv.add("a.b.example.com", "A", "192.0.2.1")
    srv.add("example.com", "TXT", "v=spf1 -all")

    nx = udp(srv, "nope.example.com", "TXT")
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert nx.answer == []

    nodata = udp(srv, "example.com", "A")
    assert nodata.rcode() == dns.rcode.NOERROR
    assert nodata.answer == []

    ent = udp(srv, "b.example.com", "A")  # exists only as an ancestor
    assert ent.rcode() == dns.rcode.NOERROR
    assert ent.answer == []

    res = resolver(srv)
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("nope.example.com", "TXT")
    with pytest.raises(dns.resolver.NoAnswer):
        res.resolve("example.com", "MX")


def test_cname_following(srv):
    srv.add("example.com", "A", "192.0.2.1")
    srv.add("alias.example.com", "CNAME", "example.com")
    srv.add("alias2.example.com", "CNAME", "alias.example.com")

    r = udp(srv, "alias2.example.com", "A")
    assert r.rcode() == dns.rcode.NOERROR
    chain = [(rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype)) for rr in r.answer]
    assert chain == [
        ("alias2.example.com.", "CNAME"),
        ("alias.example.com.", "CNAME"),
        ("example.com.", "A"),
    ]
    ans = resolver(srv).resolve("alias2.example.com", "A")
    assert [x.to_text() for x in ans] == ["192.0.2.1"]
    assert ans.canonical_name.to_text() == "example.com."

    # asking for the CNAME itself returns only the CNAME
    only = udp(srv, "alias.example.com", "CNAME")
    assert texts(only) == ["example.com."]
    assert len(only.answer) == 1

    # target exists but lacks the type: CNAME + NODATA
    nod = udp(srv, "alias.example.com", "MX")
    assert nod.rcode() == dns.rcode.NOERROR
    assert [dns.rdatatype.to_text(rr.rdtype) for rr in nod.answer] == ["CNAME"]


def test_cname_loop_and_external_target(srv):
    srv.add("loop1.example.com", "CNAME", "loop2.example.com")
    srv.add("loop2.example.com", "CNAME", "loop1.example.com")
    srv.add("out.example.com", "CNAME", "elsewhere.invalid")

    r = udp(srv, "loop1.example.com", "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert [rr.name.to_text() for rr in r.answer] == [
        "loop1.example.com.",
        "loop2.example.com.",
    ]
    out = udp(srv, "out.example.com", "A")
    assert out.rcode() == dns.rcode.NOERROR
    assert texts(out) == ["elsewhere.invalid."]


def test_long_txt_is_split_and_reassembled(srv):
    value = "v=spf1 " + " ".join(f"ip4:198.51.100.{i}" for i in range(40)) + " -all"
    assert len(value) > 510
    srv.add("long.example.com", "TXT", value)
    ans = resolver(srv).resolve("long.example.com", "TXT")
    (rd,) = list(ans)
    lengths = [len(s) for s in rd.strings]
    assert lengths[:-1] == [255] * (len(lengths) - 1)
    assert len(lengths) == (len(value) + 254) // 255
    assert b"".join(rd.strings).decode() == value


def test_txt_list_is_one_record_with_several_strings(srv):
    srv.add("big.example.com", "TXT", ["part one", "part two"])
    r = tcp(srv, "big.example.com", "TXT")
    rds = [rd for rrset in r.answer for rd in rrset]
    assert len(rds) == 1
    assert rds[0].strings == (b"part one", b"part two")


def test_add_raw_txt_bytes(srv):
    srv.add_raw_txt("raw.example.com", [b"\xff\x00binary", b""])
    r = udp(srv, "raw.example.com", "TXT")
    (rd,) = [rd for rrset in r.answer for rd in rrset]
    assert rd.strings == (b"\xff\x00binary", b"")
    with pytest.raises(ValueError):
        srv.add_raw_txt("raw2.example.com", [b"x" * 256])


def test_load_and_clear(srv):
    srv.load(
        {
            "example.com": {"TXT": ["v=spf1 -all"], "A": ["192.0.2.1", "192.0.2.2"]},
            "mx.example.com.": {"AAAA": ["2001:db8::25"]},
        }
    )
    assert texts(udp(srv, "example.com", "A")) == ["192.0.2.1", "192.0.2.2"]
    assert texts(udp(srv, "example.com", "TXT")) == ['"v=spf1 -all"']
    assert texts(udp(srv, "mx.example.com", "AAAA")) == ["2001:db8::25"]

    srv.fault("example.com", "servfail")
    srv.latency = 0.5
    srv.clear()
    assert srv.latency == 0
    r = udp(srv, "example.com", "A", timeout=0.4)  # no latency, no fault left
    assert r.rcode() == dns.rcode.NXDOMAIN
    # still serving after clear
    srv.add("example.com", "A", "192.0.2.3")
    assert texts(tcp(srv, "example.com")) == ["192.0.2.3"]


# --- size, EDNS, truncation -----------------------------------------------


def _add_many_txt(srv, name, count=40, size=100):
    for i in range(count):
        srv.add(name, "TXT", f"{i:03d}-" + "x" * size)


def test_udp_truncation_without_and_with_edns(srv):
    # ~40 x 120 bytes: bigger than 512 but well under 8192
    _add_many_txt(srv, "many.example.com", count=40, size=80)

    plain = udp(srv, "many.example.com", "TXT")
    assert plain.flags & dns.flags.TC
    assert plain.answer == []
    assert plain.edns == -1

    edns = udp(srv, "many.example.com", "TXT", use_edns=0, payload=8192)
    assert not edns.flags & dns.flags.TC
    assert edns.edns == 0
    assert len(list(edns.answer[0])) == 40

    small = udp(srv, "many.example.com", "TXT", use_edns=0, payload=1232)
    assert small.flags & dns.flags.TC
    assert small.answer == []
    assert small.edns == 0

    full = tcp(srv, "many.example.com", "TXT")
    assert not full.flags & dns.flags.TC
    assert len(list(full.answer[0])) == 40


def test_resolver_falls_back_to_tcp_on_truncation(srv):
    _add_many_txt(srv, "many.example.com", count=40, size=100)
    ans = resolver(srv).resolve("many.example.com", "TXT")
    got = txt_strings(ans)
    assert len(got) == 40
    assert got[0] == b"000-" + b"x" * 100
    assert srv.queries == [
        ("many.example.com", "TXT", "udp"),
        ("many.example.com", "TXT", "tcp"),
    ]


def test_several_queries_on_one_tcp_connection(srv):
    srv.add("one.example.com", "A", "192.0.2.1")
    srv.add("two.example.com", "A", "192.0.2.2")
    q1 = dns.message.make_query("one.example.com", "A")
    q2 = dns.message.make_query("two.example.com", "A")
    with socket.create_connection((HOST, srv.port), timeout=2) as s:
        for q in (q1, q2):
            w = q.to_wire()
            s.sendall(struct.pack("!H", len(w)) + w)
        replies = []
        f = s.makefile("rb")
        for _ in range(2):
            (n,) = struct.unpack("!H", f.read(2))
            replies.append(dns.message.from_wire(f.read(n)))
        f.close()
    assert [r.id for r in replies] == [q1.id, q2.id]
    assert [texts(r) for r in replies] == [["192.0.2.1"], ["192.0.2.2"]]


# --- faults ----------------------------------------------------------------


def test_fault_timeout_udp_tcp_and_resolver(srv):
    srv.add("dead.example.com", "A", "192.0.2.1")
    srv.fault("dead.example.com", "timeout")
    t0 = time.monotonic()
    with pytest.raises(dns.exception.Timeout):
        udp(srv, "dead.example.com", timeout=0.3)
    with pytest.raises(dns.exception.Timeout):
        tcp(srv, "DEAD.example.com", timeout=0.3)
    with pytest.raises(dns.exception.Timeout):
        resolver(srv, lifetime=0.3).resolve("dead.example.com", "A")
    assert time.monotonic() - t0 < 3
    assert srv.query_count("dead.example.com") >= 3
    # other names unaffected
    srv.add("alive.example.com", "A", "192.0.2.2")
    assert texts(udp(srv, "alive.example.com")) == ["192.0.2.2"]


@pytest.mark.parametrize(
    "mode,rcode",
    [
        ("servfail", dns.rcode.SERVFAIL),
        ("refused", dns.rcode.REFUSED),
        ("nxdomain", dns.rcode.NXDOMAIN),
    ],
)
def test_fault_rcodes(srv, mode, rcode):
    srv.add("x.example.com", "A", "192.0.2.1")
    srv.fault("X.Example.com", mode)
    for query in (udp, tcp):
        r = query(srv, "x.example.com", "A")
        assert r.rcode() == rcode
        assert r.answer == []
    srv.clear_faults()
    assert texts(udp(srv, "x.example.com")) == ["192.0.2.1"]


def test_fault_servfail_seen_by_resolver(srv):
    srv.fault("broken.example.com", "servfail")
    with pytest.raises(dns.resolver.NoNameservers):
        resolver(srv, lifetime=1).resolve("broken.example.com", "TXT")


def test_fault_per_qtype(srv):
    srv.add("x.example.com", "A", "192.0.2.1")
    srv.add("x.example.com", "TXT", "hello")
    srv.fault("x.example.com", "servfail", qtype="TXT")
    assert udp(srv, "x.example.com", "TXT").rcode() == dns.rcode.SERVFAIL
    a = udp(srv, "x.example.com", "A")
    assert a.rcode() == dns.rcode.NOERROR
    assert texts(a) == ["192.0.2.1"]


def test_fault_answer_exempts_one_type_from_a_name_wide_timeout(srv):
    srv.add("half.example.com", "TXT", "v=spf1 -all")
    srv.fault("half.example.com", "timeout")
    srv.fault("half.example.com", "answer", qtype="TXT")
    assert txt_strings(resolver(srv).resolve("half.example.com", "TXT")) == [b"v=spf1 -all"]
    with pytest.raises(dns.exception.Timeout):
        udp(srv, "half.example.com", "A", timeout=0.3)
    srv.default_fault = "servfail"
    srv.fault("ok.example.com", "answer", qtype="A")
    srv.add("ok.example.com", "A", "192.0.2.9")
    assert texts(udp(srv, "ok.example.com", "A")) == ["192.0.2.9"]
    assert udp(srv, "ok.example.com", "MX").rcode() == dns.rcode.SERVFAIL


def test_fault_truncate(srv):
    srv.add("t.example.com", "TXT", "short")
    srv.fault("t.example.com", "truncate")
    r = udp(srv, "t.example.com", "TXT", use_edns=0, payload=4096)
    assert r.flags & dns.flags.TC
    assert r.answer == []
    full = tcp(srv, "t.example.com", "TXT")
    assert not full.flags & dns.flags.TC
    assert texts(full) == ['"short"']
    ans = resolver(srv).resolve("t.example.com", "TXT")
    assert txt_strings(ans) == [b"short"]


def test_fault_malformed(srv):
    srv.add("m.example.com", "A", "192.0.2.1")
    srv.fault("m.example.com", "malformed")
    q = dns.message.make_query("m.example.com", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(q.to_wire(), (HOST, srv.port))
        data, _ = s.recvfrom(65535)
    assert struct.unpack("!H", data[:2])[0] == q.id
    with pytest.raises(dns.exception.DNSException):
        dns.message.from_wire(data)
    with pytest.raises(dns.exception.DNSException):
        udp(srv, "m.example.com", "A")
    with pytest.raises(dns.exception.DNSException):
        tcp(srv, "m.example.com", "A")


def test_default_fault_applies_to_every_name(srv):
    srv.add("example.com", "A", "192.0.2.1")
    assert srv.default_fault is None
    srv.default_fault = "timeout"
    with pytest.raises(dns.exception.Timeout):
        udp(srv, "example.com", timeout=0.3)
    srv.default_fault = "refused"
    assert udp(srv, "whatever.test").rcode() == dns.rcode.REFUSED
    srv.default_fault = None
    assert texts(udp(srv, "example.com")) == ["192.0.2.1"]
    with pytest.raises(ValueError):
        srv.fault("example.com", "explode")


def test_garbage_does_not_kill_server(srv):
    srv.add("example.com", "A", "192.0.2.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\x00", b"\xff" * 7, os.urandom(300)):
            s.sendto(junk, (HOST, srv.port))
        # a response (QR=1) must be ignored, not answered
        resp = dns.message.make_response(dns.message.make_query("example.com", "A"))
        s.sendto(resp.to_wire(), (HOST, srv.port))
    with socket.create_connection((HOST, srv.port), timeout=2) as s:
        s.sendall(struct.pack("!H", 5) + b"\x01\x02\x03\x04\x05")
        s.sendall(b"\x00")  # half a length prefix, then close
    assert texts(udp(srv, "example.com")) == ["192.0.2.1"]
    assert texts(tcp(srv, "example.com")) == ["192.0.2.1"]
    assert srv.queries == [("example.com", "A", "udp"), ("example.com", "A", "tcp")]


def test_stop_releases_held_tcp_connection_quickly():
    server = DNSServer()
    server.start()
    server.fault("dead.example.com", "timeout")
    server.add("alive.example.com", "A", "192.0.2.5")
    s = socket.create_connection((HOST, server.port), timeout=2)
    try:
        dead = dns.message.make_query("dead.example.com", "A")
        alive = dns.message.make_query("alive.example.com", "A")
        for q in (dead, alive):
            w = q.to_wire()
            s.sendall(struct.pack("!H", len(w)) + w)
        # queries on one connection are handled in order, so once the
        # second answer arrives the first one has been seen and dropped
        f = s.makefile("rb")
        (n,) = struct.unpack("!H", f.read(2))
        reply = dns.message.from_wire(f.read(n))
        assert reply.id == alive.id
        assert texts(reply) == ["192.0.2.5"]
        assert server.query_count("dead.example.com") == 1
        t0 = time.monotonic()
        server.stop()
        assert time.monotonic() - t0 < 1.0
        assert f.read(2) == b""  # closed without ever answering the dead query
        f.close()
    finally:
        s.close()
        server.stop()


# --- latency ---------------------------------------------------------------


def test_latency_does_not_serialise_concurrent_queries(srv):
    srv.add("example.com", "A", "192.0.2.1")
    srv.latency = 0.2

    def one(i):
        t = time.monotonic()
        r = udp(srv, "example.com", "A", timeout=3)
        return texts(r), time.monotonic() - t

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(one, range(10)))
    total = time.monotonic() - t0
    assert all(t == ["192.0.2.1"] for t, _ in results)
    assert all(elapsed >= 0.18 for _, elapsed in results)
    assert total < 1.0, total
    assert srv.query_count("example.com", "A") == 10

    # TCP is delayed too
    t = time.monotonic()
    assert texts(tcp(srv, "example.com")) == ["192.0.2.1"]
    assert time.monotonic() - t >= 0.18


def test_per_name_latency(srv):
    srv.add("slow.example.com", "A", "192.0.2.1")
    srv.add("fast.example.com", "A", "192.0.2.2")
    srv.set_latency("slow.example.com", 0.4)

    with ThreadPoolExecutor(max_workers=1) as pool:
        t0 = time.monotonic()
        slow = pool.submit(udp, srv, "slow.example.com", "A", 3)
        fast = udp(srv, "fast.example.com", "A")
        fast_elapsed = time.monotonic() - t0
        assert texts(fast) == ["192.0.2.2"]
        assert not slow.done()
        assert texts(slow.result()) == ["192.0.2.1"]
        slow_elapsed = time.monotonic() - t0
    assert fast_elapsed < 0.3
    assert slow_elapsed >= 0.38


# --- query log -------------------------------------------------------------


def test_query_log(srv):
    srv.add("example.com", "TXT", "v=spf1 -all")
    udp(srv, "Example.COM.", "TXT")
    tcp(srv, "example.com", "A")
    udp(srv, "missing.example.com", "MX")
    assert srv.queries == [
        ("example.com", "TXT", "udp"),
        ("example.com", "A", "tcp"),
        ("missing.example.com", "MX", "udp"),
    ]
    assert srv.query_count() == 3
    assert srv.query_count("EXAMPLE.com.") == 2
    assert srv.query_count("example.com", "TXT") == 1
    assert srv.query_count(qtype="mx") == 1
    assert srv.query_count("nothing.example.com") == 0
    snapshot = srv.queries
    srv.reset_queries()
    assert srv.queries == []
    assert len(snapshot) == 3  # snapshot not affected by reset


# --- IPv6 ------------------------------------------------------------------


def _ipv6_loopback_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="::1 not available")
def test_ipv6_server():
    with DNSServer(host="::1") as server:
        server.add("example.com", "AAAA", "2001:db8::1")
        server.add("example.com", "TXT", "v=spf1 ip6:2001:db8::/32 -all")
        q = dns.message.make_query("example.com", "AAAA")
        assert texts(dns.query.udp(q, "::1", port=server.port, timeout=2)) == [
            "2001:db8::1"
        ]
        assert texts(dns.query.tcp(q, "::1", port=server.port, timeout=2)) == [
            "2001:db8::1"
        ]
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = ["::1"]
        res.port = server.port
        res.lifetime = 2
        ans = res.resolve("example.com", "TXT")
        assert txt_strings(ans) == [b"v=spf1 ip6:2001:db8::/32 -all"]
        assert [p for _, _, p in server.queries] == ["udp", "tcp", "udp"]


# --- command line ----------------------------------------------------------


def test_command_line_entry(tmp_path):
    zones = tmp_path / "zones.json"
    zones.write_text(
        json.dumps({"example.com": {"TXT": ["v=spf1 -all"], "A": ["192.0.2.1"]}})
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.dnsserver", "--port", "0",
         "--zone", str(zones), "--latency", "0.005", "--host", HOST],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().split()
        assert line[:3] == ["listening", "on", HOST], line
        port = int(line[3])
        q = dns.message.make_query("example.com", "TXT")
        r = dns.query.udp(q, HOST, port=port, timeout=2)
        assert texts(r) == ['"v=spf1 -all"']
        r = dns.query.tcp(dns.message.make_query("example.com", "A"), HOST,
                          port=port, timeout=2)
        assert texts(r) == ["192.0.2.1"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_empty_non_terminals_follow_additions_and_removals():
    """Names above stored names exist (NODATA, not NXDOMAIN) - also after the stored names change."""
    server = DNSServer("127.0.0.1")
    assert server.resolve("b.example", "A") == ("nxdomain", [])
    server.add("a.b.example", "A", "192.0.2.1")
    assert server.resolve("b.example", "A") == ("answer", [])  # an empty non-terminal
    assert server.resolve("c.example", "A") == ("nxdomain", [])
    server.add("x.c.example", "A", "192.0.2.2")
    assert server.resolve("c.example", "A") == ("answer", [])
    server.remove("a.b.example")
    assert server.resolve("b.example", "A") == ("nxdomain", [])
    server.clear()
    assert server.resolve("c.example", "A") == ("nxdomain", [])
