"""Configuration: one flat ``key = value`` file turned into one frozen :class:`Config`.

Every key is declared once in :data:`KEYS` (name, parser, default, help text); the
README reference table is checked against that list by the tests, so the two
cannot drift.  Unknown keys, duplicate keys and bad values are errors that name
the file, the line and the key; all of them are reported at once.
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import math
import re
import socket
from dataclasses import dataclass, field
from string import Formatter
from typing import Any, Callable, Iterable, Optional

from . import foreignkeys

DEFAULT_CONFIG_PATH = "/etc/spfmilter/spfmilter.conf"
DEFAULT_SOCKET = "inet:8890@127.0.0.1"
BUILT_IN = "<built-in defaults>"  # the source of a Config made without a file


class ConfigError(Exception):
    """One or more problems in a configuration file; ``problems`` lists them all."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Mode(str, enum.Enum):
    HEADER_ONLY = "header-only"
    ENFORCE = "enforce"


class HeaderType(str, enum.Enum):
    AUTHENTICATION_RESULTS = "authentication-results"
    RECEIVED_SPF = "received-spf"
    BOTH = "both"
    NONE = "none"


class TempErrorAction(str, enum.Enum):
    DEFER = "defer"
    ACCEPT = "accept"


class ErrorAction(str, enum.Enum):
    TEMPFAIL = "tempfail"
    ACCEPT = "accept"


class FailHold(str, enum.Enum):
    NONE = "none"
    DKIM = "dkim"


class HeloRejectScope(str, enum.Enum):
    ALL = "all"
    NULL_SENDER = "null-sender"  # policyd-spf HELO_reject = Null


class LogDestination(str, enum.Enum):
    STDERR = "stderr"
    SYSLOG = "syslog"


# Results an admin may choose to reject on (temperror is governed by temperror_action).
REJECTABLE_RESULTS = ("fail", "softfail", "neutral", "none", "permerror")
IDENTITIES = ("helo", "mailfrom")  # RFC 7208 sections 2.3 and 2.4
# The placeholders reject_text may use.
REJECT_TEXT_FIELDS = ("result", "domain", "ip", "identity", "sender")


@dataclass(frozen=True)
class MacroMatch:
    """One skip_macros entry: the MTA macro ``name`` (``{daemon_name}``, ``j``) has ``value``;
    value None: the macro is set to anything non-empty."""

    name: str
    value: Optional[str] = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}={self.value}"


@dataclass(frozen=True)
class SocketSpec:
    """A libmilter connection spec: inet:PORT@HOST, inet6:PORT@HOST or unix:/path."""

    family: str  # "inet", "inet6" or "unix"
    address: str  # host for inet/inet6, path for unix
    port: int = 0

    def libmilter(self) -> str:
        if self.family == "unix":
            return f"unix:{self.address}"
        return f"{self.family}:{self.port}@{self.address}"

    def __str__(self) -> str:
        return self.libmilter()


