"""Summarise a py-spy profile: the functions where a milter spends its CPU time.

``py-spy record --format raw`` writes collapsed stacks, one line per distinct stack:
``frame;frame;...;frame COUNT`` with the outermost frame first, each frame
``function (file:line)``; with ``--subprocesses`` each stack starts with ``process PID:"cmdline"``
frames, which are dropped here (a stack with nothing else counts as ``(no Python frame)``).
bench/run.py records with ``--gil``, so only samples of a thread holding the GIL count: Python
CPU time, not threads waiting in select() or in libmilter.  :func:`summarise` turns that into the top functions by *self* samples
(the function was on top of the stack) and by *inclusive* samples (it was anywhere in the stack,
counted once per stack), as shares of all samples.

    python -m bench.profile profile.txt [--top 15]
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

_LINE = re.compile(r"^(?P<stack>.*\S)\s+(?P<count>\d+)$")
NO_FRAME = "(no Python frame)"
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class Row:
    function: str  # "name (file)" without the line number
    self_share: float
    inclusive_share: float


def frame_key(frame: str) -> str:
    """``name (path/to/file.py:123)`` -> ``name (file.py)``: one key per function, not per line."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['function']} ({match['file'].rsplit('/', 1)[-1]})"


def parse(lines: Iterable[str]) -> list:
    """[(frames, count)] from collapsed-stack lines; blank and malformed lines are skipped."""
    out = []
    for line in lines:
        match = _LINE.match(line.strip())
        if match:
            frames = [f for f in match["stack"].split(";") if not f.startswith("process ")]
            out.append((frames or [NO_FRAME], int(match["count"])))
    return out


def summarise(lines: Iterable[str], top: int = 15) -> tuple:
    """(total samples, rows by self share, rows by inclusive share), ``top`` rows each."""
    stacks = parse(lines)
    total = sum(count for _, count in stacks)
    own: Counter = Counter()
    inclusive: Counter = Counter()
    for frames, count in stacks:
        keys = [frame_key(f) for f in frames]
        own[keys[-1]] += count
        for key in set(keys):
            inclusive[key] += count

    def rows(counter: Counter) -> list:
        return [Row(name, own[name] / total, inclusive[name] / total) for name, _ in counter.most_common(top)]

    if not total:
        return 0, [], []
    return total, rows(own), rows(inclusive)


def inclusive_shares(lines: Iterable[str], functions: Sequence[str]) -> dict:
    """function -> share of all samples with it anywhere in the stack (once per stack).

    ``functions`` are names as py-spy shows them without the file, e.g. ``DnsClient.lookup``;
    a name that matches several files counts once per stack all the same."""
    stacks = parse(lines)
    total = sum(count for _, count in stacks)
    out = dict.fromkeys(functions, 0.0)
    if not total:
        return out
    for frames, count in stacks:
        names = {frame_key(f).split(" (", 1)[0] for f in frames}
        for function in functions:
            if function in names:
                out[function] += count / total
    return out


def render(total: int, by_self: list, by_inclusive: list) -> str:
    lines = [f"{total} samples.", "", "| top by self time | self | inclusive |", "|---|---|---|"]
    lines += [f"| `{r.function}` | {100 * r.self_share:.1f} % | {100 * r.inclusive_share:.1f} % |" for r in by_self]
    lines += ["", "| top by inclusive time | inclusive | self |", "|---|---|---|"]
    lines += [f"| `{r.function}` | {100 * r.inclusive_share:.1f} % | {100 * r.self_share:.1f} % |"
              for r in by_inclusive]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", help="py-spy record --format raw output")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    with open(args.raw, encoding="utf-8", errors="replace") as handle:
        print(render(*summarise(handle, args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
