"""A PNG of the ratios of a compare run (matplotlib, Agg backend: no display needed).

Left: each proxy's throughput relative to direct PostgreSQL (pgbench tps per mode and
client count, connections/s, COPY MB/s, SELECT rows/s). Middle: pgwarden / PgBouncer on
throughput and on proxy CPU per unit of work (statement, connection, GB, row) and on memory
per idle session, with the targets of issue 3 as reference lines. Right: pgwarden tps
with N workers relative to 1 worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import (
    CPU_METRIC,
    PGBOUNCER,
    PGBOUNCER_PLAIN,
    PRIMARY,
    Index,
    Ratio,
    Summary,
    index,
    ratio,
    value,
)

LABELS = {
    "connect": "connect/s",
    "copy_out": "COPY OUT",
    "copy_in": "COPY IN",
    "select": "SELECT rows/s",
    "idle": "idle KiB/conn",
}


def _label(kind: str, variant: str) -> str:
    if kind == "pgbench":
        return f"-S {variant}"
    return f"{LABELS.get(kind, kind)} {variant}".strip() if kind != "connect" else LABELS[kind]


def _rel(
    idx: Index, kind: str, variant: str, den: str, metric: str | None, num: str = "pgwarden"
) -> float | None:
    if metric is None:
        return None
    return ratio(value(idx, kind, variant, num, metric), value(idx, kind, variant, den, metric))


def _cost_metric(kind: str) -> str | None:
    return "rss_kib_per_conn" if kind == "idle" else CPU_METRIC.get(kind)


def _barh(ax: Any, labels: list[str], series: list[tuple[str, list[float | None]]]) -> None:
    """Horizontal bars from 1.0 (parity) to each ratio, on a log axis: a ratio and its
    inverse are the same length on either side."""
    height = 0.8 / max(1, len(series))
    ys = list(range(len(labels)))
    present = [v for _n, values in series for v in values if v is not None and v > 0]
    for i, (name, values) in enumerate(series):
        pos = [y + (i - (len(series) - 1) / 2) * height for y in ys]
        widths = [0.0 if v is None or v <= 0 else v - 1.0 for v in values]
        ax.barh(pos, widths, height=height, left=1.0, label=name)
        for p, v in zip(pos, values, strict=True):
            if v is not None and v > 0:
                ax.text(v, p, f" {v:.2f} ", va="center", fontsize=7,
                        ha="left" if v >= 1 else "right")  # fmt: skip
    ax.set_xscale("log")
    low = min([0.5, *present]) / 1.6
    high = max([2.0, *present]) * 1.6
    ax.set_xlim(low, high)
    ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32) if low <= t <= high]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=8)
    ax.minorticks_off()
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    ax.axvline(1.0, color="black", linewidth=0.8)


def _legend(ax: Any) -> None:
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2)


def write_chart(
    path: Path, summaries: Sequence[Summary], ratios: Sequence[Ratio], title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = index(summaries)
    variants: list[tuple[str, str]] = []
    for s in summaries:
        if (s.kind, s.variant) not in variants:
            variants.append((s.kind, s.variant))
    throughput = [(k, v) for k, v in variants if k not in ("idle", "scaling")]
    scaling = [r for r in ratios if r.kind == "scaling"]
    panels = 3 if scaling else 2
    widths = [1.0, 1.0, 0.6][:panels]
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(5.5 * sum(widths) + 1.5, 2.5 + 0.4 * max(len(variants) + 1, 6)),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )

    has_plain = any(s.target == PGBOUNCER_PLAIN for s in summaries)

    ax = axes[0][0]
    rows: list[tuple[str, str, str, str]] = []  # label, kind, variant, which PgBouncer
    for k, v in throughput:
        rows.append((_label(k, v), k, v, PGBOUNCER))
        if k == "connect" and has_plain:
            rows.append(("connect/s, plain auth", k, v, PGBOUNCER_PLAIN))
    bouncer = [_rel(idx, k, v, "direct", PRIMARY[k][0], b) for _l, k, v, b in rows]
    warden = [_rel(idx, k, v, "direct", PRIMARY[k][0]) for _l, k, v, _b in rows]
    series = [("PgBouncer / direct", bouncer), ("pgwarden / direct", warden)]
    _barh(ax, [r[0] for r in rows], series)
    ax.axvline(0.9, color="red", linestyle=":", linewidth=0.8, label="0.9 (COPY, SELECT target)")
    ax.set_title("throughput relative to direct PostgreSQL", fontsize=10)
    _legend(ax)

    ax = axes[0][1]
    rows = []
    for k, v in variants:
        if k == "scaling":
            continue
        rows.append((_label(k, v), k, v, PGBOUNCER))
        if k == "connect" and has_plain:
            rows.append(("connect/s vs plain-auth PgBouncer", k, v, PGBOUNCER_PLAIN))
    work = [None if k == "idle" else _rel(idx, k, v, b, PRIMARY[k][0]) for _l, k, v, b in rows]
    cost = [_rel(idx, k, v, b, _cost_metric(k)) for _l, k, v, b in rows]
    _barh(
        ax,
        [r[0] for r in rows],
        [("throughput", work), ("CPU per unit of work / memory per session", cost)],
    )
    ax.axvline(0.95, color="green", linestyle=":", linewidth=0.8, label="0.95 (tps target)")
    ax.axvline(1.2, color="red", linestyle=":", linewidth=0.8, label="1.2 (CPU target)")
    ax.set_title("pgwarden / PgBouncer (cost: lower is better)", fontsize=10)
    _legend(ax)

    if scaling:
        ax = axes[0][2]
        _barh(
            ax,
            [f"{r.numerator.split()[-1]} {r.variant.split()[-1]}" for r in scaling],
            [("tps vs 1 worker", [r.value for r in scaling])],
        )
        ax.set_title("pgwarden tps: N workers / 1", fontsize=10)
        _legend(ax)

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
