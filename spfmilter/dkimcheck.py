"""DKIM signatures aligned with the From: and MAIL FROM domains, for DMARC-aware SPF rejection (on dkimpy).

RFC 7489 section 10.1: rejecting on an SPF fail before DMARC is evaluated loses mail that
a forwarder passed on unchanged and that DKIM would have authenticated.  With
``spf_fail_hold = dkim`` the milter keeps such a rejection until the end of the message
and spares the message when one of its DKIM signatures verifies and is aligned.

Alignment is DMARC's "relaxed" alignment (RFC 7489 section 3.1.1) by organisational
domain (section 3.2, from the Public Suffix List): the signing domain (d=), the From:
domain *and* the domain whose SPF fail is held (MAIL FROM) must all have the same
organisational domain.  Otherwise anybody with a DKIM key of their own could sign a
message and use any envelope domain.  A public suffix (``co.uk``, ``github.io``) has no
organisational domain, so nothing aligns with it.

Verification has a cost limit, because dkimpy does its RSA arithmetic in Python on
whatever key a DNS record holds:

* only signatures whose d= is aligned are verified, at most :data:`MAX_VERIFIED` of them,
  and none is started after the caller's deadline;
* a key record is checked before dkimpy uses it: an RSA modulus over
  :data:`MAX_MODULUS_BITS` bits, a public exponent over :data:`MAX_EXPONENT` or a record
  longer than :data:`MAX_KEY_RECORD` bytes is refused (permerror);
* a signature whose b= is longer than the largest key allows, or whose h= lists more than
  :data:`MAX_SIGNED_FIELDS` fields, is not verified (permerror);
* a message whose header section is bigger than :data:`MAX_HEADER_BYTES` or has more than
  :data:`MAX_HEADER_LINES` lines is not verified at all (dkimpy's header parsing is not
  linear in those).

A signature that is not verified because of these rules gets the RFC 8601 section 2.7.1
result ``policy`` ("some aspect of the signature ... was not acceptable to the ADMD"), with
a problem text starting "not verified".
"""
from __future__ import annotations

import base64
import binascii
# The IDNA codecs are imported on first use; load them now, while the daemon can still read
# the standard library (workers run after the privilege drop; publicsuffixlist needs them).
import encodings.idna  # noqa: F401
import encodings.punycode  # noqa: F401
import email.errors
import email.parser
import email.policy
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import dkim
import dkim.crypto
import dkim.util
from .config import is_hostname
from .text import log_value

log = logging.getLogger("spfmilter.dkim")

# Debian's publicsuffix package; preferred so that distribution updates apply.
DEBIAN_PSL = "/usr/share/publicsuffix/public_suffix_list.dat"
# The Public Suffix List libraries, in order of preference: PyPI's publicsuffixlist, and
# publicsuffix2, which Debian 12 packages (python3-publicsuffix2) where it has no publicsuffixlist.
PSL_LIBRARIES = ("publicsuffixlist", "publicsuffix2")

MAX_VERIFIED = 3  # aligned signatures verified per message
MAX_REPORTED = 8  # signatures reported (Authentication-Results, log) per message
MAX_MODULUS_BITS = 4096  # RFC 8301 section 3.2: verifiers must handle 1024..4096
MAX_EXPONENT = 2 ** 32
MAX_KEY_RECORD = 4096  # bytes of key record text: a 4096-bit key's record is about 800
MAX_SIGNED_FIELDS = 200  # h= entries (oversigning doubles the usual 20 or so)
MAX_HEADER_BYTES = 256 * 1024  # above any MTA default (Postfix 100 KB, Sendmail 32 KB)
MAX_HEADER_LINES = 4000

POLICY = "policy"  # RFC 8601 section 2.7.1: signed, but not acceptable to this ADMD


@dataclass(frozen=True)
class DkimResult:
    """One signature's verdict, in RFC 8601 terms (pass, fail, policy, neutral, temperror, permerror)."""

    result: str
    domain: str = ""  # d=
    selector: str = ""  # s=
    aligned: bool = False  # d= has the organisational domain of From: and of MAIL FROM
    header_b: str = ""  # the first characters of b=, to tell signatures apart (RFC 6008)
    problem: str = ""


