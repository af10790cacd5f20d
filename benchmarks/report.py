"""Medians, ratios, issue 3's targets and the Markdown / JSON report of a compare run."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.measure import Sample

#: The metric each kind of sample is compared on, and whether higher is better.
PRIMARY: dict[str, tuple[str, bool]] = {
    "pgbench": ("tps", True),
    "connect": ("conn_per_s", True),
    "copy_out": ("mb_per_s", True),
    "copy_accounts": ("mb_per_s", True),
    "copy_in": ("mb_per_s", True),
    "select": ("rows_per_s", True),
    "idle": ("rss_kib_per_conn", False),
    "scaling": ("tps", True),
}
#: The proxy CPU metric of each kind (what the CPU ratio pgwarden/PgBouncer is taken of).
CPU_METRIC: dict[str, str] = {
    "pgbench": "cpu_us_per_stmt",
    "connect": "cpu_us_per_conn",
    "copy_out": "cpu_s_per_gb",
    "copy_accounts": "cpu_s_per_gb",
    "copy_in": "cpu_s_per_gb",
    "select": "cpu_ns_per_row",
    "scaling": "cpu_us_per_stmt",
}
PGBOUNCER = "pgbouncer"
#: PgBouncer with ``auth_type = plain``: measured for connection setup only, where the
#: client's authentication work must match pgwarden's (a cleartext password, no KDF).
PGBOUNCER_PLAIN = "pgbouncer-plain"
TARGET_ORDER = ("direct", PGBOUNCER, PGBOUNCER_PLAIN, "pgwarden")
#: (numerator, denominator) of the ratios reported when both were measured.
PAIRS = (
    ("pgwarden", PGBOUNCER),
    ("pgwarden", PGBOUNCER_PLAIN),
    ("pgwarden", "direct"),
    (PGBOUNCER, "direct"),
    (PGBOUNCER_PLAIN, "direct"),
)
IDLE_TARGET_KIB = 64.0


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# -- summaries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Medians over the rounds of one (kind, variant, target)."""

    kind: str
    variant: str
    target: str
    runs: int
    metrics: dict[str, float]
    low: float | None  # min and max of the primary metric over the rounds
    high: float | None

    def get(self, name: str) -> float | None:
        return self.metrics.get(name)

    @property
    def primary(self) -> float | None:
        return self.metrics.get(PRIMARY[self.kind][0])


def summarize(samples: Sequence[Sample], target_order: Sequence[str]) -> list[Summary]:
    groups: dict[tuple[str, str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.kind, s.variant, s.target), []).append(s)
    order = {name: i for i, name in enumerate(target_order)}
    variants: list[tuple[str, str]] = []
    for s in samples:
        if (s.kind, s.variant) not in variants:
            variants.append((s.kind, s.variant))
    out: list[Summary] = []
    for kind, variant in variants:
        keys = sorted(
            (k for k in groups if k[:2] == (kind, variant)),
            key=lambda k: (order.get(k[2], len(order)), k[2]),
        )
        for key in keys:
            sel = groups[key]
            names = {m for s in sel for m in s.metrics}
            metrics: dict[str, float] = {}
            for m in sorted(names):
                v = median([s.get(m) for s in sel])
                if v is not None:
                    metrics[m] = v
            main = [v for s in sel if (v := s.get(PRIMARY[kind][0])) is not None]
            out.append(
                Summary(
                    kind, variant, key[2], len(sel), metrics,
                    min(main) if main else None, max(main) if main else None,
                )
            )  # fmt: skip
    return out


Index = Mapping[tuple[str, str, str], Summary]


def index(summaries: Sequence[Summary]) -> dict[tuple[str, str, str], Summary]:
    return {(s.kind, s.variant, s.target): s for s in summaries}


def value(idx: Index, kind: str, variant: str, target: str, metric: str) -> float | None:
    s = idx.get((kind, variant, target))
    return None if s is None else s.get(metric)


# -- ratios ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    kind: str
    variant: str
    metric: str
    numerator: str
    denominator: str
    value: float | None

    @property
    def name(self) -> str:
        what = f"{self.kind} {self.variant}".strip()
        return f"{self.numerator}/{self.denominator} {self.metric} ({what})"


