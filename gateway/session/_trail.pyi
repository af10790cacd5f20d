"""Types of the optional C fast path of the session audit trail (_trail.c)."""

from collections import deque
from collections.abc import Callable
from typing import Any

class Pending:
    statement: Any
    batch: int
    bytes_in: int
    out_mark: int
    start: int
    id: int
    rows: int | None
    command_tag: bytes
    sqlstate: str
    error_message: str
    parameters: list[str | None] | None
    def __init__(self, statement: Any, batch: int, bytes_in: int, out_mark: int) -> None: ...

class Queue:
    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> Any: ...
    def append(self, item: Any, /) -> None: ...
    def popleft(self) -> Any: ...

class Counters:
    """A session's statement counters."""
    seq: int
    statements: int
    def __init__(self) -> None: ...

class Portals:
    """Bound portals by name: name -> (statement, parameters, Bind size, batch)."""
    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, name: object, /) -> bool: ...
    def __getitem__(self, name: bytes, /) -> tuple[Any, Any, int, int]: ...
    def __setitem__(self, name: bytes, entry: tuple[Any, Any, int, int], /) -> None: ...
    def __delitem__(self, name: bytes, /) -> None: ...
    def get(self, name: bytes, default: Any = None, /) -> Any: ...
    def pop(self, name: bytes, default: Any = ..., /) -> Any: ...
    def clear(self) -> None: ...
    def items(self) -> list[tuple[bytes, tuple[Any, Any, int, int]]]: ...
    def values(self) -> list[tuple[Any, Any, int, int]]: ...
    def end_batches(self, ended: int, /) -> None: ...

class Statement:
    fragment: bytes
    text: str
    fingerprint: str
    decision: Any
    protocol: str
    extended: bool

class Trail:
    def __init__(
        self,
        *,
        hooks: Any,
        relay: Any,
        frontend: Any,
        backend: Any,
        statements: dict[bytes, Any],
        portals: Portals | dict[bytes, Any],
        pending: Queue | deque[Any],
        counts: Counters | None = None,  # a Counters for an audit trail, else None
        refused: dict[bytes, Any],
        emit: Callable[[Any], None],
        gate: Any,
        session: bytes,
        id_prefix: bytes,
        fast: bool,
        audit: bool,
        cache: Any,
        shapes: dict[bytes, Any],
        shape: Callable[[bytes], bytes | None],
    ) -> None: ...
    def scan_frontend(
        self, data: bytes | bytearray | memoryview, pos: int, actions: bytes | bytearray,
        max_size: int, /,
    ) -> tuple[int, int, int, int, int, int]: ...
    def scan_backend(
        self, data: bytes | bytearray | memoryview, pos: int, actions: bytes | bytearray,
        max_size: int, /,
    ) -> tuple[int, int, int, int, int, int]: ...
    def close(self) -> None: ...

def json_plain_escapes(text: bytes, /) -> int: ...
