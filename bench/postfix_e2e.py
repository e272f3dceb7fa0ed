"""End-to-end message rate through a private Postfix: smtp-source -> Postfix (+ milter) -> smtp-sink.

    python -m bench.postfix_e2e --messages 500 [--sessions 1] [--milter inet:127.0.0.1:8890]
                                [--xclient-addr 192.0.2.7] [--size 1000] [--reuse-connections] [--json]

What runs (Debian's Postfix tools, everything on 127.0.0.1, no DNS):

* ``smtp-sink -c`` on a free port counts the messages it receives (its running
  ``mesg=N`` counter is read from its output);
* a private Postfix (tests/support/postfix.py) with one smtpd on a free port, no local
  domains, ``relayhost = [127.0.0.1]:SINKPORT`` (numeric, so no MX or A lookups), DNS
  disabled for the SMTP client, empty client restrictions, relaying permitted for every
  client (``check_client_access static:OK``), and the milter (if any) in
  ``smtpd_milters`` with ``milter_protocol = 6``; ``extra_main_cf`` overrides any of it;
* ``smtp-source -s SESSIONS -m MESSAGES`` submits, HELO ``mx.example.net``: SESSIONS
  connections are open at a time and each carries one message (connect, HELO, MAIL, RCPT,
  DATA, QUIT), as an MX sees most of its traffic; with ``reuse_connections``
  (``--reuse-connections``, smtp-source ``-d``) each session instead sends its share of
  the messages back to back over one connection, which hides the per-connection cost
  (smtpd's and the milter's connect and close, XCLIENT).
* ``extra_master_cf`` adds services to master.cf (``postconf -M`` entries), e.g. a
  ``spawn(8)`` policy service for ``check_policy_service``.

The rate is MESSAGES divided by the time from starting smtp-source until smtp-sink has
counted the last of them (after a small untimed warm-up, so process start-up is not
measured).  It includes queueing and relaying, so it is Postfix's end-to-end rate with
the milter in its smtpd, not the milter's own rate.

Client address: smtp-source connects from 127.0.0.1 and cannot send XCLIENT, so Postfix
(and the milter) see 127.0.0.1 as the client.  A milter that trusts loopback (spfmilter
does by default) would then skip all its work; to measure the real work either start the
milter with a configuration that does not trust loopback (the caller's business: e.g.
spfmilter's trusted networks set to something else), or pass ``xclient_addr``: then
smtp-source talks to a small in-process proxy that opens each Postfix connection with
``XCLIENT ADDR=<xclient_addr> NAME=[UNAVAILABLE]`` and then relays bytes unchanged (the
proxy costs a little, so compare runs made with the same setting).  The milter must
resolve the sender domain (``--sender``, default ``bench@example.org``) through DNS the
caller controls.

CPU: ``client_cpu_ms_per_msg`` is this process's CPU time (the proxy and the smtp-sink
reader) per timed message; with ``milter_pid`` given, ``milter_cpu_ms_per_msg`` is the
user + system time of that process tree per timed message, read from /proc.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import procs
from tests.support.postfix import (
    PostfixError,
    PostfixInstance,
    free_port,
    postfix_available,
    smtp_sink_path,
    smtp_source_path,
    wait_smtp_greeting,
)

__all__ = ["BenchError", "Result", "SmtpSink", "XclientProxy", "main", "added_ms", "measure", "reply_complete", "source_argv"]


class BenchError(RuntimeError):
    pass


@dataclass
class Result:
    msgs_per_s: float       # messages / seconds
    seconds: float          # smtp-source start -> smtp-sink has all messages
    delivered: int          # messages smtp-sink counted in the timed run
    messages: int = 0
    sessions: int = 1
    submit_seconds: float = 0.0  # smtp-source start -> smtp-source done (all accepted by Postfix)
    milter: str | None = None
    xclient_addr: str | None = None
    reuse_connections: bool = False  # smtp-source -d: all of a session's messages over one connection
    client_cpu_ms_per_msg: float = 0.0  # this process (XCLIENT proxy, sink reader) per timed message
    milter_cpu_ms_per_msg: Optional[float] = 0.0  # the milter_pid process tree, per timed message (None: not measured)
    added_ms: float = 0.0  # filled by the caller: time per message added against the no-milter run

    def __str__(self) -> str:
        how = self.milter or "no milter"
        if self.reuse_connections:
            how += ", connections reused"
        if self.xclient_addr:
            how += f", XCLIENT {self.xclient_addr}"
        return (f"{self.delivered}/{self.messages} messages, {self.sessions} session(s), {how}: "
                f"{self.seconds:.2f} s -> {self.msgs_per_s:.0f} msgs/s "
                f"(submission done after {self.submit_seconds:.2f} s)"
                + (f", milter CPU {self.milter_cpu_ms_per_msg:.2f} ms/msg" if self.milter_cpu_ms_per_msg else ""))


class SmtpSink:
    """smtp-sink on 127.0.0.1:PORT; ``count`` is its running message counter."""

    def __init__(self, port: int | None = None, backlog: int = 256):
        path = smtp_sink_path()
        if path is None:
            raise BenchError("smtp-sink not found (Debian package postfix ships /usr/sbin/smtp-sink)")
        self.port = port or free_port()
        argv = [path, "-c", "-h", "sink.test"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink refuses to keep root privileges
        argv += [f"127.0.0.1:{self.port}", str(backlog)]
        self.count = 0
        self._cond = threading.Condition()
        self._reached: dict[int, float] = {}
        self._stderr = b""
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()
        try:
            wait_smtp_greeting("127.0.0.1", self.port, timeout=20, alive=lambda: self.proc.poll() is None)
        except TimeoutError as exc:
            self.stop()
            raise BenchError(f"smtp-sink did not start: {exc}; stderr: {self._stderr.decode(errors='replace')}")

    def _read(self) -> None:
        # The counter is rewritten in place: "sess=N quit=N mesg=N\r".
        tail = b""
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            now = time.perf_counter()
            tail = (tail + chunk)[-256:]
            found = re.findall(rb"mesg=(\d+)", tail)
            if found:
                with self._cond:
                    value = int(found[-1])
                    if value > self.count:
                        self.count = value
                        self._reached.setdefault(value, now)
                        self._cond.notify_all()

    def _read_err(self) -> None:
        self._stderr = self.proc.stderr.read()

    def wait_for(self, count: int, timeout: float) -> float | None:
        """Wait until ``count`` messages were received; return when (perf_counter), or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.count < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self._cond.wait(min(left, 0.5))
            return min(t for n, t in self._reached.items() if n >= count)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        self._err_reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


