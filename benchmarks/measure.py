"""One measurement through one target: pgbench, connection setup, COPY, a streamed SELECT.

Every function here runs one client workload against one :class:`~benchmarks.targets.Target`
and returns a :class:`Sample`: the round, what was measured (``kind`` and ``variant``), the
target and a flat dict of metrics with their unit in the name (``tps``, ``p99_ms``,
``cpu_us_per_stmt``, ``mb_per_s`` ...). For a proxy, the CPU time (utime + stime from
``/proc``) of the proxy's whole process tree during the run is included; direct
PostgreSQL has none.

- :func:`pgbench_select`: ``pgbench -S -M <mode> -c C -j min(C, 2) -T D -n`` with a
  per-transaction log (``-l --sampling-rate R --log-prefix`` in a temporary directory),
  from which the p99 latency is computed (the 3rd field of each line, in µs).
- :func:`connect_rate`: ``pgbench -C -S`` (a new connection per transaction); tps is then
  connections per second, and the proxy's CPU is divided by connections.
- :func:`copy_out` / :func:`copy_in`: ``psql`` ``\\copy ... to /dev/null`` and
  ``\\copy ... from '<file>'`` with ``\\timing on``; the COPY's own time as psql reports it
  (psql start and login excluded), MB = 10^6 bytes of COPY text.
- :func:`stream_select`: psycopg ``cursor.stream(sql, size=...)`` (libpq chunked-rows mode
  when the libpq supports it, single-row mode otherwise), rows counted as they arrive.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.proctools import CpuTimes
from benchmarks.targets import Target
from gateway.devcluster import PgCluster

SELECT_SQL = "SELECT id, a, b, ts FROM copy_src LIMIT {rows}"
STREAM_CHUNK = 1000


@dataclass(frozen=True)
class Sample:
    """One run of one workload through one target."""

    round: int
    kind: str  # pgbench | connect | copy_out | copy_accounts | copy_in | select | idle | scaling
    variant: str  # e.g. "simple c8", "w2 c32"; "" when the kind has a single variant
    target: str
    metrics: dict[str, float] = field(default_factory=dict)

    def get(self, name: str) -> float | None:
        return self.metrics.get(name)


@dataclass(frozen=True)
class PgbenchOutput:
    tps: float
    latency_ms: float
    transactions: int
    failed: int
    connection_ms: float | None


def _search(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise ValueError(f"pgbench output has no {pattern!r}:\n{text}")
    return match


def parse_pgbench(text: str) -> PgbenchOutput:
    """tps, average latency, transactions, failures (and connection time) from the summary.

    ``tps`` is pgbench's "without initial connection time" figure, or with ``-C`` the one
    "including reconnection times".
    """
    failed = re.search(r"^number of failed transactions: (\d+)", text, re.MULTILINE)
    conn = re.search(r"^(?:average|initial) connection time = ([\d.]+) ms", text, re.MULTILINE)
    return PgbenchOutput(
        tps=float(_search(r"^tps = ([\d.]+) \((?:without|excluding|including)", text).group(1)),
        latency_ms=float(_search(r"^latency average = ([\d.]+) ms", text).group(1)),
        transactions=int(
            _search(r"^number of transactions actually processed: (\d+)", text).group(1)
        ),
        failed=int(failed.group(1)) if failed else 0,
        connection_ms=float(conn.group(1)) if conn else None,
    )


def percentile(values: list[int], pct: float) -> float | None:
    """Nearest-rank percentile of ``values`` (sorted in place); None when empty."""
    if not values:
        return None
    values.sort()
    rank = max(1, math.ceil(pct / 100.0 * len(values)))
    return float(values[rank - 1])


def read_latencies_us(log_dir: Path) -> list[int]:
    """Per-transaction latencies (µs) from every pgbench ``-l`` file in ``log_dir``.

    A line is ``client_id transaction_no time script_no time_epoch time_us``; ``time`` is
    the transaction's latency in µs (a failed one is logged as ``failed``/``skipped``)."""
    latencies: list[int] = []
    for path in sorted(log_dir.iterdir()):
        with path.open() as fh:
            for line in fh:
                fields = line.split(None, 3)
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies.append(int(fields[2]))
    return latencies


