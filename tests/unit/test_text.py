"""Tests for spfmilter.text: cleaning untrusted text, SMTP reply text, quoting, folding."""
from __future__ import annotations

import re

import pytest

from spfmilter.text import (
    REPLY_TEXT_LIMIT,
    VALUE_LIMIT,
    clean,
    clip_address,
    comment_text,
    dot_atom_or_quoted,
    fold,
    is_dot_atom,
    log_address,
    log_value,
    printable,
    quoted_string,
    reply_text,
    same_host,
    strip_comments,
    unquote,
)
from tests.support.terminal import safe_lines

SURROGATES = b"caf\xc3\xa9-\xff\xfe".decode("utf-8", "surrogateescape")  # "café-" + two lone surrogates


# --------------------------------------------------------------------------- clean()

@pytest.mark.parametrize("raw, expected", [
    ("mail.example.org", "mail.example.org"),
    ("a\rb", "a?b"),
    ("a\nb", "a?b"),
    ("a\r\nb", "a??b"),
    ("a\x00b", "a?b"),
    ("a\tb", "a?b"),
    ("a\x7fb", "a?b"),
    ("a\x1bb", "a?b"),  # ESC
    ("a\x80b", "a?b"),  # C1 controls
    ("a\x85b", "a?b"),  # NEL
    ("a\x9fb", "a?b"),
    ("a\u2028b", "a?b"),  # LINE SEPARATOR
    ("a\u2029b", "a?b"),  # PARAGRAPH SEPARATOR
    ("a\u200bb", "a?b"),  # ZERO WIDTH SPACE (format character)
    ("a\ufeffb", "a?b"),  # BOM
    ("a\ue000b", "a?b"),  # private use
    ("a\U000e0001b", "a?b"),  # LANGUAGE TAG (format)
    (SURROGATES, "café-??"),
    ("a\udc80b", "a?b"),
    ("a\u00a0b", "a b"),  # NO-BREAK SPACE becomes a plain space
    ("a\u3000b", "a b"),  # IDEOGRAPHIC SPACE
    ("Grüße, Jürgen", "Grüße, Jürgen"),
    ("пример.рф", "пример.рф"),
    ("例え.テスト", "例え.テスト"),
    ("emoji 😀", "emoji 😀"),
    ("; ( ) \" \\ @ % = <>", "; ( ) \" \\ @ % = <>"),
    ("", ""),
    (None, ""),
    (b"bytes\xff\r\n", "bytes\ufffd??"),
    (42, "42"),
])
def test_clean_replaces_controls_and_keeps_letters(raw, expected):
    assert clean(raw) == expected


@pytest.mark.parametrize("char", [chr(c) for c in range(0x20)] + ["\x7f"]
                         + [chr(c) for c in range(0x80, 0xA0)] + ["\u2028", "\u2029", "\udcff"])
def test_clean_never_lets_a_control_through(char):
    assert clean(f"x{char}y") == "x?y"


@pytest.mark.parametrize("length, limit, expected_length, truncated", [
    (10, VALUE_LIMIT, 10, False),
    (VALUE_LIMIT, VALUE_LIMIT, VALUE_LIMIT, False),
    (VALUE_LIMIT + 1, VALUE_LIMIT, VALUE_LIMIT, True),
    (2000, VALUE_LIMIT, VALUE_LIMIT, True),
    (2000, 20, 20, True),
    (5, 3, 3, True),
])
def test_clean_caps_length(length, limit, expected_length, truncated):
    result = clean("a" * length, limit)
    assert len(result) == expected_length
    assert result.endswith("...") is truncated
    if truncated:
        assert result == "a" * (limit - 3) + "..."


def test_clean_default_limit_is_256():
    assert VALUE_LIMIT == 256
    assert clean("x" * 1000) == "x" * 253 + "..."


# --------------------------------------------------------------------------- reply_text()

@pytest.mark.parametrize("raw, expected", [
    ("plain text", "plain text"),
    ("100% sure", "100? sure"),
    ("%s%n%%", "?s?n??"),
    ("line1\r\nline2", "line1??line2"),
    ("tab\there", "tab?here"),
    ("Grüße", "Gr??e"),
    ("a\u2028b", "a?b"),
    ("  lots   of\u00a0\u00a0space  ", "lots of space"),
    (SURROGATES, "caf?-??"),
    ("", ""),
])
def test_reply_text_is_printable_ascii(raw, expected):
    assert reply_text(raw) == expected


