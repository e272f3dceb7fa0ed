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
The MAIL FROM line also lists the recipient domains (``rcpt-domains=``,
:func:`spfmilter.headers.rcpt_domains_text`; logs of older versions lack it): a message
counts under each of them, which answers "what would enforcing example.com refuse?".
For the sender domains enforcement would refuse, the client IPs and HELO names they came
from are counted too: a forwarder is one or two clients with a stable name, a forgery many.

Everything read from the log came from the network: it is cleaned for the terminal
(:func:`spfmilter.text.clean`) and escaped for HTML (:func:`html.escape`).
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
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
LABEL_LIMIT = 36  # characters of a chart's bar label (the whole name is its tooltip)
CLIENTS_SHOWN = 5  # (client IP, HELO name) pairs listed per sender domain
NOT_LOGGED = "(not in the log)"  # recipient "domain" of lines without rcpt-domains= (older versions)
NOT_LISTED = "(more, not listed)"  # the line's "+N": domains that did not fit on it

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
    rcpt_domains: tuple = ()  # recipient domains (MAIL FROM line), lower case
    rcpt_more: int = 0  # recipient domains the line counted but did not list
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
    domains, more = _rcpt_domains(fields.get("rcpt-domains", ""))
    return Record(result=result, identity=identity, action=action, client_ip=fields.get("client-ip", ""),
                  helo=fields["helo"], sender=fields["envelope-from"], queue_id=fields.get("queue-id", ""),
                  skipped=fields.get("skipped", ""), has_reply="reply" in fields, day=day, pid=pid,
                  rcpt_domains=domains, rcpt_more=more)


def _rcpt_domains(text: str) -> tuple[tuple, int]:
    """The domains of ``rcpt-domains=a.example,b.example,+3`` and the count of those not listed."""
    domains: dict[str, None] = {}
    more = 0
    for item in text.split(","):
        item = item.strip().lower().rstrip(".")
        if re.fullmatch(r"\+\d{1,9}", item):
            more += int(item[1:])
        elif item:
            domains[item] = None
    return tuple(domains), more


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
    recipients: dict = field(default_factory=dict)  # recipient domain -> Counts (a message under each)
    clients: dict = field(default_factory=dict)  # sender domain -> Counter of (client IP, HELO) of refusals

    def broken(self) -> set[str]:
        """The sender domains whose SPF record gave PermError for MAIL FROM: their owners must fix it."""
        return {domain for domain, result in self.domains if result.split(",")[0] == "PermError"}

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
              domain: Optional[str] = None, recipient_domain: Optional[str] = None) -> Summary:
    """Count messages; ``records`` is parse_line's answer for every line, None included.

    ``domain``: only this sender domain and its subdomains; ``recipient_domain``: only
    messages with a recipient in exactly this domain (as ``enforce_domains`` matches).
    """
    wanted_rcpt = recipient_domain.lower().rstrip(".") if recipient_domain else None
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
            _count(summary, record, helo, since, domain, wanted_rcpt)
    summary.lone_helo = sum(map(len, pending.values()))
    return summary


def _key(record: Record) -> tuple:
    return record.pid, record.client_ip, record.helo, record.sender, record.queue_id


def _count(summary: Summary, mailfrom: Record, helo: Optional[Record], since: Optional[date],
           wanted: Optional[str], wanted_rcpt: Optional[str]) -> None:
    if since is not None and (mailfrom.day is None or mailfrom.day < since):
        return
    name = sender_domain(mailfrom.sender, mailfrom.helo)
    if wanted and not _matches(name, mailfrom, wanted):
        return
    if wanted_rcpt and wanted_rcpt not in mailfrom.rcpt_domains:
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
    recipients = mailfrom.rcpt_domains + ((NOT_LISTED,) if mailfrom.rcpt_more else ())
    for recipient in recipients or (NOT_LOGGED,):
        summary.recipients.setdefault(recipient, Counts()).add(action)
    if action in WOULD_REFUSE | REFUSED:
        client = (mailfrom.client_ip or "unknown", mailfrom.helo.lower().rstrip("."))
        summary.clients.setdefault(name, Counter())[client] += 1


# --------------------------------------------------------------------------- rendering

class Section(NamedTuple):
    title: str
    headers: tuple
    rows: list  # of tuples: text cells first (left-aligned), then numbers
    left: int  # how many leading columns are text
    chart: Optional[list] = None  # (label, Counts) for a bar chart in the HTML page
    ident: str = ""  # the HTML table's id (its sort order is kept in the page's #sort= fragment)
    marks: tuple = ()  # per row: a CSS class for the HTML page ("" for none)
    note: str = ""  # a line under the table


