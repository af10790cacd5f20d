"""Compare direct PostgreSQL, PgBouncer and pgwarden on this machine, as ratios.

    python -m benchmarks.compare            # full run, about 15-20 minutes here
    python -m benchmarks.compare --quick    # every measurement with small sizes (CI)

Options: ``--rounds N --duration S --clients 1,8,32 --modes simple,extended,prepared
--targets direct,pgbouncer,pgwarden --only/--skip pgbench,connect,copy,select,idle,scaling
--copy-rows --select-rows --idle-connections --scaling-workers 1,2 --out --json --chart``.

It starts a throwaway cluster (:mod:`gateway.devcluster`), loads ``pgbench -i -s 10``, a
``copy_src`` table of 2.5M rows of about 97 bytes of COPY text (243 MB) and its COPY file,
creates one login role, puts PgBouncer (session mode) and pgwarden (1 worker, plus one
instance per other worker count of the scaling test) in front of it, warms every target
up, and then runs interleaved rounds. In every round, with the order of the targets
rotating from one measurement to the next:

1. ``pgbench -S -M <mode> -c <C> -j min(C, 2) -T <duration>`` for every mode and client
   count through every target: tps, average latency, p99 latency (from a sampled
   per-transaction log), proxy CPU µs per statement;
2. ``pgbench -C -S -c 8``: connections per second, proxy CPU µs per connection;
3. COPY OUT (``\\copy copy_src to /dev/null``) and COPY IN (``\\copy copy_dst from
   <file>`` into an emptied unlogged table) with psql: MB/s;
4. a 1,000,000-row SELECT streamed by psycopg: rows/s;
5. pgwarden with 1..N workers under ``pgbench -S`` at 8 and 32 clients;
6. 1,000 idle sessions through a fresh instance of each proxy: memory per connection.

It writes ``benchmarks/RESULTS.md`` (command, machine, issue 3's targets with PASS/MISS,
every table and every raw sample), ``benchmarks/ratios.png`` and, with ``--json``, the raw
data. Quick mode writes ``benchmarks/RESULTS-quick.md`` and ``ratios-quick.png`` unless
told otherwise, so that it never overwrites the full results.

The machine is small and shared: trust ratios from interleaved rounds, not absolute numbers.
Every process it starts is stopped on exit, Ctrl-C (SIGINT), SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from benchmarks import measure
from benchmarks.idle import idle_memory
from benchmarks.machine import (
    _cpu_model,
    _first_line,
    _git_commit,
    _loadavg,
    loadavg_1min,
    machine_info,
)
from benchmarks.measure import PgbenchOutput, Sample, parse_pgbench
from benchmarks.proctools import TreeMemory, tree_memory
from benchmarks.report import (
    PGBOUNCER_PLAIN,
    TARGET_ORDER,
    ReportInput,
    fmt,
    median,
    ratio,
    ratios,
    render_markdown,
    summarize,
    target_checks,
    write_json,
)
from benchmarks.targets import (
    Target,
    direct_target,
    start_pgbouncer,
    start_pgwarden,
)
from gateway.devcluster import PgCluster

__all__ = [
    "ALL_MODES",
    "ALL_SECTIONS",
    "ALL_TARGETS",
    "DBNAME",
    "ROLE",
    "CopyRun",
    "PgbenchOutput",
    "Settings",
    "_cpu_model",
    "_exit_on_signal",
    "_first_line",
    "_fmt",
    "_git_commit",
    "_loadavg",
    "_log",
    "_median",
    "_ratio",
    "main",
    "parse_args",
    "parse_pgbench",
    "prepare_cluster",
    "rotated",
    "run",
    "run_copy",
    "run_pgbench",
    "warm_up",
    "workdir",
]

ALL_TARGETS = ("direct", "pgbouncer", "pgwarden")
ALL_MODES = ("simple", "extended", "prepared")
ALL_SECTIONS = ("pgbench", "connect", "copy", "select", "scaling", "idle")
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "RESULTS.md"
DEFAULT_CHART = HERE / "ratios.png"
QUICK_OUT = HERE / "RESULTS-quick.md"
QUICK_CHART = HERE / "ratios-quick.png"
DBNAME = "bench"
ROLE = "bench"
COPY_SRC = "copy_src"
COPY_DST = "copy_dst"

T = TypeVar("T")

# Helpers other benchmark scripts (benchmarks/protocol_modes.py) import from here.
_fmt = fmt
_median = median
_ratio = ratio


# -- settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What to run. The first fields are also what :func:`run_pgbench`, :func:`warm_up`
    and :func:`prepare_cluster` read when other scripts call them."""

    rounds: int
    duration: int
    clients: int  # the single -c of run_pgbench/warm_up; see client_counts for compare
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
    client_counts: tuple[int, ...] = (1, 8, 32)
    sections: tuple[str, ...] = ALL_SECTIONS
    connect_clients: int = 8
    copy_rows: int = 2_500_000
    select_rows: int = 1_000_000
    idle_connections: int = 1000
    scaling_workers: tuple[int, ...] = (1, 2)
    scaling_clients: tuple[int, ...] = (8, 32)
    scaling_mode: str = "simple"
    sampling_rate: float = 0.1
    chart: Path | None = None
    # pgwarden as a pure pass-through (the comparison PgBouncer is: no statement policy);
    # True runs it with its default policy (the baseline pack), which benchmarks/features.py
    # measures on its own.
    policy: bool = False

    @property
    def command(self) -> str:
        return shlex.join(["python", "-m", "benchmarks.compare", *self.argv])

    def has(self, section: str) -> bool:
        return section in self.sections


