"""Owns libmilter: registers the callbacks, opens the socket, runs the loop, drains on exit.

libmilter keeps its callbacks and socket in process-wide state, so this module is
the only place that touches the ``milter`` extension module directly.  It catches
SIGTERM/SIGINT itself (in its own signal thread) and then returns from
``milter.main()``; we then wait for the sessions still in flight to finish.
"""
from __future__ import annotations

import grp
import logging
import os
import pwd
import signal
import socket
import threading
import time
from typing import Callable, Optional

import Milter
import milter

from . import __version__
from .config import Config, ConfigError, SocketSpec, load

# The supervisor process imports only this, the config and pymilter; the SPF machinery
# (pyspf, dnspython, authres: ~15 MB) is imported in the workers, after the fork.

log = logging.getLogger("spfmilter")

DRAIN_TIMEOUT = 60.0  # longer than Postfix's default milter_content_timeout would wait anyway


class Sessions:
    """Counts connections in flight so shutdown can wait for them."""

    def __init__(self):
        self._count = 0
        self._cond = threading.Condition()

    def opened(self) -> None:
        with self._cond:
            self._count += 1

    def closed(self) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    @property
    def count(self) -> int:
        return self._count

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count <= 0, timeout)


def register(factory: Callable[[], "Milter.Base"], sessions: Sessions) -> None:
    """Wire libmilter's callbacks to per-connection SpfMilter objects made by ``factory``."""

    def negotiate(ctx, opts):
        instance = factory()
        instance._setctx(ctx)
        sessions.opened()
        return instance.negotiate(opts)

    def connect(ctx, hostname, family, hostaddr):
        instance = ctx.getpriv()
        if instance is None:  # an MTA that does not negotiate
            instance = factory()
            instance._setctx(ctx)
            sessions.opened()
        return instance.connect(hostname, family, hostaddr)

    def close(ctx):
        instance = ctx.getpriv()
        if instance is None:
            return Milter.CONTINUE
        try:
            return instance.close()
        finally:
            instance._setctx(None)
            sessions.closed()

    milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.SETSYMLIST)
    milter.set_connect_callback(connect)
    milter.set_helo_callback(lambda ctx, name: ctx.getpriv().hello(name))
    milter.set_envfrom_callback(lambda ctx, *args: ctx.getpriv().envfrom_bytes(*args))
    milter.set_envrcpt_callback(lambda ctx, *args: ctx.getpriv().envrcpt_bytes(*args))
    milter.set_header_callback(lambda ctx, name, value: ctx.getpriv().header_bytes(name, value))
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(close)
    milter.register(
        "spfmilter",
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=negotiate,
    )


def find_listener(spec: SocketSpec) -> Optional[int]:
    """The fd of libmilter's listening socket (pymilter does not expose it).

    Found by scanning our own open fds for a listening socket bound to the configured
    address; returns a duplicate the caller must close, or None.
    """
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except (OSError, ValueError):
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
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
                return sock.detach()
        except OSError:
            continue
        finally:
            if sock.fileno() != -1:
                sock.close()
    return None


def tune_listener(spec: SocketSpec) -> None:
    """TCP_NODELAY and non-blocking accept on libmilter's listening socket.

    libmilter writes end-of-message replies as several small packets without
    TCP_NODELAY, so each message waits for the MTA's delayed ACK (~40 ms).  Linux
    copies socket options from a listening socket to the sockets it accepts, so
    setting it once on the listener fixes every connection.  Non-blocking accept
    lets several worker processes share the listener: a worker that loses the race
    for a connection gets EAGAIN instead of blocking inside libmilter.
    """
    fd = find_listener(spec)
    if fd is None:
        log.warning("could not find the listening socket for %s; running without TCP_NODELAY", spec)
        return
    try:
        sock = socket.socket(fileno=fd)
        if spec.family != "unix":
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)  # O_NONBLOCK lives on the shared open file description
    finally:
        sock.close()


