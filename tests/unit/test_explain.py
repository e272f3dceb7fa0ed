"""Unit tests for spfmilter.explain: quoting, trace formatting, the term-by-term trace of pyspf
(records given directly, no DNS), and the options (trace headers: test_tracefacts.py)."""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

import pytest

from spfmilter import explain as ex
from spfmilter.cli import add_explain_parser
from spfmilter.config import parse_text
from spfmilter.explain import (
    DnsStep,
    IdentityTrace,
    RecordStep,
    TermStep,
    format_dns,
    format_identity,
    format_record,
    term_reason,
)
from spfmilter.verify import Identity, SpfOutcome, SpfResult
from tests.support.terminal import safe_lines
from tests.support.zonelookup import ZoneLookup

CONFIG = parse_text("authserv_id = mx.test\n")
IP = "198.51.100.1"


# --------------------------------------------------------------------------- quoting

def test_quoted_escapes_inner_quotes():
    assert ex.quoted('say "hi"\n') == '"say \\"hi\\"\\n"'


# --------------------------------------------------------------------------- DNS lines

@pytest.mark.parametrize("step,line", [
    (DnsStep("example.com", "TXT", ((b"v=spf1 -all",),)), 'TXT example.com -> "v=spf1 -all"'),
    (DnsStep("two.example", "TXT", ((b"v=spf1 ", b"-all"), (b"other\n",))),
     'TXT two.example -> "v=spf1 -all", "other\\n"'),
    (DnsStep("mx.example", "MX", ((10, "mx1.example"), (20, "mx2.example"))),
     "MX mx.example -> mx1.example (preference 10), mx2.example (preference 20)"),
    (DnsStep("evil\r\n.example", "A", ("192.0.2.1",)), "A evil\\r\\n.example -> 192.0.2.1"),
    (DnsStep("example.com", "A", ("192.0.2.1", "192.0.2.2")), "A example.com -> 192.0.2.1, 192.0.2.2"),
    (DnsStep("nx.example", "A", nxdomain=True, void=1), "A nx.example -> NXDOMAIN (void lookup 1 of 2 allowed)"),
    (DnsStep("nx.example", "A", nxdomain=True), "A nx.example -> NXDOMAIN"),
    (DnsStep("empty.example", "MX", void=2), "MX empty.example -> no records (void lookup 2 of 2 allowed)"),
    (DnsStep("nx.example", "A", nxdomain=True, void=3, error="Void lookup limit of 2 exceeded"),
     "A nx.example -> NXDOMAIN (void lookup 3 of 2 allowed: limit exceeded)"),
    (DnsStep("sf.example", "TXT", error="DNS server failure for sf.example/TXT: SERVFAIL"),
     "TXT sf.example -> temporary error: DNS server failure for sf.example/TXT: SERVFAIL"),
    (DnsStep("slow.example", "TXT", error="DNS timeout looking up slow.example/TXT"),
     "TXT slow.example -> temporary error: DNS timeout looking up slow.example/TXT"),
    (DnsStep("a..b", "A", looked_up=False),
     "A a..b -> not looked up (not a valid domain name; counts as no records)"),
    (DnsStep("evil.example", "TXT", error="bad\r\nthing"), "TXT evil.example -> temporary error: bad\\r\\nthing"),
])
def test_format_dns(step, line):
    assert format_dns(step) == line


def test_format_dns_shows_at_most_twenty_answers():
    step = DnsStep("big.example", "A", tuple(f"192.0.2.{n}" for n in range(25)))
    assert format_dns(step).endswith("192.0.2.19, ... (5 more)")


@pytest.mark.parametrize("qtype,value,shown", [
    ("TXT", (b"v=spf1 ", b"-all"), '"v=spf1 -all"'),
    ("TXT", (b"x\r\ny\x1b",), '"x\\r\\ny\\x1b"'),
    ("TXT", (b"\xff\xfe",), '"\\xff\\xfe"'),
    ("MX", (10, "mx.example.com"), "mx.example.com (preference 10)"),
    ("A", "192.0.2.1", "192.0.2.1"),
    ("PTR", "host\n.example", "host\\n.example"),
])
def test_show_value(qtype, value, shown):
    assert ex._show_value(qtype, value) == shown


# --------------------------------------------------------------------------- term lines

