"""Tests for spfmilter.verify: Verifier.verify() against policies answered in process by a
dict-backed Lookup (tests/support/zonelookup.py), envelope parsing, RFC 7208 limits, the
HELO outcome cache, and the per-transaction time budget (through a real DnsClient and the
loopback test DNS server, whose latency it needs).
"""
from __future__ import annotations

import logging
import time

import pytest
import spf

from spfmilter.config import DnsServer
from spfmilter.dns import DnsClient, make_resolver
from spfmilter.verify import (
    Address,
    Identity,
    SpfOutcome,
    SpfResult,
    Verifier,
    is_spf_domain,
    normalise_ip,
    parse_envelope_address,
)
from tests.support.dnsserver import DNSServer
from tests.support.zonelookup import ZoneLookup

R = SpfResult
CLIENT = "192.0.2.10"  # inside 192.0.2.0/24, the network most policies allow
OTHER = "198.51.100.7"  # allowed by none of them
CLIENT6 = "2001:db8::25"
HELO = "helo.example"  # has a policy passing CLIENT
SENDER = "alice@pass.example"

ZONE = {
    "pass.example": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all", "unrelated text"]},
    "helo.example": {"TXT": "v=spf1 ip4:192.0.2.0/24 -all"},
    "softfail.example": {"TXT": "v=spf1 ip4:203.0.113.0/24 ~all"},
    "neutral.example": {"TXT": "v=spf1 ?all"},
    "default.example": {"TXT": "v=spf1 ip4:203.0.113.1"},
    "nospf.example": {"TXT": "google-site-verification=abc", "A": "192.0.2.10"},
    "syntax.example": {"TXT": "v=spf1 ip4:192.0.2.0/24 frobnicate:x -all"},
    "two.example": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all", "v=spf1 +all"]},
    "inclnone.example": {"TXT": "v=spf1 include:nospf.example -all"},
    "redirnx.example": {"TXT": "v=spf1 redirect=absent.example"},
    "redirect.example": {"TXT": "v=spf1 redirect=pass.example"},
    "include.example": {"TXT": "v=spf1 include:pass.example -all"},
    "a-mech.example": {"TXT": "v=spf1 a -all", "A": "192.0.2.10"},
    "mx-mech.example": {"TXT": "v=spf1 mx -all", "MX": "10 mail.mx-mech.example."},
    "mail.mx-mech.example": {"A": "192.0.2.10"},
    # IPv6
    "v6.example": {"TXT": "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"},
    # macros
    "macro-i.example": {"TXT": "v=spf1 exists:%{i}.ip.macro.example -all"},
    "192.0.2.10.ip.macro.example": {"A": "127.0.0.2"},
    "macro-d.example": {"TXT": "v=spf1 include:%{d}.inc.macro.example -all"},
    "macro-d.example.inc.macro.example": {"TXT": "v=spf1 ip4:192.0.2.0/24 -all"},
    "macro-lo.example": {"TXT": "v=spf1 exists:%{l}.%{o}.lo.macro.example -all"},
    "alice.macro-lo.example.lo.macro.example": {"A": "127.0.0.2"},
    "route.example": {"TXT": "v=spf1 exists:%{l}.lp.route.example -all"},
    "alice.lp.route.example": {"A": "127.0.0.2"},
    "quoted.example": {"TXT": "v=spf1 ip4:192.0.2.0/24 -all"},
    # exp=
    "exp.example": {"TXT": "v=spf1 ip4:192.0.2.0/24 -all exp=why.exp.example"},
    "why.exp.example": {"TXT": "%{i} may not send for %{d} (%{l})"},
    "expsoft.example": {"TXT": "v=spf1 ~all exp=why.exp.example"},
    "expmissing.example": {"TXT": "v=spf1 -all exp=nowhere.exp.example"},
    # RFC 7208 section 4.6.4 limits
    "ten.example": {"TXT": "v=spf1 " + " ".join(f"a:t{n}.lim.example" for n in range(1, 11)) + " -all"},
    "eleven.example": {"TXT": "v=spf1 " + " ".join(f"a:t{n}.lim.example" for n in range(1, 12)) + " -all"},
    **{f"t{n}.lim.example": {"A": f"203.0.113.{n}"} for n in range(1, 12)},
    "void2.example": {"TXT": "v=spf1 a:v1.void.example a:v2.void.example -all"},
    "void3.example": {"TXT": "v=spf1 a:v1.void.example a:v2.void.example a:v3.void.example -all"},
    "v2.void.example": {"TXT": "exists, but has no A record"},
    "mx10.example": {"TXT": "v=spf1 mx -all",
                     "MX": [f"{n} m{n}.mx10.example." for n in range(1, 11)]},
    **{f"m{n}.mx10.example": {"A": f"203.0.113.{n}"} for n in range(1, 10)},
    "m10.mx10.example": {"A": "192.0.2.10"},
    "mx11.example": {"TXT": "v=spf1 mx -all",
                     "MX": [f"{n} m{n}.mx10.example." for n in range(1, 12)]},
    "loop-a.example": {"TXT": "v=spf1 include:loop-b.example -all"},
    "loop-b.example": {"TXT": "v=spf1 include:loop-a.example -all"},
    "loop-self.example": {"TXT": "v=spf1 include:loop-self.example -all"},
    "loop-redirect.example": {"TXT": "v=spf1 redirect=loop-redirect.example"},
    # CNAME chains
    "cname.example": {"CNAME": "cname-mid.example."},
    "cname-mid.example": {"CNAME": "cname-real.example."},
    "cname-real.example": {"TXT": "v=spf1 a:host.cname-real.example -all"},
    "host.cname-real.example": {"CNAME": "hostreal.example."},
    "hostreal.example": {"A": "192.0.2.10"},
    # caching of the HELO outcome
    "reuse.example": {"TXT": "v=spf1 ip4:192.0.2.0/24 -all"},
}

