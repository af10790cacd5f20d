"""The pending events of the batch an AuditWriter is filling: :class:`EventBuffer`.

Events are kept encoded, as one comma-separated run of JSON objects (exactly the inside
of the payload's ``events`` array), not as a list of ``bytes``: the session trail's C fast
path formats a statement's event straight into the run, so an event costs no object, no
allocation and no copy before compression reads it, and the buffer's allocation is kept
from batch to batch.

The C type (``gateway.audit._pending``, layout and C API in ``_pending.h``) leaves a room
before the events so that :meth:`Chain.seal_buffer <gateway.audit.batch.Chain>` can write
the payload's header members just in front of them and compress the whole payload in one
pass over one contiguous region. :class:`PyEventBuffer` is the pure-Python twin with the
same contract, used when the extension is not built.

Contract:

- ``append(event)`` adds one encoded event; ``len(buffer)`` is the number of events,
  ``nbytes`` the length of the run (commas included);
- ``payload(head, tail)`` is a read-only view of ``head + run + tail``; ValueError if
  ``head`` is longer than the room (then use ``events()``, a view of the run);
- ``clear()`` empties it. While a view is alive, ``append`` and ``clear`` raise
  BufferError (the C type may move its memory): release views before changing it.
"""

from __future__ import annotations

__all__ = ["ACCELERATED", "EventBuffer", "PyEventBuffer"]


class PyEventBuffer:
    """The pure-Python :class:`EventBuffer` (see the module docstring)."""

    __slots__ = ("_count", "_run")

    def __init__(self, room: int = 4096) -> None:
        if not 0 <= room <= 1 << 20:
            raise ValueError("room must be between 0 and 1 MiB")
        self._run = bytearray()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return len(self._run)

    def append(self, event: bytes | bytearray | memoryview) -> None:
        if self._count:
            self._run += b","
        self._run += event
        self._count += 1

    def clear(self) -> None:
        self._run.clear()
        self._count = 0

    def payload(self, head: bytes, tail: bytes) -> memoryview:
        return memoryview(b"".join((head, self._run, tail)))

    def events(self) -> memoryview:
        return memoryview(bytes(self._run))


try:
    from gateway.audit._pending import EventBuffer
except ImportError:  # the extension is not built: same contract, in Python
    EventBuffer = PyEventBuffer  # type: ignore[misc,assignment]
    ACCELERATED = False
else:
    ACCELERATED = True
