"""DKIM verification and From: alignment (spfmilter.dkimcheck), with the test key."""
from __future__ import annotations

import pytest

from spfmilter.dkimcheck import DkimDnsError, aligned, aligned_pass, from_domain, verify
from tests.support.dkimsign import public_key_record, sign

MESSAGE = (b"From: Alice <alice@sender.example>\r\nTo: bob@mx.test\r\nSubject: hi\r\n"
           b"Date: Mon, 23 Nov 2026 16:00:00 +0000\r\n\r\nHello there\r\n")
KEYS = {"test._domainkey.sender.example": public_key_record().encode(),
        "test._domainkey.other.example": public_key_record().encode()}


def txt(name):
    return KEYS.get(name.rstrip("."))


def test_a_good_aligned_signature_passes():
    [result] = verify(sign(MESSAGE, "sender.example"), txt)
    assert (result.result, result.domain, result.selector, result.aligned) == ("pass", "sender.example", "test", True)
    assert aligned_pass([result]) == result


@pytest.mark.parametrize("mangle,expected", [
    (lambda m: m.replace(b"Hello", b"Hullo"), "fail"),  # body changed
    (lambda m: m.replace(b"Subject: hi", b"Subject: ho"), "fail"),  # signed header changed
])
def test_changed_messages_fail(mangle, expected):
    [result] = verify(mangle(sign(MESSAGE, "sender.example")), txt)
    assert result.result == expected and aligned_pass([result]) is None


def test_unaligned_signature_passes_but_does_not_count():
    [result] = verify(sign(MESSAGE, "other.example"), txt)
    assert result.result == "pass" and not result.aligned
    assert aligned_pass([result]) is None


def test_missing_key_and_dns_failure():
    [missing] = verify(sign(MESSAGE, "sender.example"), lambda name: None)
    assert missing.result in ("fail", "permerror") and aligned_pass([missing]) is None

    def broken(name):
        raise DkimDnsError("SERVFAIL")

    [temp] = verify(sign(MESSAGE, "sender.example"), broken)
    assert temp.result == "temperror" and temp.problem == "SERVFAIL"


def test_no_signature_and_garbage_signature():
    assert verify(MESSAGE, txt) == []
    garbage = b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=test; b=!!!; bh=???\r\n" + MESSAGE
    [result] = verify(garbage, txt)
    assert result.result in ("fail", "permerror") and aligned_pass([result]) is None


def test_two_signatures_one_good():
    message = sign(sign(MESSAGE, "other.example"), "sender.example")
    results = verify(message, txt)
    assert [(r.domain, r.result, r.aligned) for r in results] == [("sender.example", "pass", True),
                                                                  ("other.example", "pass", False)]
    assert aligned_pass(results).domain == "sender.example"


@pytest.mark.parametrize("d,f,ok", [
    ("example.com", "example.com", True), ("EXAMPLE.com.", "example.com", True),
    ("example.com", "mail.example.com", True), ("mail.example.com", "example.com", True),
    ("example.com", "example.org", False), ("com", "example.com", False),
    ("ample.com", "example.com", False), ("", "example.com", False),
])
def test_alignment(d, f, ok):
    assert aligned(d, f) is ok


@pytest.mark.parametrize("headers,domain", [
    (b"From: Alice <alice@Sender.Example>\r\n", "sender.example"),
    (b"From: alice@sender.example\r\n", "sender.example"),
    (b"From: a@x.example\r\nFrom: b@y.example\r\n", None),  # two From: fields
    (b"From: a@x.example, b@y.example\r\n", None),  # two authors
    (b"To: b@mx.test\r\n", None),
    (b"From: nobody\r\n", None),
])
def test_from_domain(headers, domain):
    assert from_domain(headers + b"\r\n") == domain
