"""Tests for spfmilter.config: parsing, validation, error reporting and describe()."""
from __future__ import annotations

import dataclasses
import ipaddress
import math

import pytest

from spfmilter.config import (
    KEYS,
    Config,
    ConfigError,
    DnsServer,
    ErrorAction,
    FailHold,
    HeaderType,
    HeloRejectScope,
    LogDestination,
    MacroMatch,
    Mode,
    SocketSpec,
    TempErrorAction,
    defaults,
    describe,
    domain_matches,
    load,
    parse_domain_patterns,
    parse_text,
    whole_number,
)

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def parse(text: str) -> Config:
    return parse_text(text, "test.conf", authserv_id_default="default.test")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.problems


def fields_equal(a: Config, b: Config) -> bool:
    return all(getattr(a, f.name) == getattr(b, f.name) for f in dataclasses.fields(Config) if f.name != "source")


# --------------------------------------------------------------------------- defaults

EXPECTED_DEFAULTS = {
    "socket": SocketSpec("inet", "127.0.0.1", 8890),
    "mode": Mode.HEADER_ONLY,
    "header_type": HeaderType.AUTHENTICATION_RESULTS,
    "authserv_id": "default.test",
    "trusted_networks": LOOPBACK,
    "trust_authenticated": True,
    "trusted_helo_names": frozenset(),
    "trusted_ptr_domains": frozenset(),
    "trusted_spf_domains": (),
    "skip_macros": (),
    "helo_reject_results": frozenset({"fail"}),
    "mailfrom_reject_results": frozenset({"fail"}),
    "check_identities": frozenset({"helo", "mailfrom"}),
    "helo_reject_scope": HeloRejectScope.ALL,
    "require_pass_domains": frozenset(),
    "temperror_action": TempErrorAction.DEFER,
    "reject_text": "",
    "enhanced_status_codes": True,
    "exempt_recipients": ("postmaster", "abuse"),
    "dns_timeout": 20.0,  # RFC 7208 section 4.6.4
    "dns_servers": (),
    "dns_cache_size": 10000,
    "on_error": ErrorAction.TEMPFAIL,
    "workers": 1,
    "user": "",
    "group": "",
    "socket_mode": 0o660,
    "socket_group": "",
    "pid_file": "",
    "log_destination": LogDestination.STDERR,
    "log_level": "info",
    "syslog_facility": "mail",
    "srs_domain": "",
    "srs_secrets_file": "/etc/spfmilter/srs-secrets",
    "srs_hash_length": 4,
    "srs_hash_min_length": 4,
    "srs_max_age": 21,
    "srs_separator": "=",
    "local_domains": frozenset(),
    "srs_forward_table": "",
    "srs_exclude_domains": frozenset(),
    "srs_rewrite_trusted": False,
    "srs_socketmap": None,
    "socket_keep_link": True,
    "enforce_domains": frozenset(),
    "header_only_domains": frozenset(),
    "header_only_senders": frozenset(),
    "spf_fail_hold": FailHold.NONE,
    "metrics_listen": "",
}


def test_every_key_has_an_expected_default():
    assert {key.name for key in KEYS} == set(EXPECTED_DEFAULTS)


def test_config_has_one_field_per_key_and_no_defaults_of_its_own():
    # KEYS is the one source of defaults: a second copy on the dataclass could drift from it
    fields = dataclasses.fields(Config)
    assert [f.name for f in fields] == [key.name for key in KEYS] + ["source"]
    assert [f.name for f in fields if f.default is not dataclasses.MISSING] == ["source"]
    assert defaults().source == "<built-in defaults>"


@pytest.mark.parametrize("text, low, high, expected", [
    ("0", 0, 1, 0), ("1", 0, 1, 1), ("007", 1, 64, 7), ("65535", 1, 65535, 65535), ("10000", 0, math.inf, 10000),
])
def test_whole_number(text, low, high, expected):
    assert whole_number(text, low, high, "no") == expected


@pytest.mark.parametrize("text, low, high", [
    ("", 0, 9), (" 1", 0, 9), ("1 ", 0, 9), ("-1", 0, 9), ("+1", 0, 9), ("1.0", 0, 9), ("1e3", 0, math.inf),
    ("0x10", 0, 99), ("1_000", 0, math.inf), ("\u0663", 0, 9), ("\u00b2", 0, 9), ("\uff11", 0, 9),  # ٣ ² １
    ("0", 1, 65535), ("65536", 1, 65535),
])
def test_whole_number_refuses(text, low, high):
    with pytest.raises(ValueError, match="^the problem$"):
        whole_number(text, low, high, "the problem")


@pytest.mark.parametrize("text", [
    "",
    "\n\n",
    "# only a comment\n   # indented comment\n",
    "socket = inet:8890@127.0.0.1\n",
])
@pytest.mark.parametrize("name, expected", sorted(EXPECTED_DEFAULTS.items()))
def test_defaults(text, name, expected):
    assert getattr(parse(text), name) == expected


