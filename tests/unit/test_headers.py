"""Tests for spfmilter.headers: Authentication-Results, Received-SPF, forged headers, log lines."""
from __future__ import annotations

import itertools
import re

import authres
import pytest

from spfmilter.config import parse_text, replace
from spfmilter.headers import (
    AR_NAME,
    RSPF_NAME,
    authentication_results,
    authserv_id_of,
    is_forged,
    is_forged_authentication_results,
    is_forged_received_spf,
    log_line,
    received_spf,
    render,
    skip_line,
    spf_headers,
)
from spfmilter.policy import Action, Facts
from spfmilter.replies import Reply
from spfmilter.text import clean
from spfmilter.verify import Identity, SpfOutcome, SpfResult
from tests.support import spellings

IP = "192.0.2.1"
HELO = "mail.example.net"
SENDER = "alice@example.org"
ALL = list(SpfResult)


def config(extra: str = ""):
    return parse_text("authserv_id = mx.test\n" + extra)


CONFIG = config()
BOTH = config("header_type = both\n")


def helo_outcome(result=SpfResult.PASS, helo=HELO, **kw) -> SpfOutcome:
    return SpfOutcome(Identity.HELO, result, kw.pop("domain", helo), f"postmaster@{helo}", **kw)


def mailfrom_outcome(result=SpfResult.PASS, sender=SENDER, **kw) -> SpfOutcome:
    return SpfOutcome(Identity.MAILFROM, result, kw.pop("domain", sender.rpartition("@")[2]), sender, **kw)


def parse_ar(value: str):
    return authres.AuthenticationResultsHeader.parse(f"{AR_NAME}: {value}")


def unquote_pvalue(value: str) -> str:
    """authres keeps quoted-pairs; give the plain value (local part unquoted too)."""
    match = re.fullmatch(r'"((?:[^"\\]|\\.)*)"(@.*)', value, re.DOTALL)
    if match:
        return re.sub(r"\\(.)", r"\1", match.group(1)) + match.group(2)
    return re.sub(r"\\(.)", r"\1", value)  # ptext has no backslash, so any came from a quoted-pair


def header_text(value) -> str:
    """What a header can carry: the cleaned text with non-ASCII as '?' (RFC 5322 section 2.2)."""
    return "".join(char if char < "\x80" else "?" for char in clean(value))


def spf_properties(value: str) -> dict:
    header = parse_ar(value)
    assert header.authserv_id == "mx.test"
    assert [r.method for r in header.results] == ["spf", "spf"]
    found = {}
    for result in header.results:
        [prop] = result.properties
        assert prop.type == "smtp"
        found[prop.name] = (result.result, unquote_pvalue(prop.value))
    assert set(found) == {"helo", "mailfrom"}
    return found


_QUOTED = r'"(?:[^"\\]|\\.)*"'


def _skip_comment(text: str) -> str:
    """Remove one leading RFC 5322 comment (nested, with quoted-pairs)."""
    assert text.startswith("(")
    depth, index = 0, 0
    while True:
        char = text[index]
        if char == "\\":
            index += 2
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        index += 1
        if depth == 0:
            return text[index:]


def parse_received_spf(value: str):
    """(result, [(key, raw value), ...]) of an unfolded Received-SPF value (RFC 7208 section 9.1)."""
    result, rest = value.split(" ", 1)
    rest = _skip_comment(rest).lstrip()
    pairs = []
    pattern = re.compile(rf'([A-Za-z0-9-]+)=({_QUOTED}|[^\s;"]+)(?:; |$)')
    while rest:
        match = pattern.match(rest)
        assert match, f"not a key=value pair: {rest!r}"
        pairs.append((match.group(1), match.group(2)))
        rest = rest[match.end():]
    return result, pairs


def value_of(raw: str) -> str:
    return re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw


def split_log_line(line: str) -> list[str]:
    """Split on '; ' outside quoted-strings."""
    fields, current, in_quote, index = [], "", False, 0
    while index < len(line):
        char = line[index]
        if in_quote and char == "\\":
            current += line[index:index + 2]
            index += 2
            continue
        if char == '"':
            in_quote = not in_quote
        if not in_quote and line.startswith("; ", index):
            fields.append(current)
            current = ""
            index += 2
            continue
        current += char
        index += 1
    fields.append(current)
    return fields


# --------------------------------------------------------------------------- Authentication-Results

