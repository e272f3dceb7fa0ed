"""Tests for spfmilter.policy: decide(), trust_reason(), exempt recipients, rcpt_reply()."""
from __future__ import annotations

import re

import pytest

from spfmilter.config import parse_text
from spfmilter.policy import (
    ACCEPT,
    Action,
    Decision,
    Evaluation,
    Facts,
    decide,
    evaluate,
    is_exempt_recipient,
    rcpt_reply,
    removes_forged_headers,
    trust_reason,
)
from spfmilter.replies import Reply
from spfmilter.verify import Identity, SpfOutcome, SpfResult

HELO = "mail.example.net"
SENDER = "alice@example.org"
IP = "192.0.2.10"
FACTS = Facts(IP, HELO, SENDER)

ALL = list(SpfResult)


def config(text: str = ""):
    return parse_text("authserv_id = mx.test\n" + text)


def helo(result: SpfResult, **kw) -> SpfOutcome:
    return SpfOutcome(Identity.HELO, result, kw.pop("domain", HELO), f"postmaster@{HELO}", **kw)


def mailfrom(result: SpfResult, **kw) -> SpfOutcome:
    return SpfOutcome(Identity.MAILFROM, result, kw.pop("domain", "example.org"), kw.pop("sender", SENDER), **kw)


class FakeChecks:
    """policy.SpfChecks answered from a table; ``calls`` records what was asked."""

    def __init__(self, outcomes=None, authorized=(), ptrs=()):
        self.outcomes = outcomes or (helo(SpfResult.PASS), mailfrom(SpfResult.PASS))
        self.authorized = set(authorized)
        self.ptrs = list(ptrs)
        self.calls = []

    def helo(self, ip, helo_name, sender=""):
        self.calls.append(("helo", ip, helo_name))
        return self.outcomes[0]

    def mailfrom(self, ip, helo_name, sender):
        self.calls.append(("mailfrom", ip, helo_name, sender))
        return self.outcomes[1]

    def authorizes(self, ip, domain):
        self.calls.append(("authorizes", ip, domain))
        return domain in self.authorized

    def validated_ptrs(self, ip):
        self.calls.append(("ptr", ip))
        return self.ptrs


class NoChecks(FakeChecks):
    def __getattribute__(self, name):
        if name in ("helo", "mailfrom", "authorizes", "validated_ptrs"):
            raise AssertionError(f"must not look anything up ({name})")
        return super().__getattribute__(name)


def assert_safe_reply(decision: Decision):
    assert re.fullmatch(r"[\x20-\x7e]*", decision.reply.text), decision.reply.text
    assert "%" not in decision.reply.text
    assert len(decision.reply.text) <= 400
    assert "\r" not in str(decision.reply) and "\n" not in str(decision.reply)


# --------------------------------------------------------------------------- default config

@pytest.mark.parametrize("result", ALL)
def test_default_helo_result_with_mailfrom_pass(result):
    decision = decide(helo(result), mailfrom(SpfResult.PASS), FACTS, config())
    if result is SpfResult.FAIL:
        assert (decision.action, decision.reply.code, decision.reply.xcode, decision.identity) == \
            (Action.REJECT, 550, "5.7.23", Identity.HELO)
        assert decision.reply.text == f"SPF fail for HELO {HELO}: {IP} is not authorized to send for {HELO}"
        assert str(decision.reply) == f"550 5.7.23 {decision.reply.text}"
    else:  # a HELO temperror alone is not deferred
        assert decision == ACCEPT
        assert decision.reply is None


@pytest.mark.parametrize("result", ALL)
def test_default_mailfrom_result_with_helo_pass(result):
    decision = decide(helo(SpfResult.PASS), mailfrom(result), FACTS, config())
    if result is SpfResult.FAIL:
        assert (decision.action, decision.reply.code, decision.reply.xcode, decision.identity) == \
            (Action.REJECT, 550, "5.7.23", Identity.MAILFROM)
        assert decision.reply.text == (f"SPF fail for example.org (MAIL FROM {SENDER}): "
                                 f"{IP} is not authorized to send for example.org")
    elif result is SpfResult.TEMPERROR:
        assert (decision.action, decision.reply.code, decision.reply.xcode) == (Action.DEFER, 451, "4.7.24")
    else:
        assert decision == ACCEPT


