"""``spfmilter check``: one case evaluated exactly as the milter would, without an MTA."""
from __future__ import annotations

import sys

from .config import Config
from .headers import render, spf_headers
from .policy import Facts, evaluate, held_for_dkim, not_enforced_reason, rcpt_reply
from .milter import make_service
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
    evaluation = evaluate(facts, config, verifier.verify)
    if evaluation.skip_reason is not None:
        out.write(f"# not checked: {evaluation.skip_reason}; no headers added\n\n")
        out.write("SMTP reply: 250 (accepted)\n")
        return 0
    out.write(render(spf_headers(*evaluation.outcomes, facts, config)))
    reply = rcpt_reply(evaluation, recipient, config)
    out.write("\n")
    if reply.refuses and held_for_dkim(evaluation, config):
        out.write(f"SMTP reply: 250 at RCPT (spf_fail_hold = dkim); at the end of the message: {reply.reply}, "
                  "unless a DKIM signature aligned with From: verifies\n")
    elif reply.refuses:
        out.write(f"SMTP reply: {reply.reply}\n")
    elif evaluation.decision.refuses:
        why = not_enforced_reason(evaluation, recipient, config)
        out.write(f"SMTP reply: 250 (accepted: {why}; enforcement would reply: "
                  f"{evaluation.decision.reply})\n")
    else:
        out.write("SMTP reply: 250 (accepted)\n")
    return 0