def _cell(text: str) -> str:
    return clean(text, DISPLAY_LIMIT)


def _counts_row(counts: Counts) -> tuple:
    return counts.messages, counts.would_refuse, counts.refused, counts.share


COLUMNS = ("messages", "would refuse", "refused", "share refused")
BROKEN_NOTE = "PermError: the sender domain's SPF record is broken; its owner has to fix it"


def _by_refusals(item: tuple) -> tuple:
    key, counts = item
    return -(counts.would_refuse + counts.refused), -counts.messages, key


def _broken_marks(names: Iterable[str], broken: set) -> tuple:
    return tuple("permerror" if name in broken else "" for name in names)


def _clients(summary: Summary, ranked: list) -> list[tuple]:
    """Per sender domain of ``ranked``: its most frequent (client IP, HELO name) pairs, the rest summed."""
    rows = []
    for domain, _ in ranked:
        seen = summary.clients.get(domain, Counter())
        pairs = sorted(seen.items(), key=lambda item: (-item[1], item[0]))
        rows += [(_cell(domain), _cell(ip), _cell(helo), count) for (ip, helo), count in pairs[:CLIENTS_SHOWN]]
        rest = pairs[CLIENTS_SHOWN:]
        if rest:
            ips, helos = len({ip for ip, _ in seen}), len({helo for _, helo in seen})
            rows.append((_cell(domain), f"+{len(rest)} more ({ips} IPs in all)", f"({helos} HELO names in all)",
                         sum(count for _, count in rest)))
    return rows


def sections(summary: Summary, top: int) -> list[Section]:
    total, actions = summary.total, summary.actions
    broken = summary.broken()

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
    total_marks = ("", "would", "would", "would", "refused", "refused", "refused") + ("",) * (len(totals) - 7)
    results = [(r, *_counts_row(summary.results[r]))
               for r in sorted(summary.results, key=lambda r: -summary.results[r].messages)]
    ranked = summary.top(top)
    days = sorted(summary.days.items(), key=lambda item: (item[0] == "unknown", item[0]))
    domains = sorted(summary.domains.items(), key=_by_refusals)
    recipients = sorted(summary.recipients.items(), key=_by_refusals)
    clients = _clients(summary, ranked)
    broken_ranked = [d for d, _ in ranked if d in broken]
    return [
        Section("Totals", ("", "count", "of checked"), totals, 1, ident="totals", marks=total_marks),
        Section("MAIL FROM results", ("result", *COLUMNS), results, 1, ident="results"),
        Section(f"Top {top} sender domains enforcement would refuse", ("domain", *COLUMNS),
                [(_cell(d), *_counts_row(c)) for d, c in ranked], 1, [(_cell(d), c) for d, c in ranked],
                ident="top", marks=_broken_marks((d for d, _ in ranked), broken),
                note=f"{BROKEN_NOTE}: {', '.join(map(_cell, broken_ranked))}" if broken_ranked else ""),
        Section(f"Clients of the top {top} sender domains, in the messages enforcement would refuse",
                ("domain", "client IP", "HELO name", "messages"), clients, 3, ident="clients",
                marks=_broken_marks((row[0] for row in clients), set(map(_cell, broken)))),
        Section("Per recipient domain: what enforcing it would refuse", ("recipient domain", *COLUMNS),
                [(_cell(d), *_counts_row(c)) for d, c in recipients], 1,
                [(_cell(d), c) for d, c in recipients[:top]], ident="recipients"),
        Section("Per day", ("day", *COLUMNS), [(d, *_counts_row(c)) for d, c in days], 1, days, ident="days"),
        Section("Per sender domain and result", ("domain", "result", *COLUMNS),
                [(_cell(d), r, *_counts_row(c)) for (d, r), c in domains], 2, ident="domains",
                marks=tuple("permerror" if r.split(",")[0] == "PermError" else "" for (_, r), _ in domains)),
    ]


def _headline(summary: Summary) -> str:
    known = sorted(d for d in summary.days if d != "unknown")
    period = f"{known[0]} to {known[-1]}" if known else "no dated messages"
    return (f"{summary.lines} log lines ({summary.ignored} not about SPF results, "
            f"{summary.unparsed} unparsed); period {period}")


NOTES = (
    "share refused = (would refuse + refused) / messages checked",
    "would refuse: accepted in header-only mode, enforcement would refuse it; refused: reject or defer",
    f"recipient domains: a message counts under each; {NOT_LOGGED}: logged without rcpt-domains=",
)


