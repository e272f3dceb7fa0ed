"""The pure modules type-check: mypy, with the settings in setup.cfg's [mypy] section."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_pure_modules_type_check():
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--config-file", "setup.cfg"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found in 12 source files" in proc.stdout
