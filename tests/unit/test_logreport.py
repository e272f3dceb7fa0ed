"""Tests for spfmilter.logreport: parsing the milter's log lines and summarising a header-only period.

The log lines are made by spfmilter.headers.log_line/skip_line (and the prefixes by the real
logging setup) so the parser cannot drift from what the milter writes.
"""
from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import html
import io
import logging
import re
import socket
from datetime import date

import pytest

from spfmilter.cli import setup_logging
from spfmilter.config import parse_text
from spfmilter.headers import log_line, rcpt_domains_text, skip_line
from spfmilter.logreport import (REFUSED_COLOUR, SCRIPT_HASH, SORT_SCRIPT, WOULD_COLOUR, Record, add_parser,
                                  parse_line, render_html, render_text, run, sections, summarise)
from spfmilter.policy import Action, Facts, decide
from spfmilter.text import clean, unquote
from spfmilter.verify import Identity, SpfOutcome, SpfResult as R

HEADER_ONLY = parse_text("authserv_id = mx.test\n")
ENFORCE = parse_text("authserv_id = mx.test\nmode = enforce\n")
TODAY = date(2026, 11, 23)
HELO = "mail.example.net"


def syslog(message: str, day: int = 23, pid: int = 123) -> str:
    return f"Nov {day:2d} 16:02:07 mx spfmilter[{pid}]: {message}"


def stderr(message: str, day: int = 23, pid: int = 123) -> str:
    return f"2026-11-{day:02d} 16:02:07,123 spfmilter[{pid}]: INFO: {message}"


def transaction(helo_result=R.PASS, mailfrom_result=R.PASS, sender="alice@example.org", helo=HELO,
                config=HEADER_ONLY, action=None, queue_id="Q1", ip="192.0.2.1", rcpt_domains=(),
                rcpt_more=0) -> list[str]:
    """The two log lines the milter writes for one transaction (see Milter._log_outcomes)."""
    facts = Facts(ip, helo, sender, queue_id=queue_id)
    helo_outcome = SpfOutcome(Identity.HELO, helo_result, helo, f"postmaster@{helo}", problem="p")
    mailfrom_outcome = SpfOutcome(Identity.MAILFROM, mailfrom_result, sender.rpartition("@")[2] or helo,
                                  sender or f"postmaster@{helo}", mechanism="-all")
    decision = decide(helo_outcome, mailfrom_outcome, facts, config)
    if action is None:
        if not decision.refuses:
            action = "accept"
        else:
            action = decision.action.value if config.enforce else f"would-{decision.action.value}"
    reply = decision.reply if action != "accept" else None
    domains = rcpt_domains_text(rcpt_domains, rcpt_more)
    return [log_line(outcome, facts, config, Action(action), reply if outcome.identity is decision.identity else None,
                     domains)
            for outcome in (helo_outcome, mailfrom_outcome)]


def summary_of(lines, **kw):
    return summarise((parse_line(line, TODAY) for line in lines), **kw)


# --------------------------------------------------------------------------- parse_line

@pytest.mark.parametrize("prefix", [syslog, stderr, lambda message: message])
@pytest.mark.parametrize("helo_result, mailfrom_result", [
    (R.PASS, R.PASS), (R.PASS, R.FAIL), (R.FAIL, R.PASS), (R.NONE, R.SOFTFAIL), (R.PASS, R.NEUTRAL),
    (R.PASS, R.PERMERROR), (R.TEMPERROR, R.TEMPERROR), (R.NONE, R.NONE),
])
def test_parse_generated_lines(prefix, helo_result, mailfrom_result):
    helo_line, mailfrom_line = transaction(helo_result, mailfrom_result)
    helo, mailfrom = parse_line(prefix(helo_line), TODAY), parse_line(prefix(mailfrom_line), TODAY)
    assert (helo.identity, helo.result) == ("helo", helo_result.logged)
    assert (mailfrom.identity, mailfrom.result) == ("mailfrom", mailfrom_result.logged)
    for record in (helo, mailfrom):
        assert record.error == ""
        assert (record.client_ip, record.helo, record.sender, record.queue_id) == (
            "192.0.2.1", HELO, "alice@example.org", "Q1")
        assert record.day == (None if prefix not in (syslog, stderr) else TODAY)
    assert helo.action == mailfrom.action
    refused = mailfrom_result is R.FAIL or helo_result is R.FAIL or mailfrom_result is R.TEMPERROR
    assert mailfrom.action == ("would-reject" if R.FAIL in (helo_result, mailfrom_result)
                               else "would-defer" if refused else "accept")
    # the reply is on the line of the identity that decided
    assert [helo.has_reply, mailfrom.has_reply] == (
        [True, False] if helo_result is R.FAIL else [False, True] if refused else [False, False])


