"""Issue 14: the MAIL FROM log line carries the transaction's recipient domains (``rcpt-domains=``),
through the real milter process and socket, so ``spfmilter report`` can tell per recipient domain
what enforcement would refuse.

In header-only mode on a unix socket the milter used to ask the MTA to skip RCPT (nothing to
answer there); it now asks for RCPT without a reply (SMFIP_NR_RCPT), so it sees the recipients
and the MTA still does not wait for it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support.milterclient import SMFIP_NORCPT, SMFIP_NR_RCPT
from tests.support.milterproc import ROOT
from tests.support.sessions import PASSED_ON, ar_results, run


def mailfrom_fields(milter) -> dict:
    """The fields of the last identity=mailfrom log line."""
    [*_, line] = milter.log_lines("identity=mailfrom")
    message = line.split(": ", 1)[1] if "spfmilter[" in line else line
    message = re.sub(r"^(INFO|DEBUG): ", "", message)
    return dict(re.findall(r'([a-z-]+)=("(?:[^"\\]|\\.)*"|[^\s;"]*)', message))


def test_header_only_on_a_unix_socket_logs_the_recipient_domains_without_a_reply(start_milter, world):
    milter = start_milter("mode = header-only")
    client = milter.client()
    client.connect("[192.0.2.7]", "192.0.2.7", port=40000, family="4", macros={"j": "mx.test"})
    client.helo("helo.example")
    # the MTA is asked for RCPT, but not to wait for the answer
    assert client.negotiated_protocol & SMFIP_NR_RCPT and not client.negotiated_protocol & SMFIP_NORCPT
    replies, mods, _ = run(milter, sender="<a@fail.example>", client=client,
                           rcpts=("<b@mx.test>", "<c@Other.Test.>", "<d@MX.test>", "<postmaster>"))
    client.quit()
    assert [r.action for r in replies["rcpt"]] == ["noreply"] * 4
    assert ar_results(mods)["mailfrom"][0] == "fail"
    fields = mailfrom_fields(milter)
    assert (fields["action"], fields["rcpt-domains"]) == ("would-reject", '"mx.test,other.test"')
    assert fields["queue-id"] == "QID123"
    # the HELO line stays as it was
    [helo_line] = milter.log_lines("identity=helo")
    assert "rcpt-domains" not in helo_line


def test_a_transaction_only_for_exempt_recipients_is_not_counted_as_would_reject(start_milter, world):
    # now that RCPT is seen in header-only mode on unix sockets too, postmaster@ is exempt there as on TCP
    milter = start_milter("mode = header-only")
    run(milter, sender="<a@fail.example>", rcpts=("<postmaster@mx.test>",))
    fields = mailfrom_fields(milter)
    assert (fields["action"], fields["rcpt-domains"]) == ("accept-exempt", "mx.test")


def test_over_tcp_and_with_enforcement_the_domains_are_logged_too(start_milter, world):
    milter = start_milter("mode = header-only", inet=True)
    replies, _, _ = run(milter, sender="<a@fail.example>", rcpts=("<b@mx.test>", "<c@other.test>"))
    assert [r.action for r in replies["rcpt"]] == ["continue", "continue"]
    assert mailfrom_fields(milter)["rcpt-domains"] == '"mx.test,other.test"'
    # a refusal is logged at the RCPT that is refused: with the domains seen up to there
    milter = start_milter("mode = header-only\nenforce_domains = mx.test")
    replies, _, _ = run(milter, sender="<a@fail.example>",
                        rcpts=("<c@other.test>", "<b@mx.test>", "<e@third.test>"))
    assert [r.action in PASSED_ON for r in replies["rcpt"]] == [True, False, True]
    fields = mailfrom_fields(milter)
    assert (fields["action"], fields["rcpt-domains"]) == ("reject", '"other.test,mx.test"')


@pytest.mark.parametrize("on_error,expected", [("tempfail", ("replycode", 451, "4.3.0")),
                                               ("accept", ("accept", None, None))])
def test_a_failure_in_an_unanswered_rcpt_is_answered_at_end_of_message(start_milter, world, on_error, expected):
    milter = start_milter(f"on_error = {on_error}", module="tests.support.faulty_milter")
    replies, mods, _ = run(milter, sender="<a@pass.example>", rcpts=("<crash-rcpt@mx.test>",))
    assert replies["rcpt"][0].action == "noreply"  # no reply may be sent there: the MTA is not reading one
    assert (replies["eom"].action, replies["eom"].code, replies["eom"].xcode) == expected
    assert mods == []
    logs = milter.logs()
    assert logs.count("Traceback") == 1 and "internal error in rcpt callback" in logs
    _, mods, _ = run(milter, sender="<a@fail.example>")  # and the next transaction is served
    assert ar_results(mods)["mailfrom"][0] == "fail"


def test_the_report_reads_the_milters_own_log_per_recipient_domain(start_milter, world):
    milter = start_milter("mode = header-only")
    run(milter, sender="<a@fail.example>", rcpts=("<b@mx.test>",))
    run(milter, sender="<a@pass.example>", rcpts=("<b@mx.test>", "<c@other.test>"))
    run(milter, sender="<x@fail.example>", rcpts=("<c@other.test>",))
    log = milter.logs()
    report = subprocess.run([sys.executable, "-m", "spfmilter", "report", "-", "--recipient-domain", "mx.test"],
                            input=log, capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert report.returncode == 0, report.stderr
    rows = [line.split() for line in report.stdout.splitlines()]
    assert ["messages", "checked", "2"] in rows  # the two transactions with a recipient at mx.test
    section = report.stdout.split("Per recipient domain: what enforcing it would refuse\n")[1].split("\n\n")[0]
    assert [row.split() for row in section.splitlines()[1:]] == [
        ["mx.test", "2", "1", "0", "50.0%"], ["other.test", "1", "0", "0", "0.0%"]]
