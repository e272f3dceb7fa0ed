"""How spfmilter asks its DNS servers: a UDP socket per query in the caller's thread, TCP on TC=1.

:class:`~spfmilter.dns.DnsClient` (dns.py) asks through ``DirectTransport.query()``,
which returns :class:`~spfmilter.dnswire.Reply` values and raises dnspython's resolver
exceptions, so the cache, single flight, deadlines and error mapping in dns.py stay in
one place.  Its cost per query is what bench/dnsbench.py measures; the choices:

* Messages are written and read by :mod:`spfmilter.dnswire` (dnspython reads whatever
  that leaves); dnspython's general message code was most of a cold lookup's CPU.
* One connected UDP socket per query, made and closed in the caller's thread.  An
  earlier design (persistent sockets and one I/O thread per process) cost more CPU per
  query than this, because of the thread hand-over per response, and gave a port per
  socket rather than per query (docs/PERFORMANCE.md has the figures).
* Query ids come from :mod:`secrets` and the kernel picks a random ephemeral port for
  each query's socket (RFC 5452 section 9.2: unpredictable id *and* port).  A response
  is accepted only from the server the socket is connected to, with the query's id,
  QR set, opcode QUERY and our question (RFC 5452 section 4); anything else (spoofed,
  late, malformed) is dropped and the caller keeps waiting, as dnspython's resolver does.
* TC=1 (RFC 1035 section 4.2.1, RFC 7766) is retried over TCP to the same server with
  ``dns.query.tcp``: rare, so a connection per query is fine there.
* Servers are tried in order, each once per pass, until one answers or the
  ``lifetime`` is spent; a server that answered with an error (SERVFAIL, REFUSED, a
  broken message over TCP, ...) is not asked again in that call, as in dnspython.
"""
from __future__ import annotations

import ipaddress
import secrets
import socket
import time
from typing import Any, Optional, Sequence, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from . import dnswire

EDNS_PAYLOAD = 1232  # DNS flag day 2020
_RECV_SIZE = 65535


def _norm_address(address: str) -> str:
    """The canonical text form (RFC 5952 for IPv6), which is what ``recvfrom`` reports."""
    return str(ipaddress.ip_address(address))


def servers_of(resolver: dns.resolver.Resolver) -> Optional[list[tuple[str, int]]]:
    """The (address, port) UDP servers of a dnspython resolver; None if it has others (DoH, ...)."""
    servers = []
    for server in resolver.nameservers:
        if isinstance(server, str):
            try:
                address = _norm_address(server)
            except ValueError:
                return None
            servers.append((address, resolver.nameserver_ports.get(server, resolver.port)))
        elif type(server).__name__ == "Do53Nameserver":  # dnspython >= 2.4 (Debian 12 has 2.3)
            plain: Any = server
            servers.append((_norm_address(plain.address), plain.port))
        else:
            return None
    return servers or None


