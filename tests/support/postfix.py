"""Private Postfix instances for tests and benchmarks (Debian's postfix >= 3.4, run as root).

Each instance has its own configuration directory, queue, data directory, log file and
mail store, listens only on 127.0.0.1 (an smtpd on a free port) and never touches
``/etc/postfix`` or a system-wide Postfix::

    from tests.support.postfix import PostfixInstance

    with PostfixInstance(tmp_path / "pf", milters="inet:127.0.0.1:8890") as inst:
        result = inst.send("a@example.org", ["user@mx.test"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n",
                           client_ip="192.0.2.7", helo="mx.example.net")
        assert result.code == 250, result.transcript_text()
        [msg] = inst.wait_for_delivery("user", 1)

Layout under ``base_dir``::

    etc/        main.cf (written from scratch) and master.cf (copied, then sanitised)
    maillog     the log (maillog_file, written by postlogd)
    run/        queue (spool/), data_directory (data/) and delivered mail (mail/)

How it works on Debian, and why:

* ``postfix -c DIR`` (with ``MAIL_CONFIG=DIR`` in the environment too) selects the instance.
  As root neither ``postfix`` nor ``postqueue`` asks for the directory to be listed in the
  default main.cf's ``alternate_config_directories``; only non-root (set-gid) commands
  such as ``postqueue`` run by an ordinary user do.  So nothing in /etc/postfix changes.
  The package's read-only files are still used: ``meta_directory`` (/etc/postfix:
  postfix-files, dynamicmaps.cf) and ``daemon_directory`` (/usr/lib/postfix/sbin).
* ``postfix start`` runs ``post-install create-missing``, which creates the queue
  subdirectories with the right owners (postfix / postdrop); we only create the queue
  directory itself (root, 0755) and ``data_directory`` (owned by ``mail_owner``:
  the master opens ``master.lock`` there *after* switching to the postfix uid).
* Because of that, and because the delivery agent writes Maildirs as an unprivileged uid,
  the ``run/`` tree must be reachable (search permission on every ancestor) by the
  postfix user and by the delivery uid.  pytest's ``tmp_path`` lives under a 0700
  directory, so when ``base_dir`` is not reachable ``run/`` is a symlink to a fresh
  0755 directory under the system temp dir, removed again by ``close()`` / ``__exit__``.
* ``maillog_file`` (Postfix 3.4+) needs the ``postlog`` service in master.cf and a path
  that starts with one of ``maillog_file_prefixes``; postlogd opens it as root.
* All services run unchrooted (a private queue has no /etc, /lib copies), every ``inet``
  service of the copied master.cf is removed (so nothing else binds a port) and one
  smtpd is added on ``127.0.0.1:PORT``.  ``inet_protocols = ipv4``,
  ``inet_interfaces = loopback-only``.
* No DNS: ``smtpd_peername_lookup = no``, ``smtp_dns_support_level = disabled``, native
  host lookups, and without a ``relayhost`` everything that is not local goes to the
  ``error`` transport instead of the network.
* Local mail: the ``mydestination`` domains are served by the virtual(8) delivery agent
  into one Maildir (``run/mail/maildir/``) as uid/gid ``nobody``; ``mailbox(user)`` picks
  the messages whose (topmost) ``Delivered-To`` is that user.
"""
from __future__ import annotations

import atexit
import email
import email.message
import email.policy
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import children, pid_alive

__all__ = [
    "PostfixError", "PostfixInstance", "Reply", "SendResult", "find_tool", "free_port",
    "postfix_available", "postfix_path", "postfix_version", "smtp_sink_path", "smtp_source_path",
    "wait_smtp_greeting",
]

# Debian ships the Postfix commands (postfix, postconf, postqueue, smtp-source, smtp-sink)
# in /usr/sbin, which is not on an ordinary user's PATH.
_TOOL_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/lib/postfix/sbin", "/usr/libexec/postfix")
_MASTER_CF_SOURCES = (
    Path("/etc/postfix/master.cf"),
    Path("/usr/share/postfix/master.cf.dist"),
    Path("/etc/postfix/master.cf.proto"),
)
_SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class PostfixError(RuntimeError):
    """A Postfix command failed; the message carries its output and the maillog tail."""


