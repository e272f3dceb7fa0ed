"""The RFC 7208 conformance suite, replayed through the milter's socket.

The suite is the openspf test suite (release 2014.04) that pyspf ships in its source
distribution as ``test/rfc7208-tests.yml``: 16 scenarios, 203 tests (``SCENARIOS`` and
``TESTS`` below; every one is a pytest id ``<scenario>/<test>``).  It is not committed
here: ``./dev.sh install`` (and ``./dev.sh test``) downloads the pyspf sdist from PyPI,
checks it against the sha256 pinned in dev.sh and unpacks the file into the git-ignored
``tests/data-cache/``.  Without it these tests FAIL (they never skip), saying to run
``./dev.sh install``; ``test_suite_file_is_the_pinned_release`` also checks the file's
own hash and its scenario and test counts, so a truncated or different file cannot
pass for the suite.

How a scenario is served.  Each scenario's ``zonedata`` goes into the loopback test DNS
server (``tests/support/dnsserver.py``), with the conventions of the suite's drivers:

* ``SPF`` records (type 99) are served as type SPF; a name that lists no ``TXT`` entry
  at all also gets each of its ``SPF`` records as a ``TXT`` record (the suite's
  "auto-magic duplication"), while ``TXT: NONE`` only says "no TXT here".
* A bare ``TIMEOUT`` entry: the types listed before it are answered, every other query
  for that name is never answered (fault ``timeout`` for the name, ``answer`` for the
  listed types); entries after it are never seen, so neither are the duplicated TXT
  records.  ``TYPE: TIMEOUT`` makes that one type time out.
* ``TXT``/``SPF`` given as a list is one record of several character-strings.  The one
  empty list (``null.example.com``, "null text ... is illegal, but SPF should not
  crash") is served as a record holding one empty string: a record with no strings at
  all cannot be written in DNS's wire format (RFC 1035 section 3.3.14 requires one or
  more character-strings, and dnspython neither builds nor parses one), so this is the
  nearest legal record; the test still checks that strings are glued together with no
  separator and that a second, non-SPF TXT record does not disturb the result.
* MX values ``[preference, exchange]`` become MX records (``""`` is the root, a null MX);
  PTR and CNAME targets are names; names are served exactly (case-insensitively) as
  listed, including labels with ``:``, ``/``, ``%`` or spaces.

Each scenario gets its own milter process (and the DNS server is cleared and reloaded),
so the milter's DNS cache can never carry an answer from one scenario into the next
one that reuses the same names.

How a test is observed.  The milter runs with ``mode = enforce``,
``mailfrom_reject_results = fail``, no HELO rejections, ``temperror_action = accept``,
``header_type = both`` and ``exempt_recipients = postmaster``.  One session per test:
connect from the test's ``host``, HELO ``helo``, ``MAIL FROM:<mailfrom>``, then two
recipients:

1. ``<someone@mx.test>`` -- refused with ``550 5.7.23`` exactly when the MAIL FROM result
   is ``fail``; the refusal text carries the sender domain's explanation
   (``<domain> explains: <text>``, policy.py ``_reject``), or the milter's own text when
   the domain gives none (the suite's ``explanation: DEFAULT``).  The explanation is
   compared after the two changes every SMTP reply text gets (``reply_text``): ``%``
   becomes ``?`` (libmilter gives ``%`` a meaning) and runs of white space become one.
2. ``<postmaster@mx.test>`` -- exempt, so the message goes on to end of message, where
   the milter prepends its headers: the MAIL FROM result is read from both the
   Authentication-Results ``spf`` result for ``smtp.mailfrom`` and the Received-SPF
   header with ``identity=mailfrom``; both must agree and be one of the test's accepted
   results.  An empty ``mailfrom`` is checked as ``postmaster@<helo>`` (RFC 7208
   section 2.4), as the milter does.

``dns_timeout`` (the per-transaction DNS budget) is ``TIMEOUT_BUDGET`` seconds: a query
for a ``TIMEOUT`` name is never answered, so it ends in a DNS timeout (temperror, or an
explanation ignored) after that long.  The suite's ``strict`` key (pyspf's harsh mode,
"other implementations may ignore the strict parameter") does not apply to a milter.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import authres
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import pytest
import yaml

from tests.support.milterproc import ROOT, launch_milter, stop_all

SUITE = ROOT / "tests" / "data-cache" / "rfc7208-tests.yml"
SUITE_SHA256 = "901f561a6e2b1c1590a40a61b1ac7601226fd7045a7aae591a4d25421358d6f9"  # pyspf 2.0.14's copy
SCENARIOS = 16
TESTS = 203
MISSING = (f"the RFC 7208 test suite {SUITE.relative_to(ROOT)} is missing: run ./dev.sh install "
           "(it fetches pyspf's source distribution from PyPI and unpacks the suite)")
TIMEOUT_BUDGET = 1.5  # seconds; generous, so that a loaded machine cannot time out an answered query
REFUSED_RCPT = "<someone@mx.test>"
EXEMPT_RCPT = "<postmaster@mx.test>"
MILTER_CONFIG = f"""mode = enforce
header_type = both
helo_reject_results =
mailfrom_reject_results = fail
temperror_action = accept
exempt_recipients = postmaster
dns_timeout = {TIMEOUT_BUDGET}
"""


@dataclass(frozen=True)
class Case:
    scenario: int  # index of the scenario in the file
    section: str  # the scenario's description, as an id
    name: str
    helo: str
    host: str
    mailfrom: str
    results: tuple  # accepted results, the preferred one first
    explanation: Optional[str]  # "DEFAULT": the milter's own text, no domain explanation

    @property
    def id(self) -> str:
        return f"{self.section}/{self.name}"


@dataclass(frozen=True)
class Zone:
    records: tuple  # (name, type, value) for DNSServer.add
    faults: tuple  # (name, mode, qtype or None) for DNSServer.fault


def load_suite(path: Path = SUITE) -> list[dict]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, "rb") as handle:
        return list(yaml.load_all(handle, Loader=loader))


def cases(scenarios: list[dict]) -> list[Case]:
    out = []
    for index, scenario in enumerate(scenarios):
        section = re.sub(r"[^a-z0-9]+", "-", scenario["description"].lower()).strip("-")
        for name, test in scenario["tests"].items():
            result = test["result"]
            out.append(Case(index, section, name, test["helo"], test["host"], test["mailfrom"],
                            tuple(result) if isinstance(result, list) else (result,), test.get("explanation")))
    return out


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text, origin=dns.name.root)


def _record(rtype: str, value):
    """A value as DNSServer.add takes it (names built here, so odd labels survive)."""
    IN = dns.rdataclass.IN
    if rtype in ("TXT", "SPF"):
        strings = [value] if isinstance(value, str) else list(value)
        return strings or [""]  # null text: see the module docstring
    if rtype == "MX":
        preference, exchange = value
        return dns.rdtypes.ANY.MX.MX(IN, dns.rdatatype.MX, int(preference), _name(exchange))
    if rtype == "PTR":
        return dns.rdtypes.ANY.PTR.PTR(IN, dns.rdatatype.PTR, _name(value))
    if rtype == "CNAME":
        return dns.rdtypes.ANY.CNAME.CNAME(IN, dns.rdatatype.CNAME, _name(value))
    return str(value)  # A, AAAA


def zone(zonedata: dict) -> Zone:
    """The suite's zonedata as DNS records and faults (conventions in the module docstring)."""
    records, faults = [], []
    for name, entries in zonedata.items():
        typed = [entry for entry in entries if isinstance(entry, dict)]
        lists_txt = any("TXT" in entry for entry in typed)
        served, answered, silent = [], set(), False
        for entry in entries:
            if entry == "TIMEOUT":
                silent = True
                break
            [(rtype, value)] = entry.items()
            if value == "TIMEOUT":
                faults.append((name, "timeout", rtype))
            elif value != "NONE":
                served.append((rtype, value))
                answered.add(rtype)
        if not lists_txt and not silent:
            served += [("TXT", value) for rtype, value in served if rtype == "SPF"]
        records += [(name, rtype, _record(rtype, value)) for rtype, value in served]
        if silent:
            faults.append((name, "timeout", None))
            faults += [(name, "answer", rtype) for rtype in sorted(answered)]
    return Zone(tuple(records), tuple(faults))


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    if not SUITE.exists():  # fail, never skip: CI must not pass without the suite running
        metafunc.parametrize("case", [pytest.param(None, id="suite-missing")])
        return
    all_cases = cases(load_suite())
    metafunc.parametrize("case", all_cases, ids=[case.id for case in all_cases])


