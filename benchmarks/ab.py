"""A/B of pgwarden variants on one load: which change costs or saves CPU, and where.

    python -m benchmarks.ab --rounds 5 policy=policy audit=audit old=audit@/path/to/tree
    python -m benchmarks.ab audit=audit big=audit --extra 'big=flush_interval = 1.0'

Each variant is ``NAME=KIND`` or ``NAME=KIND@TREE``: KIND is ``open`` (policy off),
``policy`` (the default: baseline policy, no audit), ``audit`` (baseline + audit in
``async`` mode to a real Kafka broker) or ``spool`` (audit to the spool only); TREE is a
pgwarden source tree (a checkout with its C extensions built in place:
``python3 setup.py build_ext --inplace``) whose ``gateway`` package runs instead of this
one, to compare revisions. ``--extra NAME=TOML`` adds lines to that variant's ``[audit]``
section.

Every variant runs as its own one-worker pgwarden in front of one throwaway cluster; the
rounds run ``pgbench -S -c 8`` through each in rotating order (both protocols unless
``--modes``), so that the machine's drift falls on all alike. Besides throughput and the
worker's CPU per statement (as :mod:`benchmarks.features` measures it), each run reports
the worker's user and system time and the CPU of its other threads (the audit spool's
writer, the Kafka shipper's executor) per statement, read from ``/proc``. The first
variant is the reference of the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import measure
from benchmarks.compare import workdir
from benchmarks.features import (
    CLIENTS,
    DBNAME,
    ROLE,
    audit_toml,
    prepare_bench_database,
    warm_up,
)
from benchmarks.targets import Target, start_pgwarden
from gateway.devcluster import PgCluster

TICK = os.sysconf("SC_CLK_TCK")
KINDS = ("open", "policy", "audit", "spool")
COLUMNS = ("tps", "cpu", "user", "sys", "threads")


def _thread_cpu(pid: int) -> dict[int, tuple[int, int]]:
    """(utime, stime) in clock ticks of each thread of ``pid``."""
    out: dict[int, tuple[int, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(tid)] = (int(fields[11]), int(fields[12]))
    return out


def _worker_pid(target: Target) -> int:
    assert target.process is not None
    children = subprocess.run(
        ["pgrep", "-P", str(target.process.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    if not children:
        raise RuntimeError(f"{target.name}: no worker process found")
    return int(children[0])


def _parse(specs: list[str]) -> list[tuple[str, str, Path | None]]:
    variants = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        kind, _, tree = rest.partition("@")
        if not sep or not name or kind not in KINDS:
            raise SystemExit(f"bad variant {spec!r}: NAME=KIND[@TREE], KIND one of {KINDS}")
        variants.append((name, kind, Path(tree).resolve() if tree else None))
    if len({name for name, _, _ in variants}) != len(variants):
        raise SystemExit("variant names must differ")
    return variants


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.ab", description=__doc__.split("\n")[0])
    p.add_argument("variants", nargs="+", help="NAME=KIND[@TREE]")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=5, help="seconds per pgbench run")
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--modes", default="prepared,simple")
    p.add_argument("--extra", action="append", default=[], help="NAME=TOML for [audit]")
    p.add_argument("--perf", type=Path, default=None,
                   help="record each run's worker with `perf record -g` into this directory "
                   "(NAME-MODE-ROUND.data); sampling costs CPU, so not for the figures")
    p.add_argument("--perf-callgraph", default="fp",
                   help="perf's --call-graph: fp (frame pointers; libpython has none, so "
                   "stacks stop there) or dwarf (whole stacks, far larger files)")
    p.add_argument("--pyspy", type=Path, default=None,
                   help="record each run's worker with `py-spy record` (raw collapsed "
                   "stacks, NAME-MODE-ROUND.txt) into this directory")
    p.add_argument("--pyspy-rate", type=int, default=250, help="py-spy samples per second")
    ns = p.parse_args(argv)
    variants = _parse(ns.variants)
    extras = dict(e.split("=", 1) for e in ns.extra)
    modes = ns.modes.split(",")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}

    with workdir(keep=False, prefix="pgwarden-ab-") as base:
        cluster = PgCluster(base / "pg")
        cluster.start()
        stack = contextlib.ExitStack()
        try:
            password = prepare_bench_database(cluster, ns.scale)
            kafka = None
            if any(kind == "audit" for _, kind, _ in variants):
                from gateway.devkafka import KafkaBroker

                broker = KafkaBroker(base / "kafka")
                broker.start()
                stack.callback(broker.stop)
                kafka = broker.bootstrap
            targets: list[Target] = []
            for name, kind, tree in variants:
                toml = {"open": "[policy]\nenabled = false\n", "policy": ""}.get(kind)
                if toml is None:
                    vdir = base / f"audit-{name}"
                    vdir.mkdir()
                    toml = audit_toml(vdir, "async", kafka if kind == "audit" else None)
                    if kind == "audit":
                        broker.create_topic(f"bench-{name}")
                        toml = toml.replace('topic = "bench-async"', f'topic = "bench-{name}"')
                    extra = extras.get(name, "").replace("\\n", "\n")
                    toml = toml.replace("[audit.kafka]", extra + "\n[audit.kafka]") if (
                        "[audit.kafka]" in toml) else toml + extra + "\n"
                target = start_pgwarden(
                    cluster, base / name, dbname=DBNAME, user=ROLE, upstream_password=password,
                    client_secret=secrets.token_urlsafe(16), workers=1, name=name,
                    extra_toml=toml, source=tree,
                )
                assert target.process is not None
                stack.callback(target.process.stop)
                targets.append(target)
            warm_up(cluster, targets, modes)
            for round_no in range(1, ns.rounds + 1):
                for m, mode in enumerate(modes):
                    shift = (round_no + m) % len(targets)
                    for t in targets[shift:] + targets[:shift]:
                        row = _run(cluster, t, mode, ns.duration, round_no,
                                   _recorder(ns, t, mode, round_no))
                        results.setdefault((mode, t.name), []).append(row)
                        print(f"round {round_no} {mode:8} {t.name:12} " + " ".join(
                            f"{k}={row[k]:.2f}" for k in COLUMNS), file=sys.stderr, flush=True)
        finally:
            stack.close()
            cluster.stop()
    print(render(results, modes, [name for name, _, _ in variants], ns))
    return 0


def _recorder(ns: argparse.Namespace, t: Target, mode: str, round_no: int
              ) -> list[str] | None:
    """The profiler command line (``-p PID`` to be added) of one run, if one was asked."""
    name = f"{t.name}-{mode}-{round_no}"
    if ns.perf is not None:
        ns.perf.mkdir(parents=True, exist_ok=True)
        return ["perf", "record", "-q", "-F", "1999", "--call-graph", ns.perf_callgraph,
                "-o", str(ns.perf / f"{name}.data")]
    if ns.pyspy is not None:
        ns.pyspy.mkdir(parents=True, exist_ok=True)
        return ["py-spy", "record", "--nonblocking", "-r", str(ns.pyspy_rate), "-f", "raw",
                "-o", str(ns.pyspy / f"{name}.txt")]
    return None


def _run(cluster: PgCluster, t: Target, mode: str, duration: int, round_no: int,
         profiler: list[str] | None = None) -> dict[str, float]:
    pid = _worker_pid(t)
    time.sleep(0.5)  # the previous run's tail
    recorder = None
    if profiler is not None:
        recorder = subprocess.Popen([*profiler, "-p", str(pid)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
    before = _thread_cpu(pid)
    sample = measure.pgbench_select(cluster, t, mode=mode, clients=CLIENTS,
                                    duration=duration, sampling_rate=0.01, round_no=round_no)
    after = _thread_cpu(pid)
    if recorder is not None:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
    n = sample.metrics["transactions"]
    main = [a - b for a, b in zip(after.get(pid, (0, 0)), before.get(pid, (0, 0)),
                                  strict=True)]
    others = sum(sum(v) - sum(before.get(tid, (0, 0))) for tid, v in after.items()
                 if tid != pid)
    per = 1e6 / TICK / n
    return {"tps": sample.metrics["tps"], "cpu": sample.metrics["cpu_us_per_stmt"],
            "user": main[0] * per, "sys": main[1] * per, "threads": others * per}


def render(results: dict[tuple[str, str], list[dict[str, float]]], modes: list[str],
           names: list[str], ns: argparse.Namespace) -> str:
    out = [f"`python -m benchmarks.ab {' '.join(sys.argv[1:])}` — {ns.rounds} rounds x "
           f"{ns.duration} s, pgbench -S -c {CLIENTS}, scale {ns.scale}; medians, CPU in "
           "µs per statement (user and sys: the worker's main thread; threads: its others).",
           "", "| mode | variant | tps | cpu | user | sys | threads |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for mode in modes:
        for name in names:
            rows = results.get((mode, name), [])
            if rows:
                out.append(f"| {mode} | {name} | " + " | ".join(
                    f"{statistics.median(r[k] for r in rows):,.2f}" for k in COLUMNS) + " |")
    out += ["", f"CPU per statement against {names[0]}, per round then the median:", ""]
    for mode in modes:
        for name in names[1:]:
            ratios = [a["cpu"] / b["cpu"] for a, b in zip(
                results.get((mode, name), []), results.get((mode, names[0]), []), strict=False)]
            if ratios:
                out.append(f"- {mode} {name}: " + ", ".join(f"{r:.3f}" for r in ratios)
                           + f" (median {statistics.median(ratios):.3f})")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