@dataclass(frozen=True)
class DnsServer:
    address: str
    port: int = 53

    def __str__(self) -> str:  # as dns_servers is written: IP:PORT, [IPv6]:PORT
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Config:
    """The effective settings, one field per key; made by :func:`build`, so every default is in :data:`KEYS`."""

    socket: SocketSpec
    mode: Mode
    header_type: HeaderType
    authserv_id: str
    trusted_networks: tuple[Network, ...]
    trust_authenticated: bool
    trusted_helo_names: frozenset[str]
    trusted_ptr_domains: frozenset[str]
    trusted_spf_domains: tuple[str, ...]
    skip_macros: tuple[MacroMatch, ...]
    helo_reject_results: frozenset[str]
    mailfrom_reject_results: frozenset[str]
    check_identities: frozenset[str]
    helo_reject_scope: HeloRejectScope
    require_pass_domains: frozenset[str]
    temperror_action: TempErrorAction
    reject_text: str
    enhanced_status_codes: bool
    exempt_recipients: tuple[str, ...]
    dns_timeout: float
    dns_servers: tuple[DnsServer, ...]
    dns_cache_size: int
    on_error: ErrorAction
    workers: int
    user: str
    group: str
    socket_mode: int
    socket_group: str
    socket_keep_link: bool
    pid_file: str
    log_destination: LogDestination
    log_level: str
    syslog_facility: str
    srs_domain: str
    srs_secrets_file: str
    srs_hash_length: int
    srs_hash_min_length: int
    srs_max_age: int
    srs_separator: str
    local_domains: frozenset[str]
    srs_forward_table: str
    srs_exclude_domains: frozenset[str]
    srs_rewrite_trusted: bool
    srs_socketmap: Optional[SocketSpec]
    enforce_domains: frozenset[str]
    header_only_domains: frozenset[str]
    header_only_senders: frozenset[str]
    spf_fail_hold: FailHold
    metrics_listen: str
    source: str = field(default=BUILT_IN, compare=False)

    @property
    def enforce(self) -> bool:
        return self.mode is Mode.ENFORCE

    @property
    def srs(self) -> bool:
        """SRS is on when an SRS domain is configured."""
        return bool(self.srs_domain)

    @property
    def receiver(self) -> str:
        """The host name we put in ``receiver=`` (RFC 7208 section 9.1)."""
        return self.authserv_id

    def reject_results(self, identity: str) -> frozenset[str]:
        return self.helo_reject_results if identity == "helo" else self.mailfrom_reject_results


# --------------------------------------------------------------------------- value parsers
# Each parser takes the raw text and returns the typed value, or raises ValueError
# with a message that tells the admin what is expected.

def _choice_parser(*choices: str, expected: str = "") -> Callable[[str], str]:
    """A parser for one of ``choices`` (in any case); ``expected`` words the error, else it lists them."""
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(expected or f"expected one of: {', '.join(choices)}")
        return value

    return parse


def _enum_parser(kind: type[enum.Enum]) -> Callable[[str], enum.Enum]:
    choose = _choice_parser(*(member.value for member in kind))
    return lambda text: kind(choose(text))


def whole_number(text: str, low: int, high: float, problem: str) -> int:
    """``text`` as a number from low to high in ASCII digits (isdigit() alone takes any script's), else ValueError."""
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ValueError(problem)
    return int(text)


def _split_list(text: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", text.strip()) if item]


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "true", "on", "1"):
        return True
    if value in ("no", "false", "off", "0"):
        return False
    raise ValueError("expected yes or no")


def parse_socket(text: str) -> SocketSpec:
    text = text.strip()
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    if not sep:
        raise ValueError("expected inet:PORT@HOST, inet6:PORT@HOST or unix:/path")
    if kind in ("unix", "local"):
        if not rest.startswith("/"):
            raise ValueError("a unix socket needs an absolute path, e.g. unix:/run/spfmilter/spfmilter.sock")
        return SocketSpec("unix", rest)
    if kind not in ("inet", "inet6"):
        raise ValueError(f"unknown socket type {kind!r}: expected inet, inet6 or unix")
    port_text, at, host = rest.partition("@")
    if not at or not host:
        raise ValueError(f"expected {kind}:PORT@HOST, e.g. {kind}:8890@{'::1' if kind == 'inet6' else '127.0.0.1'}")
    port = whole_number(port_text, 1, 65535, f"bad port {port_text!r}: expected a number from 1 to 65535")
    host = host.strip("[]")
    if kind == "inet6":
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"inet6 needs an IPv6 address, got {host!r}") from None
    elif not is_hostname(host):  # an IPv4 address is a name of digit labels too
        raise ValueError(f"bad host {host!r}")
    return SocketSpec(kind, host, port)


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def is_hostname(text: str) -> bool:
    """A syntactically valid host/domain name (LDH labels, underscores tolerated)."""
    if not text or len(text) > 253:
        return False
    # one trailing dot (a fully qualified name) may go; "a.b.." is no name
    return all(_LABEL.match(label) for label in text.removesuffix(".").split("."))


def parse_networks(text: str) -> tuple[Network, ...]:
    networks: list[Network] = []
    for item in _split_list(text):
        if item.lower() == "loopback":
            networks += [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"bad network {item!r}: expected CIDR like 192.0.2.0/24, 2001:db8::/32, or 'loopback'") from None
        networks.append(unmap_network(item, network))
    return tuple(networks)


