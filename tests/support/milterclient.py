"""A milter protocol client (the MTA side) for driving a real milter in tests.

It speaks milter protocol version 6 as Postfix and Sendmail do, written from
the protocol description and the constants in libmilter's ``mfdef.h`` /
``mfapi.h``.  Pure standard library.

Wire format: every packet is a 4-byte big-endian length (covering the command
byte and the data), one command byte, then the data.  Strings are
NUL-terminated.

Typical use::

    from tests.support.milterclient import MilterClient, wait_ready

    wait_ready(("127.0.0.1", port), timeout=10.0, proc=milter_proc)
    c = MilterClient(("127.0.0.1", port), timeout=10.0)
    c.open()                                   # connect + option negotiation
    c.connect("mx.example.net", "192.0.2.7", port=12345,
              macros={"j": "mx.test", "{daemon_name}": "smtpd"})
    c.helo("mx.example.net")
    c.mail("<a@example.org>", "SIZE=100", macros={"{mail_addr}": "a@example.org"})
    r = c.rcpt("<b@example.com>")
    if r.is_rejection: ...
    c.data(); c.header("Subject", "hi"); c.eoh(); c.body(b"text\\r\\n")
    reply, mods = c.eom(macros={"i": "4XyZ"})
    c.quit()

The client honours what the milter negotiated: a stage the milter asked not to
see (``SMFIP_NOxxx``) is not sent at all (nor its macros) and the call returns
``Reply("skipped")``; a stage flagged ``SMFIP_NR_xxx`` is sent but no reply is
read, and the call returns ``Reply("noreply")``.

Addresses: ``("host", port)`` (IPv4 or IPv6), a filesystem path (unix socket),
or a milter socket spec ``"inet:PORT@HOST"``, ``"inet6:PORT@HOST"``,
``"unix:/path"``, ``"local:/path"``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import struct
import time
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Union

__all__ = [
    "MilterClient",
    "Reply",
    "Negotiated",
    "TransactionResult",
    "MilterError",
    "MilterClosed",
    "MilterTimeout",
    "MilterProtocolError",
    "wait_ready",
    "ALL_ACTIONS",
    "ALL_PROTOCOL",
]

# --------------------------------------------------------------------------
# Constants (libmilter mfdef.h / mfapi.h)
# --------------------------------------------------------------------------

SMFI_PROT_VERSION = 6
MILTER_CHUNK_SIZE = 65535
MAX_PACKET_SIZE = 1 << 20  # 1 MiB; anything bigger is treated as garbage

# MTA -> milter commands
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# milter -> MTA replies
SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ADDRCPT_PAR = b"2"
SMFIR_SHUTDOWN = b"4"
SMFIR_ACCEPT = b"a"
SMFIR_REPLBODY = b"b"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_CHGFROM = b"e"
SMFIR_CONN_FAIL = b"f"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_SETSYMLIST = b"l"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_SKIP = b"s"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"

# connect address families
SMFIA_UNKNOWN = b"U"
SMFIA_UNIX = b"L"
SMFIA_INET = b"4"
SMFIA_INET6 = b"6"

# actions (SMFIF_*)
SMFIF_ADDHDRS = 0x01
SMFIF_CHGBODY = 0x02
SMFIF_ADDRCPT = 0x04
SMFIF_DELRCPT = 0x08
SMFIF_CHGHDRS = 0x10
SMFIF_QUARANTINE = 0x20
SMFIF_CHGFROM = 0x40
SMFIF_ADDRCPT_PAR = 0x80
SMFIF_SETSYMLIST = 0x100
SMFI_CURR_ACTS = 0x1FF

# protocol flags (SMFIP_*)
SMFIP_NOCONNECT = 0x1
SMFIP_NOHELO = 0x2
SMFIP_NOMAIL = 0x4
SMFIP_NORCPT = 0x8
SMFIP_NOBODY = 0x10
SMFIP_NOHDRS = 0x20
SMFIP_NOEOH = 0x40
SMFIP_NR_HDR = 0x80
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_SKIP = 0x400
SMFIP_RCPT_REJ = 0x800
SMFIP_NR_CONN = 0x1000
SMFIP_NR_HELO = 0x2000
SMFIP_NR_MAIL = 0x4000
SMFIP_NR_RCPT = 0x8000
SMFIP_NR_DATA = 0x10000
SMFIP_NR_UNKN = 0x20000
SMFIP_NR_EOH = 0x40000
SMFIP_NR_BODY = 0x80000
SMFIP_HDR_LEADSPC = 0x100000
SMFIP_MDS_256K = 0x10000000
SMFIP_MDS_1M = 0x20000000
SMFI_CURR_PROT = 0x1FFFFF
SMFI_INTERNAL = 0x70000000

#: What the client offers by default: every action and every protocol
#: option of protocol version 6 (as Postfix 3.x does).
ALL_ACTIONS = SMFI_CURR_ACTS
ALL_PROTOCOL = SMFI_CURR_PROT

# macro stage indexes (SMFIM_*) as sent in the option negotiation reply
SMFIM_CONNECT = 0
SMFIM_HELO = 1
SMFIM_ENVFROM = 2
SMFIM_ENVRCPT = 3
SMFIM_DATA = 4
SMFIM_EOM = 5
SMFIM_EOH = 6

MACRO_STAGE_NAMES = {
    SMFIM_CONNECT: "connect",
    SMFIM_HELO: "helo",
    SMFIM_ENVFROM: "mail",
    SMFIM_ENVRCPT: "rcpt",
    SMFIM_DATA: "data",
    SMFIM_EOM: "eom",
    SMFIM_EOH: "eoh",
}


class _Stage(NamedTuple):
    cmd: bytes
    no_flag: int  # SMFIP_NOxxx: do not send this stage
    nr_flag: int  # SMFIP_NR_xxx: send, but expect no reply
    macro_stage: Optional[int]  # SMFIM_xxx index for requested macro lists


STAGES: dict[str, _Stage] = {
    "connect": _Stage(SMFIC_CONNECT, SMFIP_NOCONNECT, SMFIP_NR_CONN, SMFIM_CONNECT),
    "helo": _Stage(SMFIC_HELO, SMFIP_NOHELO, SMFIP_NR_HELO, SMFIM_HELO),
    "mail": _Stage(SMFIC_MAIL, SMFIP_NOMAIL, SMFIP_NR_MAIL, SMFIM_ENVFROM),
    "rcpt": _Stage(SMFIC_RCPT, SMFIP_NORCPT, SMFIP_NR_RCPT, SMFIM_ENVRCPT),
    "data": _Stage(SMFIC_DATA, SMFIP_NODATA, SMFIP_NR_DATA, SMFIM_DATA),
    "header": _Stage(SMFIC_HEADER, SMFIP_NOHDRS, SMFIP_NR_HDR, None),
    "eoh": _Stage(SMFIC_EOH, SMFIP_NOEOH, SMFIP_NR_EOH, SMFIM_EOH),
    "body": _Stage(SMFIC_BODY, SMFIP_NOBODY, SMFIP_NR_BODY, None),
    "eom": _Stage(SMFIC_BODYEOB, 0, 0, SMFIM_EOM),
    "unknown": _Stage(SMFIC_UNKNOWN, SMFIP_NOUNKNOWN, SMFIP_NR_UNKN, None),
}

_CMD_TO_STAGE = {st.cmd.decode(): name for name, st in STAGES.items()}

# final replies -> Reply.action
FINAL_REPLIES = {
    SMFIR_CONTINUE: "continue",
    SMFIR_ACCEPT: "accept",
    SMFIR_REJECT: "reject",
    SMFIR_TEMPFAIL: "tempfail",
    SMFIR_DISCARD: "discard",
    SMFIR_REPLYCODE: "replycode",
    SMFIR_SKIP: "skip",
    SMFIR_SHUTDOWN: "shutdown",
    SMFIR_CONN_FAIL: "connfail",
}

MOD_REPLIES = {
    SMFIR_ADDHEADER,
    SMFIR_INSHEADER,
    SMFIR_CHGHEADER,
    SMFIR_ADDRCPT,
    SMFIR_ADDRCPT_PAR,
    SMFIR_DELRCPT,
    SMFIR_CHGFROM,
    SMFIR_REPLBODY,
    SMFIR_QUARANTINE,
}

ACTIONS = frozenset(
    {
        "continue",
        "accept",
        "reject",
        "tempfail",
        "discard",
        "replycode",
        "skip",
        "noreply",
        "skipped",
        "shutdown",
        "connfail",
    }
)

#: Replies after which an MTA stops consulting the milter for the message.
_ENDING_ACTIONS = frozenset(
    {"accept", "discard", "reject", "tempfail", "replycode", "shutdown", "connfail"}
)


def packet(cmd: bytes, data: bytes = b"") -> bytes:
    """One framed packet: 4-byte big-endian length (of the command byte and the data), command, data."""
    return struct.pack(">I", len(data) + 1) + cmd + data


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class MilterError(Exception):
    """Any failure talking to the milter (transport or protocol)."""


class MilterClosed(MilterError):
    """The milter closed the connection (or it was reset)."""


class MilterTimeout(MilterError, TimeoutError):
    """No (complete) answer from the milter within the socket timeout."""


class MilterProtocolError(MilterError):
    """The milter sent something that is not valid milter protocol."""


# --------------------------------------------------------------------------
# Reply / results
# --------------------------------------------------------------------------

_REPLY_RE = re.compile(r"^([2-5]\d\d)(?:[ -](?:([245]\.\d{1,3}\.\d{1,3})(?=\s|$))?|$)")


@dataclasses.dataclass(frozen=True)
class Reply:
    """The milter's answer to one stage.

    ``action`` is one of ``continue accept reject tempfail discard replycode
    skip`` (sent by the milter), ``shutdown`` / ``connfail`` (rare libmilter
    internals ``'4'`` / ``'f'``), ``noreply`` (stage negotiated with
    ``SMFIP_NR_xxx``: nothing was read) or ``skipped`` (stage negotiated away
    with ``SMFIP_NOxxx``, or body after a ``skip``: nothing was sent).
    ``text`` is the full SMTP reply text for ``replycode``
    (e.g. ``"550 5.7.23 ..."``), else None.
    """

    action: str
    text: Optional[str] = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown reply action {self.action!r}")

    @property
    def code(self) -> Optional[int]:
        """SMTP reply code of a replycode reply (e.g. 550), else None."""
        if self.action != "replycode" or not self.text:
            return None
        m = _REPLY_RE.match(self.text)
        return int(m.group(1)) if m else None

    @property
    def xcode(self) -> Optional[str]:
        """Enhanced status code of a replycode reply (e.g. "5.7.23"), else None."""
        if self.action != "replycode" or not self.text:
            return None
        m = _REPLY_RE.match(self.text)
        return m.group(2) if m else None

    @property
    def message(self) -> Optional[str]:
        """The text of a replycode reply without the leading codes."""
        if self.action != "replycode" or self.text is None:
            return None
        m = _REPLY_RE.match(self.text)
        return self.text[m.end():].lstrip() if m else self.text

    @property
    def is_continue(self) -> bool:
        """The transaction proceeds (continue, noreply, skipped, skip)."""
        return self.action in ("continue", "noreply", "skipped", "skip")

    @property
    def is_permanent(self) -> bool:
        """A 5xx-class refusal: reject, or a 5xx replycode."""
        if self.action == "reject":
            return True
        return self.action == "replycode" and (self.code or 0) // 100 == 5

    @property
    def is_temporary(self) -> bool:
        """A 4xx-class refusal: tempfail, shutdown, or a 4xx replycode."""
        if self.action in ("tempfail", "shutdown"):
            return True
        return self.action == "replycode" and (self.code or 0) // 100 == 4

    @property
    def is_rejection(self) -> bool:
        """Reject, tempfail, shutdown, connfail, or a replycode (4xx/5xx)."""
        if self.action in ("reject", "tempfail", "shutdown", "connfail"):
            return True
        if self.action == "replycode":
            return (self.code or 500) // 100 in (4, 5)
        return False

    @property
    def ends_transaction(self) -> bool:
        """After this reply an MTA no longer consults the milter for the message."""
        return self.action in _ENDING_ACTIONS

    def __str__(self) -> str:
        return f"{self.action}: {self.text}" if self.text is not None else self.action


class Negotiated(NamedTuple):
    """Result of the option negotiation (unpacks as a 4-tuple)."""

    version: int
    actions: int
    protocol: int
    macros: dict  # stage name (or int index if unknown) -> list of macro names


@dataclasses.dataclass
class TransactionResult:
    """What :meth:`MilterClient.send_message` saw, stage by stage.

    Stage fields are None when the stage was not reached (or not requested).
    ``stopped_at`` is the stage name at which the transaction ended early, or
    None if it ran to end-of-message.  ``final`` is the deciding reply: the eom
    reply, or the reply that stopped it.  ``aborted`` tells whether an abort
    ('A') was sent.
    """

    connect: Optional[Reply] = None
    helo: Optional[Reply] = None
    mail: Optional[Reply] = None
    rcpts: list = dataclasses.field(default_factory=list)  # [(rcpt, Reply)]
    accepted_rcpts: list = dataclasses.field(default_factory=list)
    data: Optional[Reply] = None
    headers: list = dataclasses.field(default_factory=list)  # [(name, Reply)]
    eoh: Optional[Reply] = None
    body: Optional[Reply] = None
    eom: Optional[Reply] = None
    mods: list = dataclasses.field(default_factory=list)
    stopped_at: Optional[str] = None
    final: Optional[Reply] = None
    aborted: bool = False

    @property
    def completed(self) -> bool:
        return self.stopped_at is None

    @property
    def rejected(self) -> bool:
        return self.final is not None and self.final.is_rejection

    @property
    def action(self) -> Optional[str]:
        return self.final.action if self.final is not None else None


# --------------------------------------------------------------------------
# Encoding helpers
# --------------------------------------------------------------------------

StrOrBytes = Union[str, bytes]


def _b(value: StrOrBytes, what: str = "string") -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    elif not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")
    value = bytes(value)
    if b"\0" in value:
        raise ValueError(f"{what} must not contain NUL: {value!r}")
    return value


def _z(value: StrOrBytes, what: str = "string") -> bytes:
    return _b(value, what) + b"\0"


def _s(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _describe(cmd: bytes) -> str:
    stage = _CMD_TO_STAGE.get(cmd.decode("latin-1"))
    return f"{cmd!r} ({stage})" if stage else repr(cmd)


def _split_z(data: bytes, what: str, min_n: int, max_n: int) -> list[bytes]:
    """Split NUL-terminated strings; between min_n and max_n of them."""
    if not data.endswith(b"\0"):
        raise MilterProtocolError(f"{what}: data not NUL-terminated: {data[:120]!r}")
    parts = data[:-1].split(b"\0")
    if not min_n <= len(parts) <= max_n:
        raise MilterProtocolError(
            f"{what}: expected {min_n}..{max_n} NUL-terminated strings, "
            f"got {len(parts)}: {data[:120]!r}"
        )
    return parts


def _normalize_family(family: Optional[str], address: Optional[str]) -> bytes:
    if family is None:
        if address is None or address == "":
            return SMFIA_UNKNOWN
        if address.startswith("/"):
            return SMFIA_UNIX
        return SMFIA_INET6 if ":" in address else SMFIA_INET
    f = family.lower() if len(family) > 1 else family
    table = {
        "4": SMFIA_INET,
        "inet": SMFIA_INET,
        "inet4": SMFIA_INET,
        "ipv4": SMFIA_INET,
        "6": SMFIA_INET6,
        "inet6": SMFIA_INET6,
        "ipv6": SMFIA_INET6,
        "L": SMFIA_UNIX,
        "l": SMFIA_UNIX,
        "unix": SMFIA_UNIX,
        "local": SMFIA_UNIX,
        "U": SMFIA_UNKNOWN,
        "u": SMFIA_UNKNOWN,
        "unknown": SMFIA_UNKNOWN,
    }
    try:
        return table[f]
    except KeyError:
        raise ValueError(
            f"unknown address family {family!r}: use '4', '6', 'L' (unix) or 'U' (unknown)"
        ) from None


def _parse_addr(addr: Any) -> tuple[int, Any]:
    """Return (socket family, sockaddr) for the milter's listening address."""
    if isinstance(addr, tuple):
        if len(addr) < 2:
            raise ValueError(f"bad address {addr!r}")
        host = addr[0]
        fam = socket.AF_INET6 if ":" in str(host) else socket.AF_INET
        return fam, addr
    if isinstance(addr, os.PathLike):
        return socket.AF_UNIX, os.fspath(addr)
    if isinstance(addr, str):
        m = re.match(r"^(inet6?):(\d+)(?:@\[?([^\]]*)\]?)?$", addr)
        if m:
            kind, port, host = m.groups()
            host = host or ("::1" if kind == "inet6" else "127.0.0.1")
            fam = socket.AF_INET6 if kind == "inet6" or ":" in host else socket.AF_INET
            return fam, (host, int(port))
        for prefix in ("unix:", "local:"):
            if addr.startswith(prefix):
                return socket.AF_UNIX, addr[len(prefix):]
        return socket.AF_UNIX, addr
    raise TypeError(f"unsupported milter address {addr!r}")


