"""Setting names of the programs spfmilter replaces, and what each becomes in spfmilter.

One table, :data:`FOREIGN_KEYS`, serves two readers: ``--check-config`` (config.py), which
answers an unknown key that is one of these with "X is a policyd-spf key; in spfmilter use Y"
instead of a near miss among our own keys, and ``spfmilter migrate-config`` (migrate.py),
whose README table is checked against it.  The names and meanings come from the peers'
documentation: policyd-spf.conf(5) of postfix-policyd-spf-python 3.0.x (pyspf-milter reads the
same file format and keys, plus its milter options), and PostSRSd's /etc/default/postsrsd
(1.x) and postsrsd.conf (2.x).  Plain data, no imports.
"""
from __future__ import annotations

from dataclasses import dataclass

POLICYD_SPF = "policyd-spf"
PYSPF_MILTER = "pyspf-milter"
SPF_PEERS = "policyd-spf and pyspf-milter"  # keys both read (pyspf-milter reads policyd-spf.conf's keys)
POSTSRSD = "PostSRSd"  # 1.x: /etc/default/postsrsd
POSTSRSD2 = "PostSRSd 2"  # postsrsd.conf


@dataclass(frozen=True)
class ForeignKey:
    name: str  # as the peer spells it (policyd-spf's keys are case-sensitive)
    program: str
    use: str  # the spfmilter key(s) to write instead; "" when there is none
    why: str = ""  # with no key: why none is needed, or (lost) what is missing
    lost: bool = False  # spfmilter has no equivalent: migrate-config warns when the key is set

    def advice(self) -> str:
        """What an admin should do with this key in spfmilter, as a clause."""
        if self.use:
            return f"in spfmilter use {self.use}" + (f" ({self.why})" if self.why else "")
        return f"spfmilter {'has no equivalent' if self.lost else 'needs no such setting'}: {self.why}"


def _lost(name: str, program: str, why: str, use: str = "") -> ForeignKey:
    return ForeignKey(name, program, use, why, lost=True)


def _not_needed(name: str, program: str, why: str) -> ForeignKey:
    return ForeignKey(name, program, "", why)

