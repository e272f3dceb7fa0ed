"""DNS faults, table-driven, through the real milter process and the real loopback DNS server.

Every case gives one sender domain (its own name, so no case's fault or cache entry
touches another) a DNS fault or an awkward answer, runs one transaction through the
milter in enforce mode with a 2 s DNS budget, and checks

* the RFC 7208 result, in the log line and (when the message gets that far) in our
  Authentication-Results header,
* the configured action: a MAIL FROM temperror defers at RCPT with 451 4.7.24
  (``temperror_action = defer``, the default); every other result seen here is
  accepted, since ``mailfrom_reject_results`` is left at its default (``fail``) and
  so a permerror is only reported, not refused,
* the session's wall time: below the budget + 1 s always, and far below the budget
  for a fault that must not cost it (SERVFAIL, REFUSED, NXDOMAIN ...).

For the cases that wait on DNS (no answer, garbage, slow answers) a second session
for a healthy domain runs meanwhile and must finish quickly: one sender's dead DNS
must not hold up anyone else.

A session that waits on another session's in-flight query keeps its own budget: when the
other session's budget runs out first, the waiting one still gets the answer (issue 11).

Figures go to section ``dns_faults`` (see tests/reliability/figures.py).
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import authres
import pytest

from tests.reliability.figures import record
from tests.support.sessions import CLIENT_IP, PASSED_ON

BUDGET = 2.0  # dns_timeout of the milter under test
CONFIG = f"mode = enforce\ndns_timeout = {BUDGET:g}\nheader_type = both"
HELO = "helo.dnsf.example"
FAST = BUDGET / 2  # a fault that needs no waiting must cost far less than the budget
GOOD_SPF = "v=spf1 ip4:192.0.2.0/24 -all"  # passes CLIENT_IP

DEFER = "defer 451 4.7.24"
ACCEPT = "accept"

# Anything but folding (LF + space) and printable ASCII is a broken header.
BAD_HEADER_CHARS = re.compile(r"[^\x20-\x7e\n]")


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    id: str
    setup: Callable  # setup(dns, domain) -> None
    expected: str  # the RFC 7208 result
    action: str  # DEFER or ACCEPT
    slow: bool = False  # waits on DNS: may spend the budget, and others are served meanwhile
    min_seconds: float = 0.0  # proves the wait really happened
    problem: Optional[str] = None  # a regex the log line's problem= must match
    transport: Optional[str] = None  # "tcp": the answer needed TCP; "udp": UDP alone did it
    xfail: Optional[str] = None
    extra: dict = field(default_factory=dict)


def _fault(mode):
    def setup(dns, d):
        dns.add(d, "TXT", GOOD_SPF)  # the data exists; only the fault stands in the way
        dns.fault(d, mode)
    return setup


def _records(*texts):
    def setup(dns, d):
        for text in texts:
            dns.add(d, "TXT", text.replace("{d}", d))
    return setup


def _truncated(dns, d):
    dns.add(d, "TXT", GOOD_SPF)
    dns.fault(d, "truncate")  # UDP: TC bit and no records; TCP: the real answer


def _truncated_slow_tcp(dns, d):
    # the TC reply comes after 1.5 s and the TCP answer 1.5 s later: past the 2 s budget
    _truncated(dns, d)
    dns.set_latency(d, 1.5)


def _txt_set(total_over: int, limit_under: Optional[int] = None):
    """A TXT set bigger than ``total_over`` bytes: a long SPF record plus verification strings."""
    def setup(dns, d):
        ips = " ".join(f"ip4:198.51.100.{i}" for i in range(1, 12))
        spf_text = f"v=spf1 {ips} ip4:192.0.2.0/24 -all"
        others, size = [], len(spf_text)
        n = 0
        while size <= total_over + 40:
            text = f"site-verification-{n}=" + "k" * 90
            others.append(text)
            size += len(text)
            n += 1
        assert size > total_over and (limit_under is None or size < limit_under - 200)
        dns.add(d, "TXT", spf_text)
        for text in others:
            dns.add(d, "TXT", text)
    return setup


def _long_record(dns, d):
    # One SPF record of several 255-byte character-strings, split in the middle of terms:
    # the strings must be joined with nothing in between (RFC 7208 section 3.3).
    ips = " ".join(f"ip4:198.51.100.{i}/32" for i in range(1, 41))
    text = f"v=spf1 {ips} ip4:192.0.2.0/24 -all"
    assert len(text) > 450 and text[254] != " " and text[255] != " " and len(text) > 3 * 255
    dns.add(d, "TXT", text)  # chunked into 255-byte strings by the server


def _cname_loop_include(dns, d):
    dns.add(d, "TXT", f"v=spf1 include:a.loop.{d} -all")
    dns.add(f"a.loop.{d}", "CNAME", f"b.loop.{d}")
    dns.add(f"b.loop.{d}", "CNAME", f"a.loop.{d}")


def _include_loop(dns, d):
    dns.add(d, "TXT", f"v=spf1 include:b.{d} -all")
    dns.add(f"b.{d}", "TXT", f"v=spf1 include:{d} -all")


def _redirect_loop(dns, d):
    dns.add(d, "TXT", f"v=spf1 redirect=r.{d}")
    dns.add(f"r.{d}", "TXT", f"v=spf1 redirect={d}")


def _too_many_lookups(dns, d):
    terms = " ".join(f"a:h{i}.{d}" for i in range(11))
    dns.add(d, "TXT", f"v=spf1 {terms} ip4:192.0.2.0/24 -all")
    for i in range(11):
        dns.add(f"h{i}.{d}", "A", "198.51.100.1")


def _void_lookups(dns, d):
    dns.add(d, "TXT", f"v=spf1 a:v1.{d} a:v2.{d} a:v3.{d} ip4:192.0.2.0/24 -all")


def _slow_one(dns, d):
    dns.add(d, "TXT", GOOD_SPF)
    dns.set_latency(d, 1.5)


def _slow_chain(dns, d):
    dns.add(d, "TXT", f"v=spf1 include:s1.{d} -all")
    dns.add(f"s1.{d}", "TXT", f"v=spf1 include:s2.{d} -all")
    dns.add(f"s2.{d}", "TXT", GOOD_SPF)
    for name in (d, f"s1.{d}", f"s2.{d}"):
        dns.set_latency(name, 1.5)


def _non_ascii(dns, d):
    dns.add_raw_txt(d, [b"v=spf1 ip4:192.0.2.0/24 a:caf\xc3\xa9.example \xff\xfe -all"])


def _control_bytes(dns, d):
    dns.add_raw_txt(d, [b"v=spf1 ip4:192.0.2.0/24\x00\x01\x1b[31m\r\nX-Injected: yes\x7f -all"])


CASES = [
    Case("timeout", _fault("timeout"), "temperror", DEFER, slow=True, min_seconds=BUDGET - 0.1,
         problem=r"DNS timeout|DNS time budget"),
    Case("servfail", _fault("servfail"), "temperror", DEFER, problem=r"SERVFAIL"),
    Case("refused", _fault("refused"), "temperror", DEFER, problem=r"REFUSED"),
    Case("nxdomain", _fault("nxdomain"), "none", ACCEPT),
    Case("truncated_udp_needs_tcp", _truncated, "pass", ACCEPT, transport="tcp"),
    Case("truncated_then_slow_tcp", _truncated_slow_tcp, "temperror", DEFER, slow=True,
         min_seconds=BUDGET - 0.1, transport="tcp", problem=r"DNS timeout|DNS time budget"),
    # 512 < answer < 1232: EDNS0 (we advertise 1232 bytes) carries it over UDP
    Case("answer_over_512_bytes", _txt_set(600, 1232), "pass", ACCEPT, transport="udp"),
    # answer > 1232: the server truncates, the resolver retries over TCP
    Case("answer_over_edns_payload", _txt_set(1500), "pass", ACCEPT, transport="tcp"),
    Case("malformed", _fault("malformed"), "temperror", DEFER, slow=True, min_seconds=BUDGET - 0.1),
    Case("long_record_many_strings", _long_record, "pass", ACCEPT),
    Case("two_spf_records", _records(GOOD_SPF, "v=spf1 -all"), "permerror", ACCEPT,
         problem=r"Two or more"),
    # A CNAME loop is a resolution failure (a recursive resolver answers SERVFAIL), not a
    # statement by the domain: the include target cannot be had now -> temperror (5.2).
    Case("cname_loop_on_include", _cname_loop_include, "temperror", DEFER, problem=r"CNAME"),
    Case("include_loop", _include_loop, "permerror", ACCEPT),
    Case("redirect_loop", _redirect_loop, "permerror", ACCEPT),
    Case("over_10_dns_mechanisms", _too_many_lookups, "permerror", ACCEPT, problem=r"Too many DNS lookups"),
    Case("over_2_void_lookups", _void_lookups, "permerror", ACCEPT, problem=r"Void lookup limit"),
    Case("slow_answer_fits_budget", _slow_one, "pass", ACCEPT, slow=True, min_seconds=1.4),
    Case("slow_include_chain_exceeds_budget", _slow_chain, "temperror", DEFER, slow=True,
         min_seconds=BUDGET - 0.1, problem=r"DNS timeout|DNS time budget"),
    Case("non_ascii_record", _non_ascii, "permerror", ACCEPT, problem=r"(?i)non-ascii"),
    Case("control_bytes_record", _control_bytes, "permerror", ACCEPT),
    Case("txt_not_spf", _records("google-site-verification=abc123", "v=spf10 ip4:192.0.2.0/24 -all",
                                 "spf1 ip4:192.0.2.0/24 -all", "v=spf1x -all"), "none", ACCEPT),
]


def _domain(case_id: str) -> str:
    return f"{case_id.replace('_', '-')}.dnsf.example"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(dns_server):
    """This module's own DNS server (conftest makes one per module): the HELO name, every case."""
    dns_server.add(HELO, "TXT", "v=spf1 a -all")
    dns_server.add(HELO, "A", CLIENT_IP)
    for case in CASES:
        case.setup(dns_server, _domain(case.id))
    return dns_server


