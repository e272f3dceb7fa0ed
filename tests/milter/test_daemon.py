"""Daemon behaviour: privilege drop after binding, unix socket mode and group, pid file."""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from tests.milter.test_sessions import ar_results, run, zones

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")


@pytest.fixture(scope="module")
def world(dns_server):
    zones(dns_server)
    return dns_server


def _ids(pid: int) -> tuple[list[int], list[int]]:
    with open(f"/proc/{pid}/status") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return [int(x) for x in fields["Uid"].split()], [int(x) for x in fields["Gid"].split()]


def test_binds_then_drops_privileges_with_socket_mode_group_and_pid_file(start_milter, world, tmp_path):
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrnam("nogroup")
    # like systemd's RuntimeDirectory: owned by the daemon's user, reachable from /
    base = tempfile.mkdtemp(prefix="spfmilter-run-")
    os.chmod(base, 0o755)
    run_dir = Path(base) / "run"
    run_dir.mkdir()
    os.chown(run_dir, nobody.pw_uid, nogroup.gr_gid)
    pid_file = run_dir / "spfmilter.pid"
    milter = start_milter(f"user = nobody\nsocket_group = nogroup\nsocket_mode = 0660\npid_file = {pid_file}",
                          fresh=True)
    uids, gids = _ids(milter.proc.pid)
    assert uids == [nobody.pw_uid] * 4 and gids == [nogroup.gr_gid] * 4  # real, effective, saved, fs
    info = os.stat(milter.addr)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nogroup.gr_gid)
    assert pid_file.read_text() == f"{milter.proc.pid}\n"
    # the unprivileged process still serves, and cannot write its own configuration
    _, mods, _ = run(milter, sender="<a@fail.example>")
    assert ar_results(mods)["mailfrom"][0] == "fail"
    assert "running as user nobody" in milter.full_log()
    assert milter.stop() == 0
    assert not pid_file.exists()
    shutil.rmtree(base)


def test_unknown_user_is_a_clear_startup_error(tmp_path, dns_server):
    import subprocess
    import sys

    from tests.conftest import ROOT

    conf = tmp_path / "c.conf"
    conf.write_text(f"socket = unix:{tmp_path}/m.sock\nuser = no-such-user-here\n"
                    f"dns_servers = 127.0.0.1:{dns_server.port}\n")
    proc = subprocess.run([sys.executable, "-m", "spfmilter", "-c", str(conf)], capture_output=True, text=True,
                          timeout=60, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 1
    assert "cannot start" in proc.stderr and "no-such-user-here" in proc.stderr
