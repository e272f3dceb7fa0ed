"""Command line: run the milter, check the configuration, or evaluate one case by hand."""
from __future__ import annotations

import argparse
import grp
import logging
import logging.handlers
import os
import pwd
import signal
import socket
import sys
import time
from typing import Optional, Sequence

from . import __version__
from .config import DEFAULT_CONFIG_PATH, Config, ConfigError, defaults, describe, load

log = logging.getLogger("spfmilter")
DEFAULT_RECIPIENT = "user@localhost"  # RCPT TO of a case evaluated by hand (check, explain)


# sd-daemon(3) priority prefixes, as journald reads them from a stream (SyslogLevelPrefix=)
JOURNAL_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """Lines for journald's stream: ``<N>message``, no time stamp and no ``spfmilter[pid]:``.

    journald adds both (and the syslog facility the unit sets with SyslogFacility=), so a
    line in mail.log or ``journalctl`` output reads like Postfix's own.  Each line of a
    multi-line message (a traceback) gets the prefix, since journald splits at new lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        priority = JOURNAL_PRIORITIES.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).split("\n"))


class StampFormatter(logging.Formatter):
    """The default ``asctime`` (``2026-12-04 21:29:00,123``), its date and time part made once a second."""

    def __init__(self, fmt: str):
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
        second = int(record.created)
        if second != self._second:  # the handler's lock is held: one record at a time
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return self.default_msec_format % (self._stamp, record.msecs)


def is_journal_stream(stream, environ=os.environ) -> bool:
    """Whether ``stream`` is the journald stream systemd connected us to: $JOURNAL_STREAM holds
    its ``device:inode`` (systemd.exec(5)), which a redirected stderr no longer matches."""
    value = environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not (sep and device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, AttributeError, ValueError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def setup_logging(config: Config, stream=None, syslog_address: str = "/dev/log", environ=os.environ) -> None:
    """Route the ``spfmilter`` loggers to stderr or syslog, as configured.

    On stderr under systemd (:func:`is_journal_stream`), lines carry sd-daemon priority
    prefixes instead of our own time stamp and tag (:class:`JournalFormatter`).
    Raises OSError (naming the socket) when syslog is asked for but cannot be reached.
    """
    root = logging.getLogger("spfmilter")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if config.log_destination.value == "syslog":
        facility = logging.handlers.SysLogHandler.facility_names[config.syslog_facility]
        # SysLogHandler silently drops messages when the socket is missing; find out now.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                probe.connect(syslog_address)
        except OSError as exc:
            raise OSError(f"cannot log to syslog at {syslog_address}: {exc.strerror or exc}") from None
        handler: logging.Handler = logging.handlers.SysLogHandler(address=syslog_address, facility=facility)
        handler.setFormatter(logging.Formatter("spfmilter[%(process)d]: %(message)s"))
    else:
        stream = stream or sys.stderr
        handler = logging.StreamHandler(stream)
        if is_journal_stream(stream, environ):
            handler.setFormatter(JournalFormatter("%(message)s"))
        else:
            handler.setFormatter(StampFormatter("%(asctime)s spfmilter[%(process)d]: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())
    root.propagate = False
    # A line per message is on the hot path: our formats use neither the caller's file and line
    # nor thread or multiprocessing names, so the logging module need not look them up for
    # every record (the knobs its documentation and source offer for exactly this).
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # type: ignore[attr-defined]


def _load_config(path: Optional[str]) -> Config:
    """The named file; else the default path if present; else the built-in defaults.

    A relative path is made absolute now, so that a reload (SIGHUP) reads the same file
    whatever the working directory is by then.
    """
    if path:
        return load(os.path.abspath(path))
    if os.path.exists(DEFAULT_CONFIG_PATH):
        return load(DEFAULT_CONFIG_PATH)
    return defaults()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spfmilter",
        description="SPF (RFC 7208) milter for Postfix and Sendmail. Without a command it runs the "
                    "milter in the foreground.")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help=f"configuration file (default {DEFAULT_CONFIG_PATH} if it exists, "
                             "else built-in defaults)")
    parser.add_argument("--check-config", action="store_true",
                        help="check the configuration, print the effective settings, and exit "
                             "(non-zero on errors)")
    parser.add_argument("--version", action="version", version=f"spfmilter {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check", help="evaluate one case without an MTA",
        description="Evaluate SPF for one client as the milter would, and print the headers it "
                    "would add and the SMTP reply it would give.")
    check.add_argument("--ip", required=True, help="client IP address")
    check.add_argument("--helo", required=True, metavar="NAME", help="HELO/EHLO name")
    check.add_argument("--sender", required=True, metavar="ADDR",
                       help="MAIL FROM address ('' or <> for the null sender)")
    check.add_argument("--recipient", default=DEFAULT_RECIPIENT, metavar="ADDR",
                       help="RCPT TO address (matters for exempt recipients like postmaster@)")
    check.add_argument("--auth-user", default=None, metavar="NAME",
                       help="SASL login name, as {auth_authen} would carry")
    check.add_argument("-c", "--config", dest="check_config_file", metavar="FILE",
                       help="configuration file (same default as above)")
    srs = commands.add_parser(
        "srs", help="SRS addresses and secrets by hand",
        description="Rewrite or reverse an address with the configured SRS domain and secrets, or "
                    "create a secrets file.")
    srs_commands = srs.add_subparsers(dest="srs_command", metavar="ACTION", required=True)
    genkey = srs_commands.add_parser("genkey", help="create a secrets file with a new random secret",
                                     description="Create FILE with one new random secret, mode 0640 in "
                                                 "the group the daemon runs as (the configuration's "
                                                 "group, else its user's primary group, else spfmilter "
                                                 "if that group exists), so a reload after the privilege "
                                                 "drop can read it; with none of these, mode 0600. "
                                                 "With --rotate, put a new secret in front of the "
                                                 "existing ones: it signs from now on, the old ones "
                                                 "still verify until you remove them.")
    genkey.add_argument("file", metavar="FILE")
    genkey.add_argument("--rotate", action="store_true", help="add a new secret in front of the existing ones")
    genkey.add_argument("-c", "--config", dest="check_config_file", metavar="FILE",
                        help="configuration file whose user and group will read it (same default as above)")
    for name, text in (("forward", "print the SRS address for ADDRESS"),
                       ("reverse", "print the address an SRS address stands for, or why it is refused")):
        action = srs_commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("address", metavar="ADDRESS")
        action.add_argument("-c", "--config", dest="check_config_file", metavar="FILE",
                            help="configuration file (same default as above)")
    from . import logreport

    add_explain_parser(commands)
    logreport.add_parser(commands)
    add_migrate_parser(commands)
    return parser


def add_migrate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "migrate-config", help="turn a policyd-spf, pyspf-milter or PostSRSd configuration into spfmilter.conf",
        description="Read a policyd-spf (/etc/postfix-policyd-spf-python/policyd-spf.conf), pyspf-milter "
                    "(/etc/pyspf-milter/pyspf-milter.conf) or PostSRSd 1.x (/etc/default/postsrsd) configuration "
                    "and print the equivalent spfmilter.conf: a comment names the old keys (and old defaults) "
                    "behind each setting, and every old key spfmilter cannot carry over is a WARNING comment "
                    "and a line on standard error. Exit status 0: everything carried over; 1: printed, with "
                    "warnings; 2: the file cannot be read.")
    parser.add_argument("file", metavar="FILE", help="the old configuration file")
    parser.add_argument("--from", dest="program", type=_migrate_program, metavar="PROGRAM",
                        help="the program the file is for: policyd-spf, pyspf-milter or PostSRSd (default: "
                             "recognised from its keys and path)")


def _migrate_program(text: str) -> str:
    """The --from value as migrate.py names the program (any case)."""
    from .foreignkeys import POLICYD_SPF, POSTSRSD, PYSPF_MILTER

    names = {name.lower(): name for name in (POLICYD_SPF, PYSPF_MILTER, POSTSRSD)}
    if text.lower() not in names:
        raise argparse.ArgumentTypeError(f"expected one of: {', '.join(names.values())}")
    return names[text.lower()]


def migrate_command(args) -> int:
    from .migrate import describe_warning, migrate, render

    try:
        with open(args.file, encoding="utf-8-sig") as handle:
            text = handle.read()
    except OSError as exc:
        print(f"spfmilter: {args.file}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    except UnicodeDecodeError:
        print(f"spfmilter: {args.file}: not UTF-8 text", file=sys.stderr)
        return 2
    migration = migrate(text, args.file, args.program or "")
    sys.stdout.write(render(migration, args.file))
    for warning in migration.warnings:
        print(f"spfmilter: warning: {args.file}: {describe_warning(warning)}", file=sys.stderr)
    return 1 if migration.warnings else 0


def add_explain_parser(subparsers) -> None:
    """The ``explain`` command's options; spfmilter.explain is imported only to run it (and imports no cli)."""
    parser = subparsers.add_parser(
        "explain", help="show an SPF evaluation step by step",
        description="Evaluate SPF for one case as the milter would and show every step: each record "
                    "(with include: and redirect= targets), each term tried and why it matched or not, "
                    "the DNS answers used, the lookup limits, then the headers the milter would add and "
                    "the SMTP reply it would give. Give --ip, --helo and --sender, or --eml FILE to take "
                    "them from a delivered message's trace headers (options given as well override).")
    parser.add_argument("--ip", metavar="IP", help="client IP address")
    parser.add_argument("--helo", metavar="NAME", help="HELO/EHLO name")
    parser.add_argument("--sender", metavar="ADDR", help="MAIL FROM address ('' or <> for the null sender)")
    parser.add_argument("--recipient", default=None, metavar="ADDR",
                        help=f"RCPT TO address (matters for exempt recipients like postmaster@; default: "
                             f"X-Original-To/Delivered-To of --eml, else {DEFAULT_RECIPIENT})")
    parser.add_argument("--auth-user", default=None, metavar="NAME",
                        help="SASL login name, as {auth_authen} would carry")
    parser.add_argument("--eml", metavar="FILE",
                        help="message file ('-' for standard input): take the client IP and HELO from the "
                             "topmost Received header of an untrusted client, the sender from Return-Path, "
                             "or all three from a Received-SPF header")
    parser.add_argument("-c", "--config", dest="check_config_file", metavar="FILE",
                        help="configuration file (same default as above)")
    parser.set_defaults(default_recipient=DEFAULT_RECIPIENT)


