"""Framing of one direction of a PostgreSQL v3 byte stream (after startup).

The framer owns message boundaries and nothing else: it walks the 5-byte headers
(type byte + int32 length) of the bytes it is fed and decides, per message type, whether
the message is *watched* — handed to a handler as a ``memoryview`` of its body — or
*passed through*, in which case no Python object is built for it at all.

Rules this module keeps:

- Never copy a body on the pass-through path. When a chunk holds only whole messages and
  no handler asked to change anything, the very ``bytes`` object that was fed is returned
  for forwarding (the common case, measured as the cheapest in PERFORMANCE.md).
- Never rescan bytes. A pass-through message that spans reads is forwarded piece by piece
  as it arrives (``_skip`` counts what is still to come); a watched message that spans
  reads is accumulated once into a reusable buffer and handed over when complete.
- Bound what is buffered: only a watched message is ever held, and its length is checked
  against ``max_message_size`` before a byte of it is buffered.

It knows nothing about what the messages mean, about sockets, or about sessions.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from gateway.wire.errors import MessageTooLarge, ProtocolViolation

# Type byte and length as unsigned: a negative int32 length shows up as >= 2**31 and is
# caught by the size check below, so one comparison covers both cases.
_HEADER = struct.Struct("!BI")
_unpack_header = _HEADER.unpack_from

DEFAULT_MAX_MESSAGE_SIZE = 1 << 30  # PostgreSQL's own MaxAllocSize

#: A handler receives (type byte, body) of a watched message and returns ``None`` to
#: forward the message unchanged, or the bytes to forward in its place (``b""`` drops it).
Handler = Callable[[int, memoryview], "bytes | None"]

Chunk = bytes | memoryview


def watch_table(types: bytes | str) -> bytearray:
    """A 256-entry lookup table with 1 for every message type byte in *types*."""
    table = bytearray(256)
    for t in types.encode("ascii") if isinstance(types, str) else types:
        table[t] = 1
    return table


class Framer:
    """Incremental framer for one direction of a session in the post-startup phase.

    ``feed(data, handler)`` returns the list of chunks to forward, in order. The chunks
    are ``data`` itself, ``memoryview`` slices of ``data``, or bytes returned by the
    handler; they stay valid after the call, because nothing the framer reuses is ever
    handed out.
    """

    __slots__ = ("_need", "_pending", "_skip", "max_message_size", "watch")

    def __init__(
        self,
        watch: bytearray,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.watch = watch
        self.max_message_size = max_message_size
        # Bytes of a pass-through message that are still to arrive and to be forwarded.
        self._skip = 0
        # An incomplete header, or an incomplete watched message, carried between reads.
        self._pending = bytearray()
        # Total size of the watched message being accumulated in _pending (0: unknown yet).
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

    def feed(self, data: bytes, handler: Handler) -> list[Chunk]:
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
            pos = self._complete_pending(data, pos, handler, out)
            if pos >= n:
                return out
            if self._skip:
                # The pending header belonged to a pass-through message longer than data.
                return out

        watch = self.watch
        max_size = self.max_message_size
        run_start = pos
        view: memoryview | None = None
        while n - pos >= 5:
            msg_type, length = _unpack_header(data, pos)
            if length < 4 or length > max_size:
                self._check_length(msg_type, length)
            end = pos + 1 + length
            if watch[msg_type]:
                if end > n:
                    # Accumulate the rest of this message; its size is known already.
                    self._need = 1 + length
                    break
                if view is None:
                    view = memoryview(data)
                replacement = handler(msg_type, view[pos + 5 : end])
                if replacement is not None:
                    if pos > run_start:
                        out.append(view[run_start:pos])
                    if replacement:
                        out.append(replacement)
                    run_start = end
            elif end > n:
                # Stream the head of a long pass-through message now, the rest as it comes.
                self._skip = end - n
                pos = n
                break
            pos = end

        if pos < n:
            # An incomplete header or an incomplete watched message: keep it for the next
            # read. Only these bytes are ever copied.
            self._pending += data[pos:]
        if run_start == 0 and pos == n and not out:
            return [data]
        if pos > run_start:
            if view is None:
                view = memoryview(data)
            out.append(view[run_start:pos])
        return out

    def _complete_pending(
        self, data: bytes, pos: int, handler: Handler, out: list[Chunk]
    ) -> int:
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
            if not self.watch[msg_type]:
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
        msg_type = pending[0]
        # The buffer is reused, so the body view must be released before it is resized.
        body = memoryview(pending)[5:]
        try:
            replacement = handler(msg_type, body)
        finally:
            body.release()
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


def _type_name(msg_type: int) -> str:
    if 32 < msg_type < 127:
        return repr(chr(msg_type))
    return str(msg_type)
