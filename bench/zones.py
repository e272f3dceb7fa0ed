"""A deterministic, realistic SPF world for the benchmark: DNS zones, DNS faults and test cases.

``generate(n_domains, n_helos, seed)`` builds a :class:`World`:

* ``zones`` in the ``DNSServer.load()`` form (``{name: {"TXT": [...], "A": [...], "MX": ["10 mx.x"]}}``);
* ``faults``: ``(name, mode)`` pairs for ``DNSServer.fault(name, mode)`` (SERVFAIL for temperror domains);
* ``cases``: :class:`Case` (client IP, HELO, MAIL FROM address, expected SPF results for both identities).

The world looks like the real one: a few big e-mail providers with two or three levels of
``include:`` and long ``ip4:``/``ip6:`` lists, a hosting company whose customers ``redirect=`` to it,
self-hosted domains with ``a``, ``mx`` (MX and A/AAAA records), ``ip4``/``ip6`` ranges and a few
``exists:%{i}...`` policies, domains without SPF or without DNS at all, and the usual mistakes
(typos, two SPF records, ``include:`` of a domain without SPF, too many DNS lookups, too many void
lookups, too many MX records).  Sender domains are split between the seven results in the proportions
of :data:`MIX`; every case of a domain expects that domain's result.

Only documentation and shared address space is used: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
100.64.0.0/10 (DNS data only; nothing ever connects there) and 2001:db8::/32.

The expected results come from :func:`check_host`, a small RFC 7208 evaluator over the zone data that
mirrors pyspf's strict processing (the order of lookups and where the DNS lookup and void lookup limits
strike).  Generation refuses to emit a case whose evaluated result is not the one intended, and
``tests/unit/test_bench_zones.py`` checks every expectation against spfmilter's own verifier.

Command line (writes the world, and optionally the files ``python -m tests.support.dnsserver`` reads)::

    python -m bench.zones --domains 600 --helos 40 --seed 1 --out world.json \\
        [--zones-out zones.json] [--faults-out faults.json]
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

__all__ = ["Case", "World", "generate", "cold_world", "zipf_cases", "zone_ttls", "check_host", "evaluate_case", "MIX", "RESULTS", "ALLOWED_NETWORKS"]

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
#: Share of sender domains per MAIL FROM result.
MIX = {"pass": 0.50, "fail": 0.12, "softfail": 0.12, "neutral": 0.03, "none": 0.10, "permerror": 0.08,
       "temperror": 0.05}
#: Every address in the zones and every client address lies in one of these.
ALLOWED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "100.64.0.0/10", "2001:db8::/32"))

FORMAT = "spfmilter-bench-world/1"
FAULT_MODE = "servfail"


# ----------------------------------------------------------------------------------------------- model

@dataclass(frozen=True)
class Case:
    """One SMTP session: who connects, what it says, and the SPF results spfmilter must report."""

    client_ip: str
    helo: str
    sender: str  # MAIL FROM address without angle brackets
    expected_mailfrom: str
    expected_helo: str

    @property
    def domain(self) -> str:
        return self.sender.rpartition("@")[2]

    @property
    def family(self) -> int:
        return 6 if ":" in self.client_ip else 4


@dataclass
class World:
    zones: dict
    faults: list = field(default_factory=list)  # [(name, mode)]
    cases: list = field(default_factory=list)  # [Case]
    meta: dict = field(default_factory=dict)

    # -- persistence

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "meta": self.meta,
            "zones": self.zones,
            "faults": [list(f) for f in self.faults],
            "cases": [[c.client_ip, c.helo, c.sender, c.expected_mailfrom, c.expected_helo] for c in self.cases],
        }

    @classmethod
    def from_json(cls, data: dict) -> "World":
        if data.get("format") != FORMAT:
            raise ValueError(f"not a benchmark world (format {data.get('format')!r}, expected {FORMAT!r})")
        return cls(zones=data["zones"], faults=[tuple(f) for f in data["faults"]],
                   cases=[Case(*c) for c in data["cases"]], meta=data.get("meta", {}))

    def save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_json(), handle, indent=None, separators=(",", ":"), sort_keys=False)
            handle.write("\n")

    @classmethod
    def load(cls, path) -> "World":
        with open(path, encoding="utf-8") as handle:
            return cls.from_json(json.load(handle))

    def save_dns_files(self, zones_path=None, faults_path=None) -> None:
        """Write the ``--zone`` / ``--faults`` files of ``python -m tests.support.dnsserver``."""
        if zones_path is not None:
            with open(zones_path, "w", encoding="utf-8") as handle:
                json.dump(self.zones, handle)
        if faults_path is not None:
            with open(faults_path, "w", encoding="utf-8") as handle:
                json.dump([list(f) for f in self.faults], handle)

    def apply(self, server) -> None:
        """Load the zones and faults into a ``tests.support.dnsserver.DNSServer``."""
        server.load(self.zones)
        for name, mode in self.faults:
            server.fault(name, mode)

    # -- analysis

    def lookups(self) -> set:
        """Every (name, type) a full evaluation of all cases (HELO and MAIL FROM) would look up."""
        faults = dict(self.faults)
        seen: set = set()
        for case in self.cases:
            seen.update(evaluate_case(self.zones, faults, case.client_ip, case.helo, case.sender)[2])
        return seen

    def distinct_names(self) -> list:
        """Every name a full evaluation of all cases would look up (sorted, lower case)."""
        return sorted({name for name, _ in self.lookups()})

    def domain_results(self) -> dict:
        """Sender domain -> its expected MAIL FROM result."""
        return {case.domain: case.expected_mailfrom for case in self.cases}

    def summary(self) -> str:
        mix = Counter(self.domain_results().values())
        helo = Counter(case.expected_helo for case in self.cases)
        v6 = sum(1 for case in self.cases if case.family == 6)
        return (f"{len(self.domain_results())} sender domains ("
                + ", ".join(f"{r} {mix.get(r, 0)}" for r in RESULTS)
                + f"); {len(self.cases)} cases ({v6} IPv6); HELO results "
                + ", ".join(f"{r} {n}" for r, n in sorted(helo.items()))
                + f"; {len(self.zones)} DNS names, {len(self.faults)} faults")


def mix_counts(n: int) -> dict:
    """Domains per result for ``n`` domains (largest remainder, so they add up to n)."""
    exact = {r: MIX[r] * n for r in RESULTS}
    counts = {r: int(exact[r]) for r in RESULTS}
    rest = n - sum(counts.values())
    for r in sorted(RESULTS, key=lambda r: (-(exact[r] - counts[r]), RESULTS.index(r)))[:rest]:
        counts[r] += 1
    return counts


# ----------------------------------------------------------------------------------------------- evaluator

class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = ("a", "mx", "ptr", "exists", "include", "ip4", "ip6", "all")
_COMMON_MISTAKES = ("prt", "ip", "ipv4", "ipv6", "all.")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_RE_IP4 = re.compile(rf"^{_OCTET}(?:\.{_OCTET}){{3}}$")
_RE_MODIFIER = re.compile(r"^([a-z][a-z0-9_\-.]*)=(.*)$", re.IGNORECASE | re.DOTALL)
_RE_DUAL_CIDR = re.compile(r"//(0|[1-9]\d*)$")
_RE_CIDR = re.compile(r"/(0|[1-9]\d*)$")
_RE_MACRO = re.compile(r"%\{([a-zA-Z])(\d*)(r?)([.\-+,/_=]*)\}|%%|%_|%-")
_RE_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_FAULTS_TEMP = {"servfail", "refused", "timeout", "malformed"}
MAX_LOOKUPS = 10
MAX_VOID = 2
MAX_MX = 10


def _is_spf_domain(name: str) -> bool:
    """A multi-label host name whose top label is not numeric (what spfmilter evaluates)."""
    name = name.rstrip(".")
    if not name or len(name) > 253 or "." not in name:
        return False
    labels = name.split(".")
    return all(_RE_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


class _Evaluation:
    """One check_host() run (RFC 7208 section 4) over zone data, in pyspf's strict order."""

    def __init__(self, zones: dict, faults: dict, ip: str, sender: str, helo: str):
        self.zones = zones
        self.faults = faults
        self.ip = ipaddress.ip_address(ip)
        self.v6 = self.ip.version == 6
        self.sender = sender
        self.local, _, self.o = sender.rpartition("@")
        self.helo = helo
        self.rr = "AAAA" if self.v6 else "A"
        self.lookups = 0
        self.voids = 0
        self.seen: list = []

    # -- DNS

    def dns(self, name: str, qtype: str, ignore_void: bool = False) -> list:
        name = name.rstrip(".").lower()
        if not name or not all(0 < len(label) < 64 for label in name.split(".")):
            return []
        self.seen.append((name, qtype))
        mode = self.faults.get(name)
        if mode in _FAULTS_TEMP:
            raise _TempError(f"{mode} for {name}/{qtype}")
        node = self.zones.get(name) if mode != "nxdomain" else None
        values = list(node.get(qtype, ())) if node else []
        if not values and not ignore_void:
            self.voids += 1
            if self.voids > MAX_VOID:
                raise _PermError("void lookup limit exceeded")
        return values

    def spf_record(self, domain: str) -> Optional[str]:
        if not all(0 < len(label) < 64 for label in domain.split(".")):
            return None
        texts = ["".join(t) if isinstance(t, (list, tuple)) else t for t in self.dns(domain, "TXT")]
        records = [t for t in texts if t.lower() == "v=spf1" or t[:7].lower() == "v=spf1 "]
        if len(records) > 1:
            raise _PermError(f"two or more SPF records for {domain}")
        return records[0] if records else None

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError("too many DNS lookups")

    # -- macros (RFC 7208 section 7)

    def expand(self, spec: str, domain: str) -> str:
        def letter(char: str) -> str:
            char = char.lower()
            if char == "i":
                if self.v6:
                    return ".".join(self.ip.exploded.replace(":", "").upper())
                return str(self.ip)
            if char == "v":
                return "ip6" if self.v6 else "in-addr"
            if char == "d":
                return domain
            if char == "o":
                return self.o
            if char == "s":
                return self.sender
            if char == "l":
                return self.local
            if char == "h":
                return self.helo
            raise _PermError(f"unsupported macro letter {char!r}")

        def replace(match: re.Match) -> str:
            text = match.group(0)
            if text == "%%":
                return "%"
            if text == "%_":
                return " "
            if text == "%-":
                return "%20"
            value = letter(match.group(1))
            digits, reverse, delimiters = match.group(2), match.group(3), match.group(4) or "."
            parts = re.split("[" + re.escape(delimiters) + "]", value)
            if reverse:
                parts.reverse()
            if digits:
                parts = parts[-int(digits):]
            return ".".join(parts)

        if re.search(r"%(?![{%_-])", _RE_MACRO.sub("", spec)):
            raise _PermError(f"invalid macro in {spec!r}")
        expanded = _RE_MACRO.sub(replace, spec).rstrip(".")
        while len(expanded) > 253 and "." in expanded:
            expanded = expanded.split(".", 1)[1]
        return expanded

    # -- evaluation

    def _parse_mechanism(self, term: str, domain: str) -> tuple:
        if term.endswith(","):
            raise _PermError(f"comma after {term!r}")
        text, cidr, cidr6 = term, None, None
        parts = _RE_DUAL_CIDR.split(text)
        if len(parts) == 3:
            text, cidr6 = parts[0], int(parts[1])
        parts = _RE_CIDR.split(text)
        if len(parts) == 3:
            text, cidr = parts[0], int(parts[1])
        name, colon, arg = text.partition(":")
        name = name.lower()
        if not colon:
            arg = None if name == "exists" else domain
        qualifier = "pass"
        if name and name[0] in _QUALIFIERS:
            qualifier, name = _QUALIFIERS[name[0]], name[1:]
        if name in _COMMON_MISTAKES:
            raise _PermError(f"unknown mechanism {term!r}")
        if name in ("a", "mx"):
            if name == "a" and arg and _RE_IP4.match(arg):
                raise _PermError(f"ip4 address in a mechanism {term!r}")
            if (cidr is not None and cidr > 32) or (cidr6 is not None and cidr6 > 128):
                raise _PermError(f"bad CIDR length in {term!r}")
            length = (128 if cidr6 is None else cidr6) if self.v6 else (32 if cidr is None else cidr)
        elif name == "ip4" or _RE_IP4.match(name):
            if name != "ip4":
                raise _PermError(f"missing ip4: in {term!r}")
            if cidr6 is not None or (cidr is not None and cidr > 32) or not _RE_IP4.match(arg or ""):
                raise _PermError(f"bad ip4 {term!r}")
            length = 32 if cidr is None else cidr
        elif name == "ip6":
            if cidr6 is not None or (cidr is not None and cidr > 128):
                raise _PermError(f"bad ip6 {term!r}")
            try:
                ipaddress.IPv6Address(arg or "")
            except ValueError:
                raise _PermError(f"bad ip6 {term!r}") from None
            length = 128 if cidr is None else cidr
        else:
            if (cidr is not None or cidr6 is not None) and name in _MECHANISMS:
                raise _PermError(f"CIDR not allowed in {term!r}")
            length = 128 if self.v6 else 32
        if name in ("a", "mx", "ptr", "exists", "include"):
            if name == "exists" and not arg:
                raise _PermError("exists without domain")
            arg = self.expand(arg, domain)
            if not arg:
                raise _PermError(f"empty domain in {term!r}")
            if name == "include" and arg == domain:
                raise _PermError("include of itself")
            return qualifier, name, arg, length
        if name == "all" and ":" in term:
            raise _PermError(f"argument to all: {term!r}")
        if name not in _MECHANISMS:
            raise _PermError(f"unknown mechanism {term!r}")
        return qualifier, name, arg, length

    def _matches(self, addresses: Iterable[str], length: int) -> bool:
        for address in addresses:
            try:
                network = ipaddress.ip_network(f"{address}/{length}", strict=False)
            except ValueError:
                continue
            if network.version == self.ip.version and self.ip in network:
                return True
        return False

    def check(self, record: Optional[str], domain: str, depth: int) -> str:
        if record is None:
            return "none"
        terms = record.split(" ")
        if terms[0].lower() != "v=spf1":
            return "none"
        mechanisms, modifiers, redirect = [], [], None
        for term in (t for t in terms[1:] if t):
            modifier = _RE_MODIFIER.match(term)
            if not modifier:
                mechanisms.append(self._parse_mechanism(term, domain))
                continue
            name, arg = modifier.group(1), modifier.group(2)
            if name in modifiers:
                raise _PermError(f"{name}= twice")
            modifiers.append(name)
            if name == "exp":
                if not arg:
                    raise _PermError("empty exp=")
                target = self.expand(arg, domain)
                if target:
                    try:  # pyspf fetches the explanation at once and ignores any failure
                        self.dns(target, "TXT", ignore_void=True)
                    except (_TempError, _PermError):
                        pass
            elif name == "redirect":
                self.count_lookup()
                redirect = self.expand(arg, domain)
                if not redirect:
                    raise _PermError("empty redirect=")
        for qualifier, name, arg, length in mechanisms:
            if name == "include":
                self.count_lookup()
                result = self.check(self.spf_record(arg), arg, depth + 1)
                if result == "pass":
                    return qualifier
                if result == "none":
                    raise _PermError(f"include:{arg} has no SPF record")
            elif name == "all":
                return qualifier
            elif name == "exists":
                self.count_lookup()
                if self.dns(arg, "A"):
                    return qualifier
            elif name == "a":
                self.count_lookup()
                if self._matches(self.dns(arg, self.rr), length):
                    return qualifier
            elif name == "mx":
                self.count_lookup()
                exchanges = self.dns(arg, "MX")
                if len(exchanges) > MAX_MX:
                    raise _PermError("too many MX records")
                pairs = sorted((int(p), h.rstrip(".").lower()) for p, h in (mx.split() for mx in exchanges))
                addresses = [a for _, host in pairs for a in self.dns(host, self.rr)]
                if self._matches(addresses, length):
                    return qualifier
            elif name == "ip4":
                if not self.v6 and self._matches([arg], length):
                    return qualifier
            elif name == "ip6":
                if self.v6 and self._matches([arg], length):
                    return qualifier
            elif name == "ptr":
                raise _PermError("ptr is not modelled")
        if redirect is not None:
            target = self.spf_record(redirect)
            if not target:
                raise _PermError(f"redirect={redirect} has no SPF record")
            return self.check(target, redirect, depth)
        return "neutral"


