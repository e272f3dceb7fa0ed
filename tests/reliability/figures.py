"""Figures the reliability tests record, for docs/RELIABILITY.md (see tests/reliability/report.py).

A test calls ``record("section", key=value, ...)``; the values land in
``$SPFMILTER_FIGURES_DIR/section.json`` (nothing is written when the variable is unset,
as in a plain ``./dev.sh test``).  ``long_run()`` is true under ``SPFMILTER_LONG=1``: the
soak and fuzz runs then use their full sizes instead of the short CI ones.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path


def long_run() -> bool:
    return os.environ.get("SPFMILTER_LONG") == "1"


def size(short: int, full: int) -> int:
    """``full`` in a long run, ``short`` otherwise."""
    return full if long_run() else short


def record(section: str, **values) -> None:
    """Merge ``values`` into the section's figures (safe across pytest processes)."""
    directory = os.environ.get("SPFMILTER_FIGURES_DIR")
    if not directory:
        return
    path = Path(directory) / f"{section}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        text = handle.read()
        data = json.loads(text) if text.strip() else {}
        data.update(values)
        handle.seek(0)
        handle.truncate()
        json.dump(data, handle, indent=1, sort_keys=True)


def load_all(directory: str) -> dict:
    return {path.stem: json.loads(path.read_text()) for path in sorted(Path(directory).glob("*.json"))}
