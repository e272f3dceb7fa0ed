"""The floor: the smallest useful pymilter milter, which adds one header to every message.

    python -m bench.trivial_milter [--nagle] inet:PORT@127.0.0.1

Its CPU time per message (measured by bench/run.py in the same run as the SPF milters) is what
any pymilter-based milter pays for libmilter, the protocol and the Python callbacks, before doing
any work of its own.  It negotiates the stages as spfmilter does over TCP (skips the body and
unknown commands, answers every other stage) and adds ``X-Bench: 1`` at end of message.  Like
spfmilter it sets TCP_NODELAY on libmilter's listening socket (accepted connections inherit it):
with Nagle's algorithm on, each message would wait for a delayed ACK, so the floor would run at
~20 msg/s.  ``--nagle`` leaves Nagle on, as plain libmilter does: the floor issue 15 first
measured (0.56 ms CPU per message).  That one costs more CPU per message, not less (about 0.58 against
0.34 ms here, by the process's own rusage), so the bench uses the TCP_NODELAY floor for its goals and
shows the other beside it.
"""
from __future__ import annotations

import os
import socket
import sys

import Milter
import milter


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


def set_nodelay_on_listener() -> None:
    """TCP_NODELAY on every listening TCP socket of this process (libmilter's, once it is open)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except (OSError, ValueError):
            continue
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM \
                    and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        finally:
            sock.close()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    nagle = "--nagle" in argv
    if nagle:
        argv.remove("--nagle")
    if len(argv) != 1:
        print("usage: python -m bench.trivial_milter [--nagle] SOCKET (e.g. inet:8899@127.0.0.1)", file=sys.stderr)
        return 2
    Milter.factory = TrivialMilter
    Milter.set_flags(Milter.ADDHDRS)
    serve = milter.main

    def main_after_tuning():  # runmilter opens the socket, then calls this
        if not nagle:
            set_nodelay_on_listener()
        return serve()

    milter.main = main_after_tuning
    Milter.runmilter("trivial", argv[0], 30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
