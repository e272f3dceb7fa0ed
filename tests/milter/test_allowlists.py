"""Issue 14 item 1, through the socket: the options admins bring from policyd-spf and pyspf-milter.

Allow-lists (trusted_helo_names, trusted_ptr_domains, trusted_spf_domains, skip_macros), one identity
turned off (check_identities), HELO refusals for bounces only (helo_reject_scope), sender domains that
must pass (require_pass_domains), the refusal text (reject_text) and refusals without enhanced status
codes (enhanced_status_codes = no).  Each milter runs in enforce mode against the local DNS server, so a
client that is checked gets refused and one that is skipped does not.
"""
from __future__ import annotations

import time

import pytest

from spfmilter.srs import forward
from tests.support.sessions import (KEYS, PASSED_ON, SRS_DOMAIN, ar_results, run, session, srs_config, srs_mods,
                                    write_secrets, zones)

RELAY_IP = "192.0.2.50"  # relay.trusted.example, whose HELO passes SPF
PTR_IP = "192.0.2.60"  # PTR out1.fwd.example, which points back: validated
BAD_PTR_IP = "192.0.2.61"  # PTR out2.fwd.example, which does not point back
FORWARDER_IP = "192.0.2.70"  # authorized by forwarder.example's SPF record
OTHER_IP = "192.0.2.71"  # nobody's


@pytest.fixture(scope="module")
def world(dns_server):
    zones(dns_server)
    dns_server.add("relay.trusted.example", "TXT", "v=spf1 a -all")
    dns_server.add("relay.trusted.example", "A", RELAY_IP)
    dns_server.add("60.2.0.192.in-addr.arpa", "PTR", "out1.fwd.example.")
    dns_server.add("out1.fwd.example", "A", PTR_IP)
    dns_server.add("61.2.0.192.in-addr.arpa", "PTR", "out2.fwd.example.")
    dns_server.add("out2.fwd.example", "A", "198.51.100.99")
    dns_server.add("forwarder.example", "TXT", f"v=spf1 ip4:{FORWARDER_IP} -all")
    dns_server.add("offhelo.example", "TXT", "v=spf1 -all")  # check_identities tests: never asked
    dns_server.add("offmail.example", "TXT", "v=spf1 -all")
    dns_server.add("slow.example", "TXT", "v=spf1 -all")
    dns_server.fault("slow.example", "servfail")
    return dns_server


def refused(replies) -> bool:
    return any(r.is_rejection for r in replies["rcpt"])


def skip_lines(milter):
    return milter.log_lines("skipped=")


# --------------------------------------------------------------------------- allow-lists

def test_trusted_helo_name_skips_only_when_the_helo_passes(start_milter, world):
    milter = start_milter("mode = enforce\ntrusted_helo_names = relay.trusted.example")
    replies, mods, _ = run(milter, sender="<x@fail.example>", ip=RELAY_IP, helo="relay.trusted.example")
    assert not refused(replies)
    assert mods == []  # not checked: no headers
    [line] = skip_lines(milter)
    assert 'skipped="trusted HELO name relay.trusted.example"' in line and f"client-ip={RELAY_IP}" in line
    # the same name from another address fails its HELO check: checked, and refused
    milter.mark()
    replies, _, _ = run(milter, sender="<x@fail.example>", ip=OTHER_IP, helo="relay.trusted.example")
    assert refused(replies)
    assert skip_lines(milter) == []


def test_trusted_ptr_domain_needs_a_validated_name(start_milter, world):
    milter = start_milter("mode = enforce\ntrusted_ptr_domains = fwd.example")
    replies, mods, _ = run(milter, sender="<x@fail.example>", ip=PTR_IP, helo="out1.fwd.example")
    assert not refused(replies) and mods == []
    [line] = skip_lines(milter)
    assert 'skipped="trusted PTR name out1.fwd.example in fwd.example"' in line
    milter.mark()
    replies, _, _ = run(milter, sender="<x@fail.example>", ip=BAD_PTR_IP, helo="out2.fwd.example")
    assert refused(replies)  # its PTR name does not point back to it (RFC 7208 section 5.5)
    assert skip_lines(milter) == []


