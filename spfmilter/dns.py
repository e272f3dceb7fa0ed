"""The one DNS seam: every lookup SPF evaluation makes goes through :class:`DnsClient`.

It answers ``lookup(name, qtype, deadline)`` with plain Python values in the
shapes pyspf expects (TXT as tuples of bytes, A/AAAA as text, MX as
``(preference, exchange)``, PTR as names), keeps a thread-safe cache that honours
TTLs (and caches NXDOMAIN/NODATA for the SOA's negative TTL, RFC 2308), and
never waits past the caller's deadline.

Concurrent lookups of one name share one query (single flight): the first caller
(the leader) asks, later callers (followers) wait on its outcome, each only until
its own deadline.  Deadlines differ per transaction, so the leader's query runs
within the *leader's* deadline only, and what it shares depends on why it ended:

* an answer (records, NODATA, NXDOMAIN) or a failure the server itself reported
  (SERVFAIL, REFUSED, ...) says something about the name: every follower gets it;
* a time-out (:class:`DnsTimeout`) only says the leader's budget ran out: it is not
  shared.  The followers wake, and one whose deadline still allows asks again as
  the new leader while the rest wait on that query, so one query per name stays in
  flight.  (Letting the first query run on to the latest follower's deadline would
  need it off the leader's thread, i.e. a thread per query; the price of the
  simpler rule is that a follower may wait one more round trip.)
* an unexpected exception stays the leader's own; followers get a DnsTempError
  naming it, never a missing answer.
"""
from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
import dns.rrset

from . import dnswire
from .dnstransport import DirectTransport

SUPPORTED_TYPES = ("A", "AAAA", "MX", "PTR", "TXT")
MAX_CACHE_TTL = 86400
NEGATIVE_TTL_CAP = 3600
# RFC 2308 section 7.1: a server failure may be cached, for at most five minutes.
# A short time keeps a broken domain from costing a query per message.
SERVER_FAILURE_TTL = 30.0
# One unanswered UDP attempt per server is retried after this long, within the budget.
PER_TRY_TIMEOUT = 2.0


class DnsTempError(Exception):
    """The lookup could not be answered now (time-out, SERVFAIL, REFUSED, garbage)."""


class DnsTimeout(DnsTempError):
    """No answer within the caller's own deadline: says nothing about the name, so
    neither cached nor handed to other callers waiting on the same query."""


@dataclass(frozen=True)
class Answer:
    values: tuple
    nxdomain: bool = False
    failure: str = ""  # a cached server failure (SERVFAIL/REFUSED): raise it again


class Lookup(Protocol):
    """The DNS seam SPF evaluation is typed against (verify.Verifier, explain, the DKIM key
    lookups): :class:`DnsClient` in the milter, a dict of answers in pure unit tests."""

    def lookup(self, name: str, qtype: str, deadline: float) -> Answer:
        """The answer for ``name``/``qtype``; DnsTempError when it cannot be had by ``deadline``."""


