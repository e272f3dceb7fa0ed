"""spfmilter behind a real Postfix, over an inet and a unix socket.

The milter's configuration is contrib/spfmilter.conf and Postfix's milter settings are the
lines of contrib/postfix-main.cf, with ports and paths substituted: the snippets users copy
are the ones tested here.
"""
from __future__ import annotations

import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.reliability.figures import record
from tests.support.delivered import our_authentication_results, our_received_spf
from tests.support.milterproc import launch_milter
from tests.support.mta import contrib_main_cf, contrib_spfmilter_conf, message, socket_directory, wait_for_marked
from tests.support.postfix import PostfixInstance, free_port, postfix_available
from tests.support.sessions import CLIENT_IP, HELO
from tests.support.skips import require

require(postfix_available, "private Postfix instances")

pytestmark = pytest.mark.mta


# ---------------------------------------------------------------- fixtures

def start_milter(directory: Path, transport: str, dns_port: int, mode: str = "header-only",
                 socket_dir: Path | None = None, name: str = "m"):
    """spfmilter on contrib/spfmilter.conf; returns (milter handle, smtpd_milters value)."""
    common = dict(mode=mode, header_type="both", authserv_id="mx.test", dns_servers=f"127.0.0.1:{dns_port}",
                  log_level="debug")
    if transport == "inet":
        port = free_port()
        text = contrib_spfmilter_conf(socket=f"inet:{port}@127.0.0.1", **common)
        smtpd_milter = f"inet:127.0.0.1:{port}"
    else:
        path = socket_dir / "spfmilter.sock"
        text = contrib_spfmilter_conf(socket=f"unix:{path}", socket_group="postfix", user="nobody", **common)
        smtpd_milter = f"unix:{path}"
    return launch_milter(directory, name, "", None, config_text=text), smtpd_milter


@pytest.fixture(scope="module", params=[("header-only", "inet"), ("enforce", "inet"),
                                        ("header-only", "unix"), ("enforce", "unix")],
                ids=lambda p: "-".join(p))
def mta(request, world, tmp_path_factory):
    mode, transport = request.param
    directory = tmp_path_factory.mktemp(f"pf-{mode}-{transport}")
    socket_dir = socket_directory() if transport == "unix" else None
    milter, smtpd_milter = start_milter(directory, transport, world.port, mode, socket_dir)
    settings = contrib_main_cf(smtpd_milter)
    instance = PostfixInstance(directory / "postfix", milters=settings.pop("smtpd_milters"),
                               milter_default_action=settings.pop("milter_default_action"), extra_main_cf=settings)
    instance.start()
    yield mode, instance, milter
    instance.close()
    assert milter.stop() == 0
    if socket_dir is not None:
        assert not (socket_dir / "spfmilter.sock").exists()  # removed at exit
        shutil.rmtree(socket_dir.parent)


FORGED = ("Authentication-Results: mx.test; spf=pass smtp.mailfrom={sender}\r\n"
          "Received-SPF: pass (mx.test: forged) client-ip=192.0.2.7; envelope-from={sender}; receiver=mx.test;\r\n"
          "\tidentity=mailfrom\r\n")


def our_results(delivered) -> dict:
    """{'ar': {identity: result}, 'rspf': {identity: result}} from the delivered message's headers."""
    ar = {identity: result for identity, (result, _) in our_authentication_results(delivered).items()}
    return {"ar": ar, "rspf": our_received_spf(delivered)}


# ---------------------------------------------------------------- tests

def test_fail_sender(mta):
    mode, instance, milter = mta
    sender = "x@fail.example"
    result = instance.send(sender, ["user@mx.test", "postmaster@mx.test"],
                           message(sender, FORGED.format(sender=sender)), client_ip=CLIENT_IP, helo=HELO)
    print(f"\n--- Postfix ({mode}, {milter.addr}), SPF fail sender ---\n{result.transcript_text()}")
    if mode == "header-only":
        assert result.accepted
        delivered = instance.wait_for_delivery("user@mx.test", 1)[-1]
    else:
        user_reply = result.rcpt["user@mx.test"]
        assert (user_reply.code, user_reply.text.split()[0]) == (550, "5.7.23")
        assert "fail.example" in user_reply.text
        assert result.rcpt["postmaster@mx.test"].code == 250  # RFC 5321 section 4.5.1
        assert result.accepted
        delivered = instance.wait_for_delivery("postmaster@mx.test", 1)[-1]
    print(f"--- delivered headers ---\n{''.join(f'{k}: {v}' + chr(10) for k, v in delivered.items())}")
    assert our_results(delivered) == {"ar": {"helo": "pass", "mailfrom": "fail"},
                                      "rspf": {"helo": "pass", "mailfrom": "fail"}}
    # the log names the recipient domain for spfmilter report (issue 14), header-only on a unix socket too
    assert [line.endswith("; rcpt-domains=mx.test") for line in milter.log_lines("envelope-from=x@fail.example")
            if "identity=mailfrom" in line][-1:] == [True]


