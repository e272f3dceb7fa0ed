"""Self-test of tests/support/postsrsd.py, and PostSRSd 1.x's SRS algorithm pinned down.

A small independent reference (hmac + hashlib + base64 below) computes what PostSRSd must
produce; the tests compare it with the real daemon, so they fail if either is wrong:

* SRS0 hash: HMAC-SHA1(secret, TT + host + local), each part ASCII-lowercased, simply
  concatenated; the first N characters (default 4) of the *standard* base64 (``+/``) of
  the 20-byte digest;
* TT: days since the epoch, low 10 bits, as two base32 characters ``A-Z2-7`` (high first);
* SRS1 (forwarding an SRS0 address of another host H): ``SRS1=HASH=H==hash=TT=host=local``,
  HASH over H + the SRS0 local part after ``SRS0`` (separator included);
* reverse: hash compared case-insensitively; a timestamp at most 21 days old.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import socket
import time

import pytest

from tests.support.postsrsd import PostSRSd, postsrsd_available
from tests.support.skips import require

require(postsrsd_available, "PostSRSd")

DOMAIN = "srs.test"
SECRET = "tops3cret-for-tests"
OLD_SECRET = "retired-secret"
BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


# ------------------------------------------------------------------ independent reference
def ref_hash(secret: str, *parts: str, length: int = 4) -> str:
    data = "".join(parts).encode().lower()          # bytes.lower(): ASCII only, like C tolower
    digest = hmac.new(secret.encode(), data, hashlib.sha1).digest()
    return base64.b64encode(digest).decode()[:length]


def ref_stamp(day: int) -> str:
    return BASE32[(day >> 5) & 31] + BASE32[day & 31]


def today() -> int:
    return int(time.time()) // 86400


def ref_srs0(secret: str, address: str, day: int, domain: str = DOMAIN, sep: str = "=", length: int = 4) -> str:
    local, host = address.rsplit("@", 1)
    stamp = ref_stamp(day)
    return f"SRS0{sep}{ref_hash(secret, stamp, host, local, length=length)}={stamp}={host}={local}@{domain}"


def ref_srs1(secret: str, srs0_address: str, domain: str = DOMAIN, sep: str = "=") -> str:
    local, host = srs0_address.rsplit("@", 1)
    rest = local[4:]                                 # "=HHHH=TT=host=local", separator included
    return f"SRS1{sep}{ref_hash(secret, host, rest)}={host}={rest}@{domain}"


def same_day(check):
    """Run check(day) so that a UTC midnight between computing and asking cannot flake it."""
    for _ in range(2):
        day = today()
        result = check(day)
        if today() == day:
            return result
    raise AssertionError("the day changed twice")


@pytest.fixture(scope="module")
def srsd(tmp_path_factory):
    with PostSRSd(tmp_path_factory.mktemp("postsrsd"), DOMAIN, [SECRET, OLD_SECRET]) as instance:
        yield instance


# ------------------------------------------------------------------ harness
def test_harness_basics(srsd):
    assert srsd.proc is not None and srsd.proc.poll() is None
    assert srsd.forward_port != srsd.reverse_port
    assert oct(srsd.secrets_path.stat().st_mode & 0o777) == "0o600"
    assert srsd.secrets_path.read_text() == f"{SECRET}\n{OLD_SECRET}\n"


def test_forward_gives_srs0_in_our_domain_and_reverse_undoes_it(srsd):
    rewritten = srsd.forward("alice@example.com")
    assert rewritten is not None
    assert re.fullmatch(r"SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=example\.com=alice@srs\.test", rewritten), rewritten
    assert srsd.reverse(rewritten) == "alice@example.com"


def test_forward_hash_matches_independent_computation(srsd):
    for address in ("alice@example.com", "Bob.Smith@Mixed.Example.ORG", "x y%z@example.net"):
        got = same_day(lambda day, a=address: (srsd.forward(a), ref_srs0(SECRET, a, day)))
        assert got[0] == got[1], (address, got)
        assert srsd.reverse(got[0]) == address


def test_hash_ignores_case_of_address(srsd):
    lower = srsd.forward("carol@example.com")
    upper = srsd.forward("CAROL@EXAMPLE.COM")
    assert upper.split("=")[1] == lower.split("=")[1]
    assert upper.endswith("=EXAMPLE.COM=CAROL@srs.test")


def test_reverse_accepts_hash_and_stamp_in_any_case(srsd):
    rewritten = srsd.forward("dave@example.com")
    tag, hash_, rest = rewritten.split("=", 2)
    assert srsd.reverse(f"{tag}={hash_.swapcase()}={rest.lower()}") == "dave@example.com"


def test_tampered_hash_is_refused(srsd):
    rewritten = srsd.forward("alice@example.com")
    tag, hash_, rest = rewritten.split("=", 2)
    tampered = ("B" if hash_[0] != "B" else "C") + hash_[1:]
    assert srsd.reverse(f"{tag}={tampered}={rest}") is None
    code, text = srsd.query("reverse", f"{tag}={tampered}={rest}")
    assert (code, text) == (500, "Hash invalid in SRS address.")
    # the local part is covered by the hash too
    assert srsd.reverse(rewritten.replace("=alice@", "=mallory@")) is None
    assert srsd.reverse(f"{tag}={hash_[:3]}={rest}") is None        # shorter than the minimum


def test_retired_secret_still_verifies_but_does_not_sign(srsd):
    ours = same_day(lambda day: ref_srs0(OLD_SECRET, "erin@example.com", day))
    assert srsd.reverse(ours) == "erin@example.com"
    assert srsd.reverse(same_day(lambda day: ref_srs0("unknown", "erin@example.com", day))) is None


def test_timestamp_max_age_21_days(srsd):
    def ages(day):
        return {age: srsd.reverse(ref_srs0(SECRET, "frank@example.com", day - age)) for age in (0, 21, 22, -1)}
    assert same_day(ages) == {0: "frank@example.com", 21: "frank@example.com", 22: None, -1: None}


def test_own_domain_not_rewritten(srsd):
    assert srsd.forward("bob@srs.test") == "bob@srs.test"
    assert srsd.reverse("bob@srs.test") is None                      # not an SRS address


def test_own_srs_address_is_not_rewritten_again(srsd):
    rewritten = srsd.forward("alice@example.com")
    assert srsd.query("forward", rewritten) == (500, "Already rewritten")


def test_srs0_of_another_domain_becomes_srs1_and_back(srsd):
    foreign = "SRS0=abcd=JM=orig.example=Bob@Fwd.Example"
    srs1 = srsd.forward(foreign)
    assert srs1 == ref_srs1(SECRET, foreign), srs1
    assert srs1.startswith("SRS1=") and "=Fwd.Example==abcd=JM=orig.example=Bob@srs.test" in srs1
    assert srsd.reverse(srs1) == foreign
    tag, hash_, rest = srs1.split("=", 2)
    assert srsd.reverse(f"{tag}={'A' if hash_[0] != 'A' else 'B'}{hash_[1:]}={rest}") is None


def test_srs1_of_another_domain_is_re_signed(srsd):
    incoming = "SRS1=zzzz=first.example==abcd=JM=orig.example=bob@second.example"
    got = srsd.forward(incoming)
    expected_hash = ref_hash(SECRET, "first.example", "=abcd=JM=orig.example=bob")
    assert got == f"SRS1={expected_hash}=first.example==abcd=JM=orig.example=bob@srs.test"
    assert srsd.reverse(got) == "SRS0=abcd=JM=orig.example=bob@first.example"


def test_options_separator_hash_length_exclude(tmp_path):
    with PostSRSd(tmp_path / "opts", DOMAIN, [SECRET], separator="+", hash_length=6, hash_min=4,
                  exclude=["excl.test", ".sub.test"]) as srsd:
        got, want = same_day(lambda day: (srsd.forward("alice@example.com"),
                                          ref_srs0(SECRET, "alice@example.com", day, sep="+", length=6)))
        assert got == want
        hash_ = got[5:11]
        assert srsd.reverse(got) == "alice@example.com"
        assert srsd.reverse(got.replace(hash_, hash_[:4], 1)) == "alice@example.com"   # >= hash_min
        assert srsd.reverse(got.replace(hash_, hash_[:3], 1)) is None
        assert srsd.forward("u@excl.test") is None
        assert srsd.forward("u@a.sub.test") is None
        assert srsd.forward("u@sub.test").startswith("SRS0+")


def test_stop_ends_the_daemon(tmp_path):
    srsd = PostSRSd(tmp_path / "stop", DOMAIN, [SECRET]).start()
    proc, port = srsd.proc, srsd.forward_port
    srsd.stop()
    assert proc.returncode is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