@pytest.mark.parametrize("helo_result, mailfrom_result", list(itertools.product(ALL, ALL)))
def test_authentication_results_every_result(helo_result, mailfrom_result):
    helo = helo_outcome(helo_result, problem="some problem")
    mailfrom = mailfrom_outcome(mailfrom_result, problem="other problem")
    value = authentication_results(helo, mailfrom, Facts(IP, HELO, SENDER), CONFIG)
    assert value.startswith("mx.test; spf=")
    assert spf_properties(value) == {
        "helo": (helo_result.value, HELO),
        "mailfrom": (mailfrom_result.value, SENDER),
    }


@pytest.mark.parametrize("result, comment", [
    (SpfResult.PASS, "sender domain example.org authorizes 192.0.2.1"),
    (SpfResult.FAIL, "sender domain example.org does not authorize 192.0.2.1"),
    (SpfResult.SOFTFAIL, "sender domain example.org probably does not authorize 192.0.2.1"),
    (SpfResult.NEUTRAL, "sender domain example.org makes no statement about 192.0.2.1"),
    (SpfResult.NONE, "sender domain example.org publishes no SPF policy"),
    (SpfResult.PERMERROR, "SPF policy of example.org is invalid: permanent error"),
    (SpfResult.TEMPERROR, "temporary error checking example.org: DNS failure"),
])
def test_authentication_results_exact_text(result, comment):
    value = authentication_results(helo_outcome(), mailfrom_outcome(result), Facts(IP, HELO, SENDER), CONFIG)
    assert value == ("mx.test; spf=pass (HELO name mail.example.net authorizes 192.0.2.1) "
                     f"smtp.helo=mail.example.net; spf={result.value} ({comment}) smtp.mailfrom={SENDER}")


def test_authentication_results_empty_identities_are_unknown():
    value = authentication_results(helo_outcome(SpfResult.NONE, helo="", domain=""),
                                   mailfrom_outcome(SpfResult.NONE, sender="", domain=""),
                                   Facts(None, "", ""), CONFIG)
    assert spf_properties(value) == {"helo": ("none", "unknown"), "mailfrom": ("none", "unknown")}


HOSTILE = [
    "mail.example.net",
    "a\rb",
    "a\nb",
    "evil\r\nX-Injected: yes",
    "nul\x00byte",
    "semi;colon",
    "x; spf=pass smtp.mailfrom=ceo@bank.example",
    "(paren",
    "paren)",
    "(a (nested) comment)",
    'dquote"inside',
    'back\\slash',
    '\\"',
    "user@example.org",
    "a@b@c.example",
    "@",
    "@example.org",
    "user@",
    "user@example.org.",
    "x@[192.0.2.1]",
    "us er@example.org",
    "spaces in helo",
    "  leading and trailing  ",
    "tab\there",
    "l" * 2000,
    ("ab " * 700).strip(),
    "jürgen@example.org",
    "пример@пример.рф",
    "bücher.example",
    "ünïcödé ünïcödé",
    b"\xff\xfe@example.org".decode("utf-8", "surrogateescape"),
    b"helo\xc0\x80".decode("utf-8", "surrogateescape"),
    "line\u2028sep\u2029para\x85nel",
    "\x1b[31mred",
    "",
]


@pytest.mark.parametrize("helo", HOSTILE)
def test_hostile_input_authentication_results(helo):
    for sender in HOSTILE:
        facts = Facts(IP, helo, sender)
        outcomes = (helo_outcome(SpfResult.FAIL, helo=helo, problem=sender),
                    mailfrom_outcome(SpfResult.PERMERROR, sender=sender, domain=helo, problem=helo))
        value = authentication_results(*outcomes, facts, CONFIG)
        assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]", value), (sender, value)
        props = spf_properties(value)
        assert props == {
            "helo": ("fail", header_text(helo) or "unknown"),
            "mailfrom": ("permerror", header_text(sender) or "unknown"),
        }, sender
        if helo.isascii() and sender.isascii() and clean(helo) and clean(sender):
            # representable as is: the parsed value is exactly the cleaned input
            assert props["helo"][1] == clean(helo)
            assert props["mailfrom"][1] == clean(sender)