@pytest.mark.parametrize("action", ["accept", "reject", "defer", "would-reject", "would-defer", "aborted",
                                    "accept-exempt"])
def test_every_action(action):
    record = parse_line(transaction(R.PASS, R.FAIL, action=action)[1])
    assert (record.action, record.error) == (action, "")


def test_prefix_from_the_real_stderr_logging_setup():
    stream = io.StringIO()
    setup_logging(parse_text(""), stream=stream)
    try:
        logging.getLogger("spfmilter.milter").info("%s", transaction(R.PASS, R.FAIL)[1])
    finally:
        for handler in list(logging.getLogger("spfmilter").handlers):
            logging.getLogger("spfmilter").removeHandler(handler)
    record = parse_line(stream.getvalue(), TODAY)
    assert (record.result, record.identity, record.action) == ("Fail", "mailfrom", "would-reject")
    assert record.day == date.today()
    assert record.pid.isdigit()


def test_prefix_from_the_real_syslog_setup(tmp_path):
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(path)
        sink.settimeout(5)
        setup_logging(parse_text("log_destination = syslog\n"), syslog_address=path)
        try:
            logging.getLogger("spfmilter.milter").info("%s", transaction(R.FAIL, R.PASS)[0])
            datagram = sink.recv(8192).decode().rstrip("\x00")
        finally:
            for handler in list(logging.getLogger("spfmilter").handlers):
                handler.close()
                logging.getLogger("spfmilter").removeHandler(handler)
    # what syslogd writes: its timestamp and host instead of the <PRI>
    record = parse_line(re.sub(r"^<\d+>", "Nov 23 16:02:07 mx ", datagram), TODAY)
    assert (record.result, record.identity, record.has_reply, record.day) == ("Fail", "helo", True, TODAY)


@pytest.mark.parametrize("line, day", [
    ("Nov 23 16:02:07 mx spfmilter[1]: ", date(2026, 11, 23)),
    ("Nov  3 16:02:07 mx spfmilter[1]: ", date(2026, 11, 3)),
    ("Nov 24 00:00:01 mx spfmilter[1]: ", date(2026, 11, 24)),  # clocks differ a little
    ("Dec 31 23:59:59 mx spfmilter[1]: ", date(2025, 12, 31)),  # syslog has no year: last year's
    ("Feb 29 10:00:00 mx spfmilter[1]: ", date(2024, 2, 29)),
    ("2026-11-23T16:02:07.123456+01:00 mx spfmilter[1]: ", date(2026, 11, 23)),  # rsyslog, short-iso
    ("2025-01-02 16:02:07,123 spfmilter[1]: WARNING: ", date(2025, 1, 2)),
    ("Nov 23 16:02:07 mx spfmilter[1]: 2026-11-20 16:02:07,123 spfmilter[1]: INFO: ", date(2026, 11, 20)),
    ("", None),
])
def test_dates(line, day):
    record = parse_line(line + transaction()[1], TODAY)
    assert record.error == ""
    assert record.day == day


@pytest.mark.parametrize("line", [
    "",
    "\n",
    "Nov 23 16:02:07 mx spfmilter[1]: srs=forward; envelope-from=a@b.example; to=SRS0=x@mx.test queue-id=Q1",
    "Nov 23 16:02:07 mx spfmilter[1]: srs=refused; reason=bad-hash; rcpt=x; envelope-from=<>; client-ip=1.2.3.4",
    "Nov 23 16:02:07 mx spfmilter[1]: removed forged Received-SPF header #1 queue-id=Q1",
    "Nov 23 16:02:07 mx spfmilter[1]: spfmilter 1.0 listening on unix:/run/x (mode=header-only)",
    "Nov 23 16:02:07 mx postfix/smtpd[9]: connect from unknown[192.0.2.9]",
    ("Nov 23 16:02:07 mx postfix/smtpd[9]: Fail; identity=mailfrom; client-ip=1.2.3.4; helo=x; "
     "envelope-from=a@b; action=accept"),  # another program's line
    "2026-11-23 16:02:07,123 spfmilter[1]: ERROR: internal error in eom callback",
    "Failure; identity=mailfrom",
    "None",
    "\x00\x1b[31m<script>",
])
def test_other_lines_are_ignored(line):
    assert parse_line(line, TODAY) is None


