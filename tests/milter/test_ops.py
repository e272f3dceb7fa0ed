"""Operating the daemon: start-up errors that say why, --check-config's host checks, risky settings,
the command line on a closed pipe or a terminal, and, as root, what the privilege drop must not break
(removing the socket at exit, reading the SRS secrets on reload)."""
from __future__ import annotations

import grp
import os
import pty
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.milterproc import ROOT, RunningMilter
from tests.support.milterclient import wait_ready

ENV = dict(os.environ, PYTHONPATH=str(ROOT))
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")


def spfmilter(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spfmilter", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT), env=ENV, **kwargs)


@pytest.fixture
def busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def start_with(tmp_path, text: str):
    """Start the daemon on the configuration ``text`` (a DNS server nobody answers on); it must not get far."""
    conf = tmp_path / "c.conf"
    conf.write_text(text + "dns_servers = 127.0.0.1:9\n")
    return spfmilter("-c", str(conf))


def test_a_port_in_use_is_named_with_the_os_error(tmp_path, busy_port):
    proc = start_with(tmp_path, f"socket = inet:{busy_port}@127.0.0.1\n")
    assert proc.returncode == 1
    assert (f"cannot listen on inet:{busy_port}@127.0.0.1: 127.0.0.1 port {busy_port}: Address already in use"
            in proc.stderr), proc.stderr


def test_a_missing_socket_directory_is_named_with_the_os_error(tmp_path):
    proc = start_with(tmp_path, f"socket = unix:{tmp_path}/none/m.sock\n")
    assert proc.returncode == 1
    assert (f"cannot listen on unix:{tmp_path}/none/m.sock: directory {tmp_path}/none: No such file or directory"
            in proc.stderr), proc.stderr


def test_risky_settings_are_warned_at_start(tmp_path):
    """Warned before anything is opened (the missing directory stops this start right after)."""
    proc = start_with(tmp_path, f"socket = unix:{tmp_path}/none/m.sock\nsocket_mode = 0666\n"
                                "metrics_listen = 192.0.2.1:9899\n")
    assert proc.returncode == 1
    warnings = [line for line in proc.stderr.splitlines() if "WARNING: risky setting:" in line]
    assert len(warnings) == 2, proc.stderr
    assert "socket_mode 0666 lets every local user" in warnings[0]
    assert "metrics_listen 192.0.2.1:9899 is not on loopback" in warnings[1]


def test_check_config_checks_what_start_up_needs(tmp_path, busy_port):
    conf = tmp_path / "c.conf"
    for text, expected in [
        (f"socket = inet:{busy_port}@127.0.0.1\n",
         f"socket inet:{busy_port}@127.0.0.1: 127.0.0.1 port {busy_port}: Address already in use"),
        (f"socket = unix:{tmp_path}/none/m.sock\n",
         f"socket unix:{tmp_path}/none/m.sock: directory {tmp_path}/none: No such file or directory"),
        ("user = no-such-user-here\n", "user 'no-such-user-here' does not exist"),
        ("user = root\ngroup = no-such-group-here\n", "group 'no-such-group-here' does not exist"),
        ("socket_group = no-such-group-here\n", "socket_group: group 'no-such-group-here' does not exist"),
        (f"pid_file = {tmp_path}/none/m.pid\n", f"pid_file {tmp_path}/none/m.pid: no directory {tmp_path}/none"),
    ]:
        if "socket =" not in text:
            text += f"socket = unix:{tmp_path}/m.sock\n"
        conf.write_text(text)
        proc = spfmilter("--check-config", "-c", str(conf))
        assert proc.returncode == 2, (text, proc.stdout)
        assert proc.stderr.splitlines() == [f"spfmilter: {conf}: {expected}"], text
        assert "configuration OK" not in proc.stdout
    conf.write_text(f"socket = unix:{tmp_path}/m.sock\nsocket_mode = 0666\n")
    proc = spfmilter("--check-config", "-c", str(conf))
    assert proc.returncode == 0 and "configuration OK" in proc.stdout
    assert "spfmilter: warning: socket_mode 0666 lets every local user" in proc.stderr
    assert not (tmp_path / "m.sock").exists()


@pytest.mark.parametrize("inet", [False, True], ids=["unix", "inet"])
def test_check_config_beside_the_running_milter_is_no_error(start_milter, inet):
    """Checked before a reload, the running daemon holds the port (or path): a warning, exit 0."""
    milter = start_milter(inet=inet)
    text = milter.config_path.read_text()
    proc = spfmilter("--check-config", "-c", str(milter.config_path))
    assert proc.returncode == 0, proc.stderr
    assert "a milter already listens there" in proc.stderr
    # the same port held by something that is no milter: an error
    if inet:
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            other.listen()
            port = other.getsockname()[1]
            conf = milter.config_path.with_name("other.conf")
            conf.write_text(text.replace(f"inet:{milter.addr[1]}@", f"inet:{port}@"))
            proc = spfmilter("--check-config", "-c", str(conf))
        assert proc.returncode == 2 and "Address already in use" in proc.stderr


def test_a_closed_pipe_on_stdout_ends_quietly(tmp_path):
    """``spfmilter --check-config | head -1``: the reader is gone before we write (deterministic)."""
    conf = tmp_path / "c.conf"
    conf.write_text(f"socket = unix:{tmp_path}/m.sock\n")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        for args in (["--check-config", "-c", str(conf)], ["report", os.devnull], ["--help"]):
            proc = subprocess.run([sys.executable, "-m", "spfmilter", *args], stdout=write_end,
                                  stderr=subprocess.PIPE, text=True, timeout=60, cwd=str(ROOT), env=ENV)
            assert proc.stderr == "", (args, proc.stderr)
            # like a shell tool killed by SIGPIPE (argparse's --help ignores the error itself: 0)
            assert proc.returncode == (0 if args == ["--help"] else 128 + signal.SIGPIPE), args
    finally:
        os.close(write_end)


def test_report_on_a_terminal_says_what_it_expects():
    primary, secondary = pty.openpty()
    try:
        proc = spfmilter("report", stdin=secondary, timeout=30)
    finally:
        os.close(secondary)
        os.close(primary)
    assert proc.returncode == 2
    assert "standard input is a terminal" in proc.stderr and "--journal" in proc.stderr


def test_report_journal_runs_journalctl(tmp_path):
    """--journal reads journalctl's short-iso output (a stand-in journalctl on PATH records its
    arguments; the real one may have no journal here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fixture = tmp_path / "journal.txt"
    fixture.write_text(
        "-- Boot 0123456789abcdef --\n"
        "2026-12-04T10:00:00+0100 mx spfmilter[123]: spfmilter 0.1 listening on inet:8890@127.0.0.1\n"
        "2026-12-04T10:00:01+0100 mx spfmilter[123]: Pass; identity=helo; client-ip=192.0.2.7; "
        "helo=mx.partner.example; envelope-from=a@partner.example; receiver=mx.test; action=would-reject\n"
        "2026-12-04T10:00:01+0100 mx spfmilter[123]: Fail; identity=mailfrom; client-ip=192.0.2.7; "
        "helo=mx.partner.example; envelope-from=a@partner.example; receiver=mx.test; action=would-reject; "
        "reply=\"550 5.7.23 x\"\n")
    journalctl = bin_dir / "journalctl"
    journalctl.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\ncat {fixture}\n")
    journalctl.chmod(0o755)
    env = dict(ENV, PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "spfmilter", "report", "--journal", "--since", "2026-12-01"],
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT), env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "argv").read_text() == "-u spfmilter -o short-iso --no-pager --since 2026-12-01\n"
    assert "partner.example" in proc.stdout
    assert ["messages", "checked", "1"] in [line.split() for line in proc.stdout.splitlines()]
    journalctl.write_text("#!/bin/sh\necho 'No journal files were found.' >&2\nexit 1\n")
    proc = subprocess.run([sys.executable, "-m", "spfmilter", "report", "--journal"],
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT), env=env)
    assert proc.returncode == 2 and "exited with status 1" in proc.stderr


# ------------------------------------------------------------------ as root, with ``user`` set


def _start(conf: Path, log_path: Path, addr: str) -> RunningMilter:
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "spfmilter", "-c", str(conf)], stdout=log_file,
                                stderr=subprocess.STDOUT, env=ENV, cwd=str(ROOT))
    milter = RunningMilter(proc, addr, conf, log_path)
    try:
        wait_ready(addr, timeout=20.0, proc=proc)
    except Exception:
        milter.stop()
        raise AssertionError(f"milter did not start:\n{milter.full_log()}")
    return milter


@pytest.fixture
def root_dir():
    """A directory root made by hand (0755 root:root): the daemon, once nobody, cannot write it."""
    base = Path(tempfile.mkdtemp(prefix="spfmilter-ops-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base)


@needs_root
def test_stopping_removes_socket_keep_link_and_pid_file_from_a_directory_the_user_cannot_write(root_dir):
    sock, pid_file = root_dir / "s.sock", root_dir / "s.pid"
    conf = root_dir / "c.conf"
    conf.write_text(f"socket = unix:{sock}\nuser = nobody\npid_file = {pid_file}\ndns_servers = 127.0.0.1:9\n")
    milter = _start(conf, root_dir / "m.log", str(sock))
    assert stat.S_ISSOCK(os.lstat(sock).st_mode) and (root_dir / "s.sock.keep").exists() and pid_file.exists()
    assert milter.stop() == 0
    assert sorted(p.name for p in root_dir.iterdir()) == ["c.conf", "m.log"], milter.full_log()
    assert "Traceback" not in milter.full_log()


@needs_root
def test_genkey_gives_the_secrets_to_the_daemons_group_so_a_reload_reads_them(root_dir, world):
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    secrets = root_dir / "srs-secrets"
    sock = root_dir / "s.sock"
    conf = root_dir / "c.conf"
    conf.write_text(f"socket = unix:{sock}\nuser = nobody\nsrs_domain = srs.mx.test\nsrs_secrets_file = {secrets}\n"
                    f"dns_servers = 127.0.0.1:{world.port}\n")
    proc = spfmilter("srs", "genkey", "-c", str(conf), str(secrets))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wrote a new secret to {secrets} (mode 0640, group {group})\n"
    info = os.stat(secrets)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, nobody.pw_gid, 0o640)
    check = spfmilter("--check-config", "-c", str(conf))
    assert check.returncode == 0, check.stderr
    milter = _start(conf, root_dir / "m.log", str(sock))
    try:
        os.kill(milter.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not any(word in milter.full_log() for word in ("reloaded", "reload refused")):
            assert time.monotonic() < deadline, milter.full_log()
            time.sleep(0.05)
        assert "reload refused" not in milter.full_log()
    finally:
        assert milter.stop() == 0
    # a file only root can read: --check-config says the reload would fail
    os.chown(secrets, 0, 0)
    os.chmod(secrets, 0o600)
    check = spfmilter("--check-config", "-c", str(conf))
    assert check.returncode == 2
    assert f"srs_secrets_file {secrets}: not readable by user nobody (owner root, mode 0600)" in check.stderr