def prepare_socket_file(config: Config) -> None:
    """Mode and group of a unix socket, so the MTA (e.g. the postfix group) can connect."""
    if config.socket.family != "unix":
        return
    path = config.socket.address
    if config.socket_group:
        os.chown(path, -1, grp.getgrnam(config.socket_group).gr_gid)
    if config.user:
        os.chown(path, pwd.getpwnam(config.user).pw_uid, -1)  # so the daemon can remove it at exit
    os.chmod(path, config.socket_mode)


def write_pid_file(path: str) -> None:
    if path:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")


def remove_pid_file(path: str) -> None:
    if not path:
        return
    try:
        with open(path, encoding="ascii") as handle:
            if handle.read().strip() != str(os.getpid()):
                return  # not ours (a worker, or a newer instance)
        os.unlink(path)
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
    DNS cache.  SIGTERM/SIGINT is passed on to every worker (each lets its sessions
    finish), a worker that dies is replaced, and SIGHUP reloads the configuration:
    new workers start with it and the old ones finish their sessions and exit.
    """
    sessions = Sessions()
    register(_unused_factory, sessions)  # libmilter wants a registration before opening the socket
    milter.setconn(config.socket.libmilter())
    try:
        milter.opensocket(True)  # True: remove a stale unix socket left by a crash
    except milter.error as exc:
        log.error("cannot listen on %s: %s", config.socket, exc)
        return 1
    tune_listener(config.socket)
    try:
        prepare_socket_file(config)
        write_pid_file(config.pid_file)
        if config.user:
            # Import the SPF machinery while its files are surely readable (a Python installed
            # under root's home is not, after the switch).  Under systemd the daemon starts as
            # its user and the supervisor stays small, importing nothing more.
            from . import milter as _preload  # noqa: F401
        drop_privileges(config.user, config.group)
    except (OSError, KeyError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    log.info("spfmilter %s listening on %s (mode=%s, header_type=%s, authserv_id=%s, workers=%d)",
             __version__, config.socket, config.mode.value, config.header_type.value,
             config.authserv_id, resolve_workers(config.workers))
    try:
        return Supervisor(config, drain_timeout).run()
    finally:
        remove_pid_file(config.pid_file)


def _unused_factory():  # pragma: no cover - the supervisor never runs libmilter's loop
    raise RuntimeError("the supervisor does not serve connections")


def run_worker(config: Config, drain_timeout: float, keep_link: Optional[str] = None) -> int:
    """One worker: libmilter's loop with ``config``; on SIGTERM, let the sessions in flight finish."""
    from .milter import SpfMilter, make_service

    service = make_service(config)
    sessions = Sessions()
    register(lambda: SpfMilter(service), sessions)
    try:
        milter.main()
    except milter.error as exc:
        log.error("milter main loop failed: %s", exc)
        return 1
    _restore_socket_path(config, keep_link)
    started = time.monotonic()
    if sessions.count > 0:
        log.info("stopping: waiting for %d session(s) in flight", sessions.count)
    if not sessions.wait_idle(drain_timeout):
        log.warning("stopping with %d session(s) still open after %.0f s", sessions.count, drain_timeout)
        return 1
    log.info("stopped after %.1f s of draining", time.monotonic() - started)
    return 0


def _restore_socket_path(config: Config, keep_link: Optional[str]) -> None:
    """Put back a unix socket path that libmilter removed while other workers still listen on it.

    libmilter's closing code unlinks the socket path when it does not run as root, even
    though the listener itself stays open in the other processes.  During a reload the
    supervisor keeps a second hard link to the socket for this.
    """
    if config.socket.family != "unix" or not keep_link:
        return
    path = config.socket.address
    if not os.path.exists(path) and os.path.exists(keep_link):
        try:
            os.link(keep_link, path)
        except FileExistsError:
            pass
        except OSError as exc:
            log.error("could not restore %s: %s", path, exc.strerror)


_SUPERVISOR_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP}
RESPAWN_DELAY = 1.0


