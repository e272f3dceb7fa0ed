"""Tests for spfmilter.dns: DnsClient.lookup() value shapes, caching, negative caching,
errors and deadlines, TCP fallback, thread safety.

All DNS traffic goes to the loopback test server (tests.support.dnsserver.DNSServer)
through resolvers built with an explicit loopback server list.
"""
from __future__ import annotations

import threading
import time

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from spfmilter.config import DnsServer
from spfmilter.dns import (
    MAX_CACHE_TTL,
    NEGATIVE_TTL_CAP,
    SERVER_FAILURE_TTL,
    Answer,
    DnsClient,
    DnsTempError,
    TtlCache,
    _negative_ttl,
    make_resolver,
)
from tests.support.dnsserver import DNSServer

SOON = 5.0  # a generous deadline for lookups that should answer at once


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def resolver_for(srv: DNSServer) -> dns.resolver.Resolver:
    return make_resolver((DnsServer("127.0.0.1", srv.port),))


def client_for(srv: DNSServer, cache_size: int = 10000, clock=time.monotonic) -> DnsClient:
    return DnsClient(resolver_for(srv), cache_size, clock=clock)


def lookup(client: DnsClient, name: str, qtype: str, clock=time.monotonic) -> Answer:
    return client.lookup(name, qtype, clock() + SOON)


@pytest.fixture(scope="module")
def srv(dns_server):
    """The module's loopback server; every test uses its own names."""
    return dns_server


# ---------------------------------------------------------------------------
# the resolver is loopback-only
# ---------------------------------------------------------------------------


def test_make_resolver_uses_only_the_given_loopback_server(srv):
    resolver = resolver_for(srv)
    assert list(resolver.nameservers) == ["127.0.0.1"]
    assert resolver.port == srv.port
    assert resolver.cache is None


# ---------------------------------------------------------------------------
# value shapes
# ---------------------------------------------------------------------------


SHAPES = [
    pytest.param(
        "txt.shape.example", "TXT",
        [("TXT", "v=spf1 -all"), ("RAW", [b"first part ", b"second part"])],
        {(b"v=spf1 -all",), (b"first part ", b"second part")},
        id="txt-records-and-multistring",
    ),
    pytest.param(
        "longtxt.shape.example", "TXT",
        [("TXT", "y" * 300)],
        {(b"y" * 255, b"y" * 45)},
        id="txt-over-255-kept-as-separate-strings",
    ),
    pytest.param(
        "a.shape.example", "A",
        [("A", ["192.0.2.1", "192.0.2.2"])],
        {"192.0.2.1", "192.0.2.2"},
        id="a",
    ),
    pytest.param(
        "aaaa.shape.example", "AAAA",
        [("AAAA", "2001:DB8::1")],
        {"2001:db8::1"},
        id="aaaa",
    ),
    pytest.param(
        "mx.shape.example", "MX",
        [("MX", ["10 mx1.shape.example.", "20 mx2.other.example."])],
        {(10, "mx1.shape.example"), (20, "mx2.other.example")},
        id="mx-pref-and-exchange-without-dot",
    ),
    pytest.param(
        "10.2.0.192.in-addr.arpa", "PTR",
        [("PTR", ["host.shape.example.", "other.shape.example."])],
        {"host.shape.example", "other.shape.example"},
        id="ptr-without-dot",
    ),
]


@pytest.mark.parametrize("name, qtype, records, expected", SHAPES)
def test_value_shapes(srv, name, qtype, records, expected):
    for rtype, value in records:
        if rtype == "RAW":
            srv.add_raw_txt(name, value)
        else:
            srv.add(name, rtype, value)
    answer = lookup(client_for(srv), name, qtype)
    assert isinstance(answer, Answer)
    assert answer.nxdomain is False
    assert isinstance(answer.values, tuple)
    assert len(answer.values) == len(expected)
    assert set(answer.values) == expected
    for value in answer.values:
        if qtype == "TXT":
            assert isinstance(value, tuple) and all(type(part) is bytes for part in value)
        elif qtype == "MX":
            assert type(value[0]) is int and type(value[1]) is str
            assert not value[1].endswith(".")
        else:
            assert type(value) is str and not value.endswith(".")


def test_nxdomain(srv):
    answer = lookup(client_for(srv), "missing.nx.example", "TXT")
    assert answer == Answer((), nxdomain=True)