def test_defaults_properties():
    config = parse("")
    assert config.source == "test.conf"
    assert config.enforce is False
    assert config.receiver == "default.test"
    assert config.reject_results("helo") == frozenset({"fail"})
    assert config.reject_results("mailfrom") == frozenset({"fail"})


def test_authserv_id_defaults_to_a_host_name():
    config = parse_text("")
    assert config.authserv_id  # socket.gethostname() or "localhost", never empty
    assert " " not in config.authserv_id


# --------------------------------------------------------------------------- good values

GOOD_VALUES = [
    ("mode", "enforce", Mode.ENFORCE),
    ("mode", " Header-Only ", Mode.HEADER_ONLY),
    ("mode", "ENFORCE", Mode.ENFORCE),
    ("header_type", "received-spf", HeaderType.RECEIVED_SPF),
    ("header_type", "both", HeaderType.BOTH),
    ("header_type", "none", HeaderType.NONE),
    ("header_type", "Authentication-Results", HeaderType.AUTHENTICATION_RESULTS),
    ("authserv_id", "mx.example.com", "mx.example.com"),
    ("authserv_id", "mx1", "mx1"),
    ("authserv_id", "mx.example.com.", "mx.example.com."),
    ("authserv_id", "  mx-1.example.com  ", "mx-1.example.com"),
    ("trust_authenticated", "yes", True),
    ("trust_authenticated", "True", True),
    ("trust_authenticated", "on", True),
    ("trust_authenticated", "1", True),
    ("trust_authenticated", "no", False),
    ("trust_authenticated", "FALSE", False),
    ("trust_authenticated", "off", False),
    ("trust_authenticated", "0", False),
    ("helo_reject_results", "fail", frozenset({"fail"})),
    ("helo_reject_results", "fail, softfail", frozenset({"fail", "softfail"})),
    ("helo_reject_results", "FAIL SoftFail neutral,none ,permerror",
     frozenset({"fail", "softfail", "neutral", "none", "permerror"})),
    ("helo_reject_results", "", frozenset()),
    ("helo_reject_results", "fail, fail", frozenset({"fail"})),
    ("mailfrom_reject_results", "permerror", frozenset({"permerror"})),
    ("mailfrom_reject_results", "", frozenset()),
    ("temperror_action", "accept", TempErrorAction.ACCEPT),
    ("temperror_action", "defer", TempErrorAction.DEFER),
    ("exempt_recipients", "postmaster", ("postmaster",)),
    ("exempt_recipients", "Postmaster, ABUSE@Example.ORG hostmaster",
     ("postmaster", "abuse@example.org", "hostmaster")),
    ("exempt_recipients", "", ()),
    ("dns_timeout", "2.5", 2.5),
    ("dns_timeout", "0.1", 0.1),
    ("dns_timeout", "120", 120.0),
    ("dns_timeout", " 7 ", 7.0),
    ("dns_cache_size", "0", 0),
    ("dns_cache_size", "500", 500),
    ("user", "spfmilter", "spfmilter"),
    ("user", "", ""),
    ("group", "mail", "mail"),
    ("socket_group", "postfix", "postfix"),
    ("socket_mode", "0666", 0o666),
    ("socket_mode", "660", 0o660),
    ("pid_file", "/run/spfmilter/spfmilter.pid", "/run/spfmilter/spfmilter.pid"),
    ("pid_file", "", ""),
    ("workers", "auto", 0),
    ("workers", "AUTO", 0),
    ("workers", "1", 1),
    ("workers", " 64 ", 64),
    ("on_error", "accept", ErrorAction.ACCEPT),
    ("on_error", "tempfail", ErrorAction.TEMPFAIL),
    ("log_destination", "syslog", LogDestination.SYSLOG),
    ("log_level", "DEBUG", "debug"),
    ("log_level", "warning", "warning"),
    ("log_level", "error", "error"),
    ("syslog_facility", "local7", "local7"),
    ("syslog_facility", "daemon", "daemon"),
    ("syslog_facility", "USER", "user"),
    ("srs_domain", "SRS.Example.COM.", "srs.example.com"),
    ("srs_domain", "", ""),
    ("srs_secrets_file", "/etc/spfmilter/srs-secrets", "/etc/spfmilter/srs-secrets"),
    ("srs_hash_length", "6", 6),
    ("srs_hash_min_length", "3", 3),
    ("srs_max_age", "30", 30),
    ("srs_separator", "+", "+"),
    ("local_domains", "Example.com, example.NET.", frozenset({"example.com", "example.net"})),
    ("local_domains", "", frozenset()),
    ("srs_forward_table", "/etc/postfix/virtual", "/etc/postfix/virtual"),
    ("srs_exclude_domains", "partner.example", frozenset({"partner.example"})),
    ("srs_exclude_domains", ".Partner.example., partner.example", frozenset({".partner.example", "partner.example"})),
    ("srs_socketmap", "", None),
    ("srs_socketmap", "unix:/var/spool/postfix/spfmilter/srs.sock",
     SocketSpec("unix", "/var/spool/postfix/spfmilter/srs.sock")),
    ("srs_socketmap", "inet:10003@127.0.0.1", SocketSpec("inet", "127.0.0.1", 10003)),
    ("srs_socketmap", "inet6:10003@[::1]", SocketSpec("inet6", "::1", 10003)),
    ("srs_socketmap", "inet:10003@localhost", SocketSpec("inet", "localhost", 10003)),
    ("srs_rewrite_trusted", "yes", True),
    ("socket_keep_link", "no", False),
    ("enforce_domains", "Example.COM example.net", frozenset({"example.com", "example.net"})),
    ("header_only_domains", "example.org", frozenset({"example.org"})),
    ("header_only_senders", "partner.example", frozenset({"partner.example"})),
    ("spf_fail_hold", "DKIM", FailHold.DKIM),
    ("spf_fail_hold", "none", FailHold.NONE),
    ("metrics_listen", "127.0.0.1:9899", "127.0.0.1:9899"),
    ("metrics_listen", "[::1]:9899", "[::1]:9899"),
    ("metrics_listen", "", ""),
    ("trusted_helo_names", "Relay.Example.NET. mx.partner.example",
     frozenset({"relay.example.net", "mx.partner.example"})),
    ("trusted_ptr_domains", "forwarder.example", frozenset({"forwarder.example"})),
    ("trusted_spf_domains", "pobox.com, Example.ORG, pobox.com", ("pobox.com", "example.org")),  # order kept
    ("trusted_spf_domains", "", ()),
    ("skip_macros", "{daemon_name}=submission, {daemon_name}=smtps {auth_type} j",
     (MacroMatch("{daemon_name}", "submission"), MacroMatch("{daemon_name}", "smtps"), MacroMatch("{auth_type}"),
      MacroMatch("j"))),
    ("skip_macros", "", ()),
    ("check_identities", "helo", frozenset({"helo"})),
    ("check_identities", "MailFrom", frozenset({"mailfrom"})),
    ("check_identities", "mailfrom, helo", frozenset({"helo", "mailfrom"})),
    ("helo_reject_scope", "null-sender", HeloRejectScope.NULL_SENDER),
    ("helo_reject_scope", "all", HeloRejectScope.ALL),
    ("require_pass_domains", "Bank.Example", frozenset({"bank.example"})),
    ("reject_text", "  SPF {result} for {domain} ({identity}, {ip}, {sender}): see https://x.example/spf?d={domain}  ",
     "SPF {result} for {domain} ({identity}, {ip}, {sender}): see https://x.example/spf?d={domain}"),
    ("reject_text", "Refused; {{braces}} are literal", "Refused; {{braces}} are literal"),
    ("reject_text", "", ""),
    ("enhanced_status_codes", "no", False),
]