class Supervisor:
    """Forks and watches worker processes that share one listening socket.

    The supervisor never calls ``milter.main()`` (that would start libmilter's signal
    thread here); it waits for signals with the signal mask, so no Python signal
    handler is involved.
    """

    def __init__(self, config: Config, drain_timeout: float = DRAIN_TIMEOUT):
        self.config = config
        self.drain_timeout = drain_timeout
        self.children: dict[int, int] = {}  # pid -> slot, current generation
        self.retiring: set[int] = set()  # workers of an older configuration, finishing their sessions
        self.stopping = False
        self.keep_link: Optional[str] = None

    def _spawn(self, slot: int) -> None:
        config, keep_link = self.config, self.keep_link
        pid = os.fork()
        if pid == 0:  # worker
            code = 1
            try:
                # SIGTERM/SIGINT/SIGHUP stay blocked: libmilter's signal thread sigwaits for
                # them, so one that arrives before the loop starts is acted on, not fatal.
                signal.pthread_sigmask(signal.SIG_SETMASK, set(self._old_mask)
                                       | {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
                log.info("worker %d started (pid %d)", slot, os.getpid())
                code = run_worker(config, self.drain_timeout, keep_link)
            except BaseException:  # noqa: BLE001 - a worker must never return into the supervisor's code
                log.exception("worker %d failed", slot)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = slot

    def _spawn_generation(self) -> None:
        for slot in range(resolve_workers(self.config.workers)):
            self._spawn(slot)

    def reload(self) -> None:
        """SIGHUP: new workers with the new configuration; the old ones finish their sessions."""
        try:
            new = load(self.config.source) if self.config.source.startswith("/") else self.config
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            return
        fixed = ("socket", "user", "group", "socket_mode", "socket_group", "pid_file", "log_destination",
                 "syslog_facility")
        changed = [name for name in fixed if getattr(new, name) != getattr(self.config, name)]
        if changed:
            log.warning("reload: %s cannot change without a restart; keeping the old value(s)", ", ".join(changed))
            new = replace_fields(new, self.config, changed)
        self.config = new
        logging.getLogger("spfmilter").setLevel(new.log_level.upper())
        if new.socket.family == "unix" and self.keep_link is None:
            self.keep_link = new.socket.address + ".spfmilter-keep"
            try:
                if os.path.exists(self.keep_link):
                    os.unlink(self.keep_link)
                os.link(new.socket.address, self.keep_link)
            except OSError as exc:
                log.warning("reload: cannot keep a link to %s (%s)", new.socket.address, exc.strerror)
                self.keep_link = None
        old = list(self.children)
        self.retiring.update(old)
        self.children = {}
        self._spawn_generation()
        for pid in old:
            _kill(pid, signal.SIGTERM)
        log.info("reloaded %s: %d new worker(s), %d old one(s) finishing their sessions",
                 new.source, len(self.children), len(old))

    def run(self) -> int:
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        self._spawn_generation()
        worst = 0
        pending_respawn: list[int] = []
        while self.children or self.retiring or pending_respawn:
            if pending_respawn:
                info = signal.sigtimedwait(_SUPERVISOR_SIGNALS, RESPAWN_DELAY)
            else:
                info = signal.sigwaitinfo(_SUPERVISOR_SIGNALS)
            if info is None:  # respawn delay over
                if not self.stopping:
                    for slot in pending_respawn:
                        log.warning("restarting worker %d", slot)
                        self._spawn(slot)
                pending_respawn = []
                continue
            if info.si_signo in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                self.stopping = True
                log.info("stopping %d worker(s)", len(self.children) + len(self.retiring))
                for pid in list(self.children) + list(self.retiring):
                    _kill(pid, signal.SIGTERM)
            elif info.si_signo == signal.SIGHUP and not self.stopping:
                self.reload()
            for pid, status in _reap():
                code = os.waitstatus_to_exitcode(status)
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
                log.error("worker %d (pid %d) exited unexpectedly with status %d", slot, pid, code)
                pending_respawn.append(slot)
            if not self.retiring and self.keep_link:
                _unlink_quietly(self.keep_link)
                self.keep_link = None
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
        log.info("all workers stopped")
        return 0 if worst == 0 else 1


def replace_fields(new: Config, old: Config, names: list) -> Config:
    from dataclasses import replace

    return replace(new, **{name: getattr(old, name) for name in names})


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