# --------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------


class MilterClient:
    """An MTA-side milter protocol (v6) client over one socket.

    ``timeout`` bounds every socket operation (connect, each send, each read);
    exceeding it raises :class:`MilterTimeout` (a :class:`MilterError` and a
    :class:`TimeoutError`).

    ``strict`` (default True): :meth:`open` rejects a negotiation reply whose
    version, actions or protocol flags exceed what was offered, as an MTA would.

    ``only_requested_macros`` (default False): like Postfix, send only the
    macros the milter listed for a stage in its negotiation reply (stages for
    which it listed nothing get everything given).

    After a :class:`MilterClosed` or :class:`MilterProtocolError` the socket
    is closed (the stream is dead or out of sync); after a
    :class:`MilterTimeout` it stays open (a late reply may still arrive).

    Every packet sent and received is appended to ``transcript`` as
    ``(direction, cmd, data)`` with direction ``"send"`` or ``"recv"``.
    """

    def __init__(
        self,
        addr: Any,
        timeout: float = 10.0,
        *,
        strict: bool = True,
        only_requested_macros: bool = False,
        max_packet: int = MAX_PACKET_SIZE,
    ) -> None:
        self.addr = addr
        self.timeout = timeout
        self.strict = strict
        self.only_requested_macros = only_requested_macros
        self.max_packet = max_packet
        self._sock: Optional[socket.socket] = None
        self.version: Optional[int] = None
        self.negotiated_actions: Optional[int] = None
        self.negotiated_protocol: Optional[int] = None
        self.requested_macros: dict = {}
        self.offered_actions: Optional[int] = None
        self.offered_protocol: Optional[int] = None
        self.transcript: list[tuple[str, bytes, bytes]] = []
        # While not None, writes are collected here and sent in one go (see _corked_send):
        # like Postfix, the macro packet and its command travel in a single write.
        self._cork: Optional[list[bytes]] = None
        self._body_skipped = False

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> "MilterClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._sock is not None else "closed"
        return f"<MilterClient {self.addr!r} {state}>"

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    # -- connection ------------------------------------------------------------

    def open(
        self,
        actions: int = ALL_ACTIONS,
        protocol: int = ALL_PROTOCOL,
        version: int = SMFI_PROT_VERSION,
    ) -> Negotiated:
        """Connect and negotiate options; returns :class:`Negotiated`."""
        if self._sock is not None:
            raise MilterError("client is already open")
        fam, sockaddr = _parse_addr(self.addr)
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(sockaddr)
        except socket.timeout as e:
            sock.close()
            raise MilterTimeout(
                f"timed out after {self.timeout}s connecting to milter at {self.addr!r}"
            ) from e
        except OSError as e:
            sock.close()
            raise MilterError(f"cannot connect to milter at {self.addr!r}: {e}") from e
        self._sock = sock
        self._body_skipped = False
        try:
            return self._negotiate(actions, protocol, version)
        except BaseException:
            self.close()
            raise

    def _negotiate(self, actions: int, protocol: int, version: int) -> Negotiated:
        self.offered_actions, self.offered_protocol = actions, protocol
        self.raw_send(SMFIC_OPTNEG, struct.pack(">III", version, actions, protocol))
        cmd, data = self._read_packet("during option negotiation")
        if cmd != SMFIC_OPTNEG:
            raise MilterProtocolError(
                f"expected option negotiation reply b'O', got {cmd!r} data={data[:120]!r}"
            )
        if len(data) < 12:
            raise MilterProtocolError(f"option negotiation reply too short: {data!r}")
        v, a, p = struct.unpack(">III", data[:12])
        macros: dict = {}
        rest = data[12:]
        while rest:
            if len(rest) < 5:
                raise MilterProtocolError(f"truncated macro list in negotiation reply: {rest!r}")
            (idx,) = struct.unpack(">I", rest[:4])
            end = rest.find(b"\0", 4)
            if end < 0:
                raise MilterProtocolError(
                    f"macro list for stage {idx} not NUL-terminated: {rest!r}"
                )
            names = re.split(r"[\s,]+", _s(rest[4:end]).strip())
            key = MACRO_STAGE_NAMES.get(idx, idx)
            macros[key] = [n for n in names if n]
            rest = rest[end + 1:]
        if self.strict:
            if not 2 <= v <= version:
                raise MilterProtocolError(
                    f"milter negotiated protocol version {v}, offered {version}"
                )
            if a & ~actions:
                raise MilterProtocolError(
                    f"milter requested actions 0x{a:x} beyond those offered 0x{actions:x}"
                )
            if p & ~SMFI_INTERNAL & ~protocol:
                raise MilterProtocolError(
                    f"milter requested protocol flags 0x{p:x} beyond those offered 0x{protocol:x}"
                )
        self.version = v
        self.negotiated_actions = a
        self.negotiated_protocol = p
        self.requested_macros = macros
        return Negotiated(v, a, p, macros)

    def close(self) -> None:
        """Close the socket without saying goodbye (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def quit(self) -> None:
        """Send 'Q' (no reply expected) and close; a dead peer is not an error."""
        if self._sock is None:
            return
        try:
            self.raw_send(SMFIC_QUIT, b"")
        except MilterError:
            pass
        finally:
            self.close()

    def quit_nc(self) -> None:
        """Send 'K' (quit, new connection follows on the same socket).

        The milter resets its connection state; the next stage is connect().
        """
        self.raw_send(SMFIC_QUIT_NC, b"")
        self._body_skipped = False

    def abort(self) -> None:
        """Send 'A' (abort the current message); no reply is expected."""
        self.raw_send(SMFIC_ABORT, b"")
        self._body_skipped = False

    # -- low level -------------------------------------------------------------

    def _require_open(self) -> socket.socket:
        if self._sock is None:
            raise MilterError("client is not open (call open() first)")
        return self._sock

    def raw_write(self, raw: bytes) -> None:
        """Write arbitrary bytes to the socket (no framing at all)."""
        if self._cork is not None:
            self._cork.append(raw)
            return
        sock = self._require_open()
        try:
            sock.sendall(raw)
        except socket.timeout as e:
            raise MilterTimeout(f"timed out after {self.timeout}s sending to milter") from e
        except (BrokenPipeError, ConnectionResetError) as e:
            self.close()
            raise MilterClosed(f"milter closed the connection (while sending): {e}") from e
        except OSError as e:
            raise MilterError(f"error sending to milter: {e}") from e

    def raw_send(self, cmd: bytes, data: bytes = b"") -> None:
        """Send one framed packet: length, command byte, data."""
        if isinstance(cmd, str):
            cmd = cmd.encode("latin-1")
        if len(cmd) != 1:
            raise ValueError(f"command must be exactly one byte, got {cmd!r}")
        data = bytes(data)
        self.transcript.append(("send", cmd, data))
        self.raw_write(packet(cmd, data))

    def raw_read(self) -> tuple[bytes, bytes]:
        """Read one framed packet; returns ``(cmd, data)``."""
        return self._read_packet("")

    def _recv_exact(self, n: int, context: str) -> bytes:
        sock = self._require_open()
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = sock.recv(n - len(buf))
            except socket.timeout as e:
                raise MilterTimeout(
                    f"no reply from milter within {self.timeout}s {context}".rstrip()
                    + (f" (got {len(buf)} of {n} bytes)" if buf else "")
                ) from e
            except ConnectionResetError as e:
                raise MilterClosed(
                    f"milter closed the connection (reset) {context}".rstrip()
                ) from e
            except OSError as e:
                raise MilterError(f"error reading from milter {context}: {e}") from e
            if not chunk:
                raise MilterClosed(
                    f"milter closed the connection {context}".rstrip()
                    + f" (got {len(buf)} of {n} expected bytes)"
                )
            buf += chunk
        return bytes(buf)

    def _read_packet(self, context: str) -> tuple[bytes, bytes]:
        try:
            return self._read_packet_inner(context)
        except (MilterClosed, MilterProtocolError):
            # the stream is dead or out of sync: nothing sensible can follow
            self.close()
            raise

    def _read_packet_inner(self, context: str) -> tuple[bytes, bytes]:
        (length,) = struct.unpack(">I", self._recv_exact(4, context))
        if length == 0:
            raise MilterProtocolError(f"milter sent a zero-length packet {context}".rstrip())
        if length > self.max_packet:
            raise MilterProtocolError(
                f"milter sent packet length {length} (> limit {self.max_packet}) {context}".rstrip()
            )
        body = self._recv_exact(length, context)
        cmd, data = body[:1], body[1:]
        self.transcript.append(("recv", cmd, data))
        return cmd, data

    # -- replies -----------------------------------------------------------------

    def _read_reply(self, stage: str, mods: Optional[list] = None) -> Reply:
        context = f"while waiting for the reply to {stage}"
        while True:
            cmd, data = self._read_packet(context)
            if cmd == SMFIR_PROGRESS:
                continue
            action = FINAL_REPLIES.get(cmd)
            if action is not None:
                if cmd == SMFIR_REPLYCODE:
                    text = _s(data[:-1] if data.endswith(b"\0") else data)
                    return Reply("replycode", text)
                return Reply(action)
            if cmd in MOD_REPLIES:
                if mods is None:
                    self.close()
                    raise MilterProtocolError(
                        f"milter sent modification {cmd!r} {context} "
                        f"(only allowed at end of message): data={data[:120]!r}"
                    )
                try:
                    mods.append(self._decode_mod(cmd, data))
                except MilterProtocolError:
                    self.close()
                    raise
                continue
            self.close()
            raise MilterProtocolError(
                f"unexpected reply command {cmd!r} (0x{cmd[0]:02x}) {context}; "
                f"data={data[:120]!r}"
            )

    @staticmethod
    def _decode_mod(cmd: bytes, data: bytes) -> tuple:
        if cmd == SMFIR_ADDHEADER:
            name, value = _split_z(data, "addheader", 2, 2)
            return ("addheader", _s(name), _s(value))
        if cmd in (SMFIR_INSHEADER, SMFIR_CHGHEADER):
            what = "insheader" if cmd == SMFIR_INSHEADER else "chgheader"
            if len(data) < 4:
                raise MilterProtocolError(f"{what}: missing index: {data!r}")
            (index,) = struct.unpack(">I", data[:4])
            name, value = _split_z(data[4:], what, 2, 2)
            return (what, index, _s(name), _s(value))
        if cmd == SMFIR_ADDRCPT:
            (rcpt,) = _split_z(data, "addrcpt", 1, 1)
            return ("addrcpt", _s(rcpt))
        if cmd == SMFIR_ADDRCPT_PAR:
            parts = _split_z(data, "addrcpt_par", 1, 2)
            return ("addrcpt_par", _s(parts[0]), _s(parts[1]) if len(parts) > 1 else None)
        if cmd == SMFIR_DELRCPT:
            (rcpt,) = _split_z(data, "delrcpt", 1, 1)
            return ("delrcpt", _s(rcpt))
        if cmd == SMFIR_CHGFROM:
            parts = _split_z(data, "chgfrom", 1, 2)
            return ("chgfrom", _s(parts[0]), _s(parts[1]) if len(parts) > 1 else None)
        if cmd == SMFIR_REPLBODY:
            return ("replbody", data)
        if cmd == SMFIR_QUARANTINE:
            (reason,) = _split_z(data, "quarantine", 1, 1)
            return ("quarantine", _s(reason))
        raise AssertionError(cmd)  # pragma: no cover

    # -- macros ------------------------------------------------------------------

    def _send_macros(self, stage: str, cmd: bytes, macros: Optional[Mapping]) -> None:
        if not macros:
            return
        items = list(macros.items())
        st = STAGES.get(stage)
        if self.only_requested_macros and st is not None and st.macro_stage is not None:
            wanted = self.requested_macros.get(MACRO_STAGE_NAMES[st.macro_stage])
            if wanted is not None:
                norm = {w.strip("{}") for w in wanted}
                items = [(k, v) for k, v in items if str(k).strip("{}") in norm]
            if not items:
                return
        payload = cmd + b"".join(_z(k, "macro name") + _z(v, "macro value") for k, v in items)
        self.raw_send(SMFIC_MACRO, payload)

    def _corked_send(self, stage: str, cmd: bytes, data: bytes, macros: Optional[Mapping]) -> None:
        """The stage's macro packet (if any) and its command packet in one write."""
        self._cork = []
        try:
            self._send_macros(stage, cmd, macros)
            self.raw_send(cmd, data)
        finally:
            buffered, self._cork = b"".join(self._cork), None
        self.raw_write(buffered)

    def send_macros(self, cmd: StrOrBytes, macros: Mapping) -> None:
        """Send a 'D' packet for command ``cmd`` unconditionally."""
        if isinstance(cmd, str):
            cmd = cmd.encode("latin-1")
        payload = cmd + b"".join(_z(k, "macro name") + _z(v, "macro value") for k, v in macros.items())
        self.raw_send(SMFIC_MACRO, payload)

    # -- stages ------------------------------------------------------------------

    def _negotiated(self, flag: int) -> bool:
        return bool((self.negotiated_protocol or 0) & flag)

    def _stage(self, stage: str, data: bytes, macros: Optional[Mapping]) -> Reply:
        st = STAGES[stage]
        self._require_open()
        if st.no_flag and self._negotiated(st.no_flag):
            return Reply("skipped")
        self._corked_send(stage, st.cmd, data, macros)
        if st.nr_flag and self._negotiated(st.nr_flag):
            return Reply("noreply")
        return self._read_reply(stage)

    def connect(
        self,
        hostname: StrOrBytes,
        address: Optional[str] = None,
        port: int = 0,
        family: Optional[str] = None,
        macros: Optional[Mapping] = None,
    ) -> Reply:
        """'C': hostname, family, port, address.

        ``family``: ``"4"``, ``"6"`` (address as text, e.g. "2001:db8::1"),
        ``"L"``/``"unix"`` (address = socket path), ``"U"``/``"unknown"`` (no
        port/address).  Default: inferred from ``address``.
        """
        fam = _normalize_family(family, address)
        data = _z(hostname, "hostname") + fam
        if fam == SMFIA_UNKNOWN:
            if address:
                raise ValueError(
                    "family 'U' is SMFIA_UNKNOWN and carries no address; "
                    "use 'L' for a unix socket path"
                )
        else:
            if not 0 <= int(port) <= 0xFFFF:
                raise ValueError(f"port out of range: {port}")
            data += struct.pack(">H", int(port)) + _z(address or "", "address")
        return self._stage("connect", data, macros)

    def helo(self, name: StrOrBytes, macros: Optional[Mapping] = None) -> Reply:
        """'H': the HELO/EHLO argument."""
        return self._stage("helo", _z(name, "helo name"), macros)

    def mail(self, sender: StrOrBytes, *args: StrOrBytes, macros: Optional[Mapping] = None) -> Reply:
        """'M': sender (e.g. "<a@example.org>") then ESMTP args."""
        self._body_skipped = False
        data = _z(sender, "sender") + b"".join(_z(a, "ESMTP argument") for a in args)
        return self._stage("mail", data, macros)

    def rcpt(self, rcpt: StrOrBytes, *args: StrOrBytes, macros: Optional[Mapping] = None) -> Reply:
        """'R': recipient (e.g. "<b@example.com>") then ESMTP args."""
        data = _z(rcpt, "recipient") + b"".join(_z(a, "ESMTP argument") for a in args)
        return self._stage("rcpt", data, macros)

    def data(self, macros: Optional[Mapping] = None) -> Reply:
        """'T': the DATA command."""
        return self._stage("data", b"", macros)

    def header(self, name: StrOrBytes, value: StrOrBytes, macros: Optional[Mapping] = None) -> Reply:
        """'L': one header, value sent verbatim."""
        return self._stage("header", _z(name, "header name") + _z(value, "header value"), macros)

    def eoh(self, macros: Optional[Mapping] = None) -> Reply:
        """'N': end of headers."""
        return self._stage("eoh", b"", macros)

    def body(self, chunk: StrOrBytes, macros: Optional[Mapping] = None) -> Reply:
        """'B': body data, split into packets of at most 65535 bytes.

        Returns the reply to the last packet sent; stops early at the first
        reply that is not continue/noreply.  After a 'skip' reply, further
        body() calls for this message send nothing and return "skipped".
        """
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8", "surrogateescape")
        chunk = bytes(chunk)
        self._require_open()
        if self._body_skipped:
            return Reply("skipped")
        pieces = [chunk[i:i + MILTER_CHUNK_SIZE] for i in range(0, len(chunk), MILTER_CHUNK_SIZE)]
        reply = Reply("skipped")
        for n, piece in enumerate(pieces or [b""]):
            reply = self._stage("body", piece, macros if n == 0 else None)
            if reply.action == "skip":
                self._body_skipped = True
                break
            if reply.action not in ("continue", "noreply"):
                break
        return reply

    def eom(self, macros: Optional[Mapping] = None) -> tuple[Reply, list]:
        """'E': end of message; returns ``(final reply, modifications)``.

        Modifications are tuples in arrival order::

            ("addheader", name, value)
            ("insheader", index, name, value)
            ("chgheader", index, name, value)      # value "" = delete
            ("addrcpt", rcpt)
            ("addrcpt_par", rcpt, args_or_None)
            ("delrcpt", rcpt)
            ("chgfrom", sender, args_or_None)
            ("replbody", bytes)                    # one per chunk
            ("quarantine", reason)

        Progress packets are skipped.
        """
        self._require_open()
        self._corked_send("eom", SMFIC_BODYEOB, b"", macros)
        mods: list = []
        reply = self._read_reply("eom", mods)
        self._body_skipped = False
        return reply, mods

    def unknown(self, command: StrOrBytes, macros: Optional[Mapping] = None) -> Reply:
        """'U': an SMTP command the MTA does not know."""
        return self._stage("unknown", _z(command, "command"), macros)

    # -- whole transaction ---------------------------------------------------------

    def send_message(
        self,
        sender: StrOrBytes,
        rcpts: Iterable[Any],
        headers: Iterable[tuple[StrOrBytes, StrOrBytes]] = (),
        body: StrOrBytes = b"",
        *,
        helo: Optional[str] = None,
        ip: Optional[str] = None,
        hostname: Optional[str] = None,
        port: int = 0,
        family: Optional[str] = None,
        mail_args: Iterable[StrOrBytes] = (),
        macros_per_stage: Optional[Mapping[str, Any]] = None,
    ) -> TransactionResult:
        """Run one transaction like an MTA and report every stage's reply.

        If ``ip`` is given, a connect stage is sent first (hostname defaults to
        ``"[ip]"`` as MTAs send for clients without reverse DNS); if ``helo``
        is given, a helo stage follows.  Then mail, each rcpt (str, or
        ``(rcpt, [args])``), data, headers, eoh, body (only if non-empty), eom.

        ``macros_per_stage`` maps stage names ("connect", "helo", "mail",
        "rcpt", "data", "header", "eoh", "body", "eom") to macro dicts; the
        "rcpt" and "header" values may also be callables taking the recipient
        (resp. header name) and returning a dict.

        Like an MTA: a stage reply of reject/tempfail/replycode/discard/accept
        ends the transaction (connect/helo too); a rejected recipient is only
        dropped, and if no recipient remains the transaction ends.  After a
        rejection in mail..body stage (or no recipients left) an abort 'A' is
        sent so the milter is ready for the next transaction.
        """
        mps = dict(macros_per_stage or {})

        def mac(stage: str, arg: Any = None) -> Optional[Mapping]:
            m = mps.get(stage)
            if callable(m):
                return m(arg)
            return m

        res = TransactionResult()

        def stop(stage: str, reply: Optional[Reply], abort: bool) -> TransactionResult:
            res.stopped_at = stage
            res.final = reply
            if abort:
                self.abort()
                res.aborted = True
            return res

        if ip is not None:
            r = res.connect = self.connect(
                hostname if hostname is not None else f"[{ip}]", ip, port, family,
                macros=mac("connect"),
            )
            if r.ends_transaction:
                return stop("connect", r, False)
        if helo is not None:
            r = res.helo = self.helo(helo, macros=mac("helo"))
            if r.ends_transaction:
                return stop("helo", r, False)

        r = res.mail = self.mail(sender, *mail_args, macros=mac("mail"))
        if r.ends_transaction:
            return stop("mail", r, r.is_rejection)

        last: Optional[Reply] = None
        for item in rcpts:
            if isinstance(item, (tuple, list)):
                addr, args = item[0], tuple(item[1])
            else:
                addr, args = item, ()
            r = last = self.rcpt(addr, *args, macros=mac("rcpt", addr))
            res.rcpts.append((addr, r))
            if r.is_rejection:
                continue
            res.accepted_rcpts.append(addr)
            if r.ends_transaction:  # accept / discard: message-level decision
                return stop("rcpt", r, False)
        if not res.accepted_rcpts:
            return stop("rcpt", last, True)

        r = res.data = self.data(macros=mac("data"))
        if r.ends_transaction:
            return stop("data", r, r.is_rejection)
        for name, value in headers:
            r = self.header(name, value, macros=mac("header", name))
            res.headers.append((name, r))
            if r.ends_transaction:
                return stop("header", r, r.is_rejection)
        r = res.eoh = self.eoh(macros=mac("eoh"))
        if r.ends_transaction:
            return stop("eoh", r, r.is_rejection)
        if body:
            r = res.body = self.body(body, macros=mac("body"))
            if r.ends_transaction:
                return stop("body", r, r.is_rejection)
        r, mods = self.eom(macros=mac("eom"))
        res.eom, res.mods, res.final = r, mods, r
        return res