@pytest.mark.parametrize("message, why", [
    ('Fail; identity=mailfrom; client-ip=1.2.3.4; helo="unterminated', "unreadable"),
    ("Fail; identity=mailfrom; client-ip=1.2.3.4; helo=x; envelope-from=a@b; receiver=r", "unknown action"),
    ("Fail; identity=mailfrom; helo=x; envelope-from=a@b; action=explode", "unknown action"),
    ("Fail; identity=mailfrom; helo=x; envelope-from=a@b; action=accept; action=reject", "duplicate"),
    ("Fail; identity=smtp; helo=x; envelope-from=a@b; action=accept", "neither"),
    ("Fail; helo=x; envelope-from=a@b; action=accept", "neither"),
    ("Fail; identity=helo; envelope-from=a@b; action=accept", "no envelope-from"),
    ("Fail; identity=helo; helo=x; action=accept", "no envelope-from"),
    ("Fail;identity=helo; helo=x; envelope-from=a@b; action=accept", "no space"),
    ("Fail; identity=helo;helo=x; envelope-from=a@b; action=accept", "unreadable"),
    ("Fail; identity=helo; helo=x y; envelope-from=a@b; action=accept", "unreadable"),
    ("Fail; garbage", "unreadable"),
    ("Fail; ", "no space"),  # the trailing space is stripped with the line end
    ("Fail; action=accept", "no envelope-from"),
])
def test_malformed_lines(message, why):
    for line in (message, syslog(message)):
        record = parse_line(line, TODAY)
        assert record is not None and why in record.error, record
    summary = summary_of([syslog(message)] + transaction())
    assert (summary.unparsed, summary.total.messages) == (1, 1)


def test_no_prefix_of_a_line_crashes():
    line = syslog(transaction(R.FAIL, R.FAIL, helo='a"; action=accept; b=\\"', action="would-reject")[0])
    for end in range(len(line) + 1):
        record = parse_line(line[:end], TODAY)
        assert record is None or isinstance(record, Record)
    assert parse_line(line, TODAY).action == "would-reject"


HOSTILE = [
    'x"; action=accept; y="',
    "x; action=reject",
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "back\\slash\\",
    '\\"',
    "a&amp;b",
    "evil\r\nNov 23 16:02:07 mx spfmilter[1]: Pass; identity=mailfrom",
    "ünïcödé",
    "",
]


@pytest.mark.parametrize("helo", HOSTILE)
@pytest.mark.parametrize("sender", ["<script>@x;y.example", 'a"b@<b>bold</b>.example', ""])
def test_hostile_values_round_trip(helo, sender):
    for line in transaction(R.FAIL, R.FAIL, sender=sender, helo=helo, queue_id="Q; action=accept"):
        record = parse_line(syslog(line), TODAY)
        assert record.error == ""
        assert record.action == "would-reject"
        assert record.helo == clean(helo)
        assert record.sender == (clean(sender) or "<>")
        assert record.queue_id == "Q; action=accept"


def test_skip_line():
    facts = Facts("127.0.0.1", 'x; action=reject "<b>', "root@mx.test", queue_id="Q9")
    record = parse_line(syslog(skip_line("trusted network 127.0.0.0/8", facts)), TODAY)
    assert (record.result, record.identity, record.action, record.skipped) == (
        "None", "", "accept", "trusted network 127.0.0.0/8")
    assert (record.helo, record.sender, record.queue_id) == ('x; action=reject "<b>', "root@mx.test", "Q9")


# --------------------------------------------------------------------------- summarise

def test_counting_a_header_only_period():
    lines = [
        *transaction(R.PASS, R.PASS, "a@good.example", queue_id="1"),
        *transaction(R.PASS, R.FAIL, "b@partner.example", queue_id="2"),  # would-reject by MAIL FROM
        *transaction(R.FAIL, R.PASS, "c@good.example", helo="bad.example", queue_id="3"),  # by HELO
        *transaction(R.PASS, R.TEMPERROR, "d@slow.example", queue_id="4"),  # would-defer
        *transaction(R.PASS, R.FAIL, "e@partner.example", queue_id="5"),
        *transaction(R.PASS, R.PERMERROR, "f@partner.example", queue_id="6"),  # accepted by default
        *transaction(R.FAIL, R.FAIL, "", helo="bounce.example", queue_id="7"),  # null sender
        *transaction(R.PASS, R.FAIL, "g@Partner.Example.", config=ENFORCE, queue_id="8"),  # reject
        *transaction(R.PASS, R.TEMPERROR, "h@slow.example", config=ENFORCE, queue_id="9"),  # defer
        *transaction(R.PASS, R.FAIL, "i@partner.example", action="accept-exempt", queue_id="10"),
        *transaction(R.PASS, R.FAIL, "j@partner.example", action="aborted", queue_id="11"),
        skip_line("local client", Facts(None, "localhost", "root@partner.example")),
        "Nov 23 16:02:07 mx spfmilter[1]: srs=reverse; rcpt=x; to=y",
    ]
    summary = summary_of(lines)
    assert (summary.lines, summary.ignored, summary.unparsed, summary.skipped, summary.lone_helo) == (
        24, 1, 0, 1, 0)
    total = summary.total
    assert (total.messages, total.would_refuse, total.refused) == (11, 5, 2)
    assert dict(summary.actions) == {"accept": 2, "would-reject": 4, "would-defer": 1, "reject": 1,
                                     "defer": 1, "accept-exempt": 1, "aborted": 1}
    assert {key: (c.messages, c.would_refuse, c.refused) for key, c in summary.domains.items()} == {
        ("good.example", "Pass"): (1, 0, 0),
        ("good.example", "Pass, HELO Fail"): (1, 1, 0),
        ("partner.example", "Fail"): (5, 2, 1),
        ("partner.example", "PermError"): (1, 0, 0),
        ("slow.example", "TempError"): (2, 1, 1),
        ("<> (helo bounce.example)", "Fail, HELO Fail"): (1, 1, 0),
    }
    assert {r: c.messages for r, c in summary.results.items()} == {
        "Pass": 2, "Fail": 6, "TempError": 2, "PermError": 1}
    assert [(d, c.would_refuse + c.refused, c.messages) for d, c in summary.top(20)] == [
        ("partner.example", 3, 6), ("slow.example", 2, 2), ("good.example", 1, 2),
        ("<> (helo bounce.example)", 1, 1)]
    assert [d for d, _ in summary.top(2)] == ["partner.example", "slow.example"]
    assert total.share == f"{100 * 7 / 11:.1f}%"


