"""What text shown on a terminal may contain (``spfmilter explain`` output)."""
from __future__ import annotations

import re

# Anything that could end a line, move the cursor, recolour the terminal or reorder text.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\ud800-\udfff]")


def safe_lines(text: str) -> None:
    """Output may contain LF only as our own line ends, and no other control character."""
    assert "\r" not in text and "\t" not in text
    assert not CONTROL.search(text), repr(text)
