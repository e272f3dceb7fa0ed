"""Run the reliability suite and write its figures table (docs/RELIABILITY.md).

    .venv/bin/python -m tests.reliability.report --long --write docs/RELIABILITY.md
    ./dev.sh reliability                     # the same

``--long`` runs the full sizes (10,000 fuzzed sessions, 100,000 soak sessions); without it
the CI sizes are used.  The exit status is non-zero if a test failed or a figure shows a
crash, a lost message or an accepted forgery.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.reliability.figures import load_all

ROOT = Path(__file__).resolve().parents[2]
TESTS = ["tests/reliability",
         "tests/mta/test_postfix_spfmilter.py::test_milter_restart_under_load_loses_no_message",
         "tests/mta/test_postfix_rollout.py::test_percent_and_bang_recipients_cannot_bypass_enforce_domains"]


def _cases(section: dict) -> tuple[int, int, list[str]]:
    """(tried, passed, failed names) of a section that records one entry per case."""
    tried = passed = 0
    failed = []
    for name, value in section.items():
        ok = value.get("ok") if isinstance(value, dict) else value
        if not isinstance(ok, bool):
            continue
        tried += 1
        passed += ok
        if not ok:
            failed.append(name)
    return tried, passed, failed


def _mb(kb) -> str:
    return f"{kb / 1024:.1f} MB" if isinstance(kb, (int, float)) else "?"


def rows(f: dict) -> list[tuple[str, str, str]]:
    """(what, tried, outcome) rows; a missing section says so."""
    out = []

    def get(name):
        return f.get(name, {})

    dns = get("dns_faults")
    tried, passed, failed = _cases(dns)
    slowest = max((v.get("seconds", 0) - v.get("budget", 0) for v in dns.values()
                   if isinstance(v, dict) and "budget" in v), default=None)
    out.append(("DNS faults (timeout, SERVFAIL, REFUSED, NXDOMAIN, TCP fallback, >512 B, malformed, loops, "
                "limits, slow answers)", f"{tried} cases",
                f"{passed} passed" + (f", failed: {', '.join(failed)}" if failed else "")
                + (f"; worst session {slowest:+.2f} s against its DNS budget" if slowest is not None else "")))
    abuse = get("protocol_abuse")
    tried, passed, failed = _cases(abuse)
    out.append(("Milter-protocol abuse (disconnect at every stage, aborts, hostile input)", f"{tried} cases",
                f"{passed} passed" + (f", failed: {', '.join(failed)}" if failed else "")))
    policy = get("failure_policy")
    tried, passed, failed = _cases(policy)
    out.append(("Exception injected in a callback (connect, MAIL, RCPT SPF/SRS, header, end of message) x "
                "on_error tempfail/accept", f"{tried} cases",
                f"{passed} answered as configured, logged once, serving went on"
                + (f"; failed: {', '.join(failed)}" if failed else "")))
    fuzz = get("fuzz")
    out.append(("Fuzzed sessions through the socket", f"{fuzz.get('sessions', 0):,} (seed {fuzz.get('seed', '?')})",
                f"{fuzz.get('crashes', '?')} crashes, {fuzz.get('hung', '?')} hung, {fuzz.get('bad_headers', '?')} bad "
                f"headers of {fuzz.get('headers_checked', '?'):,} checked" if fuzz else "not run"))
    soak = get("soak")
    out.append(("Soak", f"{soak.get('sessions', 0):,} sessions at concurrency {soak.get('concurrency', '?')}",
                f"{soak.get('errors', '?')} errors, {soak.get('wrong', '?')} wrong; RSS {_mb(soak.get('rss_start_kb'))} -> "
                f"{_mb(soak.get('rss_end_kb'))}; fds {soak.get('fds_start', '?')} -> {soak.get('fds_end', '?')}; "
                f"threads {soak.get('threads_start', '?')} -> {soak.get('threads_end', '?')}" if soak else "not run"))
    stop = get("shutdown")
    out.append(("SIGTERM under load", f"{stop.get('in_flight', '?')} sessions in flight",
                f"{stop.get('completed', '?')} completed, {stop.get('lost', '?')} lost, "
                f"{stop.get('refused_after', '?')} new ones refused, exit {stop.get('exit_code', '?')}"
                if stop else "not run"))
    reload_ = get("reload")
    out.append(("SIGHUP reload under load", f"{reload_.get('in_flight', '?')} sessions in flight",
                f"{reload_.get('completed', '?')} completed on the old configuration, {reload_.get('lost', '?')} lost, "
                f"{reload_.get('failed', '?')} failed of {reload_.get('sessions', '?')} sessions; "
                f"{reload_.get('new_config', '?')} of {reload_.get('after_reload', '?')} sessions after the reload "
                f"had the new configuration" if reload_ else "not run"))
    restart = get("restart")
    out.append(("Milter restart under Postfix load", f"{restart.get('messages', '?')} messages",
                f"{restart.get('delivered', '?')} delivered, {restart.get('lost', '?')} lost, "
                f"{restart.get('duplicates', '?')} duplicated, {restart.get('unchecked', '?')} unchecked; "
                f"{restart.get('deferrals_retried', '?')} deferrals retried by the client" if restart else "not run"))
    headers = get("forged_headers")
    out.append(("Forged Authentication-Results / Received-SPF", f"{headers.get('variants', 0)} header variants",
                f"{headers.get('wrong', '?')} messages with a forged copy left or a foreign one removed"
                if headers else "not run"))
    spell = get("forged_spellings")
    out.append(("Forged-header spellings a lenient A-R parser reads as ours (quotes, escapes, comments, "
                "white space around dots, trailing dot, unparseable heads)",
                f"{spell.get('hostile', 0)} hostile, {spell.get('foreign', 0)} foreign",
                f"{spell.get('wrong', '?')} wrong (a hostile one kept or a foreign one removed)" if spell else "not run"))
    routed = get("routed_recipients")
    tried, passed, failed = _cases(routed)
    out.append(("%-hack, bang-path recipients through Postfix (header-only, enforce_domains = b.test)",
                f"{tried} recipient forms", f"{passed} refused 550 5.7.23, none delivered"
                + (f"; failed: {', '.join(failed)}" if failed else "") if routed else "not run"))
    shared = get("dns_faults").get("waiting_session_keeps_own_budget")
    out.append(("Shared DNS lookup: a session waiting on another's query that times out for the other",
                "1 case", (f"{shared.get('result')} in {shared.get('seconds')} s (budget {shared.get('budget')} s); "
                           f"the other session {shared.get('attacker', {}).get('result')}"
                           + ("" if shared.get("ok") else "; FAILED")) if shared else "not run"))
    srs = get("srs_forgery")
    out.append(("Forged or expired SRS bounces (through the socket)", f"{srs.get('tried', 0):,}",
                f"{srs.get('accepted', '?')} accepted, {srs.get('relayed_to_forged', '?')} relayed; "
                f"{srs.get('genuine_accepted', '?')}/{srs.get('genuine_mixed_in', '?')} genuine ones accepted"
                if srs else "not run"))
    dkim = get("hostile_dkim")
    out.append(("Hostile DKIM input on held SPF fails (huge keys and exponents, oversized key record and b=, "
                "many signatures, huge header sections)", f"{dkim.get('cases', 0)} cases",
                f"{dkim.get('refused', '?')} got the SPF refusal, {dkim.get('spared', '?')} spared; worst end of "
                f"message {dkim.get('worst_seconds', '?')} s ({dkim.get('worst_cpu_seconds', '?')} s CPU)"
                if dkim else "not run"))
    priv = get("privileges")
    secrets = get("secrets_file")
    out.append(("Privileges and secrets", "daemon started as root with user = nobody",
                f"uid {priv.get('uids', '?')}, config writable: {priv.get('config_writable', '?')}, secrets "
                f"writable: {priv.get('secrets_writable', '?')}; secrets file readable by others refused: "
                f"{secrets.get('readable_by_others_refused', '?')}"))
    return out


def verdict(f: dict) -> list[str]:
    """What must be zero, and is not."""
    problems = []
    checks = [("fuzz", "crashes"), ("fuzz", "hung"), ("fuzz", "bad_headers"), ("soak", "errors"), ("soak", "wrong"),
              ("shutdown", "lost"), ("reload", "lost"), ("restart", "lost"), ("restart", "duplicates"),
              ("restart", "unchecked"), ("forged_headers", "wrong"), ("forged_spellings", "wrong"),
              ("srs_forgery", "accepted"), ("srs_forgery", "relayed_to_forged"), ("hostile_dkim", "spared")]
    for section, key in checks:
        value = f.get(section, {}).get(key)
        if value is None:
            problems.append(f"{section}.{key} missing")
        elif value:
            problems.append(f"{section}.{key} = {value}")
    for section in ("dns_faults", "protocol_abuse", "failure_policy", "routed_recipients"):
        tried, passed, failed = _cases(f.get(section, {}))
        if not tried or failed:
            problems.append(f"{section}: {passed}/{tried} passed")
    return problems


def render(f: dict, long: bool, rc: int, seconds: float) -> str:
    lines = ["# Reliability figures", "",
             "Generated by `./dev.sh reliability` (`python -m tests.reliability.report --long --write "
             "docs/RELIABILITY.md`); do not edit by hand.", "",
             f"- Run: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
             f"{'full sizes' if long else 'CI sizes'}, {seconds:.0f} s, on {platform.machine()} with "
             f"{os.cpu_count()} CPUs; pytest exit status {rc}.",
             "- Every network peer is on loopback: a test DNS server, the milter's socket, private Postfix instances.",
             "", "| What | Tried | Outcome |", "|---|---|---|"]
    lines += [f"| {what} | {tried} | {outcome} |" for what, tried, outcome in rows(f)]
    problems = verdict(f)
    lines += ["", "**Verdict:** " + ("0 crashes, 0 lost messages, 0 forged accepted." if not problems and rc == 0
                                     else "PROBLEMS: " + "; ".join(problems or [f"pytest exit status {rc}"]))]
    lines += ["", "Where each figure comes from: tests/reliability/ (" + ", ".join(
        sorted(p.stem for p in (ROOT / "tests" / "reliability").glob("test_*.py"))) + ") and " + ", ".join(
        TESTS[1:]) + ". The same tests run in CI at small sizes (`./dev.sh test`).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="full sizes (SPFMILTER_LONG=1)")
    parser.add_argument("--write", metavar="FILE", help="write the markdown here (default: print it)")
    parser.add_argument("--figures", metavar="DIR", help="render figures already recorded in DIR; run nothing")
    args = parser.parse_args(argv)
    import time

    started = time.monotonic()
    rc = 0
    directory = args.figures
    if directory is None:
        directory = tempfile.mkdtemp(prefix="spfmilter-figures-")
        env = dict(os.environ, SPFMILTER_FIGURES_DIR=directory, PYTHONPATH=str(ROOT))
        if args.long:
            env["SPFMILTER_LONG"] = "1"
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
                            cwd=str(ROOT), env=env).returncode
    figures = load_all(directory)
    text = render(figures, args.long, rc, time.monotonic() - started)
    if args.write:
        Path(args.write).write_text(text)
        print(f"wrote {args.write}")
    else:
        print(text)
    return 0 if rc == 0 and not verdict(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
