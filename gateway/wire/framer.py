"""Framing of one direction of a PostgreSQL v3 byte stream (after startup).

The framer owns message boundaries and nothing else. It walks the 5-byte headers (type
byte + int32 length) of the bytes it is fed and acts on each message by its type, through
an action table (see :mod:`gateway.wire.scan`): pass it through without building any
Python object for it, count it (requests and ReadyForQuery, which is all that pure
forwarding needs to know), or hand it to a handler as a ``memoryview`` of its body.

Rules this module keeps:

- Never copy a body on the pass-through path. When a chunk holds only whole messages and
  no handler asked to change anything, the very ``bytes`` object that was fed is returned
  for forwarding (the common case, measured as the cheapest in PERFORMANCE.md).
- Never rescan bytes. A pass-through message that spans reads is forwarded piece by piece
  as it arrives (``_skip`` counts what is still to come); any other message that spans
  reads is accumulated once into a reusable buffer and acted on when complete.
- Bound what is buffered: a message's length is checked against ``max_message_size``
  before a byte of it is buffered.

It knows nothing about what the messages mean, about sockets, or about sessions.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.wire.errors import MessageTooLarge, ProtocolViolation
from gateway.wire.scan import (
    ACT_PASS,
    ACT_READY,
    ACT_REQUEST,
    ACT_WATCH,
    STOP_BAD_LENGTH,
    STOP_NONE,
    Scanner,
    scan,
)

_HEADER = struct.Struct("!BI")
_unpack_header = _HEADER.unpack_from

DEFAULT_MAX_MESSAGE_SIZE = 1 << 30  # PostgreSQL's own MaxAllocSize

#: A handler receives (type byte, body) of a watched message and returns ``None`` to
#: forward the message unchanged, or the bytes to forward in its place (``b""`` drops it).
Handler = Callable[[int, memoryview], "bytes | None"]

Chunk = bytes | memoryview

#: What a walk returns: (pos, stop, end, requests, readies, status).
Scanned = tuple[int, int, int, int, int, int]

__all__ = [
    "ACT_PASS",
    "ACT_READY",
    "ACT_REQUEST",
    "ACT_WATCH",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FORWARD_ACCELERATED",
    "Chunk",
    "Forward",
    "Framer",
    "Handler",
    "Scanned",
    "action_table",
    "watch_table",
]


def action_table(**actions: bytes | str) -> bytearray:
    """A 256-entry action table: ``action_table(watch="QZ", request="S", ready="Z")``.

    Keys are ``watch``, ``request`` and ``ready``; later keys win for a type listed twice.
    """
    codes = {"watch": ACT_WATCH, "request": ACT_REQUEST, "ready": ACT_READY}
    table = bytearray(256)
    for name, types in actions.items():
        for t in types.encode("ascii") if isinstance(types, str) else types:
            table[t] = codes[name]
    return table


def watch_table(types: bytes | str) -> bytearray:
    """An action table that watches every message type in *types* and passes the rest."""
    return action_table(watch=types)


class _FramerCorePy:
    """Pure-Python twin of ``_speedups.FramerCore``: the state a Framer keeps between reads."""

    __slots__ = (
        "_pending",
        "_skip",
        "actions",
        "max_message_size",
        "readies",
        "requests",
        "scan",
        "status",
    )

    _pending: bytearray
    _skip: int
    actions: bytearray
    max_message_size: int
    readies: int
    requests: int
    scan: Scanner
    status: int


class _ForwardPy:
    """Pure-Python twin of ``_speedups.Forward``: every read goes to ``on_carried``."""

    __slots__ = ("_on_data", "bytes")

    def __init__(
        self,
        framer: Framer,
        write: Callable[[bytes], object],
        on_carried: Callable[[bytes], None],
        on_scanned: Callable[[bytes, Scanned], None],
    ) -> None:
        self.bytes = 0
        self._on_data = on_carried

    def __call__(self, data: bytes, /) -> None:
        self.bytes += len(data)
        self._on_data(data)

    def close(self, on_data: Callable[[bytes], None], /) -> None:
        self._on_data = on_data


def _load() -> tuple[type[_FramerCorePy], type[_ForwardPy], bool]:
    try:
        from gateway.wire import _speedups
    except ImportError:  # pragma: no cover - the extension is optional
        return _FramerCorePy, _ForwardPy, False
    return _speedups.FramerCore, _speedups.Forward, True  # type: ignore[return-value]


if TYPE_CHECKING:
    # Both twins have one interface; the checker reads the C one's stub.
    from gateway.wire._speedups import Forward as Forward
    from gateway.wire._speedups import FramerCore as _FramerCore

    FORWARD_ACCELERATED: bool
else:
    _FramerCore, Forward, FORWARD_ACCELERATED = _load()


class Framer(_FramerCore):
    """Incremental framer for one direction of a session in the post-startup phase.

    ``feed(data)`` returns ``None`` when *data* is to be forwarded as it is, or else the
    list of chunks to forward, in order: ``data`` itself, ``memoryview`` slices of it, or
    bytes returned by the handler. They stay valid after the call, because nothing the
    framer reuses is ever handed out. The handler is called for WATCH messages;
    ``requests``, ``readies`` and ``status`` accumulate what the REQUEST and READY
    actions saw. The action table may be changed in place between calls.
    """

    __slots__ = ("_need", "handler")

    def __init__(
        self,
        actions: bytearray,
        handler: Handler,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.actions = actions
        self.handler = handler
        self.max_message_size = max_message_size
        #: The header walk (gateway.wire.scan's contract). A session layer may put in one
        #: that also handles some watched messages itself (gateway.session.audit does).
        self.scan = scan
        #: Messages with the REQUEST action walked past, and READY ones.
        self.requests = 0
        self.readies = 0
        #: Status byte of the last READY message (-1 before the first).
        self.status = -1
        # Bytes of a pass-through message that are still to arrive and to be forwarded.
        self._skip = 0
        # An incomplete header, or an incomplete non-pass-through message.
        self._pending = bytearray()
        # Total size of the message being accumulated in _pending (0: header incomplete).
        self._need = 0

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a message."""
        return len(self._pending)

    @property
    def at_boundary(self) -> bool:
        """True when no message is partially received."""
        return self._skip == 0 and not self._pending

    def _check_length(self, msg_type: int, length: int) -> None:
        if length < 4:
            raise ProtocolViolation(
                f"invalid message length {length} for message type {msg_type}"
            )
        if length > self.max_message_size:
            raise MessageTooLarge(_type_name(msg_type), length, self.max_message_size)

    def feed(self, data: bytes) -> list[Chunk] | None:
        """Frame *data*; return ``None`` to forward it unchanged, or the chunks to forward.

        ``None`` is the common case — only whole messages, none changed — and costs one
        header walk in C and no allocation.
        """
        if self._skip or self._pending:
            return self._feed_carried(data)
        return self.feed_scanned(data, self.scan(data, 0, self.actions, self.max_message_size))

    def feed_scanned(self, data: bytes, scanned: Scanned) -> list[Chunk] | None:
        """:meth:`feed` for a read already walked from its start by ``self.scan``.

        Only valid at a message boundary; :class:`Forward` hands over here the reads whose
        walk (which may have acted on messages: it runs once) stopped at something to do.
        """
        pos, stop, end, requests, readies, status = scanned
        if requests:
            self.requests += requests
        if readies:
            self.readies += readies
            self.status = status
        if stop == STOP_NONE and pos == len(data):
            return None
        out: list[Chunk] = []
        self._feed_from(data, pos, stop, end, 0, out)
        if len(out) == 1 and out[0] is data:
            # Watched messages, none replaced: still one write of the same object.
            return None
        return out

    def _feed_carried(self, data: bytes) -> list[Chunk]:
        """Feed *data* when a message from an earlier read is still incomplete."""
        n = len(data)
        pos = 0
        out: list[Chunk] = []
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                return [data]
            pos = self._skip
            self._skip = 0
            out.append(memoryview(data)[:pos])
        if self._pending:
            pos = self._complete_pending(data, pos, out)
            if pos >= n or self._skip:
                return out
        scanned = self.scan(data, pos, self.actions, self.max_message_size)
        if scanned[3]:
            self.requests += scanned[3]
        if scanned[4]:
            self.readies += scanned[4]
            self.status = scanned[5]
        self._feed_from(data, scanned[0], scanned[1], scanned[2], pos, out)
        return out

    def _feed_from(
        self, data: bytes, pos: int, stop: int, end: int, run_start: int, out: list[Chunk]
    ) -> None:
        """Continue after a scan that stopped at *pos*; append what to forward to *out*.

        ``data[run_start:pos]`` has been walked and is to be forwarded unchanged.
        """
        n = len(data)
        actions = self.actions
        handler = self.handler
        walk = self.scan
        view = memoryview(data)
        while stop >= 0:
            replacement = handler(stop, view[pos + 5 : end])
            if replacement is not None:
                if pos > run_start:
                    out.append(view[run_start:pos])
                if replacement:
                    out.append(replacement)
                run_start = end
            pos, stop, end, requests, readies, status = walk(
                data, end, actions, self.max_message_size
            )
            if requests:
                self.requests += requests
            if readies:
                self.readies += readies
                self.status = status

        if stop != STOP_NONE:
            if stop == STOP_BAD_LENGTH:
                self._check_length(data[pos], end)
            raise ProtocolViolation("invalid ReadyForQuery message")
        if n - pos >= 5:
            # A message that is not complete in this chunk.
            if actions[data[pos]] == ACT_PASS:
                # Stream its head now, the rest as it comes: never buffer what nobody reads.
                self._skip = end - n
                pos = n
            else:
                self._need = end - pos
        if pos < n:
            # Only these bytes are ever copied: an incomplete header or a message that
            # will be acted on once whole.
            self._pending += data[pos:]
        if run_start == 0 and pos == n and not out:
            out.append(data)
        elif pos > run_start:
            out.append(view[run_start:pos])

    def _complete_pending(self, data: bytes, pos: int, out: list[Chunk]) -> int:
        """Feed *data* from *pos* into the carried-over message; return the new position."""
        pending = self._pending
        n = len(data)
        if self._need == 0:
            # Still completing a header.
            take = min(5 - len(pending), n - pos)
            pending += data[pos : pos + take]
            pos += take
            if len(pending) < 5:
                return pos
            msg_type, length = _unpack_header(pending, 0)
            self._check_length(msg_type, length)
            if self.actions[msg_type] == ACT_PASS:
                out.append(bytes(pending))
                pending.clear()
                remaining: int = length - 4
                available = n - pos
                if remaining > available:
                    if available:
                        out.append(memoryview(data)[pos:])
                    self._skip = remaining - available
                    return n
                out.append(memoryview(data)[pos : pos + remaining])
                return pos + remaining
            self._need = 1 + length
        take = min(self._need - len(pending), n - pos)
        pending += data[pos : pos + take]
        pos += take
        if len(pending) < self._need:
            return pos
        replacement = self._act_on_pending()
        if replacement is None:
            out.append(bytes(pending))
        elif replacement:
            out.append(replacement)
        self._need = 0
        if len(pending) > 65536:
            # Do not keep a large buffer alive for the rest of the session.
            self._pending = bytearray()
        else:
            pending.clear()
        return pos

    def _act_on_pending(self) -> bytes | None:
        """The action of a message completed in the carry-over buffer."""
        pending = self._pending
        msg_type = pending[0]
        action = self.actions[msg_type]
        if action == ACT_REQUEST:
            self.requests += 1
            return None
        if action == ACT_READY:
            if len(pending) != 6 or pending[5] not in b"ITE":
                raise ProtocolViolation("invalid ReadyForQuery message")
            self.readies += 1
            self.status = pending[5]
            return None
        # The buffer is reused, so the body view must be released before it is resized.
        body = memoryview(pending)[5:]
        try:
            return self.handler(msg_type, body)
        finally:
            body.release()


def _type_name(msg_type: int) -> str:
    if 32 < msg_type < 127:
        return repr(chr(msg_type))
    return str(msg_type)
