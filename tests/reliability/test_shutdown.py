"""SIGTERM and SIGHUP while MTA clients are in the middle of their sessions.

CLIENTS threads play an MTA's milter clients, each running one whole SMTP transaction after
another (bench/zones.py's DNS world, so every answer is checked against the sender domain's
expected SPF result).  After a little free-running load every client stops at some point
inside its next session (after the negotiation, after connect, after MAIL, ... before end of
message) and waits there; once all of them do, the main process gets the signal and the clients
go on: half of them at once (their next command races with the start of the drain), half after
a pause of up to 1 s (a slow MTA client).  Then they keep starting new sessions until told to stop.

SIGTERM: every session that was in flight at the signal ends with the right answer; attempts
made once the drain has started (the worker logs "stopping: waiting for ...") are refused or
reset, never served and never left hanging; the process exits 0, within the drain time.

SIGHUP (reload, authserv_id changed in the file): nothing is refused or lost; the sessions in
flight finish on the old configuration; sessions started after the old worker exited get the new one.
"""
from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import authres
import pytest

from bench.zones import generate
from spfmilter.server import DRAIN_TIMEOUT
from tests.reliability.figures import record
from tests.support.milterclient import (
    MilterClient,
    MilterClosed,
    MilterError,
    MilterTimeout,
)
from tests.support.procs import children
from tests.support.sessions import PASSED_ON

CLIENTS = 16
WARMUP_SESSIONS = 10 * CLIENTS  # free-running sessions before the clients stop mid-session
MAX_PAUSE = 1.0
CLIENT_TIMEOUT = 10.0  # > libmilter's listener poll (a connection queued on a dropped listener is reset by then)
REFUSED_BACKOFF = 0.02  # an MTA whose milter connection failed moves on; don't spin on a dead socket
OLD_ID, NEW_ID = "mx.test", "mx2.test"


@pytest.fixture(scope="module")
def world(dns_server):
    world = generate(n_domains=60, n_helos=40, seed=5)
    world.apply(dns_server)
    return world