FAULTS = {"servfail.example": "servfail", "refused.example": "refused"}


@pytest.fixture(scope="module")
def srv() -> ZoneLookup:
    """The test zone, answered in process: the dns.Lookup the Verifier is typed against."""
    return ZoneLookup(ZONE, FAULTS)


def client_for(srv: DNSServer, cache_size: int = 10000) -> DnsClient:
    """A real DnsClient on a loopback DNS server (for the time budget tests)."""
    return DnsClient(make_resolver((DnsServer("127.0.0.1", srv.port),)), cache_size)


@pytest.fixture
def verifier(srv) -> Verifier:
    return Verifier(srv, receiver="mx.test", budget=5.0)


def queries_during(srv: DNSServer, action):
    before = len(srv.queries)
    result = action()
    return result, srv.queries[before:]


# ---------------------------------------------------------------------------
# results, for MAIL FROM and for HELO
# ---------------------------------------------------------------------------

RESULTS = [
    # domain, client ip, result, mechanism
    ("pass.example", CLIENT, R.PASS, "ip4:192.0.2.0/24"),
    ("pass.example", OTHER, R.FAIL, "-all"),
    ("softfail.example", CLIENT, R.SOFTFAIL, "~all"),
    ("neutral.example", CLIENT, R.NEUTRAL, "?all"),
    ("default.example", CLIENT, R.NEUTRAL, "default"),
    ("redirect.example", CLIENT, R.PASS, "ip4:192.0.2.0/24"),
    ("redirect.example", OTHER, R.FAIL, "-all"),
    ("include.example", CLIENT, R.PASS, "include:pass.example"),
    ("include.example", OTHER, R.FAIL, "-all"),
    ("a-mech.example", CLIENT, R.PASS, "a"),
    ("mx-mech.example", CLIENT, R.PASS, "mx"),
    ("mx-mech.example", OTHER, R.FAIL, "-all"),
    ("nospf.example", CLIENT, R.NONE, None),
    ("absent.example", CLIENT, R.NONE, None),  # NXDOMAIN
    ("syntax.example", CLIENT, R.PERMERROR, None),
    ("two.example", CLIENT, R.PERMERROR, None),
    ("inclnone.example", CLIENT, R.PERMERROR, None),
    ("redirnx.example", CLIENT, R.PERMERROR, None),
    ("servfail.example", CLIENT, R.TEMPERROR, None),
    ("refused.example", CLIENT, R.TEMPERROR, None),
    ("cname.example", CLIENT, R.PASS, "a:host.cname-real.example"),
    ("cname.example", OTHER, R.FAIL, "-all"),
]


def check_outcome(outcome: SpfOutcome, identity, domain, sender, result, mechanism):
    assert outcome.identity is identity
    assert outcome.result is result
    assert outcome.domain == domain
    assert outcome.sender == sender
    assert outcome.mechanism == mechanism
    if result in (R.PERMERROR, R.TEMPERROR):
        assert isinstance(outcome.problem, str) and outcome.problem
    else:
        assert outcome.problem is None
    assert outcome.explanation is None  # none of these policies has exp=


@pytest.mark.parametrize("domain, ip, result, mechanism", RESULTS)
def test_mailfrom_results(verifier, domain, ip, result, mechanism):
    helo, mailfrom = verifier.verify(ip, HELO, f"bob@{domain}")
    check_outcome(mailfrom, Identity.MAILFROM, domain, f"bob@{domain}", result, mechanism)
    assert helo.identity is Identity.HELO and helo.domain == HELO


