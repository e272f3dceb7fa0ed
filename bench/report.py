"""The generated text of docs/PERFORMANCE.md (issue 15): pure functions, measurements in, markdown out.

bench/run.py measures and calls these; nothing here starts a process or reads a file, so the
tables are tested with made-up measurements (tests/unit/test_bench_tools.py).  A measurement is
anything with the attributes of ``bench.run.Measurement``; an end-to-end row is a
``(label, bench.postfix_e2e.Result)`` pair, the first row being Postfix without a milter.

Every sentence that carries a figure computes it from the measurements, so the prose stays true
whatever a run measures.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"
MB = 10 ** 6
MIB = 2 ** 20

# The goals of issue 15, as numbers.
GOAL_COLD_DOMAINS = 50_000
GOAL_COLD_RATIO = 3.0  # cold c64 5 ms: spfmilter msg/s / spf-engine msg/s
GOAL_HOT_RATIO = 4.0  # hot c64 5 ms
GOAL_CPU_COLD = 2.0  # CPU per message / floor, cold c1
GOAL_CPU_HOT = 1.3  # hot c1
GOAL_E2E_UNIX = 0.80  # share of Postfix's no-milter rate
GOAL_E2E_INET = 0.70
GOAL_MEMORY_MB = 60.0  # the whole daemon at c=64
DEAD_KEEP = 0.90  # "others keep their rate": this share of the rate without dead DNS (noise margin)

# Scenario names (bench/run.py SCENARIOS) the goals read.
COLD_C64, COLD_C1, HOT_C64, HOT_C1, DEAD = "cold-c64-5ms", "cold-c1-0ms", "c64-5ms", "c1-0ms", "c64-5ms-dead-dns"
FLOOR = "floor-c1-0ms"
CEILING = "ceiling-c64-5ms"  # the trivial milter under the c64-5ms load: the most this machine can show


@dataclass(frozen=True)
class Facts:
    """What a run knows besides the measurements."""

    cores: int
    cold_domains: int
    cache_bytes_per_entry: Optional[float] = None  # None: not measured
    cache_size: int = 10000  # spfmilter's default dns_cache_size


@dataclass(frozen=True)
class GoalRow:
    goal: str
    measured: str
    verdict: str  # MET, NOT_MET or NOT_MEASURED
    note: str = ""


# --- helpers ------------------------------------------------------------------------------------

def main_runs(results: Sequence) -> dict:
    """(milter, scenario) -> measurement, for the runs with spfmilter's default ``workers = 1``."""
    return {(m.milter, m.scenario): m for m in results if getattr(m, "workers", "1") == "1"}


def _ok(condition: bool) -> str:
    return MET if condition else NOT_MET


def _ceiling(m, needed: float) -> str:
    """Why a rate goal is missed, in numbers: the CPU a message costs against the rate needed."""
    if not m.cpu_ms_per_msg:
        return ""
    return (f"spfmilter spends {m.cpu_ms_per_msg:.2f} ms CPU per message here: one fully used core gives "
            f"≈ {1000 / m.cpu_ms_per_msg:.0f} msg/s; the goal needs {needed:.0f} msg/s")


def find_e2e(e2e: Sequence, *words: str, without: Sequence[str] = ()) -> Optional[tuple]:
    """The first (label, result) whose label holds every word and none of ``without`` (any case)."""
    for label, result in e2e or ():
        text = label.lower()
        if all(w in text for w in words) and not any(w in text for w in without):
            return label, result
    return None


def e2e_share(e2e: Sequence, row: tuple) -> float:
    base = e2e[0][1].msgs_per_s
    return row[1].msgs_per_s / base if base else 0.0


def _added(result) -> str:
    added = getattr(result, "added_ms", None)
    return f", +{added:.2f} ms per message" if isinstance(added, (int, float)) else ""


# --- the goals ----------------------------------------------------------------------------------

