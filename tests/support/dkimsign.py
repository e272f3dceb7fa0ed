"""DKIM signing for tests: a fixed test-only RSA key (tests/support/dkim_test_key.pem).

``sign(message, domain)`` signs with selector ``test``; ``publish(dns, domain)`` puts the
public key into the loopback test DNS server at ``test._domainkey.<domain>``.
"""
from __future__ import annotations

import re
from pathlib import Path

import dkim

KEY = Path(__file__).with_name("dkim_test_key.pem")
PUBLIC = Path(__file__).with_name("dkim_test_key.pub")  # base64 DER of the public key
SELECTOR = "test"


def sign(message: bytes, domain: str, selector: str = SELECTOR, headers=(b"from", b"to", b"subject", b"date")) -> bytes:
    """``message`` (CRLF line ends) with a DKIM-Signature for ``domain`` on top."""
    signature = dkim.sign(message, selector.encode(), domain.encode(), KEY.read_bytes(),
                          include_headers=list(headers))
    return signature + message


def public_key_record() -> str:
    """The DKIM key record (RFC 6376 section 3.6.1) for the test key."""
    return f"v=DKIM1; k=rsa; p={PUBLIC.read_text().strip()}"


def publish(dns, domain: str, selector: str = SELECTOR) -> None:
    dns.add(f"{selector}._domainkey.{domain}", "TXT", public_key_record())


def split_message(message: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """(headers as (name, value) with folding kept, body) of a CRLF message, as an MTA passes them."""
    head, _, body = message.partition(b"\r\n\r\n")
    fields = []
    for line in re.split(rb"\r\n(?![ \t])", head):
        name, _, value = line.partition(b":")
        fields.append((name.decode(), value.decode()))
    return fields, body
