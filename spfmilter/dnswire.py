"""DNS messages for the five query types SPF needs, written and read without dnspython's objects.

A cold SPF check costs one to three DNS queries, and dnspython's general message code
(``make_query``, ``to_wire``, ``from_wire``, ``is_response``, ``Answer``) spent about
150 us of CPU on each, more than the rest of the evaluation (see docs/PERFORMANCE.md).
This module does only what spfmilter asks for -- one question of type A, AAAA, MX, PTR or
TXT, class IN (RFC 1035 section 4), with EDNS0 (RFC 6891) -- in a few straight passes over
the bytes.

It is deliberately narrow: whatever it does not recognise as a plain answer raises
:class:`Unusual`, and the caller reads that message with dnspython instead
(:func:`reply_of_message`), so odd but valid messages (DNAME, signatures, escaped or
non-ASCII labels, duplicate records, long CNAME chains, null MX) get dnspython's reading,
not a second guess.  Both readings produce the same :class:`Reply`, with the caching rules
written down once here (``tests/unit/test_dnswire.py`` checks that they agree).

Caching rules (what :class:`Reply` ``ttl`` means):

* an answer lives for the smallest TTL of the records used, CNAMEs included
  (RFC 2181 section 5.2: one TTL per RRset, the smallest wins; a TTL with the top bit set
  counts as 0, section 8);
* NODATA lives for min(SOA TTL, SOA MINIMUM, the CNAMEs' TTLs) when the authority section
  has the SOA of a zone holding the name; NXDOMAIN for min(SOA TTL, SOA MINIMUM) of the
  authority's SOA (RFC 2308 section 5); without an SOA neither is cached (``ttl`` 0).
"""
from __future__ import annotations

import re
import struct
from typing import NamedTuple, Union

import dns.ipv6
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

QTYPES = {"A": 1, "MX": 15, "PTR": 12, "TXT": 16, "AAAA": 28}
_CNAME, _SOA, _NS, _OPT = 5, 6, 2, 41
_IN = 1
MAX_CHAIN = 16  # CNAME hops followed within one response (as dnspython)
NOERROR, NXDOMAIN = 0, 3
_QR = 0x8000
_TC = 0x0200
_OPCODE = 0x7800
_RD = 0x0100

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
# A label dnspython would print as it is: printable ASCII without the characters it escapes.
_PLAIN_LABEL = re.compile(rb'[!#%&\'*+,\-/0-9:<=>?A-Z\[\]^_`a-z{|}~]+')


class Unusual(Exception):
    """Not a plain answer to our question: read this message with dnspython instead."""


class BadAnswer(Exception):
    """A response to our question that gives no usable answer (e.g. a CNAME chain that does not
    end): the server's answer is no good, as if it had failed."""


class Reply(NamedTuple):
    rcode: int  # RFC 1035 section 4.1.1 (extended rcodes are Unusual)
    values: tuple  # A/AAAA: address text; MX: (preference, name); PTR: name; TXT: tuple of bytes
    ttl: float  # seconds it may be cached (see the module doc); 0 for not at all


Truncated = "truncated"  # decode(): TC=1, ask again over TCP (RFC 7766 section 5)


def encode_name(name: str) -> bytes:
    """``name`` (dotted text, final dot optional) in wire form; Unusual for anything but plain ASCII labels."""
    text = name[:-1] if name.endswith(".") else name
    if not text or "\\" in text:
        raise Unusual(name)
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise Unusual(name) from None
    out = bytearray()
    for label in raw.split(b"."):
        if not 0 < len(label) < 64:
            raise Unusual(name)
        out.append(len(label))
        out += label
    out.append(0)
    if len(out) > 255:
        raise Unusual(name)
    return bytes(out)


