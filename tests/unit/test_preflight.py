"""Start-up checks (spfmilter.preflight), journald log lines, and the log formats ``report`` reads."""
from __future__ import annotations

import io
import logging
import os
import socket
import stat
from datetime import date

import pytest

from spfmilter.cli import is_journal_stream, setup_logging
from spfmilter.config import SocketSpec, parse_text
from spfmilter.logreport import journal_command, parse_line
from spfmilter.preflight import (Identity, READ, SEARCH, WRITE, may, may_remove, probe_listen,
                                 risky_settings)


def _info(mode: int, uid: int = 10, gid: int = 20) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


USER = Identity("u", 10, frozenset({20}))
OTHER = Identity("o", 11, frozenset({21}))
GROUPMATE = Identity("g", 12, frozenset({20}))
ROOT = Identity("root", 0, frozenset({0}))


@pytest.mark.parametrize("mode, who, want, expected", [
    (0o640, USER, READ, True),
    (0o640, GROUPMATE, READ, True),
    (0o640, OTHER, READ, False),
    (0o600, GROUPMATE, READ, False),
    (0o600, ROOT, READ | WRITE, True),
    (0o046, USER, READ, False),  # the owner class applies even when others may
    (0o755, GROUPMATE, WRITE | SEARCH, False),
    (0o775, GROUPMATE, WRITE | SEARCH, True),
    (0o770, OTHER, SEARCH, False),
])
def test_may_reads_the_class_that_applies(mode, who, want, expected):
    assert may(_info(stat.S_IFREG | mode), who, want) is expected


def test_may_remove_honours_the_sticky_bit():
    tmp = _info(stat.S_IFDIR | 0o1777, uid=0, gid=0)
    assert may_remove(tmp, entry_uid=USER.uid, identity=USER)
    assert not may_remove(tmp, entry_uid=0, identity=USER)
    assert not may_remove(_info(stat.S_IFDIR | 0o755, uid=0, gid=0), USER.uid, USER)  # made by root by hand
    assert may_remove(_info(stat.S_IFDIR | 0o755, uid=USER.uid), 0, USER)  # RuntimeDirectory=


def test_probe_listen_names_the_os_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=f"127.0.0.1 port {port}: Address already in use"):
            probe_listen(SocketSpec("inet", "127.0.0.1", port))
    probe_listen(SocketSpec("inet", "127.0.0.1", port))  # free again: no error, nothing left bound
    with pytest.raises(ValueError, match=f"directory {tmp_path}/none: No such file or directory"):
        probe_listen(SocketSpec("unix", str(tmp_path / "none" / "m.sock")))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="Not a directory"):
        probe_listen(SocketSpec("unix", str(tmp_path / "file" / "m.sock")))
    with pytest.raises(ValueError, match="path too long"):
        probe_listen(SocketSpec("unix", str(tmp_path / ("x" * 120))))
    probe_listen(SocketSpec("unix", str(tmp_path / "m.sock")))
    assert not (tmp_path / "m.sock").exists()


@pytest.mark.parametrize("text, expected", [
    ("socket = unix:/run/m.sock\nsocket_mode = 0666\n", ["socket_mode 0666 lets every local user"]),
    ("socket = unix:/run/m.sock\nsocket_mode = 0662\n", ["socket_mode 0662 lets every local user"]),
    ("socket = unix:/run/m.sock\nsocket_mode = 0664\n", []),
    ("socket = inet:8890@127.0.0.1\nsocket_mode = 0666\n", []),  # no file, no mode
    ("metrics_listen = 0.0.0.0:9899\n", ["metrics_listen 0.0.0.0:9899 is not on loopback"]),
    ("metrics_listen = [2001:db8::1]:9899\n", ["metrics_listen [2001:db8::1]:9899 is not on loopback"]),
    ("metrics_listen = 127.0.0.2:9899\n", []),
    ("metrics_listen = [::1]:9899\n", []),
    ("metrics_listen = localhost:9899\n", []),
])
def test_risky_settings(text, expected):
    risks = risky_settings(parse_text(text, "t.conf"))
    assert len(risks) == len(expected)
    for risk, start in zip(risks, expected):
        assert risk.startswith(start)


# --------------------------------------------------------------------------- journald