@pytest.mark.parametrize("result", [r for r in ALL if r not in (SpfResult.PASS, SpfResult.TEMPERROR)])
def test_default_mailfrom_result_with_helo_none(result):
    decision = decide(helo(SpfResult.NONE, domain=""), mailfrom(result), FACTS, config())
    if result is SpfResult.FAIL:
        assert decision.action is Action.REJECT and decision.identity is Identity.MAILFROM
    else:
        assert decision == ACCEPT


@pytest.mark.parametrize("other", ALL)
def test_helo_fail_decides_first(other):
    decision = decide(helo(SpfResult.FAIL), mailfrom(other), FACTS, config())
    assert decision.action is Action.REJECT
    assert decision.identity is Identity.HELO
    assert decision.reply.xcode == "5.7.23"


def test_helo_decides_first_even_when_both_reject_differently():
    cfg = config("mailfrom_reject_results = permerror\nhelo_reject_results = softfail\n")
    decision = decide(helo(SpfResult.SOFTFAIL), mailfrom(SpfResult.PERMERROR, problem="x"), FACTS, cfg)
    assert (decision.identity, decision.reply.xcode) == (Identity.HELO, "5.7.23")


# --------------------------------------------------------------------------- configured reject results

@pytest.mark.parametrize("identity", ["helo", "mailfrom"])
@pytest.mark.parametrize("result, xcode, text", [
    (SpfResult.PERMERROR, "5.7.24", "SPF permanent error for {what}: too many DNS lookups"),
    (SpfResult.SOFTFAIL, "5.7.23", "SPF softfail for {what}: 192.0.2.10 is not authorized to send for {domain}"),
    (SpfResult.NEUTRAL, "5.7.23", "SPF neutral for {what}: 192.0.2.10 is not authorized to send for {domain}"),
    (SpfResult.NONE, "5.7.23", "SPF none for {what}: no SPF policy, and this server requires one"),
    (SpfResult.FAIL, "5.7.23", "SPF fail for {what}: 192.0.2.10 is not authorized to send for {domain}"),
])
def test_configured_reject_results(identity, result, xcode, text):
    cfg = config(f"{identity}_reject_results = {result.value}\n")
    problem = "too many DNS lookups" if result is SpfResult.PERMERROR else None
    if identity == "helo":
        outcomes = (helo(result, problem=problem), mailfrom(SpfResult.PASS))
        what, domain = f"HELO {HELO}", HELO
    else:
        outcomes = (helo(SpfResult.PASS), mailfrom(result, problem=problem))
        what, domain = f"example.org (MAIL FROM {SENDER})", "example.org"
    decision = decide(*outcomes, FACTS, cfg)
    assert decision.action is Action.REJECT
    assert (decision.reply.code, decision.reply.xcode) == (550, xcode)
    assert decision.identity is Identity(identity)
    assert decision.reply.text == text.format(what=what, domain=domain)
    assert str(decision.reply) == f"550 {xcode} {decision.reply.text}"


@pytest.mark.parametrize("identity", ["helo", "mailfrom"])
@pytest.mark.parametrize("result", ALL)
def test_empty_reject_list_never_rejects(identity, result):
    cfg = config(f"{identity}_reject_results =\ntemperror_action = accept\n")
    outcomes = (helo(result), mailfrom(SpfResult.PASS)) if identity == "helo" else \
        (helo(SpfResult.PASS), mailfrom(result))
    assert decide(*outcomes, FACTS, cfg) == ACCEPT


def test_reject_list_of_one_identity_does_not_apply_to_the_other():
    cfg = config("helo_reject_results = softfail\n")
    assert decide(helo(SpfResult.PASS), mailfrom(SpfResult.SOFTFAIL), FACTS, cfg) == ACCEPT
    cfg = config("mailfrom_reject_results = softfail\n")
    assert decide(helo(SpfResult.SOFTFAIL), mailfrom(SpfResult.PASS), FACTS, cfg) == ACCEPT


def test_permerror_without_problem_text():
    cfg = config("mailfrom_reject_results = permerror\n")
    decision = decide(helo(SpfResult.PASS), mailfrom(SpfResult.PERMERROR), FACTS, cfg)
    assert decision.reply.text == f"SPF permanent error for example.org (MAIL FROM {SENDER}): invalid SPF record"