@pytest.mark.parametrize("helo", HOSTILE)
def test_hostile_input_folded_headers(helo):
    for sender in HOSTILE:
        facts = Facts(IP, helo, sender)
        outcomes = (helo_outcome(SpfResult.SOFTFAIL, helo=helo, mechanism=helo),
                    mailfrom_outcome(SpfResult.TEMPERROR, sender=sender, domain=helo, problem=sender))
        headers = spf_headers(*outcomes, facts, BOTH)
        assert [name for name, _ in headers] == [AR_NAME, RSPF_NAME, RSPF_NAME]
        # A-R first, then Received-SPF for MAIL FROM, then for HELO
        for (name, value), outcome in zip(headers, (None, outcomes[1], outcomes[0])):
            # the only control character is the folding LF, always followed by a space
            assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]", value), value
            assert not re.search(r"\n(?! )", value), value
            assert value.isascii(), value
            assert all(line.strip() for line in value.split("\n")), f"white-space-only line in {value!r}"
            unfolded = value.replace("\n", "")
            if name == AR_NAME:
                assert unfolded == authentication_results(*outcomes, facts, BOTH)
                parse_ar(value)  # the folded form parses too
            else:
                assert unfolded == received_spf(outcome, facts, BOTH)
                result, pairs = parse_received_spf(unfolded)
                fields = {key: value_of(raw) for key, raw in pairs}
                assert (result, fields["identity"]) == (outcome.result.value, outcome.identity.value)
                assert fields["helo"] == header_text(helo)
                assert fields["envelope-from"] == header_text(sender)
                assert fields["receiver"] == "mx.test"


# --------------------------------------------------------------------------- Received-SPF

@pytest.mark.parametrize("result", ALL)
@pytest.mark.parametrize("identity", list(Identity))
def test_received_spf_pairs(result, identity):
    outcome_for = helo_outcome if identity is Identity.HELO else mailfrom_outcome
    outcome = outcome_for(result, mechanism="ip4:192.0.2.0/24", problem="void lookup limit")
    value = received_spf(outcome, Facts(IP, HELO, SENDER), CONFIG)
    parsed_result, pairs = parse_received_spf(value)
    assert parsed_result == result.value
    expected = [
        ("receiver", "mx.test"),
        ("client-ip", "192.0.2.1"),
        ("envelope-from", f'"{SENDER}"'),  # '@' is not atext: quoted
        ("helo", HELO),
        ("identity", identity.value),
        ("mechanism", '"ip4:192.0.2.0/24"'),
    ]
    if result in (SpfResult.PERMERROR, SpfResult.TEMPERROR):
        expected.append(("problem", '"void lookup limit"'))
    assert pairs == expected


def test_received_spf_exact():
    outcome = mailfrom_outcome(SpfResult.PASS, mechanism="mx")
    assert received_spf(outcome, Facts(IP, HELO, SENDER), CONFIG) == (
        "pass (mx.test: sender domain example.org authorizes 192.0.2.1) receiver=mx.test; "
        'client-ip=192.0.2.1; envelope-from="alice@example.org"; helo=mail.example.net; '
        "identity=mailfrom; mechanism=mx")


@pytest.mark.parametrize("mechanism, problem, result, keys", [
    (None, None, SpfResult.PASS, ["receiver", "client-ip", "envelope-from", "helo", "identity"]),
    ("default", None, SpfResult.NEUTRAL, ["receiver", "client-ip", "envelope-from", "helo", "identity", "mechanism"]),
    (None, "not a FQDN", SpfResult.NONE, ["receiver", "client-ip", "envelope-from", "helo", "identity"]),
    (None, "syntax error", SpfResult.PERMERROR,
     ["receiver", "client-ip", "envelope-from", "helo", "identity", "problem"]),
    (None, "timeout", SpfResult.TEMPERROR, ["receiver", "client-ip", "envelope-from", "helo", "identity", "problem"]),
    (None, None, SpfResult.PERMERROR, ["receiver", "client-ip", "envelope-from", "helo", "identity"]),
])
def test_received_spf_optional_keys(mechanism, problem, result, keys):
    outcome = mailfrom_outcome(result, mechanism=mechanism, problem=problem)
    _, pairs = parse_received_spf(received_spf(outcome, Facts(IP, HELO, SENDER), CONFIG))
    assert [key for key, _ in pairs] == keys


