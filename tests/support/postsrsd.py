"""Private PostSRSd 1.x instances for the SRS interoperability tests (loopback only).

Debian's ``postsrsd`` package would create a system user and start a system-wide daemon,
so it is never installed: ``dev.sh`` unpacks it with ``dpkg-deb -x`` into
``/opt/spfmilter-postsrsd`` (``SPFMILTER_POSTSRSD_ROOT`` overrides).  It needs only libc.
An instance::

    with PostSRSd(tmp_path / "srsd", "srs.test", ["s3cret", "older-secret"]) as srsd:
        rewritten = srsd.forward("alice@example.com")   # 'SRS0=HHHH=TT=example.com=alice@srs.test'
        assert srsd.reverse(rewritten) == "alice@example.com"

* the secrets go to ``secrets`` (mode 0600) in the instance directory, one a line; the
  first signs, all of them verify;
* ``postsrsd`` runs in the foreground (no ``-D``) in its own session, listening only on
  127.0.0.1 (``-l 127.0.0.1 -4``) on two free ports, the forward and the reverse Postfix
  ``tcp_table``; as root it drops to ``nobody`` after binding and reading the secrets
  (``-u nobody``), otherwise it runs as the calling user; stdout/stderr (start-up errors)
  go to ``postsrsd.out``, its per-request messages to syslog;
* readiness is a successful TCP connect to both ports, polled with a deadline;
* it forks one child per connection; ``stop()`` terminates the whole process group.

PostSRSd 1.x behaviour worth knowing (checked against Debian's 1.10):

* ``forward`` of an address in the SRS domain itself returns it unchanged (``200``),
  unless ``always_rewrite`` (``-A``); an address in an ``exclude`` domain (``-X``; a
  leading dot matches subdomains only) gets ``500`` (``forward()`` gives None);
* ``forward`` of an SRS address that *this* instance can reverse gets ``500 Already
  rewritten``; an SRS0 address of another domain becomes SRS1;
* ``reverse`` ignores the domain after ``@``; the SRS0 timestamp may be at most 21 days old.
"""
from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.postfix import free_port

__all__ = ["POSTSRSD_ROOT", "PostSRSd", "PostSRSdError", "postsrsd_available", "postsrsd_binary",
           "tcp_table_decode", "tcp_table_encode"]

POSTSRSD_ROOT = Path(os.environ.get("SPFMILTER_POSTSRSD_ROOT", "/opt/spfmilter-postsrsd"))
_CANDIDATES = (POSTSRSD_ROOT / "usr/sbin/postsrsd", Path("/usr/sbin/postsrsd"))
_SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
FORWARD = "forward"
REVERSE = "reverse"


def postsrsd_binary() -> str | None:
    """The unpacked (or installed) postsrsd executable, or None."""
    for candidate in _CANDIDATES:
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def postsrsd_available() -> tuple[bool, str]:
    """(usable, reason): a postsrsd 1.x binary that runs (its libraries are present)."""
    binary = postsrsd_binary()
    if binary is None:
        return False, f"{_CANDIDATES[0]} missing (`./dev.sh install` unpacks Debian's postsrsd there)"
    try:
        proc = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False,
                              env={"PATH": _SAFE_PATH, "LANG": "C"})
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{binary} -v failed: {exc}"
    version = proc.stdout.strip()
    if proc.returncode != 0 or not version.startswith("1."):
        return False, f"{binary} -v: exit {proc.returncode}, {version or proc.stderr.strip()!r} (need PostSRSd 1.x)"
    return True, ""


class PostSRSdError(RuntimeError):
    pass


# ---------------------------------------------------------------- tcp_table(5) encoding
def tcp_table_encode(text: str) -> bytes:
    """URL-style %XX encoding of whitespace, ``%`` and non-printable bytes (UTF-8)."""
    out = bytearray()
    for byte in text.encode("utf-8", "surrogateescape"):
        if byte <= 0x20 or byte >= 0x7F or byte == 0x25:
            out += b"%%%02X" % byte
        else:
            out.append(byte)
    return bytes(out)