def test_either_line_refusing_refuses_the_message():
    helo_line, mailfrom_line = transaction(R.FAIL, R.PASS)
    # a log where only the HELO line says would-reject still counts the message as refused
    summary = summary_of([helo_line, mailfrom_line.replace("action=would-reject", "action=accept")])
    assert (summary.total.messages, summary.total.would_refuse) == (1, 1)
    summary = summary_of([helo_line.replace("action=would-reject", "action=accept"), mailfrom_line])
    assert (summary.total.messages, summary.total.would_refuse) == (1, 1)
    summary = summary_of([line.replace("would-reject", "accept") for line in (helo_line, mailfrom_line)])
    assert (summary.total.messages, summary.total.would_refuse) == (1, 0)


def test_interleaved_workers_are_paired_by_process_and_transaction():
    first = transaction(R.FAIL, R.PASS, "a@one.example", queue_id="A")
    second = transaction(R.PASS, R.PASS, "a@one.example", queue_id="A")  # same facts, other worker
    lines = [syslog(first[0], pid=1), syslog(second[0], pid=2), syslog(second[1], pid=2), syslog(first[1], pid=1)]
    summary = summary_of(lines)
    assert {key: (c.messages, c.would_refuse) for key, c in summary.domains.items()} == {
        ("one.example", "Pass, HELO Fail"): (1, 1), ("one.example", "Pass"): (1, 0)}


def test_mail_from_line_counts_the_message_and_lone_helo_lines_are_reported():
    helo_line, mailfrom_line = transaction(R.PASS, R.FAIL)
    summary = summary_of([mailfrom_line, helo_line])  # log cut: HELO before, MAIL FROM after
    assert (summary.total.messages, summary.total.would_refuse, summary.lone_helo) == (1, 1, 1)


def test_per_day_and_since():
    lines = [syslog(line, day=day) for day, n in ((21, 3), (22, 1), (23, 2)) for i in range(n)
             for line in transaction(R.PASS, R.FAIL if i == 0 else R.PASS, queue_id=f"{day}-{i}")]
    lines.append(transaction(R.PASS, R.FAIL)[1])  # no date
    summary = summary_of(lines)
    assert {d: (c.messages, c.would_refuse, c.share) for d, c in summary.days.items()} == {
        "2026-11-21": (3, 1, "33.3%"), "2026-11-22": (1, 1, "100.0%"), "2026-11-23": (2, 1, "50.0%"),
        "unknown": (1, 1, "100.0%")}
    since = summary_of(lines, since=date(2026, 11, 22))
    assert sorted(since.days) == ["2026-11-22", "2026-11-23"]
    assert since.total.messages == 3


def test_domain_filter_takes_subdomains_and_the_helo_of_the_null_sender():
    lines = [*transaction(sender="a@example.org", queue_id="1"), *transaction(sender="b@mx.Example.org", queue_id="2"),
             *transaction(sender="c@notexample.org", queue_id="3"),
             *transaction(sender="", helo="bounce.example.org", queue_id="4")]
    summary = summary_of(lines, domain="EXAMPLE.ORG")
    assert sorted(d for d, _ in summary.domains) == ["<> (helo bounce.example.org)", "example.org", "mx.example.org"]


def test_empty_log():
    summary = summary_of([])
    assert summary.total.messages == 0 and summary.total.share == "-"
    text = render_text(summary)
    assert "messages checked" in text and "(none)" in text
    page = render_html(summary)
    assert '<table id="totals">' in page and page.count("<table") == 1  # empty sections say (none)
    assert page.count("(none)") == len(sections(summary, 20)) - 1