def check_host(zones: dict, faults: dict, ip: str, domain: str, sender: str, helo: str = "") -> tuple:
    """(result, [(name, type) looked up]) for one identity, as spfmilter/pyspf would evaluate it."""
    run = _Evaluation(zones, faults, ip, sender, helo)
    try:
        result = run.check(run.spf_record(domain), domain, 0)
    except _TempError:
        result = "temperror"
    except _PermError:
        result = "permerror"
    return result, run.seen


def evaluate_case(zones: dict, faults: dict, ip: str, helo: str, sender: str) -> tuple:
    """(mailfrom result, helo result, lookups) for one session, HELO first as spfmilter does."""
    seen: list = []
    if _is_spf_domain(helo):
        helo_result, names = check_host(zones, faults, ip, helo.rstrip("."), f"postmaster@{helo}", helo)
        seen += names
    else:
        helo_result = "none"
    domain = sender.rpartition("@")[2].rstrip(".")
    if not sender:
        return helo_result, helo_result, seen
    if not _is_spf_domain(domain):
        return "none", helo_result, seen
    mailfrom, names = check_host(zones, faults, ip, domain, sender, helo)
    return mailfrom, helo_result, seen + names


# ----------------------------------------------------------------------------------------------- generator

_WORDS_A = (
    "acme", "alpine", "amber", "apex", "arctic", "atlas", "aurora", "azure", "beacon", "birch", "blue", "bright",
    "cedar", "civic", "clear", "cobalt", "copper", "coral", "crest", "crystal", "delta", "eagle", "east", "echo",
    "ember", "falcon", "fern", "first", "fox", "frontier", "garnet", "global", "golden", "granite", "green",
    "harbor", "hazel", "high", "indigo", "iron", "jade", "juniper", "keystone", "lake", "linden", "lunar",
    "maple", "meadow", "metro", "midland", "noble", "north", "oak", "ocean", "olive", "orbit", "pacific", "pine",
    "polar", "prime", "quartz", "rapid", "raven", "red", "ridge", "river", "rock", "royal", "sage", "silver",
    "solar", "south", "spruce", "star", "stone", "summit", "sun", "swift", "terra", "tidal", "true", "urban",
    "valley", "vector", "velvet", "vista", "west", "willow", "wind", "zenith",
)
_WORDS_B = (
    "analytics", "bakery", "bank", "bikes", "books", "brewing", "builders", "capital", "care", "clinic",
    "cloud", "coffee", "college", "consulting", "crafts", "credit", "data", "dental", "design", "devices",
    "energy", "events", "farms", "finance", "fitness", "foods", "freight", "games", "garden", "goods", "group",
    "health", "homes", "hotel", "industries", "insurance", "labs", "law", "legal", "logistics", "media",
    "medical", "motors", "music", "networks", "news", "optics", "outdoor", "partners", "pets", "pharma",
    "photo", "press", "print", "realty", "records", "research", "robotics", "school", "security", "shop",
    "software", "solutions", "sports", "studio", "supply", "systems", "tech", "telecom", "textiles", "tools",
    "trading", "travel", "trust", "ventures", "vision", "wear", "wine", "works",
)
_SUFFIXES = (".example", ".example", ".example.com", ".example.net", ".example.org", ".test")
_ISP_WORDS = ("hostnet", "mailhub", "netsys", "cloudbox", "webcore", "datapark", "fibernet", "skyline",
              "bytehouse", "lanwave", "corenet", "relaypoint")
