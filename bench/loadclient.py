"""A milter-protocol load generator that talks to a milter the way Postfix does.

Every SMTP session is one connection to the milter: option negotiation (protocol version 6, every
action 0x1FF and every protocol flag 0x1FFFFF offered, as Postfix does), then connect, HELO, MAIL,
RCPT, DATA, two header lines, end of headers, one body chunk and end of message, then quit.  What
the milter negotiates is honoured: stages it switched off (``SMFIP_NOxxx``) are not sent, and
replies to stages marked ``SMFIP_NR_xxx`` are not waited for.  Each stage's macro packet ('D') and
command packet go out in one write, as Postfix sends them; macros are Postfix's defaults (only the
ones the milter asked for, if it asked).  Like Postfix, TCP connections keep Nagle's algorithm on
(asyncio would switch it off), so a milter that leaves packets unanswered over TCP pays the same
delayed-ACK price it would pay with Postfix.

At end of message the modifications are collected; the ``Authentication-Results`` header the milter
inserted or added is parsed with authres and its ``spf`` result for ``smtp.mailfrom`` is compared with
the case's expectation.  A header that only carries an ``smtp.helo`` result (spf-engine reports only
the identity it decided on) makes the session *unchecked* rather than a mismatch; a refusal at MAIL
or RCPT (an enforcing milter) is counted as *rejected* (also unchecked).  Anything else without a
header is a mismatch.

Use::

    stats = asyncio.run(run_load(("127.0.0.1", 8890), world.cases, concurrency=64, duration=20, warmup=3))
    print(stats.summary())

or ``python -m bench.loadclient --addr inet:8890@127.0.0.1 --world world.json -c 64 --seconds 20``.

Timing: sessions that start during the warm-up are run (so caches warm up) but not counted.
``sessions``/``errors``/``mismatches`` and the latency percentiles cover the sessions started in the
measuring window; ``msgs_per_s`` is the number of sessions that completed without error inside the
window divided by its length (a closed-loop throughput).  Every read has a time limit (``timeout``),
so a session never hangs: a milter that stops answering turns into errors.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import json
import math
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import authres

from tests.support.milterclient import (
    ALL_ACTIONS,
    ALL_PROTOCOL,
    FINAL_REPLIES,
    MAX_PACKET_SIZE,
    MOD_REPLIES,
    SMFI_PROT_VERSION,
    SMFIC_ABORT,
    SMFIC_MACRO,
    SMFIC_OPTNEG,
    SMFIC_QUIT,
    SMFIP_HDR_LEADSPC,
    SMFIR_PROGRESS,
    STAGES,
    packet,
)

__all__ = ["run_load", "LoadStats", "SessionRecord", "parse_address", "main"]

# ------------------------------------------------------------------------------------ protocol constants
# one definition of the milter protocol: tests/support/milterclient.py (libmilter's mfdef.h / mfapi.h)

# the stages before end of message, in the order Postfix sends them
_BEFORE_EOM = ("connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body")
# replies arrive as (command byte as an int, data)
_FINAL = {cmd[0]: action for cmd, action in FINAL_REPLIES.items()}
_PROGRESS = SMFIR_PROGRESS[0]
_MODIFICATIONS = frozenset(cmd[0] for cmd in MOD_REPLIES)  # add/ins/chg header, rcpts, from, body, quarantine
_REFUSALS = frozenset({"reject", "tempfail", "replycode", "shutdown", "connfail"})
_AR = "authentication-results"


def _z(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\0"


_OPTNEG = packet(SMFIC_OPTNEG, struct.pack(">III", SMFI_PROT_VERSION, ALL_ACTIONS, ALL_PROTOCOL))
_QUIT = packet(SMFIC_QUIT)
_ABORT = packet(SMFIC_ABORT)


# ------------------------------------------------------------------------------------ results

@dataclass(slots=True)
class SessionRecord:
    """One SMTP session: monotonic start/end, whether the protocol exchange worked, what we saw."""

    start: float
    end: float
    ok: bool
    # "<mailfrom result>|<helo result>" from the A-R header ("None" for an identity it lacks),
    # "missing" (no A-R header), or how the milter ended it early, e.g. "reject@rcpt", "tempfail@eom"
    result: Optional[str]
    error: Optional[str]
    case_index: int

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000.0


@dataclass
class LoadStats:
    sessions: int = 0
    ok: int = 0
    errors: int = 0
    mismatches: list = field(default_factory=list)  # [(case, got)]
    checked: int = 0
    unchecked: int = 0
    rejected: int = 0
    helo_mismatches: int = 0
    msgs_per_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    window_s: float = 0.0
    warmup_sessions: int = 0
    concurrency: int = 0
    negotiated: Optional[dict] = None
    error_kinds: dict = field(default_factory=dict)  # error text -> count
    results: dict = field(default_factory=dict)  # result/status -> count
    records: list = field(default_factory=list)  # [SessionRecord] of the counted sessions

    def summary(self) -> str:
        text = (f"sessions={self.sessions} errors={self.errors} mismatches={len(self.mismatches)} "
                f"checked={self.checked} unchecked={self.unchecked} rejected={self.rejected} "
                f"msgs/s={self.msgs_per_s:.1f} p50={self.p50_ms:.1f}ms p99={self.p99_ms:.1f}ms "
                f"max={self.max_ms:.1f}ms c={self.concurrency} window={self.window_s:.1f}s")
        if self.error_kinds:
            worst = max(self.error_kinds.items(), key=lambda item: item[1])
            text += f" first-error-kind={worst[0]!r}x{worst[1]}"
        return text

    def to_dict(self, max_mismatches: int = 20) -> dict:
        return {
            "sessions": self.sessions, "ok": self.ok, "errors": self.errors,
            "mismatches": len(self.mismatches), "checked": self.checked, "unchecked": self.unchecked,
            "rejected": self.rejected, "helo_mismatches": self.helo_mismatches,
            "msgs_per_s": round(self.msgs_per_s, 2), "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.p90_ms, 3), "p99_ms": round(self.p99_ms, 3), "max_ms": round(self.max_ms, 3),
            "mean_ms": round(self.mean_ms, 3), "window_s": round(self.window_s, 3),
            "warmup_sessions": self.warmup_sessions, "concurrency": self.concurrency,
            "negotiated": self.negotiated, "error_kinds": self.error_kinds, "results": self.results,
            "mismatch_examples": [
                {"client_ip": c.client_ip, "helo": c.helo, "sender": c.sender,
                 "expected": c.expected_mailfrom, "got": got}
                for c, got in self.mismatches[:max_mismatches]],
        }


class _SessionError(Exception):
    pass


# ------------------------------------------------------------------------------------ the connection

class _Connection(asyncio.Protocol):
    """Frames the milter's reply stream into (command byte, data) packets."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, nodelay: bool):
        self.loop = loop
        self.timeout = timeout
        self.nodelay = nodelay
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = bytearray()
        self.packets: list = []
        self.position = 0  # next packet to hand out
        self.waiter: Optional[asyncio.Future] = None
        self.closed: Optional[str] = None

    # asyncio callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport
        if not self.nodelay:
            # asyncio turns Nagle off on every TCP socket; Postfix leaves it on for milter
            # connections (vstream_tweak_tcp() only enlarges its buffer), so we turn it back on.
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset, size = 0, len(buffer)
        while size - offset >= 5:
            length = int.from_bytes(buffer[offset:offset + 4], "big")
            if length == 0 or length > MAX_PACKET_SIZE:
                self._fail(f"bad packet length {length} from milter")
                return
            end = offset + 4 + length
            if end > size:
                break
            self.packets.append((buffer[offset + 4], bytes(buffer[offset + 5:end])))
            offset = end
        if offset:
            del buffer[:offset]
        waiter = self.waiter
        if waiter is not None and not waiter.done() and self.position < len(self.packets):
            waiter.set_result(None)

    def connection_lost(self, exc) -> None:
        if self.closed is None:
            self.closed = f"connection closed by milter ({exc})" if exc else "connection closed by milter"
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, why: str) -> None:
        self.closed = why
        if self.transport is not None:
            self.transport.abort()

    # our side
    def write(self, data: bytes) -> None:
        if self.closed is not None:
            raise _SessionError(self.closed)
        self.transport.write(data)

    async def read(self, stage: str) -> tuple:
        if self.position < len(self.packets):
            packet = self.packets[self.position]
            self.position += 1
            return packet
        if self.closed is not None:
            raise _SessionError(f"{self.closed} while waiting for the {stage} reply")
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(self.timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
        if self.position < len(self.packets):
            packet = self.packets[self.position]
            self.position += 1
            return packet
        if self.closed is not None:
            raise _SessionError(f"{self.closed} while waiting for the {stage} reply")
        raise _SessionError(f"timeout: no {stage} reply within {self.timeout:g}s")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


# ------------------------------------------------------------------------------------ per-case packets

class _CaseData:
    """Everything about one case that does not depend on the negotiation, built once."""

    __slots__ = ("case", "index", "stages")

    def __init__(self, case: Any, index: int):
        self.case = case
        self.index = index
        ip = case.client_ip
        v6 = ":" in ip
        helo = case.helo
        # Postfix knows the verified client name, or "unknown"; our MTAs' names match their HELO.
        # In the connect packet Postfix turns "unknown" into "[address]" (Sendmail's form).
        name = helo if ("." in helo and not helo.startswith("[")) else "unknown"
        connect_name = name if name != "unknown" else f"[{ip}]"
        queue_id = f"4B{index:06X}Q"
        rcpt = f"user{index % 50}@mx.test"
        sender = case.sender
        port = 1024 + (index * 7919) % 64000
        subject = f"Benchmark message {index}"
        body = (f"Hello,\r\n\r\nthis is benchmark message {index} from {sender}.\r\n"
                "Nothing to see here.\r\n").encode()
        # stage -> (macros, command data); the header stage holds several lines
        self.stages = {
            "connect": ({"j": "mx.test", "{daemon_name}": "mx.test", "{client_addr}": ip,
                         "{client_name}": name, "_": f"{name} [{ip}]"},
                        _z(connect_name) + (b"6" if v6 else b"4") + struct.pack(">H", port) + _z(ip)),
            "helo": ({}, _z(helo)),  # {tls_version} and friends: no TLS, so absent
            "mail": ({"i": queue_id, "{mail_addr}": sender}, _z(f"<{sender}>") + _z(f"SIZE={len(body) + 200}")),
            "rcpt": ({"{rcpt_addr}": rcpt}, _z(f"<{rcpt}>")),
            "data": ({"i": queue_id}, b""),
            "header": ({}, [("From", f"Sender <{sender}>"), ("Subject", subject)]),
            "eoh": ({}, b""),
            "body": ({}, body),
            "eom": ({"i": queue_id}, b""),
        }


class _Plan:
    """The writes of one case for one negotiation result: [(bytes, wait for reply, stage)] + eom."""

    __slots__ = ("steps", "eom")

    def __init__(self, data: _CaseData, protocol: int, wanted_macros: dict):
        steps = []
        for stage in _BEFORE_EOM:
            cmd, skip_flag, noreply_flag, macro_index = STAGES[stage]
            if protocol & skip_flag:
                continue
            macros, payload = data.stages[stage]
            expect = not (protocol & noreply_flag)
            if stage == "header":
                lead = " " if protocol & SMFIP_HDR_LEADSPC else ""
                for name, value in payload:
                    steps.append((packet(cmd, _z(name) + _z(lead + value)), expect, stage))
                continue
            steps.append((_macro_packet(cmd, macros, wanted_macros.get(macro_index)) + packet(cmd, payload),
                          expect, stage))
        macros, payload = data.stages["eom"]
        self.steps = tuple(steps)
        cmd, _, _, macro_index = STAGES["eom"]
        self.eom = _macro_packet(cmd, macros, wanted_macros.get(macro_index)) + packet(cmd, payload)


def _macro_packet(cmd: bytes, macros: dict, wanted: Optional[set]) -> bytes:
    if wanted is not None:
        macros = {k: v for k, v in macros.items() if k.strip("{}") in wanted}
    if not macros:
        return b""
    return packet(SMFIC_MACRO, cmd + b"".join(_z(k) + _z(v) for k, v in macros.items()))


def _parse_negotiation(data: bytes) -> tuple:
    if len(data) < 12:
        raise _SessionError(f"option negotiation reply too short: {data!r}")
    version, actions, protocol = struct.unpack(">III", data[:12])
    wanted: dict = {}
    rest = data[12:]
    while len(rest) >= 5:
        index = struct.unpack(">I", rest[:4])[0]
        end = rest.find(b"\0", 4)
        if end < 0:
            raise _SessionError("macro list in negotiation reply is not NUL-terminated")
        names = rest[4:end].decode("latin-1").replace(",", " ").split()
        wanted[index] = {n.strip("{}") for n in names}
        rest = rest[end + 1:]
    return version, actions, protocol, wanted


# ------------------------------------------------------------------------------------ header parsing

_AR_CACHE: dict = {}


def spf_results(value: str) -> tuple:
    """(mailfrom result, helo result, ok) from one Authentication-Results value (cached)."""
    hit = _AR_CACHE.get(value)
    if hit is not None:
        return hit
    mailfrom = helo = None
    try:
        header = authres.AuthenticationResultsHeader.parse(
            "Authentication-Results: " + value.replace("\r", "").replace("\n", ""))
        for result in header.results:
            if str(result.method).lower() != "spf":
                continue
            for prop in result.properties:
                if str(prop.type).lower() != "smtp":
                    continue
                name = str(prop.name).lower()
                if name == "mailfrom" and mailfrom is None:
                    mailfrom = str(result.result).lower()
                elif name == "helo" and helo is None:
                    helo = str(result.result).lower()
        hit = (mailfrom, helo, True)
    except Exception:  # authres raises several kinds of errors on bad syntax
        hit = (None, None, False)
    if len(_AR_CACHE) > 100_000:
        _AR_CACHE.clear()
    _AR_CACHE[value] = hit
    return hit


def _authentication_results(mods: list) -> Optional[tuple]:
    """The spf results of the first A-R header the milter added that carries any; None if none."""
    seen_unparseable = False
    for cmd, data in mods:
        if cmd == ord("h"):
            fields = data.split(b"\0")
        elif cmd == ord("i") and len(data) > 4:
            fields = data[4:].split(b"\0")
        else:
            continue
        if len(fields) < 2 or fields[0].decode("latin-1").strip().lower() != _AR:
            continue
        mailfrom, helo, ok = spf_results(fields[1].decode("utf-8", "replace"))
        if not ok:
            seen_unparseable = True
        elif mailfrom is not None or helo is not None:
            return mailfrom, helo
    return ("unparseable", None) if seen_unparseable else None


# ------------------------------------------------------------------------------------ the load

def parse_address(spec: Any) -> Any:
    """``("host", port)``, ``"inet:PORT@HOST"``, ``"inet6:PORT@[HOST]"``, ``"unix:/path"`` or a path.

    Returns ``(host, port)`` or a socket path; only loopback hosts are accepted.
    """
    if isinstance(spec, (tuple, list)):
        host, port = spec[0], int(spec[1])
    elif isinstance(spec, str) and spec.startswith(("inet:", "inet6:")):
        rest = spec.split(":", 1)[1]
        port_text, _, host = rest.partition("@")
        host = (host or ("::1" if spec.startswith("inet6:") else "127.0.0.1")).strip("[]")
        port = int(port_text)
    elif isinstance(spec, str) and spec.startswith(("unix:", "local:")):
        return spec.split(":", 1)[1]
    elif isinstance(spec, str):
        return spec
    else:
        raise TypeError(f"unsupported milter address {spec!r}")
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"refusing non-loopback milter address {host!r}")
    return host, port