def find_tool(name: str) -> str | None:
    """Absolute path of a Postfix program (``postfix``, ``smtp-sink`` ...), or None."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _TOOL_DIRS:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def postfix_path() -> str | None:
    return find_tool("postfix")


def smtp_source_path() -> str | None:
    """Debian: /usr/sbin/smtp-source (package postfix)."""
    return find_tool("smtp-source")


def smtp_sink_path() -> str | None:
    """Debian: /usr/sbin/smtp-sink (package postfix)."""
    return find_tool("smtp-sink")


def postfix_available() -> tuple[bool, str]:
    """(usable, reason): whether private instances can run here (postfix installed, root)."""
    for tool in ("postfix", "postconf", "postqueue"):
        if find_tool(tool) is None:
            return False, f"{tool} is not installed (Debian package 'postfix')"
    if os.geteuid() != 0:
        return False, "private Postfix instances need root (postfix start)"
    try:
        version = postfix_version()
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"postconf does not run: {exc}"
    if version < (3, 4):
        return False, f"Postfix {'.'.join(map(str, version))} is too old (maillog_file needs 3.4)"
    return True, ""


_version_cache: tuple[int, ...] | None = None


def postfix_version() -> tuple[int, ...]:
    global _version_cache
    if _version_cache is None:
        out = subprocess.run([find_tool("postconf") or "postconf", "-dh", "mail_version"],
                             capture_output=True, text=True, timeout=30, check=True,
                             env=_clean_env(None)).stdout.strip()
        _version_cache = tuple(int(part) for part in re.findall(r"\d+", out)[:3])
    return _version_cache


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_smtp_greeting(host: str, port: int, timeout: float = 30.0, alive=None,
                       codes: Sequence[str] = ("220",)) -> str:
    """Poll ``host:port`` until it answers with a complete greeting whose code is in ``codes``
    (default: 220); return the greeting text.

    ``alive`` (optional callable) is asked between attempts; when it returns False the
    wait is abandoned early.  Raises TimeoutError with the last problem seen.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt"
    delay = 0.02
    while True:
        try:
            attempt = max(0.1, min(2.0, deadline - time.monotonic()))
            with socket.create_connection((host, port), timeout=attempt) as sock:
                data = b""
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                    lines = data.split(b"\r\n")
                    if any(re.match(rb"^\d{3} ", line) for line in lines[:-1]):
                        break
                text = data.decode("utf-8", "replace")
                if text[:3] in codes:
                    try:
                        sock.sendall(b"QUIT\r\n")
                    except OSError:
                        pass
                    return text.strip()
                last = f"greeting {text.strip()!r}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no 220 greeting from {host}:{port} within {timeout:.0f}s ({last})")
        if alive is not None and not alive():
            raise TimeoutError(f"gave up waiting for {host}:{port}: the server is gone ({last})")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _clean_env(config_dir: Path | None) -> dict[str, str]:
    env = {"PATH": _SAFE_PATH, "LANG": "C", "LC_ALL": "C"}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    if config_dir is not None:
        env["MAIL_CONFIG"] = str(config_dir)
    return env


