"""DKIM verification and alignment with From: and MAIL FROM (spfmilter.dkimcheck), with the test key."""
from __future__ import annotations

import os
import time

import pytest

from spfmilter import dkimcheck
from spfmilter.dkimcheck import (DEBIAN_PSL, DkimDnsError, KeyRefused, aligned_pass, check_key, from_domain,
                                 load_org_domains)
from tests.support.dkimsign import hostile_key_record, public_key_record, rsa_key_record, sign

ORGS = load_org_domains()


def verify(message, txt, mail_from_domain="sender.example", deadline=None, clock=time.monotonic):
    """dkimcheck.verify with the MAIL FROM domain of most tests and a generous deadline."""
    deadline = clock() + 30 if deadline is None else deadline
    return dkimcheck.verify(message, txt, mail_from_domain, ORGS, deadline, clock)

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


def test_unaligned_signature_is_not_verified_and_does_not_count():
    [result] = verify(sign(MESSAGE, "other.example"), txt)
    assert (result.result, result.aligned) == ("policy", False)
    assert result.problem == "not verified: d= not aligned with From: and MAIL FROM"
    assert aligned_pass([result]) is None


@pytest.mark.parametrize("signer,author,mail_from,ok", [
    # issue 11 item 4: a signature of the attacker's own domain does not spare a bank's SPF fail
    ("attacker.example", "attacker.example", "bank.example", False),
    ("bank.example", "bank.example", "attacker.example", False),
    ("bank.example", "attacker.example", "bank.example", False),
    # relaxed alignment by organisational domain: the three may be different names of one organisation
    ("mail.bank.example", "bank.example", "news.bank.example", True),
    ("bank.example", "bank.example", "bank.example", True),
])
def test_signature_must_align_with_from_and_mail_from(signer, author, mail_from, ok):
    keys = {f"test._domainkey.{signer}": public_key_record().encode()}
    message = MESSAGE.replace(b"alice@sender.example", f"alice@{author}".encode())
    [result] = verify(sign(message, signer), lambda name: keys.get(name.rstrip(".")), mail_from)
    assert result.aligned is ok
    assert (aligned_pass([result]) is not None) is ok
    assert result.result == ("pass" if ok else "policy")


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
                                                                  ("other.example", "policy", False)]
    assert aligned_pass(results).domain == "sender.example"


@pytest.mark.parametrize("a,b,ok", [
    # RFC 7489 section 3.2: organisational domains from the Public Suffix List
    ("co.uk", "x.co.uk", False),  # a public suffix has no organisational domain
    ("github.io", "victim.github.io", False),  # private-section suffixes count too
    ("attacker.github.io", "victim.github.io", False),
    ("mail.example.com", "news.example.com", True),  # siblings share example.com
    ("example.com", "EXAMPLE.COM.", True),
    ("example.com", "mail.example.com", True), ("a.b.example.co.uk", "example.co.uk", True),
    ("example.co.uk", "other.co.uk", False),
    ("example.com", "example.org", False), ("com", "example.com", False),
    ("ample.com", "example.com", False), ("", "example.com", False),
    ("bücher.example", "mail.xn--bcher-kva.example", True),  # IDNA: U-labels and A-labels
    ("exa mple.com", "example.com", False), ("x..example.com", "example.com", False),
    ("[192.0.2.1]", "example.com", False), ("localhost", "localhost", False),
    ("bank.example", "mail.bank.example", True),  # an unlisted TLD is a public suffix (the "*" rule)
])
def test_alignment_by_organisational_domain(a, b, ok):
    assert ORGS.aligned(a, b) is ok
    assert ORGS.aligned(b, a) is ok


def test_all_three_domains_must_share_the_organisational_domain():
    assert ORGS.aligned("mail.bank.example", "bank.example", "news.bank.example")
    assert not ORGS.aligned("attacker.example", "attacker.example", "bank.example")
    assert not ORGS.aligned()


def test_the_public_suffix_list_comes_from_debian_when_installed(tmp_path):
    if os.path.exists(DEBIAN_PSL):
        assert ORGS.source == DEBIAN_PSL
    assert load_org_domains(paths=(str(tmp_path / "missing.dat"),)).source == "publicsuffixlist package"
    # the file is really read: a list that makes bank.example a public suffix
    own = tmp_path / "psl.dat"
    own.write_text("// test list\nexample\nbank.example\n")
    orgs = load_org_domains(paths=(str(own),))
    assert orgs.source == str(own)
    assert orgs.of("mail.bank.example") == "mail.bank.example"
    assert not orgs.aligned("mail.bank.example", "news.bank.example")