@pytest.mark.parametrize("name, raw, expected", GOOD_VALUES)
def test_good_value(name, raw, expected):
    needs = "srs_domain = srs.example.com\n" if name == "srs_socketmap" else ""  # see the cross-checks
    config = parse(f"{needs}{name} = {raw}\n")
    assert getattr(config, name) == expected


def test_good_values_cover_every_key_but_socket_networks_and_dns_servers():
    # socket, trusted_networks and dns_servers have their own tables below
    assert {name for name, _, _ in GOOD_VALUES} | {"socket", "trusted_networks", "dns_servers"} == \
        {key.name for key in KEYS}


def test_enforce_and_reject_results_properties():
    config = parse("mode = enforce\nhelo_reject_results = softfail\nmailfrom_reject_results = none, fail\n")
    assert config.enforce is True
    assert config.reject_results("helo") == frozenset({"softfail"})
    assert config.reject_results("mailfrom") == frozenset({"none", "fail"})


def test_value_may_contain_equals_and_surrounding_spaces():
    assert parse("   mode   =   enforce   \n").mode is Mode.ENFORCE
    assert parse("mode=enforce").mode is Mode.ENFORCE


# --------------------------------------------------------------------------- bad values

BAD_VALUES = [
    ("mode", "enforcing", "expected one of: header-only, enforce"),
    ("mode", "", "expected one of: header-only, enforce"),
    ("header_type", "dkim", "expected one of: authentication-results, received-spf, both, none"),
    ("authserv_id", "", "expected a host name"),
    ("authserv_id", "mx example", "expected a host name"),
    ("authserv_id", "mx;evil", "expected a host name"),
    ("authserv_id", "-mx.example.com", "expected a host name"),
    ("authserv_id", "mx..example.com", "expected a host name"),
    ("authserv_id", "a" * 64 + ".example", "expected a host name"),
    ("trust_authenticated", "maybe", "expected yes or no"),
    ("trust_authenticated", "", "expected yes or no"),
    ("helo_reject_results", "fial", "unknown SPF result 'fial'"),
    ("helo_reject_results", "pass", "unknown SPF result 'pass'"),
    ("mailfrom_reject_results", "fail, bogus", "unknown SPF result 'bogus'"),
    ("temperror_action", "reject", "expected one of: defer, accept"),
    ("exempt_recipients", "post master\"", "bad local part or address"),
    ("exempt_recipients", "a(b)", "bad local part or address 'a(b)'"),
    ("dns_timeout", "ten", "expected a number of seconds"),
    ("dns_timeout", "0", "expected between 0.1 and 120 seconds"),
    ("dns_timeout", "0.05", "expected between 0.1 and 120 seconds"),
    ("dns_timeout", "121", "expected between 0.1 and 120 seconds"),
    ("dns_timeout", "-1", "expected between 0.1 and 120 seconds"),
    ("dns_timeout", "nan", "expected between 0.1 and 120 seconds"),
    ("dns_timeout", "inf", "expected between 0.1 and 120 seconds"),
    ("dns_cache_size", "-1", "expected a whole number of entries"),
    ("dns_cache_size", "1.5", "expected a whole number of entries"),
    ("dns_cache_size", "lots", "expected a whole number of entries"),
    ("on_error", "reject", "expected one of: tempfail, accept"),
    ("workers", "0", "expected auto or a number from 1 to 64"),
    ("user", "two words", "expected a user or group name"),
    ("group", "-x", "expected a user or group name"),
    ("socket_group", "a/b", "expected a user or group name"),
    ("socket_mode", "0999", "expected an octal mode such as 0660"),
    ("socket_mode", "rw-rw----", "expected an octal mode such as 0660"),
    ("pid_file", "relative.pid", "expected an absolute path"),
    ("workers", "65", "expected auto or a number from 1 to 64"),
    ("workers", "two", "expected auto or a number from 1 to 64"),
    ("log_destination", "file", "expected one of: stderr, syslog"),
    ("log_level", "verbose", "expected debug, info, warning or error"),
    ("syslog_facility", "local8", "expected one of: mail, daemon, user, local0"),
    ("syslog_facility", "kern", "expected one of: mail"),
    ("srs_domain", "not a domain", "expected a domain name"),
    ("srs_secrets_file", "srs-secrets", "expected an absolute path"),
    ("srs_hash_length", "3", "expected a whole number from 4 to 27"),
    ("srs_hash_length", "28", "expected a whole number from 4 to 27"),
    ("srs_hash_min_length", "0", "expected a whole number from 1 to 27"),
    ("srs_max_age", "0", "expected a whole number from 1 to 1000 days"),
    ("srs_separator", "/", "expected =, + or -"),
    ("local_domains", "exa mple..com", "bad domain"),
    ("srs_forward_table", "virtual", "expected an absolute path"),
    ("srs_exclude_domains", "-x-", "bad domain"),
    ("srs_exclude_domains", "..x.example", "bad domain"),
    ("srs_exclude_domains", ".", "bad domain"),
    ("srs_socketmap", "inet:10003@192.0.2.1", "not a loopback address"),
    ("srs_socketmap", "inet:10003@mx.example.com", "not a loopback address"),
    ("srs_socketmap", "unix:srs.sock", "absolute path"),
    ("srs_rewrite_trusted", "maybe", "expected yes or no"),
    ("socket_keep_link", "sometimes", "expected yes or no"),
    ("enforce_domains", "not a domain!", "bad domain"),
    ("header_only_domains", "a..b", "bad domain"),
    ("header_only_senders", "-x", "bad domain"),
    ("spf_fail_hold", "dmarc", "expected one of: none, dkim"),
    ("metrics_listen", "9899", "expected HOST:PORT"),
    ("metrics_listen", "example.com:9899", "expected HOST:PORT"),
    ("metrics_listen", "999.1.1.1:80", "bad address"),
    ("metrics_listen", "127.0.0.1:\u0669\u0668\u0669\u0669", "expected HOST:PORT"),  # digits, but not ASCII ones
    ("trusted_helo_names", "relay..example", "bad domain"),
    ("trusted_ptr_domains", "*.example", "bad domain"),
    ("trusted_spf_domains", "pobox.com, not_a domain!", "bad domain"),
    ("skip_macros", "daemon_name=submission", "bad macro 'daemon_name': expected a name in braces"),
    ("skip_macros", "{daemon_name}=", "no value after '='"),
    ("skip_macros", "{daemon name}", "bad macro"),
    ("check_identities", "", "at least one identity"),
    ("check_identities", "helo, rcpt", "unknown identity 'rcpt'"),
    ("helo_reject_scope", "null", "expected one of: all, null-sender"),
    ("require_pass_domains", "bank..example", "bad domain"),
    ("reject_text", "SPF {result} for {recipient}", "unknown placeholder {recipient}: use {result}, {domain}"),
    ("reject_text", "SPF {result!r}", "unknown placeholder {result!r}"),
    ("reject_text", "SPF {0}", "unknown placeholder {0}"),
    ("reject_text", "SPF {result", "write {{ and }} for a literal brace"),
    ("reject_text", "100% refused", "'%' cannot be used"),
    ("reject_text", "r\u00e9fus\u00e9", "printable ASCII"),
    ("reject_text", "x" * 201, "at most 200 characters"),
    ("enhanced_status_codes", "sometimes", "expected yes or no"),
]


