"""``spfmilter check``: one case evaluated exactly as the milter would, without an MTA."""
from __future__ import annotations

import sys

from .config import Config
from .headers import render, spf_headers
from .policy import Facts, disposition, evaluate, held_for_dkim, not_enforced_reason, rcpt_reply, spared
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
    out.write(milter_view(evaluation, recipient, config))
    return 0


def milter_view(evaluation, recipient: str, config: Config) -> str:
    """The headers the milter would add and the SMTP reply it would give, as text
    (shared by ``spfmilter check`` and ``spfmilter explain``)."""
    if evaluation.skip_reason is not None:
        return f"# not checked: {evaluation.skip_reason}; no headers added\n\nSMTP reply: 250 (accepted)\n"
    reply = rcpt_reply(evaluation, recipient, config)
    held = reply.refuses and held_for_dkim(evaluation, config)
    _, note = disposition(evaluation, spared=spared(evaluation, recipient, config), dkim_spared=held)
    text = render(spf_headers(*evaluation.outcomes, evaluation.facts, config, note)) + "\n"
    if held:
        return text + (f"SMTP reply: 250 at RCPT (spf_fail_hold = dkim); at the end of the message: "
                       f"{reply.reply}, unless a DKIM signature aligned with From: and MAIL FROM verifies "
                       f"(then the headers above are added)\n")
    if reply.refuses:
        return text + f"SMTP reply: {reply.reply}\n"
    if evaluation.decision.refuses:
        why = not_enforced_reason(evaluation, recipient, config)
        return text + (f"SMTP reply: 250 (accepted: {why}; enforcement would reply: "
                       f"{evaluation.decision.reply})\n")
    return text + "SMTP reply: 250 (accepted)\n"
