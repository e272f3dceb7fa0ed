"""``spfmilter report``: summarise the milter's log, to decide when header-only mode can enforce.

The log has one line per verified identity (:func:`spfmilter.headers.log_line`) and one
per skipped transaction (:func:`spfmilter.headers.skip_line`), under a syslog prefix
(``Nov 23 16:02:07 mx spfmilter[123]: ``, as in mail.log and ``journalctl -o short``; with
fractions of a second as ``-o short-precise`` prints them), an ISO prefix (rsyslog's RFC 3339
time stamps, ``journalctl -o short-iso``: ``2026-11-23T16:02:07+0100 mx spfmilter[123]: ``),
the stderr prefix (``2026-11-23 16:02:07,123 spfmilter[123]: INFO: ``) or none
(``journalctl -o cat``).  ``--journal`` runs ``journalctl`` itself.
A message is one transaction: its HELO line is followed by its MAIL FROM line, and
it is counted by the MAIL FROM line.  Both lines carry the transaction's action; the
reply is on the line of the identity that decided (:func:`spfmilter.policy.decide`).

Everything read from the log came from the network: it is cleaned for the terminal
(:func:`spfmilter.text.clean`) and escaped for HTML (:func:`html.escape`).
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import html
import io
import re
import subprocess
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Iterable, NamedTuple, Optional

from .policy import Action
from .text import clean, unquote

RESULTS = frozenset(("Pass", "Fail", "Softfail", "Neutral", "None", "PermError", "TempError"))
ACTIONS = frozenset(action.value for action in Action if action is not Action.SKIPPED)  # what a log line says
WOULD_REFUSE = frozenset((Action.WOULD_REJECT.value, Action.WOULD_DEFER.value))
REFUSED = frozenset((Action.REJECT.value, Action.DEFER.value))
DISPLAY_LIMIT = 64  # characters of a domain or HELO name shown in a table cell

_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_TAG = r"spfmilter(?:\[(?P<pid>\d+)\])?:\s+(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):\s+)?"
_SYSLOG = re.compile(
    r"(?P<month>[A-Z][a-z]{2})\s+(?P<day>\d{1,2})\s+\d\d:\d\d:\d\d(?:\.\d+)?\s+(?:\S+\s+)??" + _TAG)
_ISO = re.compile(r"(?P<date>\d{4}-\d\d-\d\d)[T ]\d\d:\d\d:\d\d\S*\s+(?:\S+\s+)??" + _TAG)
_FIELD = re.compile(r'([a-z-]+)=("(?:[^"\\]|\\.)*"|[^\s;"]*)(?:; |$)')


@dataclass(frozen=True)
class Record:
    """One log line about one identity of a transaction (or a skipped transaction)."""

    result: str = ""  # "Pass", "Fail", ...
    identity: str = ""  # "helo" or "mailfrom"; "" on a skipped transaction's line
    action: str = ""
    client_ip: str = ""
    helo: str = ""
    sender: str = ""  # "<>" for the null sender
    queue_id: str = ""
    skipped: str = ""  # why the transaction was not checked
    has_reply: bool = False  # the reply is logged on the identity that decided
    day: Optional[date] = None
    pid: str = ""
    error: str = ""  # set when the line looked like ours but could not be parsed


def _day(match: re.Match, today: date) -> Optional[date]:
    """The date of a log prefix; syslog has no year: the latest one not after tomorrow."""
    if match.re is _ISO:
        try:
            return date.fromisoformat(match["date"])
        except ValueError:
            return None
    month, day = _MONTHS.get(match["month"]), int(match["day"])
    for year in range(today.year, today.year - 5, -1):  # back to a leap year for 29 Feb
        try:
            candidate = date(year, month or 0, day)
        except ValueError:
            continue
        if candidate <= today + timedelta(days=1):
            return candidate
    return None


def parse_line(text: str, today: Optional[date] = None) -> Optional[Record]:
    """The record of one log line; None for lines that are not SPF result lines.

    A line that starts like one (``Fail; ...``) but is broken gives a Record with
    ``error`` set.  Never raises on any input.
    """
    today = today or date.today()
    message, day, pid = text.rstrip(), None, ""
    for _ in range(3):  # journald may wrap the stderr format in its own prefix
        match = _SYSLOG.match(message) or _ISO.match(message)
        if not match:
            break
        day, pid, message = _day(match, today) or day, match["pid"] or pid, message[match.end():]
    result, sep, rest = message.partition(";")
    if result not in RESULTS or not sep:
        return None
    broken = Record(result=result, day=day, pid=pid)
    if not rest.startswith(" "):
        return _broken(broken, "no space after the result")
    fields: dict[str, str] = {}
    position, rest = 0, rest[1:]
    while position < len(rest):
        found = _FIELD.match(rest, position)
        if not found or found.end() == position:
            return _broken(broken, f"unreadable field at {clean(rest[position:], 40)!r}")
        key = found.group(1)
        if key in fields:
            return _broken(broken, f"duplicate {key}=")
        fields[key] = clean(unquote(found.group(2)))  # _FIELD quotes a value whole or not at all
        position = found.end()
    identity, action = fields.get("identity", ""), fields.get("action", "")
    if action not in ACTIONS:
        return _broken(broken, f"unknown action {clean(action, 40)!r}")
    if "envelope-from" not in fields or "helo" not in fields:
        return _broken(broken, "no envelope-from= or helo=")
    if ("skipped" in fields) == (identity in ("helo", "mailfrom")):
        return _broken(broken, "neither identity=helo|mailfrom nor skipped=")
    return Record(result=result, identity=identity, action=action, client_ip=fields.get("client-ip", ""),
                  helo=fields["helo"], sender=fields["envelope-from"], queue_id=fields.get("queue-id", ""),
                  skipped=fields.get("skipped", ""), has_reply="reply" in fields, day=day, pid=pid)


def _broken(record: Record, why: str) -> Record:
    return Record(result=record.result, day=record.day, pid=record.pid, error=why)


# --------------------------------------------------------------------------- summary

@dataclass
class Counts:
    messages: int = 0
    would_refuse: int = 0  # would-reject or would-defer (header-only mode)
    refused: int = 0  # reject or defer (enforce mode)

    def add(self, action: str) -> None:
        self.messages += 1
        self.would_refuse += action in WOULD_REFUSE
        self.refused += action in REFUSED

    @property
    def share(self) -> str:
        """Share of the messages refused or that would have been."""
        if not self.messages:
            return "-"
        return f"{100 * (self.would_refuse + self.refused) / self.messages:.1f}%"


@dataclass
class Summary:
    lines: int = 0
    ignored: int = 0  # not SPF result lines (srs=, start-up messages, other programs)
    unparsed: int = 0  # looked like SPF result lines but were broken
    skipped: int = 0  # transactions of trusted clients, not checked
    lone_helo: int = 0  # HELO lines whose MAIL FROM line was never seen (log cut short)
    total: Counts = field(default_factory=Counts)
    actions: Counter = field(default_factory=Counter)  # of checked messages
    results: dict = field(default_factory=dict)  # MAIL FROM result -> Counts
    domains: dict = field(default_factory=dict)  # (sender domain, result) -> Counts
    days: dict = field(default_factory=dict)  # "YYYY-MM-DD" or "unknown" -> Counts

    def top(self, n: int) -> list[tuple[str, Counts]]:
        """The n sender domains with the most messages refused or that would have been."""
        per_domain: dict[str, Counts] = {}
        for (domain, _), counts in self.domains.items():
            total = per_domain.setdefault(domain, Counts())
            total.messages += counts.messages
            total.would_refuse += counts.would_refuse
            total.refused += counts.refused
        ranked = sorted(((d, c) for d, c in per_domain.items() if c.would_refuse + c.refused),
                        key=lambda item: (-(item[1].would_refuse + item[1].refused), -item[1].messages, item[0]))
        return ranked[:n]


def sender_domain(sender: str, helo: str) -> str:
    """What a message is filed under: the MAIL FROM domain; the HELO name for the null sender."""
    if sender in ("", "<>"):
        return f"<> (helo {helo.lower().rstrip('.') or '?'})"
    _, at, domain = sender.rpartition("@")
    if at and domain:
        return domain.lower().rstrip(".")
    return f"{sender} (no domain)"


def _matches(domain: str, record: Record, wanted: str) -> bool:
    name = record.helo if domain.startswith("<> ") else domain
    name, wanted = name.lower().rstrip("."), wanted.lower().rstrip(".")
    return name == wanted or name.endswith("." + wanted)


def summarise(records: Iterable[Optional[Record]], *, since: Optional[date] = None,
              domain: Optional[str] = None) -> Summary:
    """Count messages; ``records`` is parse_line's answer for every line, None included."""
    summary = Summary()
    pending: dict[tuple, list[Record]] = {}  # HELO lines waiting for their MAIL FROM line
    for record in records:
        summary.lines += 1
        if record is None:
            summary.ignored += 1
        elif record.error:
            summary.unparsed += 1
        elif record.identity == "helo":
            pending.setdefault(_key(record), []).append(record)
        else:
            waiting = pending.get(_key(record))
            helo = waiting.pop(0) if waiting else None
            if waiting == []:
                del pending[_key(record)]
            _count(summary, record, helo, since, domain)
    summary.lone_helo = sum(map(len, pending.values()))
    return summary


