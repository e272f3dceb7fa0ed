"""Per-domain staged rollout and DMARC-aware holding of SPF refusals (spf_fail_hold = dkim).

Through the real milter process and socket; DKIM keys are served by the loopback test
DNS server, messages are signed with the test key (tests/support/dkimsign.py).
"""
from __future__ import annotations

import time

import authres
import pytest

from tests.support.dkimsign import hostile_key_record, publish, sign
from tests.support.sessions import MESSAGE, PASSED_ON, added_headers, ar_results, run, send_signed, zones


@pytest.fixture(scope="module")
def world(dns_server):
    zones(dns_server)
    # fail.example does not authorise CLIENT_IP; it signs its mail with DKIM
    publish(dns_server, "fail.example")
    publish(dns_server, "other-signer.example")
    dns_server.add("dkimdead.example", "TXT", "v=spf1 -all")
    dns_server.fault("test._domainkey.dkimdead.example", "servfail")
    # issue 11: a bank whose SPF fails for CLIENT_IP, an attacker with a DKIM key of its own,
    # and a domain publishing a key too costly to verify with
    for name in ("bank.example", "news.bank.example", "hostile.example"):
        dns_server.add(name, "TXT", "v=spf1 -all")
    publish(dns_server, "mail.bank.example")
    publish(dns_server, "attacker.example")
    dns_server.add("test._domainkey.hostile.example", "TXT", hostile_key_record())
    return dns_server


def ar_reason(mods, identity="mailfrom"):
    [(name, value)] = [h for h in added_headers(mods) if h[0] == "Authentication-Results"]
    parsed = authres.AuthenticationResultsHeader.parse(f"{name}: {value}")
    for result in parsed.results:
        if result.method == "spf" and result.properties[0].name == identity:
            return result.reason
    raise AssertionError("no such result")


# ---------------------------------------------------------------- staged rollout

def test_enforce_domains_refuse_only_for_the_domains_switched_on(start_milter, world):
    milter = start_milter("mode = header-only\nenforce_domains = mx.test")
    replies, mods, _ = run(milter, sender="<a@fail.example>", rcpts=("<b@mx.test>", "<c@other.test>"))
    assert (replies["rcpt"][0].code, replies["rcpt"][0].xcode) == (550, "5.7.23")
    assert replies["rcpt"][1].action in PASSED_ON
    assert ar_results(mods)["mailfrom"][0] == "fail"
    # the copy delivered to the header-only domain says what enforcement would have done
    assert ar_reason(mods).startswith("not enforced here; enforcement would refuse it with 550 5.7.23")
    # the log has the refusal that happened (once per transaction)
    actions = [line.split("action=")[1].split(";")[0] for line in milter.log_lines("identity=mailfrom")]
    assert actions == ["reject"]
    # a transaction only for the header-only domain is logged as would-reject
    run(milter, sender="<a@fail.example>", rcpts=("<c@other.test>",))
    assert "action=would-reject" in milter.log_lines("identity=mailfrom")[-1]


def test_header_only_domains_are_spared_when_mode_is_enforce(start_milter, world):
    milter = start_milter("mode = enforce\nheader_only_domains = other.test")
    replies, mods, _ = run(milter, sender="<a@fail.example>", rcpts=("<c@other.test>",))
    assert replies["rcpt"][0].action in PASSED_ON
    assert ar_reason(mods).startswith("not enforced here")
    replies, _, _ = run(milter, sender="<a@fail.example>", rcpts=("<b@mx.test>",))
    assert replies["rcpt"][0].code == 550


def test_header_only_senders_are_never_refused(start_milter, world):
    milter = start_milter("mode = enforce\nheader_only_senders = fail.example")
    replies, mods, _ = run(milter, sender="<a@fail.example>")
    assert replies["rcpt"][0].action in PASSED_ON
    assert ar_results(mods)["mailfrom"][0] == "fail" and ar_reason(mods).startswith("not enforced here")
    replies, _, _ = run(milter, sender="<a@softfail.example>")  # others: unchanged (softfail is not refused)
    assert replies["rcpt"][0].action in PASSED_ON
    milter2 = start_milter("mode = enforce\nheader_only_senders = softfail.example")
    replies, _, _ = run(milter2, sender="<a@fail.example>")
    assert replies["rcpt"][0].code == 550


def test_exempt_recipient_in_enforce_mode_is_not_marked_as_spared(start_milter, world):
    milter = start_milter("mode = enforce")
    replies, mods, _ = run(milter, sender="<a@fail.example>", rcpts=("<postmaster@mx.test>",))
    assert replies["rcpt"][0].action in PASSED_ON
    assert ar_reason(mods) is None
    assert "action=accept-exempt" in milter.log_lines("identity=mailfrom")[-1]


# ---------------------------------------------------------------- holding for DKIM

@pytest.fixture
def holding(start_milter, world):
    return start_milter("mode = enforce\nspf_fail_hold = dkim")


def test_spf_fail_with_an_aligned_dkim_signature_is_delivered(holding):
    replies, reply, mods = send_signed(holding, sign(MESSAGE, "fail.example"))
    assert replies[0].action in PASSED_ON  # held, not refused at RCPT
    assert reply.action == "continue"
    [(_, value)] = [h for h in added_headers(mods) if h[0] == "Authentication-Results"]
    parsed = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")
    found = {(r.method, r.result) for r in parsed.results}
    assert ("spf", "fail") in found and ("dkim", "pass") in found
    assert ar_reason(mods).startswith("SPF fail overridden by a DKIM signature aligned with From:")
    assert "action=accept-dkim" in holding.log_lines("identity=mailfrom")[-1]