# --------------------------------------------------------------------------- output

def test_text_report_tables():
    lines = [*transaction(R.PASS, R.FAIL, "a@partner.example", queue_id="1"),
             *transaction(R.PASS, R.PASS, "b@partner.example", queue_id="2")]
    text = render_text(summary_of([syslog(line) for line in lines]))
    assert ("spfmilter report: 4 log lines (0 not about SPF results, 0 unparsed); "
            "period 2026-11-23 to 2026-11-23") in text
    rows = [line.split() for line in text.splitlines()]
    assert ["messages", "checked", "2"] in rows
    assert ["would", "be", "refused", "(header-only", "mode)", "1", "50.0%"] in rows
    assert ["partner.example", "2", "1", "0", "50.0%"] in rows  # top domains
    assert ["2026-11-23", "2", "1", "0", "50.0%"] in rows  # per day
    assert ["partner.example", "Fail", "1", "1", "0", "100.0%"] in rows
    assert ["partner.example", "Pass", "1", "0", "0", "0.0%"] in rows
    # columns line up: every row of a table ends at the same column
    table = text.split("Per sender domain and result\n")[1].split("\n\n")[0].splitlines()
    assert len({len(line) for line in table}) == 1


def test_html_escapes_log_content():
    helo = '<script>alert("x")</script>'
    lines = [*transaction(R.FAIL, R.FAIL, "", helo=helo, queue_id="1"),
             *transaction(R.PASS, R.FAIL, 'x@"><img src=x onerror=alert(1)>.example', queue_id="2")]
    summary = summary_of(lines)
    page = render_html(summary)
    # the only script is our own, allowed by its hash in the Content-Security-Policy
    assert page.count("<script") == 1 and f"<script>{SORT_SCRIPT}</script>" in page
    assert f"script-src 'sha256-{SCRIPT_HASH}'" in page
    assert "<img" not in page
    assert html.escape(f"<> (helo {helo.lower()})") in page
    assert html.escape('"><img src=x onerror=alert(1)>.example') in page
    # no tag loads anything (the hostile text is escaped content, also where a chart label shortens it)
    markup = re.findall(r"<[^>]*>", page.replace(f"<script>{SORT_SCRIPT}</script>", ""))
    assert not [tag for tag in markup if re.search(r"(?i)\b(src|href)\s*=|@import|url\(", tag)]
    assert re.search(r"(?i)\b(src|href)\s*=", page)  # (the check above has something to look at)
    assert page.count("<svg") == 3 and page.count("<table") == 7
    # terminal output keeps the text, cleaned of control characters
    assert "<img src=x onerror=alert(1)>.example" in render_text(summary)


def test_terminal_output_has_no_control_characters():
    line = 'Fail; identity=mailfrom; client-ip=1; helo=x; envelope-from="a@\x1b[2J\x07.example"; action=would-reject'
    text = render_text(summary_of([line]))
    assert "?[2j?.example" in text  # domains are shown in lower case
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", text)


# --------------------------------------------------------------------------- command line

def parse_args(argv):
    parser = argparse.ArgumentParser(prog="spfmilter")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_arguments():
    args = parse_args(["report"])
    # no LOG: standard input (unless it is a terminal, tests/milter/test_ops.py), or --journal
    assert (args.logs, args.html, args.top, args.since, args.domain, args.journal) == ([], None, 20, None, None, False)
    args = parse_args(["report", "a.log", "b.gz", "--top", "5", "--since", "2026-11-01", "--domain", "x.example",
                       "--html", "r.html"])
    assert (args.logs, args.html, args.top, args.since, args.domain) == (
        ["a.log", "b.gz"], "r.html", 5, date(2026, 11, 1), "x.example")
    for bad in (["--since", "yesterday"], ["--top", "-1"], ["--top", "x"]):
        with pytest.raises(SystemExit):
            parse_args(["report", *bad])


def sample_log() -> str:
    return "\n".join(syslog(line) for line in [
        *transaction(R.PASS, R.FAIL, "a@partner.example", queue_id="1"),
        *transaction(R.PASS, R.PASS, "b@good.example", queue_id="2"),
    ]) + "\n"


def test_run_on_plain_and_gzip_files_and_stdin(tmp_path):
    (tmp_path / "mail.log").write_text(sample_log())
    with gzip.open(tmp_path / "mail.log.1.gz", "wt") as archive:  # rotated: the name does not matter
        archive.write(sample_log())
    (tmp_path / "mail.log.2").write_bytes(gzip.compress(sample_log().encode()))
    out = io.StringIO()
    args = parse_args(["report", str(tmp_path / "mail.log"), str(tmp_path / "mail.log.1.gz"),
                       str(tmp_path / "mail.log.2"), "-", "--html", str(tmp_path / "r.html")])
    stdin = io.BytesIO(sample_log().encode() + b"\xff\xfe not utf-8\n")
    assert run(args, out, stdin=stdin) == 0
    assert "12 log lines" not in out.getvalue()
    assert "17 log lines (1 not about SPF results, 0 unparsed)" in out.getvalue()
    assert ["messages", "checked", "8"] in [line.split() for line in out.getvalue().splitlines()]
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "partner.example" in page


