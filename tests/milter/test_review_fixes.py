"""Regressions for the holes an adversarial review of the milter found (issue 11), through the socket.

Each test failed on the code before the fix: a %-routed recipient slipping past
enforce_domains, SASL clients keeping forged headers, untrusted senders in our own domains
forwarded without SRS, a long sender shown (and reported) under another domain, and log
fields forged through an SRS recipient.
"""
from __future__ import annotations

import re
import time

import pytest

from spfmilter.logreport import parse_line
from spfmilter.srs import forward
from tests.support.sessions import KEYS, PASSED_ON, SRS_DOMAIN, ar_results, run, session, srs_config, srs_mods

FORGED_AR = ("Authentication-Results", "mx.test; spf=pass smtp.mailfrom=ceo@fail.example")
FORGED_RSPF = ("Received-SPF", "pass (mx.test: forged) receiver=mx.test; client-ip=192.0.2.7")


# ---------------------------------------------------------------- item 2: %-hack, bang paths

@pytest.mark.parametrize("rcpt", [
    "<victim%b.test@a.test>",
    "<b.test!victim@a.test>",
    '<"victim@b.test"@a.test>',
    "<victim@[192.0.2.25]>",
])
def test_recipients_routed_anywhere_are_enforced_when_any_domain_is(start_milter, world, rcpt):
    milter = start_milter("mode = header-only\nenforce_domains = b.test")
    replies, _, _ = run(milter, sender="<x@fail.example>", rcpts=("<victim@b.test>", rcpt, "<user@a.test>"))
    direct, routed, other = replies["rcpt"]
    assert (direct.code, direct.xcode) == (550, "5.7.23")
    assert (routed.code, routed.xcode) == (550, "5.7.23"), rcpt
    assert other.action in PASSED_ON  # a plain header-only recipient stays header-only


def test_routed_recipients_follow_mode_when_no_domain_is_enforced(start_milter, world):
    milter = start_milter("mode = header-only")
    replies, mods, _ = run(milter, sender="<x@fail.example>", rcpts=("<victim%b.test@a.test>",))
    assert replies["rcpt"][0].action in PASSED_ON
    assert ar_results(mods)["mailfrom"][0] == "fail"


def test_header_only_domain_does_not_spare_a_routed_recipient_in_enforce_mode(start_milter, world):
    milter = start_milter("mode = enforce\nheader_only_domains = a.test")
    replies, _, _ = run(milter, sender="<x@fail.example>", rcpts=("<user@a.test>", "<victim%b.test@a.test>"))
    plain, routed = replies["rcpt"]
    assert plain.action in PASSED_ON
    assert routed.code == 550


# ---------------------------------------------------------------- item 9: forged headers from trusted clients

def deleted(mods):
    return sorted((m[2], m[1]) for m in mods if m[0] == "chgheader" and m[3] == "")


def test_sasl_clients_are_not_checked_but_lose_forged_headers(start_milter, world):
    milter = start_milter("mode = enforce")
    replies, mods, _ = run(milter, sender="<ceo@fail.example>", mail_macros={"{auth_authen}": "alice"},
                           headers=[FORGED_AR, ("Subject", "s"), FORGED_RSPF])
    assert replies["rcpt"][0].action in PASSED_ON  # still not checked (trust_authenticated = yes)
    assert deleted(mods) == [("Authentication-Results", 1), ("Received-SPF", 1)]
    assert not [m for m in mods if m[0] in ("insheader", "addheader")]  # nothing checked, nothing added
    assert "skipped=\"authenticated sender\"" in milter.logs()
    assert "removed forged Authentication-Results header #1" in milter.logs()


def test_trusted_networks_keep_our_headers(start_milter, world):
    """An internal relay (a content filter re-injecting mail) may carry what we added before."""
    milter = start_milter("mode = enforce\ntrusted_networks = 198.51.100.0/24")
    _, mods, _ = run(milter, sender="<ceo@fail.example>", ip="198.51.100.9", headers=[FORGED_AR, FORGED_RSPF])
    assert mods == []