class Transport:
    """Resolve over UDP (TCP on TC=1) straight to :class:`dnswire.Reply` values.

    ``query()`` is what :class:`~spfmilter.dns.DnsClient` calls; how a UDP exchange is
    made is the subclass's business (:class:`DirectTransport`).
    """

    def __init__(self, servers: Sequence[tuple[str, int]], timeout: float, payload: int = EDNS_PAYLOAD):
        if not servers:
            raise ValueError("no DNS servers")
        self.servers = [(_norm_address(address), port) for address, port in servers]
        self.nameservers = [address for address, _ in self.servers]
        self.timeout = timeout
        self.payload = payload

    @classmethod
    def from_resolver(cls, resolver: dns.resolver.Resolver) -> Optional["Transport"]:
        """The transport for ``resolver``'s servers and settings; None if it cannot speak for it."""
        servers = servers_of(resolver)
        if servers is None or resolver.keyname is not None:
            return None
        payload = resolver.payload if resolver.edns >= 0 else 0
        return cls(servers, resolver.timeout, payload)

    def query(self, qname: str, qtype: str, lifetime: float) -> dnswire.Reply:
        """The reply for ``qname``/``qtype`` (NOERROR or NXDOMAIN), asking each server in turn.

        Raises as dnspython's resolver does: ``LifetimeTimeout`` when ``lifetime`` runs out,
        ``YXDOMAIN``, and ``NoNameservers`` when every server answered with an error.
        """
        code = dnswire.QTYPES[qtype]
        try:
            wire_name = dnswire.encode_name(qname)
        except dnswire.Unusual:  # escapes, non-ASCII, bad lengths: dnspython's rules (and errors)
            wire_name = cast(bytes, dns.name.from_text(qname).to_wire())
        end = time.monotonic() + lifetime
        errors: list = []
        live = list(self.servers)
        while live:
            for server in list(live):
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise dns.resolver.LifetimeTimeout(timeout=lifetime, errors=errors)
                try:
                    reply = self._exchange(wire_name, code, server, min(self.timeout, remaining), end)
                except dns.exception.Timeout as exc:
                    errors.append((server[0], False, server[1], exc, None))
                    continue
                except (dns.exception.FormError, EOFError, OSError, NotImplementedError,
                        dns.message.Truncated, dnswire.BadAnswer) as exc:
                    errors.append((server[0], True, server[1], exc, None))
                    live.remove(server)
                    continue
                except dns.exception.DNSException as exc:  # e.g. BadResponse over TCP: try again
                    errors.append((server[0], True, server[1], exc, None))
                    continue
                if reply.rcode in (dnswire.NOERROR, dnswire.NXDOMAIN):
                    return reply
                if reply.rcode == dns.rcode.YXDOMAIN:
                    raise dns.resolver.YXDOMAIN()
                errors.append((server[0], False, server[1], dns.rcode.to_text(dns.rcode.Rcode(reply.rcode)), None))
                live.remove(server)
        request = dns.message.make_query(dns.name.from_wire(wire_name, 0)[0], dns.rdatatype.RdataType(code))
        raise dns.resolver.NoNameservers(request=request, errors=errors)

    def _exchange(self, qname: bytes, qtype: int, server: tuple[str, int], timeout: float,
                  end: float) -> dnswire.Reply:
        outcome = self._udp(qname, qtype, server, timeout)
        if outcome is not dnswire.Truncated:
            return outcome  # type: ignore[return-value]
        # TC=1: ask the same server over TCP, within what is left (RFC 7766 section 5).  Rare,
        # so dnspython's own TCP query (a connection per query) does it.
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise dns.exception.Timeout(timeout=0.0)
        name = dns.name.from_wire(qname, 0)[0]
        if self.payload:
            request = dns.message.make_query(name, dns.rdatatype.RdataType(qtype), use_edns=0, payload=self.payload)
        else:
            request = dns.message.make_query(name, dns.rdatatype.RdataType(qtype))
        response = dns.query.tcp(request, server[0], timeout=min(self.timeout, remaining), port=server[1])
        if response.flags & dns.flags.TC:
            raise dns.message.Truncated(message=response)
        return dnswire.reply_of_message(response, name, qtype)

    def _udp(self, qname: bytes, qtype: int, server: tuple[str, int], timeout: float) -> object:
        raise NotImplementedError


class DirectTransport(Transport):
    """Each query on a UDP socket of its own, sent and received in the caller's thread.

    The socket is connected to the server, so the kernel drops datagrams from any other
    source and reports an ICMP port-unreachable at once; its ephemeral port is picked at
    random by the kernel for every query, and the id comes from :mod:`secrets` (RFC 5452
    section 9.2: unpredictable id *and* port, per query).  A datagram that is not the
    response to our question (wrong id, question or flags) is dropped and the wait goes on
    (RFC 5452 section 4).  No thread, no shared state: nothing to redo after ``fork()``.
    """

    def _udp(self, qname: bytes, qtype: int, server: tuple[str, int], timeout: float) -> object:
        qid = secrets.randbits(16)
        end = time.monotonic() + timeout
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(server)
            sock.send(dnswire.encode_query(qid, qname, qtype, self.payload))
            while True:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise dns.exception.Timeout(timeout=timeout)
                sock.settimeout(remaining)
                try:
                    wire = sock.recv(_RECV_SIZE)
                except socket.timeout:
                    raise dns.exception.Timeout(timeout=timeout) from None
                outcome = dnswire.parse(wire, qid, qname, qtype)
                if outcome is not None:
                    return outcome
