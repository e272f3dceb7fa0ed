"""Microbenchmark of the DNS seam: CPU per cold lookup through DnsClient, both transports, one run.

    python -m bench.dnsbench [--lookups 2000] [--threads 1] [--rounds 3] [--json]

A loopback DNS server (tests/support/dnsserver.py) runs in a *separate process*, serving
``--lookups`` distinct names (one A record each), so the CPU time measured here
(``time.process_time()`` of this process, every thread) is the client's alone.  Each round builds a fresh DnsClient per implementation
(so every lookup is a cache miss, i.e. one upstream query) and looks every name up,
``--threads`` callers at a time; implementations alternate within the round so machine
noise hits both alike.  Every answer is checked against the address the zone holds: a
wrong or missing answer fails the run.

* ``resolver``: dnspython's ``Resolver.resolve`` per lookup (its message code, a socket,
  a selector and a ``SystemRandom`` id per query), i.e. ``DnsClient(..., transport=False)``;
* ``transport``: spfmilter's own (spfmilter/dnstransport.py, the default): messages
  written and read by spfmilter/dnswire.py, a connected socket per query.

The per-query pieces (``breakdown``) time dnspython's message code beside dnswire's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path

import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

from spfmilter.config import DnsServer
from spfmilter import dnswire
from spfmilter.dns import DnsClient, make_resolver

ROOT = Path(__file__).resolve().parent.parent
# name -> DnsClient(transport=...): dnspython's resolver, then spfmilter's own transport.
IMPLEMENTATIONS = {"resolver": False, "transport": True}
START_TIMEOUT = 20.0


def zone(lookups: int) -> dict:
    return {name_of(index): {"A": [address_of(index)]} for index in range(lookups)}


def name_of(index: int) -> str:
    return f"h{index}.dnsbench.example"


def address_of(index: int) -> str:
    return f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"


class ServerProcess:
    """``python -m tests.support.dnsserver`` on 127.0.0.1, ready once it says where it listens."""

    def __init__(self, zone_file: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.dnsserver", "--host", "127.0.0.1", "--zone", str(zone_file)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.port = self._wait_ready()

    def _wait_ready(self) -> int:
        found: list = []
        reader = threading.Thread(target=lambda: found.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        line = found[0] if found else ""
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the DNS server did not start: {line!r}")
        return int(line.split()[-1])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()


def run_one(port: int, use_transport: bool, lookups: int, threads: int) -> dict:
    """Cold lookups of every name through a fresh DnsClient; CPU and wall time per lookup."""
    client = DnsClient(make_resolver((DnsServer("127.0.0.1", port),)), lookups + 10, transport=use_transport)
    wrong: list = []
    next_index = iter(range(lookups))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            try:
                answer = client.lookup(name_of(index), "A", time.monotonic() + 5.0)
                if answer.values != (address_of(index),):
                    wrong.append((index, answer))
            except Exception as exc:  # noqa: BLE001 - counted as a wrong answer
                wrong.append((index, repr(exc)))

    cpu, wall = time.process_time(), time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_ms_per_lookup": 1000 * cpu / lookups, "wall_ms_per_lookup": 1000 * wall / lookups,
            "queries": client.queries, "wrong": len(wrong), "first_wrong": repr(wrong[:1])}


def run(lookups: int, threads: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        zone_file = Path(tmp) / "zone.json"
        zone_file.write_text(json.dumps(zone(lookups)))
        server = ServerProcess(zone_file)
        try:
            runs: dict = {name: [] for name in IMPLEMENTATIONS}
            for _ in range(rounds):
                for name, use_transport in IMPLEMENTATIONS.items():
                    runs[name].append(run_one(server.port, use_transport, lookups, threads))
        finally:
            server.stop()
    result: dict = {"lookups": lookups, "threads": threads, "rounds": rounds}
    for name, items in runs.items():
        result[name] = {
            "cpu_ms_per_lookup": statistics.median(item["cpu_ms_per_lookup"] for item in items),
            "wall_ms_per_lookup": statistics.median(item["wall_ms_per_lookup"] for item in items),
            "queries": sum(item["queries"] for item in items),
            "wrong": sum(item["wrong"] for item in items),
            "first_wrong": next((item["first_wrong"] for item in items if item["wrong"]), ""),
        }
    for name in IMPLEMENTATIONS:
        result[name]["cpu_ratio"] = result[name]["cpu_ms_per_lookup"] / result["resolver"]["cpu_ms_per_lookup"]
    return result


def breakdown(repeat: int = 3000) -> dict:
    """Microseconds per call of the per-query pieces, in this process, for one A answer.

    Shows where a cold lookup's CPU goes besides the transport: dnspython's wire code
    (make_query, to_wire, from_wire, Answer) against what the transport saves per query
    (a socket and a selector, a SystemRandom id).
    """
    import random
    import secrets
    import selectors
    import socket

    name = dns.name.from_text(name_of(1))
    query = dns.message.make_query(name, "A", use_edns=0, payload=1232)
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", address_of(1)))
    wire = response.to_wire()
    qwire = name.to_wire()
    parsed = dns.message.from_wire(wire)
    system_random = random.SystemRandom()

    def socket_and_selector() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        selector.close()
        sock.close()

    pieces = {
        "make_query": lambda: dns.message.make_query(name, "A", use_edns=0, payload=1232, id=0),
        "query_to_wire": query.to_wire,
        "response_from_wire": lambda: dns.message.from_wire(wire, raise_on_truncation=True),
        "is_response": lambda: query.is_response(parsed),
        "resolver_answer": lambda: dns.resolver.Answer(name, dns.rdatatype.A, dns.rdataclass.IN, parsed),
        "socket_and_selector": socket_and_selector,
        "dnswire_encode": lambda: dnswire.encode_query(1, dnswire.encode_name(name_of(1)), 1, 1232),
        "dnswire_decode": lambda: dnswire.decode(wire, parsed.id, qwire, 1),
        "systemrandom_id": lambda: system_random.randint(0, 65535),
        "secrets_id": lambda: secrets.randbits(16),
    }
    return {label: 1e6 * min(timeit.repeat(fn, number=repeat, repeat=3)) / repeat for label, fn in pieces.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = run(args.lookups, args.threads, args.rounds)
    result["breakdown_us"] = breakdown()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.lookups} cold lookups, {args.threads} thread(s), median of {args.rounds} rounds")
        for name in IMPLEMENTATIONS:
            item = result[name]
            print(f"  {name:9}  {item['cpu_ms_per_lookup']:.3f} ms CPU/lookup  "
                  f"{item['wall_ms_per_lookup']:.3f} ms wall/lookup  CPU/resolver {item['cpu_ratio']:.2f}  "
                  f"wrong={item['wrong']}")
        print("  per-query pieces (us/call): " + ", ".join(
            f"{label} {value:.1f}" for label, value in result["breakdown_us"].items()))
    return 0 if all(result[name]["wrong"] == 0 for name in IMPLEMENTATIONS) else 1


if __name__ == "__main__":
    sys.exit(main())
