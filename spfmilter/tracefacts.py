"""What a delivered message's trace headers say about the SMTP session it came in by.

``spfmilter explain --eml FILE`` evaluates the client IP, HELO name and envelope sender
read here: from the topmost Received header an untrusted client wrote (the forms Postfix,
Sendmail and Exim write), from Return-Path, or from a Received-SPF header (RFC 7208
section 9.1).  The header section is read as text, never trusted: what is shown of it
goes through :func:`spfmilter.text.printable`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .config import Config
from .policy import Facts, trust_reason
from .text import printable, same_host, strip_comments, unquote
from .verify import normalise_ip, parse_envelope_address


class MessageError(ValueError):
    """No usable trace headers in the message."""


@dataclass(frozen=True)
class TraceFacts:
    """What a message's trace headers say about the SMTP session it arrived in."""

    ip: Optional[str] = None
    helo: Optional[str] = None
    sender: Optional[str] = None  # "" is the null sender; None: not found
    recipient: Optional[str] = None
    sources: tuple[str, ...] = ()  # which header gave what, for the report


def header_fields(data: bytes) -> list[tuple[str, str]]:
    """The header section as (name, unfolded value), top first; the body is not read.

    Folding (CRLF or LF followed by white space) is undone; any other CR or LF stays
    in the value, for the report to show escaped.
    """
    text = data.decode("utf-8", "surrogateescape")
    fields: list[list[str]] = []
    lines = re.split(r"\r?\n", text)
    if lines and lines[0].startswith("From "):  # mbox separator
        lines = lines[1:]
    for line in lines:
        if line == "":
            break
        if line[0] in " \t":
            if fields:
                fields[-1][1] += line
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or any(c <= " " or c == "\x7f" for c in name):
            continue  # not a header field; RFC 5322 section 2.2 names are printable ASCII
        fields.append([name, value.lstrip(" \t")])
    return [(name, value) for name, value in fields]


# Postfix: from HELO (RDNS [IP]) / Sendmail: from HELO (NAME [IP]) or (user@NAME [IP] (may be forged))
# Exim: from NAME ([IP] helo=HELO).  IPv6 literals are [IPv6:...].
_RECEIVED = re.compile(
    r"^[ \t]*from[ \t]+(?P<helo>[^\s()]+)[ \t]*\((?P<before>[^()\[\]]*)\[(?:IPv6:)?(?P<ip>[0-9A-Fa-f:.]+)\]"
    r"(?P<after>[^()]*)", re.IGNORECASE)
_EXIM_HELO = re.compile(r"\bhelo=([^\s()]+)", re.IGNORECASE)
_PAIR = re.compile(r'(?:^|(?<=[\s;]))([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;]*)')


def parse_received(value: str) -> Optional[tuple[str, str]]:
    """(ip, helo) from a Received value in the Postfix/Sendmail/Exim form, or None."""
    match = _RECEIVED.match(value)
    if match is None:
        return None
    try:
        ip = normalise_ip(match.group("ip"))
    except ValueError:
        return None
    exim = _EXIM_HELO.search(match.group("after"))  # Exim writes the HELO name as helo=
    return ip, exim.group(1) if exim else match.group("helo")


def received_spf_pairs(value: str) -> dict[str, str]:
    """The key=value pairs of a Received-SPF value (RFC 7208 section 9.1), comments removed."""
    text = strip_comments(value)
    pairs: dict[str, str] = {}
    for key, raw in _PAIR.findall(text):
        pairs.setdefault(key.lower(), unquote(raw))
    return pairs


def _shown(name: str, value: str, limit: int = 160) -> str:
    """A header for the report: folding white space shown as one space, the rest escaped."""
    text = re.sub(r"[ \t]+", " ", value).strip()
    return f"{name}: {printable(text, limit)}"


