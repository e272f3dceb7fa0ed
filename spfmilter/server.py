"""Owns libmilter: registers the callbacks, opens the socket, runs the loop, drains on exit.

libmilter keeps its callbacks and socket in process-wide state, so this module is
the only place that touches the ``milter`` extension module directly.

Process model: the main process (``Supervisor``) opens the socket, drops privileges
and forks workers that share the listener, each running libmilter's loop.  Signals
go to the main process.  It tells a worker to stop with ``DRAIN_SIGNAL``, which
libmilter does not know: the worker stops accepting, lets its sessions in flight
finish and exits.  libmilter's own stop (``smfi_stop``, its SIGTERM handling) is
not used for this, because once it is set libmilter no longer serves a session that
waits for its next command, so an in-flight message would get no answer.
"""
from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import signal
import socket
import stat
import sys
import threading
import time
from typing import Callable, Optional

import Milter
import milter

from . import __version__
from .config import Config, ConfigError, SocketSpec, load, replace
from .preflight import Identity, may_remove, probe_listen, risky_settings, runtime_identity

# The supervisor process imports only this, the config and pymilter; the SPF machinery
# (pyspf, dnspython, authres: ~15 MB) is imported in the workers, after the fork.

log = logging.getLogger("spfmilter")

DRAIN_TIMEOUT = 60.0  # longer than Postfix's default milter_content_timeout would wait anyway


class Sessions:
    """Counts connections in flight so shutdown can wait for them.

    ``opened``/``closed`` run for every connection, so they only take the lock and wake
    anyone only when someone waits (shutdown does, rarely)."""

    def __init__(self):
        self._count = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting = 0

    def opened(self) -> None:
        with self._lock:
            self._count += 1
            if self._waiting:
                self._changed.notify_all()

    def closed(self) -> None:
        with self._lock:
            self._count -= 1
            if self._waiting:
                self._changed.notify_all()

    @property
    def count(self) -> int:
        return self._count

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._lock:
            self._waiting += 1
            try:
                return self._changed.wait_for(predicate, timeout)
            finally:
                self._waiting -= 1

    def wait_idle(self, timeout: float) -> bool:
        return self._wait(lambda: self._count <= 0, timeout)

    def wait_busy(self, timeout: float) -> bool:
        """True as soon as a session is open; False if none opened within ``timeout``."""
        return self._wait(lambda: self._count > 0, timeout)


def register(factory: Callable[[], "Milter.Base"], sessions: Sessions) -> None:
    """Wire libmilter's callbacks to per-connection SpfMilter objects made by ``factory``.

    pymilter decodes the connect host name, the HELO name and header names as strict
    UTF-8 before any of our code runs; an undecodable one raises inside pymilter.  The
    exception policy CONTINUE keeps that from answering the MTA with pymilter's own
    451 at that stage; SpfMilter then notices what it did not get (a connect that never
    arrived is answered per ``on_error``; an unreadable HELO name is no domain anyway).
    """

    def opened(ctx):
        instance = factory()
        instance._setctx(ctx)
        sessions.opened()
        return instance

    def instance_of(ctx):
        instance = ctx.getpriv()
        # None: an MTA that does not negotiate, or a connect pymilter could not decode
        return opened(ctx) if instance is None else instance

    def close(ctx):
        instance = ctx.getpriv()
        if instance is None:
            return Milter.CONTINUE
        try:
            return instance.close()
        finally:
            instance._setctx(None)
            sessions.closed()

    milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.SETSYMLIST
                     | Milter.CHGFROM | Milter.ADDRCPT | Milter.DELRCPT)
    milter.set_exception_policy(Milter.CONTINUE)
    milter.set_connect_callback(lambda ctx, *args: instance_of(ctx).connect(*args))
    milter.set_helo_callback(lambda ctx, name: instance_of(ctx).hello(name))
    milter.set_envfrom_callback(lambda ctx, *args: instance_of(ctx).envfrom_bytes(*args))
    milter.set_envrcpt_callback(lambda ctx, *args: instance_of(ctx).envrcpt_bytes(*args))
    milter.set_header_callback(lambda ctx, name, value: instance_of(ctx).header_bytes(name, value))
    milter.set_eoh_callback(lambda ctx: instance_of(ctx).eoh())
    milter.set_body_callback(lambda ctx, chunk: instance_of(ctx).body(chunk))
    milter.set_eom_callback(lambda ctx: instance_of(ctx).eom())
    milter.set_abort_callback(lambda ctx: instance_of(ctx).abort())
    milter.set_close_callback(close)
    milter.register(
        "spfmilter",
        data=lambda ctx: instance_of(ctx).data(),
        unknown=lambda ctx, cmd: instance_of(ctx).unknown(cmd),
        negotiate=lambda ctx, opts: opened(ctx).negotiate(opts),
    )