def test_trusted_spf_domain_authorizes_the_client_whatever_the_sender(start_milter, world):
    milter = start_milter("mode = enforce\ntrusted_spf_domains = slow.example, forwarder.example")
    replies, mods, _ = run(milter, sender="<x@fail.example>", ip=FORWARDER_IP)
    assert not refused(replies) and mods == []
    [line] = skip_lines(milter)
    assert 'skipped="authorized by trusted SPF domain forwarder.example"' in line
    milter.mark()
    # a DNS error on one listed domain counts as "not authorized"; the client is checked as usual
    replies, _, _ = run(milter, sender="<x@fail.example>", ip=OTHER_IP)
    assert refused(replies)
    assert skip_lines(milter) == []


def test_allow_listed_forwarder_still_gets_srs(start_milter, world, tmp_path, forward_table):
    # a relay trusted for SPF is not one of our clients: its forwarded mail is rewritten, unlike
    # mail from trusted_networks (see tests/milter/test_srs_sessions.py)
    secrets = write_secrets(tmp_path / "srs-secrets")
    milter = start_milter(srs_config(secrets, forward_table, "trusted_spf_domains = forwarder.example"))
    _, mods = session(milter, "<alice@fail.example>", ["<fwd@mx.test>"], ip=FORWARDER_IP)
    assert [m[0] for m in srs_mods(mods)] == ["chgfrom"]
    assert 'skipped="authorized by trusted SPF domain forwarder.example"' in milter.logs()


@pytest.mark.parametrize("value, skipped", [
    ("submission", True),
    ("smtpd", False),
    ("Submission", False),  # compared exactly, as pyspf-milter does
    (None, False),  # the MTA did not send the macro
])
def test_skip_macros(start_milter, world, value, skipped):
    milter = start_milter("mode = enforce\nskip_macros = {daemon_name}=submission")
    client = milter.client()
    macros = {"j": "mx.test"}
    if value is not None:
        macros["{daemon_name}"] = value
    client.connect("[192.0.2.7]", "192.0.2.7", port=40000, family="4", macros=macros)
    client.helo("helo.example")
    replies, mods, _ = run(milter, sender="<x@fail.example>", client=client)
    client.quit()
    assert refused(replies) is not skipped
    lines = skip_lines(milter)
    if skipped:
        assert mods == []
        [line] = lines
        assert 'skipped="macro {daemon_name}=submission"' in line
    else:
        assert lines == []


# --------------------------------------------------------------------------- identities and scopes

def test_check_identities_helo_only(start_milter, world):
    milter = start_milter("mode = enforce\ncheck_identities = helo\nheader_type = both")
    replies, mods, _ = run(milter, sender="<x@offmail.example>")
    assert not refused(replies)  # MAIL FROM is not checked
    assert set(ar_results(mods)) == {"helo"}
    spf_headers = [m for m in mods if m[0] == "insheader" and m[2] == "Received-SPF"]
    assert len(spf_headers) == 1 and "identity=helo" in spf_headers[0][3]
    assert milter.log_lines("identity=mailfrom") == [] and len(milter.log_lines("identity=helo")) == 1
    assert world.query_count("offmail.example") == 0  # not looked up at all
    replies, _, _ = run(milter, sender="<x@pass.example>", helo="badhelo.example")
    assert refused(replies)  # the HELO is


def test_check_identities_mailfrom_only(start_milter, world):
    milter = start_milter("mode = enforce\ncheck_identities = mailfrom")
    replies, mods, _ = run(milter, sender="<x@pass.example>", helo="offhelo.example")
    assert not refused(replies)
    assert set(ar_results(mods)) == {"mailfrom"}
    assert world.query_count("offhelo.example") == 0  # not looked up at all
    assert milter.log_lines("identity=helo") == [] and len(milter.log_lines("identity=mailfrom")) == 1
    # the null sender's MAIL FROM identity is its HELO name (RFC 7208 section 2.4): still checked
    replies, mods, _ = run(milter, sender="<>", helo="offhelo.example")
    assert refused(replies)
    assert world.query_count("offhelo.example") > 0


@pytest.mark.parametrize("scope, sender, is_refused", [
    ("all", "<x@pass.example>", True),
    ("null-sender", "<x@pass.example>", False),
    ("null-sender", "<>", True),
])
def test_helo_reject_scope(start_milter, world, scope, sender, is_refused):
    milter = start_milter(f"mode = enforce\nhelo_reject_scope = {scope}\nmailfrom_reject_results =")
    replies, _, _ = run(milter, sender=sender, helo="badhelo.example")
    assert refused(replies) is is_refused
    if is_refused:
        assert "SPF fail for HELO badhelo.example" in replies["rcpt"][0].text


