"""SRS decisions for one transaction: which recipients are forwarded, reversed or refused (pure).

How "delivered here" is known -- a milter sees recipients before Postfix expands its
aliases, so it has to be told:

* ``local_domains``: the domains delivered on this host.  A recipient in another domain
  leaves the host (relay, backup MX) and counts as forwarded.
* ``srs_forward_table``: a file in Postfix's virtual(5) source format (``address  target,
  target``; ``@domain`` patterns; ``#`` comments).  A recipient listed there with at least
  one target outside ``local_domains`` counts as forwarded.  It can be the very file
  ``postmap`` compiles for ``virtual_alias_maps``.

The envelope sender is rewritten when a message goes to a forwarded recipient, unless the
sender is null or in ``srs_exclude_domains``, or the client is trusted (trusted network,
SASL login, local) and the sender is in one of our domains or ``srs_rewrite_trusted`` is
off.  An untrusted client's sender in one of our domains is rewritten like any other.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Optional

from .config import Config, domain_matches
from .replies import NO_MAILBOX, SEPARATE_TRANSACTION, Reply
from .srs import SrsError, SrsKeys, reverse, srs_tag


class Kind(str, enum.Enum):
    FORWARD = "forward"  # the transaction's sender gets rewritten
    PLAIN = "plain"  # the sender stays as it is


@dataclass(frozen=True)
class SrsPolicy:
    domain: str
    keys: SrsKeys
    local_domains: frozenset = frozenset()
    exclude_domains: frozenset = frozenset()  # domains, and ".example.org" for its subdomains
    forwarded: frozenset = frozenset()  # lowercased addresses and "@domain" patterns
    rewrite_trusted: bool = False

    def is_ours(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return domain == self.domain.lower() or domain in self.local_domains

    def excluded(self, domain: str) -> bool:
        """A sender domain in srs_exclude_domains (``.example.org``: any subdomain of it)."""
        return domain_matches(domain, self.exclude_domains)

    def sender_rewritable(self, sender: str, trusted: bool) -> bool:
        """Whether a forwarded message from ``sender`` gets an SRS sender.

        ``trusted``: the client is in trusted_networks, logged in (SASL) or local.  Only such
        a client keeps a sender in one of our domains: from anyone else, a local-domain
        sender is as unproven as any other, and forwarding it unchanged would make the next
        hop see our domain's SPF pass for it.
        """
        if not sender or "@" not in sender:
            return False
        domain = sender.rpartition("@")[2].lower().rstrip(".")
        if self.excluded(domain):
            return False
        if self.is_ours(domain):
            return not trusted
        return not trusted or self.rewrite_trusted

    def is_forwarded(self, recipient: str) -> bool:
        address = recipient.lower()
        domain = address.rpartition("@")[2].rstrip(".")
        if not self.is_ours(domain):
            return True
        return address in self.forwarded or f"@{domain}" in self.forwarded


@dataclass(frozen=True)
class RcptSrs:
    """What SRS makes of one recipient: ``kind`` for the transaction, or a refusal."""

    kind: Optional[Kind] = None
    original: str = ""  # a reversed SRS recipient's real address
    reply: Optional[Reply] = None  # a refusal
    reason: str = ""  # for the log: bad-hash, expired, ...


_REFUSAL_TEXT = {
    "bad-hash": "its signature is not valid",
    "hash-too-short": "its signature is too short",
    "expired": "it has expired",
    "malformed": "it is malformed",
}


def bare_address(recipient: str) -> str:
    """``<a@b>`` (as the MTA passes it) -> ``a@b``."""
    text = recipient.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text


def rcpt_srs(policy: SrsPolicy, sender: str, trusted: bool, recipient: str,
             kind: Optional[Kind], now: float) -> RcptSrs:
    """The SRS verdict for ``recipient`` in a transaction whose kind so far is ``kind``.

    * An SRS address in our SRS domain is reversed, or refused with 550 5.1.1 if its
      signature or age is wrong (we must never relay on an address we did not sign).
      Any other address in a dedicated SRS domain (one not in local_domains) is refused
      too, postmaster@ aside (RFC 5321 section 4.5.1): it has no mailboxes.
    * Otherwise the recipient needs the rewritten sender (forwarded) or not.  One
      transaction has one envelope sender: a recipient that needs the other kind than
      the first accepted one gets 452 4.5.3, so the client sends it in a new transaction
      (RFC 5321 section 3.3: a 452 recipient is retried later).
    """
    address = bare_address(recipient)
    local, at, domain = address.rpartition("@")
    in_srs_domain = bool(at) and domain.lower().rstrip(".") == policy.domain.lower()
    if in_srs_domain and not srs_tag(local) and policy.domain.lower() not in policy.local_domains \
            and local.lower() != "postmaster":
        # A dedicated SRS domain has no mailboxes: the MTA accepts any address there
        # (relay_domains), so anything but an SRS address would be relayed back to us.
        return RcptSrs(reply=NO_MAILBOX, reason="not-srs")
    if in_srs_domain and srs_tag(local):
        try:
            original = reverse(address, policy.keys, now)
        except SrsError as exc:
            why = _REFUSAL_TEXT.get(exc.reason, "it is not valid")
            return RcptSrs(reply=Reply(550, "5.1.1", f"Invalid SRS address: {why}"), reason=exc.reason)
        wanted = Kind.PLAIN
    else:
        original = ""
        rewrite = policy.sender_rewritable(sender, trusted) and at != "" and policy.is_forwarded(address)
        wanted = Kind.FORWARD if rewrite else Kind.PLAIN
    if kind is not None and wanted is not kind:
        return RcptSrs(reply=SEPARATE_TRANSACTION, reason="mixed")
    return RcptSrs(kind=wanted, original=original)


# --------------------------------------------------------------------------- forward table

_PATTERN = re.compile(r"^(?:[^\s@]+@[^\s@]+|@[^\s@]+)$")


def parse_forward_table(text: str, local_domains: frozenset, srs_domain: str = "") -> frozenset:
    """The forwarded patterns of a virtual(5)-style table (see the module docstring)."""
    ours = {d.lower() for d in local_domains} | ({srs_domain.lower()} if srs_domain else set())
    entries: list[list[str]] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace() and entries:  # continuation line
            entries[-1].append(raw)
        else:
            entries.append([raw])
    forwarded = set()
    for lines in entries:
        pattern, _, targets = " ".join(line.strip() for line in lines).partition(" ")
        pattern = pattern.lower()
        if not _PATTERN.match(pattern):
            continue  # a bare local part or regexp form: not ours to interpret
        for target in re.split(r"[\s,]+", targets.strip()):
            if "@" in target and target.rpartition("@")[2].lower().rstrip(".") not in ours:
                forwarded.add(pattern)
                break
    return frozenset(forwarded)


def load_forward_table(path: str, local_domains: frozenset, srs_domain: str = "") -> frozenset:
    if not path:
        return frozenset()
    with open(path, encoding="utf-8", errors="replace") as handle:
        return parse_forward_table(handle.read(), local_domains, srs_domain)


def build_srs_policy(config: Config) -> Optional[SrsPolicy]:
    """The SRS policy of ``config`` (None when SRS is off).

    Raises SecretsError or OSError (naming the file) when the secrets file or the
    forward table cannot be used.
    """
    from .srs import load_secrets

    if not config.srs:
        return None
    keys = SrsKeys(load_secrets(config.srs_secrets_file), config.srs_hash_length,
                   config.srs_hash_min_length, config.srs_max_age, config.srs_separator)
    try:
        forwarded = load_forward_table(config.srs_forward_table, config.local_domains, config.srs_domain)
    except OSError as exc:
        raise OSError(f"cannot read srs_forward_table {config.srs_forward_table}: {exc.strerror}") from None
    return SrsPolicy(config.srs_domain, keys, config.local_domains, config.srs_exclude_domains,
                     forwarded, config.srs_rewrite_trusted)