def _csv(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(",") if item.strip())
        bad = [item for item in items if item not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}, got {text!r}")
        return items

    return parse


def _ints(text: str) -> tuple[int, ...]:
    try:
        items = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers, got {text!r}") from None
    if not items or min(items) < 1:
        raise argparse.ArgumentTypeError(f"integers >= 1, got {text!r}")
    return items


def _output(given: str | None, default: Path) -> Path | None:
    """``--out``/``--chart``: not given = the default, ``-`` = none."""
    if given is None:
        return default
    return None if given == "-" else Path(given)


def build_parser() -> argparse.ArgumentParser:
    nproc = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(
        prog="benchmarks.compare",
        description=(__doc__ or "").split("\n")[0],
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI mode: 1 round, 1 s runs, pgbench -i -s 1, 100k-row COPY and SELECT, "
        "100 idle connections; writes RESULTS-quick.md / ratios-quick.png by default",
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    p.add_argument("--duration", type=int, help="seconds per pgbench run (default 5, quick 1)")
    p.add_argument("--warmup", type=int, help="warm-up seconds per target and mode (2, quick 1)")
    p.add_argument(
        "--clients", type=_ints, default=(1, 8, 32), help="pgbench -c values (default 1,8,32)"
    )
    p.add_argument("--scale", type=int, help="pgbench -i -s (default 10, quick 1)")
    p.add_argument(
        "--modes",
        type=_csv(ALL_MODES),
        default=ALL_MODES,
        help="pgbench -M modes (default: all three)",
    )
    p.add_argument(
        "--targets",
        type=_csv(ALL_TARGETS),
        default=ALL_TARGETS,
        help="what to compare (default: all three)",
    )
    p.add_argument(
        "--only", type=_csv(ALL_SECTIONS), help=f"run only these of {','.join(ALL_SECTIONS)}"
    )
    p.add_argument("--skip", type=_csv(ALL_SECTIONS), default=(), help="skip these sections")
    p.add_argument("--no-copy", dest="copy", action="store_false", help="same as --skip copy")
    p.add_argument("--workers", type=int, default=1, help="workers of the compared pgwarden (1)")
    p.add_argument(
        "--policy", action="store_true",
        help="run pgwarden with its default policy (baseline) instead of as a pass-through",
    )
    p.add_argument("--connect-clients", type=int, default=8, help="pgbench -C -c (8)")
    p.add_argument("--copy-rows", type=int, help="rows of the COPY table (2.5M, quick 100k)")
    p.add_argument("--select-rows", type=int, help="rows streamed (1M, quick 100k)")
    p.add_argument("--idle-connections", type=int, help="idle sessions held (1000, quick 100)")
    p.add_argument(
        "--scaling-workers",
        type=_ints,
        default=tuple(range(1, nproc + 1)),
        help=f"pgwarden worker counts of the scaling test (1..nproc = 1..{nproc})",
    )
    p.add_argument(
        "--scaling-clients", type=_ints, default=(8, 32), help="scaling pgbench -c (8,32)"
    )
    p.add_argument(
        "--scaling-mode", choices=ALL_MODES, default="simple", help="scaling pgbench -M (simple)"
    )
    p.add_argument(
        "--sampling-rate",
        type=float,
        default=0.1,
        help="pgbench --sampling-rate of the per-transaction log the p99 comes from (0.1)",
    )
    p.add_argument("--out", help=f"Markdown report ('-': none; default {DEFAULT_OUT})")
    p.add_argument("--chart", help=f"PNG of the ratios ('-': none; default {DEFAULT_CHART})")
    p.add_argument("--json", dest="json_path", type=Path, help="also write everything as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return p


def parse_args(argv: Sequence[str]) -> Settings:
    parser = build_parser()
    ns = parser.parse_args(argv)
    q = ns.quick

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if q else full)

    sections = tuple(
        s for s in (ns.only or ALL_SECTIONS) if s not in ns.skip and (ns.copy or s != "copy")
    )
    settings = Settings(
        rounds=pick(ns.rounds, 3, 1),
        duration=pick(ns.duration, 5, 1),
        clients=max(ns.clients),
        jobs=measure.jobs_for(max(ns.clients)),
        scale=pick(ns.scale, 10, 1),
        modes=ns.modes,
        targets=ns.targets,
        workers=ns.workers,
        warmup=pick(ns.warmup, 2, 1),
        copy="copy" in sections,
        policy=ns.policy,
        out=_output(ns.out, QUICK_OUT if q else DEFAULT_OUT),
        json_path=ns.json_path,
        keep=ns.keep,
        quick=q,
        argv=tuple(argv),
        client_counts=ns.clients,
        sections=sections,
        connect_clients=ns.connect_clients,
        copy_rows=pick(ns.copy_rows, 2_500_000, 100_000),
        select_rows=pick(ns.select_rows, 1_000_000, 100_000),
        idle_connections=pick(ns.idle_connections, 1000, 100),
        scaling_workers=ns.scaling_workers,
        scaling_clients=ns.scaling_clients,
        scaling_mode=ns.scaling_mode,
        sampling_rate=ns.sampling_rate,
        chart=_output(ns.chart, QUICK_CHART if q else DEFAULT_CHART),
    )
    numbers = (settings.rounds, settings.duration, settings.scale, settings.workers,
               settings.copy_rows, settings.select_rows, settings.idle_connections,
               settings.connect_clients, settings.warmup)  # fmt: skip
    if min(numbers) < 1:
        parser.error("counts, sizes and durations must be >= 1")
    if not 0.0 < settings.sampling_rate <= 1.0:
        parser.error("--sampling-rate must be in (0, 1]")
    if not sections:
        parser.error("--only/--skip left nothing to run")
    return settings


# -- helpers shared with other benchmark scripts ------------------------------------------


@dataclass(frozen=True)
class CopyRun:
    round: int
    target: str
    seconds: float
    proxy_cpu_s: float | None


def _cpu_delta(target: Target, before: float | None) -> float | None:
    after = target.proxy_cpu_seconds()
    return None if before is None or after is None else after - before


def run_pgbench(
    cluster: PgCluster, target: Target, mode: str, settings: Settings, duration: int
) -> tuple[PgbenchOutput, float | None]:
    """``pgbench -S -M mode -c settings.clients -j settings.jobs -T duration -n`` through
    ``target``; returns its summary and the proxy's CPU seconds (no latency log)."""
    argv = [
        str(cluster.bindir / "pgbench"), "-S", "-M", mode, "-c", str(settings.clients),
        "-j", str(settings.jobs), "-T", str(duration), "-n",
    ]  # fmt: skip
    cpu_before = target.proxy_cpu_seconds()
    proc = subprocess.run(
        argv, env=target.client_env(), capture_output=True, text=True, check=False,
        timeout=duration * 4 + 60,
    )  # fmt: skip
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
        str(cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
        "-c", r"\copy pgbench_accounts to /dev/null",
    ]  # fmt: skip
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


def rotated(items: Sequence[T], shift: int) -> list[T]:
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


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    _log(f"got signal {signum}; stopping everything that was started")
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def workdir(keep: bool, prefix: str = "pgwarden-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
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


# -- the data for COPY and SELECT -----------------------------------------------------------


@dataclass(frozen=True)
class CopyData:
    rows: int  # rows of copy_src (and of the file)
    nbytes: int  # bytes of its COPY text
    path: Path | None  # the COPY IN source file (None when COPY is not run)
    accounts_rows: int = 0  # rows of pgbench_accounts
    accounts_nbytes: int = 0  # bytes of its COPY text


def prepare_copy_data(cluster: PgCluster, base: Path, settings: Settings) -> CopyData:
    """``copy_src`` (id, two md5 texts, a timestamptz: ~97 bytes of COPY text per row), its
    COPY text in a file, and the unlogged ``copy_dst`` that COPY IN fills."""
    rows = max(settings.copy_rows, settings.select_rows)
    _log(f"creating {COPY_SRC} with {rows:,} rows")
    cluster.sql(
        f"CREATE TABLE {COPY_SRC} AS SELECT i AS id, md5(i::text) AS a, "
        "md5((i * 7)::text) AS b, timestamptz '2024-01-01 00:00:00+00' + i * interval "
        f"'1 second' AS ts FROM generate_series(1, {rows}) AS i",
        DBNAME,
    )
    cluster.sql(f"VACUUM ANALYZE {COPY_SRC}", DBNAME)
    cluster.sql(
        f"CREATE UNLOGGED TABLE {COPY_DST} (LIKE {COPY_SRC}) WITH (autovacuum_enabled = off)",
        DBNAME,
    )
    cluster.sql(f"GRANT SELECT ON {COPY_SRC} TO {ROLE}", DBNAME)
    cluster.sql(f"GRANT INSERT ON {COPY_DST} TO {ROLE}", DBNAME)
    if not settings.has("copy"):
        return CopyData(rows, 0, None)
    path = base / "copy_src.txt"
    env = cluster.client_env()
    env["PGDATABASE"] = DBNAME
    proc = subprocess.run(
        [str(cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
         "-c", f"\\copy {COPY_SRC} to '{path}'"],
        env=env, capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"writing the COPY file failed: {proc.stderr}")
    nbytes = path.stat().st_size
    _log(f"COPY text: {nbytes / 1e6:,.1f} MB, {nbytes / rows:.1f} bytes/row")
    # pgbench_accounts as COPY text: the issue's own COPY target is measured on it.
    (count, size), = cluster.sql(
        "SELECT count(*), sum(octet_length(aid::text) + octet_length(bid::text) "
        "+ octet_length(abalance::text) + octet_length(filler) + 4) FROM pgbench_accounts",
        DBNAME,
    )
    return CopyData(rows, nbytes, path, int(count), int(size))


# -- the run --------------------------------------------------------------------------------


@dataclass
class Bench:
    """Everything a round needs."""

    settings: Settings
    cluster: PgCluster
    base: Path
    role_password: str
    stack: contextlib.ExitStack
    targets: list[Target]  # the compared ones, in settings.targets order
    scaling: dict[int, Target]  # pgwarden instance per worker count
    data: CopyData | None
    connect_only: list[Target] = field(default_factory=list)  # PgBouncer with plain auth
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    loads: list[tuple[str, float | None]] = field(default_factory=list)

    def record(self, what: str, fn: Callable[[], Sample]) -> None:
        """Run one measurement; a failure is logged and recorded, and the run goes on."""
        load = loadavg_1min()
        try:
            sample = fn()
        except Exception as exc:
            message = f"{what}: {type(exc).__name__}: {str(exc).strip()[:2000]}"
            _log(f"FAILED {message}")
            if not isinstance(exc, RuntimeError):
                traceback.print_exc(file=sys.stderr)
            self.failures.append(message)
            return
        if load is not None:
            sample.metrics["load1_before"] = load
        self.samples.append(sample)
        _log(f"round {sample.round} {what:40} {_headline(sample)}")


def _headline(s: Sample) -> str:
    keys = ("tps", "conn_per_s", "mb_per_s", "rows_per_s", "rss_kib_per_conn", "p99_ms",
            "cpu_us_per_stmt", "cpu_us_per_conn", "cpu_s_per_gb", "cpu_ns_per_row",
            "pss_kib_per_conn")  # fmt: skip
    return " ".join(f"{k}={s.metrics[k]:,.2f}" for k in keys if k in s.metrics)


def _pgwarden(bench: Bench, workdir_name: str, workers: int, name: str) -> Target:
    return start_pgwarden(
        bench.cluster,
        bench.base / workdir_name,
        dbname=DBNAME,
        user=ROLE,
        upstream_password=bench.role_password,
        client_secret=secrets.token_urlsafe(24),
        workers=workers,
        name=name,
        extra_toml="" if bench.settings.policy else "[policy]\nenabled = false\n",
    )


def _started(bench: Bench, target: Target) -> Target:
    assert target.process is not None
    bench.stack.callback(target.process.stop)
    _log(f"{target.name} on port {target.port} (pid {target.process.pid})")
    return target


def start_targets(bench: Bench) -> None:
    s = bench.settings
    most = max((*s.client_counts, *s.scaling_clients, s.connect_clients))
    for name in s.targets:
        if name == "direct":
            bench.targets.append(direct_target(bench.cluster, DBNAME, ROLE, bench.role_password))
        elif name == "pgbouncer":
            target = start_pgbouncer(
                bench.cluster, bench.base / "pgbouncer", dbname=DBNAME, user=ROLE,
                password=bench.role_password, clients=most,
            )  # fmt: skip
            bench.targets.append(_started(bench, target))
        else:
            target = _pgwarden(bench, "pgwarden", s.workers, "pgwarden")
            bench.targets.append(_started(bench, target))
            bench.scaling[s.workers] = target
    if s.has("connect") and "pgbouncer" in s.targets:
        target = start_pgbouncer(
            bench.cluster, bench.base / PGBOUNCER_PLAIN, dbname=DBNAME, user=ROLE,
            password=bench.role_password, clients=most, name=PGBOUNCER_PLAIN, auth="plain",
        )  # fmt: skip
        bench.connect_only.append(_started(bench, target))
    if s.has("scaling"):
        for workers in s.scaling_workers:
            if workers not in bench.scaling:
                target = _pgwarden(bench, f"pgwarden-w{workers}", workers, f"pgwarden-w{workers}")
                bench.scaling[workers] = _started(bench, target)


def warm(bench: Bench) -> None:
    """Every target, every mode, most clients: caches, pools and secret caches loaded."""
    s = bench.settings
    clients = max(s.client_counts)
    extra = [t for w, t in sorted(bench.scaling.items()) if t not in bench.targets]
    for target in [*bench.targets, *extra, *bench.connect_only]:
        for mode in s.modes:
            argv = measure.pgbench_argv(bench.cluster, mode, clients, s.warmup)
            subprocess.run(
                argv, env=target.client_env(), capture_output=True, check=False,
                timeout=s.warmup * 4 + 60,
            )  # fmt: skip


def _postmaster_memory(cluster: PgCluster) -> Callable[[], TreeMemory]:
    pid = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    return lambda: tree_memory(pid)


def _idle_one(bench: Bench, target: Target, round_no: int) -> Sample:
    """A fresh proxy for this measurement only (sized for the connections), then stopped."""
    s = bench.settings
    n = s.idle_connections
    if target.process is None:
        return idle_memory(target, n=n, round_no=round_no, memory=_postmaster_memory(bench.cluster))
    where = f"idle-r{round_no}-{target.name}"
    if target.name == "pgbouncer":
        fresh = start_pgbouncer(
            bench.cluster, bench.base / where, dbname=DBNAME, user=ROLE,
            password=bench.role_password, clients=n + 10, pool_size=n + 10,
        )  # fmt: skip
    else:
        fresh = _pgwarden(bench, where, s.workers, target.name)
    assert fresh.process is not None
    process = fresh.process
    try:
        return idle_memory(fresh, n=n, round_no=round_no, memory=process.memory)
    finally:
        process.stop()


def _truncate_then(bench: Bench, fn: Callable[[], Sample]) -> Callable[[], Sample]:
    def run() -> Sample:
        bench.cluster.sql(f"TRUNCATE {COPY_DST}", DBNAME)
        bench.cluster.sql("CHECKPOINT", DBNAME)
        return fn()

    return run


def run_round(bench: Bench, round_no: int) -> None:
    """One round of every section; the target order rotates between measurements."""
    s, c = bench.settings, bench.cluster
    bench.loads.append((f"round {round_no} start", loadavg_1min()))
    shift = round_no - 1
    if s.has("pgbench"):
        for m, mode in enumerate(s.modes):
            for k, clients in enumerate(s.client_counts):
                for t in rotated(bench.targets, shift + m + k):
                    fn = partial(
                        measure.pgbench_select, c, t, mode=mode, clients=clients,
                        duration=s.duration, sampling_rate=s.sampling_rate, round_no=round_no,
                    )  # fmt: skip
                    bench.record(f"pgbench {mode} c{clients} {t.name}", fn)
    if s.has("connect"):
        for t in rotated([*bench.targets, *bench.connect_only], shift):
            fn = partial(
                measure.connect_rate, c, t, clients=s.connect_clients, duration=s.duration,
                round_no=round_no,
            )  # fmt: skip
            bench.record(f"connect c{s.connect_clients} {t.name}", fn)
    data = bench.data
    if s.has("copy") and data is not None and data.path is not None:
        for t in rotated(bench.targets, shift):
            fn = partial(
                measure.copy_out, c, t, table=COPY_SRC, nbytes=data.nbytes, rows=data.rows,
                round_no=round_no,
            )  # fmt: skip
            bench.record(f"copy out {t.name}", fn)
        for t in rotated(bench.targets, shift + 2):
            fn = partial(
                measure.copy_out, c, t, table="pgbench_accounts", nbytes=data.accounts_nbytes,
                rows=data.accounts_rows, round_no=round_no, kind="copy_accounts",
            )  # fmt: skip
            bench.record(f"copy pgbench_accounts out {t.name}", fn)
        for t in rotated(bench.targets, shift + 1):
            fn = partial(
                measure.copy_in, c, t, table=COPY_DST, source=data.path, rows=data.rows,
                round_no=round_no,
            )  # fmt: skip
            bench.record(f"copy in {t.name}", _truncate_then(bench, fn))
    if s.has("select"):
        for t in rotated(bench.targets, shift + 2):
            fn = partial(measure.stream_select, t, rows=s.select_rows, round_no=round_no)
            bench.record(f"select {s.select_rows} {t.name}", fn)
    if s.has("scaling") and bench.scaling:
        workers = sorted(w for w in bench.scaling if w in s.scaling_workers)
        for k, clients in enumerate(s.scaling_clients):
            for w in rotated(workers, shift + k):
                fn = partial(
                    measure.pgbench_select, c, bench.scaling[w], mode=s.scaling_mode,
                    clients=clients, duration=s.duration, sampling_rate=s.sampling_rate,
                    kind="scaling", variant=f"w{w} c{clients}", round_no=round_no,
                )  # fmt: skip
                bench.record(f"scaling w{w} c{clients}", partial(_as_pgwarden, fn))
    if s.has("idle"):
        for t in rotated(bench.targets, shift):
            fn = partial(_idle_one, bench, t, round_no)
            bench.record(f"idle {s.idle_connections} {t.name}", fn)


def _as_pgwarden(fn: Callable[[], Sample]) -> Sample:
    """Scaling samples are all pgwarden's, whichever instance served them."""
    sample = fn()
    return Sample(sample.round, sample.kind, sample.variant, "pgwarden", sample.metrics)


def method_lines(s: Settings, data: CopyData | None) -> list[str]:
    lines = [
        "- All targets: the same database and login role, no TLS, over 127.0.0.1. PgBouncer "
        "in session mode (SCRAM for clients and upstream, pool large enough that no client "
        f"waits); pgwarden with {s.workers} worker(s), static-secret client login, pooled "
        "upstream sessions, "
        + ("its default policy (the baseline pack)" if s.policy
           else "as a pass-through like PgBouncer (`[policy] enabled = false`; "
                "`benchmarks/features.py` measures the policy and the audit log)")
        + ". Proxy CPU = utime + stime of all the proxy's processes "
        "(`/proc/<pid>/stat`) during the measurement.",
        f"- Warm-up: every target, every mode, {max(s.client_counts)} clients, "
        f"{s.warmup} s each, results discarded.",
    ]
    if s.has("pgbench"):
        lines.append(
            f"- pgbench: `pgbench -S -M <mode> -c <C> -j min(C,2) -T {s.duration} -n` against "
            f'`pgbench -i -s {s.scale}`; tps is pgbench\'s "without initial connection time"; '
            "the average latency is pgbench's; the p99 comes from the per-transaction log "
            f"(`-l --sampling-rate {s.sampling_rate:g}`, nearest rank). CPU µs per statement "
            "includes the C logins of each run (tps does not)."
        )
    if s.has("connect"):
        lines.append(
            f"- Connection setup: `pgbench -C -S -M simple -c {s.connect_clients} "
            f"-j {measure.jobs_for(s.connect_clients)} -T {s.duration}`; every transaction "
            "opens and closes its own connection, so tps = connections/s. Logins: SCRAM to "
            "direct PostgreSQL and to `pgbouncer` (its userlist holds the role's SCRAM "
            "verifier, so libpq derives the key, 4096 PBKDF2 iterations, and PgBouncer only "
            "checks HMACs); a cleartext static secret to pgwarden (verified once with scrypt, "
            "then from its cache). `pgbouncer-plain` is a second PgBouncer with `auth_type = "
            "plain` (cleartext password, no key derivation anywhere) measured here only: it "
            "does the same client-side work as pgwarden, so the target is checked against it. "
            "Both proxies reuse pooled server connections."
        )
    if s.has("copy") and data is not None:
        lines.append(
            f"- COPY: a table of {data.rows:,} rows (int, two md5 texts, timestamptz), "
            f"{data.nbytes / 1e6:,.1f} MB of COPY text ({data.nbytes / max(data.rows, 1):.1f} "
            "bytes/row). OUT: `psql -c '\\copy copy_src to /dev/null'`; IN: `psql -c "
            "'\\copy copy_dst from <file>'` into an unlogged table emptied (TRUNCATE + "
            "CHECKPOINT, untimed) before each run. MB/s = COPY text bytes / the time psql's "
            "`\\timing` reports for the COPY (psql start and login excluded). "
            f"`COPY pgbench_accounts TO STDOUT` (issue 2's target): `psql -c '\\copy "
            f"pgbench_accounts to /dev/null'`, {data.accounts_rows:,} rows, "
            f"{data.accounts_nbytes / 1e6:,.1f} MB of COPY text, timed the same way."
        )
    if s.has("select"):
        lines.append(
            f"- SELECT: `{measure.SELECT_SQL.format(rows=s.select_rows)}` streamed by psycopg "
            f"(`cursor.stream(sql, size={measure.STREAM_CHUNK})`, libpq chunked-rows mode), "
            "every row turned into a Python tuple; timed from the query to the last row, "
            "after a first `SELECT 1` on the same connection."
        )
    if s.has("scaling"):
        lines.append(
            f"- Worker scaling: one pgwarden instance per worker count "
            f"({', '.join(map(str, s.scaling_workers))}), `pgbench -S -M {s.scaling_mode}` at "
            f"{', '.join(map(str, s.scaling_clients))} clients, interleaved with each other. "
            "pgbench, PostgreSQL and every worker share the same cores, so more workers than "
            "cores left free cannot add throughput."
        )
    if s.has("idle"):
        lines.append(
            f"- Idle connections: {s.idle_connections} asyncpg connections through a fresh "
            "instance of each proxy (PgBouncer: max_client_conn and pool sized for them; "
            "pgwarden: the same configuration as above). Each logs in, then runs one "
            "`SELECT 1` (PgBouncer links a server connection only at the first query; "
            "pgwarden opens its upstream session at login), then stays idle. Memory = sum of "
            "Rss (and Pss) over the proxy's processes, minus the same before opening them "
            "(after 5 warm-up connections were used and closed), divided by the number of "
            "connections. So each proxy figure is one client socket + one server socket + "
            "the session state. For direct PostgreSQL the same is taken over the postmaster "
            "tree (one backend per connection): read its Pss, its Rss counts shared buffers."
        )
    return lines


def run(settings: Settings) -> int:
    s = settings
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * s.idle_connections + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    role_password = secrets.token_urlsafe(18)
    extra_conf = {
        "max_connections": str(max(300, s.idle_connections + 300)),
        "shared_buffers": "'512MB'",
        "log_connections": "off",
    }
    with workdir(s.keep) as base, contextlib.ExitStack() as stack:
        cluster = PgCluster(base / "pg", extra_conf=extra_conf)
        stack.callback(cluster.stop)
        cluster.start()
        prepare_cluster(cluster, s, role_password)
        data = None
        if s.has("copy") or s.has("select"):
            data = prepare_copy_data(cluster, base, s)
        bench = Bench(s, cluster, base, role_password, stack, [], {}, data)
        start_targets(bench)
        machine = machine_info(cluster)
        bench.loads.append(("start", loadavg_1min()))
        if s.has("pgbench") or s.has("connect") or s.has("scaling"):
            _log("warm-up")
            warm(bench)
        for round_no in range(1, s.rounds + 1):
            run_round(bench, round_no)
        bench.loads.append(("end", loadavg_1min()))
        machine["load average at end"] = _loadavg()
        return emit(bench, machine)


def emit(bench: Bench, machine: dict[str, str]) -> int:
    s = bench.settings
    summaries = summarize(bench.samples, TARGET_ORDER)
    all_ratios = ratios(summaries)
    checks = target_checks(summaries)
    chart_name: str | None = None
    if s.chart is not None:
        try:
            from benchmarks.chart import write_chart

            write_chart(s.chart, summaries, all_ratios, f"pgwarden benchmark ratios - {s.command}")
            _log(f"wrote {s.chart}")
            same_dir = s.out is not None and s.chart.parent.resolve() == s.out.parent.resolve()
            chart_name = s.chart.name if same_dir else str(s.chart)
        except ImportError as exc:
            bench.failures.append(f"chart: matplotlib is not installed ({exc})")
            _log(f"no chart: {exc}")
    method = method_lines(s, bench.data)
    if bench.failures:
        method += ["", "**Failed measurements** (not in the tables):", ""]
        method += [f"- {f}" for f in bench.failures]
    report = ReportInput(
        command=s.command, quick=s.quick, rounds=s.rounds, method=method, machine=machine,
        samples=bench.samples, summaries=summaries, ratios=all_ratios, checks=checks,
        scaling_mode=s.scaling_mode, chart=chart_name, loads=bench.loads,
    )  # fmt: skip
    text = render_markdown(report)
    print(text)
    if s.out is not None:
        s.out.parent.mkdir(parents=True, exist_ok=True)
        s.out.write_text(text)
        _log(f"wrote {s.out}")
    if s.json_path is not None:
        s.json_path.parent.mkdir(parents=True, exist_ok=True)
        settings_data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()}
        write_json(s.json_path, report, {**settings_data, "failures": bench.failures})
        _log(f"wrote {s.json_path}")
    for c in checks:
        _log(f"target {c.status:12} {c.target}: {fmt(c.value, '.3f')}")
    if bench.failures:
        _log(f"{len(bench.failures)} measurement(s) failed")
        return 1
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
