"""DKIM signatures aligned with the From: domain, for DMARC-aware SPF rejection (on dkimpy).

RFC 7489 section 10.1: rejecting on an SPF fail before DMARC is evaluated loses mail that
a forwarder passed on unchanged and that DKIM would have authenticated.  With
``spf_fail_hold = dkim`` the milter keeps such a rejection until the end of the message
and spares the message when one of its DKIM signatures verifies and is aligned with the
From: domain (RFC 7489 section 3.1.1).

Alignment is "relaxed" as in DMARC, approximated without the Public Suffix List: the
signing domain (d=) must equal the From: domain or be a parent or child of it, with at
least two labels.  A bare public suffix (``co.uk``) publishes no DKIM keys, so a
signature made for it cannot verify.
"""
from __future__ import annotations

import email.parser
import email.policy
import email.utils
import logging
import re
from dataclasses import dataclass
from typing import Callable, Optional

import dkim

log = logging.getLogger("spfmilter.dkim")

MAX_SIGNATURES = 5  # a message with more gets the first five checked


@dataclass(frozen=True)
class DkimResult:
    """One signature's verdict, in RFC 8601 terms (pass, fail, neutral, temperror, permerror)."""

    result: str
    domain: str = ""  # d=
    selector: str = ""  # s=
    aligned: bool = False
    header_b: str = ""  # the first characters of b=, to tell signatures apart (RFC 6008)
    problem: str = ""


class DkimDnsError(Exception):
    """A key could not be fetched now (the caller's DNS reported a temporary failure)."""


def from_domain(header_block: bytes) -> Optional[str]:
    """The domain of the single author address in From: (RFC 7489 section 6.6.1), else None."""
    message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header_block)
    values = message.get_all("From") or []
    if len(values) != 1:
        return None
    addresses = [a for _, a in email.utils.getaddresses([str(values[0])]) if a]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return None
    domain = addresses[0].rpartition("@")[2].strip().lower().rstrip(".")
    return domain or None


def aligned(signing_domain: str, author_domain: str) -> bool:
    d = signing_domain.lower().rstrip(".")
    f = author_domain.lower().rstrip(".")
    if not d or not f:
        return False
    if d == f:
        return True
    parent, child = (d, f) if len(d) < len(f) else (f, d)
    return parent.count(".") >= 1 and child.endswith("." + parent)


_TAG = re.compile(rb"(?:^|;)\s*([a-z]+)\s*=\s*([^;]*)", re.IGNORECASE)


def _tags(signature_value: bytes) -> dict:
    return {k.lower(): re.sub(rb"\s+", b"", v) for k, v in _TAG.findall(signature_value)}


def verify(message: bytes, txt: Callable[[str], Optional[bytes]]) -> list[DkimResult]:
    """Every DKIM signature of ``message`` (headers and body, CRLF line ends) checked.

    ``txt(name)`` returns a TXT record's text, None when there is none, and raises
    DkimDnsError on a temporary failure.
    """
    header_block = message.split(b"\r\n\r\n", 1)[0]
    author = from_domain(header_block + b"\r\n\r\n")
    signer = dkim.DKIM(message, logger=log)
    signatures = [value for name, value in signer.headers if name.lower() == b"dkim-signature"]
    results = []
    for index, value in enumerate(signatures[:MAX_SIGNATURES]):
        tags = _tags(value)
        domain = tags.get(b"d", b"").decode("ascii", "replace").lower()
        selector = tags.get(b"s", b"").decode("ascii", "replace")
        header_b = tags.get(b"b", b"")[:12].decode("ascii", "replace")
        is_aligned = bool(author) and aligned(domain, author)

        def lookup(name, timeout=5):
            return txt(name.decode("ascii", "replace") if isinstance(name, bytes) else name)

        try:
            ok = dkim.DKIM(message, logger=log).verify(idx=index, dnsfunc=lookup)
            result, problem = ("pass", "") if ok else ("fail", "signature did not verify")
        except DkimDnsError as exc:
            result, problem = "temperror", str(exc)
        except dkim.DKIMException as exc:  # a body changed on the way is a plain fail (RFC 6376 6.3)
            result, problem = "fail" if "body hash mismatch" in str(exc) else "permerror", str(exc)
        except Exception as exc:  # dkimpy on hostile input: never more than a failed signature
            result, problem = "permerror", f"{type(exc).__name__}: {exc}"
        results.append(DkimResult(result, domain, selector, is_aligned, header_b, problem[:200]))
    return results


def aligned_pass(results: list[DkimResult]) -> Optional[DkimResult]:
    return next((r for r in results if r.result == "pass" and r.aligned), None)