def find_listener(spec: SocketSpec) -> Optional[int]:
    """The fd number of libmilter's listening socket (pymilter does not expose it).

    Found by scanning our own open fds for a listening socket bound to the configured
    address; returns None when there is none.
    """
    for name in os.listdir("/proc/self/fd"):
        try:
            number = int(name)
            sock = socket.socket(fileno=os.dup(number))
        except (OSError, ValueError):
            continue
        try:
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                continue
            bound = sock.getsockname()
            if spec.family == "unix":
                matches = bound == spec.address
            else:
                matches = isinstance(bound, tuple) and bound[1] == spec.port
            if matches:
                return number
        except OSError:
            continue
        finally:
            sock.close()
    return None


def tune_listener(fd: int, spec: SocketSpec) -> None:
    """TCP_NODELAY and non-blocking accept on libmilter's listening socket ``fd``.

    libmilter writes end-of-message replies as several small packets without
    TCP_NODELAY, so each message waits for the MTA's delayed ACK (~40 ms).  Linux
    copies socket options from a listening socket to the sockets it accepts, so
    setting it once on the listener fixes every connection.  Non-blocking accept
    lets several worker processes share the listener: a worker that loses the race
    for a connection gets EAGAIN instead of blocking inside libmilter.
    """
    sock = socket.socket(fileno=os.dup(fd))
    try:
        if spec.family != "unix":
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)  # O_NONBLOCK lives on the shared open file description
    finally:
        sock.close()


def check_socket_path(spec: SocketSpec) -> None:
    """Before libmilter removes a stale unix socket and binds: ValueError if something else
    (a symbolic link, a file) is at the path, rather than libmilter's bare "cannot opensocket"."""
    if spec.family != "unix":
        return
    try:
        mode = os.lstat(spec.address).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a socket"
        raise ValueError(f"{spec.address} is {kind}; refusing to replace it (remove it if it is stale)")


def prepare_socket_file(config: Config, spec: Optional[SocketSpec] = None) -> None:
    """Mode and group of a unix socket (``spec``, default the milter's), so the MTA (e.g. the
    postfix group) can connect.

    Runs as root, in a directory others may be able to write to: the path is opened once
    without following a link (O_PATH | O_NOFOLLOW) and must be the socket our bind just
    made (a socket, ours, one link), and owner and mode are changed through that pinned
    inode (/proc/self/fd), so a link put there after the bind cannot redirect them to
    another file.  Linux cannot chmod a symbolic link or fchmod an O_PATH descriptor.
    """
    spec = spec or config.socket
    if spec.family != "unix":
        return
    path = spec.address
    gid = grp.getgrnam(config.socket_group).gr_gid if config.socket_group else -1
    uid = pwd.getpwnam(config.user).pw_uid if config.user else -1  # so the daemon can remove it at exit
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
            raise ValueError(f"{path} is no longer the socket just bound (replaced by a link or another "
                             "file?); refusing to change its owner or mode")
        pinned = f"/proc/self/fd/{fd}"
        if uid != -1 or gid != -1:
            os.chown(pinned, uid, gid)
        os.chmod(pinned, config.socket_mode)
    finally:
        os.close(fd)