def test_enforce_refusal_carries_the_domains_explanation(mta):
    mode, instance, _ = mta
    if mode != "enforce":
        pytest.skip("enforce mode")
    result = instance.send("x@exp.example", ["user@mx.test"], message("x@exp.example"), client_ip=CLIENT_IP, helo=HELO)
    print(result.transcript_text())
    reply = result.rcpt["user@mx.test"]
    assert (reply.code, reply.text.split()[0]) == (550, "5.7.23")
    # RFC 7208 section 6.2: the exp= text, macros expanded
    assert "Mail from exp.example must come through our servers, see https://exp.example/spf" in reply.text
    assert not result.accepted


EVERY_RESULT = [("pass", "pass"), ("fail", "fail"), ("softfail", "softfail"), ("neutral", "neutral"),
                ("none", "none"), ("permerror", "permerror"), ("temperror", "temperror")]


def test_header_only_delivers_every_result_with_its_headers(mta):
    mode, instance, milter = mta
    if mode != "header-only":
        pytest.skip("header-only mode")
    run = uuid.uuid4().hex[:8]
    for domain, _ in EVERY_RESULT:
        sender = f"a@{domain}.example"
        marker = f"X-Test-Run: {run}-{domain}\r\n"
        result = instance.send(sender, ["user@mx.test"], message(sender, marker + FORGED.format(sender=sender)),
                               client_ip=CLIENT_IP, helo=HELO)
        assert result.accepted, result.transcript_text()
    for domain, expected in EVERY_RESULT:
        [delivered] = wait_for_marked(instance, "user@mx.test", f"{run}-{domain}", 1)
        assert our_results(delivered) == {"ar": {"helo": "pass", "mailfrom": expected},
                                          "rspf": {"helo": "pass", "mailfrom": expected}}, domain
    # and the log says what enforcement would have done
    assert any("action=would-reject" in line and "fail.example" in line
               for line in milter.log_lines("identity=mailfrom"))


def test_pass_sender_is_delivered_in_both_modes(mta):
    _, instance, _ = mta
    result = instance.send("a@pass.example", ["user@mx.test"], message("a@pass.example"),
                           client_ip=CLIENT_IP, helo=HELO)
    assert result.accepted, result.transcript_text()


def test_temperror_defers_only_in_enforce_mode(mta):
    mode, instance, _ = mta
    result = instance.send("a@temperror.example", ["user@mx.test"], message("a@temperror.example"),
                           client_ip=CLIENT_IP, helo=HELO)
    if mode == "enforce":
        reply = result.rcpt["user@mx.test"]
        assert (reply.code, reply.text.split()[0]) == (451, "4.7.24"), result.transcript_text()
        assert not result.accepted
    else:
        assert result.accepted


def test_trusted_and_authenticated_clients_are_not_checked(mta):
    mode, instance, milter = mta
    marker = f"trusted-{uuid.uuid4().hex[:8]}"
    # 127.0.0.1 is in trusted_networks (contrib: loopback); a SASL login is trusted by default
    for kwargs in ({"client_ip": "127.0.0.1"}, {"client_ip": CLIENT_IP, "login": "alice"}):
        result = instance.send("x@fail.example", ["user@mx.test"],
                               message("x@fail.example", f"X-Test-Run: {marker}\r\n"), helo=HELO, **kwargs)
        assert result.accepted, result.transcript_text()
    ours = wait_for_marked(instance, "user@mx.test", marker, 2)
    assert len(ours) == 2
    assert all(m.get("Authentication-Results") is None and m.get("Received-SPF") is None for m in ours)
    assert milter.logs().count("skipped=") >= 2