class _Runner:
    def __init__(self, addr: Any, cases: Sequence, check: bool, timeout: float, nodelay: bool):
        self.addr = parse_address(addr)
        self.cases = [_CaseData(case, i) for i, case in enumerate(cases)]
        if not self.cases:
            raise ValueError("no cases to run")
        self.check = check
        self.timeout = timeout
        self.nodelay = nodelay
        self.plans: dict = {}  # negotiation reply -> [plan per case or None]
        self.negotiations: dict = {}
        self.loop = asyncio.get_running_loop()

    def plan(self, negotiation: bytes, index: int) -> _Plan:
        plans = self.plans.get(negotiation)
        if plans is None:
            version, actions, protocol, wanted = _parse_negotiation(negotiation)
            self.negotiations[negotiation] = {"version": version, "actions": actions, "protocol": protocol,
                                              "macros": {k: sorted(v) for k, v in wanted.items()}}
            plans = self.plans[negotiation] = [None] * len(self.cases)
        plan = plans[index]
        if plan is None:
            _, _, protocol, wanted = _parse_negotiation(negotiation)
            plan = plans[index] = _Plan(self.cases[index], protocol, wanted)
        return plan

    async def _connect(self, conn: _Connection) -> None:
        if isinstance(self.addr, tuple):
            make = self.loop.create_connection(lambda: conn, self.addr[0], self.addr[1])
        else:
            make = self.loop.create_unix_connection(lambda: conn, self.addr)
        try:
            await asyncio.wait_for(make, self.timeout)
        except asyncio.TimeoutError:
            raise _SessionError(f"timeout: connecting took more than {self.timeout:g}s") from None
        except OSError as exc:
            raise _SessionError(f"cannot connect: {exc.strerror or exc}") from None

    async def _reply(self, conn: _Connection, stage: str, mods: Optional[list]) -> str:
        while True:
            cmd, data = await conn.read(stage)
            action = _FINAL.get(cmd)
            if action is not None:
                return action
            if cmd == _PROGRESS:
                continue
            if mods is not None and cmd in _MODIFICATIONS:
                mods.append((cmd, data))
                continue
            raise _SessionError(f"protocol error: unexpected reply {chr(cmd)!r} to {stage}")

    async def session(self, index: int) -> SessionRecord:
        start = time.monotonic()
        conn = _Connection(self.loop, self.timeout, self.nodelay)
        result: Optional[str] = None
        try:
            await self._connect(conn)
            conn.write(_OPTNEG)
            cmd, negotiation = await conn.read("option negotiation")
            if cmd != SMFIC_OPTNEG[0]:
                raise _SessionError(f"protocol error: expected the negotiation reply, got {chr(cmd)!r}")
            plan = self.plan(negotiation, index)
            for payload, expect, stage in plan.steps:
                conn.write(payload)
                if not expect:
                    continue
                action = await self._reply(conn, stage, None)
                if action in ("continue", "skip"):
                    continue
                result = f"{action}@{stage}"
                if stage in ("mail", "rcpt", "data", "header", "eoh", "body") and action != "accept":
                    conn.write(_ABORT)  # the transaction ends without a message, as after RSET
                break
            else:
                conn.write(plan.eom)
                mods: list = []
                action = await self._reply(conn, "eom", mods)
                if action in ("continue", "accept"):
                    found = _authentication_results(mods) if self.check else None
                    result = f"{found[0]}|{found[1]}" if found is not None else ("missing" if self.check else action)
                else:
                    result = f"{action}@eom"
            conn.write(_QUIT)
            return SessionRecord(start, time.monotonic(), True, result, None, index)
        except _SessionError as exc:
            return SessionRecord(start, time.monotonic(), False, result, str(exc), index)
        finally:
            conn.close()


