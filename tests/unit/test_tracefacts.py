"""Unit tests for spfmilter.tracefacts: the client IP, HELO and sender a delivered message's
trace headers (Received, Return-Path, Received-SPF) give ``spfmilter explain --eml``."""
from __future__ import annotations

import pytest

from spfmilter.config import parse_text
from spfmilter.tracefacts import MessageError, facts_from_message, header_fields, parse_received, received_spf_pairs
from tests.support.terminal import safe_lines

CONFIG = parse_text("authserv_id = mx.test\n")


def test_header_fields_unfolds_and_stops_at_the_body():
    data = (b"From alice@example.com Tue Jan  2 10:00:00 2024\n"
            b"Received: from a (b [192.0.2.1])\r\n\tby mx.test;\r\n date\r\n"
            b"Subject: s\r\n"
            b"Bad header line without colon\r\n"
            b"Sub ject: space in name\r\n"
            b"X-Bare-CR: one\rtwo\r\n"
            b"\r\n"
            b"Received: from body (body [203.0.113.1])\r\n")
    assert header_fields(data) == [
        ("Received", "from a (b [192.0.2.1])\tby mx.test; date"),
        ("Subject", "s"),
        ("X-Bare-CR", "one\rtwo"),
    ]


@pytest.mark.parametrize("value,expected", [
    ("from mail.example.com (mail.example.com [192.0.2.1])\tby mx.test (Postfix) with ESMTP id 4X",
     ("192.0.2.1", "mail.example.com")),
    ("from helo.example (unknown [192.0.2.1]) by mx.test (Postfix)", ("192.0.2.1", "helo.example")),
    ("from helo.example (host.example [IPv6:2001:db8::25]) by mx.test (Postfix)", ("2001:db8::25", "helo.example")),
    ("from helo.example (user@rdns.example [192.0.2.1] (may be forged)) by mx.test (8.17.1/8.17.1)",
     ("192.0.2.1", "helo.example")),
    ("from helo.example ([192.0.2.1]) by mx.test (8.17.1/8.17.1) with ESMTP id 1", ("192.0.2.1", "helo.example")),
    ("from rdns.example ([192.0.2.1] helo=real-helo.example) by mx.test with esmtp (Exim 4.96)",
     ("192.0.2.1", "real-helo.example")),
    ("from helo.example (helo.example [::ffff:192.0.2.1]) by mx.test", ("192.0.2.1", "helo.example")),
    ("FROM helo.example (x [192.0.2.1])", ("192.0.2.1", "helo.example")),
    ("by mx.test (Postfix, from userid 0) id 4DDDD", None),
    ("from helo.example (x [192.0.2.999]) by mx.test", None),
    ("from helo.example by mx.test", None),
    ("from evil\r\n(x [192.0.2.1])", None),
    ("from ev\x1bil (x [192.0.2.1])", ("192.0.2.1", "ev\x1bil")),
])
def test_parse_received(value, expected):
    assert parse_received(value) == expected


@pytest.mark.parametrize("value,expected", [
    (('pass (mx.test: x) receiver=mx.test; client-ip=192.0.2.1; envelope-from="a@b.example"; helo=h.example; '
     "identity=mailfrom"),
     {"receiver": "mx.test", "client-ip": "192.0.2.1", "envelope-from": "a@b.example", "helo": "h.example",
      "identity": "mailfrom"}),
    ('fail (comment client-ip=10.0.0.1; helo=fake) client-ip=192.0.2.1; helo="h x;y"; envelope-from=""',
     {"client-ip": "192.0.2.1", "helo": "h x;y", "envelope-from": ""}),
    ('pass helo="a\\"b"; helo=second', {"helo": 'a"b'}),
    ("pass", {}),
])
def test_received_spf_pairs(value, expected):
    assert received_spf_pairs(value) == expected


POSTFIX = (b"Return-Path: <alice@example.org>\n"
           b"Received: from helo.example (mail.example.org [192.0.2.1])\n\tby mx.test (Postfix) with ESMTP\n"
           b"Subject: x\n\nbody\n")


