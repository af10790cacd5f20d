"""Byte-level building blocks shared by the message codecs.

Two halves, one per direction of the work:

- :class:`MessageBuilder` appends messages to one growing buffer and back-patches each
  length when the message ends (asyncpg's ``WriteBuffer.start_message`` /
  ``end_message``), so an encoder never has to know a body's size in advance and several
  messages (Parse + Bind + Execute + Sync) can be built into one write.
- :class:`MessageReader` walks one message body that the framer has already cut out and
  turns every way the body can be malformed into a :class:`ProtocolViolation` carrying
  the message PostgreSQL itself would use ("insufficient data left in message",
  "invalid string in message", "invalid message format").

This module knows the primitive types of the protocol (Int16, Int32, String, Byte[n])
and nothing about which message holds what; it imports nothing beyond the standard
library and :mod:`gateway.wire.errors`.
"""

from __future__ import annotations

import builtins
import codecs
import re
import struct
from typing import Self

from gateway.wire.errors import (
    CHARACTER_NOT_IN_REPERTOIRE,
    ProtocolViolation,
)

#: What a decoder accepts as a message body. The framer hands out ``memoryview`` slices
#: of its receive buffer; tests and callers holding whole messages pass ``bytes``.
Body = bytes | bytearray | memoryview

INT16 = struct.Struct("!h")
UINT16 = struct.Struct("!H")
INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")

_pack_int32_into = INT32.pack_into

# A bytes-like search that also works on memoryview, which has no find(). The framer's
# bodies are memoryviews; converting them to bytes just to search would copy the body.
_nul_search = re.compile(b"\x00").search

# PostgreSQL's own names for the encodings a client is likely to use, so that decoding
# errors read exactly like the server's ("invalid byte sequence for encoding "UTF8"").
_PG_ENCODING_NAMES = {
    "utf-8": "UTF8",
    "iso8859-1": "LATIN1",
    "iso8859-2": "LATIN2",
    "iso8859-15": "LATIN9",
    "ascii": "SQL_ASCII",
    "cp1250": "WIN1250",
    "cp1251": "WIN1251",
    "cp1252": "WIN1252",
    "euc_jp": "EUC_JP",
    "shift_jis": "SJIS",
    "gbk": "GBK",
    "big5": "BIG5",
    "koi8-r": "KOI8R",
}


def pg_encoding_name(encoding: str) -> str:
    """PostgreSQL's name for a Python codec name (``"utf-8"`` → ``"UTF8"``)."""
    name = codecs.lookup(encoding).name
    return _PG_ENCODING_NAMES.get(name, name.upper().replace("-", "").replace("_", ""))


def invalid_encoding(exc: UnicodeDecodeError, encoding: str) -> ProtocolViolation:
    """The violation PostgreSQL reports for bytes that are not valid in *encoding*.

    Like the server's ``report_invalid_encoding``, it shows the bytes of the offending
    character (as far as the lead byte says it reaches, at most 8), not just one byte.
    """
    raw = exc.object
    start = exc.start
    width = exc.end - start
    if codecs.lookup(encoding).name == "utf-8":
        lead = raw[start]
        if lead & 0xE0 == 0xC0:
            width = 2
        elif lead & 0xF0 == 0xE0:
            width = 3
        elif lead & 0xF8 == 0xF0:
            width = 4
        else:
            width = 1
    shown = raw[start : min(start + width, start + 8, len(raw))]
    hex_bytes = " ".join(f"0x{b:02x}" for b in shown)
    return ProtocolViolation(
        f'invalid byte sequence for encoding "{pg_encoding_name(encoding)}": {hex_bytes}',
        CHARACTER_NOT_IN_REPERTOIRE,
    )


def decode_text(raw: Body, encoding: str) -> str:
    """Decode *raw* strictly; invalid bytes become PostgreSQL's 22021 error."""
    try:
        return str(raw, encoding)
    except UnicodeDecodeError as exc:
        raise invalid_encoding(exc, encoding) from None


def insufficient_data() -> ProtocolViolation:
    return ProtocolViolation("insufficient data left in message")


def invalid_format() -> ProtocolViolation:
    return ProtocolViolation("invalid message format")