class _Flight:
    """A lookup in progress; other threads wait on ``done`` for its outcome.

    Once ``done`` is set, ``answer`` or ``error`` holds the outcome to share; neither
    means the leader stopped at its own deadline and the waiters should ask again.
    """

    __slots__ = ("done", "answer", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: Optional[Answer] = None
        self.error: Optional[str] = None


class TtlCache:
    """A bounded LRU map whose entries expire; safe to share between threads."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic):
        self._size = size
        self._clock = clock
        self._data: collections.OrderedDict[tuple[str, str], tuple[float, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str]) -> Any:
        with self._lock:
            entry = self._data.pop(key, None)  # put back below, as the most recently used, unless expired
            if entry is None or entry[0] <= self._clock():
                self.misses += 1
                return None
            self._data[key] = entry
            self.hits += 1
            return entry[1]

    def put(self, key: tuple[str, str], value: Any, ttl: float) -> None:
        self.put_until(key, value, self._clock() + ttl)

    def put_until(self, key: tuple[str, str], value: Any, expiry: float) -> None:
        """Keep ``value`` until ``expiry`` (this cache's clock)."""
        if self._size <= 0 or expiry <= self._clock():
            return
        with self._lock:
            self._data[key] = (expiry, value)
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def expiry(self, key: tuple[str, str]) -> Optional[float]:
        """When ``key``'s entry expires (the cache's clock); None when there is none or it has."""
        with self._lock:
            entry = self._data.get(key)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[0]

    def __len__(self) -> int:
        return len(self._data)


def make_resolver(servers: Sequence = ()) -> dns.resolver.Resolver:
    """A dnspython resolver: the given (address, port) servers, else /etc/resolv.conf."""
    if servers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [server.address for server in servers]
        ports = {server.address: server.port for server in servers}
        resolver.nameserver_ports = ports
        if len(set(ports.values())) == 1:
            resolver.port = next(iter(ports.values()))
    else:
        resolver = dns.resolver.Resolver(configure=True)
    resolver.cache = None  # we keep our own, shared and TTL-aware
    resolver.timeout = PER_TRY_TIMEOUT
    resolver.use_edns(0, 0, 1232)  # EDNS0 with a 1232-byte payload (DNS flag day 2020)
    return resolver


class DnsClient:
    """Resolve names for SPF, with a shared cache and a hard deadline per lookup."""

    def __init__(self, resolver: dns.resolver.Resolver, cache_size: int = 10000,
                 clock: Callable[[], float] = time.monotonic, on_event: Callable[[str], None] = lambda event: None,
                 transport: bool = True):
        # A dnspython resolver's UDP servers are asked through spfmilter's own transport
        # (dnstransport.py) unless ``transport`` is off; anything else (stand-ins in tests,
        # DoH servers) through the resolver's own resolve().
        self._source: Any = _ResolverSource(resolver)
        if transport and isinstance(resolver, dns.resolver.Resolver):
            self._source = DirectTransport.from_resolver(resolver) or self._source
        self._clock = clock
        # "query", "cache-hit", "result-hit", "timeout", "server-failure" (for metrics)
        self._event = on_event
        self.cache = TtlCache(cache_size, clock)
        # SPF results keyed by (client address, domain), each living as long as the first of
        # the DNS answers it used (verify.Verifier fills it): a hot cache then skips pyspf.
        self.spf_results: TtlCache = TtlCache(cache_size, clock)
        self.queries = 0  # upstream queries sent (for tests and the benchmark)
        self._lock = threading.Lock()
        self._flights: dict[tuple[str, str], _Flight] = {}

    def cached_result(self, key: tuple[str, str]) -> Any:
        """The SPF result cached for ``key`` (see :attr:`spf_results`), or None."""
        found = self.spf_results.get(key)
        if found is not None:
            self._event("result-hit")
        return found

    def expiry(self, name: str, qtype: str) -> Optional[float]:
        """When the cached answer for ``name``/``qtype`` expires (this client's clock), or None."""
        return self.cache.expiry((name.lower().rstrip("."), qtype))

    def lookup(self, name: str, qtype: str, deadline: float) -> Answer:
        """Answer for ``name``/``qtype``; raise DnsTempError when it cannot be had in time.

        Never returns later than ``deadline`` (plus the small overrun ``_resolve``
        documents), whether this call asks or waits on another caller's query.
        """
        if qtype not in SUPPORTED_TYPES:
            raise ValueError(f"unsupported query type {qtype}")
        key = (name.lower().rstrip("."), qtype)
        while True:  # ends: every pass returns, raises, or waited for a leader that gave up
            cached: Optional[Answer] = self.cache.get(key)
            if cached is not None:
                self._event("cache-hit")
                if cached.failure:
                    raise DnsTempError(cached.failure)
                return cached
            # One query per name at a time: sessions asking for a name that is already being
            # looked up wait for that answer instead of sending the same query again.
            with self._lock:
                flight = self._flights.get(key)
                if flight is None:
                    own = self._flights[key] = _Flight()
            if flight is None:
                return self._lead(own, key, qtype, deadline)
            if not flight.done.wait(max(0.0, deadline - self._clock())):
                raise DnsTimeout(f"DNS timeout looking up {key[0]}/{qtype}")
            if flight.answer is not None:
                return flight.answer
            if flight.error is not None:
                raise DnsTempError(flight.error)
            # The leader ran out of its own time, which says nothing about ours: ask again
            # (or wait on whoever asks first) if our deadline still allows.
            if deadline - self._clock() <= 0:
                raise DnsTimeout(f"DNS timeout looking up {key[0]}/{qtype}")

    def _lead(self, flight: _Flight, key: tuple[str, str], qtype: str, deadline: float) -> Answer:
        """Ask for ``key`` within our own deadline and publish what others may share."""
        try:
            flight.answer = self._query(key, qtype, deadline)
            return flight.answer
        except DnsTimeout:
            raise  # our budget, not the name's answer: waiters ask again within theirs
        except DnsTempError as exc:
            flight.error = str(exc)
            raise
        except BaseException as exc:
            flight.error = f"DNS lookup of {key[0]}/{qtype} failed: {exc.__class__.__name__}"
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    def _query(self, key: tuple[str, str], qtype: str, deadline: float) -> Answer:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise DnsTimeout("DNS time budget exhausted")
        with self._lock:
            self.queries += 1
        self._event("query")
        try:
            reply = self._resolve(key[0] + ".", qtype, deadline)
        except dns.resolver.LifetimeTimeout:
            self._event("timeout")
            raise DnsTimeout(f"DNS timeout looking up {key[0]}/{qtype}") from None
        except dns.resolver.NoNameservers as exc:
            self._event("server-failure")
            message = f"DNS server failure for {key[0]}/{qtype}: {_rcodes(exc)}"
            self.cache.put(key, Answer((), failure=message), SERVER_FAILURE_TTL)
            raise DnsTempError(message) from None
        except dns.resolver.YXDOMAIN:
            raise DnsTempError(f"DNS name too long after DNAME for {key[0]}") from None
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"DNS error for {key[0]}/{qtype}: {exc.__class__.__name__}") from None
        # RFC 2308 section 5: NXDOMAIN and NODATA live for the SOA's negative TTL (dnswire
        # works it out; 0 without an SOA), capped, as positive answers are (MAX_CACHE_TTL).
        if reply.rcode == dnswire.NXDOMAIN:
            result = Answer((), nxdomain=True)
            self.cache.put(key, result, min(reply.ttl, NEGATIVE_TTL_CAP))
            return result
        result = Answer(reply.values)
        self.cache.put(key, result, min(reply.ttl, MAX_CACHE_TTL if reply.values else NEGATIVE_TTL_CAP))
        return result

    def _resolve(self, qname: str, qtype: str, deadline: float) -> dnswire.Reply:
        """Ask one retry round at a time (each server once), so the deadline holds.

        dnspython's resolver sleeps a back-off that doubles from 0.1 s to 2 s between
        rounds *before* it checks the lifetime, so a single call given the whole budget
        can overrun it by seconds; a call per round overruns by at most the first 0.1 s.
        """
        per_round = self._source.timeout * max(1, len(self._source.nameservers))
        rounds = max(1, math.ceil((deadline - self._clock()) / per_round))
        for _ in range(rounds):  # bounded even if the clock stands still
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            try:
                reply: dnswire.Reply = self._source.query(qname, qtype, min(remaining, per_round))
                return reply
            except dns.resolver.LifetimeTimeout:
                continue
        raise dns.resolver.LifetimeTimeout(timeout=0.0, errors=[])


class _ResolverSource:
    """A resolver with dnspython's ``resolve()`` (a stand-in in tests, or one whose servers the
    transport does not speak for), asked the way :class:`Transport` is."""

    def __init__(self, resolver: Any):
        self.resolver = resolver

    @property
    def timeout(self) -> float:
        return float(self.resolver.timeout)

    @property
    def nameservers(self) -> list:
        return list(self.resolver.nameservers)

    def query(self, qname: str, qtype: str, lifetime: float) -> dnswire.Reply:
        try:
            answer = self.resolver.resolve(qname, qtype, lifetime=lifetime, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            return dnswire.Reply(dnswire.NXDOMAIN, (), _negative_ttl(exc))
        try:
            return dnswire.reply_of_message(answer.response, answer.qname, dnswire.QTYPES[qtype])
        except dnswire.BadAnswer as exc:
            raise dns.exception.FormError(str(exc)) from None


def _convert(qtype: str, rrset: dns.rrset.RRset) -> list:
    """The values of ``rrset`` in the shapes :class:`Answer` holds (as dnswire reads them)."""
    return [dnswire.value_of(dnswire.QTYPES[qtype], rdata) for rdata in rrset]


def _negative_ttl(exc: dns.resolver.NXDOMAIN) -> float:
    """RFC 2308 section 5: negative answers live for min(SOA TTL, SOA MINIMUM)."""
    try:
        for response in exc.responses().values():
            for rrset in response.authority:
                if rrset.rdtype == dns.rdatatype.SOA:
                    return float(min(rrset.ttl, rrset[0].minimum, NEGATIVE_TTL_CAP))
    except Exception:  # a malformed authority section only costs us caching
        return 0.0
    return 0.0


def _rcodes(exc: dns.resolver.NoNameservers) -> str:
    errors = exc.kwargs.get("errors") or []
    described = sorted({str(err[3]) if len(err) > 3 and err[3] else err[0] for err in errors}
                       if errors else set())
    text = ", ".join(str(item) for item in described) or "no usable answer"
    return text[:200]
