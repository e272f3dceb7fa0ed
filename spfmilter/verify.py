"""SPF verification of the HELO and MAIL FROM identities (RFC 7208), on pyspf.

pyspf supplies the evaluation itself (mechanisms, macros, ``exp=``, the limits of
section 4.6.4).  This module feeds it the right identities, routes every DNS
lookup through our :class:`~spfmilter.dns.Lookup` under one time budget per
transaction, and turns its answers into :class:`SpfOutcome` values.
"""
from __future__ import annotations

import enum
import ipaddress
import logging
import re
import time
from dataclasses import dataclass, replace
from functools import lru_cache, reduce
from typing import Callable, Optional

import spf

from .config import is_hostname
from .dns import Lookup, DnsTempError

log = logging.getLogger("spfmilter.verify")


class SpfResult(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"

    @property
    def logged(self) -> str:
        """The capitalised form policyd-spf style logs use (``Pass``, ``PermError``)."""
        return {"softfail": "Softfail", "permerror": "PermError", "temperror": "TempError"}.get(
            self.value, self.value.capitalize())


class Identity(str, enum.Enum):
    HELO = "helo"  # RFC 7208 section 2.3
    MAILFROM = "mailfrom"  # RFC 7208 section 2.4


@dataclass(frozen=True)
class SpfOutcome:
    identity: Identity
    result: SpfResult
    domain: str  # the domain whose policy was evaluated ("" when none could be)
    sender: str  # the identity as checked: MAIL FROM address, or postmaster@<helo>
    mechanism: Optional[str] = None  # the term that matched; "default" when none did
    explanation: Optional[str] = None  # the domain's own exp= text (fail only)
    problem: Optional[str] = None  # why: permerror/temperror detail, or why no check was made
    checked: bool = True  # False: check_identities turned this identity off (no header, no log line)


def not_checked(identity: Identity, domain: str, sender: str) -> SpfOutcome:
    """The outcome of an identity that check_identities leaves out: no SPF statement at all."""
    return SpfOutcome(identity, SpfResult.NONE, domain, sender,
                      problem="not checked (check_identities)", checked=False)


class _Query(spf.query):
    """pyspf's query, with every DNS lookup sent through our Lookup by a deadline (the clock's time)."""

    def __init__(self, ip: str, sender: str, helo: str, client: Lookup, deadline: float,
                 receiver: str):
        super().__init__(ip, sender, helo, receiver=receiver, querytime=0)
        self._client = client
        self._deadline = deadline
        self.looked_up: list[tuple[str, str]] = []  # every DNS lookup made, for the result cache
        self.uses_macros = False  # a TXT answer held "%" or "exp=": the result may depend on the sender

    def dns(self, name: str, qtype: str, cnames: Optional[dict] = None, ignore_void: bool = False) -> list:
        """Look ``name`` up; count void lookups as RFC 7208 section 4.6.4 asks."""
        name = str(name).rstrip(".")
        # pyspf treats names with empty or over-long labels as giving no data.
        if not name or not reduce(lambda ok, label: ok and 0 < len(label) < 64, name.split("."), True):
            return []
        try:
            answer = self._client.lookup(name, qtype, self._deadline)
        except DnsTempError as exc:
            raise spf.TempError(str(exc)) from None
        self.looked_up.append((name, qtype))
        if qtype == "TXT" and not self.uses_macros:
            self.uses_macros = any(b"%" in chunk or b"exp=" in chunk.lower() for value in answer.values
                                   for chunk in value)
        result = list(answer.values)
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result

    def validated_ptrs(self) -> list[str]:
        """The client's validated domain names, for ``ptr`` and ``%{p}`` (RFC 7208 section 5.5).

        pyspf lets any DNS error here end the whole check in temperror.  Section 5.5 says
        otherwise: a DNS error in the PTR lookup means no names (the mechanism does not
        match, and section 7.3 makes ``%{p}`` "unknown"), and a name whose address lookup
        fails -- e.g. a CNAME loop (RFC 1034 section 3.6.2) -- is skipped and the search
        goes on.  At most the first 10 PTR names are looked at (section 4.6.4).
        """
        try:
            names = self.dns_ptr(self.i)
        except spf.TempError:
            return []
        validated = []
        for name in names[:spf.MAX_PTR]:
            try:
                addresses = self.dns_a(name, self.A)
            except spf.TempError:
                continue
            if self.cidrmatch(addresses, self.cidrmax):
                validated.append(name)
        return validated


@dataclass(frozen=True)
class Address:
    """An envelope address split for SPF; ``local`` is "" for the null sender."""

    local: str
    domain: str

    @property
    def text(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local


def parse_envelope_address(raw: str) -> Address:
    """Strip angle brackets and any source route (RFC 5321 section 4.1.2) from MAIL FROM.

    The split is at the last '@' so quoted local parts such as ``"a@b"@example.org``
    keep their domain; an address with no '@' has an empty domain.
    """
    text = raw.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if text.startswith("@") and ":" in text:  # <@relay1,@relay2:user@domain>
        text = text.split(":", 1)[1]
    local, at, domain = text.rpartition("@")
    if not at:
        return Address(text, "")
    return Address(local, domain.rstrip("."))


@lru_cache(maxsize=4096)  # pure, and asked for the same names over and over (hot path)
def is_spf_domain(domain: str) -> bool:
    """RFC 7208 section 4.3: only a multi-label, well-formed domain name is checked."""
    if not is_hostname(domain) or "." not in domain.rstrip("."):
        return False
    top = domain.rstrip(".").rsplit(".", 1)[-1]
    return not top.isdigit()  # "192.0.2.1" is an address, not a domain


@lru_cache(maxsize=4096)  # pure; the same client addresses come back
def normalise_ip(text: str) -> str:
    """Client address as text, with IPv4-mapped IPv6 turned back into IPv4."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(address)


class Verifier:
    """Evaluates SPF for one client; the HELO outcome is reused across transactions."""

    def __init__(self, client: Lookup, receiver: str, budget: float,
                 clock: Callable[[], float] = time.monotonic, query_factory: Optional[Callable] = None):
        """``query_factory(identity, *query_args)`` builds the pyspf query of each check
        (``spfmilter explain`` passes one that records every step); default :class:`_Query`."""
        self._client = client
        # SPF results are cached next to the DNS answers they came from (DnsClient.spf_results),
        # except when a query factory traces the steps (explain must see them).
        self._results = getattr(client, "spf_results", None) if query_factory is None else None
        self._make_query = query_factory or (lambda identity, *args: _Query(*args))
        self._receiver = receiver
        self._budget = budget
        self._clock = clock
        self._helo_cache: dict[tuple[str, str], SpfOutcome] = {}

    def checks(self) -> "Checks":
        """The checks of one transaction, all under one DNS time budget that starts now."""
        return Checks(self, self._clock() + self._budget)

    def verify(self, ip: Optional[str], helo: str, sender: str) -> tuple[SpfOutcome, SpfOutcome]:
        """Both identities for one transaction, within one DNS time budget."""
        return self.checks().verify(ip, helo, sender)

    def _helo(self, ip: str, helo: str, deadline: float) -> SpfOutcome:
        key = (ip, helo.lower())
        cached = self._helo_cache.get(key)
        if cached is not None:
            return cached
        outcome = self._check(Identity.HELO, ip, helo, Address("postmaster", helo.rstrip(".")), deadline)
        if outcome.result is not SpfResult.TEMPERROR:
            self._helo_cache = {key: outcome}  # one HELO per connection at a time
        return outcome

    def _check(self, identity: Identity, ip: str, helo: str, address: Address,
               deadline: float) -> SpfOutcome:
        sender = address.text
        if identity is Identity.HELO and not is_spf_domain(address.domain):
            return SpfOutcome(identity, SpfResult.NONE, "", sender,
                              problem="HELO name is not a fully qualified domain name")
        if identity is Identity.MAILFROM and not address.domain:
            return SpfOutcome(identity, SpfResult.NONE, "", sender,
                              problem="envelope sender has no domain")
        if not is_spf_domain(address.domain):
            return SpfOutcome(identity, SpfResult.NONE, address.domain, sender,
                              problem="sender domain is not a valid domain name")
        key = (ip, address.domain.lower())
        if self._results is not None:
            cached: Optional[SpfOutcome] = self._client.cached_result(key)  # type: ignore[attr-defined]
            if cached is not None:
                return replace(cached, identity=identity, domain=address.domain, sender=sender)
        local = address.local or "postmaster"  # RFC 7208 section 4.3
        try:
            query = self._make_query(identity, ip, f"{local}@{address.domain}", helo, self._client, deadline,
                                     self._receiver)
            # pyspf splits the sender at its first '@', which breaks quoted local parts
            # such as "a@b"@example.org; use our split at the last '@' for <domain>
            # (RFC 7208 section 4.1) and the l, o and d macros (section 7.3).
            query.l, query.o, query.d = local, address.domain, address.domain
            result, _code, explanation = query.check()
        except Exception as exc:  # pyspf bug or hostile data it did not expect
            log.exception("SPF evaluation of %s for %s failed", address.domain, identity.value)
            return SpfOutcome(identity, SpfResult.TEMPERROR, address.domain, sender,
                              problem=f"internal error in SPF evaluation: {exc.__class__.__name__}")
        try:
            spf_result = SpfResult(result)
        except ValueError:  # "ambiguous" only occurs in pyspf's harsh mode
            spf_result = SpfResult.PERMERROR
        matched = spf_result in (SpfResult.PASS, SpfResult.FAIL, SpfResult.SOFTFAIL, SpfResult.NEUTRAL)
        errored = spf_result in (SpfResult.PERMERROR, SpfResult.TEMPERROR)
        own_exp = spf_result is SpfResult.FAIL and explanation and explanation != query.defexps.get("fail")
        outcome = SpfOutcome(identity, spf_result, address.domain, sender,
                             mechanism=_mechanism_text(getattr(query, "mechanism", None)) if matched else None,
                             explanation=explanation if own_exp else None,
                             problem=getattr(query, "prob", None) if errored else None)
        if self._results is not None and spf_result is not SpfResult.TEMPERROR:
            self._remember(key, query, outcome)
        return outcome

    def _remember(self, key: tuple[str, str], query: spf.query, outcome: SpfOutcome) -> None:
        """Cache ``outcome`` of check_host(ip, domain) while every DNS answer it used is cached.

        Without macros (RFC 7208 section 7) the result of check_host() depends only on the
        client address, the domain and the DNS answers, not on the sender's local part or
        the HELO name, so it can be reused for any sender of the domain from that address
        until the first of those answers expires (their TTLs, RFC 7208 section 4.4 and
        RFC 1035).  A record with a macro or an ``exp=`` (whose text may hold macros), an
        answer not cached (no TTL, e.g. NXDOMAIN without an SOA), or a lookup not made
        through our client (a traced query) leaves the result uncached.
        """
        looked_up = getattr(query, "looked_up", None)
        if not looked_up or getattr(query, "uses_macros", True) or outcome.explanation or self._results is None:
            return
        expiry = getattr(self._client, "expiry", None)
        if expiry is None:
            return
        ends = [expiry(name, qtype) for name, qtype in looked_up]
        if None in ends:
            return
        self._results.put_until(key, cached_form(outcome), min(ends))


def cached_form(outcome: SpfOutcome) -> SpfOutcome:
    """What the SPF result cache keeps of ``outcome``: not the sender and domain of the message it
    came from, which every reuse fills in with its own (Verifier._check)."""
    return replace(outcome, domain="", sender="")


class Checks:
    """The SPF checks of one transaction (made by :meth:`Verifier.checks`), sharing one deadline:
    the identities, and the allow-lists that need DNS (trusted_helo_names, trusted_ptr_domains,
    trusted_spf_domains), so that together they never wait longer than ``dns_timeout``."""

    def __init__(self, verifier: Verifier, deadline: float):
        self._verifier = verifier
        self._deadline = deadline

    def verify(self, ip: Optional[str], helo: str, sender: str) -> tuple[SpfOutcome, SpfOutcome]:
        """Both identities."""
        return self.helo(ip, helo, sender), self.mailfrom(ip, helo, sender)

    def helo(self, ip: Optional[str], helo: str, sender: str = "") -> SpfOutcome:
        """The HELO identity (RFC 7208 section 2.3); cached for the connection."""
        if ip is None:  # SPF is a statement about an IP address; without one there is nothing to check
            return SpfOutcome(Identity.HELO, SpfResult.NONE, "", f"postmaster@{helo}", problem=_NO_IP)
        return self._verifier._helo(ip, helo, self._deadline)

    def mailfrom(self, ip: Optional[str], helo: str, sender: str) -> SpfOutcome:
        """The MAIL FROM identity (RFC 7208 section 2.4)."""
        address = parse_envelope_address(sender)
        if ip is None:
            return SpfOutcome(Identity.MAILFROM, SpfResult.NONE, address.domain,
                              address.text or f"postmaster@{helo}", problem=_NO_IP)
        if not address.text:
            # RFC 7208 section 2.4: the null sender is checked as postmaster@<helo>,
            # which is exactly the HELO check.
            return replace(self.helo(ip, helo), identity=Identity.MAILFROM)
        return self._verifier._check(Identity.MAILFROM, ip, helo, address, self._deadline)

    def authorizes(self, ip: str, domain: str) -> bool:
        """Whether ``domain``'s own SPF policy passes ``ip`` (checked as postmaster@domain,
        as policyd-spf's Domain_Whitelist does); any error is "no"."""
        if not is_spf_domain(domain):
            return False
        try:
            query = _Query(ip, f"postmaster@{domain}", domain, self._verifier._client, self._deadline,
                           self._verifier._receiver)
            result, _code, _exp = query.check()
        except Exception:  # pyspf bug or hostile data: not authorized
            log.exception("SPF evaluation of trusted domain %s failed", domain)
            return False
        if result == "temperror":
            log.debug("trusted_spf_domains: %s could not be checked: %s", domain, getattr(query, "prob", ""))
        return bool(result == "pass")

    def validated_ptrs(self, ip: str) -> list[str]:
        """The client's validated PTR names (RFC 7208 section 5.5), lower case without the root dot."""
        try:
            query = _Query(ip, "postmaster@ptr.invalid", "ptr.invalid", self._verifier._client, self._deadline,
                           self._verifier._receiver)
            return [name.lower().rstrip(".") for name in query.validated_ptrs()]
        except spf.PermError:  # more void lookups than section 4.6.4 allows: no names
            return []


_NO_IP = "client IP address unknown"


def _mechanism_text(mechanism: object) -> str:
    """The matching term as text; RFC 7208 section 9.1 calls no match ``default``."""
    if not mechanism:
        return "default"
    return re.sub(r"\s+", " ", str(mechanism))