def ratios(summaries: Sequence[Summary]) -> list[Ratio]:
    """pgwarden/PgBouncer, pgwarden/direct and PgBouncer/direct on each kind's primary
    metric, pgwarden/PgBouncer on proxy CPU, and N workers / 1 worker for the scaling."""
    idx = index(summaries)
    out: list[Ratio] = []
    seen: list[tuple[str, str]] = []
    for s in summaries:
        if (s.kind, s.variant) not in seen:
            seen.append((s.kind, s.variant))
    for kind, variant in seen:
        if kind == "scaling":
            continue
        metric = PRIMARY[kind][0]
        for num, den in PAIRS:
            if kind == "idle" and den == "direct":
                continue  # a backend process per connection: not the same kind of cost
            r = ratio(
                value(idx, kind, variant, num, metric), value(idx, kind, variant, den, metric)
            )
            if r is not None:
                out.append(Ratio(kind, variant, metric, num, den, r))
        cpu = CPU_METRIC.get(kind)
        for den in (PGBOUNCER, PGBOUNCER_PLAIN):
            if cpu is None:
                break
            num_cpu = value(idx, kind, variant, "pgwarden", cpu)
            r = ratio(num_cpu, value(idx, kind, variant, den, cpu))
            if r is not None:
                out.append(Ratio(kind, variant, cpu, "pgwarden", den, r))
    for kind, variant in seen:
        if kind != "scaling" or variant.startswith("w1 "):
            continue
        _workers, clients = variant.split(" ", 1)
        r = ratio(
            value(idx, kind, variant, "pgwarden", "tps"),
            value(idx, kind, f"w1 {clients}", "pgwarden", "tps"),
        )
        if r is not None:
            out.append(Ratio(kind, variant, "tps", f"pgwarden {_workers}", "pgwarden w1", r))
    return out


# -- issue 3's targets ---------------------------------------------------------------------


@dataclass(frozen=True)
class TargetCheck:
    target: str
    measured: str
    value: float | None
    threshold: float
    higher_is_better: bool

    @property
    def status(self) -> str:
        if self.value is None:
            return "not measured"
        ok = self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold
        return "PASS" if ok else "MISS"


def target_checks(summaries: Sequence[Summary]) -> list[TargetCheck]:
    idx = index(summaries)

    def rt(kind: str, variant: str, metric: str, den: str) -> float | None:
        return ratio(
            value(idx, kind, variant, "pgwarden", metric), value(idx, kind, variant, den, metric)
        )

    checks: list[TargetCheck] = []
    for mode in ("simple", "prepared"):
        v = f"{mode} c8"
        checks.append(TargetCheck(
            f"pgbench -S -c 8 {mode}: tps ≥ 0.95x PgBouncer", "pgwarden/PgBouncer tps",
            rt("pgbench", v, "tps", "pgbouncer"), 0.95, True,
        ))  # fmt: skip
        checks.append(TargetCheck(
            f"pgbench -S -c 8 {mode}: proxy CPU/stmt ≤ 1.2x PgBouncer",
            "pgwarden/PgBouncer CPU µs per statement",
            rt("pgbench", v, "cpu_us_per_stmt", "pgbouncer"), 1.2, False,
        ))  # fmt: skip
    connect = next((s.variant for s in summaries if s.kind == "connect"), "c8")
    plain = ("connect", connect, PGBOUNCER_PLAIN) in idx
    checks.append(TargetCheck(
        "connection setup rate ≥ 0.8x PgBouncer",
        "pgwarden/PgBouncer connections/s"
        + (" (PgBouncer with auth_type=plain: same client work)" if plain else ""),
        rt("connect", connect, "conn_per_s", PGBOUNCER_PLAIN if plain else PGBOUNCER), 0.8, True,
    ))  # fmt: skip
    if plain:
        checks.append(TargetCheck(
            "(reference) connection setup vs PgBouncer with SCRAM",
            "pgwarden/PgBouncer connections/s (SCRAM: the client derives the key)",
            rt("connect", connect, "conn_per_s", PGBOUNCER), 0.8, True,
        ))  # fmt: skip
    for kind, label in (("copy_out", "COPY OUT"), ("copy_in", "COPY IN")):
        checks.append(TargetCheck(
            f"{label} ≥ 0.9x direct MB/s", "pgwarden/direct MB/s",
            rt(kind, "", "mb_per_s", "direct"), 0.9, True,
        ))  # fmt: skip
    checks.append(TargetCheck(
        "COPY pgbench_accounts TO STDOUT ≤ 1.1x direct time (issue 2)",
        "pgwarden/direct seconds (psql \\timing)",
        rt("copy_accounts", "", "seconds", "direct"), 1.1, False,
    ))  # fmt: skip
    checks.append(TargetCheck(
        "streamed SELECT ≥ 0.9x direct rows/s", "pgwarden/direct rows/s",
        rt("select", "", "rows_per_s", "direct"), 0.9, True,
    ))  # fmt: skip
    idle = next((s.variant for s in summaries if s.kind == "idle"), "")
    checks.append(TargetCheck(
        f"idle client connection ≤ {IDLE_TARGET_KIB:.0f} KiB",
        "pgwarden RSS KiB per idle session (after one query)",
        value(idx, "idle", idle, "pgwarden", "rss_kib_per_conn"), IDLE_TARGET_KIB, False,
    ))  # fmt: skip
    return checks