@pytest.mark.parametrize("domain, ip, result, mechanism", RESULTS)
def test_helo_results(verifier, domain, ip, result, mechanism):
    helo, mailfrom = verifier.verify(ip, domain, SENDER)
    check_outcome(helo, Identity.HELO, domain, f"postmaster@{domain}", result, mechanism)
    assert mailfrom.identity is Identity.MAILFROM and mailfrom.domain == "pass.example"
    assert mailfrom.result is (R.PASS if ip == CLIENT else R.FAIL)


@pytest.mark.parametrize("domain, fragment", [
    ("syntax.example", "Unknown mechanism"),
    ("two.example", "Two or more"),
    ("inclnone.example", "No valid SPF record for included domain"),
    ("redirnx.example", "redirect domain has no SPF record"),
    ("servfail.example", "SERVFAIL"),
])
def test_problem_says_why(verifier, domain, fragment):
    _, mailfrom = verifier.verify(CLIENT, HELO, f"bob@{domain}")
    assert fragment in mailfrom.problem


# ---------------------------------------------------------------------------
# the null sender
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["", "<>", " <> ", "< >"])
@pytest.mark.parametrize("ip, result, mechanism", [
    (CLIENT, R.PASS, "ip4:192.0.2.0/24"),
    (OTHER, R.FAIL, "-all"),
])
def test_null_sender_is_checked_as_postmaster_at_helo(srv, sender, ip, result, mechanism):
    verifier = Verifier(srv, receiver="mx.test", budget=5.0)
    (helo, mailfrom), log = queries_during(srv, lambda: verifier.verify(ip, HELO, sender))
    assert mailfrom == SpfOutcome(Identity.MAILFROM, result, HELO, f"postmaster@{HELO}",
                                  mechanism=mechanism)
    assert helo == SpfOutcome(Identity.HELO, result, HELO, f"postmaster@{HELO}", mechanism=mechanism)
    assert log == [(HELO, "TXT", "local")]  # one evaluation serves both identities (one lookup)


def test_null_sender_with_unusable_helo_is_none_without_queries(verifier, srv):
    (helo, mailfrom), log = queries_during(srv, lambda: verifier.verify(CLIENT, "[192.0.2.10]", "<>"))
    assert log == []
    assert helo.result is R.NONE and mailfrom.result is R.NONE
    assert mailfrom.identity is Identity.MAILFROM
    assert mailfrom.sender == "postmaster@[192.0.2.10]"


# ---------------------------------------------------------------------------
# identities that cannot be checked
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("helo", [
    "[192.0.2.10]", "192.0.2.10", "[IPv6:2001:db8::25]", "2001:db8::25",
    "localhost", "mailhost", "bad!chars.example", "spa ce.example", "-dash.example",
    "dots..example", "", "x" * 64 + ".example",
])
def test_unusable_helo_is_none_without_any_query(verifier, srv, helo):
    (outcome, mailfrom), log = queries_during(srv, lambda: verifier.verify(CLIENT, helo, SENDER))
    assert outcome.identity is Identity.HELO
    assert outcome.result is R.NONE
    assert outcome.domain == ""
    assert outcome.mechanism is None and outcome.explanation is None
    assert "HELO" in outcome.problem
    assert {name for name, _, _ in log} == {"pass.example"}  # only the MAIL FROM check
    assert mailfrom.result is R.PASS


@pytest.mark.parametrize("sender, domain, problem", [
    ("alice", "", "no domain"),
    ("<alice>", "", "no domain"),
    ("alice@", "", "no domain"),
    ("alice@localhost", "localhost", "not a valid domain"),
    ("alice@[192.0.2.1]", "[192.0.2.1]", "not a valid domain"),
    ("alice@192.0.2.1", "192.0.2.1", "not a valid domain"),
    ("alice@bad!chars.example", "bad!chars.example", "not a valid domain"),
    ("alice@dots..example", "dots..example", "not a valid domain"),
])
def test_unusable_sender_domain_is_none_without_any_query(verifier, srv, sender, domain, problem):
    (helo, outcome), log = queries_during(srv, lambda: verifier.verify(CLIENT, HELO, sender))
    assert outcome.identity is Identity.MAILFROM
    assert outcome.result is R.NONE
    assert outcome.domain == domain
    assert problem in outcome.problem
    assert {name for name, _, _ in log} == {HELO}  # only the HELO check
    assert helo.result is R.PASS


