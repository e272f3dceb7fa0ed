"""Owns libmilter: registers the callbacks, opens the socket, runs the loop, drains on exit.

libmilter keeps its callbacks and socket in process-wide state, so this module is
the only place that touches the ``milter`` extension module directly.  It catches
SIGTERM/SIGINT itself (in its own signal thread) and then returns from
``milter.main()``; we then wait for the sessions still in flight to finish.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

import Milter
import milter

from .config import Config
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


def serve(config: Config, service: Optional[Service] = None,
          drain_timeout: float = DRAIN_TIMEOUT) -> int:
    """Run the milter until SIGTERM/SIGINT; return the process exit status."""
    service = service or make_service(config)
    sessions = Sessions()
    register(lambda: SpfMilter(service), sessions)
    milter.setconn(config.socket.libmilter())
    try:
        milter.opensocket(True)  # True: remove a stale unix socket left by a crash
    except milter.error as exc:
        log.error("cannot listen on %s: %s", config.socket, exc)
        return 1
    log.info("spfmilter listening on %s (mode=%s, header_type=%s, authserv_id=%s)",
             config.socket, config.mode.value, config.header_type.value, config.authserv_id)
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