_MAPPED = ipaddress.ip_network("::ffff:0:0/96")  # IPv4-mapped IPv6 addresses (RFC 4291 section 2.5.5.2)


def unmap_network(item: str, network: Network) -> Network:
    """An IPv4-mapped network as the IPv4 network it stands for: ``::ffff:10.0.0.0/104`` is 10.0.0.0/8.

    The milter turns an IPv4-mapped client address into plain IPv4 (verify.normalise_ip, as
    RFC 7208 section 5 evaluates such a client as IPv4), so a mapped network left as IPv6
    would never match.  A mapped address with a prefix shorter than /96 would also cover
    IPv6 space that is not mapped: ValueError, rather than guess what was meant.
    """
    if network.version != 6:
        return network
    address = ipaddress.IPv6Address(item.partition("/")[0].split("%", 1)[0])
    if address.ipv4_mapped is None:
        return network
    if network.prefixlen < _MAPPED.prefixlen:
        raise ValueError(f"bad network {item!r}: an IPv4-mapped network needs a prefix of /96 or longer "
                         "(::ffff:10.0.0.0/104 is 10.0.0.0/8); a shorter one also covers IPv6 addresses "
                         "that are not IPv4-mapped")
    return ipaddress.ip_network(f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}")


def parse_results(text: str) -> frozenset[str]:
    results = set()
    for item in _split_list(text.lower()):
        if item not in REJECTABLE_RESULTS:
            raise ValueError(
                f"unknown SPF result {item!r}: choose from {', '.join(REJECTABLE_RESULTS)}"
                + (" (temperror is set by temperror_action)" if item == "temperror" else "")
            )
        results.add(item)
    return frozenset(results)


def parse_authserv_id(text: str) -> str:
    value = text.strip()
    if not is_hostname(value):
        raise ValueError("expected a host name such as mx.example.com")
    return value


def parse_recipients(text: str) -> tuple[str, ...]:
    items = tuple(item.lower() for item in _split_list(text))
    for item in items:
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+", item):
            raise ValueError(f"bad local part or address {item!r}")
    return items


def parse_timeout(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number of seconds, e.g. 10 or 2.5") from None
    if not 0.1 <= value <= 120:
        raise ValueError("expected between 0.1 and 120 seconds")
    return value


def parse_cache_size(text: str) -> int:
    return whole_number(text.strip(), 0, math.inf, "expected a whole number of entries (0 turns the cache off)")


def parse_dns_servers(text: str) -> tuple[DnsServer, ...]:
    servers = []
    for item in _split_list(text):
        host, port_text = item, "53"
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", item)
        if match:
            host, port_text = match.group(1), match.group(2) or "53"
        elif item.count(":") == 1:
            host, port_text = item.split(":")
        port = whole_number(port_text, 0, math.inf, f"bad DNS server {item!r}")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"bad DNS server {item!r}: expected an IP address, IP:PORT or [IPv6]:PORT") from None
        if not 0 < port < 65536:
            raise ValueError(f"bad port in DNS server {item!r}")
        servers.append(DnsServer(host, port))
    return tuple(servers)


def parse_workers(text: str) -> int:
    """``auto`` (stored as 0) or a number of worker processes from 1 to 64."""
    value = text.strip().lower()
    return 0 if value == "auto" else whole_number(value, 1, 64, "expected auto or a number from 1 to 64")


def parse_account(text: str) -> str:
    """A user or group name (existence is checked when the daemon starts)."""
    value = text.strip()
    if value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?", value):
        raise ValueError("expected a user or group name")
    return value


def parse_mode(text: str) -> int:
    value = text.strip()
    if not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueError("expected an octal mode such as 0660")
    return int(value, 8)


def parse_path(text: str) -> str:
    value = text.strip()
    if value and not value.startswith("/"):
        raise ValueError("expected an absolute path")
    return value


def parse_optional_hostname(text: str) -> str:
    value = text.strip().lower().rstrip(".")
    if value and not is_hostname(value):
        raise ValueError("expected a domain name such as srs.example.com, or nothing")
    return value