def _rate_goal(by: dict, scenario: str, target: float, title: str, extra: str = "",
               more_workers: Sequence = ()) -> GoalRow:
    """msg/s against spf-engine's; ``more_workers``: spfmilter's runs of the scenario with other
    ``workers`` settings, which can meet the goal too (the row says which did)."""
    ours, theirs = by.get(("spfmilter", scenario)), by.get(("spf-engine", scenario))
    if ours is None or theirs is None or not theirs.msgs_per_s:
        return GoalRow(title, "-", NOT_MEASURED, f"run the {scenario} scenario")
    ratio = ours.msgs_per_s / theirs.msgs_per_s
    correct = not ours.errors and not ours.mismatches
    measured = (f"{ratio:.2f}× ({ours.msgs_per_s:.0f} / {theirs.msgs_per_s:.0f} msg/s); "
                f"{ours.errors} errors, {ours.mismatches} wrong")
    best = None
    for m in more_workers:
        m_ratio = m.msgs_per_s / theirs.msgs_per_s
        measured += (f"; workers = {m.workers}: {m_ratio:.2f}× ({m.msgs_per_s:.0f} msg/s), "
                     f"{m.errors} errors, {m.mismatches} wrong")
        if not m.errors and not m.mismatches and m_ratio >= target and best is None:
            best = m
    notes = []
    if best is not None:
        notes.append(f"met with workers = {best.workers}, not with one worker")
    elif ratio < target:
        notes.append(_ceiling(ours, target * theirs.msgs_per_s))
    ceiling = by.get(("trivial", CEILING))
    if ratio < target and best is None and ceiling is not None and ceiling.msgs_per_s:
        notes.append(f"the trivial milter, which does nothing, reaches {ceiling.msgs_per_s:.0f} msg/s under this "
                     f"load on this machine (load client and DNS server on the same cores), i.e. "
                     f"{ceiling.msgs_per_s / theirs.msgs_per_s:.2f}× spf-engine: the most any milter can show here")
    if not correct:
        notes.append("some sessions failed or got a wrong answer")
    if extra:
        return GoalRow(title, measured, NOT_MEASURED, extra)
    met = (ratio >= target and correct) or best is not None
    return GoalRow(title, measured, _ok(met), "; ".join(n for n in notes if n))


def _cpu_goal(by: dict, scenario: str, target: float, title: str, note: str) -> GoalRow:
    ours, floor = by.get(("spfmilter", scenario)), by.get(("trivial", FLOOR))
    if ours is None or floor is None or not floor.cpu_ms_per_msg or not ours.cpu_ms_per_msg:
        return GoalRow(title, "-", NOT_MEASURED, f"run the {scenario} scenario and the floor")
    ratio = ours.cpu_ms_per_msg / floor.cpu_ms_per_msg
    measured = f"{ratio:.2f}× ({ours.cpu_ms_per_msg:.2f} / {floor.cpu_ms_per_msg:.2f} ms)"
    if ratio > target:
        note = "; ".join(n for n in (_cpu_split_note(ours, floor), note) if n)
    return GoalRow(title, measured, _ok(ratio <= target), note if ratio > target else "")


def _cpu_split_note(ours, floor) -> str:
    """Where the CPU above the floor is: kernel (system) time against user time, per message."""
    ours_share, floor_share = getattr(ours, "kernel_share", 0.0), getattr(floor, "kernel_share", 0.0)
    if not ours_share or not floor_share:
        return ""
    ours_kernel, floor_kernel = ours.cpu_ms_per_msg * ours_share, floor.cpu_ms_per_msg * floor_share
    ours_user, floor_user = ours.cpu_ms_per_msg - ours_kernel, floor.cpu_ms_per_msg - floor_kernel
    return (f"kernel time per message {ours_kernel:.2f} ms against the floor's {floor_kernel:.2f} (the milter "
            f"protocol's system calls, the same for both), user time {ours_user:.2f} against {floor_user:.2f} ms: "
            "the difference is Python, spfmilter's own work (SPF evaluation, DNS messages, the "
            "Authentication-Results field, a log line per identity) and pymilter's glue around it")


