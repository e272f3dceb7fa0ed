"""A seeded fuzz run of generated milter sessions through the real socket.

``size(500, 10000)`` sessions (``SPFMILTER_LONG=1`` for the long run), 8 at a time,
spread over two milters: header-only on a unix socket (no-reply stages, skipped
RCPT/DATA/EOH) and enforce mode on 127.0.0.1 (every stage answered).  Each session
is generated from ``random.Random(f"{seed}/{index}")`` so any one of them can be
replayed alone; the seed is printed and can be set with ``SPFMILTER_FUZZ_SEED``.

A session: a random client (IPv4, IPv6, IPv4-mapped, unknown family, unix socket),
HELO (normal names from the test zones, or hostile text: controls, CR/LF, 8-bit,
UTF-8, 10 kB), 1-3 transactions each with a sender (null, from the test zones with
a known result, source-routed, garbage), 0-5 recipients, headers (forged
Authentication-Results / Received-SPF in odd cases and foldings), macros (missing,
garbage, authenticated), and sometimes a hang-up, a half packet or an abort at a
random stage.

Checked per session: it ends as planned within 10 s (else it is counted "hung");
every header we add parses (authres) and carries nothing but folding whitespace
as control characters; the A-R results are valid SPF results, and the expected
ones where the zones determine them; refusals carry the RFC 7372 codes; forged
copies of our headers are removed and others are not.  At the end the milters are
alive, their logs have no traceback, a normal session is right, and SIGTERM stops
them at once (no session left counted).

HELO names may be any bytes (pymilter cannot decode non-UTF-8 ones: the milter goes on
without the name, and logs pymilter's one-line complaint) and envelope senders may be
longer than the 256-character cut.  Client host names stay valid UTF-8 here: without a
decodable connect the milter answers per on_error, which test_protocol_abuse.py covers.
Header names are always valid UTF-8 (an MTA takes a line with an 8-bit "name" for the
body).

Every MAIL sends its macro packet (as Postfix does, even when empty): libmilter keeps
the last MAIL's macros when none come, so an {auth_authen} would leak into the next
transaction of a client that sent none.
"""
from __future__ import annotations

import ipaddress
import os
import random
import re
import signal
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import authres

from tests.reliability.figures import record, size
from tests.support.milterclient import (
    SMFIC_HEADER,
    SMFIC_MAIL,
    SMFIC_RCPT,
    MilterClient,
    MilterError,
    MilterTimeout,
    packet,
)
from tests.support.sessions import ar_results, run

SESSIONS = size(500, 10000)
RAW_HELO = True  # non-UTF-8 HELO names and senders over 256 characters (bugs once, now handled)
CONCURRENCY = 8
REPLY_TIMEOUT = 10.0
SPF_RESULTS = {"pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"}
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f\u0080-\u009f\u2028\u2029\ud800-\udfff]")
REFUSALS = {(550, "5.7.23"), (550, "5.7.24"), (451, "4.7.24")}

PASS_NETS = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8:7::/48")]
CLIENTS = [
    ("4", "192.0.2.7"), ("4", "192.0.2.200"), ("4", "198.51.100.1"), ("4", "203.0.113.9"),
    ("6", "2001:db8:7::25"), ("6", "2001:db8:8::1"), ("6", "::ffff:192.0.2.7"), ("6", "2001:db8:7:0:0:0:0:1"),
    ("U", None), ("L", "/var/run/smtpd.sock"),
]
NORMAL_HELOS = ["helo.example", "badhelo.example", "softfail.example", "permerror.example", "temperror.example",
                "[192.0.2.7]", "[IPv6:2001:db8::1]", "localhost", "HELO.EXAMPLE", "helo.example.", ""]


def expected_mailfrom(domain: str, ip: str | None) -> str:
    """The MAIL FROM result the test zones give ``domain`` for client ``ip``."""
    if ip is None:
        return "none"
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    domain = domain.lower().rstrip(".")
    if domain == "pass.example":
        return "pass" if any(address in net for net in PASS_NETS if net.version == address.version) else "fail"
    if domain == "fail.example":
        return "pass" if str(address) == "198.51.100.1" else "fail"
    return {"softfail.example": "softfail", "neutral.example": "neutral", "none.example": "none",
            "nxdomain.example": "none", "permerror.example": "permerror",
            "temperror.example": "temperror"}[domain]