def test_suite_file_is_the_pinned_release():
    if not SUITE.exists():
        pytest.fail(MISSING)
    assert hashlib.sha256(SUITE.read_bytes()).hexdigest() == SUITE_SHA256, \
        f"{SUITE} is not pyspf 2.0.14's rfc7208-tests.yml: run ./dev.sh install again"
    scenarios = load_suite()
    assert (len(scenarios), len(cases(scenarios))) == (SCENARIOS, TESTS)


class World:
    """The current scenario: its zone in the DNS server and a milter of its own."""

    def __init__(self, dns_server, directory: Path):
        self.dns = dns_server
        self.directory = directory
        self.scenarios = load_suite()
        self.current: Optional[int] = None
        self.milter = None
        self.problems: list[str] = []

    def enter(self, index: int):
        if index != self.current:
            self.leave()
            self.dns.clear()
            data = zone(self.scenarios[index]["zonedata"])
            for name, rtype, value in data.records:
                self.dns.add(name, rtype, value)
            for name, mode, qtype in data.faults:
                self.dns.fault(name, mode, qtype=qtype)
            self.milter = launch_milter(self.directory, f"scenario{index:02d}", MILTER_CONFIG, self.dns.port)
            self.current = index
        return self.milter.mark()

    def leave(self):
        if self.milter is not None:
            self.problems += stop_all([self.milter])
            self.milter = None