def encode_query(qid: int, qname: bytes, qtype: int, payload: int) -> bytes:
    """A recursive query (RD) for ``qname`` (wire form) of ``qtype``, class IN; EDNS0 unless payload is 0."""
    header = _HEADER.pack(qid, _RD, 1, 0, 0, 1 if payload else 0)
    question = qname + struct.pack("!HH", qtype, _IN)
    if not payload:
        return header + question
    # OPT pseudo-RR (RFC 6891 section 6.1.2): root owner, class = payload, TTL = 0 (no DO), no options.
    return header + question + b"\x00" + struct.pack("!HHIH", _OPT, payload, 0, 0)


def _name(wire: bytes, pos: int) -> tuple[str, int]:
    """(text as dnspython prints it without the final dot, position after the name)."""
    labels = []
    end = -1
    hops = 0
    length = 0
    while True:
        size = wire[pos]
        if size == 0:
            pos += 1
            break
        if size >= 0xC0:
            target = ((size & 0x3F) << 8) | wire[pos + 1]
            if end < 0:
                end = pos + 2
            if target >= pos or hops > 127:  # only backwards: no loops (RFC 1035 section 4.1.4)
                raise Unusual("compression pointer")
            hops += 1
            pos = target
            continue
        if size > 63:
            raise Unusual("label type")
        if not _PLAIN_LABEL.fullmatch(wire, pos + 1, pos + 1 + size) or pos + 1 + size > len(wire):
            raise Unusual("label characters")  # or cut short by the end of the message
        labels.append(wire[pos + 1:pos + 1 + size].decode("ascii"))
        length += size + 1
        pos += size + 1
    if not labels or length + 1 > 255:
        raise Unusual("root or long name")
    return ".".join(labels), (end if end >= 0 else pos)


def _rdata(qtype: int, wire: bytes, pos: int, end: int) -> object:
    if qtype == 1:
        if end - pos != 4:
            raise Unusual("A length")
        return "%d.%d.%d.%d" % (wire[pos], wire[pos + 1], wire[pos + 2], wire[pos + 3])
    if qtype == 28:
        if end - pos != 16:
            raise Unusual("AAAA length")
        return dns.ipv6.inet_ntoa(wire[pos:end])
    if qtype == 16:
        strings = []
        while pos < end:
            size = wire[pos]
            if pos + 1 + size > end:
                raise Unusual("TXT string")
            strings.append(wire[pos + 1:pos + 1 + size])
            pos += 1 + size
        if not strings:
            raise Unusual("empty TXT")
        return tuple(strings)
    if qtype == 15:
        if end - pos < 3:
            raise Unusual("MX length")
        exchange, after = _name(wire, pos + 2)
        if after != end:
            raise Unusual("MX length")
        return (_U16.unpack_from(wire, pos)[0], exchange)
    target, after = _name(wire, pos)  # PTR and CNAME
    if after != end:
        raise Unusual("name rdata length")
    return target


def _ttl(raw: int) -> int:
    return 0 if raw & 0x80000000 else raw  # RFC 2181 section 8


def _same_or_below(name: str, zone: str) -> bool:
    """Whether ``name`` is ``zone`` or below it (lower-case text; "" is the root zone)."""
    return not zone or name == zone or name.endswith("." + zone)


