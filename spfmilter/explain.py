"""``spfmilter explain``: one SPF evaluation, step by step, for a postmaster at 3 a.m.

The case is given as ``--ip/--helo/--sender`` or read from a message's trace
headers (``--eml FILE``, :mod:`spfmilter.tracefacts`).  It is evaluated by the milter's own :class:`Verifier`
and :func:`spfmilter.policy.evaluate`, exactly as ``spfmilter check`` does; the
trace only *observes* that evaluation:

* :class:`_TracingQuery` extends :class:`spfmilter.verify._Query` (and so keeps its
  DNS routing through :class:`~spfmilter.dns.DnsClient`, its deadline and its void
  lookup counting) and overrides pyspf's hooks: ``dns_spf`` (a record is fetched
  for the top level, an ``include:`` or a ``redirect=``), ``check1`` (a record is
  evaluated), ``validate_mechanism`` (a term is parsed), ``check_lookups`` (a term
  costs one of the 10 lookups), ``cidrmatch``/``dns_a``/``validated_ptrs`` (what a
  term compared) and ``dns`` (every answer, NXDOMAIN and error).
* pyspf evaluates the parsed terms in one loop in ``check0``; the start of each
  term is seen because ``validate_mechanism`` hands the loop a tuple whose
  unpacking reports it (:class:`_Term`).
* The Verifier builds its queries through the ``query_factory`` :func:`explain` gives
  it, which hands out :class:`_TracingQuery` objects.  So the result printed *is* the
  Verifier's result of the very evaluation traced, never a second opinion.

Everything that came from DNS or from the message goes through :func:`~spfmilter.text.printable`,
so CR, LF, escape sequences and other control characters are shown escaped.
"""
from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Optional

import spf

from . import verify
from .config import Config
from .checkcmd import milter_view
from .dns import Lookup
from .service import make_service
from .policy import Evaluation, Facts, evaluate
from .text import SHOWN_LIMIT, printable
from .tracefacts import MessageError, facts_from_message
from .verify import (
    Identity,
    SpfOutcome,
    SpfResult,
    Verifier,
    normalise_ip,
    parse_envelope_address,
)

ANSWERS_SHOWN = 20  # answers of one DNS lookup shown
TERM_COLUMN_MAX = 40


class UsageError(Exception):
    """The case cannot be evaluated as given (exit status 2)."""


def quoted(text: object, limit: int = SHOWN_LIMIT) -> str:
    """:func:`printable` text in double quotes (an inner quote is escaped)."""
    return '"' + printable(text, limit).replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- trace model

@dataclass
class DnsStep:
    """One lookup pyspf asked for, with the answer it got."""

    name: str
    qtype: str
    answers: tuple = ()  # as DnsClient gives them: TXT tuples of bytes, MX (preference, name), text
    nxdomain: bool = False
    error: str = ""  # temporary failure, or the limit it broke
    void: int = 0  # the void lookup number this empty answer cost (0: none)
    looked_up: bool = True  # False: pyspf takes the name as invalid and asks nothing


@dataclass
class TermStep:
    """One term (mechanism) of a record, and what became of it."""

    term: str  # as written in the record
    kind: str = ""  # "ip4", "a", "include", ...
    qualifier: str = "pass"  # the result when it matches
    arg: str = ""  # domain or address, macros expanded
    cidr: Optional[int] = None
    tried: bool = False
    lookup_no: int = 0  # its place in the 10-lookup budget (0: costs none)
    dns: list = field(default_factory=list)
    compared: list = field(default_factory=list)  # (addresses, prefix length, matched) per cidrmatch
    addresses: Optional[tuple] = None  # exists: the A answer
    ptrs: Optional[tuple] = None  # ptr: the validated names
    include: Optional[RecordStep] = None
    matched: Optional[bool] = None  # None: not tried, or failed with an error
    skipped: bool = False  # ip4 for an IPv6 client and the like
    error: str = ""