@pytest.mark.parametrize("qtype", ["TXT", "MX", "AAAA"])
def test_nodata_is_empty_not_nxdomain(srv, qtype):
    srv.add("nodata.example", "A", "192.0.2.3")
    assert lookup(client_for(srv), "nodata.example", qtype) == Answer(())


def test_trailing_dot_and_case_are_accepted(srv):
    srv.add("dot.shape.example", "A", "192.0.2.4")
    assert lookup(client_for(srv), "DOT.Shape.Example.", "A") == Answer(("192.0.2.4",))


@pytest.mark.parametrize("qtype", ["SPF", "CNAME", "ANY", "a"])
def test_unsupported_type_is_refused_without_a_query(srv, qtype):
    client = client_for(srv)
    before = len(srv.queries)
    with pytest.raises(ValueError, match="unsupported query type"):
        client.lookup("shape.example", qtype, time.monotonic() + SOON)
    assert srv.queries[before:] == []
    assert client.queries == 0


# ---------------------------------------------------------------------------
# positive caching
# ---------------------------------------------------------------------------


def test_second_lookup_within_ttl_sends_no_query(srv):
    srv.add("hit.cache.example", "TXT", "v=spf1 -all", ttl=300)
    client = client_for(srv)
    first = lookup(client, "hit.cache.example", "TXT")
    second = lookup(client, "hit.cache.example", "TXT")
    assert first == second == Answer(((b"v=spf1 -all",),))
    assert srv.query_count("hit.cache.example", "TXT") == 1
    assert client.queries == 1
    assert (client.cache.hits, client.cache.misses) == (1, 1)


def test_cache_key_includes_type(srv):
    srv.add("types.cache.example", "A", "192.0.2.5")
    client = client_for(srv)
    assert lookup(client, "types.cache.example", "A") == Answer(("192.0.2.5",))
    assert lookup(client, "types.cache.example", "TXT") == Answer(())
    assert srv.query_count("types.cache.example") == 2
    assert client.queries == 2


@pytest.mark.parametrize("spellings", [
    ("case.cache.example", "CASE.CACHE.EXAMPLE"),
    ("Case.Cache.Example", "case.cache.example."),
    ("case.cache.example.", "cAsE.cache.EXAMPLE"),
])
def test_names_are_case_insensitive_cache_keys(srv, spellings):
    srv.add("case.cache.example", "A", "192.0.2.6")
    client = client_for(srv)
    before = srv.query_count("case.cache.example")
    answers = [lookup(client, name, "A") for name in spellings]
    assert answers == [Answer(("192.0.2.6",))] * 2
    assert srv.query_count("case.cache.example") - before == 1
    assert client.queries == 1


def test_expired_entry_is_queried_again():
    clock = FakeClock()
    with DNSServer() as srv:
        srv.add("ttl.cache.example", "A", "192.0.2.7", ttl=60)
        client = client_for(srv, clock=clock)
        lookup(client, "ttl.cache.example", "A", clock)
        clock.advance(58)
        lookup(client, "ttl.cache.example", "A", clock)
        assert srv.query_count("ttl.cache.example") == 1
        clock.advance(3)  # 61 s after the answer: past its 60 s TTL
        srv.remove("ttl.cache.example", "A")
        srv.add("ttl.cache.example", "A", "192.0.2.8", ttl=60)
        assert lookup(client, "ttl.cache.example", "A", clock) == Answer(("192.0.2.8",))
        assert srv.query_count("ttl.cache.example") == 2
        assert client.queries == 2


def test_huge_ttl_is_capped():
    clock = FakeClock()
    with DNSServer() as srv:
        srv.add("long.cache.example", "A", "192.0.2.9", ttl=7 * 86400)
        client = client_for(srv, clock=clock)
        lookup(client, "long.cache.example", "A", clock)
        clock.advance(MAX_CACHE_TTL - 10)
        lookup(client, "long.cache.example", "A", clock)
        assert srv.query_count("long.cache.example") == 1
        clock.advance(20)
        lookup(client, "long.cache.example", "A", clock)
        assert srv.query_count("long.cache.example") == 2


def test_ttl_zero_is_not_cached(srv):
    srv.add("zero.cache.example", "A", "192.0.2.11", ttl=0)
    client = client_for(srv)
    for _ in range(3):
        assert lookup(client, "zero.cache.example", "A") == Answer(("192.0.2.11",))
    assert srv.query_count("zero.cache.example") == 3
    assert client.queries == 3
    assert len(client.cache) == 0


