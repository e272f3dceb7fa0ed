"""`spfmilter migrate-config` and the hints --check-config gives for other programs' keys.

Tables over spfmilter.migrate (one peer setting in, the spfmilter settings and warnings out),
Debian's own shipped sample configurations (tests/data/migrate) through the command, and the
README table of old keys checked against spfmilter.foreignkeys.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from spfmilter import foreignkeys
from spfmilter.cli import main
from spfmilter.config import KEYS_BY_NAME, ConfigError, parse_text
from spfmilter.foreignkeys import FOREIGN_KEYS, POSTSRSD, POSTSRSD2, PYSPF_MILTER
from spfmilter.migrate import migrate, render

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "migrate"
DEBIAN_FILES = ("policyd-spf.conf", "policyd-spf.conf.commented", "pyspf-milter.conf", "postsrsd")

# Keys issue 14 adds in parallel (item 1); migrate-config may write them before this branch knows them.
def settings(text: str, program: str = "") -> dict[str, str]:
    """The active (not commented-out) settings migrate() makes of ``text``."""
    return {s.key: s.value for s in migrate(text, program=program).settings if not s.commented_out}


def warnings(text: str, program: str = "") -> list[str]:
    return [w.text for w in migrate(text, program=program).warnings]


def check_output(text: str) -> None:
    """The migrated file names only spfmilter keys and parses as a whole."""
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.partition("=")[0].strip() in KEYS_BY_NAME, line
    parse_text(text, "migrated.conf", authserv_id_default="mx.test")


# --------------------------------------------------------------------------- --check-config hints

@pytest.mark.parametrize("line, program, advice", [
    ("PermError_reject = False", "policyd-spf and pyspf-milter", "permerror in helo_reject_results"),
    ("TempError_Defer = False", "policyd-spf and pyspf-milter", "use temperror_action"),
    ("HELO_reject = Fail", "policyd-spf and pyspf-milter", "use helo_reject_results"),
    ("skip_addresses = 127.0.0.0/8", "policyd-spf and pyspf-milter", "use trusted_networks"),
    ("Socket = inet:8893@localhost", "pyspf-milter", "use socket"),
    ("InternalHosts = 127.0.0.1", "pyspf-milter", "use trusted_networks"),
    ("SRS_DOMAIN=example.org", "PostSRSd", "use srs_domain"),
    ("SRS_SECRET=/etc/postsrsd.secret", "PostSRSd", "use srs_secrets_file"),
    ("SRS_EXCLUDE_DOMAINS=.example.org", "PostSRSd", "use srs_exclude_domains"),
    ("hash-minimum = 4", "PostSRSd 2", "use srs_hash_min_length"),
    ("Mock = False", "policyd-spf and pyspf-milter", "has no equivalent"),
])
def test_check_config_points_foreign_keys_at_the_spfmilter_key(line, program, advice):
    with pytest.raises(ConfigError) as info:
        parse_text(f"mode = enforce\n{line}\n", "test.conf")
    [problem] = info.value.problems
    name = line.split("=")[0].strip()
    assert problem.startswith(f"test.conf:2: unknown key '{name}': {name} is a {program} key; ")
    assert advice in problem
    assert problem.endswith("(or: spfmilter migrate-config FILE)")
    assert "did you mean" not in problem


def test_foreign_key_in_another_case_is_still_recognised():
    with pytest.raises(ConfigError) as info:
        parse_text("permerror_reject = True\n", "test.conf")
    assert "PermError_reject is a policyd-spf and pyspf-milter key" in info.value.problems[0]


def test_debian_pyspf_milter_conf_gets_a_pointer_for_every_key(capsys):
    """The issue's case: Debian's file through --check-config, 11 unknown keys, each pointed at
    spfmilter's key instead of a near miss (PermError_reject got "did you mean 'temperror_action'?")."""
    assert main(["--check-config", "-c", str(DATA / "pyspf-milter.conf")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 11
    for error in errors:
        assert re.search(r"unknown key '(\w+)': \1 is a (policyd-spf and pyspf-milter|pyspf-milter) key; ", error)
        assert "did you mean" not in error


def test_foreign_table_names_only_spfmilter_keys():
    """Every `use` of the hint table is a key of spfmilter (or of the keys issue 14 adds)."""
    for spec in FOREIGN_KEYS:
        named = set(re.findall(r"\b[a-z]+(?:_[a-z]+)+\b", spec.use))
        assert named <= set(KEYS_BY_NAME), spec.name
        assert spec.use or spec.why, spec.name
        assert spec.name not in KEYS_BY_NAME, spec.name  # never shadows one of ours


# --------------------------------------------------------------------------- mapping tables

@pytest.mark.parametrize("text, mode", [
    ("", "enforce"),  # policyd-spf's default TestOnly = 1 refuses; spfmilter's default would not
    ("TestOnly = 1", "enforce"),
    ("TestOnly = 0", "header-only"),
    ("defaultSeedOnly = 0", "header-only"),
])
def test_mode(text, mode):
    assert settings(text)["mode"] == mode


@pytest.mark.parametrize("helo, permerror, results", [
    ("Fail", "False", "fail"),
    ("Softfail", "False", "fail, softfail"),
    ("SPF_Not_Pass", "False", "fail, softfail, neutral"),
    ("SPF_Not_Pass", "True", "fail, softfail, neutral, permerror"),
    ("Null", "True", "fail, permerror"),
    ("False", "True", ""),  # "never reject on HELO": PermError_reject does not apply either
])
def test_helo_reject(helo, permerror, results):
    found = settings(f"HELO_reject = {helo}\nPermError_reject = {permerror}\n")
    assert found["helo_reject_results"] == results
    assert ("helo_reject_scope" in found) == (helo == "Null")
    assert "check_identities" not in found


@pytest.mark.parametrize("mfrom, permerror, results", [
    ("Fail", "True", "fail, permerror"),
    ("Softfail", "False", "fail, softfail"),
    ("SPF_Not_Pass", "False", "fail, softfail, neutral"),
    ("False", "True", ""),
])
def test_mail_from_reject(mfrom, permerror, results):
    assert settings(f"Mail_From_reject = {mfrom}\nPermError_reject = {permerror}\n")[
        "mailfrom_reject_results"] == results


@pytest.mark.parametrize("text, identities", [
    ("HELO_reject = No_Check", "mailfrom"),
    ("Mail_From_reject = No_Check", "helo"),
])
def test_no_check_turns_an_identity_off(text, identities):
    assert settings(text)["check_identities"] == identities


@pytest.mark.parametrize("text", ["HELO_reject = fail", "Mail_From_reject = Null", "HELO_reject = yes"])
def test_unknown_policy_values_are_warned_not_guessed(text):
    """policyd-spf compares case-sensitively: 'fail' is no policy, it refuses nothing for it."""
    found = warnings(text + "\nPermError_reject = True")
    assert any("values are case-sensitive" in warning for warning in found)
    key = "helo_reject_results" if text.startswith("HELO") else "mailfrom_reject_results"
    assert settings(text + "\nPermError_reject = True")[key] == "permerror"


@pytest.mark.parametrize("text, action", [
    ("", "accept"),  # policyd-spf's default TempError_Defer = False; spfmilter's default is defer
    ("TempError_Defer = False", "accept"),
    ("TempError_Defer = True", "defer"),
    ("TempError_Defer = True\nMail_From_reject = False", "accept"),  # False: no MAIL FROM action at all
    ("TempError_Defer = true", "accept"),  # only 'True' counts
])
def test_temperror(text, action):
    assert settings(text)["temperror_action"] == action


def test_temperror_defer_warns_that_helo_temperror_no_longer_defers():
    assert any("also defers a HELO temperror" in w for w in warnings("TempError_Defer = True"))
    assert not any("HELO temperror" in w for w in warnings("TempError_Defer = True\nHELO_reject = False"))


@pytest.mark.parametrize("value, header_type", [
    (None, "received-spf"), ("SPF", "received-spf"), ("AR", "authentication-results"),
    ("SPF,AR", "both"), ("None", "none"),
])
def test_header_type(value, header_type):
    assert settings("" if value is None else f"Header_Type = {value}")["header_type"] == header_type


@pytest.mark.parametrize("text, networks", [
    ("", "loopback"),  # the default skip_addresses
    ("skip_addresses = 127.0.0.0/8,::ffff:127.0.0.0/104,::1", "loopback"),
    ("skip_addresses =", ""),
    ("skip_addresses = 127.0.0.0/8\nWhitelist = 192.0.2.0/24,198.51.100.7", "192.0.2.0/24, 198.51.100.7/32, 127.0.0.0/8"),
])
def test_trusted_networks_policyd_spf(text, networks):
    assert settings(text, "policyd-spf")["trusted_networks"] == networks


def test_internal_hosts_of_pyspf_milter():
    text = "Socket = inet:1@localhost\nInternalHosts = 127.0.0.1,[192.0.2.0/24],.example.net,mx.example.org,!192.0.2.5"
    found = settings(text)
    assert found["trusted_networks"] == "loopback, 192.0.2.0/24"
    assert found["trusted_ptr_domains"] == "example.net, mx.example.org"
    assert any("'!192.0.2.5' is left out" in w for w in warnings(text))
    # not set: pyspf-milter's default InternalHosts = 127.0.0.1 joins the default skip_addresses
    assert settings("Socket = inet:1@localhost\nskip_addresses =")["trusted_networks"] == "127.0.0.1/32"


def test_allow_lists():
    found = settings("HELO_Whitelist = relay.example.com,Sender.Example.org\nDomain_Whitelist = pobox.com\n"
                     "Domain_Whitelist_PTR = yahoo.com\nReject_Not_Pass_Domains = aol.com,hotmail.com")
    assert found["trusted_helo_names"] == "relay.example.com, sender.example.org"
    assert found["trusted_spf_domains"] == "pobox.com"
    assert found["trusted_ptr_domains"] == "yahoo.com"
    assert found["require_pass_domains"] == "aol.com, hotmail.com"


@pytest.mark.parametrize("socket, expected", [
    ("inet:8893@localhost", "inet:8893@localhost"),
    ("inet:8893@[127.0.0.1]", "inet:8893@127.0.0.1"),
    ("inet:8893", "inet:8893@0.0.0.0"),  # no host: every interface, as pyspf-milter listens
    ("inet6:8893@[::1]", "inet6:8893@::1"),
    ("local:/run/pyspf-milter/pyspf-milter.sock", "unix:/run/spfmilter/spfmilter.sock"),
    ("local:/var/spool/postfix/pyspf/sock", "unix:/var/spool/postfix/pyspf/sock"),
    (None, "unix:/run/spfmilter/spfmilter.sock"),  # pyspf-milter's default socket
])
def test_socket(socket, expected):
    text = "PidFile = /run/x.pid" if socket is None else f"Socket = {socket}"
    assert settings(text)["socket"] == expected


def test_bad_socket_is_warned():
    assert any("Socket = inet:port@host" in w for w in warnings("Socket = inet:port@host"))


@pytest.mark.parametrize("umask, mode", [("7", "0770"), ("2", "0775"), ("0", "0777")])
def test_umask(umask, mode):
    assert settings(f"Socket = inet:1@localhost\nUMask = {umask}")["socket_mode"] == mode


def test_user_and_pid_file_are_suggestions_only():
    migration = migrate("Socket = inet:1@localhost\nUserID = pyspf-milter:mail\nPidFile = /run/p.pid")
    commented = {s.key: s.value for s in migration.settings if s.commented_out and s.value}
    assert commented == {"user": "pyspf-milter", "group": "mail", "pid_file": "/run/p.pid"}
    assert not migration.warnings


@pytest.mark.parametrize("level, log_level", [("-1", "error"), ("0", "error"), ("1", "info"), ("4", "debug")])
def test_debug_level(level, log_level):
    assert settings(f"debugLevel = {level}")["log_level"] == log_level


def test_reason_message():
    text = "Reason_Message = Message {rejectdefer} due to: {spf}. Please see {url}"
    assert settings(text)["reject_text"] == "Message rejected due to: {result}."
    assert any("{url}" in w for w in warnings(text))
    assert settings("Reason_Message = SPF {spf} for {rejectdefer} mail")["reject_text"] == "SPF {result} for rejected mail"


def test_enhanced_status_codes_and_lookup_time():
    found = settings("SPF_Enhanced_Status_Codes = No\nLookup_Time = 25\nWhitelist_Lookup_Time = 5")
    assert found["enhanced_status_codes"] == "no"
    assert found["dns_timeout"] == "25"


def test_defaults_that_differ_are_written_out():
    found = settings("")  # an empty policyd-spf.conf: policyd-spf's defaults throughout
    assert found["mode"] == "enforce"
    assert found["header_type"] == "received-spf"
    assert found["temperror_action"] == "accept"
    assert found["exempt_recipients"] == "postmaster, abuse"
    assert settings("Socket = inet:1@localhost")["trust_authenticated"] == "no"  # pyspf-milter checked them


@pytest.mark.parametrize("text, warned", [
    ("HELO_pass_restriction = helo_passed_spf", "HELO_pass_restriction"),
    ("Mail_From_pass_restriction = x", "Mail_From_pass_restriction"),
    ("No_Mail = True", "No_Mail"),
    ("Prospective = 192.0.2.4", "Prospective"),
    ("Per_User = x", "Per_User"),
    ("Mock = True", "Mock"),
    ("Void_Limit = 3", "Void_Limit"),
    ("MacroList = daemon_name|ORIGINATING", "MacroList"),
    ("Bogus = 1", "Bogus"),
    ("a = b = c", "'a = b = c'"),
])
def test_what_cannot_be_carried_over_is_warned(text, warned):
    [warning] = warnings(text)
    assert warned in warning


@pytest.mark.parametrize("text", ["No_Mail = False", "Mock = False", "Void_Limit = 2", "Hide_Receiver = Yes",
                                  "QueueID = True"])
def test_settings_that_change_nothing_are_not_warned(text):
    migration = migrate(text)
    assert not migration.warnings
    assert migration.accounted == {text.split(" ")[0]}
    assert text.split(" ")[0] in render(migration, "x.conf")


def test_duplicate_key_last_one_counts():
    migration = migrate("TestOnly = 0\nTestOnly = 1\n")
    assert {s.key: s.value for s in migration.settings}["mode"] == "enforce"
    assert any("the last one counts" in note for note in migration.notes)


def test_postsrsd():
    found = settings("SRS_DOMAIN=srs.example.org\nSRS_SEPARATOR=+\nSRS_SECRET=\"/etc/postsrsd.secret\"\n"
                     "SRS_HASHLENGTH=5\nSRS_HASHMIN=4\nSRS_EXCLUDE_DOMAINS=example.com,.example.net\n")
    assert found == {"srs_domain": "srs.example.org", "srs_separator": "+", "srs_secrets_file": "/etc/postsrsd.secret",
                     "srs_hash_length": "5", "srs_hash_min_length": "4",
                     "srs_exclude_domains": "example.com, .example.net"}
    assert any("mydomain" in w for w in warnings("SRS_SECRET=/etc/postsrsd.secret"))


@pytest.mark.parametrize("spec", FOREIGN_KEYS, ids=lambda spec: spec.name)
def test_every_foreign_key_is_mapped_or_warned(spec):
    """No key is dropped silently: set to a value that matters, each one of the table shows up in a
    comment of the output or a warning."""
    value = {"Socket": "inet:1@localhost", "TestOnly": "0", "defaultSeedOnly": "0", "UMask": "7",
             "HELO_reject": "Softfail", "Mail_From_reject": "Softfail", "PermError_reject": "True",
             "TempError_Defer": "True", "debugLevel": "2", "Header_Type": "AR", "Authserv_Id": "mx.example.com",
             "Lookup_Time": "10", "Whitelist_Lookup_Time": "5", "Void_Limit": "3", "SPF_Enhanced_Status_Codes": "No",
             "Reason_Message": "SPF {spf}", "UserID": "milter", "PidFile": "/run/p.pid",
             "SRS_HASHLENGTH": "5", "SRS_HASHMIN": "5", "SRS_SEPARATOR": "+", "SRS_DOMAIN": "srs.example.org",
             "No_Mail": "True", "syslog": "yes"}.get(spec.name, "example.com")
    separator = "=" if spec.program == POSTSRSD else " = "
    program = spec.program if spec.program in (POSTSRSD, POSTSRSD2) else PYSPF_MILTER
    migration = migrate(f"{spec.name}{separator}{value}\n", program=program)
    assert spec.name in migration.accounted
    assert f"{spec.name}" in render(migration, "old.conf")
    if spec.lost:
        assert any(w.name == spec.name for w in migration.warnings), spec.name


# --------------------------------------------------------------------------- Debian's own files

@pytest.mark.parametrize("name", DEBIAN_FILES)
def test_debian_sample_migrates_with_no_silent_loss(name):
    text = (DATA / name).read_text()
    migration = migrate(text, str(DATA / name))
    assert migration.names, "nothing read"
    assert set(migration.names) == migration.accounted
    output = render(migration, name)
    for key in migration.names:  # each key of the file is named in the output
        assert re.search(rf"\b{re.escape(key)}\b", output), key
    check_output(output)


@pytest.mark.parametrize("name, program, status", [
    ("policyd-spf.conf", "policyd-spf", 0),
    ("policyd-spf.conf.commented", "policyd-spf", 0),
    ("pyspf-milter.conf", "pyspf-milter", 0),
    ("postsrsd", "PostSRSd", 1),  # its TCP tables and chroot have no equivalent
])
def test_migrate_config_command_on_debian_samples(name, program, status, capsys):
    assert main(["migrate-config", str(DATA / name)]) == status
    out, err = capsys.readouterr()
    assert out.startswith("# spfmilter.conf made by `spfmilter migrate-config`")
    assert f"({program})" in out.splitlines()[0]
    warned = [line for line in out.splitlines() if line.startswith("# WARNING: ")]
    assert len(warned) == len(err.splitlines())
    assert all(line.startswith(f"spfmilter: warning: {DATA / name}: ") for line in err.splitlines())
    check_output(out)


def test_pyspf_milter_sample_output(capsys):
    main(["migrate-config", str(DATA / "pyspf-milter.conf")])
    active = dict(line.split(" = ", 1) for line in capsys.readouterr().out.splitlines()
                  if line and not line.startswith("#"))
    assert active == {
        "mode": "enforce", "socket": "inet:8893@localhost", "header_type": "received-spf",
        "trusted_networks": "loopback", "trust_authenticated": "no", "exempt_recipients": "postmaster, abuse",
        "helo_reject_results": "fail", "mailfrom_reject_results": "fail", "temperror_action": "accept",
        "log_level": "info"}


def test_migrate_config_unreadable_file(tmp_path, capsys):
    assert main(["migrate-config", str(tmp_path / "missing.conf")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_from_option_overrides_detection(tmp_path, capsys):
    path = tmp_path / "spf.conf"
    path.write_text("TestOnly = 0\n")
    assert main(["migrate-config", "--from", "pyspf-milter", str(path)]) == 0
    assert "(pyspf-milter)" in capsys.readouterr().out.splitlines()[0]


# --------------------------------------------------------------------------- README

def test_readme_table_lists_every_foreign_key():
    rows = []
    for line in (ROOT / "README.md").read_text().splitlines():
        match = re.match(r"^\| ([^|`]+) \| `([^`]+)` \| (.*) \|$", line)  # program first: not our key table
        if match and foreignkeys.lookup(match.group(2)):
            rows.append((match.group(2), match.group(1), match.group(3)))
    assert rows == [(spec.name, spec.program, spec.advice()) for spec in FOREIGN_KEYS]
