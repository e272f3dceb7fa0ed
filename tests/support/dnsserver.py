"""A small authoritative DNS server for tests, bound to loopback only.

Built on dnspython.  It serves per-test zone data over UDP and TCP on the same
port and can inject faults (timeouts, SERVFAIL, REFUSED, forced NXDOMAIN,
truncation, malformed replies) and latency.

Typical use::

    from tests.support.dnsserver import DNSServer

    with DNSServer() as srv:
        srv.add("example.com", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
        srv.fault("dead.example.com", "timeout")
        ... query 127.0.0.1 port srv.port ...

Command line (manual and benchmark use)::

    python -m tests.support.dnsserver --port 5353 --zone zones.json \
        [--latency 0.005] [--host 127.0.0.1]

``zones.json`` holds the ``load()`` form:
``{"example.com": {"TXT": ["v=spf1 -all"], "A": ["192.0.2.1"]}}``.
"""

from __future__ import annotations

import argparse
import heapq
import ipaddress
import itertools
import json
import logging
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable, Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

__all__ = ["DNSServer", "FAULT_MODES"]

log = logging.getLogger(__name__)

# "answer" is the absence of a fault: set for one (name, qtype) it exempts that type from a
# fault set for the whole name or by default_fault (e.g. a name that answers TXT but never
# answers anything else, as the RFC 7208 test suite's TIMEOUT entries describe).
FAULT_MODES = frozenset(
    {"timeout", "servfail", "refused", "nxdomain", "truncate", "malformed", "answer"}
)

_RCODE_FAULTS = {
    "servfail": dns.rcode.SERVFAIL,
    "refused": dns.rcode.REFUSED,
    "nxdomain": dns.rcode.NXDOMAIN,
}

_TXT_LIKE = {dns.rdatatype.TXT, dns.rdatatype.SPF}
_UDP_MIN_PAYLOAD = 512
_MAX_MESSAGE = 65535
_MAX_CNAME_CHAIN = 16
_MAX_TCP_CONNECTIONS = 128
_OUR_EDNS_PAYLOAD = 4096


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _to_name(name: str | dns.name.Name) -> dns.name.Name:
    """Parse a domain name; relative names are taken relative to the root."""
    if isinstance(name, dns.name.Name):
        return name if name.is_absolute() else name.concatenate(dns.name.root)
    if not isinstance(name, str):
        raise TypeError(f"name must be str or dns.name.Name, not {type(name)!r}")
    return dns.name.from_text(name, origin=dns.name.root)


def _name_key(name: str | dns.name.Name) -> str:
    """Normalised text of a name: lower case, no trailing dot ('' for root)."""
    text = _to_name(name).to_text()
    if text.endswith("."):
        text = text[:-1]
    return text.lower()


def _to_rdtype(rtype: str | int) -> dns.rdatatype.RdataType:
    if isinstance(rtype, str):
        return dns.rdatatype.from_text(rtype.strip().upper())
    return dns.rdatatype.RdataType.make(int(rtype))


def _rdtype_text(rtype: str | int) -> str:
    return dns.rdatatype.to_text(_to_rdtype(rtype))


def _chunk255(data: bytes) -> list[bytes]:
    """Split bytes into <=255-byte character-strings (empty -> one empty)."""
    if not data:
        return [b""]
    return [data[i : i + 255] for i in range(0, len(data), 255)]


def _as_bytes(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"TXT strings must be str or bytes, not {type(value)!r}")


def _check_loopback(host: str) -> tuple[str, int]:
    """Return (host, address family); refuse anything but loopback."""
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"DNSServer host must be a loopback IP address, got {host!r}"
        ) from None
    if not addr.is_loopback:
        raise ValueError(f"DNSServer only binds to loopback, refusing {host!r}")
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    return str(addr), family


