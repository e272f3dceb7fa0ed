"""The command line: `spfmilter check`, `--check-config`, and running on the built-in defaults."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import authres
import pytest

from tests.support.milterclient import MilterClient, wait_ready
from tests.support.sessions import PASSED_ON

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(dns_server):
    dns_server.add("pass.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    dns_server.add("fail.example", "TXT", "v=spf1 -all exp=why.fail.example")
    dns_server.add("why.fail.example", "TXT", "%{i} is not one of our servers")
    dns_server.add("softfail.example", "TXT", "v=spf1 ~all")
    dns_server.add("neutral.example", "TXT", "v=spf1 ?all")
    dns_server.add("none.example", "A", "192.0.2.1")
    dns_server.add("permerror.example", "TXT", "v=spf1 include:none.example -all")
    dns_server.add("temperror.example", "TXT", "v=spf1 -all")
    dns_server.fault("temperror.example", "servfail")
    dns_server.add("mx.pass.example", "TXT", "v=spf1 ip4:192.0.2.7 -all")
    return dns_server


def spfmilter(*args, config: Path | None = None, check=False):
    cmd = [sys.executable, "-m", "spfmilter"]
    if config is not None:
        cmd += ["-c", str(config)]
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60,
                          cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def conf(tmp_path, world):
    def make(extra: str = "") -> Path:
        path = tmp_path / "spfmilter.conf"
        path.write_text(f"authserv_id = mx.test\ndns_servers = 127.0.0.1:{world.port}\n"
                        f"header_type = both\n{extra}\n")
        return path
    return make


def parse_output(out: str):
    headers_text, _, reply = out.partition("\n\n")
    headers = []
    for line in headers_text.split("\n"):
        if line.startswith(" "):
            headers[-1] = headers[-1] + "\n" + line
        else:
            headers.append(line)
    return headers, reply.strip()


@pytest.mark.parametrize("domain,result", [
    ("pass.example", "pass"), ("fail.example", "fail"), ("softfail.example", "softfail"),
    ("neutral.example", "neutral"), ("none.example", "none"), ("permerror.example", "permerror"),
    ("temperror.example", "temperror"),
])
def test_check_prints_parseable_headers_for_every_result(conf, domain, result):
    proc = spfmilter("check", "--ip", "192.0.2.7", "--helo", "mx.pass.example",
                     "--sender", f"someone@{domain}", config=conf(), check=True)
    headers, reply = parse_output(proc.stdout)
    assert [h.split(":", 1)[0] for h in headers] == ["Authentication-Results", "Received-SPF", "Received-SPF"]
    ar = authres.AuthenticationResultsHeader.parse(headers[0].replace("\n", ""))
    assert ar.authserv_id == "mx.test"
    assert [(r.result, r.properties[0].name, r.properties[0].value) for r in ar.results] == [
        ("pass", "helo", "mx.pass.example"), (result, "mailfrom", f"someone@{domain}")]
    assert headers[1].replace("\n", "").startswith(f"Received-SPF: {result} (mx.test: ")
    assert "identity=mailfrom" in headers[1]
    assert reply.startswith("SMTP reply: 250 (accepted")  # header-only by default
    if result == "fail":
        assert "enforcement would reply: 550 5.7.23" in reply and "192.0.2.7 is not one of our servers" in reply
    if result == "temperror":
        assert "enforcement would reply: 451 4.7.24" in reply


@pytest.mark.parametrize("sender,recipient,extra,expected", [
    ("a@fail.example", "user@mx.test", "mode = enforce", "SMTP reply: 550 5.7.23 SPF fail for fail.example"),
    ("a@fail.example", "postmaster@mx.test", "mode = enforce", "SMTP reply: 250 (accepted: exempt recipient"),
    ("a@permerror.example", "user@mx.test", "mode = enforce\nmailfrom_reject_results = fail, permerror",
     "SMTP reply: 550 5.7.24 SPF permanent error"),
    ("a@temperror.example", "user@mx.test", "mode = enforce", "SMTP reply: 451 4.7.24"),
    ("a@pass.example", "user@mx.test", "mode = enforce", "SMTP reply: 250 (accepted)"),
])
def test_check_prints_the_reply_enforcement_gives(conf, sender, recipient, extra, expected):
    proc = spfmilter("check", "--ip", "192.0.2.7", "--helo", "mx.pass.example", "--sender", sender,
                     "--recipient", recipient, config=conf(extra), check=True)
    _, reply = parse_output(proc.stdout)
    assert reply.startswith(expected), reply


def test_check_trusted_client_adds_nothing(conf):
    proc = spfmilter("check", "--ip", "127.0.0.1", "--helo", "localhost", "--sender", "a@fail.example",
                     config=conf("mode = enforce"), check=True)
    assert proc.stdout.startswith("# not checked: trusted network 127.0.0.0/8")
    assert "SMTP reply: 250" in proc.stdout


def test_check_rejects_a_bad_ip(conf):
    proc = spfmilter("check", "--ip", "not-an-ip", "--helo", "x.example", "--sender", "a@b.example",
                     config=conf())
    assert proc.returncode == 2 and "not an IP address" in proc.stderr


def test_check_config_reports_every_problem_with_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("socket = inet:99999@127.0.0.1\nmode = enforced\n# fine\nheader_typ = both\n"
                   "trusted_networks = 10.0.0.0/33\nmode = enforce\n")
    proc = spfmilter("--check-config", config=bad)
    assert proc.returncode != 0
    errors = proc.stderr.strip().splitlines()
    assert errors == [
        f"spfmilter: {bad}:1: bad value for 'socket': 'inet:99999@127.0.0.1': bad port '99999': expected a number from 1 to 65535",
        f"spfmilter: {bad}:2: bad value for 'mode': 'enforced': expected one of: header-only, enforce",
        f"spfmilter: {bad}:4: unknown key 'header_typ' (did you mean 'header_type'?)",
        f"spfmilter: {bad}:5: bad value for 'trusted_networks': '10.0.0.0/33': bad network '10.0.0.0/33': "
        "expected CIDR like 192.0.2.0/24, 2001:db8::/32, or 'loopback'",
        f"spfmilter: {bad}:6: key 'mode' already set on line 2",
    ]


def test_check_config_prints_the_effective_settings(tmp_path):
    good = tmp_path / "good.conf"
    # --check-config also checks the host: the socket's directory must exist
    good.write_text(f"socket = unix:{tmp_path}/spfmilter.sock\nmode = enforce\n")
    proc = spfmilter("--check-config", config=good, check=True)
    assert f"# {good}: configuration OK" in proc.stdout
    assert f"socket = unix:{tmp_path}/spfmilter.sock" in proc.stdout
    assert "mode = enforce" in proc.stdout and "header_type = authentication-results" in proc.stdout


def test_missing_config_file_is_an_error(tmp_path):
    proc = spfmilter("--check-config", config=tmp_path / "nope.conf")
    assert proc.returncode == 2 and "nope.conf: cannot read: No such file or directory" in proc.stderr


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.mark.skipif(os.path.exists("/etc/spfmilter/spfmilter.conf"),
                    reason="a system configuration exists; the built-in defaults are not used")
def test_runs_on_built_in_defaults_and_completes_a_session():
    """The quickstart's run command: no config file, inet:8890@127.0.0.1, header-only, stderr."""
    if not _port_free(8890):
        pytest.skip("port 8890 is in use")
    proc = subprocess.Popen([sys.executable, "-m", "spfmilter"], cwd=str(ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_ready(("127.0.0.1", 8890), timeout=20, proc=proc)
        client = MilterClient(("127.0.0.1", 8890), timeout=10)
        client.open()
        # A loopback client is trusted by default, so no DNS query leaves this machine.
        client.connect("localhost", "127.0.0.1", port=40000, family="4")
        client.helo("localhost")
        client.mail("<a@example.org>")
        assert client.rcpt("<b@example.com>").action in PASSED_ON
        client.data()
        client.header("Subject", "hello")
        client.eoh()
        reply, mods = client.eom()
        assert reply.action == "continue" and mods == []
        client.quit()
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "using built-in defaults" in output
    assert "listening on inet:8890@127.0.0.1 (mode=header-only" in output
    assert "None; skipped=\"trusted network 127.0.0.0/8\"; client-ip=127.0.0.1" in output


@pytest.mark.parametrize("extra, recipient", [
    ("mode = header-only", "<b@mx.test>"),  # RCPT not even looked at
    ("mode = header-only\nenforce_domains = other.test", "<b@mx.test>"),  # per-domain rollout
    ("mode = enforce\nheader_only_domains = mx.test", "<b@mx.test>"),
    ("mode = enforce\nheader_only_senders = fail.example", "<b@mx.test>"),
    ("mode = enforce", "<postmaster@mx.test>"),  # exempt: no note
])
def test_check_shows_exactly_the_headers_the_milter_adds(conf, start_milter, extra, recipient):
    """One function (policy.disposition) picks the A-R note for both: check cannot drift again."""
    path = conf(extra)
    proc = spfmilter("check", "--ip", "192.0.2.7", "--helo", "mx.pass.example", "--sender", "x@fail.example",
                     "--recipient", recipient, config=path, check=True)
    shown, _ = parse_output(proc.stdout)
    milter = start_milter(f"header_type = both\n{extra}")  # authserv_id and DNS server as in conf()
    client = milter.client()
    client.connect("[192.0.2.7]", "192.0.2.7", port=40000, family="4")
    client.helo("mx.pass.example")
    client.mail("<x@fail.example>")
    assert client.rcpt(recipient).action in PASSED_ON
    client.data()
    client.header("Subject", "s")
    client.eoh()
    _, mods = client.eom()
    client.quit()
    added = [f"{m[2]}: {m[3]}" for m in reversed(mods) if m[0] == "insheader"]  # each went on top
    assert [h.replace("\n", "") for h in shown] == [h.replace("\n", "") for h in added]
    if "postmaster" not in recipient:
        assert 'reason="not enforced here; enforcement would refuse it with 550 5.7.23"' in shown[0].replace("\n", "")


def test_check_shows_the_dkim_hold_note(conf):
    proc = spfmilter("check", "--ip", "192.0.2.7", "--helo", "mx.pass.example", "--sender", "x@fail.example",
                     "--recipient", "<b@mx.test>", config=conf("mode = enforce\nspf_fail_hold = dkim"), check=True)
    headers, reply = parse_output(proc.stdout)
    [ar] = [h for h in headers if h.startswith("Authentication-Results:")]
    parsed = authres.AuthenticationResultsHeader.parse(ar.replace("\n", ""))
    [mailfrom] = [r for r in parsed.results if r.properties[0].name == "mailfrom"]
    assert mailfrom.reason == ("SPF fail overridden by a DKIM signature aligned with From: and MAIL FROM "
                               "(RFC 7489 section 10.1)")
    assert reply.startswith("SMTP reply: 250 at RCPT (spf_fail_hold = dkim)")