def term(text, kind, **kw):
    kw.setdefault("tried", True)
    return TermStep(text, kind=kind, **kw)


@pytest.mark.parametrize("step,reason", [
    (term("ip4:192.0.2.0/24", "ip4", arg="192.0.2.0", cidr=24, compared=[(("192.0.2.0",), 24, False)],
          matched=False), "no match: 198.51.100.1 not in 192.0.2.0/24"),
    (term("ip4:198.51.100.0/24", "ip4", arg="198.51.100.0", cidr=24,
          compared=[(("198.51.100.0",), 24, True)], matched=True), "match: 198.51.100.1 in 198.51.100.0/24"),
    (term("ip6:2001:db8::/32", "ip6", arg="2001:db8::", cidr=32, matched=False, skipped=True),
     "no match: ip6 never matches an IPv4 client"),
    (term("a", "a", arg="example.com", cidr=32, compared=[(("192.0.2.10",), 32, False)], matched=False),
     "looked up example.com A -> 192.0.2.10: no match: 198.51.100.1 not among them"),
    (term("a", "a", arg="example.com", cidr=32, compared=[(("198.51.100.1",), 32, True)], matched=True),
     "looked up example.com A -> 198.51.100.1: match"),
    (term("a/24", "a", arg="example.com", cidr=24, compared=[(("198.51.100.9",), 24, True)], matched=True),
     "looked up example.com A -> 198.51.100.9: match (198.51.100.1 within /24)"),
    (term("a/24", "a", arg="example.com", cidr=24, compared=[(("192.0.2.9",), 24, False)], matched=False),
     "looked up example.com A -> 192.0.2.9: no match: 198.51.100.1 not within /24 of any"),
    (term("a:none.example", "a", arg="none.example", cidr=32, compared=[((), 32, False)], matched=False),
     "looked up none.example A -> no addresses: no match"),
    (term("mx", "mx", arg="example.com", cidr=32, matched=True,
          dns=[DnsStep("example.com", "MX", ((10, "mx1.example.com"),)),
               DnsStep("mx1.example.com", "A", ("198.51.100.1",))],
          compared=[(("198.51.100.1",), 32, True)]),
     "looked up example.com MX -> mx1.example.com; their A -> 198.51.100.1: match"),
    (term("mx", "mx", arg="example.com", cidr=32, matched=False,
          dns=[DnsStep("example.com", "MX", void=1)], compared=[((), 32, False)]),
     "looked up example.com MX -> no MX records: no match"),
    (term("exists:%{i}.bl.example", "exists", arg="198.51.100.1.bl.example", addresses=("127.0.0.2",),
          matched=True), "looked up 198.51.100.1.bl.example A -> 127.0.0.2: match"),
    (term("exists:x.example", "exists", arg="x.example", addresses=(), matched=False),
     "looked up x.example A -> no addresses: no match"),
    (term("ptr", "ptr", arg="example.com", ptrs=("mail.example.com",), matched=True),
     "validated PTR names of 198.51.100.1: mail.example.com: match (in example.com)"),
    (term("ptr:example.org", "ptr", arg="example.org", ptrs=(), matched=False),
     "validated PTR names of 198.51.100.1: none: no match: none is example.org or below it"),
    (term("include:_spf.example.net", "include", arg="_spf.example.net", matched=True,
          include=RecordStep("_spf.example.net", via="include", result="pass")), "-> pass: match"),
    (term("include:_spf.example.net", "include", arg="_spf.example.net", matched=False,
          include=RecordStep("_spf.example.net", via="include", result="fail")),
     "-> fail: no match (an include matches only on pass)"),
    (term("-all", "all", qualifier="fail", matched=True), "match: all matches every client"),
    (term("-all", "all", tried=False), "not tried (an earlier term matched)"),
    (term("a:h11.example", "a", error="Too many DNS lookups"), "error: Too many DNS lookups"),
    (term("bogus:x", "", error="Unknown mechanism found\n"), "error: Unknown mechanism found\\n"),
])
def test_term_reason(step, reason):
    assert term_reason(step, IP) == reason


def test_term_reason_after_an_error_says_not_evaluated():
    assert term_reason(term("-all", "all", tried=False), IP, stopped=True) == \
        "not evaluated (the evaluation stopped above)"


