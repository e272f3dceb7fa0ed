"""A test build of spfmilter whose SPF evaluation raises for chosen senders.

Run as ``python -m tests.support.faulty_milter -c FILE``.  Failures are injected by the
session's own data, one per callback that does work:

* connect: client address 192.0.2.66;
* MAIL FROM: a sender whose local part is ``crash-verify``;
* RCPT: a recipient whose local part is ``crash-rcpt`` (the SPF decision) or
  ``crash-srs`` (the SRS decision, when SRS is on);
* header: a header value containing ``crash-header``;
* end of message: a sender whose local part is ``crash-eom`` (building our headers).

This is a separate entry point for tests, not a switch in the product.
"""
from __future__ import annotations

import sys

import spfmilter.milter as milter_module
from spfmilter import cli, policy

_real_evaluate = policy.evaluate
_real_rcpt_verdict = policy.rcpt_verdict


def _evaluate(facts, config, checks):
    if facts.sender.startswith("crash-verify@"):
        raise RuntimeError("injected failure in verification")
    return _real_evaluate(facts, config, checks)


def _rcpt_verdict(evaluation, recipient, config, held):
    if "crash-rcpt@" in recipient:
        raise RuntimeError("injected failure in the RCPT decision")
    return _real_rcpt_verdict(evaluation, recipient, config, held)


_real_normalise_ip = milter_module.normalise_ip
_real_is_forged = milter_module.hdr.is_forged
_real_spf_headers = milter_module.hdr.spf_headers
_real_rcpt_srs = milter_module.rcpt_srs


def _normalise_ip(text):
    if text == "192.0.2.66":
        raise RuntimeError("injected failure in connect")
    return _real_normalise_ip(text)


def _is_forged(name, value, config):
    if "crash-header" in value:
        raise RuntimeError("injected failure in a header")
    return _real_is_forged(name, value, config)


def _spf_headers(helo, mailfrom, facts, config, *more):
    if facts.sender.startswith("crash-eom@"):
        raise RuntimeError("injected failure at end of message")
    return _real_spf_headers(helo, mailfrom, facts, config, *more)


def _rcpt_srs(policy, sender, trusted, recipient, kind, now):
    if "crash-srs@" in recipient:
        raise RuntimeError("injected failure in the SRS decision")
    return _real_rcpt_srs(policy, sender, trusted, recipient, kind, now)


milter_module.evaluate = _evaluate
milter_module.rcpt_verdict = _rcpt_verdict
milter_module.normalise_ip = _normalise_ip
milter_module.hdr.is_forged = _is_forged
milter_module.hdr.spf_headers = _spf_headers
milter_module.rcpt_srs = _rcpt_srs

if __name__ == "__main__":
    sys.exit(cli.main())