@pytest.mark.parametrize("name, raw, message", BAD_VALUES)
def test_bad_value(name, raw, message):
    found = problems(f"# comment\n{name} = {raw}\n")
    assert len(found) == 1
    assert found[0].startswith(f"test.conf:2: bad value for '{name}': ")
    assert message in found[0]


def test_every_key_but_socket_networks_and_dns_servers_has_bad_value_cases():
    assert {name for name, _, _ in BAD_VALUES} | {"socket", "trusted_networks", "dns_servers"} == \
        {key.name for key in KEYS}


def test_bad_value_message_quotes_the_value_and_shortens_long_ones():
    [problem] = problems("mode = " + "x" * 200)
    assert problem.startswith("test.conf:1: bad value for 'mode': '" + "x" * 57 + "...': expected one of")


def test_temperror_in_reject_results_names_temperror_action():
    [problem] = problems("helo_reject_results = fail, temperror\n")
    assert problem == ("test.conf:1: bad value for 'helo_reject_results': 'fail, temperror': "
                       "unknown SPF result 'temperror': choose from fail, softfail, neutral, none, permerror "
                       "(temperror is set by temperror_action)")


@pytest.mark.parametrize("name", ["helo_reject_results", "mailfrom_reject_results"])
@pytest.mark.parametrize("raw", ["temperror", "TempError", "fail temperror"])
def test_temperror_refused_for_both_lists(name, raw):
    [problem] = problems(f"{name} = {raw}")
    assert "(temperror is set by temperror_action)" in problem