def test_null_sender_and_local_client_in_texts():
    facts = Facts(None, HELO, "")
    outcome = SpfOutcome(Identity.MAILFROM, SpfResult.FAIL, HELO, f"postmaster@{HELO}")
    decision = decide(helo(SpfResult.PASS), outcome, facts, config())
    assert decision.reply.text == (f"SPF fail for {HELO} (MAIL FROM postmaster@{HELO}): "
                             f"unknown is not authorized to send for {HELO}")
    outcome = SpfOutcome(Identity.MAILFROM, SpfResult.NONE, "", "")
    decision = decide(helo(SpfResult.PASS), outcome, facts, config("mailfrom_reject_results = none"))
    assert decision.reply.text == "SPF none for sender (MAIL FROM <>): no SPF policy, and this server requires one"


# --------------------------------------------------------------------------- temperror
# A MAIL FROM temperror defers when temperror_action = defer (RFC 7208 section 8.6,
# RFC 7372: 4.7.24); a HELO temperror alone never defers.

@pytest.mark.parametrize("helo_result", [r for r in ALL if r is not SpfResult.FAIL])
def test_mailfrom_temperror_defers(helo_result):
    outcomes = (helo(helo_result), mailfrom(SpfResult.TEMPERROR, problem="DNS timeout"))
    decision = decide(*outcomes, FACTS, config())
    assert (decision.action, decision.reply.code, decision.reply.xcode) == (Action.DEFER, 451, "4.7.24")
    assert decision.identity is Identity.MAILFROM
    assert decision.reply.text == (f"SPF temporary error for example.org (MAIL FROM {SENDER}): "
                             "DNS timeout; please try again later")
    assert str(decision.reply) == f"451 4.7.24 {decision.reply.text}"
    assert decision.refuses


@pytest.mark.parametrize("mailfrom_result", [r for r in ALL if r not in (SpfResult.FAIL, SpfResult.TEMPERROR)])
def test_helo_temperror_alone_never_defers(mailfrom_result):
    outcomes = (helo(SpfResult.TEMPERROR, problem="DNS timeout"), mailfrom(mailfrom_result))
    assert decide(*outcomes, FACTS, config()) == ACCEPT


def test_null_sender_temperror_defers():
    # RFC 7208 section 2.4: for <> the MAIL FROM identity is postmaster@<helo>, i.e. the HELO check
    outcome = helo(SpfResult.TEMPERROR, problem="SERVFAIL")
    mailfrom_outcome = SpfOutcome(Identity.MAILFROM, SpfResult.TEMPERROR, HELO, f"postmaster@{HELO}",
                                  problem="SERVFAIL")
    decision = decide(outcome, mailfrom_outcome, Facts(IP, HELO, ""), config())
    assert (decision.action, decision.reply.code, decision.reply.xcode) == (Action.DEFER, 451, "4.7.24")
    assert decision.reply.text == (f"SPF temporary error for {HELO} (MAIL FROM postmaster@{HELO}): "
                             "SERVFAIL; please try again later")


def test_temperror_without_problem_text():
    decision = decide(helo(SpfResult.NONE), mailfrom(SpfResult.TEMPERROR), FACTS, config())
    assert decision.reply.text == (f"SPF temporary error for example.org (MAIL FROM {SENDER}): "
                             "DNS lookup failed; please try again later")


@pytest.mark.parametrize("other", [r for r in ALL if r is not SpfResult.FAIL])
def test_temperror_accepted_when_configured(other):
    cfg = config("temperror_action = accept\n")
    assert decide(helo(SpfResult.TEMPERROR), mailfrom(other), FACTS, cfg) == ACCEPT
    assert decide(helo(other), mailfrom(SpfResult.TEMPERROR), FACTS, cfg) == ACCEPT


@pytest.mark.parametrize("action", ["defer", "accept"])
def test_reject_wins_over_temperror(action):
    cfg = config(f"temperror_action = {action}\n")
    decision = decide(helo(SpfResult.TEMPERROR), mailfrom(SpfResult.FAIL), FACTS, cfg)
    assert (decision.action, decision.reply.xcode, decision.identity) == (Action.REJECT, "5.7.23", Identity.MAILFROM)


# --------------------------------------------------------------------------- explanations

def test_fail_with_explanation_names_domain_and_text():
    outcome = mailfrom(SpfResult.FAIL, explanation="See https://example.org/spf for why")
    decision = decide(helo(SpfResult.PASS), outcome, FACTS, config())
    assert decision.reply.text == (f"SPF fail for example.org (MAIL FROM {SENDER}); example.org explains: "
                             "See https://example.org/spf for why")
    assert decision.reply.xcode == "5.7.23"