def _cpu_after(target: Target, before: CpuTimes | None) -> CpuTimes | None:
    after = target.proxy_cpu_times()
    return None if before is None or after is None else after - before


def _cpu_metrics(cpu: CpuTimes) -> dict[str, float]:
    """The proxy's CPU seconds, and the share of it spent in the kernel (socket I/O)."""
    out = {"proxy_cpu_s": cpu.total, "proxy_user_s": cpu.user, "proxy_sys_s": cpu.system}
    if cpu.total > 0:
        out["proxy_sys_pct"] = 100.0 * cpu.system / cpu.total
    return out


def _run(argv: list[str], target: Target, timeout: float) -> tuple[str, CpuTimes | None, float]:
    """Run a client program through ``target``: (stdout, proxy CPU, wall s)."""
    cpu_before = target.proxy_cpu_times()
    start = time.perf_counter()
    proc = subprocess.run(
        argv, env=target.client_env(), capture_output=True, text=True, check=False,
        timeout=timeout,
    )  # fmt: skip
    wall = time.perf_counter() - start
    cpu = _cpu_after(target, cpu_before)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[0]).name} via {target.name} failed ({proc.returncode}): "
            f"{shlex.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return proc.stdout, cpu, wall


def jobs_for(clients: int) -> int:
    return min(clients, 2)


def pgbench_argv(
    cluster: PgCluster, mode: str, clients: int, duration: int, *extra: str
) -> list[str]:
    return [
        str(cluster.bindir / "pgbench"), "-S", "-M", mode, "-c", str(clients),
        "-j", str(jobs_for(clients)), "-T", str(duration), "-n", *extra,
    ]  # fmt: skip


def pgbench_select(
    cluster: PgCluster,
    target: Target,
    *,
    mode: str,
    clients: int,
    duration: int,
    sampling_rate: float,
    round_no: int,
    kind: str = "pgbench",
    variant: str | None = None,
) -> Sample:
    """``pgbench -S`` through ``target`` with a sampled per-transaction log for the p99."""
    with tempfile.TemporaryDirectory(prefix="pgwarden-pgbench-log-") as tmp:
        log_dir = Path(tmp)
        log_flags = ["-l", f"--log-prefix={log_dir / 'tx'}"]
        if sampling_rate < 1.0:
            log_flags.append(f"--sampling-rate={sampling_rate}")
        argv = pgbench_argv(cluster, mode, clients, duration, *log_flags)
        stdout, cpu, _wall = _run(argv, target, duration * 4 + 60)
        latencies = read_latencies_us(log_dir)
    out = parse_pgbench(stdout)
    p99 = percentile(latencies, 99.0)
    metrics: dict[str, float] = {
        "tps": out.tps,
        "latency_ms": out.latency_ms,
        "transactions": float(out.transactions),
        "failed": float(out.failed),
        "latency_samples": float(len(latencies)),
    }
    if p99 is not None:
        metrics["p99_ms"] = p99 / 1000.0
    if cpu is not None:
        metrics.update(_cpu_metrics(cpu))
        if out.transactions:
            metrics["cpu_us_per_stmt"] = cpu.total * 1e6 / out.transactions
    name = f"{mode} c{clients}" if variant is None else variant
    return Sample(round_no, kind, name, target.name, metrics)


def connect_rate(
    cluster: PgCluster, target: Target, *, clients: int, duration: int, round_no: int
) -> Sample:
    """``pgbench -C -S -M simple``: one new connection (login included) per transaction."""
    argv = pgbench_argv(cluster, "simple", clients, duration, "-C")
    stdout, cpu, _wall = _run(argv, target, duration * 4 + 60)
    out = parse_pgbench(stdout)
    metrics: dict[str, float] = {
        "conn_per_s": out.tps,
        "latency_ms": out.latency_ms,
        "connections": float(out.transactions),
        "failed": float(out.failed),
    }
    if out.connection_ms is not None:
        metrics["connection_ms"] = out.connection_ms
    if cpu is not None:
        metrics.update(_cpu_metrics(cpu))
        if out.transactions:
            metrics["cpu_us_per_conn"] = cpu.total * 1e6 / out.transactions
    return Sample(round_no, "connect", f"c{clients}", target.name, metrics)


