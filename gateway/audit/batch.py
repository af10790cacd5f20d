"""Audit records: the byte layout, the signed JSON payload, and the per-worker hash chain.

This module owns the record format specified in docs/audit-format.md (keep them in step):
both record versions, the bounded decompression of version 2 payloads, and
:class:`Chain`, the state a worker needs to produce the next record of its chain. It does
no I/O: the spool stores records, the verifier checks them.

A record is::

    magic "PGWA" | version | payload length (u32 BE) | payload | key id (16) | signature (64)

The payload is the UTF-8 JSON produced by the writer: stored as is in a version 1 record,
as one zstd frame (level 1) in a version 2 record. Compression exists for throughput: the
record's bytes are hashed, CRC'd, written, fsynced and sent to Kafka, and a
batch of thousands of statement events shrinks about thirtyfold (measured: 8192 events,
~6 MB of JSON, ~150 KB compressed), so every one of those passes gets that much cheaper.

The signature is Ed25519 over ``b"pgwarden-audit-v1\\x00" + SHA-256(header + stored
payload)``: the *bytes* as written (for version 2 the compressed ones), so JSON needs no
canonical form, and a verifier in another language checks the signature first and only
then decompresses and parses, never re-serializing anything and never decompressing bytes
nobody signed. Decompression is bounded by :data:`MAX_PAYLOAD_BYTES` all the same: a
signing key can be stolen, and a verifier must not be exhausted by a small record that
expands without end.

Signing a digest rather than the payload itself is a measured choice: Ed25519 hashes its
message twice with SHA-512, which cost 1.6 ms for a 512-statement (316 KB) batch against
0.2 ms for SHA-256 plus signing 50 bytes, and the SHA-256 state after the payload is
reused for the chain hash, so the payload is hashed exactly once. Every field that means
something (gateway, worker, epoch, sequence number, previous hash, kind, key id, link to
the previous epoch, events) is inside the payload, hence signed; the envelope's key id is
only a hint for finding the key, and the verifier checks it against the payload's.

The chain hash of a record is SHA-256 of the whole record (envelope and signature
included), so a record's successor pins every byte of it.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

import msgspec
import zstandard
from nacl.signing import SigningKey

from gateway.audit.events import SCHEMA_VERSION, Event
from gateway.audit.keys import KEY_ID_BYTES, key_id

if TYPE_CHECKING:
    from gateway.audit.pending import EventBuffer

__all__ = [
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "FORMAT_VERSION_PLAIN",
    "FORMAT_VERSION_ZSTD",
    "GENESIS_HASH",
    "MAGIC",
    "MAX_PAYLOAD_BYTES",
    "SIGNATURE_BYTES",
    "SIGNATURE_DOMAIN",
    "Batch",
    "BatchHeader",
    "Chain",
    "ChainClosed",
    "Compression",
    "Kind",
    "Link",
    "ParsedRecord",
    "PayloadError",
    "RecordError",
    "SourcedRecord",
    "decode_batch",
    "decode_header",
    "inflate",
    "link_to",
    "parse_record",
    "partition_key",
    "payload_json",
    "record_hash",
    "signed_message",
]

MAGIC = b"PGWA"
#: Record format 1: the payload is stored as JSON text.
FORMAT_VERSION_PLAIN = 1
#: Record format 2: the payload is stored as one zstd frame of that JSON text.
FORMAT_VERSION_ZSTD = 2
#: The record versions this code reads (and can write).
FORMAT_VERSIONS = frozenset({FORMAT_VERSION_PLAIN, FORMAT_VERSION_ZSTD})
#: The version :class:`Chain` writes unless told otherwise.
FORMAT_VERSION = FORMAT_VERSION_ZSTD
#: The most a version 2 payload may decompress to. A pgwarden batch is far below it
#: (8192 statement events are ~6 MB of JSON); the bound is what a verifier needs so that a
#: record made with a stolen key cannot exhaust its memory. docs/audit-format.md states it.
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024
#: zstd level of the payloads pgwarden writes: the fastest regular level. Readers do not
#: care which level or parameters a writer used.
ZSTD_LEVEL = 1
#: With a 128 KiB window and a 1 KiB-entry hash table (level 1 has 512 KiB and 8 KiB
#: entries for a batch's size) the compressor's tables stay in the core's caches: a
#: batch of statement events compresses ~25% faster, and smaller (ratio ~50 against 44),
#: because those events repeat within a few of their neighbours. A reader needs only a
#: 128 KiB window. (benchmarks/RESULTS.md, "zstd parameters".)
ZSTD_WINDOW_LOG = 17
ZSTD_HASH_LOG = 10
SIGNATURE_DOMAIN = b"pgwarden-audit-v1\x00"
SIGNATURE_BYTES = 64
_HEADER = struct.Struct(">4sBI")
HEADER_BYTES = _HEADER.size  # 9
TRAILER_BYTES = KEY_ID_BYTES + SIGNATURE_BYTES  # 80
#: ``prev`` of the first batch of an epoch.
GENESIS_HASH = "0" * 64

Kind = Literal["open", "data", "close"]
#: How a :class:`Chain` stores payloads: ``"zstd"`` (record version 2) or ``"none"`` (1).
Compression = Literal["zstd", "none"]
Hex64 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Hex32 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class RecordError(ValueError):
    """A record's envelope is malformed (the message says how)."""