@pytest.mark.parametrize("client_ip, helo, sender, expected", [
    ("192.0.2.1", "mail.example.net", "a@b.example",
     {"client-ip": "192.0.2.1", "helo": "mail.example.net", "envelope-from": '"a@b.example"'}),
    ("2001:db8::1", "mail.example.net", "a@b.example",
     {"client-ip": '"2001:db8::1"', "helo": "mail.example.net", "envelope-from": '"a@b.example"'}),
    (None, "", "",
     {"client-ip": "unknown", "helo": '""', "envelope-from": '""'}),
    ("192.0.2.1", "[192.0.2.1]", "",
     {"helo": '"[192.0.2.1]"', "envelope-from": '""'}),
    ("192.0.2.1", "x; action=accept", 'a"b\\c',
     {"helo": '"x; action=accept"', "envelope-from": '"a\\"b\\\\c"'}),
    ("192.0.2.1", "evil\r\nX: y", "plain",
     {"helo": '"evil??X: y"', "envelope-from": "plain"}),
    ("192.0.2.1", "bücher.example", "jürgen@example.org",
     {"helo": "b?cher.example", "envelope-from": '"j?rgen@example.org"'}),
])
def test_received_spf_quoting(client_ip, helo, sender, expected):
    value = received_spf(mailfrom_outcome(SpfResult.NONE, sender=sender), Facts(client_ip, helo, sender), CONFIG)
    _, pairs = parse_received_spf(value)
    fields = dict(pairs)
    for key, raw in expected.items():
        assert fields[key] == raw


def test_received_spf_comment_escapes_parentheses():
    value = received_spf(helo_outcome(SpfResult.PASS, helo="a(b)c\\"), Facts(IP, "a(b)c\\", SENDER), CONFIG)
    assert value.startswith("pass (mx.test: HELO name a\\(b\\)c\\\\ authorizes 192.0.2.1) receiver=mx.test; ")


# --------------------------------------------------------------------------- spf_headers()

@pytest.mark.parametrize("header_type, names", [
    ("authentication-results", [AR_NAME]),
    ("received-spf", [RSPF_NAME, RSPF_NAME]),
    ("both", [AR_NAME, RSPF_NAME, RSPF_NAME]),
    ("none", []),
])
def test_spf_headers_names_and_order(header_type, names):
    cfg = config(f"header_type = {header_type}\n")
    headers = spf_headers(helo_outcome(SpfResult.NEUTRAL), mailfrom_outcome(SpfResult.FAIL),
                          Facts(IP, HELO, SENDER), cfg)
    assert [name for name, _ in headers] == names
    identities = [re.search(r"identity=(\w+)", value.replace("\n", "")).group(1)
                  for name, value in headers if name == RSPF_NAME]
    assert identities == (["mailfrom", "helo"] if identities else [])
    for name, value in headers:
        assert all(len(line) <= 78 for line in f"{name}: {value}".split("\n"))


def test_render():
    assert render([("A", "1\n 2"), ("B", "3")]) == "A: 1\n 2\nB: 3\n"


# --------------------------------------------------------------------------- forged headers

@pytest.mark.parametrize("value, forged", [
    ("mx.test; spf=pass smtp.mailfrom=a@b.example", True),
    ("MX.TEST; spf=pass", True),
    ("Mx.Test; none", True),
    ("mx.test.; spf=pass", True),
    ("(comment) mx.test; spf=pass", True),
    ("(nested (comment) here) mx.test; spf=pass", True),
    ("(comment with \\) escaped paren) mx.test; spf=pass", True),
    ('"mx.test"; spf=pass', True),
    ('"MX.test."; spf=pass', True),
    ("mx.test\r\n\t; spf=pass", True),
    ("mx.test\n ; spf=pass", True),
    ("mx.test\n\t; spf=pass", True),
    ("(folded\r\n comment)\r\n\tmx.test;\n\tspf=pass", True),
    ("\r\n mx.test;\r\n spf=pass", True),
    ("mx.test 1; spf=pass", True),
    ("mx.test 1 ; spf=pass", True),
    ("  mx.test;spf=pass", True),
    ("mx.test(c);spf=pass", True),
    ("mx.test", True),
    ("mx.test.evil.com; spf=pass", False),
    ("evil.mx.test; spf=pass", False),
    ("mx.tes; spf=pass", False),
    ("mx-test; spf=pass", False),
    ("evil; spf=pass (mx.test)", False),
    ("evil; spf=pass smtp.mailfrom=postmaster@mx.test", False),
    ("(mx.test) evil; spf=pass", False),
    ('"mx.test.evil"; spf=pass', False),
    ("", False),
    ("(only a comment)", False),
    ("; spf=pass", False),
])
def test_is_forged_authentication_results(value, forged):
    assert is_forged_authentication_results(value, CONFIG) is forged
    assert is_forged(AR_NAME, value, CONFIG) is forged
    assert is_forged("authentication-results", value, CONFIG) is forged


def test_authserv_id_of():
    assert authserv_id_of("(c) mx.test 1; spf=pass") == "mx.test"
    assert authserv_id_of('"a\\"b"; none') == 'a"b'
    assert authserv_id_of("") is None


