"""Memory figures for the benchmark report (issue 15): the daemon's processes, and the DNS cache.

**The daemon.**  spfmilter is a supervisor process that forks its workers (spfmilter/server.py):
``workers = 1`` is two processes, the supervisor (pymilter and the configuration only) and one
worker (the SPF machinery and the DNS cache).  The worker is a fork of the supervisor, so much of
its memory is the same physical pages.  Summing RSS counts those shared pages once per process;
PSS (proportional set size, proc(5) ``smaps_rollup``) splits every shared page between the
processes that map it, so the PSS sum is the RAM the daemon really occupies.  :class:`TreeMemory`
samples both for a process tree and keeps the peaks, the number of processes and the root
(supervisor) apart from its descendants (workers).

**The DNS cache.**  :func:`cache_entry_bytes` fills a real :class:`spfmilter.dns.DnsClient`
through its public ``lookup()`` with realistic answers (SPF TXT records, A, AAAA, MX, NXDOMAIN)
from a stand-in resolver that builds real dnspython responses, and measures with ``tracemalloc``
what the filled cache holds: bytes per entry, per kind and for a mix.  The answers go through the
client's own conversion and storage code, so the figure follows whatever the cache keeps.
``tracemalloc`` counts Python allocations (keys, values, the cache's own structures), not the
allocator's free space; over many entries that is the cost of one more entry.

    python -m bench.memory [--entries 2000]
"""
from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from bench.procs import memory_kib, tree

KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class TreeSample:
    """One look at a process tree: sums over all processes, and the root's share."""

    processes: int
    rss_kib: int
    pss_kib: int
    root_rss_kib: int
    root_pss_kib: int


def sample_tree(pid: int, read: Callable[[int], tuple] = memory_kib,
                members: Callable[[int], list] = tree) -> TreeSample:
    """RSS/PSS of ``pid`` and its descendants; processes that are gone count as nothing."""
    rss = pss = count = 0
    root = (0, 0)
    for member in members(pid):
        one = read(member)
        if one == (0, 0):
            continue
        count += 1
        rss += one[0]
        pss += one[1]
        if member == pid:
            root = one
    return TreeSample(count, rss, pss, root[0], root[1])


@dataclass
class TreeMemory:
    """Samples a process tree in a thread; keeps the peaks (as a context manager).

    ``peak_*`` are the largest sums seen in one sample; ``root_*`` the root's own share in the
    sample with the largest PSS sum (so root and rest add up to the peak); ``processes`` the most
    processes seen at once."""

    pid: int
    interval: float = 0.2
    peak_rss_kib: int = 0
    peak_pss_kib: int = 0
    root_rss_kib: int = 0
    root_pss_kib: int = 0
    processes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def add(self, sample: TreeSample) -> None:
        self.peak_rss_kib = max(self.peak_rss_kib, sample.rss_kib)
        if sample.pss_kib > self.peak_pss_kib:
            self.peak_pss_kib = sample.pss_kib
            self.root_rss_kib = sample.root_rss_kib
            self.root_pss_kib = sample.root_pss_kib
        self.processes = max(self.processes, sample.processes)

    def sample(self) -> None:
        self.add(sample_tree(self.pid))

    def __enter__(self) -> "TreeMemory":
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __exit__(self, *exc) -> None:
        self.sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# --- memory per DNS cache entry ----------------------------------------------------------------

# Realistic answers, the shapes a cold SPF evaluation meets (RFC 7208 section 4.6.4 counts the
# lookups: the sender's TXT, then A/AAAA/MX for `a`/`mx`, TXT of `include:` targets, NXDOMAIN for
# names that do not exist).  {i} makes every name and record distinct.
KINDS: dict[str, tuple[str, Sequence[str]]] = {
    "TXT (SPF record)": ("TXT", (
        '"v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.{b} include:_spf.mail{i}.example.net '
        'include:spf.protection.example.com -all"',)),
    "TXT (long SPF record, two strings)": ("TXT", (
        '"v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.{b} ip4:203.0.113.0/25 ip6:2001:db8:{h:x}::/48 '
        'include:_spf.mail{i}.example.net include:spf.protection.example.com include:_spf.crm-vendor.example" '
        '" include:mailgun.example.org include:sendgrid.example.net mx a:relay{i}.example.org ~all"',)),
    "A (two addresses)": ("A", ("198.51.100.{b}", "203.0.113.{b}")),
    "AAAA": ("AAAA", ("2001:db8:{h:x}::25",)),
    "MX (two exchangers)": ("MX", ("10 mx1.mail{i}.example.net.", "20 mx2.mail{i}.example.net.")),
    "NXDOMAIN": ("A", ()),
}
MIX = {  # share of each kind in a cold cache (TXT first for every domain, then what it names)
    "TXT (SPF record)": 0.35, "TXT (long SPF record, two strings)": 0.05, "A (two addresses)": 0.2,
    "AAAA": 0.1, "MX (two exchangers)": 0.15, "NXDOMAIN": 0.15,
}


def entry_name(i: int) -> str:
    return f"mail{i}.shop{i % 997}.example.com"


