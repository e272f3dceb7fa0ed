"""DMARC-aware SPF refusal through a real Postfix: a forwarded message that fails SPF but
carries a valid DKIM signature aligned with its From: domain is delivered; without one it
is refused at the end of DATA.

spfmilter runs from contrib/spfmilter.conf in enforce mode with ``spf_fail_hold = dkim``
over a unix socket; the DKIM key of fail.example is served by the loopback DNS server.
"""
from __future__ import annotations

import re
import shutil
import uuid

import authres
import pytest

from tests.support.dkimsign import publish, sign
from tests.support.milterproc import launch_milter
from tests.support.mta import contrib_main_cf, contrib_spfmilter_conf, socket_directory, wait_for_marked
from tests.support.postfix import PostfixInstance, postfix_available
from tests.support.sessions import CLIENT_IP, zones
from tests.support.skips import require

require(postfix_available, "private Postfix instances")

pytestmark = pytest.mark.mta
LIST_HELO = "helo.example"  # the forwarding list server: passes HELO, but is not in fail.example's SPF


@pytest.fixture(scope="module")
def site(dns_server, tmp_path_factory):
    zones(dns_server)
    publish(dns_server, "fail.example")
    directory = tmp_path_factory.mktemp("pf-dkim")
    socket_dir = socket_directory()
    path = socket_dir / "spfmilter.sock"
    config = contrib_spfmilter_conf(socket=f"unix:{path}", socket_group="postfix", user="nobody", mode="enforce",
                                    authserv_id="mx.test", dns_servers=f"127.0.0.1:{dns_server.port}",
                                    log_level="debug", spf_fail_hold="dkim")
    milter = launch_milter(directory, "m", "", None, config_text=config)
    settings = contrib_main_cf(f"unix:{path}")
    instance = PostfixInstance(directory / "postfix", milters=settings.pop("smtpd_milters"),
                               milter_default_action=settings.pop("milter_default_action"), extra_main_cf=settings)
    instance.start()
    yield instance, milter
    instance.close()
    assert milter.stop() == 0
    assert "Traceback" not in milter.full_log()
    shutil.rmtree(socket_dir.parent)


def list_message(marker: str) -> bytes:
    body = "A message passed on unchanged by a mailing list.\r\n" * 3
    return (f"From: Alice <alice@fail.example>\r\nTo: list@lists.example\r\nSubject: forwarded, DKIM-signed\r\n"
            f"Date: Mon, 23 Nov 2026 16:00:00 +0000\r\nMessage-ID: <{marker}@fail.example>\r\n"
            f"X-Test-Run: {marker}\r\n\r\n{body}").encode()


def sign_all(message: bytes) -> bytes:
    return sign(message, "fail.example", headers=(b"from", b"to", b"subject", b"date", b"message-id", b"x-test-run"))


def test_forwarded_mail_failing_spf_but_passing_aligned_dkim_is_delivered(site):
    instance, milter = site
    marker = f"dkim-{uuid.uuid4().hex[:8]}"
    result = instance.send("alice@fail.example", ["user@mx.test"], sign_all(list_message(marker)),
                           client_ip=CLIENT_IP, helo=LIST_HELO)
    print(result.transcript_text())
    assert result.accepted, result.transcript_text()
    [delivered] = wait_for_marked(instance, "user@mx.test", marker, 1)
    [value] = delivered.get_all("Authentication-Results")
    parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + re.sub(r"\s+", " ", value))
    found = {(r.method, r.result) for r in parsed.results}
    assert ("spf", "fail") in found and ("dkim", "pass") in found, value
    print("--- delivered ---\nAuthentication-Results: " + value)
    assert "action=accept-dkim" in milter.full_log()


@pytest.mark.parametrize("case", ["changed by the list", "not signed"])
def test_without_a_valid_aligned_signature_it_is_refused_at_end_of_data(site, case):
    instance, milter = site
    marker = f"nodkim-{uuid.uuid4().hex[:8]}"
    message = sign_all(list_message(marker))
    message = message.replace(b"A message passed", b"[list footer] A message passed") if case != "not signed" \
        else list_message(marker)
    result = instance.send("alice@fail.example", ["user@mx.test"], message, client_ip=CLIENT_IP, helo=LIST_HELO)
    print(result.transcript_text())
    assert result.rcpt["user@mx.test"].code == 250  # held at RCPT, decided at the end of DATA
    assert (result.stage, result.code, result.text.split()[0]) == ("end-of-data", 550, "5.7.23")
    assert not result.accepted
    assert wait_for_marked(instance, "user@mx.test", marker, 1, timeout=1) == []
