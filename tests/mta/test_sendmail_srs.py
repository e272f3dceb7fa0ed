"""SRS end to end through a real Sendmail: bounces reversed, forgeries refused, senders rewritten.

One private Sendmail ("mx.test", tests/support/sendmail.py) with the INPUT_MAIL_FILTER line
of contrib/sendmail.mc, and one spfmilter (inet socket, SRS on, ``local_domains = mx.test``,
``srs_domain = srs.mx.test``).  The SRS addresses are made and checked with spfmilter.srs and
the same secret.

What Sendmail needs: the SRS domain in class R -- one line in sendmail.mc::

    RELAY_DOMAIN(`srs.mx.test')dnl

(or the domain as a line of /etc/mail/relay-domains, the file ``confCR_FILE`` names by
default).  Sendmail then accepts *any* local part in the SRS domain at RCPT and hands it to
the milter, which refuses every SRS address it did not sign (550 5.1.1) and replaces a valid
one by the original address at end of message, so nothing is ever relayed on an address we
did not sign.  Not class w (``Cw``/local-host-names): with the local mailer's usual ``w`` flag
Sendmail would look the SRS local part up as a user and refuse it ("User unknown") before the
milter can reverse it.  Without the line, the SRS addresses get "550 5.7.1 Relaying denied"
from Sendmail itself (the bounce and forgery tests then fail).

The SMTP client connects from 127.0.0.2, not 127.0.0.1: Sendmail lets a client at 127.0.0.1
relay anywhere (ruleset Relay_ok: "originated locally"), which would hide whether the
RELAY_DOMAIN line is needed at all.  From 127.0.0.2 any other non-local domain gets
"550 5.7.1 Relaying denied" (checked below), so the SRS addresses are accepted because of
that line.  Sendmail has no XCLIENT: the milter sees 127.0.0.2 and runs with an empty
``trusted_networks``; the test domains' SPF records name 127.0.0.2.

Forwarding: ``fwd@mx.test`` is listed in ``srs_forward_table`` (target outside mx.test), so
the milter counts it as forwarded, while this Sendmail (no aliases) delivers it locally: the
envelope sender it got after the milter's change is the Return-Path its local mailer writes
(``<MAILER-DAEMON>`` for the null sender of a bounce).  A reversed bounce must reach alice's
mailbox and nothing else: an SRS recipient left in place would be relayed to srs.mx.test, fail
("Host unknown") and reach the postmaster as a notification.
"""
from __future__ import annotations

import re
import smtplib
import time
import types
import uuid
from unittest import mock

import pytest

from spfmilter.srs import SrsKeys, forward, reverse
from tests.support.milterproc import launch_milter
from tests.support.mta import contrib_milter_mc, return_path, srs_message
from tests.support.sendmail import SendmailInstance, sendmail_available
from tests.support.sessions import forged_and_expired, write_secrets
from tests.support.skips import require

require(sendmail_available, "private Sendmail instances")

pytestmark = pytest.mark.mta

SECRET = "sendmail-srs-test-secret-17"
KEYS = SrsKeys((SECRET.encode(),))
SRS_DOMAIN = "srs.mx.test"
RELAY_DOMAIN_MC = f"RELAY_DOMAIN(`{SRS_DOMAIN}')dnl"
CLIENT_IP = "127.0.0.2"  # not 127.0.0.1, which Sendmail lets relay anywhere
HELO = "sm-srs.example"
ORIGINAL = "alice@mx.test"  # an original sender whose mailbox is on this Sendmail
SENDER = "bob@sm-srs.example"  # an external sender (SPF pass from CLIENT_IP)
FORWARDED = "fwd@mx.test"  # in srs_forward_table, delivered locally by this Sendmail
LOCAL = "user@mx.test"  # delivered here, not forwarded
SRS0 = re.compile(r"SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=sm-srs\.example=bob@srs\.mx\.test")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def srs_world(dns_server):
    dns_server.add("sm-srs.example", "TXT", f"v=spf1 ip4:{CLIENT_IP} -all")
    return dns_server


@pytest.fixture(scope="module")
def site(srs_world, tmp_path_factory):
    directory = tmp_path_factory.mktemp("sm-srs")
    secrets = write_secrets(directory / "srs-secrets", SECRET)
    table = directory / "virtual"
    table.write_text(f"# forwarded mailboxes\n{FORWARDED}   someone@remote.test\n")
    milter = launch_milter(directory, "srs", "\n".join([
        "mode = enforce", "trusted_networks =", f"srs_domain = {SRS_DOMAIN}", f"srs_secrets_file = {secrets}",
        "local_domains = mx.test", f"srs_forward_table = {table}"]), srs_world.port, inet=True)
    instance = SendmailInstance(directory / "sendmail", milter_mc=contrib_milter_mc(milter.addr[1]),
                                extra_mc=RELAY_DOMAIN_MC)
    try:
        instance.start()
    except Exception:
        milter.stop()
        raise
    try:
        yield types.SimpleNamespace(sendmail=instance, milter=milter)
    finally:
        instance.stop()
        assert milter.stop() == 0, milter.full_log()
        assert "Traceback" not in milter.full_log(), milter.full_log()