@dataclass
class RecordStep:
    """One SPF record: fetched for the top level, an include: or a redirect=."""

    domain: str
    via: str = "top"  # "top", "include", "redirect"
    depth: int = 0
    text: Optional[str] = None  # None: no SPF record (or it could not be fetched)
    fetch: list = field(default_factory=list)  # DnsSteps fetching the record
    dns: list = field(default_factory=list)  # other lookups: exp=, macros
    notes: list = field(default_factory=list)  # modifiers: exp=, redirect=
    terms: list = field(default_factory=list)
    redirect: Optional[RecordStep] = None
    evaluated: bool = False
    result: Optional[str] = None
    error: str = ""
    active: Optional[TermStep] = field(default=None, repr=False)


@dataclass
class IdentityTrace:
    identity: Identity
    outcome: SpfOutcome
    record: Optional[RecordStep] = None  # the top record; None when nothing was evaluated
    lookups: int = 0
    void_lookups: int = 0
    dns: list = field(default_factory=list)  # lookups outside any record
    same_as_helo: bool = False  # null sender: the HELO evaluation stands for MAIL FROM


@dataclass
class Explanation:
    facts: Facts
    recipient: str
    evaluation: Evaluation
    identities: list  # IdentityTrace, HELO first; empty when the client is trusted
    milter_view: str  # headers and SMTP reply, exactly as ``spfmilter check`` prints them
    sources: tuple = ()  # where the facts came from (an .eml file)


# --------------------------------------------------------------------------- tracing

class _Term(tuple):
    """A parsed term as pyspf's check0 loop unpacks it; the unpacking reports the term's turn."""

    def __iter__(self):
        self.query._begin_term(self.step)
        return tuple.__iter__(self)


class _RecordingClient:
    """A DnsClient stand-in that keeps the last Answer (to tell NXDOMAIN from NODATA)."""

    def __init__(self, client):
        self._client = client
        self.last = None

    def lookup(self, name, qtype, deadline):
        self.last = None
        self.last = self._client.lookup(name, qtype, deadline)
        return self.last


def _show_value(qtype: str, value) -> str:
    if qtype in ("TXT", "SPF"):
        parts = value if isinstance(value, (tuple, list)) else (value,)
        joined = b"".join(p if isinstance(p, bytes) else str(p).encode("utf-8", "replace") for p in parts)
        return quoted(joined.decode("utf-8", "surrogateescape"))
    if qtype == "MX" and isinstance(value, (tuple, list)) and len(value) == 2:
        return f"{printable(value[1])} (preference {value[0]})"
    return printable(value)


