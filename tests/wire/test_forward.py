"""Forward: one direction's reads framed and forwarded, in C where nothing needs Python.

The reference is the Framer itself (``feed``): whatever road a read takes through the C
forwarder, the bytes forwarded, the handler calls, the framer's counters and its carried
state must be what ``feed`` gives for the same reads. Walks with effects (a session's own
scan) must run exactly once over every byte.
"""

from __future__ import annotations

import gc
import itertools
import struct
import weakref
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.wire import framer as framer_module
from gateway.wire import scan as scan_module
from gateway.wire.errors import ProtocolViolation
from gateway.wire.framer import Chunk, Forward, Framer, Scanned, action_table


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


# A backend-like table: DataRow/CommandComplete pass, ReadyForQuery counted, 'S' and 'E'
# watched (the handler replaces 'E' to show replacements go through Python).
TABLE = action_table(watch="SE", ready="Z", request="Q")
MESSAGES = [
    msg(b"D", b"\x00\x01\x00\x00\x00\x011"),
    msg(b"D", b"x" * 300),
    msg(b"D", b"y" * 5000),
    msg(b"C", b"SELECT 1\x00"),
    msg(b"Z", b"I"),
    msg(b"Z", b"T"),
    msg(b"Q", b"select 1\x00"),
    msg(b"S", b"a\x00b\x00"),
    msg(b"E", b"SERROR\x00C42000\x00\x00"),
    msg(b"T", b"\x00\x00"),
]


class Sink:
    """A writer (write/writelines), as the relay's transports are."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.calls: list[str] = []

    def write(self, data: Chunk, /) -> None:
        self.calls.append("write")
        self.out += data

    def writelines(self, data: list[Chunk], /) -> None:
        self.calls.append("writelines")
        for piece in data:
            self.out += piece


class Handler:
    def __init__(self) -> None:
        self.seen: list[tuple[int, bytes]] = []

    def __call__(self, t: int, body: memoryview) -> bytes | None:
        self.seen.append((t, bytes(body)))
        return msg(b"N", b"replaced\x00") if t == ord("E") else None


class Walks:
    """A custom walk (like a session's): the plain walk, recording what each call covered."""

    def __init__(self, walk: Callable[..., Scanned]) -> None:
        self.walk = walk
        self.ranges: dict[int, list[tuple[int, int]]] = {}

    def __call__(self, data: bytes | bytearray | memoryview, pos: int,
                 actions: bytes | bytearray, max_size: int) -> Scanned:
        result = self.walk(data, pos, actions, max_size)
        self.ranges.setdefault(id(data), []).append((pos, result[0]))
        return result


def run_forward(framer: Framer, reads: list[bytes]) -> tuple[Sink, Handler, Forward]:
    sink = Sink()
    handler = framer.handler
    assert isinstance(handler, Handler)

    def feed(data: bytes) -> None:
        out = framer.feed(data)
        if out is None:
            sink.write(data)
        elif out:
            sink.writelines(out)

    def scanned(data: bytes, walked: Scanned) -> None:
        out = framer.feed_scanned(data, walked)
        if out is None:
            sink.write(data)
        elif out:
            sink.writelines(out)

    forward = Forward(framer, sink.write, feed, scanned)
    for data in reads:
        forward(data)
    return sink, handler, forward


def run_reference(reads: list[bytes]) -> tuple[bytes, list[tuple[int, bytes]], Framer]:
    handler = Handler()
    framer = Framer(bytearray(TABLE), handler)
    framer.scan = scan_module.scan_py
    out = bytearray()
    for data in reads:
        result = framer.feed(data)
        for piece in [data] if result is None else result:
            out += piece
    return bytes(out), handler.seen, framer


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points) if b > a]


def state(framer: Framer) -> tuple[int, int, int, int, bytes, bool]:
    return (framer.requests, framer.readies, framer.status, framer._skip,
            bytes(framer._pending), framer.at_boundary)


@pytest.fixture(params=["plain", "custom"])
def walk_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_framer(kind: str) -> tuple[Framer, Walks | None]:
    framer = Framer(bytearray(TABLE), Handler())
    if kind == "plain":
        return framer, None
    walks = Walks(scan_module.scan)
    framer.scan = walks
    return framer, walks


def test_extension_is_built() -> None:
    # The extension is built by `pip install -e .`; its absence is a build failure.
    assert framer_module.FORWARD_ACCELERATED


@settings(max_examples=300, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(MESSAGES) - 1), min_size=1, max_size=30),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=12),
    kind=st.sampled_from(["plain", "custom"]),
)
def test_any_split_gives_what_feed_gives(picks: list[int], cuts: list[int], kind: str) -> None:
    stream = b"".join(MESSAGES[i] for i in picks)
    reads = split(stream, cuts)
    expected, seen, reference = run_reference(reads)
    framer, walks = make_framer(kind)
    sink, handler, forward = run_forward(framer, reads)
    assert bytes(sink.out) == expected
    assert handler.seen == seen
    assert state(framer) == state(reference)
    assert forward.bytes == len(stream)
    if walks is not None:
        # Every call of a walk with effects starts where the last one of that read ended.
        for ranges in walks.ranges.values():
            for (_, end), (start, _) in itertools.pairwise(ranges):
                assert start >= end