def facts_from_message(data: bytes, config: Config, name: str = "message") -> TraceFacts:
    """Client IP, HELO and envelope sender from a delivered message's trace headers.

    The topmost Received header in the ``from HELO (NAME [IP])`` form whose client is
    not trusted (a loopback hop from a content filter is skipped, as the milter would
    skip it) gives IP and HELO; Return-Path gives the sender.  Without such a Received
    header a Received-SPF header's client-ip/helo/envelope-from are used, ours
    (receiver= this server) first.  Raises MessageError when nothing usable is found.
    """
    fields = header_fields(data)
    if not fields:
        raise MessageError(f"{name}: no header fields found (is it an RFC 5322 message?)")
    received = [value for field_name, value in fields if field_name.lower() == "received"]
    rspf = [value for field_name, value in fields if field_name.lower() == "received-spf"]
    return_path = next((value for field_name, value in fields if field_name.lower() == "return-path"), None)
    recipient = next((value.strip() for field_name, value in fields
                      if field_name.lower() in ("x-original-to", "delivered-to") and value.strip()), None)
    sources: list[str] = []
    ip: Optional[str] = None
    helo: Optional[str] = None
    skipped: list[str] = []
    topmost: Optional[tuple[int, tuple[str, str], str]] = None  # the first Received header of the form
    for index, value in enumerate(received, 1):
        parsed = parse_received(value)
        if parsed is None:
            continue
        topmost = topmost or (index, parsed, value)
        why = trust_reason(Facts(client_ip=parsed[0], helo=parsed[1], sender=""), config)
        if why is not None:
            skipped.append(f"Received header {index} of {len(received)} (client {parsed[0]}: {why})")
            continue
        ip, helo = parsed
        sources.append(f"client IP and HELO from Received header {index} of {len(received)}: "
                       f"{_shown('Received', value)}")
        break
    if ip is None and topmost is not None:  # only trusted hops: the milter would not check this message
        index, (ip, helo), value = topmost
        sources.append(f"client IP and HELO from Received header {index} of {len(received)} "
                       f"(a trusted client): {_shown('Received', value)}")
    elif skipped:
        sources[0:0] = [f"skipped {item}" for item in skipped]
    sender = None if return_path is None else parse_envelope_address(return_path).text
    if return_path is not None:
        sources.append(f"sender from {_shown('Return-Path', return_path)}")
    candidates = [(index, received_spf_pairs(value), value) for index, value in enumerate(rspf, 1)]
    usable = [c for c in candidates if "client-ip" in c[1] and "helo" in c[1]]
    ours = [c for c in usable if same_host(c[1].get("receiver", ""), config.receiver)]
    chosen = (ours or usable)[0] if usable else None
    if chosen is not None and (ip is None or sender is None):
        index, pairs, value = chosen
        whose = ("written by this server" if chosen in ours
                 else f"written by receiver={printable(pairs.get('receiver', '?'), 100)}, not by this server")
        took: list[str] = []
        if ip is None:
            try:
                ip = normalise_ip(pairs["client-ip"])
                helo = pairs["helo"]
                took.append("client IP and HELO")
            except ValueError:
                pass
        if sender is None and "envelope-from" in pairs:
            sender = parse_envelope_address(pairs["envelope-from"]).text
            took.append("sender")
        if took:
            sources.append(f"{' and '.join(took)} from Received-SPF header {index} of {len(rspf)} ({whose}): "
                           f"{_shown('Received-SPF', value)}")
    if ip is None:
        looked = (f"{len(received)} Received header(s), none of the form 'from HELO (NAME [IP])'"
                  if received else "no Received header")
        looked += (f"; {len(rspf)} Received-SPF header(s), none with client-ip= and helo="
                   if rspf else "; no Received-SPF header")
        raise MessageError(f"{name}: no usable trace header ({looked}); give --ip, --helo and --sender")
    return TraceFacts(ip=ip, helo=helo, sender=sender, recipient=recipient, sources=tuple(sources))