class DkimDnsError(Exception):
    """A key could not be fetched now (the caller's DNS reported a temporary failure)."""


class KeyRefused(Exception):
    """A key record that is too costly to use (too big a modulus or exponent)."""


class OrgDomains:
    """Organisational domains (RFC 7489 section 3.2) from one loaded Public Suffix List.

    Build it once per process with :func:`load_org_domains` and pass it on; it is
    read-only after construction and safe to share between threads.  ``suffix_of`` is the
    loaded list's lookup: the public suffix of a lower-case A-label name.
    """

    def __init__(self, suffix_of: Callable[[str], str], source: str):
        self._suffix_of = suffix_of
        self.source = source  # where the list came from, for the log

    def of(self, domain: str) -> Optional[str]:
        """The organisational domain of ``domain`` (A-labels, lower case), or None when it is
        a public suffix itself or no well-formed domain name."""
        name = _a_label(domain)
        if name is None or "." not in name:
            return None
        return org_domain(name, self._suffix_of(name))

    def aligned(self, *domains: str) -> bool:
        """True when every one of ``domains`` has the same organisational domain (relaxed
        alignment, RFC 7489 section 3.1.1)."""
        orgs = {self.of(domain) for domain in domains}
        return len(orgs) == 1 and None not in orgs


def org_domain(name: str, suffix: str) -> Optional[str]:
    """The public suffix of ``name`` and one label more (RFC 7489 section 3.2 step 3), None
    when ``name`` is that suffix itself (or the lookup gave no suffix of ``name``)."""
    if not suffix or name == suffix or not name.endswith("." + suffix):
        return None
    labels = name[:-len(suffix) - 1].split(".")
    return f"{labels[-1]}.{suffix}"


def _publicsuffixlist(lines: Optional[Sequence[str]]) -> Callable[[str], str]:
    """publicsuffixlist's lookup, on ``lines`` or on the list bundled with the package."""
    from publicsuffixlist import PublicSuffixList

    # it converts the list's U-label rules to A-labels itself; unknown TLDs take the
    # default rule "*" (accept_unknown, the list's algorithm)
    psl = PublicSuffixList() if lines is None else PublicSuffixList(lines)
    return lambda name: psl.publicsuffix(name) or ""


def _publicsuffix2(lines: Optional[Sequence[str]]) -> Callable[[str], str]:
    """publicsuffix2's lookup, on ``lines`` or on the list bundled with the package."""
    from publicsuffix2 import PublicSuffixList

    # idna=True: the rules (UTF-8 in the list) are converted to A-labels like our names;
    # get_tld answers the public suffix, by the default rule "*" for unknown TLDs
    psl = PublicSuffixList(None if lines is None else list(lines), idna=True)
    return lambda name: psl.get_tld(name, wildcard=True, strict=False) or ""


LOADERS = {"publicsuffixlist": _publicsuffixlist, "publicsuffix2": _publicsuffix2}


def _library(libraries: Iterable[str]) -> str:
    """The first of ``libraries`` that can be imported; ImportError naming them all if none."""
    for name in libraries:
        try:
            __import__(name)
        except ImportError:
            continue
        return name
    raise ImportError("no Public Suffix List library: install publicsuffixlist (pip) or "
                      "python3-publicsuffix2 (Debian); tried " + ", ".join(libraries))


def load_org_domains(paths: Iterable[str] = (DEBIAN_PSL,),
                     libraries: Iterable[str] = PSL_LIBRARIES) -> OrgDomains:
    """The Public Suffix List from the first readable file of ``paths``, else the copy that
    comes with the library, looked up with the first importable of ``libraries``."""
    library = _library(tuple(libraries))
    loader = LOADERS[library]
    for path in paths:
        if not os.path.exists(path):
            continue
        try:
            with open(path, "rb") as handle:
                lines = handle.read().decode("utf-8").splitlines()
            return OrgDomains(loader(lines), path)
        except (OSError, UnicodeError, ValueError) as exc:
            log.warning("cannot read the Public Suffix List %s (%s); using the bundled copy", path, exc)
    return OrgDomains(loader(None), f"{library} package")


