"""SRS end to end: spfmilter in a forwarding Postfix, a second Postfix as the remote site.

* Postfix A ("mx.test", the forwarder) runs spfmilter on a unix socket, configured from
  contrib/spfmilter.conf with the SRS keys switched on.  Its virtual_alias_maps forwards
  fwd@mx.test to someone@remote.test from the very file the milter reads as its
  srs_forward_table (Postfix's texthash: reads virtual(5) source format); relay_domains is
  the commented line of contrib/postfix-main.cf with the test's SRS domain.  Everything
  not delivered here goes to B (relayhost).
* Postfix B (no milter) delivers remote.test (the forward target) and pass.example (the
  original sender's domain, where SRS bounces must end up).

The SRS addresses are checked with spfmilter.srs and the same secret.
"""
from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from types import SimpleNamespace

import pytest

from spfmilter.srs import SrsKeys, forward, reverse
from tests.support.milterproc import ROOT, launch_milter
from tests.support.mta import (contrib_main_cf, contrib_spfmilter_conf, return_path, socket_directory, srs_message,
                               wait_for_marked)
from tests.support.postfix import PostfixInstance, postfix_available
from tests.support.sessions import CLIENT_IP, HELO, forged_and_expired, write_secrets
from tests.support.skips import require

require(postfix_available, "private Postfix instances")

pytestmark = pytest.mark.mta

SECRET = "postfix-srs-test-secret-42"
KEYS = SrsKeys((SECRET.encode(),))
SRS_DOMAIN = "srs.mx.test"
SENDER = "alice@pass.example"
FORWARDED = "fwd@mx.test"
TARGET = "someone@remote.test"
LOCAL = "user@mx.test"
SRS0 = re.compile(r"SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=pass\.example=alice@srs\.mx\.test")


# ---------------------------------------------------------------- the contrib files

def contrib_relay_domains(srs_domain: str) -> str:
    """The commented ``relay_domains`` line of contrib/postfix-main.cf's SRS section, for ``srs_domain``."""
    found = [m.group(1) for line in (ROOT / "contrib" / "postfix-main.cf").read_text().splitlines()
             if (m := re.fullmatch(r"#\s+relay_domains = (\S+)", line.strip()))]
    assert found == ["srs.example.com"], found
    # the same example domain as contrib/spfmilter.conf's srs_domain line
    assert "#srs_domain = srs.example.com" in (ROOT / "contrib" / "spfmilter.conf").read_text().splitlines()
    return found[0].replace("srs.example.com", srs_domain)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def sites(world, tmp_path_factory):
    directory = tmp_path_factory.mktemp("pf-srs")
    secrets = write_secrets(directory / "srs-secrets", SECRET)
    socket_dir = socket_directory()
    # readable by the postfix user too (cleanup opens virtual_alias_maps)
    table = socket_dir.parent / "virtual"
    table.write_text(f"# forwarded mailboxes\n{FORWARDED}   {TARGET}\n")
    os.chmod(table, 0o644)

    remote = PostfixInstance(directory / "remote", mydomain="remote.test",
                             mydestination=("remote.test", "pass.example"))
    remote.start()
    milter = forwarder = None
    try:
        path = socket_dir / "spfmilter.sock"
        config = contrib_spfmilter_conf(
            socket=f"unix:{path}", socket_group="postfix", user="nobody", mode="header-only",
            header_type="both", authserv_id="mx.test", dns_servers=f"127.0.0.1:{world.port}", log_level="debug",
            srs_domain=SRS_DOMAIN, srs_secrets_file=str(secrets), local_domains="mx.test",
            srs_forward_table=str(table))
        milter = launch_milter(directory, "srs", "", None, config_text=config)
        settings = contrib_main_cf(f"unix:{path}")
        settings.update(relay_domains=contrib_relay_domains(SRS_DOMAIN), virtual_alias_maps=f"texthash:{table}")
        forwarder = PostfixInstance(directory / "forwarder", milters=settings.pop("smtpd_milters"),
                                    milter_default_action=settings.pop("milter_default_action"),
                                    relayhost=f"[127.0.0.1]:{remote.port}", mydestination=("mx.test",),
                                    extra_main_cf=settings)
        forwarder.start()
        yield SimpleNamespace(forwarder=forwarder, remote=remote, milter=milter)
    finally:
        if forwarder is not None:
            forwarder.close()
        remote.close()
        if milter is not None:
            assert milter.stop() == 0
            assert "Traceback" not in milter.full_log(), milter.full_log()
        shutil.rmtree(socket_dir.parent)


def send(instance, sender: str, rcpts, marker: str):
    return instance.send(sender, rcpts, srs_message(marker, sender, rcpts[0]), client_ip=CLIENT_IP, helo=HELO)


def settled(sites) -> None:
    """Both queues empty: whatever was accepted has been delivered (or bounced) by now."""
    sites.forwarder.wait_queue_empty()
    sites.remote.wait_queue_empty()


# ---------------------------------------------------------------- tests

def test_forwarded_mail_leaves_with_an_srs_sender_and_local_mail_keeps_its_own(sites):
    run = uuid.uuid4().hex[:8]
    before = time.time()
    result = send(sites.forwarder, SENDER, [FORWARDED], f"{run}-fwd")
    after = time.time()
    assert result.accepted, result.transcript_text()
    local = send(sites.forwarder, SENDER, [LOCAL], f"{run}-local")
    assert local.accepted, local.transcript_text()

    [delivered] = wait_for_marked(sites.remote, TARGET, f"{run}-fwd", 1)
    path = return_path(delivered)
    print(f"\n--- forwarded message, delivered by B to {TARGET} ---\nReturn-Path: {path}")
    assert SRS0.fullmatch(path[1:-1]) and path[0] + path[-1] == "<>", path
    address = path[1:-1]
    assert address in {forward(SENDER, SRS_DOMAIN, KEYS, t) for t in (before, after)}
    assert reverse(address, KEYS, time.time()) == SENDER
    # it went through A (with A's SPF headers) and A's alias expansion
    assert "srs=forward; envelope-from=alice@pass.example" in sites.milter.logs()
    assert delivered["Authentication-Results"] is not None and "mx.test" in delivered["Authentication-Results"]

    [kept] = wait_for_marked(sites.forwarder, LOCAL, f"{run}-local", 1)
    assert return_path(kept) == f"<{SENDER}>"


