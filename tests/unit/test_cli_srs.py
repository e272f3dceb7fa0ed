"""`spfmilter srs ...` and --check-config with SRS, run in-process through cli.main."""
from __future__ import annotations

import os
import stat
import time

import pytest

from spfmilter.cli import main
from spfmilter.srs import SrsKeys, forward, load_secrets


@pytest.fixture
def setup(tmp_path):
    secrets = tmp_path / "srs-secrets"
    assert main(["srs", "genkey", str(secrets)]) == 0
    conf = tmp_path / "spfmilter.conf"
    conf.write_text(f"srs_domain = srs.example.net\nsrs_secrets_file = {secrets}\nlocal_domains = example.net\n"
                    f"socket = unix:{tmp_path}/m.sock\n")  # --check-config checks the socket on this host
    return conf, secrets


def test_genkey_refuses_to_overwrite_and_rotates(setup, capsys):
    _, secrets = setup
    # 0600, or 0640 in the spfmilter group where that exists (tests/milter/test_ops.py)
    assert stat.S_IMODE(os.stat(secrets).st_mode) in (0o600, 0o640)
    assert main(["srs", "genkey", str(secrets)]) == 1
    assert "exists; use --rotate" in capsys.readouterr().err
    old = load_secrets(str(secrets))
    assert main(["srs", "genkey", "--rotate", str(secrets)]) == 0
    assert load_secrets(str(secrets))[1:] == old


def test_forward_and_reverse(setup, capsys):
    conf, secrets = setup
    capsys.readouterr()
    assert main(["srs", "forward", "alice@example.com", "-c", str(conf)]) == 0
    srs = capsys.readouterr().out.strip()
    keys = SrsKeys(load_secrets(str(secrets)))
    assert srs == forward("alice@example.com", "srs.example.net", keys, time.time())
    assert main(["srs", "reverse", srs, "-c", str(conf)]) == 0
    assert capsys.readouterr().out.strip() == "alice@example.com"


@pytest.mark.parametrize("address,message", [
    ("SRS0=AAAA=AA=example.com=bob@srs.example.net", "bad-hash: SRS signature does not match"),
    ("bob@srs.example.net", "not-srs"),
    ("SRS0=AAAA@srs.example.net", "malformed"),
])
def test_reverse_refusals_exit_1_with_the_reason(setup, capsys, address, message):
    conf, _ = setup
    assert main(["srs", "reverse", address, "-c", str(conf)]) == 1
    assert message in capsys.readouterr().err


def test_forward_of_an_unusable_address(setup, capsys):
    conf, _ = setup
    assert main(["srs", "forward", "not an address", "-c", str(conf)]) == 1
    assert "malformed" in capsys.readouterr().err


def test_without_srs_domain(tmp_path, capsys):
    conf = tmp_path / "plain.conf"
    conf.write_text("mode = header-only\n")
    assert main(["srs", "forward", "a@example.com", "-c", str(conf)]) == 2
    assert "srs_domain is not set" in capsys.readouterr().err


def test_check_config_reports_srs(setup, capsys):
    conf, secrets = setup
    assert main(["--check-config", "-c", str(conf)]) == 0
    assert "# SRS: 1 secret(s), 0 forwarded address pattern(s)" in capsys.readouterr().out
    os.chmod(secrets, 0o644)
    assert main(["--check-config", "-c", str(conf)]) == 2
    assert "accessible by others" in capsys.readouterr().err


def test_report_and_explain_are_commands(tmp_path, capsys):
    log = tmp_path / "mail.log"
    log.write_text("Nov 23 16:02:07 mx spfmilter[1]: Pass; identity=helo; client-ip=192.0.2.7; helo=h.example; "
                   "envelope-from=a@fail.example; receiver=mx.test; mechanism=a; action=would-reject\n"
                   "Nov 23 16:02:07 mx spfmilter[1]: Fail; identity=mailfrom; client-ip=192.0.2.7; helo=h.example; "
                   "envelope-from=a@fail.example; receiver=mx.test; mechanism=-all; action=would-reject; "
                   "reply=\"550 5.7.23 no\"\n")
    assert main(["report", str(log)]) == 0
    out = capsys.readouterr().out
    assert "fail.example" in out and "messages checked" in out
    assert main(["report", str(tmp_path / "missing.log")]) == 2
    assert main(["explain", "--ip", "not-an-ip", "--helo", "h", "--sender", "a@b.example",
                 "-c", "/dev/null"]) == 2


@pytest.mark.parametrize("exclude", ["partner.example", ".example"])
def test_forward_leaves_an_excluded_sender_as_it_is(setup, capsys, exclude):
    """``srs forward`` prints what the milter sends such mail with: the address unchanged (it used
    to rewrite it), and says why on stderr."""
    conf, secrets = setup
    conf.write_text(conf.read_text() + f"srs_exclude_domains = {exclude}\n")
    capsys.readouterr()
    assert main(["srs", "forward", "alice@partner.example", "-c", str(conf)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "alice@partner.example"
    assert "not rewritten: partner.example is in srs_exclude_domains" in out.err
    assert main(["srs", "forward", "alice@other.test", "-c", str(conf)]) == 0  # others are rewritten
    keys = SrsKeys(load_secrets(str(secrets)))
    assert capsys.readouterr().out.strip() == forward("alice@other.test", "srs.example.net", keys, time.time())


def test_check_config_checks_where_the_socketmap_goes(setup, capsys):
    conf, _ = setup
    text = conf.read_text()
    conf.write_text(text + f"srs_socketmap = unix:{conf.parent}/missing/srs.sock\n")
    assert main(["--check-config", "-c", str(conf)]) == 2
    assert f"srs_socketmap unix:{conf.parent}/missing/srs.sock: directory {conf.parent}/missing: " \
           "No such file or directory" in capsys.readouterr().err
    conf.write_text(text + f"srs_socketmap = unix:{conf.parent}/srs.sock\n")
    assert main(["--check-config", "-c", str(conf)]) == 0
    assert f"srs_socketmap = unix:{conf.parent}/srs.sock" in capsys.readouterr().out