# ---------------------------------------------------------------- helpers

class _FromClientIp(smtplib.SMTP):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, source_address=(CLIENT_IP, 0), **kwargs)


def send(site, sender: str, rcpts, marker: str):
    """One transaction from CLIENT_IP (the test's SMTP client binds that source address)."""
    shim = types.SimpleNamespace(**{**vars(smtplib), "SMTP": _FromClientIp})
    with mock.patch("tests.support.postfix.smtplib", shim):
        return site.sendmail.send(sender, rcpts, srs_message(marker, sender, rcpts[0]), helo=HELO)


def marked(site, user: str, run: str) -> list:
    return [m for m in site.sendmail.mailbox(user) if m.get("X-Test-Run", "").startswith(run)]


def all_marked(site, run: str) -> list:
    """(mailbox, marker) of every delivered message of this run, in any mailbox."""
    boxes = sorted(p.name for p in site.sendmail.mail_dir.iterdir()) if site.sendmail.mail_dir.is_dir() else []
    return sorted((box, m["X-Test-Run"]) for box in boxes for m in marked(site, box, run))


def settled(site, timeout: float = 20.0) -> None:
    """Sendmail's queue is empty: every accepted message has been delivered or bounced."""
    deadline = time.monotonic() + timeout
    while any(site.sendmail.queue_dir.iterdir()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"queue not empty: {sorted(p.name for p in site.sendmail.queue_dir.iterdir())}")
        time.sleep(0.05)


def wait_marked(site, user: str, marker: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in site.sendmail.mailbox(user) if m.get("X-Test-Run") == marker]
        if found or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    assert len(found) == 1, (user, marker, all_marked(site, marker.split("-")[0]))
    return found[0]


