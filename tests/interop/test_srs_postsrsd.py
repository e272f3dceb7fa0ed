"""spfmilter's SRS against PostSRSd 1.x with the same secret: both directions, byte for byte.

* what we sign, PostSRSd reverses, and what PostSRSd signs, we reverse;
* for the same address on the same day both write exactly the same SRS0/SRS1 address;
* a forgery either refuses is refused by the other too.
"""
from __future__ import annotations

import time

import pytest

from spfmilter.srs import SrsError, SrsKeys, forward, reverse
from tests.support.postsrsd import PostSRSd, postsrsd_available
from tests.support.skips import require

require(postsrsd_available, "PostSRSd")

DOMAIN = "srs.test"
SECRET = "interop-secret-0123456789"
OTHER = "older-secret-abcdefghij"
ADDRESSES = ["alice@example.com", "Bob.Smith@Mixed.Example.ORG", "x+tag@sub.example.net", "a=b@example.org",
             "user_1@example.co.uk"]


@pytest.fixture(scope="module")
def srsd(tmp_path_factory):
    with PostSRSd(tmp_path_factory.mktemp("postsrsd"), DOMAIN, [SECRET, OTHER]) as instance:
        yield instance


@pytest.fixture(scope="module")
def srsd6(tmp_path_factory):
    """hash length 6, minimum 4, separator +"""
    with PostSRSd(tmp_path_factory.mktemp("postsrsd6"), DOMAIN, [SECRET], separator="+", hash_length=6,
                  hash_min=4) as instance:
        yield instance


KEYS = SrsKeys((SECRET.encode(), OTHER.encode()))


def same_day(check):
    """Run check() again if a UTC midnight fell in between (the timestamp would differ)."""
    for _ in range(2):
        day = int(time.time()) // 86400
        result = check()
        if int(time.time()) // 86400 == day:
            return result
    raise AssertionError("the day changed twice")


@pytest.mark.parametrize("address", ADDRESSES)
def test_we_write_exactly_what_postsrsd_writes_and_each_reverses_the_other(srsd, address):
    ours, theirs = same_day(lambda: (forward(address, DOMAIN, KEYS, time.time()), srsd.forward(address)))
    assert ours == theirs
    assert srsd.reverse(ours) == address
    assert reverse(theirs, KEYS, time.time()) == address


def test_srs1_both_ways(srsd):
    first_hop = "SRS0=abcd=JM=orig.example=bob@first.example"
    ours = forward(first_hop, DOMAIN, KEYS, time.time())
    assert ours == srsd.forward(first_hop)
    assert srsd.reverse(ours) == first_hop
    assert reverse(srsd.forward(first_hop), KEYS, time.time()) == first_hop
    # an SRS1 of yet another hop keeps its first hop in both implementations
    srs1 = "SRS1=wxyz=first.example==abcd=JM=orig.example=bob@second.example"
    assert forward(srs1, DOMAIN, KEYS, time.time()) == srsd.forward(srs1)


def test_other_parameters_agree(srsd6):
    keys = SrsKeys((SECRET.encode(),), hash_length=6, hash_min_length=4, separator="+")
    ours, theirs = same_day(lambda: (forward("alice@example.com", DOMAIN, keys, time.time()),
                                     srsd6.forward("alice@example.com")))
    assert ours == theirs and ours.startswith("SRS0+")
    assert srsd6.reverse(ours) == "alice@example.com"
    # truncated to the minimum length: both still accept; below it, both refuse
    given = ours.split("=")[0][5:]
    four = ours.replace(given, given[:4], 1)
    three = ours.replace(given, given[:3], 1)
    assert srsd6.reverse(four) == "alice@example.com" == reverse(four, keys, time.time())
    assert srsd6.reverse(three) is None
    with pytest.raises(SrsError):
        reverse(three, keys, time.time())


def test_the_second_secret_verifies_in_both(srsd):
    old_only = SrsKeys((OTHER.encode(),))
    signed = forward("carol@example.com", DOMAIN, old_only, time.time())
    assert srsd.reverse(signed) == "carol@example.com"
    assert reverse(signed, KEYS, time.time()) == "carol@example.com"


def test_case_mangled_postsrsd_addresses_verify_with_us(srsd):
    theirs = srsd.forward("dave@example.com")
    assert reverse(theirs.lower(), KEYS, time.time()) == "dave@example.com"
    tag, given, rest = theirs.split("=", 2)
    assert reverse(f"{tag}={given.swapcase()}={rest}", KEYS, time.time()) == "dave@example.com"


@pytest.mark.parametrize("mangle", ["hash", "local", "domain", "secret", "expired"])
def test_forgeries_are_refused_by_both(srsd, mangle):
    now = time.time()
    if mangle == "secret":
        forged = forward("eve@example.com", DOMAIN, SrsKeys((b"not-the-secret-at-all",)), now)
    elif mangle == "expired":
        forged = forward("eve@example.com", DOMAIN, KEYS, now - 30 * 86400)
    else:
        good = forward("eve@example.com", DOMAIN, KEYS, now)
        tag, given, stamp, domain, local = good.split("=", 4)
        if mangle == "hash":
            given = ("Q" if given[0] != "Q" else "R") + given[1:]
        elif mangle == "local":
            local = local.replace("eve", "mallory")
        else:
            domain = "evil.example"
        forged = "=".join((tag, given, stamp, domain, local))
    assert srsd.reverse(forged) is None
    with pytest.raises(SrsError):
        reverse(forged, KEYS, now)