# ---------------------------------------------------------------------------
# envelope parsing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("<alice@pass.example>", Address("alice", "pass.example")),
    ("alice@pass.example.", Address("alice", "pass.example")),
    ("<@relay.example:alice@route.example>", Address("alice", "route.example")),
    ("<@r1.example,@r2.example:alice@route.example>", Address("alice", "route.example")),
    ('<"a@b"@quoted.example>', Address('"a@b"', "quoted.example")),
    ("<>", Address("", "")),
    ("", Address("", "")),
    ("alice", Address("alice", "")),
    ("@pass.example", Address("", "pass.example")),
])
def test_parse_envelope_address(raw, expected):
    assert parse_envelope_address(raw) == expected


@pytest.mark.parametrize("sender, ip, result", [
    ("<@relay.example:alice@route.example>", CLIENT, R.PASS),
    ("<@r1.example,@r2.example:alice@route.example>", CLIENT, R.PASS),
    ("<@relay.example:bob@route.example>", CLIENT, R.FAIL),  # %{l} is bob: no such name
])
def test_source_route_uses_the_mailbox(verifier, srv, sender, ip, result):
    (_, outcome), log = queries_during(srv, lambda: verifier.verify(ip, HELO, sender))
    assert outcome.result is result
    assert outcome.domain == "route.example"
    assert outcome.sender == sender.strip("<>").split(":", 1)[1]
    assert not any("relay" in name or "r1." in name for name, _, _ in log)


@pytest.mark.parametrize("ip, result", [(CLIENT, R.PASS), (OTHER, R.FAIL)])
def test_quoted_local_part_uses_the_domain_after_the_last_at(verifier, srv, ip, result):
    sender = '"a@b"@quoted.example'
    (_, outcome), log = queries_during(srv, lambda: verifier.verify(ip, HELO, sender))
    assert outcome.result is result
    assert outcome.domain == "quoted.example"
    assert outcome.sender == sender
    assert ("quoted.example", "TXT", "local") in log
    assert all(name in (HELO, "quoted.example") for name, _, _ in log)


def test_empty_local_part_is_postmaster(verifier):
    _, outcome = verifier.verify(CLIENT, HELO, "<@macro-lo.example>")
    assert outcome.domain == "macro-lo.example"
    assert outcome.result is R.FAIL  # %{l} became "postmaster", which has no record


# ---------------------------------------------------------------------------
# client addresses
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("192.0.2.1", "192.0.2.1"),
    ("::ffff:192.0.2.1", "192.0.2.1"),
    ("::FFFF:c000:0201", "192.0.2.1"),
    ("2001:DB8:0:0::1", "2001:db8::1"),
    ("fe80::1%eth0", "fe80::1"),
])
def test_normalise_ip(text, expected):
    assert normalise_ip(text) == expected


@pytest.mark.parametrize("text", ["", "example.com", "192.0.2.256", "::ffff:192.0.2"])
def test_normalise_ip_rejects_non_addresses(text):
    with pytest.raises(ValueError):
        normalise_ip(text)


@pytest.mark.parametrize("ip, result, mechanism", [
    (CLIENT6, R.PASS, "ip6:2001:db8::/32"),
    ("2001:db9::1", R.FAIL, "-all"),
    (CLIENT, R.PASS, "ip4:192.0.2.0/24"),
    (normalise_ip("::ffff:192.0.2.1"), R.PASS, "ip4:192.0.2.0/24"),
    ("::ffff:192.0.2.1", R.PASS, "ip4:192.0.2.0/24"),  # mapped addresses match ip4: too
    ("::ffff:198.51.100.7", R.FAIL, "-all"),
])
def test_ipv6_clients(verifier, ip, result, mechanism):
    _, outcome = verifier.verify(ip, HELO, "alice@v6.example")
    assert (outcome.result, outcome.mechanism) == (result, mechanism)


def test_ipv6_client_does_not_match_ip4(verifier):
    _, outcome = verifier.verify(CLIENT6, HELO, "alice@pass.example")
    assert (outcome.result, outcome.mechanism) == (R.FAIL, "-all")


# ---------------------------------------------------------------------------
# macros
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("sender, ip, result, mechanism, queried", [
    ("x@macro-i.example", CLIENT, R.PASS, "exists:%{i}.ip.macro.example",
     "192.0.2.10.ip.macro.example"),
    ("x@macro-i.example", OTHER, R.FAIL, "-all", "198.51.100.7.ip.macro.example"),
    ("x@macro-d.example", CLIENT, R.PASS, "include:%{d}.inc.macro.example",
     "macro-d.example.inc.macro.example"),
    ("alice@macro-lo.example", CLIENT, R.PASS, "exists:%{l}.%{o}.lo.macro.example",
     "alice.macro-lo.example.lo.macro.example"),
    ("bob@macro-lo.example", CLIENT, R.FAIL, "-all", "bob.macro-lo.example.lo.macro.example"),
])
def test_macros(verifier, srv, sender, ip, result, mechanism, queried):
    (_, outcome), log = queries_during(srv, lambda: verifier.verify(ip, HELO, sender))
    assert (outcome.result, outcome.mechanism) == (result, mechanism)
    assert queried in {name for name, _, _ in log}