class PayloadError(RecordError):
    """A version 2 record's stored payload does not decompress to a payload: it is not
    one zstd frame, the frame is corrupt, or it expands beyond the limit."""


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
    """A payload being sealed: the members of :class:`Batch`, encoded with an empty
    events array that :meth:`Chain.seal` fills with the encoded events."""

    events: list[Any]


_COMPRESS_SLICE = 256  # events joined per compressor call (~180 KB of JSON)


def _splice(head: bytes, body: bytes) -> bytes:
    """The payload: ``head`` (the members, with ``"events":[]`` last) with the encoded
    events ``body`` put inside that array."""
    if not head.endswith(b'"events":[]}'):
        raise AssertionError("the payload's last member must be the events array")
    return b"".join((head[:-2], body, b"]}"))


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
    """A record split along its envelope; nothing verified, nothing decompressed yet.

    ``payload`` is the payload *as stored*: JSON in version 1, a zstd frame in version 2
    (:func:`payload_json` gives the JSON of either).
    """

    payload: bytes
    key_id: str  # hex, from the (unsigned) envelope
    signature: bytes
    signed_part: bytes  # header + stored payload: what the signature's digest covers
    version: int = FORMAT_VERSION_PLAIN  # the header's version byte


_encoder = msgspec.json.Encoder()
_batch_decoder = msgspec.json.Decoder(Batch)
_header_decoder = msgspec.json.Decoder(BatchHeader)
_ZSTD_MAGIC = zstandard.FRAME_HEADER  # 28 b5 2f fd
#: Input fed to the streaming decoder per step, for frames that do not declare their size.
#: A zstd block expands to at most 128 KiB and takes at least 4 bytes, so one step yields
#: at most 8 MiB: the limit is overshot by that much at worst before it is noticed.
_STREAM_STEP = 256


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
    """Split a record into stored payload, envelope key id and signature; raise
    RecordError if the envelope is malformed. Decompresses nothing."""
    if len(record) < HEADER_BYTES + TRAILER_BYTES:
        raise RecordError(f"record too short ({len(record)} bytes)")
    magic, version, length = _HEADER.unpack_from(record)
    if magic != MAGIC:
        raise RecordError(f"bad magic {magic!r} (expected {MAGIC!r})")
    if version not in FORMAT_VERSIONS:
        raise RecordError(
            f"unsupported record version {version} (this verifier reads "
            f"{' and '.join(map(str, sorted(FORMAT_VERSIONS)))})"
        )
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
        version,
    )


