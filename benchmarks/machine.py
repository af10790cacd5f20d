"""What the benchmarks ran on: cores, CPU, kernel, versions, commit, load average."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from benchmarks.targets import pgbouncer_binary
from gateway.devcluster import PgCluster


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


def loadavg_1min() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _libpq() -> str:
    try:
        import psycopg
    except ImportError:
        return "unknown"
    v = psycopg.pq.version()
    return f"{v // 10000}.{v % 10000} ({psycopg.pq.__impl__} psycopg {psycopg.__version__})"


def _memory_total() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def machine_info(cluster: PgCluster) -> dict[str, str]:
    """The table at the top of RESULTS.md (load average at end is added by the caller)."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": _cpu_model(),
        "memory": _memory_total(),
        "kernel": f"{platform.system()} {platform.release()}",
        "postgresql": _first_line([str(cluster.bindir / "postgres"), "--version"]),
        "pgbench": _first_line([str(cluster.bindir / "pgbench"), "--version"]),
        "pgbouncer": _first_line([pgbouncer_binary(), "--version"]),
        "python": platform.python_version(),
        "uvloop": _dist("uvloop"),
        "libpq (psycopg)": _libpq(),
        "asyncpg": _dist("asyncpg"),
        "pgwarden commit": _git_commit(),
        "load average at start": _loadavg(),
    }