def test_cache_size_zero_disables_caching(srv):
    srv.add("off.cache.example", "A", "192.0.2.12", ttl=300)
    client = client_for(srv, cache_size=0)
    for _ in range(3):
        assert lookup(client, "off.cache.example", "A") == Answer(("192.0.2.12",))
    assert srv.query_count("off.cache.example") == 3
    assert client.queries == 3
    assert len(client.cache) == 0


def test_lru_eviction_at_the_size_bound(srv):
    for label in "abc":
        srv.add(f"{label}.lru.example", "A", "192.0.2.13")
    client = client_for(srv, cache_size=2)
    lookup(client, "a.lru.example", "A")
    lookup(client, "b.lru.example", "A")
    lookup(client, "a.lru.example", "A")  # a is now the most recently used
    lookup(client, "c.lru.example", "A")  # evicts b, the least recently used
    assert len(client.cache) == 2
    counts = {label: srv.query_count(f"{label}.lru.example") for label in "abc"}
    assert counts == {"a": 1, "b": 1, "c": 1}
    lookup(client, "a.lru.example", "A")
    lookup(client, "c.lru.example", "A")
    assert srv.query_count("a.lru.example") == 1
    assert srv.query_count("c.lru.example") == 1
    lookup(client, "b.lru.example", "A")
    assert srv.query_count("b.lru.example") == 2
    assert client.queries == 4


def test_ttl_cache_directly():
    clock = FakeClock()
    cache = TtlCache(2, clock)
    cache.put("x", 1, 10)
    cache.put("y", 2, 0)  # TTL 0: not stored
    cache.put("z", 3, -5)  # negative TTL: not stored
    assert len(cache) == 1
    assert cache.get("x") == 1
    assert cache.get("y") is None
    clock.advance(10)  # expiry is exclusive of the TTL's end
    assert cache.get("x") is None
    assert len(cache) == 0
    assert (cache.hits, cache.misses) == (1, 2)
    cache.put("a", "A", 5)
    cache.put("b", "B", 5)
    cache.get("a")
    cache.put("c", "C", 5)
    assert [cache.get(k) for k in ("a", "b", "c")] == ["A", None, "C"]
    empty = TtlCache(0, clock)
    empty.put("k", "v", 100)
    assert empty.get("k") is None


# ---------------------------------------------------------------------------
# negative caching (RFC 2308)
# ---------------------------------------------------------------------------


@pytest.fixture
def no_soa(srv):
    """Make the server leave the SOA out of negative answers, for this test only."""
    srv.negative_soa = False
    yield srv
    srv.negative_soa = True


def test_nxdomain_with_soa_is_cached_for_the_soa_minimum(srv):
    clock = FakeClock()
    srv.negative_ttl = 60
    try:
        client = client_for(srv, clock=clock)
        assert lookup(client, "gone2.neg.example", "TXT", clock) == Answer((), nxdomain=True)
        clock.now += 59
        assert lookup(client, "gone2.neg.example", "TXT", clock) == Answer((), nxdomain=True)
        assert srv.query_count("gone2.neg.example") == 1
        clock.now += 2
        lookup(client, "gone2.neg.example", "TXT", clock)
        assert srv.query_count("gone2.neg.example") == 2
    finally:
        srv.negative_ttl = 300


def test_nxdomain_without_soa_is_not_cached(no_soa):
    """RFC 2308 section 5: negative answers without an SOA SHOULD NOT be cached."""
    srv = no_soa
    client = client_for(srv)
    for _ in range(2):
        assert lookup(client, "gone.neg.example", "TXT") == Answer((), nxdomain=True)
    assert srv.query_count("gone.neg.example") == 2
    assert client.queries == 2


def test_nodata_without_soa_is_not_cached(no_soa):
    """RFC 2308 section 5 applies to NODATA as to NXDOMAIN: no SOA, no caching."""
    srv = no_soa
    srv.add("empty.neg.example", "A", "192.0.2.14")
    client = client_for(srv)
    for _ in range(2):
        assert lookup(client, "empty.neg.example", "TXT") == Answer(())
    assert srv.query_count("empty.neg.example", "TXT") == 2
    assert client.queries == 2


SOA_ZONE = "neg.example."


