"""Header text: Authentication-Results (RFC 8601), Received-SPF (RFC 7208 section 9.1),
the policyd-spf style log line, and recognising forged copies of our own headers.

Every value that came from the network goes through :mod:`spfmilter.text` first,
so a hostile HELO name, address or explanation can neither inject a line break
nor break the header grammar.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence

import authres

from .config import Config, HeaderType, is_hostname
from .policy import Action, Facts
from .replies import Reply
from .text import (clean, clip_address, comment_text, fold, is_dot_atom, log_address, log_value, quoted_string,
                   strip_comments, unquote)
from .verify import Identity, SpfOutcome, SpfResult

AR_NAME = "Authentication-Results"
RSPF_NAME = "Received-SPF"


def reason(outcome: SpfOutcome, client_ip: Optional[str]) -> str:
    """A short human explanation of one result (plain text, not yet escaped)."""
    ip = client_ip or "the client"
    domain = outcome.domain or outcome.sender
    what = "HELO name" if outcome.identity is Identity.HELO else "sender domain"
    match outcome.result:
        case SpfResult.PASS:
            return f"{what} {domain} authorizes {ip}"
        case SpfResult.FAIL:
            return f"{what} {domain} does not authorize {ip}"
        case SpfResult.SOFTFAIL:
            return f"{what} {domain} probably does not authorize {ip}"
        case SpfResult.NEUTRAL:
            return f"{what} {domain} makes no statement about {ip}"
        case SpfResult.NONE:
            return outcome.problem or f"{what} {domain} publishes no SPF policy"
        case SpfResult.PERMERROR:
            return f"SPF policy of {domain} is invalid: {outcome.problem or 'permanent error'}"
        case _:
            return f"temporary error checking {domain}: {outcome.problem or 'DNS failure'}"


def _ascii(text: str) -> str:
    """Cleaned text with every non-ASCII character replaced by ``?``.

    Header fields are US-ASCII (RFC 5322 section 2.2); UTF-8 is only allowed in
    SMTPUTF8 messages (RFC 6532 section 3), which we cannot tell apart, and
    authres' parser rejects it.
    """
    text = clean(text)
    if text.isascii():  # the common case, checked at C speed
        return text
    return "".join(char if char < "\x80" else "?" for char in text)


def _pvalue(text: str) -> str:
    """A property value authres will emit safely (RFC 8601 section 2.2 ``pvalue``).

    authres quotes values without '@' itself but passes values containing '@'
    through untouched, so those are made well-formed here.  A long address loses
    part of its local part, never of its domain (:func:`~spfmilter.text.clip_address`).
    """
    value = _ascii(clip_address(text))
    if "@" not in value:
        return value
    local, _, domain = value.rpartition("@")
    if is_hostname(domain):
        return (local if is_dot_atom(local) else quoted_string(local)) + "@" + domain
    return quoted_string(value)


def authentication_results(helo: SpfOutcome, mailfrom: SpfOutcome, facts: Facts, config: Config,
                           note: Optional[tuple] = None, dkim: Sequence = ()) -> str:
    """The value of our Authentication-Results header: one spf result per identity.

    ``note``: (identity, text) -- the RFC 8601 ``reason`` of that identity's result, saying
    e.g. that enforcement would have refused the message.  ``dkim``: DkimResult values
    checked for a held SPF fail, reported as dkim results.
    """
    def why(outcome: SpfOutcome) -> Optional[str]:
        return _ascii(note[1]).replace("\\", "").replace("\"", "") if note and note[0] is outcome.identity else None

    results = []
    if helo.checked:  # an identity check_identities leaves out is not reported
        results.append(authres.SPFAuthenticationResult(
            result=helo.result.value, result_comment=comment_text(_ascii(reason(helo, facts.client_ip))),
            reason=why(helo), smtp_helo=_pvalue(facts.helo) or "unknown"))
    if mailfrom.checked:
        results.append(authres.SPFAuthenticationResult(
            result=mailfrom.result.value, result_comment=comment_text(_ascii(reason(mailfrom, facts.client_ip))),
            reason=why(mailfrom), smtp_mailfrom=_pvalue(mailfrom.sender) or "unknown"))
    for item in dkim:
        comment = "aligned with From: and MAIL FROM" if item.aligned else "not aligned with From: and MAIL FROM"
        if item.problem and item.result != "pass" and item.aligned:
            comment += f" {item.problem}"
        results.append(authres.DKIMAuthenticationResult(
            result=item.result, result_comment=comment_text(_ascii(comment[:160])),
            header_d=_pvalue(item.domain) or "unknown", header_s=_pvalue(item.selector) or None))
    header = authres.AuthenticationResultsHeader(authserv_id=config.authserv_id, results=results)
    return str(header.header_value())


def _kv(key: str, value: str) -> str:
    """RFC 7208 section 9.1 key-value-pair: key=dot-atom or quoted-string."""
    text = _ascii(value)
    return f"{key}={text if is_dot_atom(text) else quoted_string(text)}"


def received_spf(outcome: SpfOutcome, facts: Facts, config: Config) -> str:
    """The value of a Received-SPF header for one identity."""
    comment = comment_text(_ascii(f"{config.receiver}: {reason(outcome, facts.client_ip)}"))
    pairs = [
        _kv("receiver", config.receiver),
        _kv("client-ip", facts.client_ip or "unknown"),
        _kv("envelope-from", clip_address(facts.sender)),
        _kv("helo", facts.helo or ""),
        _kv("identity", outcome.identity.value),
    ]
    if outcome.mechanism:
        pairs.append(_kv("mechanism", outcome.mechanism))
    if outcome.problem and outcome.result in (SpfResult.PERMERROR, SpfResult.TEMPERROR):
        pairs.append(_kv("problem", outcome.problem))
    return f"{outcome.result.value} ({comment}) " + "; ".join(pairs)


def spf_headers(helo: SpfOutcome, mailfrom: SpfOutcome, facts: Facts, config: Config,
                note: Optional[tuple] = None, dkim: Sequence = ()) -> list[tuple[str, str]]:
    """The headers to prepend, top first, already folded (bare LF + space, as libmilter wants)."""
    headers: list[tuple[str, str]] = []
    if config.header_type in (HeaderType.AUTHENTICATION_RESULTS, HeaderType.BOTH):
        headers.append((AR_NAME, authentication_results(helo, mailfrom, facts, config, note, dkim)))
    if config.header_type in (HeaderType.RECEIVED_SPF, HeaderType.BOTH):
        # one per identity checked, MAIL FROM on top (it is the one most readers want)
        headers += [(RSPF_NAME, received_spf(outcome, facts, config)) for outcome in (mailfrom, helo) if outcome.checked]
    return [(name, fold(name, value)) for name, value in headers]


def render(headers: Iterable[tuple[str, str]]) -> str:
    """Headers as they appear in a message (for ``spfmilter check``)."""
    return "".join(f"{name}: {value}\n" for name, value in headers)


# --------------------------------------------------------------------------- forged headers

def authserv_id_of(value: str) -> Optional[str]:
    """The authserv-id an Authentication-Results value claims, read strictly (RFC 8601
    section 2.2), or None if it has none."""
    text = strip_comments(re.sub(r"[\r\n]", "", value)).strip()
    match = re.match(r'"(?:[^"\\]|\\.)*"|[^\s;]+', text)
    return unquote(match.group(0)) if match else None


# Characters that can continue a host name label: our id followed by one of these (after
# any dots) is another name ("mx.example.com.evil", "mx.example.com-x").
_LABEL_CHAR = re.compile(r"[a-z0-9_-]")


def _lenient_readings(text: str) -> list[str]:
    """What a lenient parser may take for the host name at the start of ``text``.

    The parsers downstream that matter most (OpenDMARC's and OpenDKIM's A-R parser) split
    the value into tokens at ``. ; =`` and white space, drop quotes and backslash escapes,
    skip comments and glue the tokens before the first ``;`` back together.  So both the
    whole head with white space, quotes and escapes removed and each white-space separated
    word of it are candidates.  An unterminated comment or quoted-string makes the value
    unparseable: then the parentheses are simply dropped, which errs towards "ours".
    """
    text = re.sub(r"[\r\n]", "", text)
    stripped = strip_comments(text)
    unclosed = not strip_comments(text + ")").endswith(")")  # that ")" closed a comment left open
    if unclosed or stripped.count("(") != stripped.count(")"):
        stripped = text.replace("(", " ").replace(")", " ")
    plain = re.sub(r"\\(.)", r"\1", stripped).replace("\\", "").replace('"', "")
    head = plain.split(";", 1)[0].lower()
    return [re.sub(r"\s+", "", head), *head.split()]


def _claims(text: str, host: str) -> bool:
    """Whether a lenient reader could take the head of ``text`` for ``host``."""
    ours = host.strip().rstrip(".").lower()
    return bool(ours) and any(
        candidate.startswith(ours) and not _LABEL_CHAR.match(candidate[len(ours):].lstrip("."))
        for candidate in _lenient_readings(text))


def is_forged_authentication_results(value: str, config: Config) -> bool:
    """RFC 8601 section 5: an A-R header already carrying our authserv-id is forged.

    "Carrying" is judged as the most lenient consumer would (see :func:`_lenient_readings`):
    ``"mx".example.com``, ``mx\\.example.com``, ``mx .example.com`` and ``MX.EXAMPLE.COM.``
    all count, ``mx.example.com.evil`` and ``xmx.example.com`` do not.
    """
    return _claims(value, config.authserv_id)


# A quoted-string is matched (and skipped) as a whole, so "receiver=" inside another
# key's value (helo="x receiver=mx.test", chosen by the client) is not taken for the key
# (RFC 7208 section 9.1: a key-value-pair's value is a dot-atom or a quoted-string).
_RECEIVER = re.compile(r'"(?:[^"\\]|\\.)*"|(?:^|(?<=[\s;]))receiver\s*=', re.IGNORECASE)


def is_forged_received_spf(value: str, config: Config) -> bool:
    """A Received-SPF header claiming our receiver= was not written by us for this message.

    The value after ``receiver=`` is read as leniently as an A-R authserv-id is.
    """
    text = strip_comments(re.sub(r"[\r\n]", "", value))
    return any(not m.group(0).startswith('"') and _claims(text[m.end():], config.receiver)
               for m in _RECEIVER.finditer(text))


def is_forged(name: str, value: str, config: Config) -> bool:
    lower = name.strip().lower()
    if lower == AR_NAME.lower():
        return is_forged_authentication_results(value, config)
    if lower == RSPF_NAME.lower():
        return is_forged_received_spf(value, config)
    return False


# --------------------------------------------------------------------------- log line

RCPT_DOMAINS_LIMIT = 200  # characters of recipient domains on one log line; the rest are counted


def rcpt_domains_text(domains: Sequence[str], more: int = 0, limit: int = RCPT_DOMAINS_LIMIT) -> str:
    """The ``rcpt-domains=`` value: distinct recipient domains, comma-separated, in the order seen.

    Domains that do not fit in ``limit`` characters (and ``more`` that were never kept) are
    counted in a last ``+N`` item.  A comma inside a domain (it came from the network)
    becomes ``?`` so the list splits back into the same items (:mod:`spfmilter.logreport`).
    """
    shown: list[str] = []
    length = 0
    for domain in domains:
        item = clean(domain).replace(",", "?")
        if shown and length + 1 + len(item) > limit:
            break
        length += len(item) + (1 if shown else 0)
        shown.append(item)
    more += len(domains) - len(shown)
    return ",".join(shown + ([f"+{more}"] if more else []))


def log_line(outcome: SpfOutcome, facts: Facts, config: Config, action: Action,
             reply: Optional[Reply] = None, rcpt_domains: str = "") -> str:
    """One line per verified identity, in the shape policyd-spf users grep for.

    ``rcpt_domains`` (:func:`rcpt_domains_text`) goes last, on the MAIL FROM line only:
    ``spfmilter report`` files the message under those recipient domains.
    """
    parts = [
        outcome.result.logged,
        f"identity={outcome.identity.value}",
        f"client-ip={log_value(facts.client_ip or 'unknown')}",
        f"helo={log_value(facts.helo or '')}",
        f"envelope-from={log_address(facts.sender or '<>')}",
        f"receiver={log_value(config.receiver)}",
    ]
    if outcome.mechanism:
        parts.append(f"mechanism={log_value(outcome.mechanism)}")
    if outcome.problem:
        parts.append(f"problem={log_value(outcome.problem)}")
    parts.append(f"action={action.value}")
    if reply is not None:
        parts.append(f"reply={quoted_string(clean(str(reply), 512))}")
    if facts.queue_id:
        parts.append(f"queue-id={log_value(facts.queue_id)}")
    if rcpt_domains and outcome.identity is Identity.MAILFROM:
        parts.append(f"rcpt-domains={log_value(rcpt_domains, RCPT_DOMAINS_LIMIT + 300)}")
    return "; ".join(parts)


def skip_line(why: str, facts: Facts) -> str:
    """The log line for a transaction that was not checked (trusted or authenticated client)."""
    parts = [
        "None",
        f"skipped={log_value(why)}",
        f"client-ip={log_value(facts.client_ip or 'local')}",
        f"helo={log_value(facts.helo or '')}",
        f"envelope-from={log_address(facts.sender or '<>')}",
        "action=accept",
    ]
    if facts.queue_id:
        parts.append(f"queue-id={log_value(facts.queue_id)}")
    return "; ".join(parts)