def _e2e_goal(e2e: Sequence, socket: str, target: float, title: str) -> GoalRow:
    row = find_e2e(e2e, "spfmilter", socket, without=("policyd", "trivial"))
    if row is None:
        return GoalRow(title, "-", NOT_MEASURED, "run without --no-e2e")
    share = e2e_share(e2e, row)
    measured = f"{100 * share:.0f} % ({row[1].msgs_per_s:.0f} of {e2e[0][1].msgs_per_s:.0f} msg/s{_added(row[1])})"
    note = ""
    if share < target:
        floor = find_e2e(e2e, "trivial", socket) or find_e2e(e2e, "trivial")
        if floor is not None:
            note = (f"the trivial pymilter milter ({floor[0]}), the floor of any pymilter milter, keeps "
                    f"{100 * e2e_share(e2e, floor):.0f} %")
    return GoalRow(title, measured, _ok(share >= target), note)


def _policyd_goal(e2e: Sequence) -> GoalRow:
    title = ("Against policyd-spf (Postfix `check_policy_service`), end to end on the same DNS world: "
             "spfmilter's rate and added latency beside it")
    policyd = find_e2e(e2e, "policyd")
    ours = [row for row in e2e or () if "spfmilter" in row[0].lower() and "policyd" not in row[0].lower()]
    if not e2e:
        return GoalRow(title, "-", NOT_MEASURED, "run without --no-e2e")
    if policyd is None or not ours:
        return GoalRow(title, "-", NOT_MEASURED, "the end-to-end run has no policyd-spf row")
    parts = [f"{label}: {r.msgs_per_s:.0f} msg/s, {100 * e2e_share(e2e, (label, r)):.0f} %{_added(r)}"
             for label, r in [policyd, *ours]]
    return GoalRow(title, "; ".join(parts), MET)


def _memory_goal(by: dict) -> GoalRow:
    title = f"Memory ≤ {GOAL_MEMORY_MB:.0f} MB for the whole daemon at c=64 (all its processes: PSS sum)"
    runs = [m for (milter, _), m in by.items() if milter == "spfmilter" and m.concurrency == 64 and m.peak_pss_mib]
    if not runs:
        return GoalRow(title, "-", NOT_MEASURED, "run a c=64 scenario")
    worst = max(runs, key=lambda m: m.peak_pss_mib)
    pss_mb = worst.peak_pss_mib * MIB / MB
    measured = (f"{worst.peak_pss_mib:.1f} MiB = {pss_mb:.1f} MB PSS in {worst.scenario} "
                f"({memory_split(worst)}); RSS sum {worst.peak_rss_mib:.1f} MiB")
    note = ""
    if worst.peak_rss_mib * MIB / MB > GOAL_MEMORY_MB >= pss_mb:
        note = "the RSS sum is above the goal only because it counts the pages the processes share once per process"
    return GoalRow(title, measured, _ok(pss_mb <= GOAL_MEMORY_MB), note)


def memory_split(m) -> str:
    """'2 processes: supervisor 9.1 MiB, worker 38.0 MiB' (PSS) for a measurement of the daemon."""
    workers = max(0, m.processes - 1)
    rest = m.peak_pss_mib - m.root_pss_mib
    noun = "worker" if workers == 1 else f"{workers} workers"
    return f"{m.processes} processes: supervisor {m.root_pss_mib:.1f} MiB, {noun} {rest:.1f} MiB"


def _cache_goal(facts: Facts) -> GoalRow:
    title = "The DNS cache's memory per entry is stated"
    if facts.cache_bytes_per_entry is None:
        return GoalRow(title, "-", NOT_MEASURED, "run without --no-cache-memory")
    full = facts.cache_bytes_per_entry * facts.cache_size / MIB
    return GoalRow(title, f"{facts.cache_bytes_per_entry:.0f} bytes per entry; a full cache of {facts.cache_size} "
                          f"entries ≈ {full:.1f} MiB per worker", MET)