def test_other_unknown_result_has_no_temperror_hint():
    [problem] = problems("helo_reject_results = pass")
    assert "temperror_action" not in problem


# --------------------------------------------------------------------------- structural problems

@pytest.mark.parametrize("line, hint", [
    ("sokcet = inet:1@localhost", "socket"),
    ("dns-timeout = 5", "dns_timeout"),
    ("Mode = enforce", "mode"),
    ("helo_reject_result = fail", "helo_reject_results"),
    ("trusted_network = loopback", "trusted_networks"),
    ("authservid = mx.test", "authserv_id"),
    ("logging = debug", None),
    ("zzzzzz = 1", None),
])
def test_unknown_key_with_hint(line, hint):
    [problem] = problems(f"\n\n{line}\n")
    name = line.split("=")[0].strip()
    expected = f"test.conf:3: unknown key '{name}'"
    if hint:
        expected += f" (did you mean '{hint}'?)"
    assert problem == expected


def test_duplicate_key():
    found = problems("mode = enforce\n# x\nmode = header-only\n")
    assert found == ["test.conf:3: key 'mode' already set on line 1"]


def test_duplicate_key_after_bad_value_reports_both():
    found = problems("dns_timeout = soon\ndns_timeout = 5\n")
    assert found == [
        "test.conf:1: bad value for 'dns_timeout': 'soon': expected a number of seconds, e.g. 10 or 2.5",
        "test.conf:2: key 'dns_timeout' already set on line 1",
    ]


@pytest.mark.parametrize("line", ["enforce", "mode enforce", "mode: enforce", "[section]"])
def test_line_without_equals(line):
    assert problems(f"{line}\n") == [f"test.conf:1: expected 'key = value', got '{line}'"]


def test_all_problems_reported_at_once_in_line_order():
    text = "\n".join([
        "# spfmilter configuration",                # 1
        "sokcet = inet:1@localhost",                # 2 unknown key
        "mode = enforce",                           # 3 fine
        "mode = header-only",                       # 4 duplicate
        "garbage line",                             # 5 no '='
        "helo_reject_results = fail, temperror",    # 6 bad value
        "socket = unix:relative/path",              # 7 bad value
        "dns_timeout = 5",                          # 8 fine
        "",                                         # 9
        "dns_servers = 192.0.2.1:99999",            # 10 bad value
    ])
    with pytest.raises(ConfigError) as info:
        parse_text(text, "/etc/spfmilter/spfmilter.conf")
    found = info.value.problems
    assert [p.split(": ", 1)[0] for p in found] == [
        f"/etc/spfmilter/spfmilter.conf:{n}" for n in (2, 4, 5, 6, 7, 10)]
    assert "unknown key 'sokcet' (did you mean 'socket'?)" in found[0]
    assert "key 'mode' already set on line 3" in found[1]
    assert "expected 'key = value'" in found[2]
    assert "'helo_reject_results'" in found[3] and "temperror_action" in found[3]
    assert "'socket'" in found[4] and "absolute path" in found[4]
    assert "'dns_servers'" in found[5] and "bad port" in found[5]
    assert str(info.value) == "\n".join(found)


# --------------------------------------------------------------------------- socket

