"""./dev.sh run is the developer's way to run the milter: it installs only what running needs."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEV_SH = (ROOT / "dev.sh").read_text()
MTAS = {"postfix", "sendmail", "sendmail-bin", "exim4", "exim4-daemon-light", "opensmtpd", "nullmailer"}


def packages(name: str) -> set[str]:
    words = set(re.search(rf'^{name}="([^"]*)"$', DEV_SH, re.MULTILINE).group(1).split())
    if "$RUN_PACKAGES" in words:
        words = (words - {"$RUN_PACKAGES"}) | packages("RUN_PACKAGES")
    return words


def branch(command: str) -> str:
    return re.search(rf"^    {command}\)\n(.*?)\n        ;;", DEV_SH, re.MULTILINE | re.DOTALL).group(1)


def test_run_installs_no_mta_and_no_test_tools():
    assert not packages("RUN_PACKAGES") & MTAS  # Postfix would remove a Sendmail or Exim host's MTA
    run = branch("run")
    assert "install_packages $RUN_PACKAGES" in run
    assert re.search(r"^\s+install_venv$", run, re.MULTILINE)  # no "test" extra: no pytest, hypothesis, mypy
    assert "install_sendmail" not in run and "install_postsrsd" not in run


def test_the_tests_get_what_they_drive():
    assert packages("RUN_PACKAGES") <= packages("TEST_PACKAGES")
    assert "postfix" in packages("TEST_PACKAGES")
    assert "install_venv test" in branch("test")
