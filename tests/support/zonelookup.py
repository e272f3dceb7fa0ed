"""A dict-backed :class:`spfmilter.dns.Lookup` for the pure unit tests of verify, policy and explain.

It is a :class:`~tests.support.dnsserver.DNSServer` that is never started: the same zone data
(``load``, ``add``), faults (``fault``) and query log (``queries``, ``query_count``), but every
lookup is answered in process, without a socket, in the shapes
:class:`~spfmilter.dns.DnsClient` gives (TXT as tuples of bytes, MX as (preference, name), ...).
The loopback server itself stays for dns.py's tests and everything end to end.
"""
from __future__ import annotations

from typing import Optional

import dns.rdatatype

from spfmilter.dns import Answer, DnsTempError, DnsTimeout, _convert
from tests.support.dnsserver import DNSServer


class ZoneLookup(DNSServer):
    def __init__(self, zone: Optional[dict] = None, faults: Optional[dict] = None):
        super().__init__()
        self.load(zone or {})
        for name, mode in (faults or {}).items():
            self.fault(name, mode)

    def lookup(self, name: str, qtype: str, deadline: float) -> Answer:
        outcome, rrsets = self.resolve(name, qtype)
        if outcome == "nxdomain":
            return Answer((), nxdomain=True)
        if outcome == "timeout":
            raise DnsTimeout(f"DNS timeout looking up {name}/{qtype}")
        if outcome != "answer":
            raise DnsTempError(f"DNS server failure for {name}/{qtype}: {outcome.upper()}")
        wanted = [rrset for rrset in rrsets if rrset.rdtype == dns.rdatatype.from_text(qtype)]
        return Answer(tuple(_convert(qtype, wanted[0])) if wanted else ())
