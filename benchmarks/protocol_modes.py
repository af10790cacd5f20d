"""What the receive path of a uvloop proxy costs: ``Protocol`` vs ``BufferedProtocol``.

    python3 -m benchmarks.protocol_modes [--rounds 3] [--duration 5] [--clients 8]
                                         [--out benchmarks/protocol_modes.md]

The design asks to measure both ways a uvloop proxy can receive bytes and keep the cheaper
one. This script starts a throwaway cluster (:mod:`gateway.devcluster`, ``pgbench -i -s
10``, one login role, exactly like :mod:`benchmarks.compare`) and puts one *transparent*
TCP proxy per receive mode in front of it. The proxy is a pure byte pipe (no framing, no
protocol work), one process each, so its CPU time is the cost of the I/O mode alone:

``data_received``
    :class:`asyncio.Protocol`; every received ``bytes`` object is forwarded as it is with
    ``peer_transport.write(data)``.
``buffered_copy``
    :class:`asyncio.BufferedProtocol` reading into one reusable ``bytearray`` per side;
    forwards ``bytes(view[:n])``.
``buffered_zero_copy``
    :class:`asyncio.BufferedProtocol` with a reusable buffer, forwarding the memoryview
    ``view[:n]`` itself. If the peer transport still holds unsent data after the write
    (``get_write_buffer_size() > 0``: it may still reference our buffer), the next
    ``get_buffer`` gets a fresh ``bytearray`` so unsent bytes are never overwritten.

All modes: TCP_NODELAY, flow control both ways (``pause_writing`` -> the peer's
``pause_reading``, ``resume_writing`` -> ``resume_reading``), 256,000-byte receive buffers
(the size of uvloop's own receive buffer used for ``data_received``).

Then it runs interleaved rounds (the target order rotates from run to run) of ``pgbench -S
-M simple`` and ``-M prepared`` through ``direct`` and every mode, and one ``\\copy
pgbench_accounts to /dev/null`` per target and round, and reports medians: tps, proxy CPU
µs per statement (utime + stime of the proxy process from ``/proc/<pid>/stat`` ÷
transactions), its user / sys split, and COPY wall time. Before measuring it checks every
mode: the full ``pgbench_accounts`` COPY stream through it is byte-identical to the direct
one (1,000,000 rows at scale 10) and an 8 MiB parameter reaches the server intact; every
pgbench run must report 0 failed transactions.

The proxy alone: ``python3 -m benchmarks.protocol_modes --serve MODE --listen PORT
--upstream HOST:PORT``. Every process the script starts is stopped on exit, Ctrl-C,
SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import hashlib
import json
import os
import platform
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from benchmarks.compare import (
    DBNAME,
    ROLE,
    _cpu_model,
    _exit_on_signal,
    _first_line,
    _fmt,
    _git_commit,
    _loadavg,
    _log,
    _median,
    _ratio,
    prepare_cluster,
    rotated,
    run_copy,
    run_pgbench,
    warm_up,
    workdir,
)
from benchmarks.compare import Settings as CompareSettings
from benchmarks.proctools import CLK_TCK, ManagedProcess
from benchmarks.targets import LOOPBACK, Target, direct_target, wait_ready
from gateway.devcluster import PgCluster, free_port

MODES = ("data_received", "buffered_copy", "buffered_zero_copy")
QUERY_MODES = ("simple", "prepared")
BUFFER_SIZE = 256_000  # = uvloop's UV_STREAM_RECV_BUF_SIZE, what data_received reads into
DEFAULT_OUT = Path(__file__).resolve().parent / "protocol_modes.md"
REPO_ROOT = Path(__file__).resolve().parent.parent
UPLOAD_BYTES = 8 * 1024 * 1024


# =========================================================================================
# The proxy (runs in its own process: ``--serve MODE``)
# =========================================================================================


class DirectionStats:
    """Counters of one direction (client->server or server->client) of all connections."""

    __slots__ = ("fresh_buffers", "nbytes", "reads")

    def __init__(self) -> None:
        self.reads = 0
        self.nbytes = 0
        self.fresh_buffers = 0

    def as_dict(self) -> dict[str, int]:
        return {"reads": self.reads, "bytes": self.nbytes, "fresh_buffers": self.fresh_buffers}


class _Unlinked(asyncio.Transport):
    """Stands in for the upstream transport while it is being connected.

    uvloop starts reading a new connection right after ``connection_made`` (a
    ``pause_reading()`` there is a no-op), so the client may send its startup packet
    before the upstream connection exists: keep a copy of it, to be sent first.
    """

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.chunks.append(bytes(data))  # a copy: buffered modes reuse their buffer

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class _Pipe(asyncio.BaseProtocol):
    """What every mode shares: linking the two sides, flow control, closing, TCP_NODELAY.

    A server-side pipe is created with its peer (the client transport) already known. The
    client side (``upstream`` given) starts with an :class:`_Unlinked` peer, connects
    upstream, then sends what it kept and swaps in the real transport. Subclasses add
    the receive path, which only ever calls ``self.peer.write``.
    """

    transport: asyncio.Transport

    def __init__(
        self,
        stats: DirectionStats,
        peer: asyncio.Transport | None = None,
        upstream: tuple[str, int] | None = None,
        factory: Callable[[asyncio.Transport], _Pipe] | None = None,
    ) -> None:
        self.stats = stats
        self.peer: asyncio.Transport = peer if peer is not None else _Unlinked()
        self._upstream = upstream
        self._factory = factory
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._upstream is not None:
            self._task = asyncio.get_running_loop().create_task(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        assert self._upstream is not None and self._factory is not None
        factory, client = self._factory, self.transport
        host, port = self._upstream
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(lambda: factory(client), host, port)
        except OSError as exc:
            print(f"upstream connect failed: {exc}", file=sys.stderr, flush=True)
            client.close()
            return
        if self._closed:  # the client went away while we were connecting
            upstream.close()
            return
        pending = self.peer
        assert isinstance(pending, _Unlinked)
        for chunk in pending.chunks:
            upstream.write(chunk)
        self.peer = upstream

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.peer.close()  # flushes what is still buffered for the peer, then closes

    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # close our side; connection_lost closes the peer


class DataReceivedPipe(_Pipe, asyncio.Protocol):
    """Forward the very ``bytes`` object uvloop created for each read."""

    def data_received(self, data: bytes) -> None:
        stats = self.stats
        stats.reads += 1
        stats.nbytes += len(data)
        self.peer.write(data)


class BufferedCopyPipe(_Pipe, asyncio.BufferedProtocol):
    """One reusable buffer per side; forward a ``bytes`` copy of what was read."""

    def __init__(
        self,
        stats: DirectionStats,
        peer: asyncio.Transport | None = None,
        upstream: tuple[str, int] | None = None,
        factory: Callable[[asyncio.Transport], _Pipe] | None = None,
    ) -> None:
        super().__init__(stats, peer, upstream, factory)
        self._view = memoryview(bytearray(BUFFER_SIZE))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        stats = self.stats
        stats.reads += 1
        stats.nbytes += nbytes
        self.peer.write(bytes(self._view[:nbytes]))


class BufferedZeroCopyPipe(_Pipe, asyncio.BufferedProtocol):
    """One reusable buffer per side; forward the memoryview itself.

    uvloop's ``write`` tries to send at once; whatever the socket does not take stays
    queued as a slice of *our* buffer. So if the peer transport has anything buffered
    after the write, reading into the same buffer again could overwrite unsent bytes:
    switch to a fresh buffer (and count it).
    """

    def __init__(
        self,
        stats: DirectionStats,
        peer: asyncio.Transport | None = None,
        upstream: tuple[str, int] | None = None,
        factory: Callable[[asyncio.Transport], _Pipe] | None = None,
    ) -> None:
        super().__init__(stats, peer, upstream, factory)
        self._view = memoryview(bytearray(BUFFER_SIZE))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        stats = self.stats
        stats.reads += 1
        stats.nbytes += nbytes
        peer = self.peer
        peer.write(self._view[:nbytes])
        if peer.get_write_buffer_size():
            self._view = memoryview(bytearray(BUFFER_SIZE))
            stats.fresh_buffers += 1


PIPES: dict[str, type[_Pipe]] = {
    "data_received": DataReceivedPipe,
    "buffered_copy": BufferedCopyPipe,
    "buffered_zero_copy": BufferedZeroCopyPipe,
}


async def serve(mode: str, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    """Accept on ``listen``, pipe every connection to ``upstream`` until SIGTERM/SIGINT; then
    print the counters as one JSON line on stderr."""
    loop = asyncio.get_running_loop()
    pipe = PIPES[mode]
    c2s, s2c = DirectionStats(), DirectionStats()
    connections = 0

    def server_side(client: asyncio.Transport) -> _Pipe:
        return pipe(s2c, peer=client)

    def client_side() -> _Pipe:
        nonlocal connections
        connections += 1
        return pipe(c2s, upstream=upstream, factory=server_side)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(client_side, listen[0], listen[1], reuse_address=True)
    gc.freeze()  # startup objects (imports) out of the collector's way
    print(f"{mode} proxy on {listen[0]}:{listen[1]} -> {upstream[0]}:{upstream[1]}", flush=True)
    await stop.wait()
    server.close()
    stats = {"mode": mode, "connections": connections, "c2s": c2s.as_dict(), "s2c": s2c.as_dict()}
    print("STATS " + json.dumps(stats), file=sys.stderr, flush=True)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def serve_main(mode: str, listen_host: str, listen_port: int, upstream: tuple[str, int]) -> int:
    import uvloop

    uvloop.run(serve(mode, (listen_host, listen_port), upstream))
    return 0


# =========================================================================================
# The benchmark
# =========================================================================================


@dataclass(frozen=True)
class Settings:
    rounds: int
    duration: int
    clients: int
    jobs: int
    scale: int
    warmup: int
    out: Path | None
    keep: bool
    argv: tuple[str, ...] = field(default=())

    @property
    def command(self) -> str:
        return shlex.join(["python3", "-m", "benchmarks.protocol_modes", *self.argv])

    def for_compare(self) -> CompareSettings:
        """The settings :mod:`benchmarks.compare`'s pgbench/warm-up helpers read."""
        return CompareSettings(
            rounds=self.rounds,
            duration=self.duration,
            clients=self.clients,
            jobs=self.jobs,
            scale=self.scale,
            modes=QUERY_MODES,
            targets=("direct",),
            workers=1,
            warmup=self.warmup,
            copy=True,
            out=None,
            json_path=None,
            keep=self.keep,
            quick=False,
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks.protocol_modes", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=int, default=5, help="seconds per pgbench run (default 5)")
    p.add_argument("--clients", type=int, default=8, help="pgbench -c (default 8)")
    p.add_argument("--jobs", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds per target and mode")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"Markdown report (default {DEFAULT_OUT}); '-' for none",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--serve", choices=MODES, help="run one proxy (internal)")
    p.add_argument("--listen", type=int, help="--serve: port to listen on")
    p.add_argument("--listen-host", default=LOOPBACK, help="--serve: address to listen on")
    p.add_argument("--upstream", type=_host_port, help="--serve: HOST:PORT of PostgreSQL")
    return p


# -- CPU of the proxy process, split -------------------------------------------------------


def user_sys_seconds(pid: int) -> tuple[float, float]:
    """utime and stime of ``pid`` (all its threads) from ``/proc/<pid>/stat``, in seconds.

    Clock-tick resolution (10 ms at CLK_TCK 100): fine for 5 s runs, coarse for a COPY.
    """
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # comm may hold spaces and parentheses
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def oncpu_seconds(pid: int) -> float:
    """Time on CPU of all threads of ``pid`` from ``/proc/<pid>/task/*/schedstat`` (ns
    resolution, no user/sys split): a precise cross-check of utime + stime."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def io_syscalls(pid: int) -> tuple[int, int]:
    """Read-type and write-type syscalls of ``pid`` (all threads) from ``/proc/<pid>/io``."""
    fields = dict(line.split(": ", 1) for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


@dataclass(frozen=True)
class CpuDelta:
    user_s: float | None = None
    sys_s: float | None = None
    oncpu_s: float | None = None
    read_calls: int | None = None
    write_calls: int | None = None


class CpuWatch:
    """CPU a target's proxy spent between ``start`` and ``stop`` (all None for direct)."""

    def __init__(self, target: Target) -> None:
        self._pid = None if target.process is None else target.process.pid
        self._before: tuple[float, float, float, int, int] = (0.0, 0.0, 0.0, 0, 0)

    def _now(self, pid: int) -> tuple[float, float, float, int, int]:
        user, system = user_sys_seconds(pid)
        return user, system, oncpu_seconds(pid), *io_syscalls(pid)

    def start(self) -> None:
        if self._pid is not None:
            self._before = self._now(self._pid)

    def stop(self) -> CpuDelta:
        if self._pid is None:
            return CpuDelta()
        a, b = self._now(self._pid), self._before
        return CpuDelta(a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3], a[4] - b[4])


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchRun:
    round: int
    query_mode: str
    target: str
    tps: float
    latency_ms: float
    transactions: int
    failed: int
    user_s: float | None
    sys_s: float | None
    oncpu_s: float | None
    read_calls: int | None
    write_calls: int | None

    def _per_stmt(self, seconds: float | None) -> float | None:
        if seconds is None or not self.transactions:
            return None
        return seconds * 1e6 / self.transactions

    @property
    def cpu_us(self) -> float | None:
        if self.user_s is None or self.sys_s is None:
            return None
        return self._per_stmt(self.user_s + self.sys_s)

    @property
    def user_us(self) -> float | None:
        return self._per_stmt(self.user_s)

    @property
    def sys_us(self) -> float | None:
        return self._per_stmt(self.sys_s)

    @property
    def oncpu_us(self) -> float | None:
        return self._per_stmt(self.oncpu_s)

    @property
    def syscalls_per_stmt(self) -> float | None:
        """read-type + write-type syscalls of the proxy per transaction."""
        if self.read_calls is None or self.write_calls is None or not self.transactions:
            return None
        return (self.read_calls + self.write_calls) / self.transactions