@pytest.mark.parametrize("explanation", [
    "line1\r\n550 5.7.1 injected",
    "percent %s %n %% tokens",
    "nul\x00byte and tab\there",
    "unicode Grüße \u2028 separator \x85 nel",
    b"\xff\xfe bytes".decode("utf-8", "surrogateescape"),
    "x" * 3000,
    "\r\n" * 600,
])
@pytest.mark.parametrize("identity", ["helo", "mailfrom"])
def test_hostile_explanations_give_safe_replies(explanation, identity):
    outcomes = (helo(SpfResult.FAIL, explanation=explanation), mailfrom(SpfResult.PASS)) if identity == "helo" \
        else (helo(SpfResult.PASS), mailfrom(SpfResult.FAIL, explanation=explanation))
    decision = decide(*outcomes, FACTS, config())
    assert decision.action is Action.REJECT
    assert_safe_reply(decision)
    assert "explains: " in decision.reply.text


@pytest.mark.parametrize("hostile", [
    "evil\r\n250 OK",
    "100%.example",
    "ünïcödé.example",
    "a\x00b",
    "y" * 2000,
])
@pytest.mark.parametrize("result, cfgtext", [
    (SpfResult.FAIL, ""),
    (SpfResult.PERMERROR, "mailfrom_reject_results = permerror"),
    (SpfResult.NONE, "mailfrom_reject_results = none"),
    (SpfResult.SOFTFAIL, "mailfrom_reject_results = softfail"),
    (SpfResult.TEMPERROR, ""),
])
def test_hostile_domain_sender_problem_give_safe_replies(hostile, result, cfgtext):
    outcome = SpfOutcome(Identity.MAILFROM, result, hostile, f"{hostile}@{hostile}", problem=hostile)
    decision = decide(helo(SpfResult.NONE), outcome, Facts(IP, hostile, outcome.sender), config(cfgtext))
    assert decision.refuses
    assert_safe_reply(decision)


# --------------------------------------------------------------------------- trust_reason()

@pytest.mark.parametrize("cfgtext, client_ip, auth_user, expected", [
    ("", None, None, None),  # an unknown address is not trusted; verification gives none
    ("trusted_networks =", None, None, None),
    ("", None, "alice", "authenticated sender"),
    ("", "127.0.0.1", None, "trusted network 127.0.0.0/8"),
    ("", "127.9.9.9", None, "trusted network 127.0.0.0/8"),
    ("", "::1", None, "trusted network ::1/128"),
    ("", "192.0.2.1", None, None),
    ("", "2001:db8::1", None, None),
    ("trusted_networks =", "127.0.0.1", None, None),
    ("trusted_networks = 192.0.2.0/24", "192.0.2.200", None, "trusted network 192.0.2.0/24"),
    ("trusted_networks = 192.0.2.0/24", "192.0.3.1", None, None),
    ("trusted_networks = 192.0.2.0/24", "127.0.0.1", None, None),
    ("trusted_networks = 2001:db8::/32", "2001:db8:ffff::25", None, "trusted network 2001:db8::/32"),
    ("trusted_networks = 2001:db8::/32", "2001:db9::1", None, None),
    # an IPv6 client against IPv4 networks and the other way round: no match, no error
    ("trusted_networks = 0.0.0.0/0", "2001:db8::1", None, None),
    ("trusted_networks = 0.0.0.0/0", "::", None, None),
    ("trusted_networks = ::/0", "192.0.2.1", None, None),
    ("trusted_networks = 0.0.0.0/0", "192.0.2.1", None, "trusted network 0.0.0.0/0"),
    ("trusted_networks = 10.0.0.0/8, 2001:db8::/32", "2001:db8::1", None, "trusted network 2001:db8::/32"),
    ("", "192.0.2.1", "alice", "authenticated sender"),
    ("trust_authenticated = yes", "2001:db8::1", "bob@example.org", "authenticated sender"),
    ("trust_authenticated = no", "192.0.2.1", "alice", None),
    ("", "192.0.2.1", "", None),
    ("", "127.0.0.1", "alice", "trusted network 127.0.0.0/8"),  # network is named first
    ("", "not-an-ip", None, None),
    ("", "not-an-ip", "alice", "authenticated sender"),
])
def test_trust_reason(cfgtext, client_ip, auth_user, expected):
    facts = Facts(client_ip, HELO, SENDER, auth_user=auth_user)
    assert trust_reason(facts, config(cfgtext)) == expected