def write_pid_file(path: str) -> None:
    """Our pid in ``path``, without writing through a link planted there.

    A symbolic link at the path is refused (ValueError).  The pid goes to a new file made
    in the same directory (O_EXCL | O_NOFOLLOW), renamed over the path: rename replaces
    a stale file or a hard link itself, never the file a link leads to.
    """
    if not path:
        return
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise ValueError(f"pid file {path} is a symbolic link; refusing to write through it (remove it)")
    except FileNotFoundError:
        pass
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with open(fd, "w", encoding="ascii") as handle:
            os.fchmod(handle.fileno(), 0o644)  # whatever the umask
            handle.write(f"{os.getpid()}\n")
        os.rename(temporary, path)
    except BaseException:
        _unlink_quietly(temporary)
        raise


def remove_pid_file(path: str) -> None:
    if not path:
        return
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), encoding="ascii") as handle:
            if handle.read().strip() != str(os.getpid()):
                return  # not ours (a worker, or a newer instance)
        os.unlink(path)
    except FileNotFoundError:  # removed already (by the Janitor)
        pass
    except OSError as exc:
        log.warning("cannot remove pid file %s: %s", path, exc.strerror)


def drop_privileges(user: str, group: str) -> None:
    """After the socket is open: become ``user`` (and ``group``), for good.

    Supplementary groups are set from the group database (so membership in, say,
    the postfix group keeps working); a process that is not root cannot switch.
    """
    if not user:
        if group:
            raise ValueError("group is set but user is not")
        if os.geteuid() == 0:
            log.warning("running as root: set 'user' (or run it as a system user, see systemd/)")
        return
    account = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid if group else account.pw_gid
    if os.geteuid() != 0:
        if os.geteuid() == account.pw_uid:
            return
        raise ValueError(f"only root can switch to user {user!r}")
    os.initgroups(user, gid)
    os.setgid(gid)
    os.setuid(account.pw_uid)
    if os.getuid() == 0 or os.geteuid() == 0:  # pragma: no cover - the kernel refused
        raise OSError(f"could not drop root privileges to {user}")
    log.info("running as user %s (uid %d, gid %d)", user, account.pw_uid, gid)


def resolve_workers(setting: int) -> int:
    """``workers = 0`` means one per CPU core (at most 8)."""
    if setting > 0:
        return setting
    return max(1, min(8, len(os.sched_getaffinity(0))))


