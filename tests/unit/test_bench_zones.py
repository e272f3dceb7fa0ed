"""The benchmark's SPF world (bench/zones.py): the mix, determinism, and above all that every
expected result is what spfmilter's own verifier computes against a real DNS server."""
from __future__ import annotations

import ipaddress
import re
import time
from collections import Counter

import pytest

from bench.zones import (ALLOWED_NETWORKS, MIX, RESULTS, Case, World, cold_world, generate, mix_counts, zipf_cases,
                         zone_ttls)
from spfmilter.config import DnsServer as DnsServerConfig
from spfmilter.dns import DnsClient, make_resolver
from spfmilter.verify import Verifier
from tests.support.dnsserver import DNSServer


@pytest.fixture(scope="module")
def world() -> World:
    return generate(n_domains=600, n_helos=40, seed=1)


def test_result_mix_over_domains_holds_within_one(world):
    per_domain = {}
    for case in world.cases:
        per_domain.setdefault(case.domain, set()).add(case.expected_mailfrom)
    assert len(per_domain) == 600
    assert all(len(results) == 1 for results in per_domain.values()), "a domain has mixed expectations"
    counts = Counter(next(iter(results)) for results in per_domain.values())
    for result in RESULTS:
        assert abs(counts[result] - MIX[result] * 600) <= 1, (result, counts)
    # every domain has the same number of cases, so the message mix is the domain mix
    assert set(Counter(case.domain for case in world.cases).values()) == {2}


@pytest.mark.parametrize("n", [1, 7, 60, 599, 600, 1001])
def test_mix_counts_add_up(n):
    counts = mix_counts(n)
    assert sum(counts.values()) == n
    assert all(abs(counts[r] - MIX[r] * n) <= 1 for r in RESULTS)


def test_world_shape(world):
    assert len(world.cases) == 1200
    v6 = sum(1 for case in world.cases if ":" in case.client_ip)
    assert 0.08 * len(world.cases) <= v6 <= 0.12 * len(world.cases)
    helos = {case.helo for case in world.cases if case.expected_helo == "pass"}
    mtas = world.meta["helos"]
    assert len(set(mtas)) == 40 and helos <= set(mtas)
    for name in mtas:
        node = world.zones[name]
        assert node["TXT"] == ["v=spf1 a -all"] and node.get("A") and len(node["A"]) <= 3
    helo_mix = Counter(case.expected_helo for case in world.cases)
    assert helo_mix["pass"] >= 0.85 * len(world.cases)
    assert all(mode == "servfail" for _, mode in world.faults)
    faulted = {name for name, _ in world.faults}
    for domain, result in world.domain_results().items():
        if result == "temperror":  # SERVFAIL on the domain, or on a name its policy includes
            assert domain in faulted or any(f"include:{name}" in t for name in faulted
                                            for t in world.zones[domain].get("TXT", [])), domain
    # the realistic ingredients are all there
    records = " ".join(t for node in world.zones.values() for t in node.get("TXT", []))
    for needle in ("include:", "redirect=", "exists:%{i}", "ip6:", " mx", " a ", "exp="):
        assert needle in records, needle
    assert any(len(node.get("MX", [])) > 1 for node in world.zones.values())


def test_only_documentation_and_shared_address_space(world):
    def allowed(text: str) -> bool:
        net = ipaddress.ip_network(text, strict=False)
        return any(net.version == a.version and net.subnet_of(a) for a in ALLOWED_NETWORKS)

    for case in world.cases:
        assert allowed(case.client_ip), case
    for name, node in world.zones.items():
        for address in node.get("A", []) + node.get("AAAA", []):
            assert allowed(address), (name, address)
        for record in node.get("TXT", []):
            for term in record.split():
                match = re.match(r"^[+~?-]?ip[46]:(.+)$", term)
                if match:
                    try:
                        ipaddress.ip_network(match.group(1), strict=False)
                    except ValueError:
                        continue  # a deliberate syntax error (permerror domain)
                    assert allowed(match.group(1)), (name, term)


def test_same_seed_same_world_other_seed_other_world():
    first, again = generate(n_domains=120, seed=7), generate(n_domains=120, seed=7)
    assert first == again
    assert first.cases == again.cases and first.zones == again.zones and first.faults == again.faults
    other = generate(n_domains=120, seed=8)
    assert other.cases != first.cases


