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
    text = UNIT.read_text().replace("/usr/bin/spfmilter", str(spfmilter))
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
                      "CapabilityBoundingSet=", "PrivateTmp=yes", "ExecStart=/usr/bin/spfmilter -c "):
        assert directive in text
    sysusers = (ROOT / "systemd" / "spfmilter.sysusers").read_text()
    assert "u spfmilter " in sysusers