def render_text(summary: Summary, top: int = 20) -> str:
    out = [f"spfmilter report: {_headline(summary)}"]
    for section in sections(summary, top):
        out += ["", section.title, *_table(section)]
        if section.note:
            out.append(f"  {section.note}")
    out += ["", *NOTES]
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


# Colours of the charts and tables; the legend says what each means.
REFUSED_COLOUR, WOULD_COLOUR, ACCEPTED_COLOUR, BROKEN_COLOUR = "#b22222", "#f0a030", "#c8c8c8", "#fff3b0"
LEGEND = (("refused", REFUSED_COLOUR, "refused (enforce mode)"),
          ("would", WOULD_COLOUR, "would refuse (header-only mode)"),
          ("accepted", ACCEPTED_COLOUR, "accepted"))


def _svg(rows: list, width: int = 760, label_width: int = 260, bar: int = 18) -> str:
    """Horizontal stacked bars per label: refused, would refuse, the rest of the messages."""
    most = max((c.messages for _, c in rows), default=0) or 1
    span = width - label_width - 90
    height = bar * len(rows) + 4
    out = [(f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
            '<title>messages refused (dark red), that enforcement would refuse (orange), accepted (grey)</title>')]
    for index, (label, counts) in enumerate(rows):
        y = index * bar + 2
        x = label_width
        shown = label if len(label) <= LABEL_LIMIT else label[:LABEL_LIMIT - 1] + "\u2026"
        out.append(f'<text x="{label_width - 6}" y="{y + bar - 5}" text-anchor="end">{html.escape(shown)}'
                   f'<title>{html.escape(label)}</title></text>')
        rest = counts.messages - counts.refused - counts.would_refuse
        for kind, colour, count in (("refused", REFUSED_COLOUR, counts.refused),
                                    ("would", WOULD_COLOUR, counts.would_refuse),
                                    ("accepted", ACCEPTED_COLOUR, rest)):
            length = round(span * count / most)
            if length:
                out.append(f'<rect class="{kind}" x="{x}" y="{y}" width="{length}" height="{bar - 4}" '
                           f'fill="{colour}"><title>{html.escape(label)}: {count} {kind}</title></rect>')
            x += length
        out.append(f'<text x="{x + 4}" y="{y + bar - 5}">'
                   f'{counts.refused} + {counts.would_refuse} / {counts.messages}</text>')
    out.append("</svg>")
    return "".join(out)


def _legend() -> str:
    keys = "".join(f'<span class="key"><span class="swatch {kind}"></span>{html.escape(text)}</span>'
                   for kind, _, text in LEGEND)
    return f'<p class="legend">{keys}<span class="key">bar label: refused + would refuse / messages</span></p>'


# Sorting: a click on a column heading sorts by it (numbers high first, text A-Z; again:
# reversed); the order is kept in the fragment (#sort=TABLE.COLUMN[.d]) so a link shows it.
SORT_SCRIPT = """
(function () {
  function key(cell) {
    var text = cell.textContent.trim();
    return /^-?[0-9]+(\\.[0-9]+)?%?$/.test(text) ? [0, parseFloat(text)] : [1, text.toLowerCase()];
  }
  function compare(a, b) {
    if (a[0] !== b[0]) { return a[0] - b[0]; }
    return a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0;
  }
  function sortBy(table, column, descending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (x, y) {
      var order = compare(key(x.cells[column]), key(y.cells[column]));
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.setAttribute("aria-sort", index === column ? (descending ? "descending" : "ascending") : "none");
    });
  }
  function remember(table, column, descending) {
    var fragment = "#sort=" + table.id + "." + column + (descending ? ".d" : "");
    if (window.history && history.replaceState) { history.replaceState(null, "", fragment); }
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      th.setAttribute("aria-sort", "none");
      function activate() {
        var numeric = table.tBodies[0].rows.length && key(table.tBodies[0].rows[0].cells[column])[0] === 0;
        var state = th.getAttribute("aria-sort");
        var descending = state === "none" ? numeric : state === "ascending";
        sortBy(table, column, descending);
        remember(table, column, descending);
      }
      th.addEventListener("click", activate);
      th.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); activate(); }
      });
    });
  });
  var wanted = /^#sort=([a-z-]+)\\.([0-9]+)(\\.d)?$/.exec(window.location.hash);
  var table = wanted && document.getElementById(wanted[1]);
  var column = wanted && parseInt(wanted[2], 10);
  if (table && table.classList.contains("sortable") && column < table.tHead.rows[0].cells.length) {
    sortBy(table, column, !!wanted[3]);
  }
  document.body.setAttribute("data-sortable", String(tables.length));
})();
"""
SCRIPT_HASH = base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode()).digest()).decode()
STYLE = (
    "body{font-family:sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:2px 8px}"
    "td{overflow-wrap:anywhere}"  # a long name from the log wraps instead of widening the page
    "td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#eee;text-align:left}"
    "table.sortable th{cursor:pointer}table.sortable th:hover{background:#ddd}"
    "th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}"
    "td.sub{padding-left:2em}"
    f"th.would,td.would,tr.would td{{background:#fdebd0}}th.refused,td.refused,tr.refused td{{background:#f6d5d5}}"
    f"tr.permerror td{{background:{BROKEN_COLOUR}}}tr.permerror td:first-child{{box-shadow:inset 4px 0 #d4a000}}"
    "tr.permerror td:first-child::after{content:' (PermError: SPF record broken)';color:#8a6d00;font-size:smaller}"
    ".chart{font-size:12px;display:block;max-width:100%;height:auto}.legend{font-size:13px;margin:.3em 0}"
    ".key{margin-right:1.2em;white-space:nowrap}"
    ".swatch{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:-.1em}"
    f".swatch.refused{{background:{REFUSED_COLOUR}}}.swatch.would{{background:{WOULD_COLOUR}}}"
    f".swatch.accepted{{background:{ACCEPTED_COLOUR}}}"
    f".swatch.permerror{{background:{BROKEN_COLOUR};border:1px solid #d4a000}}"
    "p.note{font-size:13px;color:#555}"
)
_COLUMN_CLASS = {"would refuse": "would", "refused": "refused"}


