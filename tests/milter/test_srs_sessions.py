"""SRS through the milter protocol: a real spfmilter process, a real socket, the loopback DNS server.

The SRS addresses the tests expect are computed with spfmilter.srs and the same secret;
tests/interop checks that module against PostSRSd.
"""
from __future__ import annotations

import os
import time

import pytest

from spfmilter.srs import SrsKeys, forward, reverse
from tests.support.sessions import CLIENT_IP, KEYS, SECRET, SRS_DOMAIN, session, srs_config, srs_mods


@pytest.fixture
def milter(start_milter, world, secrets_file, forward_table):
    return start_milter(srs_config(secrets_file, forward_table))


def test_forwarded_recipient_gets_the_rewritten_sender(milter):
    replies, mods = session(milter, "<alice@pass.example>", ["<fwd@mx.test>"])
    assert replies[0].action == "continue"
    [(kind, new_sender, _)] = srs_mods(mods)
    assert kind == "chgfrom"
    expected = forward("alice@pass.example", SRS_DOMAIN, KEYS, time.time())
    assert new_sender == f"<{expected}>"
    assert reverse(expected, KEYS, time.time()) == "alice@pass.example"
    assert "srs=forward; envelope-from=alice@pass.example" in milter.logs()


@pytest.mark.parametrize("rcpt", ["<someone@elsewhere.example>", "<x@alias.mx.test>"])
def test_relayed_and_catch_all_forwarded_recipients(milter, rcpt):
    _, mods = session(milter, "<alice@pass.example>", [rcpt])
    assert [m[0] for m in srs_mods(mods)] == ["chgfrom"]


@pytest.mark.parametrize("sender,rcpt,why", [
    ("<>", "<fwd@mx.test>", "null sender"),
    ("<bob@srs.mx.test>", "<fwd@mx.test>", "the SRS domain"),
    ("<alice@pass.example>", "<user@mx.test>", "delivered here"),
    ("<alice@pass.example>", "<list@mx.test>", "aliased to local mailboxes only"),
])
def test_no_rewrite(milter, sender, rcpt, why):
    replies, mods = session(milter, sender, [rcpt])
    assert replies[0].action == "continue", why
    assert srs_mods(mods) == [], why


def test_our_own_domain_from_a_trusted_client_is_not_rewritten(milter):
    # (from an untrusted client it is: tests/milter/test_review_fixes.py)
    replies, mods = session(milter, "<bob@mx.test>", ["<fwd@mx.test>"], ip="127.0.0.1")
    assert replies[0].action == "continue"
    assert srs_mods(mods) == []


def test_trusted_and_authenticated_clients_are_not_rewritten_unless_configured(start_milter, world, secrets_file,
                                                                               forward_table):
    plain = start_milter(srs_config(secrets_file, forward_table))
    for ip, macros in (("127.0.0.1", None), (CLIENT_IP, {"{auth_authen}": "alice"})):
        _, mods = session(plain, "<alice@pass.example>", ["<fwd@mx.test>"], ip=ip, mail_macros=macros)
        assert srs_mods(mods) == []
    rewriting = start_milter(srs_config(secrets_file, forward_table, "srs_rewrite_trusted = yes"))
    _, mods = session(rewriting, "<alice@pass.example>", ["<fwd@mx.test>"], ip="127.0.0.1")
    assert [m[0] for m in srs_mods(mods)] == ["chgfrom"]


def test_excluded_sender_domain_is_not_rewritten(start_milter, world, secrets_file, forward_table):
    milter = start_milter(srs_config(secrets_file, forward_table, "srs_exclude_domains = pass.example"))
    _, mods = session(milter, "<alice@pass.example>", ["<fwd@mx.test>"])
    assert srs_mods(mods) == []


def test_mixed_recipients_the_first_kind_wins_the_others_are_retried(milter):
    replies, mods = session(milter, "<alice@pass.example>",
                            ["<fwd@mx.test>", "<user@mx.test>", "<far@remote.example>", "<user2@mx.test>"])
    codes = [(r.action, r.code, r.xcode) for r in replies]
    assert codes[0][0] == "continue" and codes[2][0] == "continue"
    assert codes[1] == codes[3] == ("replycode", 452, "4.5.3")
    assert [m[0] for m in srs_mods(mods)] == ["chgfrom"]
    # the client's retry of the local recipients in a new transaction: no rewrite there
    replies, mods = session(milter, "<alice@pass.example>", ["<user@mx.test>", "<user2@mx.test>", "<fwd@mx.test>"])
    assert [r.action for r in replies[:2]] == ["continue", "continue"]
    assert (replies[2].code, replies[2].xcode) == (452, "4.5.3")
    assert srs_mods(mods) == []