def _log_through(stream, environ, level=logging.WARNING, text="reload refused: x"):
    setup_logging(parse_text("log_level = debug\n", "t.conf"), stream=stream, environ=environ)
    try:
        logging.getLogger("spfmilter").log(level, text)
    finally:
        for handler in list(logging.getLogger("spfmilter").handlers):
            handler.flush()
            logging.getLogger("spfmilter").removeHandler(handler)


def test_under_journald_lines_carry_a_priority_and_no_stamp_or_tag(tmp_path):
    path = tmp_path / "stream"
    with open(path, "w") as stream:
        info = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        assert is_journal_stream(stream, environ)
        _log_through(stream, environ, logging.WARNING, "reload refused: x")
        _log_through(stream, environ, logging.INFO, "Fail; identity=mailfrom")
        _log_through(stream, environ, logging.ERROR, "first\nsecond")
        _log_through(stream, environ, logging.DEBUG, "dns")
    assert path.read_text() == "<4>reload refused: x\n<6>Fail; identity=mailfrom\n<3>first\n<3>second\n<7>dns\n"


@pytest.mark.parametrize("value", ["", "1:2", "garbage", "12"])
def test_a_stream_that_is_not_the_journal_keeps_stamp_and_tag(tmp_path, value):
    """$JOURNAL_STREAM inherited by a process whose stderr was redirected (a shell under a unit)
    names another file: the line stays as it was."""
    path = tmp_path / "stream"
    with open(path, "w") as stream:
        assert not is_journal_stream(stream, {"JOURNAL_STREAM": value})
        _log_through(stream, {"JOURNAL_STREAM": value})
    line = path.read_text()
    assert f"spfmilter[{os.getpid()}]: WARNING: reload refused: x" in line and not line.startswith("<")


def test_a_stream_without_a_file_is_not_the_journal():
    assert not is_journal_stream(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


# --------------------------------------------------------------------------- report's input formats

LINE = ("Fail; identity=mailfrom; client-ip=192.0.2.7; helo=mx.example.net; envelope-from=a@example.org; "
        "receiver=mx.example.com; action=would-reject; reply=\"550 5.7.23 x\"")
TODAY = date(2026, 12, 10)


@pytest.mark.parametrize("prefix, day", [
    ("Dec  4 10:00:00 host spfmilter[123]: ", date(2026, 12, 4)),  # rsyslog's traditional mail.log
    ("Dec 04 10:00:00 host spfmilter[123]: ", date(2026, 12, 4)),  # journalctl -o short
    ("Dec 04 10:00:00.123456 host spfmilter[123]: ", date(2026, 12, 4)),  # journalctl -o short-precise
    ("2026-12-04T10:00:00+0100 host spfmilter[123]: ", date(2026, 12, 4)),  # journalctl -o short-iso
    ("2026-12-04T10:00:00.123456+01:00 host spfmilter[123]: ", date(2026, 12, 4)),  # rsyslog RFC 3339
    ("", None),  # journalctl -o cat
])
def test_report_reads_mail_log_and_journalctl_lines(prefix, day):
    record = parse_line(prefix + LINE, TODAY)
    assert record is not None and not record.error
    assert (record.result, record.identity, record.action, record.sender, record.day) == (
        "Fail", "mailfrom", "would-reject", "a@example.org", day)
    assert record.pid == ("123" if prefix else "")


def test_journal_command():
    assert journal_command(None) == ["journalctl", "-u", "spfmilter", "-o", "short-iso", "--no-pager"]
    assert journal_command(date(2026, 12, 1))[-2:] == ["--since", "2026-12-01"]


def test_the_stamp_formatter_writes_what_the_standard_one_does_across_seconds():
    import logging

    from spfmilter.cli import StampFormatter

    fmt = "%(asctime)s spfmilter[%(process)d]: %(levelname)s: %(message)s"
    ours, standard = StampFormatter(fmt), logging.Formatter(fmt)
    record = logging.LogRecord("spfmilter", logging.INFO, "", 0, "Pass; identity=%s", ("mailfrom",), None)
    for created in (1764800000.001, 1764800000.999, 1764800001.5, 1764800001.25, 1764803600.0, 1764800000.5):
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == standard.format(record)
