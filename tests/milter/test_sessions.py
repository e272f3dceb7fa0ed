"""The milter through a real socket, driven by a milter-protocol client, resolving via a local DNS server.

Each test starts its own spfmilter process (fixture ``start_milter``) and talks to
it the way Postfix does: option negotiation, macros before each stage, connect,
HELO, MAIL, RCPT, headers, end of message.
"""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.support.dnsserver import DNSServer
from tests.support.milterclient import MilterClient, MilterClosed
from tests.support.procs import children
from tests.support.sessions import CLIENT_IP, PASSED_ON, ar_results, run


@pytest.fixture
def milter(start_milter, world):
    return start_milter()


@pytest.mark.parametrize("domain,expected", [
    ("pass.example", "pass"),
    ("fail.example", "fail"),
    ("softfail.example", "softfail"),
    ("neutral.example", "neutral"),
    ("none.example", "none"),
    ("nxdomain.example", "none"),
    ("permerror.example", "permerror"),
    ("temperror.example", "temperror"),
])
def test_every_mailfrom_result_in_header_only_mode(milter, domain, expected):
    replies, mods, _ = run(milter, sender=f"<someone@{domain}>")
    assert all(r.action in PASSED_ON for r in replies["rcpt"])  # header-only never refuses
    assert replies["eom"].action == "continue"
    results = ar_results(mods)
    assert results["mailfrom"] == (expected, f"someone@{domain}")
    assert results["helo"] == ("pass", "helo.example")
    # our header goes on top
    assert [m[0] for m in mods] == ["insheader"] and mods[0][1] == 0


@pytest.mark.parametrize("helo,expected", [
    ("helo.example", "pass"),
    ("badhelo.example", "fail"),
    ("softfail.example", "softfail"),
    ("permerror.example", "permerror"),
    ("temperror.example", "temperror"),
    ("[192.0.2.7]", "none"),
    ("localhost", "none"),
])
def test_every_helo_result(milter, helo, expected):
    _, mods, _ = run(milter, helo=helo)
    assert ar_results(mods)["helo"] == (expected, helo)


def test_would_reject_is_logged_in_header_only_mode(milter):
    replies, mods, _ = run(milter, sender="<x@fail.example>")
    assert replies["rcpt"][0].action in PASSED_ON
    assert ar_results(mods)["mailfrom"][0] == "fail"
    lines = milter.log_lines("identity=mailfrom")
    assert len(lines) == 1
    line = lines[0]
    assert "Fail; identity=mailfrom; client-ip=192.0.2.7; helo=helo.example; envelope-from=x@fail.example;" in line
    assert "action=would-reject" in line
    assert 'reply="550 5.7.23 ' in line
    assert "queue-id=QID123" in line


def test_enforce_rejects_fail_with_rfc7372_code_but_not_postmaster(start_milter, world):
    milter = start_milter("mode = enforce")
    replies, mods, _ = run(milter, sender="<x@fail.example>",
                           rcpts=("<b@mx.test>", "<postmaster@mx.test>", "<Abuse@mx.test>", "<c@mx.test>"))
    codes = [(r.action, r.code, r.xcode) for r in replies["rcpt"]]
    assert codes[0] == ("replycode", 550, "5.7.23")
    assert codes[1][0] in PASSED_ON and codes[2][0] in PASSED_ON
    assert codes[3] == ("replycode", 550, "5.7.23")
    assert "x@fail.example" in replies["rcpt"][0].text and "192.0.2.7" in replies["rcpt"][0].text
    assert ar_results(mods)["mailfrom"][0] == "fail"  # the postmaster copy still gets headers
    assert "action=reject" in milter.log_lines("identity=mailfrom")[0]


def test_enforce_uses_the_domains_explanation(start_milter, world):
    milter = start_milter("mode = enforce")
    replies, _, _ = run(milter, sender="<x@exp.example>")
    reply = replies["rcpt"][0]
    assert (reply.code, reply.xcode) == (550, "5.7.23")
    assert "exp.example explains: Mail from exp.example must come through our servers" in reply.text


def test_enforce_helo_fail_rejects_even_when_mailfrom_passes(start_milter, world):
    milter = start_milter("mode = enforce")
    replies, _, _ = run(milter, helo="badhelo.example", sender="<a@pass.example>")
    reply = replies["rcpt"][0]
    assert (reply.code, reply.xcode) == (550, "5.7.23")
    assert "HELO badhelo.example" in reply.text