@pytest.mark.parametrize("raw, expected, libmilter", [
    ("inet:8890@127.0.0.1", SocketSpec("inet", "127.0.0.1", 8890), "inet:8890@127.0.0.1"),
    ("inet:1@0.0.0.0", SocketSpec("inet", "0.0.0.0", 1), "inet:1@0.0.0.0"),
    ("inet:65535@localhost", SocketSpec("inet", "localhost", 65535), "inet:65535@localhost"),
    ("INET:25@mx.example.com", SocketSpec("inet", "mx.example.com", 25), "inet:25@mx.example.com"),
    ("inet6:8890@::1", SocketSpec("inet6", "::1", 8890), "inet6:8890@::1"),
    ("inet6:8890@[::1]", SocketSpec("inet6", "::1", 8890), "inet6:8890@::1"),
    ("inet6:9000@2001:db8::25", SocketSpec("inet6", "2001:db8::25", 9000), "inet6:9000@2001:db8::25"),
    ("inet6:9000@[2001:db8::25]", SocketSpec("inet6", "2001:db8::25", 9000), "inet6:9000@2001:db8::25"),
    ("unix:/run/spfmilter/spfmilter.sock", SocketSpec("unix", "/run/spfmilter/spfmilter.sock"),
     "unix:/run/spfmilter/spfmilter.sock"),
    ("local:/var/spool/postfix/spf.sock", SocketSpec("unix", "/var/spool/postfix/spf.sock"),
     "unix:/var/spool/postfix/spf.sock"),
    ("UNIX:/tmp/x", SocketSpec("unix", "/tmp/x"), "unix:/tmp/x"),
])
def test_socket_forms(raw, expected, libmilter):
    spec = parse(f"socket = {raw}").socket
    assert spec == expected
    assert spec.libmilter() == str(spec) == libmilter


@pytest.mark.parametrize("raw, message", [
    ("8890", "expected inet:PORT@HOST, inet6:PORT@HOST or unix:/path"),
    ("/run/spfmilter.sock", "expected inet:PORT@HOST, inet6:PORT@HOST or unix:/path"),
    ("tcp:8890@127.0.0.1", "unknown socket type 'tcp'"),
    ("inet:8890", "expected inet:PORT@HOST, e.g. inet:8890@127.0.0.1"),
    ("inet:8890@", "expected inet:PORT@HOST"),
    ("inet6:8890", "expected inet6:PORT@HOST, e.g. inet6:8890@::1"),
    ("inet:0@127.0.0.1", "bad port '0'"),
    ("inet:65536@127.0.0.1", "bad port '65536'"),
    ("inet:99999@127.0.0.1", "bad port '99999'"),
    ("inet:-1@127.0.0.1", "bad port '-1'"),
    ("inet:http@127.0.0.1", "bad port 'http'"),
    ("inet:@127.0.0.1", "bad port ''"),
    ("inet:8890@bad host", "bad host 'bad host'"),
    ("inet:8890@::1", "bad host '::1'"),
    ("inet6:8890@127.0.0.1", "inet6 needs an IPv6 address, got '127.0.0.1'"),
    ("inet6:8890@localhost", "inet6 needs an IPv6 address"),
    ("inet6:8890@[::g]", "inet6 needs an IPv6 address, got '::g'"),
    ("unix:run/spfmilter.sock", "a unix socket needs an absolute path"),
    ("unix:spfmilter.sock", "a unix socket needs an absolute path"),
    ("local:./x.sock", "a unix socket needs an absolute path"),
    ("unix:", "a unix socket needs an absolute path"),
])
def test_bad_socket(raw, message):
    [problem] = problems(f"socket = {raw}")
    assert problem.startswith("test.conf:1: bad value for 'socket': ")
    assert message in problem


# --------------------------------------------------------------------------- trusted_networks

@pytest.mark.parametrize("raw, expected", [
    ("loopback", LOOPBACK),
    ("LOOPBACK", LOOPBACK),
    ("", ()),
    ("   ", ()),
    ("192.0.2.0/24", (ipaddress.ip_network("192.0.2.0/24"),)),
    ("192.0.2.7", (ipaddress.ip_network("192.0.2.7/32"),)),
    ("192.0.2.7/24", (ipaddress.ip_network("192.0.2.0/24"),)),  # host bits are ignored
    ("2001:db8::/32", (ipaddress.ip_network("2001:db8::/32"),)),
    ("2001:db8::1", (ipaddress.ip_network("2001:db8::1/128"),)),
    ("loopback, 10.0.0.0/8 2001:db8::/32,,fd00::/8",
     LOOPBACK + tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "2001:db8::/32", "fd00::/8"))),
])
def test_trusted_networks(raw, expected):
    assert parse(f"trusted_networks = {raw}").trusted_networks == expected


@pytest.mark.parametrize("raw, bad", [
    ("localhost", "localhost"),
    ("192.0.2.0/33", "192.0.2.0/33"),
    ("loopback, 300.1.2.3", "300.1.2.3"),
    ("2001:db8::/129", "2001:db8::/129"),
    ("10.0.0.0/8;", "10.0.0.0/8;"),
])
def test_bad_trusted_networks(raw, bad):
    [problem] = problems(f"trusted_networks = {raw}")
    assert f"bad network '{bad}'" in problem
    assert "'loopback'" in problem


@pytest.mark.parametrize("raw, expected", [
    # IPv4-mapped networks stand for the IPv4 network (the milter unmaps client addresses)
    ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
    ("::FFFF:10.1.2.3/104", "10.0.0.0/8"),  # host bits ignored, as for other networks
    ("::ffff:192.0.2.7", "192.0.2.7/32"),
    ("::ffff:c000:200/120", "192.0.2.0/24"),
    ("::ffff:0.0.0.0/96", "0.0.0.0/0"),
])
def test_ipv4_mapped_trusted_networks_become_ipv4(raw, expected):
    assert parse(f"trusted_networks = {raw}").trusted_networks == (ipaddress.ip_network(expected),)