@pytest.mark.parametrize("raw", [
    "x" * 5000,
    "ab " * 2000,
    "\r\n%" * 1000,
    "ü" * 1000,
    "a\x00" * 600,
])
def test_reply_text_capped_and_safe(raw):
    result = reply_text(raw)
    assert len(result) <= REPLY_TEXT_LIMIT == 400
    assert re.fullmatch(r"[\x20-\x7e]*", result)
    assert "%" not in result


def test_reply_text_long_value_is_cut_with_ellipsis():
    assert reply_text("y" * 1000) == "y" * 397 + "..."
    assert reply_text("z" * 50, limit=20) == "z" * 17 + "..."


# --------------------------------------------------------------------------- quoting

@pytest.mark.parametrize("raw, expected", [
    ("abc", '"abc"'),
    ("", '""'),
    ('a"b', '"a\\"b"'),
    ("a\\b", '"a\\\\b"'),
    ('\\"', '"\\\\\\""'),
    ("a b;c", '"a b;c"'),
])
def test_quoted_string(raw, expected):
    assert quoted_string(raw) == expected


@pytest.mark.parametrize("text, expected", [
    ("example.org", True),
    ("a+b=c!#$%&'*/?^_`{|}~-", True),
    ("a..b", False),
    (".a", False),
    ("a.", False),
    ("", False),
    ("a b", False),
    ("a@b", False),
    ("a;b", False),
    ('a"b', False),
    ("2001:db8::1", False),
    ("ü", False),
])
def test_is_dot_atom(text, expected):
    assert is_dot_atom(text) is expected


@pytest.mark.parametrize("raw, expected", [
    ("mail.example.org", "mail.example.org"),
    ("x; action=accept", '"x; action=accept"'),
    ("a\r\nb", "a??b"),
    ('say "hi"', '"say \\"hi\\""'),
    ("user@example.org", '"user@example.org"'),
])
def test_dot_atom_or_quoted(raw, expected):
    assert dot_atom_or_quoted(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("plain", "plain"),
    ("a (b) c", "a \\(b\\) c"),
    ("back\\slash", "back\\\\slash"),
    ("x)\r\n(y", "x\\)??\\(y"),
])
def test_comment_text(raw, expected):
    assert comment_text(raw) == expected


# --------------------------------------------------------------------------- fold()

FOLD_VALUES = [
    "",
    "short",
    "mx.test; spf=pass (sender domain example.org authorizes 192.0.2.1) smtp.mailfrom=user@example.org",
    " ".join(["word"] * 60),
    " ".join(f"w{i}" * (i % 7 + 1) for i in range(80)),
    "x" * 200,  # one word longer than a line: cannot be folded
    "a " + "x" * 200 + " b c d",
    "x" * 64 + "  " + "y" * 100,  # run of spaces where the break falls
    "x" * 75 + " ",  # trailing space right at the limit
    "x" * 60 + "     " + "y" * 10 + "   ",
    "   leading spaces and " + "z" * 70,
    "a  b   c    d     e      f " * 10,
    'pass (mx.test: x) receiver=mx.test; client-ip=192.0.2.1; envelope-from="a b c d e f g h i j k l m n o"',
]


@pytest.mark.parametrize("name", ["Authentication-Results", "Received-SPF", "X"])
@pytest.mark.parametrize("value", FOLD_VALUES)
def test_fold_round_trips_and_respects_width(name, value):
    folded = fold(name, value)
    assert folded.replace("\n", "") == value  # unfolding gives back exactly the value
    lines = folded.split("\n")
    for index, line in enumerate(lines):
        if index:
            assert line.startswith(" "), "a break may only come before a space"
            assert line.strip(), "no line may consist of white space only (RFC 5322 3.2.2)"
        full = f"{name}: {line}" if index == 0 else line
        # Longer only when the words do not allow better: a single word that does not
        # fit on a line by itself, or trailing spaces (there is no break before them).
        assert len(full.rstrip()) <= 78 or len(line.split()) <= 1, full


@pytest.mark.parametrize("name, value, expected", [
    ("Received-SPF", "x" * 64 + "  " + "y" * 10, "x" * 64 + "\n  " + "y" * 10),  # break before the run
    ("X", "x" * 75 + " ", "x" * 75 + " "),  # a trailing space is never put on a line of its own
    ("X", "a a a ", "a a a "),
    ("X", "x" * 75 + " y", "x" * 75 + "\n y"),
    ("X", "x" * 73 + " y", "x" * 73 + " y"),  # exactly 78 characters: no break
    ("X", "", ""),
])
def test_fold_exact_breaks(name, value, expected):
    assert fold(name, value) == expected