@pytest.mark.parametrize("extra,domain,expected", [
    ("mailfrom_reject_results = fail, permerror", "permerror.example", (550, "5.7.24")),
    ("", "permerror.example", None),
    ("", "temperror.example", (451, "4.7.24")),
    ("temperror_action = accept", "temperror.example", None),
    ("mailfrom_reject_results = fail, softfail", "softfail.example", (550, "5.7.23")),
    ("mailfrom_reject_results = none", "none.example", (550, "5.7.23")),
    ("mailfrom_reject_results = neutral", "neutral.example", (550, "5.7.23")),
    ("", "softfail.example", None),
    ("", "pass.example", None),
])
def test_enforce_policy_table(start_milter, world, extra, domain, expected):
    milter = start_milter("mode = enforce\n" + extra)
    replies, _, _ = run(milter, sender=f"<x@{domain}>")
    reply = replies["rcpt"][0]
    if expected is None:
        assert reply.action in PASSED_ON
    else:
        assert (reply.action, reply.code, reply.xcode) == ("replycode", *expected)


def test_null_sender_is_checked_as_postmaster_at_helo(milter):
    _, mods, _ = run(milter, sender="<>", helo="badhelo.example")
    results = ar_results(mods)
    assert results["mailfrom"] == ("fail", "postmaster@badhelo.example")
    assert results["helo"] == ("fail", "badhelo.example")


def test_ipv6_client_and_ipv4_mapped_address(milter):
    _, mods, _ = run(milter, ip="2001:db8:7::25", family="6")
    assert ar_results(mods)["mailfrom"][0] == "pass"
    _, mods, _ = run(milter, ip="2001:db8:8::25", family="6")
    assert ar_results(mods)["mailfrom"][0] == "fail"
    _, mods, _ = run(milter, ip="::ffff:192.0.2.7", family="6")
    assert ar_results(mods)["mailfrom"][0] == "pass"
    assert "client-ip=192.0.2.7;" in milter.log_lines("identity=mailfrom")[-1]


def test_include_redirect_macros_and_mx(start_milter, dns_server):
    dns_server.add("inc.example", "TXT", "v=spf1 include:_spf.inc.example -all")
    dns_server.add("_spf.inc.example", "TXT", "v=spf1 redirect=_net.inc.example")
    dns_server.add("_net.inc.example", "TXT", "v=spf1 mx:mail.inc.example exists:%{i}._ip.inc.example -all")
    dns_server.add("mail.inc.example", "MX", "10 mx1.inc.example")
    dns_server.add("mx1.inc.example", "A", "198.51.100.25")
    dns_server.add("192.0.2.7._ip.inc.example", "A", "127.0.0.2")
    milter = start_milter()
    _, mods, _ = run(milter, sender="<a@inc.example>")
    assert ar_results(mods)["mailfrom"][0] == "pass"
    _, mods, _ = run(milter, sender="<a@inc.example>", ip="198.51.100.25")
    assert ar_results(mods)["mailfrom"][0] == "pass"
    _, mods, _ = run(milter, sender="<a@inc.example>", ip="198.51.100.26")
    assert ar_results(mods)["mailfrom"][0] == "fail"


def test_lookup_limit_and_void_limit_are_permerrors(start_milter, dns_server):
    # RFC 7208 section 4.6.4: more than 10 DNS-querying terms, or more than 2 void lookups
    terms = " ".join(f"a:h{i}.many.example" for i in range(11))
    dns_server.add("many.example", "TXT", f"v=spf1 {terms} -all")
    for i in range(11):
        dns_server.add(f"h{i}.many.example", "A", "198.51.100.1")
    dns_server.add("void.example", "TXT", "v=spf1 a:v1.void.example a:v2.void.example a:v3.void.example -all")
    milter = start_milter()
    _, mods, _ = run(milter, sender="<a@many.example>")
    assert ar_results(mods)["mailfrom"][0] == "permerror"
    _, mods, _ = run(milter, sender="<a@void.example>")
    assert ar_results(mods)["mailfrom"][0] == "permerror"
    assert "Void lookup limit" in milter.log_lines("identity=mailfrom; client-ip=192.0.2.7; helo=helo.example; envelope-from=a@void.example")[0]


def test_dead_dns_costs_at_most_the_transaction_budget(start_milter):
    with DNSServer("127.0.0.1") as dead:
        dead.default_fault = "timeout"
        milter = start_milter("dns_timeout = 1.5\nmode = enforce", dns=dead)
        started = time.monotonic()
        replies, _, _ = run(milter, sender="<a@pass.example>")
        elapsed = time.monotonic() - started
    reply = replies["rcpt"][0]
    assert (reply.code, reply.xcode) == (451, "4.7.24")
    assert elapsed < 1.5 + 1.0, f"session took {elapsed:.2f}s with a 1.5s DNS budget"
    assert elapsed >= 1.4  # the budget was really spent waiting on DNS
    line = milter.log_lines("identity=mailfrom")[0]
    assert "TempError; identity=mailfrom" in line and ("DNS timeout" in line or "DNS time budget" in line)


