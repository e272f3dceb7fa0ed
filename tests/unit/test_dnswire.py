"""spfmilter.dnswire: its own reading of DNS messages must be dnspython's reading.

Every response here is built with dnspython and read twice: by :func:`dnswire.decode`
(the fast path) and by dnspython's ``from_wire`` plus :func:`dnswire.reply_of_message`
(the path for everything decode declines).  They must give the same Reply; the plain
answers must be read by the fast path itself (no silent fallback), and random damage to
a message must never make decode accept what dnspython would not read the same way.
"""
from __future__ import annotations

import random

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from spfmilter import dnswire

QTYPE = {name: code for name, code in dnswire.QTYPES.items()}


def query(name: str, qtype: str, payload: int = 1232) -> dns.message.Message:
    if payload:
        return dns.message.make_query(name, qtype, use_edns=0, payload=payload)
    return dns.message.make_query(name, qtype)


def respond(q: dns.message.Message, answer=(), authority=(), additional=(), rcode=dns.rcode.NOERROR,
            qname_case=None) -> bytes:
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    if qname_case:
        r.question[0].name = dns.name.from_text(qname_case)
    for rrset in answer:
        r.answer.append(rrset)
    for rrset in authority:
        r.authority.append(rrset)
    for rrset in additional:
        r.additional.append(rrset)
    return r.to_wire()


def rr(name, ttl, rtype, *values):
    return dns.rrset.from_text(name, ttl, "IN", rtype, *values)


SOA = "ns1.example. hostmaster.example. 1 7200 3600 1209600 {}"


def dnspython_reading(wire: bytes, q: dns.message.Message):
    message = dns.message.from_wire(wire, raise_on_truncation=True)
    assert q.is_response(message)
    return dnswire.reply_of_message(message, q.question[0].name, q.question[0].rdtype)


def fast_reading(wire: bytes, q: dns.message.Message):
    return dnswire.decode(wire, q.id, q.question[0].name.to_wire(), q.question[0].rdtype)


# (label, qname, qtype, answer, authority, additional, rcode): answers the fast path must read itself
PLAIN = [
    ("A", "a.example.", "A", [rr("a.example.", 300, "A", "192.0.2.1", "192.0.2.2")], [], [], 0),
    ("AAAA", "a.example.", "AAAA", [rr("a.example.", 60, "AAAA", "2001:db8::1", "::ffff:192.0.2.1")], [], [], 0),
    ("MX", "m.example.", "MX", [rr("m.example.", 3600, "MX", "10 mx1.m.example.", "20 MX2.Other.example.")],
     [rr("m.example.", 3600, "NS", "ns1.m.example.")], [rr("mx1.m.example.", 60, "A", "192.0.2.9")], 0),
    ("PTR", "1.2.0.192.in-addr.arpa.", "PTR", [rr("1.2.0.192.in-addr.arpa.", 86400, "PTR", "mail.example.")],
     [], [], 0),
    ("TXT", "t.example.", "TXT", [rr("t.example.", 300, "TXT", '"v=spf1 " "ip4:192.0.2.0/24 -all"',
                                     '"google-site-verification=x"')], [], [], 0),
    ("TXT long", "t.example.", "TXT", [rr("t.example.", 5, "TXT", " ".join(['"' + "x" * 255 + '"'] * 3))],
     [], [], 0),
    ("CNAME chain", "c.example.", "TXT", [rr("c.example.", 100, "CNAME", "d.example."),
                                          rr("d.example.", 50, "CNAME", "e.other.example."),
                                          rr("e.other.example.", 300, "TXT", '"v=spf1 -all"')], [], [], 0),
    ("NODATA with SOA", "n.example.", "TXT", [], [rr("example.", 900, "SOA", SOA.format(120))], [], 0),
    ("NODATA, SOA ttl lower", "n.example.", "MX", [], [rr("example.", 30, "SOA", SOA.format(120))], [], 0),
    ("NODATA, unrelated SOA", "n.example.", "TXT", [], [rr("other.example.", 900, "SOA", SOA.format(120))], [], 0),
    ("NODATA, no SOA", "n.example.", "A", [], [], [], 0),
    ("NODATA after CNAME", "c.example.", "A", [rr("c.example.", 40, "CNAME", "x.sub.example.")],
     [rr("sub.example.", 900, "SOA", SOA.format(600))], [], 0),
    ("NXDOMAIN with SOA", "gone.example.", "TXT", [], [rr("example.", 900, "SOA", SOA.format(60))], [], 3),
    ("NXDOMAIN without SOA", "gone.example.", "A", [], [], [], 3),
    ("SERVFAIL", "s.example.", "A", [], [], [], 2),
    ("REFUSED", "s.example.", "TXT", [], [], [], 5),
    ("TTL with the top bit", "a.example.", "A", [rr("a.example.", 2**31 + 5, "A", "192.0.2.1")], [], [], 0),
    ("mixed-case owner", "a.example.", "A", [rr("A.Example.", 300, "A", "192.0.2.1")], [], [], 0),
]


