"""Issue 14 options through a real Postfix: what an SMTP client sees of reject_text and of
enhanced_status_codes = no (the milter leaves the RFC 3463 code out; this shows what Postfix makes of it)."""
from __future__ import annotations

import shutil

import pytest

from tests.support.milterproc import launch_milter
from tests.support.mta import contrib_main_cf, contrib_spfmilter_conf, message, socket_directory
from tests.support.postfix import PostfixInstance, postfix_available
from tests.support.sessions import CLIENT_IP, HELO, zones
from tests.support.skips import require

require(postfix_available, "private Postfix instances")

pytestmark = pytest.mark.mta


@pytest.fixture(scope="module")
def site(dns_server, tmp_path_factory):
    zones(dns_server)
    directory = tmp_path_factory.mktemp("pf-options")
    socket_dir = socket_directory()
    path = socket_dir / "spfmilter.sock"
    config = contrib_spfmilter_conf(socket=f"unix:{path}", socket_group="postfix", user="nobody", mode="enforce",
                                    authserv_id="mx.test", dns_servers=f"127.0.0.1:{dns_server.port}",
                                    enhanced_status_codes="no",
                                    reject_text="SPF {result} for {domain}: see https://mx.test/spf")
    milter = launch_milter(directory, "m", "", None, config_text=config)
    settings = contrib_main_cf(f"unix:{path}")
    instance = PostfixInstance(directory / "postfix", milters=settings.pop("smtpd_milters"),
                               milter_default_action=settings.pop("milter_default_action"),
                               mydestination=("mx.test",), extra_main_cf=settings)
    instance.start()
    yield instance
    instance.close()
    assert milter.stop() == 0
    shutil.rmtree(socket_dir.parent)


def test_refusal_text_and_no_enhanced_code_reach_the_client(site):
    result = site.send("x@fail.example", ["user@mx.test"], message("x@fail.example", ""), client_ip=CLIENT_IP,
                       helo=HELO)
    print(result.transcript_text())
    refused = result.rcpt["user@mx.test"]
    assert refused.code == 550
    assert refused.text.endswith("SPF fail for fail.example: see https://mx.test/spf")
    assert "5.7.23" not in refused.text and not refused.text[:1].isdigit()  # Postfix adds no code of its own
