"""Events and records: schema round trip, byte layout, signature, chain rules."""

from __future__ import annotations

import hashlib
import json
import struct

import msgspec
import pytest
from nacl.signing import SigningKey

from gateway.audit import (
    EVENT_TYPES,
    ApprovalDecisionEvent,
    ApprovalRequestEvent,
    AuthFailureEvent,
    AuthSuccessEvent,
    Event,
    EventsDroppedEvent,
    PolicyReloadEvent,
    SessionEndEvent,
    StatementStartEvent,
    WorkerStartEvent,
    WorkerStopEvent,
    decode_batch,
    key_id,
    parse_record,
    partition_key,
    record_hash,
)
from gateway.audit.batch import (
    GENESIS_HASH,
    SIGNATURE_DOMAIN,
    Chain,
    ChainClosed,
    Compression,
    RecordError,
    decode_header,
    link_to,
    payload_json,
)
from tests.audit.helpers import GATEWAY, epoch_records, session_start, statement

KEY = SigningKey(bytes(range(32)))


def every_event_type() -> list[Event]:
    return [
        WorkerStartEvent(at=1, pid=10, version="0.1.0"),
        WorkerStopEvent(at=2, pid=10, reason="shutdown", events=7),
        session_start(),
        SessionEndEvent(at=3, session_id="s1", reason="terminate", statements=4,
                        bytes_in=100, bytes_out=2000, duration=1.5),
        AuthSuccessEvent(at=4, session_id="s1", client_addr="[::1]:5000", user="job",
                         method="oidc", issuer="github", subject="repo:a/b", client_id="c",
                         role="r"),
        AuthFailureEvent(at=5, reason="token expired", user="job", method="oidc",
                         client_addr="10.0.0.1:1"),
        statement(1, parameters=["42", None], masked_columns=["public.users.ssn"],
                  rule_ids=["no-pii"], observed_rule_ids=["obs"], rows=None),
        StatementStartEvent(at=1, id="s1:1", session_id="s1", protocol="simple",
                            text="SELECT 1", fingerprint="ab", decision="allow",
                            rule_ids=["default"]),
        ApprovalRequestEvent(at=6, approval_id="a1", session_id="s1", statement_id="s1:2",
                             issuer="github", subject="x", client_id="", role="r",
                             database="d", text="DROP TABLE t", fingerprint="ff",
                             rule_ids=["baseline.drop"]),
        ApprovalDecisionEvent(at=7, approval_id="a1", approver="alice@example.com",
                              decision="approved", justification="ticket 12"),
        PolicyReloadEvent(at=8, version="v2", ok=False, error="rules[0].id: empty"),
        EventsDroppedEvent(at=9, count=3, first_at=5, last_at=8),
    ]


@pytest.mark.parametrize(("compression", "version"), [("zstd", 2), ("none", 1)])
def test_every_event_type_round_trips_through_a_signed_record(
    compression: Compression, version: int
) -> None:
    events = every_event_type()
    assert {type(e) for e in events} == set(EVENT_TYPES.values())
    chain = Chain(KEY, GATEWAY, 3, compression=compression)
    record = chain.seal(events, "open")
    assert record[4] == version == parse_record(record).version
    batch = decode_batch(parse_record(record))
    assert batch.events == events
    assert (batch.gateway, batch.worker, batch.seq, batch.kind) == (GATEWAY, 3, 0, "open")
    assert batch.version == version and batch.schema == 1
    assert batch.key_id == key_id(KEY.verify_key)


def test_events_are_tagged_json_objects_with_integer_nanoseconds() -> None:
    record = Chain(KEY, GATEWAY, 0).seal([statement(5)], "open")
    payload = json.loads(payload_json(parse_record(record)))
    [event] = payload["events"]
    assert event["type"] == "statement"
    assert isinstance(event["at"], int) and isinstance(event["start"], int)
    assert event["text"] == "SELECT * FROM orders WHERE id = 5"
    assert event["rows"] == 1 and event["parameters"] is None


def test_record_layout_and_signature() -> None:
    # Version 1 (version 2's layout: test_compressed.py).
    chain = Chain(KEY, GATEWAY, 0, compression="none")
    record = chain.seal([statement()], "open")
    magic, version, length = struct.unpack(">4sBI", record[:9])
    assert (magic, version) == (b"PGWA", 1)
    assert len(record) == 9 + length + 16 + 64
    payload = record[9 : 9 + length]
    assert record[9 + length : 9 + length + 16] == bytes.fromhex(key_id(KEY.verify_key))
    signature = record[-64:]
    # The signature covers the domain tag and SHA-256 of header + payload.
    message = SIGNATURE_DOMAIN + hashlib.sha256(record[: 9 + length]).digest()
    KEY.verify_key.verify(message, signature)
    assert json.loads(payload)["prev"] == GENESIS_HASH
    # The chain hash is SHA-256 of the whole record.
    assert chain.last_hash == hashlib.sha256(record).hexdigest() == record_hash(record)


