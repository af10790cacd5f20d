"""The verifier against real attacks: every tampering is caught and named precisely."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from gateway.audit import (
    Report,
    SourcedRecord,
    StatementEvent,
    Verifier,
    decode_batch,
    key_id,
    parse_record,
    read_spool,
    record_hash,
    verify_records,
)
from gateway.audit.batch import SIGNATURE_DOMAIN, Chain, link_to, payload_json
from gateway.audit.batch import decode_header as header_of
from gateway.audit.keys import KEY_ID_BYTES
from tests.audit.helpers import (
    GATEWAY,
    epoch_records,
    flip,
    frame,
    items,
    kafka_key,
    keys_of,
    spool_dir,
    statement,
    two_epochs,
    write_segment,
)

KEY = SigningKey(bytes(range(3, 35)))
OTHER = SigningKey(bytes(range(4, 36)))  # also trusted
STRANGER = SigningKey(bytes(range(5, 37)))  # not trusted
TRUSTED = keys_of(KEY, OTHER)


def verify(records: list[bytes], **options: bool) -> Report:
    return verify_records(items(records), TRUSTED, **options)


def epoch_of(record: bytes) -> str:
    return header_of(parse_record(record)).epoch


def only_problem(report: Report) -> str:
    assert len(report.problems) == 1, [str(p) for p in report.problems]
    return str(report.problems[0])


def test_an_untouched_log_verifies_and_yields_events_in_order() -> None:
    first, second = two_epochs(KEY)
    report = verify(first + second)
    assert report.ok and not report.warnings, report.problems + report.warnings
    assert report.batches == len(first) + len(second)
    verifier = Verifier(TRUSTED)
    events = [event for _, event in verifier.events(items(first + second))]
    assert verifier.finish().ok
    statements = [e for e in events if isinstance(e, StatementEvent)]
    assert len(statements) == (3 + 2) * 3
    assert [e.at for e in statements] == sorted(e.at for e in statements)


def test_a_flipped_byte_in_an_event() -> None:
    # Version 1: the payload is readable, so the rejected record is named as it claims.
    # (Version 2 tampering: test_compressed.py.)
    records = epoch_records(KEY, 3, compression="none")
    records[2] = flip(records[2], b"SELECT * FROM orders")
    report = verify(records)
    message = only_problem(report)
    assert f"epoch {epoch_of(records[0])} seq 2 (test[0]@2)" in message
    assert "bad signature: the record was altered after it was signed" in message


def test_a_flipped_byte_on_disk_is_caught_by_crc_and_signature(tmp_path: Path) -> None:
    records = epoch_records(KEY, 3, compression="none")
    segment = write_segment(spool_dir(tmp_path), records)
    data = bytearray(segment.read_bytes())
    data[data.index(b"SELECT * FROM orders")] ^= 1
    segment.write_bytes(bytes(data))
    report = verify_records(read_spool(tmp_path), TRUSTED)
    crc, signature = report.problems
    assert "CRC-32 mismatch" in crc.message and crc.source.startswith(str(segment))
    assert "bad signature" in signature.message and signature.seq is not None


def test_a_dropped_batch() -> None:
    records = epoch_records(KEY, 4)
    del records[2]
    message = only_problem(verify(records))
    assert "seq 2" in message
    assert "batch 2 is missing between seq 1 (read at test[0]@1) and seq 3" in message


def test_reordered_batches() -> None:
    records = epoch_records(KEY, 4)
    records[2], records[3] = records[3], records[2]
    message = only_problem(verify(records))
    assert "seq 2 (test[0]@3)" in message
    assert "out of order: arrives after seq 3 of the same epoch (read at test[0]@2)" in message


def test_an_exact_replay_is_dropped_and_counted_not_an_error() -> None:
    records = epoch_records(KEY, 4)
    replayed = [*records[:4], records[1], *records[4:]]
    report = verify(replayed)
    assert report.ok, report.problems
    assert report.duplicates == 1 and report.batches == len(records)
    [dup] = report.duplicate_list
    assert (dup.epoch, dup.seq, dup.source) == (epoch_of(records[0]), 1, "test[0]@4")
    assert "first read at test[0]@1" in dup.message
    # Its events are not delivered twice.
    verifier = Verifier(TRUSTED)
    events = [e for _, e in verifier.events(items(replayed))]
    assert len(events) == len({(e.at, type(e)) for e in events})


def test_redelivered_ranges_after_a_restart_are_dropped() -> None:
    first, second = two_epochs(KEY)
    # The shipper resent everything after its last persisted ack, across the epoch change.
    delivered = [*first, *second[:2], *first[3:], *second]
    report = verify(delivered)
    assert report.ok and not report.warnings, report.problems + report.warnings
    assert report.duplicates == len(first[3:]) + 2
    assert report.chains[(GATEWAY, 0)].duplicates == report.duplicates


def test_an_old_batch_replayed_into_a_later_epoch() -> None:
    older = epoch_records(KEY, 3)  # an epoch whose records are no longer in the input
    first, second = two_epochs(KEY)
    stream = [*first, *second[:2], older[2], *second[2:]]
    message = only_problem(verify(stream))
    assert f"epoch {epoch_of(older[0])} seq 2 (test[0]@{len(first) + 2})" in message
    assert "whose open batch was never seen, arrives while epoch" in message
    assert f"epoch {epoch_of(second[0])} is current: replayed" in message


def test_a_truncated_tail_epoch_without_close() -> None:
    records = epoch_records(KEY, 4)
    message = only_problem(verify(records[:-2]))
    assert "seq 3 (test[0]@3)" in message
    assert "unclosed (worker stopped without closing)" in message
    # A live gateway may be verified with --allow-open: then it is a warning.
    report = verify(records[:-2], allow_open_tail=True)
    assert report.ok and "still running" in report.warnings[0].message


def test_a_truncated_epoch_is_proven_by_the_next_epochs_link() -> None:
    first, second = two_epochs(KEY)
    report = verify(first[:-2] + second)  # seq 3 and the close batch cut
    messages = [str(p) for p in report.problems]
    assert any(
        "truncated epoch: the link says epoch" in m and "batches 3..4 are missing" in m
        for m in messages
    ), messages
    assert any("unclosed (worker stopped without closing), and the next epoch" in m
               for m in messages)


def test_a_crash_is_a_warning_when_the_successor_confirms_the_end() -> None:
    first, second = two_epochs(KEY, first_closed=False)  # kill -9
    report = verify(first + second)
    assert report.ok, report.problems
    [warning] = report.warnings
    assert warning.epoch == epoch_of(first[0]) and warning.seq == len(first) - 1
    assert "unclosed (worker stopped without closing)" in warning.message
    assert "confirms seq 3 was its last batch, so nothing is missing" in warning.message


def test_a_batch_signed_with_an_unknown_key() -> None:
    genuine = epoch_records(KEY, 2, compression="none")
    forged = Chain(STRANGER, GATEWAY, 0, compression="none")
    forged.epoch = epoch_of(genuine[0])
    forged.seal([statement()], "open")  # advance to seq 1
    forged.last_hash = record_hash(genuine[0])
    records = list(genuine)
    records[1] = forged.seal([statement(text="SELECT 'forged'")])
    report = verify(records)
    # One problem: the gap the rejected record leaves is that record, not a second finding.
    message = only_problem(report)
    assert f"signed with unknown key {key_id(STRANGER.verify_key)}" in message
    assert "seq 1 (test[0]@1)" in message
    assert "as its unverified payload claims" in message
    # A gap nobody claims is still reported.
    assert "batch 2 is missing" in only_problem(verify(genuine[:2] + genuine[3:]))


def test_a_forged_envelope_key_id_another_trusted_key() -> None:
    records = epoch_records(KEY, 2)
    envelope_key = len(records[1]) - 64 - KEY_ID_BYTES
    other = bytes.fromhex(key_id(OTHER.verify_key))
    records[1] = records[1][:envelope_key] + other + records[1][envelope_key + KEY_ID_BYTES :]
    forged, chain = verify(records).problems
    assert (forged.seq, forged.source) == (1, "test[0]@1")
    assert f"the envelope names key {key_id(OTHER.verify_key)}" in forged.message
    signer = key_id(KEY.verify_key)
    assert f"signed by key {signer}; the unsigned envelope was edited" in forged.message
    # The chain hash covers the whole record, envelope included: the edit breaks the link.
    assert chain.seq == 2 and "broken chain: prev" in chain.message


def test_a_forged_envelope_key_id_unknown_key() -> None:
    records = epoch_records(KEY, 2)
    envelope_key = len(records[1]) - 64 - KEY_ID_BYTES
    records[1] = records[1][:envelope_key] + b"\xaa" * 16 + records[1][envelope_key + 16 :]
    forged, chain = verify(records).problems
    assert f"the envelope names key {'aa' * 16} (unknown)" in forged.message
    assert chain.seq == 2 and "broken chain" in chain.message


def test_a_payload_claiming_another_key_than_its_signer() -> None:
    chain = Chain(OTHER, GATEWAY, 0)
    chain.key_id = key_id(KEY.verify_key)  # the payload will claim KEY...
    chain._key_id_raw = bytes.fromhex(key_id(OTHER.verify_key))  # ...signed by OTHER
    records = [chain.seal([statement()], "open"), chain.seal([], "close")]
    report = verify(records)
    assert len(report.problems) == 2
    assert all(
        f"the signed payload names key {key_id(KEY.verify_key)}, but the record is signed by key "
        f"{key_id(OTHER.verify_key)}" in p.message
        for p in report.problems
    )


def test_an_edited_kafka_message_key() -> None:
    records = epoch_records(KEY, 2)
    delivered = list(items(records, kafka_key(0)))
    delivered[1] = delivered[1]._replace(key=kafka_key(7))
    verifier = Verifier(TRUSTED)
    for item in delivered:
        verifier.feed(item)
    message = only_problem(verifier.finish())
    assert "seq 1 (test[0]@1)" in message
    assert "chain key b'gw-test:7' disagrees with the signed payload (b'gw-test:0')" in message


def test_a_record_moved_into_another_workers_spool(tmp_path: Path) -> None:
    records = epoch_records(KEY, 2)
    write_segment(spool_dir(tmp_path, 0), records[:1] + records[2:])
    write_segment(spool_dir(tmp_path, 1), records[1:2])
    report = verify_records(read_spool(tmp_path), TRUSTED)
    problems = [str(p) for p in report.problems]
    assert any("chain key b'gw-test:1' disagrees with the signed payload" in p for p in problems)
    # The signed payload decides which chain it belongs to, so that chain is complete.
    assert report.chains[(GATEWAY, 0)].batches == len(records)
    assert len(problems) == 2  # the moved record, and the out-of-order arrival it causes


def test_a_conflicting_record_for_a_verified_position() -> None:
    records = epoch_records(KEY, 2)
    twin = Chain(KEY, GATEWAY, 0)
    twin.epoch = epoch_of(records[0])
    twin.seal([statement()], "open")
    twin.last_hash = record_hash(records[0])
    rival = twin.seal([statement(text="SELECT 'rival'")])  # validly signed, same place
    message = only_problem(verify([*records[:2], rival, *records[2:]]))
    assert "conflicting batch: a different record for the same epoch and seq" in message
    assert "seq 1 (test[0]@2)" in message and "verified at test[0]@1" in message


def test_a_restart_without_the_previous_spool_is_reported() -> None:
    first = epoch_records(KEY, 2)
    second = epoch_records(KEY, 2)  # no link: the spool was wiped
    message = only_problem(verify(first + second))
    assert "opens without a link to the previous epoch" in message


def test_an_epoch_missing_between_two_others() -> None:
    first, second = two_epochs(KEY)
    third = epoch_records(KEY, 1, link=link_to(second[-1]))
    message = only_problem(verify(first + third))
    assert "an epoch not in the input: a whole epoch is missing" in message


def test_history_older_than_the_input_is_a_warning() -> None:
    _, second = two_epochs(KEY)
    report = verify(second)
    assert report.ok
    assert "history before this epoch is not in the input" in report.warnings[0].message
    report = verify(second[2:], partial_history=True)
    assert report.ok and "starts in the middle of epoch" in report.warnings[0].message
    assert not verify(second[2:]).ok


def resign(record: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """``record`` with its payload edited and signed again by the trusted KEY: authentic
    but malformed, as a buggy writer would produce."""
    payload = json.loads(payload_json(parse_record(record)))
    payload["version"] = 1  # the record is rewritten as version 1
    edit(payload)
    body = json.dumps(payload).encode()
    head = struct.pack(">4sBI", b"PGWA", 1, len(body))
    signature = KEY.sign(SIGNATURE_DOMAIN + hashlib.sha256(head + body).digest()).signature
    return head + body + bytes.fromhex(key_id(KEY.verify_key)) + signature


def test_a_signed_event_that_breaks_the_schema_leaves_the_rest_of_its_batch() -> None:
    chain = Chain(KEY, GATEWAY, 0)
    records = [
        chain.seal([statement()], "open"),
        # A writer bug, not an attack: msgspec encodes whatever the field holds.
        chain.seal([statement(), statement(client_addr=None), statement()]),
        chain.seal([], "close"),
    ]
    verifier = Verifier(TRUSTED)
    events = [e for _, e in verifier.events(items(records))]
    message = only_problem(verifier.finish())
    assert "seq 1 (test[0]@1): event 1 of this batch does not follow event schema 1" in message
    assert "client_addr" in message
    assert sum(isinstance(e, StatementEvent) for e in events) == 3


def test_a_signed_payload_that_breaks_the_record_format() -> None:
    records = epoch_records(KEY, 1)
    records[1] = resign(records[1], lambda payload: payload.update(seq="one"))
    problems = [str(p) for p in verify(records).problems]
    assert "the signed payload does not follow the record format" in problems[0]
    assert "seq" in problems[0]
    records[1] = resign(records[1], lambda payload: payload.update(seq=1, schema=2))
    assert "unsupported payload version 1 / event schema 2" in str(verify(records).problems[0])


def test_garbage_between_records() -> None:
    records = epoch_records(KEY, 1)
    report = verify_records(
        [*items(records[:1]), SourcedRecord(b"not a record at all" * 8, "x@1"),
         *items(records[1:])],
        TRUSTED,
    )
    assert "malformed record: bad magic" in only_problem(report)


def test_spool_framing_of_a_whole_chain(tmp_path: Path) -> None:
    records = epoch_records(KEY, 2)
    segment = write_segment(spool_dir(tmp_path), records)
    with open(segment, "ab") as fh:
        fh.write(frame(records[0])[:30])  # a torn write at the end of a live spool
    report = verify_records(read_spool(tmp_path), TRUSTED)
    assert report.ok and "incomplete write at the end" in report.warnings[0].message
    assert decode_batch(parse_record(records[0])).seq == 0