def parse_domains(text: str) -> frozenset[str]:
    domains = set()
    for item in _split_list(text.lower()):
        item = item.rstrip(".")
        if not is_hostname(item):
            raise ValueError(f"bad domain {item!r}")
        domains.add(item)
    return frozenset(domains)


def parse_domain_list(text: str) -> tuple[str, ...]:
    """Domains in the order written (each is a DNS check: the admin chooses which comes first)."""
    domains: list[str] = []
    for item in _split_list(text.lower()):
        item = item.rstrip(".")
        if not is_hostname(item):
            raise ValueError(f"bad domain {item!r}")
        if item not in domains:
            domains.append(item)
    return tuple(domains)


def parse_identities(text: str) -> frozenset[str]:
    """``helo``, ``mailfrom`` or both; at least one (turning both off is trusted_networks' job)."""
    items = _split_list(text.lower())
    for item in items:
        if item not in IDENTITIES:
            raise ValueError(f"unknown identity {item!r}: choose from helo, mailfrom")
    if not items:
        raise ValueError("expected helo, mailfrom or both (at least one identity is checked)")
    return frozenset(items)


_MACRO_NAME = re.compile(r"\{[A-Za-z0-9_]{1,64}\}|[A-Za-z_]")  # {daemon_name}, or one letter like j


def parse_macros(text: str) -> tuple[MacroMatch, ...]:
    """``{macro}=value`` or ``{macro}`` (any non-empty value) entries; values are compared exactly."""
    matches: list[MacroMatch] = []
    for item in _split_list(text):
        name, eq, value = item.partition("=")
        if not _MACRO_NAME.fullmatch(name):
            raise ValueError(f"bad macro {name!r}: expected a name in braces such as {{daemon_name}}, "
                             "or a one-letter macro")
        if eq and not value:
            raise ValueError(f"{item!r}: no value after '=' (write {name} alone to match any value)")
        if eq and not (value.isascii() and value.isprintable()):
            raise ValueError(f"{item!r}: the value must be printable ASCII")
        matches.append(MacroMatch(name, value if eq else None))
    return tuple(matches)


def parse_reject_text(text: str) -> str:
    """A refusal text template: printable ASCII with placeholders from REJECT_TEXT_FIELDS; empty = built in."""
    value = text.strip()
    if not (value.isascii() and value.isprintable()):
        raise ValueError("expected printable ASCII text (it goes into an SMTP reply)")
    if "%" in value:  # libmilter's smfi_setreply takes '%' as a format character
        raise ValueError("'%' cannot be used in an SMTP reply given by a milter")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in Formatter().parse(value)
                  if name is not None]
    except ValueError as exc:
        raise ValueError(f"{exc} (write {{{{ and }}}} for a literal brace)") from None
    allowed = ", ".join(f"{{{name}}}" for name in REJECT_TEXT_FIELDS)
    for name, spec, conversion in fields:
        if name not in REJECT_TEXT_FIELDS or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"unknown placeholder {shown}: use {allowed}")
    if len(value) > 200:
        raise ValueError("at most 200 characters (an SMTP reply line is limited, RFC 5321 section 4.5.3.1.5)")
    return value


def parse_domain_patterns(text: str) -> frozenset[str]:
    """Domains, each either ``example.org`` (that domain) or PostSRSd's ``.example.org`` (any
    subdomain of example.org, not example.org itself: list both for both)."""
    patterns = set()
    for item in _split_list(text.lower()):
        item = item.rstrip(".")
        if not is_hostname(item.removeprefix(".")):
            raise ValueError(f"bad domain {item!r}: expected example.org, or .example.org for its subdomains")
        patterns.add(item)
    return frozenset(patterns)


def domain_matches(domain: str, patterns: frozenset[str]) -> bool:
    """Whether ``domain`` is in ``patterns`` (see :func:`parse_domain_patterns`)."""
    name = domain.lower().rstrip(".")
    if name in patterns:
        return True
    labels = name.split(".")
    return any("." + ".".join(labels[i:]) in patterns for i in range(1, len(labels)))


