"""``spfmilter check``: one case evaluated exactly as the milter would, without an MTA."""
from __future__ import annotations

import sys

from .config import Config
from .headers import render, spf_headers
from .policy import Facts, disposition, evaluate, not_enforced_reason, rcpt_verdict
from .service import make_service
from .verify import Verifier, normalise_ip, parse_envelope_address


def run_check(config: Config, ip: str, helo: str, sender: str, recipient: str,
              auth_user: str | None = None, out=None) -> int:
    out = out or sys.stdout
    try:
        client_ip = normalise_ip(ip)
    except ValueError:
        print(f"spfmilter check: not an IP address: {ip!r}", file=sys.stderr)
        return 2
    service = make_service(config)
    verifier = Verifier(service.dns, config.receiver, config.dns_timeout)
    facts = Facts(client_ip=client_ip, helo=helo.strip(),
                  sender=parse_envelope_address(sender).text, auth_user=auth_user or None)
    evaluation = evaluate(facts, config, verifier.checks())
    out.write(milter_view(evaluation, recipient, config))
    return 0


def milter_view(evaluation, recipient: str, config: Config) -> str:
    """The headers the milter would add and the SMTP reply it would give, as text
    (shared by ``spfmilter check`` and ``spfmilter explain``)."""
    if evaluation.skip_reason is not None:
        return f"# not checked: {evaluation.skip_reason}; no headers added\n\nSMTP reply: 250 (accepted)\n"
    verdict = rcpt_verdict(evaluation, recipient, config, held=None)
    _, note = disposition(evaluation, spared=verdict.spared, dkim_spared=bool(verdict.held))
    text = render(spf_headers(*evaluation.outcomes, evaluation.facts, config, note)) + "\n"
    decision = evaluation.decision
    if verdict.held:
        return text + (f"SMTP reply: 250 at RCPT (spf_fail_hold = dkim); at the end of the message: "
                       f"{decision.reply}, unless a DKIM signature aligned with From: and MAIL FROM verifies "
                       f"(then the headers above are added)\n")
    if verdict.reply is not None:
        return text + f"SMTP reply: {verdict.reply}\n"
    if decision.refuses:
        why = not_enforced_reason(evaluation, recipient, config)
        return text + f"SMTP reply: 250 (accepted: {why}; enforcement would reply: {decision.reply})\n"
    return text + "SMTP reply: 250 (accepted)\n"
