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
from .config import Config, SocketSpec
from .dns import DnsClient, make_resolver
from .milter import ACTIONS, Service, SpfMilter

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


def make_service(config: Config) -> Service:
    resolver = make_resolver(config.dns_servers)
    return Service(config, DnsClient(resolver, config.dns_cache_size))


def register(factory: Callable[[], SpfMilter], sessions: Sessions) -> None:
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

    milter.set_flags(ACTIONS)
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


def serve(config: Config, service: Optional[Service] = None,
          drain_timeout: float = DRAIN_TIMEOUT) -> int:
    """Run the milter until SIGTERM/SIGINT; return the process exit status.

    With one worker, libmilter runs in this process.  With several, this process
    opens the socket, forks the workers (each runs libmilter's loop on the shared
    listener, with its own DNS cache) and supervises them: SIGTERM/SIGINT is passed
    on to every worker, and a worker that dies unexpectedly is replaced.
    """
    service = service or make_service(config)
    sessions = Sessions()
    register(lambda: SpfMilter(service), sessions)
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
        drop_privileges(config.user, config.group)
    except (OSError, KeyError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    workers = resolve_workers(config.workers)
    log.info("spfmilter %s listening on %s (mode=%s, header_type=%s, authserv_id=%s, workers=%d)",
             __version__, config.socket, config.mode.value, config.header_type.value,
             config.authserv_id, workers)
    try:
        if workers == 1:
            return run_worker(sessions, drain_timeout)
        return Supervisor(workers, lambda: run_worker(sessions, drain_timeout)).run()
    finally:
        remove_pid_file(config.pid_file)


def run_worker(sessions: Sessions, drain_timeout: float) -> int:
    """libmilter's loop in this process; on SIGTERM, let the sessions in flight finish."""
    try:
        milter.main()
    except milter.error as exc:
        log.error("milter main loop failed: %s", exc)
        return 1
    started = time.monotonic()
    if sessions.count > 0:
        log.info("stopping: waiting for %d session(s) in flight", sessions.count)
    if not sessions.wait_idle(drain_timeout):
        log.warning("stopping with %d session(s) still open after %.0f s", sessions.count, drain_timeout)
        return 1
    log.info("stopped after %.1f s of draining", time.monotonic() - started)
    return 0


_SUPERVISOR_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP}
RESPAWN_DELAY = 1.0


class Supervisor:
    """Forks and watches worker processes that share one listening socket.

    The parent never calls ``milter.main()`` (that would start libmilter's signal
    thread here); it only waits for signals with the signal mask, so no Python
    signal handler is involved.
    """

    def __init__(self, count: int, work: Callable[[], int]):
        self.count = count
        self.work = work
        self.children: dict[int, int] = {}  # pid -> slot
        self.stopping = False

    def _spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # worker
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
                log.info("worker %d started (pid %d)", slot, os.getpid())
                code = self.work()
            except BaseException:  # noqa: BLE001 - a worker must never return into the parent's code
                log.exception("worker %d failed", slot)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = slot

    def run(self) -> int:
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        for slot in range(self.count):
            self._spawn(slot)
        worst = 0
        pending_respawn: list[int] = []
        while self.children:
            timeout = RESPAWN_DELAY if pending_respawn else None
            info = signal.sigtimedwait(_SUPERVISOR_SIGNALS, timeout) if timeout else \
                signal.sigwaitinfo(_SUPERVISOR_SIGNALS)
            if info is None:  # respawn delay over
                if not self.stopping:
                    for slot in pending_respawn:
                        log.warning("restarting worker %d", slot)
                        self._spawn(slot)
                pending_respawn = []
                continue
            if info.si_signo in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                self.stopping = True
                log.info("stopping %d worker(s)", len(self.children))
                for pid in self.children:
                    _kill(pid, signal.SIGTERM)
            elif info.si_signo == signal.SIGHUP:
                log.info("SIGHUP ignored: restart the service to apply a new configuration")
            for pid, status in _reap():
                slot = self.children.pop(pid, None)
                if slot is None:
                    continue
                code = os.waitstatus_to_exitcode(status)
                if self.stopping:
                    worst = max(worst, abs(code))
                    continue
                log.error("worker %d (pid %d) exited unexpectedly with status %d", slot, pid, code)
                pending_respawn.append(slot)
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
        log.info("all workers stopped")
        return 0 if worst == 0 else 1


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