@pytest.fixture
def milter(start_milter, world):
    return start_milter(CONFIG)  # one process for the whole module (same config)


# --------------------------------------------------------------------------- helpers


@dataclass
class Session:
    seconds: float
    rcpt_action: str
    rcpt_code: Optional[int]
    rcpt_xcode: Optional[str]
    mods: Optional[list]

    @property
    def action(self) -> str:
        if self.rcpt_action in PASSED_ON:
            return ACCEPT
        kind = "defer" if (self.rcpt_code or 0) < 500 else "reject"
        return f"{kind} {self.rcpt_code} {self.rcpt_xcode}"


def session(milter, domain: str) -> Session:
    """One whole SMTP transaction as the MTA would run it; timed from connect to quit."""
    started = time.monotonic()
    client = milter.client(timeout=15)
    client.connect(f"[{CLIENT_IP}]", CLIENT_IP, port=40000, family="4", macros={"j": "mx.test"})
    client.helo(HELO)
    client.mail(f"<x@{domain}>")
    rcpt = client.rcpt("<b@mx.test>")
    mods = None
    if rcpt.action in PASSED_ON:
        client.data()
        client.eoh()
        _, mods = client.eom(macros={"i": "QDNSF"})
    else:
        client.abort()
    client.quit()
    return Session(time.monotonic() - started, rcpt.action, rcpt.code, rcpt.xcode, mods)