def test_our_own_header_counts_as_forged_when_it_comes_back():
    value = authentication_results(helo_outcome(), mailfrom_outcome(), Facts(IP, HELO, SENDER), CONFIG)
    assert is_forged_authentication_results(value, CONFIG)
    assert not is_forged_authentication_results(value, replace(CONFIG, authserv_id="other.test"))


@pytest.mark.parametrize("value, forged", [
    ("pass (mx.test: domain of a@b designates 192.0.2.1) receiver=mx.test; client-ip=192.0.2.1", True),
    ("pass receiver=MX.Test; identity=mailfrom", True),
    ("pass receiver=mx.test.; identity=mailfrom", True),
    ('pass receiver="mx.test"; identity=mailfrom', True),
    ('pass receiver="MX.TEST."; identity=mailfrom', True),
    ("pass receiver = mx.test; identity=mailfrom", True),
    ("pass receiver\t=\tmx.test", True),
    ("pass client-ip=192.0.2.1;receiver=mx.test", True),
    ("pass (comment)\r\n\treceiver=mx.test;\r\n identity=helo", True),
    ("pass receiver=\r\n mx.test; identity=helo", True),
    ("pass RECEIVER=mx.test", True),
    ("pass (x) receiver=(comment)mx.test", True),
    ('pass helo="a;b"; receiver=mx.test', True),
    ("receiver=mx.test", True),
    ("pass (mx.test: domain of a@b designates 192.0.2.1) receiver=other.example; client-ip=192.0.2.1", False),
    ("pass (receiver=mx.test) receiver=other.example", False),
    ("pass (mx.test: receiver=mx.test) client-ip=192.0.2.1", False),
    ("pass receiver=mx.test.evil.com", False),
    ("pass receiver=evil.mx.test", False),
    ("pass xreceiver=mx.test", False),
    ("pass not-receiver=mx.test", False),
    ('pass receiver=other.example; helo="x receiver=mx.test y"', False),
    ('pass receiver=other.example; envelope-from="a;receiver=mx.test;@b.example"', False),
    ('pass receiver=other.example; helo="x; receiver=mx.test"', False),
    ("pass", False),
    ("", False),
])
def test_is_forged_received_spf(value, forged):
    assert is_forged_received_spf(value, CONFIG) is forged
    assert is_forged(RSPF_NAME, value, CONFIG) is forged
    assert is_forged("received-spf", value, CONFIG) is forged


def test_our_own_received_spf_counts_as_forged_when_it_comes_back():
    other = parse_text("authserv_id = other.test\nheader_type = received-spf\n")
    headers = spf_headers(helo_outcome(), mailfrom_outcome(), Facts(IP, "x receiver=mx.test", SENDER), other)
    assert len(headers) == 2
    for name, value in headers:
        assert is_forged(name, value.replace("\n", "\r\n"), other)
        assert not is_forged(name, value, CONFIG)  # the hostile HELO is inside a quoted-string


@pytest.mark.parametrize("name", ["Received", "X-Spam-Status", "DKIM-Signature"])
def test_other_headers_are_never_forged(name):
    assert is_forged(name, "mx.test; spf=pass receiver=mx.test", CONFIG) is False


# --------------------------------------------------------------------------- log lines

def test_log_line_shape():
    outcome = mailfrom_outcome(SpfResult.FAIL, mechanism="-all")
    line = log_line(outcome, Facts(IP, HELO, SENDER, queue_id="4ABC123"), CONFIG, Action.REJECT,
                    Reply(550, "5.7.23", "SPF fail"))
    assert line == ("Fail; identity=mailfrom; client-ip=192.0.2.1; helo=mail.example.net; "
                    "envelope-from=alice@example.org; receiver=mx.test; mechanism=-all; action=reject; "
                    'reply="550 5.7.23 SPF fail"; queue-id=4ABC123')


