"""Audit records: the byte layout, the signed JSON payload, and the per-worker hash chain.

This module owns the record format specified in docs/audit-format.md (keep them in step)
and :class:`Chain`, the state a worker needs to produce the next record of its chain. It
does no I/O: the spool stores records, the verifier checks them.

A record is::

    magic "PGWA" | version 0x01 | payload length (u32 BE) | payload | key id (16) | signature (64)

The payload is the UTF-8 JSON produced by the writer. The signature is Ed25519 over
``b"pgwarden-audit-v1\\x00" + SHA-256(header + payload)``: the *bytes* as written, so JSON
needs no canonical form, and a verifier in another language checks the signature first
and only then parses, never re-serializing anything. Signing a digest rather than the
payload itself is a measured choice: Ed25519 hashes its message twice with SHA-512, which
cost 1.6 ms for a 512-statement (316 KB) batch against 0.2 ms for SHA-256 plus signing 50
bytes, and the SHA-256 state after the payload is reused for the chain hash, so the
payload is hashed exactly once. Every field that means something (gateway,
worker, epoch, sequence number, previous hash, kind, key id, link to the previous epoch,
events) is inside the payload, hence signed; the envelope's key id is only a hint for
finding the key, and the verifier checks it against the payload's.

The chain hash of a record is SHA-256 of the whole record (envelope and signature
included), so a record's successor pins every byte of it.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from nacl.signing import SigningKey

from gateway.audit.events import SCHEMA_VERSION, Event
from gateway.audit.keys import KEY_ID_BYTES, key_id

__all__ = [
    "FORMAT_VERSION",
    "GENESIS_HASH",
    "MAGIC",
    "SIGNATURE_BYTES",
    "SIGNATURE_DOMAIN",
    "Batch",
    "BatchHeader",
    "Chain",
    "ChainClosed",
    "Kind",
    "Link",
    "ParsedRecord",
    "RecordError",
    "SourcedRecord",
    "decode_batch",
    "decode_header",
    "link_to",
    "parse_record",
    "partition_key",
    "record_hash",
    "signed_message",
]

MAGIC = b"PGWA"
FORMAT_VERSION = 1
SIGNATURE_DOMAIN = b"pgwarden-audit-v1\x00"
SIGNATURE_BYTES = 64
_HEADER = struct.Struct(">4sBI")
HEADER_BYTES = _HEADER.size  # 9
TRAILER_BYTES = KEY_ID_BYTES + SIGNATURE_BYTES  # 80
#: ``prev`` of the first batch of an epoch.
GENESIS_HASH = "0" * 64

Kind = Literal["open", "data", "close"]
Hex64 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Hex32 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class RecordError(ValueError):
    """A record's envelope is malformed (the message says how)."""


