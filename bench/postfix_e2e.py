"""End-to-end message rate through a private Postfix: smtp-source -> Postfix (+ milter) -> smtp-sink.

    python -m bench.postfix_e2e --messages 500 [--sessions 1] [--milter inet:127.0.0.1:8890]
                                [--xclient-addr 192.0.2.7] [--size 1000] [--json]

What runs (Debian's Postfix tools, everything on 127.0.0.1, no DNS):

* ``smtp-sink -c`` on a free port counts the messages it receives (its running
  ``mesg=N`` counter is read from its output);
* a private Postfix (tests/support/postfix.py) with one smtpd on a free port, no local
  domains, ``relayhost = [127.0.0.1]:SINKPORT`` (numeric, so no MX or A lookups), DNS
  disabled for the SMTP client, empty client restrictions, relaying permitted for every
  client (``check_client_access static:OK``), and the milter (if any) in
  ``smtpd_milters`` with ``milter_protocol = 6``; ``extra_main_cf`` overrides any of it;
* ``smtp-source -d -s SESSIONS -m MESSAGES`` submits: each session is one connection
  that sends its share of the messages back to back (``-d``), HELO ``mx.example.net``.

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
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.support.postfix import (
    PostfixError,
    PostfixInstance,
    free_port,
    postfix_available,
    smtp_sink_path,
    smtp_source_path,
    wait_smtp_greeting,
)

__all__ = ["BenchError", "Result", "SmtpSink", "XclientProxy", "main", "measure"]


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

    def __str__(self) -> str:
        how = self.milter or "no milter"
        if self.xclient_addr:
            how += f", XCLIENT {self.xclient_addr}"
        return (f"{self.delivered}/{self.messages} messages, {self.sessions} session(s), {how}: "
                f"{self.seconds:.2f} s -> {self.msgs_per_s:.0f} msgs/s "
                f"(submission done after {self.submit_seconds:.2f} s)")


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


class XclientProxy:
    """Loopback proxy: opens each upstream SMTP connection with XCLIENT, then relays bytes.

    The client (smtp-source) gets Postfix's post-XCLIENT 220 greeting as its greeting and
    then sends HELO/EHLO itself, as Postfix requires after XCLIENT.
    """

    def __init__(self, upstream_port: int, addr: str, name: str = "[UNAVAILABLE]"):
        self.upstream = ("127.0.0.1", upstream_port)
        self.command = f"XCLIENT ADDR={addr} NAME={name}\r\n".encode()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.errors: list[str] = []
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    @staticmethod
    def _read_reply(sock: socket.socket) -> bytes:
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"upstream closed the connection after {data!r}")
            data += chunk
            lines = data.split(b"\r\n")
            if any(re.match(rb"^\d{3}(?: |$)", line) for line in lines[:-1]):
                return data

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            upstream = socket.create_connection(self.upstream, timeout=60)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            greeting = self._read_reply(upstream)
            if not greeting.startswith(b"220"):
                client.sendall(greeting)
                return
            upstream.sendall(self.command)
            reply = self._read_reply(upstream)
            if not reply.startswith(b"220"):
                self.errors.append(f"XCLIENT refused: {reply.decode(errors='replace').strip()}")
                client.sendall(b"421 4.3.0 xclient proxy: upstream refused XCLIENT\r\n")
                return
            client.sendall(reply)
            upstream.settimeout(None)
            back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
            back.start()
            self._pump(client, upstream)
            back.join()
        except OSError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    sock.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._closing = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._accept_thread.join(5)
        for thread in self._threads:
            thread.join(5)


def _run_source(port: int, count: int, sessions: int, sender: str, recipient: str, helo: str,
                size: int, timeout: float) -> subprocess.Popen:
    path = smtp_source_path()
    if path is None:
        raise BenchError("smtp-source not found (Debian package postfix ships /usr/sbin/smtp-source)")
    argv = [path, "-d", "-s", str(sessions), "-m", str(count), "-M", helo, "-f", sender,
            "-t", recipient, "-l", str(size), f"127.0.0.1:{port}"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def measure(milter: str | None = None, messages: int = 500, sessions: int = 1,
            xclient_addr: str | None = None, *, milter_default_action: str = "tempfail",
            sender: str = "bench@example.org", recipient: str = "sink@example.net",
            helo: str = "mx.example.net", size: int = 1000, warmup: int = 5,
            extra_main_cf: dict | None = None, timeout: float = 300.0,
            workdir: str | os.PathLike | None = None, keep: bool = False) -> Result:
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
        inst = PostfixInstance(base / "postfix", relayhost=f"[127.0.0.1]:{sink.port}", mydestination=(),
                               milters=milter, milter_default_action=milter_default_action,
                               extra_main_cf=main_cf, name="e2e")
        inst.start()
        port = inst.port
        if xclient_addr:
            proxy = XclientProxy(inst.port, xclient_addr)
            port = proxy.port

        def run(count: int, label: str) -> tuple[float, float, float]:
            """(started, source done, sink done) perf_counter times."""
            target = sink.count + count
            started = time.perf_counter()
            source = _run_source(port, count, min(sessions, count), sender, recipient, helo, size, timeout)
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
        started, submitted, done = run(messages, "timed run")
        seconds = done - started
        delivered = sink.count - before
        return Result(msgs_per_s=messages / seconds, seconds=seconds, delivered=delivered, messages=messages,
                      sessions=sessions, submit_seconds=submitted - started, milter=milter,
                      xclient_addr=xclient_addr)
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
    parser.add_argument("--workdir", help="keep everything here (default: a temporary directory, removed)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        result = measure(milter=args.milter, messages=args.messages, sessions=args.sessions,
                         xclient_addr=args.xclient_addr, milter_default_action=args.milter_default_action,
                         sender=args.sender, recipient=args.recipient, helo=args.helo, size=args.size,
                         warmup=args.warmup, timeout=args.timeout, workdir=args.workdir)
    except BenchError as exc:
        print(f"postfix_e2e: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result)) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
