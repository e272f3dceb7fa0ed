"""``spfmilter migrate-config``: a policyd-spf, pyspf-milter or PostSRSd configuration as spfmilter.conf.

:func:`migrate` reads the text of one peer's file and returns a :class:`Migration`: the spfmilter
settings, each with comments naming the peer keys (and defaults) it came from, and warnings for
every peer key spfmilter cannot honour, with the reason.  Every key read from the file ends up in
one or the other (:attr:`Migration.accounted`), so nothing is dropped silently.

The peers' behaviour is taken from their documentation and code as Debian 12 ships them:

* policyd-spf (postfix-policyd-spf-python 3.0.4, policyd-spf.conf(5)) and pyspf-milter (same
  package family, same keys plus milter options).  Their reader strips everything after ``#``,
  needs exactly one ``=`` per line, and compares values case-sensitively (``PermError_reject``
  counts only as ``True``; ``HELO_reject = fail`` is no known policy).  Defaults apply to every
  key not in the file, and several differ from spfmilter's (TestOnly = 1 refuses mail, Header_Type
  = SPF, TempError_Defer = False): those are written out so that behaviour does not change silently.
* PostSRSd 1.x, /etc/default/postsrsd (``NAME=value`` shell assignments).

No I/O: :func:`render` makes the file text, the command line (cli.py) reads and prints.
"""
from __future__ import annotations

import ipaddress
import re
import textwrap
from dataclasses import dataclass

from . import foreignkeys
from .config import (DEFAULT_SOCKET, Network, is_hostname, parse_authserv_id, parse_domains, parse_networks,
                     parse_socket)
from .foreignkeys import POLICYD_SPF, POSTSRSD, POSTSRSD2, PYSPF_MILTER


@dataclass(frozen=True)
class Entry:
    """One ``name = value`` line of the peer's file."""

    name: str
    value: str
    line: int

    def __str__(self) -> str:
        return f"{self.name} = {self.value} (line {self.line})"


@dataclass(frozen=True)
class Setting:
    key: str
    value: str
    notes: tuple[str, ...]  # comment lines written above it
    commented_out: bool = False  # shown as "#key = value": a suggestion, not a setting


@dataclass(frozen=True)
class Caveat:
    line: int  # 0: not about one line of the file
    name: str
    text: str


@dataclass(frozen=True)
class Migration:
    program: str
    settings: tuple[Setting, ...]
    warnings: tuple[Caveat, ...]
    notes: tuple[str, ...]  # general comments (what else to change in the MTA)
    names: tuple[str, ...]  # every key name read from the file, in file order
    accounted: frozenset[str]  # the names that were mapped or warned about


class _Builder:
    """Collects one migration's settings and warnings (local to one call of :func:`migrate`)."""

    def __init__(self, entries: list[Entry]):
        self.last: dict[str, Entry] = {}
        for entry in entries:
            self.last[entry.name] = entry
        self.settings: dict[str, Setting] = {}
        self.warnings: list[Caveat] = []
        self.notes: list[str] = []
        self.accounted: set[str] = set()

    def get(self, name: str) -> Entry | None:
        return self.last.get(name)

    def set(self, key: str, value: str, *notes: str, commented_out: bool = False) -> None:
        old = self.settings.get(key)
        self.settings[key] = Setting(key, value, (old.notes if old else ()) + notes, commented_out)

    def note(self, key: str, *notes: str) -> None:
        """Comments about a key: added to its setting, or (none yet) above the key left at its default."""
        old = self.settings.get(key)
        self.set(key, old.value if old else "", *notes, commented_out=old.commented_out if old else True)

    def account(self, *names: str) -> None:
        self.accounted.update(name for name in names if name in self.last)

    def warn(self, name: str, text: str) -> None:
        entry = self.last.get(name)
        self.warnings.append(Caveat(entry.line if entry else 0, name, text))
        self.account(name)


# --------------------------------------------------------------------------- reading

