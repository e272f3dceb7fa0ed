"""SpfMilter's per-message hot path, driven in process through a stand-in libmilter context
(resolving through the loopback DNS server): what it formats and sends must not change, and
log lines that would be dropped are not formatted at all."""
from __future__ import annotations

import logging
import socket

import Milter
import pytest

from spfmilter import config as cfg
from spfmilter import headers as hdr
from spfmilter.milter import SpfMilter
from spfmilter.service import make_service

CLIENT = "192.0.2.10"
HELO = "mail.hotpath.test"
SENDER = "someone@hotpath.test"


class _Context:
    """What pymilter's milterContext offers the callbacks here: macros and header changes."""

    def __init__(self):
        self.added: list[tuple] = []

    def setpriv(self, instance):
        pass

    def getsymval(self, name):
        return {"i": "4HOTPATH1", "j": "mx.test"}.get(name)

    def addheader(self, name, value, index):
        self.added.append((name, value, index))


@pytest.fixture
def service(dns_server):
    dns_server.add("hotpath.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    dns_server.add("mail.hotpath.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    host, port = dns_server.address
    config = cfg.parse_text(f"socket = unix:/nonexistent/spfmilter.sock\nauthserv_id = mx.test\n"
                            f"dns_servers = {host}:{port}\ntrusted_networks =\nheader_type = both\n")
    return make_service(config)


def _message(service) -> _Context:
    ctx = _Context()
    milter = SpfMilter(service)
    milter._setctx(ctx)
    milter.negotiate([Milter.ADDHDRS | Milter.CHGHDRS, 0x1FFFFF, 0, 0])
    milter.connect("unknown", socket.AF_INET, (CLIENT, 25000))
    milter.hello(HELO)
    milter.envfrom_bytes(f"<{SENDER}>".encode())
    milter.envrcpt_bytes(b"<rcpt@example.net>")
    milter.header_bytes("Subject", b"hi")
    assert milter.eom() == Milter.CONTINUE
    milter.close()
    return ctx


@pytest.fixture
def spf_log():
    logger = logging.getLogger("spfmilter")
    level = logger.level
    yield logger
    logger.setLevel(level)


def test_log_lines_are_not_formatted_when_info_is_off(service, spf_log, monkeypatch):
    calls = []
    real = hdr.log_line
    monkeypatch.setattr(hdr, "log_line", lambda *args, **kw: calls.append(args) or real(*args, **kw))
    spf_log.setLevel(logging.WARNING)
    quiet = _message(service)
    assert calls == []  # formatted for nothing before: the hot path paid for a dropped line
    spf_log.setLevel(logging.INFO)
    loud = _message(service)
    assert len(calls) == 2  # HELO and MAIL FROM lines, as before
    assert quiet.added == loud.added  # the headers do not depend on the log level


def test_headers_and_log_lines_unchanged(service, spf_log, caplog):
    spf_log.setLevel(logging.INFO)
    with caplog.at_level(logging.INFO, logger="spfmilter"):
        ctx = _message(service)
    # prepended at index 0 in reverse, so A-R ends up on top (bytes as the code before the change made them)
    assert ctx.added == [
        ("Received-SPF", "pass (mx.test: HELO name mail.hotpath.test authorizes\n 192.0.2.10) receiver=mx.test; "
                         "client-ip=192.0.2.10;\n envelope-from=\"someone@hotpath.test\"; helo=mail.hotpath.test; "
                         "identity=helo;\n mechanism=\"ip4:192.0.2.10\"", 0),
        ("Received-SPF", "pass (mx.test: sender domain hotpath.test authorizes 192.0.2.10)\n receiver=mx.test; "
                         "client-ip=192.0.2.10; envelope-from=\"someone@hotpath.test\";\n helo=mail.hotpath.test; "
                         "identity=mailfrom; mechanism=\"ip4:192.0.2.10\"", 0),
        ("Authentication-Results", "mx.test; spf=pass (HELO name mail.hotpath.test\n authorizes 192.0.2.10) "
                                   "smtp.helo=mail.hotpath.test; spf=pass (sender domain\n hotpath.test authorizes "
                                   "192.0.2.10) smtp.mailfrom=someone@hotpath.test", 0),
    ]
    lines = [r.getMessage() for r in caplog.records if r.name == "spfmilter"]
    assert lines == [
        "Pass; identity=helo; client-ip=192.0.2.10; helo=mail.hotpath.test; envelope-from=someone@hotpath.test; "
        "receiver=mx.test; mechanism=ip4:192.0.2.10; action=accept; queue-id=4HOTPATH1",
        "Pass; identity=mailfrom; client-ip=192.0.2.10; helo=mail.hotpath.test; envelope-from=someone@hotpath.test; "
        "receiver=mx.test; mechanism=ip4:192.0.2.10; action=accept; queue-id=4HOTPATH1; rcpt-domains=example.net",
    ]


def test_ascii_fast_path_matches_the_slow_path():
    for text in ["plain ascii", "caf\u00e9 \u00fcber", "ctrl\x01char", "", "x" * 600]:
        slow = "".join(char if char < "\x80" else "?" for char in hdr.clean(text))
        assert hdr._ascii(text) == slow
