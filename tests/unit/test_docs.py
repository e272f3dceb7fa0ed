"""The documentation cannot drift from the code: every key in one reference table and the sample file."""
from __future__ import annotations

import re
from pathlib import Path

from spfmilter.config import KEYS, defaults, load

ROOT = Path(__file__).resolve().parents[2]


def _readme_table() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        match = re.match(r"^\| `([a-z_]+)` \| (.*?) \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def test_readme_documents_every_key_and_nothing_else():
    rows = _readme_table()
    assert list(rows) == [key.name for key in KEYS]
    for key in KEYS:
        default, meaning = rows[key.name]
        assert default == (key.shown or f"`{key.default}`"), key.name  # "host name" for authserv_id
        assert meaning == key.help, key.name


def test_sample_config_sets_every_key_to_its_default():
    text = (ROOT / "contrib" / "spfmilter.conf").read_text()
    mentioned = set(re.findall(r"^#?([a-z_]+) = ", text, re.MULTILINE))
    assert mentioned == {key.name for key in KEYS}
    sample = load(str(ROOT / "contrib" / "spfmilter.conf"))
    built_in = defaults()
    for key in KEYS:
        if key.name not in ("authserv_id",):
            assert getattr(sample, key.name) == getattr(built_in, key.name), key.name