FOREIGN_KEYS: tuple[ForeignKey, ...] = (
    # policyd-spf.conf(5); pyspf-milter reads the same keys
    ForeignKey("debugLevel", SPF_PEERS, "log_level"),
    ForeignKey("TestOnly", SPF_PEERS, "mode (TestOnly = 1 is mode = enforce, TestOnly = 0 is mode = header-only)"),
    ForeignKey("defaultSeedOnly", SPF_PEERS, "mode (defaultSeedOnly is the old name of TestOnly)"),
    ForeignKey("HELO_reject", SPF_PEERS, "helo_reject_results (Null: helo_reject_scope = null-sender; "
                                         "No_Check: check_identities = mailfrom)"),
    ForeignKey("Mail_From_reject", SPF_PEERS, "mailfrom_reject_results (No_Check: check_identities = helo)"),
    ForeignKey("PermError_reject", SPF_PEERS, "permerror in helo_reject_results and mailfrom_reject_results"),
    ForeignKey("TempError_Defer", SPF_PEERS, "temperror_action"),
    _lost("HELO_pass_restriction", SPF_PEERS, "a Postfix access(5) restriction applied on a HELO pass "
          "is a policy-service answer; a milter cannot return one"),
    _lost("Mail_From_pass_restriction", SPF_PEERS, "a Postfix access(5) restriction applied on a MAIL FROM "
          "pass is a policy-service answer; a milter cannot return one"),
    _lost("No_Mail", SPF_PEERS, "refusing only for domains whose record is exactly 'v=spf1 -all'"),
    ForeignKey("Reject_Not_Pass_Domains", SPF_PEERS, "require_pass_domains"),
    _lost("Per_User", SPF_PEERS, "per-recipient settings files; per recipient domain, enforce_domains and "
          "header_only_domains choose enforcement"),
    _lost("Prospective", SPF_PEERS, "checking outbound mail as if sent from another address; "
          "`spfmilter check --ip IP --helo NAME --sender ADDR` evaluates one case by hand"),
    ForeignKey("skip_addresses", SPF_PEERS, "trusted_networks"),
    ForeignKey("Whitelist", SPF_PEERS, "trusted_networks"),
    ForeignKey("HELO_Whitelist", SPF_PEERS, "trusted_helo_names"),
    ForeignKey("Domain_Whitelist", SPF_PEERS, "trusted_spf_domains"),
    ForeignKey("Domain_Whitelist_PTR", SPF_PEERS, "trusted_ptr_domains"),
    ForeignKey("SPF_Enhanced_Status_Codes", SPF_PEERS, "enhanced_status_codes"),
    ForeignKey("Header_Type", SPF_PEERS, "header_type (SPF is received-spf, AR is authentication-results)"),
    _not_needed("Hide_Receiver", SPF_PEERS, "spfmilter never names a recipient's host (receiver= is authserv_id)"),
    ForeignKey("Authserv_Id", SPF_PEERS, "authserv_id"),
    ForeignKey("Lookup_Time", SPF_PEERS, "dns_timeout"),
    ForeignKey("Whitelist_Lookup_Time", SPF_PEERS, "dns_timeout (one budget for all lookups of a transaction)"),
    _lost("Void_Limit", SPF_PEERS, "the void lookup limit is always RFC 7208 section 4.6.4's 2"),
    ForeignKey("Reason_Message", SPF_PEERS, "reject_text"),
    _lost("Mock", SPF_PEERS, "the mock header works around Postfix hiding a policy service's first "
          "prepended header from milters; spfmilter adds its headers as a milter"),
    _not_needed("QueueID", SPF_PEERS, "the queue id is always logged (queue-id=)"),
    # pyspf-milter's milter options (policyd-spf.conf(5), MILTER ONLY OPTIONS)
    ForeignKey("Socket", PYSPF_MILTER, "socket (local:/path is unix:/path)"),
    ForeignKey("PidFile", PYSPF_MILTER, "pid_file"),
    ForeignKey("UserID", PYSPF_MILTER, "user and group (UserID = user:group)"),
    ForeignKey("UMask", PYSPF_MILTER, "socket_mode"),
    ForeignKey("InternalHosts", PYSPF_MILTER, "trusted_networks (addresses) and trusted_ptr_domains (host names)"),
    _not_needed("IntHosts", PYSPF_MILTER, "pyspf-milter makes it from InternalHosts"),
    _lost("MacroList", PYSPF_MILTER, "pyspf-milter checks only transactions in which a listed macro is set; "
          "skip_macros lists the macro values whose transactions are not checked", use="skip_macros"),
    _lost("MacroListVerify", PYSPF_MILTER, "pyspf-milter 3.0 ignores this key; skip_macros lists the macro "
          "values whose transactions are not checked", use="skip_macros"),
    # PostSRSd 1.x, /etc/default/postsrsd
    ForeignKey("SRS_DOMAIN", POSTSRSD, "srs_domain"),
    ForeignKey("SRS_EXCLUDE_DOMAINS", POSTSRSD, "srs_exclude_domains"),
    ForeignKey("SRS_SEPARATOR", POSTSRSD, "srs_separator"),
    ForeignKey("SRS_SECRET", POSTSRSD, "srs_secrets_file (PostSRSd's secret file works as it is)"),
    ForeignKey("SRS_HASHLENGTH", POSTSRSD, "srs_hash_length"),
    ForeignKey("SRS_HASHMIN", POSTSRSD, "srs_hash_min_length"),
    _lost("SRS_FORWARD_PORT", POSTSRSD, "the TCP lookup table; spfmilter rewrites in the milter, or serves "
          "Postfix's canonical maps as a socketmap table (srs_socketmap, README: SRS after alias expansion)"),
    _lost("SRS_REVERSE_PORT", POSTSRSD, "the TCP lookup table; spfmilter reverses in the milter, or serves "
          "Postfix's canonical maps as a socketmap table (srs_socketmap, README: SRS after alias expansion)"),
    _lost("SRS_LISTEN_ADDR", POSTSRSD, "the TCP lookup tables' address; the milter listens on socket",
          use="socket"),
    ForeignKey("RUN_AS", POSTSRSD, "user"),
    _lost("CHROOT", POSTSRSD, "spfmilter does not chroot (the systemd unit confines it)"),
    _lost("SRS_EXTRA_OPTIONS", POSTSRSD, "command line options (-A: rewrite senders in SRS_DOMAIN too)",
          use="srs_rewrite_trusted, local_domains"),
    # PostSRSd 2.x, postsrsd.conf
    ForeignKey("srs-domain", POSTSRSD2, "srs_domain"),
    ForeignKey("domains", POSTSRSD2, "local_domains"),
    ForeignKey("domains-file", POSTSRSD2, "local_domains"),
    ForeignKey("secrets-file", POSTSRSD2, "srs_secrets_file"),
    ForeignKey("separator", POSTSRSD2, "srs_separator"),
    ForeignKey("hash-length", POSTSRSD2, "srs_hash_length"),
    ForeignKey("hash-minimum", POSTSRSD2, "srs_hash_min_length"),
    ForeignKey("unprivileged-user", POSTSRSD2, "user"),
    _lost("chroot-dir", POSTSRSD2, "spfmilter does not chroot (the systemd unit confines it)"),
    _lost("socketmap", POSTSRSD2, "the socketmap table; the milter listens on socket (README, Forwarding with SRS)",
          use="socket"),
    ForeignKey("milter", POSTSRSD2, "socket"),
    _lost("always-rewrite", POSTSRSD2, "rewriting senders in local domains from any client",
          use="srs_rewrite_trusted"),
    ForeignKey("syslog", POSTSRSD2, "log_destination"),
    ForeignKey("debug", POSTSRSD2, "log_level"),
)

_BY_NAME = {key.name: key for key in FOREIGN_KEYS}
_BY_FOLDED = {key.name.lower(): key for key in FOREIGN_KEYS}


def lookup(name: str) -> ForeignKey | None:
    """The foreign key ``name`` stands for: exactly as the peer spells it, else in any case
    (``helo_reject`` is still policyd-spf's ``HELO_reject``); None for any other name."""
    return _BY_NAME.get(name) or _BY_FOLDED.get(name.lower())


def hint(name: str) -> str | None:
    """The sentence --check-config adds to an unknown key that is another program's, or None."""
    key = lookup(name)
    if key is None:
        return None
    return f"{key.name} is a {key.program} key; {key.advice()} (or: spfmilter migrate-config FILE)"