def serve(config: Config, drain_timeout: float = DRAIN_TIMEOUT) -> int:
    """Run the milter until SIGTERM/SIGINT; return the process exit status.

    This process opens the socket, drops privileges and supervises the worker
    processes, which share the listener, each running libmilter's loop with its own
    DNS cache.  SIGTERM/SIGINT drains every worker (each lets its sessions finish),
    a worker that dies is replaced, and SIGHUP reloads the configuration: new
    workers start with it and the old ones finish their sessions and exit.
    """
    try:
        srs_policy = load_srs_policy(config)  # before the switch to ``user``; the workers inherit it
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        return 1
    for risk in risky_settings(config):
        log.warning("risky setting: %s", risk)
    sessions = Sessions()
    register(_unused_factory, sessions)  # libmilter wants a registration before opening the socket
    milter.setconn(config.socket.libmilter())
    try:
        check_socket_path(config.socket)
        probe_listen(config.socket)  # libmilter's own error would not say why
        milter.opensocket(True)  # True: remove a stale unix socket left by a crash
    except (ValueError, milter.error) as exc:
        log.error("cannot listen on %s: %s", config.socket, exc)
        return 1
    listener = find_listener(config.socket)
    if listener is None:  # pragma: no cover - libmilter just opened it
        log.error("cannot find the listening socket for %s", config.socket)
        return 1
    tune_listener(listener, config.socket)
    keep_link = metrics_server = janitor = socketmap = None
    socketmap_inode = None
    try:
        prepare_socket_file(config)
        if config.srs_socketmap is not None:
            socketmap, socketmap_inode = open_socketmap(config)
        keep_link = make_keep_link(config)
        write_pid_file(config.pid_file)
        janitor = Janitor.start_if_needed(config, keep_link)  # before any thread exists
        if config.user:
            # Import the SPF machinery while its files are surely readable (a Python installed
            # under root's home is not, after the switch).  Under systemd the daemon starts as
            # its user and the supervisor stays small, importing nothing more.
            from . import milter as _preload  # noqa: F401
        # multiprocess metrics: the directory and environment exist before prometheus_client is
        # imported anywhere, and before any worker (they inherit both)
        metrics_server = start_metrics(config.metrics_listen, config.user)
        if metrics_server is not None and config.user:
            import prometheus_client.multiprocess  # noqa: F401  (see the preload above)
        drop_privileges(config.user, config.group)
    except (OSError, KeyError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        remove_socket_file(config, keep_link)
        close_socketmap(config, socketmap, socketmap_inode)
        if metrics_server is not None:
            metrics_server.stop()
        if janitor is not None:
            janitor.finish()
        return 1
    log.info("spfmilter %s listening on %s (mode=%s, header_type=%s, authserv_id=%s, workers=%d)",
             __version__, config.socket, config.mode.value, config.header_type.value,
             config.authserv_id, resolve_workers(config.workers))
    if socketmap is not None:
        log.info("SRS socketmap table on %s (maps forward and reverse)", config.srs_socketmap)
    try:
        return Supervisor(config, listener, keep_link, drain_timeout, srs_policy, metrics_server, socketmap).run()
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        remove_socket_file(config, keep_link)
        close_socketmap(config, socketmap, socketmap_inode)
        if janitor is not None:
            janitor.finish()
        remove_pid_file(config.pid_file)


def load_srs_policy(config: Config):
    """The SRS policy, or None; ValueError naming the file when it cannot be used.

    Imported only when SRS is on: the main process stays small (hashlib pulls in OpenSSL).
    """
    if not config.srs:
        return None
    from .srs import SecretsError
    from .srspolicy import build_srs_policy

    try:
        return build_srs_policy(config)
    except (SecretsError, OSError) as exc:
        raise ValueError(str(exc)) from None


def open_socketmap(config: Config) -> tuple:
    """The SRS socketmap's listening socket and (for a unix socket) its inode, made like the milter's
    socket (mode ``socket_mode``, group ``socket_group``)."""
    from .socketmapserver import open_listener

    spec = config.srs_socketmap
    try:
        sock = open_listener(spec)
    except OSError as exc:
        raise OSError(f"srs_socketmap {spec}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"srs_socketmap {spec}: {exc}") from None
    inode = None
    if spec.family == "unix":
        info = os.lstat(spec.address)
        inode = (info.st_dev, info.st_ino)
        try:
            prepare_socket_file(config, spec)
        except BaseException:
            sock.close()
            os.unlink(spec.address)
            raise
    return sock, inode


def close_socketmap(config: Config, sock, inode) -> None:
    if sock is None:
        return
    from .socketmapserver import remove_listener

    sock.close()
    remove_listener(config.srs_socketmap, inode)


def start_metrics(listen: str, user: str):
    if not listen:
        return None
    from .metrics import start_server

    return start_server(listen, user)


def _unused_factory():  # pragma: no cover - the supervisor never runs libmilter's loop
    raise RuntimeError("the supervisor does not serve connections")


# --- unix socket path ---------------------------------------------------------------
#
# libmilter unlinks a unix socket's path when its loop ends in a process that is not
# root, although other workers still listen on it.  That only happens when libmilter
# stops by itself (a worker signalled directly, or a fatal listener error), never on
# our drain; the main process keeps a second hard link so the path can be put back.


def make_keep_link(config: Config) -> Optional[str]:
    if config.socket.family != "unix" or not config.socket_keep_link:
        return None
    keep = config.socket.address + ".keep"
    _unlink_quietly(keep)
    try:
        os.link(config.socket.address, keep)
    except OSError as exc:
        log.warning("cannot keep a second link to %s (%s): if a worker stops unexpectedly, "
                    "the socket path may have to be restored by a restart", config.socket.address, exc.strerror)
        return None
    return keep


def restore_socket_path(config: Config, keep_link: Optional[str]) -> None:
    """Put the unix socket path back from ``keep_link`` if libmilter removed it."""
    if not keep_link:
        return
    path = config.socket.address
    if os.path.lexists(path) or not os.path.exists(keep_link):
        return
    try:
        os.link(keep_link, path)
        log.warning("put back the socket path %s (a worker's libmilter had removed it)", path)
    except FileExistsError:
        pass
    except OSError as exc:
        log.error("could not restore %s: %s", path, exc.strerror)


def remove_socket_file(config: Config, keep_link: Optional[str]) -> None:
    """At exit: remove our unix socket (not a newer instance's) and the second link."""
    if config.socket.family != "unix":
        return
    path = config.socket.address
    try:
        ours = keep_link is None or os.path.samefile(path, keep_link)
        if ours and stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass
    if keep_link:
        _unlink_quietly(keep_link)


class Janitor:
    """Removes the socket path, its keep link and the pid file at exit when the daemon, once it
    is ``user``, may not (they sit in a directory only root can write, e.g. one made by hand).

    A child forked while we are still root, before any thread exists: it keeps only the read
    end of a pipe (not the listener, so a stopped daemon's port refuses at once), ignores the
    signals meant for the daemon, and waits for end of file: the supervisor closing the pipe
    at exit, or dying (its workers, which share the pipe, follow it).  It then removes the
    socket and the keep link only if they are still the inode we bound, and the pid file only
    if it still holds the supervisor's pid.
    """

    def __init__(self, pid: int, pipe: int):
        self.pid = pid
        self.pipe = pipe

    @staticmethod
    def needed(config: Config, identity: Identity) -> list[str]:
        """The paths ``identity`` could not remove at exit."""
        paths = []
        if config.socket.family == "unix":
            paths.append(config.socket.address)
        if config.pid_file:
            paths.append(config.pid_file)
        stuck = []
        for path in paths:
            try:
                owner = os.lstat(path).st_uid
                directory = os.stat(os.path.dirname(path) or "/")
            except OSError:
                continue
            if not may_remove(directory, owner, identity):
                stuck.append(path)
        return stuck

    @classmethod
    def start_if_needed(cls, config: Config, keep_link: Optional[str]) -> Optional["Janitor"]:
        if not config.user or os.geteuid() != 0:
            return None
        stuck = cls.needed(config, runtime_identity(config))
        if not stuck:
            return None
        socket_inode = None
        if config.socket.address in stuck:
            info = os.lstat(config.socket.address)
            socket_inode = (info.st_dev, info.st_ino)
        pid_file = config.pid_file if config.pid_file in stuck else ""
        log.info("user %s cannot remove %s at exit: a helper process that stays root will",
                 config.user, " and ".join(stuck))
        supervisor = os.getpid()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child; tests/milter/test_daemon.py checks its effect
            code = 1
            try:
                os.close(write_end)
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, DRAIN_SIGNAL):
                    signal.signal(signum, signal.SIG_IGN)
                os.closerange(3, read_end)
                os.closerange(read_end + 1, os.sysconf("SC_OPEN_MAX"))
                while os.read(read_end, 64):
                    pass
                if socket_inode is not None:
                    for path in (config.socket.address, keep_link):
                        _unlink_if_inode(path, socket_inode)
                if pid_file:
                    _remove_pid_file_of(pid_file, supervisor)
                code = 0
            finally:
                os._exit(code)
        os.close(read_end)
        return cls(pid, write_end)

    def finish(self) -> None:
        """Let the helper clean up now, and wait until it has."""
        os.close(self.pipe)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:  # reaped already (it died early): nothing to wait for
            pass


def _unlink_if_inode(path: Optional[str], inode: tuple) -> None:
    if not path:
        return
    try:
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == inode:
            os.unlink(path)
    except OSError:
        pass


def _remove_pid_file_of(path: str, pid: int) -> None:
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), encoding="ascii") as handle:
            if handle.read().strip() != str(pid):
                return
        os.unlink(path)
    except OSError:
        pass