def decode(wire: bytes, qid: int, qname: bytes, qtype: int) -> Union[Reply, str, None]:
    """Read ``wire`` as the response to our query ``qid`` for ``qname`` (wire form, any case)/``qtype``.

    Returns a :class:`Reply`, :data:`Truncated`, or None when ``wire`` is not a response to
    that query (wrong id, not a response, another question: RFC 5452 section 4 -- the
    caller drops it and keeps waiting).  Raises :class:`Unusual` for anything else it does
    not read itself (the caller hands the bytes to dnspython).
    """
    if len(wire) < 12:
        return None
    rid, flags, qd, an, ns, ar = _HEADER.unpack_from(wire, 0)
    if rid != qid or not flags & _QR or flags & _OPCODE:
        return None
    rcode = flags & 0x000F
    if qd != 1:
        raise Unusual("question count")  # e.g. SERVFAIL without a question: dnspython's rules
    end_q = 12 + len(qname)
    if wire[12:end_q].lower() != qname.lower() or wire[end_q:end_q + 4] != struct.pack("!HH", qtype, _IN):
        return None  # another question: not ours (0x20 case differences are fine, RFC 4343)
    if flags & _TC:
        return Truncated
    pos = end_q + 4
    size = len(wire)
    try:
        records = []  # (owner lower, type, ttl, value) of the answer section
        for _ in range(an):
            owner, pos = _name(wire, pos)
            rtype, rclass, ttl, rdlen = _RR.unpack_from(wire, pos)
            pos += 10
            end = pos + rdlen
            if end > size or rclass != _IN:
                raise Unusual("answer record")
            if rtype == qtype:
                records.append((owner.lower(), rtype, _ttl(ttl), _rdata(qtype, wire, pos, end)))
            elif rtype == _CNAME:
                records.append((owner.lower(), rtype, _ttl(ttl), _rdata(_CNAME, wire, pos, end)))
            else:
                raise Unusual("answer type")
            pos = end
        soas = []  # (owner lower, min(ttl, minimum)) of the authority section
        for _ in range(ns):
            owner, pos = _name(wire, pos) if wire[pos] else ("", pos + 1)
            rtype, rclass, ttl, rdlen = _RR.unpack_from(wire, pos)
            pos += 10
            end = pos + rdlen
            if end > size or rclass != _IN:
                raise Unusual("authority record")
            if rtype == _SOA:  # MNAME, RNAME, then five 32-bit numbers, MINIMUM last (RFC 1035 3.3.13)
                _, after = _name(wire, pos)
                _, after = _name(wire, after)
                if after + 20 != end:
                    raise Unusual("SOA length")
                soas.append((owner.lower(), min(_ttl(ttl), _U32.unpack_from(wire, end - 4)[0])))
            elif rtype == _NS:
                if _name(wire, pos)[1] != end:
                    raise Unusual("NS length")
            else:
                raise Unusual("authority type")
            pos = end
        opts = 0
        for _ in range(ar):
            if wire[pos] == 0:
                pos += 1
                owner_root = True
            else:
                _, pos = _name(wire, pos)
                owner_root = False
            rtype, rclass, ttl, rdlen = _RR.unpack_from(wire, pos)
            pos += 10
            end = pos + rdlen
            if end > size:
                raise Unusual("additional record")
            if rtype == _OPT:
                opts += 1
                if not owner_root or opts > 1 or ttl & 0xFF000000 or (ttl >> 16) & 0xFF:
                    raise Unusual("OPT")  # extended rcode or EDNS version: dnspython's reading
                option = pos
                while option < end:  # RFC 6891 section 6.1.2: code, length, data
                    if option + 4 > end:
                        raise Unusual("OPT option")
                    option += 4 + _U16.unpack_from(wire, option + 2)[0]
                if option != end:
                    raise Unusual("OPT option")
            elif rtype not in (1, 28) or rclass != _IN or rdlen != (4 if rtype == 1 else 16):
                raise Unusual("additional type")
            pos = end
    except (IndexError, struct.error):
        raise Unusual("short message") from None
    if pos != size:
        raise Unusual("trailing bytes")
    if rcode == NXDOMAIN:
        if records:
            raise Unusual("NXDOMAIN with an answer")
        return Reply(NXDOMAIN, (), float(soas[0][1]) if soas else 0.0)
    if rcode != NOERROR:
        return Reply(rcode, (), 0.0)
    return _chain(records, soas, _name(qname, 0)[0].lower(), qtype)


def _chain(records: list, soas: list, name: str, qtype: int) -> Reply:
    """Follow CNAMEs from ``name`` to the ``qtype`` records (RFC 1034 section 3.6.2)."""
    owners: dict = {}
    for owner, rtype, ttl_, value in records:
        owners.setdefault((owner, rtype), []).append((ttl_, value))
    ttl = 0x7FFFFFFF
    for _ in range(MAX_CHAIN):
        found = owners.get((name, qtype))
        if found:
            values = tuple(value for _, value in found)
            if len(found) > 1 and len({_key(v) for v in values}) != len(values):
                raise Unusual("duplicate records")  # dnspython merges them into one RRset
            return Reply(NOERROR, values, float(min(ttl, min(t for t, _ in found))))
        cnames = owners.get((name, _CNAME))
        if not cnames:
            break
        if len(cnames) > 1:
            raise Unusual("several CNAMEs")
        ttl = min(ttl, cnames[0][0])
        name = cnames[0][1].lower()
    else:
        raise Unusual("CNAME chain too long")
    for zone, negative in soas:
        if _same_or_below(name, zone):
            return Reply(NOERROR, (), float(min(ttl, negative)))
    return Reply(NOERROR, (), 0.0)