def log_line(milter, domain: str) -> str:
    needle = f"identity=mailfrom; client-ip={CLIENT_IP}; helo={HELO}; envelope-from=x@{domain};"
    lines = [line for line in milter.full_log().splitlines() if needle in line]
    assert len(lines) == 1, f"expected one log line for {domain}, got {lines!r}"
    return lines[0]


_TITLES = {"Pass": "pass", "Fail": "fail", "Softfail": "softfail", "Neutral": "neutral", "None": "none",
           "PermError": "permerror", "TempError": "temperror"}


def log_result(line: str) -> str:
    title = re.search(r"\b(Pass|Fail|Softfail|Neutral|None|PermError|TempError); identity=mailfrom", line)
    return _TITLES[title.group(1)] if title else "?"


def headers_of(mods) -> list[tuple[str, str]]:
    return [(m[2], m[3]) for m in mods or [] if m[0] == "insheader"]


def ar_mailfrom(mods) -> Optional[str]:
    found = [value for name, value in headers_of(mods) if name == "Authentication-Results"]
    if len(found) != 1:
        return None
    parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + found[0].replace("\n", ""))
    assert parsed.authserv_id == "mx.test"
    for result in parsed.results:
        if result.method == "spf" and result.properties[0].name == "mailfrom":
            return result.result
    return None


def clean_headers(mods) -> bool:
    """Printable ASCII only; a line break only as folding; no line over 998 octets."""
    for _, value in headers_of(mods):
        if BAD_HEADER_CHARS.search(value) or "\n" in value.replace("\n ", "").replace("\n\t", ""):
            return False
        if any(len(line.encode()) >= 998 for line in value.split("\n")):
            return False
    return True


def transports(dns, domain: str) -> set[str]:
    return {proto for name, qtype, proto in dns.queries if name == domain and qtype == "TXT"}