class _TracingQuery(verify._Query):
    """The milter's query (same DNS routing, deadline and limits), with every step recorded."""

    def __init__(self, ip, sender, helo, client, deadline, receiver):
        self._trace_client = _RecordingClient(client)
        super().__init__(ip, sender, helo, self._trace_client, deadline, receiver)
        self._trace_top: Optional[RecordStep] = None
        self._trace_stack: list[RecordStep] = []
        self._trace_fetching: Optional[RecordStep] = None
        self._trace_pending: Optional[RecordStep] = None
        self._trace_loose: list[DnsStep] = []

    # -- where a DNS answer belongs
    def _trace_sink(self) -> list:
        if self._trace_fetching is not None:
            return self._trace_fetching.fetch
        if self._trace_stack:
            record = self._trace_stack[-1]
            return record.active.dns if record.active is not None else record.dns
        return self._trace_loose

    def dns(self, name, qtype, cnames=None, ignore_void=False):
        self._trace_client.last = None
        voids = self.void_lookups
        step = DnsStep(str(name).rstrip("."), qtype)
        try:
            result = super().dns(name, qtype, cnames, ignore_void)
        except (spf.TempError, spf.PermError) as exc:
            step.error = str(exc)
            if isinstance(exc, spf.PermError):  # the void lookup limit
                step.void = self.void_lookups if self.void_lookups > voids else 0
                step.nxdomain = bool(self._trace_client.last and self._trace_client.last.nxdomain)
            self._trace_sink().append(step)
            raise
        answer = self._trace_client.last
        step.looked_up = answer is not None
        step.nxdomain = bool(answer is not None and answer.nxdomain)
        step.answers = tuple(result)
        step.void = self.void_lookups if self.void_lookups > voids else 0
        self._trace_sink().append(step)
        return result

    # -- records
    def dns_spf(self, domain):
        parent = self._trace_stack[-1] if self._trace_stack else None
        record = RecordStep(str(domain))
        if parent is None:
            self._trace_top = record
        else:
            record.depth = parent.depth + 1
            term = parent.active
            if term is not None and term.kind == "include" and term.include is None:
                record.via = "include"
                term.include = record
            else:  # the terms are exhausted: pyspf follows redirect=
                record.via = "redirect"
                parent.redirect = record
                if term is not None and term.matched is None and not term.error:
                    _conclude(term, ran_on=True)
        self._trace_fetching = record
        try:
            text = super().dns_spf(domain)
        except (spf.TempError, spf.PermError) as exc:
            record.error = str(exc)
            record.result = "temperror" if isinstance(exc, spf.TempError) else "permerror"
            raise
        finally:
            self._trace_fetching = None
        record.text = text
        self._trace_pending = record
        return text

    def check1(self, spf_text, domain, recursion):
        record = self._trace_pending
        self._trace_pending = None
        if record is None or record.domain != str(domain):  # not fetched by dns_spf
            record = RecordStep(str(domain), text=spf_text)
            if self._trace_stack:
                record.depth = self._trace_stack[-1].depth + 1
            elif self._trace_top is None:
                self._trace_top = record
        record.evaluated = True
        self._trace_stack.append(record)
        try:
            outcome = super().check1(spf_text, domain, recursion)
        except (spf.TempError, spf.PermError) as exc:
            if not record.error:
                record.error = str(exc)
                record.result = "temperror" if isinstance(exc, spf.TempError) else "permerror"
            term = record.active
            if term is not None and term.matched is None and not term.error:
                term.error = str(exc)
            raise
        finally:
            self._trace_stack.pop()
        record.result = outcome[0]
        term = record.active
        if term is not None and term.matched is None and not term.error and record.redirect is None:
            _conclude(term)
        return outcome

    # -- terms
    def validate_mechanism(self, mech):
        record = self._trace_stack[-1] if self._trace_stack else None
        try:
            parsed = super().validate_mechanism(mech)
        except spf.PermError as exc:
            if record is not None:
                record.terms.append(TermStep(str(mech), error=str(exc)))
            raise
        if record is None:
            return parsed
        text, kind, arg, cidr, qualifier = parsed
        step = TermStep(str(text), kind=str(kind),
                        qualifier=qualifier if isinstance(qualifier, str) else "permerror",
                        arg=str(arg or ""), cidr=cidr)
        record.terms.append(step)
        term = _Term(parsed)
        term.query, term.step = self, step
        return term

    def _begin_term(self, step: TermStep) -> None:
        if not self._trace_stack:
            return
        record = self._trace_stack[-1]
        previous = record.active
        if previous is not None and previous.matched is None and not previous.error:
            _conclude(previous, ran_on=True)
        record.active = step
        step.tried = True

    def _trace_term(self) -> Optional[TermStep]:
        return self._trace_stack[-1].active if self._trace_stack else None

    def check_lookups(self):
        try:
            super().check_lookups()
        finally:
            record = self._trace_stack[-1] if self._trace_stack else None
            if record is not None and record.active is not None:
                record.active.lookup_no = self.lookups
            elif record is not None:  # redirect= counts while the modifiers are read
                record.notes.append(("redirect", self.lookups))

    def cidrmatch(self, ipaddrs, n):
        matched = super().cidrmatch(ipaddrs, n)
        term = self._trace_term()
        if term is not None and term.kind != "ptr":
            term.compared.append((tuple(str(a) for a in ipaddrs), n, bool(matched)))
        return matched

    def dns_a(self, domainname, A="A"):
        addresses = super().dns_a(domainname, A)
        term = self._trace_term()
        if term is not None and term.kind == "exists":
            term.addresses = tuple(str(a) for a in addresses)
        return addresses

    def validated_ptrs(self):
        names = super().validated_ptrs()
        term = self._trace_term()
        if term is not None and term.kind == "ptr":
            term.ptrs = tuple(names)
        return names

    def get_explanation(self, spec):
        record = self._trace_stack[-1] if self._trace_stack else None
        try:
            text = super().get_explanation(spec)
        except Exception as exc:  # pyspf ignores a failing exp= (RFC 7208 section 6.2)
            if record is not None:
                record.notes.append(("exp", str(spec), None, str(exc)))
            raise
        if record is not None:
            record.notes.append(("exp", str(spec), text, ""))
        return text