def test_macro_l_and_o_for_helo_use_postmaster_and_helo(verifier, srv):
    (outcome, _), log = queries_during(srv, lambda: verifier.verify(CLIENT, "macro-lo.example", SENDER))
    assert outcome.result is R.FAIL
    assert "postmaster.macro-lo.example.lo.macro.example" in {name for name, _, _ in log}


# ---------------------------------------------------------------------------
# exp=
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("sender, ip, result, explanation", [
    ("carol@exp.example", OTHER, R.FAIL, "198.51.100.7 may not send for exp.example (carol)"),
    ("carol@exp.example", CLIENT, R.PASS, None),
    ("carol@expsoft.example", OTHER, R.SOFTFAIL, None),  # only fail carries it
    ("carol@expmissing.example", OTHER, R.FAIL, None),  # exp= names nothing: default text
    ("carol@pass.example", OTHER, R.FAIL, None),  # no exp= at all
])
def test_explanation(verifier, sender, ip, result, explanation):
    _, outcome = verifier.verify(ip, HELO, sender)
    assert outcome.result is result
    assert outcome.explanation == explanation


def test_explanation_for_helo(verifier, srv):
    srv.add("exphelo.example", "TXT", "v=spf1 -all exp=why.exp.example")
    helo, _ = verifier.verify(OTHER, "exphelo.example", SENDER)
    assert helo.result is R.FAIL
    assert helo.explanation == "198.51.100.7 may not send for exphelo.example (postmaster)"


# ---------------------------------------------------------------------------
# RFC 7208 section 5.5: validated PTR names (the ptr mechanism and the %{p} macro)
# ---------------------------------------------------------------------------

PTR_LOOP_FIRST = "192.0.2.44"  # PTR names: a CNAME loop, then a name that validates
PTR_LOOP_ONLY = "192.0.2.46"  # PTR name: only the CNAME loop
PTR_BROKEN = "192.0.2.45"  # the PTR lookup itself fails (SERVFAIL)
PTR_ZONE = {
    "44.2.0.192.in-addr.arpa": {"PTR": ["loop.ptrs.example.", "good.ptrs.example."]},
    "46.2.0.192.in-addr.arpa": {"PTR": "loop.ptrs.example."},
    "loop.ptrs.example": {"CNAME": "loop.ptrs.example."},
    "good.ptrs.example": {"A": PTR_LOOP_FIRST},
    "ptr.ptrs.example": {"TXT": "v=spf1 ptr:ptrs.example -all"},
    "p.ptrs.example": {"TXT": "v=spf1 -all exp=why.ptrs.example"},
    "why.ptrs.example": {"TXT": "connect from %{p}"},
}


@pytest.fixture(scope="module")
def ptr_srv(srv):
    srv.load(PTR_ZONE)
    srv.fault("45.2.0.192.in-addr.arpa", "servfail")
    return srv


@pytest.mark.parametrize("ip, result, mechanism", [
    (PTR_LOOP_FIRST, R.PASS, "ptr:ptrs.example"),  # the loop is skipped, the next name matches
    (PTR_LOOP_ONLY, R.FAIL, "-all"),  # nothing validates: no match
    (PTR_BROKEN, R.FAIL, "-all"),  # "a DNS error ... doing the PTR RR lookup": no match
])
def test_ptr_names_that_cannot_be_validated_are_skipped(ptr_srv, ip, result, mechanism):
    """RFC 7208 section 5.5: a DNS error (here a CNAME loop, RFC 1034 section 3.6.2) while
    looking up a PTR name's addresses skips that name; one in the PTR lookup fails to match.
    Neither makes the whole check a temperror."""
    verifier = Verifier(ptr_srv, receiver="mx.test", budget=5.0)
    _, outcome = verifier.verify(ip, HELO, "dave@ptr.ptrs.example")
    assert (outcome.result, outcome.mechanism) == (result, mechanism)


@pytest.mark.parametrize("ip", [PTR_LOOP_ONLY, PTR_BROKEN])
def test_p_macro_is_unknown_when_no_name_validates(ptr_srv, ip):
    """RFC 7208 section 7.3: with no validated name, or a DNS error, %{p} is "unknown"."""
    verifier = Verifier(ptr_srv, receiver="mx.test", budget=5.0)
    _, outcome = verifier.verify(ip, HELO, "dave@p.ptrs.example")
    assert (outcome.result, outcome.explanation) == (R.FAIL, "connect from unknown")


