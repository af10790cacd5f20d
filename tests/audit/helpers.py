"""Builders shared by the audit tests: keys, events, whole chains, tampered spools."""

from __future__ import annotations

import contextlib
import itertools
import resource
import signal
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from gateway.audit.batch import Chain, Compression, Link, SourcedRecord, link_to, partition_key
from gateway.audit.events import (
    Event,
    SessionStartEvent,
    StatementEvent,
    WorkerStartEvent,
    WorkerStopEvent,
)
from gateway.audit.keys import key_id
from gateway.audit.spool import SEGMENT_MAGIC, Spool, chain_directory
from gateway.config import AuditConfig

GATEWAY = "gw-test"
_counter = itertools.count()


def statement(n: int | None = None, **fields: object) -> StatementEvent:
    """A realistic statement event; ``fields`` override."""
    n = next(_counter) if n is None else n
    now = time.time_ns()
    values: dict[str, object] = dict(
        at=now, id=f"s1:{n}", session_id="s1", start=now - 150_000, end=now,
        issuer="github", subject="repo:acme/etl:ref:refs/heads/main", client_id="",
        role="etl_loader", upstream_user="etl", database="warehouse",
        client_addr="10.1.2.3:50432", application_name="loader",
        protocol="extended", text=f"SELECT * FROM orders WHERE id = {n}",
        fingerprint="a1b2c3d4e5f60718", decision="allow", rows=1, command_tag="SELECT 1",
        duration_us=150, bytes_in=80, bytes_out=310,
    )
    values.update(fields)
    return StatementEvent(**values)  # type: ignore[arg-type]


def session_start() -> SessionStartEvent:
    return SessionStartEvent(
        at=time.time_ns(), session_id="s1", client_addr="10.1.2.3:50432",
        application_name="loader", database="warehouse", user="etl-job", issuer="github",
        subject="repo:acme/etl:ref:refs/heads/main", client_id="", role="etl_loader",
        upstream_user="etl", tls=True,
    )


def epoch_records(
    key: SigningKey,
    batches: int,
    *,
    worker: int = 0,
    gateway: str = GATEWAY,
    link: Link | None = None,
    close: bool = True,
    per_batch: int = 3,
    compression: Compression = "zstd",
) -> list[bytes]:
    """One epoch: an open batch, ``batches`` data batches, and (if ``close``) a close.
    ``compression="none"`` makes version 1 records, for tests that edit payload bytes."""
    chain = Chain(key, gateway, worker, link=link, compression=compression)
    records = [chain.seal([WorkerStartEvent(at=time.time_ns(), pid=1, version="test")], "open")]
    for _ in range(batches):
        records.append(chain.seal([statement() for _ in range(per_batch)]))
    if close:
        records.append(
            chain.seal([WorkerStopEvent(at=time.time_ns(), pid=1, reason="test", events=0)],
                       "close")
        )
    return records


def two_epochs(key: SigningKey, *, first_closed: bool = True) -> tuple[list[bytes], list[bytes]]:
    first = epoch_records(key, 3, close=first_closed)
    second = epoch_records(key, 2, link=link_to(first[-1]))
    return first, second


def items(records: list[bytes], key: bytes | None = None) -> Iterator[SourcedRecord]:
    """Records as a transport would deliver them, numbered like Kafka offsets."""
    for offset, record in enumerate(records):
        yield SourcedRecord(record, f"test[0]@{offset}", key)


def kafka_key(worker: int = 0, gateway: str = GATEWAY) -> bytes:
    return partition_key(gateway, worker)


def flip(record: bytes, needle: bytes) -> bytes:
    """``record`` with one byte changed inside the first occurrence of ``needle``."""
    at = record.index(needle)
    return record[:at] + bytes([record[at] ^ 0x01]) + record[at + 1 :]


def frame(record: bytes) -> bytes:
    """A spool frame with a correct CRC (what an attacker with disk access writes)."""
    return struct.pack(">II", len(record), zlib.crc32(record)) + record


def write_segment(directory: Path, records: list[bytes], base: int = 0) -> Path:
    """A spool segment holding ``records``, written by hand."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{base:020d}.seg"
    path.write_bytes(SEGMENT_MAGIC + b"".join(frame(r) for r in records))
    return path


def spool_dir(root: Path, worker: int = 0, gateway: str = GATEWAY) -> Path:
    return chain_directory(root, gateway, worker)


def open_spool(root: Path, worker: int = 0, **options: object) -> Spool:
    return Spool(root, GATEWAY, worker, **options)  # type: ignore[arg-type]


def audit_config(tmp_path: Path, **options: object) -> AuditConfig:
    values: dict[str, object] = dict(
        spool_dir=str(tmp_path / "spool"), signing_key_file=str(tmp_path / "audit.key"),
        flush_events=8, flush_interval=0.02, segment_bytes=64 * 1024,
        spool_max_bytes=16 << 20,
    )
    values.update(options)
    return AuditConfig(**values)  # type: ignore[arg-type]


def keys_of(*signing_keys: SigningKey) -> dict[str, VerifyKey]:
    return {key_id(k.verify_key): k.verify_key for k in signing_keys}


def events_of(records: list[bytes]) -> list[Event]:
    from gateway.audit.batch import decode_batch, parse_record

    return [e for r in records for e in decode_batch(parse_record(r)).events]


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Make writes past ``limit`` bytes fail with EFBIG (a full disk, for real)."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