def _key(record: Record) -> tuple:
    return record.pid, record.client_ip, record.helo, record.sender, record.queue_id


def _count(summary: Summary, mailfrom: Record, helo: Optional[Record], since: Optional[date],
           wanted: Optional[str]) -> None:
    if since is not None and (mailfrom.day is None or mailfrom.day < since):
        return
    name = sender_domain(mailfrom.sender, mailfrom.helo)
    if wanted and not _matches(name, mailfrom, wanted):
        return
    if mailfrom.skipped:
        summary.skipped += 1
        return
    lines = (mailfrom, helo) if helo else (mailfrom,)
    action = next((r.action for r in lines if r.action in WOULD_REFUSE | REFUSED), mailfrom.action)
    result = mailfrom.result
    if helo and helo.has_reply and not mailfrom.has_reply:
        result = f"{result}, HELO {helo.result}"  # the HELO identity decided
    day = mailfrom.day.isoformat() if mailfrom.day else "unknown"
    summary.actions[action] += 1
    for counts in (summary.total, summary.results.setdefault(mailfrom.result, Counts()),
                   summary.domains.setdefault((name, result), Counts()), summary.days.setdefault(day, Counts())):
        counts.add(action)


# --------------------------------------------------------------------------- rendering

class Section(NamedTuple):
    title: str
    headers: tuple
    rows: list  # of tuples: text cells first (left-aligned), then numbers
    left: int  # how many leading columns are text
    chart: Optional[list] = None  # (label, Counts) for a bar chart in the HTML page