def _conclude(term: TermStep, ran_on: bool = False) -> None:
    """Settle whether a tried term matched, from what it compared.

    ``ran_on``: pyspf went on to the next term (or to redirect=), so it did not match.
    """
    observed = _observed_match(term)
    term.matched = False if ran_on else bool(observed)
    if term.kind in ("ip4", "ip6") and not term.compared:
        term.skipped = True


def _observed_match(term: TermStep) -> Optional[bool]:
    if term.kind == "all":
        return True
    if term.kind in ("ip4", "ip6", "a", "mx"):
        return term.compared[-1][2] if term.compared else False
    if term.kind == "exists":
        return bool(term.addresses)
    if term.kind == "ptr":
        return bool(spf.domainmatch(list(term.ptrs or ()), term.arg))
    if term.kind == "include":
        return term.include is not None and term.include.result == "pass"
    return None


# --------------------------------------------------------------------------- evaluation

def explain(config: Config, ip: str, helo: str, sender: str, recipient: str,
            auth_user: Optional[str] = None, sources: Iterable[str] = (),
            lookup: Optional[Lookup] = None) -> Explanation:
    """Evaluate one case as the milter would, recording every step of the SPF evaluation
    (through ``lookup``, by default the milter's own DNS client for ``config``)."""
    try:
        client_ip = normalise_ip(ip)
    except ValueError:
        raise UsageError(f"not an IP address: {printable(ip)!s}") from None
    queries: dict[Identity, _TracingQuery] = {}

    def tracing_query(identity, *args):  # the Verifier's own evaluation, observed step by step
        return queries.setdefault(identity, _TracingQuery(*args))

    verifier = Verifier(lookup or make_service(config).dns, config.receiver, config.dns_timeout, query_factory=tracing_query)
    facts = Facts(client_ip=client_ip, helo=helo.strip(),
                  sender=parse_envelope_address(sender).text, auth_user=auth_user or None)
    evaluation = evaluate(facts, config, verifier.checks())
    identities = []
    if evaluation.outcomes is not None:
        for outcome in evaluation.outcomes:
            query = queries.get(outcome.identity)
            trace = IdentityTrace(outcome.identity, outcome)
            if outcome.identity is Identity.MAILFROM and not facts.sender:
                trace.same_as_helo = True
            elif query is not None:
                trace.record = query._trace_top
                trace.lookups = query.lookups
                trace.void_lookups = query.void_lookups
                trace.dns = query._trace_loose
            identities.append(trace)
    return Explanation(facts, recipient, evaluation, identities, milter_view(evaluation, recipient, config),
                       tuple(sources))


# --------------------------------------------------------------------------- formatting

def format_dns(step: DnsStep) -> str:
    """``TXT example.com -> "v=spf1 -all"``; NXDOMAIN, no records, errors and void lookups said so."""
    head = f"{step.qtype} {printable(step.name, 300)}"
    if not step.looked_up:
        return f"{head} -> not looked up (not a valid domain name; counts as no records)"
    if step.error and not step.void:
        return f"{head} -> temporary error: {printable(step.error)}"
    if step.answers:
        return f"{head} -> {_list(step.answers, lambda value: _show_value(step.qtype, value))}"
    text = f"{head} -> {'NXDOMAIN' if step.nxdomain else 'no records'}"
    if step.void:
        text += f" (void lookup {step.void} of {spf.MAX_VOID_LOOKUPS} allowed"
        text += ": limit exceeded)" if step.void > spf.MAX_VOID_LOOKUPS else ")"
    return text


