"""The private-Postfix test support (tests/support/postfix.py) against Debian's real Postfix.

No milter is involved except an unreachable one: these tests check the harness itself
(delivery through XCLIENT into the Maildir, instances side by side, clean stops) and
Postfix's own behaviour when the milter is down, which the spfmilter README relies on.
"""
from __future__ import annotations

import socket
import uuid

import pytest

from tests.support.postfix import PostfixInstance, free_port, postfix_available
from tests.support.procs import pid_alive
from tests.support.skips import require

require(postfix_available, "private Postfix instances")

pytestmark = pytest.mark.mta

CLIENT_IP = "192.0.2.7"
HELO = "mx.example.net"


def message(tag: str) -> bytes:
    return (f"From: a@example.org\r\nTo: user@mx.test\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@example.org>\r\n\r\nbody of {tag}\r\n.leading dot\r\n").encode()


def only(messages, tag):
    found = [m for m in messages if m["Subject"] == tag]
    assert len(found) == 1, [m["Subject"] for m in messages]
    return found[0]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    with PostfixInstance(tmp_path_factory.mktemp("plain")) as inst:
        yield inst


def test_xclient_message_is_delivered_to_the_maildir(plain):
    tag = f"t-{uuid.uuid4().hex}"
    result = plain.send("a@example.org", ["user@mx.test"], message(tag), client_ip=CLIENT_IP, helo=HELO)
    assert result.accepted, result.transcript_text()
    assert result.code == 250 and result.queue_id
    assert result.reply("XCLIENT").code == 220
    assert result.rcpt["user@mx.test"].code == 250

    msg = only(plain.wait_for_delivery("user", 1), tag)
    received = msg.get_all("Received")[0]
    assert f"[{CLIENT_IP}]" in received and f"from {HELO} " in received, received
    assert result.queue_id in received
    assert msg["Delivered-To"] == "user@mx.test"
    assert msg.get_payload() == f"body of {tag}\n.leading dot\n"
    assert plain.mailbox("someone-else") == []


def test_refusals_come_back_as_results(plain):
    result = plain.send("a@example.org", ["x@example.com"], message("relay"), client_ip=CLIENT_IP, helo=HELO)
    assert not result.accepted
    assert result.stage == "rcpt"
    assert result.rcpt["x@example.com"].code == 554
    assert "Relay access denied" in result.text
    assert result.transcript[-1].command == "QUIT"


def test_xclient_helper_on_a_plain_smtplib_connection(plain):
    tag = f"t-{uuid.uuid4().hex}"
    smtp = plain.smtp()
    try:
        smtp.ehlo("client.test")
        code, text = plain.xclient(smtp, addr="198.51.100.9", helo="relay.example.net")
        assert code == 220, text
        assert smtp.ehlo_resp is not None and b"XCLIENT" not in smtp.ehlo_resp
        smtp.sendmail("b@example.org", ["other@mx.test"], message(tag))
    finally:
        smtp.quit()
    msg = only(plain.wait_for_delivery("other", 1), tag)
    assert "from relay.example.net (unknown [198.51.100.9])" in msg.get_all("Received")[0]


def test_a_second_instance_runs_beside_the_first_and_stops_cleanly(plain, tmp_path):
    second = PostfixInstance(tmp_path / "second", mydomain="second.test", mydestination=("second.test",))
    with second:
        assert second.port != plain.port
        assert second.queue_dir.resolve() != plain.queue_dir.resolve()
        tags = {inst: f"t-{uuid.uuid4().hex}" for inst in (plain, second)}
        for inst, rcpt in ((plain, "user@mx.test"), (second, "user@second.test")):
            result = inst.send("a@example.org", [rcpt], message(tags[inst]), client_ip=CLIENT_IP, helo=HELO)
            assert result.accepted, result.transcript_text()
        assert only(second.wait_for_delivery("user", 1), tags[second])
        assert only(plain.wait_for_delivery("user", 2), tags[plain])
        assert all(m["Subject"] != tags[second] for m in plain.mailbox())
        assert "postfix-second/smtpd" in second.log() and "postfix-second" not in plain.log()

        processes = second.processes()
        assert processes and processes[0] == second.master_pid
        second.stop()
        assert not any(pid_alive(pid) for pid in processes)
        assert not second.running
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", second.port), timeout=2):
            pass
        second.stop()  # idempotent

    assert plain.running
    result = plain.send("a@example.org", ["user@mx.test"], message("still-up"), client_ip=CLIENT_IP, helo=HELO)
    assert result.accepted, result.transcript_text()


def test_unreachable_milter_with_tempfail_defers_at_mail_from(tmp_path):
    milter = f"inet:127.0.0.1:{free_port()}"  # nothing listens there
    with PostfixInstance(tmp_path / "pf", milters=milter, milter_default_action="tempfail") as inst:
        result = inst.send("a@example.org", ["user@mx.test"], message("deferred"), client_ip=CLIENT_IP, helo=HELO)
        assert result.reply("XCLIENT").code == 220
        assert result.stage == "mail", result.transcript_text()
        assert result.code == 451 and result.text.startswith("4.7.1"), result.transcript_text()
        assert result.rcpt == {} and not result.accepted
        assert inst.queue_empty()
        assert inst.mailbox() == []
        log = inst.log()
        assert f"connect to Milter service {milter}: Connection refused" in log
        assert "milter-reject: MAIL from unknown[192.0.2.7]: 451 4.7.1" in log


def test_unreachable_milter_with_accept_delivers(tmp_path):
    milter = f"inet:127.0.0.1:{free_port()}"
    with PostfixInstance(tmp_path / "pf", milters=milter, milter_default_action="accept") as inst:
        tag = f"t-{uuid.uuid4().hex}"
        result = inst.send("a@example.org", ["user@mx.test"], message(tag), client_ip=CLIENT_IP, helo=HELO)
        assert result.accepted, result.transcript_text()
        msg = only(inst.wait_for_delivery("user", 1), tag)
        assert f"[{CLIENT_IP}]" in msg.get_all("Received")[0]
        assert f"connect to Milter service {milter}: Connection refused" in inst.log()