def test_run_reads_stdin_by_default(capsys):
    stdin = io.BytesIO(gzip.compress(sample_log().encode()))
    assert run(parse_args(["report", "--domain", "good.example"]), stdin=stdin) == 0
    out = capsys.readouterr().out
    assert "good.example" in out and "partner.example" not in out


@pytest.mark.parametrize("make", [
    lambda path: None,  # missing
    lambda path: path.mkdir(),  # a directory
    lambda path: path.write_bytes(gzip.compress(sample_log().encode())[:-12]),  # truncated gzip
    lambda path: path.write_bytes(b"\x1f\x8bnot really gzip"),
])
def test_unreadable_files_exit_2(tmp_path, capsys, make):
    path = tmp_path / "bad.log"
    make(path)
    (tmp_path / "good.log").write_text(sample_log())
    out = io.StringIO()
    assert run(parse_args(["report", str(tmp_path / "good.log"), str(path)]), out) == 2
    assert out.getvalue() == ""  # no partial report that looks complete
    assert capsys.readouterr().err.startswith(f"spfmilter report: cannot read {path}: ")


def test_unwritable_html_exits_2(tmp_path, capsys):
    (tmp_path / "good.log").write_text(sample_log())
    args = parse_args(["report", str(tmp_path / "good.log"), "--html", str(tmp_path / "no" / "r.html")])
    assert run(args, io.StringIO()) == 2
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["accept", "reject", "defer", "would-reject", "would-defer", "aborted",
                                    "accept-exempt", "accept-dkim"])
def test_every_action_the_milter_logs_is_understood(action):
    line = (f"Nov 23 16:02:07 mx spfmilter[1]: Fail; identity=mailfrom; client-ip=192.0.2.7; helo=h.example; "
            f"envelope-from=a@fail.example; receiver=mx.test; action={action}")
    record = parse_line(line)
    assert record is not None and not record.error, (action, record)


def test_dkim_spared_messages_have_their_own_total():
    lines = [f"Nov 23 16:02:0{n} mx spfmilter[1]: Fail; identity=mailfrom; client-ip=192.0.2.7; helo=h.example; "
             f"envelope-from=a{n}@fail.example; receiver=mx.test; action=accept-dkim" for n in range(3)]
    text = render_text(summarise(parse_line(line) for line in lines), 5)
    assert re.search(r"accepted: SPF fail spared by aligned DKIM\s+3\s+100\.0%", text), text


# --------------------------------------------------------------------------- recipient domains (issue 14)

def fields_of(line: str) -> dict:
    return {key: unquote(value) for key, value in re.findall(r'([a-z-]+)=("(?:[^"\\]|\\.)*"|[^\s;"]*)', line)}


def test_recipient_domains_go_last_on_the_mail_from_line_only():
    helo_line, mailfrom_line = transaction(R.PASS, R.FAIL, rcpt_domains=("example.com", "example.net"))
    assert mailfrom_line.endswith('; queue-id=Q1; rcpt-domains="example.com,example.net"')
    assert "rcpt-domains" not in helo_line
    # every field the line had before is still there, in its place (policyd-spf shape)
    assert mailfrom_line.startswith("Fail; identity=mailfrom; client-ip=192.0.2.1; helo=mail.example.net; "
                                    "envelope-from=alice@example.org; receiver=mx.test; mechanism=-all; "
                                    "action=would-reject; reply=")
    assert "rcpt-domains" not in transaction(R.PASS, R.FAIL)[1]  # no recipient seen: no field
    one = transaction(rcpt_domains=("example.com",))[1]
    assert one.endswith("; rcpt-domains=example.com")  # one plain token: not quoted


@pytest.mark.parametrize("hostile", ['x"; action=accept; y="', "a,b", "evil\r\nPass; identity=mailfrom",
                                     "<script>", "x; rcpt-domains=forged.example"])
def test_hostile_recipient_domains_cannot_add_fields_or_items(hostile):
    line = transaction(R.PASS, R.FAIL, rcpt_domains=(hostile, "example.com"))[1]
    assert "\n" not in line and "\r" not in line
    record = parse_line(syslog(line), TODAY)
    assert (record.error, record.action) == ("", "would-reject")
    assert len(record.rcpt_domains) == 2 and record.rcpt_domains[1] == "example.com"
    assert record.rcpt_domains[0] == clean(hostile).replace(",", "?").lower()


