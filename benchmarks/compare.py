"""Compare direct PostgreSQL, PgBouncer and pgwarden on this machine, as ratios.

    python -m benchmarks.compare [--quick] [--rounds N] [--duration S] [--clients 8]
                                 [--targets direct,pgbouncer,pgwarden] [--modes simple,prepared]
                                 [--out benchmarks/RESULTS.md] [--json out.json]

It starts a throwaway cluster (:mod:`gateway.devcluster`), loads ``pgbench -i -s 10``,
creates one login role, puts PgBouncer (session mode) and pgwarden (1 worker) in front of
it, and then runs interleaved rounds: in every round, for every query mode, every target
runs ``pgbench -S -M <mode> -c 8 -j 2 -T <duration> -n`` (the order of the targets rotates
from one run to the next), then every target runs ``\\copy pgbench_accounts to /dev/null``
through ``psql``. For proxies it records the CPU time (utime + stime from ``/proc``) of the
proxy's whole process tree during each run and divides it by the transactions pgbench
reports. It prints and writes a Markdown report of the medians and the ratios
pgwarden/PgBouncer (tps, CPU µs per statement) and pgwarden/direct (COPY wall time).

The machine is small and shared: trust ratios from interleaved rounds, not absolute numbers.
Every process it starts is stopped on exit, Ctrl-C (SIGINT), SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.targets import (
    Target,
    direct_target,
    pgbouncer_binary,
    start_pgbouncer,
    start_pgwarden,
)
from gateway.devcluster import PgCluster

ALL_TARGETS = ("direct", "pgbouncer", "pgwarden")
ALL_MODES = ("simple", "extended", "prepared")
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
DBNAME = "bench"
ROLE = "bench"


# -- settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    rounds: int
    duration: int
    clients: int
    jobs: int
    scale: int
    modes: tuple[str, ...]
    targets: tuple[str, ...]
    workers: int
    warmup: int
    copy: bool
    out: Path | None
    json_path: Path | None
    keep: bool
    quick: bool
    argv: tuple[str, ...] = field(default=())

    @property
    def command(self) -> str:
        return shlex.join(["python", "-m", "benchmarks.compare", *self.argv])


def _csv(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(",") if item.strip())
        bad = [item for item in items if item not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}, got {text!r}")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks.compare", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 round of 2 s runs, 1 s warm-up (defaults: 3 rounds of 5 s)",
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    p.add_argument("--duration", type=int, help="seconds per pgbench run (default 5, quick 2)")
    p.add_argument("--clients", type=int, default=8, help="pgbench -c (default 8)")
    p.add_argument("--jobs", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    p.add_argument(
        "--modes",
        type=_csv(ALL_MODES),
        default=("simple", "prepared"),
        help="pgbench -M modes, comma-separated (default simple,prepared)",
    )
    p.add_argument(
        "--targets",
        type=_csv(ALL_TARGETS),
        default=ALL_TARGETS,
        help="comma-separated subset of direct,pgbouncer,pgwarden (default: all)",
    )
    p.add_argument("--workers", type=int, default=1, help="pgwarden workers (default 1)")
    p.add_argument("--no-copy", dest="copy", action="store_false", help="skip the COPY OUT runs")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"Markdown report (default {DEFAULT_OUT}); '-' for none",
    )
    p.add_argument("--json", dest="json_path", type=Path, help="also write raw results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return p


def parse_args(argv: Sequence[str]) -> Settings:
    ns = build_parser().parse_args(argv)
    rounds = ns.rounds if ns.rounds is not None else (1 if ns.quick else 3)
    duration = ns.duration if ns.duration is not None else (2 if ns.quick else 5)
    if rounds < 1 or duration < 1 or ns.clients < 1 or ns.jobs < 1:
        build_parser().error("--rounds, --duration, --clients and --jobs must be >= 1")
    return Settings(
        rounds=rounds,
        duration=duration,
        clients=ns.clients,
        jobs=ns.jobs,
        scale=ns.scale,
        modes=ns.modes,
        targets=ns.targets,
        workers=ns.workers,
        warmup=1 if ns.quick else 2,
        copy=ns.copy,
        out=None if str(ns.out) == "-" else ns.out,
        json_path=ns.json_path,
        keep=ns.keep,
        quick=ns.quick,
        argv=tuple(argv),
    )


# -- one measurement ----------------------------------------------------------------------


@dataclass(frozen=True)
class PgbenchRun:
    round: int
    mode: str
    target: str
    tps: float
    latency_ms: float
    transactions: int
    failed: int
    proxy_cpu_s: float | None

    @property
    def cpu_us_per_stmt(self) -> float | None:
        if self.proxy_cpu_s is None or self.transactions == 0:
            return None
        return self.proxy_cpu_s * 1e6 / self.transactions


@dataclass(frozen=True)
class CopyRun:
    round: int
    target: str
    seconds: float
    proxy_cpu_s: float | None


@dataclass(frozen=True)
class PgbenchOutput:
    tps: float
    latency_ms: float
    transactions: int
    failed: int


def _search(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise ValueError(f"pgbench output has no {pattern!r}:\n{text}")
    return match


def parse_pgbench(text: str) -> PgbenchOutput:
    """tps, average latency, transactions and failures from pgbench's summary."""
    failed = re.search(r"^number of failed transactions: (\d+)", text, re.MULTILINE)
    return PgbenchOutput(
        tps=float(_search(r"^tps = ([\d.]+) \((?:without|excluding)", text).group(1)),
        latency_ms=float(_search(r"^latency average = ([\d.]+) ms", text).group(1)),
        transactions=int(
            _search(r"^number of transactions actually processed: (\d+)", text).group(1)
        ),
        failed=int(failed.group(1)) if failed else 0,
    )


