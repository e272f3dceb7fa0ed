"""Run spf-engine's pyspf-milter unmodified, resolving through the benchmark's loopback DNS server.

    <spf-engine venv>/bin/python bench/spf_engine_runner.py DNS_PORT CONFIG_FILE

pyspf resolves through dnspython's module-level default resolver; pointing that
resolver at 127.0.0.1:DNS_PORT is the only change (no cache, as in its default setup).
"""
import sys

import dns.resolver


def main() -> None:
    port, config = int(sys.argv[1]), sys.argv[2]
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    dns.resolver.default_resolver = resolver
    from spf_engine import milter_spf

    sys.argv = ["pyspf-milter", config]
    milter_spf.main()


if __name__ == "__main__":
    main()