def test_local_clients_lose_forged_headers(start_milter, world):
    milter = start_milter("mode = enforce")
    client = milter.client()
    client.connect("localhost", "/run/test.sock", family="L")
    client.helo("localhost")
    _, mods, _ = run(milter, sender="<ceo@fail.example>", headers=[FORGED_AR], client=client)
    client.quit()
    assert deleted(mods) == [("Authentication-Results", 1)]


# ---------------------------------------------------------------- item 6: SRS and our own domains

def test_untrusted_sender_in_our_domain_is_rewritten_when_forwarded(start_milter, world, secrets_file,
                                                                   forward_table):
    milter = start_milter(srs_config(secrets_file, forward_table))
    _, mods = session(milter, "<ceo@mx.test>", ["<fwd@mx.test>"])
    [(kind, new_sender, _)] = srs_mods(mods)
    assert kind == "chgfrom"
    assert new_sender == f"<{forward('ceo@mx.test', SRS_DOMAIN, KEYS, time.time())}>"


@pytest.mark.parametrize("ip, macros", [("127.0.0.1", None), ("192.0.2.7", {"{auth_authen}": "ceo"})])
def test_trusted_or_authenticated_sender_in_our_domain_keeps_it(start_milter, world, secrets_file, forward_table,
                                                                ip, macros):
    for extra in ("", "trust_authenticated = no\n"):  # a SASL login keeps it even when it is checked
        milter = start_milter(srs_config(secrets_file, forward_table, extra))
        _, mods = session(milter, "<ceo@mx.test>", ["<fwd@mx.test>"], ip=ip, mail_macros=macros)
        assert srs_mods(mods) == [], (ip, extra)


# ---------------------------------------------------------------- item 7: long senders keep their domain

LONG_LOCAL = '"' + "a" * 239 + '@bank.example"'


def test_a_long_sender_is_shortened_in_its_local_part_only(start_milter, world):
    world.add("attacker.example", "TXT", "v=spf1 -all")
    milter = start_milter()
    sender = f"{LONG_LOCAL}@attacker.example"
    _, mods, _ = run(milter, sender=f"<{sender}>")
    result, value = ar_results(mods)["mailfrom"]
    assert result == "fail"
    assert value.endswith("...\"@attacker.example") and "bank.example\"@" not in value
    [line] = milter.log_lines("identity=mailfrom")
    assert "@attacker.example" in line and "bank.example..." not in line
    record = parse_line(line)
    assert record is not None and not record.error
    assert record.sender.endswith("@attacker.example")


# ---------------------------------------------------------------- item 8: log fields cannot be forged

def test_srs_log_lines_quote_hostile_values(start_milter, world, secrets_file, forward_table):
    milter = start_milter(srs_config(secrets_file, forward_table))
    rcpt = f'<"x; reason=expired; rcpt=<bob@mx.test>; envelope-from=<ceo@bank.example"@{SRS_DOMAIN}>'
    replies, _ = session(milter, "<alice@pass.example>", [rcpt])
    assert replies[0].code == 550
    [line] = milter.log_lines("srs=refused")
    fields = log_fields(line.split("srs=refused; ", 1)[1])
    assert [key for key, _ in fields] == ["reason", "rcpt", "envelope-from", "client-ip"]
    assert dict(fields) == {"reason": "not-srs", "rcpt": rcpt, "envelope-from": "alice@pass.example",
                            "client-ip": "192.0.2.7"}


def log_fields(text: str) -> list[tuple[str, str]]:
    """``key=value; ...`` as a reader splits it: a value is one token or a quoted-string."""
    out = []
    for match in re.finditer(r'([a-z-]+)=("(?:[^"\\]|\\.)*"|[^\s;"]*)(?:; |$)', text):
        value = match.group(2)
        out.append((match.group(1), re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith('"') else value))
    return out
