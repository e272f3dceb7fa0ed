"""Milter sessions for tests: the shared DNS zones, one transaction as Postfix drives it, and what came back.

``zones(dns)`` publishes a small world of SPF policies in the loopback test DNS server;
``run(milter, ...)`` is one SMTP transaction through the milter protocol; ``ar_results``
and ``added_headers`` read the end-of-message modifications.  The SRS helpers
(``session``, ``srs_config``, ``srs_mods``) and ``send_signed`` (a whole DKIM-signed
message) serve the SRS and DKIM-hold tests.
"""
from __future__ import annotations

import os
from pathlib import Path

import authres

from spfmilter.srs import DAY, SrsKeys, forward
from tests.support.dkimsign import split_message
from tests.support.milterclient import SMFIP_HDR_LEADSPC

# A stage that does not refuse: answered "continue", not answered (no-reply stage), or not
# sent at all (header-only mode asks the MTA to skip RCPT).
PASSED_ON = ("continue", "noreply", "skipped")

CLIENT_IP = "192.0.2.7"
HELO = "helo.example"  # zones(): its SPF record passes CLIENT_IP


def zones(dns):
    """A small world of SPF policies; every test gets a fresh DNS server."""
    dns.add("pass.example", "TXT", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8:7::/48 -all")
    dns.add("fail.example", "TXT", "v=spf1 ip4:198.51.100.1 -all")
    dns.add("softfail.example", "TXT", "v=spf1 ~all")
    dns.add("neutral.example", "TXT", "v=spf1 ?all")
    dns.add("none.example", "A", "192.0.2.99")  # exists, no SPF record
    dns.add("permerror.example", "TXT", "v=spf1 ip4:192.0.2.0/24 bogus:thing -all")
    dns.add("temperror.example", "TXT", "v=spf1 -all")
    dns.fault("temperror.example", "servfail")
    dns.add("exp.example", "TXT", "v=spf1 -all exp=explain.exp.example")
    dns.add("explain.exp.example", "TXT", "Mail from %{d} must come through our servers, see https://exp.example/spf")
    dns.add(HELO, "TXT", "v=spf1 a -all")
    dns.add(HELO, "A", CLIENT_IP)
    dns.add("badhelo.example", "TXT", "v=spf1 -all")


def run(milter, sender="<a@pass.example>", rcpts=("<b@mx.test>",), *, ip=CLIENT_IP, helo=HELO,
        family="4", headers=(), mail_macros=None, eom_macros=None, client=None):
    """One transaction; returns (replies dict, eom mods or None, client)."""
    own = client is None
    if own:
        client = milter.client()
        client.connect(f"[{ip}]", ip, port=40000, family=family, macros={"j": "mx.test"})
        client.helo(helo)
    replies = {"mail": client.mail(sender, macros=mail_macros or {})}
    replies["rcpt"] = [client.rcpt(r) for r in rcpts]
    mods = None
    if any(r.action in PASSED_ON for r in replies["rcpt"]):
        client.data()
        for name, value in headers:
            client.header(name, value)
        client.eoh()
        replies["eom"], mods = client.eom(macros=eom_macros or {"i": "QID123"})
    else:
        client.abort()
    if own:
        client.quit()
    return replies, mods, client


def added_headers(mods):
    """Headers we inserted, as (name, value) with folding undone."""
    out = []
    for mod in mods:
        if mod[0] == "insheader":
            out.append((mod[2], mod[3].replace("\n", "")))
        elif mod[0] == "addheader":
            out.append((mod[1], mod[2].replace("\n", "")))
    return out


def ar_results(mods):
    """{'helo': (result, value), 'mailfrom': (result, value)} from our A-R header."""
    [(name, value)] = [h for h in added_headers(mods) if h[0] == "Authentication-Results"]
    parsed = authres.AuthenticationResultsHeader.parse(f"{name}: {value}")
    assert parsed.authserv_id == "mx.test"
    found = {}
    for result in parsed.results:
        assert result.method == "spf"
        prop = result.properties[0]
        found[prop.name] = (result.result, prop.value)
    return found


# ---------------------------------------------------------------- SRS

SECRET = "milter-test-secret-0123"
KEYS = SrsKeys((SECRET.encode(),))
SRS_DOMAIN = "srs.mx.test"


def forged_and_expired(victim: str, keys: SrsKeys, now: float) -> tuple[str, str]:
    """Two bounce addresses for ``victim`` we must refuse: our SRS0 address with a wrong hash
    (a hash that is not the real one in any case), and a genuine one signed 30 days ago."""
    genuine = forward(victim, SRS_DOMAIN, keys, now)
    real_hash = genuine.split("=")[1]
    fake_hash = next(h for h in ("AAAA", "BBBB") if h.lower() != real_hash.lower())
    forged = genuine.replace(f"SRS0={real_hash}=", f"SRS0={fake_hash}=", 1)
    return forged, forward(victim, SRS_DOMAIN, keys, now - 30 * DAY)


def write_secrets(path: Path, secret: str = SECRET) -> Path:
    """An SRS secrets file as the milter demands it: one secret a line, readable by its owner only."""
    path.write_text(secret + "\n")
    os.chmod(path, 0o600)
    return path


def srs_config(secrets_file, forward_table, extra: str = "") -> str:
    return (f"srs_domain = {SRS_DOMAIN}\nsrs_secrets_file = {secrets_file}\n"
            f"local_domains = mx.test, alias.mx.test\nsrs_forward_table = {forward_table}\n{extra}")


def session(milter, sender, rcpts, ip=CLIENT_IP, mail_macros=None):
    """One transaction; returns (rcpt replies, eom modifications or None)."""
    client = milter.client()
    client.connect(f"[{ip}]", ip, port=40000, family="4")
    client.helo(HELO)
    client.mail(sender, macros=mail_macros or {})
    replies = [client.rcpt(r) for r in rcpts]
    mods = None
    if any(r.action in PASSED_ON for r in replies):
        client.data()
        client.header("Subject", "srs")
        client.eoh()
        _, mods = client.eom()
    else:
        client.abort()
    client.quit()
    return replies, mods


def srs_mods(mods):
    return [m for m in mods if m[0] in ("chgfrom", "delrcpt", "addrcpt", "addrcpt_par")]


# ---------------------------------------------------------------- whole (DKIM-signed) messages

MESSAGE = (b"From: Alice <alice@fail.example>\r\nTo: bob@mx.test\r\nSubject: forwarded\r\n"
           b"Date: Mon, 23 Nov 2026 16:00:00 +0000\r\n\r\nHello from a forwarded list.\r\n")


def send_signed(milter, message: bytes, sender="<alice@fail.example>", rcpts=("<bob@mx.test>",),
                helo=HELO):
    """A full transaction with the message's own headers and body; returns (rcpt replies, eom reply, mods)."""
    client = milter.client()
    client.connect(f"[{CLIENT_IP}]", CLIENT_IP, port=40000, family="4")
    client.helo(helo)
    client.mail(sender)
    replies = [client.rcpt(r) for r in rcpts]
    if not any(r.action in PASSED_ON for r in replies):
        client.abort()
        client.quit()
        return replies, None, None
    client.data()
    fields, body = split_message(message)
    leading = client.negotiated_protocol & SMFIP_HDR_LEADSPC
    for name, value in fields:
        # as an MTA passes them: with the leading space only when the milter asked for it
        client.header(name, value if leading else value.lstrip(" "))
    client.eoh()
    client.body(body)
    reply, mods = client.eom()
    client.quit()
    return replies, reply, mods