def negative_response(qname: str, rcode, soa_ttl: int | None, minimum: int = 0):
    query = dns.message.make_query(qname, "TXT")
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if soa_ttl is not None:
        response.authority.append(dns.rrset.from_text(
            SOA_ZONE, soa_ttl, "IN", "SOA",
            f"ns.{SOA_ZONE} hostmaster.{SOA_ZONE} 1 3600 600 86400 {minimum}"))
    return dns.message.from_wire(response.to_wire())  # as if received from a server


def nxdomain_error(qname: str, soa_ttl: int | None, minimum: int = 0) -> dns.resolver.NXDOMAIN:
    name = dns.name.from_text(qname)
    response = negative_response(qname, dns.rcode.NXDOMAIN, soa_ttl, minimum)
    return dns.resolver.NXDOMAIN(qnames=[name], responses={name: response})


@pytest.mark.parametrize("soa_ttl, minimum, expected", [
    (600, 60, 60.0),  # the SOA MINIMUM is smaller
    (30, 600, 30.0),  # the SOA record's own TTL is smaller
    (0, 600, 0.0),
    (999999, 999999, float(NEGATIVE_TTL_CAP)),  # capped
    (None, 0, 0.0),  # no SOA: not cached
])
def test_negative_ttl_from_soa(soa_ttl, minimum, expected):
    assert _negative_ttl(nxdomain_error("x.neg.example.", soa_ttl, minimum)) == expected


class StubResolver:
    """Stands in for dnspython's resolver: raises or returns crafted answers, no network."""

    timeout = 2.0
    nameservers = ["127.0.0.1"]

    def __init__(self, outcome):
        self.outcome = outcome
        self.calls = 0

    def resolve(self, qname, rdtype, **kwargs):
        self.calls += 1
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def test_nxdomain_is_cached_for_the_soa_minimum():
    clock = FakeClock()
    stub = StubResolver(nxdomain_error("soa.neg.example.", 600, 60))
    client = DnsClient(stub, 100, clock=clock)
    assert client.lookup("soa.neg.example", "TXT", clock() + SOON) == Answer((), nxdomain=True)
    clock.advance(59)
    assert client.lookup("soa.neg.example", "TXT", clock() + SOON) == Answer((), nxdomain=True)
    assert stub.calls == 1
    clock.advance(2)
    client.lookup("soa.neg.example", "TXT", clock() + SOON)
    assert stub.calls == 2


def test_nodata_is_cached_for_the_soa_minimum():
    clock = FakeClock()
    qname = dns.name.from_text("nodata-soa.neg.example.")
    response = negative_response("nodata-soa.neg.example.", dns.rcode.NOERROR, 900, 120)
    stub = StubResolver(dns.resolver.Answer(qname, dns.rdatatype.TXT, dns.rdataclass.IN, response))
    client = DnsClient(stub, 100, clock=clock)
    assert client.lookup("nodata-soa.neg.example", "TXT", clock() + SOON) == Answer(())
    clock.advance(118)
    client.lookup("nodata-soa.neg.example", "TXT", clock() + SOON)
    assert stub.calls == 1
    clock.advance(3)
    client.lookup("nodata-soa.neg.example", "TXT", clock() + SOON)
    assert stub.calls == 2


# ---------------------------------------------------------------------------
# errors and deadlines
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault, words", [
    ("servfail", ["SERVFAIL", "servfail.err.example/TXT"]),
    ("refused", ["REFUSED", "refused.err.example/TXT"]),
    ("malformed", ["malformed.err.example/TXT"]),
    ("timeout", ["timeout", "timeout.err.example/TXT"]),
])
def test_server_faults_become_temp_errors_within_the_deadline(srv, fault, words):
    name = f"{fault}.err.example"
    srv.add(name, "TXT", "v=spf1 -all")
    srv.fault(name, fault)
    client = client_for(srv)
    started = time.monotonic()
    with pytest.raises(DnsTempError) as info:
        client.lookup(name, "TXT", time.monotonic() + 0.5)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5
    message = str(info.value)
    for word in words:
        assert word in message
    assert len(message) < 300 and "\n" not in message
    assert srv.query_count(name) >= 1
    # server failures are remembered briefly (RFC 2308 section 7.1); time-outs and garbage are not
    assert len(client.cache) == (1 if fault in ("servfail", "refused") else 0)