@dataclass(frozen=True)
class CopyTiming:
    round: int
    target: str
    seconds: float
    user_s: float | None
    sys_s: float | None
    oncpu_s: float | None

    @property
    def cpu_s(self) -> float | None:
        return None if self.user_s is None or self.sys_s is None else self.user_s + self.sys_s


@dataclass(frozen=True)
class Check:
    target: str
    copy_rows: int
    copy_sha256: str
    copy_matches_direct: bool
    upload_ok: bool


# -- targets -------------------------------------------------------------------------------


def start_proxy(
    cluster: PgCluster, mode: str, base: Path, *, dbname: str, user: str, password: str
) -> Target:
    """One ``--serve MODE`` process in front of ``cluster``, waited for until a login works."""
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "benchmarks.protocol_modes",
        "--serve",
        mode,
        "--listen",
        str(port),
        "--upstream",
        f"{cluster.host}:{cluster.port}",
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    proc = ManagedProcess(mode, argv, base / f"{mode}.log", env=env, stop_signal=signal.SIGTERM)
    target = Target(mode, LOOPBACK, port, dbname, user, password, proc)
    proc.start()
    try:
        wait_ready(target)
    except BaseException:
        proc.stop()
        raise
    return target


def proxy_stats(target: Target) -> dict[str, Any] | None:
    """The counters a stopped proxy printed on its way out."""
    if target.process is None:
        return None
    with contextlib.suppress(OSError):
        for line in reversed(target.process.log_path.read_text(errors="replace").splitlines()):
            if line.startswith("STATS "):
                return cast(dict[str, Any], json.loads(line[len("STATS ") :]))
    return None


