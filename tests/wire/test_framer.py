"""Framer: message boundaries over arbitrary read splits, zero-copy pass-through, limits."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.wire import framer as framer_module
from gateway.wire import scan as scan_module
from gateway.wire.errors import MessageTooLarge, ProtocolViolation
from gateway.wire.framer import Framer, action_table, watch_table


@pytest.fixture(autouse=True, params=["c", "python"])
def scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every framer test runs on the C header walk and on the pure-Python one."""
    if request.param == "c":
        # The extension is built by `pip install -e .`; its absence is a build failure.
        assert scan_module.ACCELERATED, "gateway.wire._speedups was not built"
    else:
        monkeypatch.setattr(framer_module, "scan", scan_module.scan_py)
    return str(request.param)


def msg(t: bytes, body: bytes = b"") -> bytes:
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


def make(actions: bytearray, handler: Recorder | None = None, **kw: int) -> Framer:
    return Framer(actions, handler if handler is not None else Recorder(), **kw)


def feed_one(framer: Framer, chunk: bytes) -> list[bytes | memoryview]:
    out = framer.feed(chunk)
    return [chunk] if out is None else out


def feed_all(framer: Framer, chunks: list[bytes]) -> bytes:
    out = bytearray()
    for chunk in chunks:
        for piece in feed_one(framer, chunk):
            out += piece
    return bytes(out)


def test_whole_messages_forward_the_same_object() -> None:
    rec = Recorder()
    framer = make(watch_table("QZ"), rec)
    # Watched messages, none replaced: the caller forwards the very object that was read.
    assert framer.feed(STREAM) is None
    assert rec.seen == [("Q", b"select 1\x00"), ("Z", b"I")]
    assert framer.at_boundary


def test_nothing_watched_means_forward_as_is() -> None:
    framer = make(action_table(request="Q", ready="Z"))
    assert framer.feed(STREAM) is None  # forward the very object that was read
    assert (framer.requests, framer.readies) == (1, 1)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 11, 13])
def test_every_split_gives_the_same_messages_and_bytes(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    rec = Recorder()
    framer = make(watch_table("QZ"), rec)
    assert feed_all(framer, chunks) == STREAM
    assert rec.seen == [("Q", b"select 1\x00"), ("Z", b"I")]
    assert framer.at_boundary


def test_unwatched_message_spanning_reads_is_streamed_not_buffered() -> None:
    big = msg(b"d", b"x" * 100_000)
    rec = Recorder()
    framer = make(watch_table("Z"), rec)
    first = feed_one(framer, big[:1000])
    # Streamed at once: nothing held back, the head forwarded.
    assert b"".join(bytes(c) for c in first) == big[:1000]
    assert framer.buffered == 0
    rest = feed_all(framer, [big[1000:50_000], big[50_000:] + READY])
    assert rest == big[1000:] + READY
    assert rec.seen == [("Z", b"I")]


def test_watched_message_spanning_reads_is_delivered_whole() -> None:
    sql = b"select '" + b"a" * 70_000 + b"'\x00"
    query = msg(b"Q", sql)
    rec = Recorder()
    framer = make(watch_table("Q"), rec)
    out = feed_all(framer, [query[:3], query[3:40_000], query[40_000:]])
    assert out == query
    assert rec.seen == [("Q", sql)]
    assert framer.buffered == 0


def test_handler_replacement_and_drop() -> None:
    rec = Recorder({ord("Q"): b"", ord("Z"): msg(b"Z", b"T")})
    framer = make(watch_table("QZ"), rec)
    out = feed_all(framer, [STREAM])
    assert out == ROW * 3 + msg(b"Z", b"T")


def test_replacement_of_message_completed_from_pending() -> None:
    rec = Recorder({ord("Q"): b"refused"})
    framer = make(watch_table("Q"), rec)
    out = feed_all(framer, [QUERY[:4], QUERY[4:] + READY])
    assert out == b"refused" + READY


def test_sixty_four_mib_query_passes() -> None:
    sql = b"select '" + b"x" * (64 * 1024 * 1024) + b"'\x00"
    query = msg(b"Q", sql)
    got: list[int] = []

    def handler(t: int, body: memoryview) -> None:
        got.append(len(body))

    framer = Framer(watch_table("Q"), handler)

    step = 256 * 1024
    total = 0
    for i in range(0, len(query), step):
        for piece in feed_one(framer, query[i : i + step]):
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
    framer = make(watch_table("Q"), max_message_size=1 << 20)
    with pytest.raises(ProtocolViolation) as info:
        framer.feed(data)
    assert info.value.sqlstate == "08P01"
    assert fragment in info.value.message


def test_oversized_message_refused_before_buffering() -> None:
    framer = make(watch_table("Q"), max_message_size=1024)
    header = b"Q" + struct.pack("!I", 5000)
    with pytest.raises(MessageTooLarge):
        framer.feed(header)
    # Split header: the check still happens when the header completes.
    framer = make(watch_table("Q"), max_message_size=1024)
    framer.feed(header[:2])
    with pytest.raises(MessageTooLarge):
        framer.feed(header[2:])


def test_unwatched_oversized_message_is_refused_too() -> None:
    framer = make(watch_table("Q"), max_message_size=1024)
    with pytest.raises(MessageTooLarge):
        framer.feed(b"d" + struct.pack("!I", 5000))


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
    rec = Recorder()
    framer = make(watch_table("QZP"), rec)
    assert feed_all(framer, chunks) == stream
    assert rec.seen == [(chr(t), body) for t, body in msgs if t in b"QZP"]
    assert framer.at_boundary


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=200), max_size=30))
def test_fuzz_garbage_only_raises_protocol_violation(chunks: list[bytes]) -> None:
    framer = make(watch_table("QZP"), max_message_size=4096)
    try:
        for chunk in chunks:
            framer.feed(chunk)
    except ProtocolViolation:
        return
    # Whatever was accepted is held within the limit (bounded memory).
    assert framer.buffered <= 4096 + 5


def test_request_and_ready_actions_count_without_callbacks() -> None:
    rec = Recorder()
    framer = make(action_table(request="QS", ready="Z"), rec)
    stream = QUERY + ROW + msg(b"Z", b"T") + msg(b"S") + msg(b"Z", b"E")
    assert feed_all(framer, [stream[:7], stream[7:20], stream[20:]]) == stream
    assert rec.seen == []
    assert (framer.requests, framer.readies, framer.status) == (2, 2, ord("E"))


@pytest.mark.parametrize("bad", [msg(b"Z", b"X"), msg(b"Z", b"II"), msg(b"Z", b"")])
def test_malformed_ready_for_query_is_refused(bad: bytes) -> None:
    framer = make(action_table(ready="Z"))
    with pytest.raises(ProtocolViolation, match="ReadyForQuery"):
        framer.feed(ROW + bad)
    framer = make(action_table(ready="Z"))
    with pytest.raises(ProtocolViolation, match="ReadyForQuery"):
        feed_all(framer, [bytes([b]) for b in bad])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=20))
def test_c_and_python_scanners_agree(data: bytes, start: int) -> None:
    if not scan_module.ACCELERATED:
        pytest.fail("gateway.wire._speedups was not built")
    actions = action_table(watch="QP", request="S", ready="Z")
    start = min(start, len(data))
    assert scan_module.scan(data, start, actions, 300) == scan_module.scan_py(
        data, start, actions, 300
    )
