"""What pgwarden's controls cost on the data path: policy and audit, against PgBouncer.

    python -m benchmarks.features [--rounds 3] [--duration 5] [--kafka] [--out FILE]

One PostgreSQL cluster (pgbench scale 10), PgBouncer (session mode) and four pgwarden
instances, 1 worker each, identical but for their configuration:

- ``pgwarden-open``: ``[policy] enabled = false`` — pure pass-through (issue 2's target);
- ``pgwarden``: the baseline policy pack, no audit (issue 5's target);
- ``pgwarden-audit``: baseline + audit in ``async`` mode (shipped to a real Kafka broker
  with ``--kafka``, else written to the spool only) — issue 6: CPU/stmt ≤ 1.1x the same
  run without audit (= ``pgwarden``);
- ``pgwarden-strict``: baseline + audit in ``strict`` mode (measured and documented).

``pgbench -S -c 8`` in simple and prepared mode, interleaved in rounds with the target
order rotating, so all targets see the same machine conditions, after a 2 s warm-up run
of each target in each mode (discarded). CPU is the proxy's own
(process tree, /proc), per statement; the ratios are taken within each round and the
median reported. The machine is shared and noisy: compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import statistics
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmarks import measure
from benchmarks.compare import workdir
from benchmarks.targets import Target, start_pgbouncer, start_pgwarden
from gateway.audit.keys import generate_key
from gateway.devcluster import PgCluster

DBNAME = ROLE = "bench"
MODES = ("simple", "prepared")
CLIENTS = 8


def audit_toml(workdir: Path, mode: str, kafka: str | None) -> str:
    key = workdir / f"audit-{mode}.key"
    generate_key(key)
    lines = [
        "[audit]", f'mode = "{mode}"', f'spool_dir = "{workdir / f"spool-{mode}"}"',
        f'signing_key_file = "{key}"',
    ]
    if kafka:
        lines += ["[audit.kafka]", f'bootstrap_servers = ["{kafka}"]',
                  f'topic = "bench-{mode}"']
    return "\n".join(lines) + "\n"


def prepare_bench_database(cluster: PgCluster, scale: int) -> str:
    """The pgbench database at ``scale`` and the read-only role the load logs in as;
    returns that role's password."""
    password = secrets.token_urlsafe(16)
    cluster.create_database(DBNAME)
    cluster.pgbench_init(DBNAME, scale)
    cluster.create_role(ROLE, password)
    cluster.sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE}", DBNAME)
    return password


def warm_up(cluster: PgCluster, targets: Sequence[Target], modes: Sequence[str]) -> None:
    """A 2 s pgbench run of every target in every mode, discarded (as benchmarks.compare
    does): pooled upstream sessions, prepared statements, remembered query shapes, the
    Kafka producer's first connection and metadata are first-run costs, not the steady
    state measured."""
    for t in targets:
        for mode in modes:
            measure.pgbench_select(cluster, t, mode=mode, clients=CLIENTS, duration=2,
                                   sampling_rate=0.01, round_no=0)


@contextlib.contextmanager
def maybe_kafka(use: bool, workdir: Path) -> Iterator[str | None]:
    if not use:
        yield None
        return
    from gateway.devkafka import KafkaBroker

    broker = KafkaBroker(workdir / "kafka")
    broker.start()
    try:
        for mode in ("async", "strict"):
            broker.create_topic(f"bench-{mode}")
        yield broker.bootstrap
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.features", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="seconds per pgbench run")
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--kafka", action="store_true", help="ship the audit to a real broker")
    p.add_argument("--out", default=None, help="write the Markdown report here")
    ns = p.parse_args(argv)
    args = argv if argv is not None else sys.argv[1:]
    command = "python -m benchmarks.features " + " ".join(args)

    with workdir(keep=False, prefix="pgwarden-features-") as base:
        cluster = PgCluster(base / "pg")
        cluster.start()
        stack = contextlib.ExitStack()
        try:
            password = prepare_bench_database(cluster, ns.scale)
            kafka = stack.enter_context(maybe_kafka(ns.kafka, base))
            targets: list[Target] = []
            bouncer = start_pgbouncer(cluster, base / "pgbouncer", dbname=DBNAME, user=ROLE,
                                      password=password, clients=CLIENTS + 4)
            targets.append(bouncer)
            variants = {
                "pgwarden-open": "[policy]\nenabled = false\n",
                "pgwarden": "",
                "pgwarden-audit": audit_toml(base, "async", kafka),
                "pgwarden-strict": audit_toml(base, "strict", kafka),
            }
            for name, extra in variants.items():
                targets.append(start_pgwarden(
                    cluster, base / name, dbname=DBNAME, user=ROLE, upstream_password=password,
                    client_secret=secrets.token_urlsafe(16), workers=1, name=name,
                    extra_toml=extra,
                ))
            for t in targets:
                assert t.process is not None
                stack.callback(t.process.stop)
            warm_up(cluster, targets, MODES)
            results: dict[tuple[str, str], list[dict[str, float]]] = {}
            for round_no in range(1, ns.rounds + 1):
                for m, mode in enumerate(MODES):
                    shift = round_no + m
                    for t in targets[shift % len(targets):] + targets[:shift % len(targets)]:
                        sample = measure.pgbench_select(
                            cluster, t, mode=mode, clients=CLIENTS, duration=ns.duration,
                            sampling_rate=0.01, round_no=round_no,
                        )
                        results.setdefault((mode, t.name), []).append(sample.metrics)
                        print(f"round {round_no} {mode:8} {t.name:16} "
                              f"tps={sample.metrics['tps']:9.0f} "
                              f"cpu_us/stmt={sample.metrics.get('cpu_us_per_stmt', 0):6.2f}",
                              file=sys.stderr, flush=True)
        finally:
            stack.close()
            cluster.stop()
    report = render(results, ns, command, [t.name for t in targets])
    print(report)
    if ns.out:
        Path(ns.out).write_text(report)
    return 0


