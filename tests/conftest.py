"""Shared fixtures: a DNS server on loopback with per-test zones, and real milter processes.

The milters (tests/support/milterproc.py) resolve only through the test DNS server;
readiness means a completed milter handshake.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # plain `pytest` as well as `python -m pytest`: every test imports from here
    sys.path.insert(0, str(ROOT))

from tests.support.dnsserver import DNSServer  # noqa: E402
from tests.support.milterproc import RunningMilter, launch_milter, stop_all  # noqa: E402
from tests.support.sessions import zones  # noqa: E402


@pytest.fixture(scope="module")
def dns_server():
    """One DNS server per test module; tests use distinct names, or their own server for faults."""
    with DNSServer("127.0.0.1") as server:
        yield server


@pytest.fixture(scope="module")
def world(dns_server):
    """The DNS server with the shared zones (tests/support/sessions.py); a module may define its own."""
    zones(dns_server)
    return dns_server


@pytest.fixture(scope="module")
def _milter_pool(tmp_path_factory, dns_server):
    pool: dict = {}
    directory = tmp_path_factory.mktemp("milters")
    yield directory, pool
    problems = stop_all(pool.values())
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def start_milter(_milter_pool, dns_server):
    """Start (or reuse, within a module) a milter with extra config lines.

    ``fresh=True`` always starts a new process (for tests that stop it); ``dns``
    points it at another DNS server (for fault tests).
    """
    directory, pool = _milter_pool

    def start(extra: str = "", *, inet: bool = False, fresh: bool = False, dns=None,
              module: str = "spfmilter") -> RunningMilter:
        port = (dns or dns_server).port
        key = (extra, inet, port, module)
        handle = pool.get(key)
        if fresh or handle is None or handle.proc.poll() is not None:
            handle = launch_milter(directory, f"m{len(pool)}", extra, port, inet, module)
            pool[key if not fresh else (key, len(pool))] = handle
        return handle.mark()

    return start