@pytest.mark.parametrize("client_ip, auth_user, local, removes", [
    ("192.0.2.1", None, False, True),
    ("192.0.2.1", "alice", False, True),  # SASL: trusted to send, not to vouch for our results
    (None, None, True, True),  # a local user
    ("127.0.0.1", None, False, False),  # trusted_networks: may carry what this host added
    ("127.0.0.1", "alice", False, False),
])
def test_removes_forged_headers(client_ip, auth_user, local, removes):
    facts = Facts(client_ip, HELO, SENDER, auth_user=auth_user, local=local)
    assert removes_forged_headers(facts, config("")) is removes


@pytest.mark.parametrize("cfgtext", ["", "trusted_networks =", "trust_authenticated = no"])
def test_unix_socket_clients_are_local_and_trusted(cfgtext):
    assert trust_reason(Facts(None, HELO, SENDER, local=True), config(cfgtext)) == "local client"


def test_evaluate_skips_trusted_clients_without_verifying():
    evaluation = evaluate(Facts("127.0.0.1", HELO, SENDER), config(), NoChecks())
    assert evaluation.skip_reason == "trusted network 127.0.0.0/8"
    assert evaluation.outcomes is None
    assert evaluation.decision == ACCEPT


def test_evaluate_verifies_and_decides():
    outcomes = (helo(SpfResult.PASS), mailfrom(SpfResult.FAIL))
    checks = FakeChecks(outcomes)
    evaluation = evaluate(FACTS, config(), checks)
    assert checks.calls == [("helo", IP, HELO), ("mailfrom", IP, HELO, SENDER)]
    assert evaluation.skip_reason is None
    assert evaluation.outcomes == outcomes
    assert evaluation.decision.action is Action.REJECT


# --------------------------------------------------------------------------- exempt recipients

@pytest.mark.parametrize("cfgtext, recipient, expected", [
    ("", "<postmaster@example.com>", True),
    ("", "<Postmaster@EXAMPLE.COM>", True),
    ("", "<POSTMASTER@x>", True),
    ("", "<abuse@x>", True),
    ("", "<postmaster>", True),
    ("", "<Postmaster>", True),
    ("", "postmaster@x", True),
    ("", " <postmaster@x> ", True),
    ("", "<@relay.example:postmaster@x>", True),
    ("", "<postmaster2@x>", False),
    ("", "<xpostmaster@x>", False),
    ("", "<postmaster.x@x>", False),
    ("", "<hostmaster@x>", False),
    ("", "<alice@x>", False),
    ("", "<>", False),
    ("", "<x@postmaster>", False),
    ("exempt_recipients =", "<postmaster@x>", False),
    ("exempt_recipients = hostmaster", "<hostmaster@x>", True),
    ("exempt_recipients = hostmaster", "<postmaster@x>", False),
    ("exempt_recipients = abuse@example.org", "<abuse@example.org>", True),
    ("exempt_recipients = abuse@example.org", "<ABUSE@Example.Org>", True),
    ("exempt_recipients = abuse@example.org", "<abuse@example.org.>", True),
    ("exempt_recipients = abuse@example.org", "<abuse@example.net>", False),
    ("exempt_recipients = abuse@example.org", "<abuse>", False),
    ("exempt_recipients = Abuse@Example.Org, postmaster", "<abuse@example.org>", True),
    ("exempt_recipients = Abuse@Example.Org, postmaster", "<postmaster@other.example>", True),
])
def test_is_exempt_recipient(cfgtext, recipient, expected):
    assert is_exempt_recipient(recipient, config(cfgtext)) is expected


# --------------------------------------------------------------------------- rcpt_reply()

REJECT = Decision(Action.REJECT, Reply(550, "5.7.23", "SPF fail"), Identity.MAILFROM)
DEFER = Decision(Action.DEFER, Reply(451, "4.7.24", "SPF temporary error"), Identity.HELO)


@pytest.mark.parametrize("mode", ["header-only", "enforce"])
@pytest.mark.parametrize("decision", [ACCEPT, REJECT, DEFER])
@pytest.mark.parametrize("recipient, exempt", [
    ("<bob@example.com>", False),
    ("<postmaster@example.com>", True),
    ("<Abuse@example.com>", True),
])
def test_rcpt_reply(mode, decision, recipient, exempt):
    evaluation = Evaluation(FACTS, outcomes=(helo(SpfResult.PASS), mailfrom(SpfResult.FAIL)), decision=decision)
    reply = rcpt_reply(evaluation, recipient, config(f"mode = {mode}"))
    if mode == "enforce" and decision.refuses and not exempt:
        assert reply is decision
    else:
        assert reply == ACCEPT
        assert not reply.refuses


