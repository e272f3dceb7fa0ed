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
from typing import Optional, Protocol, Sequence

from .config import Config, FailHold, HeloRejectScope, TempErrorAction
from .replies import DKIM_DNS_FAILURE, SEPARATE_TRANSACTION, Reply
from .text import reply_text
from .verify import Identity, SpfOutcome, SpfResult, not_checked, parse_envelope_address


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
    macros: tuple[tuple[str, str], ...] = ()  # (name, value) of the skip_macros the MTA sent


class SpfChecks(Protocol):
    """The DNS-backed checks of one transaction (verify.Checks: one DNS time budget for all)."""

    def helo(self, ip: Optional[str], helo: str, sender: str = "") -> SpfOutcome: ...

    def mailfrom(self, ip: Optional[str], helo: str, sender: str) -> SpfOutcome: ...

    def authorizes(self, ip: str, domain: str) -> bool: ...

    def validated_ptrs(self, ip: str) -> list[str]: ...


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
    given = dict(facts.macros)
    for match in config.skip_macros:
        value = given.get(match.name)
        if value and (match.value is None or value == match.value):  # pyspf-milter compares exactly too
            return f"macro {match.name}={value}"
    return None


def in_domains(name: str, domains: frozenset[str]) -> Optional[str]:
    """The entry of ``domains`` that ``name`` is or is below (label-wise, as RFC 7208 section 5.5
    matches a validated PTR name to a domain), or None."""
    labels = name.lower().rstrip(".").split(".")
    for start in range(len(labels)):
        candidate = ".".join(labels[start:])
        if candidate in domains:
            return candidate
    return None


def allowlist_reason(facts: Facts, config: Config, checks: SpfChecks) -> Optional[str]:
    """Why a client from outside is not checked, by the allow-lists that need DNS; None: check it.

    Cheapest first: trusted_helo_names (the HELO check, needed anyway), trusted_ptr_domains
    (a PTR lookup and the forward lookups that validate it), trusted_spf_domains (one SPF
    evaluation per domain, in the order listed).  They share the transaction's DNS budget.
    """
    ip = facts.client_ip
    if ip is None:
        return None
    helo = facts.helo.lower().rstrip(".")
    if helo in config.trusted_helo_names and checks.helo(ip, facts.helo).result is SpfResult.PASS:
        return f"trusted HELO name {helo}"
    if config.trusted_ptr_domains:
        for name in checks.validated_ptrs(ip):
            domain = in_domains(name, config.trusted_ptr_domains)
            if domain is not None:
                return f"trusted PTR name {name} in {domain}"
    for domain in config.trusted_spf_domains:
        if checks.authorizes(ip, domain):
            return f"authorized by trusted SPF domain {domain}"
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
    a trusted network, a local or a SASL-authenticated client (checked or not), or one
    skip_macros exempts.  A client let through by an allow-list for outside relays
    (trusted_helo_names, trusted_ptr_domains, trusted_spf_domains) is not one of ours."""
    return (evaluation.skip_reason is not None and not evaluation.outsider) or bool(evaluation.facts.auth_user)


def decide(helo: SpfOutcome, mailfrom: SpfOutcome, facts: Facts, config: Config) -> Decision:
    """The reply enforcement gives for this transaction (header-only mode logs it instead).

    HELO is looked at first (RFC 7208 section 2.3).  A rejecting result of either
    identity rejects (:func:`rejecting_results`).  Otherwise a MAIL FROM temperror defers
    when so configured, or always for require_pass_domains (RFC 7208 section 8.6, RFC 7372
    4.7.24); for the null sender the MAIL FROM identity is the HELO check, so its temperror
    defers too.  A HELO temperror alone does not defer: the HELO result only acts through
    helo_reject_results.  An identity check_identities leaves out decides nothing.
    """
    for outcome in (helo, mailfrom):
        if outcome.checked and outcome.result.value in rejecting_results(outcome, facts, config):
            return _reject(outcome, facts, config)
    if mailfrom.checked and mailfrom.result is SpfResult.TEMPERROR and (
            config.temperror_action is TempErrorAction.DEFER or requires_pass(mailfrom, config)):
        text = (f"SPF temporary error for {_what(mailfrom)}: "
                f"{mailfrom.problem or 'DNS lookup failed'}; please try again later")
        return Decision(Action.DEFER, Reply(451, "4.7.24", refusal_text(text, mailfrom, facts, config)),
                        mailfrom.identity)
    return ACCEPT


def requires_pass(outcome: SpfOutcome, config: Config) -> bool:
    """Whether require_pass_domains lists this MAIL FROM outcome's domain."""
    return outcome.identity is Identity.MAILFROM and (outcome.domain or "").lower().rstrip(".") in \
        config.require_pass_domains