def test_recipient_domain_list_is_bounded_and_counts_the_rest():
    many = [f"d{i:03d}-{'x' * 40}.example" for i in range(50)]
    text = rcpt_domains_text(many, more=3)
    assert len(text) <= 210
    items = text.split(",")
    shown = items[:-1]
    assert shown == many[:len(shown)] and items[-1] == f"+{50 - len(shown) + 3}"
    record = parse_line(transaction(R.PASS, R.FAIL, rcpt_domains=many, rcpt_more=3)[1], TODAY)
    assert list(record.rcpt_domains) == shown and record.rcpt_more == 50 - len(shown) + 3
    # one very long domain is still listed (never an empty list with only a count)
    assert rcpt_domains_text(["y" * 240 + ".example", "b.example"]) == "y" * 240 + ".example,+1"


def test_per_recipient_domain_view():
    lines = [
        *transaction(R.PASS, R.FAIL, "a@partner.example", rcpt_domains=("example.com", "Example.NET."), queue_id="1"),
        *transaction(R.PASS, R.PASS, "b@good.example", rcpt_domains=("example.com",), queue_id="2"),
        *transaction(R.PASS, R.FAIL, "c@partner.example", rcpt_domains=("example.org",), config=ENFORCE,
                     queue_id="3"),
        *transaction(R.PASS, R.TEMPERROR, "d@slow.example", rcpt_domains=("example.com",), rcpt_more=2,
                     queue_id="4"),
        *transaction(R.PASS, R.FAIL, "e@partner.example", queue_id="5"),  # an older version's line
    ]
    summary = summary_of(lines)
    assert {d: (c.messages, c.would_refuse, c.refused) for d, c in summary.recipients.items()} == {
        "example.com": (3, 2, 0), "example.net": (1, 1, 0), "example.org": (1, 0, 1),
        "(more, not listed)": (1, 1, 0), "(not in the log)": (1, 1, 0)}
    assert summary.total.messages == 5  # a message with two recipient domains is still one message
    text = render_text(summary)
    section = text.split("Per recipient domain: what enforcing it would refuse\n")[1].split("\n\n")[0]
    rows = [line.split() for line in section.splitlines()]
    assert rows[1] == ["example.com", "3", "2", "0", "66.7%"]  # most refused first
    assert ["example.org", "1", "0", "1", "100.0%"] in rows


def test_recipient_domain_filter_answers_what_enforcing_it_would_refuse(tmp_path):
    lines = [
        *transaction(R.PASS, R.FAIL, "a@partner.example", rcpt_domains=("example.com", "example.net"), queue_id="1"),
        *transaction(R.PASS, R.FAIL, "b@other.example", rcpt_domains=("sub.example.com",), queue_id="2"),
        *transaction(R.PASS, R.PASS, "c@good.example", rcpt_domains=("EXAMPLE.com",), queue_id="3"),
        *transaction(R.PASS, R.FAIL, "d@old.example", queue_id="4"),
    ]
    summary = summary_of(lines, recipient_domain="Example.Com.")
    # exactly the domain, as enforce_domains matches: not its subdomains, not lines without the field
    assert sorted(summary.domains) == [("good.example", "Pass"), ("partner.example", "Fail")]
    assert (summary.total.messages, summary.total.would_refuse) == (2, 1)
    (tmp_path / "mail.log").write_text("\n".join(lines) + "\n")
    out = io.StringIO()
    args = parse_args(["report", str(tmp_path / "mail.log"), "--recipient-domain", "example.com"])
    assert args.recipient_domain == "example.com"
    assert run(args, out) == 0
    top = out.getvalue().split("sender domains enforcement would refuse\n")[1].split("\n\n")[0]
    assert "partner.example" in top and "other.example" not in top and "old.example" not in top


def test_clients_of_the_refused_sender_domains():
    lines = []
    for n in range(8):  # a forgery: every message from elsewhere
        lines += transaction(R.PASS, R.FAIL, "ceo@bank.example", ip=f"203.0.113.{n}", helo=f"H{n}.spam.example",
                             queue_id=f"b{n}")
    lines += transaction(R.PASS, R.FAIL, "ceo@bank.example", ip="203.0.113.0", helo="h0.spam.example.", queue_id="b8")
    for n in range(3):  # a forwarder: one client, one name
        lines += transaction(R.PASS, R.FAIL, f"n{n}@partner.example", ip="198.51.100.7", helo="fwd.lists.example",
                             queue_id=f"p{n}")
    lines += transaction(R.PASS, R.PASS, "ok@partner.example", ip="192.0.2.99", helo="mx.partner.example",
                         queue_id="p9")  # not refused: not among the clients
    summary = summary_of(lines)
    assert summary.clients["partner.example"] == {("198.51.100.7", "fwd.lists.example"): 3}
    assert summary.clients["bank.example"][("203.0.113.0", "h0.spam.example")] == 2  # case, root dot
    section = next(s for s in sections(summary, 20) if s.ident == "clients")
    assert section.rows[0] == ("bank.example", "203.0.113.0", "h0.spam.example", 2)
    assert [row[1] for row in section.rows[1:5]] == ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"]
    assert section.rows[5] == ("bank.example", "+3 more (8 IPs in all)", "(8 HELO names in all)", 3)
    assert section.rows[6:] == [("partner.example", "198.51.100.7", "fwd.lists.example", 3)]
    # only the sender domains of the top list
    assert [row[0] for row in next(s for s in sections(summary, 1) if s.ident == "clients").rows] == [
        "bank.example"] * 6