def test_rcpt_reply_for_skipped_transaction():
    evaluation = Evaluation(FACTS, skip_reason="local client")
    assert rcpt_reply(evaluation, "<bob@example.com>", config("mode = enforce")) == ACCEPT


def test_decision_reply_property():
    assert ACCEPT.reply is None and not ACCEPT.refuses
    assert str(REJECT.reply) == "550 5.7.23 SPF fail" and REJECT.refuses
    assert str(DEFER.reply) == "451 4.7.24 SPF temporary error" and DEFER.refuses


@pytest.mark.parametrize("sender,helo_result,mailfrom_result,held,domain", [
    (SENDER, SpfResult.PASS, SpfResult.FAIL, True, "example.org"),  # MAIL FROM fail: held
    (SENDER, SpfResult.PASS, SpfResult.SOFTFAIL, False, ""),  # softfail is not refused by default
    (SENDER, SpfResult.PASS, SpfResult.PERMERROR, False, "example.org"),  # only fail/softfail are held
    # DMARC aligns SPF with MAIL FROM only (RFC 7489 3.1.2): a HELO-decided refusal is never held
    (SENDER, SpfResult.FAIL, SpfResult.FAIL, False, HELO),
    (SENDER, SpfResult.FAIL, SpfResult.PASS, False, HELO),
    # ... except for the null sender, whose MAIL FROM identity is the HELO name (RFC 7208 2.4)
    ("", SpfResult.FAIL, SpfResult.FAIL, True, HELO),
])
def test_held_for_dkim_only_for_the_mail_from_identity(sender, helo_result, mailfrom_result, held, domain):
    from spfmilter.policy import deciding_domain, held_for_dkim

    facts = Facts(IP, HELO, sender)
    mail_domain = "example.org" if sender else HELO
    outcomes = (helo(helo_result), mailfrom(mailfrom_result, domain=mail_domain, sender=sender or f"postmaster@{HELO}"))
    evaluation = evaluate(facts, config("spf_fail_hold = dkim\nmailfrom_reject_results = fail, permerror"),
                          FakeChecks(outcomes))
    assert held_for_dkim(evaluation, config("spf_fail_hold = dkim")) is held
    assert deciding_domain(evaluation) == domain


# --------------------------------------------------------------------------- issue 14: allow-lists and options

from spfmilter.policy import allowlist_reason, in_domains, refusal_text, vouched_for  # noqa: E402


@pytest.mark.parametrize("name, domains, expected", [
    ("mail.fwd.example", {"fwd.example"}, "fwd.example"),
    ("fwd.example.", {"fwd.example"}, "fwd.example"),
    ("MAIL.FWD.Example", {"fwd.example"}, "fwd.example"),
    ("mail.notfwd.example", {"fwd.example"}, None),  # a label boundary, not a string suffix
    ("fwd.example.evil", {"fwd.example"}, None),
    ("a.b.example", {"example", "b.example"}, "b.example"),  # the closest entry
])
def test_in_domains(name, domains, expected):
    assert in_domains(name, frozenset(domains)) == expected


@pytest.mark.parametrize("cfgtext, macros, expected", [
    ("skip_macros = {daemon_name}=submission", (("{daemon_name}", "submission"),), "macro {daemon_name}=submission"),
    ("skip_macros = {daemon_name}=submission", (("{daemon_name}", "Submission"),), None),  # exact, as pyspf-milter
    ("skip_macros = {daemon_name}=submission", (("{daemon_name}", "mx.test"),), None),
    ("skip_macros = {daemon_name}=submission", (), None),  # the MTA did not send it
    ("skip_macros = {daemon_name}=smtps {daemon_name}=submission", (("{daemon_name}", "submission"),),
     "macro {daemon_name}=submission"),
    ("skip_macros = {auth_type}", (("{auth_type}", "PLAIN"),), "macro {auth_type}=PLAIN"),  # any value
    ("skip_macros = {auth_type}", (("{auth_type}", ""),), None),  # but not an empty one
    ("", (("{daemon_name}", "submission"),), None),
])
def test_skip_macros(cfgtext, macros, expected):
    facts = Facts(IP, HELO, SENDER, macros=macros)
    assert trust_reason(facts, config(cfgtext)) == expected
    evaluation = evaluate(facts, config(cfgtext), NoChecks() if expected else FakeChecks())
    assert evaluation.skip_reason == expected
    if expected:  # a transaction the admin exempts (a submission port) is one of ours for SRS
        assert vouched_for(evaluation) and not evaluation.outsider


