"""Types of the optional C parts; see gateway/wire/scan.py and gateway/wire/framer.py."""

import builtins
from collections.abc import Callable

def scan(
    data: bytes | bytearray | memoryview, pos: int, actions: bytes | bytearray, max_size: int
) -> tuple[int, int, int, int, int, int]: ...

class FramerCore:
    actions: bytearray
    scan: Callable[
        [bytes | bytearray | memoryview, int, bytes | bytearray, int],
        tuple[int, int, int, int, int, int],
    ]
    _pending: bytearray
    max_message_size: int
    _skip: int
    requests: int
    readies: int
    status: int

class Forward:
    @property
    def bytes(self) -> int: ...
    def __init__(
        self,
        framer: FramerCore,
        write: Callable[[builtins.bytes], object],
        on_carried: Callable[[builtins.bytes], None],
        on_scanned: Callable[[builtins.bytes, tuple[int, int, int, int, int, int]], None],
    ) -> None: ...
    def __call__(self, data: builtins.bytes, /) -> None: ...
    def close(self, on_data: Callable[[builtins.bytes], None], /) -> None: ...

def register_walks(capsule: object, /) -> None: ...