def _html_cell(cell: object, numeric: bool, column_class: str) -> str:
    text = str(cell)
    classes = ["n"] if numeric else []
    if text.startswith(" "):  # indented in the text report: a sub-item of the row above
        classes.append("sub")
        text = text.lstrip(" ")
    if column_class:
        classes.append(column_class)
    attribute = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{attribute}>{html.escape(text)}</td>"


def _html_table(section: Section) -> str:
    esc = html.escape
    sortable = section.ident != "totals"  # the totals are one list in a fixed order
    column_classes = [_COLUMN_CLASS.get(str(h), "") for h in section.headers]
    out = [f'<table id="{esc(section.ident)}"{" class=sortable" if sortable else ""}><thead><tr>'
           + "".join(f'<th{f" class={c}" if c else ""}>{esc(str(h))}</th>'
                     for h, c in zip(section.headers, column_classes))
           + "</tr></thead><tbody>"]
    for index, row in enumerate(section.rows):
        mark = section.marks[index] if index < len(section.marks) else ""
        out.append(f'<tr{f" class={mark}" if mark else ""}>' + "".join(
            _html_cell(cell, i >= section.left, column_classes[i]) for i, cell in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)  # no white space between rows: sorting moves them


def render_html(summary: Summary, top: int = 20) -> str:
    """A self-contained page (no external resources; only our own script, allowed by its hash);
    all text from the log is escaped."""
    esc = html.escape
    out = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
           ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            f"style-src 'unsafe-inline'; script-src 'sha256-{SCRIPT_HASH}'\">"),
           f"<title>spfmilter report</title><style>{STYLE}</style></head><body>",
           f"<h1>spfmilter report</h1><p>{esc(_headline(summary))}</p>",
           '<p class="legend"><span class="key"><span class="swatch permerror"></span>'
           f"{esc(BROKEN_NOTE)}</span></p>"]
    for section in sections(summary, top):
        out.append(f"<h2>{esc(section.title)}</h2>")
        if section.chart:
            out.append(_legend())
            out.append(_svg(section.chart))
        if section.rows:
            out.append(_html_table(section))
        else:
            out.append('<p class="note">(none)</p>')
        if section.note:
            out.append(f'<p class="note">{esc(section.note)}</p>')
    out += [f'<p class="note">{esc(note)}</p>' for note in NOTES]
    out.append(f"<script>{SORT_SCRIPT}</script></body></html>\n")
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
                    "input) and count per sender domain and result, and per recipient domain, how many "
                    "messages enforcement would have refused (action=would-reject or would-defer), and "
                    "which clients sent them.")
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
    report.add_argument("--recipient-domain", metavar="DOMAIN",
                        help="only messages with a recipient in this domain (exactly, as enforce_domains "
                             "matches): what enforcing it would refuse")


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
        summary = summarise((parse_line(line, today) for line in lines), since=args.since, domain=args.domain,
                            recipient_domain=args.recipient_domain)
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
        summary = summarise((parse_line(line, today) for line in text), since=args.since, domain=args.domain,
                            recipient_domain=args.recipient_domain)
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
