"""The pymilter adapter: one object per SMTP connection, collecting facts and applying decisions.

Nothing here decides anything.  The transaction's facts go to
:func:`~spfmilter.policy.evaluate` (with :class:`~spfmilter.verify.Verifier` for SPF), each
recipient to :func:`~spfmilter.policy.rcpt_verdict` (and
:func:`~spfmilter.srspolicy.rcpt_srs`), a held message's DKIM results to
:func:`~spfmilter.policy.dkim_verdict`, the end of the message to
:func:`~spfmilter.policy.disposition`; the header text comes from :mod:`spfmilter.headers`.

Stages (all other stages are switched off in :meth:`SpfMilter.negotiate`):

* connect, HELO, MAIL FROM and header lines need no reply (``@Milter.noreply``);
  SPF is evaluated at MAIL FROM;
* RCPT TO replies: a refusal is given here, recipient by recipient, so that
  postmaster@ and abuse@ are never refused (RFC 5321 section 4.5.1); each recipient's
  domain is noted for the log line (``rcpt-domains=``, read by ``spfmilter report``) --
  also when nothing can be refused, where RCPT needs no reply on unix sockets;
* end of message removes forged copies of our headers and prepends ours.

Any exception in a callback is logged once with its traceback and answered with
the configured ``on_error`` reply at the next stage that replies.
"""
from __future__ import annotations

import functools
import logging
import re
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import Milter
import milter as libmilter

from . import dkimcheck
from . import headers as hdr
from .config import ErrorAction, FailHold
from .dns import DnsTempError
from .service import Service
from .policy import (Action, Evaluation, Facts, deciding_domain, disposition, dkim_verdict, enforcement_possible,
                     evaluate, rcpt_verdict, removes_forged_headers, vouched_for)
from .replies import INTERNAL_ERROR, Reply
from .srs import SrsError
from .srs import forward as srs_forward
from .srspolicy import Kind, SrsPolicy, rcpt_srs
from .text import clean, log_address, log_value
from .verify import Verifier, normalise_ip, parse_envelope_address

log = logging.getLogger("spfmilter")

# Stages we never look at; libmilter tells the MTA to skip them.
SKIPPED_STAGES = Milter.P_NOBODY | Milter.P_NOUNKNOWN
# Stages skipped only on unix sockets.  Postfix still sends the (possibly empty) macro
# packet of a stage it skips; over TCP that unanswered packet is ACKed late (delayed
# ACK, ~40 ms) and the MTA's next small write waits for the ACK (Nagle): one stall per
# message.  Answering the stage lets the reply carry the ACK.  (Asking for an empty
# macro list with setsymlist does not help: Postfix then sends an empty packet.)  When
# DATA is answered, end-of-headers must be too: libmilter refuses DATA followed directly
# by end of message (a message without headers) and aborts the transaction.
SKIPPED_ON_UNIX = Milter.P_NODATA | Milter.P_NOEOH
# Stages whose reply the MTA need not wait for: on unix sockets only, for the same reason.
NO_REPLY_STAGES = Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_HDR
ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS
SRS_ACTIONS = Milter.CHGFROM | Milter.ADDRCPT | Milter.DELRCPT
# spf_fail_hold = dkim: a held message is kept in memory up to this size for DKIM; a
# bigger one cannot be verified and gets the SPF refusal.
HOLD_MAX_BYTES = 10 * 1024 * 1024
# Distinct recipient domains kept per transaction for the log line; further ones are only counted.
MAX_RCPT_DOMAINS = 1000


@dataclass
class _Transaction:
    """State of one MAIL FROM .. end-of-message (or abort) sequence."""

    evaluation: Evaluation
    forged: list = field(default_factory=list)  # (header name, per-name index)
    header_counts: dict = field(default_factory=dict)
    logged: bool = False
    srs_kind: Optional[Kind] = None  # fixed by the first accepted recipient
    reversed: list = field(default_factory=list)  # (SRS recipient as given, original address)
    rcpt_seen: bool = False
    rcpt_domains: dict = field(default_factory=dict)  # distinct recipient domains in order seen (values unused)
    rcpt_domains_more: int = 0  # recipients whose domain was not kept (over MAX_RCPT_DOMAINS)
    strips_forged: bool = True  # headers claiming to be ours are removed (all but trusted networks)
    spared: bool = False  # a recipient got it although enforcement would have refused it
    hold: Optional[bool] = None  # spf_fail_hold: True = held recipients, False = free ones (first decides)
    raw_headers: list = field(default_factory=list)  # (name, value) of a held message
    body: list = field(default_factory=list)
    body_size: int = 0

    @property
    def held(self) -> bool:
        return self.hold is True

    @property
    def facts(self) -> Facts:
        return self.evaluation.facts

    @property
    def checked(self) -> bool:
        return self.evaluation.outcomes is not None