_concurrency: dict = {}


def run_with_bystander(milter, dns, case: Case, domain: str):
    """Run the case's session in a thread; once it waits on DNS, time a healthy session meanwhile."""
    box: dict = {}

    def slow_session():
        try:
            box["session"] = session(milter, domain)
        except BaseException as exc:  # reported by the main thread
            box["error"] = exc

    thread = threading.Thread(target=slow_session, name=f"dnsf-{case.id}", daemon=True)
    thread.start()
    # the slow session is in flight once its sender domain's query reached the DNS server
    deadline = time.monotonic() + 10
    while dns.query_count(domain, "TXT") == 0 and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.005)
    waiting = dns.query_count(domain, "TXT") > 0 and thread.is_alive()
    healthy = f"ok-{case.id.replace('_', '-')}.dnsf.example"
    dns.add(healthy, "TXT", GOOD_SPF)
    bystander = session(milter, healthy)
    overlapped = waiting and thread.is_alive()  # the slow one was still waiting when this one finished
    thread.join(30)
    assert not thread.is_alive(), f"{case.id}: the slow session never finished"
    if "error" in box:
        raise box["error"]
    by_line = log_line(milter, healthy)
    by_result = log_result(by_line)
    ok = overlapped and by_result == "pass" and bystander.action == ACCEPT and bystander.seconds < BUDGET / 2
    _concurrency[case.id] = {"seconds": round(bystander.seconds, 3), "result": by_result,
                             "overlapped": overlapped, "limit": BUDGET / 2, "ok": ok}
    record("dns_faults", concurrent_others_served={
        "cases": dict(_concurrency),
        "max_seconds": max(item["seconds"] for item in _concurrency.values()),
        "ok": all(item["ok"] for item in _concurrency.values()),
    })
    assert overlapped, f"{case.id}: the healthy session did not run while the slow one waited"
    assert by_result == "pass" and bystander.action == ACCEPT, (by_result, bystander.action)
    assert bystander.seconds < BUDGET / 2, (
        f"{case.id}: a healthy session took {bystander.seconds:.2f}s while another waited on DNS")
    return box["session"]


# --------------------------------------------------------------------------- the table


def _params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_dns_fault(milter, world, case: Case):
    domain = _domain(case.id)
    if case.slow:
        result = run_with_bystander(milter, world, case, domain)
    else:
        result = session(milter, domain)
    line = log_line(milter, domain)
    logged = log_result(line)
    logged_action = re.search(r"; action=([a-z-]+)", line).group(1)
    header_result = ar_mailfrom(result.mods)
    problem = re.search(r'; problem=("(?:[^"\\]|\\.)*"|[^;]*)', line)
    problem = problem.group(1) if problem else ""
    used = transports(world, domain)

    checks = {
        "result": logged == case.expected,
        "action": result.action == case.action and logged_action == result.action.split()[0],
        # no header when the message was refused; otherwise it says what the log says
        "header": (header_result is None) if result.action != ACCEPT else (header_result == case.expected),
        "headers_clean": clean_headers(result.mods),
        "within_budget": result.seconds < BUDGET + 1.0,
        "fast": case.slow or result.seconds < FAST,
        "waited": result.seconds >= case.min_seconds,
        "problem": case.problem is None or bool(re.search(case.problem, problem)),
        "transport": (case.transport is None or case.transport in used
                      and (case.transport == "tcp" or used == {"udp"})),
    }
    record("dns_faults", **{case.id: {
        "expected": case.expected, "result": logged, "expected_action": case.action,
        "action": result.action, "header_result": header_result, "problem": problem[:200],
        "transports": sorted(used), "seconds": round(result.seconds, 2), "budget": BUDGET,
        "ok": all(checks.values()),
    }})

    assert logged == case.expected, f"{case.id}: logged {logged}, expected {case.expected}\n{line}"
    assert result.action == case.action, f"{case.id}: action {result.action}, expected {case.action}\n{line}"
    assert logged_action == result.action.split()[0], line
    if result.action == ACCEPT:
        assert header_result == case.expected, (header_result, headers_of(result.mods))
    else:
        assert result.mods is None and header_result is None
    assert checks["headers_clean"], headers_of(result.mods)
    assert result.seconds < BUDGET + 1.0, f"{case.id}: {result.seconds:.2f}s with a {BUDGET}s budget"
    assert checks["fast"], f"{case.id}: {result.seconds:.2f}s for a fault that needs no waiting"
    assert checks["waited"], f"{case.id}: {result.seconds:.2f}s, the DNS wait did not happen"
    assert checks["problem"], f"{case.id}: problem {problem!r} does not match {case.problem!r}"
    assert checks["transport"], f"{case.id}: transports {used}, expected {case.transport}"
    assert "Traceback" not in milter.full_log()