def _dead_goal(by: dict) -> GoalRow:
    title = (f"Dead DNS: the other sessions keep their rate while some domains time out "
             f"(≥ {100 * DEAD_KEEP:.0f} % of the rate without dead DNS, a margin for noise)")
    dead, base = by.get(("spfmilter", DEAD)), by.get(("spfmilter", HOT_C64))
    if dead is None or base is None or not base.msgs_per_s:
        return GoalRow(title, "-", NOT_MEASURED, f"run {DEAD} and {HOT_C64}")
    kept = dead.live_msgs_per_s / base.msgs_per_s
    slowest = f"slowest {dead.dead_max_ms:.0f} ms" if dead.dead_sessions else "none finished"
    measured = (f"{100 * kept:.0f} % ({dead.live_msgs_per_s:.0f} of {base.msgs_per_s:.0f} msg/s); "
                f"{dead.dead_sessions} affected sessions answered, {slowest}")
    note = "" if dead.dead_sessions else "no session with a dead domain got its answer within the run"
    return GoalRow(title, measured, _ok(kept >= DEAD_KEEP and dead.dead_sessions > 0), note)


def _correct_goal(results: Sequence) -> GoalRow:
    title = "Correct on every session (every spfmilter run, answers checked against the expected SPF results)"
    ours = [m for m in results if m.milter == "spfmilter"]
    if not ours:
        return GoalRow(title, "-", NOT_MEASURED)
    errors, wrong = sum(m.errors for m in ours), sum(m.mismatches for m in ours)
    sessions = sum(m.sessions for m in ours)
    bad = sorted({m.scenario for m in ours if m.errors or m.mismatches})
    return GoalRow(title, f"{sessions} sessions: {errors} errors, {wrong} wrong", _ok(not errors and not wrong),
                   f"in {', '.join(bad)}" if bad else "")


def goal_rows(results: Sequence, e2e: Optional[Sequence], facts: Facts) -> list:
    """One row per goal of issue 15: what was measured and whether the goal is met."""
    by = main_runs(results)
    cold_workers = [m for m in results if m.milter == "spfmilter" and m.scenario == COLD_C64
                    and getattr(m, "workers", "1") != "1"]
    small = (f"the cold world has {facts.cold_domains} domains; the goal is for ≥ {GOAL_COLD_DOMAINS}"
             if facts.cold_domains < GOAL_COLD_DOMAINS else "")
    e2e = e2e or []
    return [
        _rate_goal(by, COLD_C64, GOAL_COLD_RATIO,
                   f"Cold cache (≥ {GOAL_COLD_DOMAINS} sender domains, each new), c=64, 5 ms DNS: "
                   f"≥ {GOAL_COLD_RATIO:.0f}× spf-engine's msg/s, correct on every session", extra=small,
                   more_workers=cold_workers),
        _cpu_goal(by, COLD_C1, GOAL_CPU_COLD,
                  f"CPU per message, cold cache, c=1: ≤ {GOAL_CPU_COLD}× the floor (a trivial pymilter milter)",
                  "the profiles of the cold scenarios below show where the time goes"),
        _cpu_goal(by, HOT_C1, GOAL_CPU_HOT, f"CPU per message, hot cache, c=1: ≤ {GOAL_CPU_HOT}× the floor",
                  "with every answer cached and most results reused from the SPF result cache, what is left is "
                  "the milter protocol, the header field and the log lines (no profile of the hot scenario is "
                  "taken)"),
        _rate_goal(by, HOT_C64, GOAL_HOT_RATIO,
                   f"Hot cache, c=64, 5 ms DNS: ≥ {GOAL_HOT_RATIO:.0f}× spf-engine's msg/s"),
        _e2e_goal(e2e, "unix", GOAL_E2E_UNIX, "Postfix end to end, one message per connection, unix socket: "
                                              f"≥ {100 * GOAL_E2E_UNIX:.0f} % of the no-milter rate"),
        _e2e_goal(e2e, "inet", GOAL_E2E_INET, "Postfix end to end, one message per connection, inet socket: "
                                              f"≥ {100 * GOAL_E2E_INET:.0f} % of the no-milter rate"),
        _policyd_goal(e2e),
        _memory_goal(by),
        _cache_goal(facts),
        _dead_goal(by),
        _correct_goal(results),
    ]