def test_term_reason_ipv6_client():
    step = term("ip4:192.0.2.0/24", "ip4", arg="192.0.2.0", cidr=24, matched=False, skipped=True)
    assert term_reason(step, "2001:db8::1") == "no match: ip4 never matches an IPv6 client"
    step = term("a", "a", arg="example.com", cidr=128, compared=[(("2001:db8::1",), 128, True)], matched=True)
    assert term_reason(step, "2001:db8::1") == "looked up example.com AAAA -> 2001:db8::1: match"


# --------------------------------------------------------------------------- records

def sample_record() -> RecordStep:
    included = RecordStep("_spf.example.net", via="include", depth=1, text="v=spf1 ip4:192.0.2.0/24 ~all",
                          evaluated=True, result="softfail",
                          fetch=[DnsStep("_spf.example.net", "TXT", ((b"v=spf1 ip4:192.0.2.0/24 ~all",),))])
    included.terms = [
        term("ip4:192.0.2.0/24", "ip4", arg="192.0.2.0", cidr=24, compared=[(("192.0.2.0",), 24, False)],
             matched=False),
        term("~all", "all", qualifier="softfail", matched=True)]
    top = RecordStep("example.com", text="v=spf1 include:_spf.example.net -all exp=why.example.com",
                     evaluated=True, result="fail",
                     fetch=[DnsStep("example.com", "TXT", ((b"v=spf1 include:_spf.example.net -all",),))],
                     notes=[("exp", "why.example.com", "198.51.100.1 is not allowed", "")],
                     dns=[DnsStep("why.example.com", "TXT", ((b"%{i} is not allowed",),))])
    top.terms = [term("include:_spf.example.net", "include", arg="_spf.example.net", lookup_no=1,
                      include=included, matched=False),
                 term("-all", "all", qualifier="fail", matched=True)]
    return top


def test_format_record_nests_an_include_and_aligns_terms():
    assert format_record(sample_record(), IP) == [
        "  SPF record of example.com",
        '    dns: TXT example.com -> "v=spf1 include:_spf.example.net -all"',
        "    record: v=spf1 include:_spf.example.net -all exp=why.example.com",
        '    exp=why.example.com -> "198.51.100.1 is not allowed"',
        '    dns: TXT why.example.com -> "%{i} is not allowed"',
        "     1. include:_spf.example.net  lookup 1/10   -> softfail: no match (an include matches only on pass)",
        "        SPF record of _spf.example.net (included)",
        '          dns: TXT _spf.example.net -> "v=spf1 ip4:192.0.2.0/24 ~all"',
        "          record: v=spf1 ip4:192.0.2.0/24 ~all",
        "           1. ip4:192.0.2.0/24  no match: 198.51.100.1 not in 192.0.2.0/24",
        "           2. ~all              match: all matches every client",
        "          => softfail (matched ~all)",
        "     2. -all                                    match: all matches every client",
        "    => fail (matched -all)",
    ]


@pytest.mark.parametrize("record,last", [
    (RecordStep("none.example", evaluated=True, result="none",
                fetch=[DnsStep("none.example", "TXT", nxdomain=True, void=1)]), "    => none"),
    (RecordStep("sf.example", result="temperror", error="DNS server failure for sf.example/TXT: SERVFAIL",
                fetch=[DnsStep("sf.example", "TXT", error="DNS server failure for sf.example/TXT: SERVFAIL")]),
     "    => temperror: DNS server failure for sf.example/TXT: SERVFAIL"),
    (RecordStep("two.example", result="permerror", error="Two or more type TXT spf records found."),
     "    => permerror: Two or more type TXT spf records found."),
    (RecordStep("d.example", text="v=spf1 ip4:192.0.2.1", evaluated=True, result="neutral",
                terms=[term("ip4:192.0.2.1", "ip4", arg="192.0.2.1", cidr=32,
                            compared=[(("192.0.2.1",), 32, False)], matched=False)]),
     "    => neutral (no term matched: the default result)"),
])
def test_record_endings(record, last):
    assert format_record(record, IP)[-1] == last