@pytest.mark.parametrize("label, qname, qtype, answer, authority, additional, rcode", PLAIN,
                         ids=[case[0] for case in PLAIN])
@pytest.mark.parametrize("payload", [1232, 0])
def test_plain_answers_are_read_by_the_fast_path_as_dnspython_reads_them(
        label, qname, qtype, answer, authority, additional, rcode, payload):
    q = query(qname, qtype, payload)
    wire = respond(q, answer, authority, additional, rcode)
    fast = fast_reading(wire, q)  # raises Unusual if the fast path declined: a failure here
    assert fast == dnspython_reading(wire, q)
    assert dnswire.parse(wire, q.id, q.question[0].name.to_wire(), QTYPE[qtype]) == fast


def test_what_the_plain_answers_say():
    q = query("c.example.", "TXT")
    wire = respond(q, *PLAIN[6][3:6])
    assert fast_reading(wire, q) == dnswire.Reply(0, ((b"v=spf1 -all",),), 50.0)
    q = query("m.example.", "MX")
    assert set(fast_reading(respond(q, *PLAIN[2][3:6]), q).values) == {(10, "mx1.m.example"),
                                                                       (20, "MX2.Other.example")}
    q = query("n.example.", "TXT")
    assert fast_reading(respond(q, *PLAIN[7][3:6]), q) == dnswire.Reply(0, (), 120.0)
    q = query("n.example.", "TXT")
    assert fast_reading(respond(q, *PLAIN[9][3:6]), q) == dnswire.Reply(0, (), 0.0)  # not that zone's SOA
    q = query("gone.example.", "TXT")
    assert fast_reading(respond(q, *PLAIN[12][3:6], rcode=3), q) == dnswire.Reply(3, (), 60.0)
    q = query("a.example.", "A")
    assert fast_reading(respond(q, *PLAIN[16][3:6]), q).ttl == 0.0  # RFC 2181 section 8


# Valid but unusual: the fast path declines, dnspython's reading is used
UNUSUAL = [
    ("null MX", "m.example.", "MX", [rr("m.example.", 300, "MX", "0 .")], [], []),
    ("escaped label", "t.example.", "PTR", [rr("t.example.", 300, "PTR", r"we\.ird\@x.example.")], [], []),
    ("DNAME", "a.sub.example.", "A", [rr("sub.example.", 300, "DNAME", "other.example."),
                                      rr("a.sub.example.", 300, "CNAME", "a.other.example."),
                                      rr("a.other.example.", 300, "A", "192.0.2.3")], [], []),
    ("duplicate records", "a.example.", "MX", [rr("a.example.", 300, "MX", "10 mx.example."),
                                               rr("a.example.", 200, "MX", "10 MX.example.")], [], []),
    ("signature", "a.example.", "A", [rr("a.example.", 300, "A", "192.0.2.1"),
                                      rr("a.example.", 300, "RRSIG",
                                         "A 8 2 300 20300101000000 20200101000000 1 example. AAAA")], [], []),
    ("authority NSEC", "n.example.", "TXT", [], [rr("n.example.", 300, "NSEC", "z.example. A")], []),
]


@pytest.mark.parametrize("label, qname, qtype, answer, authority, additional", UNUSUAL,
                         ids=[case[0] for case in UNUSUAL])
def test_unusual_answers_get_dnspythons_reading(label, qname, qtype, answer, authority, additional):
    q = query(qname, qtype)
    wire = respond(q, answer, authority, additional)
    if label == "duplicate records":  # dnspython merges them when building: write both by hand
        wire = respond(q, answer[:1], authority, additional)
        second = respond(q, answer[1:], authority, additional)
        wire = _two_answers(wire, second)
    with pytest.raises(dnswire.Unusual):
        fast_reading(wire, q)
    assert dnswire.parse(wire, q.id, q.question[0].name.to_wire(), QTYPE[qtype]) == dnspython_reading(wire, q)


def _two_answers(first: bytes, second: bytes) -> bytes:
    """``first`` with the answer record of ``second`` appended (both: one question, one answer, OPT)."""
    m1 = dns.message.from_wire(first)
    m2 = dns.message.from_wire(second)
    end_of_answer = len(first) - 11  # the OPT record (root, type, class, ttl, rdlen) is last
    question_end = 12 + len(m1.question[0].name.to_wire()) + 4
    answer2 = second[question_end:len(second) - 11]
    assert m2.answer and m1.answer
    header = bytearray(first[:12])
    header[7] = 2  # ANCOUNT
    return bytes(header) + first[12:end_of_answer] + answer2 + first[end_of_answer:]


def test_the_duplicate_records_are_merged_as_dnspython_does():
    q = query("a.example.", "MX")
    wire = _two_answers(respond(q, [rr("a.example.", 300, "MX", "10 mx.example.")]),
                        respond(q, [rr("a.example.", 200, "MX", "10 MX.example.")]))
    assert dnswire.parse(wire, q.id, q.question[0].name.to_wire(), 15) == dnswire.Reply(0, ((10, "mx.example"),), 200.0)


