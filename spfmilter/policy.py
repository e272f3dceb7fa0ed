"""What to do with a message: pure functions of the SPF outcomes, the facts and the config.

Every decision lives here, for the milter and for ``spfmilter check``/``explain`` alike:
:func:`evaluate` at MAIL FROM (trust, SPF, :func:`decide`), :func:`rcpt_verdict` per
recipient (staged rollout, exempt recipients, the DKIM hold), :func:`dkim_verdict` for a
held refusal at end of message, and :func:`disposition` for what an accepted message is
logged as and which note its Authentication-Results carries.  Replies are :class:`Reply`
values and logged actions :class:`Action` members.
"""
from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from .config import Config, FailHold, TempErrorAction
from .replies import DKIM_DNS_FAILURE, SEPARATE_TRANSACTION, Reply
from .text import reply_text
from .verify import Identity, SpfOutcome, SpfResult, parse_envelope_address


@dataclass(frozen=True)
class Facts:
    """What the MTA told us about one transaction."""

    client_ip: Optional[str]  # None when the MTA did not give a usable IP address
    helo: str
    sender: str  # as given in MAIL FROM, angle brackets stripped; "" is the null sender
    client_name: str = ""
    auth_user: Optional[str] = None  # {auth_authen}
    queue_id: Optional[str] = None
    local: bool = False  # connected over a unix socket (local submission, e.g. sendmail -bs)


class Action(str, enum.Enum):
    """What was done with a transaction: the log's ``action=``, the metrics label, what
    ``spfmilter report`` counts.  A Decision's action is one of the first three."""

    ACCEPT = "accept"
    REJECT = "reject"
    DEFER = "defer"
    WOULD_REJECT = "would-reject"  # header-only: accepted, enforcement would have refused it
    WOULD_DEFER = "would-defer"
    ACCEPT_EXEMPT = "accept-exempt"  # only exempt recipients (postmaster@, abuse@) got it
    ACCEPT_DKIM = "accept-dkim"  # a held SPF fail spared by an aligned DKIM signature
    ABORTED = "aborted"  # the client ended the transaction before the end of the message
    SKIPPED = "skipped"  # a trusted client, not checked (metrics; its log line says accept)


@dataclass(frozen=True)
class Decision:
    action: Action
    reply: Optional[Reply] = None  # the refusal; None when accepted
    identity: Optional[Identity] = None  # the identity whose result decided

    @property
    def refuses(self) -> bool:
        return self.reply is not None


ACCEPT = Decision(Action.ACCEPT)