class MessageReader:
    """A cursor over one message body; every read checks the bounds.

    Strings and byte fields are copied out of the body (``bytes`` / ``str``) so that a
    decoded message never references the caller's buffer: the framer reuses its buffer
    after the handler returns, and a decoded message may live much longer.
    """

    __slots__ = ("buf", "encoding", "end", "pos", "view")

    def __init__(self, body: Body, encoding: str = "utf-8") -> None:
        self.buf = body
        self.view = body if isinstance(body, memoryview) else memoryview(body)
        self.pos = 0
        self.end = len(self.view)
        self.encoding = encoding

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def byte(self) -> int:
        pos = self.pos
        if pos >= self.end:
            raise insufficient_data()
        self.pos = pos + 1
        return self.view[pos]

    def _unpack(self, fmt: struct.Struct) -> int:
        pos = self.pos
        if pos + fmt.size > self.end:
            raise insufficient_data()
        self.pos = pos + fmt.size
        value: int = fmt.unpack_from(self.view, pos)[0]
        return value

    def int16(self) -> int:
        return self._unpack(INT16)

    def uint16(self) -> int:
        """An Int16 count. PostgreSQL reads counts as unsigned (up to 65535 Bind
        parameters are legal), so a "negative" count is a huge one that the data
        that follows cannot satisfy."""
        return self._unpack(UINT16)

    def int32(self) -> int:
        return self._unpack(INT32)

    def uint32(self) -> int:
        return self._unpack(UINT32)

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        """Several fixed-width fields in one call (a RowDescription field)."""
        pos = self.pos
        if pos + fmt.size > self.end:
            raise insufficient_data()
        self.pos = pos + fmt.size
        values: tuple[int, ...] = fmt.unpack_from(self.view, pos)
        return values

    def bytes(self, n: int) -> builtins.bytes:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise insufficient_data()
        self.pos = pos + n
        return self.view[pos : pos + n].tobytes()

    def rest(self) -> builtins.bytes:
        """All bytes up to the end of the body (CopyData, SASL payloads)."""
        pos = self.pos
        self.pos = self.end
        return self.view[pos:].tobytes()

    def _cstring_end(self) -> int:
        pos = self.pos
        buf = self.buf
        if isinstance(buf, memoryview):
            match = _nul_search(buf, pos)
            nul = -1 if match is None else match.start()
        else:
            nul = buf.find(0, pos)
        if nul < 0:
            raise ProtocolViolation("invalid string in message")
        return nul

    def cstring(self) -> str:
        """A NUL-terminated string, decoded with the reader's encoding."""
        nul = self._cstring_end()
        pos = self.pos
        self.pos = nul + 1
        return decode_text(self.view[pos:nul], self.encoding)

    def cstring_bytes(self) -> builtins.bytes:
        """A NUL-terminated string as raw bytes (no decoding)."""
        nul = self._cstring_end()
        pos = self.pos
        self.pos = nul + 1
        return self.view[pos:nul].tobytes()

    def finish(self) -> None:
        """Fail unless the whole body was consumed (PostgreSQL's ``pq_getmsgend``)."""
        if self.pos != self.end:
            raise invalid_format()


class MessageBuilder:
    """Appends protocol messages to one buffer, back-patching lengths.

    ``start(type)`` reserves the type byte and the length, the typed appenders write the
    body, ``end()`` writes the length once the body's size is known. ``start(None)``
    begins an untyped startup-phase packet, whose length is its first field.
    Several messages may be built one after another; ``getvalue()`` returns them all.
    """

    __slots__ = ("_buf", "_len_at", "encoding")

    def __init__(self, encoding: str = "utf-8") -> None:
        self._buf = bytearray()
        self._len_at = -1  # offset of the open message's length field; -1: none open
        self.encoding = encoding

    def start(self, msg_type: int | builtins.bytes | None) -> Self:
        if self._len_at >= 0:
            raise RuntimeError("start() called while a message is still open")
        buf = self._buf
        if msg_type is not None:
            if isinstance(msg_type, builtins.bytes):
                if len(msg_type) != 1:
                    raise ValueError(f"message type must be one byte, got {msg_type!r}")
                msg_type = msg_type[0]
            buf.append(msg_type)
        self._len_at = len(buf)
        buf += b"\x00\x00\x00\x00"
        return self

    def end(self) -> Self:
        len_at = self._len_at
        if len_at < 0:
            raise RuntimeError("end() called without start()")
        # The length counts itself and the body but not the type byte.
        _pack_int32_into(self._buf, len_at, len(self._buf) - len_at)
        self._len_at = -1
        return self

    def byte(self, value: int) -> Self:
        self._buf.append(value)
        return self

    def int16(self, value: int) -> Self:
        self._buf += INT16.pack(value)
        return self

    def uint16(self, value: int) -> Self:
        self._buf += UINT16.pack(value)
        return self

    def int32(self, value: int) -> Self:
        self._buf += INT32.pack(value)
        return self

    def uint32(self, value: int) -> Self:
        self._buf += UINT32.pack(value)
        return self

    def cstring(self, value: str) -> Self:
        """A NUL-terminated string. A NUL inside *value* is refused: it would end the
        string early and let the rest be read as further fields (field injection)."""
        raw = value.encode(self.encoding)
        if b"\x00" in raw:
            raise ValueError("a protocol string cannot contain a NUL character")
        self._buf += raw
        self._buf.append(0)
        return self

    def cstring_bytes(self, value: builtins.bytes) -> Self:
        if b"\x00" in value:
            raise ValueError("a protocol string cannot contain a NUL byte")
        self._buf += value
        self._buf.append(0)
        return self

    def bytes(self, value: builtins.bytes | bytearray | memoryview) -> Self:
        self._buf += value
        return self

    def value(self, value: builtins.bytes | bytearray | memoryview | None) -> Self:
        """An Int32 length then the bytes; ``None`` is written as length -1 (NULL)."""
        if value is None:
            self._buf += b"\xff\xff\xff\xff"
        else:
            self._buf += INT32.pack(len(value))
            self._buf += value
        return self

    def __len__(self) -> int:
        return len(self._buf)

    def getvalue(self) -> builtins.bytes:
        if self._len_at >= 0:
            raise RuntimeError("getvalue() called while a message is still open")
        return builtins.bytes(self._buf)

    def clear(self) -> None:
        self._buf.clear()
        self._len_at = -1