class _Resolver:
    """Stands in for dnspython's resolver: builds a real response for every question."""

    timeout = 2.0
    nameservers = ["127.0.0.1"]

    def __init__(self, records: dict):
        self.records = records  # qname (no final dot) -> list of rdata texts; [] = NXDOMAIN

    def resolve(self, qname, qtype, lifetime=None, raise_on_no_answer=False, search=False):
        import dns.message
        import dns.name
        import dns.rdata
        import dns.rdataclass
        import dns.rdatatype
        import dns.rcode
        import dns.resolver

        name = dns.name.from_text(qname)
        rdtype = dns.rdatatype.from_text(qtype)
        response = dns.message.make_response(dns.message.make_query(name, rdtype))
        texts = self.records[str(qname).rstrip(".")]
        if not texts:
            response.set_rcode(dns.rcode.NXDOMAIN)
            soa = response.find_rrset(response.authority, dns.name.from_text("example.com."),
                                      dns.rdataclass.IN, dns.rdatatype.SOA, create=True)
            soa.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA,
                                        "ns.example.com. host.example.com. 1 3600 600 86400 900"), 900)
            raise dns.resolver.NXDOMAIN(qnames=[name], responses={name: response})
        rrset = response.find_rrset(response.answer, name, dns.rdataclass.IN, rdtype, create=True)
        for text in texts:
            rrset.add(dns.rdata.from_text(dns.rdataclass.IN, rdtype, text), 3600)
        return dns.resolver.Answer(name, rdtype, dns.rdataclass.IN, response)


def _fill(kind: str, first: int, count: int) -> tuple[dict, str]:
    qtype, templates = KINDS[kind]
    records = {entry_name(i): [t.format(i=i, b=i % 250 + 1, h=i % 0xffff) for t in templates]
               for i in range(first, first + count)}
    return records, qtype


def bytes_per_entry(before: int, after: int, entries: int) -> float:
    """Traced bytes the cache grew by, per entry."""
    if entries <= 0:
        raise ValueError("entries must be positive")
    return (after - before) / entries


def measure_kind(kind: str, entries: int) -> float:
    """Bytes per cache entry of one kind, ``entries`` of them in a fresh DnsClient."""
    from spfmilter.dns import DnsClient

    records, qtype = _fill(kind, 0, entries)
    client = DnsClient(_Resolver(records), cache_size=entries + 1)
    names = list(records)
    # Warm the code paths once (first-use allocations are not the cache's), then measure.
    warm = DnsClient(_Resolver(_fill(kind, 10 ** 7, 1)[0]), cache_size=2)
    warm.lookup(entry_name(10 ** 7), qtype, time.monotonic() + 5)
    gc.collect()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for name in names:
            client.lookup(name, qtype, time.monotonic() + 5)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        if started:
            tracemalloc.stop()
    if len(client.cache) != entries:
        raise RuntimeError(f"the cache holds {len(client.cache)} entries, expected {entries}")
    return bytes_per_entry(before, after, entries)


@dataclass(frozen=True)
class CacheMemory:
    per_kind: dict  # kind -> bytes per entry
    mix_bytes: float  # weighted by MIX
    entries: int  # entries measured per kind
    default_cache_size: int  # spfmilter's dns_cache_size default
    result_bytes: float = 0.0  # bytes per entry of the SPF result cache (0: not measured)


def mix_average(per_kind: dict, mix: dict) -> float:
    """The weighted mean bytes per entry of a cache whose entries are ``mix`` shares of the kinds."""
    total = sum(mix.values())
    if not total:
        raise ValueError("empty mix")
    return sum(per_kind[kind] * share for kind, share in mix.items()) / total


def result_entry_bytes(entries: int = 2000) -> float:
    """Bytes per entry of the SPF result cache (DnsClient.spf_results): keys and outcomes as
    verify.Verifier stores them (a pass through an include, for a client address and a domain each)."""
    import tracemalloc

    from spfmilter.dns import TtlCache
    from spfmilter.verify import Identity, SpfOutcome, SpfResult, cached_form

    cache = TtlCache(entries + 1)
    made = [(f"100.64.{i // 256 % 256}.{i % 256}", f"sender-{i}.example.com") for i in range(entries)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for ip, domain in made:
            outcome = SpfOutcome(Identity.MAILFROM, SpfResult.PASS, domain, f"someone@{domain}",
                                 mechanism="include:_spf.example.net")
            cache.put_until((ip, domain), cached_form(outcome), float("inf"))
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # the key strings exist in a running milter anyway (the message's address and domain), but
    # the cache keeps them alive: they count
    return (after - before) / entries


def cache_memory(entries: int = 2000) -> CacheMemory:
    from spfmilter.config import defaults

    per_kind = {kind: measure_kind(kind, entries) for kind in KINDS}
    return CacheMemory(per_kind, mix_average(per_kind, MIX), entries, defaults().dns_cache_size,
                       result_entry_bytes(entries))


def render_cache_memory(result: CacheMemory) -> str:
    full = result.mix_bytes * result.default_cache_size / MIB
    mix = ", ".join(f"{100 * share:.0f} % {kind}" for kind, share in MIX.items())
    lines = [
        "| DNS cache entry | bytes per entry |", "|---|---|",
        *[f"| {kind} | {value:.0f} |" for kind, value in result.per_kind.items()],
        f"| **mix of a cold cache** (below) | **{result.mix_bytes:.0f}** |",
        "",
        f"The mix: {mix}. Measured with tracemalloc over {result.entries} entries of each kind, filled through "
        "`DnsClient.lookup()` (key, converted answer, expiry and the cache's own bookkeeping; bench/memory.py). "
        f"A full cache at the default `dns_cache_size = {result.default_cache_size}` holds about "
        f"{full:.1f} MiB of such entries, in every worker (each worker has its own cache).",
    ]
    if result.result_bytes:
        lines += ["", f"Beside it, the SPF result cache (as many entries: a result per client address and domain, "
                      f"kept while the DNS answers it came from are cached) costs {result.result_bytes:.0f} bytes "
                      f"per entry, about {result.result_bytes * result.default_cache_size / MIB:.1f} MiB when full."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=2000, help="entries of each kind")
    args = parser.parse_args(argv)
    print(render_cache_memory(cache_memory(args.entries)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
