"""Security: forged headers, forged SRS bounces, privileges, the secrets file -- with figures.

* Forged Authentication-Results / Received-SPF claiming our host are removed in every
  generated variant (case, folding, position, number of copies); foreign ones stay.
* 10,000 forged or expired SRS bounce addresses, sent as RCPTs through the real milter
  socket, are all refused; genuine ones mixed in are accepted (so the check can fail).
* The daemon drops to its user after binding and cannot write its configuration or its
  SRS secrets; a secrets file others can read stops it from starting.
"""
from __future__ import annotations

import os
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from spfmilter.srs import DAY, SrsKeys, forward, timestamp
from tests.support.milterproc import launch_milter
from tests.reliability.figures import record
from tests.support import spellings
from tests.support.procs import children
from tests.support.sessions import CLIENT_IP, ar_results, run, write_secrets

ROOT = Path(__file__).resolve().parents[2]
SECRET = "security-test-secret-9876"
KEYS = SrsKeys((SECRET.encode(),))
SRS_DOMAIN = "srs.mx.test"
FORGERIES = 10_000


# ---------------------------------------------------------------- forged headers

def forged_variants(rng: random.Random) -> list[tuple[str, str, bool]]:
    """(name, value, forged?) header variants: ours claimed in many spellings, and foreign ones."""
    def case(text):
        return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)

    def fold(text):
        return text.replace(" ", rng.choice([" ", "\n\t", "\n ", "  \n\t "]), rng.randint(0, 3))

    out = []
    for _ in range(40):
        ours = rng.choice(["mx.test", "MX.TEST", "mx.test.", "Mx.Test"])
        out.append((case("Authentication-Results"),
                    fold(rng.choice([f"{ours}; spf=pass smtp.mailfrom=a@fail.example",
                                     f"(comment) {ours}; spf=pass smtp.mailfrom=a@fail.example",
                                     f"{ours} 1; dkim=pass header.d=fail.example",
                                     f"  {ours};\n\tspf=pass"])), True))
        out.append((case("Received-SPF"),
                    fold(rng.choice([f"pass (forged) receiver={ours}; client-ip=192.0.2.7",
                                     f"pass receiver = \"{ours}\" ; identity=mailfrom",
                                     f"Pass (x) client-ip=1.2.3.4;\n\treceiver={ours}"])), True))
        out.append((case("Authentication-Results"),
                    fold(rng.choice(["other.example; spf=pass", "mx.test.evil.example; spf=pass",
                                     "evil-mx.test; spf=pass"])), False))
        out.append((case("Received-SPF"), fold("pass (other) receiver=other.example; identity=helo"), False))
    return out


def test_forged_headers_are_removed_in_every_variant(start_milter, world):
    milter = start_milter()
    rng = random.Random(7208)
    variants = forged_variants(rng)
    messages = failures = 0
    for start in range(0, len(variants), 8):
        chunk = variants[start:start + 8]
        rng.shuffle(chunk)  # any position
        filler = [("Subject", "hello"), ("X-Other", "x")]
        headers = filler[:1] + [(n, v) for n, v, _ in chunk] + filler[1:]
        _, mods, _ = run(milter, sender="<x@fail.example>", headers=headers)
        messages += 1
        # expected deletions: per-name (case-insensitive) 1-based index of each forged copy
        counts, expected = {}, set()
        for name, _, forged in [(n, v, False) for n, v in filler[:1]] + chunk:
            key = name.lower()
            counts[key] = counts.get(key, 0) + 1
            if forged:
                expected.add((key, counts[key]))
        deleted = {(m[2].lower(), m[1]) for m in mods if m[0] == "chgheader" and m[3] == ""}
        if deleted != expected or ar_results(mods)["mailfrom"][0] != "fail":
            failures += 1
    forged_total = sum(1 for v in variants if v[2])
    record("forged_headers", variants=len(variants), forged=forged_total, foreign=len(variants) - forged_total,
           messages=messages, wrong=failures)
    assert failures == 0