def parse_socketmap(text: str) -> Optional[SocketSpec]:
    """Where the SRS socketmap table listens: empty (off), ``unix:/path`` or ``inet:PORT@HOST`` on loopback.

    Loopback only: whoever can ask the forward map gets addresses we sign, and the reverse map
    (and the milter) relays mail to whatever such an address stands for.
    """
    if not text.strip():
        return None
    spec = parse_socket(text)
    if spec.family != "unix" and not is_loopback(spec.address):
        raise ValueError(f"{spec.address} is not a loopback address: serve the SRS socketmap on 127.0.0.1, "
                         "::1 or a unix socket (anyone who can query it gets addresses we sign)")
    return spec


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or localhost) is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _int_parser(low: int, high: int, unit: str = "") -> Callable[[str], int]:
    return lambda text: whole_number(text.strip(), low, high, f"expected a whole number from {low} to {high}{unit}")


def parse_listen(text: str) -> str:
    """``HOST:PORT`` or ``[IPv6]:PORT`` for the metrics page, or empty."""
    value = text.strip()
    if not value:
        return ""
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[0-9.]+|localhost):([0-9]{1,5})", value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9899 or [::1]:9899")
    host = match.group(1).strip("[]")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"bad address {host!r}") from None
    return value


# --------------------------------------------------------------------------- the key table

@dataclass(frozen=True)
class Key:
    name: str
    parse: Callable[[str], Any]
    default: str  # as written in a config file
    help: str
    shown: str = ""  # how the docs show a default "" that means more than empty ("host name")


