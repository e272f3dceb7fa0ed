"""Protocol abuse through the real milter process and socket.

An MTA (or something pretending to be one) that hangs up at every stage, in the
middle of a packet, aborts transactions, sends garbage or missing macros, and
hostile HELO names / addresses.  After each case the milter must still be alive,
log no traceback, and serve a normal session with the right SPF result; every
header we add must parse (authres) and carry no control character from the input.

Two milters: the default header-only one on a unix socket (no-reply stages, RCPT,
DATA and end-of-headers skipped) and one on 127.0.0.1 (every stage sent and
answered).  Figures: ``record("protocol_abuse", **{case_id: passed})``.
"""
from __future__ import annotations

import re
import signal
import socket
import struct
import sys
import time

import authres
import pytest

from tests.support.sessions import CLIENT_IP, PASSED_ON, ar_results, run
from tests.reliability.figures import record
from tests.support.milterclient import (
    ALL_ACTIONS,
    ALL_PROTOCOL,
    SMFIC_ABORT,
    SMFIC_BODYEOB,
    SMFIC_CONNECT,
    SMFIC_DATA,
    SMFIC_HEADER,
    SMFIC_HELO,
    SMFIC_MACRO,
    SMFIC_MAIL,
    SMFIC_OPTNEG,
    SMFIC_RCPT,
    MilterClient,
    MilterClosed,
    MilterError,
    packet,
)

SPF_RESULTS = {"pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"}
# Anything but folding (LF + space/tab) is forbidden in a header value we add.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f\u0080-\u009f\u2028\u2029\ud800-\udfff]")

UNIX = ""  # header-only, unix socket
INET = "inet"  # header-only, 127.0.0.1: every stage is sent and answered
HEADERS_BOTH = "header_type = both"


# ---------------------------------------------------------------------------- figures


class _Outcomes:
    """Records each case's outcome (passed, or not: failed, xfailed) into the figures."""

    def pytest_runtest_logreport(self, report):
        if report.nodeid.split("::")[0].endswith("test_protocol_abuse.py") and report.when == "call":
            if report.skipped and not hasattr(report, "wasxfail"):
                return  # not a case (a TCP reset on a unix socket)
            ok = report.passed and not hasattr(report, "wasxfail")
            record("protocol_abuse", **{report.nodeid.split("::", 1)[1]: ok})


@pytest.fixture(scope="module", autouse=True)
def _figures(request):
    plugin = _Outcomes()
    request.config.pluginmanager.register(plugin, "protocol-abuse-figures")
    yield
    request.config.pluginmanager.unregister(plugin)


# ---------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _close_clients(monkeypatch):
    """Every client a test opens is closed at its end, even when it fails half-way."""
    opened_clients = []

    def tracking(original):
        def client(self, **kwargs):
            made = original(self, **kwargs)
            opened_clients.append(made)
            return made
        return client

    # pytest imports tests/conftest.py as "conftest" (tests/ is no package)
    for name in ("conftest", "tests.conftest"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "RunningMilter"):
            monkeypatch.setattr(module.RunningMilter, "client", tracking(module.RunningMilter.client))
    yield
    for made in opened_clients:
        made.close()


@pytest.fixture(params=[UNIX, INET])
def milter(request, start_milter, world):
    return start_milter(HEADERS_BOTH, inet=request.param == INET)


@pytest.fixture(params=[UNIX, INET])
def own_milter(request, start_milter, world):
    """A milter of its own for a known bug: its traceback must not fail the module's teardown."""
    milter = start_milter(HEADERS_BOTH, inet=request.param == INET, fresh=True)
    milter.allow_tracebacks = True
    return milter


def check_added(mods) -> int:
    """Every header we add is well-formed; returns how many were checked."""
    count = 0
    for mod in mods:
        if mod[0] not in ("insheader", "addheader"):
            continue
        name, value = (mod[2], mod[3]) if mod[0] == "insheader" else (mod[1], mod[2])
        assert name in ("Authentication-Results", "Received-SPF"), mod
        assert not CONTROL.search(value), value
        assert "\n" not in value.replace("\n ", "").replace("\n\t", ""), value  # folding only
        assert all(len(line.encode("utf-8", "surrogateescape")) < 998 for line in value.split("\n"))
        assert value.isascii(), value
        unfolded = value.replace("\n", "")
        if name == "Authentication-Results":
            parsed = authres.AuthenticationResultsHeader.parse(f"{name}: {unfolded}")
            assert parsed.authserv_id == "mx.test"
            assert [r.method for r in parsed.results] == ["spf", "spf"]
            assert {r.result for r in parsed.results} <= SPF_RESULTS
            assert [r.properties[0].name for r in parsed.results] == ["helo", "mailfrom"]
        else:
            assert unfolded.split(" ", 1)[0] in SPF_RESULTS, value
        count += 1
    return count