# ---------------------------------------------------------------------------
# RFC 7208 section 4.6.4 limits
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("domain, ip, result, mechanism, problem", [
    ("ten.example", CLIENT, R.FAIL, "-all", None),
    ("eleven.example", CLIENT, R.PERMERROR, None, "Too many DNS lookups"),
    ("void2.example", CLIENT, R.FAIL, "-all", None),
    ("void3.example", CLIENT, R.PERMERROR, None, "Void lookup limit"),
    ("mx10.example", CLIENT, R.PASS, "mx", None),
    ("mx10.example", OTHER, R.FAIL, "-all", None),
    ("mx11.example", CLIENT, R.PERMERROR, None, "More than 10 MX"),
    ("loop-a.example", CLIENT, R.PERMERROR, None, None),
    ("loop-self.example", CLIENT, R.PERMERROR, None, None),
    ("loop-redirect.example", CLIENT, R.PERMERROR, None, None),
])
def test_processing_limits(verifier, domain, ip, result, mechanism, problem):
    started = time.monotonic()
    _, outcome = verifier.verify(ip, HELO, f"dave@{domain}")
    assert time.monotonic() - started < 2.0
    assert outcome.result is result
    assert outcome.mechanism == mechanism
    if problem:
        assert problem in outcome.problem


def test_include_loop_stops_at_the_lookup_limit(srv):
    verifier = Verifier(srv, receiver="mx.test", budget=5.0)
    (_, outcome), log = queries_during(srv, lambda: verifier.verify(CLIENT, HELO, "dave@loop-a.example"))
    assert outcome.result is R.PERMERROR
    loop_queries = [name for name, _, _ in log if name.startswith("loop-")]
    assert 10 <= len(loop_queries) <= 12  # the top record plus at most ten includes


# ---------------------------------------------------------------------------
# the time budget
# ---------------------------------------------------------------------------


def test_budget_is_per_transaction_not_per_lookup():
    with DNSServer() as slow:
        slow.default_fault = "timeout"
        verifier = Verifier(client_for(slow), receiver="mx.test", budget=0.8)
        started = time.monotonic()
        helo, mailfrom = verifier.verify(CLIENT, "helo.slow.example", "erin@from.slow.example")
        elapsed = time.monotonic() - started
        assert elapsed < 1.3
        assert helo.result is R.TEMPERROR
        assert mailfrom.result is R.TEMPERROR
        assert mailfrom.domain == "from.slow.example"
        assert "budget exhausted" in mailfrom.problem
        assert slow.query_count("from.slow.example") == 0  # nothing left to ask with


