"""Prometheus metrics (``metrics_listen``), counted in every worker, served by the main process.

prometheus_client's multiprocess mode: each worker writes its counters to files in a
private directory (``PROMETHEUS_MULTIPROC_DIR``, set by the main process before any
worker exists), and the main process adds them up when the page is scraped.  So the
figures are right however many workers there are, and survive a worker's restart.

Without ``metrics_listen`` the milter gets :data:`NO_METRICS`, whose methods do nothing,
and prometheus_client is never imported.

The page is served by a WSGI server of our own around prometheus_client's
``make_wsgi_app``: its ``start_http_server`` gives back the server (to shut it down) only
from 0.17 on, and Debian 12 ships 0.16.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from socketserver import ThreadingMixIn
from typing import Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ENV = "PROMETHEUS_MULTIPROC_DIR"
MIN_PROMETHEUS = "0.16"  # Debian 12's python3-prometheus-client


class Metrics:
    """What the milter counts; this base class counts nothing."""

    def spf(self, identity: str, result: str) -> None: ...

    def check_seconds(self, seconds: float) -> None: ...

    def action(self, action: str) -> None: ...

    def dns(self, event: str) -> None: ...

    def srs(self, operation: str) -> None: ...

    def dkim(self, verdict: str) -> None: ...

    def error(self, stage: str) -> None: ...


NO_METRICS = Metrics()


class PrometheusMetrics(Metrics):
    """The counters, in a worker (multiprocess mode must be set up: see :func:`prepare`)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        registry = CollectorRegistry()  # not the global one: nothing is registered at import
        self._spf = Counter("spfmilter_spf_results", "SPF results, per identity", ["identity", "result"],
                            registry=registry)
        self._seconds = Histogram("spfmilter_spf_check_seconds",
                                  "Time to check both identities of a transaction, DNS included",
                                  buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=registry)
        self._action = Counter("spfmilter_actions", "What was done with each transaction; would-* in "
                               "header-only mode", ["action"], registry=registry)
        self._dns = Counter("spfmilter_dns_events", "DNS lookups: upstream queries, cache hits, SPF results reused, time-outs, "
                            "server failures", ["event"], registry=registry)
        self._srs = Counter("spfmilter_srs", "SRS: senders rewritten, bounces reversed, forged bounces refused",
                            ["operation"], registry=registry)
        self._dkim = Counter("spfmilter_dkim_holds", "SPF fails held for DKIM, by outcome", ["verdict"],
                             registry=registry)
        self._errors = Counter("spfmilter_errors", "Internal errors answered with on_error, per callback",
                               ["stage"], registry=registry)

    def spf(self, identity, result):
        self._spf.labels(identity, result).inc()

    def check_seconds(self, seconds):
        self._seconds.observe(seconds)

    def action(self, action):
        self._action.labels(action).inc()

    def dns(self, event):
        self._dns.labels(event).inc()

    def srs(self, operation):
        self._srs.labels(operation).inc()

    def dkim(self, verdict):
        self._dkim.labels(verdict).inc()

    def error(self, stage):
        self._errors.labels(stage).inc()


def for_worker(listen: str) -> Metrics:
    return PrometheusMetrics() if listen and os.environ.get(ENV) else NO_METRICS


def prepare(user: str = "") -> str:
    """In the main process, before any worker: a fresh directory for the workers' counters
    (given to ``user`` when the daemon is about to switch to it)."""
    directory = tempfile.mkdtemp(prefix="spfmilter-metrics-")
    if user:
        import pwd

        os.chown(directory, pwd.getpwnam(user).pw_uid, -1)
    os.environ[ENV] = directory
    return directory


class _QuietHandler(WSGIRequestHandler):
    """Scrapes are not logged (wsgiref would write a line per request to stderr)."""

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress does not hold up the stop


class _Server6(_Server):
    address_family = socket.AF_INET6


def check_library() -> None:
    """ValueError naming the version needed when prometheus_client cannot serve the page."""
    try:
        from prometheus_client import CollectorRegistry, make_wsgi_app  # noqa: F401
        from prometheus_client.multiprocess import MultiProcessCollector  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"metrics_listen needs prometheus_client >= {MIN_PROMETHEUS} "
                         f"(Debian: python3-prometheus-client; {_installed()}): {exc}") from None


def _installed() -> str:
    from importlib import metadata

    try:
        return "installed: " + metadata.version("prometheus_client")
    except metadata.PackageNotFoundError:
        return "not installed"


class MetricsServer:
    """The HTTP page in the main process, adding up the workers' files at each scrape."""

    def __init__(self, listen: str, directory: str):
        self.listen = listen
        self.directory = directory
        self._server: Optional[WSGIServer] = None

    def start(self) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)
        host, _, port = self.listen.rpartition(":")  # HOST:PORT or [IPv6]:PORT (config.parse_listen)
        host = host.strip("[]")
        server_class = _Server6 if ":" in host else _Server
        self._server = make_server(host, int(port), make_wsgi_app(registry), server_class,
                                   handler_class=_QuietHandler)
        threading.Thread(target=self._server.serve_forever, name="spfmilter-metrics", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutil.rmtree(self.directory, ignore_errors=True)


def start_server(listen: str, user: str = "") -> MetricsServer:
    """Set up multiprocess mode for the page on ``listen`` (started later by the supervisor);
    ValueError when prometheus_client is missing or too old."""
    directory = prepare(user)  # before prometheus_client is imported: it reads ENV then
    try:
        check_library()
    except ValueError:
        shutil.rmtree(directory, ignore_errors=True)
        del os.environ[ENV]
        raise
    return MetricsServer(listen, directory)
