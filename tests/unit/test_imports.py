"""Import boundaries: the pure side never pulls in pymilter (libmilter)."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["spfmilter.checkcmd", "spfmilter.explain", "spfmilter.service",
                                    "spfmilter.policy", "spfmilter.logreport"])
def test_check_explain_and_the_pure_modules_do_not_import_pymilter(module):
    code = f"import sys, {module}; print(sorted(m for m in ('Milter', 'milter') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_supervisor_with_srs_does_not_import_the_spf_machinery():
    """The main process loads the SRS policy before forking: it stays small (docs/PERFORMANCE.md)."""
    code = ("import sys, spfmilter.server, spfmilter.srspolicy, spfmilter.socketmapserver; "
            "print(sorted(m for m in ('spf', 'dns.resolver', 'authres', 'Milter') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['Milter']"  # pymilter: the supervisor opens the socket with it
