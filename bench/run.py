"""Side-by-side benchmark: spfmilter against spf-engine's pyspf-milter, same sessions, same DNS.

    python -m bench.run --write docs/PERFORMANCE.md      # the whole report, issue sizes
    python -m bench.run [--quick] [--seconds 20] [--no-profile] [--no-e2e] [--no-workers]
    python -m bench.run --only cold-c64-5ms --cold-domains 5000 --no-e2e

Scenarios run in one of three worlds: ``hot`` (600 sender domains reused, the cache answers
nearly everything), ``cold`` (one case per sender domain, each used at most once, so every
session's sender domain is new within the run; the big providers' records stay shared) and
``zipf`` (sessions draw their sender domain from a Zipf law over ``--zipf-domains`` domains, the
DNS server gives each name a TTL of 300-3600 s).  Beside msg/s, every run records the milter's
CPU time per message (user + system time of all its processes, from /proc/PID/stat, over every
session measured after the warm-up), and a trivial pymilter milter that adds one header
(bench/trivial_milter.py) is measured at c=1 in the same run as the floor.  The spfmilter
processes of the cold scenarios are sampled with py-spy, in an extra run after the measured one,
and the top functions summarised (bench/profile.py; ``--no-profile`` skips it).  spfmilter also runs cold-c64-5ms with
``workers = 2`` and ``auto`` (``--no-workers`` skips it), and the memory of one DNS cache entry
is measured in-process (bench/memory.py).

For each scenario both milters are started fresh (inet socket on 127.0.0.1), each with
its own fresh loopback DNS server (tests/support/dnsserver.py) serving the generated
world (bench/zones.py) with the scenario's latency; the load client (bench/loadclient.py)
drives sessions the way Postfix does and checks every answer against the expected SPF
result, so a faster wrong answer is a failure.  spf-engine 3.1 is installed from PyPI
into its own venv (bench/.venv-spf-engine) on first use.  Then the Postfix end-to-end
comparison (bench/postfix_e2e.py) runs smtp-source -> Postfix -> smtp-sink with and
without spfmilter.

``--write FILE`` writes the whole report, docs/PERFORMANCE.md: the machine and the command,
the goals of issue 15 judged from the run, every table, and the generated explanations
(bench/report.py).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench import procs, report
from bench.loadclient import run_load
from bench.memory import TreeMemory
from bench.zones import cold_world, generate, zipf_cases, zone_ttls

ROOT = Path(__file__).resolve().parent.parent
SPF_ENGINE_VENV = ROOT / "bench" / ".venv-spf-engine"
SPF_ENGINE_PACKAGES = ["spf-engine==3.1.0", "pymilter", "pyspf", "dnspython", "authres"]


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    latency: float  # seconds added to every DNS answer
    dead_fraction: float = 0.0  # share of sessions whose sender domain's DNS never answers
    world: str = "hot"  # "hot", "cold" or "zipf" (see the module doc)


SCENARIOS = [
    Scenario("c1-0ms", 1, 0.0),
    Scenario("c8-5ms", 8, 0.005),
    Scenario("c64-5ms", 64, 0.005),
    Scenario("c64-5ms-dead-dns", 64, 0.005, dead_fraction=0.05),
    Scenario("cold-c64-5ms", 64, 0.005, world="cold"),
    Scenario("cold-c1-0ms", 1, 0.0, world="cold"),
    Scenario("zipf-c64-5ms", 64, 0.005, world="zipf"),
]
FLOOR = Scenario("floor-c1-0ms", 1, 0.0)
# The same trivial milter with Nagle's algorithm left on (plain libmilter): the floor as issue 15 first
# measured it, shown for comparison; the goals use FLOOR (TCP_NODELAY, as spfmilter sets it).
FLOOR_NAGLE = Scenario("floor-nagle-c1-0ms", 1, 0.0)
# The trivial milter under the c64-5ms load: the highest rate the load client and DNS server leave
# room for on this machine, so a rate goal above it cannot be shown here.
CEILING = Scenario("ceiling-c64-5ms", 64, 0.005)
WORKERS_SCENARIO = "cold-c64-5ms"  # where spfmilter also runs with workers = 2 and auto
WORKER_SETTINGS = ("1", "2", "auto")
DNS_TIMEOUT = 3.0  # spfmilter's dns_timeout in every run
HOT_DOMAINS = 600
ZIPF_SESSIONS = 200_000  # sessions drawn for the zipf world (more than any run uses)


@dataclass
class Measurement:
    milter: str
    scenario: str
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    sessions: int
    errors: int
    mismatches: int
    unchecked: int
    peak_rss_mib: float
    peak_pss_mib: float
    dns_queries: int
    queries_per_msg: float
    queries_per_name: float = 0.0  # upstream queries per distinct (name, type) asked
    dead_max_ms: float = 0.0
    dead_sessions: int = 0
    live_msgs_per_s: float = 0.0
    cpu_ms_per_msg: float = 0.0  # milter user+system CPU after the warm-up / sessions measured
    profile: str = ""  # path of the py-spy raw profile, if one was taken
    concurrency: int = 0
    workers: str = "1"  # spfmilter's workers setting
    processes: int = 0  # most processes of the milter seen at once
    root_rss_mib: float = 0.0  # the first process (spfmilter's supervisor) alone
    root_pss_mib: float = 0.0
    cpu_ms_per_msg_all: float = 0.0  # over every session of the run, warm-up included
    kernel_share: float = 0.0  # system / (user + system) CPU over the whole run (context switches, syscalls)


def ensure_spf_engine() -> Path:
    python = SPF_ENGINE_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SPF_ENGINE_VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import spf_engine.milter_spf, Milter, spf, dns"],
                           capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *SPF_ENGINE_PACKAGES], check=True)
    return python


DEAD_CONCURRENCY = 8  # sessions with dead DNS in flight at once, beside the live ones


async def _gather(*coroutines):
    return await asyncio.gather(*coroutines)


def with_dead_dns(cases, fraction: float):
    """Cases where ``fraction`` of the sender domains never answer (expected: temperror)."""
    if not fraction:
        return list(cases), set()
    domains = sorted({c.domain for c in cases if c.expected_mailfrom != "temperror"})
    step = max(1, round(1 / fraction))
    dead = set(domains[::step])
    return [replace(c, expected_mailfrom="temperror") if c.domain in dead else c for c in cases], dead


def start_dns(workdir: Path, world_path: Path, faults_path: Path, latency: float, tag: str,
              ttls_path: Path | None = None):
    stats = workdir / f"dns-{tag}.json"
    ttls = ["--ttls", str(ttls_path)] if ttls_path else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.dnsserver", "--port", "0", "--zone", str(world_path),
         "--faults", str(faults_path), "--latency", str(latency), "--ttl", "3600", "--stats-file", str(stats),
         *ttls],
        cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
    line = procs.wait_line(proc, "listening on", timeout=300.0)  # a 100,000-domain world loads slowly
    return proc, int(line.split()[-1]), stats


def start_spfmilter(workdir: Path, dns_port: int, tag: str, workers: str = "1", budget: float = DNS_TIMEOUT,
                    unix_path: str | None = None):
    port = procs.free_port()
    conf = workdir / f"spfmilter-{tag}.conf"
    socket_spec = f"unix:{unix_path}" if unix_path else f"inet:{port}@127.0.0.1"
    conf.write_text(
        f"socket = {socket_spec}\nauthserv_id = mx.test\ndns_servers = 127.0.0.1:{dns_port}\n"
        f"trusted_networks =\nworkers = {workers}\ndns_timeout = {budget}\nlog_level = info\n")
    proc = subprocess.Popen([sys.executable, "-m", "spfmilter", "-c", str(conf)], cwd=str(ROOT),
                            stdout=subprocess.DEVNULL, stderr=open(workdir / f"spfmilter-{tag}.log", "wb"))
    return proc, port


def start_spf_engine(workdir: Path, dns_port: int, tag: str):
    python = ensure_spf_engine()
    port = procs.free_port()
    conf = workdir / f"spf-engine-{tag}.conf"
    conf.write_text(
        "debugLevel = 0\nTestOnly = 1\nHELO_reject = False\nMail_From_reject = False\n"
        "PermError_reject = False\nTempError_Defer = False\nskip_addresses = 127.0.0.0/8,::1\n"
        f"Socket = inet:{port}@127.0.0.1\nPidFile = {workdir}/spf-engine-{tag}.pid\nUserID = root\n"
        "Header_Type = AR\nAuthserv_Id = mx.test\n")
    proc = subprocess.Popen([str(python), str(ROOT / "bench" / "spf_engine_runner.py"), "pyspf-milter", str(dns_port),
                             str(conf)],
                            cwd=str(workdir), stdout=subprocess.DEVNULL,
                            stderr=open(workdir / f"spf-engine-{tag}.log", "wb"))
    return proc, port


def start_trivial(workdir: Path, nagle: bool = False):
    port = procs.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.trivial_milter", *(["--nagle"] if nagle else []),
                             f"inet:{port}@127.0.0.1"],
                            cwd=str(ROOT), stdout=subprocess.DEVNULL,
                            stderr=open(workdir / "trivial.log", "wb"))
    return proc, port


def start_profiler(pid: int, out: Path, seconds: float, workdir: Path):
    """py-spy sampling ``pid`` and its children for ``seconds`` (raw collapsed stacks into ``out``)."""
    pyspy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen([str(pyspy), "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--gil",
                             "--format", "raw", "--output", str(out), "--duration", str(max(1, round(seconds))),
                             "--rate", "200"],
                            stdout=subprocess.DEVNULL, stderr=open(workdir / f"{out.name}.log", "wb"))


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    from tests.support.milterclient import wait_ready

    wait_ready(("127.0.0.1", port), timeout=timeout, proc=proc)


def measure(milter: str, scenario: Scenario, world, paths, workdir: Path, seconds: float,
            warmup: float, cases=None, profile: bool = False, workers: str = "1") -> Measurement:
    tag = f"{milter}-{scenario.name}" + (f"-w{workers}" if workers != "1" else "")
    faults = paths["faults"]
    once = scenario.world == "cold"
    if scenario.dead_fraction:
        _, dead_domains = with_dead_dns(world.cases, scenario.dead_fraction)
        faults = workdir / f"faults-{tag}.json"
        faults.write_text(json.dumps(json.loads(paths["faults"].read_text())
                                     + [[d, "timeout"] for d in sorted(dead_domains)]))
    dns_proc, dns_port, stats_path = start_dns(workdir, paths["zones"], faults, scenario.latency, tag,
                                               paths.get("ttls"))
    profiler = None
    try:
        if milter == "spfmilter":
            proc, port = start_spfmilter(workdir, dns_port, tag, workers=workers)
        elif milter == "trivial":
            proc, port = start_trivial(workdir, nagle=scenario is FLOOR_NAGLE)
        else:
            proc, port = start_spf_engine(workdir, dns_port, tag)
        try:
            wait_port(port, proc)
            cases, dead = with_dead_dns(world.cases if cases is None else cases, scenario.dead_fraction)
            cpu_before = procs.cpu_seconds(proc.pid)
            split_before = procs.cpu_split(proc.pid)
            # CPU at the end of the warm-up (run_load's measured window starts then), so a hot
            # scenario's CPU per message is not the cache being filled.
            cpu_at_warm: list = []
            warm_timer = threading.Timer(warmup, lambda: cpu_at_warm.append(procs.cpu_seconds(proc.pid)))
            warm_timer.start()
            if profile:
                profile_path = workdir / f"profile-{tag}.txt"
                profiler = start_profiler(proc.pid, profile_path, warmup + seconds, workdir)
            with TreeMemory(proc.pid) as memory:
                if dead:
                    # The live sessions run at the scenario's concurrency; the sessions whose DNS is
                    # dead run beside them in their own slots, so the live throughput shows whether
                    # the milter keeps serving everyone else.
                    live = [c for c in cases if c.domain not in dead]
                    dying = [c for c in cases if c.domain in dead]
                    stats, dead_stats = asyncio.run(_gather(
                        run_load(("127.0.0.1", port), live, concurrency=scenario.concurrency,
                                 duration=seconds, warmup=warmup, check=True),
                        run_load(("127.0.0.1", port), dying, concurrency=DEAD_CONCURRENCY,
                                 duration=seconds, warmup=0.0, check=True, timeout=60.0)))
                else:
                    dead_stats = None
                    stats = asyncio.run(run_load(("127.0.0.1", port), cases, concurrency=scenario.concurrency,
                                                 duration=seconds, warmup=warmup, check=milter != "trivial",
                                                 once=once))
            warm_timer.cancel()
            warm_timer.join()
            cpu_end = procs.cpu_seconds(proc.pid)
            split_end = procs.cpu_split(proc.pid)
            if profiler is not None:
                profiler.wait(timeout=warmup + seconds + 60)
        finally:
            if profiler is not None and profiler.poll() is None:
                profiler.kill()
                profiler.wait()
            procs.stop(proc)
    finally:
        procs.stop(dns_proc)
    dns_stats = json.loads(stats_path.read_text()) if stats_path.exists() else {"queries": 0}
    total_sessions = stats.sessions + stats.warmup_sessions
    cpu_all = 1000 * (cpu_end - cpu_before) / total_sessions if total_sessions else 0.0
    user, system = (end - start for start, end in zip(split_before, split_end))
    cpu_measured = 1000 * (cpu_end - cpu_at_warm[0]) / stats.sessions if cpu_at_warm and stats.sessions else cpu_all
    m = Measurement(
        milter=milter, scenario=scenario.name, msgs_per_s=stats.msgs_per_s, p50_ms=stats.p50_ms,
        p99_ms=stats.p99_ms, max_ms=stats.max_ms, sessions=stats.sessions, errors=stats.errors,
        mismatches=len(stats.mismatches), unchecked=stats.unchecked,
        peak_rss_mib=memory.peak_rss_kib / 1024, peak_pss_mib=memory.peak_pss_kib / 1024,
        dns_queries=dns_stats["queries"],
        queries_per_msg=dns_stats["queries"] / total_sessions if total_sessions else 0.0,
        queries_per_name=dns_stats["queries"] / dns_stats["distinct"] if dns_stats.get("distinct") else 0.0,
        cpu_ms_per_msg=cpu_measured, cpu_ms_per_msg_all=cpu_all,
        profile=str(profile_path) if profiler is not None else "", concurrency=scenario.concurrency,
        workers=workers, processes=memory.processes, root_rss_mib=memory.root_rss_kib / 1024,
        root_pss_mib=memory.root_pss_kib / 1024,
        kernel_share=system / (user + system) if user + system else 0.0)
    if dead_stats is not None:
        m.dead_sessions = dead_stats.sessions
        m.dead_max_ms = dead_stats.max_ms
        m.live_msgs_per_s = stats.msgs_per_s
        m.errors += dead_stats.errors
        m.mismatches += len(dead_stats.mismatches)
    return m


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{len(os.sched_getaffinity(0))} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; load client, DNS server and milter "
            f"share the same cores")


def render_tables(results: list[Measurement], seconds: float) -> str:
    """The scenario tables (every run with ``workers = 1``), the ratios and the dead-DNS table."""
    by = report.main_runs(results)
    floor = by.get(("trivial", FLOOR.name))
    lines = [
        "| scenario | milter | msg/s | p50 ms | p99 ms | peak RSS MiB (sum) | peak PSS MiB (sum) | DNS queries/msg "
        "| queries per distinct name | CPU ms/msg | CPU / floor | CPU in kernel | errors | wrong |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS + [FLOOR, FLOOR_NAGLE, CEILING]:
        for milter in ("spf-engine", "spfmilter", "trivial"):
            m = by.get((milter, scenario.name))
            if m is None:
                continue
            over_floor = (f"{m.cpu_ms_per_msg / floor.cpu_ms_per_msg:.1f}x"
                          if floor and floor.cpu_ms_per_msg else "-")
            lines.append(f"| {scenario.name} | {milter} | {m.msgs_per_s:.0f} | {m.p50_ms:.1f} | {m.p99_ms:.1f} | "
                         f"{m.peak_rss_mib:.0f} | {m.peak_pss_mib:.0f} | {m.queries_per_msg:.2f} | "
                         f"{m.queries_per_name:.2f} | {m.cpu_ms_per_msg:.2f} | {over_floor} | "
                         f"{100 * m.kernel_share:.0f} % | {m.errors} | {m.mismatches} |")
    lines += ["", "| scenario | msg/s ratio (spfmilter / spf-engine) | p99 ratio (spfmilter / spf-engine) "
                  "| CPU ratio (spfmilter / spf-engine) |", "|---|---|---|---|"]
    for scenario in SCENARIOS:
        ours, theirs = by.get(("spfmilter", scenario.name)), by.get(("spf-engine", scenario.name))
        if ours and theirs and theirs.msgs_per_s and theirs.p99_ms:
            cpu = f"{ours.cpu_ms_per_msg / theirs.cpu_ms_per_msg:.2f}" if theirs.cpu_ms_per_msg else "-"
            lines.append(f"| {scenario.name} | {ours.msgs_per_s / theirs.msgs_per_s:.2f}x | "
                         f"{ours.p99_ms / theirs.p99_ms:.2f} | {cpu} |")
    dead = [m for m in by.values() if m.dead_sessions or m.scenario == report.DEAD]
    if dead:
        normal = {m.milter: m for m in by.values() if m.scenario == report.HOT_C64}
        lines += ["", "Dead DNS (`c64-5ms-dead-dns`): the sessions of the dead domains beside the normal c64 load. "
                      "A milter that keeps serving the others keeps its c64-5ms rate.", "",
                  "| milter | affected sessions completed | slowest affected session ms | msg/s of the others | "
                  "same without dead DNS |", "|---|---|---|---|---|"]
        for m in dead:
            base = normal.get(m.milter)
            slowest = f"{m.dead_max_ms:.0f}" if m.dead_sessions else f"none finished within {seconds:.0f} s"
            lines.append(f"| {m.milter} | {m.dead_sessions} | {slowest} | {m.live_msgs_per_s:.0f} | "
                         f"{f'{base.msgs_per_s:.0f}' if base else '-'} |")
    return "\n".join(lines)


def render(results: list[Measurement], e2e, seconds: float) -> str:
    """The scenario tables and the end-to-end table (what ``--write`` puts in the middle of the document)."""
    text = render_tables(results, seconds)
    if e2e:
        text += "\n\n" + report.render_e2e(e2e)
    return text


PROFILE_FUNCTIONS = ("DnsClient.lookup", "Resolver.resolve", "query.check", "SpfMilter.envfrom")


def profile_sections(results: list[Measurement], top: int = 15) -> list[str]:
    """Markdown for every py-spy profile the run took (bench/profile.py reads the raw files)."""
    from bench.profile import inclusive_shares, render as render_profile, summarise

    out = []
    for m in results:
        if not (m.profile and Path(m.profile).exists()):
            continue
        text = Path(m.profile).read_text(encoding="utf-8", errors="replace").splitlines()
        reading = report.profile_reading(m.scenario, inclusive_shares(text, PROFILE_FUNCTIONS))
        out += [f"### {m.milter} in {m.scenario}", "", render_profile(*summarise(text, top))]
        if reading:
            out += ["", reading]
        out.append("")
    return out


@dataclass(frozen=True)
class RunInfo:
    """What the document says about the run itself."""

    command: str
    date: str
    minutes: float
    machine: str
    cores: int
    auto_workers: int
    seconds: float
    warmup: float
    cold_domains: int
    zipf_domains: int


def render_document(results: list[Measurement], e2e, info: RunInfo, cache=None, workers_rows=(),
                    profiled=(), dns_lookups=()) -> str:
    """The whole of docs/PERFORMANCE.md."""
    from bench.memory import render_cache_memory

    facts = report.Facts(cores=info.cores, cold_domains=info.cold_domains,
                         cache_bytes_per_entry=cache.mix_bytes if cache else None,
                         cache_size=cache.default_cache_size if cache else 10000)
    by = report.main_runs(results)
    lines = [
        "# Performance", "",
        f"Generated by `{info.command}` on {info.date} (the run took {info.minutes:.0f} minutes). "
        "Do not edit by hand: run the command again.", "",
        f"Machine: {info.machine}.", "",
        "## Goals of issue 15", "",
        "Ratios are measured in this one run on this machine; absolute figures vary by machine.", "",
        report.render_goals(report.goal_rows(results, e2e, facts)), "",
        "## spfmilter and spf-engine side by side", "",
        report.scenario_text(info.cold_domains, info.zipf_domains, HOT_DOMAINS, info.seconds, info.warmup,
                             DEAD_CONCURRENCY, DNS_TIMEOUT), "",
        render_tables(results, info.seconds), "",
        "## Memory", "",
        report.memory_text(by), "",
    ]
    if cache is not None:
        lines += [render_cache_memory(cache), ""]
    if dns_lookups:
        lines += ["## DNS lookups", "", report.render_dns_lookups(dns_lookups), ""]
    if workers_rows:
        lines += ["## Worker processes", "",
                  f"spfmilter alone in {WORKERS_SCENARIO} with different `workers`, in the same run:", "",
                  report.render_workers(workers_rows, info.cores, info.auto_workers), ""]
    if e2e:
        lines += ["## Postfix end to end", "",
                  "smtp-source -> private Postfix (with the milter or policy server, if any) -> smtp-sink, "
                  "the client presented to Postfix with XCLIENT so the SPF checks really run "
                  "(bench/postfix_e2e.py).", "", report.render_e2e(e2e), ""]
    profiles = profile_sections(list(profiled))
    if profiles:
        lines += ["## Where the time goes", "", report.PROFILE_TEXT, "", *profiles]
    return "\n".join(lines).rstrip() + "\n"


E2E_SESSIONS = 8  # smtp-source connections open at a time, one message each (see run_e2e)
E2E_REPEATS = 3  # rounds in which the e2e setups take turns; each row is its setup's best


def policyd_spf_service(dns_port: int, confdir: Path) -> tuple[list, dict]:
    """(master.cf entries, main.cf settings) for spf-engine's policyd-spf via spawn(8), header-only.

    Both identities are checked (HELO_reject / Mail_From_reject = False: check, never refuse,
    prepend the result), one Authentication-Results header as spfmilter adds, no address
    skipped but loopback (as the bench's pyspf-milter), resolving through the bench's DNS."""
    python = ensure_spf_engine()
    # spawn(8) runs the command as an unprivileged user, who may not reach the interpreter the
    # venv links to (e.g. under /root): the system python3 runs it with the venv's packages.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    conf = confdir / "policyd-spf.conf"
    conf.write_text("debugLevel = 0\nTestOnly = 1\nHELO_reject = False\nMail_From_reject = False\n"
                    "PermError_reject = False\nTempError_Defer = False\nskip_addresses = 127.0.0.0/8,::1\n"
                    "Header_Type = AR\nAuthserv_Id = mx.test\n")
    os.chmod(conf, 0o644)
    runner = ROOT / "bench" / "spf_engine_runner.py"
    master = [f"policyd-spf/unix=policyd-spf unix - n n - - spawn user=nobody "
              f"argv=/usr/bin/env PYTHONPATH={purelib} python3 -s {runner} policyd-spf {dns_port} {conf}"]
    main = {"policyd-spf_time_limit": "3600",
            "smtpd_recipient_restrictions": "check_policy_service unix:private/policyd-spf"}
    return master, main


def run_e2e(workdir: Path, world, paths, messages: int, sessions: int = E2E_SESSIONS,
            repeats: int = E2E_REPEATS):
    """smtp-source -> Postfix -> smtp-sink, one message per connection, ``sessions`` connections at
    a time, all with the same XCLIENT client and sender: without a milter (first row), with the
    trivial pymilter milter over both sockets (the floor of any pymilter milter), with spfmilter
    over inet and unix sockets, and with spf-engine's policyd-spf as a Postfix policy service
    instead.  ``sessions`` = 8 stands for a busy MX (a few clients delivering at once) and keeps
    the two cores saturated, so the rate shows CPU cost; sessions = 1 shows latency.

    The setups take turns, ``repeats`` rounds (the milters stay up between them), and each row is
    the setup's best round: other load on the machine only ever slows a run down, and taking
    turns spreads it over all setups.

    ``added_ms`` of each row is the time per message it adds to the no-milter run: with
    ``sessions`` connections always open, a message spends sessions / rate in the system
    (Little's law), so added = sessions * (1/rate - 1/rate without)."""
    from bench.postfix_e2e import added_ms, measure as e2e_measure
    from tests.support.milterclient import wait_ready

    # A passing case, presented to Postfix with XCLIENT so spfmilter really checks it.
    case = next(c for c in world.cases if c.expected_mailfrom == "pass" and ":" not in c.client_ip)
    common = dict(messages=messages, sessions=sessions, xclient_addr=case.client_ip, sender=case.sender,
                  helo=case.helo, warmup=max(5, 2 * sessions))
    # Postfix's smtpd (user postfix) and spawn's child (user nobody) must reach sockets and files.
    sockdir = Path(tempfile.mkdtemp(prefix="spfmilter-bench-sock-"))
    os.chmod(sockdir, 0o755)
    started = []

    def unix_milter(proc: subprocess.Popen, path: str) -> dict:
        started.append(proc)
        wait_ready(path, timeout=30, proc=proc)
        os.chmod(path, 0o666)
        return dict(milter=f"unix:{path}", milter_pid=proc.pid)

    dns_proc, dns_port, _ = start_dns(workdir, paths["zones"], paths["faults"], 0.0, "e2e")
    try:
        setups = [("no milter", {})]
        # The floor over both sockets (with TCP_NODELAY over inet, as spfmilter: bench/trivial_milter.py).
        trivial, trivial_port = start_trivial(workdir)
        started.append(trivial)
        wait_port(trivial_port, trivial)
        setups.append(("trivial pymilter milter, inet socket", dict(milter=f"inet:127.0.0.1:{trivial_port}",
                                                                    milter_pid=trivial.pid)))
        path = str(sockdir / "trivial.sock")
        setups.append(("trivial pymilter milter, unix socket", unix_milter(subprocess.Popen(
            [sys.executable, "-m", "bench.trivial_milter", f"unix:{path}"], cwd=str(ROOT),
            stdout=subprocess.DEVNULL, stderr=open(workdir / "trivial-unix.log", "wb")), path)))
        proc, port = start_spfmilter(workdir, dns_port, "e2e-inet")
        started.append(proc)
        wait_port(port, proc)
        setups.append(("spfmilter (header-only), inet socket", dict(milter=f"inet:127.0.0.1:{port}",
                                                                   milter_pid=proc.pid)))
        path = str(sockdir / "spfmilter.sock")
        setups.append(("spfmilter (header-only), unix socket", unix_milter(
            start_spfmilter(workdir, dns_port, "e2e-unix", unix_path=path)[0], path)))
        master, main = policyd_spf_service(dns_port, sockdir)
        setups.append(("policyd-spf (check_policy_service, spawn; header-only)",
                       dict(extra_master_cf=master, extra_main_cf=main)))
        best: dict = {}
        for _ in range(max(1, repeats)):
            for label, how in setups:
                result = e2e_measure(**how, **common)
                if label not in best or result.msgs_per_s > best[label].msgs_per_s:
                    best[label] = result
    finally:
        for proc in started:
            procs.stop(proc)
        procs.stop(dns_proc)
    results = [(label, best[label]) for label, _ in setups]
    for label, how in setups:
        if "milter_pid" not in how and label != setups[0][0]:
            best[label].milter_cpu_ms_per_msg = None  # processes spawn(8) starts: not measured
    base = results[0][1]
    for _, result in results[1:]:
        result.added_ms = added_ms(result.msgs_per_s, base.msgs_per_s, sessions)
    return results


def build_worlds(kinds: set, workdir: Path, cold_domains: int, zipf_domains: int) -> dict:
    """kind -> (world, DNS file paths, cases or None for the world's own) for the scenarios' worlds."""
    worlds = {}
    for kind in sorted(kinds):
        if kind == "hot":
            world, cases = generate(600), None
        elif kind == "cold":
            world, cases = cold_world(cold_domains), None
        elif kind == "zipf":
            world = cold_world(zipf_domains)
            cases = zipf_cases(world, ZIPF_SESSIONS)
        else:
            raise ValueError(f"unknown world {kind!r}")
        paths = {"zones": workdir / f"zones-{kind}.json", "faults": workdir / f"faults-{kind}.json"}
        world.save_dns_files(str(paths["zones"]), str(paths["faults"]))
        if kind == "zipf":
            paths["ttls"] = workdir / "ttls-zipf.json"
            paths["ttls"].write_text(json.dumps(zone_ttls(world)))
        worlds[kind] = (world, paths, cases)
    return worlds


def auto_workers() -> int:
    """What ``workers = auto`` starts on this machine (spfmilter's own rule)."""
    from spfmilter.server import resolve_workers

    return resolve_workers(0)


def workers_plan(settings=WORKER_SETTINGS, auto: int = 1) -> list:
    """[(label, setting)] to run: ``auto`` is run only when it is a count not listed already."""
    counts = {s for s in settings if s != "auto"}
    plan = []
    for setting in settings:
        if setting == "auto":
            if str(auto) in counts:
                continue
            plan.append((f"auto ({auto})", "auto"))
        else:
            plan.append((setting + (" (= auto here)" if "auto" in settings and setting == str(auto) else ""), setting))
    return plan


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="5 s runs, for a smoke test")
    parser.add_argument("--only", choices=[s.name for s in SCENARIOS], action="append")
    parser.add_argument("--no-e2e", action="store_true", help="skip the Postfix end-to-end comparison")
    parser.add_argument("--e2e-messages", type=int, default=2000)
    parser.add_argument("--write", metavar="FILE", help="also write the whole report (markdown) to FILE")
    parser.add_argument("--cold-domains", type=int, default=50_000,
                        help="sender domains of the cold world (each used once)")
    parser.add_argument("--zipf-domains", type=int, default=100_000, help="sender domains of the zipf world")
    parser.add_argument("--no-floor", action="store_true", help="skip the trivial-milter floor")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="py-spy profile of spfmilter in the cold scenarios (default: on)")
    parser.add_argument("--no-workers", action="store_true",
                        help=f"skip spfmilter's runs of {WORKERS_SCENARIO} with workers = 2 and auto")
    parser.add_argument("--no-cache-memory", action="store_true", help="skip the memory per DNS cache entry")
    parser.add_argument("--no-dns-lookups", action="store_true",
                        help="skip the DNS lookup microbenchmark (bench/dnsbench.py)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    seconds = 5.0 if args.quick else args.seconds
    workdir = Path(tempfile.mkdtemp(prefix="spfmilter-bench-"))
    print(f"working directory {workdir}", flush=True)
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    worlds = build_worlds({"hot"} | {s.world for s in scenarios}, workdir, args.cold_domains, args.zipf_domains)
    world, paths, _ = worlds["hot"]
    results = []
    auto = auto_workers()

    profiled = []  # runs made only for a profile: py-spy costs CPU, so their figures are not reported

    def run(milter: str, scenario: Scenario, workers: str = "1", profile: bool = False) -> Measurement:
        started = time.monotonic()
        s_world, s_paths, s_cases = worlds[scenario.world]
        m = measure(milter, scenario, s_world, s_paths, workdir, seconds, args.warmup, cases=s_cases,
                    profile=profile, workers=workers)
        print(f"{scenario.name:18} {milter:10} w={workers:4}{' profiled' if profile else ''} "
              f"{m.msgs_per_s:7.1f} msg/s  p50 {m.p50_ms:7.1f} ms  "
              f"p99 {m.p99_ms:7.1f} ms  rss {m.peak_rss_mib:5.1f} MiB  pss {m.peak_pss_mib:5.1f} MiB  "
              f"procs {m.processes}  q/msg {m.queries_per_msg:.2f}  cpu {m.cpu_ms_per_msg:.2f} ms/msg  "
              f"errors {m.errors}  wrong {m.mismatches}  ({time.monotonic() - started:.0f} s)", flush=True)
        (profiled if profile else results).append(m)
        return m

    if not args.no_floor:
        run("trivial", FLOOR)
        run("trivial", FLOOR_NAGLE)
        run("trivial", CEILING)
    workers_rows = []
    for scenario in scenarios:
        for milter in ("spf-engine", "spfmilter"):
            m = run(milter, scenario)
            if milter == "spfmilter" and scenario.world == "cold" and args.profile:
                run(milter, scenario, profile=True)
            if milter == "spfmilter" and scenario.name == WORKERS_SCENARIO and not args.no_workers:
                for label, setting in workers_plan(WORKER_SETTINGS, auto):
                    workers_rows.append((label, m if setting == "1" else run(milter, scenario, setting)))
    cache = None
    if not args.no_cache_memory:
        from bench.memory import cache_memory

        cache = cache_memory()
        print(f"DNS cache: {cache.mix_bytes:.0f} bytes per entry (mix)", flush=True)
    e2e = None if args.no_e2e else run_e2e(workdir, world, paths, args.e2e_messages)
    (workdir / "results.json").write_text(json.dumps([m.__dict__ for m in results], indent=1))
    command = shlex.join([".venv/bin/python", "-m", "bench.run", *(sys.argv[1:] if argv is None else argv)])
    info = RunInfo(command=command, date=time.strftime("%Y-%m-%d"), minutes=(time.monotonic() - began) / 60,
                   machine=machine_description(), cores=len(os.sched_getaffinity(0)), auto_workers=auto,
                   seconds=seconds, warmup=args.warmup, cold_domains=args.cold_domains,
                   zipf_domains=args.zipf_domains)
    dns_lookups = []
    if not args.no_dns_lookups:
        from bench import dnsbench

        for threads in (1, 16):
            dns_lookups.append(dnsbench.run(lookups=2000, threads=threads, rounds=3))
        dns_lookups[0]["breakdown_us"] = dnsbench.breakdown()
        print("DNS lookups: " + ", ".join(
            f"{r['threads']} thread(s) {r['transport']['cpu_ratio']:.2f}x the resolver's CPU" for r in dns_lookups),
            flush=True)
    document = render_document(results, e2e, info, cache, workers_rows, profiled, dns_lookups)
    print()
    print(document)
    if args.write:
        Path(args.write).write_text(document)
    failures = [m for m in results if m.errors or m.mismatches]
    for m in failures:
        print(f"FAILED: {m.milter} {m.scenario} (workers {m.workers}): {m.errors} errors, {m.mismatches} wrong",
              file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