def log_has_no_trouble(milter, allowed: str = "") -> None:
    """No traceback or error in the log since the test started (lines containing ``allowed`` aside)."""
    log = milter.logs()
    assert milter.proc.poll() is None, log
    lines = [line for line in log.splitlines() if not (allowed and allowed in line)]
    for bad in ("Traceback", "untrapped exception", "Error:", "CRITICAL"):
        assert not any(bad in line for line in lines), f"{bad!r} in milter log:\n{log[-4000:]}"


def assert_serves(milter) -> None:
    """The milter is alive, clean, and a normal session gives the right results."""
    log_has_no_trouble(milter)
    for domain, expected in (("fail.example", "fail"), ("pass.example", "pass")):
        replies, mods, _ = run(milter, sender=f"<a@{domain}>")
        assert replies["eom"].action == "continue"
        check_added(mods)
        assert ar_results(mods) == {"helo": ("pass", "helo.example"), "mailfrom": (expected, f"a@{domain}")}
    log_has_no_trouble(milter)


def opened(milter, **kwargs):
    client = milter.client(**kwargs)
    client.connect(f"[{CLIENT_IP}]", CLIENT_IP, port=40000, family="4", macros={"j": "mx.test"})
    client.helo("helo.example")
    return client


def hang_up(client, how: str) -> None:
    """Close without a quit: a FIN, or a RST (SO_LINGER 0) on TCP."""
    sock = client._sock
    if how == "rst" and sock is not None and sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


# ---------------------------------------------------------------------------- disconnects

def _to_negotiate(m):
    return m.client()


def _to_connect(m):
    c = m.client()
    c.connect(f"[{CLIENT_IP}]", CLIENT_IP, port=40000, family="4", macros={"j": "mx.test"})
    return c


def _to_helo(m):
    return opened(m)


def _to_mail(m):
    c = opened(m)
    c.mail("<a@fail.example>", macros={"{mail_addr}": "a@fail.example"})
    return c


def _to_rcpt1(m):
    c = _to_mail(m)
    c.rcpt("<b@mx.test>")
    return c


def _to_rcpt2(m):
    c = _to_rcpt1(m)
    c.rcpt("<c@mx.test>")
    return c


def _to_data(m):
    c = _to_rcpt2(m)
    c.data()
    return c


def _to_header(m):
    c = _to_data(m)
    c.header("Subject", "hello")
    return c


def _to_forged_header(m):
    c = _to_data(m)
    c.header("Authentication-Results", "mx.test; spf=pass smtp.mailfrom=a@fail.example")
    return c


def _to_eoh(m):
    c = _to_header(m)
    c.eoh()
    return c


def _to_body(m):  # before end of message: the MTA sent the body (we skip it) and hangs up
    c = _to_eoh(m)
    c.body(b"text\r\n")
    return c


def _after_abort(m):
    c = _to_rcpt1(m)
    c.abort()
    return c


def _half(first: bytes, cut: int):
    def stage(m):
        c = opened(m) if first[4:5] != SMFIC_OPTNEG else _raw(m)
        c.raw_write(first[:cut])
        return c
    return stage


def _raw(m):
    """A client whose socket is connected but has not negotiated."""
    c = MilterClient(m.addr, timeout=10)
    fam = socket.AF_UNIX if isinstance(m.addr, str) else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(m.addr)
    except OSError:
        sock.close()
        raise
    c._sock = sock
    return c


_MAIL = packet(SMFIC_MAIL, b"<a@fail.example>\0SIZE=100\0")
_HEADER = packet(SMFIC_HEADER, b"Subject\0hello there\0")
_OPTNEG = packet(SMFIC_OPTNEG, struct.pack(">III", 6, ALL_ACTIONS, ALL_PROTOCOL))
_MACRO = packet(SMFIC_MACRO, SMFIC_MAIL + b"{auth_authen}\0alice\0i\0Q1\0")


