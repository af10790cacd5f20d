"""Run the locust ETL mix against pgwarden and directly against PostgreSQL; write RESULTS.md.

One command, everything local and throwaway::

    python -m loadtest.run --users 20 --duration 60

1. starts a disposable PostgreSQL (:class:`gateway.devcluster.PgCluster`) on 127.0.0.1,
   creates a login role and a database it owns, and the tables of
   :mod:`loadtest.schema` (``lt_items`` filled with ``--items`` rows);
2. for each target in ``--targets`` order (default: pgwarden, then direct): empties what
   the previous run wrote, starts the proxy the way ``benchmarks/targets.py`` does, runs
   ``locust -f loadtest/locustfile.py --headless -u N -r R -t T --csv ...`` as a child
   process with the target's connection string in its environment, stops the proxy;
3. prints the report and writes it to ``--out`` (default ``loadtest/RESULTS.md``); the
   locust CSV files, logs and exact-timing JSON of each run go to ``--csv-dir``.

Users, duration and the child's wall time are bounded, and every target is on the
loopback interface.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import resource
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.compare import _exit_on_signal, workdir
from benchmarks.proctools import CLK_TCK, tree_cpu_seconds
from benchmarks.targets import (
    LOOPBACK,
    Target,
    direct_target,
    start_pgbouncer,
    start_pgwarden,
)
from gateway.devcluster import PgCluster
from loadtest import schema

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOCUSTFILE = HERE / "locustfile.py"
DEFAULT_OUT = HERE / "RESULTS.md"
DEFAULT_CSV_DIR = HERE / "results"

DBNAME = "loadtest"
ROLE = "etl_loader"
TARGET_NAMES = ("pgwarden", "direct", "pgbouncer")
MAX_USERS = 200  # the cluster allows 300 connections; keep room for pools and setup
MIN_DURATION, MAX_DURATION = 5, 3600
CHILD_GRACE = 60  # seconds past duration + stop timeout before the locust child is killed


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    users: int
    spawn_rate: float
    duration: int
    targets: tuple[str, ...]
    workers: int
    items: int
    think_ms: tuple[float, float]
    long_tx_sleep: float
    deny_blocked: bool
    out: Path | None
    json_path: Path | None
    csv_dir: Path
    keep: bool
    command: str

    @property
    def stop_timeout(self) -> int:
        """Seconds locust lets running tasks finish at the end (the long one sleeps)."""
        return max(5, math.ceil(self.long_tx_sleep) + 5)


def _bounded_int(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _target_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [name for name in names if name not in TARGET_NAMES]
    if bad or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of distinct names from {','.join(TARGET_NAMES)}, got {text!r}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loadtest.run", description=__doc__.split("\n")[0])
    p.add_argument(
        "--users", type=_bounded_int(1, MAX_USERS), default=20, help="concurrent locust users"
    )
    p.add_argument(
        "--spawn-rate", type=float, default=None, help="users started per second (default: all)"
    )
    p.add_argument(
        "--duration",
        type=_bounded_int(MIN_DURATION, MAX_DURATION),
        default=60,
        help="seconds of load per target",
    )
    p.add_argument(
        "--targets",
        type=_target_list,
        default=("pgwarden", "direct"),
        help="run order, from pgwarden,direct,pgbouncer (default: pgwarden,direct)",
    )
    p.add_argument("--workers", type=_bounded_int(1, 64), default=1, help="pgwarden workers")
    p.add_argument(
        "--items",
        type=_bounded_int(1_000, 10_000_000),
        default=schema.DEFAULT_ITEMS,
        help="rows in lt_items",
    )
    p.add_argument(
        "--think-ms",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(5.0, 50.0),
        help="wait between a user's tasks, uniform in [MIN, MAX] ms",
    )
    p.add_argument(
        "--long-tx-sleep",
        type=float,
        default=1.0,
        help="seconds the long transaction sits idle inside BEGIN ... COMMIT",
    )
    p.add_argument(
        "--deny-blocked",
        action="store_true",
        help="revoke UPDATE and DELETE on lt_scratch from the role, so that the blocked: "
        "statements get SQLSTATE 42501 from PostgreSQL itself (checks the denial path "
        "before pgwarden has a policy)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report")
    p.add_argument("--no-out", action="store_true", help="only print the report")
    p.add_argument("--json", type=Path, default=None, help="also write all results as JSON")
    p.add_argument(
        "--csv-dir", type=Path, default=DEFAULT_CSV_DIR, help="locust CSVs, logs, timings"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p


def parse_args(argv: Sequence[str]) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    spawn_rate = float(args.users) if args.spawn_rate is None else args.spawn_rate
    if not 0 < spawn_rate <= MAX_USERS:
        parser.error(f"--spawn-rate must be in (0, {MAX_USERS}], got {spawn_rate}")
    low, high = args.think_ms
    if not 0 <= low <= high <= 10_000:
        parser.error(f"--think-ms wants 0 <= MIN <= MAX <= 10000, got {low} {high}")
    if not 0 <= args.long_tx_sleep <= 60:
        parser.error(f"--long-tx-sleep must be between 0 and 60, got {args.long_tx_sleep}")
    return Settings(
        users=args.users,
        spawn_rate=spawn_rate,
        duration=args.duration,
        targets=args.targets,
        workers=args.workers,
        items=args.items,
        think_ms=(low, high),
        long_tx_sleep=args.long_tx_sleep,
        deny_blocked=args.deny_blocked,
        out=None if args.no_out else args.out,
        json_path=args.json,
        csv_dir=args.csv_dir,
        keep=args.keep,
        command=shlex.join(["python", "-m", "loadtest.run", *argv]),
    )


# -- one locust run ------------------------------------------------------------------------


@dataclass
class RunResult:
    target: str
    started: str
    wall_s: float
    exit_code: int
    timings: dict[str, Any]
    locust_cpu_s: float
    proxy_cpu_s: float | None
    postgres_cpu_s: float | None
    load_before: float | None = None
    load_after: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def requests(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.timings.get("requests", {})
        return found

    @property
    def window_s(self) -> float:
        return float(self.timings.get("window_s") or self.wall_s)


def _loadavg() -> float | None:
    """The 1-minute load average: other work on this machine skews every figure."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _postmaster_pid(cluster: PgCluster) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((cluster.data_dir / "postmaster.pid").read_text().splitlines()[0])
    return None