@pytest.mark.parametrize("case,message", [
    ("no signature", MESSAGE),
    ("body changed", sign(MESSAGE, "fail.example").replace(b"Hello", b"Hullo")),
    ("unaligned signer", sign(MESSAGE, "other-signer.example")),
    ("no key published", sign(MESSAGE, "pass.example")),
])
def test_spf_fail_without_a_valid_aligned_signature_is_refused_at_end_of_message(holding, case, message):
    replies, reply, mods = send_signed(holding, message)
    assert replies[0].action in PASSED_ON, case
    assert (reply.action, reply.code, reply.xcode) == ("replycode", 550, "5.7.23"), case
    assert "action=reject" in holding.log_lines("identity=mailfrom")[-1]


def test_dns_failure_fetching_the_key_defers(start_milter, world):
    milter = start_milter("mode = enforce\nspf_fail_hold = dkim")
    message = MESSAGE.replace(b"alice@fail.example", b"alice@dkimdead.example")
    _, reply, _ = send_signed(milter, sign(message, "dkimdead.example"), sender="<alice@dkimdead.example>")
    assert (reply.action, reply.code, reply.xcode) == ("replycode", 451, "4.4.3")


def test_held_and_free_recipients_go_in_separate_transactions(holding):
    replies, reply, _ = send_signed(holding, sign(MESSAGE, "fail.example"),
                                    rcpts=("<bob@mx.test>", "<postmaster@mx.test>", "<carol@mx.test>"))
    assert replies[0].action in PASSED_ON and replies[2].action in PASSED_ON
    assert (replies[1].code, replies[1].xcode) == (452, "4.5.3")
    assert reply.action == "continue"


def test_pass_and_other_results_are_not_held(holding):
    replies, mods, _ = run(holding, sender="<a@pass.example>")
    assert replies["rcpt"][0].action in PASSED_ON and ar_results(mods)["mailfrom"][0] == "pass"
    replies, _, _ = run(holding, sender="<a@temperror.example>")
    assert (replies["rcpt"][0].code, replies["rcpt"][0].xcode) == (451, "4.7.24")  # a temperror still defers at RCPT


# ---------------------------------------------------------------- alignment and cost (issue 11)

def bank_message(author: str) -> bytes:
    return MESSAGE.replace(b"alice@fail.example", author.encode())


def test_a_signature_of_an_unrelated_domain_does_not_spare_an_spf_fail(holding):
    """MAIL FROM <ceo@bank.example> (-all), From: and d= of the attacker's own domain."""
    message = sign(bank_message("x@attacker.example"), "attacker.example")
    replies, reply, _ = send_signed(holding, message, sender="<ceo@bank.example>")
    assert replies[0].action in PASSED_ON
    assert (reply.action, reply.code, reply.xcode) == ("replycode", 550, "5.7.23")
    assert "action=reject" in holding.log_lines("identity=mailfrom")[-1]
    assert "dkim=policy:attacker.example(unaligned)" in holding.logs()


@pytest.mark.parametrize("author,sender", [
    ("alice@bank.example", "<bounce@news.bank.example>"),
    ("alice@news.bank.example", "<bounce@bank.example>"),  # siblings of one organisational domain
])
def test_a_signature_of_the_same_organisational_domain_spares_it(holding, author, sender):
    message = sign(bank_message(author), "mail.bank.example")
    replies, reply, mods = send_signed(holding, message, sender=sender)
    assert replies[0].action in PASSED_ON
    assert reply.action == "continue"
    assert ar_reason(mods).startswith("SPF fail overridden by a DKIM signature aligned with From: and MAIL FROM")
    assert "action=accept-dkim" in holding.log_lines("identity=mailfrom")[-1]


def test_a_refusal_decided_by_helo_is_not_held(holding):
    """DMARC aligns SPF with MAIL FROM only: a failing HELO is refused at RCPT, signature or not."""
    replies, reply, _ = send_signed(holding, sign(MESSAGE, "fail.example"), helo="badhelo.example")
    assert (replies[0].code, replies[0].xcode) == (550, "5.7.23") and reply is None
    [helo_line] = [line for line in holding.log_lines("action=reject") if "identity=helo" in line]
    assert "reply=\"550 5.7.23 SPF fail for HELO badhelo.example" in helo_line, helo_line


def test_hostile_keys_get_the_spf_refusal_quickly(holding):
    """Five signatures pointing at an 8192-bit key with an 8192-bit exponent (issue 11 item 5):
    refused before any arithmetic, so the end of the message is answered at once."""
    message = bank_message("alice@hostile.example")
    for _ in range(5):
        message = sign(message, "hostile.example")
    started = time.monotonic()
    replies, reply, _ = send_signed(holding, message, sender="<alice@hostile.example>")
    took = time.monotonic() - started
    assert (reply.action, reply.code, reply.xcode) == ("replycode", 550, "5.7.23")
    assert took < 2.0, took  # dkimpy needs about a second of CPU per such signature
    logs = holding.logs()
    assert "key refused: RSA key of 8192 bits is larger than 4096" in logs
    refused = 'permerror:hostile.example ["key refused: RSA key of 8192 bits is larger than 4096"]'
    skipped = 'policy:hostile.example ["not verified: at most 3 signatures are verified per message"]'
    assert f"dkim={refused}, {refused}, {refused}, {skipped}, {skipped}; held SPF refusal" in logs