@pytest.mark.parametrize("cfgtext, helo_result, ptrs, authorized, expected", [
    ("trusted_helo_names = mail.example.net", SpfResult.PASS, (), (), f"trusted HELO name {HELO}"),
    ("trusted_helo_names = MAIL.example.net.", SpfResult.PASS, (), (), f"trusted HELO name {HELO}"),
    ("trusted_helo_names = mail.example.net", SpfResult.FAIL, (), (), None),  # a forged HELO name
    ("trusted_helo_names = mail.example.net", SpfResult.NEUTRAL, (), (), None),
    ("trusted_helo_names = mail.example.net", SpfResult.TEMPERROR, (), (), None),
    ("trusted_helo_names = other.example", SpfResult.PASS, (), (), None),
    ("trusted_ptr_domains = fwd.example", SpfResult.PASS, ("out1.fwd.example",), (),
     "trusted PTR name out1.fwd.example in fwd.example"),
    ("trusted_ptr_domains = fwd.example", SpfResult.PASS, ("out1.notfwd.example",), (), None),
    ("trusted_ptr_domains = fwd.example", SpfResult.PASS, (), (), None),
    ("trusted_spf_domains = pobox.example, list.example", SpfResult.PASS, (), ("list.example",),
     "authorized by trusted SPF domain list.example"),
    ("trusted_spf_domains = pobox.example", SpfResult.PASS, (), (), None),
])
def test_allowlists(cfgtext, helo_result, ptrs, authorized, expected):
    checks = FakeChecks((helo(helo_result), mailfrom(SpfResult.FAIL)), authorized=authorized, ptrs=ptrs)
    assert allowlist_reason(FACTS, config(cfgtext), checks) == expected
    evaluation = evaluate(FACTS, config(cfgtext + "\nmode = enforce"), checks)
    assert evaluation.skip_reason == expected
    if expected:
        assert evaluation.outcomes is None and evaluation.decision == ACCEPT
        assert not vouched_for(evaluation)  # an outside relay, not one of ours: SRS still rewrites for it
    else:
        assert evaluation.decision.action is Action.REJECT


def test_allowlists_cost_nothing_when_unset_and_go_cheapest_first():
    checks = FakeChecks()
    evaluate(FACTS, config(), checks)
    assert [call[0] for call in checks.calls] == ["helo", "mailfrom"]
    checks = FakeChecks((helo(SpfResult.SOFTFAIL), mailfrom(SpfResult.PASS)), authorized=("b.example",))
    evaluate(FACTS, config("trusted_helo_names = mail.example.net\ntrusted_ptr_domains = fwd.example\n"
                           "trusted_spf_domains = a.example b.example c.example"), checks)
    assert checks.calls == [("helo", IP, HELO), ("ptr", IP), ("authorizes", IP, "a.example"),
                            ("authorizes", IP, "b.example")]  # stops at the first that authorizes
    # the HELO name is not listed: no check made for the list; and no client address, no lookups
    checks = FakeChecks()
    assert allowlist_reason(FACTS, config("trusted_helo_names = other.example"), checks) is None
    assert checks.calls == []
    assert allowlist_reason(Facts(None, HELO, SENDER), config("trusted_spf_domains = a.example"), NoChecks()) is None


@pytest.mark.parametrize("identities, calls, helo_checked, mailfrom_checked", [
    ("helo, mailfrom", ["helo", "mailfrom"], True, True),
    ("helo", ["helo"], True, False),
    ("mailfrom", ["mailfrom"], False, True),
])
def test_check_identities(identities, calls, helo_checked, mailfrom_checked):
    checks = FakeChecks((helo(SpfResult.FAIL), mailfrom(SpfResult.FAIL)))
    evaluation = evaluate(FACTS, config(f"check_identities = {identities}\nhelo_reject_results = fail, none\n"
                                        "mailfrom_reject_results = fail, none"), checks)
    assert [call[0] for call in checks.calls] == calls
    helo_outcome, mailfrom_outcome = evaluation.outcomes
    assert (helo_outcome.checked, mailfrom_outcome.checked) == (helo_checked, mailfrom_checked)
    # the identity left out decides nothing (its stand-in result "none" is rejectable here)
    assert evaluation.decision.identity is (Identity.HELO if helo_checked else Identity.MAILFROM)


