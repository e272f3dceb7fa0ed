"""SRS after alias expansion: Postfix's canonical maps ask spfmilter's socketmap table.

* Postfix A ("mx.test", the forwarder) runs spfmilter (unix socket) with ``srs_socketmap`` on,
  and the commented canonical-map lines of contrib/postfix-main.cf as they are: a socketmap
  path relative to A's queue directory, where the table's socket lives (as
  /var/spool/postfix/spfmilter/srs.sock would on Debian).  A delivers home.test with local(8):
  user ``nobody`` has a .forward (forward_path points into the test directory) to
  someone@remote.test, and the alias ``gone`` (alias_maps, a texthash: table, so no
  postalias run is needed) forwards to gone@remote.test,
  which B refuses.  home.test is in local_domains: the milter itself rewrites nothing here,
  so every SRS address below comes from the table.
* Postfix B ("remote.test", no milter) delivers remote.test and pass.example (the original
  sender's domain), refuses gone@remote.test at RCPT, and sends the rest back to A.
"""
from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from types import SimpleNamespace

import pytest

from spfmilter.srs import SrsKeys, forward, reverse
from tests.support.milterproc import ROOT, launch_milter
from tests.support.mta import contrib_main_cf, contrib_spfmilter_conf, return_path, socket_directory, wait_for_marked
from tests.support.postfix import PostfixInstance, free_port, postfix_available
from tests.support.sessions import CLIENT_IP, HELO, write_secrets
from tests.support.skips import require

require(postfix_available, "private Postfix instances")

pytestmark = pytest.mark.mta

SECRET = "postfix-socketmap-test-secret-7"
KEYS = SrsKeys((SECRET.encode(),))
SRS_DOMAIN = "srs.mx.test"
SENDER = "alice@pass.example"
DOTFORWARD = "nobody@home.test"  # ~/.forward: someone@remote.test
ALIAS = "gone@home.test"  # /etc/aliases-style: gone@remote.test, refused there
TARGET = "someone@remote.test"
SRS0 = re.compile(r"SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=pass\.example=alice@srs\.mx\.test")


def contrib_canonical_maps() -> dict:
    """The commented canonical-map lines of contrib/postfix-main.cf, and the socket path in them
    that contrib/spfmilter.conf's srs_socketmap line stands for."""
    settings = {}
    for line in (ROOT / "contrib" / "postfix-main.cf").read_text().splitlines():
        match = re.fullmatch(r"#\s+((?:sender|recipient)_canonical_\w+) = (.+)", line.strip())
        if match:
            settings[match.group(1)] = match.group(2)
    assert settings == {
        "sender_canonical_maps": "socketmap:unix:spfmilter/srs.sock:forward",
        "sender_canonical_classes": "envelope_sender",
        "recipient_canonical_maps": "socketmap:unix:spfmilter/srs.sock:reverse",
        "recipient_canonical_classes": "envelope_recipient",
    }, settings
    sample = (ROOT / "contrib" / "spfmilter.conf").read_text().splitlines()
    assert "#srs_socketmap = unix:/var/spool/postfix/spfmilter/srs.sock" in sample  # queue_directory + the path
    return settings


@pytest.fixture(scope="module")
def sites(world, tmp_path_factory):
    directory = tmp_path_factory.mktemp("pf-socketmap")
    secrets = write_secrets(directory / "srs-secrets", SECRET)
    socket_dir = socket_directory()
    shared = socket_dir.parent  # reachable by the postfix user and by nobody
    forwards = shared / "forward"
    forwards.mkdir()
    os.chmod(forwards, 0o755)
    dotforward = forwards / "nobody"
    dotforward.write_text(f"{TARGET}\n")
    nobody = 65534
    os.chown(dotforward, nobody, nobody)  # local(8) reads it as the user; it must be theirs
    aliases = shared / "aliases"
    aliases.write_text("gone gone@remote.test\n")  # texthash: postmap's syntax, an alias all the same
    refuse = shared / "refuse"
    refuse.write_text("gone@remote.test REJECT 5.1.1 no such user here\n")
    for path in (aliases, refuse):
        os.chmod(path, 0o644)

    forwarder_port = free_port()
    remote = PostfixInstance(directory / "remote", mydomain="remote.test",
                             mydestination=("remote.test", "pass.example"), relayhost=f"[127.0.0.1]:{forwarder_port}",
                             extra_main_cf={"smtpd_recipient_restrictions":
                                            f"check_recipient_access texthash:{refuse}"})
    remote.start()
    milter = forwarder = None
    try:
        path = socket_dir / "spfmilter.sock"
        settings = contrib_main_cf(f"unix:{path}")
        settings.update(contrib_canonical_maps())
        settings.update(relay_domains=SRS_DOMAIN, mydestination="home.test", alias_maps=f"texthash:{aliases}",
                        forward_path=f"{forwards}/$user",
                        # what is not forwarded must fail, not land in the host's /var/mail
                        mailbox_transport="error:5.1.1 no local mailboxes in this test")
        forwarder = PostfixInstance(directory / "forwarder", smtpd_port=forwarder_port,
                                    milters=settings.pop("smtpd_milters"),
                                    milter_default_action=settings.pop("milter_default_action"),
                                    relayhost=f"[127.0.0.1]:{remote.port}", mydestination=("mx.test",),
                                    extra_main_cf=settings)
        forwarder.start()
        # the table's socket where cleanup (cwd: the queue directory) finds spfmilter/srs.sock
        table_dir = forwarder.queue_dir / "spfmilter"
        table_dir.mkdir()
        os.chown(table_dir, nobody, nobody)
        table = table_dir / "srs.sock"
        config = contrib_spfmilter_conf(
            socket=f"unix:{path}", socket_group="postfix", user="nobody", mode="header-only",
            authserv_id="mx.test", dns_servers=f"127.0.0.1:{world.port}", log_level="debug",
            srs_domain=SRS_DOMAIN, srs_secrets_file=str(secrets), local_domains="mx.test, home.test",
            srs_socketmap=f"unix:{table}")
        milter = launch_milter(directory, "socketmap", "", None, config_text=config)
        yield SimpleNamespace(forwarder=forwarder, remote=remote, milter=milter, table=table)
    finally:
        if forwarder is not None:
            forwarder.close()
        remote.close()
        if milter is not None:
            assert milter.stop() == 0
            assert "Traceback" not in milter.full_log(), milter.full_log()
        shutil.rmtree(shared)