@pytest.fixture(scope="module")
def world(dns_server, tmp_path_factory):
    if not SUITE.exists():
        yield None
        return
    state = World(dns_server, tmp_path_factory.mktemp("rfc7208"))
    yield state
    state.leave()
    if state.problems:
        pytest.fail("\n".join(state.problems))


def smtp_text(text: str) -> str:
    """What an SMTP reply can carry of a text: '%' becomes '?', white space runs one space."""
    return re.sub(r"\s+", " ", text.replace("%", "?")).strip()


def mailfrom_results(mods: list) -> tuple[str, str]:
    """(A-R spf result for smtp.mailfrom, Received-SPF result for identity=mailfrom)."""
    added = [(mod[2], mod[3]) if mod[0] == "insheader" else (mod[1], mod[2])
             for mod in mods if mod[0] in ("insheader", "addheader")]
    added = [(name, value.replace("\n", "")) for name, value in added]
    [ar] = [value for name, value in added if name == "Authentication-Results"]
    parsed = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {ar}")
    [ar_result] = [r.result for r in parsed.results
                   if r.method == "spf" and any(p.name == "mailfrom" for p in r.properties)]
    [rspf] = [value for name, value in added
              if name == "Received-SPF" and re.search(r"\bidentity=mailfrom\b", value)]
    return ar_result, rspf.split(None, 1)[0]


def test_rfc7208(world, case):
    if case is None:
        pytest.fail(MISSING)
    milter = world.enter(case.scenario)
    client = milter.client()
    try:
        client.connect(f"[{case.host}]", case.host, port=40000, family="6" if ":" in case.host else "4",
                       macros={"j": "mx.test"})
        client.helo(case.helo)
        client.mail(f"<{case.mailfrom}>")
        refusal = client.rcpt(REFUSED_RCPT)
        exempt = client.rcpt(EXEMPT_RCPT)
        assert exempt.is_continue, f"the exempt recipient was refused: {exempt}"
        client.data()
        client.header("From", f"<{case.mailfrom or 'postmaster@' + case.helo}>")
        client.header("Subject", f"RFC 7208 suite {case.id}")
        client.eoh()
        eom, mods = client.eom(macros={"i": "RFC7208"})
        client.quit()
    finally:
        client.close()
    assert eom.action in ("continue", "accept"), eom
    ar_result, rspf_result = mailfrom_results(mods)
    assert ar_result == rspf_result, (ar_result, rspf_result)
    assert ar_result in case.results, f"{case.id}: got {ar_result}, the suite accepts {case.results}"
    if ar_result == "fail":
        assert (refusal.action, refusal.code, refusal.xcode) == ("replycode", 550, "5.7.23"), refusal
    else:
        assert refusal.is_continue, f"{ar_result} must not be refused: {refusal}"
    if case.explanation == "DEFAULT":
        assert " explains: " not in refusal.message, refusal.message
        assert "is not authorized to send for" in refusal.message, refusal.message
    elif case.explanation is not None:
        assert refusal.message.endswith(f" explains: {smtp_text(case.explanation)}"), refusal.message
    assert "Traceback" not in milter.logs()