def milter_log_since(site, offset: int) -> str:
    with open(site.milter.log_path, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode("utf-8", "replace")


# ---------------------------------------------------------------- tests

def test_only_the_srs_domain_is_relayed_for_this_client(site):
    """The control: from CLIENT_IP Sendmail relays nothing but the RELAY_DOMAIN line's domain."""
    run = uuid.uuid4().hex[:8]
    result = send(site, "", ["someone@elsewhere.test"], f"{run}-relay")
    print(f"\n--- relaying to another domain ---\n{result.transcript_text()}")
    reply = result.rcpt["someone@elsewhere.test"]
    assert (reply.code, reply.text.split()[0]) == (550, "5.7.1") and "Relaying denied" in reply.text, \
        result.transcript_text()
    # any local part of the SRS domain reaches the milter (this one is no SRS address: untouched, not sent on)
    assert RELAY_DOMAIN_MC in (site.sendmail.base_dir / "sendmail.mc").read_text()
    probe = send(site, "", [f"SRS0=AAAA=AA=x.example=y@{SRS_DOMAIN}"], f"{run}-probe")
    reply = probe.rcpt[f"SRS0=AAAA=AA=x.example=y@{SRS_DOMAIN}"]
    assert reply.code == 550 and "Invalid SRS address" in reply.text, probe.transcript_text()


def test_bounce_to_an_srs_address_is_delivered_to_the_original_sender(site):
    run = uuid.uuid4().hex[:8]
    srs_address = forward(ORIGINAL, SRS_DOMAIN, KEYS, time.time())
    assert srs_address.startswith("SRS0=") and srs_address.endswith(f"=mx.test=alice@{SRS_DOMAIN}")
    postmaster_before = len(site.sendmail.mailbox("postmaster"))
    offset = site.milter.log_path.stat().st_size
    result = send(site, "", [srs_address], f"{run}-bounce")
    print(f"\n--- bounce to {srs_address} ---\n{result.transcript_text()}")
    assert result.rcpt[srs_address].code == 250, result.transcript_text()
    assert result.accepted, result.transcript_text()

    delivered = wait_marked(site, ORIGINAL, f"{run}-bounce")
    assert return_path(delivered) == "<MAILER-DAEMON>"  # how Sendmail's local mailer writes the null sender
    assert f"srs=reverse; rcpt=<{srs_address}>; to={ORIGINAL}" in milter_log_since(site, offset)
    settled(site)
    # delivered once, to alice only: the SRS recipient was removed, not also relayed (that would
    # leave it deferred in the queue, or bounce it to the postmaster)
    assert all_marked(site, run) == [("alice", f"{run}-bounce")]
    assert len(site.sendmail.mailbox("postmaster")) == postmaster_before


def test_forged_or_expired_srs_bounces_are_refused_at_rcpt(site):
    run = uuid.uuid4().hex[:8]
    victim = "victim@mx.test"
    forged, expired = forged_and_expired(victim, KEYS, time.time())
    offset = site.milter.log_path.stat().st_size

    for address, reason in ((forged, "bad-hash"), (expired, "expired")):
        result = send(site, "", [address], f"{run}-{reason}")
        print(f"\n--- forged bounce ({reason}) ---\n{result.transcript_text()}")
        reply = result.rcpt[address]
        assert (reply.code, reply.text.split()[0]) == (550, "5.1.1"), result.transcript_text()
        assert "Invalid SRS address" in reply.text
        assert result.stage == "rcpt" and not result.accepted and result.reply("DATA") is None
        assert f"srs=refused; reason={reason}; rcpt=<{address}>" in milter_log_since(site, offset)

    # the forged address next to a genuine one: the message goes through, to alice only
    alice = forward(ORIGINAL, SRS_DOMAIN, KEYS, time.time())
    both = send(site, "", [forged, alice], f"{run}-mixed")
    print(f"\n--- forged and genuine together ---\n{both.transcript_text()}")
    assert both.rcpt[forged].code == 550 and both.rcpt[alice].code == 250, both.transcript_text()
    assert both.accepted, both.transcript_text()
    wait_marked(site, ORIGINAL, f"{run}-mixed")
    settled(site)
    assert all_marked(site, run) == [("alice", f"{run}-mixed")]
    reversed_lines = [line for line in milter_log_since(site, offset).splitlines() if "srs=reverse" in line]
    assert len(reversed_lines) == 1 and f"to={ORIGINAL}" in reversed_lines[0], reversed_lines


def test_forwarded_mail_gets_an_srs_sender_and_local_mail_keeps_its_own(site):
    run = uuid.uuid4().hex[:8]
    before = time.time()
    result = send(site, SENDER, [FORWARDED], f"{run}-fwd")
    after = time.time()
    print(f"\n--- forwarded recipient ---\n{result.transcript_text()}")
    assert result.accepted, result.transcript_text()
    local = send(site, SENDER, [LOCAL], f"{run}-local")
    assert local.accepted, local.transcript_text()

    delivered = wait_marked(site, FORWARDED, f"{run}-fwd")
    path = return_path(delivered)
    print(f"Return-Path: {path}")
    assert path[0] + path[-1] == "<>" and SRS0.fullmatch(path[1:-1]), path
    address = path[1:-1]
    assert address in {forward(SENDER, SRS_DOMAIN, KEYS, t) for t in (before, after)}
    assert reverse(address, KEYS, time.time()) == SENDER
    assert f"srs=forward; envelope-from={SENDER}; to={address}" in site.milter.logs()
    assert return_path(wait_marked(site, LOCAL, f"{run}-local")) == f"<{SENDER}>"


@pytest.mark.parametrize("order", ["forwarded-first", "local-first"])
def test_forwarded_and_local_recipients_need_separate_transactions(site, order):
    run = uuid.uuid4().hex[:8]
    first, second = (FORWARDED, LOCAL) if order == "forwarded-first" else (LOCAL, FORWARDED)
    result = send(site, SENDER, [first, second], f"{run}-1")
    print(f"\n--- {order} ---\n{result.transcript_text()}")
    assert result.rcpt[first].code == 250, result.transcript_text()
    deferred = result.rcpt[second]
    assert (deferred.code, deferred.text.split()[0]) == (452, "4.5.3"), result.transcript_text()
    assert result.accepted, result.transcript_text()
    retry = send(site, SENDER, [second], f"{run}-2")
    assert retry.accepted, retry.transcript_text()

    forwarded = wait_marked(site, FORWARDED, f"{run}-{1 if first == FORWARDED else 2}")
    assert SRS0.fullmatch(return_path(forwarded)[1:-1]), return_path(forwarded)
    local = wait_marked(site, LOCAL, f"{run}-{1 if first == LOCAL else 2}")
    assert return_path(local) == f"<{SENDER}>"
    settled(site)
    assert sorted(marker for _, marker in all_marked(site, run)) == [f"{run}-1", f"{run}-2"]
