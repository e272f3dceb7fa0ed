"""Logging goes to stderr by default and to syslog on request (here: a private /dev/log stand-in)."""
from __future__ import annotations

import io
import logging
import socket

import pytest

from spfmilter.cli import setup_logging
from spfmilter.config import parse_text


def test_stderr_by_default():
    stream = io.StringIO()
    setup_logging(parse_text(""), stream=stream)
    logging.getLogger("spfmilter").info("Pass; identity=mailfrom")
    logging.getLogger("spfmilter.verify").debug("not shown at info level")
    assert stream.getvalue().endswith("INFO: Pass; identity=mailfrom\n")
    assert "not shown" not in stream.getvalue()


def test_syslog_on_request(tmp_path):
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(path)
        sink.settimeout(5)
        setup_logging(parse_text("log_destination = syslog\nsyslog_facility = local3\n"), syslog_address=path)
        try:
            logging.getLogger("spfmilter").warning("Fail; identity=helo")
            datagram = sink.recv(4096).decode()
        finally:
            for handler in list(logging.getLogger("spfmilter").handlers):
                handler.close()
                logging.getLogger("spfmilter").removeHandler(handler)
    # <PRI> = facility local3 (19) * 8 + warning (4)
    assert datagram.startswith("<156>spfmilter[")
    assert datagram.rstrip("\x00").endswith("]: Fail; identity=helo")


def test_unreachable_syslog_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="cannot log to syslog at .*nothing-here"):
        setup_logging(parse_text("log_destination = syslog"), syslog_address=str(tmp_path / "nothing-here"))
