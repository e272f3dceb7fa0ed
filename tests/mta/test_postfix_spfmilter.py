"""spfmilter behind a real Postfix: the main.cf lines from contrib/ with the port substituted."""
from __future__ import annotations

import re
import time
from pathlib import Path

import authres
import pytest

from tests.conftest import launch_milter
from tests.milter.test_sessions import zones
from tests.support.postfix import PostfixInstance, postfix_available

_usable, _why = postfix_available()
if not _usable:
    pytest.skip(f"private Postfix instances unavailable: {_why}", allow_module_level=True)

pytestmark = pytest.mark.mta
ROOT = Path(__file__).resolve().parents[2]
CLIENT_IP = "192.0.2.7"


def contrib_main_cf(port: int) -> dict:
    """The contrib/postfix-main.cf settings, pointed at the test milter's port."""
    settings = {}
    for line in (ROOT / "contrib" / "postfix-main.cf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip().replace(":8890", f":{port}")
    return settings


@pytest.fixture(scope="module")
def world(dns_server):
    zones(dns_server)
    return dns_server


@pytest.fixture(scope="module", params=["header-only", "enforce"])
def mta(request, world, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"pf-{request.param}")
    milter = launch_milter(directory, "m", f"mode = {request.param}\ntrusted_networks = 127.0.0.1/32",
                           world.port, inet=True)
    settings = contrib_main_cf(milter.addr[1])
    instance = PostfixInstance(directory / "postfix", milters=settings.pop("smtpd_milters"),
                               milter_default_action=settings.pop("milter_default_action"), extra_main_cf=settings)
    instance.start()
    yield request.param, instance, milter
    instance.stop()
    milter.stop()


def message(sender: str, extra_headers: str = "") -> str:
    return (f"From: <{sender}>\r\nTo: <user@mx.test>\r\nSubject: spf test\r\n{extra_headers}"
            "\r\nhello\r\n")


def test_fail_sender(mta):
    mode, instance, milter = mta
    forged = "Authentication-Results: mx.test; spf=pass smtp.mailfrom=x@fail.example\r\n"
    result = instance.send("x@fail.example", ["user@mx.test", "postmaster@mx.test"],
                           message("x@fail.example", forged), client_ip=CLIENT_IP, helo="helo.example")
    print(result.transcript_text())
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
    ars = delivered.get_all("Authentication-Results")
    assert len(ars) == 1  # the forged copy is gone, ours is there
    parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + re.sub(r"\s+", " ", ars[0]))
    assert parsed.authserv_id == "mx.test"
    assert {(r.properties[0].name, r.result) for r in parsed.results} == {("helo", "pass"), ("mailfrom", "fail")}


def test_pass_sender_is_delivered_in_both_modes(mta):
    _, instance, _ = mta
    result = instance.send("a@pass.example", ["user@mx.test"], message("a@pass.example"),
                           client_ip=CLIENT_IP, helo="helo.example")
    assert result.accepted, result.transcript_text()


def test_temperror_defers_only_in_enforce_mode(mta):
    mode, instance, _ = mta
    result = instance.send("a@temperror.example", ["user@mx.test"], message("a@temperror.example"),
                           client_ip=CLIENT_IP, helo="helo.example")
    if mode == "enforce":
        reply = result.rcpt["user@mx.test"]
        assert (reply.code, reply.text.split()[0]) == (451, "4.7.24"), result.transcript_text()
    else:
        assert result.accepted


def test_trusted_and_authenticated_clients_are_not_checked(mta):
    mode, instance, milter = mta
    marker = f"X-Test-Run: trusted-{mode}\r\n"
    # 127.0.0.1 is in trusted_networks for this milter; a SASL login is trusted by default
    for kwargs in ({"client_ip": "127.0.0.1"}, {"client_ip": CLIENT_IP, "login": "alice"}):
        result = instance.send("x@fail.example", ["user@mx.test"], message("x@fail.example", marker),
                               helo="helo.example", **kwargs)
        assert result.accepted, result.transcript_text()
    # delivery is asynchronous: wait for these two messages, recognised by their marker header
    deadline = time.monotonic() + 30
    ours = []
    while len(ours) < 2 and time.monotonic() < deadline:
        ours = [m for m in instance.mailbox("user@mx.test") if m.get("X-Test-Run") == f"trusted-{mode}"]
        if len(ours) < 2:
            time.sleep(0.05)
    assert len(ours) == 2
    assert all(m.get("Authentication-Results") is None for m in ours)
    assert milter.logs().count("skipped=") >= 2
