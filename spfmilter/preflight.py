"""What start-up needs, checked before libmilter is asked: shared by the daemon and ``--check-config``.

libmilter's ``opensocket`` only says "cannot opensocket", whether the port is taken or the
directory is missing; :func:`probe_listen` finds out first and reports the OS error text.
:func:`startup_problems` lists what would stop the daemon (or a later reload) on this host:
accounts, the socket's directory, the port, the SRS secrets file as the runtime user sees it.
:func:`risky_settings` names settings that work but expose the milter.

Permission checks look at owner, group and mode bits only (not ACLs), as the kernel does for
a process with those ids; root may do anything.  No pymilter import: this runs in ``check``
paths too.
"""
from __future__ import annotations

import errno
import grp
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass
from typing import Optional

from .config import Config, SocketSpec, is_loopback

READ, WRITE, SEARCH = 4, 2, 1
UNIX_PATH_MAX = 108  # sizeof(sun_path) on Linux, the terminating NUL included


@dataclass(frozen=True)
class Identity:
    """Who the daemon runs as after start-up: name, uid and every group id it has."""

    name: str
    uid: int
    gids: frozenset[int]


def may(info: os.stat_result, identity: Identity, want: int) -> bool:
    """Whether ``identity`` has all of ``want`` (READ | WRITE | SEARCH bits) on the file ``info``
    describes, by its owner, group and mode (the class that applies is the first that matches)."""
    if identity.uid == 0:
        return True
    if info.st_uid == identity.uid:
        bits = info.st_mode >> 6
    elif info.st_gid in identity.gids:
        bits = info.st_mode >> 3
    else:
        bits = info.st_mode
    return bits & want == want


def may_remove(directory: os.stat_result, entry_uid: int, identity: Identity) -> bool:
    """Whether ``identity`` may unlink an entry owned by ``entry_uid`` from ``directory``
    (write and search on it; in a sticky directory also own the entry or the directory)."""
    if not may(directory, identity, WRITE | SEARCH):
        return False
    if directory.st_mode & stat.S_ISVTX and identity.uid != 0:
        return identity.uid in (entry_uid, directory.st_uid)
    return True


def runtime_identity(config: Config) -> Identity:
    """The identity after the privilege drop (``user``/``group``), or the current one.

    KeyError with a sentence when the user or group does not exist.
    """
    if not config.user:
        return Identity(pwd.getpwuid(os.geteuid()).pw_name if _has_uid(os.geteuid()) else str(os.geteuid()),
                        os.geteuid(), frozenset(os.getgroups()) | {os.getegid()})
    try:
        account = pwd.getpwnam(config.user)
    except KeyError:
        raise KeyError(f"user {config.user!r} does not exist") from None
    gid = group_id(config.group) if config.group else account.pw_gid
    return Identity(config.user, account.pw_uid, frozenset(os.getgrouplist(config.user, gid)) | {gid})


def group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise KeyError(f"group {name!r} does not exist") from None


