"""Daemon behaviour: privilege drop after binding, unix socket mode and group, pid file."""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import stat
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.milterproc import ROOT, launch_milter
from tests.support.sessions import CLIENT_IP, ar_results, run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")


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

    conf = tmp_path / "c.conf"
    conf.write_text(f"socket = unix:{tmp_path}/m.sock\nuser = no-such-user-here\n"
                    f"dns_servers = 127.0.0.1:{dns_server.port}\n")
    proc = subprocess.run([sys.executable, "-m", "spfmilter", "-c", str(conf)], capture_output=True, text=True,
                          timeout=60, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 1
    assert "cannot start" in proc.stderr and "no-such-user-here" in proc.stderr


def test_sighup_reloads_for_new_connections_and_keeps_open_ones(start_milter, world, request):
    """New connections get the new configuration; a session in flight finishes on the old one.

    Runs as nobody, where libmilter would unlink the socket path if the old worker stopped
    through libmilter: the path must still be there afterwards.
    """
    from tests.support.procs import children

    nobody = pwd.getpwnam("nobody")
    base = tempfile.mkdtemp(prefix="spfmilter-reload-")
    os.chmod(base, 0o755)
    run_dir = Path(base) / "run"
    run_dir.mkdir()
    os.chown(run_dir, nobody.pw_uid, nobody.pw_gid)
    # the configuration must stay readable by the daemon's user for a reload, as
    # /etc/spfmilter/spfmilter.conf (root:spfmilter 0640) is in production
    milter = launch_milter(run_dir, "m", "user = nobody", world.port)
    opened = []

    def cleanup():  # also when an assertion fails half-way
        for client in opened:
            client.close()
        if milter.proc.poll() is None:
            milter.proc.kill()
        milter.proc.wait()
        shutil.rmtree(base, ignore_errors=True)

    request.addfinalizer(cleanup)
    sock = Path(milter.addr)
    config_text = milter.config_path.read_text()
    old_workers = children(milter.proc.pid)
    assert len(old_workers) == 1
    # a session in flight on the old configuration
    client = milter.client(timeout=5)
    opened.append(client)
    client.connect(f"[{CLIENT_IP}]", CLIENT_IP, port=40000, family="4")
    client.helo("helo.example")
    client.mail("<a@fail.example>")
    # new configuration: both header types
    milter.config_path.write_text(config_text + "header_type = both\n")
    os.kill(milter.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "reloaded" not in milter.full_log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reloaded" in milter.full_log()
    _, mods, _ = run(milter, sender="<a@pass.example>")
    assert sorted(m[2] for m in mods) == ["Authentication-Results", "Received-SPF", "Received-SPF"]
    # the old session completes with the old configuration
    client.rcpt("<b@mx.test>")
    client.data()
    client.eoh()
    reply, mods = client.eom()
    client.quit()
    assert reply.action == "continue" and [m[2] for m in mods] == ["Authentication-Results"]
    # the old worker leaves; the socket path still works afterwards
    while old_workers[0] in children(milter.proc.pid) and time.monotonic() < deadline + 20:
        time.sleep(0.05)
    assert old_workers[0] not in children(milter.proc.pid)
    assert sock.exists()
    _, mods, _ = run(milter, sender="<a@pass.example>")
    assert len(mods) == 3
    assert milter.stop() == 0
    assert "Traceback" not in milter.full_log()
    shutil.rmtree(base)


def test_sighup_with_a_broken_configuration_keeps_the_old_one(start_milter, world):
    milter = start_milter("header_type = both", fresh=True)
    good = milter.config_path.read_text()
    milter.config_path.write_text(good + "no_such_key = 1\n")
    os.kill(milter.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "reload refused" not in milter.full_log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "unknown key 'no_such_key'" in milter.full_log()
    _, mods, _ = run(milter, sender="<a@pass.example>")
    assert len(mods) == 3  # still both header types
    assert milter.stop() == 0


def _start_as_root(tmp_path, extra: str, dns_server):
    import subprocess
    import sys

    conf = tmp_path / "c.conf"
    conf.write_text(f"socket = unix:{tmp_path}/m.sock\nuser = nobody\ndns_servers = 127.0.0.1:{dns_server.port}\n"
                    + extra)
    try:
        return subprocess.run([sys.executable, "-m", "spfmilter", "-c", str(conf)], capture_output=True,
                              text=True, timeout=60, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    except subprocess.TimeoutExpired as exc:  # it started (and has been killed): it did not refuse
        pytest.fail(f"the daemon started instead of refusing: {exc.stderr}")


def _plant_victim(tmp_path) -> tuple[Path, os.stat_result]:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o600)
    return victim, os.stat(victim)


def _assert_untouched(victim: Path, before: os.stat_result) -> None:
    after = os.stat(victim)
    assert victim.read_text() == "precious\n"
    assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid, before.st_gid)


def test_a_symlink_at_the_pid_file_path_is_refused_not_written_through(tmp_path, dns_server):
    victim, before = _plant_victim(tmp_path)
    pid_file = tmp_path / "m.pid"
    pid_file.symlink_to(victim)
    proc = _start_as_root(tmp_path, f"pid_file = {pid_file}\n", dns_server)
    assert proc.returncode == 1, proc.stderr
    assert f"cannot start: pid file {pid_file} is a symbolic link" in proc.stderr
    _assert_untouched(victim, before)
    assert pid_file.is_symlink() and not (tmp_path / "m.sock").exists()


def test_a_symlink_at_the_socket_path_is_refused_not_chowned(tmp_path, dns_server):
    victim, before = _plant_victim(tmp_path)
    (tmp_path / "m.sock").symlink_to(victim)
    proc = _start_as_root(tmp_path, "socket_group = nogroup\nsocket_mode = 0666\n", dns_server)
    assert proc.returncode == 1, proc.stderr
    assert f"cannot listen on unix:{tmp_path}/m.sock: {tmp_path}/m.sock is a symbolic link" in proc.stderr
    _assert_untouched(victim, before)


def test_a_hard_link_at_the_pid_file_path_is_replaced_not_written_through(start_milter, world, tmp_path):
    victim, before = _plant_victim(tmp_path)
    pid_file = tmp_path / "m.pid"
    os.link(victim, pid_file)
    milter = start_milter(f"user = nobody\npid_file = {pid_file}", fresh=True)
    assert pid_file.read_text() == f"{milter.proc.pid}\n"
    _assert_untouched(victim, before)
    assert milter.stop() == 0