@pytest.mark.parametrize("result, title", [
    (SpfResult.PASS, "Pass"),
    (SpfResult.FAIL, "Fail"),
    (SpfResult.SOFTFAIL, "Softfail"),
    (SpfResult.NEUTRAL, "Neutral"),
    (SpfResult.NONE, "None"),
    (SpfResult.PERMERROR, "PermError"),
    (SpfResult.TEMPERROR, "TempError"),
])
@pytest.mark.parametrize("identity", list(Identity))
def test_log_line_fields(result, title, identity):
    outcome_for = helo_outcome if identity is Identity.HELO else mailfrom_outcome
    outcome = outcome_for(result, problem="why not" if result is not SpfResult.PASS else None)
    fields = split_log_line(log_line(outcome, Facts(IP, HELO, SENDER), CONFIG, Action.ACCEPT))
    assert fields[0] == title
    keys = [field.split("=", 1)[0] for field in fields[1:]]
    expected = ["identity", "client-ip", "helo", "envelope-from", "receiver"]
    if result is not SpfResult.PASS:
        expected.append("problem")
    assert keys == expected + ["action"]
    assert dict(field.split("=", 1) for field in fields[1:])["identity"] == identity.value


@pytest.mark.parametrize("helo, sender", [
    ("x; action=accept", SENDER),
    ("x;action=accept", SENDER),
    ('x"; action=accept; y="', SENDER),
    ("x\\\"; action=accept", SENDER),
    (HELO, "a; action=accept@example.org"),
    ("evil\r\naction=accept", "a b"),
    ("x =y", "<>"),
    ("ünï; action=accept", "jürgen@example.org"),
])
def test_log_line_hostile_values_cannot_add_fields(helo, sender):
    facts = Facts("2001:db8::1", helo, sender, queue_id="Q1; action=accept")
    line = log_line(mailfrom_outcome(SpfResult.FAIL, sender=sender, problem="p; action=accept",
                                     mechanism="m; action=accept"), facts, CONFIG, Action.REJECT, Reply(550, "x;", "action=accept"))
    assert not re.search(r"[\x00-\x1f\x7f]", line)
    fields = split_log_line(line)
    assert fields[0] == "Fail"
    keys = [field.split("=", 1)[0] for field in fields[1:]]
    assert keys == ["identity", "client-ip", "helo", "envelope-from", "receiver", "mechanism", "problem",
                    "action", "reply", "queue-id"]
    values = dict(field.split("=", 1) for field in fields[1:])
    assert values["action"] == "reject"
    assert value_of(values["helo"]) == clean(helo)
    assert value_of(values["envelope-from"]) == clean(sender)


def test_log_line_null_sender_and_unknown_client():
    line = log_line(helo_outcome(SpfResult.NONE), Facts(None, "", ""), CONFIG, Action.ACCEPT)
    assert line == ('None; identity=helo; client-ip=unknown; helo=""; envelope-from=<>; receiver=mx.test; '
                    "action=accept")


@pytest.mark.parametrize("why, facts, expected", [
    ("local client", Facts(None, "localhost", "", local=True),
     "None; skipped=\"local client\"; client-ip=local; helo=localhost; envelope-from=<>; action=accept"),
    ("trusted network 127.0.0.0/8", Facts("127.0.0.1", "x; action=reject", SENDER, queue_id="Q1"),
     ('None; skipped="trusted network 127.0.0.0/8"; client-ip=127.0.0.1; helo="x; action=reject"; '
      "envelope-from=alice@example.org; action=accept; queue-id=Q1")),
])
def test_skip_line(why, facts, expected):
    line = skip_line(why, facts)
    assert line == expected
    assert [f.split("=", 1)[0] for f in split_log_line(line)][-1] in ("action", "queue-id")


# The spellings an adversarial review found (tests/support/spellings.py), for the id in the
# issue (mx.example.com) and for the short one the other tests use.
@pytest.mark.parametrize("our_id", ["mx.example.com", "mx.test"])
@pytest.mark.parametrize("template", spellings.HOSTILE)
def test_every_lenient_spelling_of_our_authserv_id_is_forged(template, our_id):
    value = spellings.spell(template, our_id)
    assert is_forged(AR_NAME, value, config_for(our_id)), value


@pytest.mark.parametrize("our_id", ["mx.example.com", "mx.test"])
@pytest.mark.parametrize("template", spellings.FOREIGN)
def test_foreign_and_near_miss_authserv_ids_are_kept(template, our_id):
    value = spellings.spell(template, our_id)
    assert not is_forged(AR_NAME, value, config_for(our_id)), value


@pytest.mark.parametrize("template, forged", [(t, True) for t in spellings.RECEIVER_HOSTILE]
                         + [(t, False) for t in spellings.RECEIVER_FOREIGN])
def test_received_spf_receiver_is_read_as_leniently(template, forged):
    value = spellings.spell(template, "mx.example.com")
    assert is_forged(RSPF_NAME, value, config_for("mx.example.com")) is forged, value


def config_for(our_id: str):
    return parse_text(f"authserv_id = {our_id}\n")
