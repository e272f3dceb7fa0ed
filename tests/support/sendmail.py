"""Private Sendmail instances for tests (run as root, beside Debian's postfix package).

Debian's ``sendmail-bin`` conflicts with ``postfix``, so it is never installed: ``dev.sh``
unpacks ``sendmail-bin``, ``sendmail-cf`` and ``sendmail-base`` with ``dpkg-deb -x`` into
``/opt/spfmilter-sendmail`` (``SPFMILTER_SENDMAIL_ROOT`` overrides).  An instance::

    with SendmailInstance(tmp_path / "sm", milter_mc=line) as inst:
        result = inst.send("a@example.org", ["user@mx.test"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        [msg] = inst.wait_for_delivery("user", 1)

* its ``sendmail.cf`` is built with ``m4`` from the unpacked ``cf/`` macros and a minimal
  .mc (written to ``sendmail.mc`` beside it): a daemon on 127.0.0.1:PORT only, its own queue
  directory, pid file and status file, no aliases, no DNS (a service switch file with
  ``hosts files`` and its own hosts file), ``Cw mx.test``, and the caller's milter lines;
* every local recipient is accepted (the local mailer's ``w`` flag is removed) and delivered
  by a tiny shell script that writes one file per message into ``mail/USER/``;
* Sendmail stalls about a minute at start-up when the host name is not qualified, so the
  daemon runs under ``unshare -m -u``: host name ``mx.test`` and a bind-mounted
  ``/etc/hosts`` that maps it to 127.0.0.1 -- neither is visible outside the namespace;
* Sendmail logs only to syslog; its stdout/stderr (start-up errors) go to ``sendmail.out``.

Sendmail has no XCLIENT, so the milter always sees the client as 127.0.0.1.
"""
from __future__ import annotations

import email
import email.message
import email.policy
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterable

from tests.support.postfix import SendResult, SmtpSubmitter, free_port, wait_smtp_greeting
from tests.support.procs import pid_alive

SENDMAIL_ROOT = Path(os.environ.get("SPFMILTER_SENDMAIL_ROOT", "/opt/spfmilter-sendmail"))
SENDMAIL_BIN = SENDMAIL_ROOT / "usr/libexec/sendmail/sendmail"
CF_DIR = SENDMAIL_ROOT / "usr/share/sendmail/cf"
HOSTNAME = "mx.test"
_SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def sendmail_available() -> tuple[bool, str]:
    """(usable, reason): the unpacked Sendmail, m4, unshare and root."""
    if os.geteuid() != 0:
        return False, "needs root (unshare, bind mounts, Sendmail's own checks)"
    if not os.access(SENDMAIL_BIN, os.X_OK):
        return False, f"{SENDMAIL_BIN} missing (`./dev.sh install` unpacks sendmail-bin there)"
    if not (CF_DIR / "m4" / "cf.m4").is_file():
        return False, f"{CF_DIR}/m4/cf.m4 missing (`./dev.sh install` unpacks sendmail-cf there)"
    for tool in ("m4", "unshare", "hostname", "mount"):
        if shutil.which(tool, path=_SAFE_PATH) is None:
            return False, f"`{tool}` not found"
    return True, ""


class SendmailError(RuntimeError):
    pass


