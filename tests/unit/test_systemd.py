"""The shipped systemd unit passes `systemd-analyze verify` (with ExecStart pointed at this checkout)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "spfmilter.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verifies(tmp_path):
    spfmilter = Path(sys.executable).with_name("spfmilter")
    assert spfmilter.exists(), "the console script is installed next to the venv's python"
    text = UNIT.read_text().replace("/usr/sbin/spfmilter", str(spfmilter))
    unit = tmp_path / "spfmilter.service"
    unit.write_text(text)
    # Documentation=man:... is checked by running man: offer this checkout's pages
    for page in ("spfmilter.8", "spfmilter.conf.5"):
        section = tmp_path / "man" / f"man{page[-1]}"
        section.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "man" / page, section / page)
    env = dict(os.environ, MANPATH=str(tmp_path / "man"))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          env=env)
    problems = [line for line in proc.stderr.splitlines()
                if "spfmilter.service" in line and "Unknown user" not in line and "spfmilter" in line]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_unit_has_the_usual_hardening_and_runs_as_its_own_user():
    text = UNIT.read_text()
    for directive in ("User=spfmilter", "NoNewPrivileges=yes", "ProtectSystem=strict", "RuntimeDirectory=spfmilter",
                      "CapabilityBoundingSet=", "PrivateTmp=yes", "ExecStart=/usr/sbin/spfmilter -c "):
        assert directive in text
    sysusers = (ROOT / "systemd" / "spfmilter.sysusers").read_text()
    assert "u spfmilter " in sysusers


def directives(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in text.splitlines() if "=" in line and not line.startswith("#")]


def test_unit_starts_the_packaged_program_and_needs_no_mta_group():
    """/usr/sbin/spfmilter is what the Debian package installs; no MTA's group may be required
    (a Sendmail host has no postfix group: systemd would refuse to start the unit)."""
    found = directives(UNIT.read_text())
    commands = [value for key, value in found if key in ("ExecStart", "ExecReload")]
    assert [c.split()[0] for c in commands] == ["/usr/sbin/spfmilter", "/usr/sbin/spfmilter", "/bin/kill"]
    assert not [value for key, value in found if key == "SupplementaryGroups"]
    assert ("Group", "spfmilter") in found


def test_unit_orders_before_every_mta_unit_and_logs_to_the_mail_facility():
    found = dict(directives(UNIT.read_text()))
    # postfix@-.service is the unit Debian's Postfix runs its default instance in
    assert set(found["Before"].split()) >= {"postfix.service", "postfix@-.service", "sendmail.service"}
    assert found["SyslogFacility"] == "mail"
    assert found["SyslogIdentifier"] == "spfmilter"


def test_socket_group_chown_is_not_filtered_out():
    """SystemCallFilter=~@privileged takes @chown away; socket_group needs it (SIGSYS otherwise)."""
    filters = [value for key, value in directives(UNIT.read_text()) if key == "SystemCallFilter"]
    denied = [i for i, value in enumerate(filters) if value.startswith("~") and "@privileged" in value]
    allowed = [i for i, value in enumerate(filters) if not value.startswith("~") and "@chown" in value.split()]
    assert denied and allowed and allowed[-1] > denied[-1], filters


def test_tmpfiles_line_needs_no_postfix_group_unless_switched_on():
    """The shipped tmpfiles.d file creates nothing on a host without Postfix (its line is a comment
    to switch on for a unix socket in Postfix's chroot)."""
    lines = (ROOT / "systemd" / "spfmilter.tmpfiles").read_text().splitlines()
    assert not [line for line in lines if line.strip() and not line.startswith("#")]
    assert "#d /var/spool/postfix/spfmilter 0750 spfmilter postfix -" in lines
