"""The signed, tamper-evident audit log: the public API for the gateway and for consumers.

A custom SIEM feeder needs little more than::

    from gateway.audit import load_public_keys, read_spool, Verifier

    verifier = Verifier(load_public_keys("/etc/pgwarden/audit-keys/"))
    for batch, event in verifier.events(read_spool("/var/lib/pgwarden/audit")):
        ...  # event is a msgspec Struct (StatementEvent, SessionStartEvent, ...)
    report = verifier.finish()  # report.ok, report.problems

Records from Kafka are verified the same way: wrap each message as
``SourcedRecord(value, "kafka:topic[partition]@offset", key)``.

Package layout: :mod:`.events` (the event schema), :mod:`.keys` (Ed25519 key files and
ids), :mod:`.batch` (record format, chain), :mod:`.spool` (durable local spool),
:mod:`.writer` (the per-worker batcher the server uses), :mod:`.verify` (the verifier),
:mod:`.ecs` (ECS mapping). The format is specified in docs/audit-format.md.
"""

from gateway.audit.batch import (
    Batch,
    BatchHeader,
    Chain,
    Link,
    PayloadError,
    RecordError,
    SourcedRecord,
    decode_batch,
    decode_header,
    parse_record,
    partition_key,
    payload_json,
    record_hash,
)
from gateway.audit.ecs import to_ecs
from gateway.audit.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    ApprovalDecisionEvent,
    ApprovalRequestEvent,
    AuthFailureEvent,
    AuthSuccessEvent,
    Event,
    EventsDroppedEvent,
    PolicyReloadEvent,
    SessionEndEvent,
    SessionStartEvent,
    StatementEvent,
    StatementStartEvent,
    WorkerStartEvent,
    WorkerStopEvent,
)
from gateway.audit.keys import (
    AuditKeyError,
    generate_key,
    key_id,
    load_public_key,
    load_public_keys,
    load_signing_key,
)
from gateway.audit.spool import Spool, SpoolCorrupt, SpooledBatch, SpoolError, read_spool
from gateway.audit.verify import (
    ChainStats,
    Finding,
    Report,
    VerifiedBatch,
    Verifier,
    verify_records,
)
from gateway.audit.writer import AuditWriteError, AuditWriter, WriterStats

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "ApprovalDecisionEvent",
    "ApprovalRequestEvent",
    "AuditKeyError",
    "AuditWriteError",
    "AuditWriter",
    "AuthFailureEvent",
    "AuthSuccessEvent",
    "Batch",
    "BatchHeader",
    "Chain",
    "ChainStats",
    "Event",
    "EventsDroppedEvent",
    "Finding",
    "Link",
    "PayloadError",
    "PolicyReloadEvent",
    "RecordError",
    "Report",
    "SessionEndEvent",
    "SessionStartEvent",
    "SourcedRecord",
    "Spool",
    "SpoolCorrupt",
    "SpoolError",
    "SpooledBatch",
    "StatementEvent",
    "StatementStartEvent",
    "VerifiedBatch",
    "Verifier",
    "WorkerStartEvent",
    "WorkerStopEvent",
    "WriterStats",
    "decode_batch",
    "decode_header",
    "generate_key",
    "key_id",
    "load_public_key",
    "load_public_keys",
    "load_signing_key",
    "parse_record",
    "partition_key",
    "payload_json",
    "read_spool",
    "record_hash",
    "to_ecs",
    "verify_records",
]