def test_redirect_is_followed_one_level_deeper():
    target = RecordStep("_spf.example.com", via="redirect", depth=1, text="v=spf1 -all", evaluated=True,
                        result="fail", terms=[term("-all", "all", qualifier="fail", matched=True)])
    record = RecordStep("example.com", text="v=spf1 redirect=_spf.example.com", evaluated=True, result="fail",
                        notes=[("redirect", 1)], redirect=target)
    lines = format_record(record, IP)
    assert lines[2:] == [
        "    redirect= counted as DNS lookup 1 of 10 allowed",
        "    no term matched: following redirect=_spf.example.com",
        "      SPF record of _spf.example.com (redirect=)",
        "        record: v=spf1 -all",
        "         1. -all  match: all matches every client",
        "        => fail (matched -all)",
        "    => fail (from redirect=_spf.example.com)",
    ]


def test_hostile_record_and_dns_content_is_escaped():
    evil = "v=spf1 a:x\r\nX-Evil: 1\x1b]0;owned\x07 -all\u2028"
    record = RecordStep("evil\n.example", text=evil, evaluated=True, result="permerror",
                        error="Unknown mechanism found: x\r\n", fetch=[
                            DnsStep("evil\n.example", "TXT", ((evil.encode(),),))],
                        notes=[("exp", "e.example", "you\rare\nowned\x00", "")],
                        terms=[term("a:x\r\nX-Evil:", "a", error="Invalid domain found\r\n")])
    text = "\n".join(format_record(record, IP))
    safe_lines(text)
    assert "\\r\\nX-Evil: 1\\x1b]0;owned\\x07 -all\\u2028" in text
    assert not any(line.startswith("X-Evil") for line in text.splitlines())


def test_format_identity_summary():
    outcome = SpfOutcome(Identity.MAILFROM, SpfResult.FAIL, "example.com", "a@example.com", mechanism="-all",
                         explanation="198.51.100.1 is not allowed\r\nX: y")
    lines = format_identity(IdentityTrace(Identity.MAILFROM, outcome, sample_record(), lookups=1), IP)
    assert lines[0] == "MAIL FROM identity: a@example.com"
    assert lines[-5:] == [
        "  result:        fail",
        "  mechanism:     -all",
        '  explanation:   "198.51.100.1 is not allowed\\r\\nX: y"',
        "  DNS lookups:   1 of 10 allowed",
        "  void lookups:  0 of 2 allowed",
    ]


def test_format_identity_not_evaluated_and_problem():
    outcome = SpfOutcome(Identity.HELO, SpfResult.NONE, "", "postmaster@x",
                         problem="HELO name is not a fully qualified domain name")
    assert format_identity(IdentityTrace(Identity.HELO, outcome), IP) == [
        "HELO identity: postmaster@x",
        "  not evaluated: HELO name is not a fully qualified domain name",
        "  result:  none",
    ]
    outcome = SpfOutcome(Identity.MAILFROM, SpfResult.FAIL, "e.com", "a@e.com", mechanism="-all")
    lines = format_identity(IdentityTrace(Identity.MAILFROM, outcome, sample_record()), IP)
    assert "  explanation:   none (the domain publishes no exp=)" in lines


# --------------------------------------------------------------------------- the trace of pyspf itself

class _NoDns:
    def lookup(self, name, qtype, deadline):  # pragma: no cover - must not be reached
        raise AssertionError(f"unexpected DNS lookup {name}/{qtype}")


def traced(record: str, ip: str = IP):
    query = ex._TracingQuery(ip, "a@example.com", "mx.example.com", _NoDns(), None, "mx.test")
    result = query.check(spf=record)
    return result[0], query._trace_top, query


@pytest.mark.parametrize("record,ip,result,matched", [
    # the last term matches with "?": neutral either way; only the trace can tell which
    ("v=spf1 ip4:192.0.2.0/24 ?ip4:198.51.100.0/24", IP, "neutral", [False, True]),
    ("v=spf1 ip4:192.0.2.0/24 ?ip4:203.0.113.0/24", IP, "neutral", [False, False]),
    ("v=spf1 -ip4:198.51.100.1 +all", IP, "fail", [True, None]),
    ("v=spf1 ip6:2001:db8::/32 ip4:198.51.100.0/24 -all", IP, "pass", [False, True, None]),
    ("v=spf1 ip4:198.51.100.0/24 -all", "2001:db8::1", "fail", [False, True]),
])
def test_tracing_query_records_each_term(record, ip, result, matched):
    got, top, query = traced(record, ip)
    assert got == result
    assert [t.matched for t in top.terms] == matched
    assert [t.tried for t in top.terms] == [m is not None for m in matched]
    assert top.result == result
    winner = next((t.term for t in top.terms if t.matched), None)
    assert winner == query.mechanism  # pyspf's own record of the matching term