def _client_version(client_ip: str) -> int:
    try:
        return ipaddress.ip_address(client_ip).version
    except ValueError:
        return 4


def _network(address: str, length: int) -> str:
    try:
        return str(ipaddress.ip_network(f"{address}/{length}", strict=False))
    except ValueError:
        return f"{address}/{length}"


def _answers(term: TermStep, qtype: str) -> list[str]:
    return [answer for step in term.dns if step.qtype == qtype for answer in step.answers]


def _compared_addresses(term: TermStep) -> tuple:
    return term.compared[-1][0] if term.compared else ()


def _verdict(term: TermStep, client_ip: str, what: str, addresses: tuple) -> str:
    """``what: match`` or ``what: no match: <why>`` for the address-comparing terms."""
    full = 32 if _client_version(client_ip) == 4 else 128
    length = term.compared[-1][1] if term.compared else full
    if term.matched:
        return f"{what}: match" + (f" ({client_ip} within /{length})" if length != full else "")
    if not addresses:
        return f"{what}: no match"
    if length != full:
        return f"{what}: no match: {client_ip} not within /{length} of any"
    return f"{what}: no match: {client_ip} not among them"


def term_reason(term: TermStep, client_ip: str, stopped: bool = False) -> str:
    """Whether one term matched and why, in one line (no DNS detail beyond what it compared)."""
    if term.error:
        return f"error: {printable(term.error)}"
    if not term.tried:
        return "not evaluated (the evaluation stopped above)" if stopped else "not tried (an earlier term matched)"
    if term.matched is None:
        return "no outcome recorded"
    match = "match" if term.matched else "no match"
    ip = printable(client_ip)
    kind = term.kind
    arg = printable(term.arg, 300)
    if kind == "all":
        return "match: all matches every client"
    if kind in ("ip4", "ip6"):
        if term.skipped:
            other = "IPv6" if kind == "ip4" else "IPv4"
            return f"no match: {kind} never matches an {other} client"
        network = printable(_network(term.arg, term.compared[-1][1]), 300)
        return f"{match}: {ip} {'in' if term.matched else 'not in'} {network}"
    qtype = "AAAA" if _client_version(client_ip) == 6 else "A"
    if kind == "a":
        addresses = _compared_addresses(term)
        what = f"looked up {arg} {qtype} -> {_list(addresses) or 'no addresses'}"
        return _verdict(term, ip, what, addresses)
    if kind == "mx":
        exchanges = [mx[1] if isinstance(mx, (tuple, list)) else mx for mx in _answers(term, "MX")]
        addresses = _compared_addresses(term)
        what = f"looked up {arg} MX -> {_list(exchanges) or 'no MX records'}"
        if exchanges:
            what += f"; their {qtype} -> {_list(addresses) or 'no addresses'}"
        return _verdict(term, ip, what, addresses)
    if kind == "exists":
        return f"looked up {arg} A -> {_list(term.addresses or ()) or 'no addresses'}: {match}"
    if kind == "ptr":
        names = _list(term.ptrs or ()) or "none"
        if term.matched:
            return f"validated PTR names of {ip}: {names}: match (in {arg})"
        return f"validated PTR names of {ip}: {names}: no match: none is {arg} or below it"
    if kind == "include":
        result = printable(term.include.result) if term.include is not None else None
        if not result:
            return f"-> no result: {match}"
        if term.matched:
            return f"-> {result}: match"
        return f"-> {result}: no match (an include matches only on pass)"
    return match


def _list(values: Iterable[object], show: Callable[[object], str] = lambda value: printable(value, 300)) -> str:
    """At most ANSWERS_SHOWN values, each as ``show`` gives it, and how many more there are."""
    values = list(values)
    shown = [show(value) for value in values[:ANSWERS_SHOWN]]
    if len(values) > ANSWERS_SHOWN:
        shown.append(f"... ({len(values) - ANSWERS_SHOWN} more)")
    return ", ".join(shown)


