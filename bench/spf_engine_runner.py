"""Run one of spf-engine's programs unmodified, resolving through the benchmark's loopback DNS server.

    <python with spf-engine> bench/spf_engine_runner.py PROGRAM DNS_PORT CONFIG_FILE

PROGRAM is ``pyspf-milter`` (the milter bench/run.py compares with spfmilter) or ``policyd-spf``
(the Postfix policy server of Debian's postfix-policyd-spf-python, started by Postfix's spawn(8)
for ``check_policy_service``, one process per policy connection, speaking the policy delegation
protocol on stdin/stdout).  pyspf resolves through dnspython's module-level default resolver;
pointing that resolver at 127.0.0.1:DNS_PORT is the only change (no cache, as in its default setup).
"""
import importlib
import sys

import dns.resolver

PROGRAMS = {"pyspf-milter": "spf_engine.milter_spf", "policyd-spf": "spf_engine.policyd_spf"}


def main() -> None:
    program, port, config = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    dns.resolver.default_resolver = resolver
    module = importlib.import_module(PROGRAMS[program])
    sys.argv = [program, config]
    module.main()


if __name__ == "__main__":
    main()