def _cell(text: str) -> str:
    return clean(text, DISPLAY_LIMIT)


def _counts_row(counts: Counts) -> tuple:
    return counts.messages, counts.would_refuse, counts.refused, counts.share


COLUMNS = ("messages", "would refuse", "refused", "share refused")


def sections(summary: Summary, top: int) -> list[Section]:
    total, actions = summary.total, summary.actions

    def of_checked(count: int) -> str:
        return f"{100 * count / total.messages:.1f}%" if total.messages else "-"

    totals = [
        ("messages checked", total.messages, ""),
        ("would be refused (header-only mode)", total.would_refuse, of_checked(total.would_refuse)),
        ("  would-reject", actions["would-reject"], of_checked(actions["would-reject"])),
        ("  would-defer", actions["would-defer"], of_checked(actions["would-defer"])),
        ("refused (enforce mode)", total.refused, of_checked(total.refused)),
        ("  reject", actions["reject"], of_checked(actions["reject"])),
        ("  defer", actions["defer"], of_checked(actions["defer"])),
        ("accepted for an exempt recipient", actions["accept-exempt"], of_checked(actions["accept-exempt"])),
        ("accepted: SPF fail spared by aligned DKIM", actions["accept-dkim"], of_checked(actions["accept-dkim"])),
        ("aborted before the end of the message", actions["aborted"], of_checked(actions["aborted"])),
        ("skipped (trusted client)", summary.skipped, ""),
        ("unparsed lines", summary.unparsed, ""),
        ("HELO lines without a MAIL FROM line", summary.lone_helo, ""),
    ]
    results = [(r, *_counts_row(summary.results[r]))
               for r in sorted(summary.results, key=lambda r: -summary.results[r].messages)]
    ranked = summary.top(top)
    days = sorted(summary.days.items(), key=lambda item: (item[0] == "unknown", item[0]))
    domains = sorted(summary.domains.items(), key=lambda item: (
        -(item[1].would_refuse + item[1].refused), -item[1].messages, item[0]))
    return [
        Section("Totals", ("", "count", "of checked"), totals, 1),
        Section("MAIL FROM results", ("result", *COLUMNS), results, 1),
        Section(f"Top {top} sender domains enforcement would refuse", ("domain", *COLUMNS),
                [(_cell(d), *_counts_row(c)) for d, c in ranked], 1, [(_cell(d), c) for d, c in ranked]),
        Section("Per day", ("day", *COLUMNS), [(d, *_counts_row(c)) for d, c in days], 1, days),
        Section("Per sender domain and result", ("domain", "result", *COLUMNS),
                [(_cell(d), r, *_counts_row(c)) for (d, r), c in domains], 2),
    ]