def _wait(condition, timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None and not condition():
            raise AssertionError(f"milter exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def spf_header(mods: list) -> tuple:
    """(authserv-id, smtp.mailfrom result) of the one Authentication-Results header we got."""
    values = [m[3] for m in mods if m[0] == "insheader" and m[2].lower() == "authentication-results"]
    values += [m[2] for m in mods if m[0] == "addheader" and m[1].lower() == "authentication-results"]
    if len(values) != 1:
        return None, f"{len(values)} A-R headers"
    parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + values[0].replace("\n", ""))
    for result in parsed.results:
        if result.method == "spf" and any(p.type == "smtp" and p.name == "mailfrom" for p in result.properties):
            return parsed.authserv_id, str(result.result)
    return parsed.authserv_id, "no mailfrom result"


@dataclass
class Attempt:
    case: object
    client: int
    started: float  # monotonic, before connecting
    negotiated: float | None = None
    ended: float | None = None
    outcome: str = ""  # "ok", "wrong", "refused", "reset", "timeout", "broken"
    detail: str = ""
    authserv_id: str | None = None
    held: bool = False


@dataclass
class Load:
    """The clients, their schedule and everything they saw."""

    milter: object
    cases: list
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    attempts: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    armed: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    held: int = 0
    counter: int = 0
    threads: list = field(default_factory=list)

    def start(self) -> None:
        for index in range(CLIENTS):
            # where in its session this client stops, and whether it pauses after the signal
            hold_after = self.rng.randrange(-1, 8)  # -1: right after the negotiation
            pause = self.rng.uniform(0.3, MAX_PAUSE) if index % 2 else 0.0
            thread = threading.Thread(target=self._client, args=(index, hold_after, pause), daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        self.release.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT + 5)
            assert not thread.is_alive(), "a client thread hung"

    def _next_case(self):
        with self.lock:
            self.counter += 1
            return self.cases[self.counter % len(self.cases)]

    def _client(self, index: int, hold_after: int, pause: float) -> None:
        holding = False
        while not self.stop.is_set():
            if self.armed.is_set() and not holding and not self.release.is_set():
                holding = True
            attempt = Attempt(self._next_case(), index, time.monotonic(), held=holding)
            with self.lock:
                self.attempts.append(attempt)
            self._session(attempt, hold_after if holding else None, pause)
            if holding:
                holding = False
                hold_after = None  # once per client
            if attempt.outcome in ("refused", "reset"):
                time.sleep(REFUSED_BACKOFF)

    def _hold(self, pause: float) -> None:
        with self.lock:
            self.held += 1
        self.release.wait()
        if pause:
            time.sleep(pause)  # the slow MTA client under test, not a readiness wait

    def _session(self, attempt: Attempt, hold_after: int | None, pause: float) -> None:
        case = attempt.case
        ip = case.client_ip
        qid = f"Q{id(attempt) & 0xFFFFFF:06X}"
        client = MilterClient(self.milter.addr, timeout=CLIENT_TIMEOUT)
        try:
            client.open()
        except MilterTimeout as exc:
            attempt.outcome, attempt.detail = "timeout", str(exc)
            attempt.ended = time.monotonic()
            client.close()
            return
        except MilterClosed as exc:
            attempt.outcome, attempt.detail = "reset", str(exc)
            attempt.ended = time.monotonic()
            return
        except MilterError as exc:
            cause = exc.__cause__
            refused = isinstance(cause, (ConnectionRefusedError, FileNotFoundError, ConnectionResetError))
            attempt.outcome, attempt.detail = ("refused" if refused else "broken"), str(exc)
            attempt.ended = time.monotonic()
            client.close()
            return
        attempt.negotiated = time.monotonic()
        steps = [
            lambda: client.connect(f"[{ip}]", ip, port=40000 + attempt.client, family="6" if ":" in ip else "4",
                                   macros={"j": "mx.test", "{client_addr}": ip}),
            lambda: client.helo(case.helo),
            lambda: client.mail(f"<{case.sender}>", macros={"i": qid, "{mail_addr}": case.sender}),
            lambda: client.rcpt("<user@mx.test>"),
            lambda: client.data(macros={"i": qid}),
            lambda: client.header("From", f"<{case.sender}>"),
            lambda: client.header("Subject", "shutdown test"),
            lambda: client.eoh(),
        ]
        try:
            if hold_after == -1:
                self._hold(pause)
            for number, step in enumerate(steps):
                reply = step()
                if reply.action not in PASSED_ON:
                    raise MilterError(f"unexpected reply {reply} at step {number}")
                if hold_after == number:
                    self._hold(pause)
            reply, mods = client.eom(macros={"i": qid})
            if reply.action not in ("continue", "accept"):
                raise MilterError(f"unexpected end-of-message reply {reply}")
            attempt.authserv_id, result = spf_header(mods)
            client.quit()
            attempt.ended = time.monotonic()
            if result == case.expected_mailfrom:
                attempt.outcome = "ok"
            else:
                attempt.outcome, attempt.detail = "wrong", f"got {result}, expected {case.expected_mailfrom}"
        except MilterError as exc:  # the milter accepted this session and then failed it
            attempt.ended = time.monotonic()
            attempt.outcome, attempt.detail = "broken", f"{type(exc).__name__}: {exc}"
        finally:
            client.close()

    def hold_everyone(self) -> None:
        """Free-running load first, then every client stops inside its next session."""
        _wait(lambda: sum(a.outcome == "ok" for a in list(self.attempts)) >= WARMUP_SESSIONS, 30,
              "the warm-up sessions", self.milter.proc)
        self.armed.set()
        _wait(lambda: self.held == CLIENTS, 30, "every client to stop mid-session", self.milter.proc)


def _in_flight(attempts: list, moment: float) -> list:
    return [a for a in attempts if a.negotiated is not None and a.negotiated < moment
            and (a.ended is None or a.ended > moment)]


def _describe(attempts: list) -> list:
    return [(a.client, a.outcome, a.detail, a.case.sender) for a in attempts]


def test_sigterm_under_load_finishes_sessions_in_flight_and_refuses_new_ones(start_milter, world):
    milter = start_milter("trusted_networks =", fresh=True)
    [worker] = children(milter.proc.pid)
    load = Load(milter, world.cases)
    load.start()
    try:
        load.hold_everyone()
        signalled = time.monotonic()
        milter.proc.send_signal(signal.SIGTERM)
        load.release.set()
        # once the worker says so, it has stopped accepting: from here on nothing may be served
        # ("stopped after" alone if every session happened to end before the drain began)
        markers = [f"spfmilter[{worker}]: INFO: stopping: waiting for", f"spfmilter[{worker}]: INFO: stopped after"]
        _wait(lambda: any(m in milter.logs() for m in markers), 20, "the worker to start draining")
        draining = time.monotonic()
        try:
            exit_code = milter.proc.wait(DRAIN_TIMEOUT + 10)
        except Exception:  # noqa: BLE001 - report below
            exit_code = None
        exited = time.monotonic()
    finally:
        load.finish()
    attempts = list(load.attempts)
    in_flight = _in_flight(attempts, signalled)
    completed = [a for a in in_flight if a.outcome == "ok"]
    after_drain = [a for a in attempts if a.started > draining]
    refused_after = [a for a in after_drain if a.outcome in ("refused", "reset")]
    raced = [a for a in attempts if signalled <= a.started <= draining]
    log = milter.full_log()
    seconds_to_exit = exited - signalled
    record("shutdown", in_flight=len(in_flight), completed=len(completed), lost=len(in_flight) - len(completed),
           refused_after=len(refused_after), exit_code=exit_code, seconds_to_exit=round(seconds_to_exit, 2))
    print(f"shutdown: in_flight={len(in_flight)} completed={len(completed)} refused_after={len(refused_after)} "
          f"of {len(after_drain)} attempts after the drain started {dict(Counter(a.outcome for a in after_drain))}; between signal and drain: "
          f"{[a.outcome for a in raced]}; exit {exit_code} after {seconds_to_exit:.2f}s; "
          f"{len(attempts)} attempts in all; slowest refusal "
          f"{max((a.ended - a.started for a in refused_after), default=0):.2f}s")
    assert exit_code == 0, log[-3000:]
    assert seconds_to_exit < DRAIN_TIMEOUT
    # every client was stopped inside a session the milter had accepted, so all are in flight
    assert len(in_flight) == CLIENTS and all(a.held for a in in_flight)
    lost = [a for a in in_flight if a.outcome != "ok"]
    assert lost == [], _describe(lost)
    # attempts after the drain started: refused or reset, none served and none left hanging
    assert [a for a in after_drain if a.outcome not in ("refused", "reset")] == [], \
        _describe([a for a in after_drain if a.outcome not in ("refused", "reset")])
    assert refused_after, "no connection was attempted after the drain started"
    # a session that raced the drain was either refused or served right: never half-served
    assert [a for a in raced if a.outcome not in ("ok", "refused", "reset")] == [], _describe(raced)
    # and every session before the signal was served right
    before = [a for a in attempts if a.ended is not None and a.ended < signalled]
    assert before and all(a.outcome == "ok" for a in before), _describe([a for a in before if a.outcome != "ok"])
    assert "Traceback" not in log
    assert "stopped after" in log and "all workers stopped" in log
    assert not os.path.exists(milter.addr)


def test_sighup_reload_under_load_loses_nothing(start_milter, world):
    milter = start_milter("trusted_networks =", fresh=True)
    [old_worker] = children(milter.proc.pid)
    load = Load(milter, world.cases)
    load.start()
    try:
        load.hold_everyone()
        text = milter.config_path.read_text()
        assert f"authserv_id = {OLD_ID}\n" in text
        milter.config_path.write_text(text.replace(f"authserv_id = {OLD_ID}\n", f"authserv_id = {NEW_ID}\n"))
        signalled = time.monotonic()
        milter.proc.send_signal(signal.SIGHUP)
        load.release.set()
        _wait(lambda: not os.path.exists(f"/proc/{old_worker}") or _zombie(old_worker), 30,
              "the old worker to finish its sessions", milter.proc)
        old_gone = time.monotonic()
        # then a good number of sessions, all started after the old worker was gone
        _wait(lambda: sum(a.started > old_gone and a.outcome == "ok" for a in list(load.attempts)) >= 4 * CLIENTS,
              30, "sessions on the new configuration", milter.proc)
    finally:
        load.finish()
    attempts = list(load.attempts)
    in_flight = _in_flight(attempts, signalled)
    completed = [a for a in in_flight if a.outcome == "ok" and a.authserv_id == OLD_ID]
    after = [a for a in attempts if a.started > old_gone]
    new_config = [a for a in after if a.outcome == "ok" and a.authserv_id == NEW_ID]
    failed = [a for a in attempts if a.outcome != "ok"]
    workers = children(milter.proc.pid)
    record("reload", in_flight=len(in_flight), completed=len(completed), lost=len(in_flight) - len(completed),
           sessions=len(attempts), failed=len(failed), after_reload=len(after), new_config=len(new_config),
           seconds_to_old_worker_exit=round(old_gone - signalled, 2))
    print(f"reload: in_flight={len(in_flight)} completed_on_old_config={len(completed)} "
          f"after={len(after)} on_new_config={len(new_config)} failed={len(failed)} of {len(attempts)}; "
          f"old worker gone after {old_gone - signalled:.2f}s")
    assert len(in_flight) == CLIENTS and all(a.held for a in in_flight)
    # nothing is refused or lost while the workers change over
    assert failed == [], _describe(failed)
    assert len(completed) == len(in_flight), _describe([a for a in in_flight if a not in completed])
    assert len(new_config) == len(after) > 0, [(a.client, a.authserv_id) for a in after if a not in new_config]
    assert milter.proc.poll() is None
    assert len(workers) == 1 and workers[0] != old_worker
    log = milter.logs()
    assert "Traceback" not in log
    assert f"reloaded {milter.config_path}" in log
    assert re.search(rf"spfmilter\[{old_worker}\]: INFO: stopped after", log)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
