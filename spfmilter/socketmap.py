"""SRS as a Postfix socketmap table: the protocol and the answers (pure; no sockets here).

Postfix's socketmap_table(5): the client sends netstrings ``LEN:name key,`` on a connection
it keeps open; each is answered with one netstring: ``OK value``, ``NOTFOUND ``, ``TEMP
reason``, ``TIMEOUT reason`` or ``PERM reason``.  A netstring (D. J. Bernstein) is the
decimal length, ``:``, that many bytes, ``,``.

Two maps, as PostSRSd 2 serves them, so its Postfix lines work unchanged::

    sender_canonical_maps = socketmap:unix:PATH:forward
    sender_canonical_classes = envelope_sender
    recipient_canonical_maps = socketmap:unix:PATH:reverse
    recipient_canonical_classes = envelope_recipient

* ``forward ADDRESS``: ``OK`` the SRS address, for a sender outside our domains
  (``local_domains`` and ``srs_domain``) and not in ``srs_exclude_domains``; ``NOTFOUND``
  with the reason otherwise.  Canonical maps run in cleanup(8) for every message, also the
  ones local(8) sends on after alias and .forward expansion, which a milter never sees.
  The client is not known here, so a sender in ``local_domains`` is never rewritten
  (PostSRSd does the same); the milter path rewrites such a sender from untrusted clients.
* ``reverse ADDRESS``: ``OK`` the original address for a valid SRS address in
  ``srs_domain``; ``NOTFOUND`` with the reason for anything else, forged and expired ones
  included.  That is PostSRSd's answer too: Postfix takes ``PERM`` and ``TEMP`` as a
  failing table and defers the message, so the milter (refusing such recipients at RCPT
  with 550 5.1.1) is what turns forged bounces away.
* ``PERM`` only for what is wrong with the query itself: an unknown map name, a
  netstring that is not one or longer than :data:`MAX_REQUEST` (the connection is closed
  after that answer, as the stream cannot be trusted any more).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from .srs import SrsError, forward, reverse, split_address, srs_tag
from .srspolicy import SrsPolicy

MAX_ADDRESS = 512  # octets of a key we look at (PostSRSd: 512); RFC 5321 section 4.5.3.1.3 allows 256 for a path
MAX_REQUEST = 1024  # octets of one request netstring; a longer one ends the connection
_MAX_DIGITS = len(str(MAX_REQUEST))


class Status(str, enum.Enum):
    OK = "OK"
    NOTFOUND = "NOTFOUND"
    TEMP = "TEMP"
    PERM = "PERM"


@dataclass(frozen=True)
class MapReply:
    """One answer; ``close`` ends the connection after it; ``log`` is a line for the log (or "")."""

    status: Status
    text: str = ""
    close: bool = False
    log: str = ""

    def encode(self) -> bytes:
        # "NOTFOUND " keeps its space even without a reason (socketmap_table(5))
        return encode_netstring(f"{self.status.value} {self.text}".encode("utf-8", "surrogateescape"))


INVALID = MapReply(Status.PERM, "Invalid query.", close=True)
TOO_BIG = MapReply(Status.PERM, "Too big.", close=True)


def encode_netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


class NetstringReader:
    """Cuts a byte stream into netstrings; bytes may arrive in any pieces."""

    def __init__(self, limit: int = MAX_REQUEST):
        self.limit = limit
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        """Part of a netstring has arrived."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> tuple[list[bytes], Optional[MapReply]]:
        """The netstrings completed by ``data``, and the reply that ends the connection when the
        stream broke (not a netstring, or longer than ``limit``) after them, else None."""
        self._buffer += data
        found: list[bytes] = []
        while self._buffer:
            colon = self._buffer.find(b":", 0, _MAX_DIGITS + 2)
            digits = self._buffer[:colon] if colon >= 0 else self._buffer[:_MAX_DIGITS + 1]
            if digits and not digits.isdigit():
                return found, INVALID
            if len(digits) > _MAX_DIGITS or (digits and int(digits) > self.limit):
                return found, TOO_BIG
            if colon < 0:
                break  # the length is still arriving
            if colon == 0:
                return found, INVALID
            end = colon + 1 + int(digits)
            if len(self._buffer) <= end:
                break
            if self._buffer[end] != ord(","):
                return found, INVALID
            found.append(bytes(self._buffer[colon + 1:end]))
            del self._buffer[:end + 1]
        return found, None


# --------------------------------------------------------------------------- the maps

def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def forward_reply(policy: SrsPolicy, address: str, now: float) -> MapReply:
    """The ``forward`` map: the SRS address to send mail from ``address`` on with."""
    local, _, _ = address.rpartition("@")
    domain = _domain(address)
    if not local or not domain:
        return MapReply(Status.NOTFOUND, "No domain.")
    if policy.is_ours(domain):
        return MapReply(Status.NOTFOUND, "Need not rewrite local domain.")
    if policy.excluded(domain):
        return MapReply(Status.NOTFOUND, "Excluded domain.")
    try:
        split_address(address)
        rewritten = forward(address, policy.domain, policy.keys, now)
    except SrsError as exc:
        return MapReply(Status.NOTFOUND, "Cannot rewrite this address.",
                        log=f"not rewritten ({exc.reason})")
    return MapReply(Status.OK, rewritten)


_REASONS = {
    "bad-hash": "Hash invalid in SRS address.",
    "hash-too-short": "Hash too short in SRS address.",
    "expired": "Time stamp out of date.",
    "malformed": "Malformed SRS address.",
}


def reverse_reply(policy: SrsPolicy, address: str, now: float) -> MapReply:
    """The ``reverse`` map: the address an SRS address in our SRS domain stands for."""
    local, at, _ = address.rpartition("@")
    if not at or _domain(address) != policy.domain.lower():
        return MapReply(Status.NOTFOUND, "Not in the SRS domain.")
    if not srs_tag(local):
        return MapReply(Status.NOTFOUND, "Not an SRS address.")
    try:
        original = reverse(address, policy.keys, now)
    except SrsError as exc:
        return MapReply(Status.NOTFOUND, _REASONS.get(exc.reason, "Invalid SRS address."),
                        log=f"not reversed ({exc.reason})")
    return MapReply(Status.OK, original)


_MAPS = {b"forward": forward_reply, b"reverse": reverse_reply}


def answer(request: bytes, policy: Optional[SrsPolicy], now: float) -> MapReply:
    """The reply to one request netstring's content, ``name key``."""
    name, space, key = request.partition(b" ")
    lookup = _MAPS.get(name)
    if not space or lookup is None:
        return MapReply(Status.PERM, "Invalid map.")
    if len(key) > MAX_ADDRESS:
        return MapReply(Status.NOTFOUND, "Too long.")
    if policy is None:  # SRS turned off by a reload that could not close this socket
        return MapReply(Status.NOTFOUND, "SRS is off.")
    return lookup(policy, key.decode("utf-8", "surrogateescape"), now)


class Session:
    """One client connection: bytes in, reply bytes out (the server does the I/O)."""

    def __init__(self, limit: int = MAX_REQUEST):
        self.reader = NetstringReader(limit)

    @property
    def pending(self) -> bool:
        return self.reader.pending

    def receive(self, data: bytes, policy: Optional[SrsPolicy], now: float) -> list[tuple[bytes, MapReply]]:
        """(request, reply) for each request completed by ``data``; when the stream broke, the
        reply saying so (``close`` set, request b"") comes last."""
        requests, broken = self.reader.feed(data)
        replies = [(request, answer(request, policy, now)) for request in requests]
        if broken is not None:
            replies.append((b"", broken))
        return replies