def _postgres_cpu(pid: int | None) -> float | None:
    """CPU seconds of the postmaster's tree, including backends that have exited since.

    A backend's CPU time disappears from the tree when it exits; the postmaster reaps it,
    so it reappears in the postmaster's ``cutime + cstime`` (``/proc/<pid>/stat``).
    """
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None
    return tree_cpu_seconds(pid) + reaped


def locust_argv(settings: Settings, prefix: Path, timings: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(settings.users),
        "-r",
        f"{settings.spawn_rate:g}",
        "-t",
        f"{settings.duration}s",
        "--stop-timeout",
        str(settings.stop_timeout),
        "--csv",
        str(prefix),
        "--exit-code-on-error",
        "0",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--pg-timings",
        str(timings),
    ]


def locust_env(settings: Settings, target: Target) -> dict[str, str]:
    """The locust child's environment: the target's conninfo (password included) goes here,
    not on the command line where ``ps`` would show it."""
    env = dict(os.environ)
    env.update(
        PGWARDEN_LOADTEST_DSN=target.conninfo(connect_timeout=10),
        PGWARDEN_LOADTEST_ITEMS=str(settings.items),
        PGWARDEN_LOADTEST_THINK_MS=f"{settings.think_ms[0]:g},{settings.think_ms[1]:g}",
        PGWARDEN_LOADTEST_LONG_TX_SLEEP=f"{settings.long_tx_sleep:g}",
    )
    env.pop("PGWARDEN_LOADTEST_TIMINGS", None)
    return env