def test_bounce_to_an_srs_address_reaches_the_original_sender(sites):
    run = uuid.uuid4().hex[:8]
    srs_address = forward(SENDER, SRS_DOMAIN, KEYS, time.time())
    mark = sites.forwarder.log_mark()
    result = send(sites.forwarder, "", [srs_address], f"{run}-bounce")
    assert result.accepted, result.transcript_text()
    assert result.rcpt[srs_address].code == 250

    [delivered] = wait_for_marked(sites.remote, SENDER, f"{run}-bounce", 1)
    assert return_path(delivered) == "<>"
    assert delivered.get_all("Delivered-To") == [SENDER]
    assert f"srs=reverse; rcpt=<{srs_address}>; to={SENDER}" in sites.milter.logs()
    settled(sites)
    # relayed to B for alice only: the SRS recipient was removed, not also sent on
    log = sites.forwarder.log(mark)
    assert re.search(rf"to=<{re.escape(SENDER)}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{sites.remote.port}.*"
                     r"status=sent", log), log
    assert "SRS0" not in "".join(line for line in log.splitlines() if "status=" in line), log


def test_forged_or_expired_srs_bounces_are_refused_at_rcpt(sites):
    run = uuid.uuid4().hex[:8]
    victim = "victim@pass.example"
    forged, expired = forged_and_expired(victim, KEYS, time.time())
    mark = sites.forwarder.log_mark()
    milter_mark = sites.milter.log_path.stat().st_size

    for address, reason in ((forged, "bad-hash"), (expired, "expired")):
        result = send(sites.forwarder, "", [address], f"{run}-{reason}")
        print(f"\n--- forged bounce ({reason}) ---\n{result.transcript_text()}")
        reply = result.rcpt[address]
        assert (reply.code, reply.text.split()[0]) == (550, "5.1.1"), result.transcript_text()
        assert "Invalid SRS address" in reply.text
        assert result.stage == "rcpt" and not result.accepted and result.reply("DATA") is None
        assert f"srs=refused; reason={reason}; rcpt=<{address}>" in sites.milter.logs()

    # the same forged address next to a genuine one: the message goes through, to alice only
    alice = forward(SENDER, SRS_DOMAIN, KEYS, time.time())
    both = send(sites.forwarder, "", [forged, alice], f"{run}-mixed")
    assert both.rcpt[forged].code == 550 and both.rcpt[alice].code == 250, both.transcript_text()
    assert both.accepted, both.transcript_text()
    wait_for_marked(sites.remote, SENDER, f"{run}-mixed", 1)
    settled(sites)

    log = sites.forwarder.log(mark)
    # three refusals (the last one next to the accepted genuine address), one relayed message
    assert len(re.findall(r"milter-reject: RCPT from .*: 550 5\.1\.1 Invalid SRS address", log)) == 3, log
    assert "victim" not in "".join(line for line in log.splitlines() if "status=" in line), log
    assert sites.remote.mailbox(victim) == []
    for instance in (sites.forwarder, sites.remote):
        ours = [m for m in instance.mailbox() if m.get("X-Test-Run", "").startswith(run)]
        assert [m["X-Test-Run"] for m in ours] == ([f"{run}-mixed"] if instance is sites.remote else [])
    with open(sites.milter.log_path, "rb") as handle:
        handle.seek(milter_mark)
        reversed_lines = [line for line in handle.read().decode().splitlines() if "srs=reverse" in line]
    assert len(reversed_lines) == 1 and f"to={SENDER}" in reversed_lines[0], reversed_lines  # the genuine one


@pytest.mark.parametrize("order", ["forwarded-first", "local-first"])
def test_forwarded_and_local_recipients_need_separate_transactions(sites, order):
    run = uuid.uuid4().hex[:8]
    first, second = (FORWARDED, LOCAL) if order == "forwarded-first" else (LOCAL, FORWARDED)
    result = send(sites.forwarder, SENDER, [first, second], f"{run}-1")
    assert result.rcpt[first].code == 250, result.transcript_text()
    deferred = result.rcpt[second]
    assert (deferred.code, deferred.text.split()[0]) == (452, "4.5.3"), result.transcript_text()
    assert result.accepted, result.transcript_text()
    retry = send(sites.forwarder, SENDER, [second], f"{run}-2")
    assert retry.accepted, retry.transcript_text()

    [forwarded] = wait_for_marked(sites.remote, TARGET, f"{run}-{1 if first == FORWARDED else 2}", 1)
    assert SRS0.fullmatch(return_path(forwarded)[1:-1]), return_path(forwarded)
    [local] = wait_for_marked(sites.forwarder, LOCAL, f"{run}-{1 if first == LOCAL else 2}", 1)
    assert return_path(local) == f"<{SENDER}>"
    settled(sites)
    # each went to its own place, once
    markers = sorted(m["X-Test-Run"] for instance in (sites.remote, sites.forwarder) for m in instance.mailbox()
                     if m.get("X-Test-Run", "").startswith(run))
    assert markers == [f"{run}-1", f"{run}-2"]