def rejecting_results(outcome: SpfOutcome, facts: Facts, config: Config) -> frozenset[str]:
    """The results that refuse this outcome.

    HELO: helo_reject_results, for every message or (helo_reject_scope = null-sender)
    only for the null sender.  MAIL FROM: mailfrom_reject_results, or for a domain in
    require_pass_domains every result but pass (temperror defers instead, see :func:`decide`).
    """
    if outcome.identity is Identity.HELO:
        if config.helo_reject_scope is HeloRejectScope.NULL_SENDER and facts.sender:
            return frozenset()
        return config.helo_reject_results
    if requires_pass(outcome, config):
        return frozenset(result.value for result in SpfResult
                         if result not in (SpfResult.PASS, SpfResult.TEMPERROR))
    return config.mailfrom_reject_results


def refusal_text(built_in: str, outcome: SpfOutcome, facts: Facts, config: Config) -> str:
    """The text of an SPF refusal: reject_text with its placeholders filled, or ``built_in``.

    The domain and the sender come from the client: each value is cleaned for an SMTP
    reply (:func:`~spfmilter.text.reply_text`) before it goes in, and so is the result.
    """
    if not config.reject_text:
        return reply_text(built_in)
    values = {
        "result": outcome.result.value,
        "domain": outcome.domain or outcome.sender,
        "ip": facts.client_ip or "unknown",
        "identity": outcome.identity.value,
        "sender": facts.sender or "<>",
    }
    return reply_text(config.reject_text.format(**{name: reply_text(value, 256) for name, value in values.items()}))


def _what(outcome: SpfOutcome) -> str:
    if outcome.identity is Identity.HELO:
        return f"HELO {outcome.domain or outcome.sender}"
    return f"{outcome.domain or 'sender'} (MAIL FROM {outcome.sender or '<>'})"


def _reject(outcome: SpfOutcome, facts: Facts, config: Config) -> Decision:
    ip = facts.client_ip or "unknown"
    if outcome.result is SpfResult.PERMERROR:
        # RFC 7372 section 3.2: 5.7.24 is an SPF validation error.
        text = f"SPF permanent error for {_what(outcome)}: {outcome.problem or 'invalid SPF record'}"
        return Decision(Action.REJECT, Reply(550, "5.7.24", refusal_text(text, outcome, facts, config)),
                        outcome.identity)
    if outcome.result is SpfResult.FAIL and outcome.explanation:
        # RFC 7208 section 8.4: say that the text comes from the sender's domain.
        text = f"SPF fail for {_what(outcome)}; {outcome.domain} explains: {outcome.explanation}"
    elif outcome.result is SpfResult.NONE:
        text = f"SPF none for {_what(outcome)}: no SPF policy, and this server requires one"
    else:
        text = (f"SPF {outcome.result.value} for {_what(outcome)}: "
                f"{ip} is not authorized to send for {outcome.domain or outcome.sender}")
    # RFC 7372 section 3.2: 5.7.23 means SPF validation failed.
    return Decision(Action.REJECT, Reply(550, "5.7.23", refusal_text(text, outcome, facts, config)), outcome.identity)


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
    outsider: bool = False  # skipped by an allow-list for outside relays (see vouched_for)
    outcomes: Optional[tuple[SpfOutcome, SpfOutcome]] = None  # (helo, mailfrom)
    decision: Decision = ACCEPT


def evaluate(facts: Facts, config: Config, checks: SpfChecks) -> Evaluation:
    """Trust check, allow-lists, then SPF for the identities in check_identities (``checks``:
    one transaction's :class:`~spfmilter.verify.Checks`), then decide."""
    why = trust_reason(facts, config)
    if why is not None:
        return Evaluation(facts, skip_reason=why)
    why = allowlist_reason(facts, config, checks)
    if why is not None:
        return Evaluation(facts, skip_reason=why, outsider=True)
    ip, helo_name, sender = facts.client_ip, facts.helo, facts.sender
    if "helo" in config.check_identities:
        helo = checks.helo(ip, helo_name)
    else:
        helo = not_checked(Identity.HELO, helo_name.rstrip("."), f"postmaster@{helo_name}")
    if "mailfrom" in config.check_identities:
        mailfrom = checks.mailfrom(ip, helo_name, sender)
    else:
        address = parse_envelope_address(sender)
        mailfrom = not_checked(Identity.MAILFROM, address.domain, address.text or f"postmaster@{helo_name}")
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