def test_fold_breaks_before_space_near_width():
    value = " ".join(["abcdefghi"] * 20)
    folded = fold("Authentication-Results", value)
    lines = folded.split("\n")
    assert len(lines) > 1
    # the first line is filled as far as possible without passing 78 characters
    first = "Authentication-Results: " + lines[0]
    assert len(first) <= 78 and len(first) + len(" abcdefghi") > 78
    assert all(len(line) <= 78 for line in lines[1:])


LONG_SENDER = '"' + "a" * 239 + '@bank.example"@attacker.example'


@pytest.mark.parametrize("text, limit, expected", [
    ("a@b.example", 256, "a@b.example"),
    ("a" * 30 + "@b.example", 20, "a" * 7 + "...@b.example"),
    ("x" * 30, 20, "x" * 17 + "..."),  # no domain: a plain cut
    ("a@" + "d" * 30, 20, "a@" + "d" * 15 + "..."),  # a domain that cannot fit: a plain cut
])
def test_clip_address(text, limit, expected):
    assert clip_address(text, limit) == expected
    assert len(clip_address(text, limit)) <= limit


def test_a_long_sender_keeps_the_domain_that_was_checked():
    clipped = clip_address(LONG_SENDER)
    assert clipped.endswith("...@attacker.example") and len(clipped) == 256
    assert clean(LONG_SENDER).endswith("@bank.example...")  # what a plain cut would show
    assert log_address(LONG_SENDER).endswith('...@attacker.example"')


@pytest.mark.parametrize("value, logged", [
    ("plain.token@x", "plain.token@x"),
    ("x; reason=expired", '"x; reason=expired"'),
    ('a"b', '"a\\"b"'),
    ("two words", '"two words"'),
    ("", '""'),
])
def test_log_value_quotes_anything_that_could_add_a_field(value, logged):
    assert log_value(value) == logged


# --------------------------------------------------------------------------- printable()

@pytest.mark.parametrize("raw,shown", [
    ("plain text", "plain text"),
    ("a\r\nInjected: yes", "a\\r\\nInjected: yes"),
    ("tab\there", "tab\\there"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("nul\x00del\x7f", "nul\\x00del\\x7f"),
    ("c1\x85", "c1\\x85"),
    ("line\u2028sep\u2029", "line\\u2028sep\\u2029"),
    ("bidi\u202eevil", "bidi\\u202eevil"),
    ("nbsp\xa0", "nbsp\\xa0"),
    ("back\\slash", "back\\\\slash"),
    ("caf\u00e9", "caf\u00e9"),
    (b"bytes\xff\n", "bytes\\xff\\n"),
    ("bad\udcff", "bad\\xff"),
    (None, ""),
])
def test_printable(raw, shown):
    assert printable(raw) == shown
    safe_lines(printable(raw))


def test_printable_caps_length():
    assert printable("x" * 30, limit=10) == "x" * 10 + "... (20 more characters)"


# --------------------------------------------------------------------------- reading header values

@pytest.mark.parametrize("raw, expected", [
    ("a (comment) b", "a  b"),
    ("a (outer (nested) still) b", "a  b"),
    ("a (with \\) quoted-pair) b", "a  b"),
    ('a "(not a comment)" b', 'a "(not a comment)" b'),
    ('a "quoted \\" pair" (c) b', 'a "quoted \\" pair"  b'),
    ("a ) stray b", "a ) stray b"),
    ("a (unterminated", "a "),
    ("", ""),
])
def test_strip_comments(raw, expected):
    assert strip_comments(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ('"mx.example.com"', "mx.example.com"),
    ('"a\\"b\\\\c"', 'a"b\\c'),
    ('""', ""),
    ('"', '"'),
    ("plain", "plain"),
    ('"open', '"open'),
])
def test_unquote(raw, expected):
    assert unquote(raw) == expected


@pytest.mark.parametrize("a, b, same", [
    ("mx.example.com", "MX.Example.COM.", True),
    (" mx.example.com ", "mx.example.com", True),
    ("mx.example.com", "mx.example.com.evil", False),
    ("xmx.example.com", "mx.example.com", False),
    ("", ".", True),
])
def test_same_host(a, b, same):
    assert same_host(a, b) is same