# -- correctness ---------------------------------------------------------------------------


def copy_digest(cluster: PgCluster, target: Target) -> tuple[int, str]:
    r"""Rows and SHA-256 of ``\copy (select * from pgbench_accounts order by aid) to stdout``
    as received by psql through ``target``."""
    argv = [
        str(cluster.bindir / "psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        r"\copy (select * from pgbench_accounts order by aid) to stdout",
    ]
    digest = hashlib.sha256()
    rows = 0
    with subprocess.Popen(
        argv, env=target.client_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        while chunk := proc.stdout.read(1 << 20):
            digest.update(chunk)
            rows += chunk.count(b"\n")
        err = proc.stderr.read().decode(errors="replace")
        code = proc.wait(timeout=600)
    if code != 0:
        raise RuntimeError(f"COPY check via {target.name} failed ({code}): {err}")
    return rows, digest.hexdigest()


def upload_ok(target: Target) -> bool:
    """Send an 8 MiB parameter through ``target`` (client->server flow control) and compare
    the server's md5 of it with ours."""
    import psycopg

    payload = secrets.token_hex(UPLOAD_BYTES // 2)
    with psycopg.connect(target.conninfo(connect_timeout=10)) as conn:
        row = conn.execute("SELECT md5(%s::text), length(%s::text)", (payload, payload)).fetchone()
    expected = hashlib.md5(payload.encode(), usedforsecurity=False).hexdigest()
    return row is not None and row[0] == expected and row[1] == len(payload)


def check_targets(cluster: PgCluster, targets: Sequence[Target], scale: int) -> list[Check]:
    checks: list[Check] = []
    reference: str | None = None
    for target in targets:
        rows, sha = copy_digest(cluster, target)
        if reference is None:
            reference = sha  # targets[0] is direct
        check = Check(target.name, rows, sha, sha == reference, upload_ok(target))
        _log(
            f"check {target.name:18} copy rows={rows} same bytes as direct="
            f"{check.copy_matches_direct} upload={check.upload_ok}"
        )
        checks.append(check)
    bad = [
        c.target
        for c in checks
        if c.copy_rows != scale * 100_000 or not c.copy_matches_direct or not c.upload_ok
    ]
    if bad:
        raise RuntimeError(f"correctness check failed for {', '.join(bad)}: {checks}")
    return checks


# -- the rounds ----------------------------------------------------------------------------


def bench_one(
    cluster: PgCluster, target: Target, query_mode: str, settings: Settings, round_no: int
) -> BenchRun:
    watch = CpuWatch(target)
    watch.start()
    out, _tree_cpu = run_pgbench(
        cluster, target, query_mode, settings.for_compare(), settings.duration
    )
    cpu = watch.stop()
    run = BenchRun(
        round_no,
        query_mode,
        target.name,
        out.tps,
        out.latency_ms,
        out.transactions,
        out.failed,
        cpu.user_s,
        cpu.sys_s,
        cpu.oncpu_s,
        cpu.read_calls,
        cpu.write_calls,
    )
    _log(
        f"round {round_no} {query_mode:8} {target.name:18} tps={out.tps:9.1f} "
        f"cpu/stmt={_fmt(run.cpu_us, '.2f')} µs (user {_fmt(run.user_us, '.2f')}, "
        f"sys {_fmt(run.sys_us, '.2f')}) syscalls/stmt={_fmt(run.syscalls_per_stmt, '.2f')} "
        f"failed={out.failed}"
    )
    return run


def copy_one(cluster: PgCluster, target: Target, round_no: int) -> CopyTiming:
    watch = CpuWatch(target)
    watch.start()
    timing = run_copy(cluster, target, round_no)
    cpu = watch.stop()
    copy = CopyTiming(round_no, target.name, timing.seconds, cpu.user_s, cpu.sys_s, cpu.oncpu_s)
    _log(
        f"round {round_no} copy     {target.name:18} {copy.seconds:.3f} s "
        f"proxy cpu={_fmt(copy.cpu_s, '.3f')} s (on-CPU {_fmt(copy.oncpu_s, '.3f')} s)"
    )
    return copy


def run_rounds(
    cluster: PgCluster, targets: Sequence[Target], settings: Settings
) -> tuple[list[BenchRun], list[CopyTiming]]:
    """Every round: both query modes through every target, then COPY through every target;
    the order rotates by round (and by query mode within a round)."""
    runs: list[BenchRun] = []
    copies: list[CopyTiming] = []
    for round_no in range(1, settings.rounds + 1):
        for mode_no, query_mode in enumerate(QUERY_MODES):
            for target in rotated(targets, round_no - 1 + mode_no):
                runs.append(bench_one(cluster, target, query_mode, settings, round_no))
        for target in rotated(targets, round_no - 1):
            copies.append(copy_one(cluster, target, round_no))
    return runs, copies


# -- report --------------------------------------------------------------------------------


def _med(values: Sequence[float | None]) -> float | None:
    return _median(list(values))


def _bench_table(runs: Sequence[BenchRun], names: Sequence[str]) -> list[str]:
    lines = [
        "| query mode | target | tps (median) | tps min-max | tps vs direct "
        "| proxy CPU µs/stmt | user µs | sys µs | CPU vs data_received "
        "| on-CPU µs/stmt (schedstat) | read+write syscalls/stmt | failed | runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for query_mode in QUERY_MODES:
        sel = {n: [r for r in runs if r.query_mode == query_mode and r.target == n] for n in names}
        direct_tps = _med([r.tps for r in sel.get("direct", [])])
        base_cpu = _med([r.cpu_us for r in sel.get("data_received", [])])
        for name in names:
            rs = sel[name]
            if not rs:
                continue
            tps = [r.tps for r in rs]
            cpu = _med([r.cpu_us for r in rs])
            lines.append(
                f"| {query_mode} | {name} | {statistics.median(tps):,.0f} "
                f"| {min(tps):,.0f} - {max(tps):,.0f} "
                f"| {_fmt(_ratio(statistics.median(tps), direct_tps), '.2f')} "
                f"| {_fmt(cpu, '.2f')} | {_fmt(_med([r.user_us for r in rs]), '.2f')} "
                f"| {_fmt(_med([r.sys_us for r in rs]), '.2f')} "
                f"| {_fmt(_ratio(cpu, base_cpu), '.3f')} "
                f"| {_fmt(_med([r.oncpu_us for r in rs]), '.2f')} "
                f"| {_fmt(_med([r.syscalls_per_stmt for r in rs]), '.2f')} "
                f"| {sum(r.failed for r in rs)} "
                f"| {len(rs)} |"
            )
    return lines


def _copy_table(copies: Sequence[CopyTiming], names: Sequence[str]) -> list[str]:
    direct = _med([c.seconds for c in copies if c.target == "direct"])
    lines = [
        "| target | wall s (median) | min-max | vs direct | proxy CPU s | user s | sys s "
        "| on-CPU s (schedstat) | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        cs = [c for c in copies if c.target == name]
        if not cs:
            continue
        secs = [c.seconds for c in cs]
        med = statistics.median(secs)
        lines.append(
            f"| {name} | {med:.3f} | {min(secs):.3f} - {max(secs):.3f} "
            f"| {_fmt(_ratio(med, direct), '.2f')} | {_fmt(_med([c.cpu_s for c in cs]), '.3f')} "
            f"| {_fmt(_med([c.user_s for c in cs]), '.3f')} "
            f"| {_fmt(_med([c.sys_s for c in cs]), '.3f')} "
            f"| {_fmt(_med([c.oncpu_s for c in cs]), '.3f')} | {len(cs)} |"
        )
    return lines


def _checks_table(checks: Sequence[Check]) -> list[str]:
    lines = [
        "| target | COPY rows received | COPY bytes identical to direct | 8 MiB upload intact |",
        "|---|---:|---|---|",
    ]
    for c in checks:
        lines.append(
            f"| {c.target} | {c.copy_rows:,} | {'yes' if c.copy_matches_direct else 'NO'} "
            f"| {'yes' if c.upload_ok else 'NO'} |"
        )
    return lines


def _stats_table(stats: dict[str, dict[str, Any] | None]) -> list[str]:
    lines = [
        "| mode | connections | reads client→server | avg bytes/read | reads server→client "
        "| avg bytes/read | fresh buffers (zero-copy) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, st in stats.items():
        if st is None:
            lines.append(f"| {mode} | — | — | — | — | — | — |")
            continue
        c2s, s2c = st["c2s"], st["s2c"]
        fresh = c2s["fresh_buffers"] + s2c["fresh_buffers"]
        reads = c2s["reads"] + s2c["reads"]
        lines.append(
            f"| {mode} | {st['connections']} | {c2s['reads']:,} "
            f"| {c2s['bytes'] / max(c2s['reads'], 1):,.0f} | {s2c['reads']:,} "
            f"| {s2c['bytes'] / max(s2c['reads'], 1):,.0f} "
            f"| {fresh:,} ({fresh / max(reads, 1):.2%} of reads) |"
        )
    return lines


def render_markdown(
    settings: Settings,
    machine: dict[str, str],
    runs: Sequence[BenchRun],
    copies: Sequence[CopyTiming],
    checks: Sequence[Check],
    stats: dict[str, dict[str, Any] | None],
) -> str:
    s = settings
    names = ["direct", *MODES]
    raw = [
        "| round | what | target | tps | transactions | failed | proxy user s | proxy sys s "
        "| on-CPU s | µs/stmt or wall s |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    raw += [
        f"| {r.round} | pgbench {r.query_mode} | {r.target} | {r.tps:,.0f} | {r.transactions} "
        f"| {r.failed} | {_fmt(r.user_s, '.2f')} | {_fmt(r.sys_s, '.2f')} "
        f"| {_fmt(r.oncpu_s, '.3f')} | {_fmt(r.cpu_us, '.2f')} |"
        for r in runs
    ]
    raw += [
        f"| {c.round} | copy out | {c.target} | | | | {_fmt(c.user_s, '.2f')} "
        f"| {_fmt(c.sys_s, '.2f')} | {_fmt(c.oncpu_s, '.3f')} | {c.seconds:.3f} |"
        for c in copies
    ]
    lines = [
        "# Receive path of a uvloop proxy: `Protocol.data_received` vs `BufferedProtocol`",
        "",
        f"Written by `benchmarks/protocol_modes.py` on {machine['date']}. Medians of {s.rounds} "
        "interleaved round(s); the target order rotates from run to run. The machine is small "
        "and shared: read the **ratios** between modes, not the absolute numbers.",
        "",
        "## Command",
        "",
        "```",
        s.command,
        "```",
        "",
        f"Each run: `pgbench -S -M <simple|prepared> -c {s.clients} -j {s.jobs} -T {s.duration} "
        f"-n` against `pgbench -i -s {s.scale}` (warm-up {s.warmup} s per target and mode "
        "first). COPY: `psql -c '\\copy pgbench_accounts to /dev/null'` (wall time, psql start "
        "included). Every proxy is the same ~100-line transparent byte pipe in its own "
        "process (uvloop, TCP_NODELAY, flow control both ways, 256,000-byte receive buffers, "
        "no protocol work); only the receive path differs:",
        "",
        "- `data_received`: `asyncio.Protocol`, forwards the received `bytes` object as is.",
        "- `buffered_copy`: `asyncio.BufferedProtocol`, one reusable `bytearray` per side, "
        "forwards `bytes(view[:n])`.",
        "- `buffered_zero_copy`: `asyncio.BufferedProtocol`, one reusable `bytearray` per "
        "side, forwards the memoryview `view[:n]`; switches to a fresh buffer whenever the "
        "peer transport still has unsent data after the write.",
        "",
        "Proxy CPU per statement = utime + stime of the proxy process (`/proc/<pid>/stat`, "
        f"all threads) during the run ÷ transactions pgbench reports; it includes the "
        f"{s.clients} logins of each run. user and sys are medians of their own, so they "
        "need not add up to the median total exactly. utime/stime have clock-tick (10 ms) "
        "resolution; the on-CPU column (`/proc/<pid>/task/*/schedstat`, ns) is a precise "
        "cross-check of their sum and the number to use for the short COPY runs. Syscalls "
        "per statement: `syscr + syscw` from `/proc/<pid>/io` (recv/send on the sockets; "
        "epoll_wait is not counted).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items()),
        "",
        "## Correctness (before the measured rounds)",
        "",
        *_checks_table(checks),
        "",
        "## pgbench -S",
        "",
        *_bench_table(runs, names),
        "",
        f"## COPY OUT (1 table, {s.scale * 100_000:,} rows)",
        "",
        *_copy_table(copies, names),
        "",
        "## What the proxies saw (whole life: checks, warm-up, rounds)",
        "",
        *_stats_table(stats),
        "",
        "## Raw runs",
        "",
        *raw,
        "",
    ]
    return "\n".join(lines)


# -- orchestration -------------------------------------------------------------------------


def machine_info(cluster: PgCluster) -> dict[str, str]:
    from importlib.metadata import version

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": _first_line(["nproc"]),
        "cpu": _cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "postgresql": _first_line([str(cluster.bindir / "postgres"), "--version"]),
        "pgbench": _first_line([str(cluster.bindir / "pgbench"), "--version"]),
        "python": platform.python_version(),
        "uvloop": version("uvloop"),
        "pgwarden commit": _git_commit(),
    }


def run(settings: Settings) -> int:
    load_start = _loadavg()
    role_password = secrets.token_urlsafe(18)
    with workdir(settings.keep) as base, contextlib.ExitStack() as stack:
        cluster = PgCluster(base / "pg")
        stack.callback(cluster.stop)
        cluster.start()
        prepare_cluster(cluster, settings.for_compare(), role_password)
        targets = [direct_target(cluster, DBNAME, ROLE, role_password)]
        for mode in MODES:
            target = start_proxy(
                cluster, mode, base / "proxies", dbname=DBNAME, user=ROLE, password=role_password
            )
            assert target.process is not None
            stack.callback(target.process.stop)
            _log(f"{mode} proxy on port {target.port} (pid {target.process.pid})")
            targets.append(target)
        machine = machine_info(cluster)
        machine["load average (1/5/15 min) at start"] = load_start
        checks = check_targets(cluster, targets, settings.scale)
        _log("warm-up")
        warm_up(cluster, targets, settings.for_compare())
        runs, copies = run_rounds(cluster, targets, settings)
        machine["load average (1/5/15 min) at end"] = _loadavg()
        stats: dict[str, dict[str, Any] | None] = {}
        for target in targets[1:]:
            assert target.process is not None
            target.process.stop()
            stats[target.name] = proxy_stats(target)
        report = render_markdown(settings, machine, runs, copies, checks, stats)
        print(report)
        if settings.out is not None:
            settings.out.write_text(report)
            _log(f"wrote {settings.out}")
        failed = sum(r.failed for r in runs)
        if failed:
            _log(f"{failed} failed transactions: the pipe is broken somewhere")
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(args)
    if ns.serve is not None:
        if ns.listen is None or ns.upstream is None:
            parser.error("--serve needs --listen and --upstream")
        return serve_main(ns.serve, ns.listen_host, ns.listen, ns.upstream)
    if min(ns.rounds, ns.duration, ns.clients, ns.jobs, ns.scale, ns.warmup) < 1:
        parser.error("--rounds, --duration, --clients, --jobs, --scale, --warmup must be >= 1")
    settings = Settings(
        rounds=ns.rounds,
        duration=ns.duration,
        clients=ns.clients,
        jobs=ns.jobs,
        scale=ns.scale,
        warmup=ns.warmup,
        out=None if str(ns.out) == "-" else ns.out,
        keep=ns.keep,
        argv=tuple(args),
    )
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    try:
        return run(settings)
    except KeyboardInterrupt:
        _log("interrupted; everything started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