class Link(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """In an open batch: the last record of the previous epoch of the same worker slot,
    as found in the spool when the new epoch started."""

    epoch: Hex32
    seq: NonNegative
    hash: Hex64  # SHA-256 of that whole record
    closed: bool  # whether that record was a close batch


class BatchHeader(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """Every payload field except the events (decoding this skips them cheaply)."""

    version: int  # FORMAT_VERSION
    schema: int  # events.SCHEMA_VERSION
    gateway: str
    worker: NonNegative
    epoch: Hex32
    seq: NonNegative
    kind: Kind
    prev: Hex64  # SHA-256 of the previous record of this epoch; GENESIS_HASH at seq 0
    key_id: Hex32
    at: int  # ns since the Unix epoch, when the batch was sealed
    link: Link | None  # only in open batches (null in others)


class Batch(BatchHeader, kw_only=True, frozen=True, gc=False):
    """A whole payload."""

    events: list[Event]


class _Sealing(BatchHeader, kw_only=True, frozen=True, gc=False):
    """A payload being sealed: the same members as :class:`Batch`, whose events may also
    be already encoded (:class:`msgspec.Raw`, as the session audit trail writes them)."""

    events: list[Any]


class SourcedRecord(NamedTuple):
    """A record as a reader found it, for the verifier.

    ``key`` is what the container claims about the chain (a Kafka message key, or the key
    implied by a spool directory's name): unsigned, so the verifier checks it against the
    signed payload. ``error`` is a problem the reader found in the container itself
    (a torn or corrupt spool frame); ``record`` may then be empty. ``tail`` marks an error
    at the very end of a spool, which a crash mid-append leaves behind.
    """

    record: bytes
    source: str  # where: "spool/.../00000000000000000000.seg@1234", "kafka:topic[0]@17"
    key: bytes | None = None
    error: str = ""
    tail: bool = False


class ParsedRecord(NamedTuple):
    """A record split along its envelope; nothing verified yet."""

    payload: bytes
    key_id: str  # hex, from the (unsigned) envelope
    signature: bytes
    signed_part: bytes  # header + payload: what the signature's digest covers


_encoder = msgspec.json.Encoder()
_batch_decoder = msgspec.json.Decoder(Batch)
_header_decoder = msgspec.json.Decoder(BatchHeader)


def signed_message(signed_part: bytes) -> bytes:
    """The bytes the Ed25519 signature covers: the domain tag, then SHA-256 of
    ``signed_part``, the record's header and payload (everything before the key id)."""
    return SIGNATURE_DOMAIN + hashlib.sha256(signed_part).digest()


def record_hash(record: bytes) -> str:
    """Chain hash of a record: hex SHA-256 of all its bytes."""
    return hashlib.sha256(record).hexdigest()


def partition_key(gateway: str, worker: int) -> bytes:
    """The Kafka message key of a worker chain: UTF-8 ``"<gateway>:<worker>"``.

    One key per worker slot, across epochs, so a chain stays in one partition and in
    order. Unambiguous although a gateway id may contain ``:``: the worker is the part
    after the last one.
    """
    return f"{gateway}:{worker}".encode()


def parse_record(record: bytes) -> ParsedRecord:
    """Split a record into payload, envelope key id and signature; raise RecordError if
    the envelope is malformed."""
    if len(record) < HEADER_BYTES + TRAILER_BYTES:
        raise RecordError(f"record too short ({len(record)} bytes)")
    magic, version, length = _HEADER.unpack_from(record)
    if magic != MAGIC:
        raise RecordError(f"bad magic {magic!r} (expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise RecordError(f"unsupported record version {version} (this verifier reads 1)")
    expected = HEADER_BYTES + length + TRAILER_BYTES
    if len(record) != expected:
        raise RecordError(
            f"payload length field says {length} bytes, so the record should be {expected} "
            f"bytes, but it is {len(record)}"
        )
    end = HEADER_BYTES + length
    return ParsedRecord(
        record[HEADER_BYTES:end],
        record[end : end + KEY_ID_BYTES].hex(),
        record[end + KEY_ID_BYTES :],
        record[:end],
    )


def decode_batch(payload: bytes) -> Batch:
    """The payload as a Batch; raises ``msgspec.ValidationError``/``DecodeError``."""
    return _batch_decoder.decode(payload)


def decode_header(payload: bytes) -> BatchHeader:
    """Only the header fields of a payload; raises like :func:`decode_batch`."""
    return _header_decoder.decode(payload)


def link_to(record: bytes) -> Link:
    """The link a new epoch's open batch carries to ``record``, the last record of the
    previous epoch. Raises RecordError or msgspec errors if it cannot be read."""
    header = decode_header(parse_record(record).payload)
    return Link(
        epoch=header.epoch,
        seq=header.seq,
        hash=record_hash(record),
        closed=header.kind == "close",
    )


class ChainClosed(RuntimeError):
    """A batch was sealed after the close batch of the epoch."""


class Chain:
    """One epoch of one worker's chain: seals events into signed, chained records.

    The first batch must be ``"open"`` (carrying ``link``), the last ``"close"``. Sealing
    advances the chain, so every record returned must be stored, in order: a record that
    is sealed and then lost is a gap the verifier will report.
    """

    def __init__(
        self,
        signing_key: SigningKey,
        gateway_id: str,
        worker_id: int,
        *,
        epoch: str | None = None,
        link: Link | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if not gateway_id:
            raise ValueError("gateway_id must not be empty")
        if worker_id < 0:
            raise ValueError(f"worker_id must be >= 0, got {worker_id}")
        self.gateway_id = gateway_id
        self.worker_id = worker_id
        #: 128 random bits as hex: unique per worker start without coordination.
        self.epoch = epoch or secrets.token_hex(16)
        self.link = link
        self.key_id = key_id(signing_key.verify_key)
        self.seq = 0  # of the next batch
        self.last_hash = GENESIS_HASH
        self.closed = False
        self._key = signing_key
        self._key_id_raw = bytes.fromhex(self.key_id)
        self._clock = clock

    def seal(self, events: Sequence[Event | msgspec.Raw], kind: Kind = "data") -> bytes:
        """Encode and sign the next batch of the chain; returns the record bytes."""
        if self.closed:
            raise ChainClosed(f"epoch {self.epoch} is closed; no batch may follow its close")
        if (kind == "open") != (self.seq == 0):
            raise ValueError(
                "the first batch of an epoch must be 'open', and only the first"
                f" (seq {self.seq}, kind {kind!r})"
            )
        batch = _Sealing(
            version=FORMAT_VERSION,
            schema=SCHEMA_VERSION,
            gateway=self.gateway_id,
            worker=self.worker_id,
            epoch=self.epoch,
            seq=self.seq,
            kind=kind,
            prev=self.last_hash,
            key_id=self.key_id,
            at=self._clock(),
            link=self.link if kind == "open" else None,
            events=events if isinstance(events, list) else list(events),
        )
        payload = _encoder.encode(batch)
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(payload))
        hasher = hashlib.sha256(header)
        hasher.update(payload)
        signature = self._key.sign(SIGNATURE_DOMAIN + hasher.digest()).signature
        # SHA-256 of the whole record, continuing from the header + payload state.
        hasher.update(self._key_id_raw)
        hasher.update(signature)
        record = b"".join((header, payload, self._key_id_raw, signature))
        self.last_hash = hasher.hexdigest()
        self.seq += 1
        if kind == "close":
            self.closed = True
        return record