# --- workers ------------------------------------------------------------------------

DRAIN_SIGNAL = signal.SIGUSR2  # main process -> worker: stop accepting, finish sessions, exit
_WORKER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, DRAIN_SIGNAL}
SETTLE_TIME = 0.25  # an accepted connection's first packet arrives well within this


class Drainer:
    """Waits in its own thread for DRAIN_SIGNAL, then drains the worker and exits it.

    Stopping to accept is done by putting a socket that never becomes readable in
    place of the listener's fd *in this process only* (``dup2``): libmilter's
    listener keeps polling it and never accepts again, while the other workers
    (and, during a reload, the new ones) keep the shared listener.
    """

    def __init__(self, sessions: Sessions, listener: int, timeout: float):
        self.sessions = sessions
        self.listener = listener
        self.timeout = timeout
        self._peer: Optional[socket.socket] = None

    def start(self) -> None:
        threading.Thread(target=self._wait, name="spfmilter-drain", daemon=True).start()

    def _wait(self) -> None:
        signal.sigwait({DRAIN_SIGNAL})
        code = 1
        try:
            code = self.drain()
        except BaseException:  # noqa: BLE001 - exit in any case
            log.exception("draining failed")
        finally:
            logging.shutdown()
            os._exit(code)

    def stop_accepting(self) -> None:
        quiet, self._peer = socket.socketpair()
        try:
            os.dup2(quiet.fileno(), self.listener, inheritable=False)
        finally:
            quiet.close()

    def close(self) -> None:
        if self._peer is not None:
            self._peer.close()
            self._peer = None

    def drain(self) -> int:
        self.stop_accepting()
        started = time.monotonic()
        deadline = started + self.timeout
        announced = False
        while True:
            if self.sessions.count > 0 and not announced:
                log.info("stopping: waiting for %d session(s) in flight", self.sessions.count)
                announced = True
            if not self.sessions.wait_idle(max(0.0, deadline - time.monotonic())):
                log.warning("stopping with %d session(s) still open after %g s",
                            self.sessions.count, self.timeout)
                return 1
            # a connection accepted just before the switch may not have reached us yet
            if not self.sessions.wait_busy(SETTLE_TIME):
                break
        log.info("stopped after %.1f s of draining", time.monotonic() - started)
        return 0


