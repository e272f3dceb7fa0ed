"""SRS decisions per recipient (spfmilter.srspolicy): tables."""
from __future__ import annotations

import os

import pytest

from spfmilter.config import parse_text
from spfmilter.srs import SecretsError, SrsKeys, forward
from spfmilter.srspolicy import Kind, SrsPolicy, bare_address, build_srs_policy, parse_forward_table, rcpt_srs

NOW = 1_795_000_000.0
KEYS = SrsKeys((b"policy-secret-0123456789",))
TABLE = """
# comment
fwd@mx.test         someone@remote.example
both@mx.test        local@mx.test, away@remote.example
list@mx.test        a@mx.test,
                    b@MX.test
@alias.test         catch@remote.example
localonly@mx.test   bob
nodomain            someone@remote.example
/^re(.*)$/          x@remote.example
srsback@mx.test     x@srs.mx.test
"""
POLICY = SrsPolicy("srs.mx.test", KEYS, frozenset({"mx.test", "alias.test"}), frozenset({"partner.example"}),
                   parse_forward_table(TABLE, frozenset({"mx.test", "alias.test"}), "srs.mx.test"))


def test_forward_table_parsing():
    assert parse_forward_table(TABLE, frozenset({"mx.test", "alias.test"}), "srs.mx.test") == {
        "fwd@mx.test", "both@mx.test", "@alias.test"}


@pytest.mark.parametrize("recipient,forwarded", [
    ("fwd@mx.test", True), ("FWD@MX.TEST", True), ("both@mx.test", True), ("list@mx.test", False),
    ("anyone@alias.test", True), ("user@mx.test", False), ("someone@remote.example", True),
    ("user@mx.test.", False),
])
def test_is_forwarded(recipient, forwarded):
    assert POLICY.is_forwarded(recipient) is forwarded


@pytest.mark.parametrize("sender,trusted,rewritable", [
    ("alice@example.com", False, True), ("", False, False), ("alice@example.com", True, False),
    # our own domains: kept only by trusted clients (an untrusted one's claim is unproven;
    # srs.forward leaves an SRS-domain sender as it is)
    ("bob@mx.test", False, True), ("bob@MX.TEST", False, True), ("bob@mx.test", True, False),
    ("x@srs.mx.test", True, False),
    ("p@partner.example", False, False), ("postmaster", False, False),
])
def test_sender_rewritable(sender, trusted, rewritable):
    assert POLICY.sender_rewritable(sender, trusted) is rewritable


def test_trusted_senders_are_rewritten_when_configured():
    policy = SrsPolicy("srs.mx.test", KEYS, frozenset({"mx.test"}), rewrite_trusted=True)
    assert policy.sender_rewritable("alice@example.com", True)


@pytest.mark.parametrize("sender,recipient,kind_so_far,expected", [
    ("alice@example.com", "<fwd@mx.test>", None, Kind.FORWARD),
    ("alice@example.com", "<user@mx.test>", None, Kind.PLAIN),
    ("alice@example.com", "<fwd@mx.test>", Kind.FORWARD, Kind.FORWARD),
    ("", "<fwd@mx.test>", None, Kind.PLAIN),
    ("alice@example.com", "<postmaster>", None, Kind.PLAIN),  # no domain: local
])
def test_kinds(sender, recipient, kind_so_far, expected):
    verdict = rcpt_srs(POLICY, sender, False, recipient, kind_so_far, NOW)
    assert verdict.reply is None and verdict.kind is expected


@pytest.mark.parametrize("recipient,kind_so_far", [("<user@mx.test>", Kind.FORWARD), ("<fwd@mx.test>", Kind.PLAIN)])
def test_mixed_recipients_get_452_4_5_3(recipient, kind_so_far):
    verdict = rcpt_srs(POLICY, "alice@example.com", False, recipient, kind_so_far, NOW)
    assert (verdict.reply.code, verdict.reply.xcode, verdict.reason) == (452, "4.5.3", "mixed")