def test_bounce_to_our_srs_address_goes_back_to_the_original_sender(milter):
    srs = forward("alice@pass.example", SRS_DOMAIN, KEYS, time.time())
    replies, mods = session(milter, "<>", [f"<{srs}>"])
    assert replies[0].action == "continue"
    assert srs_mods(mods) == [("delrcpt", f"<{srs}>"), ("addrcpt", "<alice@pass.example>")]
    assert "srs=reverse" in milter.logs()


def test_srs1_bounce_goes_back_to_the_first_hop(milter):
    first_hop = "SRS0=abcd=JM=example.org=carol@first.example"
    srs1 = forward(first_hop, SRS_DOMAIN, KEYS, time.time())
    _, mods = session(milter, "<>", [f"<{srs1}>"])
    assert srs_mods(mods)[1] == ("addrcpt", f"<{first_hop}>")


@pytest.mark.parametrize("forgery,reason", [
    (lambda: forward("alice@pass.example", SRS_DOMAIN, SrsKeys((b"wrong-secret-123456",)), time.time()), "bad-hash"),
    (lambda: forward("alice@pass.example", SRS_DOMAIN, KEYS, time.time() - 30 * 86400), "expired"),
    (lambda: "SRS0=AAAA=ZZ=victim.example=bob@" + SRS_DOMAIN, "bad-hash"),
    (lambda: "SRS0=AAAA=Z1=victim.example=bob@" + SRS_DOMAIN, "malformed"),
    (lambda: "SRS0=AA=ZZ=victim.example=bob@" + SRS_DOMAIN, "hash-too-short"),
])
def test_forged_or_expired_bounces_are_refused(milter, forgery, reason):
    replies, mods = session(milter, "<>", [f"<{forgery()}>"])
    assert (replies[0].action, replies[0].code, replies[0].xcode) == ("replycode", 550, "5.1.1")
    assert "Invalid SRS address" in replies[0].text
    assert mods is None  # nothing accepted, nothing relayed
    assert f"srs=refused; reason={reason}" in milter.logs()


def test_srs_addresses_of_other_domains_pass_untouched(milter):
    other = "SRS0=AAAA=ZZ=victim.example=bob@other.example"
    replies, mods = session(milter, "<>", [f"<{other}>"])
    assert replies[0].action == "continue" and srs_mods(mods) == []


def test_header_only_over_a_unix_socket_still_sees_recipients(start_milter, world, secrets_file, forward_table):
    """Without SRS, header-only mode skips RCPT on unix sockets; with SRS it must not."""
    milter = start_milter(srs_config(secrets_file, forward_table, "mode = header-only"))
    assert isinstance(milter.addr, str)  # a unix socket
    replies, _ = session(milter, "<>", [f"<SRS0=AAAA=ZZ=victim.example=bob@{SRS_DOMAIN}>"])
    assert replies[0].code == 550


def test_readable_secrets_file_stops_the_daemon_from_starting(tmp_path, world, forward_table):
    import subprocess
    import sys

    secrets = tmp_path / "srs-secrets"
    secrets.write_text(SECRET + "\n")
    os.chmod(secrets, 0o644)
    conf = tmp_path / "m.conf"
    conf.write_text(f"socket = unix:{tmp_path}/m.sock\ndns_servers = 127.0.0.1:{world.port}\n"
                    + srs_config(secrets, forward_table))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "spfmilter", "-c", str(conf)], capture_output=True, text=True,
                          timeout=60, cwd=root, env=dict(os.environ, PYTHONPATH=root))
    assert proc.returncode == 1
    assert "accessible by others" in proc.stderr and "chmod o-rwx" in proc.stderr
    check = subprocess.run([sys.executable, "-m", "spfmilter", "--check-config", "-c", str(conf)],
                           capture_output=True, text=True, timeout=60, cwd=root, env=dict(os.environ, PYTHONPATH=root))
    assert check.returncode == 2 and "accessible by others" in check.stderr


def test_an_mta_that_forbids_sender_changes_gets_no_srs_but_its_mail(milter):
    from tests.support.milterclient import SMFIF_ADDHDRS, SMFIF_CHGHDRS

    client = milter.client(actions=SMFIF_ADDHDRS | SMFIF_CHGHDRS)
    client.connect(f"[{CLIENT_IP}]", CLIENT_IP, port=40000, family="4")
    client.helo("helo.example")
    client.mail("<alice@pass.example>")
    rcpt = client.rcpt("<fwd@mx.test>")  # "noreply": without SRS, header-only mode needs no RCPT reply on unix sockets
    client.data()
    client.eoh()
    reply, mods = client.eom()
    client.quit()
    assert rcpt.action in ("continue", "noreply")
    assert reply.action == "continue" and srs_mods(mods) == []
    assert [m[0] for m in mods].count("insheader") + [m[0] for m in mods].count("addheader") == 1
    assert "SRS is off for this connection" in milter.logs()