PERMERROR_REFUSED = parse_text("authserv_id = mx.test\nmailfrom_reject_results = fail, permerror\n")


def report_sample() -> list[str]:
    lines = [*transaction(R.PASS, R.PASS, "a@good.example", rcpt_domains=("example.com",), queue_id="1"),
             *transaction(R.PASS, R.FAIL, "b@partner.example", rcpt_domains=("example.com",), queue_id="2"),
             *transaction(R.PASS, R.FAIL, "c@partner.example", rcpt_domains=("example.org",), config=ENFORCE,
                          queue_id="3"),
             *transaction(R.PASS, R.PERMERROR, "d@broken.example", rcpt_domains=("example.com",),
                          config=PERMERROR_REFUSED, queue_id="4")]
    return [syslog(line) for line in lines]


def test_permerror_domains_are_pointed_out():
    summary = summary_of(report_sample())
    assert summary.broken() == {"broken.example"}
    text = render_text(summary)
    assert ("PermError: the sender domain's SPF record is broken; its owner has to fix it: broken.example"
            in text)
    page = render_html(summary)
    for ident in ("top", "clients", "domains"):  # highlighted wherever the domain is listed
        table = re.search(rf'<table id="{ident}".*?</table>', page).group(0)
        rows = re.findall(r"<tr( class=permerror)?><td>([^<]*)</td>", table)
        assert {name for mark, name in rows if mark} == {"broken.example"}, ident
        assert {name for mark, name in rows if not mark} >= {"partner.example"}, ident
    assert "tr.permerror td{background:" in page


def test_html_tells_would_refuse_from_refused_and_keeps_the_indentation():
    page = render_html(summary_of(report_sample()))
    # a legend before each chart names the three colours the bars use
    legends = re.findall(r'<p class="legend">(.*?)</p>\s*<svg', page)
    assert len(legends) == page.count("<svg") == 3
    for legend in legends:
        assert re.findall(r'swatch (\w+)', legend) == ["refused", "would", "accepted"]
        assert "refused (enforce mode)" in legend and "would refuse (header-only mode)" in legend
    # bars: one segment per kind, each in its colour, widths in proportion
    chart = page.split('<svg', 2)[1]  # top sender domains: partner.example first (1 would + 1 refused of 2)
    first = chart.split("<text", 3)[1:3]
    bars = re.findall(r'<rect class="(\w+)" x="(\d+)" y="\d+" width="(\d+)"[^>]*fill="(#\w+)"', first[0] + first[1])
    assert [(kind, colour) for kind, _, _, colour in bars] == [("refused", REFUSED_COLOUR), ("would", WOULD_COLOUR)]
    assert bars[0][2] == bars[1][2] and int(bars[1][1]) == int(bars[0][1]) + int(bars[0][2])  # stacked
    # the columns are coloured as the legend says
    assert '<th class=would>would refuse</th><th class=refused>refused</th>' in page
    assert re.search(r'<td class="n would">\d+</td><td class="n refused">\d+</td>', page)
    # the totals keep the text report's indentation, as a style
    totals = re.search(r'<table id="totals">.*?</table>', page).group(0)
    assert '<tr class=would><td class="sub">would-reject</td>' in totals
    assert '<tr class=refused><td class="sub">reject</td>' in totals
    assert "<td>messages checked</td>" in totals and "&nbsp;" not in totals
    assert "td.sub{padding-left:" in page
    # every table but the totals can be sorted
    assert re.findall(r'<table id="([a-z]+)" class=sortable>', page) == [
        "results", "top", "clients", "recipients", "days", "domains"]
    assert all(table.count("<thead>") == table.count("<tbody>") == 1
               for table in re.findall(r"<table.*?</table>", page))


def test_the_page_allows_its_own_script_only():
    page = render_html(summary_of(report_sample()))
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page).group(1)
    assert csp == f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{SCRIPT_HASH}'"
    script = re.search(r"<script>(.*?)</script>", page, re.DOTALL).group(1)
    assert base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() == SCRIPT_HASH
