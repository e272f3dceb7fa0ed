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
