"""One long-lived DNS transport per worker: persistent UDP sockets, one I/O thread, TCP on TC=1.

:class:`DnsClient` (dns.py) asks through ``Transport.resolve()``, which has the
shape of dnspython's ``Resolver.resolve()`` (same answers, same exceptions), so the
cache, single flight, deadlines and error mapping in dns.py stay as they are.  What
changes is the cost of a query: dnspython's resolver opens a UDP socket, builds a
selector and draws a ``SystemRandom`` id for every lookup; here a few UDP sockets are
opened once, one daemon thread receives on all of them, and each caller waits on a
lock of its own with its own time-out.

* Query ids come from :mod:`secrets` and each socket is bound to an ephemeral port
  the kernel picks at random (RFC 5452 section 9.2: unpredictable id *and* port).
* A response is accepted only from the server the query went to, with the query's
  id, and only when dnspython's ``Message.is_response()`` agrees (QR set, same id,
  opcode and question; RFC 5452 section 4).  Anything else (spoofed, late, malformed)
  is dropped and the caller keeps waiting, as dnspython's resolver does
  (``ignore_unexpected``/``ignore_errors``).
* TC=1 (RFC 1035 section 4.2.1, RFC 7766) is retried over TCP to the same server with
  ``dns.query.tcp``: rare, so a connection per query is fine there.
* Servers are tried in order, each once per pass, until one answers or the
  ``lifetime`` is spent; a server that answered with an error (SERVFAIL, REFUSED, a
  broken message over TCP, ...) is not asked again in that call, as in dnspython.
* Sockets and the thread are created on the first query, in the process that makes
  it: workers are forked from the supervisor, and a transport copied by ``fork()``
  starts afresh in the child (a thread does not survive ``fork()``).
"""
from __future__ import annotations

import ipaddress
import os
import secrets
import selectors
import socket
import threading
import time
import weakref
from typing import Any, Optional, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

SOCKETS_PER_FAMILY = 4
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


class _Pending:
    """A query awaiting its response: the I/O thread fills ``outcome`` and releases ``ready``."""

    __slots__ = ("request", "ready", "outcome")

    def __init__(self, request: dns.message.Message) -> None:
        self.request = request
        self.ready = threading.Lock()
        self.ready.acquire()
        self.outcome: object = None  # a Message, or a dns.message.Truncated