def read_policyd_spf(text: str) -> tuple[list[Entry], list[Caveat]]:
    """``Name = value`` lines as policyd-spf reads them: ``#`` starts a comment anywhere, and a
    line with no ``=`` or more than one is skipped (policyd-spf logs and ignores it)."""
    entries, problems = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [part.strip() for part in line.split("=")]
        if len(parts) != 2 or not parts[0]:
            problems.append(Caveat(number, "", f"{line!r} is not 'Name = value' (exactly one '='); "
                                                "policyd-spf skips such a line, so it is not migrated"))
            continue
        entries.append(Entry(parts[0], parts[1], number))
    return entries, problems


def read_shell_assignments(text: str) -> tuple[list[Entry], list[Caveat]]:
    """``NAME=value`` lines of /etc/default/postsrsd (the value may be quoted)."""
    entries, problems = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, eq, value = line.partition("=")
        name = name.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
            problems.append(Caveat(number, "", f"{line!r} is not a NAME=value assignment; not migrated"))
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        entries.append(Entry(name, value, number))
    return entries, problems


def detect(text: str, path: str = "") -> str:
    """Which program's file ``text`` is: PostSRSd when it assigns SRS_* variables, pyspf-milter when
    it has a milter option (or the path says so), else policyd-spf."""
    names = {line.partition("=")[0].strip() for line in text.splitlines() if not line.lstrip().startswith("#")}
    if any(name.startswith("SRS_") for name in names) or {"RUN_AS", "CHROOT"} & names:
        return POSTSRSD
    if any((spec := foreignkeys.lookup(name)) and spec.program == POSTSRSD2 for name in names):
        return POSTSRSD2
    if _MILTER_KEYS & names or "pyspf-milter" in path:
        return PYSPF_MILTER
    return POLICYD_SPF


_MILTER_KEYS = {"Socket", "PidFile", "UserID", "UMask", "InternalHosts", "IntHosts", "MacroList", "MacroListVerify"}

# policyd-spf's defaults (policydspfsupp.defaultConfigData in spf-engine 3.0.4; policyd-spf.conf(5))
SPF_DEFAULTS = {
    "debugLevel": "1",
    "TestOnly": "1",
    "HELO_reject": "Fail",
    "Mail_From_reject": "Fail",
    "PermError_reject": "False",
    "TempError_Defer": "False",
    "skip_addresses": "127.0.0.0/8,::ffff:127.0.0.0/104,::1",
    "SPF_Enhanced_Status_Codes": "Yes",
    "Header_Type": "SPF",
    "Authserv_Id": "HOSTNAME",
    "Lookup_Time": "20",
    "Void_Limit": "2",
}
MILTER_DEFAULTS = {
    "Socket": "local:/run/pyspf-milter/pyspf-milter.sock",
    "InternalHosts": "127.0.0.1",
}

# HELO_reject / Mail_From_reject policies -> the results they refuse (policyd-spf.conf(5));
# "Null" refuses a HELO fail only for the null sender; "No_Check" does not check at all.
REJECT_POLICIES = {
    "Fail": ("fail",),
    "Softfail": ("fail", "softfail"),
    "SPF_Not_Pass": ("fail", "softfail", "neutral"),
    "Null": ("fail",),
    "False": (),
    "No_Check": (),
}


# --------------------------------------------------------------------------- policyd-spf / pyspf-milter

def _value(b: _Builder, name: str, defaults: dict[str, str]) -> str:
    entry = b.get(name)
    return entry.value if entry else defaults.get(name, "")


def _source(b: _Builder, name: str, program: str, defaults: dict[str, str]) -> str:
    entry = b.get(name)
    if entry:
        return str(entry)
    return f"{name} not set: {program}'s default is {name} = {defaults.get(name, '(none)')}"


def _map_mode(b: _Builder, program: str) -> None:
    name = "TestOnly" if b.get("TestOnly") or not b.get("defaultSeedOnly") else "defaultSeedOnly"
    value = _value(b, name, SPF_DEFAULTS | {"defaultSeedOnly": "1"})
    b.account("TestOnly", "defaultSeedOnly")
    if not re.fullmatch(r"-?\d+", value.strip()):
        b.warn(name, f"{name} = {value} is not a number ({program} fails to read it); mode left at "
                     "spfmilter's default, header-only")
        return
    enforce = int(value) != 0
    b.set("mode", "enforce" if enforce else "header-only",
          _source(b, name, program, SPF_DEFAULTS),
          f"{program} refuses mail unless TestOnly = 0; spfmilter's default is mode = header-only, "
          "so it is written out" if enforce else "TestOnly = 0: headers only, nothing refused")