def _mid_header(m):
    c = _to_data(m)
    c.raw_write(_HEADER[: len(_HEADER) // 2])
    return c


def _mid_eom_macros(m):
    c = _to_eoh(m)
    eom_macros = packet(SMFIC_MACRO, SMFIC_BODYEOB + b"i\0QID\0")
    c.raw_write(eom_macros + packet(SMFIC_BODYEOB)[:3])
    return c


DISCONNECTS = {
    "after-negotiate": _to_negotiate,
    "after-connect": _to_connect,
    "after-helo": _to_helo,
    "after-mail": _to_mail,
    "after-rcpt-1": _to_rcpt1,
    "after-rcpt-2": _to_rcpt2,
    "after-data": _to_data,
    "after-header": _to_header,
    "after-forged-header": _to_forged_header,
    "after-eoh": _to_eoh,
    "after-body-before-eom": _to_body,
    "after-abort": _after_abort,
    "mid-negotiate-length": _half(_OPTNEG, 2),
    "mid-negotiate-body": _half(_OPTNEG, 9),
    "mid-mail-length": _half(_MAIL, 3),
    "mid-mail-body": _half(_MAIL, len(_MAIL) // 2),
    "mid-macro-packet": _half(_MACRO, len(_MACRO) - 4),
    "macro-without-its-command": _half(_MACRO, len(_MACRO)),
    "mid-header": _mid_header,
    "mid-eom-after-its-macros": _mid_eom_macros,
}


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("stage", list(DISCONNECTS))
def test_hang_up_at_every_stage_then_serve_normally(milter, stage, how):
    if how == "rst" and isinstance(milter.addr, str):
        pytest.skip("a unix socket has no reset")
    client = DISCONNECTS[stage](milter)
    hang_up(client, how)
    assert_serves(milter)


def test_after_every_hang_up_the_stop_is_quick_and_clean(start_milter, world):
    """No session stays counted: a leaked one would hold SIGTERM's drain for 60 s."""
    for inet in (False, True):
        milter = start_milter(HEADERS_BOTH, inet=inet, fresh=True)
        for make in DISCONNECTS.values():
            for how in ("fin", "rst"):
                hang_up(make(milter), how)
        assert_serves(milter)
        started = time.monotonic()
        milter.proc.send_signal(signal.SIGTERM)
        assert milter.proc.wait(10) == 0, milter.full_log()
        elapsed = time.monotonic() - started
        assert elapsed < 5.0, f"stop took {elapsed:.1f}s\n{milter.logs()}"
        logs = milter.logs()
        assert "still open" not in logs and "all workers stopped" in logs
        assert "Traceback" not in milter.full_log()


@pytest.mark.parametrize("garbage", [
    packet(b"Z", b"what is this\0"),  # unknown command
    struct.pack(">I", 0),  # zero length
    struct.pack(">I", 0x7FFFFFF0) + b"C",  # absurd length
    packet(SMFIC_CONNECT, b"no-family-no-nul"),  # truncated connect
    packet(SMFIC_CONNECT, b"host\0" + b"4" + b"\x00"),  # port cut short
    packet(SMFIC_CONNECT, b"host\0" + b"9" + struct.pack(">H", 25) + b"1.2.3.4\0"),  # unknown family
    packet(SMFIC_MACRO, b""),  # macro packet without a command
    packet(SMFIC_MACRO, b"M" + b"odd\0"),  # name without value
    packet(SMFIC_HELO, b""),  # no NUL at all
    packet(SMFIC_RCPT, b"<b@mx.test>\0") + packet(SMFIC_HEADER, b"only-a-name\0"),
    packet(SMFIC_HEADER, b"Authentication-Results\0mx.test; spf=pass\0junk\0"),
], ids=["unknown-command", "zero-length", "absurd-length", "truncated-connect", "short-port",
        "unknown-family", "empty-macro", "macro-name-without-value", "helo-without-nul",
        "header-without-value", "header-three-strings"])
def test_malformed_packets_never_break_the_milter(milter, garbage):
    client = opened(milter, timeout=5)
    try:
        client.raw_write(garbage)
        client.raw_write(packet(SMFIC_ABORT))
        client.quit()
    except MilterError:
        pass
    finally:
        client.close()
    assert_serves(milter)


# ---------------------------------------------------------------------------- transactions


def test_abort_at_every_stage_then_a_new_transaction_on_the_same_connection(milter):
    client = opened(milter)
    unix = isinstance(milter.addr, str)
    got = []
    for stop_after in ("mail", "rcpt", "data", "header", "eoh"):
        client.mail("<a@fail.example>")
        if stop_after != "mail":
            client.rcpt("<b@mx.test>")
        if stop_after in ("data", "header", "eoh"):
            client.data()
        if stop_after in ("header", "eoh"):
            client.header("Authentication-Results", "mx.test; spf=pass smtp.mailfrom=a@fail.example")
        if stop_after == "eoh":
            client.eoh()
        client.abort()
        replies, mods, _ = run(milter, sender="<x@softfail.example>", client=client)
        assert replies["eom"].action == "continue"
        check_added(mods)
        got.append(ar_results(mods)["mailfrom"])
        # the aborted transaction's forged header must not be deleted in the next message
        assert [m for m in mods if m[0] == "chgheader"] == []
    client.quit()
    assert got == [("softfail", "x@softfail.example")] * 5
    actions = [re.search(r"action=([a-z-]+)", line).group(1) for line in milter.log_lines("identity=mailfrom")]
    assert actions == ["aborted", "accept"] * 5, (unix, actions)
    assert_serves(milter)


def test_rset_after_recipients_and_a_new_mail_without_abort(milter):
    client = opened(milter)
    client.mail("<a@fail.example>")
    client.rcpt("<b@mx.test>")
    client.rcpt("<c@mx.test>")
    client.abort()  # RSET
    client.abort()  # a second one is harmless
    client.mail("<a@neutral.example>")
    client.rcpt("<b@mx.test>")
    # a new MAIL without an abort in between implicitly ends the last transaction
    _replies, mods, _ = run(milter, sender="<a@pass.example>", client=client)
    client.quit()
    assert ar_results(mods)["mailfrom"] == ("pass", "a@pass.example")
    senders = [re.search(r"envelope-from=(\S+);", line).group(1) for line in milter.log_lines("identity=mailfrom")]
    assert senders == ["a@fail.example", "a@neutral.example", "a@pass.example"]
    assert_serves(milter)


EXPECTED = [("fail.example", "fail"), ("pass.example", "pass"), ("softfail.example", "softfail"),
            ("neutral.example", "neutral"), ("none.example", "none"), ("permerror.example", "permerror"),
            ("temperror.example", "temperror"), ("nxdomain.example", "none")]


def test_200_transactions_on_one_connection_each_get_their_result(milter):
    client = opened(milter)
    wrong = []
    for n in range(200):
        domain, expected = EXPECTED[n % len(EXPECTED)]
        if n % 7 == 3:  # now and then an aborted one in between
            client.mail(f"<z{n}@fail.example>")
            client.rcpt("<b@mx.test>")
            client.abort()
        _replies, mods, _ = run(milter, sender=f"<u{n}@{domain}>", client=client,
                               eom_macros={"i": f"Q{n:04d}"})
        check_added(mods)
        got = ar_results(mods)["mailfrom"]
        if got != (expected, f"u{n}@{domain}"):
            wrong.append((n, domain, got))
    client.quit()
    assert wrong == []
    lines = milter.log_lines("identity=mailfrom")
    assert len(lines) == 200 + len([n for n in range(200) if n % 7 == 3])
    assert_serves(milter)


def test_enforce_many_transactions_and_mta_rejected_recipients(start_milter, world):
    milter = start_milter("mode = enforce\n" + HEADERS_BOTH, inet=True)
    client = opened(milter)
    for n in range(50):
        # we refuse: the MTA then aborts the transaction
        reply = client.rcpt("<b@mx.test>") if client.mail(f"<a{n}@fail.example>").is_continue else None
        assert (reply.code, reply.xcode) == (550, "5.7.23")
        client.abort()
        # we accept the recipients, the MTA rejects them itself (unknown user) and aborts before DATA
        client.mail(f"<p{n}@pass.example>")
        assert client.rcpt("<nosuchuser@mx.test>").action == "continue"
        assert client.rcpt("<other@mx.test>").action == "continue"
        client.abort()
        # the postmaster exemption still gets headers
        replies, mods, _ = run(milter, sender=f"<f{n}@fail.example>", rcpts=("<postmaster@mx.test>",),
                               client=client)
        assert replies["eom"].action == "continue"
        check_added(mods)
        assert ar_results(mods)["mailfrom"][0] == "fail"
    client.quit()
    actions = [re.search(r"action=([a-z-]+)", line).group(1) for line in milter.log_lines("identity=mailfrom")]
    assert actions == ["reject", "aborted", "accept-exempt"] * 50
    log_has_no_trouble(milter)
    replies, _, _ = run(milter, sender="<a@pass.example>")
    assert replies["eom"].action == "continue"


def test_recipients_seen_then_transaction_aborted_before_data_in_header_only_mode(milter):
    client = opened(milter)
    for n in range(20):
        client.mail(f"<a{n}@fail.example>")
        for r in range(5):
            assert client.rcpt(f"<r{r}@mx.test>").action in PASSED_ON
        client.abort()
    # a complete transaction after them: its answer means every abort before it was handled
    _, mods, _ = run(milter, sender="<a@pass.example>", client=client)
    client.quit()
    assert ar_results(mods)["mailfrom"] == ("pass", "a@pass.example")
    actions = [re.search(r"action=([a-z-]+)", line).group(1) for line in milter.log_lines("identity=mailfrom")]
    assert actions == ["aborted"] * 20 + ["accept"]
    assert_serves(milter)


# ---------------------------------------------------------------------------- macros


MACRO_CASES = {
    "none-at-all": {},
    "empty-values": {"mail": {"{auth_authen}": "", "i": "", "j": ""}, "eom": {"i": ""}},
    "long-values": {"mail": {"{auth_type}": "x" * 10000, "i": "Q" * 10000, "j": "j" * 10000},
                    "eom": {"i": "q" * 10000}},
    "binary-queue-id": {"eom": {"i": b"\xff\xfe\x01\x1b[31mQ\r\nX-Injected: 1"}},
    "control-chars": {"mail": {"i": "A\r\nB\x00".replace("\x00", "")}, "eom": {"i": "\x1b[2J\x7f"}},
    "unknown-names": {"mail": {"{no_such_macro}": "v", "???": "??", "{": "}", "": ""},
                      "eom": {"{\xff}": "\xff"}},
    "utf8-values": {"mail": {"i": "Q\u00e9\u4e2d", "{auth_type}": "\u2028"}, "eom": {"i": "\u00e9"}},
}


@pytest.mark.parametrize("case", list(MACRO_CASES))
def test_missing_and_garbage_macros(milter, case):
    macros = MACRO_CASES[case]
    replies, mods, _ = run(milter, sender="<a@fail.example>", mail_macros=macros.get("mail", {}),
                           eom_macros=macros.get("eom", {}))
    assert replies["eom"].action == "continue"
    check_added(mods)
    assert ar_results(mods)["mailfrom"] == ("fail", "a@fail.example")
    lines = milter.log_lines("identity=mailfrom")
    assert len(lines) == 1 and "\x1b" not in lines[0] and "\r" not in lines[0]
    assert_serves(milter)


def test_macros_for_every_command_letter_and_for_no_command(milter):
    client = opened(milter)
    for letter in b"ABCDEHKLMNOQRTU" + b"\x00\xff":
        client.send_macros(bytes([letter]), {"i": "X", "{x}": "y" * 100})
    _replies, mods, _ = run(milter, sender="<a@pass.example>", client=client)
    client.quit()
    assert ar_results(mods)["mailfrom"] == ("pass", "a@pass.example")
    assert_serves(milter)


def test_binary_auth_authen_macro(own_milter):
    milter = own_milter
    replies, mods, _ = run(milter, sender="<a@fail.example>", mail_macros={"{auth_authen}": b"\xff\xfe"})
    assert replies["eom"].action == "continue"
    assert mods == [] or ar_results(mods)["mailfrom"][0] == "fail"
    log_has_no_trouble(milter)


# ---------------------------------------------------------------------------- hostile inputs


LONG = "x" * 10000
HOSTILE = [
    # id, helo, sender, rcpt, ip, family, expected (helo, mailfrom) results or None for "any valid"
    ("long-helo", "h" * 10000 + ".example", "<a@pass.example>", "<b@mx.test>", CLIENT_IP, "4", ("none", "pass")),
    ("long-helo-labels", ".".join(["a" * 63] * 160), "<a@pass.example>", "<b@mx.test>", CLIENT_IP, "4",
     ("none", "pass")),
    ("helo-controls", "evil\r\nX-Injected: yes\x01\x1b\x7f", "<a@fail.example>", "<b@mx.test>", CLIENT_IP, "4",
     ("none", "fail")),
    ("helo-utf8", "m\u00fcller.\u4f8b\u3048.example", "<a@pass.example>", "<b@mx.test>", CLIENT_IP, "4",
     ("none", "pass")),
    ("helo-empty", "", "<a@pass.example>", "<b@mx.test>", CLIENT_IP, "4", ("none", "pass")),
    ("helo-spaces", "   ", "<a@fail.example>", "<b@mx.test>", CLIENT_IP, "4", ("none", "fail")),
    ("helo-ip4-literal", "[192.0.2.1]", "<a@pass.example>", "<b@mx.test>", CLIENT_IP, "4", ("none", "pass")),
    ("helo-ip6-literal", "[IPv6:2001:db8::1]", "<a@pass.example>", "<b@mx.test>", CLIENT_IP, "4",
     ("none", "pass")),
    ("helo-bare-ip", "192.0.2.7", "<a@pass.example>", "<b@mx.test>", CLIENT_IP, "4", ("none", "pass")),
    ("helo-dots", "..", "<>", "<b@mx.test>", CLIENT_IP, "4", ("none", "none")),
    ("sender-ip4-literal", "helo.example", "<a@[192.0.2.1]>", "<b@mx.test>", CLIENT_IP, "4", ("pass", "none")),
    ("sender-ip6-literal", "helo.example", "<a@[IPv6:2001:db8::1]>", "<b@mx.test>", CLIENT_IP, "4",
     ("pass", "none")),
    ("sender-long-local", "helo.example", f"<{LONG}@pass.example>", "<b@mx.test>", CLIENT_IP, "4",
     ("pass", "pass")),
    ("sender-long-domain", "helo.example", f"<a@{LONG}.example>", "<b@mx.test>", CLIENT_IP, "4", ("pass", "none")),
    ("rcpt-long", "helo.example", "<a@fail.example>", f"<{LONG}@mx.test>", CLIENT_IP, "4", ("pass", "fail")),
    ("sender-utf8-local", "helo.example", "<j\u00f6rg.\u4e2d\u6587@pass.example>", "<b@mx.test>", CLIENT_IP, "4",
     ("pass", "pass")),
    ("sender-8bit-local", "helo.example", b"<j\xf6rg@fail.example>", "<b@mx.test>", CLIENT_IP, "4",
     ("pass", "fail")),
    ("sender-8bit-domain", "helo.example", b"<a@f\xe4il.example>", "<b@mx.test>", CLIENT_IP, "4", ("pass", "none")),
    ("sender-quoted-space", "helo.example", '<"a b"@pass.example>', "<b@mx.test>", CLIENT_IP, "4", ("pass", "pass")),
    ("sender-quoted-at", "helo.example", '<"a@b"@fail.example>', "<b@mx.test>", CLIENT_IP, "4", ("pass", "fail")),
    ("sender-quoted-hostile", "helo.example", '<"a\\"; spf=pass \\\\ (x"@fail.example>', "<b@mx.test>",
     CLIENT_IP, "4", ("pass", "fail")),
    ("sender-source-route", "helo.example", "<@relay1,@relay2:user@pass.example>", "<b@mx.test>", CLIENT_IP, "4",
     ("pass", "pass")),
    ("sender-crlf", "helo.example", "<a\r\nX-Injected: 1@fail.example>", "<b@mx.test>", CLIENT_IP, "4",
     ("pass", "fail")),
    ("sender-empty-string", "helo.example", "", "<b@mx.test>", CLIENT_IP, "4", ("pass", "pass")),
    ("sender-null", "badhelo.example", "<>", "<b@mx.test>", CLIENT_IP, "4", ("fail", "fail")),
    ("sender-no-brackets", "helo.example", "a@fail.example", "<b@mx.test>", CLIENT_IP, "4", ("pass", "fail")),
    ("sender-only-at", "helo.example", "<@>", "<b@mx.test>", CLIENT_IP, "4", ("pass", "pass")),  # as <>
    ("sender-unbalanced", "helo.example", "<<<a@fail.example", "<b@mx.test>", CLIENT_IP, "4", None),
    ("rcpt-empty", "helo.example", "<a@fail.example>", "", CLIENT_IP, "4", ("pass", "fail")),
    ("rcpt-binary", "helo.example", "<a@fail.example>", b"<\xff\xfe\x01@mx.test>", CLIENT_IP, "4",
     ("pass", "fail")),
    ("client-ipv6-doc", "helo.example", "<a@pass.example>", "<b@mx.test>", "2001:db8:7::25", "6",
     ("fail", "pass")),
    ("client-ipv4-mapped", "helo.example", "<a@fail.example>", "<b@mx.test>", "::ffff:192.0.2.7", "6",
     ("pass", "fail")),
    ("client-unknown-family", "helo.example", "<a@fail.example>", "<b@mx.test>", None, "U", ("none", "none")),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_inputs(milter, case):
    _, helo, sender, rcpt, ip, family, expected = case
    client = milter.client()
    if family == "U":
        client.connect("unknown", family="U", macros={"j": "mx.test"})
    else:
        client.connect("\x01host\r\nX-Injected: 1", ip, port=40000, family=family, macros={"j": "mx.test"})
    assert client.helo(helo).action in PASSED_ON
    replies, mods, _ = run(milter, sender=sender, rcpts=(rcpt, "<b@mx.test>"), client=client,
                           headers=[("Subject", "x" * 5000), ("X-Empty", ""), ("X-Bin", b"\xff\x01\x1b")])
    client.quit()
    assert replies["mail"].action in PASSED_ON
    assert all(r.action in PASSED_ON for r in replies["rcpt"])  # header-only mode never refuses
    assert replies["eom"].action == "continue"
    assert check_added(mods) == 3
    got = ar_results(mods)
    if expected is not None:
        assert (got["helo"][0], got["mailfrom"][0]) == expected, got
    lines = milter.log_lines("identity=")
    assert len(lines) == 2 and not any(c in "".join(lines) for c in "\r\x1b\x01")
    assert_serves(milter)


NUL_CASES = {
    # NUL terminates a string in the protocol: what follows is a separate string or garbage
    "mail-extra-nuls": [packet(SMFIC_MAIL, b"<a@fail.example>\0\0\0\0")],
    "mail-nul-inside-sender": [packet(SMFIC_MAIL, b"<a@fail.example>\0X-Injected@evil\0")],
    "mail-empty-sender-string": [packet(SMFIC_MAIL, b"\0")],
    "helo-nul-inside": [packet(SMFIC_HELO, b"helo.example\0badhelo.example\0"),
                        packet(SMFIC_MAIL, b"<a@fail.example>\0")],
    "rcpt-nul-inside": [packet(SMFIC_MAIL, b"<a@fail.example>\0"), packet(SMFIC_RCPT, b"<b@mx.test>\0\0evil\0")],
    "header-forged-after-nul-args": [packet(SMFIC_MAIL, b"<a@fail.example>\0\0"),
                                     packet(SMFIC_RCPT, b"<b@mx.test>\0\0"), packet(SMFIC_DATA),
                                     packet(SMFIC_HEADER, b"Authentication-Results\0mx.test; spf=pass\0")],
    "macro-nul-runs": [packet(SMFIC_MACRO, b"M\0\0\0\0i\0\0"), packet(SMFIC_MAIL, b"<a@fail.example>\0")],
}


@pytest.mark.parametrize("case", list(NUL_CASES))
def test_nul_bytes_where_the_protocol_allows(milter, case):
    from tests.support.milterclient import STAGES  # which stages the milter answers
    client = opened(milter)
    answers = []
    for raw in NUL_CASES[case]:
        cmd = raw[4:5]
        stage = next((name for name, st in STAGES.items() if st.cmd == cmd), None)
        if stage and client.negotiated_protocol & STAGES[stage].no_flag:
            continue  # a stage the milter asked not to see is never sent
        client.raw_write(raw)
        if stage and not client.negotiated_protocol & STAGES[stage].nr_flag:
            answers.append(client._read_reply(stage).action)
    assert all(a in PASSED_ON for a in answers), answers
    if not case.startswith(("rcpt", "header")):
        assert client.rcpt("<b@mx.test>").action in PASSED_ON
    if not case.startswith("header"):
        client.data()
    client.eoh()
    reply, mods = client.eom()
    client.quit()
    assert reply.action == "continue"
    if case == "mail-empty-sender-string":
        expected = ("pass", "pass")  # the null sender checked as postmaster@helo.example
    elif case == "helo-nul-inside":
        expected = ("pass", "fail")  # the first string is the HELO name
    else:
        expected = ("pass", "fail")
    assert check_added(mods) == 3
    got = ar_results(mods)
    assert (got["helo"][0], got["mailfrom"][0]) == expected, got
    if case.startswith("header"):  # a forged header is still removed
        assert ("chgheader", 1, "Authentication-Results", "") in mods
    assert_serves(milter)


# ---------------------------------------------------------------------------- undecodable text


def test_non_utf8_helo_is_checked_not_tempfailed(own_milter):
    milter = own_milter
    client = milter.client()
    client.connect(f"[{CLIENT_IP}]", CLIENT_IP, port=40000, family="4")
    reply = client.helo(b"h\xe9lo.\xff.example")
    assert reply.action in PASSED_ON, reply
    _replies, mods, _ = run(milter, sender="<a@fail.example>", client=client)
    client.quit()
    assert check_added(mods) == 3
    assert ar_results(mods)["mailfrom"] == ("fail", "a@fail.example")
    log_has_no_trouble(milter, allowed="pymilter: UnicodeDecodeError")


def test_non_utf8_client_hostname_with_client_addr_macro_keeps_the_client_ip(own_milter):
    """pymilter cannot hand over a connect whose host name is not UTF-8; the address then
    comes from the {client_addr} macro (Postfix: milter_connect_macros = ... {client_addr})."""
    milter = own_milter
    client = milter.client()
    reply = client.connect(b"h\xe9st.example", CLIENT_IP, port=40000, family="4",
                           macros={"{client_addr}": CLIENT_IP})
    assert reply.action in PASSED_ON
    client.helo("helo.example")
    _replies, mods, _ = run(milter, sender="<a@fail.example>", client=client)
    client.quit()
    assert ar_results(mods)["mailfrom"] == ("fail", "a@fail.example")
    log_has_no_trouble(milter, allowed="pymilter: UnicodeDecodeError")


def test_non_utf8_client_hostname_without_the_address_is_answered_per_on_error(own_milter):
    """No way to know the client: never pass it unchecked, answer per on_error (tempfail)."""
    milter = own_milter
    client = milter.client()
    assert client.connect(b"h\xe9st.example", CLIENT_IP, port=40000, family="4").action in PASSED_ON
    client.helo("helo.example")
    replies, mods, _ = run(milter, sender="<a@pass.example>", client=client)
    client.quit()
    answers = [(r.action, r.code, r.xcode) for r in replies["rcpt"]] + [
        (replies["eom"].action, replies["eom"].code, replies["eom"].xcode)] if "eom" in replies else \
        [(r.action, r.code, r.xcode) for r in replies["rcpt"]]
    assert ("replycode", 451, "4.3.0") in answers, answers
    assert not mods
    assert "connect information could not be read" in milter.logs()
    log_has_no_trouble(milter, allowed="pymilter: UnicodeDecodeError")


# On a unix socket libmilter sees the hang-up (POLLHUP) before it reads the end of message, so
# no change is attempted; on TCP it reads it, and the first change sent to the closed peer fails.
@pytest.mark.parametrize("own_milter", [UNIX, INET], indirect=True)
def test_mta_hanging_up_during_end_of_message_is_not_an_internal_error(own_milter):
    milter = own_milter
    client = _to_data(milter)
    for n in range(100):  # many forged headers: end of message writes many changes
        client.header("Authentication-Results", f"mx.test; spf=pass smtp.mailfrom=a{n}@fail.example")
    client.eoh()
    client.raw_send(SMFIC_BODYEOB, b"")
    client.close()
    # the session ends (close callback) and the milter keeps serving
    deadline = time.monotonic() + 10
    while "action=aborted" not in milter.logs() and "action=would-reject" not in milter.logs():
        assert time.monotonic() < deadline, milter.logs()
        time.sleep(0.02)
    assert_serves(milter)


@pytest.mark.parametrize("address,family", [
    ("fe80::1%eth0", "6"),  # a link-local client with its zone
    ("[IPv6:2001:db8:7::25]", "6"),
    ("not-an-ip", "4"),
    ("", "4"),
    ("192.0.2.7", "6"),
    ("2001:db8::1", "4"),
], ids=["ipv6-zone", "ipv6-bracketed", "garbage", "empty", "v4-as-v6", "v6-as-v4"])
def test_client_address_libmilter_cannot_parse(milter, address, family):
    """libmilter (inet_pton) drops the connection itself, before spfmilter sees it: the MTA then
    applies its default action (Postfix: milter_default_action).  The milter must survive it."""
    client = milter.client(timeout=5)
    try:
        client.connect(f"[{address}]", address, port=40000, family=family, macros={"j": "mx.test"})
        client.helo("helo.example")
        _replies, mods, _ = run(milter, sender="<a@fail.example>", client=client)
    except MilterClosed:
        outcome = "closed"
    else:
        outcome = ar_results(mods)
    client.close()
    assert outcome == "closed"
    assert_serves(milter)


def test_long_quoted_sender_keeps_the_authentication_results_parseable(milter):
    local = '"' + "x y" * 81 + '"'  # 245 characters: the 256-character cut falls in the domain
    replies, mods, _ = run(milter, sender=f"<{local}@fail.example>")
    assert replies["eom"].action == "continue"
    assert check_added(mods) == 3
    assert ar_results(mods)["mailfrom"][0] == "fail"