class _PymilterStderr:
    """pymilter prints an exception it caught (e.g. text it could not decode) to sys.stderr:
    turn each such line into one log line, so it reaches syslog with the rest."""

    def __init__(self):
        self._buffer = ""

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            if line.strip():
                log.warning("pymilter: %s", line.strip())
        return len(text)

    def flush(self) -> None:
        pass


def run_worker(config: Config, listener: int, drain_timeout: float, keep_link: Optional[str] = None,
               srs_policy=None) -> int:
    """One worker: libmilter's loop with ``config`` until DRAIN_SIGNAL (see Drainer).

    If libmilter stops by itself (a SIGTERM sent to the worker directly, or a fatal
    listener error), ``milter.main()`` returns and we still wait for the sessions it
    keeps serving.
    """
    from .metrics import for_worker
    from .milter import SpfMilter
    from .service import make_service

    service = make_service(config, srs_policy, for_worker(config.metrics_listen))
    sessions = Sessions()
    register(lambda: SpfMilter(service), sessions)
    sys.stderr = _PymilterStderr()  # our log handler keeps the real stream
    Drainer(sessions, listener, drain_timeout).start()
    try:
        milter.main()
    except milter.error as exc:
        log.error("milter main loop failed: %s", exc)
        return 1
    restore_socket_path(config, keep_link)
    started = time.monotonic()
    if sessions.count > 0:
        log.info("stopping: waiting for %d session(s) in flight", sessions.count)
    if not sessions.wait_idle(drain_timeout):
        log.warning("stopping with %d session(s) still open after %.0f s", sessions.count, drain_timeout)
        return 1
    log.info("stopped after %.1f s of draining", time.monotonic() - started)
    return 0