def _pgbench_argv(cluster: PgCluster, mode: str, settings: Settings, duration: int) -> list[str]:
    return [
        str(cluster.bindir / "pgbench"),
        "-S",
        "-M",
        mode,
        "-c",
        str(settings.clients),
        "-j",
        str(settings.jobs),
        "-T",
        str(duration),
        "-n",
    ]


def _cpu_delta(target: Target, before: float | None) -> float | None:
    after = target.proxy_cpu_seconds()
    return None if before is None or after is None else after - before


def run_pgbench(
    cluster: PgCluster, target: Target, mode: str, settings: Settings, duration: int
) -> tuple[PgbenchOutput, float | None]:
    """One pgbench run through ``target``; returns its summary and the proxy's CPU seconds."""
    argv = _pgbench_argv(cluster, mode, settings, duration)
    cpu_before = target.proxy_cpu_seconds()
    proc = subprocess.run(
        argv,
        env=target.client_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=duration * 4 + 60,
    )
    cpu = _cpu_delta(target, cpu_before)
    if proc.returncode != 0:
        raise RuntimeError(
            f"pgbench via {target.name} failed ({proc.returncode}): {shlex.join(argv)}\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
    return parse_pgbench(proc.stdout), cpu


def run_copy(cluster: PgCluster, target: Target, round_no: int) -> CopyRun:
    r"""``psql -c '\copy pgbench_accounts to /dev/null'``: wall time including psql start."""
    argv = [
        str(cluster.bindir / "psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        r"\copy pgbench_accounts to /dev/null",
    ]
    cpu_before = target.proxy_cpu_seconds()
    start = time.perf_counter()
    proc = subprocess.run(
        argv, env=target.client_env(), capture_output=True, text=True, check=False, timeout=600
    )
    seconds = time.perf_counter() - start
    cpu = _cpu_delta(target, cpu_before)
    if proc.returncode != 0:
        raise RuntimeError(f"COPY via {target.name} failed: {proc.stderr}")
    return CopyRun(round_no, target.name, seconds, cpu)


# -- the rounds ---------------------------------------------------------------------------


def rotated(items: Sequence[Target], shift: int) -> list[Target]:
    if not items:
        return []
    k = shift % len(items)
    return [*items[k:], *items[:k]]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def warm_up(cluster: PgCluster, targets: Sequence[Target], settings: Settings) -> None:
    """Load the cache and each proxy's connection/secret caches; results are discarded."""
    for target in targets:
        for mode in settings.modes:
            run_pgbench(cluster, target, mode, settings, settings.warmup)


def _bench_one(
    cluster: PgCluster, target: Target, mode: str, settings: Settings, round_no: int
) -> PgbenchRun:
    out, cpu = run_pgbench(cluster, target, mode, settings, settings.duration)
    run = PgbenchRun(
        round_no, mode, target.name, out.tps, out.latency_ms, out.transactions, out.failed, cpu
    )
    _log(
        f"round {round_no} {mode:8} {target.name:9} tps={out.tps:9.1f} "
        f"cpu/stmt={_fmt(run.cpu_us_per_stmt, '.2f')} µs"
    )
    return run


def run_rounds(
    cluster: PgCluster, targets: Sequence[Target], settings: Settings
) -> tuple[list[PgbenchRun], list[CopyRun]]:
    """Every round: each mode through every target, then COPY through every target.

    The target order is rotated by round (and by mode within a round), so each mode sees
    every target in every position over ``len(targets)`` rounds.
    """
    runs: list[PgbenchRun] = []
    copies: list[CopyRun] = []
    for round_no in range(1, settings.rounds + 1):
        for mode_no, mode in enumerate(settings.modes):
            for target in rotated(targets, round_no - 1 + mode_no):
                runs.append(_bench_one(cluster, target, mode, settings, round_no))
        if settings.copy:
            for target in rotated(targets, round_no - 1):
                copy = run_copy(cluster, target, round_no)
                copies.append(copy)
                _log(f"round {round_no} copy     {target.name:9} {copy.seconds:.3f} s")
    return runs, copies


# -- summary ------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


@dataclass(frozen=True)
class BenchSummary:
    mode: str
    target: str
    tps: float
    tps_min: float
    tps_max: float
    latency_ms: float
    cpu_us_per_stmt: float | None
    runs: int


@dataclass(frozen=True)
class CopySummary:
    target: str
    seconds: float
    seconds_min: float
    seconds_max: float
    proxy_cpu_s: float | None
    runs: int


def summarize_bench(runs: Sequence[PgbenchRun], settings: Settings) -> list[BenchSummary]:
    out: list[BenchSummary] = []
    for mode in settings.modes:
        for name in settings.targets:
            sel = [r for r in runs if r.mode == mode and r.target == name]
            if not sel:
                continue
            tps = [r.tps for r in sel]
            out.append(
                BenchSummary(
                    mode,
                    name,
                    statistics.median(tps),
                    min(tps),
                    max(tps),
                    statistics.median([r.latency_ms for r in sel]),
                    _median([r.cpu_us_per_stmt for r in sel]),
                    len(sel),
                )
            )
    return out


def summarize_copy(copies: Sequence[CopyRun], settings: Settings) -> list[CopySummary]:
    out: list[CopySummary] = []
    for name in settings.targets:
        secs = [c.seconds for c in copies if c.target == name]
        if secs:
            cpu = _median([c.proxy_cpu_s for c in copies if c.target == name])
            out.append(
                CopySummary(name, statistics.median(secs), min(secs), max(secs), cpu, len(secs))
            )
    return out


def ratios(
    bench: Sequence[BenchSummary], copies: Sequence[CopySummary], settings: Settings
) -> dict[str, float | None]:
    """pgwarden/pgbouncer (tps, CPU), pgwarden/direct (COPY), and pgbouncer for reference."""
    tps = {(b.mode, b.target): b.tps for b in bench}
    cpu = {(b.mode, b.target): b.cpu_us_per_stmt for b in bench}
    cp = {c.target: c.seconds for c in copies}
    result: dict[str, float | None] = {}
    for m in settings.modes:
        result[f"pgwarden/pgbouncer tps {m}"] = _ratio(
            tps.get((m, "pgwarden")), tps.get((m, "pgbouncer"))
        )
        result[f"pgwarden/pgbouncer cpu_us_per_stmt {m}"] = _ratio(
            cpu.get((m, "pgwarden")), cpu.get((m, "pgbouncer"))
        )
        result[f"pgwarden/direct tps {m}"] = _ratio(
            tps.get((m, "pgwarden")), tps.get((m, "direct"))
        )
        result[f"pgbouncer/direct tps {m}"] = _ratio(
            tps.get((m, "pgbouncer")), tps.get((m, "direct"))
        )
    result["pgwarden/direct copy_seconds"] = _ratio(cp.get("pgwarden"), cp.get("direct"))
    result["pgbouncer/direct copy_seconds"] = _ratio(cp.get("pgbouncer"), cp.get("direct"))
    return result


# -- machine ------------------------------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_commit() -> str:
    repo = Path(__file__).resolve().parent.parent
    out = _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    if not re.fullmatch(r"[0-9a-f]{4,40}", out):
        return "none (uncommitted tree)"
    # read-only: --no-optional-locks keeps `git status` from refreshing the index
    status = ["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain"]
    dirty = _first_line([*status, "--untracked-files=no"]) != "unknown"
    return f"{out} + uncommitted changes" if dirty else out


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine_info(cluster: PgCluster) -> dict[str, str]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": _cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "postgresql": _first_line([str(cluster.bindir / "postgres"), "--version"]),
        "pgbench": _first_line([str(cluster.bindir / "pgbench"), "--version"]),
        "pgbouncer": _first_line([pgbouncer_binary(), "--version"]),
        "python": platform.python_version(),
        "pgwarden commit": _git_commit(),
        "load average at start": _loadavg(),
    }


# -- report -------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _bench_table(bench: Sequence[BenchSummary]) -> list[str]:
    direct = {b.mode: b.tps for b in bench if b.target == "direct"}
    lines = [
        "| mode | target | tps (median) | tps min-max | vs direct | latency avg ms "
        "| proxy CPU µs/stmt | runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for b in bench:
        lines.append(
            f"| {b.mode} | {b.target} | {b.tps:,.0f} | {b.tps_min:,.0f} - {b.tps_max:,.0f} "
            f"| {_fmt(_ratio(b.tps, direct.get(b.mode)), '.2f')} | {b.latency_ms:.3f} "
            f"| {_fmt(b.cpu_us_per_stmt, '.2f')} | {b.runs} |"
        )
    return lines


def _copy_table(copies: Sequence[CopySummary]) -> list[str]:
    direct = next((c.seconds for c in copies if c.target == "direct"), None)
    lines = [
        "| target | wall s (median) | min-max | vs direct | proxy CPU s | runs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in copies:
        lines.append(
            f"| {c.target} | {c.seconds:.3f} | {c.seconds_min:.3f} - {c.seconds_max:.3f} "
            f"| {_fmt(_ratio(c.seconds, direct), '.2f')} | {_fmt(c.proxy_cpu_s, '.3f')} "
            f"| {c.runs} |"
        )
    return lines


def _raw_table(runs: Sequence[PgbenchRun], copies: Sequence[CopyRun]) -> list[str]:
    lines = [
        "| round | what | target | tps | latency ms | transactions | failed "
        "| proxy CPU s | µs/stmt or wall s |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.round} | pgbench {r.mode} | {r.target} | {r.tps:,.0f} | {r.latency_ms:.3f} "
            f"| {r.transactions} | {r.failed} | {_fmt(r.proxy_cpu_s, '.2f')} "
            f"| {_fmt(r.cpu_us_per_stmt, '.2f')} |"
        )
    for c in copies:
        lines.append(
            f"| {c.round} | copy out | {c.target} | | | | "
            f"| {_fmt(c.proxy_cpu_s, '.2f')} | {c.seconds:.3f} |"
        )
    return lines


def render_markdown(
    settings: Settings,
    machine: dict[str, str],
    runs: Sequence[PgbenchRun],
    copies: Sequence[CopyRun],
    ratio: dict[str, float | None],
) -> str:
    s = settings
    bench, copy = summarize_bench(runs, s), summarize_copy(copies, s)
    lines = [
        "# Proxy comparison: direct PostgreSQL, PgBouncer, pgwarden",
        "",
        f"Written by `benchmarks/compare.py` on {machine['date']}. Medians of {s.rounds} "
        "interleaved round(s); the target order rotates from run to run. On a small shared "
        "machine read the **ratios**, not the absolute numbers.",
        "",
        "## Command",
        "",
        "```",
        s.command,
        "```",
        "",
        f"Each run: `pgbench -S -M <mode> -c {s.clients} -j {s.jobs} -T {s.duration} -n` "
        f"against `pgbench -i -s {s.scale}` (warm-up {s.warmup} s per target and mode first). "
        "COPY: `psql -c '\\copy pgbench_accounts to /dev/null'` (wall time, psql start "
        "included). All targets: same role and database, no TLS; PgBouncer in session mode; "
        f"pgwarden with {s.workers} worker(s). Targets: {', '.join(s.targets)}.",
        "",
        "Proxy CPU per statement = utime + stime of all the proxy's processes (from "
        "`/proc/<pid>/stat`) during the run ÷ transactions pgbench reports; it includes the "
        f"{s.clients} logins of each run, tps does not.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items()),
        "",
        "## pgbench -S",
        "",
        *_bench_table(bench),
        "",
    ]
    if copy:
        lines += [f"## COPY OUT (1 table, {s.scale * 100_000:,} rows)", "", *_copy_table(copy), ""]
    lines += [
        "## Ratios",
        "",
        "| ratio | value |",
        "|---|---:|",
        *(f"| {k} | {_fmt(v, '.3f')} |" for k, v in ratio.items()),
        "",
        "## Raw runs",
        "",
        *_raw_table(runs, copies),
        "",
    ]
    return "\n".join(lines)


def write_json(
    path: Path,
    settings: Settings,
    machine: dict[str, str],
    runs: Sequence[PgbenchRun],
    copies: Sequence[CopyRun],
    ratio: dict[str, float | None],
) -> None:
    data: dict[str, Any] = {
        "command": settings.command,
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()
        },
        "machine": machine,
        "runs": [{**asdict(r), "cpu_us_per_stmt": r.cpu_us_per_stmt} for r in runs],
        "copies": [asdict(c) for c in copies],
        "summary": [asdict(b) for b in summarize_bench(runs, settings)],
        "copy_summary": [asdict(c) for c in summarize_copy(copies, settings)],
        "ratios": ratio,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


# -- orchestration ------------------------------------------------------------------------


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    _log(f"got signal {signum}; stopping everything that was started")
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pgwarden-bench-"))
    path.chmod(0o755)  # the postgres OS user must reach its subdirectories
    try:
        yield path
    finally:
        if keep:
            _log(f"kept work directory {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def prepare_cluster(cluster: PgCluster, settings: Settings, role_password: str) -> None:
    _log(f"PostgreSQL on port {cluster.port}; pgbench -i -s {settings.scale}")
    cluster.create_database(DBNAME)
    cluster.pgbench_init(DBNAME, settings.scale)
    cluster.create_role(ROLE, role_password)
    cluster.sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE}", DBNAME)


def start_targets(
    stack: contextlib.ExitStack,
    cluster: PgCluster,
    base: Path,
    settings: Settings,
    role_password: str,
) -> list[Target]:
    targets: list[Target] = []
    for name in settings.targets:
        if name == "direct":
            targets.append(direct_target(cluster, DBNAME, ROLE, role_password))
            continue
        if name == "pgbouncer":
            target = start_pgbouncer(
                cluster,
                base / "pgbouncer",
                dbname=DBNAME,
                user=ROLE,
                password=role_password,
                clients=settings.clients,
            )
        else:
            target = start_pgwarden(
                cluster,
                base / "pgwarden",
                dbname=DBNAME,
                user=ROLE,
                upstream_password=role_password,
                client_secret=secrets.token_urlsafe(24),
                workers=settings.workers,
            )
        assert target.process is not None
        stack.callback(target.process.stop)
        _log(f"{name} on port {target.port} (pid {target.process.pid})")
        targets.append(target)
    return targets


def _emit(
    settings: Settings,
    report: str,
    machine: dict[str, str],
    runs: list[PgbenchRun],
    copies: list[CopyRun],
    ratio: dict[str, float | None],
) -> None:
    print(report)
    if settings.out is not None:
        settings.out.parent.mkdir(parents=True, exist_ok=True)
        settings.out.write_text(report)
        _log(f"wrote {settings.out}")
    if settings.json_path is not None:
        write_json(settings.json_path, settings, machine, runs, copies, ratio)
        _log(f"wrote {settings.json_path}")


def run(settings: Settings) -> int:
    role_password = secrets.token_urlsafe(18)
    with workdir(settings.keep) as base, contextlib.ExitStack() as stack:
        cluster = PgCluster(base / "pg")
        stack.callback(cluster.stop)
        cluster.start()
        prepare_cluster(cluster, settings, role_password)
        targets = start_targets(stack, cluster, base, settings, role_password)
        machine = machine_info(cluster)
        _log("warm-up")
        warm_up(cluster, targets, settings)
        runs, copies = run_rounds(cluster, targets, settings)
        ratio = ratios(summarize_bench(runs, settings), summarize_copy(copies, settings), settings)
        machine["load average at end"] = _loadavg()
        _emit(
            settings,
            render_markdown(settings, machine, runs, copies, ratio),
            machine,
            runs,
            copies,
            ratio,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    try:
        return run(settings)
    except KeyboardInterrupt:
        _log("interrupted; everything started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
