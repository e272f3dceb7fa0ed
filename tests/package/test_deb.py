"""The Debian package (debian/, ./dev.sh deb), built, checked with lintian, installed with apt,
run the way its systemd unit runs it behind a private Postfix, and purged again.

The machine is left as it was found: the packages apt installed for it (the .deb and the
python3-* it depends on) are purged again, the system user it created is removed, and the
set of installed packages and of files under /etc is compared before and after.  Nothing
here touches an MTA package: Postfix is only run as a private instance.  Skipped when not
root, not on Debian, or when spfmilter is already installed as a package (an admin's copy
is never purged).
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.delivered import our_authentication_results
from tests.support.milterclient import wait_ready
from tests.support.mta import contrib_main_cf, message, set_keys
from tests.support.postfix import PostfixInstance, free_port, postfix_available
from tests.support.procs import children, pid_alive
from tests.support.sessions import CLIENT_IP, HELO

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's own tools, not a pyenv/venv Python
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]
BINARY = Path("/usr/sbin/spfmilter")
UNIT = Path("/lib/systemd/system/spfmilter.service")
CONF = Path("/etc/spfmilter/spfmilter.conf")
ENABLED_LINK = Path("/etc/systemd/system/multi-user.target.wants/spfmilter.service")
PACKAGED = [BINARY, UNIT, CONF, Path("/usr/lib/sysusers.d/spfmilter.conf"), Path("/usr/lib/tmpfiles.d/spfmilter.conf"),
            Path("/usr/share/man/man8/spfmilter.8.gz"), Path("/usr/share/man/man5/spfmilter.conf.5.gz"),
            Path("/usr/share/doc/spfmilter/README.md.gz"), Path("/usr/share/doc/spfmilter/copyright"),
            Path("/usr/share/doc/spfmilter/changelog.gz"), Path("/usr/lib/python3/dist-packages/spfmilter")]

pytestmark = pytest.mark.package


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "installs a package: needs root"
    if not Path("/etc/debian_version").exists() or shutil.which("dpkg") is None:
        return "not a Debian system"
    for tool in ("dpkg-buildpackage", "lintian", "dh_python3"):
        if shutil.which(tool, path=DEBIAN_PATH) is None:
            return f"{tool} is not installed (./dev.sh install installs the package build tools)"
    if _dpkg_status("spfmilter").startswith("ii"):
        return "spfmilter is installed as a package on this machine; not touching the admin's copy"
    usable, why = postfix_available()
    if not usable:
        return f"private Postfix instances unavailable: {why}"
    return None


def _run(*command: str, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    env = {"PATH": DEBIAN_PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", **kwargs.pop("env", {})}
    proc = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, env=env, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _dpkg_status(package: str) -> str:
    proc = _run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", package, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def installed_packages() -> set[str]:
    """'name:arch version' of every package dpkg has installed (or half-installed: anything but
    not-installed and config-files-gone)."""
    out = _run("dpkg-query", "-W", "-f=${Package}:${Architecture} ${Version} ${db:Status-Abbrev}\n").stdout
    return {" ".join(line.split()[:2]) for line in out.splitlines()
            if len(line.split()) >= 3 and not line.split()[2].startswith(("un", "pn"))}


def manual_marks() -> set[str]:
    return set(_run("apt-mark", "showmanual").stdout.split())


def files_under(*roots: str) -> set[str]:
    found = set()
    for root in roots:
        for directory, dirs, files in os.walk(root):
            found.update(os.path.join(directory, name) for name in dirs + files)
    return found


WATCHED = ("/etc", "/lib/systemd/system", "/usr/lib/sysusers.d", "/usr/lib/tmpfiles.d",
           "/var/lib/systemd/deb-systemd-helper-enabled", "/usr/share/doc/spfmilter")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("deb")
    proc = _run("sh", str(ROOT / "dev.sh"), "deb", env={"SPFMILTER_DEB_DIR": str(out)}, check=False)
    print(proc.stderr[-3000:])
    version = re.search(r'__version__ = "(.*)"', (ROOT / "spfmilter" / "__init__.py").read_text()).group(1)
    path = out / f"spfmilter_{version}_all.deb"
    assert proc.returncode == 0 and path.exists(), proc.stderr[-3000:]
    return path


@pytest.fixture(scope="module")
def installed(deb):
    """The package installed with apt; afterwards purged with what apt installed with it."""
    before, marks_before = installed_packages(), manual_marks()
    files_before = files_under(*WATCHED)
    had_user = _user_exists("spfmilter")
    had_group = _group_exists("spfmilter")
    # apt sees a path as a package file only with a slash in it
    result = _run(*APT, "install", "--no-install-recommends", str(deb), check=False)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        added = installed_packages() - before
        yield {"added": added, "install_log": result.stdout}
    finally:
        added_names = sorted({entry.split()[0] for entry in installed_packages() - before})
        purge = _run(*APT, "purge", *added_names, check=False) if added_names else None
        if not had_user and _user_exists("spfmilter"):
            _run("deluser", "--system", "--quiet", "spfmilter", check=False)
        if not had_group and _group_exists("spfmilter"):
            _run("delgroup", "--system", "--quiet", "--only-if-empty", "spfmilter", check=False)
    assert purge is None or purge.returncode == 0, purge.stdout + purge.stderr
    # what the package put on the machine is gone ...
    for path in PACKAGED + [ENABLED_LINK, CONF.parent]:
        assert not os.path.lexists(path), f"{path} left behind after purge"
    # ... and nothing else changed
    assert installed_packages() == before
    assert manual_marks() == marks_before
    assert files_under(*WATCHED) == files_before


def _user_exists(name: str) -> bool:
    return _run("getent", "passwd", name, check=False).returncode == 0


def _group_exists(name: str) -> bool:
    return _run("getent", "group", name, check=False).returncode == 0


# ---------------------------------------------------------------- tests

def test_lintian_reports_no_errors(deb):
    proc = _run("lintian", "--allow-root", "--tag-display-limit", "0", str(deb), check=False)
    print(proc.stdout)
    tags = [line for line in proc.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert not [tag for tag in tags if tag.startswith("E: ")], proc.stdout
    # warnings are fixed or overridden with a reason (debian/spfmilter.lintian-overrides)
    assert not tags, proc.stdout


def test_package_contents_and_metadata(deb):
    fields = _run("dpkg-deb", "-f", str(deb), "Architecture", "Depends", "Version").stdout
    assert "Architecture: all" in fields
    depends = {d.split()[0] for d in re.search(r"Depends: (.*)", fields).group(1).split(", ")}
    for package in ("python3-milter", "python3-spf", "python3-dnspython", "python3-authres", "python3-dkim",
                    "python3-prometheus-client", "python3-publicsuffix2", "publicsuffix", "adduser"):
        assert package in depends
    assert not {d for d in depends if "publicsuffixlist" in d}, "Debian 12 has no python3-publicsuffixlist"
    listing = _run("dpkg-deb", "-c", str(deb)).stdout
    conf = [line for line in listing.splitlines() if line.endswith("./etc/spfmilter/spfmilter.conf")]
    assert conf and conf[0].startswith("-rw-r----- root/root"), conf  # never world-readable
    assert (_run("dpkg-deb", "-f", str(deb), "Version").stdout.strip()
            == re.search(r'__version__ = "(.*)"', (ROOT / "spfmilter" / "__init__.py").read_text()).group(1))


def test_install_puts_everything_in_place(installed):
    for path in PACKAGED:
        assert path.exists(), path
    assert os.access(BINARY, os.X_OK)
    account = pwd.getpwnam("spfmilter")
    assert account.pw_dir == "/nonexistent" and account.pw_uid < 1000  # a system user
    info = CONF.stat()
    assert (oct(info.st_mode & 0o777), info.st_uid, info.st_gid) == ("0o640", 0, account.pw_gid)
    assert CONF.read_text() == (ROOT / "contrib" / "spfmilter.conf").read_text()
    assert "/etc/spfmilter/spfmilter.conf" in _run("dpkg-query", "-W", "-f=${Conffiles}", "spfmilter").stdout
    # enabled the Debian way (deb-systemd-helper), also without a running systemd
    assert ENABLED_LINK.is_symlink() and os.readlink(ENABLED_LINK) == str(UNIT)
    # the program is Debian's Python running the installed package
    assert BINARY.read_text().startswith("#!/usr/bin/python3")
    version = re.search(r'__version__ = "(.*)"', (ROOT / "spfmilter" / "__init__.py").read_text()).group(1)
    assert _run(str(BINARY), "--version").stdout.strip() == f"spfmilter {version}"
    assert f"ExecStart={BINARY} -c {CONF}" in UNIT.read_text()


def test_installed_unit_verifies(installed):
    proc = _run("systemd-analyze", "verify", str(UNIT), check=False, timeout=120)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "spfmilter" in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


@pytest.mark.parametrize("command,expected", [
    (["man", "-P", "cat", "spfmilter"], "spfmilter.conf"),
    (["man", "-P", "cat", "5", "spfmilter.conf"], "dns_timeout"),
    (["man", "-P", "cat", "-l", "/usr/share/man/man8/spfmilter.8.gz"], "SYNOPSIS"),
])
def test_installed_man_pages_render(installed, command, expected):
    proc = _run(*command, env={"MANWIDTH": "80"}, check=False)
    assert proc.returncode == 0 and expected in proc.stdout, proc.stderr
    assert not proc.stderr.strip(), proc.stderr


class UnitProcess:
    """/usr/sbin/spfmilter started like the unit (User=spfmilter, its ExecStart, a clean
    environment), with stderr (the unit's journal) in a file."""

    def __init__(self, conf: Path, log: Path):
        self.log = log
        self._log_handle = open(log, "wb")
        self.proc = subprocess.Popen(["runuser", "-u", "spfmilter", "--", str(BINARY), "-c", str(conf)],
                                     env={"PATH": DEBIAN_PATH, "LANG": "C.UTF-8"}, stdin=subprocess.DEVNULL,
                                     stdout=self._log_handle, stderr=subprocess.STDOUT)

    def main_pid(self, timeout: float = 20) -> int:
        """The daemon's own pid (runuser's child)."""
        deadline = time.monotonic() + timeout
        while not children(self.proc.pid):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "runuser started no daemon"
            time.sleep(0.02)
        return children(self.proc.pid)[0]

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            os.kill(self.main_pid(), signal.SIGTERM)  # systemd's stop: SIGTERM to the main process
        try:
            return self.proc.wait(timeout)
        finally:
            self._log_handle.close()


def test_installed_daemon_behind_postfix_with_metrics(installed, world, tmp_path):
    """The unit's command line on the packaged configuration, socket and DNS changed, behind a
    private Postfix: our Authentication-Results arrives, and the metrics page (Debian's
    prometheus_client 0.16) counts the message.  spf_fail_hold = dkim makes the workers load
    the Public Suffix List with python3-publicsuffix2 (Debian has no publicsuffixlist)."""
    milter_port, metrics_port = free_port(), free_port()
    run_dir = Path(tempfile.mkdtemp(prefix="spfmilter-deb-"))
    try:
        os.chmod(run_dir, 0o755)
        conf = run_dir / "spfmilter.conf"
        conf.write_text(set_keys(CONF.read_text(), socket=f"inet:{milter_port}@127.0.0.1",
                                  dns_servers=f"127.0.0.1:{world.port}", authserv_id="mx.test",
                                  metrics_listen=f"127.0.0.1:{metrics_port}",
                                  # loads the Public Suffix List: python3-publicsuffix2 on Debian's file
                                  spf_fail_hold="dkim"))
        shutil.copystat(CONF, conf)
        os.chown(conf, 0, pwd.getpwnam("spfmilter").pw_gid)  # as packaged: root:spfmilter 0640
        check = _run("runuser", "-u", "spfmilter", "--", str(BINARY), "--check-config", "-c", str(conf), check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        daemon = UnitProcess(conf, run_dir / "stderr.log")
        try:
            wait_ready(("127.0.0.1", milter_port), timeout=30, proc=daemon.proc)
            main = daemon.main_pid()
            assert pwd.getpwuid(os.stat(f"/proc/{main}").st_uid).pw_name == "spfmilter"
            assert os.readlink(f"/proc/{main}/exe").startswith("/usr/bin/python3")
            settings = contrib_main_cf(f"inet:127.0.0.1:{milter_port}")
            with PostfixInstance(tmp_path / "postfix", milters=settings.pop("smtpd_milters"),
                                 milter_default_action=settings.pop("milter_default_action"),
                                 extra_main_cf=settings) as postfix:
                sender = "x@fail.example"
                result = postfix.send(sender, ["user@mx.test"], message(sender), client_ip=CLIENT_IP, helo=HELO)
                print(result.transcript_text())
                assert result.accepted, result.transcript_text()  # header-only, the packaged default
                delivered = postfix.wait_for_delivery("user@mx.test", 1)[-1]
            assert {k: v[0] for k, v in our_authentication_results(delivered).items()} == \
                {"helo": "pass", "mailfrom": "fail"}
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                page = response.read().decode()
            assert re.search(r'^spfmilter_spf_results_total\{identity="mailfrom",result="fail"\} 1\.0$', page, re.M), page
        finally:
            status = daemon.stop()
        log = daemon.log.read_text()
        print(log)
        assert status == 0, log
        assert "Traceback" not in log
        assert re.search(r"identity=mailfrom.*fail\.example|fail\.example.*identity=mailfrom", log), log
        assert not pid_alive(main)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