def _reject_policy(b: _Builder, name: str, program: str, known: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """(policy, results it refuses) of HELO_reject / Mail_From_reject; a warning for a value
    the peer does not know (it then refuses nothing for that identity but errors)."""
    policy = _value(b, name, SPF_DEFAULTS)
    b.account(name)
    if policy not in known:
        b.warn(name, f"{name} = {policy} is none of {', '.join(known)} (values are case-sensitive): "
                     f"{program} refuses no {name.split('_')[0]} result for it but PermError/TempError, "
                     "and so does the migration")
        return "", ()
    return policy, REJECT_POLICIES[policy]


def _map_results(b: _Builder, program: str) -> None:
    permerror = _value(b, "PermError_reject", SPF_DEFAULTS)
    b.account("PermError_reject")
    if permerror not in ("True", "False"):
        b.warn("PermError_reject", f"PermError_reject = {permerror}: {program} counts only 'True' as true; "
                                   "migrated as False")
    helo, helo_results = _reject_policy(b, "HELO_reject", program, tuple(REJECT_POLICIES))
    mfrom, mfrom_results = _reject_policy(b, "Mail_From_reject", program,
                                          tuple(p for p in REJECT_POLICIES if p != "Null"))
    perm_note = _source(b, "PermError_reject", program, SPF_DEFAULTS)
    for key, name, policy, results in (("helo_reject_results", "HELO_reject", helo, helo_results),
                                       ("mailfrom_reject_results", "Mail_From_reject", mfrom, mfrom_results)):
        chosen = list(results)
        if permerror == "True" and policy not in ("False", "No_Check"):
            chosen.append("permerror")
        b.set(key, ", ".join(chosen), _source(b, name, program, SPF_DEFAULTS), perm_note)
    if helo == "Null":
        b.set("helo_reject_scope", "null-sender", "HELO_reject = Null: a HELO fail is refused only for the "
                                                  "null sender (MAIL FROM:<>)")
    identities = [name for name, policy in (("helo", helo), ("mailfrom", mfrom)) if policy != "No_Check"]
    if len(identities) < 2:
        b.set("check_identities", ", ".join(identities), "No_Check: that identity is not checked at all")
    _map_temperror(b, program, helo, mfrom)


def _map_temperror(b: _Builder, program: str, helo: str, mfrom: str) -> None:
    value = _value(b, "TempError_Defer", SPF_DEFAULTS)
    b.account("TempError_Defer")
    defer = value == "True" and mfrom not in ("False", "No_Check")
    if value not in ("True", "False"):
        b.warn("TempError_Defer", f"TempError_Defer = {value}: {program} counts only 'True' as true; "
                                  "migrated as False")
    notes = [_source(b, "TempError_Defer", program, SPF_DEFAULTS)]
    if value == "True" and not defer:
        notes.append(f"Mail_From_reject = {mfrom}: {program} never defers a MAIL FROM temperror then")
    if not defer:
        notes.append(f"{program} accepts on a temperror; spfmilter's default is defer, so it is written out")
    b.set("temperror_action", "defer" if defer else "accept", *notes)
    if value == "True" and helo not in ("False", "No_Check"):
        b.warn("TempError_Defer", f"TempError_Defer = True: {program} also defers a HELO temperror; spfmilter "
                                  "defers only for a MAIL FROM temperror (a HELO temperror alone never defers)")


def _list(value: str) -> list[str]:
    """A policyd-spf list: comma-separated (spaces tolerated); a ``csl:`` prefix is dataset syntax."""
    return [item.strip() for item in value.removeprefix("csl:").split(",") if item.strip()]


def _networks(b: _Builder, name: str, items: list[str]) -> list[Network]:
    found: list[Network] = []
    for item in items:
        try:
            found += parse_networks(item.strip("[]"))
        except ValueError as exc:
            b.warn(name, f"{name}: {item!r} is left out: {exc}")
    return found


def _format_networks(networks: list[Network]) -> str:
    v4 = list(ipaddress.collapse_addresses(n for n in networks if n.version == 4))
    v6 = list(ipaddress.collapse_addresses(n for n in networks if n.version == 6))
    loopback = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    items = [str(n) for n in v4 + v6 if n not in loopback]
    if all(n in v4 + v6 for n in loopback):
        items.insert(0, "loopback")
    else:
        items += [str(n) for n in loopback if n in v4 + v6]
    return ", ".join(items)


def _map_trust(b: _Builder, program: str) -> None:
    networks, sources, ptr_names, ptr_notes = [], [], [], []
    for name in ("skip_addresses", "Whitelist"):
        b.account(name)
        value = _value(b, name, SPF_DEFAULTS)
        networks += _networks(b, name, _list(value))
        if value:
            sources.append(_source(b, name, program, SPF_DEFAULTS))
    if b.get("IntHosts"):
        b.account("IntHosts")
        b.notes.append(f"{b.get('IntHosts')}: pyspf-milter makes this from InternalHosts; nothing to migrate")
    if program == PYSPF_MILTER:
        b.account("InternalHosts")
        value = _value(b, "InternalHosts", MILTER_DEFAULTS)
        sources.append(_source(b, "InternalHosts", program, MILTER_DEFAULTS) + ": pyspf-milter does not check them")
        addresses, names = _split_hosts(b, value)
        networks += _networks(b, "InternalHosts", addresses)
        ptr_names += names
        if names:
            ptr_notes.append(f"InternalHosts host names (validated PTR name): {', '.join(names)}; a name listed "
                             "here also covers its subdomains, '.example.com' also example.com itself")
    b.set("trusted_networks", _format_networks(networks), *sources,
          "an empty value trusts no network" if not networks else "")
    ptr = b.get("Domain_Whitelist_PTR")
    b.account("Domain_Whitelist_PTR")
    if ptr and _list(ptr.value):
        ptr_names += _list(ptr.value)
        ptr_notes.append(f"{ptr}: clients whose validated PTR name is in these domains are not checked")
    if ptr_names:
        b.set("trusted_ptr_domains", ", ".join(_domains(b, "Domain_Whitelist_PTR", ptr_names)), *ptr_notes)
    for name, key, note in (
            ("HELO_Whitelist", "trusted_helo_names",
             "policyd-spf skips a client when its address is in the listed HELO name's A/AAAA records; "
             "spfmilter when the HELO name passes SPF"),
            ("Domain_Whitelist", "trusted_spf_domains",
             "clients that these domains' SPF records authorize are not checked")):
        entry = b.get(name)
        b.account(name)
        if entry and _list(entry.value):
            b.set(key, ", ".join(_domains(b, name, _list(entry.value))), str(entry), note)


def _split_hosts(b: _Builder, value: str) -> tuple[list[str], list[str]]:
    """pyspf-milter's InternalHosts dataset: (addresses and networks, host and domain names)."""
    if value.startswith(("/", "./", "../", "file:", "refile:")):
        b.warn("InternalHosts", f"InternalHosts = {value} is a file: list its addresses in trusted_networks "
                                "and its host names in trusted_ptr_domains yourself")
        return [], []
    addresses, names = [], []
    for item in _list(value):
        if item.startswith("!"):
            b.warn("InternalHosts", f"InternalHosts: the exception {item!r} is left out: spfmilter has no "
                                    "negative entries; narrow trusted_networks instead")
            continue
        bare = item.strip("[]")
        try:
            ipaddress.ip_network(bare, strict=False)
            addresses.append(bare)
        except ValueError:
            names.append(item.lstrip("."))
    return addresses, names


def _domains(b: _Builder, name: str, items: list[str]) -> list[str]:
    good = []
    for item in items:
        item = item.lower().rstrip(".")
        if is_hostname(item):
            good.append(item)
        else:
            b.warn(name, f"{name}: {item!r} is not a domain name; left out")
    return good


def _map_require_pass(b: _Builder, program: str) -> None:
    entry = b.get("Reject_Not_Pass_Domains")
    b.account("Reject_Not_Pass_Domains")
    if entry and _list(entry.value):
        b.set("require_pass_domains", ", ".join(_domains(b, entry.name, _list(entry.value))), str(entry),
              f"{program} refused fail, softfail and neutral for these (and for HELO names in the list); "
              "spfmilter refuses anything but pass for these sender domains")


def _map_headers(b: _Builder, program: str) -> None:
    value = _value(b, "Header_Type", SPF_DEFAULTS)
    b.account("Header_Type")
    words = {word.upper() for word in re.split(r"[\s,]+", value) if word}
    choice = {frozenset({"SPF"}): "received-spf", frozenset({"AR"}): "authentication-results",
              frozenset({"SPF", "AR"}): "both", frozenset({"NONE"}): "none"}.get(frozenset(words))
    if choice is None:
        b.warn("Header_Type", f"Header_Type = {value} is none of SPF, AR, None; header_type left at "
                              "spfmilter's default, authentication-results")
        return
    b.set("header_type", choice, _source(b, "Header_Type", program, SPF_DEFAULTS),
          "spfmilter's default is authentication-results, so it is written out" if choice != "authentication-results"
          else "")
    authserv = _value(b, "Authserv_Id", SPF_DEFAULTS)
    b.account("Authserv_Id")
    if authserv == "HOSTNAME":
        b.note("authserv_id", _source(b, "Authserv_Id", program, SPF_DEFAULTS) + ": spfmilter's default, "
               "the host name, is the same")
        return
    try:
        b.set("authserv_id", parse_authserv_id(authserv), _source(b, "Authserv_Id", program, SPF_DEFAULTS))
    except ValueError as exc:
        b.warn("Authserv_Id", f"Authserv_Id = {authserv}: {exc}; authserv_id left at the host name")


def _map_replies(b: _Builder, program: str) -> None:
    codes = b.get("SPF_Enhanced_Status_Codes")
    b.account("SPF_Enhanced_Status_Codes")
    if codes:
        b.set("enhanced_status_codes", "no" if codes.value == "No" else "yes", str(codes),
              f"{program} leaves the codes out only for the value 'No'")
    message = b.get("Reason_Message")
    b.account("Reason_Message")
    if message is None:
        return
    text = message.value.replace("{rejectdefer}", "rejected").replace("{spf}", "{result}")
    if "{url}" in text:
        text = re.sub(r"\s*(?:[Pp]lease see|[Ss]ee)?\s*\S*\{url\}\S*", "", text)
        b.warn("Reason_Message", "Reason_Message: {url} (a link to openspf.net, which is gone) is left out; "
                                 "write your own URL into reject_text")
    unknown = sorted(set(re.findall(r"\{(\w*)\}", text)) - {"result", "domain", "ip", "identity", "sender"})
    if unknown:
        b.warn("Reason_Message", f"Reason_Message: placeholders {', '.join(unknown)} are not {program}'s; "
                                 "reject_text left at its default")
        return
    b.set("reject_text", text, str(message), "{rejectdefer} became 'rejected', {spf} (the SPF result "
          "explanation) became {result}")


def _map_logging(b: _Builder, program: str) -> None:
    value = _value(b, "debugLevel", SPF_DEFAULTS)
    b.account("debugLevel")
    if not re.fullmatch(r"-?\d+", value):
        b.warn("debugLevel", f"debugLevel = {value} is not a number; log_level left at info")
        return
    level = int(value)
    b.set("log_level", "error" if level <= 0 else "info" if level == 1 else "debug",
          _source(b, "debugLevel", program, SPF_DEFAULTS),
          "spfmilter logs errors even at debugLevel = -1's 'nothing'" if level < 0 else "")
    b.notes.append(f"{program} logged through syslog (facility mail); spfmilter logs to stderr, which its "
                   "systemd unit passes to the journal with facility mail (log_destination = syslog writes to "
                   "/dev/log instead)")


def _map_dns(b: _Builder, program: str) -> None:
    entry = b.get("Lookup_Time")
    b.account("Lookup_Time")
    if entry:
        if re.fullmatch(r"\d+", entry.value) and 1 <= int(entry.value) <= 120:
            b.set("dns_timeout", entry.value, str(entry), f"{program} allowed this per identity, spfmilter for "
                  "HELO and MAIL FROM together; keep it below Postfix's milter_command_timeout")
        else:
            b.warn("Lookup_Time", f"Lookup_Time = {entry.value} is not 1 to 120 seconds; dns_timeout left at 20")
    entry = b.get("Whitelist_Lookup_Time")
    if entry:
        b.account("Whitelist_Lookup_Time")
        b.note("dns_timeout", f"{entry}: no separate budget; dns_timeout covers the allow-list lookups too")
    entry = b.get("Void_Limit")
    if entry and entry.value.strip() == "2":
        b.account("Void_Limit")
        b.note("dns_timeout", f"{entry}: RFC 7208's limit, which spfmilter applies")
    elif entry:
        b.warn("Void_Limit", f"Void_Limit = {entry.value}: spfmilter always applies RFC 7208 section 4.6.4's limit of 2")


def _map_exemptions(b: _Builder, program: str) -> None:
    """Behaviours with no key at the peer whose spfmilter defaults differ: written out and explained."""
    if program == PYSPF_MILTER:
        b.set("trust_authenticated", "no", "pyspf-milter checks SASL-authenticated clients too (unless a "
              "MacroList says otherwise); spfmilter's default is yes, which suits submission")
    else:
        b.set("trust_authenticated", "yes", "policyd-spf left this to the order of smtpd_recipient_restrictions: "
              "with permit_sasl_authenticated before check_policy_service (the usual order), logged-in clients "
              "were not checked; otherwise set no")
    b.set("exempt_recipients", "postmaster, abuse", f"{program} refused mail to these too; spfmilter accepts it "
          "(RFC 5321 section 4.5.1); set an empty value to refuse it as before")


def _map_milter(b: _Builder, program: str) -> None:
    if program != PYSPF_MILTER:
        b.set("socket", DEFAULT_SOCKET, "policyd-spf was a policy service: in Postfix's main.cf, remove "
              "check_policy_service ... policyd-spf from smtpd_recipient_restrictions (and its master.cf "
              "entry) and add smtpd_milters = inet:127.0.0.1:8890")
        return
    entry = b.get("Socket")
    b.account("Socket")
    value = entry.value if entry else MILTER_DEFAULTS["Socket"]
    source = _source(b, "Socket", program, MILTER_DEFAULTS)
    socket, problem = _socket(value)
    if problem:
        b.warn("Socket", f"Socket = {value}: {problem}; socket left at {DEFAULT_SOCKET}")
        return
    b.set("socket", socket, source, "the MTA's milter address stays the same" if socket == value.replace(
        "local:", "unix:") else f"the MTA's milter address changes: point it at {socket}")
    for name, key in (("PidFile", "pid_file"), ("UserID", "user")):
        entry = b.get(name)
        b.account(name)
        if entry:
            user, _, group = entry.value.partition(":")
            b.set(key, user if name == "UserID" else entry.value, str(entry),
                  "the spfmilter systemd unit starts it as user spfmilter and needs neither; uncomment for "
                  "another start-up", commented_out=True)
            if name == "UserID" and group:
                b.set("group", group, str(entry), commented_out=True)
    entry = b.get("UMask")
    b.account("UMask")
    if entry:
        if re.fullmatch(r"\d+", entry.value) and int(entry.value) <= 0o777:  # Python int(): decimal
            b.set("socket_mode", f"{0o777 & ~int(entry.value):04o}", str(entry),
                  "pyspf-milter read UMask as a decimal number; a unix socket gets 0777 without it")
        else:
            b.warn("UMask", f"UMask = {entry.value} is not a umask; socket_mode left at 0660")
    for name in ("MacroList", "MacroListVerify"):
        entry, spec = b.get(name), foreignkeys.lookup(name)
        if entry and entry.value and spec:
            b.warn(name, f"{entry.name} = {entry.value}: {spec.why}; write skip_macros for the transactions to "
                         "leave unchecked, e.g. {daemon_name}=submission")
        elif entry:
            b.account(name)


def _socket(value: str) -> tuple[str, str]:
    """pyspf-milter's socket spec as spfmilter's: (spec, "") or ("", problem)."""
    kind, _, rest = value.partition(":")
    if kind in ("local", "unix"):
        if rest == "/run/pyspf-milter/pyspf-milter.sock":  # the old package's directory goes with it
            rest = "/run/spfmilter/spfmilter.sock"
        return f"unix:{rest}", ""
    port, at, host = rest.partition("@")
    if kind in ("inet", "inet6") and not at:
        host = "0.0.0.0" if kind == "inet" else "::"  # pyspf-milter: no host is every interface
    spec = f"{kind}:{port}@{host.strip('[]')}"
    try:
        return str(parse_socket(spec)), ""
    except ValueError as exc:
        return "", str(exc)


def _map_lost(b: _Builder) -> None:
    """Keys with no equivalent: a warning when set to something that matters, else a note."""
    for name in ("HELO_pass_restriction", "Mail_From_pass_restriction", "Prospective", "Per_User",
                 "No_Mail", "Mock"):
        entry = b.get(name)
        if entry is None:
            continue
        if entry.value in ("", "False", "None") or (name == "No_Mail" and entry.value != "True"):
            b.account(name)
            b.notes.append(f"{entry}: off, nothing to migrate")
            continue
        spec = foreignkeys.lookup(name)
        b.warn(name, f"{entry.name} = {entry.value}: spfmilter has no equivalent: {spec.why if spec else ''}")
    for name in ("Hide_Receiver", "QueueID"):
        entry = b.get(name)
        spec = foreignkeys.lookup(name)
        if entry and spec:
            b.account(name)
            b.notes.append(f"{entry}: {spec.why}")


def _migrate_spf(b: _Builder, program: str) -> None:
    _map_mode(b, program)
    _map_milter(b, program)
    _map_headers(b, program)
    _map_trust(b, program)
    _map_exemptions(b, program)
    _map_results(b, program)
    _map_require_pass(b, program)
    _map_replies(b, program)
    _map_dns(b, program)
    _map_logging(b, program)
    _map_lost(b)


# --------------------------------------------------------------------------- PostSRSd 1.x

def _migrate_postsrsd(b: _Builder) -> None:
    domain = b.get("SRS_DOMAIN")
    b.account("SRS_DOMAIN")
    if domain and is_hostname(domain.value.lower().rstrip(".")):
        b.set("srs_domain", domain.value.lower().rstrip("."), str(domain))
    else:
        b.warn("SRS_DOMAIN", f"SRS_DOMAIN = {domain.value if domain else '(not set)'}: PostSRSd falls back to "
                             "Postfix's mydomain; write srs_domain = that domain (`postconf -h mydomain`)")
    for name, key in (("SRS_SEPARATOR", "srs_separator"), ("SRS_HASHLENGTH", "srs_hash_length"),
                      ("SRS_HASHMIN", "srs_hash_min_length"), ("SRS_SECRET", "srs_secrets_file")):
        entry = b.get(name)
        b.account(name)
        if entry:
            b.set(key, entry.value, str(entry))
    if b.get("SRS_SECRET"):
        b.set("srs_secrets_file", b.settings["srs_secrets_file"].value,
              "PostSRSd's secret file signs the same addresses; the daemon's user must be able to read it and "
              "others must not (spfmilter --check-config checks both)")
    entry = b.get("SRS_EXCLUDE_DOMAINS")
    b.account("SRS_EXCLUDE_DOMAINS")
    if entry and entry.value:
        items = [item.lower() for item in re.split(r"[\s,]+", entry.value) if item]
        b.set("srs_exclude_domains", ", ".join(items), str(entry),
              "'.example.com' (PostSRSd: subdomains only) needs a spfmilter that reads that form")
        try:
            parse_domains(", ".join(item for item in items if not item.startswith(".")))
        except ValueError as exc:
            b.warn("SRS_EXCLUDE_DOMAINS", f"SRS_EXCLUDE_DOMAINS: {exc}")
    b.set("local_domains", "", "PostSRSd rewrote every sender outside SRS_DOMAIN; spfmilter rewrites for "
          "recipients that leave the host: list the domains delivered here (and set srs_forward_table)",
          commented_out=True)
    b.notes.append("in Postfix's main.cf, remove sender_canonical_maps and recipient_canonical_maps that point "
                   "at PostSRSd's tcp: tables")
    for name in ("SRS_FORWARD_PORT", "SRS_REVERSE_PORT", "SRS_LISTEN_ADDR", "CHROOT", "SRS_EXTRA_OPTIONS"):
        entry = b.get(name)
        spec = foreignkeys.lookup(name)
        if entry and entry.value and spec:
            b.warn(name, f"{entry.name} = {entry.value}: {spec.advice()}")
        elif entry:
            b.account(name)
    entry = b.get("RUN_AS")
    b.account("RUN_AS")
    if entry:
        b.notes.append(f"{entry}: PostSRSd's account; spfmilter runs as its own (systemd unit: spfmilter)")


# --------------------------------------------------------------------------- entry point

def migrate(text: str, path: str = "", program: str = "") -> Migration:
    """The spfmilter settings for the peer configuration ``text`` (``program`` as :func:`detect` names it)."""
    program = program or detect(text, path)
    reader = read_policyd_spf if program in (POLICYD_SPF, PYSPF_MILTER) else read_shell_assignments
    entries, problems = reader(text)
    b = _Builder(entries)
    b.warnings += problems
    seen: dict[str, Entry] = {}
    for entry in entries:
        if entry.name in seen:
            b.notes.append(f"{entry.name} is set on line {seen[entry.name].line} and again on line {entry.line}: "
                           f"the last one counts, as in {program}")
        seen[entry.name] = entry
    if program == POSTSRSD:
        _migrate_postsrsd(b)
    elif program != POSTSRSD2:  # PostSRSd 2's file gets a pointer per key (below), no mapping
        _migrate_spf(b, program)
    for entry in seen.values():  # whatever no mapping took up: say so, never drop it
        if entry.name not in b.accounted:
            spec = foreignkeys.lookup(entry.name)
            if spec is None:
                b.warn(entry.name, f"{entry.name} is not a {program} key; not migrated")
            elif spec.program not in (program, foreignkeys.SPF_PEERS):
                b.warn(entry.name, f"{entry.name} is a {spec.program} key, not {program}'s; not migrated: "
                                   f"{spec.advice()}")
            else:
                b.warn(entry.name, f"{entry} is not migrated: {spec.advice()}")
    return Migration(program, tuple(s for s in b.settings.values()), tuple(b.warnings), tuple(b.notes),
                     tuple(entry.name for entry in entries), frozenset(b.accounted))


def render(migration: Migration, source: str) -> str:
    """The migrated configuration as spfmilter.conf text."""
    out = [f"# spfmilter.conf made by `spfmilter migrate-config` from {source} ({migration.program}).",
           "# Check it with: spfmilter --check-config -c FILE. Keys not shown keep spfmilter's defaults",
           "# (contrib/spfmilter.conf and spfmilter.conf(5) list them all).", ""]
    for note in migration.notes:
        out += _comment(f"Note: {note}")
    if migration.notes:
        out.append("")
    for setting in migration.settings:
        for line in setting.notes:
            out += _comment(line)
        if setting.commented_out:
            if setting.value:
                out.append(f"#{setting.key} = {setting.value}")
        else:
            out.append(f"{setting.key} = {setting.value}".rstrip())
        out.append("")
    if migration.warnings:
        out.append("# WARNINGS: what this configuration does not carry over")
        for warning in sorted(migration.warnings, key=lambda warning: warning.line):
            out += _comment(f"WARNING: {describe_warning(warning)}")
    return "\n".join(out).rstrip("\n") + "\n"


def _comment(text: str, width: int = 100) -> list[str]:
    """``text`` as comment lines of at most ``width`` characters (no line for an empty text)."""
    return ["# " + line for line in textwrap.wrap(text, width - 2, break_long_words=False, break_on_hyphens=False)]


def describe_warning(warning: Caveat) -> str:
    return f"line {warning.line}: {warning.text}" if warning.line else warning.text