def inflate(stored: bytes, limit: int | None = None) -> bytes:
    """The JSON of a version 2 stored payload: ``stored`` must be exactly one zstd frame
    (no dictionary, nothing before or after it) that decompresses to at most ``limit``
    bytes (default :data:`MAX_PAYLOAD_BYTES`). Raises :class:`PayloadError` otherwise.

    Memory stays bounded by the limit whatever the frame claims: a declared size is
    checked before anything is allocated, and a frame without one is decompressed in
    small steps, stopping as soon as the output passes the limit.
    """
    if limit is None:
        limit = MAX_PAYLOAD_BYTES
    if not stored.startswith(_ZSTD_MAGIC):
        raise PayloadError(
            f"the stored payload is not a zstd frame: it begins {stored[:4].hex(' ') or '(empty)'}"
            f", not with the zstd magic number {_ZSTD_MAGIC.hex(' ')}"
        )
    try:
        params = zstandard.get_frame_parameters(stored)
    except zstandard.ZstdError as exc:
        raise PayloadError(f"the zstd frame header cannot be read ({exc})") from None
    if params.dict_id:
        raise PayloadError(
            f"the zstd frame needs dictionary {params.dict_id}; payloads are compressed "
            "without one"
        )
    dctx = zstandard.ZstdDecompressor()
    failure = ""
    if params.content_size != zstandard.CONTENTSIZE_UNKNOWN:
        if params.content_size > limit:
            raise PayloadError(
                f"the zstd frame declares a content size of {params.content_size} bytes, "
                f"more than the {limit} bytes a payload may decompress to (refused before "
                "decompressing anything)"
            )
        # Known and within the limit: one call into a buffer of exactly that size (the
        # zstandard binding sizes it by the header, ignoring max_output_size, hence the
        # check above); zstd refuses a frame whose content does not match the declared size.
        try:
            return dctx.decompress(stored, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            # Say precisely what is wrong: step by step, as bounded as ever.
            failure = str(exc)
            dctx = zstandard.ZstdDecompressor()
    out, ended, consumed, error = _stream(dctx, stored, limit)
    if len(out) > limit:
        raise PayloadError(
            f"the zstd frame decompresses to more than the {limit} bytes a payload may "
            f"decompress to (decompression stopped at {len(out)} bytes)"
        )
    if not ended:
        raise PayloadError(
            f"the zstd frame does not decompress ({error or failure or 'it is cut short'})"
        )
    if consumed != len(stored):
        raise PayloadError(
            f"{len(stored) - consumed} bytes follow the zstd frame; a payload is one frame"
        )
    if failure:
        raise PayloadError(f"the zstd frame does not decompress ({failure})")
    return bytes(out)


def _stream(
    dctx: zstandard.ZstdDecompressor, stored: bytes, limit: int
) -> tuple[bytearray, bool, int, str]:
    """Decompress ``stored`` step by step until the frame ends, an error, or the output
    passes ``limit``: (output, whether the frame ended, bytes of input the frame took,
    the error if any)."""
    obj = dctx.decompressobj()
    out = bytearray()
    for start in range(0, len(stored), _STREAM_STEP):
        piece = stored[start : start + _STREAM_STEP]
        try:
            out += obj.decompress(piece)
        except zstandard.ZstdError as exc:
            return out, False, start, str(exc)
        if len(out) > limit:
            return out, False, start + len(piece), ""
        if obj.eof:
            return out, True, start + len(piece) - len(obj.unused_data), ""
    return out, False, len(stored), ""


def payload_prefix(stored: bytes, size: int) -> bytes:
    """Up to about ``size`` bytes of what a version 2 stored payload decompresses to, as
    far as it decompresses: to name a batch whose payload is refused. Never raises."""
    if not stored.startswith(_ZSTD_MAGIC):
        return b""
    return bytes(_stream(zstandard.ZstdDecompressor(), stored, size)[0])


def payload_json(parsed: ParsedRecord) -> bytes:
    """The JSON payload of a parsed record of either version (decompressed, bounded, for
    version 2). Raises :class:`PayloadError`. Whoever does not trust the record's source
    checks its signature first (the verifier does)."""
    if parsed.version == FORMAT_VERSION_ZSTD:
        return inflate(parsed.payload)
    return parsed.payload


def _json_of(payload: bytes | ParsedRecord) -> bytes:
    if isinstance(payload, ParsedRecord):
        return payload_json(payload)
    if payload.startswith(_ZSTD_MAGIC):
        # JSON text never begins with "(" (0x28): this is a stored version 2 payload,
        # whose version only the record's header can vouch for.
        raise msgspec.DecodeError(
            "this is a compressed (version 2) stored payload, not JSON: pass the parsed "
            "record itself, as in decode_batch(parse_record(record))"
        )
    return payload


def decode_batch(payload: bytes | ParsedRecord) -> Batch:
    """The payload as a Batch: JSON bytes, or a record from :func:`parse_record` of either
    version. Raises ``msgspec.ValidationError``/``DecodeError``, or PayloadError."""
    return _batch_decoder.decode(_json_of(payload))


def decode_header(payload: bytes | ParsedRecord) -> BatchHeader:
    """Only the header fields of a payload; takes and raises like :func:`decode_batch`."""
    return _header_decoder.decode(_json_of(payload))


def link_to(record: bytes) -> Link:
    """The link a new epoch's open batch carries to ``record``, the last record of the
    previous epoch (either version). Raises RecordError or msgspec errors if it cannot be
    read."""
    header = decode_header(parse_record(record))
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

    ``compression``: ``"zstd"`` writes version 2 records, ``"none"`` version 1. One chain
    may hold both (the setting can change across a restart).
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
        compression: Compression = "zstd",
    ) -> None:
        if not gateway_id:
            raise ValueError("gateway_id must not be empty")
        if worker_id < 0:
            raise ValueError(f"worker_id must be >= 0, got {worker_id}")
        if compression not in ("zstd", "none"):
            raise ValueError(f"compression must be 'zstd' or 'none', got {compression!r}")
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
        self.compression: Compression = compression
        # One compressor per chain: a chain is sealed by one thread at a time, and the
        # context's buffers are reused from batch to batch. The frame records its content
        # size, so a reader allocates exactly once; no checksum, the signature covers it.
        self._zstd = (
            zstandard.ZstdCompressor(
                compression_params=zstandard.ZstdCompressionParameters.from_level(
                    ZSTD_LEVEL, window_log=ZSTD_WINDOW_LOG, hash_log=ZSTD_HASH_LOG,
                    write_checksum=0, write_content_size=1,
                ),
            )
            if compression == "zstd" else None
        )

    def seal(
        self, events: Sequence[Event | msgspec.Raw | bytes], kind: Kind = "data"
    ) -> bytes:
        """Encode and sign the next batch of the chain; returns the record bytes.

        ``events`` are event Structs, or events already encoded as JSON objects (``bytes``
        or ``msgspec.Raw``: the session audit trail and the writer pass them so)."""
        batch = self._sealing(kind)
        # The events array is spliced into the encoded header members. Most events come
        # encoded already (``bytes`` or ``msgspec.Raw``): the sequence is then joined as
        # it is, without a pass over it in Python. Anything else (event Structs) fails
        # the length sum or the join with TypeError, and the events are encoded first;
        # nothing of the chain has changed by then.
        head = _encoder.encode(batch)
        try:
            version, payload = self._payload(batch, head, events)
        except TypeError:
            encoded = [e if type(e) is bytes else _encoder.encode(e) for e in events]
            version, payload = self._payload(batch, head, encoded)
        return self._record(version, payload, kind)

    def seal_buffer(self, buffer: EventBuffer) -> bytes:
        """Seal the events in ``buffer`` (:class:`gateway.audit.pending.EventBuffer`) as
        the next data batch; returns the record bytes. The buffer is left as it was.

        The same payload as :meth:`seal` of those events, compressed in one pass over
        one contiguous region: the header members are written into the room the buffer
        keeps in front of the events."""
        batch = self._sealing("data")
        head = _encoder.encode(batch)
        if not head.endswith(b'"events":[]}'):
            raise AssertionError("the payload's last member must be the events array")
        size = len(head) + buffer.nbytes
        if self._zstd is not None and size <= MAX_PAYLOAD_BYTES:
            try:
                view = buffer.payload(head[:-2], b"]}")
            except ValueError:  # a header too long for the room: compress in slices
                with buffer.events() as body:
                    version, payload = self._payload(batch, head, [body] if body else [])
            else:
                with view:
                    payload = self._zstd.compress(view)
                version = FORMAT_VERSION_ZSTD
        else:
            with buffer.events() as body:
                version, payload = self._payload(batch, head, [body] if body else [])
        return self._record(version, payload, "data")

    def _sealing(self, kind: Kind) -> _Sealing:
        """The payload members of the next batch, with an empty events array."""
        if self.closed:
            raise ChainClosed(f"epoch {self.epoch} is closed; no batch may follow its close")
        if (kind == "open") != (self.seq == 0):
            raise ValueError(
                "the first batch of an epoch must be 'open', and only the first"
                f" (seq {self.seq}, kind {kind!r})"
            )
        version = FORMAT_VERSION_ZSTD if self._zstd is not None else FORMAT_VERSION_PLAIN
        return _Sealing(
            version=version,
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
            events=[],
        )

    def _record(self, version: int, payload: bytes, kind: Kind) -> bytes:
        """Sign ``payload`` as the next record and advance the chain."""
        header = _HEADER.pack(MAGIC, version, len(payload))
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

    def _payload(
        self, batch: _Sealing, head: bytes, encoded: Sequence[Any]
    ) -> tuple[int, bytes]:
        """(record version, stored payload) of ``batch`` (encoded as ``head``) with the
        encoded events ``encoded`` (``bytes``-like JSON objects)."""
        size = len(head) + sum(map(len, encoded)) + max(len(encoded) - 1, 0)
        if self._zstd is not None and size <= MAX_PAYLOAD_BYTES:
            return FORMAT_VERSION_ZSTD, self._compress(head, encoded, size)
        if self._zstd is not None:
            # Verifiers refuse a version 2 payload beyond the limit, so a batch that
            # large (huge statement texts) is written as version 1, which verifies.
            head = _encoder.encode(
                msgspec.structs.replace(batch, version=FORMAT_VERSION_PLAIN)
            )
        return FORMAT_VERSION_PLAIN, _splice(head, b",".join(encoded))

    def _compress(self, head: bytes, encoded: Sequence[Any], size: int) -> bytes:
        """The zstd frame of ``_splice(head, b",".join(encoded))`` (``size`` bytes),
        compressed a slice of events at a time: the JSON of a full batch is megabytes,
        and building it whole costs more in fresh memory (page faults on every seal) than
        compressing it does."""
        assert self._zstd is not None and head.endswith(b'"events":[]}')
        cobj = self._zstd.compressobj(size=size)
        parts = [cobj.compress(head[:-2])]
        step = _COMPRESS_SLICE
        for i in range(0, len(encoded), step):
            if i:
                parts.append(cobj.compress(b","))
            parts.append(cobj.compress(b",".join(encoded[i : i + step])))
        parts.append(cobj.compress(b"]}"))
        parts.append(cobj.flush())
        return b"".join(parts)
