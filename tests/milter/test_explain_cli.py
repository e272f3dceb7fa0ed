"""`spfmilter explain`: the real evaluation against the loopback DNS server, traced step by step.

Every case also checks that the trace reports what the milter decides: the printed
results are those of an independent Verifier run, and the headers and SMTP reply are
word for word what `spfmilter check` prints for the same case.
"""
from __future__ import annotations

import argparse
import io
import re

import pytest

from spfmilter import explain
from spfmilter.checkcmd import run_check
from spfmilter.cli import add_explain_parser
from spfmilter.config import parse_text
from spfmilter.dns import DnsClient, make_resolver
from spfmilter.verify import Verifier, parse_envelope_address

CLIENT = "192.0.2.10"
HELO = "helo.example"  # "v=spf1 a -all", A = CLIENT


@pytest.fixture(scope="module")
def world(dns_server):
    dns = dns_server
    dns.add("pass.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    dns.add(HELO, "TXT", "v=spf1 a -all")
    dns.add(HELO, "A", CLIENT)
    # fail with exp=, through an include that does not pass
    dns.add("exp.example", "TXT", "v=spf1 include:_spf.exp.example -all exp=why.exp.example")
    dns.add("_spf.exp.example", "TXT", "v=spf1 ip4:203.0.113.0/24 ~all")
    dns.add("why.exp.example", "TXT", "%{i} is not one of our servers, see https://exp.example/spf")
    # an include that passes
    dns.add("inc.example", "TXT", "v=spf1 ip4:198.51.100.0/24 include:_spf.inc.example -all")
    dns.add("_spf.inc.example", "TXT", "v=spf1 include:_deep.inc.example ~all")
    dns.add("_deep.inc.example", "TXT", "v=spf1 ip4:192.0.2.0/28 -all")
    dns.add("redirect.example", "TXT", "v=spf1 ip4:198.51.100.0/24 redirect=_spf.redirect.example")
    dns.add("_spf.redirect.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    dns.add("combo.example", "TXT", "v=spf1 include:_a.combo.example redirect=_b.combo.example")
    dns.add("_a.combo.example", "TXT", "v=spf1 ip4:203.0.113.0/24 -all")
    dns.add("_b.combo.example", "TXT", "v=spf1 exists:%{i}.bl.combo.example ptr -all")
    dns.add("192.0.2.10.bl.combo.example", "A", "127.0.0.2")
    dns.add("ptr.example", "TXT", "v=spf1 exists:%{i}.none.ptr.example ptr:ptr.example -all")
    dns.add("10.2.0.192.in-addr.arpa", "PTR", "mail.ptr.example.")
    dns.add("mail.ptr.example", "A", CLIENT)
    # mx that does not match, then a: that does
    dns.add("mx.example", "TXT", "v=spf1 mx a:www.mx.example -all")
    dns.add("mx.example", "MX", "10 mail.mx.example.")
    dns.add("mail.mx.example", "A", "203.0.113.25")
    dns.add("www.mx.example", "A", CLIENT)
    # eleven lookups
    dns.add("many.example", "TXT", "v=spf1 " + " ".join(f"a:h{n}.many.example" for n in range(1, 12)) + " -all")
    for n in range(1, 12):
        dns.add(f"h{n}.many.example", "A", f"203.0.113.{n}")
    dns.add("void.example", "TXT", "v=spf1 a:nx1.void.example a:nx2.void.example a:nx3.void.example -all")
    dns.add("servfail.example", "TXT", "v=spf1 include:broken.example -all")
    dns.add("broken.example", "TXT", "v=spf1 +all")
    dns.fault("broken.example", "servfail")
    dns.add("none.example", "A", "192.0.2.99")
    dns.add("hostile.example", "TXT", "v=spf1 -all exp=why.hostile.example")
    dns.add("why.hostile.example", "TXT", "bad\r\nX-Injected: yes\x1b[31m")
    return dns


@pytest.fixture
def make_config(world):
    def make(extra: str = ""):
        return parse_text(f"authserv_id = mx.test\ndns_servers = 127.0.0.1:{world.port}\n"
                          f"header_type = both\n{extra}\n")
    return make


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="spfmilter")
    add_explain_parser(top.add_subparsers(dest="command", metavar="COMMAND"))
    return top


def run(config, *argv):
    out, err = io.StringIO(), io.StringIO()
    args = parser().parse_args(["explain", *argv])
    rc = explain.run(args, config, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def identity_block(text: str, title: str) -> str:
    """The lines of one identity's section (from its title to the blank line after it)."""
    match = re.search(rf"^{title} identity: .*?\n\n", text, re.MULTILINE | re.DOTALL)
    assert match, f"no {title} section in:\n{text}"
    return match.group(0)


def summary(block: str) -> dict:
    return {m.group(1): m.group(2) for m in re.finditer(r"^  ([a-zA-Z][a-zA-Z ]*):\s+(.*)$", block, re.MULTILINE)}


def assert_agrees_with_milter(config, text: str, ip: str, helo: str, sender: str,
                              recipient: str = "user@localhost") -> None:
    """The trace reports the Verifier's results, and ends with what `spfmilter check` prints."""
    client = DnsClient(make_resolver(config.dns_servers))
    helo_outcome, mailfrom_outcome = Verifier(client, config.receiver, config.dns_timeout).verify(
        ip, helo, parse_envelope_address(sender).text)
    for title, outcome in (("HELO", helo_outcome), ("MAIL FROM", mailfrom_outcome)):
        found = summary(identity_block(text, title))
        assert found["result"] == outcome.result.value, (title, text)
        assert found.get("mechanism") == outcome.mechanism, (title, text)
    check_out = io.StringIO()
    assert run_check(config, ip, helo, sender, recipient, out=check_out) == 0
    assert text.endswith("What the milter does:\n" + check_out.getvalue())


def test_pass_via_ip4_and_helo_via_a(make_config):
    config = make_config()
    rc, text, err = run(config, "--ip", CLIENT, "--helo", HELO, "--sender", "alice@pass.example")
    assert rc == 0, err
    helo = identity_block(text, "HELO")
    assert "dns: TXT helo.example -> \"v=spf1 a -all\"" in helo
    assert re.search(r" 1\. a     lookup 1/10\s+looked up helo.example A -> 192\.0\.2\.10: match\n", helo)
    assert "        dns: A helo.example -> 192.0.2.10\n" in helo
    assert re.search(r" 2\. -all\s+not tried \(an earlier term matched\)", helo)
    assert summary(helo) == {"result": "pass", "mechanism": "a", "DNS lookups": "1 of 10 allowed",
                             "void lookups": "0 of 2 allowed"}
    mailfrom = identity_block(text, "MAIL FROM")
    assert re.search(r" 1\. ip4:192\.0\.2\.0/24  match: 192\.0\.2\.10 in 192\.0\.2\.0/24\n", mailfrom)
    assert "=> pass (matched ip4:192.0.2.0/24)" in mailfrom
    assert summary(mailfrom)["DNS lookups"] == "0 of 10 allowed"
    assert_agrees_with_milter(config, text, CLIENT, HELO, "alice@pass.example")


def test_fail_with_exp_through_an_include(make_config):
    config = make_config("mode = enforce")
    rc, text, _ = run(config, "--ip", CLIENT, "--helo", HELO, "--sender", "bob@exp.example")
    assert rc == 0
    block = identity_block(text, "MAIL FROM")
    lines = block.splitlines()
    include = next(i for i, line in enumerate(lines) if "1. include:_spf.exp.example" in line)
    assert lines[include].endswith("lookup 1/10   -> softfail: no match (an include matches only on pass)")
    # the included record is shown below its include: term, indented one level deeper
    assert lines[include + 1] == "        SPF record of _spf.exp.example (included)"
    assert lines[include + 2] == '          dns: TXT _spf.exp.example -> "v=spf1 ip4:203.0.113.0/24 ~all"'
    assert "           1. ip4:203.0.113.0/24  no match: 192.0.2.10 not in 203.0.113.0/24" in lines
    assert "           2. ~all                match: all matches every client" in lines
    assert "          => softfail (matched ~all)" in lines
    assert re.search(r"\n     2\. -all\s+match: all matches every client\n", block)
    assert '    exp=why.exp.example -> "192.0.2.10 is not one of our servers, see https://exp.example/spf"' in lines
    assert "    => fail (matched -all)" in lines
    found = summary(block)
    assert found["result"] == "fail" and found["mechanism"] == "-all"
    assert found["explanation"] == '"192.0.2.10 is not one of our servers, see https://exp.example/spf"'
    assert "SMTP reply: 550 5.7.23 SPF fail for exp.example" in text
    assert_agrees_with_milter(config, text, CLIENT, HELO, "bob@exp.example")


def test_include_chain_that_passes(make_config):
    config = make_config()
    _, text, _ = run(config, "--ip", CLIENT, "--helo", HELO, "--sender", "c@inc.example")
    block = identity_block(text, "MAIL FROM")
    assert re.search(r" 2\. include:_spf\.inc\.example  lookup 1/10   -> pass: match\n", block)
    assert re.search(r"\n {14}SPF record of _deep\.inc\.example \(included\)\n", block)  # depth 2
    assert re.search(r"include:_deep\.inc\.example  lookup 2/10   -> pass: match", block)
    assert re.search(r"ip4:192\.0\.2\.0/28  match: 192\.0\.2\.10 in 192\.0\.2\.0/28", block)
    assert re.search(r" 3\. -all\s+not tried", block)
    assert summary(block)["result"] == "pass"
    assert summary(block)["DNS lookups"] == "2 of 10 allowed"
    assert_agrees_with_milter(config, text, CLIENT, HELO, "c@inc.example")


def test_redirect(make_config):
    config = make_config()
    _, text, _ = run(config, "--ip", CLIENT, "--helo", HELO, "--sender", "d@redirect.example")
    block = identity_block(text, "MAIL FROM")
    assert "    redirect= counted as DNS lookup 1 of 10 allowed\n" in block
    assert re.search(r" 1\. ip4:198\.51\.100\.0/24  no match: 192\.0\.2\.10 not in 198\.51\.100\.0/24\n", block)
    assert "    no term matched: following redirect=_spf.redirect.example\n" in block
    assert "      SPF record of _spf.redirect.example (redirect=)\n" in block
    assert "    => pass (from redirect=_spf.redirect.example)\n" in block
    assert summary(block)["mechanism"] == "ip4:192.0.2.0/24"
    assert_agrees_with_milter(config, text, CLIENT, HELO, "d@redirect.example")


def test_include_then_redirect_then_exists(make_config):
    config = make_config()
    _, text, _ = run(config, "--ip", CLIENT, "--helo", HELO, "--sender", "o@combo.example")
    block = identity_block(text, "MAIL FROM")
    lines = block.splitlines()
    assert re.search(r" 1\. include:_a\.combo\.example  lookup 2/10   -> fail: no match", block)
    assert "        SPF record of _a.combo.example (included)" in lines
    assert "    no term matched: following redirect=_b.combo.example" in lines
    assert "      SPF record of _b.combo.example (redirect=)" in lines
    assert re.search(r"\n {9}1\. exists:%\{i\}\.bl\.combo\.example  lookup 3/10   looked up "
                     r"192\.0\.2\.10\.bl\.combo\.example A -> 127\.0\.0\.2: match\n", block)
    assert re.search(r"\n {9}2\. ptr\s+not tried", block)
    assert summary(block)["mechanism"] == "exists:%{i}.bl.combo.example"
    assert summary(block)["DNS lookups"] == "3 of 10 allowed"  # redirect= counts too
    assert_agrees_with_milter(config, text, CLIENT, HELO, "o@combo.example")


def test_exists_without_answer_then_ptr(make_config):
    config = make_config()
    _, text, _ = run(config, "--ip", CLIENT, "--helo", HELO, "--sender", "p@ptr.example")
    block = identity_block(text, "MAIL FROM")
    assert re.search(r" 1\. exists:%\{i\}\.none\.ptr\.example\s+lookup 1/10\s+looked up "
                     r"192\.0\.2\.10\.none\.ptr\.example A -> no addresses: no match\n", block)
    assert "dns: A 192.0.2.10.none.ptr.example -> NXDOMAIN (void lookup 1 of 2 allowed)" in block
    assert re.search(r" 2\. ptr:ptr\.example\s+lookup 2/10\s+validated PTR names of 192\.0\.2\.10: "
                     r"mail\.ptr\.example: match \(in ptr\.example\)\n", block)
    assert "dns: PTR 10.2.0.192.in-addr.arpa -> mail.ptr.example" in block
    assert summary(block)["mechanism"] == "ptr:ptr.example"
    assert_agrees_with_milter(config, text, CLIENT, HELO, "p@ptr.example")


def test_mx_then_a(make_config):
    config = make_config()
    _, text, _ = run(config, "--ip", CLIENT, "--helo", HELO, "--sender", "e@mx.example")
    block = identity_block(text, "MAIL FROM")
    assert re.search(r" 1\. mx\s+lookup 1/10\s+looked up mx\.example MX -> mail\.mx\.example; their A -> "
                     r"203\.0\.113\.25: no match: 192\.0\.2\.10 not among them\n", block)
    assert "dns: MX mx.example -> mail.mx.example (preference 10)" in block
    assert "dns: A mail.mx.example -> 203.0.113.25" in block
    assert re.search(r" 2\. a:www\.mx\.example\s+lookup 2/10\s+looked up www\.mx\.example A -> 192\.0\.2\.10: match",
                     block)
    assert summary(block)["mechanism"] == "a:www.mx.example"
    assert_agrees_with_milter(config, text, CLIENT, HELO, "e@mx.example")


def test_permerror_too_many_lookups(make_config):
    config = make_config()
    _, text, _ = run(config, "--ip", CLIENT, "--helo", HELO, "--sender", "f@many.example")
    block = identity_block(text, "MAIL FROM")
    assert re.search(r"10\. a:h10\.many\.example\s+lookup 10/10\s+looked up h10\.many\.example A -> "
                     r"203\.0\.113\.10: no match", block)
    assert re.search(r"11\. a:h11\.many\.example\s+lookup 11/10\s+error: Too many DNS lookups\n", block)
    assert re.search(r"12\. -all\s+not evaluated \(the evaluation stopped above\)", block)
    assert "    => permerror: Too many DNS lookups\n" in block
    found = summary(block)
    assert found["result"] == "permerror" and found["problem"] == "Too many DNS lookups"
    assert found["DNS lookups"] == "11 of 10 allowed"
    assert_agrees_with_milter(config, text, CLIENT, HELO, "f@many.example")


def test_permerror_void_lookups(make_config):
    config = make_config()
    _, text, _ = run(config, "--ip", CLIENT, "--helo", HELO, "--sender", "g@void.example")
    block = identity_block(text, "MAIL FROM")
    assert "dns: A nx1.void.example -> NXDOMAIN (void lookup 1 of 2 allowed)" in block
    assert "dns: A nx2.void.example -> NXDOMAIN (void lookup 2 of 2 allowed)" in block
    assert "dns: A nx3.void.example -> NXDOMAIN (void lookup 3 of 2 allowed: limit exceeded)" in block
    assert re.search(r" 3\. a:nx3\.void\.example\s+lookup 3/10\s+error: Void lookup limit of 2 exceeded", block)
    assert summary(block)["void lookups"] == "3 of 2 allowed"
    assert_agrees_with_milter(config, text, CLIENT, HELO, "g@void.example")


def test_temperror_servfail_in_an_include(make_config):
    config = make_config("mode = enforce")
    _, text, _ = run(config, "--ip", CLIENT, "--helo", HELO, "--sender", "h@servfail.example")
    block = identity_block(text, "MAIL FROM")
    assert re.search(r" 1\. include:broken\.example\s+lookup 1/10\s+error: DNS server failure for "
                     r"broken\.example/TXT: SERVFAIL", block)
    assert "dns: TXT broken.example -> temporary error: DNS server failure for broken.example/TXT: SERVFAIL" in block
    assert re.search(r" 2\. -all\s+not evaluated", block)
    assert summary(block)["result"] == "temperror"
    assert "SMTP reply: 451 4.7.24" in text
    assert_agrees_with_milter(config, text, CLIENT, HELO, "h@servfail.example")


def test_none(make_config):
    config = make_config()
    _, text, _ = run(config, "--ip", CLIENT, "--helo", HELO, "--sender", "i@none.example")
    block = identity_block(text, "MAIL FROM")
    assert "    dns: TXT none.example -> no records (void lookup 1 of 2 allowed)\n" in block
    assert "    no SPF record (no TXT record starting with v=spf1)\n    => none\n" in block
    assert summary(block)["result"] == "none"
    assert_agrees_with_milter(config, text, CLIENT, HELO, "i@none.example")


def test_null_sender_is_the_helo_check(make_config):
    config = make_config()
    _, text, _ = run(config, "--ip", CLIENT, "--helo", HELO, "--sender", "<>")
    assert "  MAIL FROM:  <>\n" in text
    block = identity_block(text, "MAIL FROM")
    assert block.startswith("MAIL FROM identity: <> (null sender, checked as postmaster@helo.example)\n")
    assert "which is the HELO evaluation above" in block
    assert "SPF record of" not in block
    assert summary(block) == {"result": "pass", "mechanism": "a"}
    assert_agrees_with_milter(config, text, CLIENT, HELO, "")


def test_ipv6_client_skips_ip4(make_config):
    config = make_config()
    _, text, _ = run(config, "--ip", "2001:db8::25", "--helo", HELO, "--sender", "j@pass.example")
    block = identity_block(text, "MAIL FROM")
    assert re.search(r" 1\. ip4:192\.0\.2\.0/24  no match: ip4 never matches an IPv6 client\n", block)
    helo = identity_block(text, "HELO")
    assert "looked up helo.example AAAA -> no addresses: no match" in helo
    assert "dns: AAAA helo.example -> no records (void lookup 1 of 2 allowed)" in helo
    assert_agrees_with_milter(config, text, "2001:db8::25", HELO, "j@pass.example")


def test_helo_that_is_not_a_domain(make_config):
    config = make_config()
    _, text, _ = run(config, "--ip", CLIENT, "--helo", "[192.0.2.10]", "--sender", "k@pass.example")
    block = identity_block(text, "HELO")
    assert "  not evaluated: HELO name is not a fully qualified domain name\n" in block
    assert_agrees_with_milter(config, text, CLIENT, "[192.0.2.10]", "k@pass.example")


def test_hostile_explanation_is_escaped(make_config):
    config = make_config()
    _, text, _ = run(config, "--ip", CLIENT, "--helo", HELO, "--sender", "l@hostile.example")
    assert '"bad\\r\\nX-Injected: yes\\x1b[31m"' in text
    assert "\r" not in text and "\x1b" not in text
    assert not any(line.startswith("X-Injected") for line in text.splitlines())
    assert_agrees_with_milter(config, text, CLIENT, HELO, "l@hostile.example")


def test_trusted_client_is_not_evaluated(make_config):
    config = make_config()
    rc, text, _ = run(config, "--ip", "127.0.0.1", "--helo", "localhost", "--sender", "a@exp.example")
    assert rc == 0
    assert "SPF is not evaluated for this client (trusted network 127.0.0.0/8)." in text
    assert "identity:" not in text
    assert text.endswith("# not checked: trusted network 127.0.0.0/8; no headers added\n\nSMTP reply: 250 (accepted)\n")


POSTFIX_EML = (
    b"Return-Path: <bob@exp.example>\r\n"
    b"X-Original-To: postmaster@mx.test\r\n"
    b"Received: from localhost (localhost [127.0.0.1])\r\n"
    b"\tby mx.test (Postfix) with ESMTP id 4AAAA\r\n"
    b"\tfor <postmaster@mx.test>; Tue, 2 Jan 2024 10:00:01 +0000 (UTC)\r\n"
    b"Received: from helo.example (mail.helo.example [192.0.2.10])\r\n"
    b"\tby mx.test (Postfix) with ESMTPS id 4BBBB\r\n"
    b"\tfor <postmaster@mx.test>; Tue, 2 Jan 2024 10:00:00 +0000 (UTC)\r\n"
    b"Received: from internal.exp.example (internal.exp.example [10.1.2.3])\r\n"
    b"\tby helo.example (Postfix) with ESMTP id 4CCCC; Tue, 2 Jan 2024 09:59:59 +0000 (UTC)\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Received: from body.example (body.example [203.0.113.1])\r\n"
)


def test_eml_postfix_trace_headers(make_config, tmp_path):
    config = make_config("mode = enforce")
    eml = tmp_path / "message.eml"
    eml.write_bytes(POSTFIX_EML)
    rc, text, err = run(config, "--eml", str(eml))
    assert rc == 0, err
    assert "  client IP:  192.0.2.10\n  HELO:       helo.example\n  MAIL FROM:  <bob@exp.example>\n" in text
    assert "  RCPT TO:    <postmaster@mx.test>\n" in text  # from X-Original-To
    assert (f"  # {eml}: skipped Received header 1 of 3 (client 127.0.0.1: trusted network 127.0.0.0/8)\n"
            in text)
    assert (f"  # {eml}: client IP and HELO from Received header 2 of 3: Received: from helo.example "
            "(mail.helo.example [192.0.2.10]) by mx.test (Postfix) with ESMTPS id 4BBBB for") in text
    assert f"  # {eml}: sender from Return-Path: <bob@exp.example>\n" in text
    assert summary(identity_block(text, "MAIL FROM"))["result"] == "fail"
    assert "SMTP reply: 250 (accepted: exempt recipient postmaster@mx.test;" in text
    assert_agrees_with_milter(config, text, CLIENT, HELO, "bob@exp.example", "postmaster@mx.test")


def test_eml_received_spf_only_and_command_line_override(make_config, tmp_path):
    config = make_config()
    eml = tmp_path / "saved.eml"
    eml.write_bytes(b"Received-SPF: pass (mx.test: sender domain pass.example authorizes 192.0.2.10)\n"
                    b" receiver=mx.test; client-ip=192.0.2.10; envelope-from=\"m@pass.example\";\n"
                    b" helo=helo.example; identity=mailfrom\nSubject: x\n\nbody\n")
    _, text, _ = run(config, "--eml", str(eml))
    assert (f"  # {eml}: client IP and HELO and sender from Received-SPF header 1 of 1 (written by this server)"
            in text)
    assert summary(identity_block(text, "MAIL FROM"))["result"] == "pass"
    assert_agrees_with_milter(config, text, CLIENT, HELO, "m@pass.example")
    _, text, _ = run(config, "--eml", str(eml), "--sender", "n@exp.example")
    assert "  MAIL FROM:  <n@exp.example>\n" in text
    assert "  # given on the command line: --sender\n" in text
    assert summary(identity_block(text, "MAIL FROM"))["result"] == "fail"


def test_eml_without_trace_headers_is_refused(make_config, tmp_path):
    eml = tmp_path / "bare.eml"
    eml.write_bytes(b"Received: by mx.test (Postfix, from userid 0) id 4DDDD; Tue, 2 Jan 2024\n"
                    b"Subject: x\n\nbody\n")
    rc, text, err = run(make_config(), "--eml", str(eml))
    assert rc == 2 and text == ""
    assert err == (f"spfmilter explain: {eml}: no usable trace header (1 Received header(s), none of the form "
                   "'from HELO (NAME [IP])'; no Received-SPF header); give --ip, --helo and --sender\n")
