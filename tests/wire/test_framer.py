"""Framer: message boundaries over arbitrary read splits, zero-copy pass-through, limits."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.wire.errors import MessageTooLarge, ProtocolViolation
from gateway.wire.framer import Framer, watch_table


def msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


QUERY = msg(b"Q", b"select 1\x00")
ROW = msg(b"D", b"\x00\x01\x00\x00\x00\x011")
READY = msg(b"Z", b"I")
STREAM = QUERY + ROW * 3 + READY


class Recorder:
    def __init__(self, replace: dict[int, bytes] | None = None) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.replace = replace or {}

    def __call__(self, t: int, body: memoryview) -> bytes | None:
        self.seen.append((chr(t), bytes(body)))
        return self.replace.get(t)


def feed_all(framer: Framer, chunks: list[bytes], handler: Recorder) -> bytes:
    out = bytearray()
    for chunk in chunks:
        for piece in framer.feed(chunk, handler):
            out += piece
    return bytes(out)


def test_whole_messages_forward_the_same_object() -> None:
    framer = Framer(watch_table("QZ"))
    rec = Recorder()
    out = framer.feed(STREAM, rec)
    assert len(out) == 1 and out[0] is STREAM
    assert rec.seen == [("Q", b"select 1\x00"), ("Z", b"I")]
    assert framer.at_boundary


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 11, 13])
def test_every_split_gives_the_same_messages_and_bytes(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    framer = Framer(watch_table("QZ"))
    rec = Recorder()
    assert feed_all(framer, chunks, rec) == STREAM
    assert rec.seen == [("Q", b"select 1\x00"), ("Z", b"I")]
    assert framer.at_boundary


def test_unwatched_message_spanning_reads_is_streamed_not_buffered() -> None:
    big = msg(b"d", b"x" * 100_000)
    framer = Framer(watch_table("Z"))
    rec = Recorder()
    first = framer.feed(big[:1000], rec)
    # Streamed at once: nothing held back, the head forwarded.
    assert b"".join(bytes(c) for c in first) == big[:1000]
    assert framer.buffered == 0
    rest = feed_all(framer, [big[1000:50_000], big[50_000:] + READY], rec)
    assert rest == big[1000:] + READY
    assert rec.seen == [("Z", b"I")]


def test_watched_message_spanning_reads_is_delivered_whole() -> None:
    sql = b"select '" + b"a" * 70_000 + b"'\x00"
    query = msg(b"Q", sql)
    framer = Framer(watch_table("Q"))
    rec = Recorder()
    out = feed_all(framer, [query[:3], query[3:40_000], query[40_000:]], rec)
    assert out == query
    assert rec.seen == [("Q", sql)]
    assert framer.buffered == 0


def test_handler_replacement_and_drop() -> None:
    framer = Framer(watch_table("QZ"))
    rec = Recorder({ord("Q"): b"", ord("Z"): msg(b"Z", b"T")})
    out = feed_all(framer, [STREAM], rec)
    assert out == ROW * 3 + msg(b"Z", b"T")


def test_replacement_of_message_completed_from_pending() -> None:
    framer = Framer(watch_table("Q"))
    rec = Recorder({ord("Q"): b"refused"})
    out = feed_all(framer, [QUERY[:4], QUERY[4:] + READY], rec)
    assert out == b"refused" + READY


def test_sixty_four_mib_query_passes() -> None:
    sql = b"select '" + b"x" * (64 * 1024 * 1024) + b"'\x00"
    query = msg(b"Q", sql)
    framer = Framer(watch_table("Q"))
    got: list[int] = []

    def handler(t: int, body: memoryview) -> None:
        got.append(len(body))

    step = 256 * 1024
    total = 0
    for i in range(0, len(query), step):
        for piece in framer.feed(query[i : i + step], handler):
            total += len(piece)
    assert got == [len(sql)]
    assert total == len(query)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"Q\x00\x00\x00\x03", "invalid message length 3"),
        (b"Q\x00\x00\x00\x00", "invalid message length 0"),
        (b"Q\xff\xff\xff\xff", "exceeds the limit"),
        (b"D\x80\x00\x00\x00", "exceeds the limit"),
    ],
)
def test_bad_lengths_are_protocol_violations(data: bytes, fragment: str) -> None:
    framer = Framer(watch_table("Q"), max_message_size=1 << 20)
    with pytest.raises(ProtocolViolation) as info:
        framer.feed(data, Recorder())
    assert info.value.sqlstate == "08P01"
    assert fragment in info.value.message


def test_oversized_message_refused_before_buffering() -> None:
    framer = Framer(watch_table("Q"), max_message_size=1024)
    header = b"Q" + struct.pack("!I", 5000)
    with pytest.raises(MessageTooLarge):
        framer.feed(header, Recorder())
    # Split header: the check still happens when the header completes.
    framer = Framer(watch_table("Q"), max_message_size=1024)
    framer.feed(header[:2], Recorder())
    with pytest.raises(MessageTooLarge):
        framer.feed(header[2:], Recorder())


def test_unwatched_oversized_message_is_refused_too() -> None:
    framer = Framer(watch_table("Q"), max_message_size=1024)
    with pytest.raises(MessageTooLarge):
        framer.feed(b"d" + struct.pack("!I", 5000), Recorder())


messages = st.lists(
    st.tuples(st.sampled_from(b"QDZdPS"), st.binary(max_size=300)), max_size=20
)


@settings(max_examples=300, deadline=None)
@given(messages, st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=50))
def test_fuzz_any_split_roundtrips(
    msgs: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(msg(bytes([t]), body) for t, body in msgs)
    chunks = []
    pos = 0
    i = 0
    while pos < len(stream):
        size = cuts[i % len(cuts)]
        chunks.append(stream[pos : pos + size])
        pos += size
        i += 1
    framer = Framer(watch_table("QZP"))
    rec = Recorder()
    assert feed_all(framer, chunks, rec) == stream
    assert rec.seen == [(chr(t), body) for t, body in msgs if t in b"QZP"]
    assert framer.at_boundary


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=200), max_size=30))
def test_fuzz_garbage_only_raises_protocol_violation(chunks: list[bytes]) -> None:
    framer = Framer(watch_table("QZP"), max_message_size=4096)
    try:
        for chunk in chunks:
            framer.feed(chunk, Recorder())
    except ProtocolViolation:
        return
    # Whatever was accepted is held within the limit (bounded memory).
    assert framer.buffered <= 4096 + 5
