"""SIGHUP edges of the supervisor: a relative ``-c`` path, and a worker that died just before.

These need no root (unlike tests/milter/test_daemon.py): the daemon runs as the test's user.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from spfmilter.server import RESPAWN_DELAY
from tests.support.milterproc import ROOT, RunningMilter
from tests.support.sessions import added_headers, run
from tests.support.milterclient import wait_ready
from tests.support.procs import children


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def authserv_id(mods) -> str:
    [value] = [v for n, v in added_headers(mods) if n == "Authentication-Results"]
    return value.split(";", 1)[0].strip()


def test_sighup_rereads_a_relative_config_path(tmp_path, world, request):
    """``-c m.conf`` from the config's directory: a reload reads that file again (it used to
    keep the old configuration while logging "reloaded")."""
    conf = tmp_path / "m.conf"
    sock = tmp_path / "m.sock"
    base = f"socket = unix:{sock}\ndns_servers = 127.0.0.1:{world.port}\n"
    conf.write_text(base + "authserv_id = old.mx.test\n")
    log_path = tmp_path / "m.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "spfmilter", "-c", "m.conf"], cwd=str(tmp_path),
                                stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    milter = RunningMilter(proc, str(sock), conf, log_path)
    request.addfinalizer(lambda: milter.stop())
    wait_ready(milter.addr, timeout=20.0, proc=proc)
    _, mods, _ = run(milter, sender="<a@pass.example>")
    assert authserv_id(mods) == "old.mx.test"
    conf.write_text(base + "authserv_id = new.mx.test\n")
    os.kill(proc.pid, signal.SIGHUP)
    wait_for(lambda: "reloaded" in milter.full_log() or "reload refused" in milter.full_log(), 20, "the reload")
    assert "reload refused" not in milter.full_log()
    _, mods, _ = run(milter, sender="<a@pass.example>")
    assert authserv_id(mods) == "new.mx.test"
    assert f"reloaded {conf}:" in milter.full_log()  # the absolute path, resolved at start-up
    assert milter.stop() == 0
    assert "Traceback" not in milter.full_log()


def test_a_worker_that_died_just_before_sighup_is_not_respawned_beside_the_new_generation(start_milter, world):
    """The supervisor has reaped the dead worker and waits RESPAWN_DELAY before replacing it;
    a SIGHUP in that time starts a full new generation, so the pending respawn must be dropped
    (it used to run anyway: ``workers`` + 1 processes until the next reload).

    That a respawn does *not* happen can only be seen by watching for a while: the watch lasts
    a few respawn delays after the old generation has gone, and ends at the first extra worker.
    """
    workers = 2
    milter = start_milter(f"workers = {workers}", fresh=True)
    main = milter.proc.pid
    wait_for(lambda: len(children(main)) == workers, 20, f"{workers} workers")
    for attempt in range(3):
        log_before = len(milter.full_log())
        old = children(main)
        victim = old[0]
        os.kill(victim, signal.SIGKILL)
        # SIGCHLD must be handled (the death logged) before SIGHUP arrives: that is the race
        wait_for(lambda: f"(pid {victim}) exited unexpectedly" in milter.full_log()[log_before:], 20,
                 "the supervisor to notice the dead worker")
        os.kill(main, signal.SIGHUP)
        wait_for(lambda: "reloaded" in milter.full_log()[log_before:], 20, "the reload")
        since = milter.full_log()[log_before:]
        if since.find("restarting worker") == -1 or since.find("restarting worker") > since.find("reloaded"):
            break  # the SIGHUP came while the respawn was pending, as intended
        # this slow machine respawned before our SIGHUP came: the race was not provoked, retry
        wait_for(lambda: len(children(main)) == workers, 20, f"{workers} workers")
    else:
        pytest.skip("could not send SIGHUP within the respawn delay")
    assert f"{workers} new worker(s)" in since
    wait_for(lambda: not set(old) & set(children(main)), 20, "the old generation to leave")
    deadline = time.monotonic() + 3 * RESPAWN_DELAY
    while time.monotonic() < deadline:
        running = children(main)
        assert len(running) == workers, f"{len(running)} workers after the reload:\n{milter.full_log()}"
        time.sleep(0.05)
    assert "restarting worker" not in milter.full_log()[log_before:]
    _, mods, _ = run(milter, sender="<a@pass.example>")  # still serving
    assert mods
    assert milter.stop() == 0