@pytest.mark.parametrize("domain, expected", [
    ("pass.example", None),
    ("neutral.example", (550, "5.7.23")),
    ("softfail.example", (550, "5.7.23")),
    ("none.example", (550, "5.7.23")),
    ("permerror.example", (550, "5.7.24")),
    ("temperror.example", (451, "4.7.24")),  # deferred, even with temperror_action = accept
    ("fail.example", None),  # not listed, and mailfrom_reject_results is empty
])
def test_require_pass_domains(start_milter, world, domain, expected):
    milter = start_milter("mode = enforce\nmailfrom_reject_results =\ntemperror_action = accept\n"
                          "require_pass_domains = pass.example neutral.example softfail.example none.example "
                          "permerror.example temperror.example")
    replies, _, _ = run(milter, sender=f"<x@{domain}>")
    reply = replies["rcpt"][0]
    if expected is None:
        assert reply.action in PASSED_ON
    else:
        assert (reply.code, reply.xcode) == expected


# --------------------------------------------------------------------------- replies

def test_reject_text_with_placeholders_cleaned(start_milter, world):
    milter = start_milter("mode = enforce\nhelo_reject_results = fail, none\n"
                          "reject_text = SPF {result} for {domain} ({identity}, {ip}, {sender}): "
                          "see https://mx.test/spf?d={domain}")
    replies, _, _ = run(milter, sender="<x@fail.example>")
    assert replies["rcpt"][0].text == ("550 5.7.23 SPF fail for fail.example (mailfrom, 192.0.2.7, x@fail.example): "
                                       "see https://mx.test/spf?d=fail.example")
    # a HELO name is the client's to choose: '%' (libmilter's format character) and controls are cleaned
    replies, _, _ = run(milter, sender="<x@pass.example>", helo="evil%n%s\x7fname")
    text = replies["rcpt"][0].text
    assert text.startswith("550 5.7.23 SPF none for postmaster@evil?n?s?name (helo, 192.0.2.7, x@pass.example)")
    assert "%" not in text


@pytest.fixture(scope="module")
def srs_secrets(tmp_path_factory):
    return write_secrets(tmp_path_factory.mktemp("srs14") / "srs-secrets")


def test_enhanced_status_codes_no_leaves_them_out_of_every_refusal(start_milter, world, srs_secrets, forward_table):
    base = srs_config(srs_secrets, forward_table, "mode = enforce\nenhanced_status_codes = no\n")
    milter = start_milter(base)
    # SPF refusal
    replies, _, _ = run(milter, sender="<x@fail.example>")
    reply = replies["rcpt"][0]
    assert (reply.code, reply.xcode) == (550, None) and reply.text.startswith("550 SPF fail for fail.example")
    # SPF temperror deferral
    replies, _, _ = run(milter, sender="<x@temperror.example>")
    reply = replies["rcpt"][0]
    assert (reply.code, reply.xcode) == (451, None) and reply.text.startswith("451 SPF temporary error")
    # SRS: a forged bounce address (550 5.1.1), and mixed recipients (452 4.5.3)
    forged = "SRS0=AAAA=ZZ=victim.example=bob@" + SRS_DOMAIN
    replies, _ = session(milter, "<>", [f"<{forged}>"])
    assert (replies[0].code, replies[0].xcode) == (550, None) and "Invalid SRS address" in replies[0].text
    replies, _ = session(milter, "<alice@pass.example>", ["<fwd@mx.test>", "<user@mx.test>"])
    assert (replies[1].code, replies[1].xcode) == (452, None)
    # a real SRS bounce still goes through
    good = forward("alice@pass.example", SRS_DOMAIN, KEYS, time.time())
    replies, _ = session(milter, "<>", [f"<{good}>"])
    assert replies[0].action == "continue"


def test_enhanced_status_codes_no_also_for_on_error(start_milter, world):
    milter = start_milter("mode = enforce\nenhanced_status_codes = no", module="tests.support.faulty_milter")
    replies, _, _ = run(milter, sender="<crash-verify@pass.example>")
    reply = replies["rcpt"][0]
    assert (reply.code, reply.xcode) == (451, None)
    assert reply.text == "451 Temporary error in the SPF filter; please try again later"


def test_enhanced_status_codes_yes_is_the_default(start_milter, world):
    replies, _, _ = run(start_milter("mode = enforce"), sender="<x@fail.example>")
    assert (replies["rcpt"][0].code, replies["rcpt"][0].xcode) == (550, "5.7.23")