def test_tracing_query_records_a_syntax_error():
    got, top, _ = traced("v=spf1 ip4:192.0.2.0/24 bogus:thing -all")
    assert got == "permerror"
    assert [(t.term, t.error) for t in top.terms] == [
        ("ip4:192.0.2.0/24", ""), ("bogus:thing", "Unknown mechanism found: bogus:thing")]
    assert not any(t.tried for t in top.terms)  # terms are parsed before any is evaluated
    assert top.result == "permerror"


def test_explain_through_a_dict_backed_lookup():
    """explain() takes any dns.Lookup: the whole trace, include and its DNS steps, without a socket."""
    zone = ZoneLookup({"example.com": {"TXT": "v=spf1 include:_spf.example.com -all"},
                       "_spf.example.com": {"TXT": "v=spf1 ip4:198.51.100.0/24 -all"},
                       "mx.example.com": {"TXT": "v=spf1 a -all", "A": IP}})
    explanation = ex.explain(CONFIG, IP, "mx.example.com", "a@example.com", "<b@mx.test>", lookup=zone)
    helo, mailfrom = explanation.identities
    assert (helo.outcome.result, mailfrom.outcome.result) == (SpfResult.PASS, SpfResult.PASS)
    assert mailfrom.outcome.mechanism == "include:_spf.example.com"
    assert [t.term for t in mailfrom.record.terms] == ["include:_spf.example.com", "-all"]
    assert mailfrom.lookups == 1
    assert ("_spf.example.com", "TXT", "local") in zone.queries
    text = ex.format_explanation(explanation)
    assert "TXT _spf.example.com -> \"v=spf1 ip4:198.51.100.0/24 -all\"" in text
    assert "SMTP reply: 250 (accepted)" in text


# --------------------------------------------------------------------------- options

def parse(*argv):
    parser = argparse.ArgumentParser(prog="spfmilter")
    add_explain_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["explain", *argv])


def test_explain_does_not_import_the_command_line():
    """cli imports explain (lazily, to run it); explain must not import cli back."""
    code = "import sys, spfmilter.explain; print('spfmilter.cli' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(ex.__file__))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout == "False\n"


def test_options():
    args = parse("--ip", "192.0.2.1", "--helo", "h.example", "--sender", "<>", "-c", "/etc/x.conf")
    assert (args.command, args.ip, args.helo, args.sender, args.recipient, args.eml, args.check_config_file,
            args.auth_user) == ("explain", "192.0.2.1", "h.example", "<>", None, None, "/etc/x.conf", None)
    args = parse("--eml", "m.eml", "--recipient", "postmaster@mx.test", "--config", "c.conf")
    assert (args.eml, args.recipient, args.check_config_file) == ("m.eml", "postmaster@mx.test", "c.conf")


@pytest.mark.parametrize("argv,message", [
    (("--ip", "192.0.2.1", "--helo", "h.example"),
     "spfmilter explain: missing --sender (give --ip, --helo and --sender, or --eml FILE)\n"),
    ((), "spfmilter explain: missing --ip, --helo, --sender (give --ip, --helo and --sender, or --eml FILE)\n"),
    (("--ip", "not-an-ip\x1b", "--helo", "h.example", "--sender", "a@b.example"),
     "spfmilter explain: not an IP address: not-an-ip\\x1b\n"),
    (("--eml", "/nonexistent/m.eml"), "spfmilter explain: /nonexistent/m.eml: cannot read: No such file or directory\n"),
])
def test_run_refuses_with_exit_status_2(argv, message):
    out, err = io.StringIO(), io.StringIO()
    assert ex.run(parse(*argv), CONFIG, out=out, err=err) == 2
    assert out.getvalue() == "" and err.getvalue() == message


def test_run_refuses_an_eml_without_sender(tmp_path):
    eml = tmp_path / "m.eml"
    eml.write_bytes(b"Received: from h.example (h.example [192.0.2.8]) by mx.test\n\n")
    err = io.StringIO()
    assert ex.run(parse("--eml", str(eml)), CONFIG, out=io.StringIO(), err=err) == 2
    assert "no Return-Path header and no Received-SPF envelope-from=; give the envelope sender with --sender" \
        in err.getvalue()
