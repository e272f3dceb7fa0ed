"""The SRS socketmap listener: sockets and threads around :mod:`spfmilter.socketmap`.

The supervisor opens the listening socket (before it drops privileges, like the milter's)
and runs the table in a child process of its own, forked like a worker with the SRS policy
the supervisor loaded; a reload forks a new one with the new policy and the old one
finishes its connections.  Inside that process, one thread accepts and one thread serves
each connection with blocking I/O: Postfix's cleanup processes each keep a connection open
and send one query at a time.

Limits: at most :data:`MAX_CONNECTIONS` connections (more are closed at once, as PostSRSd
does); a connection idle for :data:`IDLE_TIMEOUT` is closed; a request once begun must be
complete within :data:`REQUEST_TIMEOUT`; requests longer than socketmap.MAX_REQUEST end the
connection with ``PERM``.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import threading
import time
from typing import Callable, Optional

from .config import SocketSpec
from .socketmap import MapReply, Session, Status
from .text import log_address, log_value

log = logging.getLogger("spfmilter")

IDLE_TIMEOUT = 30.0  # PostSRSd's keep-alive; Postfix itself drops an idle connection after 10 s
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 100
POLL = 0.25  # how soon a connection thread notices a stop


def open_listener(spec: SocketSpec) -> socket.socket:
    """A listening socket for ``spec``, non-blocking (shared by the old and new table process
    across a reload).  A unix path is taken over only from a dead socket: ValueError for
    anything else there (a file, a link, a live server)."""
    if spec.family == "unix":
        _clear_stale(spec.address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: object = spec.address
    else:
        family = socket.AF_INET6 if spec.family == "inet6" else socket.AF_INET
        address = socket.getaddrinfo(spec.address, spec.port, family, socket.SOCK_STREAM)[0][4]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _clear_stale(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a socket"
        raise ValueError(f"{path} is {kind}; refusing to replace it (remove it if it is stale)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
        else:
            raise ValueError(f"{path}: a server already listens there (another spfmilter or PostSRSd?)")
    os.unlink(path)


def remove_listener(spec: Optional[SocketSpec], inode: Optional[tuple]) -> None:
    """At exit: remove our unix socket, if it is still the one we bound."""
    if spec is None or spec.family != "unix" or inode is None:
        return
    try:
        info = os.lstat(spec.address)
        if (info.st_dev, info.st_ino) == inode:
            os.unlink(spec.address)
    except OSError:
        pass


def log_reply(request: bytes, reply: MapReply) -> None:
    name, _, key = request.partition(b" ")
    address = log_address(key.decode("utf-8", "replace"))
    if reply.status is Status.PERM:
        log.warning("srs socketmap: %s; query=%s", reply.text, log_value(request.decode("utf-8", "replace")))
    elif reply.status is Status.OK and name == b"forward":
        log.info("srs=forward; via=socketmap; envelope-from=%s; to=%s", address, log_address(reply.text))
    elif reply.status is Status.OK:
        log.info("srs=reverse; via=socketmap; rcpt=%s; to=%s", address, log_address(reply.text))
    elif reply.log:
        log.info("srs=%s; via=socketmap; address=%s; reason=%s", "not-rewritten" if name == b"forward"
                 else "not-reversed", address, log_value(reply.log))
    else:
        log.debug("srs socketmap %s %s: %s", name.decode("ascii", "replace"), address, reply.text)


class SocketmapServer:
    """Serves the table on ``listener`` with ``policy`` until :meth:`stop`."""

    def __init__(self, listener: socket.socket, policy, *, idle_timeout: float = IDLE_TIMEOUT,
                 request_timeout: float = REQUEST_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                 clock: Callable[[], float] = time.time):
        self.listener = listener
        self.policy = policy
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.clock = clock
        self._stopping = threading.Event()
        self._lock = threading.Condition()
        self._open = 0
        self._acceptor: Optional[threading.Thread] = None

    def start(self) -> None:
        self._acceptor = threading.Thread(target=self._accept_loop, name="spfmilter-socketmap", daemon=True)
        self._acceptor.start()

    def stop(self, timeout: float) -> bool:
        """Stop accepting, let requests in progress finish; False if connections were still open."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        self.listener.close()
        with self._lock:
            return self._lock.wait_for(lambda: self._open == 0, timeout)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                readable, _, _ = select.select([self.listener], [], [], POLL)
                if not readable:
                    continue
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another table process took it (during a reload)
            except OSError as exc:
                if self._stopping.is_set():
                    return
                log.error("srs socketmap: accept failed: %s", exc)
                time.sleep(POLL)  # e.g. out of file descriptors: do not spin
                continue
            with self._lock:
                if self._open >= self.max_connections:
                    log.warning("srs socketmap: %d connections open; closing a new one", self._open)
                    conn.close()
                    continue
                self._open += 1
            threading.Thread(target=self._serve, args=(conn,), name="spfmilter-socketmap-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.serve_connection(conn)
        except Exception:  # noqa: BLE001 - one connection's fault never ends the table
            log.exception("srs socketmap: internal error")
        finally:
            conn.close()
            with self._lock:
                self._open -= 1
                self._lock.notify_all()

    def serve_connection(self, conn: socket.socket) -> None:
        """Answer the requests on ``conn`` until the client closes it, it idles, or we stop."""
        session = Session()
        conn.settimeout(POLL)
        idle_since = time.monotonic()
        begun: Optional[float] = None  # when the request now arriving began
        while True:
            try:
                data = conn.recv(4096)
            except socket.timeout:
                # only here, with nothing waiting: a request already sent is answered, even one
                # that reached a connection accepted just as the stop began
                now = time.monotonic()
                if begun is None and (self._stopping.is_set() or now - idle_since > self.idle_timeout):
                    return
                if self._too_slow(begun):
                    return
                continue
            except OSError:
                return
            if not data:
                return
            replies = session.receive(data, self.policy, self.clock())
            conn.settimeout(self.request_timeout)  # for sending the replies
            for request, reply in replies:
                log_reply(request, reply)
                conn.sendall(reply.encode())
                if reply.close:
                    return
            conn.settimeout(POLL)
            idle_since = time.monotonic()
            begun = (begun or idle_since) if session.pending else None
            if self._too_slow(begun):  # a request trickling in, a byte at a time
                return

    def _too_slow(self, begun: Optional[float]) -> bool:
        if begun is None or time.monotonic() - begun <= self.request_timeout:
            return False
        log.warning("srs socketmap: a request took longer than %g s to arrive; closing the connection",
                    self.request_timeout)
        return True