def test_trusted_networks_and_authenticated_senders_are_not_checked(start_milter, world):
    milter = start_milter("mode = enforce\ntrusted_networks = loopback, 198.51.100.0/24, 2001:db8:9::/48")
    for ip, family in (("127.0.0.1", "4"), ("198.51.100.77", "4"), ("2001:db8:9::1", "6"), ("::1", "6")):
        replies, mods, _ = run(milter, sender="<x@fail.example>", ip=ip, family=family)
        assert replies["rcpt"][0].action in PASSED_ON, ip
        assert mods == [], ip
    replies, mods, _ = run(milter, sender="<x@fail.example>", mail_macros={"{auth_authen}": "alice"})
    assert replies["rcpt"][0].action in PASSED_ON
    assert mods == []
    assert len(milter.log_lines("skipped=")) == 5
    replies, _, _ = run(milter, sender="<x@fail.example>")
    assert replies["rcpt"][0].code == 550


def test_ipv4_mapped_trusted_network_trusts_the_client_in_either_form(start_milter, world):
    """``::ffff:10.0.0.0/104`` is 10.0.0.0/8: the client is trusted whether the MTA gives it as
    10.1.2.3 or as ::ffff:10.1.2.3 (the milter unmaps the client address)."""
    milter = start_milter("mode = enforce\ntrusted_networks = ::ffff:10.0.0.0/104")
    for ip, family in (("10.1.2.3", "4"), ("::ffff:10.1.2.3", "6")):
        replies, mods, _ = run(milter, sender="<x@fail.example>", ip=ip, family=family)
        assert replies["rcpt"][0].action in PASSED_ON, ip
        assert mods == [], ip
    skipped = milter.log_lines('skipped="trusted network 10.0.0.0/8"')
    assert len(skipped) == 2 and all("client-ip=10.1.2.3" in line for line in skipped), milter.logs()
    replies, _, _ = run(milter, sender="<x@fail.example>", ip="11.1.2.3")  # outside: checked, refused
    assert replies["rcpt"][0].code == 550


def test_authenticated_senders_checked_when_not_trusted(start_milter, world):
    milter = start_milter("mode = enforce\ntrust_authenticated = no")
    replies, _, _ = run(milter, sender="<x@fail.example>", mail_macros={"{auth_authen}": "alice"})
    assert replies["rcpt"][0].code == 550


def test_forged_headers_are_removed_every_copy(milter):
    headers = [
        ("Authentication-Results", "mx.test; spf=pass smtp.mailfrom=x@fail.example"),
        ("Received-SPF", "pass (mx.test: forged) receiver=mx.test; client-ip=192.0.2.7"),
        ("authentication-results", "other.example; spf=fail smtp.mailfrom=x@fail.example"),
        ("AUTHENTICATION-RESULTS", "(comment) MX.TEST.;\n\tspf=pass smtp.mailfrom=x@fail.example"),
        ("Authentication-Results", "\"mx.test\" 1; dkim=pass"),
        ("Received-SPF", "pass (other) receiver=other.example"),
        ("Authentication-Results", "mx.test.evil.example; spf=pass"),
        ("Received-SPF", "softfail receiver = \"MX.test\" ; identity=mailfrom"),
    ]
    _, mods, _ = run(milter, sender="<x@fail.example>", headers=headers)
    deletions = [(m[1], m[2].lower()) for m in mods if m[0] == "chgheader"]
    assert all(m[3] == "" for m in mods if m[0] == "chgheader")
    # per-name indexes (1-based, case-insensitive names), bottom-up
    assert sorted(deletions) == sorted([(1, "authentication-results"), (3, "authentication-results"),
                                        (4, "authentication-results"), (1, "received-spf"),
                                        (3, "received-spf")])
    assert [d[0] for d in deletions if d[1] == "authentication-results"] == [4, 3, 1]
    # deletions come before our insertion, so the indexes are not shifted by it
    assert mods[-1][0] == "insheader" and mods[-1][1] == 0
    assert ar_results(mods)["mailfrom"][0] == "fail"


