"""Types of the optional C header walk; see gateway/wire/scan.py for its contract."""

def scan(
    data: bytes | bytearray | memoryview, pos: int, actions: bytes | bytearray, max_size: int
) -> tuple[int, int, int, int, int, int]: ...