_LOCAL_PARTS = ("info", "news", "newsletter", "noreply", "no-reply", "billing", "support", "alerts", "hello",
                "orders", "john.doe", "j.smith", "marketing", "notifications", "invoices", "team", "sales",
                "office", "admin", "anna.k", "m.mueller", "service", "updates", "contact")
_BOT_HELOS = ("localhost", "ylmf-pc", "User", "WIN-3K9F2L1A7QD", "DESKTOP-8HV2M1P", "mail")
_VERIFICATION = ("google-site-verification={}", "MS=ms{}", "facebook-domain-verification={}",
                 "apple-domain-verification={}", "atlassian-domain-verification={}")
_EXISTS_ANSWER = "100.127.255.254"


class _Provider:
    """A shared SPF policy tree (an e-mail provider or a hosting company) and its outbound MTAs."""

    def __init__(self, key: str, base: str, entry: str, lookup_cost: int):
        self.key = key
        self.base = base
        self.entry = entry  # the name customers include: / redirect= to
        self.lookup_cost = lookup_cost  # DNS-lookup terms one evaluation of the tree uses
        self.nets4: list = []
        self.nets6: list = []
        self.hosts: list = []  # _Host


@dataclass(frozen=True)
class _Host:
    helo: str
    ip: str


# Provider trees: {label: (ip4 blocks, ip6 blocks, [included labels], extra terms, all)}.
_PROVIDER_SPECS = (
    ("googol", "googol-mail.example", "_spf", {
        "_spf": (0, 0, ["_netblocks", "_netblocks2", "_netblocks3"], [], "~all"),
        "_netblocks": (8, 0, [], [], "~all"),
        "_netblocks2": (0, 5, [], [], "~all"),
        "_netblocks3": (5, 0, [], [], "~all"),
    }, "mail-out{j}"),
    ("outlook", "outlook-cloud.example", "spf.protection", {
        "spf.protection": (0, 0, ["spfa.protection", "spfb.protection"], [], "-all"),
        "spfa.protection": (6, 3, [], [], "-all"),
        "spfb.protection": (3, 0, ["spfc.protection"], [], "-all"),
        "spfc.protection": (4, 0, [], [], "-all"),
    }, "mail-eur{j}.outbound"),
    ("chimp", "chimpmail.example", "servers", {
        "servers": (6, 0, [], [], "~all"),
    }, "mail{j}.suw"),
    ("ses", "sesmail.example", "spf", {
        "spf": (5, 2, [], [], "-all"),
    }, "a{j}-smtp.us-east-1"),
    ("zmail", "zmail.example", "spf", {
        "spf": (0, 0, ["spf1", "spf2"], [], "~all"),
        "spf1": (3, 1, [], [], "~all"),
        "spf2": (2, 0, [], [], "~all"),
    }, "sender{j}.mx"),
    ("webhost", "webhost.example", "_spf", {
        "_spf": (2, 0, [], ["a:smtp.webhost.example", "mx:webhost.example"], "~all"),
    }, "smtp{j}"),
)


