"""Failure policy: an exception in any callback ends in the configured answer, once, and serving goes on.

Failures are injected by the test build tests/support/faulty_milter.py (not a product
switch): at connect, MAIL FROM, RCPT (SPF and SRS decisions), a header, and end of
message.  Each case runs with ``on_error = tempfail`` and ``on_error = accept``.
"""
from __future__ import annotations

import pytest

from tests.reliability.figures import record
from tests.support.sessions import CLIENT_IP, ar_results, run, write_secrets

TEMPFAIL = ("replycode", 451, "4.3.0")
ACCEPT = ("accept", None, None)
SECRET = "failure-policy-secret-42"


@pytest.fixture(scope="module")
def secrets_file(tmp_path_factory):
    return write_secrets(tmp_path_factory.mktemp("fp") / "srs-secrets", SECRET)


# (case, session keyword arguments, stage whose reply carries the on_error answer)
CASES = [
    ("connect", dict(ip="192.0.2.66"), "rcpt"),
    ("mail", dict(sender="<crash-verify@pass.example>"), "rcpt"),
    ("rcpt-spf", dict(rcpts=("<crash-rcpt@mx.test>",)), "rcpt"),
    ("rcpt-srs", dict(rcpts=("<crash-srs@mx.test>",)), "rcpt"),
    ("header", dict(headers=(("Authentication-Results", "other.example; x=crash-header"),)), "eom"),
    ("eom", dict(sender="<crash-eom@pass.example>"), "eom"),
]


@pytest.mark.parametrize("on_error,expected", [("tempfail", TEMPFAIL), ("accept", ACCEPT)])
@pytest.mark.parametrize("case,kwargs,stage", CASES, ids=[c[0] for c in CASES])
def test_an_exception_in_a_callback_gets_the_configured_answer(start_milter, world, secrets_file,
                                                               case, kwargs, stage, on_error, expected):
    milter = start_milter(f"on_error = {on_error}\nmode = enforce\nsrs_domain = srs.mx.test\n"
                          f"srs_secrets_file = {secrets_file}\nlocal_domains = mx.test",
                          module="tests.support.faulty_milter")
    replies, mods, _ = run(milter, **kwargs)
    reply = replies["rcpt"][0] if stage == "rcpt" else replies["eom"]
    got = (reply.action, reply.code, reply.xcode)
    logs = milter.logs()
    once = logs.count("Traceback") == 1 and logs.count("RuntimeError: injected failure") == 1
    # and the same process serves the next session normally
    replies_after, mods_after, _ = run(milter, sender="<a@fail.example>")
    serving = (replies_after["rcpt"][0].code, replies_after["rcpt"][0].xcode) == (550, "5.7.23")
    _, mods_after, _ = run(milter, sender="<a@pass.example>")
    serving = serving and ar_results(mods_after)["mailfrom"][0] == "pass" and milter.proc.poll() is None
    ok = got == expected and once and serving
    record("failure_policy", **{f"{case}-{on_error}": ok})
    assert got == expected, (case, got)
    assert once, logs
    assert serving
    assert CLIENT_IP  # the injected client address differs from the normal one