def run_locust(settings: Settings, target: Target, cluster: PgCluster) -> RunResult:
    if target.host != LOOPBACK:
        raise RuntimeError(f"refusing to load-test {target.host}: only {LOOPBACK} is allowed")
    settings.csv_dir.mkdir(parents=True, exist_ok=True)
    prefix = settings.csv_dir / target.name
    timings_path = settings.csv_dir / f"{target.name}_timings.json"
    log_path = settings.csv_dir / f"{target.name}_locust.log"
    timings_path.unlink(missing_ok=True)
    argv = locust_argv(settings, prefix, timings_path)
    budget = settings.duration + settings.stop_timeout + CHILD_GRACE
    postmaster = _postmaster_pid(cluster)
    load_before = _loadavg()
    pg_before = _postgres_cpu(postmaster)
    proxy_before = target.proxy_cpu_seconds()
    children_before = _children_cpu_seconds()
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    _log(
        f"{target.name}: locust {settings.users} users for {settings.duration}s "
        f"(log {_rel(log_path)})"
    )
    t0 = time.monotonic()
    notes: list[str] = []
    with log_path.open("wb") as log:
        try:
            proc = subprocess.run(
                argv,
                cwd=ROOT,
                env=locust_env(settings, target),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=budget,
                check=False,
            )
            exit_code = proc.returncode
        except subprocess.TimeoutExpired:
            exit_code = -9
            notes.append(f"locust did not finish within {budget}s and was killed")
    wall = time.monotonic() - t0
    load_after = _loadavg()
    proxy_after = target.proxy_cpu_seconds()
    pg_after = _postgres_cpu(postmaster)
    if exit_code != 0:
        notes.append(f"locust exited with {exit_code}; see {_rel(log_path)}")
    try:
        timings: dict[str, Any] = json.loads(timings_path.read_text())
    except (OSError, ValueError) as exc:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(
            f"{target.name}: locust wrote no timings ({exc}); exit {exit_code}\n{tail}"
        ) from exc
    if timings.get("psycopg_wait") == "wait_c":
        notes.append("psycopg used its blocking C wait function: users did not run concurrently")
    result = RunResult(
        target=target.name,
        started=started,
        wall_s=wall,
        exit_code=exit_code,
        timings=timings,
        locust_cpu_s=_children_cpu_seconds() - children_before,
        proxy_cpu_s=None
        if proxy_before is None or proxy_after is None
        else proxy_after - proxy_before,
        postgres_cpu_s=None if pg_before is None or pg_after is None else pg_after - pg_before,
        load_before=load_before,
        load_after=load_after,
        notes=notes,
    )
    return result


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# -- targets ---------------------------------------------------------------------------------


def prepare_cluster(cluster: PgCluster, settings: Settings, role_password: str) -> Target:
    """Role, database it owns, tables; returns the direct target (as that role)."""
    cluster.create_role(ROLE, role_password)
    cluster.create_database(DBNAME, owner=ROLE)
    direct = direct_target(cluster, DBNAME, ROLE, role_password)
    _log(f"PostgreSQL on {cluster.host}:{cluster.port}; lt_items gets {settings.items} rows")
    schema.prepare(direct.conninfo(), settings.items)
    if settings.deny_blocked:
        with psycopg.connect(direct.conninfo(), autocommit=True) as conn:
            conn.execute(f"REVOKE UPDATE, DELETE ON lt_scratch FROM {ROLE}")
        _log("--deny-blocked: the role may no longer UPDATE or DELETE lt_scratch")
    return direct


