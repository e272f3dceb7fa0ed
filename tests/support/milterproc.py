"""A real spfmilter process for tests: started with a generated configuration, ready once a
milter handshake succeeds, stopped by signal with its exit checked.

The milter runs as a subprocess (``python -m spfmilter -c FILE``) on a unix socket in the
test's directory (or an inet port on 127.0.0.1), with PYTHONPATH set to this checkout.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.milterclient import MilterClient, wait_ready
from tests.support.postfix import free_port

ROOT = Path(__file__).resolve().parents[2]


class RunningMilter:
    """A spfmilter subprocess; ``client()`` gives a connected milter-protocol client."""

    def __init__(self, proc: subprocess.Popen, addr, config_path: Path, log_path: Path):
        self.proc = proc
        self.addr = addr
        self.config_path = config_path
        self.log_path = log_path
        self._offset = 0

    def mark(self) -> "RunningMilter":
        """Make logs() start here (a shared milter serves several tests)."""
        self._offset = self.log_path.stat().st_size
        return self

    def client(self, **kwargs) -> MilterClient:
        client = MilterClient(self.addr, timeout=kwargs.pop("timeout", 15.0))
        client.open(**kwargs)
        return client

    def logs(self) -> str:
        with open(self.log_path, "rb") as handle:
            handle.seek(self._offset)
            return handle.read().decode("utf-8", "replace")

    def log_lines(self, needle: str = "") -> list[str]:
        return [line for line in self.logs().splitlines() if needle in line]

    def full_log(self) -> str:
        return self.log_path.read_text(errors="replace")

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


def launch_milter(directory: Path, name: str, extra: str, dns_port: int | None, inet: bool = False,
                  module: str = "spfmilter", config_text: str | None = None) -> RunningMilter:
    """Start ``python -m MODULE`` with a generated config; return once a handshake succeeds.

    ``config_text``: the whole configuration instead (``extra``, ``dns_port`` and ``inet``
    are then ignored); its ``socket`` line says where to connect.
    """
    if config_text is not None:
        spec = re.search(r"^socket = (unix|inet):(\S+)$", config_text, re.MULTILINE)
        if spec.group(1) == "unix":
            addr = spec.group(2)
        else:
            port, _, host = spec.group(2).partition("@")
            addr = (host, int(port))
        return _launch(directory, name, config_text, addr, module)
    if inet:
        port = free_port()
        sock_spec, addr = f"inet:{port}@127.0.0.1", ("127.0.0.1", port)
    else:
        path = directory / f"{name}.sock"
        sock_spec, addr = f"unix:{path}", str(path)
    own_socket = re.search(r"^socket = unix:(\S+)$", extra, re.MULTILINE)
    if own_socket:  # the test chose the socket itself
        sock_spec, addr = None, own_socket.group(1)
    lines = ([f"socket = {sock_spec}"] if sock_spec else []) + ["authserv_id = mx.test", "log_level = debug"]
    if dns_port is not None:
        lines.append(f"dns_servers = 127.0.0.1:{dns_port}")
    return _launch(directory, name, "\n".join(lines) + "\n" + extra + "\n", addr, module)


def _launch(directory: Path, name: str, config_text: str, addr, module: str) -> RunningMilter:
    config_path = directory / f"{name}.conf"
    config_path.write_text(config_text)
    log_path = directory / f"{name}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", module, "-c", str(config_path)],
                                stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    handle = RunningMilter(proc, addr, config_path, log_path)
    handle.allow_tracebacks = module != "spfmilter"
    try:
        wait_ready(addr, timeout=20.0, proc=proc)
    except Exception as exc:
        proc.kill()
        proc.wait()
        raise AssertionError(f"milter did not become ready: {exc}\n--- log ---\n{handle.full_log()}") from exc
    return handle.mark()


def stop_all(handles, allow_tracebacks: bool = False) -> list[str]:
    """SIGTERM every milter at once, then check each exit."""
    for handle in handles:
        if handle.proc.poll() is None:
            handle.proc.send_signal(signal.SIGTERM)
    problems = []
    for handle in handles:
        rc = handle.stop()
        if rc != 0:
            problems.append(f"milter exited {rc}\n--- log ---\n{handle.full_log()}")
        elif "Traceback" in handle.full_log() and not (allow_tracebacks or handle.allow_tracebacks):
            problems.append(f"traceback in milter log\n--- log ---\n{handle.full_log()}")
    return problems