def tcp_table_decode(data: bytes) -> str:
    """Inverse of tcp_table_encode; raises PostSRSdError on a malformed %XX."""
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i] == 0x25:
            pair = data[i + 1:i + 3]
            if len(pair) != 2 or not all(c in b"0123456789abcdefABCDEF" for c in pair):
                raise PostSRSdError(f"malformed %XX escape in {data!r}")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(data[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


class PostSRSd:
    """One private postsrsd daemon under ``directory``; see the module docstring."""

    def __init__(self, directory, domain: str, secrets: Sequence[str], *, separator: str = "=",
                 hash_length: int | None = None, hash_min: int | None = None,
                 exclude: Sequence[str] = (), always_rewrite: bool = False,
                 host: str = "127.0.0.1"):
        if not secrets:
            raise ValueError("at least one secret is needed")
        for secret in secrets:
            if not secret or any(c in secret for c in "\r\n\0") or len(secret.encode()) > 1000:
                raise ValueError(f"unusable secret {secret!r} (one line, 1..1000 bytes)")
        if separator not in ("=", "+", "-"):
            raise ValueError("PostSRSd's separator is one of = + -")
        self.directory = Path(directory)
        self.domain = domain
        self.secrets = list(secrets)
        self.separator = separator
        self.hash_length = hash_length      # -n, PostSRSd's default 4
        self.hash_min = hash_min            # -N, PostSRSd's default: the hash length
        self.exclude = list(exclude)        # -X
        self.always_rewrite = always_rewrite  # -A
        self.host = host
        self.forward_port = 0
        self.reverse_port = 0
        self.proc: subprocess.Popen | None = None
        self.timeout = 10.0

    # ------------------------------------------------------------------ layout
    @property
    def secrets_path(self) -> Path:
        return self.directory / "secrets"

    @property
    def output_path(self) -> Path:
        return self.directory / "postsrsd.out"

    def output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except OSError:
            return ""

    def command(self) -> list[str]:
        binary = postsrsd_binary()
        if binary is None:
            raise PostSRSdError(postsrsd_available()[1])
        cmd = [binary, f"-s{self.secrets_path}", f"-d{self.domain}", f"-a{self.separator}",
               f"-l{self.host}", "-4", f"-f{self.forward_port}", f"-r{self.reverse_port}", "-t60"]
        if self.hash_length is not None:
            cmd.append(f"-n{self.hash_length}")
        if self.hash_min is not None:
            cmd.append(f"-N{self.hash_min}")
        if self.exclude:
            cmd.append("-X" + ",".join(self.exclude))
        if self.always_rewrite:
            cmd.append("-A")
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("nobody")
                cmd.append("-unobody")
            except KeyError:
                pass
        return cmd

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 15.0) -> PostSRSd:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.secrets_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(s + "\n" for s in self.secrets))
        os.chmod(self.secrets_path, 0o600)
        last = ""
        for _attempt in range(3):       # a free port may be taken again before postsrsd binds it
            self.forward_port, self.reverse_port = free_port(self.host), free_port(self.host)
            if self.forward_port == self.reverse_port:
                continue
            with open(self.output_path, "ab") as out:
                self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, cwd=str(self.directory),
                                             env={"PATH": _SAFE_PATH, "LANG": "C", "LC_ALL": "C"},
                                             start_new_session=True)
            try:
                self._wait_ready(timeout)
                return self
            except PostSRSdError as exc:
                last = str(exc)
                self.stop()
                if "Address already in use" not in self.output():
                    break
        raise PostSRSdError(f"postsrsd did not start: {last}\n--- output ---\n{self.output()}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = [self.forward_port, self.reverse_port]
        problem = "no attempt"
        while pending:
            if self.proc.poll() is not None:
                raise PostSRSdError(f"exited with status {self.proc.returncode}")
            try:
                with socket.create_connection((self.host, pending[0]), timeout=1.0):
                    pass
                pending.pop(0)
                continue
            except OSError as exc:
                problem = f"{self.host}:{pending[0]}: {exc}"
            if time.monotonic() >= deadline:
                raise PostSRSdError(f"not ready within {timeout}s ({problem})")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate postsrsd and its per-connection children (its own process group), and wait."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def __enter__(self) -> PostSRSd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ tcp_table
    def query(self, table: str, key: str) -> tuple[int, str]:
        """One ``get KEY`` on the forward or reverse table: (code, decoded text).

        Raises PostSRSdError for anything that is not one complete ``NNN text`` line with
        code 200, 400 or 500."""
        if self.proc is None:
            raise PostSRSdError("postsrsd is not running")
        port = {FORWARD: self.forward_port, REVERSE: self.reverse_port}[table]
        request = b"get " + tcp_table_encode(key) + b"\n"
        with socket.create_connection((self.host, port), timeout=self.timeout) as sock:
            sock.sendall(request)
            with sock.makefile("rb") as reader:
                line = reader.readline(8192)
        if not line.endswith(b"\n"):
            raise PostSRSdError(f"{table} table: incomplete reply {line!r} to {request!r}")
        line = line[:-1]
        code, _, text = line.partition(b" ")
        if code not in (b"200", b"400", b"500") or not _:
            raise PostSRSdError(f"{table} table: malformed reply {line!r} to {request!r}")
        return int(code), tcp_table_decode(text)

    def _lookup(self, table: str, address: str) -> str | None:
        code, text = self.query(table, address)
        if code == 200:
            return text
        if code == 500:
            return None
        raise PostSRSdError(f"{table} table: temporary error for {address!r}: 400 {text}")

    def forward(self, address: str) -> str | None:
        """The forward-rewritten address, or None when postsrsd answers 500 (not rewritten)."""
        return self._lookup(FORWARD, address)

    def reverse(self, address: str) -> str | None:
        """The original address behind an SRS address, or None (500: not SRS, bad hash, too old)."""
        return self._lookup(REVERSE, address)

    def __repr__(self) -> str:
        return f"<PostSRSd {self.domain} forward={self.forward_port} reverse={self.reverse_port}>"