@contextlib.contextmanager
def started_target(
    name: str, cluster: PgCluster, base: Path, settings: Settings, role_password: str
) -> Iterator[Target]:
    """The target, with its proxy started for the duration of the block."""
    if name == "direct":
        yield direct_target(cluster, DBNAME, ROLE, role_password)
        return
    if name == "pgbouncer":
        target = start_pgbouncer(
            cluster,
            base / "pgbouncer",
            dbname=DBNAME,
            user=ROLE,
            password=role_password,
            clients=settings.users,
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
    _log(f"{name} on {target.host}:{target.port} (pid {target.process.pid})")
    try:
        yield target
    finally:
        target.process.stop()


# -- report ----------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def _pct(part: int, whole: int) -> str:
    return "-" if whole == 0 else f"{100.0 * part / whole:.2f} %"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "-"
    return f"{a / b:.2f}x"


def _load(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cpu(seconds: float | None, window: float) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s ({100.0 * seconds / window:.0f} % of a core)"


def _machine(cluster: PgCluster) -> list[tuple[str, str]]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        pg_version = str(cluster.sql("SHOW server_version")[0][0])
    except Exception as exc:  # the report must not fail for a version string
        pg_version = f"unknown ({exc})"

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return [
        ("CPU", f"{os.cpu_count()} x {model}"),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        ("PostgreSQL", pg_version),
        ("locust", version("locust")),
        ("psycopg", version("psycopg")),
    ]


def render_markdown(
    settings: Settings,
    machine: list[tuple[str, str]],
    results: list[RunResult],
    load_at_start: float | None = None,
) -> str:
    lines: list[str] = ["# Load test: ETL mix through pgwarden and directly", ""]
    lines += [
        f"`{settings.command}`",
        "",
        "Everything ran on this one machine: PostgreSQL, the proxy and locust share its "
        "cores, so the figures compare targets within one run, not absolute capacity. "
        "See `loadtest/README.md` for the mix and how to read this.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| date | {results[0].started if results else '-'} |",
    ]
    lines += [f"| {key} | {value} |" for key, value in machine]
    lines.append(f"| load average (1 min) before starting | {_load(load_at_start)} |")
    think = f"{settings.think_ms[0]:g}-{settings.think_ms[1]:g} ms"
    lines += [
        f"| users | {settings.users} (spawned at {settings.spawn_rate:g}/s) |",
        f"| duration per target | {settings.duration} s |",
        f"| think time per user | {think} |",
        f"| long transaction | {settings.long_tx_sleep:g} s idle inside BEGIN ... COMMIT |",
        f"| lt_items rows | {settings.items} |",
        f"| pgwarden workers | {settings.workers} |",
        f"| targets, in run order | {', '.join(settings.targets)} |",
        *(
            ["| --deny-blocked | UPDATE, DELETE on lt_scratch revoked: PostgreSQL denies |"]
            if settings.deny_blocked
            else []
        ),
        "",
        "## Totals",
        "",
        "| target | measured | requests | req/s | failure rate | denied (42501) "
        "| other errors | error rate (42501 aside) | locust CPU | proxy CPU | PostgreSQL CPU "
        "| load avg, start / end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        reqs = res.requests.values()
        count = sum(r["count"] for r in reqs)
        denied = sum(r["denied"] for r in reqs)
        errors = sum(r["errors"] for r in reqs)
        window = res.window_s
        lines.append(
            f"| {res.target} | {window:.1f} s | {count} | {count / window:.0f} "
            f"| {_pct(denied + errors, count)} "
            f"| {denied} | {errors} | {_pct(errors, count)} | {_cpu(res.locust_cpu_s, window)} "
            f"| {_cpu(res.proxy_cpu_s, window)} | {_cpu(res.postgres_cpu_s, window)} "
            f"| {_load(res.load_before)} / {_load(res.load_after)} |"
        )
    lines += [
        "",
        "## Latency per request name (ms, exact)",
        "",
        "Percentiles are over every request of that name, failed ones included. "
        "`blocked:` rows are statements a policy is expected to refuse: there, "
        "denied (42501) is the expected outcome and only other errors are failures.",
        "",
        "| request | target | count | req/s | p50 | p95 | p99 | max | failure rate "
        "| denied (42501) | other errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = sorted({name for res in results for name in res.requests}, key=_name_order)
    for name in names:
        for res in results:
            stats = res.requests.get(name)
            if stats is None:
                continue
            count = stats["count"]
            lines.append(
                f"| {name} | {res.target} | {count} | {count / res.window_s:.1f} "
                f"| {_ms(stats['p50_ms'])} | {_ms(stats['p95_ms'])} | {_ms(stats['p99_ms'])} "
                f"| {_ms(stats['max_ms'])} | {_pct(stats['denied'] + stats['errors'], count)} "
                f"| {stats['denied']} | {stats['errors']} |"
            )
    lines += _comparison(results, names)
    lines += _slowest(results)
    lines += _failures(results)
    notes = [f"{res.target}: {note}" for res in results for note in res.notes]
    busy = _busy_note(load_at_start)
    if busy is not None:
        notes.insert(0, busy)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    lines += [
        "",
        "Raw files per target (locust `*_stats.csv`, `*_failures.csv`, the locust log and "
        f"the exact-timing JSON) are in `{_rel(settings.csv_dir)}/`.",
        "",
    ]
    return "\n".join(lines)


def _name_order(name: str) -> tuple[int, str]:
    order = ("connect", "lookup", "insert", "copy in", "copy out", "txn", "scratch", "blocked")
    for index, prefix in enumerate(order):
        if name.startswith(prefix):
            return index, name
    return len(order), name


def _comparison(results: list[RunResult], names: list[str]) -> list[str]:
    by_target = {res.target: res for res in results}
    direct = by_target.get("direct")
    proxies = [res for res in results if res.target != "direct"]
    if direct is None or not proxies:
        return []
    lines = [
        "",
        "## Proxy vs direct",
        "",
        "Ratio of the proxy's latency percentile to direct PostgreSQL's (1.00x = no cost), "
        "and the p50 difference in ms.",
        "",
        "| request | proxy | p50 ratio | p95 ratio | p99 ratio | p50 added (ms) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in names:
        base = direct.requests.get(name)
        if base is None:
            continue
        for res in proxies:
            stats = res.requests.get(name)
            if stats is None:
                continue
            added = (
                None
                if stats["p50_ms"] is None or base["p50_ms"] is None
                else stats["p50_ms"] - base["p50_ms"]
            )
            lines.append(
                f"| {name} | {res.target} | {_ratio(stats['p50_ms'], base['p50_ms'])} "
                f"| {_ratio(stats['p95_ms'], base['p95_ms'])} "
                f"| {_ratio(stats['p99_ms'], base['p99_ms'])} "
                f"| {'-' if added is None else f'{added:+.2f}'} |"
            )
    return lines


def _slowest(results: list[RunResult], shown: int = 8) -> list[str]:
    """The slowest single requests of each target (the long transaction's own sleep is
    subtracted), with when they started: requests of several names stalled at the same
    moment point at something shared (the proxy, the server, the machine)."""
    lines = [
        "",
        "## Slowest requests",
        "",
        "Seconds since the start of that target's run; for the long transaction, the time "
        "beyond its sleep.",
        "",
        "| target | started at (s) | request | ms |",
        "|---|---:|---|---:|",
    ]
    for res in results:
        sleep_ms = 1000.0 * float(res.timings.get("long_tx_sleep_s") or 0.0)
        found: list[tuple[float, float, str]] = []
        for name, stats in res.requests.items():
            if name == "connect":
                continue
            extra = sleep_ms if name.startswith("txn: long") else 0.0
            found += [(x["ms"] - extra, x["started_at_s"], name) for x in stats["slowest"]]
        for ms, at, name in sorted(found, reverse=True)[:shown]:
            label = f"{name} (beyond the sleep)" if name.startswith("txn: long") else name
            lines.append(f"| {res.target} | {at:.1f} | {label} | {_ms(ms)} |")
    return lines


def _failures(results: list[RunResult]) -> list[str]:
    rows = [
        (res.target, name, message, count)
        for res in results
        for name, stats in res.requests.items()
        for message, count in stats.get("messages", {}).items()
    ]
    if not rows:
        return ["", "## Failures", "", "None."]
    lines = ["", "## Failures", "", "| target | request | message | count |", "|---|---|---|---:|"]
    for target, name, message, count in rows:
        text = message.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {target} | {name} | {text} | {count} |")
    return lines


# -- orchestration ---------------------------------------------------------------------------


def _busy_note(load: float | None) -> str | None:
    """A warning when something else was loading the machine before we started."""
    cores = os.cpu_count() or 1
    if load is None or load <= cores / 2:
        return None
    return (
        f"before the load test began the 1-minute load average was already {load:.2f} on "
        f"{cores} cores: other work competed for the CPU, expect noisier figures"
    )


def run(settings: Settings) -> int:
    role_password = secrets.token_urlsafe(18)
    results: list[RunResult] = []
    load_at_start = _loadavg()
    with workdir(settings.keep, "pgwarden-loadtest-") as base, contextlib.ExitStack() as stack:
        cluster = PgCluster(base / "pg")
        stack.callback(cluster.stop)
        cluster.start()
        direct = prepare_cluster(cluster, settings, role_password)
        machine = _machine(cluster)
        for name in settings.targets:
            schema.reset(direct.conninfo())
            cluster.sql("CHECKPOINT")
            with started_target(name, cluster, base, settings, role_password) as target:
                result = run_locust(settings, target, cluster)
            results.append(result)
            _summary_line(result)
        report = render_markdown(settings, machine, results, load_at_start)
    print(report)
    if settings.out is not None:
        settings.out.parent.mkdir(parents=True, exist_ok=True)
        settings.out.write_text(report)
        _log(f"wrote {_rel(settings.out)}")
    if settings.json_path is not None:
        payload = {
            "settings": {k: str(v) for k, v in asdict(settings).items()},
            "machine": dict(machine),
            "results": [asdict(res) for res in results],
        }
        settings.json_path.parent.mkdir(parents=True, exist_ok=True)
        settings.json_path.write_text(json.dumps(payload, indent=2) + "\n")
        _log(f"wrote {_rel(settings.json_path)}")
    return 1 if any(res.exit_code != 0 for res in results) else 0


def _summary_line(res: RunResult) -> None:
    stats = res.requests.values()
    count = sum(s["count"] for s in stats)
    errors = sum(s["errors"] for s in stats)
    denied = sum(s["denied"] for s in stats)
    _log(
        f"{res.target}: {count} requests in {res.window_s:.0f}s, "
        f"{denied} denied (42501), {errors} other errors"
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(sys.argv[1:] if argv is None else list(argv))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    try:
        return run(settings)
    except KeyboardInterrupt:
        _log("interrupted; everything started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