def test_queries_are_the_bytes_dnspython_writes():
    for qname, qtype, payload in [("a.example", "A", 1232), ("Mixed.Case.example.", "TXT", 1232),
                                  ("x.example", "MX", 0), ("1.2.0.192.in-addr.arpa", "PTR", 512)]:
        q = query(qname if qname.endswith(".") else qname + ".", qtype, payload)
        ours = dnswire.encode_query(q.id, dnswire.encode_name(qname), QTYPE[qtype], payload)
        assert ours == q.to_wire(), qname


@pytest.mark.parametrize("name", ["", ".", "a..example", "x" * 64 + ".example", ".".join(["abc"] * 70),
                                  "b\u00fccher.example", r"we\.ird.example"])
def test_names_it_does_not_write_are_left_to_dnspython(name):
    with pytest.raises(dnswire.Unusual):
        dnswire.encode_name(name)


def test_messages_that_are_not_our_response_are_dropped():
    q = query("a.example.", "A")
    good = respond(q, [rr("a.example.", 300, "A", "192.0.2.1")])
    qname = q.question[0].name.to_wire()
    assert dnswire.decode(good, q.id ^ 1, qname, 1) is None  # another id
    assert dnswire.decode(good, q.id, dns.name.from_text("b.example.").to_wire(), 1) is None  # another question
    assert dnswire.decode(good, q.id, qname, 16) is None  # another type
    assert dnswire.decode(good[:2] + bytes([good[2] & 0x7F]) + good[3:], q.id, qname, 1) is None  # QR clear
    assert dnswire.decode(good[:11], q.id, qname, 1) is None  # not even a header
    # 0x20: the question may come back in another case (RFC 4343)
    wire = respond(q, [rr("a.example.", 300, "A", "192.0.2.1")], qname_case="A.EXAMPLE.")
    assert dnswire.decode(wire, q.id, qname, 1) == dnswire.Reply(0, ("192.0.2.1",), 300.0)


def test_truncated_is_reported_for_tcp():
    q = query("t.example.", "TXT")
    r = dns.message.make_response(q)
    r.flags |= dns.flags.TC
    assert dnswire.parse(r.to_wire(), q.id, q.question[0].name.to_wire(), 16) is dnswire.Truncated


def test_a_compression_loop_ends():
    q = query("a.example.", "A")
    good = respond(q, [rr("a.example.", 300, "A", "192.0.2.1")])
    start = 12 + len(q.question[0].name.to_wire()) + 4  # the answer's owner: a pointer to the question
    looped = good[:start] + bytes([0xC0, start]) + good[start + 2:]  # points at itself
    assert dnswire.parse(looped, q.id, q.question[0].name.to_wire(), 1) is None  # dnspython refuses it too


def test_damaged_messages_are_never_read_differently_from_dnspython():
    """Random byte damage: whatever decode accepts, dnspython must read the same way."""
    rng = random.Random(7208)
    corpus = []
    for label, qname, qtype, answer, authority, additional, rcode in PLAIN:
        q = query(qname, qtype)
        corpus.append((q, respond(q, answer, authority, additional, rcode)))
    accepted = 0
    for _ in range(6000):
        q, wire = rng.choice(corpus)
        damaged = bytearray(wire)
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(2, len(damaged))  # keep the id, so the damage is what is tested
            damaged[position] = rng.randrange(256)
        if rng.random() < 0.2:
            damaged = damaged[:rng.randrange(12, len(damaged))]
        damaged_bytes = bytes(damaged)
        try:
            fast = fast_reading(damaged_bytes, q)
        except dnswire.Unusual:
            continue
        try:
            message = dns.message.from_wire(damaged_bytes, raise_on_truncation=True)
        except dns.message.Truncated:
            assert fast in (dnswire.Truncated, None)
            continue
        except Exception as exc:
            # dnspython cannot read it: decode may only drop it too
            assert fast is None, f"decode read {damaged_bytes!r} as {fast!r}; dnspython: {exc!r}"
            continue
        if fast is None:  # dropped: dnspython must not see our response in it either
            assert not q.is_response(message), damaged_bytes
            continue
        accepted += 1
        assert q.is_response(message)
        assert fast == dnswire.reply_of_message(message, q.question[0].name, q.question[0].rdtype)
    assert accepted > 500  # the damage was often harmless (e.g. in a TTL or an address)


def test_a_cname_loop_is_a_bad_answer_not_a_wait():
    """RFC 1034 section 3.6.2: a chain that does not end is the server's bad answer (temperror now),
    so the transport stops asking that server instead of waiting for a better response."""
    q = query("a.loop.example.", "TXT")
    wire = respond(q, [rr("a.loop.example.", 300, "CNAME", "b.loop.example."),
                       rr("b.loop.example.", 300, "CNAME", "a.loop.example.")])
    with pytest.raises(dnswire.Unusual):
        fast_reading(wire, q)
    with pytest.raises(dnswire.BadAnswer):
        dnswire.parse(wire, q.id, q.question[0].name.to_wire(), 16)