def send(instance, rcpt: str, marker: str):
    message = (f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: socketmap test\r\nX-Test-Run: {marker}\r\n"
               "\r\nhello\r\n")
    return instance.send(SENDER, [rcpt], message, client_ip=CLIENT_IP, helo=HELO)


def test_postfix_reads_the_table(sites):
    """Postfix's own socketmap client (postmap -q) gets both maps' answers; the socket is the
    postfix group's (socket_group), so cleanup may connect."""
    def query(key: str, name: str) -> tuple[int, str]:
        proc = sites.forwarder._cmd("postmap", "-q", key, f"socketmap:unix:{sites.table}:{name}", check=False)
        return proc.returncode, proc.stdout.strip()

    code, srs = query(SENDER, "forward")
    assert code == 0 and SRS0.fullmatch(srs), (code, srs)
    assert query(srs, "reverse") == (0, SENDER)
    assert query("bob@home.test", "forward") == (1, "")  # NOTFOUND: postmap exits 1
    assert query("SRS0=AAAA=AA=pass.example=alice@srs.mx.test", "reverse") == (1, "")
    info = os.stat(sites.table)
    assert oct(info.st_mode & 0o777) == "0o660" and info.st_gid == sites.forwarder.mail_gid


def test_a_dot_forward_leaves_with_an_srs_sender(sites):
    run = uuid.uuid4().hex[:8]
    before = time.time()
    result = send(sites.forwarder, DOTFORWARD, f"{run}-fwd")
    after = time.time()
    assert result.accepted, result.transcript_text()

    [delivered] = wait_for_marked(sites.remote, TARGET, f"{run}-fwd", 1)
    path = return_path(delivered)
    print(f"\n--- ~nobody/.forward copy, delivered by B to {TARGET} ---\nReturn-Path: {path}")
    assert SRS0.fullmatch(path[1:-1]), path
    assert path[1:-1] in {forward(SENDER, SRS_DOMAIN, KEYS, t) for t in (before, after)}
    assert reverse(path[1:-1], KEYS, time.time()) == SENDER
    assert delivered.get_all("Delivered-To")[0] == TARGET and DOTFORWARD in delivered.get_all("Delivered-To")
    logs = sites.milter.logs()
    assert f"srs=forward; via=socketmap; envelope-from={SENDER}; to={path[1:-1]}" in logs
    assert "srs=forward; envelope-from" not in logs  # the milter itself rewrote nothing


def test_the_bounce_of_an_alias_comes_back_reversed(sites):
    """gone@home.test -> gone@remote.test (alias_maps), which B refuses: A's bounce to the SRS
    sender goes through A's cleanup, whose recipient_canonical_maps turn it back into alice."""
    run = uuid.uuid4().hex[:8]
    mark = sites.forwarder.log_mark()
    result = send(sites.forwarder, ALIAS, f"{run}-alias")
    assert result.accepted, result.transcript_text()

    deadline = time.monotonic() + 30
    while True:  # the bounce carries the original message's headers, our marker among them
        bounces = [m for m in sites.remote.mailbox(SENDER) if f"X-Test-Run: {run}-alias" in m.as_string()]
        if bounces or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(bounces) == 1, sites.forwarder.log(mark)
    [bounce] = bounces
    assert return_path(bounce) == "<>"
    assert "no such user here" in bounce.as_string()
    log = sites.forwarder.log(mark)
    # A sent the forwarded copy with an SRS sender, B refused it, and A's bounce went to alice
    forwarded = re.search(r"from=<(SRS0=[^>]+)>", log)
    assert forwarded and SRS0.fullmatch(forwarded.group(1)), log
    srs = re.escape(forwarded.group(1))
    assert re.search(rf"to=<gone@remote\.test>, orig_to=<{re.escape(ALIAS)}>.* status=bounced", log), log
    assert re.search(rf"to=<{re.escape(SENDER)}>, orig_to=<{srs}>, relay=127\.0\.0\.1.* status=sent", log), log
    assert f"srs=reverse; via=socketmap; rcpt={forwarded.group(1)}; to={SENDER}" in sites.milter.logs()


def test_mail_delivered_here_gets_the_srs_sender_too(sites):
    """Canonical maps run before Postfix knows where a message goes: a foreign sender's mail to a
    local mailbox is rewritten as well (PostSRSd's socketmap does the same; README says so)."""
    run = uuid.uuid4().hex[:8]
    result = send(sites.forwarder, "user@mx.test", f"{run}-local")
    assert result.accepted, result.transcript_text()
    [kept] = wait_for_marked(sites.forwarder, "user@mx.test", f"{run}-local", 1)
    assert SRS0.fullmatch(return_path(kept)[1:-1]), return_path(kept)