KEYS: tuple[Key, ...] = (
    Key("socket", parse_socket, DEFAULT_SOCKET,
        "Where the milter listens: `inet:PORT@HOST`, `inet6:PORT@HOST` or `unix:/path`."),
    Key("mode", _enum_parser(Mode), "header-only",
        "`header-only` never rejects or defers; it adds headers and logs what enforcement would have done. "
        "`enforce` rejects/defers as configured."),
    Key("header_type", _enum_parser(HeaderType), "authentication-results",
        "Which headers to add: `authentication-results`, `received-spf`, `both` or `none`."),
    Key("authserv_id", parse_authserv_id, "",
        "authserv-id of our Authentication-Results headers and the `receiver=` of Received-SPF. "
        "Default: this machine's host name.", shown="host name"),
    Key("trusted_networks", parse_networks, "loopback",
        "Clients in these networks are not checked (CIDR list, IPv4 and IPv6; `loopback` = 127.0.0.0/8, ::1). "
        "IPv4-mapped IPv6 networks count as the IPv4 network they stand for (`::ffff:10.0.0.0/104` = 10.0.0.0/8; "
        "a prefix shorter than /96 is an error). An empty value trusts no network."),
    Key("trust_authenticated", parse_bool, "yes",
        "Do not check SASL-authenticated clients (the MTA's `{auth_authen}` macro)."),
    Key("trusted_helo_names", parse_domains, "",
        "Clients whose HELO name is listed here and passes SPF for the client's address are not checked "
        "(a relay or forwarder you know by name). A listed name that does not pass is checked as usual."),
    Key("trusted_ptr_domains", parse_domains, "",
        "Clients with a validated PTR name (RFC 7208 section 5.5) in one of these domains or below are not "
        "checked (a forwarder with predictable host names and no SPF record). Costs a PTR lookup and up to "
        "10 address lookups per connection, within dns_timeout."),
    Key("trusted_spf_domains", parse_domain_list, "",
        "Clients that these domains' own SPF records authorize are not checked, whatever the sender (a "
        "forwarder that publishes SPF, e.g. `pobox.com`). Costs one SPF evaluation per domain, in the order "
        "listed, within dns_timeout; a DNS error there counts as not authorized."),
    Key("skip_macros", parse_macros, "",
        "Transactions are not checked when an MTA macro has a listed value: `{macro}=value` entries, e.g. "
        "`{daemon_name}=submission` for a submission port (Postfix: `-o milter_macro_daemon_name=submission` "
        "on that service in master.cf). Values are compared exactly; `{macro}` alone matches any non-empty value."),
    Key("helo_reject_results", parse_results, "fail",
        "HELO results that reject (list of fail, softfail, neutral, none, permerror; empty = never)."),
    Key("mailfrom_reject_results", parse_results, "fail",
        "MAIL FROM results that reject (same choices as helo_reject_results)."),
    Key("check_identities", parse_identities, "helo, mailfrom",
        "Identities checked: `helo`, `mailfrom` or both. One left out is not looked up, reported or "
        "refused on; the null sender's MAIL FROM identity is its HELO name (RFC 7208 section 2.4), so "
        "`mailfrom` alone still checks it."),
    Key("helo_reject_scope", _enum_parser(HeloRejectScope), "all",
        "`all`: helo_reject_results refuse any message; `null-sender`: only messages with the null sender "
        "(bounces), whose only identity is the HELO name (policyd-spf's `HELO_reject = Null`)."),
    Key("require_pass_domains", parse_domains, "",
        "Sender domains that always send from servers their SPF authorizes: any MAIL FROM result but "
        "`pass` is refused (temperror deferred with 451 4.7.24) for them, whatever mailfrom_reject_results "
        "says."),
    Key("temperror_action", _enum_parser(TempErrorAction), "defer",
        "What a MAIL FROM temperror does in enforce mode: `defer` (451 4.7.24) or `accept`. "
        "A HELO temperror alone never defers."),
    Key("reject_text", parse_reject_text, "",
        "Text of SPF refusals instead of the built-in one, with placeholders `{result}`, `{domain}`, "
        "`{ip}`, `{identity}` and `{sender}` (cleaned for SMTP, as they come from the client), e.g. "
        "`SPF {result} for {domain}, see https://www.example.com/spf`. Empty: the built-in text."),
    Key("enhanced_status_codes", parse_bool, "yes",
        "Put RFC 3463 enhanced status codes (5.7.23, 4.7.24, ...) in the milter's refusals. `no` leaves "
        "them out of every refusal it gives, for old clients (Postfix passes such a reply on as it is)."),
    Key("exempt_recipients", parse_recipients, "postmaster, abuse",
        "Recipients never refused (RFC 5321 section 4.5.1): local parts, or full addresses."),
    Key("dns_timeout", parse_timeout, "20",
        "Time budget in seconds for all DNS lookups of one transaction (HELO and MAIL FROM together). "
        "RFC 7208 section 4.6.4 asks that a check may take at least 20 seconds; one budget of 20 s for "
        "both identities meets that and stays below Postfix's milter_command_timeout (30 s), so a slow "
        "DNS answer gives our temperror reply instead of Postfix's milter_default_action. Raise Postfix's "
        "timeout (and Sendmail's T=R:) before raising this."),
    Key("dns_servers", parse_dns_servers, "",
        "DNS servers to ask (IP, IP:PORT or [IPv6]:PORT, comma-separated). Default: /etc/resolv.conf.",
        shown="/etc/resolv.conf"),
    Key("dns_cache_size", parse_cache_size, "10000",
        "Number of DNS answers kept in the in-process cache (TTL honoured), and of SPF results: a result for "
        "a client address and domain is reused while every DNS answer it came from is cached (records with "
        "macros are evaluated for every sender). 0 turns both off."),
    Key("on_error", _enum_parser(ErrorAction), "tempfail",
        "Answer when the milter hits an internal error: `tempfail` or `accept`."),
    Key("workers", parse_workers, "1",
        "Worker processes sharing the socket: a number, or `auto` for one per CPU core (at most 8). Each "
        "has its own DNS cache and about 20 MB of memory; see docs/PERFORMANCE.md."),
    Key("user", parse_account, "",
        "Started as root: switch to this user after opening the socket. Empty: keep the user it was started as."),
    Key("group", parse_account, "",
        "Group to switch to with `user` (default: that user's primary group)."),
    Key("socket_mode", parse_mode, "0660", "Permissions of a unix socket (octal)."),
    Key("socket_group", parse_account, "",
        "Group of a unix socket, e.g. `postfix`, so the MTA can connect. Empty: the process's group."),
    Key("socket_keep_link", parse_bool, "yes",
        "Keep a second hard link to a unix socket (PATH.keep) so the path can be put back if a worker "
        "stops unexpectedly and libmilter removes it. Sendmail refuses a socket with two links: set `no` "
        "for Sendmail."),
    Key("pid_file", parse_path, "", "Write the process id here (empty: no pid file); removed on exit. "
        "A symbolic link at this path stops the start; a file there is replaced, not written through."),
    Key("log_destination", _enum_parser(LogDestination), "stderr",
        "`stderr` or `syslog` (via /dev/log)."),
    Key("log_level", _choice_parser("debug", "info", "warning", "error", expected="expected debug, info, warning or error"),
        "info", "`debug`, `info`, `warning` or `error`."),
    Key("syslog_facility", _choice_parser("mail", "daemon", "user", *(f"local{i}" for i in range(8))), "mail",
        "Syslog facility when log_destination = syslog."),
    Key("srs_domain", parse_optional_hostname, "",
        "Domain of our SRS addresses; setting it turns SRS on. The MTA must accept any address in it "
        "(see README, SRS)."),
    Key("srs_secrets_file", parse_path, "/etc/spfmilter/srs-secrets",
        "SRS secrets, one per line: the first signs, all verify. Must not be readable by others; "
        "create it with `spfmilter srs genkey FILE`."),
    Key("srs_hash_length", _int_parser(4, 27), "4", "Characters of signature in the SRS addresses we write."),
    Key("srs_hash_min_length", _int_parser(1, 27), "4",
        "Shortest signature accepted when an SRS address comes back (at most srs_hash_length)."),
    Key("srs_max_age", _int_parser(1, 1000, " days"), "21", "Days an SRS address stays valid for bounces."),
    Key("srs_separator", _choice_parser("=", "+", "-", expected="expected =, + or -"), "=",
        "Character after `SRS0`/`SRS1` in the addresses we write: `=`, `+` or `-`."),
    Key("local_domains", parse_domains, "",
        "Domains delivered on this host: senders in them keep their address when the client is trusted "
        "or logged in (from anyone else they are rewritten), recipients outside them count as forwarded."),
    Key("srs_forward_table", parse_path, "",
        "A file in Postfix virtual(5) source format; recipients listed there with a target outside "
        "local_domains count as forwarded (e.g. /etc/postfix/virtual)."),
    Key("srs_exclude_domains", parse_domain_patterns, "",
        "Sender domains never rewritten; `.example.org` (PostSRSd's form) stands for every subdomain of "
        "example.org."),
    Key("srs_rewrite_trusted", parse_bool, "no",
        "Also rewrite the sender of mail from trusted networks and SASL-authenticated clients."),
    Key("srs_socketmap", parse_socketmap, "",
        "Also serve SRS as a Postfix socketmap table (maps `forward` and `reverse`, the protocol of "
        "PostSRSd 2) for sender_canonical_maps and recipient_canonical_maps, which cover mail Postfix "
        "forwards after alias and .forward expansion: `unix:/path` (mode and group as for `socket`) or "
        "`inet:PORT@127.0.0.1`; empty: off. Needs srs_domain."),
    Key("enforce_domains", parse_domains, "",
        "Recipient domains where refusals are enforced even when `mode = header-only`: move the domains "
        "you host to enforcement one at a time."),
    Key("header_only_domains", parse_domains, "",
        "Recipient domains kept in header-only mode when `mode = enforce`."),
    Key("header_only_senders", parse_domains, "",
        "Sender domains whose SPF results never refuse a message (a partner with a broken record): "
        "marked and logged as `would-reject` only."),
    Key("spf_fail_hold", _enum_parser(FailHold), "none",
        "`dkim`: hold a refusal for an SPF fail of MAIL FROM until the end of the message and accept the "
        "message when it has a valid DKIM signature whose d= has the same organisational domain (Public "
        "Suffix List) as its From: and MAIL FROM domains (RFC 7489 sections 3.1.1 and 10.1)."),
    Key("metrics_listen", parse_listen, "",
        "`HOST:PORT` of the Prometheus metrics page, e.g. `127.0.0.1:9899` (keep it on loopback); "
        "empty: no metrics."),
)