REPLY_END = re.compile(rb"(?:^|\r\n)\d{3}(?: [^\r\n]*)?\r\n$")


def reply_complete(data: bytes) -> bool:
    """True when ``data`` ends with the last line of an SMTP reply ("250 ..."; "250-" lines continue)."""
    return REPLY_END.search(data) is not None


class _Relay:
    """One proxied connection: greeting, XCLIENT, then bytes relayed both ways."""

    __slots__ = ("client", "upstream", "state", "buffer", "open_ends")

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream = client, upstream
        self.state = "greeting"  # -> "xclient" -> "relay"
        self.buffer = b""
        self.open_ends = 2  # directions still relaying


class XclientProxy:
    """Loopback proxy: opens each upstream SMTP connection with XCLIENT, then relays bytes.

    The client (smtp-source) gets Postfix's post-XCLIENT 220 greeting as its greeting and
    then sends HELO/EHLO itself, as Postfix requires after XCLIENT.  One thread serves every
    connection with a selector (no thread per connection), so the proxy's own CPU time, which
    the milter and Postfix share the cores with, stays small; ``Result.client_cpu_ms_per_msg``
    shows it.
    """

    def __init__(self, upstream_port: int, addr: str, name: str = "[UNAVAILABLE]"):
        self.upstream = ("127.0.0.1", upstream_port)
        self.command = f"XCLIENT ADDR={addr} NAME={name}\r\n".encode()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.errors: list[str] = []
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._relays: set[_Relay] = set()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.fileobj is self._wake_r:
                    return
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._readable(key.fileobj, key.data)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            upstream = None
            try:
                # Loopback to a listening smtpd: the connect completes at once.  Sockets stay
                # blocking; reads use MSG_DONTWAIT after the selector says there is data.
                upstream = socket.create_connection(self.upstream, timeout=60)
                upstream.settimeout(None)
                client.setblocking(True)
                for sock in (client, upstream):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                self.errors.append(f"connect upstream: {type(exc).__name__}: {exc}")
                for sock in (client, upstream):
                    if sock is not None:
                        sock.close()
                continue
            relay = _Relay(client, upstream)
            self._relays.add(relay)
            self._selector.register(upstream, selectors.EVENT_READ, relay)

    def _readable(self, sock: socket.socket, relay: _Relay) -> None:
        try:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            data = b""
        try:
            if relay.state == "relay":
                self._relay(sock, relay, data)
                return
            if not data:
                raise ConnectionError(f"upstream closed the connection after {relay.buffer!r}")
            relay.buffer += data
            if not reply_complete(relay.buffer):
                return
            reply, relay.buffer = relay.buffer, b""
            if not reply.startswith(b"220"):
                if relay.state == "xclient":
                    self.errors.append(f"XCLIENT refused: {reply.decode(errors='replace').strip()}")
                    reply = b"421 4.3.0 xclient proxy: upstream refused XCLIENT\r\n"
                relay.client.sendall(reply)
                self._close(relay)
            elif relay.state == "greeting":
                relay.upstream.sendall(self.command)
                relay.state = "xclient"
            else:
                relay.client.sendall(reply)
                relay.state = "relay"
                self._selector.register(relay.client, selectors.EVENT_READ, relay)
        except OSError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self._close(relay)

    def _relay(self, sock: socket.socket, relay: _Relay, data: bytes) -> None:
        other = relay.upstream if sock is relay.client else relay.client
        if data:
            other.sendall(data)
            return
        # end of one direction: pass it on, stop watching this side
        self._selector.unregister(sock)
        try:
            other.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        relay.open_ends -= 1
        if relay.open_ends == 0:
            self._close(relay)

    def _close(self, relay: _Relay) -> None:
        for sock in (relay.client, relay.upstream):
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        self._relays.discard(relay)

    def close(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join(5)
        for relay in list(self._relays):
            self._close(relay)
        self._selector.close()
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()


def added_ms(rate: float, base_rate: float, sessions: int) -> float:
    """Time per message a setup adds to the base run, from two closed-loop rates.

    With ``sessions`` connections always open, each message spends sessions / rate seconds in
    the system (Little's law); the difference to the base run is what the setup adds.  For one
    session this is 1/rate - 1/base_rate."""
    if rate <= 0 or base_rate <= 0:
        raise ValueError("rates must be positive")
    return 1000.0 * sessions * (1.0 / rate - 1.0 / base_rate)


def source_argv(path: str, port: int, count: int, sessions: int, sender: str, recipient: str, helo: str,
                size: int, reuse_connections: bool = False) -> list[str]:
    """smtp-source's command line: one message per connection unless ``reuse_connections`` (-d)."""
    return [path, *(["-d"] if reuse_connections else []), "-s", str(sessions), "-m", str(count), "-M", helo,
            "-f", sender, "-t", recipient, "-l", str(size), f"127.0.0.1:{port}"]


def _run_source(port: int, count: int, sessions: int, sender: str, recipient: str, helo: str,
                size: int, reuse_connections: bool) -> subprocess.Popen:
    path = smtp_source_path()
    if path is None:
        raise BenchError("smtp-source not found (Debian package postfix ships /usr/sbin/smtp-source)")
    argv = source_argv(path, port, count, sessions, sender, recipient, helo, size, reuse_connections)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


class _Postfix(PostfixInstance):
    """The test suite's private Postfix, with extra master.cf services (``postconf -M`` entries)."""

    def __init__(self, *args, extra_master_cf=(), **kwargs):
        self.extra_master_cf = list(extra_master_cf)
        super().__init__(*args, **kwargs)

    def _write_config(self) -> None:
        super()._write_config()
        for entry in self.extra_master_cf:
            self.postconf("-M", entry)


def measure(milter: str | None = None, messages: int = 500, sessions: int = 1,
            xclient_addr: str | None = None, *, milter_default_action: str = "tempfail",
            sender: str = "bench@example.org", recipient: str = "sink@example.net",
            helo: str = "mx.example.net", size: int = 1000, warmup: int = 5,
            extra_main_cf: dict | None = None, timeout: float = 300.0,
            workdir: str | os.PathLike | None = None, keep: bool = False, reuse_connections: bool = False,
            extra_master_cf=(), milter_pid: int | None = None) -> Result:
    """Run smtp-source -> private Postfix (+ ``milter``) -> smtp-sink once; see the module doc."""
    if messages < 1 or sessions < 1:
        raise ValueError("messages and sessions must be >= 1")
    usable, why = postfix_available()
    if not usable:
        raise BenchError(why)
    own_dir = workdir is None
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="spfmilter-e2e-"))
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)  # Postfix's own users must reach the queue below it
    sink = inst = proxy = None
    try:
        sink = SmtpSink()
        # Relay for every client: with xclient_addr the client is not in mynetworks.  (smtpd
        # insists on a reject_unauth_destination in the list, even if it is never reached.)
        main_cf = {"smtpd_relay_restrictions": "check_client_access static:OK, reject_unauth_destination",
                   **(extra_main_cf or {})}
        inst = _Postfix(base / "postfix", relayhost=f"[127.0.0.1]:{sink.port}", mydestination=(),
                        milters=milter, milter_default_action=milter_default_action,
                        extra_main_cf=main_cf, name="e2e", extra_master_cf=extra_master_cf)
        inst.start()
        port = inst.port
        if xclient_addr:
            proxy = XclientProxy(inst.port, xclient_addr)
            port = proxy.port

        def run(count: int, label: str) -> tuple[float, float, float]:
            """(started, source done, sink done) perf_counter times."""
            target = sink.count + count
            started = time.perf_counter()
            source = _run_source(port, count, min(sessions, count), sender, recipient, helo, size,
                                 reuse_connections)
            try:
                out, err = source.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                source.kill()
                out, err = source.communicate()
                raise BenchError(f"{label}: smtp-source still running after {timeout:.0f}s") from None
            submitted = time.perf_counter()
            if source.returncode != 0:
                raise BenchError(
                    f"{label}: smtp-source exited {source.returncode}: "
                    f"{(out + err).decode(errors='replace').strip()}"
                    + (f"\nproxy: {proxy.errors[:3]}" if proxy and proxy.errors else "")
                    + "\n--- postfix log (tail) ---\n" + "\n".join(inst.log().splitlines()[-20:]))
            done = sink.wait_for(target, max(1.0, timeout - (submitted - started)))
            if done is None:
                raise BenchError(
                    f"{label}: smtp-sink has {sink.count - (target - count)} of {count} messages after "
                    f"{timeout:.0f}s\n--- queue ---\n{inst.queue_listing().strip()}"
                    "\n--- postfix log (tail) ---\n" + "\n".join(inst.log().splitlines()[-20:]))
            return started, submitted, done

        if warmup:
            run(warmup, "warm-up")
        before = sink.count
        client_cpu = time.process_time()
        milter_cpu = procs.cpu_seconds(milter_pid) if milter_pid else 0.0
        started, submitted, done = run(messages, "timed run")
        seconds = done - started
        client_cpu = time.process_time() - client_cpu
        milter_cpu = procs.cpu_seconds(milter_pid) - milter_cpu if milter_pid else 0.0
        delivered = sink.count - before
        return Result(msgs_per_s=messages / seconds, seconds=seconds, delivered=delivered, messages=messages,
                      sessions=sessions, submit_seconds=submitted - started, milter=milter,
                      xclient_addr=xclient_addr, reuse_connections=reuse_connections,
                      client_cpu_ms_per_msg=1000 * client_cpu / messages,
                      milter_cpu_ms_per_msg=1000 * milter_cpu / messages)
    except PostfixError as exc:
        raise BenchError(str(exc)) from None
    finally:
        if proxy is not None:
            proxy.close()
        if inst is not None:
            inst.close()
        if sink is not None:
            sink.stop()
        if own_dir and not keep:
            shutil.rmtree(base, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.postfix_e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=1, help="parallel smtp-source sessions (connections)")
    parser.add_argument("--milter", help="smtpd_milters value, e.g. inet:127.0.0.1:8890 or unix:/path")
    parser.add_argument("--milter-default-action", default="tempfail")
    parser.add_argument("--xclient-addr", help="present this client address to Postfix via an XCLIENT proxy")
    parser.add_argument("--sender", default="bench@example.org")
    parser.add_argument("--recipient", default="sink@example.net")
    parser.add_argument("--helo", default="mx.example.net")
    parser.add_argument("--size", type=int, default=1000, help="message payload bytes (smtp-source -l)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed messages first")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--reuse-connections", action="store_true",
                        help="send each session's messages over one connection (smtp-source -d); "
                             "default: one message per connection")
    parser.add_argument("--workdir", help="keep everything here (default: a temporary directory, removed)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        result = measure(milter=args.milter, messages=args.messages, sessions=args.sessions,
                         xclient_addr=args.xclient_addr, milter_default_action=args.milter_default_action,
                         sender=args.sender, recipient=args.recipient, helo=args.helo, size=args.size,
                         warmup=args.warmup, timeout=args.timeout, workdir=args.workdir,
                         reuse_connections=args.reuse_connections)
    except BenchError as exc:
        print(f"postfix_e2e: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result)) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