# -- Markdown -------------------------------------------------------------------------------


def _vs(idx: Index, s: Summary, den: str) -> str:
    metric = PRIMARY[s.kind][0]
    return fmt(ratio(s.get(metric), value(idx, s.kind, s.variant, den, metric)), ".2f")


def _range(s: Summary, spec: str) -> str:
    if s.low is None or s.high is None:
        return "—"
    return f"{s.low:{spec}} - {s.high:{spec}}"


def _pgbench_table(summaries: Sequence[Summary], idx: Index) -> list[str]:
    lines = [
        "| mode | clients | target | tps | tps min - max | vs direct | vs PgBouncer "
        "| latency avg ms | p99 ms | proxy CPU µs/stmt | CPU vs PgBouncer | proxy sys % "
        "| runs |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        if s.kind != "pgbench":
            continue
        mode, clients = s.variant.split(" ")
        cpu_vs = ratio(
            s.get("cpu_us_per_stmt"),
            value(idx, s.kind, s.variant, "pgbouncer", "cpu_us_per_stmt"),
        )
        lines.append(
            f"| {mode} | {clients[1:]} | {s.target} | {fmt(s.get('tps'), ',.0f')} "
            f"| {_range(s, ',.0f')} | {_vs(idx, s, 'direct')} | {_vs(idx, s, 'pgbouncer')} "
            f"| {fmt(s.get('latency_ms'), '.3f')} | {fmt(s.get('p99_ms'), '.3f')} "
            f"| {fmt(s.get('cpu_us_per_stmt'), '.2f')} "
            f"| {fmt(cpu_vs if s.target == 'pgwarden' else None, '.2f')} "
            f"| {fmt(s.get('proxy_sys_pct'), '.0f')} | {s.runs} |"
        )
    return lines


def _simple_table(
    summaries: Sequence[Summary],
    idx: Index,
    kind: str,
    columns: Sequence[tuple[str, str, str]],
) -> list[str]:
    """target | primary | min-max | vs direct | vs PgBouncer(s) | (metric columns) | runs."""
    metric, _ = PRIMARY[kind]
    spec = ",.1f" if metric != "rows_per_s" else ",.0f"
    dens = [("vs direct", "direct"), ("vs PgBouncer", PGBOUNCER)]
    if (kind, next((s.variant for s in summaries if s.kind == kind), ""), PGBOUNCER_PLAIN) in idx:
        dens.append(("vs PgBouncer plain auth", PGBOUNCER_PLAIN))
    head = "| target | " + metric.replace("_per_", "/") + " | min - max"
    head += "".join(f" | {title}" for title, _d in dens)
    head += "".join(f" | {title}" for title, _m, _s in columns) + " | runs |"
    lines = [head, "|---|" + "---:|" * (3 + len(dens) + len(columns))]
    for s in summaries:
        if s.kind != kind:
            continue
        vs = "".join(f" | {_vs(idx, s, den)}" for _t, den in dens)
        cells = "".join(f" | {fmt(s.get(m), sp)}" for _t, m, sp in columns)
        lines.append(
            f"| {s.target} | {fmt(s.primary, spec)} | {_range(s, spec)}{vs}{cells} | {s.runs} |"
        )
    return lines


def _idle_table(summaries: Sequence[Summary]) -> list[str]:
    lines = [
        "| target | connections | RSS KiB/conn after login | RSS KiB/conn after 1 query "
        "| PSS KiB/conn after 1 query | tree RSS before → after, MiB | processes "
        "| logins/s | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        if s.kind != "idle":
            continue
        lines.append(
            f"| {s.target} | {fmt(s.get('connections'), '.0f')} "
            f"| {fmt(s.get('rss_kib_per_conn_login'), '.1f')} "
            f"| {fmt(s.get('rss_kib_per_conn'), '.1f')} | {fmt(s.get('pss_kib_per_conn'), '.1f')} "
            f"| {fmt(s.get('base_rss_mib'), '.1f')} → {fmt(s.get('rss_mib'), '.1f')} "
            f"| {fmt(s.get('processes'), '.0f')} | {fmt(s.get('logins_per_s'), ',.0f')} "
            f"| {s.runs} |"
        )
    return lines


def _scaling_table(summaries: Sequence[Summary], idx: Index, mode: str) -> list[str]:
    lines = [
        "| clients | pgwarden workers | tps | tps min - max | vs 1 worker | proxy CPU µs/stmt "
        f"| PgBouncer tps ({mode}, same run) | direct tps | runs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [s for s in summaries if s.kind == "scaling"]
    rows.sort(key=lambda s: tuple(int(part[1:]) for part in reversed(s.variant.split(" "))))
    for s in rows:
        workers, clients = s.variant.split(" ")
        one = value(idx, "scaling", f"w1 {clients}", "pgwarden", "tps")
        ref = f"{mode} {clients}"
        lines.append(
            f"| {clients[1:]} | {workers[1:]} | {fmt(s.get('tps'), ',.0f')} "
            f"| {_range(s, ',.0f')} | {fmt(ratio(s.get('tps'), one), '.2f')} "
            f"| {fmt(s.get('cpu_us_per_stmt'), '.2f')} "
            f"| {fmt(value(idx, 'pgbench', ref, 'pgbouncer', 'tps'), ',.0f')} "
            f"| {fmt(value(idx, 'pgbench', ref, 'direct', 'tps'), ',.0f')} | {s.runs} |"
        )
    return lines


def _raw_table(samples: Sequence[Sample]) -> list[str]:
    lines = ["| round | kind | variant | target | metrics |", "|---:|---|---|---|---|"]
    for s in samples:
        metrics = ", ".join(f"{k}={v:.6g}" for k, v in s.metrics.items())
        lines.append(f"| {s.round} | {s.kind} | {s.variant} | {s.target} | {metrics} |")
    return lines


@dataclass(frozen=True)
class ReportInput:
    command: str
    quick: bool
    rounds: int
    method: list[str]  # Markdown lines describing what was run
    machine: dict[str, str]
    samples: list[Sample]
    summaries: list[Summary]
    ratios: list[Ratio]
    checks: list[TargetCheck]
    scaling_mode: str
    chart: str | None  # file name of the chart next to the report
    loads: list[tuple[str, float | None]]  # (when, 1-min load average)


def render_markdown(r: ReportInput) -> str:
    idx = index(r.summaries)
    kinds = {s.kind for s in r.summaries}
    quick = (
        " **Quick mode**: small sizes and 1-second runs, to exercise every measurement — "
        "the figures are indicative only."
        if r.quick
        else ""
    )
    lines = [
        "# Proxy comparison: direct PostgreSQL, PgBouncer, pgwarden",
        "",
        f"Written by `benchmarks/compare.py` on {r.machine.get('date', '?')}. Medians of "
        f"{r.rounds} interleaved round(s); within a round the order of the targets rotates "
        "from one measurement to the next. On a small shared machine read the **ratios**, "
        f"not the absolute numbers.{quick}",
        "",
        "## Command",
        "",
        "```",
        r.command,
        "```",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in r.machine.items()),
        "",
    ]
    loads = [f"{when} {fmt(v, '.2f')}" for when, v in r.loads]
    if loads:
        lines += [f"1-minute load average during the run: {'; '.join(loads)}.", ""]
    lines += [
        "## Targets (issues 2 and 3, 1 worker, ratios from this run)",
        "",
        "| target | measured | value | threshold | status |",
        "|---|---|---:|---:|---|",
    ]
    for c in r.checks:
        op = "≥" if c.higher_is_better else "≤"
        spec = ".1f" if "KiB" in c.measured else ".3f"
        lines.append(
            f"| {c.target} | {c.measured} | {fmt(c.value, spec)} | {op} {c.threshold:g} "
            f"| {c.status} |"
        )
    lines.append("")
    if r.chart:
        lines += [f"![ratios]({r.chart})", ""]
    lines += ["## Method", "", *r.method, ""]
    if "pgbench" in kinds:
        lines += ["## pgbench -S", "", *_pgbench_table(r.summaries, idx), ""]
    if "connect" in kinds:
        lines += [
            "## Connection setup (`pgbench -C -S`, one login per transaction)",
            "",
            *_simple_table(
                r.summaries, idx, "connect",
                [("avg connection ms", "connection_ms", ".2f"),
                 ("proxy CPU µs/conn", "cpu_us_per_conn", ".0f"),
                 ("proxy sys %", "proxy_sys_pct", ".0f")],
            ),
            "",
        ]  # fmt: skip
    for kind, title in (("copy_out", "COPY OUT"),
                        ("copy_accounts", "COPY pgbench_accounts TO STDOUT"),
                        ("copy_in", "COPY IN")):
        if kind in kinds:
            lines += [
                f"## {title}",
                "",
                *_simple_table(
                    r.summaries, idx, kind,
                    [("MB", "mbytes", ".0f"), ("rows", "rows", ",.0f"),
                     ("COPY s", "seconds", ".3f"), ("proxy CPU s", "proxy_cpu_s", ".3f"),
                     ("proxy CPU s/GB", "cpu_s_per_gb", ".2f"),
                     ("proxy sys %", "proxy_sys_pct", ".0f")],
                ),
                "",
            ]  # fmt: skip
    if "select" in kinds:
        lines += [
            "## Streamed SELECT (psycopg)",
            "",
            *_simple_table(
                r.summaries, idx, "select",
                [("s", "seconds", ".3f"), ("proxy CPU s", "proxy_cpu_s", ".3f"),
                 ("proxy CPU ns/row", "cpu_ns_per_row", ".0f"),
                 ("proxy sys %", "proxy_sys_pct", ".0f")],
            ),
            "",
        ]  # fmt: skip
    if "idle" in kinds:
        lines += ["## Idle client connections", "", *_idle_table(r.summaries), ""]
    if "scaling" in kinds:
        lines += [
            f"## Worker scaling (pgbench -S -M {r.scaling_mode}, this machine has "
            f"{r.machine.get('nproc', '?')} cores)",
            "",
            *_scaling_table(r.summaries, idx, r.scaling_mode),
            "",
        ]
    lines += [
        "## All ratios",
        "",
        "| ratio | value |",
        "|---|---:|",
        *(f"| {x.name} | {fmt(x.value, '.3f')} |" for x in r.ratios),
        "",
        "## Raw samples",
        "",
        "<details><summary>every measurement of every round</summary>",
        "",
        *_raw_table(r.samples),
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


def write_json(path: Path, r: ReportInput, settings: Mapping[str, Any]) -> None:
    data: dict[str, Any] = {
        "command": r.command,
        "settings": dict(settings),
        "machine": r.machine,
        "loads": r.loads,
        "samples": [asdict(s) for s in r.samples],
        "summary": [asdict(s) for s in r.summaries],
        "ratios": [{**asdict(x), "name": x.name} for x in r.ratios],
        "targets": [{**asdict(c), "status": c.status} for c in r.checks],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