# --------------------------------------------------------------------------
# Readiness
# --------------------------------------------------------------------------


def wait_ready(
    addr: Any,
    timeout: float = 10.0,
    proc: Any = None,
    interval: float = 0.02,
    **open_kwargs: Any,
) -> Negotiated:
    """Wait until a milter at ``addr`` completes an option negotiation.

    Tries to connect and negotiate repeatedly (pausing ``interval`` seconds
    between failed attempts) until one handshake completes; then sends quit
    and returns the :class:`Negotiated` result.  Raises :class:`MilterError`
    with the last error once ``timeout`` has passed, or at once if ``proc``
    (a ``subprocess.Popen``) has exited.
    """
    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None

    def check_proc() -> None:
        if proc is not None:
            rc = proc.poll()
            if rc is not None:
                raise MilterError(
                    f"milter process (pid {proc.pid}) exited with return code {rc} "
                    f"before becoming ready at {addr!r}"
                    + (f"; last error: {last}" if last else "")
                )

    while True:
        check_proc()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        client = MilterClient(addr, timeout=max(0.05, min(remaining, 5.0)))
        try:
            result = client.open(**open_kwargs)
        except (MilterError, OSError) as e:
            last = e
            client.close()
        else:
            client.quit()
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    check_proc()
    raise MilterError(
        f"milter at {addr!r} not ready after {timeout}s; last error: {last}"
    ) from last
