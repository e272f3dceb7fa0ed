"""Sender Rewriting Scheme: signed, time-stamped SRS0/SRS1 addresses (pure functions).

The address forms are the ones libsrs2 and PostSRSd write, so the two interoperate
(tests/interop checks both directions against PostSRSd)::

    SRS0=HHHH=TT=example.com=alice@forwarder.example
    SRS1=HHHH=first.example==HHHH=TT=example.com=alice@forwarder.example

``HHHH`` is HMAC-SHA1 over the lowercased fields (SRS0: timestamp, domain, local part;
SRS1: first hop, the rest of the SRS0 part), base64-encoded and cut to ``hash_length``
characters.  ``TT`` is the day number modulo 1024 in base32.  An SRS1 address keeps the
first hop, so a bounce goes straight back to it, and only the outer signature is ours
to check.  The character right after ``SRS0``/``SRS1`` may be ``=``, ``+`` or ``-``.

Verification is lenient where MTAs are known to mangle addresses: a hash whose case
was changed and the base64url alphabet (``-_`` for ``+/``) are accepted.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets as _random
import stat
from dataclasses import dataclass
from typing import Iterable, Optional

BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
DAY = 86400
TIMESTAMP_SLOTS = 1024  # two base32 characters
SEPARATORS = "=+-"
MAX_HASH_LENGTH = 27  # base64 of a 20-byte digest: 27 characters before the padding

_TAG = re.compile(r"^(SRS[01])([=+-])", re.IGNORECASE)
# What we accept in the fields we copy into a new local part: no separators inside a
# domain, nothing that would need quoting in the local part.
_LOCAL_OK = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_DOMAIN_OK = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                        r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$")


class SrsError(ValueError):
    """An address that cannot be rewritten or reversed; ``reason`` is a short keyword.

    Reasons: ``not-srs``, ``malformed``, ``hash-too-short``, ``bad-hash``, ``expired``.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class SrsKeys:
    """Secrets and limits. The first secret signs; every secret verifies (key rotation)."""

    secrets: tuple
    hash_length: int = 4
    hash_min_length: int = 4
    max_age_days: int = 21
    separator: str = "="

    def __post_init__(self) -> None:
        if not self.secrets:
            raise ValueError("at least one SRS secret is needed")
        if not 1 <= self.hash_min_length <= self.hash_length <= MAX_HASH_LENGTH:
            raise ValueError("need 1 <= hash_min_length <= hash_length <= 27")
        if self.separator not in SEPARATORS:
            raise ValueError("the separator is one of = + -")


