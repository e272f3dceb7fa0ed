"""What the MTA tests share: the contrib files with ports and paths substituted, a socket
directory the MTA can reach, a test message, and waiting for asynchronous delivery.

The snippets users copy (contrib/postfix-main.cf, contrib/spfmilter.conf,
contrib/sendmail.mc) are read here, so the MTA tests run the very lines we ship.
"""
from __future__ import annotations

import os
import pwd
import re
import tempfile
import time
from pathlib import Path

from tests.support.milterproc import ROOT


def contrib_main_cf(milter_socket: str) -> dict:
    """contrib/postfix-main.cf's settings for ``milter_socket`` (``inet:HOST:PORT`` or ``unix:PATH``).

    The inet line is the active one; the unix line is the commented alternative it documents,
    the path smtpd sees from inside Debian's chroot (/var/spool/postfix).  The private Postfix
    instances run unchrooted, so the tests give smtpd the socket's full path instead.
    """
    settings, unix_line = {}, None
    for line in (ROOT / "contrib" / "postfix-main.cf").read_text().splitlines():
        alternative = re.fullmatch(r"#\s+smtpd_milters = (unix:\S+)", line.strip())
        if alternative:
            unix_line = alternative.group(1)
        elif line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    if milter_socket.startswith("unix:"):
        assert unix_line == "unix:/spfmilter/spfmilter.sock"
        assert contrib_unix_socket() == "/var/spool/postfix" + unix_line.removeprefix("unix:")
        settings["smtpd_milters"] = milter_socket
    else:
        assert settings["smtpd_milters"] == "inet:127.0.0.1:8890"
        settings["smtpd_milters"] = settings["smtpd_milters"].replace(":8890", ":" + milter_socket.rsplit(":", 1)[1])
    return settings


def contrib_spfmilter_conf(**values: str) -> str:
    """contrib/spfmilter.conf with the given keys set (see set_keys)."""
    return set_keys((ROOT / "contrib" / "spfmilter.conf").read_text(), **values)


def set_keys(text: str, **values: str) -> str:
    """A configuration like contrib/spfmilter.conf with the given keys set: a commented ``#key = ...``
    line is switched on; of a key with an active line and commented alternatives, the active line
    is the one set."""
    lines = text.splitlines()
    for key, value in values.items():
        pattern = re.compile(rf"#?{re.escape(key)} = .*")
        found = [i for i, line in enumerate(lines) if pattern.fullmatch(line)]
        if len(found) > 1:
            found = [i for i in found if not lines[i].startswith("#")]
        assert len(found) == 1, f"the configuration has no single line for {key}"
        lines[found[0]] = f"{key} = {value}"
    return "\n".join(lines) + "\n"


def contrib_unix_socket() -> str:
    """The path of the commented unix ``socket`` alternative in contrib/spfmilter.conf."""
    found = re.findall(r"^#socket = unix:(\S+)$", (ROOT / "contrib" / "spfmilter.conf").read_text(), re.MULTILINE)
    assert len(found) == 1, found
    return found[0]


def contrib_milter_mc(port: int) -> str:
    """The INPUT_MAIL_FILTER line of contrib/sendmail.mc, pointed at the test milter's port."""
    lines = [line for line in (ROOT / "contrib" / "sendmail.mc").read_text().splitlines()
             if line.startswith("INPUT_MAIL_FILTER(")]
    assert len(lines) == 1, lines
    assert "inet:8890@127.0.0.1" in lines[0]
    return lines[0].replace("inet:8890@", f"inet:{port}@")


def contrib_milter_mc_unix(path: str) -> str:
    """The unix-socket INPUT_MAIL_FILTER alternative in contrib/sendmail.mc's comments, for ``path``."""
    lines = [line.removeprefix("dnl").strip() for line in (ROOT / "contrib" / "sendmail.mc").read_text().splitlines()
             if line.startswith("dnl   INPUT_MAIL_FILTER(")]
    assert len(lines) == 1, lines
    assert "S=unix:/run/spfmilter/spfmilter.sock," in lines[0]
    return lines[0].replace("/run/spfmilter/spfmilter.sock", path)


def socket_directory(parent: str | None = None) -> Path:
    """Like systemd's RuntimeDirectory=spfmilter: owned by the daemon's user (nobody here), 0755,
    on a path the postfix user can reach (under ``parent``, default the temporary directory)."""
    base = Path(tempfile.mkdtemp(prefix="spfmilter-pf-", dir=parent))
    os.chmod(base, 0o755)
    run = base / "run"
    run.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(run, nobody.pw_uid, nobody.pw_gid)
    return run


def message(sender: str, extra_headers: str = "") -> str:
    return (f"From: <{sender}>\r\nTo: <user@mx.test>\r\nSubject: spf test\r\n{extra_headers}"
            "\r\nhello\r\n")


def srs_message(marker: str, sender: str, to: str) -> str:
    """A message for the SRS tests, marked ``X-Test-Run: marker``; a bounce (null sender) from MAILER-DAEMON."""
    return (f"From: <{sender or 'MAILER-DAEMON@remote.example'}>\r\nTo: <{to}>\r\nSubject: srs test\r\n"
            f"X-Test-Run: {marker}\r\n\r\nhello\r\n")


def return_path(delivered) -> str:
    """The envelope sender the delivering MTA recorded."""
    [value] = delivered.get_all("Return-Path")
    return value.strip()


def wait_for_marked(instance, user: str, marker: str, count: int, timeout: float = 30) -> list:
    """Delivered messages carrying ``X-Test-Run: marker`` (delivery is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        ours = [m for m in instance.mailbox(user) if m.get("X-Test-Run") == marker]
        if len(ours) >= count or time.monotonic() > deadline:
            return ours
        time.sleep(0.05)