@pytest.mark.parametrize("data,ip,helo,sender", [
    (POSTFIX, "192.0.2.1", "helo.example", "alice@example.org"),
    (b"Return-Path: <>\nReceived: from h.example (h.example [192.0.2.2]) by mx.test\n\n", "192.0.2.2", "h.example", ""),
    # a content filter's loopback hop on top is skipped, as the milter would skip it
    ((b"Received: from localhost (localhost [127.0.0.1]) by mx.test (Postfix)\n"
     b"Received: from h.example (r.example [192.0.2.3]) by mx.test (Postfix)\n"
     b"Received: from inner.example (inner.example [10.0.0.1]) by h.example\n"
     b"Return-Path: <b@example.org>\n\n"), "192.0.2.3", "h.example", "b@example.org"),
    # only a trusted hop: used anyway (the report then says the milter does not check it)
    (b"Received: from localhost (localhost [127.0.0.1]) by mx.test\nReturn-Path: <c@example.org>\n\n",
     "127.0.0.1", "localhost", "c@example.org"),
    # our Received-SPF when there is no usable Received header
    ((b"Received-SPF: pass (mx.test: ok) receiver=mx.test; client-ip=192.0.2.4; envelope-from=\"d@e.example\";"
     b" helo=h4.example; identity=mailfrom\n\n"), "192.0.2.4", "h4.example", "d@e.example"),
    # ours is preferred to another receiver's
    ((b"Received-SPF: pass receiver=other.example; client-ip=192.0.2.5; envelope-from=x@y.example; helo=o.example\n"
     b"Received-SPF: pass receiver=MX.TEST.; client-ip=192.0.2.6; envelope-from=z@y.example; helo=m.example\n\n"),
     "192.0.2.6", "m.example", "z@y.example"),
    # Return-Path missing: the sender from Received-SPF
    ((b"Received: from h.example (h.example [192.0.2.7]) by mx.test\n"
     b"Received-SPF: none receiver=mx.test; client-ip=192.0.2.7; envelope-from=\"\"; helo=h.example\n\n"),
     "192.0.2.7", "h.example", ""),
    # no sender anywhere
    (b"Received: from h.example (h.example [192.0.2.8]) by mx.test\n\n", "192.0.2.8", "h.example", None),
])
def test_facts_from_message(data, ip, helo, sender):
    found = facts_from_message(data, CONFIG, "m.eml")
    assert (found.ip, found.helo, found.sender) == (ip, helo, sender)
    assert found.sources


def test_facts_from_message_names_its_sources():
    found = facts_from_message(POSTFIX, CONFIG, "m.eml")
    assert found.sources == (
        ("client IP and HELO from Received header 1 of 1: Received: from helo.example "
        "(mail.example.org [192.0.2.1]) by mx.test (Postfix) with ESMTP"),
        "sender from Return-Path: <alice@example.org>",
    )
    other = facts_from_message(b"Received-SPF: pass receiver=other.example; client-ip=192.0.2.5; helo=o.example\n\n",
                               CONFIG, "m.eml")
    assert other.sources[0].startswith("client IP and HELO from Received-SPF header 1 of 1 "
                                       "(written by receiver=other.example, not by this server)")


@pytest.mark.parametrize("data,why", [
    (b"", "no header fields found"),
    (b"Subject: hi\n\nbody\n", "no Received header; no Received-SPF header"),
    (b"Received: by mx.test (Postfix, from userid 0)\nReceived: from x (y [not-ip])\n\n",
     "2 Received header(s), none of the form 'from HELO (NAME [IP])'; no Received-SPF header"),
    (b"Received-SPF: pass receiver=mx.test; client-ip=bogus; helo=h.example\n\n",
     "no Received header; 1 Received-SPF header(s), none with client-ip= and helo="),
    (b"Received-SPF: pass receiver=mx.test; helo=h.example\n\n",
     "no Received header; 1 Received-SPF header(s), none with client-ip= and helo="),
])
def test_facts_from_message_refuses_clearly(data, why):
    with pytest.raises(MessageError) as info:
        facts_from_message(data, CONFIG, "m.eml")
    assert why in str(info.value)
    assert str(info.value).startswith("m.eml: ")


def test_hostile_trace_headers_are_escaped_in_the_report():
    data = (b"Return-Path: <a\x1b[2J@evil.example>\n"
            b"Received: from evil\x07.example (x\r [192.0.2.9]) by mx.test (Postfix)\x1b]0;t\x07\n"
            b"Received-SPF: pass receiver=mx.test; client-ip=192.0.2.9; helo=\"h\\\r\"\n\n")
    found = facts_from_message(data, CONFIG, "m.eml")
    assert found.helo == "evil\x07.example"  # evaluated as given: the Verifier decides it is no domain
    text = "\n".join(found.sources)
    safe_lines(text)
    assert "from evil\\x07.example (x\\r [192.0.2.9]) by mx.test (Postfix)\\x1b]0;t\\x07" in text
    assert "Return-Path: <a\\x1b[2J@evil.example>" in text