def test_servfail_is_cached_briefly_then_retried(srv):
    """RFC 2308 section 7.1: a server failure may be cached, for at most five minutes."""
    srv.add("flaky.err.example", "A", "192.0.2.15")
    srv.fault("flaky.err.example", "servfail")
    clock = FakeClock()
    client = client_for(srv, clock=clock)
    for _ in range(3):
        with pytest.raises(DnsTempError, match="SERVFAIL"):
            lookup(client, "flaky.err.example", "A", clock)
    assert srv.query_count("flaky.err.example") == 1
    srv.fault("flaky.err.example", None)
    clock.now += SERVER_FAILURE_TTL + 0.1
    assert lookup(client, "flaky.err.example", "A", clock) == Answer(("192.0.2.15",))
    assert srv.query_count("flaky.err.example") == 2


@pytest.mark.parametrize("offset", [0.0, -0.001, -10.0])
def test_passed_deadline_raises_without_a_query(srv, offset):
    srv.add("late.err.example", "A", "192.0.2.16")
    clock = FakeClock()
    client = client_for(srv, clock=clock)
    before = len(srv.queries)
    with pytest.raises(DnsTempError, match="budget exhausted"):
        client.lookup("late.err.example", "A", clock() + offset)
    assert srv.queries[before:] == []
    assert client.queries == 0


def test_deadline_holds_across_retry_rounds():
    """Several retry rounds fit in the budget; dnspython's back-off must not overrun it."""
    with DNSServer() as srv:
        srv.default_fault = "timeout"
        resolver = resolver_for(srv)
        resolver.timeout = 0.05  # per-try time-out: many rounds within the deadline
        client = DnsClient(resolver, 100)
        started = time.monotonic()
        with pytest.raises(DnsTempError, match="timeout"):
            client.lookup("slow.err.example", "A", started + 1.0)
        elapsed = time.monotonic() - started
        assert 0.9 < elapsed < 1.2
        assert srv.query_count("slow.err.example") >= 3  # it did retry


# ---------------------------------------------------------------------------
# message size: TCP fallback, large answers
# ---------------------------------------------------------------------------


