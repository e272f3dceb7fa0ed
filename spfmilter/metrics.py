"""Prometheus metrics (``metrics_listen``), counted in every worker, served by the main process.

prometheus_client's multiprocess mode: each worker writes its counters to files in a
private directory (``PROMETHEUS_MULTIPROC_DIR``, set by the main process before any
worker exists), and the main process adds them up when the page is scraped.  So the
figures are right however many workers there are, and survive a worker's restart.

Without ``metrics_listen`` the milter gets :data:`NO_METRICS`, whose methods do nothing,
and prometheus_client is never imported.
"""
from __future__ import annotations

import os
import shutil
import tempfile

ENV = "PROMETHEUS_MULTIPROC_DIR"


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
        self._dns = Counter("spfmilter_dns_events", "DNS lookups: upstream queries, cache hits, time-outs, "
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


class MetricsServer:
    """The HTTP page in the main process, adding up the workers' files at each scrape."""

    def __init__(self, listen: str, directory: str):
        self.listen = listen
        self.directory = directory
        self._server = None

    def start(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)
        host, _, port = self.listen.rpartition(":")  # HOST:PORT or [IPv6]:PORT (config.parse_listen)
        self._server, _ = start_http_server(int(port), addr=host.strip("[]"), registry=registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        shutil.rmtree(self.directory, ignore_errors=True)


def start_server(listen: str, user: str = "") -> MetricsServer:
    """Set up multiprocess mode for the page on ``listen`` (started later by the supervisor)."""
    return MetricsServer(listen, prepare(user))