def test_budget_starts_afresh_for_each_transaction():
    with DNSServer() as slow:
        slow.add("fine.slow.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
        slow.fault("late.slow.example", "timeout")
        verifier = Verifier(client_for(slow), receiver="mx.test", budget=0.3)
        _, first = verifier.verify(CLIENT, "fine.slow.example", "erin@late.slow.example")
        assert first.result is R.TEMPERROR
        helo, second = verifier.verify(CLIENT, "fine.slow.example", "erin@fine.slow.example")
        assert (helo.result, second.result) == (R.PASS, R.PASS)


# ---------------------------------------------------------------------------
# the HELO outcome cache
# ---------------------------------------------------------------------------


def test_helo_outcome_is_reused_for_the_same_ip_and_helo(srv):
    # No DNS cache, so any reuse is the Verifier's own.
    verifier = Verifier(srv, receiver="mx.test", budget=5.0)
    before = srv.query_count("reuse.example")
    first, _ = verifier.verify(CLIENT, "reuse.example", "a@pass.example")
    second, _ = verifier.verify(CLIENT, "REUSE.example", "b@softfail.example")
    assert first.result is R.PASS
    assert second == first
    assert srv.query_count("reuse.example") - before == 1
    verifier.verify(OTHER, "reuse.example", "c@pass.example")  # another client: checked anew
    assert srv.query_count("reuse.example") - before == 2


def test_helo_temperror_is_not_reused(srv):
    verifier = Verifier(srv, receiver="mx.test", budget=5.0)
    before = srv.query_count("servfail.example")
    for _ in range(2):
        helo, _ = verifier.verify(CLIENT, "servfail.example", SENDER)
        assert helo.result is R.TEMPERROR
    assert srv.query_count("servfail.example") - before == 2


# ---------------------------------------------------------------------------
# pyspf failing
# ---------------------------------------------------------------------------


def test_unexpected_exception_in_pyspf_is_a_logged_temperror(verifier, monkeypatch, caplog):
    def boom(self, spf=None):
        raise RuntimeError("pyspf exploded")

    monkeypatch.setattr(spf.query, "check", boom)
    with caplog.at_level(logging.ERROR, logger="spfmilter.verify"):
        helo, mailfrom = verifier.verify(CLIENT, HELO, SENDER)
    for outcome, domain in ((helo, HELO), (mailfrom, "pass.example")):
        assert outcome.result is R.TEMPERROR
        assert outcome.domain == domain
        assert outcome.problem == "internal error in SPF evaluation: RuntimeError"
    records = [r for r in caplog.records if r.name == "spfmilter.verify"]
    assert len(records) == 2
    assert all(r.levelno == logging.ERROR and r.exc_info and r.exc_info[0] is RuntimeError
               for r in records)
    monkeypatch.undo()
    helo, _ = verifier.verify(CLIENT, HELO, SENDER)  # the temperror was not cached
    assert helo.result is R.PASS


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("domain, expected", [
    ("example.com", True), ("mail.example.com.", True), ("_spf.example.com", True),
    ("localhost", False), ("192.0.2.1", False), ("[192.0.2.1]", False), ("", False),
    ("a..b", False), ("a-.example", False),
])
def test_is_spf_domain(domain, expected):
    assert is_spf_domain(domain) is expected


def test_result_titles():
    assert [r.logged for r in SpfResult] == [
        "Pass", "Fail", "Softfail", "Neutral", "None", "PermError", "TempError"]


def test_unknown_client_address_gives_none_for_both_identities_without_dns():
    from spfmilter.dns import DnsClient

    class NoDns:
        def resolve(self, *args, **kwargs):
            raise AssertionError("no DNS query may be made without a client address")

    verifier = Verifier(DnsClient(NoDns(), 0), receiver="mx.test", budget=1.0)
    helo, mailfrom = verifier.verify(None, "mx.example.net", "a@example.org")
    assert (helo.result, helo.problem) == (SpfResult.NONE, "client IP address unknown")
    assert (mailfrom.result, mailfrom.sender, mailfrom.domain) == (SpfResult.NONE, "a@example.org", "example.org")


# ---------------------------------------------------------------------------
# one transaction's Checks: the allow-list lookups (issue 14)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ip, domain, authorized", [
    (CLIENT, "pass.example", True),
    (OTHER, "pass.example", False),
    (CLIENT, "softfail.example", False),  # only pass authorizes
    (CLIENT, "include.example", True),
    (CLIENT, "servfail.example", False),  # a DNS error is "no"
    (CLIENT, "eleven.example", False),  # permerror
    (CLIENT, "nospf.example", False),
    (CLIENT, "not a domain", False),
])
def test_checks_authorizes(srv, ip, domain, authorized):
    assert Verifier(srv, receiver="mx.test", budget=5.0).checks().authorizes(ip, domain) is authorized


@pytest.mark.parametrize("ip, names", [
    (PTR_LOOP_FIRST, ["good.ptrs.example"]),  # the name in a CNAME loop does not validate
    (PTR_LOOP_ONLY, []),
    (PTR_BROKEN, []),  # SERVFAIL on the PTR lookup: no names, no error
    (OTHER, []),  # no PTR record
])
def test_checks_validated_ptrs(ptr_srv, ip, names):
    assert Verifier(ptr_srv, receiver="mx.test", budget=5.0).checks().validated_ptrs(ip) == names