def trusted_network(facts: Facts, config: Config) -> Optional[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The ``trusted_networks`` entry the client is in, or None."""
    try:
        address = ipaddress.ip_address(facts.client_ip) if facts.client_ip else None
    except ValueError:
        return None
    if address is not None:
        for network in config.trusted_networks:
            if address.version == network.version and address in network:
                return network
    return None


def trust_reason(facts: Facts, config: Config) -> Optional[str]:
    """Why this client is not checked, or None when it must be."""
    if facts.local:
        return "local client"
    network = trusted_network(facts, config)
    if network is not None:
        return f"trusted network {network}"
    if config.trust_authenticated and facts.auth_user:
        return "authenticated sender"
    return None


def removes_forged_headers(facts: Facts, config: Config) -> bool:
    """Whether headers claiming our authserv-id or receiver= are removed from this client's mail.

    RFC 8601 section 5: always, also for clients whose SPF check is skipped -- a SASL user
    or a local user is trusted to send, not to vouch for our results.  The exception is a
    client in ``trusted_networks``: an internal relay (a content filter re-injecting mail,
    a second stage of this host) may carry the headers this host added on the first pass.
    """
    return trusted_network(facts, config) is None


def vouched_for(evaluation: Evaluation) -> bool:
    """Whether the client may send as one of our domains unchanged through SRS forwarding:
    a trusted network, a local or a SASL-authenticated client (checked or not)."""
    return evaluation.skip_reason is not None or bool(evaluation.facts.auth_user)


def decide(helo: SpfOutcome, mailfrom: SpfOutcome, facts: Facts, config: Config) -> Decision:
    """The reply enforcement gives for this transaction (header-only mode logs it instead).

    HELO is looked at first (RFC 7208 section 2.3).  A rejecting result of either
    identity rejects.  Otherwise a MAIL FROM temperror defers when so configured
    (RFC 7208 section 8.6, RFC 7372 4.7.24); for the null sender the MAIL FROM
    identity is the HELO check, so its temperror defers too.  A HELO temperror
    alone does not defer: the HELO result only acts through helo_reject_results.
    """
    for outcome in (helo, mailfrom):
        if outcome.result.value in config.reject_results(outcome.identity.value):
            return _reject(outcome, facts)
    if config.temperror_action is TempErrorAction.DEFER and mailfrom.result is SpfResult.TEMPERROR:
        return Decision(Action.DEFER, Reply(451, "4.7.24", reply_text(
            f"SPF temporary error for {_what(mailfrom)}: "
            f"{mailfrom.problem or 'DNS lookup failed'}; please try again later")), mailfrom.identity)
    return ACCEPT


def _what(outcome: SpfOutcome) -> str:
    if outcome.identity is Identity.HELO:
        return f"HELO {outcome.domain or outcome.sender}"
    return f"{outcome.domain or 'sender'} (MAIL FROM {outcome.sender or '<>'})"


def _reject(outcome: SpfOutcome, facts: Facts) -> Decision:
    ip = facts.client_ip or "unknown"
    if outcome.result is SpfResult.PERMERROR:
        # RFC 7372 section 3.2: 5.7.24 is an SPF validation error.
        text = f"SPF permanent error for {_what(outcome)}: {outcome.problem or 'invalid SPF record'}"
        return Decision(Action.REJECT, Reply(550, "5.7.24", reply_text(text)), outcome.identity)
    if outcome.result is SpfResult.FAIL and outcome.explanation:
        # RFC 7208 section 8.4: say that the text comes from the sender's domain.
        text = f"SPF fail for {_what(outcome)}; {outcome.domain} explains: {outcome.explanation}"
    elif outcome.result is SpfResult.NONE:
        text = f"SPF none for {_what(outcome)}: no SPF policy, and this server requires one"
    else:
        text = (f"SPF {outcome.result.value} for {_what(outcome)}: "
                f"{ip} is not authorized to send for {outcome.domain or outcome.sender}")
    # RFC 7372 section 3.2: 5.7.23 means SPF validation failed.
    return Decision(Action.REJECT, Reply(550, "5.7.23", reply_text(text)), outcome.identity)


def is_exempt_recipient(recipient: str, config: Config) -> bool:
    """postmaster@ and friends are never refused (RFC 5321 section 4.5.1, RFC 2142)."""
    address = parse_envelope_address(recipient)
    local = address.local.lower() if address.domain else address.text.lower()
    full = address.text.lower()
    return any(item == full if "@" in item else item == local for item in config.exempt_recipients)


@dataclass(frozen=True)
class Evaluation:
    """Everything known about a transaction once MAIL FROM has been seen."""

    facts: Facts
    skip_reason: Optional[str] = None  # set when the client is trusted and nothing was checked
    outcomes: Optional[tuple[SpfOutcome, SpfOutcome]] = None  # (helo, mailfrom)
    decision: Decision = ACCEPT


def evaluate(facts: Facts, config: Config,
             verify: Callable[[Optional[str], str, str], tuple[SpfOutcome, SpfOutcome]]) -> Evaluation:
    """Trust check, then SPF for both identities (``verify(ip, helo, sender)``), then decide."""
    why = trust_reason(facts, config)
    if why is not None:
        return Evaluation(facts, skip_reason=why)
    helo, mailfrom = verify(facts.client_ip, facts.helo, facts.sender)
    return Evaluation(facts, outcomes=(helo, mailfrom), decision=decide(helo, mailfrom, facts, config))


def deciding_domain(evaluation: Evaluation) -> str:
    """The domain whose SPF result decided a refusal ("" when nothing refuses)."""
    decision = evaluation.decision
    if not decision.refuses or evaluation.outcomes is None:
        return ""
    outcome = next(o for o in evaluation.outcomes if o.identity is decision.identity)
    return (outcome.domain or "").lower().rstrip(".")


def routed_anywhere(recipient: str) -> bool:
    """Whether an address can reach a domain other than the one after its last '@'.

    A local part holding '%' (the "percent hack"), '!' (a UUCP bang path) or '@' (a quoted
    source route), or an address-literal domain (RFC 5321 section 4.1.3), is routed by the
    MTA's own rules: Postfix, for one, delivers ``victim%b.test@a.test`` to victim@b.test
    when a.test is local (its ``allow_percent_hack`` and ``swap_bangpath`` defaults).  Its
    written domain says nothing about where it ends up.
    """
    address = parse_envelope_address(recipient)
    domain = address.domain
    return any(char in address.local for char in "%!@") or (domain.startswith("[") and domain.endswith("]")) \
        or (not domain and "!" in address.text)


def _rollout_reason(evaluation: Evaluation, recipient: str, config: Config) -> Optional[str]:
    """Why the staged rollout does not enforce a refusal for ``recipient`` (None: it does).

    ``header_only_senders`` spares a sender domain everywhere; ``enforce_domains`` and
    ``header_only_domains`` override ``mode`` for the recipient's domain.  A recipient that
    can be routed to any domain (:func:`routed_anywhere`) is enforced whenever any
    enforcement applies, so ``victim%enforced.example@header-only.example`` cannot slip
    past ``enforce_domains``.
    """
    sender_domain = deciding_domain(evaluation)
    if sender_domain in config.header_only_senders:
        return f"header_only_senders lists {sender_domain}"
    domain = parse_envelope_address(recipient).domain.lower().rstrip(".")
    if routed_anywhere(recipient):
        enforced = enforcement_possible(config)
    elif domain in config.enforce_domains:
        enforced = True
    elif domain in config.header_only_domains:
        return f"header_only_domains lists {domain}"
    else:
        enforced = config.enforce
    return None if enforced else "header-only mode"


def enforced_for(evaluation: Evaluation, recipient: str, config: Config) -> bool:
    """Whether the staged rollout carries a refusal out for this recipient."""
    return _rollout_reason(evaluation, recipient, config) is None


def enforcement_possible(config: Config) -> bool:
    """Whether any recipient can ever be refused (else RCPT need not be looked at)."""
    return config.enforce or bool(config.enforce_domains)


def not_enforced_reason(evaluation: Evaluation, recipient: str, config: Config) -> Optional[str]:
    """Why a refusing decision is not carried out for ``recipient``; None when it is."""
    if is_exempt_recipient(recipient, config):
        return f"exempt recipient {recipient}"
    return _rollout_reason(evaluation, recipient, config)


def rcpt_reply(evaluation: Evaluation, recipient: str, config: Config) -> Decision:
    """The answer to one RCPT TO: the refusal, unless not enforced for it or an exempt recipient."""
    refuses = evaluation.decision.refuses and not_enforced_reason(evaluation, recipient, config) is None
    return evaluation.decision if refuses else ACCEPT


def spared(evaluation: Evaluation, recipient: str, config: Config) -> bool:
    """True when this recipient gets a message that enforcement would have refused."""
    return (evaluation.decision.refuses and not is_exempt_recipient(recipient, config)
            and not enforced_for(evaluation, recipient, config))


@dataclass(frozen=True)
class RcptVerdict:
    """The answer to one RCPT TO, and what it means for the transaction."""

    reply: Optional[Reply] = None  # a refusal; None: accepted
    action: Optional[Action] = None  # the SPF refusal's action (reject, defer), logged with the outcomes
    held: Optional[bool] = None  # spf_fail_hold: whether this recipient's refusal waits for DKIM
    spared: bool = False  # accepted although enforcement would have refused it


def rcpt_verdict(evaluation: Evaluation, recipient: str, config: Config, held: Optional[bool]) -> RcptVerdict:
    """The verdict for ``recipient``; ``held`` is the transaction's hold so far (None: not yet set).

    With ``spf_fail_hold = dkim`` a refusal waits for the end of the message (RFC 7489
    section 10.1), where it can only be given to all recipients at once: held and free
    recipients go in separate transactions, the later kind getting 452 4.5.3.
    """
    decision = rcpt_reply(evaluation, recipient, config)
    hold = None
    if held_for_dkim(evaluation, config):
        hold = decision.refuses
        if held is not None and held is not hold:
            return RcptVerdict(SEPARATE_TRANSACTION)
        if hold:
            return RcptVerdict(held=True)
    if decision.refuses:
        return RcptVerdict(decision.reply, decision.action)
    return RcptVerdict(held=hold, spared=spared(evaluation, recipient, config))


DKIM_NOTE = "SPF fail overridden by a DKIM signature aligned with From: and MAIL FROM (RFC 7489 section 10.1)"


def disposition(evaluation: Evaluation, spared: bool, dkim_spared: bool = False) -> tuple[Action, Optional[tuple]]:
    """What became of a message that is accepted: the logged action and the A-R note.

    ``spared``: a recipient got it although enforcement would have refused it (header-only
    mode, or per-domain rollout); ``dkim_spared``: a held SPF fail was saved by an aligned
    DKIM signature.  The note is ``(identity, text)``: the RFC 8601 ``reason`` that the
    identity's result gets, or None.  The milter and ``spfmilter check``/``explain`` both
    call this, so the headers they show cannot differ.
    """
    decision = evaluation.decision
    if decision.reply is None:
        return Action.ACCEPT, None
    if dkim_spared:
        return Action.ACCEPT_DKIM, (decision.identity, DKIM_NOTE)
    if spared:
        reply = decision.reply
        return Action(f"would-{decision.action.value}"), (
            decision.identity, f"not enforced here; enforcement would refuse it with {reply.code} {reply.xcode}")
    return Action.ACCEPT_EXEMPT, None


def dkim_verdict(evaluation: Evaluation, results: Sequence, checked: bool = True) -> tuple[Action, Optional[Reply]]:
    """A held SPF refusal at the end of the message, given the DKIM ``results`` (DkimResult).

    ACCEPT when an aligned signature verified; DEFER (451 4.4.3) when none did but an
    aligned one met a temporary DNS failure; else the SPF refusal.  ``checked`` False: the
    message could not be checked (too big to hold), which is the SPF refusal too.
    """
    if checked and any(r.result == "pass" and r.aligned for r in results):
        return Action.ACCEPT, None
    if checked and any(r.result == "temperror" and r.aligned for r in results):
        return Action.DEFER, DKIM_DNS_FAILURE
    return Action.REJECT, evaluation.decision.reply


def held_for_dkim(evaluation: Evaluation, config: Config) -> bool:
    """spf_fail_hold = dkim: a refusal for an SPF fail (or a rejected softfail) of the MAIL FROM
    identity waits for the end of the message, where a DKIM signature aligned with From: and
    MAIL FROM can spare it (RFC 7489 section 10.1).

    DMARC aligns SPF with MAIL FROM only (RFC 7489 section 3.1.2), so a refusal decided by
    the HELO identity is never held -- except for the null sender, whose MAIL FROM identity
    is the HELO name (RFC 7208 section 2.4).
    """
    decision = evaluation.decision
    if config.spf_fail_hold is not FailHold.DKIM or decision.action is not Action.REJECT or not evaluation.outcomes:
        return False
    outcome = next(o for o in evaluation.outcomes if o.identity is decision.identity)
    if outcome.identity is Identity.HELO and evaluation.facts.sender:
        return False
    return outcome.result in (SpfResult.FAIL, SpfResult.SOFTFAIL)
