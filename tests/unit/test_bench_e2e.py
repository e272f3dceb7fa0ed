"""The Postfix end-to-end bench's own pieces: smtp-source's command line, the XCLIENT proxy
(against a small loopback SMTP server), the added-latency arithmetic and the policyd-spf
service entries."""
from __future__ import annotations

import socket
import threading

import pytest

from bench import postfix_e2e
from bench.postfix_e2e import XclientProxy, added_ms, reply_complete, source_argv


def test_one_message_per_connection_unless_reused():
    argv = source_argv("/usr/sbin/smtp-source", 2525, 100, 8, "a@example.org", "b@example.net", "mx.test", 1000)
    assert "-d" not in argv  # without -d smtp-source opens a new connection for every message
    assert argv[argv.index("-s") + 1] == "8" and argv[argv.index("-m") + 1] == "100"
    assert argv[-1] == "127.0.0.1:2525"
    reused = source_argv("/usr/sbin/smtp-source", 2525, 100, 8, "a@example.org", "b@example.net", "mx.test", 1000,
                         reuse_connections=True)
    assert reused[1] == "-d" and reused[2:] == argv[1:]


@pytest.mark.parametrize("data, complete", [
    (b"220 ready\r\n", True),
    (b"220\r\n", True),
    (b"250-one\r\n250 two\r\n", True),
    (b"250-one\r\n", False),
    (b"220 rea", False),
    (b"", False),
])
def test_reply_complete(data, complete):
    assert reply_complete(data) is complete


def test_added_latency_follows_littles_law():
    assert added_ms(500.0, 1000.0, 1) == pytest.approx(1.0)
    assert added_ms(500.0, 1000.0, 8) == pytest.approx(8.0)
    assert added_ms(1000.0, 500.0, 1) == pytest.approx(-1.0)  # faster than the base: negative, not hidden
    with pytest.raises(ValueError):
        added_ms(0.0, 1000.0, 1)


class _FakeSmtpd:
    """Loopback SMTP server: greets, answers XCLIENT with a new greeting, echoes other lines as 250."""

    def __init__(self, refuse_xclient: bool = False):
        self.refuse = refuse_xclient
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.commands: list[bytes] = []
        self.threads: list[threading.Thread] = []
        self.accepted = threading.Thread(target=self._accept, daemon=True)
        self.accepted.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn):
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220-fake\r\n220 fake ESMTP\r\n")
            for line in lines:
                self.commands.append(line)
                if line.startswith(b"XCLIENT"):
                    conn.sendall(b"550 5.7.0 no\r\n" if self.refuse else b"220 fake again\r\n")
                elif line.startswith(b"QUIT"):
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 " + line.strip() + b"\r\n")

    def close(self):
        self.listener.close()
        for thread in self.threads:
            thread.join(5)


def _read_reply(sock) -> bytes:
    data = b""
    while not reply_complete(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_xclient_proxy_relays_after_xclient_on_one_thread():
    server = _FakeSmtpd()
    proxy = XclientProxy(server.port, "192.0.2.7")
    threads_before = threading.active_count()
    try:
        clients = [socket.create_connection(("127.0.0.1", proxy.port), timeout=10) for _ in range(20)]
        for index, client in enumerate(clients):
            assert _read_reply(client) == b"220 fake again\r\n"  # the post-XCLIENT greeting, not the first
            client.sendall(b"HELO c%d\r\n" % index)
            assert _read_reply(client) == b"250 HELO c%d\r\n" % index
        # every connection is served by the proxy's one thread (the fake server has its own)
        assert threading.active_count() - threads_before == len(server.threads)
        for client in clients:
            client.sendall(b"QUIT\r\n")
            assert _read_reply(client) == b"221 bye\r\n"
            assert client.recv(10) == b""  # the proxy passes the server's close on
            client.close()
    finally:
        proxy.close()
        server.close()
    assert server.commands.count(b"XCLIENT ADDR=192.0.2.7 NAME=[UNAVAILABLE]\r\n") == 20
    assert proxy.errors == []


def test_xclient_proxy_reports_a_refused_xclient():
    server = _FakeSmtpd(refuse_xclient=True)
    proxy = XclientProxy(server.port, "192.0.2.7")
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
            assert _read_reply(client).startswith(b"421 4.3.0 xclient proxy")
    finally:
        proxy.close()
        server.close()
    assert proxy.errors and "XCLIENT refused: 550 5.7.0 no" in proxy.errors[0]


def test_policyd_spf_service_checks_both_identities_through_the_bench_dns(tmp_path, monkeypatch):
    from bench import run

    venv_python = tmp_path / "python"
    monkeypatch.setattr(run, "ensure_spf_engine", lambda: venv_python)
    monkeypatch.setattr(run.subprocess, "run", lambda *a, **k: type("Done", (), {"stdout": "/venv/site\n"})())
    master, main = run.policyd_spf_service(5353, tmp_path)
    assert len(master) == 1
    fields = master[0].split("=", 1)[1].split()
    assert fields[:8] == ["policyd-spf", "unix", "-", "n", "n", "-", "-", "spawn"]
    assert "user=nobody" in fields
    assert fields[-4].endswith("bench/spf_engine_runner.py") and fields[-3:-1] == ["policyd-spf", "5353"]
    assert "PYTHONPATH=/venv/site" in master[0]
    assert main["smtpd_recipient_restrictions"] == "check_policy_service unix:private/policyd-spf"
    conf = dict(line.split(" = ", 1) for line in (tmp_path / "policyd-spf.conf").read_text().splitlines())
    # header-only, both identities checked (No_Check would skip one), one A-R header like spfmilter's
    assert conf["HELO_reject"] == "False" and conf["Mail_From_reject"] == "False"
    assert conf["Header_Type"] == "AR" and conf["TestOnly"] == "1"


def test_result_has_the_e2e_fields():
    result = postfix_e2e.Result(msgs_per_s=100.0, seconds=1.0, delivered=100, messages=100)
    assert result.added_ms == 0.0 and result.reuse_connections is False
    assert "connections reused" in str(postfix_e2e.Result(msgs_per_s=1.0, seconds=1.0, delivered=1,
                                                           reuse_connections=True))