KNOWN_DOMAINS = ["pass.example", "fail.example", "softfail.example", "neutral.example", "none.example",
                 "nxdomain.example", "permerror.example", "temperror.example", "PASS.Example", "fail.example."]


# ---------------------------------------------------------------------------- generator


def hostile(rng: random.Random, *, raw_8bit: bool, forbid: str = "", length: int | None = None) -> bytes:
    """Hostile text: letters, digits, dots, controls, CR/LF, punctuation, UTF-8, raw 8-bit bytes."""
    if length is None:
        length = rng.choice([0, 1, 3, 8, 20, 64, 200, 1000]) if rng.random() > 0.02 else 10000
    out = bytearray()
    while len(out) < length:
        r = rng.random()
        if r < 0.45:
            piece = rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789..--").encode()
        elif r < 0.55:
            piece = bytes([rng.choice([1, 7, 8, 9, 10, 11, 12, 13, 27, 31, 127])])
        elif r < 0.62:
            piece = rng.choice([b"\r\n", b"\n", b"\r", b"\r\n\t", b"\r\nX-Injected: 1\r\n"])
        elif r < 0.75:
            piece = rng.choice(' ;()"\\<>[]:,=%{}!#$&*+/?^`|~\'').encode()
        elif r < 0.88 or not raw_8bit:
            piece = rng.choice(["\u00e9", "\u00fc\u00f1", "\u4e2d\u6587", "\U0001f600", "\u2028", "\u0085",
                                "\u200b", "\ufeff", "\u202e"]).encode()
        else:
            piece = bytes([rng.randint(0x80, 0xFF)])
        out += bytes(b for b in piece if chr(b) not in forbid)
    return bytes(out)


def _utf8(data: bytes) -> bytes:
    """Cut to whole UTF-8 characters (the generator only ever joins whole ones)."""
    return data.decode("utf-8", "ignore").encode("utf-8")


@dataclass
class Transaction:
    sender: bytes
    mail_args: list
    expected: str | None  # MAIL FROM result, when the zones determine it
    rcpts: list
    headers: list  # (name, value, forged: True / False / None = either)
    mail_macros: dict
    eom_macros: dict
    authenticated: bool
    stop: tuple | None  # (how, stage): ("close" | "half" | "abort", stage) or None


@dataclass
class Plan:
    index: int
    target: str  # "unix" (header-only) or "inet" (enforce)
    family: str
    ip: str | None
    hostname: bytes
    helo: bytes
    transactions: list
    stop: tuple | None  # hang-up before the transactions: ("close", "negotiate" | "connect" | "helo")


def forged_header(rng: random.Random) -> tuple:
    fold = rng.choice(["", "\r\n\t", "\n ", "\r\n  "])
    name_ar = rng.choice(["Authentication-Results", "authentication-results", "AUTHENTICATION-RESULTS",
                          "Authentication-results"])
    name_spf = rng.choice(["Received-SPF", "received-spf", "RECEIVED-SPF"])
    choices = [
        (name_ar, f"mx.test;{fold}spf=pass smtp.mailfrom=a@fail.example", True),
        (name_ar, f"{fold}MX.TEST.; spf=pass", True),
        (name_ar, f"(comment){fold} mx.test ; dkim=pass", True),
        (name_ar, f'"mx.test" 1;{fold}spf=pass', True),
        (name_ar, f"other.example;{fold}spf=pass smtp.mailfrom=a@fail.example", False),
        (name_ar, f"mx.test.evil.example; spf=pass{fold}", False),
        (name_ar, "", False),
        (name_ar, "; ;; (((", None),
        (name_spf, f"pass (mx.test: forged){fold} receiver=mx.test; client-ip=192.0.2.7", True),
        (name_spf, f"softfail receiver = \"MX.test\" ;{fold}identity=mailfrom", True),
        (name_spf, f"pass (other){fold} receiver=other.example", False),
        (name_spf, 'pass helo="x receiver=mx.test"', False),
    ]
    return rng.choice(choices)