KEYS_BY_NAME = {key.name: key for key in KEYS}


def default_authserv_id() -> str:
    """This machine's host name (no DNS query is made)."""
    name = socket.gethostname()
    return name if is_hostname(name) else "localhost"


def parse_text(text: str, source: str = "<string>", *, authserv_id_default: str | None = None) -> Config:
    """Parse configuration text; raise :class:`ConfigError` listing every problem."""
    values: dict[str, object] = {}
    seen: dict[str, int] = {}
    problems: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, eq, value = line.partition("=")
        name = name.strip()
        where = f"{source}:{lineno}"
        if not eq:
            problems.append(f"{where}: expected 'key = value', got {_shorten(line)!r}")
            continue
        key = KEYS_BY_NAME.get(name)
        if key is None:
            problems.append(f"{where}: unknown key '{_shorten(name)}'{unknown_key_hint(name)}")
            continue
        if name in seen:
            problems.append(f"{where}: key '{name}' already set on line {seen[name]}")
            continue
        seen[name] = lineno
        try:
            values[name] = key.parse(value)
        except ValueError as exc:
            problems.append(f"{where}: bad value for '{name}': {_shorten(value.strip())!r}: {exc}")
    if problems:
        raise ConfigError(problems)
    config = build(values, source, authserv_id_default=authserv_id_default)
    problems = cross_check(config)
    if problems:
        raise ConfigError([f"{source}: {problem}" for problem in problems])
    return config