class _Allocator:
    """Hands out aligned, non-overlapping networks from a pool, in order."""

    def __init__(self, pool: str, wrap: bool = False):
        self.pool = ipaddress.ip_network(pool)
        self.next = int(self.pool.network_address)
        self.wrap = wrap  # start again at the beginning when the pool is used up

    def take(self, prefix: int):
        size = 1 << (self.pool.max_prefixlen - prefix)
        start = -(-self.next // size) * size
        network = ipaddress.ip_network((start, prefix))
        if not network.subnet_of(self.pool) and self.wrap:
            start = int(self.pool.network_address)
            network = ipaddress.ip_network((start, prefix))
        if not network.subnet_of(self.pool):
            raise ValueError(f"address pool {self.pool} exhausted")
        self.next = start + size
        return network


def _random_host(rng: random.Random, network) -> str:
    size = network.num_addresses
    if size <= 2:
        return str(network.network_address)
    return str(network.network_address + rng.randrange(1, min(size - 1, 1 << 16)))


class _Builder:
    def __init__(self, n_domains: int, n_helos: int, seed: int, cases_per_domain: int, ipv6_share: float):
        if n_domains < 1 or cases_per_domain < 1:
            raise ValueError("need at least one domain and one case per domain")
        if n_helos < len(_PROVIDER_SPECS) + 2:
            raise ValueError(f"n_helos must be at least {len(_PROVIDER_SPECS) + 2}")
        self.n_domains = n_domains
        self.n_helos = n_helos
        self.seed = seed
        self.cases_per_domain = cases_per_domain
        self.ipv6_share = ipv6_share
        self.rng = random.Random(seed)
        self.zones: dict = {}
        self.faults: list = []
        self.fault_map: dict = {}
        self.taken: set = set()
        self.nx_domains: list = []
        self.providers: dict = {}
        self.own_groups: list = []  # [(helo, [v4 hosts], [v6 hosts])]
        self.pool4_providers = _Allocator("100.64.0.0/12")
        self.pool4_own = _Allocator("100.96.0.0/12")
        # Noise: addresses in policies that no client ever uses, so they may repeat across domains
        # once the pool is used up (big worlds); every case is still checked by evaluation.
        self.pool4_noise = _Allocator("100.112.0.0/13", wrap=True)
        self.pool6_providers = _Allocator("2001:db8:8000::/33")
        self.pool6_own = _Allocator("2001:db8:100::/40")
        self.pool6_noise = _Allocator("2001:db8:f000::/36")
        self.doc_hosts = [ipaddress.ip_network(f"{base}/28") for base in (
            "192.0.2.16", "192.0.2.64", "192.0.2.128", "198.51.100.32", "198.51.100.96", "198.51.100.192")]

    # -- zone helpers

    def add(self, name: str, rtype: str, value) -> None:
        node = self.zones.setdefault(name.lower(), {})
        values = node.setdefault(rtype, [])
        if value not in values:
            values.append(value)

    def fault(self, name: str) -> None:
        name = name.lower()
        if name not in self.fault_map:
            self.fault_map[name] = FAULT_MODE
            self.faults.append((name, FAULT_MODE))

    def claim(self, name: str) -> bool:
        if name in self.taken:
            return False
        self.taken.add(name)
        return True

    def new_domain(self) -> str:
        rng = self.rng
        for attempt in range(1000):
            name = rng.choice(_WORDS_A) + rng.choice(("", "-")) + rng.choice(_WORDS_B)
            if attempt > 200:
                name += str(rng.randrange(2, 999))
            name += rng.choice(_SUFFIXES)
            if self.claim(name):
                return name
        raise RuntimeError("cannot find a new domain name")

    def noise4(self) -> str:
        return str(self.pool4_noise.take(self.rng.choice((24, 26, 28, 32))))

    def token(self, n: int = 22) -> str:
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def site_records(self, domain: str, with_a: bool = True, with_mx: bool = True) -> None:
        """What most domains have regardless of SPF: a web server, an MX, verification tokens."""
        rng = self.rng
        if with_a:
            self.add(domain, "A", _random_host(rng, self.pool4_noise.take(28)))
        if with_mx:
            choice = rng.random()
            if choice < 0.3:
                self.add(domain, "MX", "10 aspmx.googol-mail.example")
            elif choice < 0.5:
                self.add(domain, "MX", f"0 {domain.replace('.', '-')}.mail.outlook-cloud.example")
                self.add(f"{domain.replace('.', '-')}.mail.outlook-cloud.example", "A",
                         _random_host(rng, self.pool4_noise.take(28)))
            else:
                self.add(domain, "MX", f"10 mx.{domain}")
                self.add(f"mx.{domain}", "A", _random_host(rng, self.pool4_noise.take(28)))
        if rng.random() < 0.3:
            self.add(domain, "TXT", rng.choice(_VERIFICATION).format(self.token()))

    # -- the shared infrastructure

    def build_providers(self, helos_per_provider: int) -> None:
        rng = self.rng
        for key, base, entry_label, tree, helo_pattern in _PROVIDER_SPECS:
            provider = _Provider(key, base, f"{entry_label}.{base}", 0)
            self.claim(base)
            for label, (n4, n6, includes, extra, final) in tree.items():
                name = f"{label}.{base}"
                nets4 = [self.pool4_providers.take(rng.choice((19, 20, 21, 22, 24))) for _ in range(n4)]
                nets6 = [self.pool6_providers.take(rng.choice((40, 44, 48))) for _ in range(n6)]
                provider.nets4 += nets4
                provider.nets6 += nets6
                terms = ([f"include:{inc}.{base}" for inc in includes] + [f"ip4:{n}" for n in nets4]
                         + [f"ip6:{n}" for n in nets6] + list(extra) + [final])
                self.add(name, "TXT", "v=spf1 " + " ".join(terms))
                provider.lookup_cost += 1 + sum(1 for t in extra if t.split(":")[0] in ("a", "mx"))
            self.add(base, "A", _random_host(rng, self.pool4_noise.take(28)))
            self.add(base, "MX", f"10 mx1.{base}")
            self.add(f"mx1.{base}", "A", _random_host(rng, self.pool4_noise.take(28)))
            for j in range(1, helos_per_provider + 1):
                helo = helo_pattern.format(j=j) + "." + base
                self.claim(helo)
                for net in rng.sample(provider.nets4, min(2, len(provider.nets4))):
                    provider.hosts.append(_Host(helo, _random_host(rng, net)))
                if provider.nets6:
                    provider.hosts.append(_Host(helo, _random_host(rng, rng.choice(provider.nets6))))
            self.providers[key] = provider
        # googol's inbound MX (used by customers' MX records)
        self.add("aspmx.googol-mail.example", "A", _random_host(rng, self.pool4_noise.take(28)))
        self.add("aspmx.googol-mail.example", "AAAA", _random_host(rng, self.pool6_noise.take(48)))
        # webhost: smtp.webhost.example (its a: term) and its MX hosts are outbound MTAs too
        webhost = self.providers["webhost"]
        relay = webhost.hosts[0]
        self.add("smtp.webhost.example", "A", relay.ip)
        self.add("webhost.example", "MX", "20 mx2.webhost.example")
        mx2 = _random_host(rng, self.pool4_noise.take(28))
        self.add("mx2.webhost.example", "A", mx2)
        # a provider whose policy name cannot be resolved (temperror for its customers)
        self.claim("brokenrelay.example")
        self.add("spf.brokenrelay.example", "TXT", f"v=spf1 ip4:{self.pool4_noise.take(24)} -all")
        self.fault("spf.brokenrelay.example")

    def build_own_mtas(self, n_groups: int) -> None:
        """Self-hosted and ISP MTAs: each HELO name with two IPv4 (and sometimes one IPv6) addresses."""
        rng = self.rng
        isp_count = 0
        for g in range(n_groups):
            if g % 2 == 0:
                word = rng.choice(_ISP_WORDS)
                isp_count += 1
                helo = f"{rng.choice(('smtp', 'mail', 'out', 'relay', 'mta'))}{isp_count}.{word}.example"
            else:
                helo = ""
                while not helo or not self.claim(helo):
                    helo = (f"{rng.choice(('mail', 'smtp', 'mx', 'mx1', 'mailout'))}."
                            f"{rng.choice(_WORDS_A)}-{rng.choice(_WORDS_B)}{rng.choice(_SUFFIXES)}")
                self.claim(helo.split(".", 1)[1])
            self.claim(helo)
            hosts4 = []
            for k in range(2):
                if self.doc_hosts and (g + k) % 5 == 0:
                    net = self.doc_hosts.pop(0)
                else:
                    net = self.pool4_own.take(24)
                hosts4.append(_Host(helo, _random_host(rng, net)))
            hosts6 = []
            if g % 5 in (1, 3):
                net6 = self.pool6_own.take(48)
                hosts6.append(_Host(helo, str(net6.network_address + 0x25 + rng.randrange(0, 200))))
            self.own_groups.append((helo, hosts4, hosts6))

    def add_helo_records(self) -> None:
        groups = [(helo, h4, h6) for helo, h4, h6 in self.own_groups]
        by_helo: dict = {}
        for provider in self.providers.values():
            for host in provider.hosts:
                by_helo.setdefault(host.helo, []).append(host)
        for helo, h4, h6 in groups:
            by_helo.setdefault(helo, []).extend(h4 + h6)
        self.helo_names = list(by_helo)
        for helo, hosts in by_helo.items():
            self.add(helo, "TXT", "v=spf1 a -all")
            for host in hosts:
                self.add(helo, "AAAA" if ":" in host.ip else "A", host.ip)

    # -- sender domain policies

    def own_group(self, need_v6: bool = False):
        groups = [g for g in self.own_groups if g[2]] if need_v6 else self.own_groups
        return self.rng.choice(groups)

    def pick_providers(self, budget: int, count: int) -> list:
        keys = [k for k in self.providers if k != "webhost"]
        self.rng.shuffle(keys)
        chosen, cost = [], 0
        for key in keys:
            if len(chosen) == count:
                break
            if cost + self.providers[key].lookup_cost <= budget:
                chosen.append(self.providers[key])
                cost += self.providers[key].lookup_cost
        return chosen

    def policy(self, domain: str, kind: str, final: str) -> tuple:
        """Write the SPF policy of ``domain``; return (record text or None, hosts it authorises)."""
        rng = self.rng
        tail = [final] if final else []
        if kind == "bare":
            self.site_records(domain)
            return "v=spf1 " + final, []
        if kind == "ip4":
            helo, h4, h6 = self.own_group()
            terms = []
            for host in h4:
                terms.append(f"ip4:{ipaddress.ip_network(f'{host.ip}/{rng.choice((32, 29, 28, 27, 24))}', strict=False)}")
            if rng.random() < 0.5:
                terms.insert(rng.randrange(len(terms) + 1), f"ip4:{self.noise4()}")
            self.site_records(domain)
            return "v=spf1 " + " ".join(terms + tail), h4
        if kind == "ip46":
            helo, h4, h6 = self.own_group(need_v6=True)
            terms = [f"ip4:{ipaddress.ip_network(f'{h.ip}/{rng.choice((32, 28, 24))}', strict=False)}" for h in h4]
            terms += [f"ip6:{ipaddress.ip_network(f'{h.ip}/{rng.choice((48, 56, 64, 128))}', strict=False)}"
                      for h in h6]
            if rng.random() < 0.3:
                terms.append(f"ip6:{self.pool6_noise.take(48)}")
            self.site_records(domain)
            return "v=spf1 " + " ".join(terms + tail), h4 + h6
        if kind == "a":
            helo, h4, h6 = self.own_group(need_v6=rng.random() < 0.4)
            target = domain if rng.random() < 0.5 else f"mail.{domain}"
            for host in h4 + h6:
                self.add(target, "AAAA" if ":" in host.ip else "A", host.ip)
            self.site_records(domain, with_a=target != domain)
            term = "a" if target == domain else f"a:{target}"
            extra = [f"ip4:{self.noise4()}"] if rng.random() < 0.3 else []
            return "v=spf1 " + " ".join([term] + extra + tail), h4 + h6
        if kind == "mx":
            helo, h4, h6 = self.own_group(need_v6=rng.random() < 0.4)
            self.add(domain, "MX", f"10 mx1.{domain}")
            self.add(domain, "MX", f"20 mx2.{domain}")
            self.add(f"mx1.{domain}", "A", h4[0].ip)
            self.add(f"mx2.{domain}", "A", h4[1].ip)
            for host in h6:
                self.add(f"mx1.{domain}", "AAAA", host.ip)
            self.site_records(domain, with_mx=False)
            terms = rng.choice((["mx"], ["+mx"], ["mx", "a"], ["a", "mx"]))
            if "a" in terms:
                self.add(domain, "A", h4[0].ip)
                for host in h6:
                    self.add(domain, "AAAA", host.ip)
            return "v=spf1 " + " ".join(terms + tail), h4 + h6
        if kind == "include":
            providers = self.pick_providers(8, 1 if rng.random() < 0.7 else 2)
            self.site_records(domain)
            terms = [f"include:{p.entry}" for p in providers]
            if rng.random() < 0.3:
                terms.insert(0, f"ip4:{self.noise4()}")
            return "v=spf1 " + " ".join(terms + tail), [h for p in providers for h in p.hosts]
        if kind == "mixed":
            helo, h4, h6 = self.own_group()
            providers = self.pick_providers(7, 1 if rng.random() < 0.6 else 2)
            self.add(domain, "MX", f"10 mx.{domain}")
            self.add(f"mx.{domain}", "A", h4[0].ip)
            self.site_records(domain, with_mx=False)
            own = f"ip4:{ipaddress.ip_network(f'{h4[1].ip}/{rng.choice((32, 28, 24))}', strict=False)}"
            terms = ["mx", own] + [f"include:{p.entry}" for p in providers]
            return "v=spf1 " + " ".join(terms + tail), h4 + [h for p in providers for h in p.hosts]
        if kind == "redirect":
            self.site_records(domain)
            if rng.random() < 0.5 and final == "~all":  # the hosting company's policy ends in ~all
                webhost = self.providers["webhost"]
                return f"v=spf1 redirect={webhost.entry}", list(webhost.hosts)
            _, h4, _ = self.own_group()
            nets = " ".join(f"ip4:{ipaddress.ip_network(f'{h.ip}/{rng.choice((32, 28))}', strict=False)}" for h in h4)
            self.add(f"_spf.{domain}", "TXT", f"v=spf1 {nets} {final}".rstrip())
            return f"v=spf1 redirect=_spf.{domain}", h4
        if kind == "exists":
            _, h4, _ = self.own_group()
            if rng.random() < 0.5:
                spec = "%{i}._spf.%{d}"
                names = [f"{h.ip}._spf.{domain}" for h in h4]
            else:
                spec = "%{ir}.%{v}._spf.%{d}"
                names = [".".join(reversed(h.ip.split("."))) + f".in-addr._spf.{domain}" for h in h4]
            for name in names:
                self.add(name, "A", _EXISTS_ANSWER)
            self.site_records(domain)
            return "v=spf1 " + " ".join([f"exists:{spec}"] + tail), h4
        raise AssertionError(kind)

    def permerror_policy(self, domain: str, kind: str) -> None:
        rng = self.rng
        _, h4, _ = self.own_group()
        own = f"ip4:{ipaddress.ip_network(f'{h4[0].ip}/{rng.choice((32, 28, 24))}', strict=False)}"
        provider = self.providers[rng.choice(("googol", "chimp", "ses", "outlook"))]
        self.site_records(domain)
        if kind == "typo":
            broken = rng.choice((
                f"{own} inculde:{provider.entry} -all",
                f"{own} include:{provider.entry} ~al",
                f"ipv4:{h4[0].ip} mx -all",
                f"{own} ip4:{h4[1].ip.rsplit('.', 1)[0]}.300 -all",
                f"{own}/33 ~all",
                f"mx, include:{provider.entry}, -all",
                f"a:{h4[0].ip} -all",
            ))
            self.add(domain, "TXT", "v=spf1 " + broken)
        elif kind == "two-records":
            self.add(domain, "TXT", f"v=spf1 {own} -all")
            self.add(domain, "TXT", f"v=spf1 include:{provider.entry} ~all")
        elif kind == "include-none":
            if rng.random() < 0.5:
                target = f"spf.{self.new_domain()}"  # a provider that is gone (NXDOMAIN)
                self.nx_domains.append(target)
            else:
                target = f"mail.{domain}"
                self.add(target, "A", h4[0].ip)  # exists, but publishes no SPF
            self.add(domain, "TXT", f"v=spf1 {own} include:{target} -all")
        elif kind == "too-many-lookups":
            keys = ["googol", "outlook", "zmail", "chimp", "ses"]
            rng.shuffle(keys)
            includes = " ".join(f"include:{self.providers[k].entry}" for k in keys)
            self.add(domain, "TXT", f"v=spf1 a mx {includes} ~all")
        elif kind == "void-lookups":
            self.add(domain, "TXT", f"v=spf1 a:mail.{domain} a:smtp.{domain} a:relay.{domain} {own} -all")
        elif kind == "redirect-none":
            self.add(domain, "TXT", f"v=spf1 redirect=_spf.{domain}")
        elif kind == "many-mx":
            for n in range(12):
                self.add(domain, "MX", f"{10 * (n + 1)} mx{n + 1}.{domain}")
            self.add(f"mx1.{domain}", "A", h4[0].ip)
            self.add(domain, "TXT", "v=spf1 mx -all")
        else:
            raise AssertionError(kind)

    # -- building

    def build(self) -> World:
        rng = self.rng
        n_provider_helos = max(1, (self.n_helos * 35 // 100) // len(_PROVIDER_SPECS))
        self.build_providers(n_provider_helos)
        self.build_own_mtas(self.n_helos - n_provider_helos * len(_PROVIDER_SPECS))
        self.add_helo_records()

        counts = mix_counts(self.n_domains)
        plan = [r for r in RESULTS for _ in range(counts[r])]
        rng.shuffle(plan)
        domains = []  # (domain, intended result, authorised hosts)
        pass_kinds = (("ip4", 22), ("ip46", 6), ("a", 10), ("mx", 14), ("include", 24), ("mixed", 12),
                      ("redirect", 8), ("exists", 4))
        other_kinds = pass_kinds + (("bare", 12),)
        perm_kinds = ("typo", "typo", "two-records", "include-none", "too-many-lookups", "void-lookups",
                      "redirect-none", "many-mx")
        for index, intended in enumerate(plan):
            domain = self.new_domain()
            hosts: list = []
            if intended in ("pass", "fail", "softfail", "neutral"):
                kinds = pass_kinds if intended == "pass" else other_kinds
                kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
                final = {"pass": rng.choice(("-all", "~all", "~all", "?all")), "fail": "-all", "softfail": "~all",
                         "neutral": rng.choice(("?all", ""))}[intended]
                if intended == "neutral" and kind == "bare":
                    final = "?all"
                record, hosts = self.policy(domain, kind, final)
                if intended == "fail" and rng.random() < 0.25:
                    record += f" exp=explain._spf.{domain}"
                    self.add(f"explain._spf.{domain}", "TXT",
                             "%{i} is not one of %{d}'s designated mail servers, see https://%{d}/spf")
                self.add(domain, "TXT", record)
            elif intended == "none":
                if rng.random() < 0.5:
                    self.nx_domains.append(domain)  # no DNS data at all
                else:
                    self.site_records(domain)
                    if rng.random() < 0.3:
                        self.add(domain, "TXT", "spf2.0/pra +mx -all")
            elif intended == "permerror":
                self.permerror_policy(domain, perm_kinds[index % len(perm_kinds)]
                                      if rng.random() < 0.5 else rng.choice(perm_kinds))
            elif intended == "temperror":
                self.site_records(domain)
                if rng.random() < 0.8:
                    provider = self.providers[rng.choice(("googol", "chimp", "ses"))]
                    self.add(domain, "TXT", f"v=spf1 include:{provider.entry} -all")
                    self.fault(domain)  # SERVFAIL for every query of the domain
                else:
                    self.add(domain, "TXT", "v=spf1 include:spf.brokenrelay.example -all")
            domains.append((domain, intended, hosts))
        self.check_names()
        cases = self.make_cases(domains)
        meta = {"n_domains": self.n_domains, "n_helos": self.n_helos, "seed": self.seed,
                "cases_per_domain": self.cases_per_domain, "ipv6_share": self.ipv6_share,
                "helos": self.helo_names}
        return World(zones=self.zones, faults=list(self.faults), cases=cases, meta=meta)

    def check_names(self) -> None:
        names = set(self.zones)
        nx_names = set(self.nx_domains)
        for name in names:  # the name itself and every parent of it (linear, for big worlds)
            labels = name.split(".")
            for parent in (".".join(labels[i:]) for i in range(len(labels))):
                if parent in nx_names:
                    raise RuntimeError(f"generator bug: NXDOMAIN name {parent} has DNS data")
        for name in names:
            if len(name) > 253 or not all(0 < len(label) < 64 for label in name.split(".")):
                raise RuntimeError(f"generator bug: bad DNS name {name!r}")

    def make_cases(self, domains: list) -> list:
        rng = self.rng
        outsiders4 = ([h for _, h4, _ in self.own_groups for h in h4]
                      + [h for p in self.providers.values() for h in p.hosts if ":" not in h.ip])
        outsiders6 = ([h for _, _, h6 in self.own_groups for h in h6]
                      + [h for p in self.providers.values() for h in p.hosts if ":" in h.ip])
        forged_helos = sorted({h.helo for h in outsiders4})
        slots = [(d, intended, hosts, k) for d, intended, hosts in domains for k in range(self.cases_per_domain)]
        eligible = [i for i, (d, intended, hosts, _) in enumerate(slots)
                    if intended != "pass" or any(":" in h.ip for h in hosts)]
        want_v6 = set(rng.sample(eligible, min(len(eligible), round(self.ipv6_share * len(slots)))))
        cases = []
        for i, (domain, intended, hosts, k) in enumerate(slots):
            local = rng.choice(_LOCAL_PARTS)
            if rng.random() < 0.1:
                local = f"bounces+{rng.randrange(10**5, 10**6)}-{self.token(6).lower()}=mx.test"
            sender = f"{local}@{domain}"
            families = (6, 4) if i in want_v6 else (4,)
            case = None
            for family in families:
                case = self.make_case(sender, intended, hosts, family, outsiders4 if family == 4 else outsiders6,
                                      forged_helos)
                if case is not None:
                    break
            if case is None:
                raise RuntimeError(f"generator bug: no client makes {sender} {intended}")
            cases.append(case)
        rng.shuffle(cases)
        return cases

    def make_case(self, sender: str, intended: str, hosts: list, family: int, outsiders: list,
                  forged_helos: list) -> Optional[Case]:
        rng = self.rng
        if intended == "pass":
            candidates = [h for h in hosts if (":" in h.ip) == (family == 6)]
            rng.shuffle(candidates)
        else:
            candidates = [rng.choice(outsiders) for _ in range(40)]
        for attempt, host in enumerate(candidates):
            ip, helo = host.ip, host.helo
            if intended != "pass" and attempt == 0 and rng.random() < 0.15:
                # a bot: address outside every policy, HELO forged or not a domain name
                if family == 4:
                    ip = f"203.0.113.{rng.randrange(1, 255)}"
                    literal = f"[{ip}]"
                else:
                    ip = str(ipaddress.ip_address("2001:db8:bad::") + rng.randrange(1, 1 << 32))
                    literal = f"[IPv6:{ip}]"
                helo = rng.choice(forged_helos + [literal, literal] + list(_BOT_HELOS))
            mailfrom, helo_result, _ = evaluate_case(self.zones, self.fault_map, ip, helo, sender)
            if mailfrom == intended:
                return Case(ip, helo, sender, mailfrom, helo_result)
        return None


def generate(n_domains: int = 600, n_helos: int = 40, seed: int = 1, *, cases_per_domain: int = 2,
             ipv6_share: float = 0.10) -> World:
    """A deterministic SPF world: the same arguments always give the same World."""
    return _Builder(n_domains, n_helos, seed, cases_per_domain, ipv6_share).build()


def cold_world(n_domains: int, n_helos: int = 40, seed: int = 1) -> World:
    """A world for the cold-cache scenario: one case per sender domain, so a run that uses every
    case at most once (``run_load(..., once=True)``) never sees a sender domain twice.  The big
    providers' records and the HELO names stay shared, as on a real MX."""
    return generate(n_domains, n_helos, seed, cases_per_domain=1)


def zipf_cases(world: World, n_sessions: int, exponent: float = 1.0, seed: int = 1) -> list:
    """``n_sessions`` cases whose sender domains follow a Zipf law over the world's domains.

    The domain of rank k (1-based, ranks in the order of first appearance in ``world.cases``) is
    drawn with probability proportional to ``1 / k ** exponent``: a few big senders, a long tail.
    Each draw takes one of that domain's cases (they all expect the domain's result).
    """
    if n_sessions < 0 or exponent <= 0:
        raise ValueError("n_sessions must be >= 0 and exponent > 0")
    by_domain: dict = {}
    for case in world.cases:
        by_domain.setdefault(case.domain, []).append(case)
    domains = list(by_domain)
    cumulative, total = [], 0.0
    for rank in range(1, len(domains) + 1):
        total += rank ** -exponent
        cumulative.append(total)
    rng = random.Random(seed)
    drawn = rng.choices(range(len(domains)), cum_weights=cumulative, k=n_sessions)
    return [rng.choice(by_domain[domains[i]]) for i in drawn]


def zone_ttls(world: World, low: int = 300, high: int = 3600, seed: int = 1) -> dict:
    """A TTL in ``[low, high]`` seconds for every name of the world (deterministic), for
    ``DNSServer.load(zones, ttls=...)`` / ``python -m tests.support.dnsserver --ttls``."""
    if not 0 <= low <= high:
        raise ValueError("need 0 <= low <= high")
    rng = random.Random(seed)
    return {name: rng.randint(low, high) for name in sorted(world.zones)}


# ----------------------------------------------------------------------------------------------- CLI

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zones", description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=600)
    parser.add_argument("--helos", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cases-per-domain", type=int, default=2)
    parser.add_argument("--out", required=True, help="world JSON (zones, faults, cases)")
    parser.add_argument("--zones-out", help="zones JSON for python -m tests.support.dnsserver --zone")
    parser.add_argument("--faults-out", help="faults JSON for python -m tests.support.dnsserver --faults")
    args = parser.parse_args(argv)
    world = generate(args.domains, args.helos, args.seed, cases_per_domain=args.cases_per_domain)
    world.save(args.out)
    world.save_dns_files(args.zones_out, args.faults_out)
    print(world.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
