"""The listener handling done on libmilter's socket, tested on sockets we own."""
from __future__ import annotations

import grp
import os
import pwd
import select
import socket
import stat
import threading

import pytest

from spfmilter.config import SocketSpec, parse_text
from spfmilter.server import (Drainer, Sessions, check_socket_path, find_listener, make_keep_link,
                              prepare_socket_file, remove_pid_file, remove_socket_file, resolve_workers,
                              restore_socket_path, tune_listener, write_pid_file)


def test_tune_listener_sets_nodelay_and_nonblocking_on_the_inet_listener():
    with socket.socket() as other, socket.socket() as listener:
        other.bind(("127.0.0.1", 0))
        other.listen()  # another listener in the process must be left alone
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        spec = SocketSpec("inet", "127.0.0.1", listener.getsockname()[1])
        assert find_listener(spec) == listener.fileno()
        tune_listener(find_listener(spec), spec)
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert os.get_blocking(listener.fileno()) is False
        assert other.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert os.get_blocking(other.fileno()) is True
        # Linux copies TCP_NODELAY to the connections it accepts
        with socket.create_connection(listener.getsockname()) as client:
            client.sendall(b"x")
            accepted = None
            while accepted is None:
                try:
                    accepted, _ = listener.accept()
                except BlockingIOError:
                    continue
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_tune_listener_finds_a_unix_listener(tmp_path):
    path = str(tmp_path / "m.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        tune_listener(find_listener(SocketSpec("unix", path)), SocketSpec("unix", path))
        assert os.get_blocking(listener.fileno()) is False


def test_find_listener_ignores_connected_and_unrelated_sockets(tmp_path):
    with socket.socket() as unbound:
        assert find_listener(SocketSpec("inet", "127.0.0.1", 1)) is None
        assert find_listener(SocketSpec("unix", str(tmp_path / "none.sock"))) is None
        assert unbound.fileno() >= 0


def test_resolve_workers():
    assert resolve_workers(3) == 3
    assert 1 <= resolve_workers(0) <= 8


def test_stop_accepting_affects_only_this_reference_to_the_listener():
    """What a draining worker does: the shared listener keeps working for the others."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        other_process = listener.dup()  # stands for the same listener inherited by another worker
        drainer = Drainer(Sessions(), listener.fileno(), timeout=1)
        drainer.stop_accepting()
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
        with socket.create_connection(other_process.getsockname(), timeout=5):
            ready, _, _ = select.select([listener.fileno()], [], [], 0.2)
            assert ready == []  # libmilter's poll on the old number never fires again
            accepted, _ = other_process.accept()
            accepted.close()
        other_process.close()
        drainer.close()


def test_drain_waits_for_open_sessions_and_for_late_arrivals():
    sessions = Sessions()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        drainer = Drainer(sessions, listener.fileno(), timeout=10)
        sessions.opened()
        order = []

        def sessions_come_and_go():
            sessions.opened()  # one that was accepted just before the switch
            sessions.closed()
            order.append("first closed")
            sessions.closed()
            order.append("second closed")

        timer = threading.Timer(0.3, sessions_come_and_go)
        timer.start()
        assert drainer.drain() == 0
        drainer.close()
        timer.join()
        assert order == ["first closed", "second closed"] and sessions.count == 0


def test_drain_gives_up_after_its_timeout():
    sessions = Sessions()
    sessions.opened()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        drainer = Drainer(sessions, listener.fileno(), timeout=0.2)
        assert drainer.drain() == 1
        drainer.close()


def test_keep_link_restores_and_cleans_the_unix_socket_path(tmp_path):
    path = tmp_path / "m.sock"
    config = parse_text(f"socket = unix:{path}\n", "t.conf")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        keep = make_keep_link(config)
        assert keep and os.path.samefile(keep, path)
        os.unlink(path)  # what libmilter does when a worker stops by itself
        restore_socket_path(config, keep)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))  # the same listener, reachable again
        remove_socket_file(config, keep)
        assert not path.exists() and not os.path.exists(keep)


def test_remove_socket_file_leaves_a_newer_instances_socket_alone(tmp_path):
    path = tmp_path / "m.sock"
    config = parse_text(f"socket = unix:{path}\n", "t.conf")
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(path))
        keep = make_keep_link(config)
        os.unlink(path)
        with socket.socket(socket.AF_UNIX) as new:
            new.bind(str(path))
            remove_socket_file(config, keep)
            assert path.exists() and not os.path.exists(keep)


def test_reload_on_built_in_defaults_is_refused_not_reported_as_reloaded(caplog, monkeypatch):
    """With no configuration file there is nothing to read again: say so, start no workers."""
    from spfmilter.config import defaults
    from spfmilter.server import Supervisor

    supervisor = Supervisor(defaults(), listener=-1)
    supervisor.children = {4242: 0}  # stands for a worker; nothing is signalled (see _kill)
    spawned, signalled = [], []
    monkeypatch.setattr(supervisor, "_spawn_generation", lambda: spawned.append(True))
    monkeypatch.setattr("spfmilter.server._kill", lambda pid, sig: signalled.append(pid))
    with caplog.at_level("INFO", logger="spfmilter"):
        supervisor.reload()
    assert "reload refused: no configuration file" in caplog.text
    assert "reloaded" not in caplog.text
    assert spawned == [] and signalled == [] and supervisor.children == {4242: 0} and not supervisor.retiring


def test_reload_reads_a_relative_config_path_again(tmp_path, monkeypatch, caplog):
    from spfmilter.config import load
    from spfmilter.server import Supervisor

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.conf").write_text("authserv_id = old.example\n")
    supervisor = Supervisor(load("m.conf"), listener=-1)
    (tmp_path / "m.conf").write_text("authserv_id = new.example\n")
    monkeypatch.setattr(supervisor, "_spawn_generation", lambda: None)
    with caplog.at_level("INFO", logger="spfmilter"):
        supervisor.reload()
    assert supervisor.config.authserv_id == "new.example"
    assert "reloaded m.conf" in caplog.text


# --- no writing through links planted at the socket or pid file path (started as root) --------

def _victim(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o600)
    return victim, os.stat(victim)


def _unchanged(victim, before) -> bool:
    after = os.stat(victim)
    return (victim.read_text() == "precious\n" and stat.S_IMODE(after.st_mode) == 0o600
            and (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid))


def _owners_config() -> str:
    """As root: also hand the socket to nobody/nogroup (what a symlink must not redirect)."""
    return "user = nobody\nsocket_group = nogroup\n" if os.geteuid() == 0 else ""


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "other socket"])
def test_prepare_socket_file_refuses_a_path_that_is_no_longer_our_socket(tmp_path, plant):
    """The socket replaced between bind and chown/chmod: the planted file's target stays untouched."""
    path = tmp_path / "m.sock"
    config = parse_text(f"socket = unix:{path}\nsocket_mode = 0666\n{_owners_config()}", "t.conf")
    victim, before = _victim(tmp_path)
    with socket.socket(socket.AF_UNIX) as listener, socket.socket(socket.AF_UNIX) as other:
        listener.bind(str(path))
        os.unlink(path)
        if plant == "symlink":
            os.symlink(victim, path)
        elif plant == "hardlink":
            os.link(victim, path)
        else:  # another socket hard-linked in (two links: not the one our bind made)
            other.bind(str(tmp_path / "other.sock"))
            os.link(tmp_path / "other.sock", path)
            victim, before = tmp_path / "other.sock", os.stat(tmp_path / "other.sock")
        with pytest.raises(ValueError, match="no longer the socket just bound"):
            prepare_socket_file(config)
    if plant == "other socket":
        after = os.stat(victim)
        assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid, before.st_gid)
    else:
        assert _unchanged(victim, before)