def test_save_and_load_round_trip(world, tmp_path):
    path = tmp_path / "world.json"
    world.save(path)
    loaded = World.load(path)
    assert loaded == world
    assert all(isinstance(case, Case) for case in loaded.cases)
    assert loaded.distinct_names() == world.distinct_names()
    world.save_dns_files(tmp_path / "zones.json", tmp_path / "faults.json")
    assert (tmp_path / "zones.json").stat().st_size > 0


def test_too_few_helos_is_refused():
    with pytest.raises(ValueError):
        generate(n_domains=10, n_helos=3)


def test_every_expectation_matches_spfmilters_verifier(world):
    """Load the world into a real DNS server and evaluate every case as spfmilter does."""
    started = time.monotonic()
    with DNSServer("127.0.0.1") as srv:
        world.apply(srv)
        client = DnsClient(make_resolver((DnsServerConfig("127.0.0.1", srv.port),)), 10000)
        verifier = Verifier(client, receiver="mx.test", budget=5)
        wrong = []
        for case in world.cases:
            helo, mailfrom = verifier.verify(case.client_ip, case.helo, case.sender)
            got = (mailfrom.result.value, helo.result.value)
            if got != (case.expected_mailfrom, case.expected_helo):
                wrong.append((case, got, mailfrom.problem, helo.problem))
        queried = {(name, qtype) for name, qtype, _ in srv.queries}
    assert not wrong, f"{len(wrong)} wrong expectations, e.g. {wrong[:5]}"
    # distinct_names() predicts exactly what a full evaluation looks up
    assert world.lookups() == queried
    assert world.distinct_names() == sorted({name for name, _ in queried})
    assert time.monotonic() - started < 15


# ------------------------------------------------------------------ cold and Zipf worlds (issue 15)

def test_cold_world_has_one_case_per_sender_domain():
    cold = cold_world(300, seed=3)
    domains = [case.domain for case in cold.cases]
    assert len(domains) == 300 and len(set(domains)) == 300  # every session a new sender domain
    counts = Counter(case.expected_mailfrom for case in cold.cases)
    assert all(abs(counts[r] - MIX[r] * 300) <= 1 for r in RESULTS), counts
    assert cold == cold_world(300, seed=3)


def test_zipf_cases_follow_the_ranks(world):
    ranks = list(dict.fromkeys(case.domain for case in world.cases))  # rank 1 first
    drawn = zipf_cases(world, 60000, exponent=1.0, seed=5)
    assert len(drawn) == 60000
    assert drawn == zipf_cases(world, 60000, exponent=1.0, seed=5)
    assert drawn != zipf_cases(world, 60000, exponent=1.0, seed=6)
    per_domain = Counter(case.domain for case in drawn)
    harmonic = sum(1 / k for k in range(1, len(ranks) + 1))
    for rank in (1, 2, 3, 10):
        expected = 60000 / (rank * harmonic)
        assert abs(per_domain[ranks[rank - 1]] - expected) < 5 * expected ** 0.5 + 5, (rank, per_domain)
    # a long tail: many domains are seen, the top one far more often than the median one
    assert len(per_domain) > 400
    assert per_domain[ranks[0]] > 50 * per_domain[ranks[299]]
    # every drawn case is one of the world's cases, so its expectation is its domain's result
    assert set(drawn) <= set(world.cases)


def test_zipf_exponent_and_size_are_checked(world):
    with pytest.raises(ValueError):
        zipf_cases(world, 10, exponent=0)
    with pytest.raises(ValueError):
        zipf_cases(world, -1)
    assert zipf_cases(world, 0) == []


def test_zone_ttls_cover_every_name_within_bounds(world):
    ttls = zone_ttls(world, 300, 3600, seed=2)
    assert set(ttls) == set(world.zones)
    assert all(300 <= ttl <= 3600 for ttl in ttls.values())
    assert min(ttls.values()) < 700 and max(ttls.values()) > 3200  # spread over the range
    assert ttls == zone_ttls(world, 300, 3600, seed=2)
    with pytest.raises(ValueError):
        zone_ttls(world, 3600, 300)


def test_dns_server_serves_the_per_name_ttls():
    zones = {"a.example": {"TXT": ["v=spf1 -all"], "A": ["192.0.2.1"]}, "b.example": {"A": ["192.0.2.2"]}}
    server = DNSServer("127.0.0.1")
    server.load(zones, ttl=3600, ttls={"a.example": 450})
    assert [rrset.ttl for rrset in server.resolve("a.example", "TXT")[1]] == [450]
    assert [rrset.ttl for rrset in server.resolve("a.example", "A")[1]] == [450]
    assert [rrset.ttl for rrset in server.resolve("b.example", "A")[1]] == [3600]
