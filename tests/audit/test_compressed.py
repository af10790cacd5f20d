"""Record version 2 (zstd-compressed payloads): round trip, mixing with version 1, and a
verifier that authenticates before it decompresses, and then only within bounds."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zstandard
from nacl.signing import SigningKey

from gateway.audit import (
    AuditWriter,
    Report,
    StatementEvent,
    Verifier,
    decode_batch,
    generate_key,
    key_id,
    parse_record,
    payload_json,
    read_spool,
    record_hash,
    verify_records,
)
from gateway.audit import batch as batch_module
from gateway.audit.batch import (
    FORMAT_VERSION,
    SIGNATURE_DOMAIN,
    Chain,
    PayloadError,
    decode_header,
    inflate,
    link_to,
)
from tests.audit.helpers import (
    GATEWAY,
    audit_config,
    epoch_records,
    events_of,
    flip,
    items,
    kafka_key,
    keys_of,
    statement,
    write_segment,
)
from tests.audit.helpers import spool_dir as chain_dir

KEY = SigningKey(bytes(range(7, 39)))
TRUSTED = keys_of(KEY)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def verify(records: list[bytes], key: bytes | None = None, **options: bool) -> Report:
    return verify_records(items(records, key), TRUSTED, **options)


def problems(report: Report) -> list[str]:
    return [str(p) for p in report.problems]


def stored_of(record: bytes) -> bytes:
    return parse_record(record).payload


def signed(stored: bytes, version: int = 2) -> bytes:
    """A record holding ``stored`` as its payload, validly signed by the trusted KEY: what
    a buggy writer, or whoever stole the key, could produce."""
    head = struct.pack(">4sBI", b"PGWA", version, len(stored))
    signature = KEY.sign(SIGNATURE_DOMAIN + hashlib.sha256(head + stored).digest()).signature
    return head + stored + bytes.fromhex(key_id(KEY.verify_key)) + signature


def resigned(record: bytes, edit: Callable[[bytes], bytes]) -> bytes:
    """``record`` (version 2) with its stored payload edited, then signed again."""
    return signed(edit(stored_of(record)))


# ---------------------------------------------------------------------- writing, reading


def test_version_2_is_the_default_and_its_layout() -> None:
    assert FORMAT_VERSION == 2
    chain = Chain(KEY, GATEWAY, 0)
    record = chain.seal([statement(1)], "open")
    magic, version, length = struct.unpack(">4sBI", record[:9])
    assert (magic, version, len(record)) == (b"PGWA", 2, 89 + length)
    stored = record[9 : 9 + length]
    assert stored.startswith(ZSTD_MAGIC)
    # The signature covers the header and the *compressed* payload, as in version 1.
    message = SIGNATURE_DOMAIN + hashlib.sha256(record[: 9 + length]).digest()
    KEY.verify_key.verify(message, record[-64:])
    assert chain.last_hash == hashlib.sha256(record).hexdigest() == record_hash(record)
    # Level 1, content size in the frame header (a reader allocates once), no checksum.
    params = zstandard.get_frame_parameters(stored)
    assert params.content_size == len(payload_json(parse_record(record)))
    assert not params.has_checksum and params.dict_id == 0
    payload = json.loads(zstandard.ZstdDecompressor().decompress(stored))
    assert payload["version"] == 2 and payload["schema"] == 1 and payload["seq"] == 0
    assert payload["events"][0]["text"] == "SELECT * FROM orders WHERE id = 1"


def test_round_trip_through_seal_and_verify() -> None:
    records = epoch_records(KEY, 4, per_batch=50)
    assert {r[4] for r in records} == {2}
    verifier = Verifier(TRUSTED)
    events = [event for _, event in verifier.events(items(records, kafka_key()))]
    report = verifier.finish()
    assert report.ok and not report.warnings, problems(report)
    assert report.batches == len(records)
    assert events == events_of(records)
    assert sum(isinstance(e, StatementEvent) for e in events) == 4 * 50


def test_compression_shrinks_a_realistic_batch() -> None:
    events = [statement(n) for n in range(2000)]
    plain = Chain(KEY, GATEWAY, 0, compression="none").seal(events, "open")
    packed = Chain(KEY, GATEWAY, 0).seal(events, "open")
    assert len(packed) * 10 < len(plain)
    assert decode_batch(parse_record(packed)).events == decode_batch(parse_record(plain)).events


def test_decode_helpers_read_both_versions_and_say_what_a_bare_frame_is() -> None:
    for compression in ("zstd", "none"):
        record = Chain(KEY, GATEWAY, 4, compression=compression).seal([statement()], "open")
        assert decode_header(parse_record(record)).worker == 4
        assert decode_batch(parse_record(record)).version == record[4]
    with pytest.raises(msgspec.DecodeError, match=r"compressed \(version 2\) stored payload"):
        decode_batch(stored_of(record := Chain(KEY, GATEWAY, 0).seal([], "open")))
    assert decode_batch(payload_json(parse_record(record))).seq == 0


def test_unknown_compression_is_refused() -> None:
    with pytest.raises(ValueError, match="compression must be 'zstd' or 'none'"):
        Chain(KEY, GATEWAY, 0, compression="gzip")  # type: ignore[arg-type]


def test_a_batch_beyond_the_limit_is_written_as_version_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Verifiers would refuse it as version 2: pgwarden must never write what fails.
    monkeypatch.setattr(batch_module, "MAX_PAYLOAD_BYTES", 4096)
    chain = Chain(KEY, GATEWAY, 0)
    records = [chain.seal([statement()], "open"), chain.seal([statement() for _ in range(50)]),
               chain.seal([], "close")]
    assert [r[4] for r in records] == [2, 1, 2]
    assert decode_batch(parse_record(records[1])).version == 1
    assert verify(records).ok


# ---------------------------------------------------------------------- mixed chains


def test_versions_1_and_2_mixed_in_one_chain_verify() -> None:
    first = epoch_records(KEY, 2, compression="none")
    second = epoch_records(KEY, 2, link=link_to(first[-1]))  # link_to a version 1 record
    third = epoch_records(KEY, 1, link=link_to(second[-1]), close=False,
                          compression="none")  # ... and to a version 2 one
    records = first + second + third
    assert [r[4] for r in records] == [1] * 4 + [2] * 4 + [1] * 2
    report = verify(records, kafka_key(), allow_open_tail=True)
    assert report.ok and report.batches == len(records), problems(report)
    assert link_to(second[-1]).hash == record_hash(second[-1])
    assert link_to(second[-1]).closed and link_to(second[-1]).seq == 3


def test_a_writer_whose_config_changed_across_a_restart(tmp_path: Path) -> None:
    key, _ = generate_key(tmp_path / "audit.key")

    async def life(compression: str, texts: list[str]) -> None:
        cfg = audit_config(tmp_path, compression=compression)
        writer = AuditWriter(cfg, GATEWAY, 0, key)
        await writer.start()
        for text in texts:
            writer.emit(statement(text=text))
        await writer.close()

    asyncio.run(life("none", ["SELECT 'one'"] * 10))
    asyncio.run(life("zstd", ["SELECT 'two'"] * 10))
    asyncio.run(life("none", ["SELECT 'three'"] * 3))
    records = [item.record for item in read_spool(tmp_path / "spool")]
    versions = [r[4] for r in records]
    assert set(versions[:3]) == {1} and 2 in versions and versions[-1] == 1
    verifier = Verifier(keys_of(key))
    texts = [e.text for _, e in verifier.events(read_spool(tmp_path / "spool"))
             if isinstance(e, StatementEvent)]
    report = verifier.finish()
    assert report.ok and not report.warnings, problems(report)
    assert texts == ["SELECT 'one'"] * 10 + ["SELECT 'two'"] * 10 + ["SELECT 'three'"] * 3


# ---------------------------------------------------------------------- tampering


def test_a_flipped_byte_in_the_compressed_payload_is_a_bad_signature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = epoch_records(KEY, 3)
    epoch = decode_header(parse_record(records[0])).epoch
    at = 9 + len(stored_of(records[2])) // 2
    tampered = [*records[:2], records[2][:at] + bytes([records[2][at] ^ 1]) + records[2][at + 1:],
                *records[3:]]
    # Nothing unauthenticated is decompressed: count every decompressor made.
    made: list[int] = []
    real = zstandard.ZstdDecompressor

    def counting(*args: Any, **kwargs: Any) -> zstandard.ZstdDecompressor:
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(batch_module.zstandard, "ZstdDecompressor", counting)
    verifier = Verifier(TRUSTED)
    for offset, record in enumerate(tampered):
        before = len(made)
        verifier.feed(record, f"kafka:audit[0]@{offset}", kafka_key())
        assert (len(made) > before) == (offset != 2)  # authentic ones only
    report = verifier.finish()

    # One problem, as precise as for version 1: the container names the chain, and the
    # record's position (between seq 1 and seq 3 of that chain) names the batch.
    [problem] = problems(report)
    assert problem.startswith(
        f"problem: {GATEWAY}/worker-0 epoch {epoch} seq 2 (kafka:audit[0]@2): bad signature: "
        f"the record was altered after it was signed by key {key_id(KEY.verify_key)}"
    )
    assert "never decompressed before it is authenticated" in problem
    assert "by its position in its chain's container it is batch 2" in problem
    assert report.batches == len(records) - 1


def test_tampered_records_of_interleaved_chains_are_each_named() -> None:
    # Two chains in one input (a topic read partition by partition would not interleave;
    # a merged stream does): each rejected record is placed in its own chain only.
    zero, one = epoch_records(KEY, 3, worker=0), epoch_records(KEY, 3, worker=1)
    zero[2] = flip(zero[2], stored_of(zero[2])[30:40])
    one[1] = flip(one[1], stored_of(one[1])[30:40])
    stream = [
        *(item for pair in zip(items(zero, kafka_key(0)), items(one, kafka_key(1)),
                               strict=True) for item in pair)
    ]
    report = verify_records(stream, TRUSTED)
    named = sorted((p.worker, p.seq) for p in report.problems)
    assert named == [(0, 2), (1, 1)], problems(report)
    assert all("bad signature" in p.message and "by its position" in p.message
               for p in report.problems)


def test_a_tampered_record_without_a_container_key_is_named_by_its_source() -> None:
    records = epoch_records(KEY, 3)
    records[2] = flip(records[2], stored_of(records[2])[20:30])
    bad, gap = verify(records).problems
    assert (bad.gateway, bad.epoch, bad.seq, bad.source) == (None, None, None, "test[0]@2")
    assert "bad signature" in bad.message and "is not read" in bad.message
    assert gap.seq == 2 and "batch 2 is missing between seq 1" in gap.message
    assert "the rejected record(s) at test[0]@2, whose batch could not be named" in gap.message


def test_a_tampered_record_in_a_spool_is_named_by_directory_and_position(
    tmp_path: Path,
) -> None:
    records = epoch_records(KEY, 3)
    records[1] = flip(records[1], stored_of(records[1])[12:20])
    segment = write_segment(chain_dir(tmp_path), records)
    [problem] = verify_records(read_spool(tmp_path), TRUSTED).problems
    assert (problem.gateway, problem.worker, problem.seq) == (GATEWAY, 0, 1)
    assert problem.source.startswith(f"{segment}@") and "bad signature" in problem.message


def test_a_payload_version_that_contradicts_the_header() -> None:
    records = epoch_records(KEY, 1)

    def claim_version_1(stored: bytes) -> bytes:
        payload = json.loads(inflate(stored))
        payload["version"] = 1
        return zstandard.ZstdCompressor(level=3).compress(json.dumps(payload).encode())

    records[1] = resigned(records[1], claim_version_1)
    [problem] = problems(verify(records, kafka_key()))
    assert " seq 1 (test[0]@1)" in problem
    assert "the payload's version member is 1, but the record's header says version 2" in problem


def test_writers_may_use_any_level_and_frame_options() -> None:
    original = epoch_records(KEY, 2)
    for options in ({"level": 19}, {"level": -5, "write_content_size": False},
                    {"level": 3, "write_checksum": True}):
        compress = zstandard.ZstdCompressor(**options).compress  # type: ignore[arg-type]
        records: list[bytes] = []
        prev = "0" * 64
        for record in original:
            # The same batches as another writer would have compressed, signed, chained.
            payload = json.loads(inflate(stored_of(record)))
            payload["prev"] = prev
            records.append(signed(compress(json.dumps(payload).encode())))
            prev = record_hash(records[-1])
        assert verify(records).ok, (options, problems(verify(records)))
        assert events_of(records) == events_of(original)


# ---------------------------------------------------------------------- corrupt frames


def _events_json(record: bytes) -> bytes:
    return inflate(stored_of(record))


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated": (lambda s: s[:-7], "does not decompress"),
    "trailing bytes": (lambda s: s + b"junk", "4 bytes follow the zstd frame"),
    "second frame": (lambda s: s + s, "bytes follow the zstd frame"),
    "plain json": (lambda s: inflate(s), "is not a zstd frame: it begins 7b 22 76 65"),
    "empty": (lambda s: b"", "is not a zstd frame: it begins (empty)"),
    "bad header": (lambda s: ZSTD_MAGIC + b"\xff", "frame header cannot be read"),
    "garbage blocks": (lambda s: s[:6] + bytes(range(256)) * 2, "does not decompress"),
    # Dictionary_ID_flag set in the (single-segment) frame header, dictionary id 7.
    "dictionary": (lambda s: s[:4] + bytes([s[4] | 1, 7]) + s[5:], "needs dictionary 7"),
    "unknown size, truncated": (
        lambda s: zstandard.ZstdCompressor(write_content_size=False).compress(inflate(s))[:-5],
        "does not decompress",
    ),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_signed_but_corrupt_frame_is_a_precise_problem(corruption: str) -> None:
    edit, expected = CORRUPTIONS[corruption]
    records = epoch_records(KEY, 3)
    records[2] = resigned(records[2], edit)
    with pytest.raises(PayloadError, match=re.escape(expected)):
        inflate(stored_of(records[2]))
    report = verify(records, kafka_key())
    [problem] = problems(report)
    assert " seq 2 (test[0]@2): the signed payload cannot be read, the batch is refused" in (
        problem
    )
    assert expected in problem
    assert report.batches == len(records) - 1


def test_a_corrupt_frame_whose_header_members_decompress_is_named_by_them() -> None:
    # The first block (header members and a few events) decompresses; a later one is cut.
    chain = Chain(KEY, GATEWAY, 0)
    events = [statement(text=f"SELECT {n} -- " + "x" * (n % 97)) for n in range(4000)]
    records = [chain.seal([statement()], "open"), chain.seal(events)]
    stored = zstandard.ZstdCompressor(write_content_size=False).compress(_events_json(records[1]))
    record = signed(stored[: len(stored) * 3 // 4])
    report = verify_records(
        [*items(records[:1]), *items([record])], TRUSTED, allow_open_tail=True  # no key
    )
    [problem] = report.problems
    assert problem.seq == 1 and problem.epoch == chain.epoch
    assert "(named by the beginning of its payload)" in problem.message


# ---------------------------------------------------------------------- decompression bombs


def test_a_declared_size_beyond_256_mib_is_refused_before_decompressing() -> None:
    # A hand-made frame header: Frame_Content_Size 2**40 bytes (8-byte field), window
    # 1 KiB, then an RLE block. Nothing is allocated for it.
    frame = ZSTD_MAGIC + b"\xc0\x00" + (1 << 40).to_bytes(8, "little") + b"\x03\x20\x00\x00"
    assert zstandard.get_frame_parameters(frame).content_size == 1 << 40
    records = epoch_records(KEY, 2)
    records[1] = signed(frame)
    [problem] = problems(verify(records, kafka_key()))
    assert f"declares a content size of {1 << 40} bytes, more than the 268435456 bytes" in (
        problem
    )
    assert " seq 1 (test[0]@1)" in problem  # named by position


@pytest.mark.parametrize("declared", [True, False])
def test_a_signed_decompression_bomb_is_refused(
    monkeypatch: pytest.MonkeyPatch, declared: bool
) -> None:
    limit = 64 * 1024
    records = epoch_records(KEY, 2)
    # A real batch whose JSON (a statement of 1 MiB of spaces) expands far past the limit.
    payload = json.loads(_events_json(records[1]))
    payload["events"][0]["text"] = " " * (1 << 20)
    text = json.dumps(payload).encode()
    bomb = zstandard.ZstdCompressor(write_content_size=declared).compress(text)
    assert len(bomb) < 2048 < limit < len(text)
    records[1] = signed(bomb)
    monkeypatch.setattr(batch_module, "MAX_PAYLOAD_BYTES", limit)
    report = verify(records)  # no container key: named by the payload's beginning
    [problem] = problems(report)
    if declared:
        assert f"declares a content size of {len(text)} bytes, more than the {limit}" in problem
        assert "(refused before decompressing anything)" in problem
    else:
        assert f"decompresses to more than the {limit} bytes a payload may" in problem
        assert "(decompression stopped at " in problem
    assert f"epoch {decode_header(parse_record(records[0])).epoch} seq 1 (test[0]@1)" in problem
    assert report.batches == len(records) - 1


def test_streaming_output_stays_near_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # 64 MiB of zeros in a frame of a few KB without a declared size: refused after at
    # most the limit plus one step's output.
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20))
    seen: list[int] = []
    real = batch_module._stream

    def spy(dctx: Any, stored: bytes, limit: int) -> Any:
        result = real(dctx, stored, limit)
        seen.append(len(result[0]))
        return result

    monkeypatch.setattr(batch_module, "_stream", spy)
    with pytest.raises(PayloadError, match="decompresses to more than the 1048576 bytes"):
        inflate(bomb, 1 << 20)
    assert (1 << 20) < seen[0] <= (1 << 20) + (8 << 20)