@pytest.mark.parametrize("raw", ["::ffff:10.0.0.0/95", "::ffff:10.0.0.0/64", "loopback, ::ffff:0:0/0"])
def test_ipv4_mapped_network_shorter_than_96_is_an_error(raw):
    [problem] = problems(f"# comment\ntrusted_networks = {raw}")
    assert problem.startswith("test.conf:2: bad value for 'trusted_networks': ")
    assert "IPv4-mapped network needs a prefix of /96 or longer" in problem


@pytest.mark.parametrize("client", ["10.1.2.3", "::ffff:10.1.2.3", "::FFFF:A01:203"])
def test_ipv4_mapped_trusted_network_trusts_the_client_in_either_form(client):
    from spfmilter.policy import Facts, trust_reason
    from spfmilter.verify import normalise_ip

    config = parse("trusted_networks = ::ffff:10.0.0.0/104")
    facts = Facts(normalise_ip(client), "helo.example", "a@example.org")  # as the milter's connect does
    assert trust_reason(facts, config) == "trusted network 10.0.0.0/8"
    assert trust_reason(Facts("11.1.2.3", "helo.example", "a@example.org"), config) is None


# --------------------------------------------------------------------------- dns_servers

@pytest.mark.parametrize("raw, expected", [
    ("", ()),
    ("192.0.2.53", (DnsServer("192.0.2.53", 53),)),
    ("192.0.2.53:5353", (DnsServer("192.0.2.53", 5353),)),
    ("127.0.0.1:1", (DnsServer("127.0.0.1", 1),)),
    ("2001:db8::53", (DnsServer("2001:db8::53", 53),)),
    ("::1", (DnsServer("::1", 53),)),
    ("[::1]", (DnsServer("::1", 53),)),
    ("[2001:db8::53]:5300", (DnsServer("2001:db8::53", 5300),)),
    ("[192.0.2.1]:54", (DnsServer("192.0.2.1", 54),)),
    ("192.0.2.1, 192.0.2.2:5353 [::1]:65535",
     (DnsServer("192.0.2.1", 53), DnsServer("192.0.2.2", 5353), DnsServer("::1", 65535))),
])
def test_dns_servers(raw, expected):
    assert parse(f"dns_servers = {raw}").dns_servers == expected


@pytest.mark.parametrize("raw, message", [
    ("dns.example.com", "bad DNS server 'dns.example.com': expected an IP address, IP:PORT or [IPv6]:PORT"),
    ("192.0.2.1:dns", "bad DNS server '192.0.2.1:dns'"),
    ("192.0.2.1:", "bad DNS server '192.0.2.1:'"),
    ("192.0.2.1:0", "bad port in DNS server '192.0.2.1:0'"),
    ("192.0.2.1:65536", "bad port in DNS server '192.0.2.1:65536'"),
    ("[::1]:0", "bad port in DNS server '[::1]:0'"),
    ("[::1]:70000", "bad port in DNS server '[::1]:70000'"),
    ("[::1]:", "bad DNS server '[::1]:'"),
    ("[::1]:\u0665\u0663", "bad DNS server '[::1]:\u0665\u0663'"),  # a port in ASCII digits, as for 192.0.2.1:53
    ("[::1]:x", "bad DNS server '[::1]:x'"),
    ("2001:db8::1:53:", "bad DNS server '2001:db8::1:53:'"),
    ("300.1.1.1", "bad DNS server '300.1.1.1'"),
    ("192.0.2.1, nope", "bad DNS server 'nope'"),
])
def test_bad_dns_servers(raw, message):
    [problem] = problems(f"dns_servers = {raw}")
    assert problem.startswith("test.conf:1: bad value for 'dns_servers': ")
    assert message in problem


# --------------------------------------------------------------------------- describe() round trip

