"""The SRS codec (spfmilter.srs): tables and properties; PostSRSd interop is in tests/interop."""
from __future__ import annotations

import os
import re
import stat

import pytest

from spfmilter.srs import (DAY, SecretsError, SrsError, SrsKeys, check_hash, forward, load_secrets, reverse,
                           sign, split_address, srs_tag, timestamp, timestamp_age, write_secrets_file)

KEYS = SrsKeys((b"first-secret-0123456789",))
NOW = 1_795_000_000.0  # a fixed moment; days since the epoch mod 1024 decide the timestamp
US = "fwd.example"


def test_srs0_shape_and_round_trip():
    srs = forward("alice@example.com", US, KEYS, NOW)
    assert re.fullmatch(r"SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=example\.com=alice@fwd\.example", srs), srs
    assert srs.split("=")[2] == timestamp(NOW)
    assert reverse(srs, KEYS, NOW) == "alice@example.com"


def test_timestamp_is_the_day_number_mod_1024_in_base32():
    day = int(NOW // DAY) % 1024
    stamp = timestamp(NOW)
    assert "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".index(stamp[0]) * 32 + \
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".index(stamp[1]) == day
    assert timestamp_age(stamp, NOW) == 0
    assert timestamp_age(stamp.lower(), NOW + 3 * DAY) == 3
    # the 1024-day cycle wraps: a stamp from "day 1023" is 2 days old on "day 1"
    assert timestamp_age("77", 1025 * DAY + 10) == 2


@pytest.mark.parametrize("days,ok", [(0, True), (21, True), (22, False), (1000, False)])
def test_maximum_age(days, ok):
    srs = forward("alice@example.com", US, KEYS, NOW)
    later = NOW + days * DAY
    if ok:
        assert reverse(srs, KEYS, later) == "alice@example.com"
    else:
        with pytest.raises(SrsError) as info:
            reverse(srs, KEYS, later)
        assert info.value.reason == "expired"


def test_a_stamp_from_the_future_counts_as_old():
    srs = forward("alice@example.com", US, KEYS, NOW + 5 * DAY)
    with pytest.raises(SrsError, match="expired"):
        reverse(srs, KEYS, NOW)


def test_srs0_of_another_forwarder_becomes_srs1_and_reverses_to_it():
    first = forward("alice@example.com", "first.example", SrsKeys((b"their-secret-0123456789",)), NOW)
    second = forward(first, US, KEYS, NOW)
    assert second.startswith("SRS1=") and second.endswith("@fwd.example")
    assert "=first.example==" in second  # the first hop is kept, its part follows unchanged
    assert second.split("==", 1)[1].rsplit("@", 1)[0] == first[5:].rsplit("@", 1)[0]
    assert reverse(second, KEYS, NOW) == first


def test_srs1_is_re_signed_keeping_the_first_hop():
    srs1 = "SRS1=abcd=first.example==HHHH=TT=example.com=alice@second.example"
    third = forward(srs1, US, KEYS, NOW)
    assert third.startswith("SRS1=") and third.endswith("=first.example==HHHH=TT=example.com=alice@fwd.example")
    assert reverse(third, KEYS, NOW) == "SRS0=HHHH=TT=example.com=alice@first.example"


def test_own_domain_is_not_rewritten():
    assert forward("bob@FWD.example", US, KEYS, NOW) == "bob@FWD.example"


def test_case_changed_and_base64url_hashes_verify():
    srs = forward("alice@example.com", US, KEYS, NOW)
    assert reverse(srs.lower(), KEYS, NOW) == "alice@example.com"
    assert reverse(srs.upper().replace("FWD.EXAMPLE", "fwd.example"), KEYS, NOW) == "ALICE@EXAMPLE.COM"
    given = srs.split("=")[1]
    url = given.replace("+", "-").replace("/", "_")
    assert check_hash(KEYS, url, timestamp(NOW), "example.com", "alice") is None


def test_hash_alphabet_folding_finds_a_real_plus_or_slash():
    # find an address whose hash contains + or / and check its base64url form verifies
    for n in range(200):
        srs = forward(f"user{n}@example.com", US, KEYS, NOW)
        given = srs.split("=")[1]
        if "+" in given or "/" in given:
            url = srs.replace(given, given.replace("+", "-").replace("/", "_"), 1)
            assert reverse(url, KEYS, NOW) == f"user{n}@example.com"
            return
    pytest.fail("no hash with + or / in 200 tries")


def test_every_secret_verifies_but_the_first_signs():
    old = SrsKeys((b"old-secret-0123456789ab",))
    rotated = SrsKeys((b"new-secret-0123456789ab", b"old-secret-0123456789ab"))
    signed_before = forward("alice@example.com", US, old, NOW)
    assert reverse(signed_before, rotated, NOW) == "alice@example.com"
    signed_now = forward("alice@example.com", US, rotated, NOW)
    assert signed_now != signed_before
    with pytest.raises(SrsError, match="does not match"):
        reverse(signed_now, old, NOW)


@pytest.mark.parametrize("tamper", [
    lambda s: s.replace("alice@", "mallory@"),
    lambda s: s.replace("=example.com=", "=evil.example="),
    lambda s: re.sub(r"^SRS0=(....)", lambda m: "SRS0=" + ("AAAA" if m.group(1) != "AAAA" else "BBBB"), s),
])
def test_tampered_addresses_are_refused(tamper):
    srs = forward("alice@example.com", US, KEYS, NOW)
    with pytest.raises(SrsError) as info:
        reverse(tamper(srs), KEYS, NOW)
    assert info.value.reason == "bad-hash"


def test_wrong_secret_is_refused():
    srs = forward("alice@example.com", US, SrsKeys((b"attacker-guess-123456789",)), NOW)
    with pytest.raises(SrsError, match="does not match"):
        reverse(srs, KEYS, NOW)


def test_truncated_hash_is_refused_below_the_minimum():
    srs = forward("alice@example.com", US, KEYS, NOW)
    given = srs.split("=")[1]
    short = srs.replace(given, given[:3], 1)
    with pytest.raises(SrsError) as info:
        reverse(short, KEYS, NOW)
    assert info.value.reason == "hash-too-short"
    lenient = SrsKeys(KEYS.secrets, hash_length=4, hash_min_length=3)
    assert reverse(short, lenient, NOW) == "alice@example.com"


def test_longer_hashes_and_other_separators():
    keys = SrsKeys(KEYS.secrets, hash_length=8, hash_min_length=6, separator="+")
    srs = forward("alice@example.com", US, keys, NOW)
    assert srs.startswith("SRS0+") and len(srs.split("=")[0]) == len("SRS0+") + 8
    assert reverse(srs, keys, NOW) == "alice@example.com"
    srs1 = forward(forward("a@example.com", "first.example", keys, NOW), US, keys, NOW)
    assert srs1.startswith("SRS1+") and "=first.example=+" in srs1
    assert reverse(srs1, keys, NOW).startswith("SRS0+")


@pytest.mark.parametrize("address", [
    "SRS0=abcd=XY@fwd.example", "SRS0=abcd=XY=example.com@fwd.example", "SRS0===XY=a=b@fwd.example",
    "SRS0=abcd=X1=example.com=alice@fwd.example",  # 1 is not base32
    "SRS0=abcd=XYZ=example.com=alice@fwd.example",
    "SRS1=abcd=first.example@fwd.example", "SRS1=abcd==x@fwd.example", "SRS1=abcd=host=x@fwd.example",
])
def test_malformed_srs_addresses_are_refused_as_such(address):
    with pytest.raises(SrsError) as info:
        reverse(address, KEYS, NOW)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize("local,tag", [("SRS0=x", "SRS0"), ("srs1+x", "SRS1"), ("Srs0-x", "SRS0"),
                                       ("SRS2=x", ""), ("SRS0x", ""), ("alice", ""), ("", "")])
def test_srs_tag(local, tag):
    assert srs_tag(local) == tag


def test_not_srs_is_its_own_reason():
    with pytest.raises(SrsError) as info:
        reverse("alice@fwd.example", KEYS, NOW)
    assert info.value.reason == "not-srs"


@pytest.mark.parametrize("address", ["", "alice", "@example.com", "alice@", '"a b"@example.com',
                                     "a\r\nb@example.com", "alice@exa mple.com", "alice@exa=mple.com",
                                     "alice@-bad-.example"])
def test_addresses_that_cannot_be_rewritten(address):
    with pytest.raises(SrsError) as info:
        forward(address, US, KEYS, NOW)
    assert info.value.reason == "malformed"


def test_split_address_keeps_the_last_at():
    assert split_address("a.b+c@example.com") == ("a.b+c", "example.com")


def test_sign_is_over_lowercased_fields():
    assert sign(KEYS, "XY", "Example.COM", "Alice") == sign(KEYS, "xy", "example.com", "alice")


def test_keys_validation():
    with pytest.raises(ValueError):
        SrsKeys(())
    with pytest.raises(ValueError):
        SrsKeys((b"x" * 16,), hash_length=4, hash_min_length=5)
    with pytest.raises(ValueError):
        SrsKeys((b"x" * 16,), separator="/")


# ---------------------------------------------------------------- secrets file

def test_genkey_creates_a_private_file_and_rotation_keeps_the_old_secret(tmp_path):
    path = str(tmp_path / "srs-secrets")
    write_secrets_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    [first] = load_secrets(path)
    assert len(first) >= 16
    with pytest.raises(SecretsError, match="exists"):
        write_secrets_file(path)
    write_secrets_file(path, rotate=True)
    new, old = load_secrets(path)
    assert old == first and new != first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_secrets_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "srs-secrets"
    path.write_text("a-long-enough-secret-here\n")
    os.chmod(path, 0o644)
    with pytest.raises(SecretsError, match="accessible by others"):
        load_secrets(str(path))
    os.chmod(path, 0o640)  # root:spfmilter 0640 is the recommended setup
    assert load_secrets(str(path)) == (b"a-long-enough-secret-here",)


@pytest.mark.parametrize("text,problem", [("", "holds no secret"), ("# only a comment\n\n", "holds no secret"),
                                          ("short\n", "at least 8")])
def test_secrets_file_content_problems(tmp_path, text, problem):
    path = tmp_path / "srs-secrets"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(SecretsError, match=problem):
        load_secrets(str(path))


def test_missing_secrets_file_and_symlink(tmp_path):
    with pytest.raises(SecretsError, match="cannot read"):
        load_secrets(str(tmp_path / "missing"))
    target = tmp_path / "real"
    target.write_text("a-long-enough-secret-here\n")
    os.chmod(target, 0o600)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(SecretsError, match="cannot read"):
        load_secrets(str(tmp_path / "link"))
