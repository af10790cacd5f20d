"""The header walk under the framer, in C when available and in Python otherwise.

:func:`scan` walks whole messages of a buffer from a position and acts on each by a
256-entry action table: skip it (PASS), count it as a request (REQUEST: Query, Sync,
FunctionCall — each answered by one ReadyForQuery), count it and keep its status
(READY: ReadyForQuery), or stop and hand it to Python (WATCH). It returns
``(pos, stop, end, requests, readies, status)``:

- ``stop >= 0``: a complete WATCH message of type ``stop`` is at ``data[pos:end]``;
- ``stop == STOP_NONE``: fewer than a whole message remains at ``pos`` (when at least a
  header remains, ``end`` is where that message will end);
- ``stop == STOP_BAD_LENGTH``: the message at ``pos`` declares length ``end``, which is
  below 4 or above ``max_size``;
- ``stop == STOP_BAD_READY``: the ReadyForQuery at ``pos`` is malformed.

``requests``/``readies`` count what was walked past and ``status`` is the last
ReadyForQuery status byte seen (-1: none). The C version (``_speedups.c``) exists because
this loop runs for every message of every session; it has exactly these semantics and the
tests run both.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

ACT_PASS = 0
ACT_WATCH = 1
ACT_REQUEST = 2
ACT_READY = 3

STOP_NONE = -1
STOP_BAD_LENGTH = -2
STOP_BAD_READY = -3

_unpack = struct.Struct("!BI").unpack_from
_READY_STATUSES = frozenset(b"ITE")

ScanResult = tuple[int, int, int, int, int, int]
Scanner = Callable[[bytes | bytearray | memoryview, int, bytes | bytearray, int], ScanResult]


def scan_py(
    data: bytes | bytearray | memoryview, pos: int, actions: bytes | bytearray, max_size: int
) -> ScanResult:
    n = len(data)
    requests = readies = 0
    status = -1
    end = 0
    while n - pos >= 5:
        t, length = _unpack(data, pos)
        if length < 4 or length > max_size:
            return pos, STOP_BAD_LENGTH, length, requests, readies, status
        end = pos + 1 + length
        if end > n:
            break
        a = actions[t]
        if a == ACT_PASS:
            pos = end
        elif a == ACT_REQUEST:
            requests += 1
            pos = end
        elif a == ACT_READY:
            if length != 5 or data[pos + 5] not in _READY_STATUSES:
                return pos, STOP_BAD_READY, end, requests, readies, status
            status = data[pos + 5]
            readies += 1
            pos = end
        else:
            return pos, t, end, requests, readies, status
    return pos, STOP_NONE, end, requests, readies, status


def _load() -> tuple[Scanner, bool]:
    try:
        from gateway.wire import _speedups
    except ImportError:
        return scan_py, False
    return _speedups.scan, True


scan, ACCELERATED = _load()