def _srs_policy(config: Config) -> tuple:
    """(the configuration's SRS policy or None, 0); (None, 2) once the problem with its secrets
    file or forward table is printed."""
    from .srs import SecretsError
    from .srspolicy import build_srs_policy

    try:
        return build_srs_policy(config), 0
    except (SecretsError, OSError) as exc:
        print(f"spfmilter: {exc}", file=sys.stderr)
        return None, 2


def secrets_group(config: Config) -> Optional[int]:
    """The group that may read the SRS secrets file: the daemon's ``group``, else its ``user``'s
    primary group, else ``spfmilter`` when that group exists; None when there is none of these.
    KeyError with a sentence when a configured account does not exist."""
    from .preflight import group_id

    if config.group:
        return group_id(config.group)
    if config.user:
        try:
            return pwd.getpwnam(config.user).pw_gid
        except KeyError:
            raise KeyError(f"user {config.user!r} does not exist") from None
    try:
        return grp.getgrnam("spfmilter").gr_gid
    except KeyError:
        return None


def srs_command(args, config: Config) -> int:
    import time

    from .srs import SecretsError, SrsError, forward, reverse, split_address, write_secrets_file

    if args.srs_command == "genkey":
        try:
            group = secrets_group(config)
            write_secrets_file(args.file, rotate=args.rotate, group=group)
        except (SecretsError, OSError, KeyError) as exc:
            print(f"spfmilter: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
            return 1
        if args.rotate:
            print(f"added a new secret in front of {args.file}")
        else:
            readable = f"mode 0640, group {grp.getgrgid(group).gr_name}" if group is not None else "mode 0600"
            print(f"wrote a new secret to {args.file} ({readable})")
        return 0
    if not config.srs:
        print(f"spfmilter: srs_domain is not set in {config.source}", file=sys.stderr)
        return 2
    policy, status = _srs_policy(config)
    if status:
        return status
    try:
        if args.srs_command == "forward":
            split_address(args.address)
            domain = args.address.rpartition("@")[2]
            if policy.excluded(domain):
                # what the milter and the socketmap send such mail with: the address as it is
                print(f"spfmilter: not rewritten: {domain} is in srs_exclude_domains", file=sys.stderr)
                print(args.address)
            else:
                print(forward(args.address, policy.domain, policy.keys, time.time()))
        else:
            print(reverse(args.address, policy.keys, time.time()))
    except SrsError as exc:
        print(f"spfmilter: {exc.reason}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; a reader that went away (``spfmilter --check-config | head -1``) ends
    it quietly, as it would a shell tool killed by SIGPIPE, with that status (128 + 13)."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # what is still buffered fails here, not at interpreter exit
        return code
    except BrokenPipeError:
        # Python's own flush at exit would print the error again: point stdout at /dev/null
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
        return 128 + signal.SIGPIPE


def _main(argv: Optional[Sequence[str]]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":  # reads logs only; no configuration needed
        from . import logreport

        return logreport.run(args)
    if args.command == "migrate-config":  # reads the old program's file, not ours
        return migrate_command(args)
    path = getattr(args, "check_config_file", None) or args.config
    try:
        config = _load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"spfmilter: {problem}", file=sys.stderr)
        return 2
    if args.command == "srs":
        return srs_command(args, config)
    if args.check_config:
        policy, status = _srs_policy(config)
        if status:
            return status
        from .preflight import startup_problems

        errors, warnings = startup_problems(config)
        for warning in warnings:
            print(f"spfmilter: warning: {warning}", file=sys.stderr)
        if errors:
            for error in errors:
                print(f"spfmilter: {config.source}: {error}", file=sys.stderr)
            return 2
        print(f"# {config.source}: configuration OK")
        if policy is not None:
            print(f"# SRS: {len(policy.keys.secrets)} secret(s), {len(policy.forwarded)} forwarded "
                  f"address pattern(s) in srs_forward_table")
        for line in describe(config):
            print(line)
        return 0
    try:
        setup_logging(config)
    except OSError as exc:
        print(f"spfmilter: {exc}", file=sys.stderr)
        return 1
    if args.command == "explain":
        from .explain import run as run_explain

        return run_explain(args, config)
    if args.command == "check":
        from .checkcmd import run_check

        return run_check(config, args.ip, args.helo, args.sender, args.recipient, args.auth_user)
    if config.source == "<built-in defaults>":
        log.info("no configuration file at %s; using built-in defaults", DEFAULT_CONFIG_PATH)
    from .server import serve

    return serve(config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