def _headline(summary: Summary) -> str:
    known = sorted(d for d in summary.days if d != "unknown")
    period = f"{known[0]} to {known[-1]}" if known else "no dated messages"
    return (f"{summary.lines} log lines ({summary.ignored} not about SPF results, "
            f"{summary.unparsed} unparsed); period {period}")


NOTE = "share refused = (would refuse + refused) / messages checked"


def render_text(summary: Summary, top: int = 20) -> str:
    out = [f"spfmilter report: {_headline(summary)}"]
    for section in sections(summary, top):
        out += ["", section.title, *_table(section)]
    out += ["", NOTE]
    return "\n".join(out) + "\n"


def _table(section: Section) -> list[str]:
    cells = [tuple(map(str, section.headers))] + [tuple(map(str, row)) for row in section.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(section.headers))]
    lines = []
    for row in cells:
        parts = [cell.ljust(w) if i < section.left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  " + "  ".join(parts).rstrip())
    if not section.rows:
        lines.append("  (none)")
    return lines


def _svg(rows: list, width: int = 640, label_width: int = 240, bar: int = 18) -> str:
    """Horizontal bars: messages in grey, refused or would-be-refused in red."""
    most = max((c.messages for _, c in rows), default=0) or 1
    span = width - label_width - 70
    height = bar * len(rows) + 4
    out = [(f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            'role="img"><title>messages (grey) and refused or would be refused (red)</title>')]
    for index, (label, counts) in enumerate(rows):
        y = index * bar + 2
        whole = round(span * counts.messages / most)
        part = round(span * (counts.would_refuse + counts.refused) / most)
        out.append(
            f'<text x="{label_width - 6}" y="{y + bar - 5}" text-anchor="end">{html.escape(label)}</text>'
            f'<rect x="{label_width}" y="{y}" width="{whole}" height="{bar - 4}" fill="#bbb"/>'
            f'<rect x="{label_width}" y="{y}" width="{part}" height="{bar - 4}" fill="#c33"/>'
            f'<text x="{label_width + whole + 4}" y="{y + bar - 5}">'
            f'{counts.would_refuse + counts.refused}/{counts.messages}</text>')
    out.append("</svg>")
    return "".join(out)


def render_html(summary: Summary, top: int = 20) -> str:
    """A self-contained page (no script, no external resources); all text is escaped."""
    esc = html.escape
    out = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
           ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'\">"),
           ("<title>spfmilter report</title><style>body{font-family:sans-serif;margin:2em}"
            "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:2px 8px}"
            "td.n{text-align:right}th{background:#eee}.chart{font-size:12px;display:block}</style></head><body>"),
           f"<h1>spfmilter report</h1><p>{esc(_headline(summary))}</p>"]
    for section in sections(summary, top):
        out.append(f"<h2>{esc(section.title)}</h2>")
        if section.chart:
            out.append(_svg(section.chart))
        out.append("<table><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in section.headers) + "</tr>")
        for row in section.rows:
            out.append("<tr>" + "".join(
                f'<td{"" if i < section.left else " class=n"}>{esc(str(cell))}</td>'
                for i, cell in enumerate(row)) + "</tr>")
        out.append("</table>")
    out.append(f"<p>{esc(NOTE)}</p></body></html>\n")
    return "\n".join(out)


# --------------------------------------------------------------------------- command line

class ReadError(Exception):
    pass


def _lines(paths: Iterable[str], stdin) -> Iterable[str]:
    """The lines of every file in turn; gzip recognised by its magic number; '-' is stdin."""
    for path in paths:
        try:
            with contextlib.ExitStack() as stack:
                raw = stdin if path == "-" else stack.enter_context(open(path, "rb"))
                if not hasattr(raw, "peek"):
                    raw = io.BufferedReader(raw)
                if raw.peek(2)[:2] == b"\x1f\x8b":
                    raw = stack.enter_context(gzip.GzipFile(fileobj=raw))
                text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
                stack.callback(text.detach)  # closing the wrapper would close stdin
                yield from text
        except (OSError, EOFError, zlib.error) as exc:
            raise ReadError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _since(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _top_count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return int(text)


def add_parser(subparsers) -> None:
    report = subparsers.add_parser(
        "report", help="summarise the log of a header-only period",
        description="Read spfmilter's log (syslog or stderr format, plain or gzip; '-' is standard "
                    "input) and count per sender domain and result how many messages enforcement "
                    "would have refused (action=would-reject or would-defer).")
    report.add_argument("logs", metavar="LOG", nargs="*",
                        help="log files, e.g. /var/log/mail.log (default: standard input, which must not "
                             "be a terminal)")
    report.add_argument("--journal", action="store_true",
                        help=f"read the systemd journal instead: runs {' '.join(JOURNALCTL)} "
                             "(with --since when given)")
    report.add_argument("--html", metavar="FILE", help="also write the report as a self-contained HTML page")
    report.add_argument("--top", metavar="N", type=_top_count, default=20,
                        help="how many of the most refused sender domains to list (default 20)")
    report.add_argument("--since", metavar="YYYY-MM-DD", type=_since, help="only messages from this day on")
    report.add_argument("--domain", metavar="DOMAIN",
                        help="only messages from this sender domain and its subdomains "
                             "(the HELO name for the null sender)")


JOURNALCTL = ("journalctl", "-u", "spfmilter", "-o", "short-iso", "--no-pager")
NO_INPUT = ("standard input is a terminal: give the log as a file (e.g. /var/log/mail.log), pipe it in "
            "(journalctl -u spfmilter -o short | spfmilter report -), or use --journal")


def journal_command(since: Optional[date]) -> list[str]:
    """The journalctl command line for --journal (short-iso: its time stamps carry the year)."""
    return list(JOURNALCTL) + (["--since", since.isoformat()] if since else [])


def run(args, out=None, stdin=None) -> int:
    """The report on ``out`` (default stdout), and the HTML page if asked; 2 when a file fails."""
    out = out if out is not None else sys.stdout
    stdin = stdin if stdin is not None else sys.stdin.buffer
    today = date.today()
    if args.journal and args.logs:
        print("spfmilter report: give log files or --journal, not both", file=sys.stderr)
        return 2
    if args.journal:
        return _run_journal(args, out, today)
    if not args.logs and stdin.isatty():  # nothing would ever come: say what we want instead
        print(f"spfmilter report: {NO_INPUT}", file=sys.stderr)
        return 2
    lines = _lines(args.logs or ["-"], stdin)
    try:
        summary = summarise((parse_line(line, today) for line in lines), since=args.since, domain=args.domain)
    except ReadError as exc:
        print(f"spfmilter report: {exc}", file=sys.stderr)
        return 2
    return _write(args, out, summary)


def _run_journal(args, out, today: date) -> int:
    command = journal_command(args.since)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as exc:
        print(f"spfmilter report: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    with proc:
        text = io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace")
        summary = summarise((parse_line(line, today) for line in text), since=args.since, domain=args.domain)
    if proc.returncode != 0:
        print(f"spfmilter report: {' '.join(command)} exited with status {proc.returncode}", file=sys.stderr)
        return 2
    return _write(args, out, summary)


def _write(args, out, summary) -> int:
    out.write(render_text(summary, args.top))
    if args.html:
        try:
            with open(args.html, "w", encoding="utf-8") as page:
                page.write(render_html(summary, args.top))
        except OSError as exc:
            print(f"spfmilter report: cannot write {args.html}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 0