def _a_label(domain: str) -> Optional[str]:
    """``domain`` lower-cased, without its trailing dot, with IDNA A-labels; None if malformed."""
    name = (domain or "").strip().lower().removesuffix(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return name if is_hostname(name) and not name.endswith(".") else None


def from_domain(header_block: bytes) -> Optional[str]:
    """The domain of the single author address in From: (RFC 7489 section 6.6.1), else None.

    None also when the header section is not UTF-8 (RFC 6532), when there is not exactly
    one From: field with exactly one mailbox, or when the field does not parse cleanly:
    a reader and this parser could then disagree about the author.  RFC 5322 section 4
    obsolete syntax (``John Q. Public <jqp@example.com>``) is accepted, as RFC 5322 requires.
    """
    try:
        text = header_block.decode("utf-8")
        message = email.parser.HeaderParser(policy=email.policy.default).parsestr(text)
        fields = message.get_all("From") or []
        if len(fields) != 1:
            return None
        field = fields[0]
        if any(not isinstance(d, email.errors.ObsoleteHeaderDefect) for d in field.defects):
            return None
        groups = field.groups
        if len(groups) != 1 or groups[0].display_name is not None or len(groups[0].addresses) != 1:
            return None
        domain = groups[0].addresses[0].domain
    except Exception:  # the email package on hostile input (e.g. IndexError for "a@"): no author
        return None
    return _a_label(domain)


def _tags(signature_value: bytes) -> dict:
    """The tags of a DKIM-Signature value as dkimpy reads them (folding white space removed)."""
    try:
        return dkim.util.parse_tag_value(re.sub(rb"\r?\n[ \t]", b" ", signature_value))
    except Exception:
        return {}


def check_key(record: bytes) -> None:
    """Raise KeyRefused when the key record is too costly to verify with.

    Parsed as dkimpy will (RFC 6376 section 3.6.1 tags, base64 p= holding a
    SubjectPublicKeyInfo or an RSAPublicKey); a record dkimpy cannot parse is left to it,
    as the record length limit already keeps parsing cheap.
    """
    if len(record) > MAX_KEY_RECORD:
        raise KeyRefused(f"key record of {len(record)} bytes is longer than {MAX_KEY_RECORD}")
    try:
        tags = dkim.util.parse_tag_value(record)
        if tags.get(b"k", b"rsa") != b"rsa":
            return  # ed25519 keys have one size
        key = dkim.crypto.parse_public_key(base64.b64decode(tags[b"p"]))
    except Exception:  # dkimpy reports a record it cannot parse itself
        return
    bits = key["modulus"].bit_length()
    if bits > MAX_MODULUS_BITS:
        raise KeyRefused(f"RSA key of {bits} bits is larger than {MAX_MODULUS_BITS}")
    if key["publicExponent"] > MAX_EXPONENT:
        raise KeyRefused(f"RSA public exponent of {key['publicExponent'].bit_length()} bits "
                         f"is larger than 2^32")


def _signature_problem(tags: dict) -> str:
    """Why a signature is too costly to verify ("" when it is not)."""
    try:
        signature = base64.b64decode(re.sub(rb"\s+", b"", tags.get(b"b", b"")))
    except (binascii.Error, ValueError):
        return ""  # dkimpy reports it
    if len(signature) > MAX_MODULUS_BITS // 8:
        return f"signature of {len(signature)} bytes is longer than a {MAX_MODULUS_BITS}-bit key gives"
    if tags.get(b"h", b"").count(b":") >= MAX_SIGNED_FIELDS:
        return f"h= lists more than {MAX_SIGNED_FIELDS} header fields"
    return ""


def _message_problem(header_block: bytes) -> str:
    """Why a message's header section is too costly for dkimpy ("" when it is not)."""
    if len(header_block) > MAX_HEADER_BYTES:
        return f"header section larger than {MAX_HEADER_BYTES} bytes"
    if header_block.count(b"\n") >= MAX_HEADER_LINES:
        return f"header section longer than {MAX_HEADER_LINES} lines"
    return ""


def verify(message: bytes, txt: Callable[[str], Optional[bytes]], mail_from_domain: str, orgs: OrgDomains,
           deadline: float, clock: Callable[[], float] = time.monotonic) -> list[DkimResult]:
    """The DKIM signatures of ``message`` (headers and body, CRLF line ends), the aligned ones verified.

    A signature is aligned when its d=, the From: domain and ``mail_from_domain`` (the
    domain whose SPF fail is held) share one organisational domain.  Only aligned
    signatures are verified, at most MAX_VERIFIED, none started once ``clock()`` has
    reached ``deadline``; the others are reported as ``policy``.  At most MAX_REPORTED
    results are returned (the verified ones always).

    ``txt(name)`` returns a TXT record's text, None when there is none, and raises
    DkimDnsError on a temporary failure.
    """
    header_block = message.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    author = from_domain(header_block + b"\r\n")
    message_problem = _message_problem(header_block)
    signatures = _signature_values(header_block) if not message_problem else _count_only(header_block)
    results, verified = [], []
    for index, value in enumerate(signatures):
        tags = _tags(value) if value is not None else {}
        domain = tags.get(b"d", b"").decode("ascii", "replace").lower()
        selector = tags.get(b"s", b"").decode("ascii", "replace")
        header_b = re.sub(rb"\s+", b"", tags.get(b"b", b""))[:12].decode("ascii", "replace")
        is_aligned = bool(author) and bool(domain) and orgs.aligned(domain, author, mail_from_domain)

        def report(result: str, problem: str = "") -> None:
            results.append(DkimResult(result, domain, selector, is_aligned, header_b, problem[:200]))

        if message_problem:
            report(POLICY, f"not verified: {message_problem}")
        elif not is_aligned:
            report(POLICY, "not verified: d= not aligned with From: and MAIL FROM")
        elif len(verified) >= MAX_VERIFIED:
            report(POLICY, f"not verified: at most {MAX_VERIFIED} signatures are verified per message")
        elif clock() >= deadline:
            report(POLICY, "not verified: time limit reached")
        elif problem := _signature_problem(tags):
            report("permerror", problem)
        else:
            verified.append(len(results))
            report(*_verify_one(message, index, txt))
    if message_problem and signatures:
        log.info("dkim=not-checked; %s", message_problem)
    return _bounded(results, set(verified))


def _bounded(results: list, verified: set) -> list:
    """The verified results and the first others, MAX_REPORTED in all, in header order."""
    others = [index for index in range(len(results)) if index not in verified]
    kept = verified.union(others[:max(0, MAX_REPORTED - len(verified))])
    return [result for index, result in enumerate(results) if index in kept]


def _signature_values(header_block: bytes) -> list:
    """The values of the DKIM-Signature fields, top first, as dkimpy splits the header section."""
    try:
        headers, _ = dkim.rfc822_parse(header_block + b"\r\n")
    except dkim.DKIMException:
        return []
    return [value for name, value in headers if name.lower() == b"dkim-signature"]


def _count_only(header_block: bytes) -> list:
    """One placeholder per DKIM-Signature field, found without dkimpy's parser (too costly here)."""
    return [None] * len(re.findall(rb"(?im)^dkim-signature[ \t]*:", header_block))


def _verify_one(message: bytes, index: int, txt: Callable[[str], Optional[bytes]]) -> tuple[str, str]:
    """(RFC 8601 result, problem) of the index-th signature, with the key checked before use."""
    def lookup(name, timeout=5):
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        record = txt(text)
        if record is not None:
            try:
                check_key(record)
            except KeyRefused as exc:
                log.warning("dkim=permerror; key=%s; problem=%s", log_value(text.rstrip("."), 255), log_value(str(exc)))
                raise
        return record

    try:
        ok = dkim.DKIM(message, logger=log).verify(idx=index, dnsfunc=lookup)
        return ("pass", "") if ok else ("fail", "signature did not verify")
    except DkimDnsError as exc:
        return "temperror", str(exc)
    except KeyRefused as exc:
        return "permerror", f"key refused: {exc}"
    except dkim.DKIMException as exc:  # a body changed on the way is a plain fail (RFC 6376 6.3)
        return ("fail" if "body hash mismatch" in str(exc) else "permerror"), str(exc)
    except Exception as exc:  # dkimpy on hostile input: never more than a failed signature
        return "permerror", f"{type(exc).__name__}: {exc}"


def aligned_pass(results: list[DkimResult]) -> Optional[DkimResult]:
    return next((r for r in results if r.result == "pass" and r.aligned), None)