def gen_transaction(rng: random.Random, ip: str | None, family: str, inet: bool) -> Transaction:
    r = rng.random()
    expected = None
    if r < 0.1:
        sender = b"<>"
    elif r < 0.75:
        domain = rng.choice(KNOWN_DOMAINS)
        local = hostile(rng, raw_8bit=True, forbid="@<>\0",
                        length=rng.choice([1, 5, 30, 200] + ([300] if RAW_HELO else [])))
        local = local.strip(b" \t\r\n") or b"x"
        if local.startswith(b"@"):
            local = b"x" + local
        route = b"@relay1,@relay2:" if rng.random() < 0.1 else b""
        sender = b"<" + route + local + b"@" + domain.encode() + b">"
        expected = None if family == "L" else expected_mailfrom(domain, ip)
    else:
        sender = hostile(rng, raw_8bit=True, forbid="\0")
    mail_args = [rng.choice([b"SIZE=1000", b"BODY=8BITMIME", b"SMTPUTF8", b"", b"RET=HDRS", hostile(
        rng, raw_8bit=True, forbid="\0", length=20)]) for _ in range(rng.choice([0, 0, 1, 3]))]
    rcpts = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3, 5])):
        rcpts.append(rng.choice([b"<b@mx.test>", b"<c@mx.test>", b"<postmaster@mx.test>", b"<Abuse@mx.test>",
                                 b"<" + hostile(rng, raw_8bit=True, forbid="\0", length=30) + b"@mx.test>",
                                 hostile(rng, raw_8bit=True, forbid="\0")]))
    if rng.random() < 0.05:
        rcpts = []  # never seen by the milter: the MTA refused them all
    headers = []
    for _ in range(rng.choice([0, 1, 2, 4, 8])):
        if rng.random() < 0.5:
            headers.append(forged_header(rng))
        else:
            name = _utf8(hostile(rng, raw_8bit=False, forbid="\0: \t\r\n", length=rng.choice([1, 10, 40]))) or b"X"
            headers.append((name, hostile(rng, raw_8bit=True, forbid="\0"), None))
    authenticated = rng.random() < 0.05
    mail_macros = {"{mail_addr}": "x"}  # a macro packet for every MAIL, as from Postfix
    if authenticated:
        mail_macros["{auth_authen}"] = rng.choice(["alice", "b\u00f6b", "x" * 300])
    if rng.random() < 0.3:
        mail_macros[rng.choice(["i", "{auth_type}", "{mail_addr}", "{unknown}", "\u00e9"])] = hostile(
            rng, raw_8bit=True, forbid="\0", length=rng.choice([0, 10, 2000]))
    eom_macros = {} if rng.random() < 0.3 else {"i": rng.choice([b"4XyZ", hostile(rng, raw_8bit=True, forbid="\0",
                                                                                  length=40)])}
    stop = None
    if rng.random() < 0.25:
        stages = ["mail", "rcpt", "data", "header", "eoh"]
        how = rng.choice(["close", "half", "abort"])
        stop = (how, rng.choice(stages))
    return Transaction(sender, mail_args, expected, rcpts, headers, mail_macros, eom_macros,
                       authenticated, stop)


