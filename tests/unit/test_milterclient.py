"""Tests for tests/support/milterclient.py against an in-test fake milter.

The fake milter is written independently of the client (plain struct/socket
code) so the client's encoding is checked against hand-written bytes.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests.support.milterclient import (
    MilterClient,
    MilterClosed,
    MilterError,
    MilterProtocolError,
    MilterTimeout,
    Reply,
    wait_ready,
)

# Constants written out here on purpose (not imported from the client).
NR_CONN, NR_HELO, NR_MAIL, NR_RCPT = 0x1000, 0x2000, 0x4000, 0x8000
NR_DATA, NR_EOH, NR_BODY, NR_HDR = 0x10000, 0x40000, 0x80000, 0x80
NOCONNECT, NOHELO, NOMAIL, NORCPT = 0x1, 0x2, 0x4, 0x8
NOBODY, NOHDRS, NOEOH, NODATA, NOUNKNOWN = 0x10, 0x20, 0x40, 0x200, 0x100

CLOSE = object()  # script item: close the connection
SILENT = object()  # script item: reply nothing


def pkt(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd + data


class FakeMilter:
    """A scripted milter: records every packet, answers per ``script``.

    ``script`` maps a command char to a list of items sent in response (or a
    callable ``(data, fake) -> list``).  An item is ``(cmd, data)``, raw
    ``bytes`` written as is, ``CLOSE`` or ``SILENT``.  Commands with no script
    entry get ``(b"c", b"")`` unless no reply is due (D/A/Q/K, NR-flagged).
    """

    NO_REPLY = {"D", "A", "Q", "K"}
    NR_BY_CMD = {"C": NR_CONN, "H": NR_HELO, "M": NR_MAIL, "R": NR_RCPT,
                 "T": NR_DATA, "N": NR_EOH, "B": NR_BODY, "L": NR_HDR}

    def __init__(self, *, unix_path=None, version=6, actions=0x1FF, protocol=0,
                 macro_lists=None, script=None, optneg_raw=None):
        self.version, self.actions, self.protocol = version, actions, protocol
        self.macro_lists = macro_lists or {}
        self.script = script or {}
        self.optneg_raw = optneg_raw
        self.received: list[tuple[str, bytes]] = []
        self.connections = 0
        self.cond = threading.Condition()
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(unix_path)
            self.addr = unix_path
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.addr = self.sock.getsockname()
        self.sock.listen(8)
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    # -- server --------------------------------------------------------------

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _recv_exact(conn, n):
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def _optneg_reply(self):
        if self.optneg_raw is not None:
            return [self.optneg_raw]
        data = struct.pack(">III", self.version, self.actions, self.protocol)
        for idx, names in self.macro_lists.items():
            data += struct.pack(">I", idx) + names.encode() + b"\0"
        return [(b"O", data)]

    def _handle(self, conn):
        try:
            self._handle_conn(conn)
        except OSError:  # client went away mid-conversation
            pass

    def _handle_conn(self, conn):
        with conn:
            while True:
                head = self._recv_exact(conn, 4)
                if head is None:
                    return
                (length,) = struct.unpack(">I", head)
                body = self._recv_exact(conn, length)
                if body is None:
                    return
                cmd, data = body[:1].decode("latin-1"), body[1:]
                with self.cond:
                    self.received.append((cmd, data))
                    self.cond.notify_all()
                if cmd == "Q":
                    return
                items = self._respond(cmd, data)
                for item in items:
                    if item is CLOSE:
                        return
                    if item is SILENT:
                        continue
                    if isinstance(item, bytes):
                        conn.sendall(item)
                    else:
                        conn.sendall(pkt(*item))

    def _respond(self, cmd, data):
        if cmd == "O":
            return self._optneg_reply()
        if cmd in self.script:
            entry = self.script[cmd]
            return entry(data, self) if callable(entry) else entry
        if cmd in self.NO_REPLY or self.protocol & self.NR_BY_CMD.get(cmd, 0):
            return []
        return [(b"c", b"")]

    # -- test helpers ----------------------------------------------------------

    def wait_for(self, pred, timeout=2.0):
        with self.cond:
            ok = self.cond.wait_for(lambda: pred(self.received), timeout)
        assert ok, f"condition not met; received={self.received!r}"

    def cmds(self):
        with self.cond:
            return [c for c, _ in self.received]

    def packets(self, cmd):
        with self.cond:
            return [d for c, d in self.received if c == cmd]

    def close(self):
        self._stop = True
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture
def make_fake():
    fakes = []

    def make(**kw):
        f = FakeMilter(**kw)
        fakes.append(f)
        return f

    yield make
    for f in fakes:
        f.close()


@pytest.fixture(autouse=True)
def _close_clients(monkeypatch):
    """Close every client a test created (warnings are errors in this suite)."""
    created = []
    orig_init = MilterClient.__init__

    def init(self, *a, **kw):
        orig_init(self, *a, **kw)
        created.append(self)

    monkeypatch.setattr(MilterClient, "__init__", init)
    yield
    for c in created:
        c.close()


@pytest.fixture
def short_tmp():
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path may be long.
    d = tempfile.mkdtemp(prefix="mc", dir="/tmp")
    yield d
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


# --------------------------------------------------------------------------
# Reply
# --------------------------------------------------------------------------


def test_reply_properties():
    r = Reply("replycode", "550 5.7.23 SPF fail: see https://x/why")
    assert (r.code, r.xcode) == (550, "5.7.23")
    assert r.message == "SPF fail: see https://x/why"
    assert r.is_rejection and r.is_permanent and not r.is_temporary
    t = Reply("replycode", "451 4.4.3 DNS timeout")
    assert (t.code, t.xcode, t.is_temporary, t.is_permanent) == (451, "4.4.3", True, False)
    plain = Reply("replycode", "550 nope")
    assert (plain.code, plain.xcode, plain.message) == (550, None, "nope")
    ml = Reply("replycode", "550-5.7.1 line one\r\n550 5.7.1 line two")
    assert (ml.code, ml.xcode) == (550, "5.7.1")
    c = Reply("continue")
    assert (c.code, c.xcode, c.text) == (None, None, None)
    assert c.is_continue and not c.is_rejection and not c.ends_transaction
    assert Reply("reject").is_permanent and Reply("reject").code is None
    assert Reply("tempfail").is_temporary
    assert Reply("noreply").is_continue and Reply("skipped").is_continue
    assert Reply("accept").ends_transaction and not Reply("accept").is_rejection
    with pytest.raises(ValueError):
        Reply("bogus")
    with pytest.raises(dataclasses_frozen_error()):
        r.action = "accept"  # type: ignore[misc]


def dataclasses_frozen_error():
    import dataclasses
    return dataclasses.FrozenInstanceError


# --------------------------------------------------------------------------
# Negotiation and encoding
# --------------------------------------------------------------------------


def test_optneg_offer_and_negotiated_values(make_fake):
    fake = make_fake(version=6, actions=0x1 | 0x10 | 0x40, protocol=NR_HDR | NOUNKNOWN,
                     macro_lists={0: "j {daemon_name} _", 2: "{mail_addr} {auth_authen}",
                                  5: "i", 3: "{rcpt_addr}"})
    c = MilterClient(fake.addr, timeout=2)
    neg = c.open()
    assert fake.received[0] == ("O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF))
    version, actions, protocol, macros = neg
    assert (version, actions, protocol) == (6, 0x51, 0x180)
    assert c.negotiated_actions == 0x51 and c.negotiated_protocol == 0x180
    assert c.requested_macros == macros == {
        "connect": ["j", "{daemon_name}", "_"],
        "mail": ["{mail_addr}", "{auth_authen}"],
        "eom": ["i"],
        "rcpt": ["{rcpt_addr}"],
    }
    c.quit()
    fake.wait_for(lambda r: r[-1][0] == "Q")
    assert not c.is_open


def test_open_custom_offer(make_fake):
    fake = make_fake(actions=0x1)
    c = MilterClient(fake.addr, timeout=2)
    c.open(actions=0x3, protocol=0x7F, version=6)
    assert fake.received[0] == ("O", b"\x00\x00\x00\x06\x00\x00\x00\x03\x00\x00\x00\x7f")
    c.close()


def test_strict_negotiation_rejects_unoffered_flags(make_fake):
    fake = make_fake(protocol=NR_CONN)
    c = MilterClient(fake.addr, timeout=2)
    with pytest.raises(MilterProtocolError, match="protocol flags 0x1000"):
        c.open(protocol=0x7F)
    assert not c.is_open
    fake2 = make_fake(version=7)
    with pytest.raises(MilterProtocolError, match="version 7"):
        MilterClient(fake2.addr, timeout=2).open()
    fake3 = make_fake(protocol=NR_CONN)
    c3 = MilterClient(fake3.addr, timeout=2, strict=False)
    assert c3.open(protocol=0x7F).protocol == NR_CONN
    c3.close()


def test_optneg_reply_garbage(make_fake):
    fake = make_fake(optneg_raw=pkt(b"O", b"\x00\x00\x00\x06"))
    with pytest.raises(MilterProtocolError, match="too short"):
        MilterClient(fake.addr, timeout=2).open()
    fake2 = make_fake(optneg_raw=pkt(b"c"))
    with pytest.raises(MilterProtocolError, match="b'c'"):
        MilterClient(fake2.addr, timeout=2).open()
    fake3 = make_fake(optneg_raw=pkt(b"O", struct.pack(">IIII", 6, 0, 0, 0) + b"j"))
    with pytest.raises(MilterProtocolError, match="not NUL-terminated"):
        MilterClient(fake3.addr, timeout=2).open()


def test_connect_encoding_families_and_macros(make_fake):
    fake = make_fake()
    c = MilterClient(fake.addr, timeout=2)
    c.open()
    r = c.connect("mx.example.net", "192.0.2.7", port=12345, family="4",
                  macros={"j": "mx.test", "{daemon_name}": "smtpd"})
    assert r == Reply("continue")
    assert fake.received[1:3] == [
        ("D", b"Cj\0mx.test\0{daemon_name}\0smtpd\0"),
        ("C", b"mx.example.net\0" b"4" b"\x30\x39" b"192.0.2.7\0"),
    ]
    c.connect("v6.example.net", "2001:db8::1", port=25, family="6")
    assert fake.received[3] == ("C", b"v6.example.net\x006\x00\x192001:db8::1\0")
    c.connect("localhost", "/var/run/x.sock", family="L")
    assert fake.received[4] == ("C", b"localhost\0L\0\0/var/run/x.sock\0")
    c.connect("[unknown]", None, family="unknown")
    assert fake.received[5] == ("C", b"[unknown]\0U")
    # inferred family, and empty macros -> no 'D' packet
    c.connect("h", "198.51.100.1", port=1, macros={})
    assert fake.received[6] == ("C", b"h\x004\x00\x01198.51.100.1\0")
    assert fake.cmds() == ["O", "D", "C", "C", "C", "C", "C"]
    with pytest.raises(ValueError, match="'L'"):
        c.connect("h", "/path", family="U")
    c.close()


def test_stage_encodings(make_fake):
    fake = make_fake()
    c = MilterClient(fake.addr, timeout=2)
    c.open()
    assert c.helo("mx.example.net").action == "continue"
    c.mail("<a@example.org>", "SIZE=100", "BODY=8BITMIME",
           macros={"{mail_addr}": "a@example.org"})
    c.rcpt("<b@example.com>", macros={"{rcpt_addr}": "b@example.com"})
    c.data(macros={"i": "4XyZ"})
    c.header("Subject", "hi there")
    c.header("X-Utf8", "grüße")
    c.eoh()
    c.body(b"text\r\n")
    reply, mods = c.eom(macros={"i": "4XyZ"})
    assert (reply, mods) == (Reply("continue"), [])
    c.unknown("XFOO bar")
    c.abort()
    c.quit()
    fake.wait_for(lambda r: r[-1][0] == "Q")
    assert fake.received[1:] == [
        ("H", b"mx.example.net\0"),
        ("D", b"M{mail_addr}\0a@example.org\0"),
        ("M", b"<a@example.org>\0SIZE=100\0BODY=8BITMIME\0"),
        ("D", b"R{rcpt_addr}\0b@example.com\0"),
        ("R", b"<b@example.com>\0"),
        ("D", b"Ti\x004XyZ\0"),
        ("T", b""),
        ("L", b"Subject\0hi there\0"),
        ("L", "X-Utf8\0grüße\0".encode()),
        ("N", b""),
        ("B", b"text\r\n"),
        ("D", b"Ei\x004XyZ\0"),
        ("E", b""),
        ("U", b"XFOO bar\0"),
        ("A", b""),
        ("Q", b""),
    ]


def test_body_is_chunked_at_65535(make_fake):
    fake = make_fake()
    c = MilterClient(fake.addr, timeout=2)
    c.open()
    body = bytes(range(256)) * 300  # 76800 bytes
    assert c.body(body).action == "continue"
    chunks = fake.packets("B")
    assert [len(x) for x in chunks] == [65535, 76800 - 65535]
    assert b"".join(chunks) == body
    c.close()


def test_body_skip_stops_sending(make_fake):
    fake = make_fake(protocol=0x400, script={"B": [(b"s", b"")]})  # SMFIP_SKIP
    c = MilterClient(fake.addr, timeout=2)
    c.open()
    assert c.body(b"x" * 70000).action == "skip"
    assert c.body(b"more").action == "skipped"
    c.eom()
    assert [len(x) for x in fake.packets("B")] == [65535]
    c.close()


def test_macros_with_nul_rejected_locally(make_fake):
    fake = make_fake()
    c = MilterClient(fake.addr, timeout=2)
    c.open()
    with pytest.raises(ValueError):
        c.helo("a\0b")
    c.close()


def test_only_requested_macros(make_fake):
    fake = make_fake(macro_lists={2: "{mail_addr} i"})
    c = MilterClient(fake.addr, timeout=2, only_requested_macros=True)
    c.open()
    c.mail("<a@x>", macros={"{mail_addr}": "a@x", "{auth_type}": "PLAIN", "i": "Q1"})
    c.helo("h", macros={"j": "mx"})  # no list for helo -> everything
    assert fake.packets("D") == [b"M{mail_addr}\0a@x\0i\0Q1\0", b"Hj\0mx\0"]
    c.close()


# --------------------------------------------------------------------------
# Reply decoding
# --------------------------------------------------------------------------


@pytest.mark.parametrize("cmd,action", [
    (b"c", "continue"), (b"a", "accept"), (b"r", "reject"), (b"t", "tempfail"),
    (b"d", "discard"), (b"s", "skip"),
])
def test_simple_replies(make_fake, cmd, action):
    fake = make_fake(script={"M": [(cmd, b"")]})
    c = MilterClient(fake.addr, timeout=2)
    c.open()
    assert c.mail("<a@x>") == Reply(action)
    c.close()


def test_replycode_at_rcpt_and_progress_skipped(make_fake):
    text = b"550 5.7.23 SPF validation failed\0"
    fake = make_fake(script={"R": [(b"p", b""), (b"y", text)]})
    c = MilterClient(fake.addr, timeout=2)
    c.open()
    r = c.rcpt("<b@example.com>")
    assert r.action == "replycode"
    assert r.text == "550 5.7.23 SPF validation failed"
    assert (r.code, r.xcode) == (550, "5.7.23")
    assert r.is_rejection
    # the stream stays in sync: next stage gets its own reply
    assert c.data() == Reply("continue")
    c.close()


def test_eom_modifications(make_fake):
    eom_script = [
        (b"p", b""),
        (b"h", b"Received-SPF\0pass (example.org: 192.0.2.7 is permitted)\0"),
        (b"i", struct.pack(">I", 0) + b"Authentication-Results\0mx.test; spf=pass\0"),
        (b"m", struct.pack(">I", 2) + b"X-Old\0\0"),
        (b"e", b"<new@example.org>\0SIZE=10\0"),
        (b"e", b"<plain@example.org>\0"),
        (b"p", b""),
        (b"+", b"<add@example.com>\0"),
        (b"2", b"<addp@example.com>\0NOTIFY=NEVER\0"),
        (b"-", b"<b@example.com>\0"),
        (b"b", b"new body\r\n"),
        (b"q", b"looks odd\0"),
        (b"a", b""),
    ]
    fake = make_fake(script={"E": eom_script})
    c = MilterClient(fake.addr, timeout=2)
    c.open()
    reply, mods = c.eom()
    assert reply == Reply("accept")
    assert mods == [
        ("addheader", "Received-SPF", "pass (example.org: 192.0.2.7 is permitted)"),
        ("insheader", 0, "Authentication-Results", "mx.test; spf=pass"),
        ("chgheader", 2, "X-Old", ""),
        ("chgfrom", "<new@example.org>", "SIZE=10"),
        ("chgfrom", "<plain@example.org>", None),
        ("addrcpt", "<add@example.com>"),
        ("addrcpt_par", "<addp@example.com>", "NOTIFY=NEVER"),
        ("delrcpt", "<b@example.com>"),
        ("replbody", b"new body\r\n"),
        ("quarantine", "looks odd"),
    ]
    c.close()


def test_eom_replycode_after_mods(make_fake):
    fake = make_fake(script={"E": [(b"h", b"X-A\0b\0"), (b"y", b"451 4.4.3 try later\0")]})
    c = MilterClient(fake.addr, timeout=2)
    c.open()
    reply, mods = c.eom()
    assert (reply.action, reply.code, reply.xcode) == ("replycode", 451, "4.4.3")
    assert reply.is_temporary
    assert mods == [("addheader", "X-A", "b")]
    c.close()


def test_modification_outside_eom_is_an_error(make_fake):
    fake = make_fake(script={"H": [(b"h", b"X\0y\0")]})
    c = MilterClient(fake.addr, timeout=2)
    c.open()
    with pytest.raises(MilterProtocolError, match="only allowed at end of message"):
        c.helo("x")
    c.close()


def test_malformed_modification(make_fake):
    fake = make_fake(script={"E": [(b"i", b"\x00\x00")]})
    c = MilterClient(fake.addr, timeout=2)
    c.open()
    with pytest.raises(MilterProtocolError, match="insheader"):
        c.eom()
    c.close()


# --------------------------------------------------------------------------
# NR / NO flags
# --------------------------------------------------------------------------


def test_noreply_flags_honoured(make_fake):
    # The fake does not answer NR stages; helo answers "reject".  If the client
    # wrongly waited for a connect/header reply it would time out or get
    # out of sync.
    fake = make_fake(protocol=NR_CONN | NR_HDR | NR_EOH,
                     script={"H": [(b"r", b"")]})
    c = MilterClient(fake.addr, timeout=0.5)
    c.open()
    assert c.connect("h", "192.0.2.1", 25) == Reply("noreply")
    assert c.helo("h") == Reply("reject")
    assert c.header("Subject", "x") == Reply("noreply")
    assert c.header("From", "y") == Reply("noreply")
    assert c.eoh() == Reply("noreply")
    assert c.body(b"b") == Reply("continue")
    assert fake.cmds() == ["O", "C", "H", "L", "L", "N", "B"]
    c.close()


def test_no_flags_skip_stages_and_their_macros(make_fake):
    fake = make_fake(protocol=NOHELO | NOBODY | NODATA | NOHDRS | NOEOH | NOUNKNOWN)
    c = MilterClient(fake.addr, timeout=0.5)
    c.open()
    assert c.helo("h", macros={"j": "x"}) == Reply("skipped")
    assert c.mail("<a@x>") == Reply("continue")
    assert c.data(macros={"i": "1"}) == Reply("skipped")
    assert c.header("A", "b") == Reply("skipped")
    assert c.eoh() == Reply("skipped")
    assert c.body(b"x") == Reply("skipped")
    assert c.unknown("FOO") == Reply("skipped")
    reply, _ = c.eom(macros={"i": "1"})
    assert reply == Reply("continue")
    c.quit()
    fake.wait_for(lambda r: r[-1][0] == "Q")
    assert fake.cmds() == ["O", "M", "D", "E", "Q"]
    assert fake.packets("D") == [b"Ei\x001\0"]


def test_no_connect_and_mail_rcpt_flags(make_fake):
    fake = make_fake(protocol=NOCONNECT | NOMAIL | NORCPT)
    c = MilterClient(fake.addr, timeout=0.5)
    c.open()
    assert c.connect("h", "192.0.2.1", macros={"j": "x"}).action == "skipped"
    assert c.mail("<a@x>").action == "skipped"
    assert c.rcpt("<b@x>").action == "skipped"
    assert c.helo("h").action == "continue"
    assert fake.cmds() == ["O", "H"]
    c.close()


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def test_garbage_reply_command(make_fake):
    fake = make_fake(script={"H": [(b"Z", b"\x01junk")]})
    c = MilterClient(fake.addr, timeout=1)
    c.open()
    with pytest.raises(MilterProtocolError) as ei:
        c.helo("x")
    assert not c.is_open  # out of sync: the client closed the socket
    msg = str(ei.value)
    assert "b'Z'" in msg and "0x5a" in msg and "junk" in msg and "helo" in msg


def test_closed_connection(make_fake):
    fake = make_fake(script={"M": [CLOSE]})
    c = MilterClient(fake.addr, timeout=1)
    c.open()
    with pytest.raises(MilterClosed, match="milter closed the connection") as ei:
        c.mail("<a@x>")
    assert isinstance(ei.value, MilterError)
    assert "mail" in str(ei.value)


def test_closed_mid_packet(make_fake):
    fake = make_fake(script={"M": [struct.pack(">I", 10) + b"y55", CLOSE]})
    c = MilterClient(fake.addr, timeout=1)
    c.open()
    with pytest.raises(MilterClosed, match="got 3 of 10"):
        c.mail("<a@x>")


def test_timeout(make_fake):
    fake = make_fake(script={"H": [SILENT]})
    c = MilterClient(fake.addr, timeout=0.3)
    c.open()
    t0 = time.monotonic()
    with pytest.raises(MilterTimeout, match=r"within 0\.3s.*helo") as ei:
        c.helo("x")
    assert 0.25 <= time.monotonic() - t0 < 2.0
    assert isinstance(ei.value, MilterError) and isinstance(ei.value, TimeoutError)
    assert c.is_open  # a timeout leaves the socket open
    c.close()


@pytest.mark.parametrize("raw,match", [
    (struct.pack(">I", 2 * 1024 * 1024) + b"c", "exceeds|limit"),
    (struct.pack(">I", 0), "zero-length"),
])
def test_bad_packet_lengths(make_fake, raw, match):
    fake = make_fake(script={"H": [raw]})
    c = MilterClient(fake.addr, timeout=1)
    c.open()
    with pytest.raises(MilterProtocolError, match=match):
        c.helo("x")
    c.close()


def test_not_open_and_connect_refused():
    c = MilterClient(("127.0.0.1", 1), timeout=0.5)
    with pytest.raises(MilterError, match="not open"):
        c.helo("x")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(MilterError, match="cannot connect"):
        MilterClient(("127.0.0.1", port), timeout=0.5).open()


# --------------------------------------------------------------------------
# Raw access, transports
# --------------------------------------------------------------------------


def test_raw_send_and_read(make_fake):
    fake = make_fake(script={"X": [(b"y", b"421 4.3.0 what?\0")]})
    c = MilterClient(fake.addr, timeout=1)
    c.open()
    c.raw_send(b"X", b"\xff\x00garbage")
    assert c.raw_read() == (b"y", b"421 4.3.0 what?\0")
    assert fake.received[-1] == ("X", b"\xff\x00garbage")
    c.raw_write(pkt(b"Y", b"1"))
    fake.wait_for(lambda r: r[-1] == ("Y", b"1"))
    assert ("send", b"X", b"\xff\x00garbage") in c.transcript
    with pytest.raises(ValueError):
        c.raw_send(b"XY", b"")
    c.close()


def test_unix_socket(make_fake, short_tmp):
    path = os.path.join(short_tmp, "m.sock")
    fake = make_fake(unix_path=path, protocol=NR_HDR, script={"R": [(b"t", b"")]})
    for addr in (path, "unix:" + path):
        c = MilterClient(addr, timeout=1)
        assert c.open().protocol == NR_HDR
        assert c.connect("h", path, family="unix") == Reply("continue")
        assert c.rcpt("<b@x>") == Reply("tempfail")
        assert c.header("A", "b") == Reply("noreply")
        c.quit()
    fake.wait_for(lambda r: r.count(("Q", b"")) == 2)
    assert fake.packets("C")[0] == b"h\0L\0\0" + path.encode() + b"\0"


def test_ipv6_transport():
    try:
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        srv.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    srv.listen(1)
    port = srv.getsockname()[1]
    got = []

    def serve():
        conn, _ = srv.accept()
        with conn:
            head = conn.recv(17)
            got.append(head)
            conn.sendall(pkt(b"O", struct.pack(">III", 6, 1, 0)))
            conn.recv(10)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    for addr in (("::1", port),):
        c = MilterClient(addr, timeout=1)
        assert c.open()[:3] == (6, 1, 0)
        c.quit()
    t.join(2)
    srv.close()
    assert got[0][:5] == b"\x00\x00\x00\x0dO"


def test_inet_spec_address(make_fake):
    fake = make_fake()
    c = MilterClient(f"inet:{fake.addr[1]}@127.0.0.1", timeout=1)
    assert c.open().version == 6
    c.close()


def test_quit_nc_keeps_socket(make_fake):
    fake = make_fake()
    c = MilterClient(fake.addr, timeout=1)
    c.open()
    c.connect("a", "192.0.2.1")
    c.quit_nc()
    assert c.connect("b", "192.0.2.2") == Reply("continue")
    assert fake.cmds() == ["O", "C", "K", "C"]
    c.close()


# --------------------------------------------------------------------------
# send_message
# --------------------------------------------------------------------------


def test_send_message_full_transaction(make_fake):
    def rcpt(data, fake):
        return [(b"y", b"550 5.1.1 no such user\0")] if data.startswith(b"<bad@") else [(b"c", b"")]

    fake = make_fake(protocol=NR_HDR, script={
        "R": rcpt,
        "E": [(b"h", b"Received-SPF\0pass\0"), (b"c", b"")],
    })
    c = MilterClient(fake.addr, timeout=1)
    c.open()
    res = c.send_message(
        "<a@example.org>", ["<bad@example.com>", ("<ok@example.com>", ["NOTIFY=NEVER"])],
        headers=[("From", "a@example.org"), ("Subject", "t")], body=b"hello\r\n",
        helo="mx.example.org", ip="192.0.2.7",
        macros_per_stage={"connect": {"j": "mx.test"},
                          "rcpt": lambda r: {"{rcpt_addr}": r.strip("<>")},
                          "eom": {"i": "ABC"}},
    )
    assert res.completed and res.stopped_at is None and not res.aborted
    assert res.connect == Reply("continue") and res.helo == Reply("continue")
    assert [r.action for _, r in res.rcpts] == ["replycode", "continue"]
    assert res.accepted_rcpts == ["<ok@example.com>"]
    assert [r.action for _, r in res.headers] == ["noreply", "noreply"]
    assert res.final == Reply("continue") and res.eom == Reply("continue")
    assert res.mods == [("addheader", "Received-SPF", "pass")]
    assert fake.cmds() == ["O", "D", "C", "H", "M", "D", "R", "D", "R",
                           "T", "L", "L", "N", "B", "D", "E"]
    assert fake.packets("C") == [b"[192.0.2.7]\x004\x00\x00192.0.2.7\0"]
    assert fake.packets("R")[1] == b"<ok@example.com>\0NOTIFY=NEVER\0"
    assert fake.packets("D")[1:3] == [b"R{rcpt_addr}\0bad@example.com\0",
                                      b"R{rcpt_addr}\0ok@example.com\0"]
    c.close()


def test_send_message_all_rcpts_rejected_aborts(make_fake):
    fake = make_fake(script={"R": [(b"r", b"")]})
    c = MilterClient(fake.addr, timeout=1)
    c.open()
    res = c.send_message("<a@x>", ["<b@x>", "<c@x>"], body=b"x")
    assert res.stopped_at == "rcpt" and res.aborted
    assert res.final == Reply("reject") and res.rejected
    assert res.accepted_rcpts == []
    fake.wait_for(lambda r: r[-1][0] == "A")
    assert fake.cmds() == ["O", "M", "R", "R", "A"]
    c.close()


def test_send_message_stops_at_mail_rejection(make_fake):
    fake = make_fake(script={"M": [(b"y", b"550 5.7.23 SPF fail\0")]})
    c = MilterClient(fake.addr, timeout=1)
    c.open()
    res = c.send_message("<a@x>", ["<b@x>"], headers=[("A", "b")], body=b"x")
    assert (res.stopped_at, res.final.code, res.final.xcode) == ("mail", 550, "5.7.23")
    assert res.rcpts == [] and res.aborted
    fake.wait_for(lambda r: r[-1][0] == "A")
    assert fake.cmds() == ["O", "M", "A"]
    c.close()


def test_send_message_connect_reject_and_accept(make_fake):
    fake = make_fake(script={"C": [(b"t", b"")]})
    c = MilterClient(fake.addr, timeout=1)
    c.open()
    res = c.send_message("<a@x>", ["<b@x>"], ip="2001:db8::5", helo="h")
    assert res.stopped_at == "connect" and res.final == Reply("tempfail") and not res.aborted
    assert fake.packets("C") == [b"[2001:db8::5]\x006\x00\x002001:db8::5\0"]
    assert fake.cmds() == ["O", "C"]
    c.close()
    fake2 = make_fake(script={"T": [(b"a", b"")]})
    c2 = MilterClient(fake2.addr, timeout=1)
    c2.open()
    res2 = c2.send_message("<a@x>", ["<b@x>"], headers=[("A", "b")])
    assert res2.stopped_at == "data" and res2.final == Reply("accept") and not res2.aborted
    assert fake2.cmds() == ["O", "M", "R", "T"]
    c2.close()


# --------------------------------------------------------------------------
# wait_ready
# --------------------------------------------------------------------------


def test_wait_ready_waits_for_late_listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    holder = {}

    def late():
        time.sleep(0.3)
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(4)
        holder["srv"] = srv
        conn, _ = srv.accept()
        with conn:
            head = conn.recv(17)
            holder["got"] = head
            conn.sendall(pkt(b"O", struct.pack(">III", 6, 0x1, NR_HDR)))
            holder["after"] = conn.recv(5)

    t = threading.Thread(target=late, daemon=True)
    t.start()
    t0 = time.monotonic()
    neg = wait_ready(("127.0.0.1", port), timeout=3)
    assert time.monotonic() - t0 >= 0.25
    assert neg[:3] == (6, 1, NR_HDR)
    t.join(2)
    holder["srv"].close()
    assert holder["got"][4:5] == b"O"
    assert holder["after"] == b"\x00\x00\x00\x01Q"


def test_wait_ready_requires_handshake():
    # Accepts connections but closes them at once: never ready.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def closer():
        srv.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.close()

    t = threading.Thread(target=closer, daemon=True)
    t.start()
    t0 = time.monotonic()
    with pytest.raises(MilterError, match="not ready after 0.4s.*closed the connection"):
        wait_ready(srv.getsockname(), timeout=0.4)
    assert 0.35 <= time.monotonic() - t0 < 2.0
    stop.set()
    t.join(1)
    srv.close()


def test_wait_ready_dead_process():
    p = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    p.wait(5)
    t0 = time.monotonic()
    with pytest.raises(MilterError, match="return code 3"):
        wait_ready("/nonexistent/milter.sock", timeout=5, proc=p)
    assert time.monotonic() - t0 < 1.0
