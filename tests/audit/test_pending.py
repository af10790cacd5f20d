"""EventBuffer (the writer's pending batch) and Chain.seal_buffer: the C type and its
pure-Python twin keep one contract, and a batch sealed from a buffer is the batch
Chain.seal makes of the same events, verified like any other."""

from __future__ import annotations

import json

import msgspec
import pytest
from nacl.signing import SigningKey

from gateway.audit import pending
from gateway.audit.batch import Chain, parse_record, payload_json
from gateway.audit.keys import key_id
from gateway.audit.verify import Verifier
from tests.audit.helpers import statement

KEY = SigningKey(bytes(range(7, 39)))
TYPES = [pending.PyEventBuffer]
if pending.ACCELERATED:
    TYPES.append(pending.EventBuffer)


def test_the_extension_is_built() -> None:
    # The benchmarks and the session trail's fast path rely on it; a silent fallback
    # would only show up as lost speed.
    assert pending.ACCELERATED


@pytest.fixture(params=TYPES, ids=lambda t: t.__name__)
def buffer_type(request: pytest.FixtureRequest) -> type[pending.PyEventBuffer]:
    return request.param  # type: ignore[no-any-return]


def test_events_are_one_comma_separated_run(buffer_type: type[pending.PyEventBuffer]) -> None:
    buf = buffer_type()
    assert len(buf) == 0 and buf.nbytes == 0 and not buf
    with buf.events() as view:
        assert bytes(view) == b""
    buf.append(b'{"a":1}')
    buf.append(bytearray(b'{"b":2}'))
    buf.append(memoryview(b'{"c":3}'))
    assert len(buf) == 3 and buf.nbytes == len(b'{"a":1},{"b":2},{"c":3}')
    with buf.events() as view:
        assert bytes(view) == b'{"a":1},{"b":2},{"c":3}'
    with buf.payload(b'{"events":[', b"]}") as view:
        assert view.readonly
        assert json.loads(bytes(view)) == {"events": [{"a": 1}, {"b": 2}, {"c": 3}]}
    buf.clear()
    assert len(buf) == 0 and buf.nbytes == 0
    buf.append(b"{}")
    with buf.payload(b"[", b"]") as view:
        assert bytes(view) == b"[{}]"


def test_growth_keeps_every_byte(buffer_type: type[pending.PyEventBuffer]) -> None:
    buf = buffer_type()
    events = [b'{"n":%d,"pad":"%s"}' % (n, b"x" * (n % 997)) for n in range(5000)]
    for e in events:
        buf.append(e)
    assert len(buf) == 5000
    with buf.payload(b"[", b"]") as view:
        assert bytes(view) == b"[" + b",".join(events) + b"]"
    buf.clear()
    buf.append(b"{}")  # reuse after a large batch
    with buf.events() as view:
        assert bytes(view) == b"{}"


def test_bad_arguments_are_refused(buffer_type: type[pending.PyEventBuffer]) -> None:
    with pytest.raises(ValueError):
        buffer_type(room=-1)
    buf = buffer_type(room=8)
    with pytest.raises(TypeError):
        buf.append("text, not bytes")  # type: ignore[arg-type]
    assert len(buf) == 0
    buf.append(b"{}")
    if buffer_type is not pending.PyEventBuffer:  # the twin has no room to run out of
        with pytest.raises(ValueError, match="does not fit"):
            buf.payload(b"x" * 9, b"]")


@pytest.mark.skipif(not pending.ACCELERATED, reason="the C type only")
def test_the_c_buffer_does_not_move_under_a_live_view() -> None:
    buf = pending.EventBuffer()
    buf.append(b"{}")
    view = buf.payload(b"[", b"]")
    with pytest.raises(BufferError):
        buf.append(b"{}")
    with pytest.raises(BufferError):
        buf.clear()
    assert bytes(view) == b"[{}]" and len(buf) == 1
    view.release()
    buf.append(b"{}")
    buf.clear()
    assert len(buf) == 0


@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("gateway", ["gw-test", "g" * 5000])  # the latter overflows the room
@pytest.mark.parametrize("count", [0, 1, 700])
def test_seal_buffer_is_seal_of_the_same_events(
    buffer_type: type[pending.PyEventBuffer], compression: str, gateway: str, count: int
) -> None:
    events = [msgspec.json.encode(statement(n)) for n in range(count)]
    a = Chain(KEY, gateway, 3, epoch="e" * 32, clock=lambda: 42,
              compression=compression)  # type: ignore[arg-type]
    b = Chain(KEY, gateway, 3, epoch="e" * 32, clock=lambda: 42,
              compression=compression)  # type: ignore[arg-type]
    opening = statement(0)
    records = [a.seal([opening], "open")]
    b.seal([opening], "open")
    buf = buffer_type()
    for e in events:
        buf.append(e)
    record = a.seal_buffer(buf)
    assert len(buf) == count  # the writer clears it once the record is kept
    expected = b.seal(events)
    # The same payload (its compressed bytes may differ: one pass against slices).
    assert payload_json(parse_record(record)) == payload_json(parse_record(expected))
    assert parse_record(record).version == parse_record(expected).version
    assert a.seq == b.seq == 2
    records.append(record)
    records.append(a.seal([statement(1)], "close"))
    verifier = Verifier({key_id(KEY.verify_key): KEY.verify_key})
    for r in records:
        assert verifier.feed(r) is not None
    report = verifier.finish()
    assert report.ok, report.problems


def test_seal_buffer_refuses_after_close(buffer_type: type[pending.PyEventBuffer]) -> None:
    chain = Chain(KEY, "gw", 0)
    chain.seal([], "open")
    chain.seal([], "close")
    buf = buffer_type()
    buf.append(b"{}")
    with pytest.raises(Exception, match="closed"):
        chain.seal_buffer(buf)
    assert len(buf) == 1