def gen_plan(seed: int, index: int) -> Plan:
    rng = random.Random(f"{seed}/{index}")
    target = rng.choice(["unix", "inet"])
    family, ip = rng.choice(CLIENTS)
    if rng.random() < 0.5:
        hostname = ("[" + ip + "]" if ip else "unknown").encode()
    else:
        hostname = _utf8(hostile(rng, raw_8bit=False, forbid="\0"))
    if rng.random() < 0.5:
        helo = rng.choice(NORMAL_HELOS).encode()
    else:
        helo = hostile(rng, raw_8bit=RAW_HELO, forbid="\0")
    spf_ip = None if family in ("U", "L") else ip
    transactions = [gen_transaction(rng, spf_ip, family, target == "inet")
                    for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    stop = ("close", rng.choice(["negotiate", "connect", "helo"])) if rng.random() < 0.05 else None
    return Plan(index, target, family, ip, hostname, helo, transactions, stop)


# ---------------------------------------------------------------------------- checks


@dataclass
class Tally:
    sessions: int = 0
    transactions: int = 0
    completed: int = 0
    headers_checked: int = 0
    bad_headers: int = 0
    wrong_results: int = 0
    hung: int = 0
    errors: int = 0
    problems: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def problem(self, plan: Plan, kind: str, detail: str) -> None:
        with self.lock:
            if len(self.problems) < 30:
                self.problems.append(f"session {plan.index} ({plan.target}) {kind}: {detail[:1500]}")


def header_problem(name: str, value: str) -> str | None:
    if CONTROL.search(value):
        return f"control character in {name}: {value!r}"
    if "\n" in value.replace("\n ", "").replace("\n\t", ""):
        return f"line break without folding in {name}: {value!r}"
    if not value.isascii():
        return f"non-ASCII in {name}: {value!r}"
    if any(len(line.encode()) >= 998 for line in value.split("\n")):
        return f"line too long in {name}"
    unfolded = value.replace("\n", "")
    if name == "Authentication-Results":
        try:
            parsed = authres.AuthenticationResultsHeader.parse(f"{name}: {unfolded}")
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad header
            return f"authres cannot parse ({exc!r}): {unfolded!r}"
        if parsed.authserv_id != "mx.test" or [r.method for r in parsed.results] != ["spf", "spf"]:
            return f"unexpected A-R {unfolded!r}"
        if not {r.result for r in parsed.results} <= SPF_RESULTS:
            return f"invalid result in {unfolded!r}"
    elif name == "Received-SPF":
        if unfolded.split(" ", 1)[0] not in SPF_RESULTS:
            return f"invalid Received-SPF {unfolded!r}"
    else:
        return f"unexpected header {name}"
    return None


def check_eom(plan: Plan, tx: Transaction, sent_headers: list, reply, mods, tally: Tally) -> None:
    if reply.action != "continue":
        tally.problem(plan, "eom", f"reply {reply}")
        with tally.lock:
            tally.wrong_results += 1
        return
    added = [(m[2], m[3]) if m[0] == "insheader" else (m[1], m[2]) for m in mods
             if m[0] in ("insheader", "addheader")]
    deleted = [(m[2].lower(), m[1]) for m in mods if m[0] == "chgheader"]
    bad = 0
    for name, value in added:
        problem = header_problem(name, value)
        if problem:
            bad += 1
            tally.problem(plan, "bad header", problem)
    # forged copies: per-name (case-insensitive) 1-based indexes
    counts: dict = {}
    must, must_not = set(), set()
    for name, value, forged in sent_headers:
        key = name.lower() if isinstance(name, str) else name.decode("utf-8").lower()
        if key in ("authentication-results", "received-spf"):
            counts[key] = counts.get(key, 0) + 1
            if forged is True:
                must.add((key, counts[key]))
            elif forged is False:
                must_not.add((key, counts[key]))
    wrong = []
    # SASL and local clients are not checked (nothing added) but still lose forged copies
    trusted = tx.authenticated or plan.family == "L"
    if any(m[0] == "chgheader" and m[3] != "" for m in mods):
        wrong.append(f"a header changed, not deleted: {mods}")
    if not must <= set(deleted) or set(deleted) & must_not:
        wrong.append(f"deleted {sorted(deleted)}, forged {sorted(must)}, genuine {sorted(must_not)}")
    if trusted:
        if added:
            wrong.append(f"unchecked client got headers added {mods}")
    else:
        # each is inserted at the top, so they arrive bottom-up
        if [n for n, _ in added] != ["Received-SPF", "Received-SPF", "Authentication-Results"]:
            wrong.append(f"added {[n for n, _ in added]}")
        if tx.expected is not None and not bad and added:
            try:
                got = ar_results(mods)["mailfrom"][0]
            except Exception as exc:  # noqa: BLE001
                got = repr(exc)
            if got != tx.expected:
                wrong.append(f"mailfrom {got}, expected {tx.expected} for {tx.sender[:80]!r} from {plan.ip}")
    with tally.lock:
        tally.headers_checked += len(added)
        tally.bad_headers += bad
        tally.completed += 1
        if wrong:
            tally.wrong_results += 1
    for text in wrong:
        tally.problem(plan, "wrong", text)


# ---------------------------------------------------------------------------- a session


def run_session(plan: Plan, milters: dict, tally: Tally) -> None:
    milter = milters[plan.target]
    enforce = plan.target == "inet"
    client = MilterClient(milter.addr, timeout=REPLY_TIMEOUT)
    stage = "negotiate"
    try:
        client.open()
        if plan.stop == ("close", "negotiate"):
            return
        stage = "connect"
        if plan.family == "U":
            client.connect(plan.hostname, family="U", macros={"j": "mx.test"})
        else:
            client.connect(plan.hostname, plan.ip, port=40000, family=plan.family,
                           macros={"j": "mx.test"} if plan.index % 3 else None)
        if plan.stop == ("close", "connect"):
            return
        stage = "helo"
        reply = client.helo(plan.helo)
        if not reply.is_continue:
            with tally.lock:
                tally.wrong_results += 1
            tally.problem(plan, "helo", f"refused: {reply}")
            return
        if plan.stop == ("close", "helo"):
            return
        for tx in plan.transactions:
            with tally.lock:
                tally.transactions += 1
            stage = "mail"
            if not run_transaction(plan, tx, client, enforce, tally):
                return  # the plan ended the session here
    except MilterTimeout as exc:
        with tally.lock:
            tally.hung += 1
        tally.problem(plan, "hung", f"at {stage}: {exc}")
    except (MilterError, OSError) as exc:
        with tally.lock:
            tally.errors += 1
        tally.problem(plan, "error", f"at {stage}: {exc!r}")
    except Exception:  # noqa: BLE001 - a bug in this test: report it as such
        with tally.lock:
            tally.errors += 1
        tally.problem(plan, "test error", traceback.format_exc())
    else:
        client.quit()
    finally:
        client.close()
        with tally.lock:
            tally.sessions += 1


def run_transaction(plan: Plan, tx: Transaction, client: MilterClient, enforce: bool, tally: Tally) -> bool:
    """One transaction; False if the plan hung up during it."""
    how, at = tx.stop or (None, None)

    def stop_here(stage: str, half: bytes) -> bool | None:
        """None: go on; True: aborted, next transaction; False: hung up."""
        if at != stage:
            return None
        if how == "abort":
            client.abort()
            return True
        if how == "half":
            client.raw_write(half[: max(1, len(half) // 2)])
        client.close()
        return False

    mail_packet = packet(SMFIC_MAIL, tx.sender + b"\0" + b"".join(a + b"\0" for a in tx.mail_args))
    if at == "mail" and how == "half":
        return bool(stop_here("mail", mail_packet))
    reply = client.mail(tx.sender, *tx.mail_args, macros=tx.mail_macros)
    if not reply.is_continue:
        tally.problem(plan, "wrong", f"mail reply {reply}")
        with tally.lock:
            tally.wrong_results += 1
    if at == "mail" and how != "half":
        return bool(stop_here("mail", b""))
    accepted = 0
    for rcpt in tx.rcpts:
        reply = client.rcpt(rcpt)
        if reply.is_continue:
            accepted += 1
            if enforce and tx.expected == "fail" and not tx.authenticated \
                    and not rcpt.lower().startswith((b"<postmaster@", b"<abuse@")):
                tally.problem(plan, "wrong", f"{rcpt!r} not refused for a fail sender {tx.sender[:80]!r}")
                with tally.lock:
                    tally.wrong_results += 1
        elif reply.is_rejection:
            if (reply.code, reply.xcode) not in REFUSALS or not enforce:
                tally.problem(plan, "wrong", f"refusal {reply}")
                with tally.lock:
                    tally.wrong_results += 1
            if CONTROL.search(reply.text or "") or not (reply.text or "").isascii():
                tally.problem(plan, "bad reply", repr(reply.text))
                with tally.lock:
                    tally.bad_headers += 1
        else:
            tally.problem(plan, "wrong", f"rcpt reply {reply}")
            with tally.lock:
                tally.wrong_results += 1
    done = stop_here("rcpt", packet(SMFIC_RCPT, b"<b@mx.test>\0"))
    if done is not None:
        return done
    if not accepted:
        client.abort()  # no recipient left: the MTA ends the transaction
        return True
    client.data()
    done = stop_here("data", packet(SMFIC_HEADER, b"Subject\0x\0"))
    if done is not None:
        return done
    for name, value, _ in tx.headers:
        client.header(name, value)
    done = stop_here("header", packet(SMFIC_HEADER, b"Received-SPF\0pass receiver=mx.test\0"))
    if done is not None:
        return done
    client.eoh()
    done = stop_here("eoh", packet(b"E", b""))
    if done is not None:
        return done
    reply, mods = client.eom(macros=tx.eom_macros)
    check_eom(plan, tx, tx.headers, reply, mods, tally)
    return True


# ---------------------------------------------------------------------------- the run


def fuzz_seed() -> int:
    text = os.environ.get("SPFMILTER_FUZZ_SEED")
    return int(text) if text else int.from_bytes(os.urandom(4), "big")


def test_generated_sessions(start_milter, world, capsys):
    seed = fuzz_seed()
    with capsys.disabled():
        print(f"\nfuzz: seed {seed} (SPFMILTER_FUZZ_SEED={seed} replays it), {SESSIONS} sessions, "
              f"concurrency {CONCURRENCY}")
    milters = {
        "unix": start_milter("header_type = both", fresh=True),
        "inet": start_milter("header_type = both\nmode = enforce", inet=True, fresh=True),
    }
    tally = Tally()
    started = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(lambda i: run_session(gen_plan(seed, i), milters, tally), range(SESSIONS)))
    seconds = time.monotonic() - started

    # afterwards: alive, no traceback, a normal session is right, and SIGTERM stops at once
    crashed, after = [], []
    for name, milter in milters.items():
        if milter.proc.poll() is not None:
            crashed.append(f"{name} exited {milter.proc.returncode}")
            continue
        for domain, expected in (("fail.example", "fail"), ("pass.example", "pass")):
            replies, mods, _ = run(milter, sender=f"<a@{domain}>")
            if name == "unix":
                after.append((name, domain, ar_results(mods)["mailfrom"][0] == expected))
            else:  # enforce: fail refused at RCPT, pass gets headers
                ok = (replies["rcpt"][0].code == 550) if expected == "fail" else \
                    ar_results(mods)["mailfrom"][0] == "pass"
                after.append((name, domain, ok))
    traces = [name for name, m in milters.items()
              if any(re.search(r"Traceback|untrapped|Error:", line) and "pymilter: UnicodeDecodeError" not in line
                     for line in m.full_log().splitlines())]
    stop_times = {}
    for name, milter in milters.items():
        if milter.proc.poll() is None:
            t = time.monotonic()
            milter.proc.send_signal(signal.SIGTERM)
            try:
                milter.proc.wait(15)
            except Exception:  # noqa: BLE001
                milter.proc.kill()
                milter.proc.wait()
            stop_times[name] = (round(time.monotonic() - t, 2), milter.proc.returncode)

    record("fuzz", sessions=tally.sessions, transactions=tally.transactions, completed=tally.completed,
           crashes=int(bool(crashed)), hung=tally.hung, errors=tally.errors, bad_headers=tally.bad_headers,
           wrong_results=tally.wrong_results, headers_checked=tally.headers_checked, seed=seed,
           seconds=round(seconds, 2), concurrency=CONCURRENCY)
    with capsys.disabled():
        print(f"fuzz: {tally.sessions} sessions, {tally.transactions} transactions ({tally.completed} to "
              f"end of message), {tally.headers_checked} headers checked in {seconds:.1f}s; hung {tally.hung}, "
              f"errors {tally.errors}, bad headers {tally.bad_headers}, wrong {tally.wrong_results}; "
              f"stop {stop_times}")

    detail = "\n".join(tally.problems)
    assert not crashed, crashed
    assert tally.sessions == SESSIONS
    assert tally.hung == 0, detail
    assert tally.errors == 0, detail
    assert tally.bad_headers == 0, detail
    assert tally.wrong_results == 0, detail
    assert tally.headers_checked > SESSIONS  # the run really reached end of message, many times
    assert not traces, "\n".join(milters[name].full_log()[-5000:] for name in traces)
    assert all(ok for _, _, ok in after), after
    assert all(rc == 0 and t < 5.0 for t, rc in stop_times.values()), stop_times