class _Io:
    """The sockets, the pending queries and the receiving thread of one process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.pending: dict[tuple[int, str, int], _Pending] = {}
        self.selector = selectors.DefaultSelector()
        self.sockets: dict[int, list[socket.socket]] = {}
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="dns-io", daemon=True)
        self.thread.start()

    def sockets_for(self, family: int) -> list[socket.socket]:
        with self.lock:
            found = self.sockets.get(family)
            if found is None:
                found = self.sockets[family] = []
                for _ in range(SOCKETS_PER_FAMILY):
                    sock = socket.socket(family, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                    # Port 0: Linux picks the ephemeral port at random (RFC 5452 section 9.2).
                    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
                    found.append(sock)
                    self.selector.register(sock, selectors.EVENT_READ)
                self.wake_w.send(b"x")  # let the thread select on the new sockets
            return found

    def _run(self) -> None:
        while not self.closed:
            try:
                events = self.selector.select()
            except (OSError, ValueError):
                if self.closed:
                    break
                raise
            for key, _ in events:
                sock = key.fileobj
                if sock is self.wake_r:
                    try:
                        self.wake_r.recv(512)
                    except BlockingIOError:
                        pass
                    continue
                self._receive(sock)  # type: ignore[arg-type]
        self._close_sockets()

    def _receive(self, sock: socket.socket) -> None:
        """One datagram (epoll is level-triggered: more waiting ones come in the next round)."""
        try:
            wire, source = sock.recvfrom(_RECV_SIZE)
        except OSError:  # nothing there after all, or an ICMP error queued on the socket
            return
        if len(wire) < 12:
            return
        # Server addresses are kept in the text form the kernel reports (see _norm_address).
        key = (int.from_bytes(wire[:2], "big"), source[0], source[1])
        with self.lock:
            pending = self.pending.get(key)
        if pending is None:
            return  # unexpected source or id: dropped (RFC 5452 section 4)
        outcome = _parse(pending.request, wire)
        if outcome is None:
            return
        with self.lock:
            if self.pending.get(key) is not pending:
                return  # the caller gave up meanwhile
            del self.pending[key]
        pending.outcome = outcome
        pending.ready.release()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.pid != os.getpid():  # a copy from before fork(): no thread here, just drop the fds
            self._close_sockets(locked=False)
            return
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass

    def _close_sockets(self, locked: bool = True) -> None:
        # In a forked child the lock may have been copied while held by the parent's thread,
        # which does not exist here: nothing else runs on this copy, so it is not taken.
        if locked:
            with self.lock:
                socks = [sock for group in self.sockets.values() for sock in group]
                self.sockets.clear()
        else:
            socks = [sock for group in self.sockets.values() for sock in group]
        for sock in socks:
            sock.close()
        self.selector.close()
        self.wake_r.close()
        self.wake_w.close()


def _parse(request: dns.message.Message, wire: bytes) -> object:
    """The response to ``request`` in ``wire``, a Truncated for TC=1, or None to ignore it."""
    try:
        response = dns.message.from_wire(wire, raise_on_truncation=True)
    except dns.message.Truncated as exc:
        return exc if request.is_response(exc.message()) else None
    except Exception:  # malformed: ignored, the caller keeps waiting (as dnspython does)
        return None
    return response if request.is_response(response) else None


class Transport:
    """Resolve over persistent sockets; a drop-in for ``Resolver.resolve`` as dns.py uses it."""

    def __init__(self, servers: Sequence[tuple[str, int]], timeout: float, payload: int = EDNS_PAYLOAD):
        if not servers:
            raise ValueError("no DNS servers")
        self.servers = [(_norm_address(address), port) for address, port in servers]
        self.nameservers = [address for address, _ in self.servers]
        self.timeout = timeout
        self.payload = payload
        self._io: Optional[_Io] = None
        self._start_lock = threading.Lock()
        self._finalizer: Optional[weakref.finalize] = None

    @classmethod
    def from_resolver(cls, resolver: dns.resolver.Resolver) -> Optional["Transport"]:
        """The transport for ``resolver``'s servers and settings; None if it cannot speak for it."""
        servers = servers_of(resolver)
        if servers is None or resolver.keyname is not None:
            return None
        payload = resolver.payload if resolver.edns >= 0 else 0
        return cls(servers, resolver.timeout, payload)

    def close(self) -> None:
        with self._start_lock:
            if self._io is not None:
                self._io.close()
                self._io = None

    def _running(self) -> _Io:
        io = self._io
        if io is not None and io.pid == os.getpid():
            return io
        with self._start_lock:
            if self._io is not None and self._io.pid != os.getpid():
                self._io.close()  # inherited through fork(): its thread stayed in the parent
                self._io = None
            if self._io is None:
                self._io = _Io()
                if self._finalizer is not None:
                    self._finalizer.detach()
                self._finalizer = weakref.finalize(self, self._io.close)
            return self._io

    def resolve(self, qname: dns.name.Name | str, rdtype: Any, lifetime: float, raise_on_no_answer: bool = False,
                search: bool = False) -> dns.resolver.Answer:
        """Like ``Resolver.resolve(qname, rdtype, lifetime=..., raise_on_no_answer=False)``."""
        del raise_on_no_answer, search  # always False here: dns.py handles NODATA itself
        name = qname if isinstance(qname, dns.name.Name) else dns.name.from_text(qname)
        rdtype = dns.rdatatype.RdataType.make(rdtype)
        end = time.monotonic() + lifetime
        errors: list = []
        live = list(self.servers)
        request = self._request(name, rdtype)
        while live:
            for server in list(live):
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise dns.resolver.LifetimeTimeout(timeout=lifetime, errors=errors)
                try:
                    response = self._exchange(request, server, min(self.timeout, remaining), end)
                except dns.exception.Timeout as exc:
                    errors.append((server[0], False, server[1], exc, None))
                    continue
                except (dns.exception.FormError, EOFError, OSError, NotImplementedError,
                        dns.message.Truncated) as exc:
                    errors.append((server[0], True, server[1], exc, None))
                    live.remove(server)
                    continue
                except dns.exception.DNSException as exc:  # e.g. BadResponse over TCP: try again
                    errors.append((server[0], True, server[1], exc, None))
                    continue
                answer = self._judge(name, rdtype, response, server, errors)
                if answer is not None:
                    return answer
                live.remove(server)
        raise dns.resolver.NoNameservers(request=request, errors=errors)

    def _request(self, name: dns.name.Name, rdtype: Any) -> dns.message.QueryMessage:
        # id=0 spares dnspython's own random draw: _udp() sets a fresh id per attempt.
        if self.payload:
            return dns.message.make_query(name, rdtype, use_edns=0, payload=self.payload, id=0)
        return dns.message.make_query(name, rdtype, id=0)

    def _exchange(self, request: dns.message.Message, server: tuple[str, int], timeout: float,
                  end: float) -> dns.message.Message:
        outcome = self._udp(request, server, timeout)
        if isinstance(outcome, dns.message.Truncated):
            # TC=1: ask the same server over TCP, within what is left (RFC 7766 section 5).
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise dns.exception.Timeout(timeout=0.0)
            response = dns.query.tcp(request, server[0], timeout=min(self.timeout, remaining), port=server[1])
            if response.flags & dns.flags.TC:
                raise dns.message.Truncated(message=response)
            return response
        return outcome  # type: ignore[return-value]

    def _udp(self, request: dns.message.Message, server: tuple[str, int], timeout: float) -> object:
        io = self._running()
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        sockets = io.sockets_for(family)
        pending = _Pending(request)
        with io.lock:
            while True:  # an id not in use towards this server (RFC 5452 section 9.2: random ids)
                request.id = secrets.randbits(16)
                key = (request.id, server[0], server[1])
                if key not in io.pending:
                    break
            io.pending[key] = pending
        try:
            secrets.choice(sockets).sendto(request.to_wire(), server)
        except OSError:
            with io.lock:
                io.pending.pop(key, None)
            raise
        if pending.ready.acquire(timeout=max(0.0, timeout)):
            return pending.outcome
        with io.lock:
            if io.pending.get(key) is pending:
                del io.pending[key]
                raise dns.exception.Timeout(timeout=timeout)
        pending.ready.acquire()  # answered just as we gave up: the outcome is set
        return pending.outcome

    def _judge(self, name: dns.name.Name, rdtype: Any, response: Any, server: tuple[str, int],
               errors: list) -> Optional[dns.resolver.Answer]:
        """dnspython's reading of a response (its ``_Resolution.query_result``)."""
        rcode = response.rcode()
        try:
            if rcode == dns.rcode.NOERROR:
                return dns.resolver.Answer(name, rdtype, dns.rdataclass.IN, response, server[0], server[1])
            if rcode == dns.rcode.NXDOMAIN:
                dns.resolver.Answer(name, dns.rdatatype.ANY, dns.rdataclass.IN, response)  # validates
        except Exception as exc:  # e.g. a CNAME chain too long: this server's answer is no good
            errors.append((server[0], False, server[1], exc, response))
            return None
        if rcode == dns.rcode.NXDOMAIN:
            raise dns.resolver.NXDOMAIN(qnames=[name], responses={name: response})
        if rcode == dns.rcode.YXDOMAIN:
            raise dns.resolver.YXDOMAIN()
        errors.append((server[0], False, server[1], dns.rcode.to_text(rcode), response))
        return None