def test_truncated_udp_answer_is_retried_over_tcp(srv):
    srv.add("tc.size.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    srv.add("tc.size.example", "TXT", "second record")
    srv.fault("tc.size.example", "truncate")
    answer = lookup(client_for(srv), "tc.size.example", "TXT")
    assert set(answer.values) == {(b"v=spf1 ip4:192.0.2.0/24 -all",), (b"second record",)}
    protos = [proto for name, qtype, proto in srv.queries if name == "tc.size.example"]
    assert protos == ["udp", "tcp"]


@pytest.mark.parametrize("records, size, protos", [
    (6, 150, ["udp"]),  # ~900 bytes: over 512, fits the 1232-byte EDNS payload
    (20, 200, ["udp", "tcp"]),  # ~4000 bytes: too big for UDP, fetched over TCP
])
def test_large_txt_sets(srv, records, size, protos):
    name = f"big{records}.size.example"
    expected = set()
    for index in range(records):
        text = (f"r{index:02d}-" + "z" * size)[:size].encode()
        srv.add(name, "TXT", text)
        expected.add((text,))
    assert records * size > 512
    answer = lookup(client_for(srv), name, "TXT")
    assert set(answer.values) == expected
    assert len(answer.values) == records
    assert [proto for qname, _, proto in srv.queries if qname == name] == protos


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------


def test_concurrent_lookups_share_the_cache(srv):
    names = [f"t{index}.threads.example" for index in range(20)]
    for index, name in enumerate(names):
        srv.add(name, "A", f"192.0.2.{100 + index}")
    client = client_for(srv)
    threads_count, rounds = 8, 3
    barrier = threading.Barrier(threads_count)
    errors: list = []
    results: list = []

    def work(offset: int) -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(rounds):
                for step in range(len(names)):
                    index = (offset + step) % len(names)
                    results.append((index, lookup(client, names[index], "A")))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i * 3,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    total = threads_count * rounds * len(names)
    assert len(results) == total
    for index, answer in results:
        assert answer == Answer((f"192.0.2.{100 + index}",))
    upstream = sum(srv.query_count(name) for name in names)
    assert len(names) <= upstream <= threads_count * len(names)  # later rounds all hit
    assert client.cache.hits + client.cache.misses == total
    assert client.cache.hits >= total - threads_count * len(names)
    assert len(client.cache) == len(names)
    for name in names:  # everything is cached now
        lookup(client, name, "A")
    assert sum(srv.query_count(name) for name in names) == upstream


def test_concurrent_lookups_of_one_name_send_one_query(srv):
    """Sessions asking for a name that is already being looked up wait for that answer."""
    import threading

    srv.add("herd.cache.example", "TXT", "v=spf1 -all")
    srv.set_latency("herd.cache.example", 0.3)
    try:
        client = client_for(srv)
        start = threading.Barrier(8)
        results = []

        def worker():
            start.wait()
            results.append(client.lookup("herd.cache.example", "TXT", time.monotonic() + 5))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [Answer(((b"v=spf1 -all",),))] * 8
        assert srv.query_count("herd.cache.example") == 1
        assert client.queries == 1
    finally:
        srv.set_latency("herd.cache.example", None)


def test_a_waiting_lookup_gives_up_at_its_own_deadline(srv):
    import threading

    srv.add("slowherd.cache.example", "TXT", "v=spf1 -all")
    srv.set_latency("slowherd.cache.example", 1.0)
    try:
        client = client_for(srv)
        leader = threading.Thread(
            target=lambda: client.lookup("slowherd.cache.example", "TXT", time.monotonic() + 5))
        leader.start()
        while srv.query_count("slowherd.cache.example") == 0:  # the leader's query is out
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(DnsTempError, match="timeout"):
            client.lookup("slowherd.cache.example", "TXT", time.monotonic() + 0.2)
        assert time.monotonic() - started < 0.8
        leader.join()
    finally:
        srv.set_latency("slowherd.cache.example", None)


# ---------------------------------------------------------------------------
# shared in-flight lookups: a leader's own time-out or crash is not the followers' answer
# ---------------------------------------------------------------------------


class FlightProbe:
    """Records, in order, the client's events (per thread) and each thread's first clock reading.

    A thread that reads the clock after the leader's "query" event and before its
    "timeout" event found the leader's flight open: it joined that flight.
    """

    def __init__(self):
        self.log: list = []  # ("event", name, thread) | ("clock", thread)
        self.query_out = threading.Event()
        self._clocked: set = set()

    def clock(self) -> float:
        me = threading.current_thread().name
        if me not in self._clocked:
            self._clocked.add(me)
            self.log.append(("clock", me))
        return time.monotonic()

    def on_event(self, event: str) -> None:
        self.log.append(("event", event, threading.current_thread().name))
        if event == "query":
            self.query_out.set()

    def joined(self, thread: str, leader: str) -> bool:
        """``thread`` first looked at the clock while ``leader``'s first query was in flight."""
        query = self.log.index(("event", "query", leader))
        ends = [i for i, item in enumerate(self.log) if i > query and item[0] == "event"
                and item[2] == leader and item[1] != "query"]
        mine = self.log.index(("clock", thread))
        return query < mine and (not ends or mine < ends[0])


def run_lookup(client: DnsClient, name: str, qtype: str, budget: float, box: dict, thread_name: str):
    """Start a thread that looks ``name`` up with ``budget`` seconds; its outcome lands in ``box``."""
    def work():
        started = time.monotonic()
        deadline = started + budget
        try:
            box[thread_name] = ("answer", client.lookup(name, qtype, deadline), time.monotonic() - deadline)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            box[thread_name] = ("error", exc, time.monotonic() - deadline)

    thread = threading.Thread(target=work, name=thread_name, daemon=True)
    thread.start()
    return thread


def join_the_leader(srv, name: str, latency: float, leader_budget: float, follower_budgets: dict,
                    fault: str = "") -> tuple[FlightProbe, DnsClient, dict]:
    """``name`` answered after ``latency``; a leader looks it up with ``leader_budget`` and, once
    its query is out, followers (thread name -> budget) join it.  Returns when all are done."""
    srv.add(name, "TXT", "v=spf1 -all")
    if fault:
        srv.fault(name, fault)
    srv.set_latency(name, latency)
    try:
        probe = FlightProbe()
        client = DnsClient(resolver_for(srv), 100, clock=probe.clock, on_event=probe.on_event)
        box: dict = {}
        leader = run_lookup(client, name, "TXT", leader_budget, box, "leader")
        assert probe.query_out.wait(5), "the leader's query never went out"
        followers = [run_lookup(client, name, "TXT", budget, box, who) for who, budget in follower_budgets.items()]
        for thread in [leader, *followers]:
            thread.join(10)
            assert not thread.is_alive()
        for who in follower_budgets:
            assert probe.joined(who, "leader"), probe.log
        return probe, client, box
    finally:
        srv.set_latency(name, None)


OVERRUN = 0.15  # dns.py's documented worst overrun (one 0.1 s back-off) plus scheduling slack


def test_followers_with_budget_left_get_the_answer_after_the_leaders_time_out(srv):
    """The leader's own deadline ends its query; followers ask again (once, together) within theirs."""
    name = "late-leader.flight.example"
    # the latency is longer than the leader's budget, well within the followers'
    _, client, box = join_the_leader(srv, name, 1.0, 0.5, {f"follower{i}": 3.0 for i in range(3)})
    kind, value, overrun = box["leader"]
    assert kind == "error" and isinstance(value, DnsTempError) and "timeout" in str(value)
    assert -0.1 < overrun < OVERRUN
    for i in range(3):
        kind, value, overrun = box[f"follower{i}"]
        assert (kind, value) == ("answer", Answer(((b"v=spf1 -all",),))), box[f"follower{i}"]
        assert overrun < 0
    # one query per name in flight: the leader's, then one more for all three followers
    assert srv.query_count(name) == 2
    assert client.queries == 2


def test_a_follower_tries_on_until_its_own_deadline_and_no_longer(srv):
    name = "too-slow.flight.example"
    _, _, box = join_the_leader(srv, name, 3.0, 0.4, {"follower": 1.0})  # nobody's budget is long enough
    for who in ("leader", "follower"):
        kind, value, overrun = box[who]
        assert kind == "error" and isinstance(value, DnsTempError) and "timeout" in str(value), box[who]
        # it used its whole budget (the follower did not stop at the leader's deadline), not more
        assert -0.1 < overrun < OVERRUN, (who, overrun)
    assert srv.query_count(name) == 2  # the follower asked again after the leader gave up


class CrashingResolver:
    """The first resolve() waits for ``release`` and then fails unexpectedly; later ones answer."""

    timeout = 2.0
    nameservers = ["127.0.0.1"]

    def __init__(self, answer):
        self.answer = answer
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def resolve(self, qname, rdtype, **kwargs):
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(10)
            raise RuntimeError("resolver bug")
        return self.answer


def test_an_unexpected_error_in_the_leader_gives_followers_a_temp_error_not_none():
    qname = dns.name.from_text("crash.flight.example.")
    response = dns.message.make_response(dns.message.make_query(qname, "TXT"))
    response.answer.append(dns.rrset.from_text(qname, 60, "IN", "TXT", '"v=spf1 -all"'))
    stub = CrashingResolver(dns.resolver.Answer(qname, dns.rdatatype.TXT, dns.rdataclass.IN, response))
    waiting = threading.Event()

    def clock():
        if threading.current_thread().name == "follower":
            waiting.set()  # the follower computes its wait: the leader's flight is open (stub.release unset)
        return time.monotonic()

    client = DnsClient(stub, 100, clock=clock)
    box: dict = {}
    leader = run_lookup(client, "crash.flight.example", "TXT", 5.0, box, "leader")
    assert stub.entered.wait(5)
    follower = run_lookup(client, "crash.flight.example", "TXT", 5.0, box, "follower")
    assert waiting.wait(5)
    stub.release.set()
    for thread in (leader, follower):
        thread.join(10)
        assert not thread.is_alive()
    kind, value, _ = box["leader"]
    assert kind == "error" and isinstance(value, RuntimeError)  # the leader's own error is its own
    kind, value, overrun = box["follower"]
    assert value is not None
    assert kind == "error" and isinstance(value, DnsTempError), box["follower"]
    assert "crash.flight.example/TXT" in str(value) and "RuntimeError" in str(value)
    assert overrun < 0
    assert stub.calls == 1  # the follower was told, not sent to ask again


def test_a_server_failure_is_shared_with_followers(srv):
    """SERVFAIL is the server's answer, not the leader's budget: followers get it, no second query."""
    name = "servfail.flight.example"
    _, _, box = join_the_leader(srv, name, 0.5, 3.0, {"follower": 3.0}, fault="servfail")
    for who in ("leader", "follower"):
        kind, value, overrun = box[who]
        assert kind == "error" and isinstance(value, DnsTempError) and "SERVFAIL" in str(value), box[who]
        assert overrun < 0
    assert srv.query_count(name) == 1
