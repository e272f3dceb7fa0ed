"""Making untrusted text (HELO names, addresses, DNS explanation strings) safe to emit.

Everything that came from the network passes through here before it reaches a
header, an SMTP reply or a log line: control characters (CR, LF, NUL, TAB, DEL,
C1 controls, Unicode line separators, undecodable bytes) become ``?``, and length
is capped so a hostile value can neither break the syntax nor make a line
longer than RFC 5322 section 2.1.1 allows.  On a terminal (``spfmilter explain``) such
text is escaped instead (:func:`printable`).  Also the RFC 5322 pieces that reading a
header value needs: comments, quoted-strings, host names compared.
"""
from __future__ import annotations

import re
import unicodedata

REPLY_TEXT_LIMIT = 400  # an SMTP reply line is at most 512 octets (RFC 5321 section 4.5.3.1.5)
VALUE_LIMIT = 256
SHOWN_LIMIT = 1000  # characters of one untrusted value shown on a terminal (:func:`printable`)


def clean(text: object, limit: int = VALUE_LIMIT) -> str:
    """Printable text: every control or unassigned character replaced by ``?``, length capped."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text)
    if not (text.isascii() and text.isprintable()):  # the common case is checked at C speed
        out = []
        for char in text:
            category = unicodedata.category(char)
            if category[0] == "C" or category in ("Zl", "Zp"):
                out.append("?")  # controls, format chars, surrogates (undecodable bytes), unassigned
            else:
                out.append(" " if category == "Zs" else char)
        text = "".join(out)
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object, limit: int = SHOWN_LIMIT) -> str:
    """Untrusted text for the terminal: controls, line separators and odd spaces escaped.

    Unlike :func:`clean` nothing is lost: backslash is escaped too, so ``\\n`` in the output
    always means a real LF was there; a byte that is not UTF-8 is shown as ``\\xNN``.
    """
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    out: list[str] = []
    for char in str(text):
        if char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
            continue
        category = unicodedata.category(char)
        if category[0] == "C" or category in ("Zl", "Zp") or (category == "Zs" and char != " "):
            code = ord(char)
            if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
                code -= 0xDC00
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    result = "".join(out)
    if len(result) > limit:
        result = f"{result[:limit]}... ({len(result) - limit} more characters)"
    return result


def clip_address(text: object, limit: int = VALUE_LIMIT) -> str:
    """:func:`clean` for an address: when it is too long, only the local part is shortened.

    The domain is what a reader (and ``spfmilter report``) files a message under, so it is
    never cut while it fits: shortening ``"aaa...@bank.example"@attacker.example`` at the end
    would show ``bank.example`` as the sender's domain.  The split is at the last '@', as the
    domain of an address is (RFC 5321 section 4.1.2).
    """
    value = clean(text, 1 << 20)  # cut below, where the domain is known
    if len(value) <= limit:
        return value
    local, at, domain = value.rpartition("@")
    if not at or len(domain) > limit - 4:
        return clean(value, limit)  # no domain to keep (or not one that fits): plain cut
    return local[: limit - len(domain) - 4] + "...@" + domain


def log_value(value: object, limit: int = VALUE_LIMIT) -> str:
    """A field value for a log line: printable, bounded, and quoted unless it is one plain token,
    so a value can never add or fake a ``; key=value`` field of its own."""
    text = clean(value, limit)
    return text if _LOG_SAFE.match(text) else quoted_string(text)


def log_address(value: object, limit: int = VALUE_LIMIT) -> str:
    """:func:`log_value` for an address (see :func:`clip_address`)."""
    text = clip_address(value, limit)
    return text if _LOG_SAFE.match(text) else quoted_string(text)


_LOG_SAFE = re.compile(r"^[A-Za-z0-9._@+=:/\[\]<>!#$%&'*^`{|}~?-]+$")


def reply_text(text: str, limit: int = REPLY_TEXT_LIMIT) -> str:
    """Text for an SMTP reply: printable ASCII only, no '%' (libmilter treats it specially)."""
    ascii_text = "".join(c if 32 <= ord(c) < 127 else "?" for c in clean(text, limit * 2))
    ascii_text = ascii_text.replace("%", "?")
    ascii_text = re.sub(r"\s+", " ", ascii_text).strip()
    if len(ascii_text) > limit:
        ascii_text = ascii_text[: limit - 3] + "..."
    return ascii_text


# RFC 5322 section 3.2.3: atext, and dot-atom-text = 1*atext *("." 1*atext)
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


def is_dot_atom(text: str) -> bool:
    return bool(_DOT_ATOM.match(text))


def quoted_string(text: str) -> str:
    """RFC 5322 section 3.2.4 quoted-string; backslash and DQUOTE become quoted-pairs."""
    return '"' + re.sub(r'(["\\])', r"\\\1", text) + '"'


def dot_atom_or_quoted(text: str, limit: int = VALUE_LIMIT) -> str:
    value = clean(text, limit)
    return value if is_dot_atom(value) else quoted_string(value)


def comment_text(text: str, limit: int = VALUE_LIMIT) -> str:
    """Content for an RFC 5322 comment: parentheses and backslashes become quoted-pairs."""
    return re.sub(r"([()\\])", r"\\\1", clean(text, limit))


def fold(name: str, value: str, width: int = 78) -> str:
    """Fold a header value at existing spaces (RFC 5322 section 2.2.3).

    A line break is only inserted before a space, so unfolding gives back the exact
    value; libmilter wants bare LF for folding (the MTA writes CRLF).
    """
    lines: list[str] = []
    prefix_len = len(f"{name}: ")
    # Each run of spaces stays with the word after it and a break goes before the run,
    # so no line is white space only: RFC 5322 section 3.2.2 does not allow that (only
    # the obsolete syntax of section 4.2 does).  Trailing spaces stay on the last line.
    pieces = re.findall(r" *[^ ]+| +", value)
    line = ""
    for piece in pieces:
        if line and piece.strip() and prefix_len + len(line) + len(piece) > width:
            lines.append(line)
            line = piece
            prefix_len = 0
        else:
            line += piece
    lines.append(line)
    return "\n".join(lines)


def strip_comments(text: str) -> str:
    """Remove RFC 5322 comments (section 3.2.2: nested, with quoted-pairs) outside quoted-strings."""
    out: list[str] = []
    depth = 0
    in_quote = False
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and (depth or in_quote):
            if not depth:
                out.append(text[index:index + 2])
            index += 2
            continue
        if in_quote:
            out.append(char)
            if char == '"':
                in_quote = False
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(char)
            if char == '"':
                in_quote = True
        index += 1
    return "".join(out)


def unquote(token: str) -> str:
    """The content of an RFC 5322 quoted-string (section 3.2.4), quoted-pairs undone; other tokens as they are."""
    if len(token) >= 2 and token[0] == token[-1] == '"':
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


def same_host(a: str, b: str) -> bool:
    """Whether two host names are the same: case and a trailing root dot do not matter (RFC 4343)."""
    return a.strip().rstrip(".").lower() == b.strip().rstrip(".").lower()
