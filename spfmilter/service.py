"""What every connection of a worker shares, built once per worker (and by ``check``/``explain``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .config import Config, FailHold
from .dns import DnsClient, make_resolver
from .metrics import NO_METRICS, Metrics
from .srspolicy import SrsPolicy

if TYPE_CHECKING:  # dkimcheck imports dkimpy: only loaded when the DKIM hold is on
    from .dkimcheck import OrgDomains


@dataclass(frozen=True)
class Service:
    """The config, the DNS client with its cache, the SRS policy (or None), metrics, and the
    Public Suffix List for DKIM alignment when ``spf_fail_hold = dkim``."""

    config: Config
    dns: DnsClient
    srs: Optional[SrsPolicy] = None
    metrics: Metrics = NO_METRICS
    org_domains: Optional[OrgDomains] = None


def make_service(config: Config, srs: Optional[SrsPolicy] = None, metrics: Metrics = NO_METRICS) -> Service:
    client = DnsClient(make_resolver(config.dns_servers), config.dns_cache_size, on_event=metrics.dns)
    org_domains = None
    if config.spf_fail_hold is FailHold.DKIM:
        from .dkimcheck import load_org_domains

        org_domains = load_org_domains()
    return Service(config, client, srs, metrics, org_domains)
