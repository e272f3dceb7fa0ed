"""Shared fixtures: a DNS server on loopback with per-test zones, and a real milter process.

The milter runs as a subprocess (``python -m spfmilter -c FILE``) on a unix socket in
the test's temporary directory (or an inet port on 127.0.0.1), resolving only
through the test DNS server.  Readiness means a completed milter handshake.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.dnsserver import DNSServer  # noqa: E402
from tests.support.milterclient import MilterClient, wait_ready  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dns_server():
    with DNSServer("127.0.0.1") as server:
        yield server


class RunningMilter:
    """A spfmilter subprocess; ``client()`` gives a connected milter-protocol client."""

    def __init__(self, proc: subprocess.Popen, addr, config_path: Path, log_path: Path):
        self.proc = proc
        self.addr = addr
        self.config_path = config_path
        self.log_path = log_path

    def client(self, **kwargs) -> MilterClient:
        client = MilterClient(self.addr, timeout=kwargs.pop("timeout", 15.0))
        client.open(**kwargs)
        return client

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self, needle: str = "") -> list[str]:
        return [line for line in self.logs().splitlines() if needle in line]

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"milter did not stop within {timeout}s after {sig!r}")
        return self.proc.returncode


@pytest.fixture
def start_milter(tmp_path, dns_server):
    """Start spfmilter with extra config lines; it resolves through ``dns_server``."""
    running: list[RunningMilter] = []

    def start(extra: str = "", *, inet: bool = False, use_dns: bool = True) -> RunningMilter:
        index = len(running)
        if inet:
            port = free_port()
            sock_spec, addr = f"inet:{port}@127.0.0.1", ("127.0.0.1", port)
        else:
            path = tmp_path / f"milter{index}.sock"
            sock_spec, addr = f"unix:{path}", str(path)
        lines = [f"socket = {sock_spec}", "authserv_id = mx.test", "log_level = debug"]
        if use_dns:
            lines.append(f"dns_servers = 127.0.0.1:{dns_server.port}")
        config_path = tmp_path / f"spfmilter{index}.conf"
        config_path.write_text("\n".join(lines) + "\n" + extra + "\n")
        log_path = tmp_path / f"milter{index}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "spfmilter", "-c", str(config_path)],
                                    stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        handle = RunningMilter(proc, addr, config_path, log_path)
        running.append(handle)
        try:
            wait_ready(addr, timeout=20.0, proc=proc)
        except Exception as exc:
            raise AssertionError(f"milter did not become ready: {exc}\n--- log ---\n{handle.logs()}") from exc
        return handle

    yield start
    problems = []
    for handle in running:
        rc = handle.stop()
        if rc != 0:
            problems.append(f"milter exited {rc}\n--- log ---\n{handle.logs()}")
        elif "Traceback" in handle.logs():
            problems.append(f"traceback in milter log\n--- log ---\n{handle.logs()}")
    if problems:
        pytest.fail("\n".join(problems))