def test_every_lenient_spelling_of_our_id_is_removed_and_foreign_ones_kept(start_milter, world):
    """The adversarial review's table (tests/support/spellings.py) through the socket: every
    spelling a lenient A-R parser reads as our authserv-id (mx.test here) is deleted, every
    foreign or near-miss id stays."""
    milter = start_milter()
    cases = ([("Authentication-Results", spellings.spell(t, "mx.test"), True) for t in spellings.HOSTILE]
             + [("Authentication-Results", spellings.spell(t, "mx.test"), False) for t in spellings.FOREIGN]
             + [("Received-SPF", spellings.spell(t, "mx.test"), True) for t in spellings.RECEIVER_HOSTILE]
             + [("Received-SPF", spellings.spell(t, "mx.test"), False) for t in spellings.RECEIVER_FOREIGN])
    wrong = []
    for name, value, forged in cases:
        _, mods, _ = run(milter, sender="<x@fail.example>", headers=[("Subject", "s"), (name, value)])
        deleted = [m for m in mods if m[0] == "chgheader" and m[3] == ""]
        if bool(deleted) is not forged or (forged and deleted[0][1:3] != (1, name)):
            wrong.append((name, value, forged, deleted))
    record("forged_spellings", hostile=sum(1 for c in cases if c[2]), foreign=sum(1 for c in cases if not c[2]),
           wrong=len(wrong))
    assert wrong == []


# ---------------------------------------------------------------- forged SRS bounces

