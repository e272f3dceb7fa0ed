"""The SRS socketmap table of a real spfmilter daemon: served beside the milter from the same
process tree and secrets, through reloads, garbage and shutdown."""
from __future__ import annotations

import os
import signal
import socket
import stat
import time

import pytest

from spfmilter.srs import SrsKeys, forward, reverse
from tests.support.sessions import SRS_DOMAIN, SECRET, session, srs_config, srs_mods, write_secrets


def ns(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return b"%d:%s," % (len(data), data)


class Table:
    """A socketmap client (as Postfix's cleanup is one): one connection, one query at a time."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise

    def ask(self, request: str | bytes) -> str:
        self.sock.sendall(ns(request))
        return self.reply()

    def reply(self) -> str:
        data = b""
        while True:
            length, colon, rest = data.partition(b":")
            if colon and len(rest) > int(length):
                assert rest[int(length)] == ord(","), data
                return rest[:int(length)].decode()
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed after {data!r}"
            data += chunk

    def closed(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def daemon(start_milter, world, tmp_path, forward_table):
    """A fresh milter (it is reloaded and stopped) with its own secrets and table socket."""
    secrets = write_secrets(tmp_path / "srs-secrets")
    table = tmp_path / "srs.sock"
    milter = start_milter(srs_config(secrets, forward_table, f"srs_socketmap = unix:{table}\n"
                                                           "srs_exclude_domains = .partner.example"), fresh=True)
    return milter, table, secrets


def test_the_table_and_the_milter_sign_alike(daemon):
    milter, table, _ = daemon
    keys = SrsKeys((SECRET.encode(),))
    client = Table(table)
    try:
        srs = client.ask("forward alice@pass.example").removeprefix("OK ")
        assert srs == forward("alice@pass.example", SRS_DOMAIN, keys, time.time())
        assert client.ask(f"reverse {srs}") == "OK alice@pass.example"
        assert client.ask("forward bob@mail.partner.example") == "NOTFOUND Excluded domain."
        assert client.ask("forward bob@mx.test") == "NOTFOUND Need not rewrite local domain."
    finally:
        client.close()
    # the milter, in its worker process, writes the same address for a forwarded recipient
    _, mods = session(milter, "<alice@pass.example>", ["<fwd@mx.test>"])
    [(_, new_sender, _)] = srs_mods(mods)
    assert new_sender == f"<{srs}>"
    assert stat.S_IMODE(os.stat(table).st_mode) == 0o660  # socket_mode, like the milter's socket
    assert "srs=forward; via=socketmap; envelope-from=alice@pass.example" in milter.logs()


def test_garbage_ends_one_connection_and_nothing_else(daemon):
    milter, table, _ = daemon
    for junk in (b"GET / HTTP/1.1\r\n\r\n", b"99999999:", b"5:abcdef", b"\x00" * 100, b"3:abc;"):
        client = Table(table)
        try:
            client.sock.sendall(junk)
            assert client.reply().startswith("PERM ")
            assert client.closed()
        finally:
            client.close()
    client = Table(table)
    try:
        assert client.ask(b"forward \xff\xfe@pass.example") == "NOTFOUND Cannot rewrite this address."
        assert client.ask("nosuchmap x") == "PERM Invalid map."
        assert client.ask("forward alice@pass.example").startswith("OK SRS0=")  # same connection, still served
    finally:
        client.close()
    _, mods = session(milter, "<alice@pass.example>", ["<fwd@mx.test>"])  # and the milter too
    assert [m[0] for m in srs_mods(mods)] == ["chgfrom"]
    assert "Traceback" not in milter.full_log()


def test_a_reload_swaps_the_secrets_and_stop_removes_the_socket(daemon):
    milter, table, secrets = daemon
    client = Table(table)
    try:
        old = client.ask("forward alice@pass.example").removeprefix("OK ")
    finally:
        client.close()
    new_secret = "a-new-secret-for-the-reload"
    secrets.write_text(new_secret + "\n")  # the old one gone: its addresses no longer reverse
    log_before = len(milter.full_log())
    os.kill(milter.proc.pid, signal.SIGHUP)
    # the old table process serves what it accepted before it heard of the reload, then stops
    wait_for(lambda: "SRS socketmap process stopped" in milter.full_log()[log_before:], 20, "the old table process")
    assert "reload refused" not in milter.full_log()[log_before:]
    client = Table(table)  # a new connection is served by the new process
    try:
        assert client.ask(f"reverse {old}") == "NOTFOUND Hash invalid in SRS address."
        srs = client.ask("forward alice@pass.example").removeprefix("OK ")
        assert srs == forward("alice@pass.example", SRS_DOMAIN, SrsKeys((new_secret.encode(),)), time.time())
        assert reverse(srs, SrsKeys((new_secret.encode(),)), time.time()) == "alice@pass.example"
    finally:
        client.close()
    assert milter.stop() == 0
    assert not os.path.lexists(table)
    log = milter.full_log()
    assert "Traceback" not in log
    assert "SRS socketmap process (pid" not in log  # never "exited unexpectedly"