def test_several_messages_on_one_connection_each_get_their_own_result(mta):
    mode, instance, milter = mta
    run = uuid.uuid4().hex[:8]
    plan = [("fail", "user@mx.test"), ("pass", "user@mx.test"), ("softfail", "user@mx.test"),
            ("fail", "postmaster@mx.test"), ("none", "user@mx.test")]
    transactions = [(f"m{i}@{domain}.example", [rcpt],
                     message(f"m{i}@{domain}.example", f"X-Test-Run: {run}-{i}\r\n"))
                    for i, (domain, rcpt) in enumerate(plan)]
    results = instance.send_several(transactions, client_ip=CLIENT_IP, helo=HELO)
    print("\n".join(r.transcript_text() for r in results))
    assert [r.reply("RSET") is not None for r in results] == [False, True, True, True, True]
    for i, ((domain, rcpt), result) in enumerate(zip(plan, results)):
        refused = mode == "enforce" and domain == "fail" and rcpt.startswith("user@")
        if refused:
            assert (result.code, result.text.split()[0]) == (550, "5.7.23") and not result.accepted
            continue
        assert result.accepted, result.transcript_text()
        [delivered] = wait_for_marked(instance, rcpt, f"{run}-{i}", 1)
        assert our_results(delivered)["ar"] == {"helo": "pass", "mailfrom": domain}


# ---------------------------------------------------------------- milter restarted under load

def test_milter_restart_under_load_loses_no_message(world, tmp_path):
    """SIGTERM the milter while Postfix is busy, start a new one: every message ends up delivered, checked.

    With milter_default_action = tempfail (contrib), a message either passes through a milter or is
    deferred with a 4xx that the client retries; none is lost and none is delivered unchecked.
    """
    socket_dir = socket_directory()
    first, smtpd_milter = start_milter(tmp_path, "unix", world.port, socket_dir=socket_dir, name="first")
    settings = contrib_main_cf(smtpd_milter)
    instance = PostfixInstance(tmp_path / "postfix", milters=settings.pop("smtpd_milters"),
                               milter_default_action=settings.pop("milter_default_action"), extra_main_cf=settings)
    run = uuid.uuid4().hex[:8]
    total, senders = 60, 4
    deferred, problems, sent = [], [], []
    lock = threading.Lock()
    half_sent = threading.Event()

    def submit(worker: int) -> None:
        for n in range(worker, total, senders):
            sender = "a@pass.example" if n % 2 else "b@fail.example"
            data = message(sender, f"X-Test-Run: {run}-{n}\r\n")
            deadline = time.monotonic() + 60
            while True:
                result = instance.send(sender, ["user@mx.test"], data, client_ip=CLIENT_IP, helo=HELO)
                if result.accepted:
                    break
                if not 400 <= result.code < 500 or time.monotonic() > deadline:
                    with lock:
                        problems.append(result.transcript_text())
                    return
                with lock:
                    deferred.append(result.code)
                time.sleep(0.1)  # an SMTP client's retry interval, shortened
            with lock:
                sent.append(n)
                if len(sent) == total // 2:
                    half_sent.set()

    second = None
    with instance:
        threads = [threading.Thread(target=submit, args=(w,)) for w in range(senders)]
        for thread in threads:
            thread.start()
        try:
            assert half_sent.wait(60), problems
            first.proc.send_signal(signal.SIGTERM)
            assert first.proc.wait(60) == 0
            second, _ = start_milter(tmp_path, "unix", world.port, socket_dir=socket_dir, name="second")
        finally:
            for thread in threads:
                thread.join(120)
        delivered, duplicates = wait_for_marked_all(instance, run, total)
        unchecked = [n for n, msg in delivered.items()
                     if our_results(msg)["ar"]["mailfrom"] != ("pass" if n % 2 else "fail")]
        record("restart", messages=total, accepted=len(sent), delivered=len(delivered), duplicates=duplicates,
               lost=total - len(delivered), unchecked=len(unchecked), deferrals_retried=len(deferred),
               failures=len(problems))
        assert problems == []
        assert sorted(sent) == list(range(total))
        assert sorted(delivered) == list(range(total)), "lost messages"
        assert duplicates == 0
        # every delivered message was checked by one of the two milters
        assert unchecked == []
    assert second is not None and second.stop() == 0
    print(f"{total} messages, {len(deferred)} deferrals retried during the restart")
    assert "stopped after" in first.full_log()
    shutil.rmtree(socket_dir.parent)


def wait_for_marked_all(instance, run: str, total: int, timeout: float = 60) -> tuple[dict, int]:
    """{n: message} of the run's delivered messages, and how many were delivered twice."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict = {}
        duplicates = 0
        for msg in instance.mailbox("user@mx.test"):
            marker = msg.get("X-Test-Run", "")
            if marker.startswith(f"{run}-"):
                n = int(marker.rsplit("-", 1)[1])
                duplicates += n in found
                found[n] = msg
        if len(found) >= total or time.monotonic() > deadline:
            return found, duplicates
        time.sleep(0.1)