def _term_column(terms: list) -> int:
    return min(TERM_COLUMN_MAX, max((len(printable(t.term, 300)) for t in terms), default=0))


def format_record(record: RecordStep, client_ip: str, indent: int = 2) -> list[str]:
    """One record's lines: how it was fetched, its text, each term, its result; nested below."""
    pad = " " * indent
    via = {"top": "", "include": " (included)", "redirect": " (redirect=)"}.get(record.via, "")
    lines = [f"{pad}SPF record of {printable(record.domain, 300)}{via}"]
    inner = pad + "  "
    lines += [f"{inner}dns: {format_dns(step)}" for step in record.fetch]
    if record.text is None:
        if record.error:
            lines.append(f"{inner}=> {record.result or 'error'}: {printable(record.error)}")
        else:
            lines.append(f"{inner}no SPF record (no TXT record starting with v=spf1)")
            lines.append(f"{inner}=> none")
        return lines
    lines.append(f"{inner}record: {printable(record.text)}")
    for note in record.notes:
        if note[0] == "exp":
            _, domain, text, problem = note
            domain = printable(domain, 300)
            if problem:
                lines.append(f"{inner}exp={domain}: could not be fetched ({printable(problem)}); ignored")
            elif text is None:
                lines.append(f"{inner}exp={domain}: no usable explanation; ignored")
            else:
                lines.append(f"{inner}exp={domain} -> {quoted(text)}")
        elif note[0] == "redirect":
            lines.append(f"{inner}redirect= counted as DNS lookup {note[1]} of {spf.MAX_LOOKUP} allowed")
    lines += [f"{inner}dns: {format_dns(step)}" for step in record.dns]
    width = _term_column(record.terms)
    tagged = any(t.lookup_no for t in record.terms)
    stopped = bool(record.error)
    for number, term in enumerate(record.terms, 1):
        tag = ""
        if tagged:
            tag = (f"lookup {term.lookup_no}/{spf.MAX_LOOKUP}" if term.lookup_no else "").ljust(13) + " "
        reason = term_reason(term, client_ip, stopped)
        lines.append(f"{inner}{number:>2}. {printable(term.term, 300).ljust(width)}  {tag}{reason}".rstrip())
        detail = inner + "    "  # under the term's text
        lines += [f"{detail}dns: {format_dns(step)}" for step in term.dns]
        if term.include is not None:
            lines.extend(format_record(term.include, client_ip, len(detail)))
    if record.redirect is not None:
        lines.append(f"{inner}no term matched: following redirect={printable(record.redirect.domain, 300)}")
        lines.extend(format_record(record.redirect, client_ip, len(inner) + 2))
    lines.append(f"{inner}=> {_record_result(record)}")
    return lines


def _record_result(record: RecordStep) -> str:
    if record.error:
        return f"{record.result or 'error'}: {printable(record.error)}"
    if record.result is None:
        return "no result"
    if record.redirect is not None:
        return f"{record.result} (from redirect={printable(record.redirect.domain, 300)})"
    matched = next((t for t in record.terms if t.matched), None)
    if matched is not None:
        return f"{record.result} (matched {printable(matched.term, 300)})"
    if record.terms or record.text:
        return f"{record.result} (no term matched: the default result)"
    return record.result