_TIME = re.compile(r"^Time: ([\d.]+) ms", re.MULTILINE)


def psql_timed(
    cluster: PgCluster, target: Target, meta: str
) -> tuple[float, CpuTimes | None, float]:
    """``psql -c '\\timing on' -c <meta>``: (seconds psql timed, proxy CPU s, wall s)."""
    argv = [
        str(cluster.bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1",
        "-c", "\\timing on", "-c", meta,
    ]  # fmt: skip
    stdout, cpu, wall = _run(argv, target, 1800)
    times = _TIME.findall(stdout)
    if not times:
        raise RuntimeError(f"psql printed no timing for {meta!r} via {target.name}:\n{stdout}")
    return float(times[-1]) / 1000.0, cpu, wall


def _copy_sample(
    kind: str,
    target: Target,
    round_no: int,
    nbytes: int,
    rows: int,
    timed: tuple[float, CpuTimes | None, float],
) -> Sample:
    seconds, cpu, wall = timed
    metrics: dict[str, float] = {
        "mb_per_s": nbytes / 1e6 / seconds,
        "seconds": seconds,
        "wall_s": wall,
        "mbytes": nbytes / 1e6,
        "rows": float(rows),
    }
    if cpu is not None:
        metrics.update(_cpu_metrics(cpu))
        metrics["cpu_s_per_gb"] = cpu.total * 1e9 / nbytes
    return Sample(round_no, kind, "", target.name, metrics)


def copy_out(
    cluster: PgCluster, target: Target, *, table: str, nbytes: int, rows: int, round_no: int,
    kind: str = "copy_out",
) -> Sample:
    """``\\copy <table> to /dev/null`` (``COPY <table> TO STDOUT``); ``nbytes`` is the size
    of the table's COPY text."""
    timed = psql_timed(cluster, target, f"\\copy {table} to /dev/null")
    return _copy_sample(kind, target, round_no, nbytes, rows, timed)


def copy_in(
    cluster: PgCluster,
    target: Target,
    *,
    table: str,
    source: Path,
    rows: int,
    round_no: int,
) -> Sample:
    """``\\copy <table> from '<source>'``; the caller empties ``table`` before (untimed)."""
    path = str(source).replace("'", "''")
    timed = psql_timed(cluster, target, f"\\copy {table} from '{path}'")
    return _copy_sample("copy_in", target, round_no, source.stat().st_size, rows, timed)


def stream_select(target: Target, *, rows: int, round_no: int) -> Sample:
    """Stream ``rows`` rows of ``copy_src`` with psycopg and count them."""
    import psycopg

    sql = SELECT_SQL.format(rows=int(rows))
    # chunked-rows mode needs libpq >= 17 (and psycopg >= 3.2); else one row per result
    chunk = STREAM_CHUNK if psycopg.pq.version() >= 170000 else 1
    with psycopg.connect(target.conninfo(connect_timeout=10), autocommit=True) as conn:
        conn.execute("SELECT 1")  # login and first round trip out of the timing
        cpu_before = target.proxy_cpu_times()
        count = 0
        start = time.perf_counter()
        with conn.cursor() as cur:
            stream = cur.stream(sql, size=chunk) if chunk > 1 else cur.stream(sql)
            for _row in stream:
                count += 1
        seconds = time.perf_counter() - start
        cpu = _cpu_after(target, cpu_before)
    if count != rows:
        raise RuntimeError(f"SELECT via {target.name} returned {count} rows, not {rows}")
    metrics: dict[str, float] = {
        "rows_per_s": count / seconds,
        "seconds": seconds,
        "stream_chunk": float(chunk),
    }
    if cpu is not None:
        metrics.update(_cpu_metrics(cpu))
        metrics["cpu_ns_per_row"] = cpu.total * 1e9 / count
    return Sample(round_no, "select", "", target.name, metrics)