def render_goals(rows: Sequence[GoalRow]) -> str:
    lines = ["| goal | measured | verdict | why / note |", "|---|---|---|---|"]
    for row in rows:
        verdict = row.verdict if row.verdict == MET else f"**{row.verdict}**"
        lines.append(f"| {row.goal} | {row.measured} | {verdict} | {row.note} |")
    met = [r for r in rows if r.verdict == MET]
    missed = [r for r in rows if r.verdict == NOT_MET]
    unmeasured = [r for r in rows if r.verdict == NOT_MEASURED]
    summary = f"{len(met)} of {len(rows)} goals met"
    if missed:
        summary += f"; not met: {len(missed)} ({'; '.join(_short(r.goal) for r in missed)})"
    if unmeasured:
        summary += f"; not measured in this run: {len(unmeasured)} ({'; '.join(_short(r.goal) for r in unmeasured)})"
    return "\n".join(lines + ["", summary + "."])


def _short(goal: str) -> str:
    return goal.split(":")[0]


# --- the end-to-end table -----------------------------------------------------------------------

E2E_BASE_FIELDS = ("msgs_per_s", "seconds", "delivered", "messages", "sessions", "submit_seconds")


def _numeric_fields(result) -> list:
    if dataclasses.is_dataclass(result):
        names = [f.name for f in dataclasses.fields(result)]
    else:
        names = list(vars(result))
    return [n for n in names if n not in E2E_BASE_FIELDS and _is_number(getattr(result, n, None))]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value) -> str:
    if not _is_number(value):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def render_e2e(e2e: Sequence) -> str:
    """label, msg/s, share of the first row's rate, then every extra numeric field of the results."""
    extras: list = []
    for _, result in e2e:
        extras += [name for name in _numeric_fields(result) if name not in extras]
    header = ["setup", "msg/s", "share of the first row's rate", *(name.replace("_", " ") for name in extras)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, result in e2e:
        cells = [label, f"{result.msgs_per_s:.0f}", f"{100 * e2e_share(e2e, (label, result)):.0f} %",
                 *(_number(getattr(result, name, None)) for name in extras)]
        lines.append("| " + " | ".join(cells) + " |")
    first = e2e[0][1]
    messages, sessions = getattr(first, "messages", 0), getattr(first, "sessions", 0)
    if messages:
        lines += ["", f"Each row: {messages} messages over {sessions} concurrent SMTP session(s) of smtp-source "
                      "(bench/postfix_e2e.py); the first row is the baseline of the share column."]
    return "\n".join(lines)


# --- workers ------------------------------------------------------------------------------------

def render_workers(rows: Sequence[tuple], cores: int, auto: int) -> str:
    """rows: [(label, measurement)] of spfmilter in one scenario with different ``workers``."""
    if not rows:
        return ""
    lines = ["| workers | processes | msg/s | CPU ms/msg | p99 ms | peak PSS MiB (sum) | peak RSS MiB (sum) |",
             "|---|---|---|---|---|---|---|"]
    for label, m in rows:
        lines.append(f"| {label} | {m.processes} | {m.msgs_per_s:.0f} | {m.cpu_ms_per_msg:.2f} | {m.p99_ms:.1f} | "
                     f"{m.peak_pss_mib:.1f} | {m.peak_rss_mib:.1f} |")
    return "\n".join(lines + ["", workers_text(rows, cores, auto)])


def workers_text(rows: Sequence[tuple], cores: int, auto: int) -> str:
    first = rows[0][1]
    text = [f"`workers = auto` starts one worker per core the process may run on, at most 8: here {auto} "
            f"({cores} cores)."]
    for label, m in rows[1:]:
        if first.msgs_per_s:
            text.append(f"With {label} the milter did {m.msgs_per_s / first.msgs_per_s:.2f}× the msg/s of one "
                        f"worker, at {m.cpu_ms_per_msg:.2f} against {first.cpu_ms_per_msg:.2f} ms CPU per message.")
    if first.cpu_ms_per_msg:
        text.append(f"At {first.cpu_ms_per_msg:.2f} ms CPU per message one worker, one Python process with one GIL, "
                    f"can do at most ≈ {1000 / first.cpu_ms_per_msg:.0f} msg/s on a core of this speed.")
    text.append(
        f"Here the load client, the DNS server and the milter share the {cores} cores, so a second worker only "
        "gets CPU the others leave idle. On a mail server with more cores than the mail load needs, each worker "
        "is a process of its own, so the rate grows with the workers until the cores, the DNS latency or the "
        "MTA is the limit; each worker costs its own memory (the PSS column) and its own DNS cache, which warms "
        "separately, so more workers send more upstream queries for the same mail. Choose `auto` (or the number "
        "of cores the MTA leaves free) when one worker's rate above is not enough for the peak load.")
    return " ".join(text)


# --- prose --------------------------------------------------------------------------------------

def memory_text(by: dict) -> str:
    """What the memory columns count, with the split of the daemon's processes when measured."""
    text = ("The memory columns sum over every process of a milter. spfmilter runs a supervisor (pymilter and the "
            "configuration only) that forks its workers (`workers = 1`: one worker, which holds the SPF machinery "
            "and the DNS cache), so one spfmilter is two processes. The worker is a fork of the supervisor and "
            "shares many of its pages; an RSS sum counts such a page once per process, while PSS (proportional "
            "set size) divides it between them, so the PSS sum is the RAM the daemon really occupies and the "
            "figure the memory goal is judged by.")
    sample = by.get(("spfmilter", COLD_C64)) or next((m for (milter, _), m in sorted(by.items())
                                                      if milter == "spfmilter" and m.processes), None)
    if sample is not None and sample.processes:
        text += (f" In {sample.scenario}: {memory_split(sample)} PSS; RSS sum {sample.peak_rss_mib:.1f} MiB, "
                 f"of which the supervisor {sample.root_rss_mib:.1f} MiB.")
    return text


def scenario_text(cold_domains: int, zipf_domains: int, hot_domains: int, seconds: float, warmup: float,
                  dead_concurrency: int, dns_timeout: float) -> str:
    return (
        f"Scenarios: `cN` is N concurrent sessions, `Nms` the latency the DNS server adds to every answer. "
        f"The hot world has {hot_domains} sender domains reused by every session, so the cache answers nearly "
        f"every lookup. `cold-*`: every session's sender domain is new within the run ({cold_domains} domains, one "
        "case per domain, each used at most once; the big providers' `include:` targets and the HELO names are "
        "shared, as on a real MX); a cold run ends early when the domains are used up. `zipf-*`: sender domains "
        f"drawn from a Zipf law (exponent 1) over {zipf_domains} domains, every DNS name with a TTL between 300 "
        f"and 3600 s (a run of {seconds:.0f} s sees no TTL expire, so this shows the hit rate of a Zipf mix, not "
        f"expiry). Dead DNS: 5 % of the sender domains never answer; their sessions run {dead_concurrency} at a "
        f"time beside the normal c64 load; spfmilter has `dns_timeout = {dns_timeout:g}`, spf-engine its fixed "
        "20 s per lookup. spfmilter runs with its default log level (info: a line per message, here into a file); "
        "spf-engine with `debugLevel = 0` (no line per message). "
        "Every milter is started fresh for every run with its own fresh DNS server, and every "
        "answer is checked against the expected SPF result (not for the trivial milter, which adds no "
        f"Authentication-Results), so a faster wrong answer counts as a failure. Each run measures {seconds:.0f} s "
        f"after a {warmup:.0f} s warm-up. CPU ms/msg: user + system time of all the milter's processes from the "
        "end of the warm-up to the end of the run, over the sessions measured (over every session when a cold run "
        "ends within its warm-up). CPU in kernel: the system-time share of that CPU over the whole run; with many "
        "sessions in flight it is mostly threads handing Python's GIL to one another (futex waits and wake-ups, "
        "context switches), which `perf record -e cpu-clock -g` on the milter shows. The floor (`floor-c1-0ms`) is bench/trivial_milter.py, a pymilter milter "
        "that only adds one header, at c=1, with TCP_NODELAY set on its listening socket as spfmilter sets it; "
        "the CPU goals are judged against it. `floor-nagle-c1-0ms` is the same milter with Nagle's algorithm left "
        "on, as plain libmilter does and as issue 15 first measured the floor: each message then waits for a "
        "delayed ACK (hence its msg/s), and it costs more CPU per message, not less, so it would be the easier "
        "floor to be measured against. `ceiling-c64-5ms` is the same trivial milter under the c64-5ms load: the rate the "
        "load client and the DNS server, on the same cores, leave room for, i.e. the most any milter can show on "
        "this machine.")


PROFILE_TEXT = (
    "The profiles are py-spy (`record --gil --subprocesses`, 200 Hz) on spfmilter's processes in the cold "
    "scenarios, each in a run of its own after the measured one (the sampler costs CPU on the same cores, so "
    "those runs' figures are not in the tables): only samples of a thread holding the GIL count, so they show Python CPU, not waiting. "
    "\"(no Python frame)\" is time with the GIL held outside any Python frame (pymilter's C glue around "
    "libmilter's callbacks). Self: the function was on top of the stack; inclusive: anywhere in it.")


def profile_reading(scenario: str, shares: dict) -> str:
    """One sentence from the inclusive shares of a few functions (name -> share; absent ones skipped)."""
    parts = [f"`{name}` {100 * share:.0f} %" for name, share in shares.items() if share]
    if not parts:
        return ""
    return f"In {scenario}, share of the samples inside: " + ", ".join(parts) + "."


# --- DNS lookups (bench/dnsbench.py) -------------------------------------------------------------

def render_dns_lookups(runs: Sequence[dict]) -> str:
    """CPU per cold DNS lookup through DnsClient: dnspython's resolver against spfmilter's transport."""
    lines = ["| callers at once | dnspython's resolver, ms CPU per lookup | spfmilter's transport, ms CPU per lookup "
             "| transport / resolver | wrong answers |", "|---|---|---|---|---|"]
    for run in runs:
        ours, theirs = run["transport"], run["resolver"]
        lines.append(f"| {run['threads']} | {theirs['cpu_ms_per_lookup']:.3f} | {ours['cpu_ms_per_lookup']:.3f} | "
                     f"{ours['cpu_ratio']:.2f} | {ours['wrong'] + theirs['wrong']} |")
    text = ("bench/dnsbench.py: a fresh DnsClient per implementation looks up "
            f"{runs[0]['lookups']} names none of which is cached (one upstream query each) from a loopback DNS "
            "server in another process, so the CPU time is the client's alone; median of "
            f"{runs[0]['rounds']} rounds, implementations taking turns. spfmilter's transport writes and reads "
            "the messages itself (spfmilter/dnswire.py) on a connected UDP socket per query.")
    pieces = runs[0].get("breakdown_us")
    if pieces:
        text += (" Per query, in microseconds: " + ", ".join(f"{name.replace('_', ' ')} {value:.1f}"
                                                            for name, value in pieces.items()) + ".")
    return "\n".join(lines + ["", text])
