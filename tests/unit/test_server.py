"""The listener tuning done on libmilter's socket, tested on sockets we own."""
from __future__ import annotations

import os
import socket

from spfmilter.config import SocketSpec
from spfmilter.server import find_listener, resolve_workers, tune_listener


def test_tune_listener_sets_nodelay_and_nonblocking_on_the_inet_listener():
    with socket.socket() as other, socket.socket() as listener:
        other.bind(("127.0.0.1", 0))
        other.listen()  # another listener in the process must be left alone
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        tune_listener(SocketSpec("inet", "127.0.0.1", listener.getsockname()[1]))
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
        tune_listener(SocketSpec("unix", path))
        assert os.get_blocking(listener.fileno()) is False


def test_find_listener_ignores_connected_and_unrelated_sockets(tmp_path):
    with socket.socket() as unbound:
        assert find_listener(SocketSpec("inet", "127.0.0.1", 1)) is None
        assert find_listener(SocketSpec("unix", str(tmp_path / "none.sock"))) is None
        assert unbound.fileno() >= 0


def test_resolve_workers():
    assert resolve_workers(3) == 3
    assert 1 <= resolve_workers(0) <= 8