# --------------------------------------------------------------------------- shared in-flight lookups

# Issue 11, item 3: one transaction's DNS time-out was handed to every transaction waiting on
# the same name. The attacker's record spends most of its budget on a slow name, then asks for
# the include that a popular domain's senders need too; a popular sender arriving meanwhile
# waits on that query and must get the answer within its own budget, not the attacker's 451.
SLOW_A = 1.4  # the attacker's slow name: leaves 0.6 s of its 2 s budget for the include
SPF_LATENCY = 0.8  # the include answers later than the attacker can wait, well within alice's budget


def test_a_waiting_session_keeps_its_own_dns_budget(milter, world):
    dns = world
    dns.add("attacker.example", "TXT", "v=spf1 a:slow.attacker.example include:_spf.popular.example -all")
    dns.add("slow.attacker.example", "A", "198.51.100.9")
    dns.set_latency("slow.attacker.example", SLOW_A)
    dns.add("popular.example", "TXT", "v=spf1 include:_spf.popular.example -all")
    dns.add("_spf.popular.example", "TXT", GOOD_SPF)
    dns.set_latency("_spf.popular.example", SPF_LATENCY)
    box: dict = {}

    def attacker():
        try:
            box["session"] = session(milter, "attacker.example")
        except BaseException as exc:  # reported by the main thread
            box["error"] = exc
        box["ended"] = time.monotonic()

    thread = threading.Thread(target=attacker, name="dnsf-attacker", daemon=True)
    thread.start()
    # the attacker's session now waits on _spf.popular.example, with ~0.6 s of budget left
    deadline = time.monotonic() + 10
    while dns.query_count("_spf.popular.example", "TXT") == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert dns.query_count("_spf.popular.example", "TXT") == 1 and thread.is_alive()
    alice_started = time.monotonic()
    alice = session(milter, "popular.example")  # x@popular.example
    alice_ended = time.monotonic()
    thread.join(30)
    assert not thread.is_alive(), "the attacker's session never finished"
    if "error" in box:
        raise box["error"]
    mallory = box["session"]
    alice_line = log_line(milter, "popular.example")
    mallory_line = log_line(milter, "attacker.example")
    # alice joined the attacker's query (she started while it was out) and, once the attacker gave
    # up, asked again: she ends a whole SPF_LATENCY after the attacker, not SPF_LATENCY after her start
    joined = alice_started < box["ended"] and alice_ended - box["ended"] > SPF_LATENCY - 0.2
    checks = {
        "alice_result": log_result(alice_line) == "pass",
        "alice_action": alice.action == ACCEPT and ar_mailfrom(alice.mods) == "pass",
        "alice_within_budget": alice.seconds < BUDGET + 1.0,
        "attacker_result": log_result(mallory_line) == "temperror" and mallory.action == DEFER,
        "attacker_within_budget": mallory.seconds < BUDGET + 1.0,
        "joined": joined,
        "queries": dns.query_count("_spf.popular.example", "TXT") == 2,  # the attacker's, then alice's
    }
    record("dns_faults", waiting_session_keeps_own_budget={
        "expected": "pass", "result": log_result(alice_line), "action": alice.action,
        "seconds": round(alice.seconds, 2), "budget": BUDGET,
        "attacker": {"result": log_result(mallory_line), "action": mallory.action,
                     "seconds": round(mallory.seconds, 2)},
        "ok": all(checks.values()),
    })
    assert log_result(alice_line) == "pass" and alice.action == ACCEPT, (
        f"alice got {alice.action} while waiting on the attacker's lookup\n{alice_line}")
    assert ar_mailfrom(alice.mods) == "pass"
    assert log_result(mallory_line) == "temperror" and mallory.action == DEFER, mallory_line
    assert re.search(r"DNS timeout|DNS time budget", mallory_line), mallory_line
    assert alice.seconds < BUDGET + 1.0 and mallory.seconds < BUDGET + 1.0, (alice.seconds, mallory.seconds)
    assert joined, (alice_started, alice_ended, box["ended"])
    assert checks["queries"], dns.query_count("_spf.popular.example", "TXT")
    assert "Traceback" not in milter.full_log()
