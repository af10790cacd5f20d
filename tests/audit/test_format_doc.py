"""docs/audit-format.md stays true: its worked example is what the code produces, and an
independent reading of the spec (written here from the page, not from the code) verifies
real records."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import zstandard
from nacl.signing import SigningKey, VerifyKey

from gateway.audit import verify_records
from gateway.audit.batch import Chain, link_to, parse_record, payload_json
from gateway.audit.events import WorkerStartEvent
from gateway.audit.keys import key_id, public_key_pem
from tests.audit.helpers import epoch_records

DOC = (Path(__file__).resolve().parents[2] / "docs" / "audit-format.md").read_text()


def example_record() -> tuple[SigningKey, bytes]:
    key = SigningKey(hashlib.sha256(b"pgwarden audit-format example key").digest())
    # The worked example is a version 1 record: its payload can be read in the dump.
    chain = Chain(key, "gw1", 0, epoch="00112233445566778899aabbccddeeff",
                  clock=lambda: 1_700_000_000_000_000_000, compression="none")
    event = WorkerStartEvent(at=1_700_000_000_000_000_000, pid=4242, version="0.1.0")
    return key, chain.seal([event], "open")


def doc_hexdump(which: int = 0) -> bytes:
    """The ``which``-th hex dump of the page (0: the version 1 example, 1: version 2)."""
    dumps = re.findall(r"```text\n(0000  .*?)```", DOC, re.S)
    rows = re.findall(r"^([0-9a-f]{4})  ((?:[0-9a-f]{2} ){0,15}[0-9a-f]{2})", dumps[which], re.M)
    assert rows and rows[0][0] == "0000"
    return bytes.fromhex("".join(row[1].replace(" ", "") for row in rows))


def test_the_worked_example_is_what_the_code_writes() -> None:
    key, record = example_record()
    assert doc_hexdump() == record
    assert bytes(key.verify_key).hex() in DOC
    assert key_id(key.verify_key) in DOC
    assert public_key_pem(key.verify_key).decode().strip() in DOC
    payload = record[9:-80]
    assert payload.decode() in DOC
    assert hashlib.sha256(record[:-80]).hexdigest() in DOC
    signature = record[-64:].hex()
    assert signature[:64] in DOC and signature[64:] in DOC
    assert hashlib.sha256(record).hexdigest() in DOC


def spec_verify(records: list[bytes], public_key: bytes) -> list[dict[str, object]]:
    """A minimal verifier written from the page: layout, signature, chain, epoch rules."""
    vk = VerifyKey(public_key)
    kid = hashlib.sha256(public_key).digest()[:16]
    batches = []
    prev_hash = None
    for record in records:
        magic, version, length = struct.unpack(">4sBI", record[:9])
        assert magic == b"PGWA" and version in (1, 2) and len(record) == 89 + length
        assert record[9 + length : 25 + length] == kid
        # The signature covers the stored bytes: checked before anything is decompressed.
        digest = hashlib.sha256(record[: 9 + length]).digest()
        vk.verify(b"pgwarden-audit-v1\x00" + digest, record[25 + length :])
        stored = record[9 : 9 + length]
        if version == 2:
            # One zstd frame, at most 256 MiB decompressed, nothing after it.
            inflater = zstandard.ZstdDecompressor().decompressobj()
            text = inflater.decompress(stored)
            assert inflater.eof and not inflater.unused_data and len(text) <= 256 << 20
        else:
            text = stored
        payload = json.loads(text)
        assert payload["version"] == version
        assert payload["key_id"] == kid.hex()
        if payload["seq"] == 0:
            assert payload["kind"] == "open" and payload["prev"] == "0" * 64
            if prev_hash is not None:
                assert payload["link"]["hash"] == prev_hash
        else:
            assert payload["prev"] == prev_hash and payload["link"] is None
        prev_hash = hashlib.sha256(record).hexdigest()
        batches.append(payload)
    return batches


def test_an_independent_reading_of_the_spec_verifies_real_records() -> None:
    key = SigningKey.generate()
    # A chain whose writer switched from version 1 to version 2 across a restart.
    first = epoch_records(key, 2, compression="none")
    second = epoch_records(key, 2, link=link_to(first[-1]))
    assert {r[4] for r in first} == {1} and {r[4] for r in second} == {2}
    batches = spec_verify(first + second, bytes(key.verify_key))
    assert [b["kind"] for b in batches] == ["open", "data", "data", "close"] * 2
    link = batches[4]["link"]
    assert isinstance(link, dict) and link["closed"] is True and link["seq"] == 3


def test_the_version_2_example_verifies_and_holds_the_same_batch() -> None:
    key, plain = example_record()
    record = doc_hexdump(1)
    assert len(record) == 297 and record[4] == 2
    assert hashlib.sha256(record[:-80]).hexdigest() in DOC
    signature = record[-64:].hex()
    assert signature[:64] in DOC and signature[64:] in DOC
    assert hashlib.sha256(record).hexdigest() in DOC
    # The independent reading and pgwarden's verifier both accept it ...
    [payload] = spec_verify([record], bytes(key.verify_key))
    assert payload == {**json.loads(plain[9:-80]), "version": 2}
    report = verify_records(
        [record], {key_id(key.verify_key): key.verify_key}, allow_open_tail=True
    )
    assert report.ok and report.batches == 1, report.problems
    # ... and it is what pgwarden writes today (not required: zstd output may change).
    chain = Chain(key, "gw1", 0, epoch="00112233445566778899aabbccddeeff",
                  clock=lambda: 1_700_000_000_000_000_000)
    event = WorkerStartEvent(at=1_700_000_000_000_000_000, pid=4242, version="0.1.0")
    sealed = chain.seal([event], "open")
    assert payload_json(parse_record(sealed)) == payload_json(parse_record(record))


def test_the_doc_states_the_version_2_rules() -> None:
    text = " ".join(DOC.split())
    assert "`0x01` or `0x02`" in text
    assert "268435456" in text and "256 MiB" in text
    assert "before it is authenticated" in text or "before decompressing" in text