def _xtext(value: str) -> str:
    """RFC 3461 xtext, as XCLIENT wants for attribute values."""
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (ord("+"), ord("=")):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def _reachable_by(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether a process with uid/gids can search every directory from / down to ``path``."""
    for current in [*reversed(path.parents), path]:
        try:
            st = current.stat()
        except OSError:
            return False
        if uid == 0:
            continue
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in gids:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True


def _user_ids(name: str) -> tuple[int, int, set[int]]:
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid, set(os.getgrouplist(name, entry.pw_gid))


@dataclass(frozen=True)
class Reply:
    """One SMTP exchange: the command sent (None for the greeting) and the server's reply."""

    command: str | None
    code: int
    text: str

    def __str__(self) -> str:
        lines = self.text.splitlines() or [""]
        return "\n".join(f"{self.code}{'-' if i < len(lines) - 1 else ' '}{line}" for i, line in enumerate(lines))


@dataclass
class SendResult:
    """Everything one ``send()`` saw.

    ``transcript``: every exchange in order (greeting, XCLIENT, EHLO, MAIL, RCPT..., DATA,
    end of data, QUIT).  ``rcpt``: per-recipient replies.  ``final``: the reply that decided
    the transaction -- the end-of-data reply if the message got that far, otherwise the
    first refusal that ended it; ``stage`` names where that was (``connect``, ``xclient``,
    ``ehlo``, ``mail``, ``rcpt``, ``data``, ``end-of-data``).  A code of -1 means the
    server closed the connection (``text`` says what happened).
    """

    transcript: list[Reply] = field(default_factory=list)
    rcpt: dict[str, Reply] = field(default_factory=dict)
    final: Reply | None = None
    stage: str = "connect"

    @property
    def code(self) -> int:
        return self.final.code if self.final else -1

    @property
    def text(self) -> str:
        return self.final.text if self.final else ""

    @property
    def accepted(self) -> bool:
        """True when the message was queued (2xx after the data)."""
        return self.stage == "end-of-data" and 200 <= self.code < 300

    @property
    def queue_id(self) -> str | None:
        if not self.accepted:
            return None
        match = re.search(r"queued as ([0-9A-Za-z]+)", self.text)
        return match.group(1) if match else None

    def reply(self, command: str) -> Reply | None:
        """The first exchange whose command starts with ``command`` (case-insensitive)."""
        for item in self.transcript:
            if item.command is not None and item.command.upper().startswith(command.upper()):
                return item
        return None

    def transcript_text(self) -> str:
        out = []
        for item in self.transcript:
            if item.command is not None:
                out.append(f">>> {item.command}")
            out.extend(f"<<< {line}" for line in str(item).splitlines())
        return "\n".join(out)


_live_instances: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - only on abnormal exits
    for inst in list(_live_instances):
        try:
            inst.close()
        except Exception:
            pass


class SmtpSubmitter:
    """SMTP client side of a test MTA (``self.port`` on 127.0.0.1): submits mail, records transcripts."""

    port: int | None

    def send(self, sender: str, rcpts: Iterable[str] | str, message: bytes | str, *,
             client_ip: str | None = "192.0.2.7", helo: str = "mx.example.net",
             client_name: str = "[UNAVAILABLE]", login: str | None = None,
             timeout: float = 60.0) -> SendResult:
        """One SMTP transaction (with XCLIENT unless ``client_ip`` is None); never raises for 4xx/5xx."""
        return self.send_several([(sender, rcpts, message)], client_ip=client_ip, helo=helo,
                                 client_name=client_name, login=login, timeout=timeout)[0]

    def send_several(self, transactions: Sequence[tuple[str, Iterable[str] | str, bytes | str]], *,
                     client_ip: str | None = "192.0.2.7", helo: str = "mx.example.net",
                     client_name: str = "[UNAVAILABLE]", login: str | None = None,
                     timeout: float = 60.0) -> list[SendResult]:
        """Several transactions (sender, rcpts, message) on one SMTP connection, RSET between them.

        The greeting, XCLIENT and EHLO are in the first result's transcript; each later one
        starts with its RSET.  A transaction never reached has ``final`` None.
        """
        results = [SendResult() for _ in transactions]
        smtp = smtplib.SMTP(local_hostname="client.test", timeout=timeout)
        current = results[0]
        try:
            if self._greet(smtp, current, client_ip, helo, client_name, login):
                for index, (sender, rcpts, message) in enumerate(transactions):
                    current = results[index]
                    if isinstance(rcpts, str):
                        rcpts = [rcpts]
                    if isinstance(message, str):
                        message = message.encode("utf-8")
                    if index:
                        current.stage = "rset"
                        reply = self._exchange(smtp, current, "RSET")
                        if reply.code != 250:
                            current.final = reply
                            break
                    if not self._transaction(smtp, current, sender, list(rcpts), message):
                        break
                else:
                    self._exchange(smtp, current, "QUIT")
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            current.final = Reply(None, -1, f"connection lost at {current.stage}: {exc}")
            current.transcript.append(current.final)
        finally:
            try:
                smtp.close()
            except OSError:
                pass
        return results

    @staticmethod
    def _exchange(smtp, result: SendResult, command: str) -> Reply:
        verb, _, args = command.partition(" ")
        code, text = smtp.docmd(verb, args)
        reply = Reply(command, code, text.decode("utf-8", "replace"))
        result.transcript.append(reply)
        return reply

    def _greet(self, smtp, result, client_ip, helo, client_name, login) -> bool:
        """Connect, XCLIENT, EHLO; on a refusal record it as ``final`` and return False."""
        result.stage = "connect"
        code, text = smtp.connect("127.0.0.1", self.port)
        greeting = Reply(None, code, text.decode("utf-8", "replace"))
        result.transcript.append(greeting)
        if code != 220:
            result.final = greeting
            return False
        steps = []
        if client_ip is not None:
            attrs = [f"ADDR={_xtext(client_ip)}", f"NAME={_xtext(client_name)}", f"HELO={_xtext(helo)}"]
            if login is not None:
                attrs.append(f"LOGIN={_xtext(login)}")
            steps += [("EHLO client.test", "ehlo", 250), ("XCLIENT " + " ".join(attrs), "xclient", 220)]
        steps.append((f"EHLO {helo}", "ehlo", 250))
        for command, stage, wanted in steps:
            result.stage = stage
            reply = self._exchange(smtp, result, command)
            if reply.code != wanted:
                self._give_up(smtp, result, reply)
                return False
        return True

    def _give_up(self, smtp, result: SendResult, reply: Reply) -> None:
        result.final = reply
        try:
            if reply.code != 421 and reply.code > 0:
                self._exchange(smtp, result, "QUIT")
        except (smtplib.SMTPServerDisconnected, OSError):
            pass

    def _transaction(self, smtp, result, sender, rcpts, message) -> bool:
        """MAIL, RCPT..., DATA; True if the connection can carry another transaction."""
        result.stage = "mail"
        reply = self._exchange(smtp, result, f"MAIL FROM:<{sender}>")
        if reply.code != 250:
            result.final = reply
            return reply.code != 421
        accepted = 0
        last = None
        result.stage = "rcpt"
        for rcpt in rcpts:
            last = self._exchange(smtp, result, f"RCPT TO:<{rcpt}>")
            result.rcpt[rcpt] = last
            accepted += 200 <= last.code < 300
            if last.code == 421:
                result.final = last
                return False
        if not accepted:
            result.final = last if last is not None else Reply(None, -1, "no recipients")
            return True
        result.stage = "data"
        reply = self._exchange(smtp, result, "DATA")
        if reply.code != 354:
            result.final = reply
            return reply.code != 421
        data = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
        data = re.sub(rb"(?m)^\.", b"..", data)
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
        result.stage = "end-of-data"
        smtp.send(data + b".\r\n")
        code, text = smtp.getreply()
        result.final = Reply(".", code, text.decode("utf-8", "replace"))
        result.transcript.append(result.final)
        return code != 421


class PostfixInstance(SmtpSubmitter):
    """One private Postfix: its own config, queue, log, Maildir and loopback smtpd port.

    ``milters``: None, one milter spec (``"inet:127.0.0.1:PORT"``, ``"unix:/path"``) or a list.
    ``relayhost``: e.g. ``"[127.0.0.1]:2525"`` sends everything non-local there.
    ``mydestination``: domains delivered into the Maildir (virtual(8) domains, not Postfix's
    own ``mydestination``, which stays empty).  ``extra_main_cf`` overrides anything.
    """

    def __init__(self, base_dir, smtpd_port: int | None = None, milters=None,
                 milter_default_action: str = "tempfail", relayhost: str | None = None,
                 extra_main_cf: Mapping[str, object] | None = None, mydomain: str = "mx.test",
                 mydestination: Sequence[str] = ("mx.test",), name: str | None = None,
                 start_timeout: float = 60.0):
        self.base_dir = Path(base_dir).absolute()
        self.port = smtpd_port
        if isinstance(milters, str):
            milters = [milters]
        self.milters = list(milters) if milters else []
        self.milter_default_action = milter_default_action
        self.relayhost = relayhost
        self.extra_main_cf = dict(extra_main_cf or {})
        self.mydomain = mydomain
        self.mydestination = tuple(mydestination)
        self.name = name or re.sub(r"[^A-Za-z0-9_.-]", "-", self.base_dir.name) or "test"
        self.start_timeout = start_timeout
        self.config_dir = self.base_dir / "etc"
        self.maillog_path = self.base_dir / "maillog"
        self.run_link = self.base_dir / "run"
        self.run_dir: Path | None = None       # real location of queue, data and mail
        self._external_run_dir = False
        self.master_pid: int | None = None
        self.greeting: str | None = None
        self._started = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ paths
    @property
    def queue_dir(self) -> Path:
        return self._run() / "spool"

    @property
    def data_dir(self) -> Path:
        return self._run() / "data"

    @property
    def maildir(self) -> Path:
        return self._run() / "mail" / "maildir"

    def _run(self) -> Path:
        if self.run_dir is None:
            raise PostfixError("instance not set up yet (call start())")
        return self.run_dir

    # ------------------------------------------------------------------ commands
    def _cmd(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        tool = find_tool(args[0])
        if tool is None:
            raise PostfixError(f"{args[0]} not found (is the Debian package 'postfix' installed?)")
        argv = [tool]
        if args[0] in ("postfix", "postconf", "postqueue", "postsuper"):
            argv += ["-c", str(self.config_dir)]
        argv += list(args[1:])
        proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,
                              env=_clean_env(self.config_dir), cwd="/", stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise PostfixError(self._diagnose(f"{' '.join(argv)} exited {proc.returncode}", proc))
        return proc

    def postconf(self, *args: str) -> str:
        """Run ``postconf -c DIR ARGS`` and return its output."""
        return self._cmd("postconf", *args).stdout

    def _diagnose(self, what: str, proc: subprocess.CompletedProcess | None = None) -> str:
        parts = [f"private Postfix {self.name} ({self.config_dir}): {what}"]
        if proc is not None:
            if proc.stdout.strip():
                parts.append("--- stdout ---\n" + proc.stdout.rstrip())
            if proc.stderr.strip():
                parts.append("--- stderr ---\n" + proc.stderr.rstrip())
        log = self.log()
        if log:
            parts.append("--- maillog (tail) ---\n" + "\n".join(log.splitlines()[-40:]))
        return "\n".join(parts)

    # ------------------------------------------------------------------ setup
    def _prepare_run_dir(self) -> None:
        """Pick where queue, data and Maildir live: reachable by postfix and the delivery uid."""
        owner = pwd.getpwnam("postfix")
        self.mail_owner = owner.pw_name
        self.mail_uid, self.mail_gid = owner.pw_uid, owner.pw_gid
        try:
            self.delivery_uid, self.delivery_gid, _ = _user_ids("nobody")
        except KeyError:
            self.delivery_uid, self.delivery_gid = self.mail_uid, self.mail_gid
        needed = [_user_ids(self.mail_owner)]
        needed.append((self.delivery_uid, self.delivery_gid, {self.delivery_gid}))
        if self.run_link.is_symlink():
            self.run_link.unlink()
        if all(_reachable_by(self.base_dir, uid, gids) for uid, _, gids in needed):
            self.run_dir = self.run_link
            self.run_dir.mkdir(exist_ok=True)
            self._external_run_dir = False
        else:
            self.run_dir = Path(tempfile.mkdtemp(prefix=f"postfix-{self.name}-"))
            self._external_run_dir = True
            self.run_link.symlink_to(self.run_dir)
        os.chmod(self.run_dir, 0o755)
        if not all(_reachable_by(self.run_dir, uid, gids) for uid, _, gids in needed):
            raise PostfixError(f"{self.run_dir} is not reachable by the postfix/nobody users; "
                               "give its ancestors search (o+x) permission")
        queue = self.run_dir / "spool"
        queue.mkdir(exist_ok=True)
        os.chown(queue, 0, 0)
        os.chmod(queue, 0o755)
        data = self.run_dir / "data"
        data.mkdir(exist_ok=True)
        os.chown(data, self.mail_uid, self.mail_gid)
        os.chmod(data, 0o700)
        mail = self.run_dir / "mail"
        mail.mkdir(exist_ok=True)
        os.chown(mail, self.delivery_uid, self.delivery_gid)
        os.chmod(mail, 0o755)

    def main_cf(self) -> dict[str, str]:
        """The main.cf settings this instance is started with."""
        version = postfix_version()
        run = self._run()
        settings: dict[str, object] = {
            "compatibility_level": "3.6" if version >= (3, 6) else "2",
            "queue_directory": run / "spool",
            "data_directory": run / "data",
            # logging: a private file, through postlogd (needs the postlog service)
            "maillog_file": self.maillog_path,
            "maillog_file_prefixes": f"{self.base_dir}, /var, /dev/stdout",
            "syslog_name": f"postfix-{self.name}",
            "import_environment": "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C POSTLOG_SERVICE POSTLOG_HOSTNAME",
            # network: loopback, IPv4, no DNS anywhere
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "myhostname": self.mydomain,
            "mydomain": self.mydomain,
            "myorigin": "$myhostname",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relayhost": self.relayhost or "",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "smtpd_peername_lookup": "no",
            "smtp_tls_security_level": "",
            "smtpd_tls_security_level": "",
            # smtpd
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "smtpd_client_restrictions": "",
            "smtpd_helo_restrictions": "",
            "smtpd_sender_restrictions": "",
            "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            # local mail: one Maildir for all mydestination domains (virtual(8), uid nobody)
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "virtual_mailbox_domains": ", ".join(self.mydestination),
            "virtual_mailbox_base": run / "mail",
            "virtual_mailbox_maps": "static:maildir/" if self.mydestination else "",
            "virtual_uid_maps": f"static:{self.delivery_uid}",
            "virtual_gid_maps": f"static:{self.delivery_gid}",
            "virtual_minimum_uid": str(min(100, self.delivery_uid)),
        }
        if self.relayhost is None:
            # nothing leaves this instance: no DNS, no network
            settings["default_transport"] = "error:5.7.1 outbound mail disabled in this test instance"
            settings["relay_transport"] = "error:5.7.1 outbound mail disabled in this test instance"
        if self.milters:
            settings.update({
                "smtpd_milters": ", ".join(self.milters),
                "milter_default_action": self.milter_default_action,
                "milter_protocol": "6",
            })
        settings.update(self.extra_main_cf)
        return {key: ("" if value is None else str(value)) for key, value in settings.items()}

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.config_dir, 0o755)
        source = next((path for path in _MASTER_CF_SOURCES if path.is_file()), None)
        if source is None:
            raise PostfixError("no master.cf to start from (looked in " +
                               ", ".join(map(str, _MASTER_CF_SOURCES)) + ")")
        shutil.copyfile(source, self.config_dir / "master.cf")
        lines = [f"# private test instance {self.name}; generated by tests/support/postfix.py"]
        for key, value in self.main_cf().items():
            if "\n" in value:
                raise ValueError(f"main.cf value for {key} contains a newline")
            lines.append(f"{key} = {value}")
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")

        # master.cf: drop every inet listener of the copy (smtp, submission, postscreen ...),
        # add ours, run everything unchrooted, and make sure postlogd is there.
        services = self.postconf("-M")
        drop = []
        for line in services.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[1] == "inet":
                drop.append(f"{fields[0]}/inet")
        if drop:
            self.postconf("-MX", *drop)
        if self.port is None:
            self.port = free_port()
        listen = f"127.0.0.1:{self.port}"
        self.postconf("-M", f"{listen}/inet={listen} inet n - n - - smtpd")
        if not self.postconf("-M", "postlog/unix-dgram").strip():
            self.postconf("-M", "postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd")
        self.postconf("-F", "*/*/chroot=n")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PostfixInstance:
        with self._lock:
            if self.running:
                return self
            usable, why = postfix_available()
            if not usable:
                raise PostfixError(why)
            self.base_dir.mkdir(parents=True, exist_ok=True)
            if self.run_dir is None or not self.run_dir.is_dir():
                self._prepare_run_dir()
            self._write_config()
            self.maillog_path.touch()
            _live_instances.add(self)
            self._started = True
        mark = self.log_mark()
        try:
            proc = self._cmd("postfix", "start", check=False, timeout=self.start_timeout)
            if proc.returncode != 0:
                raise PostfixError(self._diagnose(f"postfix start exited {proc.returncode}", proc))
            self.master_pid = self._read_master_pid()
            if self.master_pid is None:
                raise PostfixError(self._diagnose("postfix start succeeded but there is no master.pid", proc))
            # Ready = smtpd answers.  With milter_default_action=reject and the milter down,
            # smtpd's answer is "554 ... not accepting connections": up, and refusing.
            codes = ("220", "554") if self.milters else ("220",)
            try:
                self.greeting = wait_smtp_greeting("127.0.0.1", self.port, timeout=self.start_timeout,
                                                   alive=lambda: self._healthy(mark), codes=codes)
            except TimeoutError as exc:
                raise PostfixError(self._diagnose(str(exc), proc)) from None
        except BaseException:
            self.close()
            raise
        return self

    def _healthy(self, since: int) -> bool:
        """Master alive and no fatal/panic logged since ``since`` (a smtpd that cannot start)."""
        return pid_alive(self.master_pid) and not re.search(r"\]: (fatal|panic): ", self.log(since))

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def processes(self) -> list[int]:
        """The master's pid and its children's (empty when stopped)."""
        pid = self.master_pid
        if pid is None or not pid_alive(pid):
            return []
        return [pid] + [child for child in children(pid) if pid_alive(child)]

    @property
    def running(self) -> bool:
        return self.master_pid is not None and pid_alive(self.master_pid)

    def stop(self, timeout: float = 30.0) -> None:
        """``postfix stop``; wait until the master and its children are gone.  Idempotent."""
        if not self._started:
            return
        pid = self.master_pid or self._read_master_pid()
        if pid is None or not pid_alive(pid):
            self.master_pid = None
            return
        waiting = [pid] + children(pid)
        self._cmd("postfix", "stop", check=False, timeout=timeout)
        deadline = time.monotonic() + timeout
        while any(pid_alive(p) for p in waiting):
            if time.monotonic() >= deadline:
                for p in waiting:  # only the processes of this instance
                    if pid_alive(p):
                        try:
                            os.kill(p, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                break
            time.sleep(0.02)
        self.master_pid = None

    def close(self) -> None:
        """stop(), then remove the run directory if it lives outside ``base_dir``."""
        self.stop()
        _live_instances.discard(self)
        if self._external_run_dir and self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            try:
                self.run_link.unlink()
            except OSError:
                pass
            self._external_run_dir = False

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ SMTP
    def smtp(self, timeout: float = 30.0) -> smtplib.SMTP:
        """An smtplib.SMTP connected to this instance (greeting read, no EHLO yet)."""
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=timeout)

    @staticmethod
    def xclient(smtp: smtplib.SMTP, addr: str = "192.0.2.7", helo: str = "mx.example.net",
                name: str = "[UNAVAILABLE]", login: str | None = None) -> tuple[int, str]:
        """Send XCLIENT (ADDR, NAME, HELO, LOGIN as given), then EHLO ``helo`` if it was accepted.

        Postfix answers a successful XCLIENT with a new 220 greeting and forgets the
        earlier EHLO, so EHLO is sent again (its reply is in ``smtp.ehlo_resp``).  Returns
        the XCLIENT reply as (code, text); nothing is raised for a refusal.
        """
        attrs = []
        if addr is not None:
            attrs.append(f"ADDR={_xtext(addr)}")
        if name is not None:
            attrs.append(f"NAME={_xtext(name)}")
        if helo is not None:
            attrs.append(f"HELO={_xtext(helo)}")
        if login is not None:
            attrs.append(f"LOGIN={_xtext(login)}")
        code, text = smtp.docmd("XCLIENT", " ".join(attrs))
        if code == 220:
            smtp.ehlo_resp = smtp.helo_resp = None
            smtp.does_esmtp = False
            smtp.esmtp_features = {}
            smtp.ehlo(helo or "client.test")
        return code, text.decode("utf-8", "replace")

    # ------------------------------------------------------------------ mail and logs
    def _maildir_files(self) -> list[Path]:
        files = []
        for sub in ("new", "cur"):
            directory = self.maildir / sub
            try:
                files.extend(p for p in directory.iterdir() if p.is_file())
            except FileNotFoundError:
                pass

        def key(path: Path):
            try:
                return (path.stat().st_mtime_ns, path.name)
            except OSError:
                return (0, path.name)
        return sorted(files, key=key)

    def _address(self, user: str) -> str:
        if "@" in user:
            return user.lower()
        domain = self.mydestination[0] if self.mydestination else self.mydomain
        return f"{user}@{domain}".lower()

    def mailbox(self, user: str | None = None) -> list[email.message.Message]:
        """Messages delivered so far, oldest first; ``user`` ("user" or "user@domain")
        selects those whose topmost Delivered-To is that address, None gives all."""
        wanted = None if user is None else self._address(user)
        out = []
        for path in self._maildir_files():
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue
            msg = email.message_from_bytes(raw, policy=email.policy.compat32)
            if wanted is not None:
                delivered = msg.get_all("Delivered-To") or []
                if not delivered or delivered[0].strip().lower() != wanted:
                    continue
            out.append(msg)
        return out

    def wait_for_delivery(self, user: str | None, count: int = 1, timeout: float = 20.0) -> list[email.message.Message]:
        """Poll the Maildir until ``user`` has at least ``count`` messages; return them."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.mailbox(user)
            if len(messages) >= count:
                return messages
            if time.monotonic() >= deadline:
                raise AssertionError(self._diagnose(
                    f"{len(messages)} of {count} message(s) for {user or 'anyone'} delivered after {timeout:.0f}s\n"
                    f"--- queue ---\n{self.queue_listing().rstrip()}"))
            time.sleep(0.05)

    def queue_listing(self) -> str:
        """``postqueue -p`` output."""
        proc = self._cmd("postqueue", "-p", check=False, timeout=30)
        return proc.stdout + proc.stderr

    def queue_empty(self) -> bool:
        return "Mail queue is empty" in self.queue_listing()

    def wait_queue_empty(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.queue_empty():
            if time.monotonic() >= deadline:
                raise AssertionError(self._diagnose(
                    f"queue not empty after {timeout:.0f}s\n--- queue ---\n{self.queue_listing().rstrip()}"))
            time.sleep(0.05)

    def log(self, since: int = 0) -> str:
        """The maillog text (from byte offset ``since``, see ``log_mark()``)."""
        try:
            with open(self.maillog_path, "rb") as handle:
                handle.seek(since)
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_mark(self) -> int:
        try:
            return self.maillog_path.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_for_log(self, pattern: str, timeout: float = 20.0, since: int = 0) -> re.Match:
        """Poll the maillog until ``pattern`` (a regex) appears; return the match."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.MULTILINE)
        while True:
            match = regex.search(self.log(since))
            if match:
                return match
            if time.monotonic() >= deadline:
                raise AssertionError(self._diagnose(f"{pattern!r} not logged within {timeout:.0f}s"))
            time.sleep(0.05)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PostfixInstance {self.name} 127.0.0.1:{self.port} {state}>"
