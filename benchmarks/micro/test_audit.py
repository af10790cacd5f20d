"""Micro-benchmarks of gateway/audit: building events, emit, sealing batches, verifying.

Run (the repository's pytest configuration disables benchmarks unless told otherwise):

    python -m pytest benchmarks/micro/test_audit.py --benchmark-enable --benchmark-only \\
        --benchmark-json=audit.json -p no:cacheprovider

Target (issue 6): encoding and signing >= 100k events/s per worker, i.e. ``test_seal``
with the default batch of 8192 statement events at <= 82 ms per call. Each test records
``messages_per_s`` (here: events per second) and ``ns_per_message`` (ns per event) in
``extra_info`` from the median time of a call, and ``MB_per_s`` of record bytes produced
or checked.

The statement events are realistic (~600 bytes of JSON each: identity, a pgbench-like
statement, decision, timings) and arrive at the writer encoded, as the session's audit
trail writes them; a batch of 8192 is ~5 MB of JSON, ~190 KB as a version 2 (zstd)
record.

``test_session_statement`` is the per-statement cost on the session's side: one prepared
or simple pgbench statement through a relay with the audit trail, both directions, no
sockets — with the C fast path (``gateway/session/_trail.c``) and without.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nacl.signing import SigningKey

from gateway.audit.batch import Chain, SourcedRecord
from gateway.audit.events import StatementEvent, WorkerStartEvent
from gateway.audit.keys import key_id
from gateway.audit.spool import Spool
from gateway.audit.verify import Verifier
from gateway.audit.writer import AuditWriter
from gateway.config import AuditConfig

KEY = SigningKey(bytes(range(32)))
NOW = time.time_ns()


def statement(n: int) -> StatementEvent:
    return StatementEvent(
        at=NOW + n, id=f"7f3a9c1e:{n}", session_id="7f3a9c1e", start=NOW + n - 180_000,
        end=NOW + n, issuer="github", subject="repo:acme/etl:ref:refs/heads/main",
        client_id="", role="etl_loader", upstream_user="etl", database="warehouse",
        client_addr="10.20.30.40:50432", application_name="pgbench",
        protocol="simple", text=f"SELECT abalance FROM pgbench_accounts WHERE aid = {n};",
        fingerprint="9e2f0b4c7d1a3e58", decision="allow", rule_ids=[],
        rows=1, command_tag="SELECT 1", duration_us=180, bytes_in=61, bytes_out=120,
    )


def _record(benchmark: Any, nbytes: int, events: int) -> None:
    """Throughput from the median time of one call (the machine is shared; the mean
    carries other tenants' pauses). Absent when benchmarks are disabled."""
    median = getattr(getattr(getattr(benchmark, "stats", None), "stats", None), "median", None)
    benchmark.extra_info["bytes_per_call"] = nbytes
    benchmark.extra_info["events_per_call"] = events
    if median:
        if nbytes:
            benchmark.extra_info["MB_per_s"] = round(nbytes / median / 1e6, 1)
        benchmark.extra_info["messages_per_s"] = round(events / median)
        benchmark.extra_info["ns_per_message"] = round(median * 1e9 / events, 1)


def _open_chain() -> Chain:
    chain = Chain(KEY, "gw-bench", 0)
    chain.seal([WorkerStartEvent(at=NOW, pid=1, version="bench")], "open")
    return chain


def _open_chain_with(compression: str) -> Chain:
    chain = Chain(KEY, "gw-bench", 0, compression=compression)  # type: ignore[arg-type]
    chain.seal([WorkerStartEvent(at=NOW, pid=1, version="bench")], "open")
    return chain


@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("events", [512, 8192])
def test_seal(benchmark: Any, events: int, compression: str) -> None:
    """One call: ``events`` encoded statement events into one record: the payload JSON,
    compressed (version 2) or not (version 1), hashed, signed, chained."""
    chain = _open_chain_with(compression)
    batch = [msgspec.json.encode(statement(n)) for n in range(events)]
    record = benchmark(chain.seal, batch)
    _record(benchmark, len(record), events)


def test_build_statement_event(benchmark: Any) -> None:
    """One call: construct 1000 StatementEvent Structs (what the session pays per statement)."""

    def build() -> None:
        for n in range(1000):
            statement(n)

    benchmark(build)
    _record(benchmark, 0, 1000)


def test_emit(benchmark: Any, tmp_path: Path) -> None:
    """One call: AuditWriter.emit of 1000 encoded events (no loop running: the cost on the
    caller's path, a list append and a flush check; the C fast path skips even that)."""
    cfg = AuditConfig(
        spool_dir=str(tmp_path), signing_key_file="unused", flush_events=10**9
    )
    writer = AuditWriter(cfg, "gw-bench", 0, KEY)
    events = [msgspec.json.encode(statement(n)) for n in range(1000)]

    def emit_all() -> None:
        emit = writer.emit
        for event in events:
            emit(event)
        writer._pending.clear()  # keep memory flat across rounds

    benchmark(emit_all)
    _record(benchmark, 0, 1000)


def test_verify(benchmark: Any) -> None:
    """One call: verify one 512-event record (signature, schema, chain) and decode it."""
    chain = _open_chain()
    records = [chain.seal([statement(n) for n in range(512)]) for _ in range(200)]
    keys = {key_id(KEY.verify_key): KEY.verify_key}
    state = {"verifier": Verifier(keys, partial_history=True), "next": 0}

    def verify_one() -> None:
        if state["next"] == len(records):  # start over: a new verifier, same chain
            state["verifier"], state["next"] = Verifier(keys, partial_history=True), 0
        index = state["next"]
        state["next"] = index + 1
        verifier = state["verifier"]
        assert isinstance(verifier, Verifier) and isinstance(index, int)
        verifier.feed(SourcedRecord(records[index], f"bench@{index}"))

    benchmark(verify_one)
    _record(benchmark, len(records[0]), 512)


def test_spool_append_fsync(benchmark: Any, tmp_path: Path) -> None:
    """One call: append one 512-event record to the spool and fsync it (disk-bound: this
    is the group-commit unit; its latency is what a ``strict`` statement waits for)."""
    chain = _open_chain()
    record = chain.seal([statement(n) for n in range(512)])
    spool = Spool(tmp_path, "gw-bench", 0, segment_bytes=64 << 20, retain_acked=False)

    def append() -> None:
        spool.append([record])
        if spool.size_bytes > 48 << 20:
            spool.ack(spool.end)

    benchmark(append)
    spool.close()
    _record(benchmark, len(record), 512)


@pytest.mark.parametrize("path", ["c", "python"])
@pytest.mark.parametrize("mode", ["prepared", "simple"])
def test_session_statement(
    benchmark: Any, mode: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One call: 1000 pgbench -S statements through a relay with the audit trail (each a
    client read and a server read), events to a list that is dropped."""
    from gateway.policy.baseline import BASELINE
    from gateway.policy.cache import DecisionCache
    from gateway.policy.engine import Policy
    from gateway.session import audit as audit_module
    from gateway.session import policy as policy_module
    from gateway.session.audit import AuditedHooks, SessionInfo
    from gateway.session.relay import Relay

    if path == "python":
        monkeypatch.setattr(audit_module, "ACCELERATED", False)
        monkeypatch.setattr(policy_module, "ACCELERATED", False)
        monkeypatch.setattr(audit_module, "_Pending", audit_module._PyPending)
    else:
        assert audit_module.ACCELERATED, "gateway.session._trail was not built"

    class Discard:
        def write(self, data: object) -> None: ...

        def writelines(self, data: object) -> None: ...

    def msg(t: bytes, body: bytes = b"") -> bytes:
        return t + (len(body) + 4).to_bytes(4, "big") + body

    info = SessionInfo("7f3a9c1e", "github", "repo:acme/etl", "", "etl_loader", "etl",
                       "warehouse", "10.20.30.40:50432", "pgbench")
    events: list[object] = []
    hooks = AuditedHooks(DecisionCache(Policy(BASELINE)), info, {}, events.append)
    relay = Relay(Discard(), Discard(), hooks)
    row = msg(b"D", b"\x00\x01\x00\x00\x00\x04" + b"1234")
    answer = row + msg(b"C", b"SELECT 1\x00") + msg(b"Z", b"I")
    if mode == "prepared":
        relay.client_data(msg(b"P", b"P0_1\x00SELECT abalance FROM pgbench_accounts "
                              b"WHERE aid = $1;\x00\x00\x00") + msg(b"S"))
        relay.server_data(msg(b"1") + msg(b"Z", b"I"))
        client = [msg(b"B", b"\x00P0_1\x00" + b"\x00\x00" * 3)
                  + msg(b"E", b"\x00\x00\x00\x00\x00") + msg(b"S")] * 1000
        server = [msg(b"2") + answer] * 1000
    else:
        client = [msg(b"Q", f"SELECT abalance FROM pgbench_accounts WHERE aid = {n};"
                       .encode() + b"\x00") for n in range(1000)]
        server = [msg(b"T", b"\x00\x01abalance\x00" + b"\x00" * 18) + answer] * 1000

    def run() -> None:
        for c, s in zip(client, server, strict=True):
            relay.client_data(c)
            relay.server_data(s)
        events.clear()

    benchmark(run)
    _record(benchmark, 0, 1000)