def test_chain_links_each_batch_to_the_previous_record() -> None:
    records = epoch_records(KEY, 3)
    headers = [decode_header(parse_record(r)) for r in records]
    assert [h.seq for h in headers] == [0, 1, 2, 3, 4]
    assert [h.kind for h in headers] == ["open", "data", "data", "data", "close"]
    assert len({h.epoch for h in headers}) == 1
    for before, header in zip(records, headers[1:], strict=False):
        assert header.prev == record_hash(before)


def test_open_must_come_first_and_nothing_after_close() -> None:
    chain = Chain(KEY, GATEWAY, 0)
    with pytest.raises(ValueError, match="first batch of an epoch must be 'open'"):
        chain.seal([statement()])
    chain.seal([statement()], "open")
    with pytest.raises(ValueError, match="only the first"):
        chain.seal([statement()], "open")
    chain.seal([], "close")
    with pytest.raises(ChainClosed):
        chain.seal([statement()])


def test_epochs_are_random_and_links_name_the_previous_epochs_last_record() -> None:
    first = epoch_records(KEY, 1, close=False)
    link = link_to(first[-1])
    assert (link.seq, link.closed, link.hash) == (1, False, record_hash(first[-1]))
    second = Chain(KEY, GATEWAY, 0, link=link)
    assert second.epoch != decode_header(parse_record(first[0])).epoch
    assert len(second.epoch) == 32
    opened = decode_batch(parse_record(second.seal([], "open")))
    assert opened.link == link
    data = decode_batch(parse_record(second.seal([statement()])))
    assert data.link is None  # only open batches carry the link


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda r: r[:50], "record too short"),
        (lambda r: b"XXXX" + r[4:], "bad magic"),
        (lambda r: r[:4] + b"\x03" + r[5:], "unsupported record version 3"),
        (lambda r: r[:4] + b"\x00" + r[5:], "unsupported record version 0"),
        (lambda r: r + b"\0", "payload length field says"),
        (lambda r: r[:-1], "payload length field says"),
    ],
)
def test_malformed_envelopes_are_named(mangle: object, message: str) -> None:
    record = Chain(KEY, GATEWAY, 0).seal([statement()], "open")
    with pytest.raises(RecordError, match=message):
        parse_record(mangle(record))  # type: ignore[operator]


def test_partition_key_is_per_worker_slot() -> None:
    assert partition_key("gw:1", 3) == b"gw:1:3"
    assert partition_key("gw", 0) != partition_key("gw", 1)


def test_schema_is_enforced_on_decode() -> None:
    record = Chain(KEY, GATEWAY, 0).seal([statement()], "open")
    payload = json.loads(payload_json(parse_record(record)))
    payload["events"][0]["decision"] = "maybe"
    with pytest.raises(msgspec.ValidationError, match="decision"):
        decode_batch(json.dumps(payload).encode())
    payload["events"][0]["decision"] = "allow"
    payload["seq"] = -1
    with pytest.raises(msgspec.ValidationError, match="seq"):
        decode_batch(json.dumps(payload).encode())


def test_statement_events_are_not_tracked_by_the_cycle_collector() -> None:
    import gc

    assert not gc.is_tracked(statement(rule_ids=["a"], parameters=["1"]))


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_a_batch_is_the_same_bytes_whether_its_events_come_encoded_or_not(
    compression: str,
) -> None:
    """Structs, ``bytes`` and ``msgspec.Raw`` mixed in one batch, or all of them encoded
    beforehand: seal() writes the same record either way."""
    events: list[Event] = [statement(n) for n in range(600)]
    encoded = [msgspec.json.encode(e) for e in events]
    mixed: list[object] = [
        e if n % 3 == 0 else encoded[n] if n % 3 == 1 else msgspec.Raw(encoded[n])
        for n, e in enumerate(events)
    ]
    records = []
    start = session_start()
    for batch in (events, encoded, mixed):
        chain = Chain(KEY, GATEWAY, 0, epoch="ab" * 16, clock=lambda: 1,
                      compression=compression)  # type: ignore[arg-type]
        chain.seal([start], "open")
        records.append(chain.seal(batch))  # type: ignore[arg-type]
    assert records[0] == records[1] == records[2]
    assert [e.id for e in decode_batch(parse_record(records[0])).events] == [  # type: ignore[union-attr]
        e.id for e in events  # type: ignore[union-attr]
    ]