def test_identity_left_out_never_refuses():
    unchecked = evaluate(FACTS, config("check_identities = mailfrom\nhelo_reject_results = none"),
                         FakeChecks((helo(SpfResult.FAIL), mailfrom(SpfResult.PASS))))
    assert unchecked.decision == ACCEPT
    assert unchecked.outcomes[0].problem == "not checked (check_identities)"


@pytest.mark.parametrize("scope, sender, refused", [
    ("all", SENDER, True),
    ("all", "", True),
    ("null-sender", SENDER, False),
    ("null-sender", "", True),
])
def test_helo_reject_scope(scope, sender, refused):
    facts = Facts(IP, HELO, sender)
    decision = decide(helo(SpfResult.FAIL), mailfrom(SpfResult.PASS), facts,
                      config(f"helo_reject_scope = {scope}"))
    assert decision.refuses is refused
    if refused:
        assert decision.identity is Identity.HELO


@pytest.mark.parametrize("result, action, code", [
    (SpfResult.PASS, Action.ACCEPT, None),
    (SpfResult.FAIL, Action.REJECT, (550, "5.7.23")),
    (SpfResult.SOFTFAIL, Action.REJECT, (550, "5.7.23")),
    (SpfResult.NEUTRAL, Action.REJECT, (550, "5.7.23")),
    (SpfResult.NONE, Action.REJECT, (550, "5.7.23")),
    (SpfResult.PERMERROR, Action.REJECT, (550, "5.7.24")),
    (SpfResult.TEMPERROR, Action.DEFER, (451, "4.7.24")),  # deferred even with temperror_action = accept
])
def test_require_pass_domains(result, action, code):
    cfg = config("require_pass_domains = bank.example\nmailfrom_reject_results =\ntemperror_action = accept")
    facts = Facts(IP, HELO, "alerts@bank.example")
    decision = decide(helo(SpfResult.PASS), mailfrom(result, domain="Bank.Example.", sender=facts.sender), facts, cfg)
    assert decision.action is action
    assert (decision.reply and (decision.reply.code, decision.reply.xcode)) == (code or None)
    # other domains keep mailfrom_reject_results (empty here: nothing refused, temperror accepted)
    other = decide(helo(SpfResult.PASS), mailfrom(result, domain="sub.bank.example"), FACTS, cfg)
    assert other == ACCEPT


def test_reject_text_fills_placeholders():
    cfg = config("mode = enforce\nreject_text = SPF {result} for {domain} ({identity}) from {ip}, "
                 "sender {sender}: see https://mx.test/spf")
    decision = decide(helo(SpfResult.PASS), mailfrom(SpfResult.FAIL), FACTS, cfg)
    assert decision.reply == Reply(550, "5.7.23", f"SPF fail for example.org (mailfrom) from {IP}, "
                                                  f"sender {SENDER}: see https://mx.test/spf")
    deferred = decide(helo(SpfResult.PASS), mailfrom(SpfResult.TEMPERROR), FACTS, cfg)
    assert deferred.reply.text.startswith("SPF temperror for example.org (mailfrom)")
    helo_refusal = decide(helo(SpfResult.FAIL), mailfrom(SpfResult.PASS), FACTS, cfg)
    assert helo_refusal.reply.text.startswith(f"SPF fail for {HELO} (helo)")


@pytest.mark.parametrize("hostile", [
    "evil\r\n250 ok@x.example",
    "a%s%n{result}{0}@x.example",
    "\u00e9\u0000\u2028" + "x" * 600 + "@x.example",
])
def test_reject_text_cleans_what_the_client_sent(hostile):
    cfg = config("reject_text = refused {sender} / {domain} / {result}")
    facts = Facts(IP, HELO, hostile)
    decision = decide(helo(SpfResult.PASS), mailfrom(SpfResult.FAIL, domain=hostile, sender=hostile), facts, cfg)
    assert_safe_reply(decision)
    assert decision.reply.text.startswith("refused ") and decision.reply.text.endswith(("/ fail", "..."))
    assert "{result}" in decision.reply.text or "%" not in hostile  # placeholders in values stay text


def test_reject_text_empty_is_the_built_in_text():
    text = refusal_text("built in", mailfrom(SpfResult.FAIL), FACTS, config())
    assert text == "built in"