def _has_uid(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


class ListenError(ValueError):
    """Why a socket cannot be listened on; ``errno`` is the OS error number (0 if none)."""

    def __init__(self, text: str, number: int = 0):
        super().__init__(text)
        self.errno = number


def probe_listen(spec: SocketSpec) -> None:
    """ValueError saying why ``spec`` cannot be listened on, with the OS error; None if it can.

    inet: bind a probe socket to the address (with SO_REUSEADDR, as libmilter does) and close
    it.  unix: the path's directory must exist and be writable by this process, and the path
    must fit in a socket address.
    """
    if spec.family == "unix":
        path = spec.address
        if len(os.fsencode(path)) >= UNIX_PATH_MAX:
            raise ListenError(f"{path}: path too long for a unix socket (at most {UNIX_PATH_MAX - 1} bytes)")
        directory = os.path.dirname(path) or "/"
        try:
            info = os.stat(directory)
        except OSError as exc:
            raise ListenError(f"directory {directory}: {exc.strerror}", exc.errno) from None
        if not stat.S_ISDIR(info.st_mode):
            raise ListenError(f"directory {directory}: {os.strerror(errno.ENOTDIR)}", errno.ENOTDIR)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ListenError(f"directory {directory}: {os.strerror(errno.EACCES)}", errno.EACCES)
        return
    family = socket.AF_INET6 if spec.family == "inet6" else socket.AF_INET
    try:
        address = socket.getaddrinfo(spec.address, spec.port, family, socket.SOCK_STREAM)[0][4]
    except socket.gaierror as exc:
        raise ListenError(f"cannot resolve {spec.address}: {exc.strerror}") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ListenError(f"{spec.address} port {spec.port}: {exc.strerror}", exc.errno) from None


def answers_as_milter(spec: SocketSpec, timeout: float = 1.0) -> bool:
    """Whether something at ``spec`` answers a milter option negotiation (SMFIC_OPTNEG, milter
    protocol version 6) with one of its own: then a milter, most likely ours, is running there."""
    family = {"unix": socket.AF_UNIX, "inet6": socket.AF_INET6}.get(spec.family, socket.AF_INET)
    address = spec.address if spec.family == "unix" else (spec.address, spec.port)
    body = b"O" + struct.pack(">III", 6, 0x1FF, 0x1FFFFF)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(timeout)
            probe.connect(address)
            probe.sendall(struct.pack(">I", len(body)) + body)
            reply = probe.recv(5)
    except OSError:
        return False
    return len(reply) == 5 and reply[4:5] == b"O"


def risky_settings(config: Config) -> list[str]:
    """Settings that work but let others in, one sentence each."""
    risks = []
    if config.socket.family == "unix" and config.socket_mode & stat.S_IWOTH:
        risks.append(f"socket_mode {config.socket_mode:04o} lets every local user talk to the milter "
                     "(and feed it forged client facts): use 0660 with socket_group")
    if config.metrics_listen and not is_loopback(config.metrics_listen.rpartition(":")[0].strip("[]")):
        risks.append(f"metrics_listen {config.metrics_listen} is not on loopback: anyone who can reach it "
                     "reads the mail statistics (keep it on 127.0.0.1 or ::1)")
    return risks


def startup_problems(config: Config) -> tuple[list[str], list[str]]:
    """(errors, warnings): what would stop the daemon or a later reload, and what works but is
    worth knowing.  Run as the user that starts the daemon."""
    errors: list[str] = []
    warnings: list[str] = []
    identity: Optional[Identity] = None
    try:
        identity = runtime_identity(config)
    except KeyError as exc:
        errors.append(exc.args[0])
    if config.group and not config.user:
        errors.append("group is set but user is not")
    if config.user and os.geteuid() != 0 and identity is not None and identity.uid != os.geteuid():
        errors.append(f"only root can switch to user {config.user!r}")
    if config.socket_group:
        try:
            group_id(config.socket_group)
        except KeyError as exc:
            errors.append(f"socket_group: {exc.args[0]}")
    try:
        probe_listen(config.socket)
    except ListenError as exc:
        if exc.errno == errno.EADDRINUSE and answers_as_milter(config.socket):
            # checked before a reload: the running daemon holds its own port
            warnings.append(f"socket {config.socket}: a milter already listens there (a running spfmilter? "
                            "a reload keeps it; a second instance would not start)")
        else:
            errors.append(f"socket {config.socket}: {exc}")
    else:
        if config.socket.family == "unix":
            if answers_as_milter(config.socket):
                warnings.append(f"socket {config.socket}: a milter already listens there (a running "
                                "spfmilter? a reload keeps it; a second instance would take the path over)")
            if identity is not None:
                warnings += _removal_notes(config, identity)
    if config.pid_file:
        directory = os.path.dirname(config.pid_file)
        if not os.path.isdir(directory):
            errors.append(f"pid_file {config.pid_file}: no directory {directory}")
    if config.srs_socketmap is not None:
        try:
            probe_listen(config.srs_socketmap)
        except ListenError as exc:
            if exc.errno == errno.EADDRINUSE:  # checked before a reload: the running daemon holds it
                warnings.append(f"srs_socketmap {config.srs_socketmap}: something already listens there "
                                "(a running spfmilter? a reload keeps it)")
            else:
                errors.append(f"srs_socketmap {config.srs_socketmap}: {exc}")
    if config.srs and identity is not None:
        errors += _secrets_problems(config.srs_secrets_file, identity)
    warnings += risky_settings(config)
    return errors, warnings


def _removal_notes(config: Config, identity: Identity) -> list[str]:
    directory = os.path.dirname(config.socket.address) or "/"
    if may_remove(os.stat(directory), identity.uid, identity):
        return []
    return [f"user {identity.name} cannot write {directory}: a helper that stays root removes the socket "
            f"at exit (give the directory to {identity.name}, e.g. systemd's RuntimeDirectory=, to avoid it)"]


def _secrets_problems(path: str, identity: Identity) -> list[str]:
    """The secrets file must be readable by the runtime user (a reload reads it after the drop)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return [f"srs_secrets_file {path}: {exc.strerror} (create it with: spfmilter srs genkey {path})"]
    if not may(info, identity, READ):
        owner = pwd.getpwuid(info.st_uid).pw_name if _has_uid(info.st_uid) else str(info.st_uid)
        return [f"srs_secrets_file {path}: not readable by user {identity.name} (owner {owner}, mode "
                f"{stat.S_IMODE(info.st_mode):04o}): a reload would fail; make its group one of "
                f"{identity.name}'s and its mode 0640"]
    return []
