"""A test build of spfmilter whose SPF evaluation raises for chosen senders.

Run as ``python -m tests.support.faulty_milter -c FILE``.  A MAIL FROM whose local part
is ``crash-verify`` makes verification raise inside the MAIL FROM callback; a
recipient whose local part is ``crash-rcpt`` makes the RCPT decision raise.  This
is a separate entry point for tests, not a switch in the product.
"""
from __future__ import annotations

import sys

import spfmilter.milter as milter_module
from spfmilter import cli, policy

_real_evaluate = policy.evaluate
_real_rcpt_reply = policy.rcpt_reply


def _evaluate(facts, config, verify):
    if facts.sender.startswith("crash-verify@"):
        raise RuntimeError("injected failure in verification")
    return _real_evaluate(facts, config, verify)


def _rcpt_reply(evaluation, recipient, config):
    if "crash-rcpt@" in recipient:
        raise RuntimeError("injected failure in the RCPT decision")
    return _real_rcpt_reply(evaluation, recipient, config)


milter_module.evaluate = _evaluate
milter_module.rcpt_reply = _rcpt_reply

if __name__ == "__main__":
    sys.exit(cli.main())
