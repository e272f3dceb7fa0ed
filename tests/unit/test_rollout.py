"""Per-domain staged rollout (policy.enforced_for / rcpt_reply / spared): tables."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from spfmilter.config import parse_text
from spfmilter.policy import (DKIM_NOTE, Action, Evaluation, Facts, decide, disposition, dkim_verdict,
                             enforced_for, rcpt_reply, rcpt_verdict, routed_anywhere, spared)
from spfmilter.verify import Identity, SpfOutcome, SpfResult

FACTS = Facts(client_ip="192.0.2.7", helo="helo.example", sender="a@fail.example")


def evaluation(cfg, mailfrom=SpfResult.FAIL, helo=SpfResult.PASS, helo_domain="helo.example"):
    outcomes = (SpfOutcome(Identity.HELO, helo, helo_domain, f"postmaster@{helo_domain}"),
                SpfOutcome(Identity.MAILFROM, mailfrom, "fail.example", "a@fail.example"))
    return Evaluation(FACTS, outcomes=outcomes, decision=decide(*outcomes, FACTS, cfg))


@pytest.mark.parametrize("cfgtext,recipient,enforced", [
    ("mode = header-only", "<b@mx.test>", False),
    ("mode = enforce", "<b@mx.test>", True),
    ("mode = header-only\nenforce_domains = mx.test", "<b@mx.test>", True),
    ("mode = header-only\nenforce_domains = mx.test", "<b@MX.TEST>", True),
    ("mode = header-only\nenforce_domains = mx.test", "<b@other.test>", False),
    ("mode = header-only\nenforce_domains = mx.test", "<b@sub.mx.test>", False),  # exact domains only
    ("mode = enforce\nheader_only_domains = other.test", "<b@other.test>", False),
    ("mode = enforce\nheader_only_domains = other.test", "<b@mx.test>", True),
    ("mode = enforce\nheader_only_senders = fail.example", "<b@mx.test>", False),
    ("mode = header-only\nenforce_domains = mx.test\nheader_only_senders = fail.example", "<b@mx.test>", False),
    ("mode = enforce\nheader_only_senders = other.example", "<b@mx.test>", True),
    # routed by the MTA to any domain: enforced whenever any enforcement applies
    ("mode = header-only\nenforce_domains = b.test", "<victim%b.test@a.test>", True),
    ("mode = header-only\nenforce_domains = b.test", "<b.test!victim@a.test>", True),
    ("mode = header-only\nenforce_domains = b.test", "<b.test!victim>", True),
    ("mode = header-only\nenforce_domains = b.test", '<"victim@b.test"@a.test>', True),
    ("mode = header-only\nenforce_domains = b.test", "<victim@[192.0.2.1]>", True),
    ("mode = header-only\nenforce_domains = b.test", "<victim@[IPv6:2001:db8::1]>", True),
    ("mode = header-only\nenforce_domains = b.test", "<victim@a.test>", False),
    ("mode = header-only", "<victim%b.test@a.test>", False),  # nothing is ever enforced
    ("mode = enforce\nheader_only_domains = a.test", "<victim%b.test@a.test>", True),
    ("mode = enforce\nheader_only_domains = a.test", "<victim@a.test>", False),
    ("mode = enforce\nheader_only_senders = fail.example", "<victim%b.test@a.test>", False),
])
def test_enforced_for(cfgtext, recipient, enforced):
    cfg = parse_text(cfgtext, "t")
    ev = evaluation(cfg)
    assert enforced_for(ev, recipient, cfg) is enforced
    assert rcpt_reply(ev, recipient, cfg).refuses is enforced
    assert spared(ev, recipient, cfg) is (not enforced)


def test_the_deciding_identity_names_the_sender_domain():
    # HELO decides: the exception must name the HELO domain
    cfg = parse_text("mode = enforce\nheader_only_senders = badhelo.example", "t")
    ev = evaluation(cfg, mailfrom=SpfResult.PASS, helo=SpfResult.FAIL, helo_domain="badhelo.example")
    assert ev.decision.identity is Identity.HELO
    assert not rcpt_reply(ev, "<b@mx.test>", cfg).refuses
    cfg2 = parse_text("mode = enforce\nheader_only_senders = fail.example", "t")
    ev2 = evaluation(cfg2, mailfrom=SpfResult.PASS, helo=SpfResult.FAIL, helo_domain="badhelo.example")
    assert rcpt_reply(ev2, "<b@mx.test>", cfg2).refuses


def test_exempt_recipients_are_not_spared_they_are_exempt():
    cfg = parse_text("mode = header-only", "t")
    ev = evaluation(cfg)
    assert not spared(ev, "<postmaster@mx.test>", cfg)
    assert spared(ev, "<b@mx.test>", cfg)


def test_nothing_is_spared_when_nothing_refuses():
    cfg = parse_text("mode = header-only", "t")
    ev = evaluation(cfg, mailfrom=SpfResult.PASS)
    assert not spared(ev, "<b@mx.test>", cfg)


@pytest.mark.parametrize("recipient, anywhere", [
    ("<v%b.test@a.test>", True), ("<b.test!v@a.test>", True), ('<"v@b.test"@a.test>', True),
    ("<v@[192.0.2.1]>", True), ("<b.test!v>", True),
    ("<v@a.test>", False), ("<postmaster>", False), ("<@relay.test:v@a.test>", False), ("<v.w+x@a.test>", False),
])
def test_routed_anywhere(recipient, anywhere):
    assert routed_anywhere(recipient) is anywhere


@pytest.mark.parametrize("mailfrom, spared_, dkim, action, note", [
    (SpfResult.PASS, True, False, "accept", None),
    (SpfResult.FAIL, True, False, "would-reject", "not enforced here; enforcement would refuse it with 550 5.7.23"),
    (SpfResult.FAIL, False, True, "accept-dkim", DKIM_NOTE),
    (SpfResult.FAIL, True, True, "accept-dkim", DKIM_NOTE),
    (SpfResult.FAIL, False, False, "accept-exempt", None),
])
def test_disposition(mailfrom, spared_, dkim, action, note):
    cfg = parse_text("mode = enforce", "t")
    ev = evaluation(cfg, mailfrom=mailfrom)
    got_action, got_note = disposition(ev, spared=spared_, dkim_spared=dkim)
    assert got_action is Action(action)
    assert got_note == (None if note is None else (Identity.MAILFROM, note))


# --------------------------------------------------------------------------- rcpt_verdict, dkim_verdict

@pytest.mark.parametrize("cfgtext, recipient, held_so_far, reply, held, spared_", [
    ("mode = enforce", "<b@mx.test>", None, "550 5.7.23", None, False),
    ("mode = enforce", "<postmaster@mx.test>", None, None, None, False),  # exempt: neither refused nor spared
    ("mode = header-only", "<b@mx.test>", None, None, None, True),
    ("mode = enforce\nspf_fail_hold = dkim", "<b@mx.test>", None, None, True, False),  # held for DKIM
    ("mode = enforce\nspf_fail_hold = dkim", "<b@mx.test>", True, None, True, False),
    ("mode = enforce\nspf_fail_hold = dkim", "<b@mx.test>", False, "452 4.5.3", None, False),  # mixed
    ("mode = enforce\nspf_fail_hold = dkim", "<postmaster@mx.test>", None, None, False, False),  # free
    ("mode = enforce\nspf_fail_hold = dkim", "<postmaster@mx.test>", True, "452 4.5.3", None, False),
    ("mode = header-only\nspf_fail_hold = dkim\nenforce_domains = mx.test", "<b@other.test>", None, None, False,
     True),
])
def test_rcpt_verdict(cfgtext, recipient, held_so_far, reply, held, spared_):
    cfg = parse_text(cfgtext, "t")
    verdict = rcpt_verdict(evaluation(cfg), recipient, cfg, held_so_far)
    assert (None if verdict.reply is None else f"{verdict.reply.code} {verdict.reply.xcode}") == reply
    assert verdict.action is (Action.REJECT if reply == "550 5.7.23" else None)  # 452 is not an SPF outcome
    assert (verdict.held, verdict.spared) == (held, spared_)


@dataclass(frozen=True)
class Dkim:
    result: str
    aligned: bool


@pytest.mark.parametrize("results, checked, action, reply", [
    ([Dkim("pass", True)], True, Action.ACCEPT, None),
    ([Dkim("fail", True), Dkim("pass", True)], True, Action.ACCEPT, None),
    ([Dkim("pass", False)], True, Action.REJECT, "550 5.7.23"),  # unaligned
    ([Dkim("temperror", True)], True, Action.DEFER, "451 4.4.3"),
    ([Dkim("temperror", False)], True, Action.REJECT, "550 5.7.23"),
    ([], True, Action.REJECT, "550 5.7.23"),
    ([Dkim("pass", True)], False, Action.REJECT, "550 5.7.23"),  # too big to hold: not checked
])
def test_dkim_verdict(results, checked, action, reply):
    cfg = parse_text("mode = enforce\nspf_fail_hold = dkim", "t")
    got_action, got_reply = dkim_verdict(evaluation(cfg), results, checked)
    assert got_action is action
    assert (None if got_reply is None else f"{got_reply.code} {got_reply.xcode}") == reply