def test_checks_share_one_budget():
    """An allow-list lookup that hangs uses up the transaction's budget: the identities after it
    get temperror at once instead of waiting dns_timeout again."""
    with DNSServer() as slow:
        slow.fault("hang.slow.example", "timeout")
        slow.add("fine.slow.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
        checks = Verifier(client_for(slow), receiver="mx.test", budget=0.5).checks()
        started = time.monotonic()
        assert checks.authorizes(CLIENT, "hang.slow.example") is False
        outcome = checks.mailfrom(CLIENT, "fine.slow.example", "erin@fine.slow.example")
        assert time.monotonic() - started < 1.0
        assert outcome.result is R.TEMPERROR and "budget exhausted" in outcome.problem
        # a new transaction has a new budget
        fresh = Verifier(client_for(slow), receiver="mx.test", budget=0.5).checks()
        assert fresh.mailfrom(CLIENT, "fine.slow.example", "erin@fine.slow.example").result is R.PASS


# ---------------------------------------------------------------------------
# the SPF result cache (DnsClient.spf_results): reuse while the DNS answers are cached
# ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rc_server():
    with DNSServer("127.0.0.1") as server:
        server.add("plain.rc.example", "TXT", "v=spf1 include:_spf.rc.example -all", ttl=600)
        server.add("_spf.rc.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all", ttl=120)
        server.add("macro.rc.example", "TXT", "v=spf1 exists:%{l}.allow.rc.example -all", ttl=600)
        server.add("alice.allow.rc.example", "A", "127.0.0.2", ttl=600)
        server.add("exp.rc.example", "TXT", "v=spf1 -all exp=why.rc.example", ttl=600)
        server.add("why.rc.example", "TXT", "%{l} may not send", ttl=600)
        yield server


def cached_verifier(server, clock):
    client = DnsClient(make_resolver((DnsServer("127.0.0.1", server.port),)), 1000, clock=clock)
    return Verifier(client, receiver="mx.test", budget=5.0, clock=clock), client


def test_a_result_is_reused_for_another_sender_of_the_domain_without_dns(rc_server):
    clock = Clock()
    verifier, client = cached_verifier(rc_server, clock)
    _, first = verifier.verify(CLIENT, "mx.client.example", "alice@plain.rc.example")
    sent = client.queries
    _, second = verifier.verify(CLIENT, "mx.client.example", "bob@Plain.rc.example")
    assert client.queries == sent
    assert len(client.spf_results) >= 1
    assert (first.result, first.mechanism) == (second.result, second.mechanism) == (R.PASS, "include:_spf.rc.example")
    assert (second.sender, second.domain, second.identity) == ("bob@Plain.rc.example", "Plain.rc.example",
                                                               Identity.MAILFROM)
    _, other_ip = verifier.verify("198.51.100.1", "mx.client.example", "bob@plain.rc.example")
    assert other_ip.result is R.FAIL  # the key is (client address, domain)


def test_the_result_expires_with_the_first_dns_answer_it_used(rc_server):
    clock = Clock()
    verifier, client = cached_verifier(rc_server, clock)
    assert verifier.verify(CLIENT, "mx.client.example", "a@plain.rc.example")[1].result is R.PASS
    rc_server.remove("_spf.rc.example")
    rc_server.add("_spf.rc.example", "TXT", "v=spf1 -all", ttl=120)
    clock.now += 119  # the include's 120 s TTL has not run out: cached
    assert verifier.verify(CLIENT, "mx.client.example", "b@plain.rc.example")[1].result is R.PASS
    clock.now += 2  # now it has: the include is asked again, the new record decides
    assert verifier.verify(CLIENT, "mx.client.example", "c@plain.rc.example")[1].result is R.FAIL


@pytest.mark.parametrize("domain, first_sender, second_sender, results", [
    ("macro.rc.example", "alice", "bob", (R.PASS, R.FAIL)),  # %{l}: the local part decides
    ("exp.rc.example", "alice", "bob", (R.FAIL, R.FAIL)),  # exp= text with a macro: explained per sender
])
def test_records_with_macros_are_evaluated_for_every_sender(rc_server, domain, first_sender, second_sender,
                                                            results):
    clock = Clock()
    verifier, client = cached_verifier(rc_server, clock)
    _, first = verifier.verify(CLIENT, "mx.client.example", f"{first_sender}@{domain}")
    _, second = verifier.verify(CLIENT, "mx.client.example", f"{second_sender}@{domain}")
    assert (first.result, second.result) == results
    assert client.spf_results.get((CLIENT, domain)) is None
    if domain.startswith("exp"):
        assert (first.explanation, second.explanation) == ("alice may not send", "bob may not send")


def test_a_temporary_error_is_not_cached(rc_server):
    clock = Clock()
    verifier, client = cached_verifier(rc_server, clock)
    rc_server.add("flaky.rc.example", "TXT", "v=spf1 include:down.rc.example -all")
    rc_server.fault("down.rc.example", "servfail")
    assert verifier.verify(CLIENT, "mx.client.example", "a@flaky.rc.example")[1].result is R.TEMPERROR
    assert client.spf_results.get((CLIENT, "flaky.rc.example")) is None


def test_explain_traces_are_never_served_from_the_cache(rc_server):
    clock = Clock()
    client = DnsClient(make_resolver((DnsServer("127.0.0.1", rc_server.port),)), 1000, clock=clock)
    Verifier(client, receiver="mx.test", budget=5.0, clock=clock).verify(CLIENT, "h.example", "a@plain.rc.example")
    made = []

    def factory(identity, *args):
        made.append(identity)
        from spfmilter.verify import _Query
        return _Query(*args)

    traced = Verifier(client, receiver="mx.test", budget=5.0, clock=clock, query_factory=factory)
    traced.verify(CLIENT, "h.example", "b@plain.rc.example")
    assert Identity.MAILFROM in made  # evaluated, not answered from the cache