def test_reverse_and_refusals():
    good = forward("alice@example.com", "srs.mx.test", KEYS, NOW)
    verdict = rcpt_srs(POLICY, "", False, f"<{good}>", None, NOW)
    assert verdict.original == "alice@example.com" and verdict.kind is Kind.PLAIN
    upper_domain = good.replace("srs.mx.test", "SRS.MX.TEST")
    assert rcpt_srs(POLICY, "", False, upper_domain, None, NOW).original == "alice@example.com"
    expired = rcpt_srs(POLICY, "", False, f"<{good}>", None, NOW + 40 * 86400)
    assert (expired.reply.code, expired.reply.xcode, expired.reason) == (550, "5.1.1", "expired")
    assert expired.reply.text == "Invalid SRS address: it has expired"
    forged = rcpt_srs(POLICY, "", False, "<SRS0=AAAA=AA=example.com=bob@srs.mx.test>", None, NOW)
    assert (forged.reply.code, forged.reason) == (550, "bad-hash")
    # someone else's SRS address, and a plain address in the SRS domain, are not ours to judge
    other = rcpt_srs(POLICY, "", False, "<SRS0=AAAA=AA=example.com=bob@other.example>", None, NOW)
    assert other.reply is None and other.original == ""
    postmaster = rcpt_srs(POLICY, "", False, "<postmaster@srs.mx.test>", None, NOW)
    assert postmaster.reply is None and postmaster.original == ""
    # any other address in a dedicated SRS domain would only be relayed back to us
    nobody = rcpt_srs(POLICY, "", False, "<alice@srs.mx.test>", None, NOW)
    assert (nobody.reply.code, nobody.reply.xcode, nobody.reason) == (550, "5.1.1", "not-srs")
    # an SRS domain that is also a local domain keeps its mailboxes
    shared = SrsPolicy("mx.test", KEYS, frozenset({"mx.test"}))
    assert rcpt_srs(shared, "", False, "<alice@mx.test>", None, NOW).reply is None


def test_a_reversed_bounce_in_a_forwarding_transaction_is_retried():
    good = forward("alice@example.com", "srs.mx.test", KEYS, NOW)
    verdict = rcpt_srs(POLICY, "carol@example.com", False, f"<{good}>", Kind.FORWARD, NOW)
    assert verdict.reply.code == 452


@pytest.mark.parametrize("raw,bare", [("<a@b>", "a@b"), (" <a@b> ", "a@b"), ("a@b", "a@b"), ("<>", "")])
def test_bare_address(raw, bare):
    assert bare_address(raw) == bare


def test_build_srs_policy_from_config(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.write_text("build-secret-0123456789\n")
    os.chmod(secrets, 0o600)
    table = tmp_path / "virtual"
    table.write_text("fwd@mx.test someone@remote.example\n")
    config = parse_text(f"srs_domain = srs.mx.test\nsrs_secrets_file = {secrets}\nlocal_domains = mx.test\n"
                        f"srs_forward_table = {table}\nsrs_hash_length = 6\nsrs_max_age = 5\n", "t.conf")
    policy = build_srs_policy(config)
    assert policy.domain == "srs.mx.test" and policy.forwarded == {"fwd@mx.test"}
    assert (policy.keys.secrets, policy.keys.hash_length, policy.keys.max_age_days) == (
        (b"build-secret-0123456789",), 6, 5)
    assert build_srs_policy(parse_text("", "t.conf")) is None
    table.unlink()
    with pytest.raises(OSError, match="cannot read srs_forward_table"):
        build_srs_policy(config)
    os.chmod(secrets, 0o604)
    with pytest.raises(SecretsError):
        build_srs_policy(config)


@pytest.mark.parametrize("sender,rewritable", [
    ("a@partner.example", False), ("a@mail.partner.example", False), ("a@deep.mail.partner.example", False),
    ("a@sub.example", True), ("a@x.sub.example", False), ("a@notsub.example", True),
])
def test_excluded_domains_in_postsrsd_form(sender, rewritable):
    """``.sub.example`` in srs_exclude_domains: every subdomain of sub.example, not sub.example itself."""
    config = parse_text("srs_domain = srs.mx.test\nsrs_exclude_domains = partner.example, .partner.example, "
                        ".sub.example\n", "x.conf")
    policy = SrsPolicy("srs.mx.test", KEYS, exclude_domains=config.srs_exclude_domains)
    assert policy.sender_rewritable(sender, False) is rewritable