def _key(value: object) -> object:
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], str):
        return (value[0], value[1].lower())
    return value


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True)


def _zone(name: dns.name.Name) -> str:
    """Lower-case text of a name for :func:`_same_or_below` ("" for the root)."""
    return "" if name == dns.name.root else _text(name).lower()


def value_of(qtype: int, rdata: object) -> object:
    """A dnspython rdata of ``qtype`` in the shape :class:`Reply` values have."""
    r: object = rdata
    if qtype in (1, 28):
        return r.address  # type: ignore[attr-defined]
    if qtype == 15:
        return (r.preference, _text(r.exchange))  # type: ignore[attr-defined]
    if qtype == 12:
        return _text(r.target)  # type: ignore[attr-defined]
    return tuple(r.strings)  # type: ignore[attr-defined]


def reply_of_message(message: dns.message.Message, qname: dns.name.Name, qtype: int) -> Reply:
    """The :class:`Reply` for a response dnspython has read (TCP, or what :func:`decode` left).

    The same rules as :func:`decode`; raises :class:`BadAnswer` for a CNAME chain longer
    than :data:`MAX_CHAIN` (a loop, RFC 1034 section 3.6.2).
    """
    rcode = message.rcode()
    soas = [(_zone(rrset.name), min(_ttl(rrset.ttl), rrset[0].minimum))
            for rrset in message.authority if rrset.rdtype == _SOA and rrset.rdclass == _IN and len(rrset)]
    if rcode == dns.rcode.NXDOMAIN:
        return Reply(NXDOMAIN, (), float(soas[0][1]) if soas else 0.0)
    if rcode != dns.rcode.NOERROR:
        return Reply(int(rcode), (), 0.0)
    name = qname
    ttl = 0x7FFFFFFF
    for _ in range(MAX_CHAIN):
        try:
            rrset = message.find_rrset(message.answer, name, dns.rdataclass.IN, dns.rdatatype.RdataType(qtype))
        except KeyError:
            try:
                cname = message.find_rrset(message.answer, name, dns.rdataclass.IN, dns.rdatatype.CNAME)
            except KeyError:
                break
            ttl = min(ttl, _ttl(cname.ttl))
            name = cname[0].target
            continue
        return Reply(NOERROR, tuple(value_of(qtype, rdata) for rdata in rrset), float(min(ttl, _ttl(rrset.ttl))))
    else:
        raise BadAnswer(f"CNAME chain longer than {MAX_CHAIN}")
    text = _zone(name)
    for zone, negative in soas:
        if _same_or_below(text, zone):
            return Reply(NOERROR, (), float(min(ttl, negative)))
    return Reply(NOERROR, (), 0.0)


def parse(wire: bytes, qid: int, qname: bytes, qtype: int) -> Union[Reply, str, None]:
    """:func:`decode`, falling back to dnspython's reading for what it leaves."""
    try:
        return decode(wire, qid, qname, qtype)
    except Unusual:
        pass
    request = dns.message.make_query(dns.name.from_wire(qname, 0)[0], dns.rdatatype.RdataType(qtype))
    request.id = qid
    try:
        message = dns.message.from_wire(wire, raise_on_truncation=True)
    except dns.message.Truncated as exc:
        return Truncated if request.is_response(exc.message()) else None
    except Exception:  # malformed: ignored, the caller keeps waiting (as dnspython's resolver does)
        return None
    if not request.is_response(message):
        return None
    return reply_of_message(message, request.question[0].name, qtype)
