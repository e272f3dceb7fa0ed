"""The metrics page's HTTP server (spfmilter.metrics.MetricsServer) on every prometheus_client
from Debian 12's 0.16 on, and a clear start-up error when the library cannot serve it."""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

import prometheus_client
import pytest

from spfmilter import metrics
from tests.support.postfix import free_port


def test_the_page_is_served_and_stopped_without_start_http_servers_return_value(tmp_path, monkeypatch):
    """prometheus_client 0.16 (Debian 12) returns nothing from start_http_server; 0.17 added the
    (server, thread) pair.  The page must not depend on it."""
    monkeypatch.setattr(prometheus_client, "start_http_server", lambda *args, **kwargs: None)
    port = free_port()
    directory = tmp_path / "multiproc"
    directory.mkdir()
    server = metrics.MetricsServer(f"127.0.0.1:{port}", str(directory))
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
    finally:
        server.stop()
    assert not directory.exists()  # the workers' files go with it
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)


def test_ipv6_loopback(tmp_path):
    if not os.path.exists("/proc/net/if_inet6"):
        pytest.skip("no IPv6 on this machine")
    port = free_port()
    server = metrics.MetricsServer(f"[::1]:{port}", str(tmp_path))
    try:
        server.start()
    except OSError as exc:  # IPv6 present but ::1 not configured
        pytest.skip(f"cannot bind [::1]: {exc}")
    try:
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=10) as response:
            assert response.status == 200
    finally:
        server.stop()


def test_a_missing_library_is_a_start_up_error_naming_the_version(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    monkeypatch.delenv(metrics.ENV, raising=False)
    with pytest.raises(ValueError, match=r"metrics_listen needs prometheus_client >= 0\.16 "
                                         r"\(Debian: python3-prometheus-client; installed: [0-9.]+\)"):
        metrics.start_server("127.0.0.1:9899")
    assert metrics.ENV not in os.environ  # the private directory is not left behind
