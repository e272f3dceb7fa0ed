"""Per-domain staged rollout through a real Postfix: header-only overall, enforced for one of
the two domains this host delivers; the spared copy says so in its Authentication-Results."""
from __future__ import annotations

import re
import shutil
import uuid

import authres
import pytest

from tests.reliability.figures import record
from tests.support.milterproc import launch_milter
from tests.support.mta import contrib_main_cf, contrib_spfmilter_conf, message, socket_directory, wait_for_marked
from tests.support.postfix import PostfixInstance, postfix_available
from tests.support.sessions import CLIENT_IP, HELO, zones
from tests.support.skips import require

require(postfix_available, "private Postfix instances")

pytestmark = pytest.mark.mta


def rollout_site(dns_server, directory, enforce_domains: str, virtual_domains: tuple, **main_cf):
    """A header-only milter with ``enforce_domains`` behind a private Postfix delivering
    ``virtual_domains`` (its helper's ``mydestination``); ``main_cf`` overrides Postfix settings.
    Yields (instance, milter)."""
    socket_dir = socket_directory()
    path = socket_dir / "spfmilter.sock"
    config = contrib_spfmilter_conf(socket=f"unix:{path}", socket_group="postfix", user="nobody",
                                    mode="header-only", authserv_id="mx.test", enforce_domains=enforce_domains,
                                    dns_servers=f"127.0.0.1:{dns_server.port}", log_level="debug")
    milter = launch_milter(directory, "m", "", None, config_text=config)
    settings = contrib_main_cf(f"unix:{path}")
    instance = PostfixInstance(directory / "postfix", milters=settings.pop("smtpd_milters"),
                               milter_default_action=settings.pop("milter_default_action"),
                               mydestination=virtual_domains, extra_main_cf={**settings, **main_cf})
    instance.start()
    yield instance, milter
    instance.close()
    assert milter.stop() == 0
    shutil.rmtree(socket_dir.parent)


@pytest.fixture(scope="module")
def site(dns_server, tmp_path_factory):
    zones(dns_server)
    yield from rollout_site(dns_server, tmp_path_factory.mktemp("pf-rollout"), "mx.test", ("mx.test", "other.test"))


def test_enforced_domain_refuses_the_other_gets_it_marked(site):
    instance, milter = site
    marker = f"rollout-{uuid.uuid4().hex[:8]}"
    result = instance.send("x@fail.example", ["user@mx.test", "user@other.test"],
                           message("x@fail.example", f"X-Test-Run: {marker}\r\n"), client_ip=CLIENT_IP, helo=HELO)
    print(result.transcript_text())
    refused = result.rcpt["user@mx.test"]
    assert (refused.code, refused.text.split()[0]) == (550, "5.7.23")
    assert result.rcpt["user@other.test"].code == 250 and result.accepted
    [delivered] = wait_for_marked(instance, "user@other.test", marker, 1)
    [value] = delivered.get_all("Authentication-Results")
    parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + re.sub(r"\s+", " ", value))
    [mailfrom] = [r for r in parsed.results if r.properties[0].name == "mailfrom"]
    assert mailfrom.result == "fail"
    assert mailfrom.reason.startswith("not enforced here; enforcement would refuse it with 550 5.7.23")
    print("--- delivered to the header-only domain ---\nAuthentication-Results: " + value)
    assert wait_for_marked(instance, "user@mx.test", marker, 1, timeout=1) == []


# ---------------------------------------------------------------- %-hack and bang-path recipients

ROUTED = ["victim%b.test@a.test", "b.test!victim@a.test"]


@pytest.fixture(scope="module")
def routed_site(dns_server, tmp_path_factory):
    """Header-only overall, enforce_domains = b.test; a.test is Postfix's own mydestination (where
    its allow_percent_hack and swap_bangpath defaults apply) and b.test a virtual domain."""
    zones(dns_server)
    yield from rollout_site(dns_server, tmp_path_factory.mktemp("pf-routed"), "b.test", ("b.test",),
                            mydestination="a.test")


@pytest.mark.parametrize("rcpt", ROUTED)
def test_postfix_routes_percent_and_bang_recipients_to_the_other_domain(routed_site, rcpt):
    """The control: a passing sender's mail to the routed form lands in victim@b.test's mailbox,
    so the refusal below is about the route, not an unknown address."""
    instance, _ = routed_site
    marker = f"routed-ok-{uuid.uuid4().hex[:8]}"
    result = instance.send("a@pass.example", [rcpt], message("a@pass.example", f"X-Test-Run: {marker}\r\n"),
                           client_ip=CLIENT_IP, helo=HELO)
    assert result.rcpt[rcpt].code == 250 and result.accepted, result.transcript_text()
    assert len(wait_for_marked(instance, "victim@b.test", marker, 1)) == 1


def test_percent_and_bang_recipients_cannot_bypass_enforce_domains(routed_site):
    instance, milter = routed_site
    outcomes = {}
    for rcpt in ["victim@b.test", *ROUTED]:
        marker = f"routed-{uuid.uuid4().hex[:8]}"
        result = instance.send("x@fail.example", [rcpt], message("x@fail.example", f"X-Test-Run: {marker}\r\n"),
                               client_ip=CLIENT_IP, helo=HELO)
        print(result.transcript_text())
        reply = result.rcpt[rcpt]
        outcomes[rcpt] = (reply.code, reply.text.split()[0])
        assert wait_for_marked(instance, "victim@b.test", marker, 1, timeout=1) == []
    record("routed_recipients", **{rcpt: {"ok": outcome == (550, "5.7.23"), "reply": f"{outcome[0]} {outcome[1]}"}
                                   for rcpt, outcome in outcomes.items()})
    assert outcomes == {rcpt: (550, "5.7.23") for rcpt in ["victim@b.test", *ROUTED]}
