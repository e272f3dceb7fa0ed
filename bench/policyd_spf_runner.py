"""Run spf-engine's policyd-spf (Postfix policy server) unmodified, resolving through the benchmark's DNS.

    <spf-engine venv>/bin/python bench/policyd_spf_runner.py DNS_PORT CONFIG_FILE

Started by Postfix's spawn(8) for ``check_policy_service unix:private/policyd-spf``, one
process per policy connection, speaking the policy delegation protocol on stdin/stdout.
policyd-spf is the program of Debian's postfix-policyd-spf-python (spf-engine's
``policyd-spf`` entry point).  pyspf resolves through dnspython's module-level default
resolver; pointing that resolver at 127.0.0.1:DNS_PORT is the only change, as in
bench/spf_engine_runner.py.
"""
import sys

import dns.resolver


def main() -> None:
    port, config = int(sys.argv[1]), sys.argv[2]
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    dns.resolver.default_resolver = resolver
    from spf_engine import policyd_spf

    sys.argv = ["policyd-spf", config]
    policyd_spf.main()


if __name__ == "__main__":
    main()