def unknown_key_hint(name: str) -> str:
    """What to say after "unknown key": where another program's key (policyd-spf, pyspf-milter,
    PostSRSd) went in spfmilter, else the nearest key of ours, else nothing."""
    foreign = foreignkeys.hint(name)
    if foreign:
        return f": {foreign}"
    near = difflib.get_close_matches(name.lower().replace("-", "_"), KEYS_BY_NAME, n=1)
    return f" (did you mean '{near[0]}'?)" if near else ""


def cross_check(config: Config) -> list[str]:
    """Problems that involve several keys."""
    problems = []
    if config.srs_hash_min_length > config.srs_hash_length:
        problems.append("srs_hash_min_length cannot be more than srs_hash_length")
    if config.srs and domain_matches(config.srs_domain, config.srs_exclude_domains):
        problems.append("srs_domain cannot be in srs_exclude_domains")
    if config.require_pass_domains and "mailfrom" not in config.check_identities:
        problems.append("require_pass_domains needs mailfrom in check_identities")
    if config.srs_socketmap is not None and not config.srs:
        problems.append("srs_socketmap needs srs_domain (SRS is off)")
    if config.srs_socketmap is not None and config.srs_socketmap == config.socket:
        problems.append("srs_socketmap cannot be the milter's socket")
    both = sorted(config.enforce_domains & config.header_only_domains)
    if both:
        problems.append(f"{', '.join(both)}: in both enforce_domains and header_only_domains")
    return problems


def build(values: dict[str, Any], source: str = BUILT_IN, *, authserv_id_default: str | None = None) -> Config:
    """Make a Config from parsed values; every other key gets its default from KEYS."""
    full = {key.name: key.parse(key.default) for key in KEYS if key.name not in values and key.name != "authserv_id"}
    if "authserv_id" not in values:  # the one default computed at start-up
        full["authserv_id"] = authserv_id_default or default_authserv_id()
    return Config(source=source, **full, **values)


def load(path: str) -> Config:
    """Read and parse a config file; unreadable files are a ConfigError too."""
    try:
        with open(path, encoding="utf-8-sig") as handle:  # tolerate a byte-order mark
            text = handle.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    return parse_text(text, path)


def defaults() -> Config:
    return build({})


def describe(config: Config) -> Iterable[str]:
    """The effective configuration as ``key = value`` lines (for --check-config)."""
    for key in KEYS:
        value = getattr(config, key.name)
        yield f"{key.name} = {format_value(value, key.name)}"


def format_value(value: object, name: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, frozenset):
        return ", ".join(sorted(value))
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    if isinstance(value, int) and not isinstance(value, bool) and value == 0 and name == "workers":
        return "auto"
    if name == "socket_mode":
        return f"{value:04o}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def replace(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, **changes)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
