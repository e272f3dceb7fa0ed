"""The man pages cannot drift from the code: man/ holds exactly what spfmilter.manpage renders,
every key and option is in them, and groff renders them without a warning."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from spfmilter import manpage
from spfmilter.cli import _parser
from spfmilter.config import KEYS

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"
REGENERATE = "man page out of date: run `python -m spfmilter.manpage man` and commit the result"


@pytest.mark.parametrize("name", sorted(manpage.PAGES))
def test_committed_page_is_up_to_date(name):
    path = MAN / name
    assert path.exists(), f"{path} missing: {REGENERATE}"
    assert path.read_text(encoding="utf-8") == manpage.PAGES[name](), f"{name}: {REGENERATE}"


def _long_options(parser):
    names = []
    for action in parser._actions:
        names += [name for name in action.option_strings if name.startswith("--")]
        for sub in getattr(action, "choices", None) or {}:
            if hasattr(action.choices[sub], "_actions"):
                names += _long_options(action.choices[sub])
    return names


def test_conf_page_documents_every_key_in_order():
    text = manpage.render_conf5()
    positions = []
    for key in KEYS:
        tag = f"\n.TP\n\\fB\\%{manpage.escape(key.name, literal=True)}\\fR = "
        assert tag in text, key.name
        positions.append(text.index(tag))
    assert positions == sorted(positions)


def test_spfmilter_page_documents_every_long_option():
    text = manpage.render_spfmilter8()
    options = _long_options(_parser())
    assert {"--config", "--check-config", "--ip", "--helo", "--sender", "--recipient",
            "--auth-user"} <= set(options)
    for option in options:
        assert manpage.escape(option, literal=True) in text, option


@pytest.mark.parametrize("line, expected", [
    (".start", "\\&.start"),
    ("'quote", "\\&'quote"),
    ("mid. dle", "mid. dle"),
])
def test_protect_leading_control_characters(line, expected):
    assert manpage.protect(line) == expected


def test_escape_backslash_and_hyphen():
    assert manpage.escape("a\\b-c") == "a\\eb-c"
    assert manpage.escape("--x", literal=True) == "\\-\\-x"
    assert manpage.inline("use `a-b` now") == "use \\fB\\%a\\-b\\fR now"


def test_write_pages(tmp_path):
    assert manpage.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spfmilter.8", "spfmilter.conf.5"]
    assert (tmp_path / "spfmilter.8").read_text() == manpage.render_spfmilter8()


def _need(tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (Debian: apt-get install groff-base man-db)")


@pytest.mark.parametrize("name", sorted(manpage.PAGES))
def test_groff_renders_without_warnings(name, tmp_path):
    _need("groff")
    path = tmp_path / name
    path.write_text(manpage.PAGES[name]())
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.parametrize("name, words", [
    ("spfmilter.conf.5", ["dns_timeout", "authserv_id", "(host name)", "(/etc/resolv.conf)",
                          "/etc/spfmilter/spfmilter.conf", "spfmilter(8)"]),
    ("spfmilter.8", ["5.7.23", "5.7.24", "4.7.24", "--check-config", "--auth-user", "SIGTERM",
                     "identity=mailfrom", "spfmilter.conf(5)", "postconf(5)"]),
])
def test_man_renders_page(name, words, tmp_path):
    _need("man")
    path = tmp_path / name
    path.write_text(manpage.PAGES[name]())
    env = dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="80", LC_ALL="C.UTF-8")
    env.pop("MAN_KEEP_FORMATTING", None)
    result = subprocess.run(["man", "-l", str(path)], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    text = result.stdout
    for word in words:
        assert word in text, word
    for line in text.splitlines():
        assert len(line) <= 80, line
