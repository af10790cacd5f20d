"""Profile a pgwarden worker under one benchmark workload with py-spy.

    python -m benchmarks.pyspy --workload simple [--clients 8] [--seconds 10] [--native]
    python -m benchmarks.pyspy --workload connect|extended|prepared|copy_out|copy_in|select

It starts a throwaway cluster and pgwarden (1 worker) like :mod:`benchmarks.compare`,
attaches ``py-spy record`` to the worker (``--nonblocking``, raw collapsed stacks), runs
the workload for the same time, and prints the functions with the most samples: by self
time (the leaf frame of a stack) and inclusive. The collapsed stacks are kept in
``--out`` (default: a ``pyspy-<workload>`` directory under the system temp dir), ready
for ``flamegraph.pl`` or speedscope.

Where a compare target is missed, this is the first look at where the worker's time goes;
``--native`` adds the C frames (uvloop, libuv, the ``_speedups`` scanner) when py-spy can
unwind them.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from benchmarks import measure
from benchmarks.compare import (
    COPY_DST,
    COPY_SRC,
    DBNAME,
    ROLE,
    Settings,
    _log,
    prepare_cluster,
    prepare_copy_data,
    workdir,
)
from benchmarks.proctools import process_tree
from benchmarks.targets import Target, start_pgwarden
from gateway.devcluster import PgCluster

WORKLOADS = ("simple", "extended", "prepared", "connect", "copy_out", "copy_in", "select")


def summarize(raw: Path, top: int) -> list[str]:
    """Markdown tables of the ``top`` functions by self and by inclusive samples."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            incl_counts[frame] += count
    lines = [f"{total} samples in {raw}", ""]
    for title, counts in (("self", self_counts), ("inclusive", incl_counts)):
        lines += [f"| {title} % | frame |", "|---:|---|"]
        for frame, count in counts.most_common(top):
            lines.append(f"| {100.0 * count / max(total, 1):.1f} | `{frame}` |")
        lines.append("")
    return lines


def _workers(supervisor: int) -> list[int]:
    return [pid for pid in process_tree(supervisor) if pid != supervisor]


def _run_workload(
    cluster: PgCluster, target: Target, workload: str, clients: int, seconds: int, data: Path
) -> None:
    env = target.client_env()
    if workload in ("simple", "extended", "prepared", "connect"):
        mode = "simple" if workload == "connect" else workload
        extra = ("-C",) if workload == "connect" else ()
        argv = measure.pgbench_argv(cluster, mode, clients, seconds, *extra)
        subprocess.run(argv, env=env, capture_output=True, check=True, timeout=seconds * 4 + 60)
        return
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if workload == "copy_out":
            measure.psql_timed(cluster, target, f"\\copy {COPY_SRC} to /dev/null")
        elif workload == "copy_in":
            cluster.sql(f"TRUNCATE {COPY_DST}", DBNAME)
            measure.psql_timed(cluster, target, f"\\copy {COPY_DST} from '{data}'")
        else:
            measure.stream_select(target, rows=1_000_000, round_no=0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.pyspy", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--workload", choices=WORKLOADS, required=True)
    p.add_argument("--clients", type=int, default=8, help="pgbench -c (8)")
    p.add_argument("--seconds", type=int, default=10, help="profile duration (10)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second (250)")
    p.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    p.add_argument("--top", type=int, default=25, help="functions listed (25)")
    p.add_argument("--out", type=Path, help="directory for the collapsed stacks")
    ns = p.parse_args(argv)
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        p.error("py-spy is not installed (pip install py-spy)")
    out_dir = ns.out or Path(tempfile.gettempdir()) / f"pyspy-{ns.workload}"
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"pgwarden-{ns.workload}.txt"
    copy_rows = 1_000_000
    settings = Settings(
        rounds=1, duration=ns.seconds, clients=ns.clients, jobs=measure.jobs_for(ns.clients),
        scale=10, modes=("simple",), targets=("pgwarden",), workers=1, warmup=1, copy=True,
        out=None, json_path=None, keep=False, quick=False, copy_rows=copy_rows,
        select_rows=copy_rows,
    )  # fmt: skip
    password = secrets.token_urlsafe(18)
    with workdir(False) as base, contextlib.ExitStack() as stack:
        cluster = PgCluster(base / "pg", extra_conf={"shared_buffers": "'512MB'"})
        stack.callback(cluster.stop)
        cluster.start()
        prepare_cluster(cluster, settings, password)
        data = prepare_copy_data(cluster, base, settings)
        target = start_pgwarden(
            cluster, base / "pgwarden", dbname=DBNAME, user=ROLE, upstream_password=password,
            client_secret=secrets.token_urlsafe(24), workers=1,
        )  # fmt: skip
        assert target.process is not None
        stack.callback(target.process.stop)
        workers = _workers(target.process.pid)
        if not workers:
            raise SystemExit("no pgwarden worker process found")
        _log(f"pgwarden worker pid {workers[0]}; warm-up")
        _run_workload(cluster, target, ns.workload, ns.clients, 2, data.path or base)
        cmd = [
            pyspy, "record", "--pid", str(workers[0]), "--rate", str(ns.rate),
            "--duration", str(ns.seconds), "--format", "raw", "--nonblocking",
            "--output", str(raw),
        ]  # fmt: skip
        if ns.native:
            cmd.append("--native")
        _log(f"profiling {ns.workload} for {ns.seconds} s: {' '.join(cmd)}")
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        worker = threading.Thread(
            target=_run_workload,
            args=(cluster, target, ns.workload, ns.clients, ns.seconds, data.path or base),
        )
        worker.start()
        worker.join()
        _stdout, err = spy.communicate(timeout=ns.seconds + 60)
        if spy.returncode != 0 or not raw.exists():
            sys.stderr.write(err.decode(errors="replace"))
            return 1
    print("\n".join(summarize(raw, ns.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
