"""Print the micro-benchmarks of a pytest-benchmark JSON file as one Markdown table.

    python -m benchmarks.microsummary wire.json [more.json ...]

One row per benchmark: group, name, median time per call, calls/s, and the throughput the
test recorded in ``extra_info`` (MB/s, messages/s, ns per message) when it did.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:,.2f} {unit}"
    return f"{seconds * 1e9:,.0f} ns"


def _num(value: Any, spec: str) -> str:
    return "—" if not isinstance(value, int | float) else format(value, spec)


def table(paths: Sequence[Path]) -> list[str]:
    lines = [
        "| group | benchmark | median / call | calls/s | MB/s | messages/s | ns/message |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for path in paths:
        data = json.loads(path.read_text())
        for b in data.get("benchmarks", []):
            extra = b.get("extra_info", {})
            median = b["stats"]["median"]
            lines.append(
                f"| {b.get('group') or ''} | {b['name']} | {_time(median)} "
                f"| {_num(1 / median if median else None, ',.0f')} "
                f"| {_num(extra.get('MB_per_s'), ',.1f')} "
                f"| {_num(extra.get('messages_per_s'), ',.0f')} "
                f"| {_num(extra.get('ns_per_message'), ',.1f')} |"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(table([Path(a) for a in args])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