def test_whole_reads_forward_the_same_object_in_one_write(walk_kind: str) -> None:
    framer, _ = make_framer(walk_kind)
    sink = Sink()
    forwarded: list[object] = []

    def write(data: bytes) -> None:
        forwarded.append(data)
        sink.write(data)

    def never(*args: object) -> None:
        raise AssertionError("went to Python")

    forward = Forward(framer, write, never, never)
    read = MESSAGES[0] * 3 + MESSAGES[3] + MESSAGES[4] + MESSAGES[6]
    forward(read)
    assert forwarded == [read] and forwarded[0] is read
    assert (framer.requests, framer.readies, framer.status) == (1, 1, ord("I"))


def test_streamed_message_spanning_reads_stays_in_c() -> None:
    # A large pass-through message (DataRow, CopyData) split over many reads: the head
    # starts the skip, the middle reads are all skip, the tail ends it; nothing in Python.
    framer, _ = make_framer("plain")
    forwarded: list[bytes] = []

    def never(*args: object) -> None:
        raise AssertionError("went to Python")

    forward = Forward(framer, forwarded.append, never, never)
    big = msg(b"D", b"z" * 100_000)
    stream = big + MESSAGES[3] + MESSAGES[4]
    reads = split(stream, list(range(7, len(stream), 8191)))
    for data in reads:
        forward(data)
    assert b"".join(forwarded) == stream
    assert framer.at_boundary and framer.readies == 1


def test_partial_header_goes_to_python_and_back() -> None:
    framer, _ = make_framer("plain")
    calls: list[str] = []
    sink = Sink()

    def carried(data: bytes) -> None:
        calls.append("carried")
        out = framer.feed(data)
        sink.writelines([data] if out is None else out)

    def scanned(data: bytes, walked: Scanned) -> None:
        calls.append("scanned")
        out = framer.feed_scanned(data, walked)
        sink.writelines([data] if out is None else out)

    def write(data: bytes) -> None:
        calls.append("c")
        sink.write(data)

    forward = Forward(framer, write, carried, scanned)
    row = MESSAGES[0]
    forward(row + row[:3])  # a header cut short: Python keeps it
    forward(row[3:] + row)  # carried state: Python completes it
    forward(row)  # back at a boundary: C again
    assert calls == ["scanned", "carried", "c"]
    assert bytes(sink.out) == row * 4


@pytest.mark.parametrize("bad", [b"D\x00\x00\x00\x02", b"Z\x00\x00\x00\x05X"])
def test_violations_raise_from_python(bad: bytes, walk_kind: str) -> None:
    framer, _ = make_framer(walk_kind)
    sink, _, _ = run_forward(framer, [])

    def scanned(data: bytes, walked: Scanned) -> None:
        framer.feed_scanned(data, walked)

    forward = Forward(framer, sink.write, framer.feed, scanned)  # type: ignore[arg-type]
    with pytest.raises(ProtocolViolation):
        forward(MESSAGES[0] + bad)
    assert bytes(sink.out) == b""  # nothing of a read with a violation is forwarded


def test_other_buffers_and_closed_forwarders_go_to_the_callback() -> None:
    framer, _ = make_framer("plain")
    got: list[object] = []
    forward = Forward(framer, got.append, got.append, lambda d, w: None)
    view = memoryview(MESSAGES[0])
    forward(view)  # type: ignore[arg-type]  # not bytes: Python's road
    assert got == [view] and forward.bytes == len(MESSAGES[0])

    def closed(data: bytes) -> None:
        raise ProtocolViolation("session is closed")

    forward.close(closed)
    with pytest.raises(ProtocolViolation, match="closed"):
        forward(MESSAGES[0])
    assert forward.bytes == 2 * len(MESSAGES[0])


def test_a_walk_that_closes_the_forwarder_does_not_write() -> None:
    framer = Framer(bytearray(TABLE), Handler())
    written: list[bytes] = []
    closed_reads: list[bytes] = []

    def walk(data: bytes | bytearray | memoryview, pos: int, actions: bytes | bytearray,
             max_size: int) -> Scanned:
        forward.close(closed_reads.append)
        return scan_module.scan(data, pos, actions, max_size)

    framer.scan = walk
    forward = Forward(framer, written.append, written.append, lambda d, w: None)
    forward(MESSAGES[0])
    assert written == [] and closed_reads == [MESSAGES[0]]


def test_reference_cycles_through_the_forwarder_are_collected() -> None:
    class Owner:
        pass

    class Reader:
        def __init__(self, owner: Owner) -> None:
            self.owner = owner

        def __call__(self, data: bytes) -> None:
            pass

    owner = Owner()
    framer = Framer(bytearray(TABLE), Handler())

    read = Reader(owner)

    # owner -> forward -> reader -> owner: a cycle through C.
    forward = Forward(framer, lambda data: None, read, lambda data, walked: None)
    owner.forward = forward  # type: ignore[attr-defined]
    ref = weakref.ref(owner)
    del owner, forward, read
    gc.collect()
    assert ref() is None
