"""The floor: the smallest useful pymilter milter, which adds one header to every message.

    python -m bench.trivial_milter inet:PORT@127.0.0.1

Its CPU time per message (measured by bench/run.py in the same run as the SPF milters) is what
any pymilter-based milter pays for libmilter, the protocol and the Python callbacks, before doing
any work of its own.  It negotiates the stages as spfmilter does over TCP (skips the body and
unknown commands, answers every other stage) and adds ``X-Bench: 1`` at end of message.  Unlike
spfmilter it leaves Nagle's algorithm on its connections (plain libmilter), so over TCP each
message waits for one delayed ACK: its msg/s is no comparison, only its CPU time per message is.
"""
from __future__ import annotations

import sys

import Milter


class TrivialMilter(Milter.Base):
    """Adds one header at end of message; every other stage is answered with continue."""

    def negotiate(self, opts):
        # Like spfmilter over TCP: skip only the body and unknown commands and answer every
        # other stage (an unanswered packet would wait for a delayed ACK under Nagle).
        opts[0] = opts[0] & Milter.ADDHDRS
        opts[1] = (Milter.P_NOBODY | Milter.P_NOUNKNOWN) & opts[1]
        opts[2] = 0
        opts[3] = 0
        return Milter.CONTINUE

    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    def hello(self, heloname):
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        return Milter.CONTINUE

    def data(self):
        return Milter.CONTINUE

    def header(self, name, value):
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    def eom(self):
        self.addheader("X-Bench", "1")
        return Milter.CONTINUE


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bench.trivial_milter SOCKET (e.g. inet:8899@127.0.0.1)", file=sys.stderr)
        return 2
    Milter.factory = TrivialMilter
    Milter.set_flags(Milter.ADDHDRS)
    Milter.runmilter("trivial", argv[0], 30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