def test_prepare_socket_file_sets_mode_and_owners_of_our_socket(tmp_path):
    path = tmp_path / "m.sock"
    config = parse_text(f"socket = unix:{path}\nsocket_mode = 0640\n{_owners_config()}", "t.conf")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        prepare_socket_file(config)
        info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o640
    if os.geteuid() == 0:
        assert (info.st_uid, info.st_gid) == (pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)


def test_check_socket_path_refuses_a_symlink_or_file_but_not_a_stale_socket(tmp_path):
    path = tmp_path / "m.sock"
    spec = SocketSpec("unix", str(path))
    check_socket_path(spec)  # nothing there
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))
    check_socket_path(spec)  # libmilter removes a stale socket
    os.unlink(path)
    os.symlink(tmp_path / "victim", path)
    with pytest.raises(ValueError, match="is a symbolic link; refusing to replace it"):
        check_socket_path(spec)
    os.unlink(path)
    path.write_text("x")
    with pytest.raises(ValueError, match="is not a socket; refusing to replace it"):
        check_socket_path(spec)


def test_write_pid_file_refuses_a_symlink(tmp_path):
    victim, before = _victim(tmp_path)
    pid_file = tmp_path / "m.pid"
    os.symlink(victim, pid_file)
    with pytest.raises(ValueError, match="is a symbolic link; refusing to write through it"):
        write_pid_file(str(pid_file))
    assert _unchanged(victim, before) and os.path.islink(pid_file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pid", "victim"]  # no temporary left


@pytest.mark.parametrize("plant", ["hardlink", "stale file", "nothing"])
def test_write_pid_file_replaces_a_hard_link_or_stale_file_without_touching_it(tmp_path, plant):
    victim, before = _victim(tmp_path)
    pid_file = tmp_path / "m.pid"
    if plant == "hardlink":
        os.link(victim, pid_file)
    elif plant == "stale file":
        pid_file.write_text("99999999\n")
    write_pid_file(str(pid_file))
    assert pid_file.read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE(os.lstat(pid_file).st_mode) == 0o644 and not os.path.islink(pid_file)
    assert _unchanged(victim, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pid", "victim"]
    remove_pid_file(str(pid_file))
    assert not pid_file.exists()