@pytest.mark.parametrize("header_type,names", [
    ("authentication-results", ["Authentication-Results"]),
    ("received-spf", ["Received-SPF", "Received-SPF"]),
    ("both", ["Authentication-Results", "Received-SPF", "Received-SPF"]),
    ("none", []),
])
def test_header_types(start_milter, world, header_type, names):
    milter = start_milter(f"header_type = {header_type}")
    _, mods, _ = run(milter, sender="<x@fail.example>")
    # insheader at 0 in reverse order leaves them top-down in `names` order
    assert [m[2] for m in reversed(mods)] == names
    spf_values = [m[3].replace("\n", "") for m in mods if m[2] == "Received-SPF"]
    if spf_values:
        mailfrom, helo = spf_values[1], spf_values[0]  # reversed insertion order
        assert mailfrom.startswith("fail (mx.test: ")
        assert "identity=mailfrom" in mailfrom and "receiver=mx.test" in mailfrom
        assert 'envelope-from="x@fail.example"' in mailfrom and "client-ip=192.0.2.7" in mailfrom
        assert "mechanism=-all" in mailfrom
        assert helo.startswith("pass ") and "identity=helo" in helo and "helo=helo.example" in helo


HOSTILE = [
    "evil\r\nX-Injected: yes",
    "a;b (c) \"d\" \\e",
    "x" * 3000,
    "\x01\x1b\x7f\u2028\u0085\udcff",  # NUL cannot travel in the milter protocol
    "jos\u00e9.\u00fc\u00f1\u00ee",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_helo_and_sender_never_break_a_header(start_milter, world, text):
    milter = start_milter("header_type = both")
    sender = f"<{text.replace('>', '')}@pass.example>"
    _, mods, _ = run(milter, sender=sender, helo=text)
    assert mods
    for mod in mods:
        value = mod[3]
        # only folding (LF followed by a space) is allowed; no other control characters
        assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f\u0080-\u009f\u2028\u2029]", value), value
        assert "\n" not in value.replace("\n ", "")
        assert all(len(line.encode()) < 998 for line in value.split("\n"))
    ar = ar_results(mods)
    assert set(ar) == {"helo", "mailfrom"}
    lines = milter.log_lines("identity=")
    assert lines and not any("\r" in line for line in lines)


def test_several_transactions_on_one_connection_each_get_their_result(milter):
    client = milter.client()
    client.connect("[192.0.2.7]", CLIENT_IP, port=40000, family="4")
    client.helo("helo.example")
    results = []
    for domain in ("fail.example", "pass.example", "softfail.example"):
        _, mods, _ = run(milter, sender=f"<a@{domain}>", client=client)
        results.append(ar_results(mods)["mailfrom"][0])
    # abort mid-transaction (RSET), then a new one
    client.mail("<a@fail.example>")
    client.rcpt("<b@mx.test>")
    client.abort()
    _, mods, _ = run(milter, sender="<a@neutral.example>", client=client)
    results.append(ar_results(mods)["mailfrom"][0])
    client.quit()
    assert results == ["fail", "pass", "softfail", "neutral"]
    actions = [re.search(r"action=([a-z-]+)", line).group(1) for line in milter.log_lines("identity=mailfrom")]
    assert actions == ["would-reject", "accept", "accept", "aborted", "accept"]


def test_inet_socket(start_milter, world):
    milter = start_milter(inet=True)
    _, mods, _ = run(milter, sender="<x@pass.example>")
    assert ar_results(mods)["mailfrom"][0] == "pass"


@pytest.mark.parametrize("pause", [0.0, 1.0], ids=["next-command-at-once", "pause-before-next-command"])
def test_sigterm_lets_the_session_in_flight_finish(start_milter, world, pause):
    """An MTA's client may think for a while between commands (DATA comes much later than RCPT)."""
    milter = start_milter(fresh=True)
    client: MilterClient = milter.client(timeout=10)
    client.connect("[192.0.2.7]", CLIENT_IP, port=40000, family="4")
    client.helo("helo.example")
    client.mail("<a@fail.example>")
    milter.proc.terminate()
    if pause:
        deadline = time.monotonic() + 20
        while "stopping: waiting for 1 session(s) in flight" not in milter.logs():
            assert time.monotonic() < deadline and milter.proc.poll() is None
            time.sleep(0.05)
        # nobody serves new connections any more: refused, or reset once libmilter's listener
        # thread lets go of the old socket (within its 5 s poll), so the MTA applies its default action
        with pytest.raises((ConnectionRefusedError, MilterClosed)):
            milter.client(timeout=8)
        time.sleep(pause)  # the pause under test, not a readiness wait
    assert client.rcpt("<b@mx.test>").action in PASSED_ON
    client.data()
    client.eoh()
    reply, mods = client.eom()
    assert reply.action == "continue" and ar_results(mods)["mailfrom"][0] == "fail"
    client.quit()
    assert milter.proc.wait(20) == 0
    assert "stopped after" in milter.logs()
    assert not os.path.exists(milter.addr)  # the unix socket is removed at exit