def split_address(address: str) -> tuple[str, str]:
    """``local@domain`` -> (local, domain); SrsError for anything we would not copy safely."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise SrsError("malformed", f"not an address: {address!r}")
    if not _LOCAL_OK.match(local) or not _DOMAIN_OK.match(domain):
        raise SrsError("malformed", f"cannot rewrite the address {address!r}")
    return local, domain


def timestamp(now: float) -> str:
    day = int(now // DAY) % TIMESTAMP_SLOTS
    return BASE32[day >> 5] + BASE32[day & 31]


def timestamp_age(stamp: str, now: float) -> int:
    """Days since ``stamp`` (modulo the 1024-day cycle)."""
    if len(stamp) != 2 or not all(char.upper() in BASE32 for char in stamp):
        raise SrsError("malformed", f"bad SRS timestamp {stamp!r}")
    then = (BASE32.index(stamp[0].upper()) << 5) | BASE32.index(stamp[1].upper())
    return (int(now // DAY) - then) % TIMESTAMP_SLOTS


def _digest(secret: bytes, fields: Iterable[str]) -> str:
    mac = hmac.new(secret, b"".join(f.lower().encode("utf-8", "surrogateescape") for f in fields), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def sign(keys: SrsKeys, *fields: str) -> str:
    return _digest(keys.secrets[0], fields)[: keys.hash_length]


def check_hash(keys: SrsKeys, given: str, *fields: str) -> None:
    """SrsError unless ``given`` is a prefix of the signature under one of the secrets."""
    if len(given) < keys.hash_min_length:
        raise SrsError("hash-too-short", f"SRS hash {given!r} is shorter than {keys.hash_min_length}")
    # base64url and lowered case are folded to one form; so is the expected hash
    wanted = given.replace("-", "+").replace("_", "/").lower()
    if len(wanted) > MAX_HASH_LENGTH:
        raise SrsError("bad-hash", "SRS hash too long")
    matched = False
    for secret in keys.secrets:  # all of them, to take the same time whichever matches
        expected = _digest(secret, fields)[: len(wanted)].lower()
        matched |= hmac.compare_digest(expected.encode(), wanted.encode("utf-8", "replace"))
    if not matched:
        raise SrsError("bad-hash", "SRS signature does not match")


def srs_tag(local: str) -> str:
    """``SRS0``, ``SRS1`` (upper case) or ``""`` for a local part that is no SRS address."""
    match = _TAG.match(local)
    return match.group(1).upper() if match else ""


def forward(address: str, srs_domain: str, keys: SrsKeys, now: float) -> str:
    """The SRS address to use as envelope sender when we forward mail from ``address``.

    An address already in ``srs_domain`` is returned unchanged; an SRS0 address of
    another forwarder becomes SRS1 (keeping that first hop); an SRS1 address keeps its
    first hop and gets our signature.
    """
    local, domain = split_address(address)
    if domain.lower().rstrip(".") == srs_domain.lower().rstrip("."):
        return address
    sep = keys.separator
    tag = srs_tag(local)
    if tag == "SRS0":
        rest = local[4:]  # begins with the first hop's separator
        return f"SRS1{sep}{sign(keys, domain, rest)}={domain}={rest}@{srs_domain}"
    if tag == "SRS1":
        parts = local[5:].split("=", 2)
        if len(parts) == 3 and parts[1] and parts[2]:
            _, first_hop, rest = parts
            return f"SRS1{sep}{sign(keys, first_hop, rest)}={first_hop}={rest}@{srs_domain}"
        # not a well-formed SRS1 local part: wrap it like any other address
    stamp = timestamp(now)
    return f"SRS0{sep}{sign(keys, stamp, domain, local)}={stamp}={domain}={local}@{srs_domain}"


def reverse(address: str, keys: SrsKeys, now: float) -> str:
    """The address an SRS0/SRS1 address stands for; SrsError if it is not one of ours.

    SRS0 gives the original sender (signature and age checked); SRS1 gives the first
    hop's SRS0 address (our outer signature checked; the first hop checks the rest).
    The domain part of ``address`` is not looked at: the caller knows which domain is ours.
    """
    local, _, _ = address.rpartition("@")
    tag = srs_tag(local)
    if not tag:
        raise SrsError("not-srs", "not an SRS address")
    if tag == "SRS0":
        parts = local[5:].split("=", 3)
        if len(parts) != 4 or not all(parts):
            raise SrsError("malformed", "malformed SRS0 address")
        given, stamp, domain, user = parts
        age = timestamp_age(stamp, now)
        check_hash(keys, given, stamp, domain, user)
        if age > keys.max_age_days:
            raise SrsError("expired", f"SRS address expired ({age} days old, limit {keys.max_age_days})")
        return f"{user}@{domain}"
    parts = local[5:].split("=", 2)
    if len(parts) != 3 or not parts[0] or not parts[1] or len(parts[2]) < 2 or parts[2][0] not in SEPARATORS:
        raise SrsError("malformed", "malformed SRS1 address")
    given, first_hop, rest = parts
    check_hash(keys, given, first_hop, rest)
    return f"SRS0{rest}@{first_hop}"


# --------------------------------------------------------------------------- secrets file

class SecretsError(Exception):
    pass


def load_secrets(path: str) -> tuple:
    """Secrets from ``path``, one per line (the first signs); blank lines and # comments skipped.

    The file must not be readable or writable by others: a leaked secret lets anyone
    forge bounces that we would relay.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SecretsError(f"cannot read SRS secrets file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise SecretsError(f"SRS secrets file {path} is not a regular file")
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            raise SecretsError(f"SRS secrets file {path} is accessible by others (mode {stat.S_IMODE(mode):04o}); "
                               f"run: chmod o-rwx {path}")
        text = handle.read()
    found = tuple(line.strip() for line in text.splitlines()
                  if line.strip() and not line.strip().startswith(b"#"))
    if not found:
        raise SecretsError(f"SRS secrets file {path} holds no secret")
    if any(len(secret) < 8 for secret in found):  # PostSRSd's generated secrets have 24
        raise SecretsError(f"SRS secrets file {path}: every secret needs at least 8 characters")
    return found


def new_secret() -> str:
    """A fresh random secret (24 characters of base64: 144 bits)."""
    return base64.b64encode(_random.token_bytes(18)).decode("ascii")


def write_secrets_file(path: str, rotate: bool = False, group: Optional[int] = None) -> None:
    """Create ``path`` holding one new secret; ``rotate`` puts a new one in front of the
    existing ones (it signs from now on; the old ones still verify) and keeps the file's
    owner and mode.

    A new file is mode 0640 in ``group`` (the group the daemon runs as, so that a reload
    after the privilege drop can read it; the owner stays whoever creates it, root), or
    0600 when ``group`` is None.  Never readable by others (see :func:`load_secrets`).
    """
    line = new_secret() + "\n"
    if rotate:
        old = b"".join(s + b"\n" for s in load_secrets(path)).decode("utf-8", "surrogateescape")
        tmp = f"{path}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(line + old)
        st = os.stat(path)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.replace(tmp, path)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SecretsError(f"{path} exists; use --rotate to add a new secret in front") from None
    try:
        if group is not None:  # before the secret is written: nobody else ever sees it
            os.fchown(fd, -1, group)
            os.fchmod(fd, 0o640)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise SecretsError(f"cannot give {path} to group {group}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(line)