def _label_lines(pairs: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    width = max(len(label) for label, _ in pairs)
    return [f"{indent}{(label + ':').ljust(width + 1)}  {value}" for label, value in pairs]


def format_identity(trace: IdentityTrace, client_ip: str) -> list[str]:
    outcome = trace.outcome
    title = "HELO" if trace.identity is Identity.HELO else "MAIL FROM"
    lines = [f"{title} identity: {printable(outcome.sender) or '<>'}"]
    if trace.same_as_helo:
        lines[0] = f"{title} identity: <> (null sender, checked as {printable(outcome.sender)})"
        lines.append("  the null sender is checked as postmaster@<HELO name> (RFC 7208 section 2.4),")
        lines.append("  which is the HELO evaluation above")
    elif trace.record is not None:
        lines += [f"  dns: {format_dns(step)}" for step in trace.dns]
        lines.extend(format_record(trace.record, client_ip))
    else:
        lines.append(f"  not evaluated: {printable(outcome.problem or 'no SPF check made')}")
    pairs = [("result", outcome.result.value)]
    if outcome.mechanism:
        pairs.append(("mechanism", printable(outcome.mechanism)))
    if outcome.result is SpfResult.FAIL:
        pairs.append(("explanation", quoted(outcome.explanation) if outcome.explanation
                      else "none (the domain publishes no exp=)"))
    if outcome.problem and outcome.result in (SpfResult.PERMERROR, SpfResult.TEMPERROR):
        pairs.append(("problem", printable(outcome.problem)))
    if trace.record is not None and not trace.same_as_helo:
        pairs.append(("DNS lookups", f"{trace.lookups} of {spf.MAX_LOOKUP} allowed"))
        pairs.append(("void lookups", f"{trace.void_lookups} of {spf.MAX_VOID_LOOKUPS} allowed"))
    lines.extend(_label_lines(pairs))
    return lines


def format_explanation(explanation: Explanation) -> str:
    """The whole report: the case, both identities, the headers and the SMTP reply."""
    facts = explanation.facts
    pairs = [("client IP", printable(facts.client_ip or "unknown")),
             ("HELO", printable(facts.helo) or "(none)"),
             ("MAIL FROM", f"<{printable(facts.sender)}>"),
             ("RCPT TO", f"<{printable(parse_envelope_address(explanation.recipient).text)}>")]
    if facts.auth_user:
        pairs.append(("auth user", printable(facts.auth_user)))
    lines = ["spfmilter explain"] + _label_lines(pairs)
    lines += [f"  # {source}" for source in explanation.sources]
    lines.append("")
    evaluation = explanation.evaluation
    if evaluation.skip_reason is not None:
        lines.append(f"SPF is not evaluated for this client ({evaluation.skip_reason}).")
        lines.append("")
    for trace in explanation.identities:
        lines.extend(format_identity(trace, facts.client_ip or ""))
        lines.append("")
    lines.append("What the milter does:")
    return "\n".join(lines) + "\n" + explanation.milter_view


# --------------------------------------------------------------------------- command line

def _case(args, config: Config) -> tuple[str, str, str, str, tuple[str, ...]]:
    options = (("--ip", args.ip), ("--helo", args.helo), ("--sender", args.sender))
    eml = getattr(args, "eml", None)
    if not eml:
        missing = [what for what, value in options if value is None]
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (give --ip, --helo and --sender, or --eml FILE)")
        return args.ip, args.helo, args.sender, args.recipient or args.default_recipient, ()
    try:
        if eml == "-":
            data, name = sys.stdin.buffer.read(), "<stdin>"
        else:
            with open(eml, "rb") as handle:
                data, name = handle.read(), eml
    except OSError as exc:
        raise UsageError(f"{eml}: cannot read: {exc.strerror or exc}") from None
    found = facts_from_message(data, config, printable(name))
    ip, helo, sender, recipient = (mine if mine is not None else theirs for mine, theirs in (
        (args.ip, found.ip), (args.helo, found.helo), (args.sender, found.sender), (args.recipient, found.recipient)))
    if sender is None:
        raise MessageError(f"{printable(name)}: no Return-Path header and no Received-SPF envelope-from=; "
                           "give the envelope sender with --sender")
    given = [what for what, value in options if value is not None]
    sources = tuple(f"{printable(name)}: {source}" for source in found.sources)
    sources += (f"given on the command line: {', '.join(given)}",) if given else ()
    return ip, helo, sender, recipient or args.default_recipient, sources


def run(args, config: Config, out=None, err=None) -> int:
    """``spfmilter explain``: print the report; 2 when the case cannot be evaluated."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        ip, helo, sender, recipient, sources = _case(args, config)
        explanation = explain(config, ip, helo, sender, recipient, getattr(args, "auth_user", None), sources)
    except (UsageError, MessageError) as exc:
        print(f"spfmilter explain: {exc}", file=err)
        return 2
    out.write(format_explanation(explanation))
    return 0