def _ratios(results: dict[tuple[str, str], list[dict[str, float]]], mode: str, num: str,
            den: str, metric: str) -> list[float]:
    a, b = results.get((mode, num), []), results.get((mode, den), [])
    return [x[metric] / y[metric] for x, y in zip(a, b, strict=False)
            if metric in x and metric in y and y[metric]]


def render(results: dict[tuple[str, str], list[dict[str, float]]], ns: argparse.Namespace,
           command: str, names: list[str]) -> str:
    out = [f"Command: `{command}` — {ns.rounds} rounds x {ns.duration} s, pgbench -S "
           f"-c {CLIENTS}, scale {ns.scale}, audit to "
           + ("a real Kafka broker" if ns.kafka else "the spool only") + ".", "",
           "| mode | target | tps (median) | proxy CPU µs/stmt (median) |", "|---|---|---:|---:|"]
    for mode in MODES:
        for name in names:
            rows = results.get((mode, name), [])
            if not rows:
                continue
            tps = statistics.median(r["tps"] for r in rows)
            cpu = [r["cpu_us_per_stmt"] for r in rows if "cpu_us_per_stmt" in r]
            out.append(f"| {mode} | {name} | {tps:,.0f} | "
                       f"{statistics.median(cpu):.2f} |" if cpu else f"| {mode} | {name} | "
                       f"{tps:,.0f} | n/a |")
    checks = [
        ("pass-through (#2): CPU/stmt ≤ 1.2x PgBouncer", "pgwarden-open", "pgbouncer",
         "cpu_us_per_stmt", 1.2, False),
        ("pass-through (#2): tps ≥ 0.95x PgBouncer", "pgwarden-open", "pgbouncer", "tps",
         0.95, True),
        ("baseline policy (#5): CPU/stmt ≤ 1.3x PgBouncer", "pgwarden", "pgbouncer",
         "cpu_us_per_stmt", 1.3, False),
        ("baseline policy (#5): tps ≥ 0.9x PgBouncer", "pgwarden", "pgbouncer", "tps", 0.9,
         True),
        ("audit async (#6): CPU/stmt ≤ 1.1x audit off", "pgwarden-audit", "pgwarden",
         "cpu_us_per_stmt", 1.1, False),
        ("(measured) audit strict: CPU/stmt vs audit off", "pgwarden-strict", "pgwarden",
         "cpu_us_per_stmt", None, False),
        ("(measured) audit strict: tps vs audit off", "pgwarden-strict", "pgwarden", "tps",
         None, True),
    ]
    out += ["", "Ratios, per round then the median:", "",
            "| target | mode | ratios per round | median | verdict |", "|---|---|---|---:|---|"]
    for label, num, den, metric, threshold, higher in checks:
        for mode in MODES:
            rs = _ratios(results, mode, num, den, metric)
            if not rs:
                continue
            med = statistics.median(rs)
            verdict = "measured" if threshold is None else (
                "PASS" if (med >= threshold if higher else med <= threshold) else "MISS")
            out.append(f"| {label} | {mode} | {', '.join(f'{r:.2f}' for r in rs)} | "
                       f"{med:.2f} | {verdict} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
