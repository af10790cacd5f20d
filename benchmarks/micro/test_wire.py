"""Micro-benchmarks of gateway/wire: the framer, the header walk (C and Python), the codecs.

Run (the repository's pytest configuration disables benchmarks unless told otherwise):

    python -m pytest benchmarks/micro/test_wire.py --benchmark-enable --benchmark-only \\
        --benchmark-json=wire.json -p no:cacheprovider

Units: pytest-benchmark times one call of the benchmarked function (its ``ops`` column is
calls per second). Each test says in its docstring what one call does, and records its
throughput in ``extra_info`` (kept in ``--benchmark-json``), from the median time of a call:

- ``MB_per_s``: 10^6 bytes of wire data framed or scanned per second;
- ``messages_per_s``: protocol messages per second;
- ``ns_per_message``: mean nanoseconds per message.

The streams are what the relay sees: the backend stream is framed with the action table
the relay uses for a session without active hooks (ReadyForQuery counted, COPY boundaries,
ParameterStatus and invalid types watched, everything else passed through without building
any Python object), the frontend one with its passive frontend table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from gateway.wire import backend, frontend
from gateway.wire.framer import Chunk, Framer, action_table
from gateway.wire.scan import ACCELERATED, STOP_NONE, scan, scan_py
from gateway.wire.states import BACKEND_TYPES, FRONTEND_TYPES

MAX = 1 << 30
READ_SIZE = 65536  # a typical socket read on the data path


def _invalid(valid: bytes) -> bytes:
    return bytes(t for t in range(256) if t not in valid)


# The relay's passive tables (gateway/session/relay.py), rebuilt from the public pieces.
BACKEND_TABLE = action_table(watch=b"GHWcS" + _invalid(BACKEND_TYPES), ready=b"Z")
FRONTEND_TABLE = action_table(watch=b"X" + _invalid(FRONTEND_TYPES), request=b"QSF")


def _row(i: int) -> bytes:
    """A DataRow like one row of a 4-column result: int, two md5 texts, a timestamp."""
    a = hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest().encode()
    b = hashlib.md5(str(i * 7).encode(), usedforsecurity=False).hexdigest().encode()
    return backend.data_row((str(i).encode(), a, b, b"2024-01-01 00:00:01+00"))


ROWS = [_row(100_000 + i) for i in range(2_400)]
ROW_STREAM = b"".join(ROWS)  # ~256 KiB of ~110-byte DataRows
COPY_MESSAGE = b"d" + (65536 + 4).to_bytes(4, "big") + bytes(range(256)) * 256
COPY_STREAM = COPY_MESSAGE * 16  # 16 CopyData messages of 64 KiB: 1 MiB
QUERY = frontend.Query("SELECT abalance FROM pgbench_accounts WHERE aid = 51234;").encode()
QUERY_STREAM = QUERY * 2_000  # a pipeline of simple-protocol statements


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _no_change(_msg_type: int, _body: memoryview) -> bytes | None:
    return None


def _record(benchmark: Any, nbytes: int, messages: int) -> None:
    """Throughput from the median time of one call (the median: this machine is shared and
    the mean carries the other tenants' pauses). Absent when benchmarks are disabled."""
    stats = getattr(benchmark, "stats", None)
    median = getattr(getattr(stats, "stats", None), "median", None)
    benchmark.extra_info["bytes_per_call"] = nbytes
    benchmark.extra_info["messages_per_call"] = messages
    if median:
        benchmark.extra_info["MB_per_s"] = round(nbytes / median / 1e6, 1)
        benchmark.extra_info["messages_per_s"] = round(messages / median)
        benchmark.extra_info["ns_per_message"] = round(median * 1e9 / messages, 1)


def _framer_run(table: bytearray, chunks: Sequence[bytes]) -> tuple[Framer, Callable[[], int]]:
    framer = Framer(bytearray(table), _no_change, MAX)

    def run() -> int:
        forwarded = 0
        feed = framer.feed
        for chunk in chunks:
            out: list[Chunk] | None = feed(chunk)
            forwarded += len(chunk) if out is None else sum(len(c) for c in out)
        return forwarded

    return framer, run


# -- Framer.feed ------------------------------------------------------------------------------

FRAMER_CASES = {
    # name: (table, stream, read size (0 = the whole stream in one feed), messages)
    "backend-DataRow-110B-whole": (BACKEND_TABLE, ROW_STREAM, 0, len(ROWS)),
    "backend-DataRow-110B-reads-64KiB": (BACKEND_TABLE, ROW_STREAM, READ_SIZE, len(ROWS)),
    "backend-DataRow-110B-reads-1460B": (BACKEND_TABLE, ROW_STREAM, 1460, len(ROWS)),
    "backend-CopyData-64KiB-whole": (BACKEND_TABLE, COPY_STREAM, 0, 16),
    "backend-CopyData-64KiB-reads-64KiB": (BACKEND_TABLE, COPY_STREAM, READ_SIZE, 16),
    "frontend-Query-61B-whole": (FRONTEND_TABLE, QUERY_STREAM, 0, 2_000),
    "frontend-Query-61B-reads-1460B": (FRONTEND_TABLE, QUERY_STREAM, 1460, 2_000),
}


@pytest.mark.parametrize("case", list(FRAMER_CASES))
def test_framer_feed(benchmark: Any, case: str) -> None:
    """One call: feed the whole stream, in reads of the given size, to one Framer.

    ``whole``: a read that holds only whole messages (returned for forwarding as is);
    ``reads-N``: the stream cut every N bytes, so that messages span reads (the framer
    forwards the pieces of a pass-through message as they arrive)."""
    table, stream, size, messages = FRAMER_CASES[case]
    chunks = [stream] if size == 0 else _split(stream, size)
    framer, run = _framer_run(table, chunks)
    benchmark.group = "framer feed"
    forwarded = benchmark(run)
    assert forwarded == len(stream)
    assert framer.at_boundary
    _record(benchmark, len(stream), messages)


# -- the header walk: C vs Python -------------------------------------------------------------

SCANNERS: dict[str, Callable[..., tuple[int, int, int, int, int, int]]] = {
    "C": scan,
    "python": scan_py,
}


@pytest.mark.parametrize("impl", list(SCANNERS))
@pytest.mark.parametrize(
    "stream_name", ["DataRow-110B", "CopyData-64KiB", "Query-61B"], ids=lambda s: s
)
def test_scan(benchmark: Any, impl: str, stream_name: str) -> None:
    """One call: walk every header of a ~256 KiB (DataRow, Query) or 1 MiB (CopyData) buffer
    of whole messages with gateway.wire.scan.scan (C) or scan_py (pure Python)."""
    if impl == "C" and not ACCELERATED:
        pytest.skip("gateway.wire._speedups is not built")
    streams = {
        "DataRow-110B": (BACKEND_TABLE, ROW_STREAM, len(ROWS)),
        "CopyData-64KiB": (BACKEND_TABLE, COPY_STREAM, 16),
        "Query-61B": (FRONTEND_TABLE, QUERY_STREAM, 2_000),
    }
    table, stream, messages = streams[stream_name]
    fn = SCANNERS[impl]
    benchmark.group = f"scan {stream_name}"
    result = benchmark(fn, stream, 0, table, MAX)
    assert result[0] == len(stream) and result[1] == STOP_NONE
    _record(benchmark, len(stream), messages)


# -- codecs -----------------------------------------------------------------------------------

BIND = frontend.Bind("", "P0_1", (0,), (b"51234",), (0,)).encode()
ROW_DESCRIPTION = backend.RowDescription(
    tuple(
        backend.FieldDescription(name, 16384, n, oid, size, -1, 0)
        for n, (name, oid, size) in enumerate(
            [("id", 23, 4), ("a", 25, -1), ("b", 25, -1), ("ts", 1184, 8)], start=1
        )
    )
).encode()

DECODE_CASES: dict[str, tuple[Callable[[int, memoryview], object], bytes]] = {
    "frontend-Query": (frontend.decode_frontend, QUERY),
    "frontend-Bind": (frontend.decode_frontend, BIND),
    "backend-RowDescription-4-columns": (backend.decode_backend, ROW_DESCRIPTION),
    "backend-DataRow-110B": (backend.decode_backend, ROWS[0]),
}


@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_decode(benchmark: Any, case: str) -> None:
    """One call: decode one message (type byte + body, as the framer hands it over) into
    its dataclass, with every check PostgreSQL applies."""
    decode, message = DECODE_CASES[case]
    body = memoryview(message)[5:]
    msg_type = message[0]
    benchmark.group = "decode"
    decoded = benchmark(decode, msg_type, body)
    assert decoded.encode() == message
    _record(benchmark, len(message), 1)


ENCODE_CASES: dict[str, Callable[[], bytes]] = {
    "error_response": lambda: backend.error_response(
        "42501",
        'permission denied for table "accounts"',
        detail="pgwarden policy etl-readonly forbids UPDATE on public.accounts",
        hint="ask for an approval with pgwarden request",
    ),
    "DataRow-110B": lambda: backend.data_row(
        (b"100000", b"0" * 32, b"1" * 32, b"2024-01-01 00:00:01+00")
    ),
    "Query": lambda: frontend.Query(
        "SELECT abalance FROM pgbench_accounts WHERE aid = 51234;"
    ).encode(),
}


@pytest.mark.parametrize("case", list(ENCODE_CASES))
def test_encode(benchmark: Any, case: str) -> None:
    """One call: build one complete message (type, length, body)."""
    benchmark.group = "encode"
    message = benchmark(ENCODE_CASES[case])
    assert message[1:5] == (len(message) - 1).to_bytes(4, "big")
    _record(benchmark, len(message), 1)