def run_socketmap(listener: socket.socket, srs_policy, drain_timeout: float) -> int:
    """The SRS socketmap table process: serve until DRAIN_SIGNAL, then finish the requests in
    progress (idle connections are closed at once; Postfix reconnects to the new process)."""
    from .socketmapserver import SocketmapServer

    server = SocketmapServer(listener, srs_policy)
    server.start()
    signal.sigwait({DRAIN_SIGNAL})
    if not server.stop(drain_timeout):
        log.warning("SRS socketmap stopping with connections still open after %g s", drain_timeout)
        return 1
    log.info("SRS socketmap process stopped")
    return 0


def _die_with_parent(parent: int) -> None:
    """Drain (not just vanish) if the main process dies without telling us (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(DRAIN_SIGNAL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:  # it died before the prctl
        os.kill(os.getpid(), DRAIN_SIGNAL)


_SUPERVISOR_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP}
RESPAWN_DELAY = 1.0
SOCKETMAP_SLOT = -1  # the child that serves srs_socketmap; the workers are 0, 1, ...


def _child_name(slot: int) -> str:
    return "SRS socketmap process" if slot == SOCKETMAP_SLOT else f"worker {slot}"


class Supervisor:
    """Forks and watches worker processes that share one listening socket.

    The supervisor never calls ``milter.main()`` (that would start libmilter's signal
    thread here); it waits for signals with the signal mask, so no Python signal
    handler is involved.  Workers run in their own process group, so a Ctrl-C in a
    terminal reaches only this process, which then drains them.
    """

    def __init__(self, config: Config, listener: int, keep_link: Optional[str] = None,
                 drain_timeout: float = DRAIN_TIMEOUT, srs_policy=None, metrics_server=None,
                 socketmap: Optional[socket.socket] = None):
        self.config = config
        self.socketmap = socketmap  # the SRS socketmap's listener, served by a child of its own
        self.srs_policy = srs_policy
        self.metrics_server = metrics_server
        self.listener = listener
        self.keep_link = keep_link
        self.drain_timeout = drain_timeout
        self.children: dict[int, int] = {}  # pid -> slot, current generation
        self.retiring: set[int] = set()  # workers of an older configuration, finishing their sessions
        self.pending_respawn: list[int] = []  # slots of the current generation whose worker died
        self.stopping = False

    def _spawn(self, slot: int) -> None:
        config, parent = self.config, os.getpid()
        pid = os.fork()
        if pid == 0:  # worker
            code = 1
            try:
                # Blocked here, and so in every thread: libmilter's signal thread sigwaits for
                # SIGTERM/SIGINT/SIGHUP, the Drainer for DRAIN_SIGNAL; one that arrives before
                # they wait stays pending instead of killing the process.
                signal.pthread_sigmask(signal.SIG_SETMASK, set(self._old_mask) | _WORKER_SIGNALS)
                os.setpgid(0, 0)
                _die_with_parent(parent)
                log.info("%s started (pid %d)", _child_name(slot), os.getpid())
                if slot == SOCKETMAP_SLOT:
                    os.close(self.listener)  # the milter's: never served here
                    code = run_socketmap(self.socketmap, self.srs_policy, self.drain_timeout)
                else:
                    if self.socketmap is not None:
                        self.socketmap.close()
                    code = run_worker(config, self.listener, self.drain_timeout, self.keep_link, self.srs_policy)
            except BaseException:  # noqa: BLE001 - a worker must never return into the supervisor's code
                log.exception("%s failed", _child_name(slot))
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = slot

    def _spawn_generation(self) -> None:
        for slot in range(resolve_workers(self.config.workers)):
            self._spawn(slot)
        if self.socketmap is not None:
            self._spawn(SOCKETMAP_SLOT)

    def reload(self) -> None:
        """SIGHUP: new workers with the new configuration; the old ones finish their sessions.

        The file is always read again (cli makes its path absolute at start-up); when there
        is none to read, or it cannot be used, the reload is refused and nothing changes.
        """
        if self.config.source == Config.source:  # the dataclass default: "<built-in defaults>"
            log.error("reload refused: no configuration file to read again (running on built-in "
                      "defaults); restart with -c FILE to use one")
            return
        try:
            new = load(self.config.source)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            return
        try:
            srs_policy = load_srs_policy(new)
        except ValueError as exc:
            log.error("reload refused: %s", exc)
            return
        fixed = ("socket", "user", "group", "socket_mode", "socket_group", "pid_file", "log_destination",
                 "syslog_facility", "metrics_listen", "srs_socketmap")
        changed = [name for name in fixed if getattr(new, name) != getattr(self.config, name)]
        if changed:
            log.warning("reload: %s cannot change without a restart; keeping the old value(s)", ", ".join(changed))
            new = replace(new, **{name: getattr(self.config, name) for name in changed})
        self.config = new
        self.srs_policy = srs_policy
        logging.getLogger("spfmilter").setLevel(new.log_level.upper())
        old = list(self.children)
        self.retiring.update(old)
        self.children = {}
        # A worker that died just before the reload left its slot waiting for a respawn: the new
        # generation fills every slot, so that respawn would be one worker too many.
        self.pending_respawn = []
        self._spawn_generation()
        for pid in old:
            _kill(pid, DRAIN_SIGNAL)
        log.info("reloaded %s: %d new worker(s), %d old one(s) finishing their sessions",
                 new.source, len(self.children), len(old))

    def run(self) -> int:
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        if self.metrics_server is not None:
            # its thread inherits the blocked signals, so they keep coming to sigwaitinfo below
            try:
                self.metrics_server.start()
            except OSError as exc:
                log.error("cannot start: metrics page on %s: %s", self.metrics_server.listen, exc.strerror or exc)
                return 1
            log.info("metrics on http://%s/metrics", self.metrics_server.listen)
        self._spawn_generation()
        worst = 0
        while self.children or self.retiring or self.pending_respawn:
            if self.pending_respawn:
                info = signal.sigtimedwait(_SUPERVISOR_SIGNALS, RESPAWN_DELAY)
            else:
                info = signal.sigwaitinfo(_SUPERVISOR_SIGNALS)
            if info is None:  # respawn delay over
                if not self.stopping:
                    running = set(self.children.values())
                    for slot in self.pending_respawn:
                        if slot not in running:
                            log.warning("restarting %s", _child_name(slot))
                            self._spawn(slot)
                self.pending_respawn = []
                continue
            if info.si_signo in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                self.stopping = True
                # Our copy of the listener goes first: once the workers have dropped theirs,
                # new connections are refused and the MTA applies its default action at once.
                os.close(self.listener)
                if self.socketmap is not None:
                    self.socketmap.close()  # likewise: Postfix's cleanup gets a refusal, and retries later
                log.info("stopping %d worker(s)", len(self.children) + len(self.retiring))
                for pid in list(self.children) + list(self.retiring):
                    _kill(pid, DRAIN_SIGNAL)
            elif info.si_signo == signal.SIGHUP and not self.stopping:
                self.reload()
            for pid, status in _reap():
                code = os.waitstatus_to_exitcode(status)
                restore_socket_path(self.config, self.keep_link)
                if pid in self.retiring:
                    self.retiring.discard(pid)
                    if code != 0:
                        log.warning("old worker (pid %d) exited with status %d", pid, code)
                    continue
                slot = self.children.pop(pid, None)
                if slot is None:
                    continue
                if self.stopping:
                    worst = max(worst, abs(code))
                    continue
                log.error("%s (pid %d) exited unexpectedly with status %d", _child_name(slot), pid, code)
                self.pending_respawn.append(slot)
        # The signals stay blocked: a second SIGTERM sent while we stopped must not kill the
        # process on its way out (it is about to exit anyway).
        log.info("all workers stopped")
        return 0 if worst == 0 else 1


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
