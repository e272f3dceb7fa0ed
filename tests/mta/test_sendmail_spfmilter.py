"""spfmilter behind a real Sendmail: the INPUT_MAIL_FILTER line from contrib/sendmail.mc, port substituted.

Sendmail has no XCLIENT, so the milter sees every client as 127.0.0.1: it runs with an empty
``trusted_networks`` and the test domains' SPF records name 127.0.0.1 (or nothing).
"""
from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess

import pytest

from tests.support.delivered import our_authentication_results
from tests.support.milterproc import launch_milter
from tests.support.mta import contrib_milter_mc, contrib_milter_mc_unix, contrib_spfmilter_conf, message, socket_directory
from tests.support.sendmail import SendmailInstance, sendmail_available
from tests.support.skips import require

require(sendmail_available, "private Sendmail instances")

pytestmark = pytest.mark.mta
HELO = "sm-helo.example"
EXPLANATION = "Mail from %{d} must come through our servers, see https://sm-fail.example/spf"


def sendmail_zones(dns) -> None:
    dns.add("sm-helo.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns.add("sm-pass.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns.add("sm-fail.example", "TXT", "v=spf1 -all exp=explain.sm-fail.example")
    dns.add("explain.sm-fail.example", "TXT", EXPLANATION)


@pytest.fixture(scope="module")
def world(dns_server):
    sendmail_zones(dns_server)
    return dns_server


@pytest.fixture(scope="module", params=["header-only", "enforce"])
def mta(request, world, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"sm-{request.param}")
    milter = launch_milter(directory, "m", f"mode = {request.param}\ntrusted_networks =", world.port, inet=True)
    instance = SendmailInstance(directory / "sendmail", milter_mc=contrib_milter_mc(milter.addr[1]))
    try:
        instance.start()
    except Exception:
        milter.stop()
        raise
    yield request.param, instance, milter
    instance.stop()
    assert milter.stop() == 0, milter.full_log()
    assert "Traceback" not in milter.full_log(), milter.full_log()


our_results = our_authentication_results


def test_fail_sender(mta):
    mode, instance, milter = mta
    forged = "Authentication-Results: mx.test; spf=pass smtp.mailfrom=x@sm-fail.example\r\n"
    before = len(instance.mailbox("user"))
    result = instance.send("x@sm-fail.example", ["user@mx.test", "postmaster@mx.test"],
                           message("x@sm-fail.example", forged), helo=HELO)
    print(f"\n--- Sendmail ({mode}), SPF fail sender ---\n{result.transcript_text()}")
    if mode == "header-only":
        assert result.accepted, result.transcript_text()
        delivered = instance.wait_for_delivery("user", before + 1)[-1]
        assert milter.log_lines("action=would-reject")
    else:
        user_reply = result.rcpt["user@mx.test"]
        assert (user_reply.code, user_reply.text.split()[0]) == (550, "5.7.23"), result.transcript_text()
        assert "Mail from sm-fail.example must come through our servers" in user_reply.text
        assert result.rcpt["postmaster@mx.test"].code == 250  # RFC 5321 section 4.5.1
        assert result.accepted, result.transcript_text()
        delivered = instance.wait_for_delivery("postmaster", 1)[-1]
        assert len(instance.mailbox("user")) == before  # nothing for the refused recipient
    print(f"--- delivered headers ---\n{''.join(f'{k}: {v}' + chr(10) for k, v in delivered.items())}")
    assert our_results(delivered) == {"helo": ("pass", HELO), "mailfrom": ("fail", "x@sm-fail.example")}


def test_pass_sender_is_delivered_in_both_modes(mta):
    mode, instance, _ = mta
    before = len(instance.mailbox("user"))
    result = instance.send("a@sm-pass.example", ["user@mx.test"], message("a@sm-pass.example"), helo=HELO)
    print(f"\n--- Sendmail ({mode}), SPF pass sender ---\n{result.transcript_text()}")
    assert result.accepted, result.transcript_text()
    delivered = instance.wait_for_delivery("user", before + 1)[-1]
    assert our_results(delivered) == {"helo": ("pass", HELO), "mailfrom": ("pass", "a@sm-pass.example")}


def test_several_messages_on_one_connection_each_get_their_own_result(mta):
    mode, instance, _ = mta
    plan = [("sm-fail", "postmaster"), ("sm-pass", "user"), ("sm-fail", "user"), ("sm-pass", "postmaster")]
    before = {box: len(instance.mailbox(box)) for box in ("user", "postmaster")}
    transactions = [(f"m{i}@{domain}.example", [f"{box}@mx.test"],
                     message(f"m{i}@{domain}.example", f"X-Test-Run: sm-several-{mode}-{i}\r\n"))
                    for i, (domain, box) in enumerate(plan)]
    results = instance.send_several(transactions, helo=HELO)
    print("\n".join(r.transcript_text() for r in results))
    expected_counts = dict(before)
    for i, ((domain, box), result) in enumerate(zip(plan, results)):
        if i:
            assert result.reply("RSET").code == 250
        if mode == "enforce" and domain == "sm-fail" and box == "user":
            assert (result.code, result.text.split()[0]) == (550, "5.7.23"), result.transcript_text()
            continue
        assert result.accepted, result.transcript_text()
        expected_counts[box] += 1
    for box, count in expected_counts.items():
        delivered = instance.wait_for_delivery(box, count)
        assert len(delivered) == count
        for msg in delivered[before[box]:]:
            i = int(msg["X-Test-Run"].rsplit("-", 1)[1])
            sender = f"m{i}@{plan[i][0]}.example"
            assert our_results(msg)["mailfrom"] == ("fail" if plan[i][0] == "sm-fail" else "pass", sender)


def test_milter_down_defers_and_loses_nothing(world, tmp_path):
    """F=T from contrib/sendmail.mc: with nothing listening on the milter's port, mail is deferred."""
    from tests.support.postfix import free_port

    instance = SendmailInstance(tmp_path / "sendmail", milter_mc=contrib_milter_mc(free_port()))
    with instance:
        result = instance.send("a@sm-pass.example", ["user@mx.test"], message("a@sm-pass.example"), helo=HELO)
        print(f"\n--- Sendmail, milter down ---\n{result.transcript_text()}")
        assert (result.stage, result.code) == ("mail", 451) and not result.accepted, result.transcript_text()
        assert instance.mailbox("user") == []
        assert list(instance.queue_dir.iterdir()) == []  # deferred to the client, nothing half-queued


@pytest.fixture
def smmsp():
    """Sendmail's group as Debian's sendmail-base creates it; here Sendmail is only unpacked, so a
    temporary system group stands in when the machine has none (removed afterwards)."""
    try:
        yield grp.getgrnam("smmsp").gr_gid
        return
    except KeyError:
        pass
    subprocess.run(["groupadd", "--system", "smmsp"], check=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    try:
        yield grp.getgrnam("smmsp").gr_gid
    finally:
        subprocess.run(["groupdel", "smmsp"], check=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def test_unix_socket_in_group_smmsp(world, tmp_path, smmsp):
    """The unix-socket lines documented for Sendmail hosts: contrib/spfmilter.conf with
    socket_group = smmsp (mode 0660, user nobody), socket_keep_link = no (Sendmail refuses a socket
    with a second hard link: "unsafe: Hard links not allowed") and contrib/sendmail.mc's unix alternative.
    (This Sendmail runs as root, as Debian's daemon does; the group is what lets a Sendmail with
    RunAsUser=smmsp in too.)"""
    # Sendmail refuses a socket below a world-writable directory (/tmp): "local socket name ...
    # unsafe: World writable directory"; /run is not, like /run/spfmilter under systemd
    run_dir = socket_directory(parent="/run")
    path = run_dir / "spfmilter.sock"
    text = contrib_spfmilter_conf(socket=f"unix:{path}", socket_group="smmsp", user="nobody", socket_keep_link="no",
                                  trusted_networks="", dns_servers=f"127.0.0.1:{world.port}", authserv_id="mx.test",
                                  mode="enforce")
    milter = launch_milter(tmp_path, "m", "", None, config_text=text)
    try:
        assert os.stat(path).st_nlink == 1, "a second hard link: Sendmail calls the socket unsafe"
        info = os.stat(path)
        assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (smmsp, 0o660)
        instance = SendmailInstance(tmp_path / "sendmail", milter_mc=contrib_milter_mc_unix(str(path)))
        with instance:
            result = instance.send("a@sm-pass.example", ["user@mx.test"], message("a@sm-pass.example"), helo=HELO)
            assert result.accepted, result.transcript_text()
            [delivered] = instance.wait_for_delivery("user", 1)
            assert our_results(delivered)["mailfrom"] == ("pass", "a@sm-pass.example")
            refused = instance.send("x@sm-fail.example", ["user@mx.test"], message("x@sm-fail.example"), helo=HELO)
            assert refused.rcpt["user@mx.test"].code == 550, refused.transcript_text()
    finally:
        stopped = milter.stop()
        shutil.rmtree(run_dir.parent)
    assert stopped == 0, milter.full_log()