ROUND_TRIP_TEXTS = [
    "",
    "authserv_id = mx.test\n",
    """
    socket = inet6:9000@[2001:db8::25]
    mode = enforce
    header_type = both
    authserv_id = mx.example.com.
    trusted_networks = loopback, 10.0.0.0/8, 2001:db8::/32
    trust_authenticated = no
    helo_reject_results = fail, softfail, permerror
    mailfrom_reject_results =
    temperror_action = accept
    exempt_recipients = postmaster, abuse@example.org
    dns_timeout = 2.5
    dns_servers = 192.0.2.53, 192.0.2.54:5353, [2001:db8::53]:5300, 2001:db8::54
    dns_cache_size = 0
    on_error = accept
    log_destination = syslog
    log_level = debug
    syslog_facility = local3
    """,
    "socket = local:/run/spfmilter.sock\ntrusted_networks =\nexempt_recipients =\nheader_type = none\n",
    "socket = inet:25@localhost\nhelo_reject_results = none neutral\ndns_timeout = 0.1\n",
    "dns_servers = [::1]\nhelo_reject_results =\nmailfrom_reject_results = fail softfail neutral none permerror\n",
    "trusted_helo_names = relay.example\ntrusted_spf_domains = b.example a.example\nskip_macros = {daemon_name}=sub j\n"
    "check_identities = helo\nhelo_reject_scope = null-sender\nreject_text = SPF {result}, {{x}}: {domain}\n"
    "enhanced_status_codes = no\ntrusted_ptr_domains = fwd.example\n",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_describe_round_trip(text):
    config = parse_text("\n".join(line.strip() for line in text.splitlines()), "a.conf",
                        authserv_id_default="default.test")
    lines = list(describe(config))
    assert [line.split(" = ", 1)[0] for line in lines] == [key.name for key in KEYS]
    again = parse_text("\n".join(lines), "b.conf")
    assert fields_equal(config, again)
    assert config == again  # source is excluded from comparison
    assert again.source == "b.conf"
    assert list(describe(again)) == lines


def test_describe_shows_values_as_written():
    config = parse("socket = local:/run/x.sock\ntrust_authenticated = off\ndns_timeout = 3\n"
                   "dns_servers = [::1]:5353, 192.0.2.1\nhelo_reject_results = softfail fail\n")
    shown = dict(line.split(" = ", 1) for line in describe(config))
    assert shown["socket"] == "unix:/run/x.sock"
    assert shown["trust_authenticated"] == "no"
    assert shown["dns_timeout"] == "3"
    assert shown["dns_servers"] == "[::1]:5353, 192.0.2.1:53"
    assert shown["helo_reject_results"] == "fail, softfail"
    assert shown["trusted_networks"] == "127.0.0.0/8, ::1/128"
    assert shown["authserv_id"] == "default.test"
    assert shown["mode"] == "header-only"


# --------------------------------------------------------------------------- load()

def test_load_missing_file(tmp_path):
    path = tmp_path / "missing" / "spfmilter.conf"
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.problems == [f"{path}: cannot read: No such file or directory"]


def test_load_directory(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path))
    [problem] = info.value.problems
    assert problem.startswith(f"{tmp_path}: cannot read: ")


def test_load_not_utf8(tmp_path):
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"authserv_id = mx.test\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.problems == [f"{path}: not UTF-8 text"]


def test_load_reads_file_and_names_it_in_problems(tmp_path):
    path = tmp_path / "spfmilter.conf"
    path.write_text("authserv_id = mx.test\nmode = enforce\n", encoding="utf-8")
    config = load(str(path))
    assert config.source == str(path)
    assert config.authserv_id == "mx.test"
    assert config.mode is Mode.ENFORCE
    path.write_text("authserv_id = mx.test\nmode = loud\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    [problem] = info.value.problems
    assert problem.startswith(f"{path}:2: bad value for 'mode': 'loud': ")


def test_cross_checks_name_the_keys():
    with pytest.raises(ConfigError) as info:
        parse_text("srs_hash_length = 4\nsrs_hash_min_length = 5\n", "x.conf")
    assert info.value.problems == ["x.conf: srs_hash_min_length cannot be more than srs_hash_length"]
    with pytest.raises(ConfigError, match="example.com: in both enforce_domains and header_only_domains"):
        parse_text("enforce_domains = example.com\nheader_only_domains = example.com\n", "x.conf")
    with pytest.raises(ConfigError, match="require_pass_domains needs mailfrom in check_identities"):
        parse_text("check_identities = helo\nrequire_pass_domains = bank.example\n", "x.conf")
    with pytest.raises(ConfigError, match="srs_domain cannot be in srs_exclude_domains"):
        parse_text("srs_domain = a.example\nsrs_exclude_domains = a.example\n", "x.conf")
    with pytest.raises(ConfigError, match="srs_domain cannot be in srs_exclude_domains"):
        parse_text("srs_domain = srs.a.example\nsrs_exclude_domains = .a.example\n", "x.conf")
    with pytest.raises(ConfigError, match="srs_socketmap needs srs_domain"):
        parse_text("srs_socketmap = unix:/run/x.sock\n", "x.conf")
    with pytest.raises(ConfigError, match="srs_socketmap cannot be the milter's socket"):
        parse_text("socket = unix:/run/x.sock\nsrs_domain = srs.a.example\nsrs_socketmap = unix:/run/x.sock\n",
                   "x.conf")


@pytest.mark.parametrize("domain,matches", [
    ("partner.example", True), ("PARTNER.example.", True), ("mail.partner.example", False),
    ("sub.example", False), ("a.sub.example", True), ("a.b.SUB.example", True), ("xsub.example", False),
    ("example", False), ("", False),
])
def test_domain_patterns_as_postsrsd_reads_them(domain, matches):
    """``.sub.example`` stands for the subdomains of sub.example, not for sub.example itself
    (PostSRSd's domain sets, tests/unit/test_util.c there, and Postfix's own ``.domain`` form)."""
    assert domain_matches(domain, parse_domain_patterns("partner.example .sub.example")) is matches
