"""Tests for spfmilter.dnstransport: the DNS transport DnsClient asks through.

The behaviour DnsClient shows (values, caching, errors, deadlines, TCP) is covered by
tests/unit/test_dns.py against the loopback test server; here a tiny loopback responder
sees what goes over the wire (source ports, ids) and answers with forged responses too.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from typing import Callable, Optional

import dns.message
import dns.rrset
import pytest

from bench import dnsbench
from spfmilter.config import DnsServer
from spfmilter.dns import Answer, DnsClient, DnsTimeout, make_resolver
from spfmilter.dnstransport import DirectTransport, Transport

ADDRESS = "192.0.2.55"


def answer_for(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", ADDRESS))
    return response


class Responder:
    """A UDP responder on 127.0.0.1 that records (source port, id, name) and replies via ``reply``.

    ``reply(query, send)`` decides what to send back; ``send(wire, sock=None)`` sends from the
    responder's socket (or another one, to forge a wrong source).
    """

    def __init__(self, reply: Callable[[dns.message.Message, Callable], None]):
        self.reply = reply
        self.seen: list[tuple[int, int, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Responder":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wire, source = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            query = dns.message.from_wire(wire)
            self.seen.append((source[1], query.id, query.question[0].name.to_text()))

            def send(data: bytes, sock: Optional[socket.socket] = None, to=source) -> None:
                (sock or self.sock).sendto(data, to)

            self.reply(query, send)

    def client(self, **kwargs) -> DnsClient:
        return DnsClient(make_resolver((DnsServer("127.0.0.1", self.port),)), 100, **kwargs)


def honest(query, send) -> None:
    send(answer_for(query).to_wire())


def test_every_query_leaves_from_a_port_of_its_own():
    """RFC 5452 section 9.2: the source port is unpredictable per query, not per process."""
    with Responder(honest) as responder:
        client = responder.client()
        for index in range(40):
            assert client.lookup(f"n{index}.port.example", "A", time.monotonic() + 5) == Answer((ADDRESS,))
        ports = [port for port, _, _ in responder.seen]
        assert len(responder.seen) == 40
        assert len(set(ports)) >= 38  # the kernel's random ephemeral ports may repeat, rarely
        steps = {(b - a) % 65536 for a, b in zip(ports, ports[1:])}
        assert len(steps) > 30  # not one port after the other


def test_query_ids_are_unpredictable():
    """RFC 5452 section 9.2: ids drawn at random, not a counter."""
    with Responder(honest) as responder:
        client = responder.client()
        for index in range(64):
            client.lookup(f"n{index}.id.example", "A", time.monotonic() + 5)
        ids = [query_id for _, query_id, _ in responder.seen]
        assert len(set(ids)) >= 60
        steps = {(b - a) % 65536 for a, b in zip(ids, ids[1:])}
        assert len(steps) > 50  # no fixed increment


def forged_first(query, send) -> None:
    """Forgeries before the real answer: wrong id, wrong question, wrong source port, garbage."""
    wrong_id = answer_for(query)
    wrong_id.id = (query.id + 1) % 65536
    send(wrong_id.to_wire())
    other = dns.message.make_query("other.forged.example.", "A")
    other.id = query.id
    wrong_question = dns.message.make_response(other)
    wrong_question.answer.append(dns.rrset.from_text("other.forged.example.", 300, "IN", "A", "192.0.2.66"))
    send(wrong_question.to_wire())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        bad = dns.message.make_response(query)
        bad.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", "192.0.2.77"))
        send(bad.to_wire(), stranger)
    # the right id and a header, then garbage: dnspython cannot parse it, so it is dropped
    send(query.id.to_bytes(2, "big") + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00garbage")
    # loopback delivers in sendto(), so the forgeries are queued before the real answer
    send(answer_for(query).to_wire())


def test_forged_responses_are_dropped_and_the_real_answer_taken():
    with Responder(forged_first) as responder:
        client = responder.client()
        assert client.lookup("real.forged.example", "A", time.monotonic() + 5) == Answer((ADDRESS,))


def only_forgeries(query, send) -> None:
    wrong_id = answer_for(query)
    wrong_id.id = (query.id + 1) % 65536
    send(wrong_id.to_wire())


def test_only_forged_responses_end_in_a_timeout_at_the_deadline():
    with Responder(only_forgeries) as responder:
        client = responder.client()
        started = time.monotonic()
        with pytest.raises(DnsTimeout):
            client.lookup("never.forged.example", "A", started + 0.6)
        assert 0.5 < time.monotonic() - started < 1.0
        assert len(client.cache) == 0


def test_a_lookup_starts_no_thread_and_leaves_no_socket_open():
    """The transport works in the caller's thread and closes each query's socket."""
    with Responder(honest) as responder:
        client = responder.client()
        assert isinstance(client._source, DirectTransport)
        threads = threading.active_count()
        fds = len(os.listdir("/proc/self/fd"))
        for index in range(10):
            client.lookup(f"n{index}.lazy.example", "A", time.monotonic() + 5)
        assert threading.active_count() == threads
        assert len(os.listdir("/proc/self/fd")) == fds


def test_a_forked_child_gets_its_own_transport():
    """Workers are forked from the supervisor after it has resolved: the child's lookups work."""
    with Responder(honest) as responder:
        client = responder.client()
        client.lookup("parent.fork.example", "A", time.monotonic() + 5)  # the parent's thread runs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process
            pid = os.fork()
        if pid == 0:  # the child: exit status 0 only if its own lookup is answered in time
            code = 1
            try:
                answer = client.lookup("child.fork.example", "A", time.monotonic() + 3)
                code = 0 if answer == Answer((ADDRESS,)) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.lookup("again.fork.example", "A", time.monotonic() + 5) == Answer((ADDRESS,))


def test_transport_off_asks_through_dnspython():
    with Responder(honest) as responder:
        client = responder.client(transport=False)
        for index in range(5):
            assert client.lookup(f"n{index}.off.example", "A", time.monotonic() + 5) == Answer((ADDRESS,))
        assert len({port for port, _, _ in responder.seen}) == 5  # a socket per query, as before


def test_from_resolver_declines_what_it_cannot_speak_for():
    resolver = make_resolver((DnsServer("127.0.0.1", 5353),))
    transport = Transport.from_resolver(resolver)
    assert transport is not None and transport.servers == [("127.0.0.1", 5353)]
    resolver.nameservers = ["https://dns.example/dns-query"]
    assert Transport.from_resolver(resolver) is None


def test_the_dns_benchmark_runs_both_implementations_correctly():
    result = dnsbench.run(lookups=150, threads=4, rounds=1)
    for name in dnsbench.IMPLEMENTATIONS:
        assert result[name]["wrong"] == 0, result[name]["first_wrong"]
        assert result[name]["queries"] == 150
        assert result[name]["cpu_ms_per_lookup"] > 0
        assert result[name]["cpu_ratio"] > 0
    pieces = dnsbench.breakdown(repeat=50)
    assert set(pieces) >= {"response_from_wire", "query_to_wire", "socket_and_selector", "dnswire_decode"}
    assert all(value > 0 for value in pieces.values())
