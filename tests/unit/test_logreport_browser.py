"""The HTML report in a real browser: headless Chromium runs its script and takes a screenshot.

Checks what a page can get wrong that string tests cannot see: the script runs under the
page's Content-Security-Policy without errors and really sorts (``--dump-dom`` after a
``#sort=`` fragment), and the screenshot is a page -- not blank, with the charts' and the
highlights' colours, and nothing wider than the window even with the longest names a
log can hold.

``./dev.sh test`` installs Chromium (Debian's ``chromium``; about 400 MB installed, a one-time
~110 MB download, these tests take ~5 s); on a machine without it they skip and say so.
"""
from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess

import pytest

from spfmilter.logreport import (ACCEPTED_COLOUR, BROKEN_COLOUR, DISPLAY_LIMIT, REFUSED_COLOUR, SORT_SCRIPT,
                                 WOULD_COLOUR, render_html)
from tests.support.png import read_png
from tests.unit.test_logreport import (ENFORCE, HEADER_ONLY, PERMERROR_REFUSED, R, summary_of, syslog,
                                       transaction)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (./dev.sh test installs it: apt-get install chromium)")
WIDTH, HEIGHT = 1280, 2400
LONG = ("l" * (DISPLAY_LIMIT + 20)) + ".example"  # cut to DISPLAY_LIMIT characters in the cells


def sample_page() -> str:
    """A report with every kind of row: refused, would refuse, PermError, long names, IPv6 clients."""
    lines, n = [], 0

    def add(*args, **kwargs):
        nonlocal n
        n += 1
        lines.extend(syslog(line) for line in transaction(*args, queue_id=str(n), **kwargs))

    for i in range(5):
        add(R.PASS, R.PASS, f"u{i}@good.example", rcpt_domains=("example.com",))
    for i in range(4):
        add(R.PASS, R.FAIL, f"n{i}@partner.example", ip="198.51.100.7", helo="fwd.lists.example",
            rcpt_domains=("example.com", "example.net"))
    for i in range(7):
        add(R.PASS, R.FAIL, "ceo@bank.example", ip=f"2001:db8:{i:x}::{i + 1:x}", helo=f"{LONG}{i}",
            rcpt_domains=(LONG,), config=ENFORCE if i < 2 else HEADER_ONLY)
    for i in range(2):
        add(R.PASS, R.PERMERROR, f"a{i}@broken.example", rcpt_domains=("example.com",), config=PERMERROR_REFUSED)
    add(R.PASS, R.FAIL, f"x@{LONG}", rcpt_domains=("example.org",))
    return render_html(summary_of(lines))


def chromium(*args: str, page, tmp_path, fragment: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path / 'profile'}", *args, page.as_uri() + fragment],
        capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to the console: script errors, Content-Security-Policy violations."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(sample_page())
    return path


def top_table(dom: str) -> str:
    return re.search(r'<table id="top".*?</table>', dom, re.DOTALL).group(0)


def test_the_script_runs_without_errors_and_sorts_from_the_fragment(page, tmp_path):
    shown = chromium("--dump-dom", page=page, tmp_path=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert console_messages(shown.stderr) == []
    assert 'data-sortable="6"' in shown.stdout  # the script ran over all six sortable tables
    unsorted = re.findall(r"<tr[^>]*><td>([^<]*)</td>", top_table(shown.stdout))
    assert unsorted[0] == "bank.example"  # most refused first, as written
    # column 1 (messages) ascending, then descending
    for fragment, expected in (("#sort=top.1", "ascending"), ("#sort=top.1.d", "descending")):
        sorted_dom = chromium("--dump-dom", page=page, tmp_path=tmp_path, fragment=fragment)
        assert console_messages(sorted_dom.stderr) == []
        table = top_table(sorted_dom.stdout)
        counts = [int(c) for c in re.findall(r'<tr[^>]*><td>[^<]*</td><td class="n">(\d+)</td>', table)]
        assert len(counts) == len(unsorted)
        assert counts == sorted(counts, reverse=expected == "descending") and counts != sorted(counts, reverse=expected != "descending")
        assert f'aria-sort="{expected}">messages</th>' in table


def test_a_broken_script_would_be_seen(page, tmp_path):
    # the console check above can fail: a script error (its hash made valid) is reported
    broken = SORT_SCRIPT.replace("function key(cell) {", "function key(cell) { notDefinedAnywhere();")
    digest = base64.b64encode(hashlib.sha256(broken.encode()).digest()).decode()
    text = re.sub(r"'sha256-[^']*'", f"'sha256-{digest}'", page.read_text()).replace(SORT_SCRIPT, broken)
    bad = tmp_path / "bad.html"
    bad.write_text(text)
    shown = chromium("--dump-dom", page=bad, tmp_path=tmp_path, fragment="#sort=top.1")
    assert any("notDefinedAnywhere" in line for line in console_messages(shown.stderr)), shown.stderr[-2000:]


def colour(hex_colour: str) -> tuple:
    return tuple(bytes.fromhex(hex_colour.lstrip("#")))


def test_the_screenshot_shows_the_charts_and_fits_the_window(page, tmp_path):
    shot = tmp_path / "report.png"
    taken = chromium(f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", page=page, tmp_path=tmp_path)
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    image = read_png(shot.read_bytes())
    assert (image.width, image.height) == (WIDTH, HEIGHT)
    pixels = {}
    for y in range(0, image.height, 2):
        for x in range(0, image.width, 2):
            rgb = image.pixel(x, y)
            pixels[rgb] = pixels.get(rgb, 0) + 1
    white = pixels.get((255, 255, 255), 0)
    assert white < 0.95 * sum(pixels.values())  # not a blank page
    # the bars and legend swatches in their three colours, the PermError highlight
    for name, wanted in (("refused", REFUSED_COLOUR), ("would refuse", WOULD_COLOUR),
                         ("accepted", ACCEPTED_COLOUR), ("PermError", BROKEN_COLOUR)):
        assert pixels.get(colour(wanted), 0) > 50, f"no {name} colour {wanted} in the screenshot"
    # nothing reaches the right edge: the body's 2em margin stays white, long names wrap
    margin = [image.pixel(x, y) for y in range(image.height) for x in range(WIDTH - 24, WIDTH)]
    assert set(margin) == {(255, 255, 255)}