@pytest.mark.parametrize("headers,domain", [
    (b"From: Alice <alice@Sender.Example>\r\n", "sender.example"),
    (b"From: alice@sender.example\r\n", "sender.example"),
    (b"From: alice@sender.example.\r\n", None),  # not an addr-spec domain (RFC 5322 3.4.1)
    (b"From: alice@sender.example (Alice)\r\n", "sender.example"),
    (b"From: John Q. Public <jqp@sender.example>\r\n", "sender.example"),  # obsolete phrase: RFC 5322 4.1
    (b"From: \"alice@bank.example\" <x@attacker.example>\r\n", "attacker.example"),
    (b"From: =?utf-8?q?B=C3=A4nk?= <alice@sender.example>\r\n", "sender.example"),
    ("From: Ålice <alice@bücher.example>\r\n".encode(), "xn--bcher-kva.example"),  # RFC 6532
    (b"From: Alice <alice@sender.example>\r\n\tfolded on\r\n", None),  # defect: text after the address
    (b"From: a@x.example\r\nFrom: b@y.example\r\n", None),  # two From: fields
    (b"From: a@x.example, b@y.example\r\n", None),  # two authors
    (b"From: Public, John <jqp@sender.example>\r\n", None),  # unquoted comma: two addresses, defect
    (b"From: alice@attacker.example <alice@bank.example>\r\n", None),  # defects: which one is it?
    (b"From: alice@bank.example)<bob@attacker.example>\r\n", None),  # parsers disagree (CVE-2023-27043)
    (b"From: <alice@bank.example\r\n", None),  # unterminated angle address
    (b"From: a@x.example; b@y.example\r\n", None),
    (b"From: group: a@x.example;\r\n", None),  # a group is not a single author mailbox
    (b"From: undisclosed:;\r\n", None),
    (b"From: alice@[192.0.2.1]\r\n", None),  # no domain name
    (b"From: a@\r\n", None),  # the email package raises on this one
    (b"From: <>\r\n", None),
    (b"From: alice@b\xfccher.example\r\n", None),  # not UTF-8
    (b"To: b@mx.test\r\n", None),
    (b"From: nobody\r\n", None),
])
def test_from_domain(headers, domain):
    assert from_domain(headers + b"\r\n") == domain


# ---------------------------------------------------------------- cost limits (issue 11 item 5)

def test_keys_too_costly_to_use_are_refused_before_verification():
    check_key(public_key_record().encode())  # the 1024-bit test key is fine
    check_key(rsa_key_record(2 ** 4095 + 1, 2 ** 32).encode())  # the largest allowed
    check_key(b"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    check_key(b"v=DKIM1; p=")  # a revoked key is dkimpy's to report
    check_key(b"not a key record at all")
    for record, words in [(hostile_key_record(), "RSA key of 8192 bits is larger than 4096"),
                          (rsa_key_record(2 ** 4096 + 1, 65537), "RSA key of 4097 bits"),
                          (rsa_key_record(2 ** 8191 + 1, 65537, pkcs1=True), "RSA key of 8192 bits"),
                          (rsa_key_record(2 ** 2047 + 1, 2 ** 32 + 1), "RSA public exponent of 33 bits"),
                          ("v=DKIM1; n=" + "x" * 5000 + "; p=", "key record of 5015 bytes is longer than 4096")]:
        with pytest.raises(KeyRefused, match=words):
            check_key(record.encode())


def test_a_hostile_key_gives_permerror_quickly():
    keys = {"test._domainkey.sender.example": hostile_key_record().encode()}
    message = MESSAGE
    for _ in range(5):
        message = sign(message, "sender.example")
    started = time.process_time()
    results = verify(message, lambda name: keys.get(name.rstrip(".")))
    assert time.process_time() - started < 0.5  # dkimpy's arithmetic on such a key takes ~1 s each
    assert [r.result for r in results] == ["permerror"] * 3 + ["policy"] * 2
    assert results[0].problem == "key refused: RSA key of 8192 bits is larger than 4096"
    assert results[3].problem == "not verified: at most 3 signatures are verified per message"
    assert aligned_pass(results) is None


def test_at_most_three_aligned_signatures_are_verified():
    looked_up = []

    def counting(name):
        looked_up.append(name)
        return None

    message = sign(sign(sign(sign(MESSAGE, "sender.example"), "sender.example"), "sender.example"), "other.example")
    results = verify(sign(message, "sender.example"), counting)
    # top first: sender, other, sender, sender, sender; the top three aligned ones are tried
    assert len(looked_up) == 3 and len(results) == 5
    assert [r.result for r in results] == ["fail", "policy", "fail", "fail", "policy"]
    assert results[4].problem == "not verified: at most 3 signatures are verified per message"
    assert aligned_pass(results) is None


def test_no_signature_is_started_after_the_deadline():
    now = [100.0]

    def slow_key(name):
        now[0] += 6  # each lookup uses up six seconds of the budget
        return txt(name)

    message = sign(sign(sign(MESSAGE, "sender.example"), "sender.example"), "sender.example")
    results = verify(message, slow_key, deadline=110.0, clock=lambda: now[0])
    assert [r.result for r in results] == ["pass", "pass", "policy"]
    assert results[2].problem == "not verified: time limit reached"


@pytest.mark.parametrize("mangle,words", [
    (lambda m: m.replace(b"b=", b"b=" + b"A" * 700, 1), "signature of"),  # b= longer than 4096 bits
    (lambda m: m.replace(b"h=", b"h=" + b"x:" * 200, 1), "h= lists more than 200"),
])
def test_costly_signatures_are_not_verified(mangle, words):
    [result] = verify(mangle(sign(MESSAGE, "sender.example")), txt)
    assert result.result == "permerror" and words in result.problem


@pytest.mark.parametrize("extra", [b"X-Big: " + b"y" * 300_000 + b"\r\n",
                                   b"".join(b"X-Many: %d\r\n" % i for i in range(5000))])
def test_messages_with_huge_header_sections_are_not_verified(extra):
    message = sign(MESSAGE, "sender.example")
    started = time.process_time()
    [result] = verify(extra + message, txt)
    assert time.process_time() - started < 0.5
    assert result.result == "policy" and result.problem.startswith("not verified: header section")


def test_at_most_eight_signatures_are_reported_the_verified_ones_always():
    message = sign(MESSAGE, "sender.example")
    for _ in range(12):
        message = sign(message, "other.example")
    results = verify(message, txt)
    assert len(results) == 8
    assert results[-1].result == "pass" and [r.result for r in results[:7]] == ["policy"] * 7
