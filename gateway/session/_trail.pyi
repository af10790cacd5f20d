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
        portals: dict[bytes, Any],
        pending: Queue | deque[Any],
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