async def run_load(addr: Any, cases: Sequence, concurrency: int = 64, duration: float = 20.0,
                   warmup: float = 3.0, max_sessions: Optional[int] = None, check: bool = True,
                   timeout: float = 30.0, nodelay: bool = False, once: bool = False) -> LoadStats:
    """Drive the milter at ``addr`` with ``concurrency`` concurrent SMTP sessions; see the module doc.

    ``timeout`` limits every read (and the connect); ``nodelay=True`` turns Nagle's algorithm off
    on TCP connections, which Postfix does not do.  ``once=True`` uses every case at most once
    (warm-up included) and ends the run when they are used up (the cold-cache scenario: with one
    case per sender domain, no session sees a domain an earlier one saw).
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    runner = _Runner(addr, cases, check, timeout, nodelay)
    counter = itertools.count()
    n_cases = len(runner.cases)
    t0 = time.monotonic()
    t_warm = t0 + max(0.0, warmup)
    t_end = t_warm + max(0.0, duration)
    counted: list = []
    warm: list = []
    started = [0]
    stopped_early = [False]

    async def worker() -> None:
        while True:
            now = time.monotonic()
            if now >= t_end:
                return
            measured = now >= t_warm
            if measured:
                if max_sessions is not None and started[0] >= max_sessions:
                    stopped_early[0] = True
                    return
            index = next(counter)
            if once and index >= n_cases:
                stopped_early[0] = True
                return
            if measured:
                started[0] += 1
            record = await runner.session(index % n_cases)
            (counted if measured else warm).append(record)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    window_end = min(t_end, time.monotonic()) if stopped_early[0] else t_end
    return _statistics(runner, counted, warm, t_warm, window_end, concurrency)


def _percentile(ordered: list, fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _statistics(runner: _Runner, counted: list, warm: list, t_warm: float, window_end: float,
                concurrency: int) -> LoadStats:
    stats = LoadStats(concurrency=concurrency, warmup_sessions=len(warm), records=counted)
    stats.sessions = len(counted)
    stats.window_s = max(0.0, window_end - t_warm)
    errors: Counter = Counter()
    results: Counter = Counter()
    for record in counted:
        if not record.ok:
            errors[_error_kind(record.error)] += 1
            continue
        stats.ok += 1
        case = runner.cases[record.case_index].case
        got = record.result or ""
        if not runner.check:
            results[got] += 1
            continue
        if "@" in got:  # the milter ended the transaction before end of message
            action, _, stage = got.partition("@")
            results[got] += 1
            if stage in ("mail", "rcpt") and action in _REFUSALS:
                stats.rejected += 1
                stats.unchecked += 1
            else:
                stats.mismatches.append((case, got))
            continue
        if got == "missing":
            results[got] += 1
            stats.mismatches.append((case, "missing"))
            continue
        mailfrom, _, helo = got.partition("|")
        helo = None if helo == "None" else helo
        if helo is not None and helo != case.expected_helo:
            stats.helo_mismatches += 1
        if mailfrom == "None":
            results["helo-only"] += 1
            stats.unchecked += 1
            continue
        results[mailfrom] += 1
        stats.checked += 1
        if mailfrom != case.expected_mailfrom:
            stats.mismatches.append((case, mailfrom))
    stats.errors = sum(errors.values())
    stats.error_kinds = dict(errors.most_common())
    stats.results = dict(results.most_common())
    latencies = sorted(record.ms for record in counted)
    if latencies:
        stats.p50_ms = _percentile(latencies, 0.50)
        stats.p90_ms = _percentile(latencies, 0.90)
        stats.p99_ms = _percentile(latencies, 0.99)
        stats.max_ms = latencies[-1]
        stats.mean_ms = sum(latencies) / len(latencies)
    completed = sum(1 for record in itertools.chain(warm, counted)
                    if record.ok and t_warm <= record.end <= window_end)
    stats.msgs_per_s = completed / stats.window_s if stats.window_s > 0 else 0.0
    if runner.negotiations:
        stats.negotiated = next(iter(runner.negotiations.values()))
    return stats


def _error_kind(text: Optional[str]) -> str:
    text = (text or "unknown error")[:120]
    return text


# ------------------------------------------------------------------------------------ CLI

def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.zones import World

    parser = argparse.ArgumentParser(prog="python -m bench.loadclient",
                                     description="Drive a milter like Postfix with the cases of a benchmark world.")
    parser.add_argument("--addr", required=True, help="inet:PORT@127.0.0.1, inet6:PORT@[::1] or unix:/path")
    parser.add_argument("--world", required=True, help="world JSON written by bench.zones")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the measuring window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of uncounted sessions first")
    parser.add_argument("--max-sessions", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=30.0, help="limit for each read, seconds")
    parser.add_argument("--no-check", action="store_true", help="do not compare SPF results")
    parser.add_argument("--nodelay", action="store_true",
                        help="set TCP_NODELAY on inet connections (Postfix does not)")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
    args = parser.parse_args(argv)
    world = World.load(args.world)
    stats = asyncio.run(run_load(args.addr, world.cases, concurrency=args.concurrency, duration=args.seconds,
                                 warmup=args.warmup, max_sessions=args.max_sessions, check=not args.no_check,
                                 timeout=args.timeout, nodelay=args.nodelay))
    if args.json:
        print(json.dumps(stats.to_dict()))
    else:
        print(stats.summary())
    return 1 if stats.errors or stats.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