def _guarded(stage: str, replies: bool):
    """Run a callback so an exception never escapes into libmilter.

    A failing no-reply callback marks the connection; the next replying stage then
    answers with ``on_error``.  A failing replying callback answers at once.
    """

    def wrap(method: Callable):
        @functools.wraps(method)
        def run(self: "SpfMilter", *args):
            if self._failed and replies:
                return self._error_reply()
            try:
                return method(self, *args)
            except libmilter.error as exc:
                # libmilter refused a change: the MTA hung up (timeout, crash) or did not allow it
                self._failed = True
                log.warning("could not change the message in %s (%s): %s; answering per on_error=%s",
                            stage, self._ident(), exc, self.service.config.on_error.value)
                self._end_transaction(Action.ABORTED)
                return self._error_reply() if replies else Milter.CONTINUE
            except Exception:
                self._failed = True
                self.service.metrics.error(stage)
                log.exception("internal error in %s callback (%s); answering per on_error=%s",
                              stage, self._ident(), self.service.config.on_error.value)
                return self._error_reply() if replies else Milter.CONTINUE

        return run

    return wrap


class SpfMilter(Milter.Base):
    """One instance per SMTP connection (libmilter calls it from that connection's thread)."""

    def __init__(self, service: Service):
        super().__init__()
        self.service = service
        self.config = service.config
        self._failed = False
        self._connected = False  # False: pymilter could not hand us the connect information
        self._client_ip: Optional[str] = None
        self._local = False
        self._client_name = ""
        self._helo = ""
        self._verifier = Verifier(service.dns, self.config.receiver, self.config.dns_timeout)
        self._tx: Optional[_Transaction] = None
        self._queue_id: Optional[str] = None
        self._srs: Optional[SrsPolicy] = service.srs  # None if off, or if the MTA forbids the changes
        self._hold = self.config.spf_fail_hold is FailHold.DKIM
        self._leading_space = False  # header values come with their leading space (SMFIP_HDR_LEADSPC)

    # ------------------------------------------------------------------ negotiation

    def negotiate(self, opts):
        """Skip the stages we never look at and mark the ones that need no reply."""
        try:
            offered_actions, offered_protocol, _, _ = opts
            if self._srs is not None and offered_actions & SRS_ACTIONS != SRS_ACTIONS:
                log.warning("the MTA does not let milters change senders and recipients; "
                            "SRS is off for this connection")
                self._srs = None
            self._actions = offered_actions & (ACTIONS | (SRS_ACTIONS if self._srs else 0))
            wanted = SKIPPED_STAGES
            if self._hold:  # DKIM needs the body, and the header values exactly as sent
                wanted = (wanted & ~Milter.P_NOBODY) | Milter.P_HDR_LEADSPC
            if self.config.socket.family == "unix":
                wanted |= SKIPPED_ON_UNIX | NO_REPLY_STAGES
                if not enforcement_possible(self.config) and not self._srs:
                    # nothing to answer per recipient, but its domain is logged (rcpt-domains=):
                    # RCPT is sent without waiting for a reply
                    wanted |= Milter.P_NR_RCPT
            wanted &= offered_protocol
            self._leading_space = bool(wanted & Milter.P_HDR_LEADSPC)
            self._protocol = wanted
            opts[0] = self._actions
            opts[1] = wanted
            opts[2] = 0
            opts[3] = 0
            return Milter.CONTINUE
        except Exception:
            log.exception("milter option negotiation failed")
            return Milter.ALL_OPTS

    # ------------------------------------------------------------------ callbacks

    @Milter.noreply
    @_guarded("connect", replies=False)
    def connect(self, hostname, family, hostaddr):
        self._connected = True
        self._client_name = clean(hostname or "", 255)
        self._client_ip = None
        self._local = family == socket.AF_UNIX
        if family in (socket.AF_INET, socket.AF_INET6) and hostaddr:
            address = hostaddr[0] if isinstance(hostaddr, (tuple, list)) else hostaddr
            try:
                self._client_ip = normalise_ip(str(address))
            except ValueError:
                log.warning("cannot parse client address %r; treating the client as unknown",
                            clean(str(address), 80))
        return Milter.CONTINUE

    @Milter.noreply
    @_guarded("helo", replies=False)
    def hello(self, hostname):
        self._helo = (hostname or "").strip()
        return Milter.CONTINUE

    @Milter.noreply
    @_guarded("mail", replies=False)
    def envfrom(self, sender, *params):
        self._end_transaction(Action.ABORTED)  # a new MAIL FROM implicitly ends the last one
        self._update_queue_id()
        if not self._connected and not self._recover_client():
            self._failed = True  # unchecked is not an option: answer per on_error
            return Milter.CONTINUE
        address = parse_envelope_address(sender or "")
        facts = Facts(
            client_ip=self._client_ip,
            helo=self._helo,
            sender=address.text,
            client_name=self._client_name,
            auth_user=self._macro("{auth_authen}") or None,
            queue_id=self._queue_id,
            local=self._local,
            macros=self._skip_macros(),
        )
        started = time.monotonic()
        self._tx = _Transaction(evaluate(facts, self.config, self._verifier.checks()),
                                strips_forged=removes_forged_headers(facts, self.config))
        metrics = self.service.metrics
        if self._tx.checked:
            metrics.check_seconds(time.monotonic() - started)
            for outcome in self._tx.evaluation.outcomes:
                if outcome.checked:
                    metrics.spf(outcome.identity.value, outcome.result.value)
        return Milter.CONTINUE

    def envrcpt(self, recipient, *params):
        if self._protocol & Milter.P_NR_RCPT:  # nothing can be refused: the MTA expects no reply
            self._rcpt_unanswered(recipient)
            return Milter.NOREPLY
        return self._rcpt(recipient)

    @_guarded("rcpt", replies=False)
    def _rcpt_unanswered(self, recipient):
        if self._rcpt_verdict(recipient) != Milter.CONTINUE:  # negotiate() rules this out
            raise RuntimeError("a recipient was refused at a RCPT stage negotiated without reply")
        return Milter.CONTINUE

    @_guarded("rcpt", replies=True)
    def _rcpt(self, recipient):
        return self._rcpt_verdict(recipient)

    def _rcpt_verdict(self, recipient: str):
        tx = self._tx
        self._update_queue_id()
        if tx is None:
            return Milter.CONTINUE
        tx.rcpt_seen = True
        self._note_rcpt_domain(tx, recipient)
        verdict = rcpt_verdict(tx.evaluation, recipient, self.config, tx.hold)
        if verdict.reply is not None:
            if verdict.action is not None and not tx.logged:
                self._log_outcomes(tx, verdict.action, verdict.reply)
            return self._refuse(verdict.reply)
        if verdict.held is not None:
            tx.hold = verdict.held
        tx.spared |= verdict.spared
        return self._rcpt_srs(tx, recipient) if self._srs else Milter.CONTINUE

    @staticmethod
    def _note_rcpt_domain(tx: _Transaction, recipient: str) -> None:
        domain = parse_envelope_address(recipient or "").domain.lower().rstrip(".")
        if not domain or domain in tx.rcpt_domains:
            return
        if len(tx.rcpt_domains) < MAX_RCPT_DOMAINS:
            tx.rcpt_domains[domain] = None
        else:
            tx.rcpt_domains_more += 1

    def _rcpt_srs(self, tx: _Transaction, recipient: str):
        verdict = rcpt_srs(self._srs, tx.facts.sender, vouched_for(tx.evaluation), recipient, tx.srs_kind,
                           time.time())
        if verdict.reply is not None:
            self.service.metrics.srs("refused" if verdict.reply.permanent else "retry-mixed")
            log.info("srs=refused; reason=%s; rcpt=%s; envelope-from=%s; %s", verdict.reason,
                     log_address(recipient), log_address(tx.facts.sender or "<>"), self._ident())
            return self._refuse(verdict.reply)
        tx.srs_kind = verdict.kind
        if verdict.original:
            tx.reversed.append((recipient, verdict.original))
        return Milter.CONTINUE

    @Milter.noreply
    @_guarded("header", replies=False)
    def header(self, name, value):
        tx = self._tx
        if tx is None:
            return Milter.CONTINUE
        if tx.held and tx.body_size <= HOLD_MAX_BYTES:
            tx.raw_headers.append((name, value))
            tx.body_size += len(name) + len(value)
        key = name.strip().lower()
        if tx.strips_forged and key in (hdr.AR_NAME.lower(), hdr.RSPF_NAME.lower()):
            index = tx.header_counts[key] = tx.header_counts.get(key, 0) + 1
            if hdr.is_forged(name, value, self.config):
                tx.forged.append((name, index))
        return Milter.CONTINUE

    @_guarded("body", replies=True)
    def body(self, chunk):
        tx = self._tx
        if tx is not None and tx.held and tx.body_size <= HOLD_MAX_BYTES:
            tx.body.append(bytes(chunk))
            tx.body_size += len(chunk)
        return Milter.CONTINUE

    @_guarded("eom", replies=True)
    def eom(self):
        tx = self._tx
        self._update_queue_id()
        if tx is None:
            return Milter.CONTINUE
        dkim_results: tuple = ()
        if tx.held:
            dkim_results = self._check_dkim(tx)
            verdict, reply = dkim_verdict(tx.evaluation, dkim_results, checked=tx.body_size <= HOLD_MAX_BYTES)
            self.service.metrics.dkim(verdict.value)
            if reply is not None:
                return self._refuse_held(tx, verdict, reply, dkim_results)
        if self._srs:
            self._apply_srs(tx)
        # Remove forged copies first, bottom-up, so the indexes of the others stay valid.
        for name, index in sorted(tx.forged, key=lambda item: item[1], reverse=True):
            self.chgheader(name, index, "")
            log.info("removed forged %s header #%d%s", log_value(name, 64), index, self._queue_suffix())
        if not tx.checked:
            self._end_transaction(Action.ACCEPT)
            return Milter.CONTINUE
        # RCPT not looked at (header-only mode) counts as spared
        action, note = disposition(tx.evaluation, dkim_spared=tx.held, spared=tx.spared or not tx.rcpt_seen)
        headers = hdr.spf_headers(*tx.evaluation.outcomes, tx.facts, self.config, note, dkim_results)
        for name, value in reversed(headers):
            self.addheader(name, value, 0)
        self._end_transaction(action)
        return Milter.CONTINUE

    def _held_message(self, tx: _Transaction) -> bytes:
        """The held message as DKIM signed it: header fields as sent, CRLF line ends, the body."""
        lines = []
        for name, value in tx.raw_headers:
            raw = value.encode("utf-8", "surrogateescape")
            if not self._leading_space:
                raw = b" " + raw
            raw = re.sub(rb"\r?\n", b"\r\n", raw)
            lines.append(name.encode("utf-8", "surrogateescape") + b":" + raw + b"\r\n")
        return b"".join(lines) + b"\r\n" + b"".join(tx.body)

    def _check_dkim(self, tx: _Transaction) -> tuple:
        """The DkimResults of a held message (none when it was too big to hold)."""
        if tx.body_size > HOLD_MAX_BYTES:
            log.info("dkim=not-checked; message larger than %d bytes%s", HOLD_MAX_BYTES, self._queue_suffix())
            return ()
        # One budget for the whole check: key lookups, and no signature verified after it.
        deadline = time.monotonic() + self.config.dns_timeout
        dns = self.service.dns
        orgs = self.service.org_domains
        if orgs is None:
            raise RuntimeError("spf_fail_hold = dkim without a Public Suffix List in the service")

        def txt(name: str):
            try:
                answer = dns.lookup(name.rstrip("."), "TXT", deadline)
            except DnsTempError as exc:
                raise dkimcheck.DkimDnsError(str(exc)) from None
            if answer.nxdomain or not answer.values:
                return None
            return b"".join(answer.values[0])

        return tuple(dkimcheck.verify(self._held_message(tx), txt, deciding_domain(tx.evaluation), orgs, deadline))

    def _refuse_held(self, tx: _Transaction, action: Action, reply: Reply, results) -> int:
        summary = ", ".join(f"{r.result}:{log_value(r.domain)}{'' if r.aligned else '(unaligned)'}"
                            + (f" [{log_value(r.problem)}]" if r.problem and r.aligned else "")
                            for r in results) or "no signature"
        log.info("dkim=%s; held SPF refusal%s", summary, self._queue_suffix())
        self._log_outcomes(tx, action, reply)
        self._end_transaction(action)
        return self._refuse(reply)

    def abort(self):
        return self._abandon("abort")

    def close(self):
        return self._abandon("close")

    def _abandon(self, stage: str) -> int:
        try:
            self._end_transaction(Action.ABORTED)
        except Exception:
            log.exception("internal error in %s callback (%s)", stage, self._ident())
        return Milter.CONTINUE

    # ------------------------------------------------------------------ helpers

    def _apply_srs(self, tx: _Transaction) -> None:
        """At end of message: reversed SRS recipients replaced, forwarded mail's sender rewritten."""
        srs = self._srs
        for given, original in tx.reversed:
            self.delrcpt(given)
            self.addrcpt(f"<{original}>")
            self.service.metrics.srs("reverse")
            log.info("srs=reverse; rcpt=%s; to=%s%s", log_address(given), log_address(original), self._queue_suffix())
        if tx.srs_kind is not Kind.FORWARD:
            return
        sender = tx.facts.sender
        try:
            rewritten = srs_forward(sender, srs.domain, srs.keys, time.time())
        except SrsError as exc:
            log.warning("srs=not-rewritten; envelope-from=%s; problem=%s%s", log_address(sender), log_value(str(exc)),
                        self._queue_suffix())
            return
        if rewritten != sender:
            self.chgfrom(f"<{rewritten}>")
            self.service.metrics.srs("forward")
            log.info("srs=forward; envelope-from=%s; to=%s%s", log_address(sender), log_address(rewritten),
                     self._queue_suffix())

    def _refuse(self, reply: Reply) -> int:
        """Every refusal the milter gives goes through here; enhanced_status_codes = no leaves the
        RFC 3463 code out of all of them (libmilter then sends the reply code and text alone)."""
        self.setreply(str(reply.code), reply.xcode if self.config.enhanced_status_codes else None, reply.text)
        return Milter.REJECT if reply.permanent else Milter.TEMPFAIL

    def _error_reply(self):
        if self.config.on_error is ErrorAction.ACCEPT:
            return Milter.ACCEPT
        try:
            return self._refuse(INTERNAL_ERROR)
        except Exception:  # the reply text is ours; a failure here is libmilter's
            return Milter.TEMPFAIL

    def _macro(self, name: str) -> Optional[str]:
        """A macro's value; pymilter decodes them as strict UTF-8, so an undecodable one is
        "?" (for {auth_authen}: still a login, so the client stays authenticated)."""
        try:
            return self.getsymval(name)
        except UnicodeDecodeError:
            return "?"

    def _skip_macros(self) -> tuple:
        """(name, value) of each skip_macros macro the MTA sent (cleaned: it is only compared and logged)."""
        found = []
        for name in dict.fromkeys(match.name for match in self.config.skip_macros):
            value = self._macro(name)
            if value:
                found.append((name, clean(value, 255)))
        return tuple(found)

    def _recover_client(self) -> bool:
        """The connect stage never reached us (its host name was not UTF-8): take the client
        address from the {client_addr} macro if the MTA sends it; else say so."""
        address = self._macro("{client_addr}")
        try:
            self._client_ip = normalise_ip(address) if address and address != "?" else None
        except ValueError:
            self._client_ip = None
        if self._client_ip is None:
            log.warning("the MTA's connect information could not be read (host name not UTF-8) and no "
                        "{client_addr} macro came; answering per on_error=%s", self.config.on_error.value)
            return False
        self._connected = True
        return True

    def _update_queue_id(self) -> None:
        try:
            queue_id = self.getsymval("i")
        except Exception:
            queue_id = None
        if queue_id:
            self._queue_id = clean(queue_id, 64)
            tx = self._tx
            if tx is not None and tx.facts.queue_id != self._queue_id:
                tx.evaluation = replace(tx.evaluation, facts=replace(tx.facts, queue_id=self._queue_id))

    def _queue_suffix(self) -> str:
        return f" queue-id={log_value(self._queue_id)}" if self._queue_id else ""

    def _ident(self) -> str:
        return f"client-ip={log_value(self._client_ip or 'unknown')}{self._queue_suffix()}"

    def _log_outcomes(self, tx: _Transaction, action: Action, reply: Optional[Reply] = None) -> None:
        tx.logged = True
        evaluation = tx.evaluation
        if evaluation.skip_reason is not None:
            self.service.metrics.action(Action.SKIPPED.value)
            if log.isEnabledFor(logging.INFO):
                log.info("%s", hdr.skip_line(evaluation.skip_reason, tx.facts))
            return
        self.service.metrics.action(action.value)
        if not log.isEnabledFor(logging.INFO):
            return  # the lines would be dropped: not formatted (hot path; log_level = warning)
        decided_by = evaluation.decision.identity
        domains = hdr.rcpt_domains_text(list(tx.rcpt_domains), tx.rcpt_domains_more)
        for outcome in evaluation.outcomes:
            if not outcome.checked:
                continue
            log.info("%s", hdr.log_line(outcome, tx.facts, self.config, action,
                                        reply if outcome.identity is decided_by else None, domains))

    def _end_transaction(self, action: Action) -> None:
        tx, self._tx = self._tx, None
        if tx is None:
            return
        self._queue_id = None
        if not tx.logged:
            would = action in (Action.WOULD_REJECT, Action.WOULD_DEFER)
            self._log_outcomes(tx, action, tx.evaluation.decision.reply if would else None)
