"""The wheel and sdist pip users get carry the LICENSE (GPL-3.0-or-later, setup.cfg license_files).

Built with Debian's python3 and its build/setuptools/wheel (what ./dev.sh deb installs), from a
copy of the checkout's files, without network access (--no-isolation).
"""
from __future__ import annotations

import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _can_build() -> bool:
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", "import build, setuptools, wheel"], capture_output=True,
                              timeout=60).returncode == 0
    except OSError:
        return False


@pytest.mark.package
@pytest.mark.skipif(not _can_build(), reason="Debian's python3-build/-setuptools/-wheel are not installed "
                                             "(./dev.sh install installs them)")
def test_wheel_and_sdist_include_the_license(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True, timeout=60).stdout.split(b"\0")
    for name in filter(None, files):
        path = ROOT / name.decode()
        if path.is_file() and not path.is_symlink():
            (source / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            (source / name.decode()).write_bytes(path.read_bytes())
    out = tmp_path / "dist"
    proc = subprocess.run([SYSTEM_PYTHON, "-m", "build", "--no-isolation", "-o", str(out), str(source)],
                          capture_output=True, text=True, timeout=300, env={"PATH": DEBIAN_PATH, "LANG": "C.UTF-8"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    license_text = (ROOT / "LICENSE").read_bytes()
    assert b"GNU GENERAL PUBLIC LICENSE" in license_text and b"Version 3, 29 June 2007" in license_text
    [wheel] = out.glob("spfmilter-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        [member] = [n for n in archive.namelist() if n.endswith(".dist-info/LICENSE")]
        assert archive.read(member) == license_text
        metadata = archive.read(member.replace("LICENSE", "METADATA")).decode()
        assert "License: GPL-3.0-or-later" in metadata
    [sdist] = out.glob("spfmilter-*.tar.gz")
    with tarfile.open(sdist) as archive:
        [member] = [m for m in archive.getmembers() if m.name.endswith("/LICENSE") and m.name.count("/") == 1]
        assert archive.extractfile(member).read() == license_text