@pytest.mark.parametrize("on_error,expected", [("tempfail", ("replycode", 451, "4.3.0")), ("accept", ("accept", None, None))])
def test_internal_error_ends_in_the_configured_answer_and_the_milter_keeps_serving(
        start_milter, world, on_error, expected):
    milter = start_milter(f"on_error = {on_error}\nmode = enforce", module="tests.support.faulty_milter")
    # failure inside the (no-reply) MAIL FROM callback: answered at RCPT
    replies, mods, _ = run(milter, sender="<crash-verify@pass.example>")
    assert (replies["rcpt"][0].action, replies["rcpt"][0].code, replies["rcpt"][0].xcode) == expected
    # failure inside the RCPT callback itself
    replies, _, _ = run(milter, sender="<a@pass.example>", rcpts=("<crash-rcpt@mx.test>",))
    assert (replies["rcpt"][0].action, replies["rcpt"][0].code, replies["rcpt"][0].xcode) == expected
    # each failure is logged once, with its traceback
    logs = milter.logs()
    assert logs.count("Traceback") == 2
    assert logs.count("internal error in mail callback") == 1 and logs.count("internal error in rcpt callback") == 1
    assert "RuntimeError: injected failure in verification" in logs
    # and the next sessions are served normally
    replies, _, _ = run(milter, sender="<a@fail.example>")
    assert (replies["rcpt"][0].code, replies["rcpt"][0].xcode) == (550, "5.7.23")
    _, mods, _ = run(milter, sender="<a@pass.example>")
    assert ar_results(mods)["mailfrom"][0] == "pass"
    assert milter.proc.poll() is None


@pytest.mark.parametrize("on_error,expected", [("tempfail", ("replycode", 451, "4.3.0")), ("accept", ("accept", None, None))])
def test_internal_error_in_header_only_mode_is_answered_at_end_of_message(start_milter, world, on_error, expected):
    # header-only mode asks the MTA not to wait for a reply to RCPT, so the next stage that answers is end of message
    milter = start_milter(f"on_error = {on_error}", module="tests.support.faulty_milter")
    replies, mods, _ = run(milter, sender="<crash-verify@pass.example>")
    assert replies["rcpt"][0].action == "noreply"
    assert (replies["eom"].action, replies["eom"].code, replies["eom"].xcode) == expected
    assert mods == []
    assert milter.logs().count("Traceback") == 1
    _, mods, _ = run(milter, sender="<a@fail.example>")
    assert ar_results(mods)["mailfrom"][0] == "fail"


def test_unix_socket_client_is_local_and_unknown_family_is_checked(milter):
    client = milter.client()
    client.connect("localhost", "/var/run/smtp.sock", family="L")
    client.helo("helo.example")
    replies, mods, _ = run(milter, sender="<x@fail.example>", client=client)
    client.quit()
    assert mods == [] and 'skipped="local client"' in milter.logs()
    client = milter.client()
    client.connect("unknown", family="U")
    client.helo("helo.example")
    _, mods, _ = run(milter, sender="<x@fail.example>", client=client)
    client.quit()
    results = ar_results(mods)
    assert results["mailfrom"] == ("none", "x@fail.example") and results["helo"][0] == "none"
    assert "problem=\"client IP address unknown\"" in milter.log_lines("identity=mailfrom")[-1]


def test_worker_processes_share_the_socket_and_a_dead_worker_is_replaced(start_milter, world):
    milter = start_milter("workers = 2", fresh=True)
    workers = children(milter.proc.pid)
    assert len(workers) == 2
    for _ in range(6):  # sessions are served whichever worker accepts them
        _, mods, _ = run(milter, sender="<a@fail.example>")
        assert ar_results(mods)["mailfrom"][0] == "fail"
    os.kill(workers[0], signal.SIGKILL)
    # the supervisor notices and starts a replacement (bounded wait, no fixed sleep)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = children(milter.proc.pid)
        if len(now) == 2 and workers[0] not in now:
            break
        time.sleep(0.05)
    assert len(children(milter.proc.pid)) == 2 and workers[0] not in children(milter.proc.pid)
    assert "exited unexpectedly" in milter.logs() and "restarting worker 0" in milter.logs()
    for _ in range(4):
        _, mods, _ = run(milter, sender="<a@pass.example>")
        assert ar_results(mods)["mailfrom"][0] == "pass"
    assert milter.stop() == 0
    assert "all workers stopped" in milter.logs()