def forged_addresses(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """(kind, address) forgeries of our SRS domain."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    wrong = SrsKeys((b"attacker-secret-" + str(rng.random()).encode(),))
    now = time.time()
    out = []
    kinds = ["random-hash", "wrong-secret", "expired", "case-game", "truncated", "other-content", "srs1-random"]
    for n in range(count):
        kind = kinds[n % len(kinds)]
        user, domain = f"victim{n}", rng.choice(["example.com", "pass.example", "bank.example"])
        if kind == "random-hash":
            stamp = timestamp(now)
            address = f"SRS0={''.join(rng.choice(alphabet) for _ in range(4))}={stamp}={domain}={user}@{SRS_DOMAIN}"
        elif kind == "wrong-secret":
            address = forward(f"{user}@{domain}", SRS_DOMAIN, wrong, now)
        elif kind == "expired":
            address = forward(f"{user}@{domain}", SRS_DOMAIN, KEYS, now - rng.randint(22, 1000) * DAY)
        elif kind == "case-game":
            # a forged hash in mixed case; the genuine one's case-variants would verify (by design)
            genuine = forward(f"{user}@{domain}", SRS_DOMAIN, KEYS, now).split("=")[1]
            fake = "".join(rng.choice(alphabet) for _ in range(4))
            while fake.lower() == genuine.lower():
                fake = "".join(rng.choice(alphabet) for _ in range(4))
            address = f"SRS0={''.join(c.swapcase() if rng.random() < .5 else c for c in fake)}=" \
                      f"{timestamp(now)}={domain}={user}@{SRS_DOMAIN}"
        elif kind == "truncated":
            genuine = forward(f"{user}@{domain}", SRS_DOMAIN, KEYS, now)
            given = genuine.split("=")[1]
            address = genuine.replace(f"={given}=", f"={given[:rng.randint(0, 3)]}=", 1)
        elif kind == "other-content":
            # a genuine signature moved onto other content
            genuine = forward(f"{user}@{domain}", SRS_DOMAIN, KEYS, now)
            address = genuine.replace(f"={user}@", f"=mallory{n}@", 1)
        else:
            address = (f"SRS1={''.join(rng.choice(alphabet) for _ in range(4))}=first.example=="
                       f"abcd={timestamp(now)}={domain}={user}@{SRS_DOMAIN}")
        out.append((kind, address))
    return out


@pytest.fixture(scope="module")
def srs_milter(world, tmp_path_factory):
    directory = tmp_path_factory.mktemp("sec-srs")
    secrets = write_secrets(directory / "srs-secrets", SECRET)
    milter = launch_milter(directory, "m", f"srs_domain = {SRS_DOMAIN}\nsrs_secrets_file = {secrets}\n"
                           "local_domains = mx.test\nmode = enforce", world.port)
    yield milter
    assert milter.stop() == 0
    assert "Traceback" not in milter.full_log()


def test_ten_thousand_forged_srs_bounces_are_refused_and_none_relayed(srs_milter):
    rng = random.Random(20260)
    forged = forged_addresses(rng, FORGERIES)
    now = time.time()
    genuine = [("genuine", forward(f"real{n}@pass.example", SRS_DOMAIN, KEYS, now)) for n in range(100)]
    batch = forged + genuine
    rng.shuffle(batch)
    accepted = {"genuine": 0}
    refused_forged = 0
    reversed_to = []
    per_connection = 1000
    for start in range(0, len(batch), per_connection):
        chunk = batch[start:start + per_connection]
        client = srs_milter.client(timeout=30)
        client.connect(f"[{CLIENT_IP}]", CLIENT_IP, port=40000, family="4")
        client.helo("helo.example")
        client.mail("<>")
        replies = [client.rcpt(f"<{address}>") for _, address in chunk]
        client.data()
        client.eoh()
        _, mods = client.eom()
        client.quit()
        for (kind, _), reply in zip(chunk, replies):
            ok = reply.action in ("continue", "noreply")
            if kind == "genuine":
                accepted["genuine"] += ok
            elif ok:
                accepted[kind] = accepted.get(kind, 0) + 1
            else:
                refused_forged += reply.code == 550 and reply.xcode == "5.1.1"
        reversed_to += [m[1] for m in mods if m[0] == "addrcpt"]
    accepted_forged = sum(v for k, v in accepted.items() if k != "genuine")
    record("srs_forgery", tried=len(forged), refused=refused_forged, accepted=accepted_forged,
           kinds=sorted({k for k, _ in forged}), genuine_mixed_in=len(genuine), genuine_accepted=accepted["genuine"],
           relayed_to_forged=sum(1 for r in reversed_to if "victim" in r or "mallory" in r))
    assert accepted_forged == 0, accepted
    assert refused_forged == len(forged)
    assert accepted["genuine"] == len(genuine)  # the same path does accept what we signed
    assert sorted(reversed_to) == sorted(f"<real{n}@pass.example>" for n in range(100))


# ---------------------------------------------------------------- privileges and the secrets file

def _credentials(pid: int) -> tuple[int, int, list[int]]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(fields["Uid"].split()[1]), int(fields["Gid"].split()[1]),
            [int(g) for g in fields["Groups"].split()])


def _can_write_as(uid: int, gid: int, groups: list[int], path: str) -> bool:
    """Whether a process with exactly these credentials could open ``path`` for writing."""
    pid = os.fork()
    if pid == 0:  # the child takes the daemon's credentials and tries
        code = 3
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            try:
                open(path, "a").close()
                code = 0
            except PermissionError:
                code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 1), f"credential switch failed ({code})"
    return code == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start the daemon as root")
def test_privileges_are_dropped_and_the_daemon_cannot_write_its_config_or_secrets(world):
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="spfmilter-sec-"))
    try:
        os.chmod(base, 0o755)
        run_dir = base / "run"
        run_dir.mkdir()
        os.chown(run_dir, nobody.pw_uid, nobody.pw_gid)
        secrets = base / "srs-secrets"
        secrets.write_text(SECRET + "\n")
        os.chmod(secrets, 0o600)  # root only: read by the main process before the switch
        milter = launch_milter(base, "m", f"socket = unix:{run_dir}/m.sock\nuser = nobody\n"
                               f"srs_domain = {SRS_DOMAIN}\nsrs_secrets_file = {secrets}", world.port)
        try:
            os.chmod(milter.config_path, 0o644)  # as /etc/spfmilter/spfmilter.conf: root-owned
            procs = [milter.proc.pid] + children(milter.proc.pid)
            creds = [_credentials(pid) for pid in procs]
            writable = {str(path): any(_can_write_as(*c, str(path)) for c in creds)
                        for path in (milter.config_path, secrets)}
            _, mods, _ = run(milter, sender="<a@pass.example>")
            served = ar_results(mods)["mailfrom"][0] == "pass"
        finally:
            assert milter.stop() == 0
        record("privileges", processes=len(procs), uids=sorted({c[0] for c in creds}),
               config_writable=writable[str(milter.config_path)], secrets_writable=writable[str(secrets)],
               served_after_drop=served)
        assert {c[0] for c in creds} == {nobody.pw_uid} and {c[1] for c in creds} == {nobody.pw_gid}
        assert 0 not in {g for c in creds for g in c[2]}
        assert writable == {str(milter.config_path): False, str(secrets): False}
        assert served
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_secrets_file_others_can_read_stops_the_daemon(tmp_path, world):
    secrets = tmp_path / "srs-secrets"
    secrets.write_text(SECRET + "\n")
    os.chmod(secrets, 0o604)
    conf = tmp_path / "m.conf"
    conf.write_text(f"socket = unix:{tmp_path}/m.sock\ndns_servers = 127.0.0.1:{world.port}\n"
                    f"srs_domain = {SRS_DOMAIN}\nsrs_secrets_file = {secrets}\n")
    proc = subprocess.run([sys.executable, "-m", "spfmilter", "-c", str(conf)], capture_output=True, text=True,
                          timeout=60, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    refused = proc.returncode == 1 and "accessible by others" in proc.stderr
    record("secrets_file", readable_by_others_refused=refused, exit_code=proc.returncode)
    assert refused, proc.stderr
    assert not (tmp_path / "m.sock").exists()