class _Scheduler:
    """One thread running callables at a given monotonic time (for latency)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, name="dnsserver-scheduler", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # pragma: no cover - defensive
                log.exception("dnsserver: scheduled send failed")


# ---------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------


class DNSServer:
    """Authoritative test DNS server on loopback, UDP and TCP on one port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self._family = _check_loopback(host)
        self._requested_port = int(port)
        self.port: int = 0

        self._lock = threading.RLock()
        # zone data: Name (case-insensitive hash/eq) -> {rdtype: Rdataset}
        self._data: dict[dns.name.Name, dict[int, dns.rdataset.Rdataset]] = {}
        self._ancestors: set | None = None  # see _name_exists; None whenever the stored names change
        # faults: (name_key, qtype_text or None) -> mode
        # Negative answers carry an SOA (RFC 2308) unless a test turns this off.
        self.negative_soa = True
        self.negative_ttl = 300
        self._faults: dict[tuple[str, str | None], str] = {}
        self._default_fault: str | None = None
        self._latency: float = 0.0
        self._name_latency: dict[str, float] = {}
        self._queries: list[tuple[str, str, str]] = []

        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._listener: threading.Thread | None = None
        self._scheduler: _Scheduler | None = None
        self._stop_event = threading.Event()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._started = False
        self._stopped = False
        self._state_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "DNSServer":
        """Bind UDP and TCP on the same port and start serving."""
        with self._state_lock:
            if self._started:
                raise RuntimeError("DNSServer already started")
            self._started = True
        try:
            self._bind()
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._scheduler = _Scheduler()
            self._scheduler.start()
            self._listener = threading.Thread(
                target=self._listen_loop,
                name=f"dnsserver-{self.port}",
                daemon=True,
            )
            self._listener.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _bind(self) -> None:
        attempts = 1 if self._requested_port else 50
        last_error: OSError | None = None
        for _ in range(attempts):
            udp = socket.socket(self._family, socket.SOCK_DGRAM)
            tcp = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                udp.bind((self.host, self._requested_port))
                port = udp.getsockname()[1]
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.host, port))
                tcp.listen(64)
            except OSError as exc:
                udp.close()
                tcp.close()
                last_error = exc
                continue
            udp.setblocking(False)
            tcp.setblocking(False)
            self._udp, self._tcp, self.port = udp, tcp, port
            return
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """Stop serving, close all sockets and join threads.  Idempotent."""
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop_event.set()
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        if self._listener is not None and self._listener.is_alive():
            self._listener.join(timeout=5)
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        with self._lock:
            conns = list(self._conns.items())
        for conn, _ in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for conn, thread in conns:
            thread.join(timeout=5)
            try:
                conn.close()
            except OSError:
                pass
        if self._scheduler is not None:
            self._scheduler.stop()

    def __enter__(self) -> "DNSServer":
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<DNSServer {self.host} port {self.port}>"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def make_resolver(self, timeout: float = 2.0, lifetime: float | None = None):
        """Convenience: a dnspython Resolver pointed only at this server."""
        import dns.resolver

        res = dns.resolver.Resolver(configure=False)
        res.port = self.port
        res.nameservers = [self.host]
        res.timeout = timeout
        res.lifetime = lifetime if lifetime is not None else timeout
        res.cache = None
        return res

    # -- zone data ---------------------------------------------------------

    def _make_rdatas(self, rdtype: int, value: Any) -> list[dns.rdata.Rdata]:
        rdclass = dns.rdataclass.IN
        if isinstance(value, dns.rdata.Rdata):
            return [value]
        if rdtype in _TXT_LIKE:
            if isinstance(value, (list, tuple)):
                strings: list[bytes] = []
                for part in value:
                    strings.extend(_chunk255(_as_bytes(part)))
            else:
                strings = _chunk255(_as_bytes(value))
            return [dns.rdtypes.ANY.TXT.TXT(rdclass, rdtype, strings)]
        if isinstance(value, (list, tuple)):
            out: list[dns.rdata.Rdata] = []
            for item in value:
                out.extend(self._make_rdatas(rdtype, item))
            return out
        if isinstance(value, bytes):
            value = value.decode("ascii")
        return [
            dns.rdata.from_text(
                rdclass, rdtype, str(value), origin=dns.name.root, relativize=False
            )
        ]

    def _add_rdatas(
        self, name: str | dns.name.Name, rdtype: int, rdatas: Iterable[dns.rdata.Rdata], ttl: int
    ) -> None:
        qname = _to_name(name)
        with self._lock:
            if qname not in self._data:
                self._ancestors = None
            node = self._data.setdefault(qname, {})
            rds = node.get(rdtype)
            if rds is None:
                rds = node[rdtype] = dns.rdataset.Rdataset(dns.rdataclass.IN, rdtype)
            for rd in rdatas:
                rds.add(rd, ttl)

    def add(
        self, name: str | dns.name.Name, rtype: str | int, value: Any, ttl: int = 300
    ) -> None:
        """Add one record.

        TXT/SPF: ``value`` is the text itself (not zone-file syntax); a str
        or bytes gives one record (split into 255-byte character-strings if
        needed), a list gives ONE record made of several character-strings.
        Other types: ``value`` is presentation format relative to the root
        (e.g. ``"10 mx.example.com"``); a list adds several records.  A
        ``dns.rdata.Rdata`` instance is added as is.
        """
        rdtype = _to_rdtype(rtype)
        self._add_rdatas(name, rdtype, self._make_rdatas(rdtype, value), ttl)

    def add_raw_txt(
        self, name: str | dns.name.Name, strings: Iterable[bytes], ttl: int = 300
    ) -> None:
        """Add one TXT record whose character-strings are exactly ``strings``."""
        parts = [bytes(s) for s in strings]
        for part in parts:
            if len(part) > 255:
                raise ValueError("a raw character-string must be <= 255 bytes")
        rd = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, parts)
        self._add_rdatas(name, dns.rdatatype.TXT, [rd], ttl)

    def load(self, zones: dict[str, dict[str, Any]], ttl: int = 300,
             ttls: dict[str, int] | None = None) -> None:
        """Bulk add: ``{name: {type: [value, ...]}}`` (added to existing data); ``ttls`` gives
        some names their own TTL (``{name: seconds}``), the others get ``ttl``."""
        ttls = ttls or {}
        for name, rrsets in zones.items():
            name_ttl = ttls.get(name, ttl)
            for rtype, values in rrsets.items():
                if not isinstance(values, (list, tuple)):
                    values = [values]
                for value in values:
                    self.add(name, rtype, value, ttl=name_ttl)

    def remove(self, name: str | dns.name.Name, rtype: str | int | None = None) -> None:
        """Remove all records of a type (or all types) at a name."""
        qname = _to_name(name)
        with self._lock:
            self._ancestors = None
            if rtype is None:
                self._data.pop(qname, None)
                return
            node = self._data.get(qname)
            if node is not None:
                node.pop(_to_rdtype(rtype), None)
                if not node:
                    del self._data[qname]

    def clear(self) -> None:
        """Drop all records, faults and latency settings (the query log stays)."""
        with self._lock:
            self._data.clear()
            self._ancestors = None
            self._faults.clear()
            self._default_fault = None
            self._latency = 0.0
            self._name_latency.clear()

    # -- faults and latency --------------------------------------------------

    def fault(
        self, name: str | dns.name.Name, mode: str | None, qtype: str | int | None = None
    ) -> None:
        """Inject a fault for ``name`` (and ``qtype``, None = all types).

        ``mode=None`` removes the fault.  ``mode="answer"`` with a ``qtype`` answers that
        type normally even though the name (or ``default_fault``) has a fault.
        """
        key = (_name_key(name), None if qtype is None else _rdtype_text(qtype))
        with self._lock:
            if mode is None:
                self._faults.pop(key, None)
                return
            mode = mode.lower()
            if mode not in FAULT_MODES:
                raise ValueError(f"unknown fault mode {mode!r}")
            self._faults[key] = mode

    def clear_faults(self) -> None:
        """Remove all per-name faults and the default fault."""
        with self._lock:
            self._faults.clear()
            self._default_fault = None

    @property
    def default_fault(self) -> str | None:
        return self._default_fault

    @default_fault.setter
    def default_fault(self, mode: str | None) -> None:
        if mode is not None:
            mode = mode.lower()
            if mode not in FAULT_MODES:
                raise ValueError(f"unknown fault mode {mode!r}")
        with self._lock:
            self._default_fault = mode

    @property
    def latency(self) -> float:
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        seconds = float(seconds or 0.0)
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            self._latency = seconds

    def set_latency(self, name: str | dns.name.Name, seconds: float | None) -> None:
        """Per-name delay; replaces the global latency for that name.

        ``None`` removes the per-name setting.
        """
        key = _name_key(name)
        with self._lock:
            if seconds is None:
                self._name_latency.pop(key, None)
            else:
                if seconds < 0:
                    raise ValueError("latency must be >= 0")
                self._name_latency[key] = float(seconds)

    # -- query log ---------------------------------------------------------

    @property
    def queries(self) -> list[tuple[str, str, str]]:
        """Snapshot of (qname, qtype, proto) in arrival order."""
        with self._lock:
            return list(self._queries)

    def query_count(
        self, name: str | dns.name.Name | None = None, qtype: str | int | None = None
    ) -> int:
        nkey = None if name is None else _name_key(name)
        tkey = None if qtype is None else _rdtype_text(qtype)
        with self._lock:
            return sum(
                1
                for qn, qt, _ in self._queries
                if (nkey is None or qn == nkey) and (tkey is None or qt == tkey)
            )

    def reset_queries(self) -> None:
        with self._lock:
            self._queries.clear()

    # -- answering -----------------------------------------------------------

    def _name_exists(self, name: dns.name.Name) -> bool:
        """True if name has records or is an empty non-terminal."""
        if name in self._data:
            return True
        # The set of every stored name's ancestors, rebuilt when the stored names change
        # (a scan of all names per query is too slow for the benchmark's 200,000-name worlds).
        if self._ancestors is None:
            ancestors: set = set()
            for stored in self._data:
                parent = stored
                while len(parent) > 1:
                    parent = parent.parent()
                    if parent in ancestors:
                        break
                    ancestors.add(parent)
            self._ancestors = ancestors
        return name in self._ancestors

    def _lookup(
        self, qname: dns.name.Name, qtype: int
    ) -> tuple[int, list[dns.rrset.RRset]]:
        """Return (rcode, answer rrsets).  Caller holds the lock."""
        if not self._name_exists(qname):
            return dns.rcode.NXDOMAIN, []
        answer: list[dns.rrset.RRset] = []
        seen: set[dns.name.Name] = set()
        name = qname
        for _ in range(_MAX_CNAME_CHAIN):
            seen.add(name)
            node = self._data.get(name, {})
            if qtype == dns.rdatatype.ANY and node:
                for rds in node.values():
                    answer.append(dns.rrset.from_rdata_list(name, rds.ttl, list(rds)))
                break
            rds = node.get(qtype)
            if rds is not None:
                answer.append(dns.rrset.from_rdata_list(name, rds.ttl, list(rds)))
                break
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None or qtype == dns.rdatatype.CNAME:
                break  # NODATA at the end of the chain
            answer.append(dns.rrset.from_rdata_list(name, cname.ttl, list(cname)))
            target = next(iter(cname)).target
            if target in seen or not self._name_exists(target):
                break  # loop, or target outside our data: stop here
            name = target
        return dns.rcode.NOERROR, answer

    def _fault_for(self, qkey: str, tkey: str) -> str | None:
        mode = self._faults.get((qkey, tkey))
        if mode is None:
            mode = self._faults.get((qkey, None))
        if mode is None:
            mode = self._default_fault
        return None if mode == "answer" else mode

    def _handle(self, wire: bytes, proto: str) -> tuple[bytes | None, float]:
        """Process one query.  Returns (reply wire or None to drop, delay)."""
        try:
            query = dns.message.from_wire(wire)
        except Exception as exc:
            log.debug("dnsserver: ignoring unparseable %s packet: %r", proto, exc)
            return None, 0.0
        if query.flags & dns.flags.QR:
            return None, 0.0  # a response, not a query: never answer those
        try:
            response = dns.message.make_response(query, our_payload=_OUR_EDNS_PAYLOAD)
        except Exception as exc:
            log.debug("dnsserver: cannot build response: %r", exc)
            return None, 0.0
        response.flags |= dns.flags.AA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return self._render(response, query, proto), 0.0
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return self._render(response, query, proto), 0.0

        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        qkey, tkey = _name_key(qname), dns.rdatatype.to_text(qtype)
        with self._lock:
            self._queries.append((qkey, tkey, proto))
            mode = self._fault_for(qkey, tkey)
            delay = self._name_latency.get(qkey, self._latency)
            if mode is None or mode == "truncate":
                rcode, answer = self._lookup(qname, qtype)
            else:
                rcode, answer = dns.rcode.NOERROR, []

        if mode == "timeout":
            return None, 0.0
        if mode == "malformed":
            # id, QR|AA|RD flags, claims 1 question and 1 answer, then junk
            # that ends inside a compression pointer: not a valid message.
            garbage = struct.pack("!HHHHHH", query.id, 0x8500, 1, 1, 0, 0)
            return garbage + b"\x07garbage\xc0", delay
        if mode in _RCODE_FAULTS:
            response.set_rcode(_RCODE_FAULTS[mode])
            return self._render(response, query, proto), delay
        if mode == "truncate" and proto == "udp":
            response.flags |= dns.flags.TC
            return self._render(response, query, proto), delay

        response.set_rcode(rcode)
        response.answer = answer
        if self.negative_soa and not any(rrset.rdtype == qtype for rrset in answer):
            # RFC 2308 section 3: NXDOMAIN and NODATA answers carry the zone's SOA, whose
            # MINIMUM (and TTL) bound how long resolvers may cache the negative answer.
            response.authority = [self._negative_soa_rrset(qname)]
        return self._render(response, query, proto), delay

    def resolve(self, name: str, rtype: str) -> tuple[str, list[dns.rrset.RRset]]:
        """What a query for ``name``/``rtype`` would get, in process (nothing on the wire, no
        latency): ``("answer", rrsets)`` (CNAMEs followed; NODATA is an empty list),
        ``("nxdomain", [])``, or the fault set for it ("servfail", "timeout", ...).  The query
        is logged like one from the network, with protocol "local"."""
        qname, qtype = _to_name(name), _to_rdtype(rtype)
        qkey, tkey = _name_key(qname), dns.rdatatype.to_text(qtype)
        with self._lock:
            self._queries.append((qkey, tkey, "local"))
            mode = self._fault_for(qkey, tkey)
            if mode not in (None, "truncate"):
                return mode, []
            rcode, answer = self._lookup(qname, qtype)
        return ("nxdomain" if rcode == dns.rcode.NXDOMAIN else "answer"), answer

    def _negative_soa_rrset(self, qname: dns.name.Name) -> dns.rrset.RRset:
        labels = qname.labels
        apex = dns.name.Name(labels[-3:]) if len(labels) >= 3 else qname  # the last two labels
        ttl = int(self.negative_ttl)
        return dns.rrset.from_text(apex, ttl, "IN", "SOA",
                                   f"ns.{apex.to_text()} hostmaster.{apex.to_text()} 1 3600 600 86400 {ttl}")

    @staticmethod
    def _udp_limit(query: dns.message.Message) -> int:
        if query.edns >= 0:
            return min(max(query.payload, _UDP_MIN_PAYLOAD), _MAX_MESSAGE)
        return _UDP_MIN_PAYLOAD

    def _render(
        self, response: dns.message.Message, query: dns.message.Message, proto: str
    ) -> bytes | None:
        limit = self._udp_limit(query) if proto == "udp" else _MAX_MESSAGE
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            pass
        except Exception as exc:
            log.debug("dnsserver: cannot render response: %r", exc)
            return None
        # Too big: truncated reply with no records (TCP: cannot do better).
        response.answer = []
        response.authority = []
        response.additional = []
        response.flags |= dns.flags.TC
        try:
            return response.to_wire(max_size=limit)
        except Exception as exc:  # pragma: no cover - defensive
            log.debug("dnsserver: cannot render truncated response: %r", exc)
            return None

    # -- I/O loops -----------------------------------------------------------

    def _listen_loop(self) -> None:
        assert self._udp and self._tcp and self._wake_r
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._udp, selectors.EVENT_READ, "udp")
            sel.register(self._tcp, selectors.EVENT_READ, "tcp")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._stop_event.is_set():
                try:
                    events = sel.select()
                except OSError:
                    if self._stop_event.is_set():
                        return
                    raise
                for key, _ in events:
                    if key.data == "udp":
                        self._drain_udp()
                    elif key.data == "tcp":
                        self._accept_tcp()
                    else:
                        return
        except Exception:  # pragma: no cover - defensive
            log.exception("dnsserver: listener loop crashed")
        finally:
            sel.close()

    def _drain_udp(self) -> None:
        assert self._udp is not None
        while not self._stop_event.is_set():
            try:
                wire, addr = self._udp.recvfrom(_MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("dnsserver: udp recv error: %r", exc)
                return
            try:
                reply, delay = self._handle(wire, "udp")
            except Exception:  # pragma: no cover - defensive
                log.exception("dnsserver: error handling udp query")
                continue
            if reply is None:
                continue
            if delay > 0:
                assert self._scheduler is not None
                self._scheduler.call_later(
                    delay, lambda r=reply, a=addr: self._udp_send(r, a)
                )
            else:
                self._udp_send(reply, addr)

    def _udp_send(self, reply: bytes, addr: Any) -> None:
        if self._stop_event.is_set() or self._udp is None:
            return
        try:
            self._udp.sendto(reply, addr)
        except OSError as exc:
            log.debug("dnsserver: udp send error: %r", exc)

    def _accept_tcp(self) -> None:
        assert self._tcp is not None
        while not self._stop_event.is_set():
            try:
                conn, _ = self._tcp.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("dnsserver: tcp accept error: %r", exc)
                return
            conn.setblocking(True)
            with self._lock:
                if len(self._conns) >= _MAX_TCP_CONNECTIONS:
                    conn.close()
                    continue
                thread = threading.Thread(
                    target=self._serve_tcp,
                    args=(conn,),
                    name=f"dnsserver-{self.port}-tcp",
                    daemon=True,
                )
                self._conns[conn] = thread
            thread.start()

    @staticmethod
    def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _serve_tcp(self, conn: socket.socket) -> None:
        """Serve length-prefixed queries on one connection, in order."""
        try:
            while not self._stop_event.is_set():
                header = self._recv_exact(conn, 2)
                if header is None:
                    return
                (length,) = struct.unpack("!H", header)
                wire = self._recv_exact(conn, length) if length else b""
                if wire is None:
                    return
                try:
                    reply, delay = self._handle(wire, "tcp")
                except Exception:  # pragma: no cover - defensive
                    log.exception("dnsserver: error handling tcp query")
                    continue
                if reply is None:
                    continue  # "timeout": keep the connection, never answer
                if delay > 0 and self._stop_event.wait(delay):
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError as exc:
            log.debug("dnsserver: tcp connection error: %r", exc)
        except Exception:  # pragma: no cover - defensive
            log.exception("dnsserver: tcp connection handler crashed")
        finally:
            with self._lock:
                self._conns.pop(conn, None)
            try:
                conn.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.dnsserver",
        description="Loopback-only authoritative DNS server for tests.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--zone", help="JSON file in DNSServer.load() form")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds")
    parser.add_argument("--ttl", type=int, default=300)
    parser.add_argument("--ttls", help="JSON file {name: ttl}: per-name TTLs (the others get --ttl)")
    parser.add_argument("--faults", help="JSON file: a list of [name, mode] or [name, mode, qtype]")
    parser.add_argument("--stats-file", help="write {\"queries\": N, ...} as JSON here on exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    server = DNSServer(host=args.host, port=args.port)
    if args.zone:
        with open(args.zone, encoding="utf-8") as fh:
            zones = json.load(fh)
        ttls = None
        if args.ttls:
            with open(args.ttls, encoding="utf-8") as fh:
                ttls = json.load(fh)
        server.load(zones, ttl=args.ttl, ttls=ttls)
    server.latency = args.latency
    if args.faults:
        with open(args.faults, encoding="utf-8") as fh:
            for entry in json.load(fh):
                server.fault(entry[0], entry[1], qtype=entry[2] if len(entry) > 2 else None)

    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server.start()
    try:
        print(f"listening on {server.host} {server.port}", flush=True)
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
        if args.stats_file:
            queries = server.queries
            with open(args.stats_file, "w", encoding="utf-8") as fh:
                json.dump({"queries": len(queries),
                           "distinct": len({(name, qtype) for name, qtype, _ in queries})}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
