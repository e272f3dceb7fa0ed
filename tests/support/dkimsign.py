"""DKIM signing for tests: a fixed test-only RSA key (tests/support/dkim_test_key.pem).

``sign(message, domain)`` signs with selector ``test``; ``publish(dns, domain)`` puts the
public key into the loopback test DNS server at ``test._domainkey.<domain>``.
"""
from __future__ import annotations

import base64
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


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        head = bytes([length])
    else:
        raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
        head = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + head + content


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))  # leading 0: never negative


def rsa_key_record(modulus: int, exponent: int, pkcs1: bool = False) -> str:
    """A DKIM key record for an arbitrary RSA public key (SubjectPublicKeyInfo, RFC 5280 4.1.2.7;
    with ``pkcs1`` a bare RSAPublicKey, RFC 8017 A.1.1) -- e.g. a hostile one with a huge modulus
    and exponent, which need not belong to any private key."""
    rsa_public_key = _der(0x30, _der_int(modulus) + _der_int(exponent))
    if pkcs1:
        return f"v=DKIM1; k=rsa; p={base64.b64encode(rsa_public_key).decode()}"
    algorithm = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + _der(0x05, b""))  # rsaEncryption
    spki = _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_public_key))
    return f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"


def hostile_key_record(bits: int = 8192) -> str:
    """A key record with a ``bits``-bit modulus and a ``bits``-bit public exponent."""
    return rsa_key_record((1 << (bits - 1)) | 0x5DEECE66D | 1, (1 << (bits - 1)) | 0x10001)