class SendmailInstance(SmtpSubmitter):
    """One private Sendmail daemon under ``base_dir``; see the module docstring."""

    def __init__(self, base_dir, milter_mc: str = "", port: int | None = None, extra_mc: str = ""):
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        self.milter_mc = milter_mc
        self.extra_mc = extra_mc
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ layout
    @property
    def cf_path(self) -> Path:
        return self.base_dir / "sendmail.cf"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "sendmail.pid"

    @property
    def mail_dir(self) -> Path:
        return self.base_dir / "mail"

    @property
    def queue_dir(self) -> Path:
        return self.base_dir / "mqueue"

    @property
    def output_path(self) -> Path:
        return self.base_dir / "sendmail.out"

    def mc_text(self) -> str:
        d = self.base_dir
        return f"""divert(-1)
dnl Private test instance of Sendmail (tests/support/sendmail.py)
divert(0)dnl
VERSIONID(`spfmilter test instance')dnl
OSTYPE(`linux')dnl
define(`confCF_VERSION', `spfmilter-test')dnl
undefine(`ALIAS_FILE')dnl
define(`QUEUE_DIR', `{self.queue_dir}')dnl
define(`STATUS_FILE', `{d}/statistics')dnl
define(`confPID_FILE', `{self.pid_file}')dnl
define(`confHOST_STATUS_DIRECTORY', `')dnl
define(`confSERVICE_SWITCH_FILE', `{d}/service.switch')dnl
define(`confHOSTS_FILE', `{d}/hosts')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confDONT_BLAME_SENDMAIL', `GroupWritableDirPathSafe')dnl
define(`confTO_IDENT', `0s')dnl
define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl
define(`confDELIVERY_MODE', `background')dnl
define(`confPRIVACY_FLAGS', `authwarnings')dnl
define(`confLOG_LEVEL', `9')dnl
FEATURE(`no_default_msa')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`accept_unqualified_senders')dnl
DAEMON_OPTIONS(`Port={self.port}, Addr=127.0.0.1, Name=MTA')dnl
define(`LOCAL_MAILER_PATH', `{d}/deliver')dnl
define(`LOCAL_MAILER_ARGS', `deliver $u')dnl
dnl no `w' (any user is local, no passwd check); `S' (the script runs as root)
define(`_DEF_LOCAL_MAILER_FLAGS', `lsDFMA5:/|@q')dnl
define(`LOCAL_MAILER_FLAGS', `SPhn9')dnl
{self.extra_mc}
{self.milter_mc}
MAILER(`local')dnl
MAILER(`smtp')dnl
LOCAL_CONFIG
Cw{HOSTNAME}
"""

    def _write_config(self) -> None:
        d = self.base_dir
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
        self.queue_dir.mkdir(mode=0o700, exist_ok=True)
        self.mail_dir.mkdir(exist_ok=True)
        (d / "statistics").touch()
        (d / "service.switch").write_text("hosts files\naliases files\n")
        (d / "hosts").write_text(f"127.0.0.1 {HOSTNAME} mx localhost\n::1 localhost\n")
        deliver = d / "deliver"
        deliver.write_text(
            "#!/bin/sh\n"
            "# Local mailer of the test Sendmail: one file per message in mail/USER/.\n"
            "umask 022\n"
            f"dir='{self.mail_dir}'/\"$1\"\n"
            "mkdir -p \"$dir\" || exit 73\n"
            "f=\"$dir/$(date +%s%N).$$\"\n"
            "cat > \"$f.tmp\" && mv \"$f.tmp\" \"$f\" || exit 75\n")
        os.chmod(deliver, 0o755)
        mc = d / "sendmail.mc"
        mc.write_text(self.mc_text())
        proc = subprocess.run(["m4", f"-D_CF_DIR_={CF_DIR}/", str(CF_DIR / "m4" / "cf.m4"), str(mc)],
                              capture_output=True, text=True, env={"PATH": _SAFE_PATH}, timeout=60)
        if proc.returncode != 0 or not proc.stdout:
            raise SendmailError(f"m4 failed ({proc.returncode}): {proc.stderr}")
        self.cf_path.write_text(proc.stdout)
        os.chmod(self.cf_path, 0o644)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> "SendmailInstance":
        self._write_config()
        script = (f"hostname {HOSTNAME} && mount --bind '{self.base_dir}/hosts' /etc/hosts && "
                  f"exec '{SENDMAIL_BIN}' -bD -q30m -C '{self.cf_path}'")
        with open(self.output_path, "ab") as out:
            self.proc = subprocess.Popen(["unshare", "-m", "-u", "--propagation", "private", "sh", "-c", script],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env={"PATH": _SAFE_PATH, "LANG": "C", "LC_ALL": "C"},
                                         cwd=str(self.base_dir), start_new_session=True)
        try:
            wait_smtp_greeting("127.0.0.1", self.port, timeout=timeout, alive=lambda: self.proc.poll() is None)
        except TimeoutError as exc:
            self.stop()
            raise SendmailError(f"Sendmail did not start: {exc}\n--- output ---\n{self.output()}") from exc
        return self

    def output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except OSError:
            return ""

    def _pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 20.0) -> None:
        pids = {p for p in (self._pid(), self.proc.pid if self.proc else None) if p}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # delivery children (own process group, started from the daemon) finish on their own
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.05)

    def __enter__(self) -> "SendmailInstance":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ SMTP
    def send(self, sender: str, rcpts: Iterable[str] | str, message: bytes | str, *,
             helo: str = "mx.example.net", timeout: float = 60.0) -> SendResult:
        """One SMTP transaction (no XCLIENT: the client is 127.0.0.1); never raises for 4xx/5xx."""
        return self.send_several([(sender, rcpts, message)], helo=helo, timeout=timeout)[0]

    def send_several(self, transactions, *, helo: str = "mx.example.net",
                     timeout: float = 60.0) -> list[SendResult]:
        """Several transactions on one connection, RSET between them (see SmtpSubmitter)."""
        return SmtpSubmitter.send_several(self, transactions, client_ip=None, helo=helo, timeout=timeout)

    # ------------------------------------------------------------------ delivered mail
    def mailbox(self, user: str) -> list[email.message.Message]:
        """Messages delivered to local ``user`` (the part before @), oldest first."""
        box = self.mail_dir / user.split("@")[0]
        if not box.is_dir():
            return []
        files = sorted(p for p in box.iterdir() if not p.name.endswith(".tmp"))
        return [email.message_from_bytes(p.read_bytes(), policy=email.policy.compat32) for p in files]

    def wait_for_delivery(self, user: str, count: int = 1, timeout: float = 20.0) -> list[email.message.Message]:
        deadline = time.monotonic() + timeout
        while True:
            messages = self.mailbox(user)
            if len(messages) >= count or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if len(messages) < count:
            raise AssertionError(f"{user}: {len(messages)} of {count} messages delivered within {timeout}s; "
                                 f"queue: {sorted(p.name for p in self.queue_dir.iterdir())}")
        return messages

    def __repr__(self) -> str:
        return f"<SendmailInstance {self.base_dir} port={self.port}>"
