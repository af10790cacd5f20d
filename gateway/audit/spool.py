"""The durable local spool of one worker chain: append-only segment files, group commit.

This module owns the on-disk layout under ``audit.spool_dir``, crash recovery, and the
acknowledgement bookkeeping between the spool and a transport (Kafka). It stores records
as opaque bytes: what is inside them is :mod:`gateway.audit.batch`'s business.

Layout: ``<spool_dir>/<gateway>/worker-<n>/`` holds

- segment files ``<base>.seg``: an 8-byte magic ``PGWSEG1\\n`` then frames
  ``length (u32 BE) | CRC-32 of the record (u32 BE) | record``. ``<base>`` (20 digits) is
  the segment's first *position*: positions number the bytes of the chain's spool since it
  was created, across segments, so a position never repeats and survives restarts.
- ``ack``: the position up to which a transport has acknowledged (20 decimal digits and a
  newline, rewritten in place, not fsynced: see :meth:`Spool.ack`).
- ``lock``: ``flock``-ed while a process owns the chain, so two processes never append
  to the same chain.

``<gateway>`` is the gateway id, percent-encoded so that any id is one safe directory
name. Segments are rotated at ``segment_bytes``; a record larger than that gets a segment
of its own.

Durability: :meth:`Spool.append` writes every record it is given and then fsyncs once
(group commit); a record counts as written only when ``append`` returns. A crash in the
middle of an append leaves a torn frame at the end of the last segment; on open the spool
checks the last segment's frames (length, CRC) and truncates it after the last complete
one, so the records before are never lost. Earlier segments were complete when the next
one was started, so they are not rescanned on open (that would read up to
``spool_max_bytes`` at every start); readers check every frame's CRC as they go.

Deletion: with ``retain_acked`` false, :meth:`Spool.ack` deletes segments that are wholly
acknowledged, except the last one, which holds the record a new epoch links to. With
``retain_acked`` true (no Kafka: the spool *is* the audit log) nothing is deleted.

Thread safety: ``append`` runs in an executor thread while the event loop reads ``full``
and a shipper calls ``unacked``/``ack``; the shared state is guarded by a lock, and
readers only read bytes that an append has finished writing.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from gateway.audit.batch import HEADER_BYTES, TRAILER_BYTES, SourcedRecord, partition_key

_ACK_BYTES = 21  # "%020d\n"
#: Record bytes appended and not yet acknowledged that a spool keeps in memory for its
#: transport (unacked_cached); past this (Kafka away for long) the transport reads files.
RECENT_BYTES = 64 << 20

__all__ = [
    "MIN_RECORD_BYTES",
    "SEGMENT_MAGIC",
    "Spool",
    "SpoolCorrupt",
    "SpoolError",
    "SpooledBatch",
    "chain_directory",
    "follow_spool",
    "read_spool",
]

log = logging.getLogger("pgwarden.audit")

SEGMENT_MAGIC = b"PGWSEG1\n"
SEGMENT_SUFFIX = ".seg"
_FRAME = struct.Struct(">II")
FRAME_OVERHEAD = _FRAME.size
#: No valid record is shorter (envelope and an empty payload); a zero-filled tail left by
#: a crash has length 0 and CRC 0, which this rejects.
MIN_RECORD_BYTES = HEADER_BYTES + TRAILER_BYTES
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_WORKER_DIR = re.compile(r"^worker-(\d+)$")


class SpoolError(Exception):
    """The spool cannot be used or written; the message says which file and why."""


class SpoolCorrupt(SpoolError):
    """A frame that was complete when written no longer checks out."""


class SpooledBatch(NamedTuple):
    """One record in the spool, for a transport."""

    #: The spool position just after this record: ``ack(position)`` acknowledges it and
    #: everything before it; ``unacked(position)`` continues after it.
    position: int
    key: bytes  # the chain's partition key (batch.partition_key)
    record: bytes


def chain_directory(root: str | os.PathLike[str], gateway_id: str, worker_id: int) -> Path:
    """``<root>/<percent-encoded gateway id>/worker-<n>``."""
    if not gateway_id:
        raise ValueError("gateway_id must not be empty")
    name = urllib.parse.quote(gateway_id, safe="")
    if name in (".", ".."):
        name = name.replace(".", "%2E")
    return Path(root) / name / f"worker-{worker_id}"


@dataclass
class _Segment:
    base: int
    path: Path
    size: int  # bytes of complete frames (plus the magic)


def _frame(record: bytes) -> bytes:
    return _FRAME.pack(len(record), zlib.crc32(record)) + record


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _FrameReader:
    """Walks the frames of one segment file from an offset, checking each one."""

    def __init__(self, fh: BinaryIO, offset: int, limit: int) -> None:
        self.fh = fh
        self.offset = offset  # of the next frame
        self.limit = limit  # bytes of the file that may be read
        self.problem = ""  # why the walk stopped early, "" at a clean end
        self.complete = True  # False if it stopped at a frame cut short by the limit
        self.bad_length = 0  # length of a whole frame whose CRC did not match
        fh.seek(offset)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """(offset of the frame, record) for every good frame; sets ``problem`` at a bad
        one and stops."""
        while self.offset < self.limit:
            remaining = self.limit - self.offset
            if remaining < FRAME_OVERHEAD:
                self.problem, self.complete = f"{remaining} bytes of a frame header", False
                return
            length, crc = _FRAME.unpack(self.fh.read(FRAME_OVERHEAD))
            if length < MIN_RECORD_BYTES:
                self.problem = f"frame length {length} is impossible (a record has >= "
                self.problem += f"{MIN_RECORD_BYTES} bytes)"
                return
            if FRAME_OVERHEAD + length > remaining:
                self.problem = (
                    f"frame of {length} bytes cut short after {remaining - FRAME_OVERHEAD}"
                )
                self.complete = False
                return
            record = self.fh.read(length)
            if zlib.crc32(record) != crc:
                self.problem = "CRC-32 mismatch: the frame's bytes changed after it was written"
                self.bad_length = length
                return
            yield self.offset, record
            self.offset += FRAME_OVERHEAD + length


def _torn_tail(fh: BinaryIO, reader: _FrameReader, size: int) -> bool:
    """Whether the bad frame ``reader`` stopped at looks like a write a crash cut short:
    incomplete, or the last frame of the file, or followed only by zero bytes (a file
    system may extend a file before the data blocks reach the disk). Anything else is a
    record that was whole and changed afterwards."""
    if not reader.complete:
        return True
    fh.seek(reader.offset)
    length, _ = _FRAME.unpack(fh.read(FRAME_OVERHEAD))
    if reader.offset + FRAME_OVERHEAD + length == size:
        return True
    fh.seek(reader.offset)
    while chunk := fh.read(1 << 20):
        if chunk.strip(b"\0"):
            return False
    return True


class Spool:
    """The spool of one worker chain (see the module docstring). Opening it takes the
    chain's lock and recovers a torn tail; the methods block (call them off the event
    loop)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        gateway_id: str,
        worker_id: int,
        *,
        segment_bytes: int = 16 << 20,
        max_bytes: int = 1 << 30,
        retain_acked: bool = False,
        lock_timeout: float = 0.0,
    ) -> None:
        if segment_bytes < 4096:
            raise ValueError(f"segment_bytes must be >= 4096, got {segment_bytes}")
        self.directory = chain_directory(root, gateway_id, worker_id)
        self.key = partition_key(gateway_id, worker_id)
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.retain_acked = retain_acked
        #: Bytes cut from a torn tail when the spool was opened (0 after a clean stop).
        self.recovered_bytes = 0
        self._state = threading.Lock()  # segments, sizes, end, acked, last record
        self._append_lock = threading.Lock()  # one append at a time
        self._ack_lock = threading.Lock()  # one ack file write at a time
        self._ack_fd: int | None = None
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # open for appending to the last segment
        self._last_record: bytes | None = None
        self._size = 0
        self._acked = 0
        self._closed = False
        # The records appended by this process and not yet acknowledged, with the
        # position each one follows (the end of the record before it), as long as they
        # are a contiguous run: unacked_cached() serves a transport from here instead of
        # reading the segment files back (bounded; beyond the bound, files are read).
        self._recent: collections.deque[tuple[int, SpooledBatch]] = collections.deque()
        self._recent_bytes = 0
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool {self.directory}: {exc.strerror}") from None
        self._lock_fd = self._take_lock(lock_timeout)
        try:
            self._recover()
            self._acked = self._read_ack()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # ------------------------------------------------------------------ opening

    def _take_lock(self, timeout: float) -> int:
        path = self.directory / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise SpoolError(
                        f"spool {self.directory} is in use by another process"
                        + (f" (pid {holder})" if holder else "")
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _recover(self) -> None:
        found: list[_Segment] = []
        for entry in self.directory.iterdir():
            if m := _SEGMENT_NAME.match(entry.name):
                found.append(_Segment(int(m.group(1)), entry, entry.stat().st_size))
            elif entry.name.endswith(".tmp"):
                entry.unlink()  # an ack file write that did not finish
        found.sort(key=lambda seg: seg.base)
        while found:
            last = found[-1]
            valid, last_record = self._scan_tail(last)
            if valid < last.size:
                dropped = last.size - valid
                self.recovered_bytes += dropped
                log.warning(
                    "audit spool %s: cut %d bytes of an incomplete write from the end of %s "
                    "(the process stopped mid-append; every complete record is kept)",
                    self.directory, dropped, last.path.name,
                )
            if last_record is None:
                # No complete record: a segment created by an append that never finished.
                last.path.unlink()
                found.pop()
                continue
            if valid < last.size:
                with open(last.path, "r+b") as fh:
                    fh.truncate(valid)
                    os.fsync(fh.fileno())
                last.size = valid
            self._last_record = last_record
            break
        self._segments = found
        self._size = sum(seg.size for seg in found)
        if found:
            self._fd = os.open(found[-1].path, os.O_WRONLY | os.O_APPEND)

    def _scan_tail(self, seg: _Segment) -> tuple[int, bytes | None]:
        """Length of the valid prefix of ``seg`` and its last complete record."""
        with open(seg.path, "rb") as fh:
            head = fh.read(len(SEGMENT_MAGIC))
            if head != SEGMENT_MAGIC:
                if SEGMENT_MAGIC.startswith(head):  # created, magic not (all) written
                    return 0, None
                raise SpoolCorrupt(f"{seg.path} is not a spool segment (bad magic {head!r})")
            reader = _FrameReader(fh, len(SEGMENT_MAGIC), seg.size)
            last: bytes | None = None
            for _, record in reader:
                last = record
            if reader.problem and not _torn_tail(fh, reader, seg.size):
                # Cutting here would destroy the records after it: evidence. Refuse.
                raise SpoolCorrupt(
                    f"{seg.path} at byte {reader.offset}: {reader.problem}, and complete "
                    "records follow it, so this is not a torn write. Move the directory "
                    f"{self.directory} aside (pgwarden audit verify can still read it) to "
                    "start a new chain."
                )
            return reader.offset, last

    def _read_ack(self) -> int:
        path = self.directory / "ack"
        try:
            text = path.read_text()
        except FileNotFoundError:
            return self._start()
        try:
            value = int(text.strip())
        except ValueError:
            # Resending is safe (consumers drop duplicates); skipping is not.
            log.error("audit spool %s: unreadable ack file %r; resending everything", path, text)
            return self._start()
        return min(max(value, self._start()), self.end)

    def _start(self) -> int:
        return self._segments[0].base if self._segments else 0

    # ------------------------------------------------------------------ state

    @property
    def end(self) -> int:
        """Position just after the last record written."""
        with self._state:
            if not self._segments:
                return self._acked
            seg = self._segments[-1]
            return seg.base + seg.size

    @property
    def acked(self) -> int:
        """Position up to which a transport acknowledged."""
        return self._acked

    @property
    def size_bytes(self) -> int:
        """Bytes on disk in segment files."""
        return self._size

    @property
    def full(self) -> bool:
        """Whether the spool has reached ``max_bytes``."""
        return self._size >= self.max_bytes

    def last_record(self) -> bytes | None:
        """The last record written, ``None`` if the chain has never written one."""
        return self._last_record

    # ------------------------------------------------------------------ writing

    def append(self, records: Sequence[bytes]) -> int:
        """Write ``records`` in order and fsync once; returns the new end position.

        On failure nothing of this call remains (the segment is cut back and new segments
        removed), so the caller may retry the same records.
        """
        if self._closed:
            raise SpoolError(f"spool {self.directory} is closed")
        if not records:
            return self.end
        with self._append_lock:
            with self._state:
                cur = self._segments[-1] if self._segments else None
                base = cur.base + cur.size if cur else self._acked
            # Plan: which frames go into the current segment and which into new ones.
            pieces: list[list[bytes]] = [[]]
            sizes = [cur.size if cur else 0]
            new_bases: list[int] = [] if cur else [base]
            piece_base = cur.base if cur else base
            ends: list[int] = []  # each record's position
            if not cur:
                pieces[0].append(SEGMENT_MAGIC)
                sizes[0] = len(SEGMENT_MAGIC)
            for record in records:
                frame = _frame(record)
                if (
                    sizes[-1] > len(SEGMENT_MAGIC)
                    and sizes[-1] + len(frame) > self.segment_bytes
                ):
                    start = (cur.base if cur and len(pieces) == 1 else new_bases[-1]) + sizes[-1]
                    new_bases.append(start)
                    piece_base = start
                    pieces.append([SEGMENT_MAGIC])
                    sizes.append(len(SEGMENT_MAGIC))
                pieces[-1].append(frame)
                sizes[-1] += len(frame)
                ends.append(piece_base + sizes[-1])
            created: list[_Segment] = []
            old_size = cur.size if cur else 0
            try:
                groups = iter(zip(pieces, sizes, strict=True))
                if cur:
                    chunk, size = next(groups)
                    if len(chunk) > 0:
                        assert self._fd is not None
                        _write_all(self._fd, b"".join(chunk))
                        if len(pieces) > 1:
                            os.fdatasync(self._fd)
                for (chunk, size), seg_base in zip(groups, new_bases, strict=True):
                    path = self.directory / f"{seg_base:020d}{SEGMENT_SUFFIX}"
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
                    created.append(_Segment(seg_base, path, size))
                    if self._fd is not None:
                        os.close(self._fd)
                    self._fd = fd
                    _write_all(fd, b"".join(chunk))
                    if len(created) < len(new_bases):
                        os.fdatasync(fd)
                assert self._fd is not None
                os.fdatasync(self._fd)
                if created:
                    _fsync_dir(self.directory)
            except OSError as exc:
                self._undo(cur, old_size, created)
                raise SpoolError(
                    f"cannot write audit spool {self.directory}: {exc.strerror or exc}"
                ) from exc
            with self._state:
                if cur:
                    cur.size = sizes[0]
                self._segments.extend(created)
                self._size += sum(sizes) - old_size
                self._last_record = records[-1]
                self._remember(base, records, ends)
                seg = self._segments[-1]
                return seg.base + seg.size

    def _remember(self, follows: int, records: Sequence[bytes], ends: list[int]) -> None:
        """Keep what append() just wrote for unacked_cached (under ``_state``)."""
        recent = self._recent
        if recent and recent[-1][1].position != follows:
            recent.clear()  # not contiguous (cannot happen): read files instead
            self._recent_bytes = 0
        for record, end in zip(records, ends, strict=True):
            recent.append((follows, SpooledBatch(end, self.key, record)))
            self._recent_bytes += len(record)
            follows = end
        while recent and self._recent_bytes > RECENT_BYTES:
            self._recent_bytes -= len(recent.popleft()[1].record)

    def _undo(self, cur: _Segment | None, old_size: int, created: list[_Segment]) -> None:
        # Leave the spool exactly as it was, so a retry neither duplicates nor tears.
        for seg in created:
            with contextlib.suppress(OSError):
                seg.path.unlink()
        if self._fd is not None and created:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if cur is not None:
            try:
                if self._fd is None:
                    self._fd = os.open(cur.path, os.O_WRONLY | os.O_APPEND)
                os.ftruncate(self._fd, old_size)
            except OSError as exc:
                log.error(
                    "audit spool %s: cannot cut %s back to %d bytes after a failed write "
                    "(%s); the next open will check it", self.directory, cur.path.name,
                    old_size, exc.strerror or exc,
                )

    # ------------------------------------------------------------------ transport side

    def unacked(self, start: int | None = None) -> Iterator[SpooledBatch]:
        """Records not yet acknowledged, in order, from ``start`` (a position returned
        earlier, e.g. the last one sent) or from the acknowledged position.

        Reads only records whose append had completed when the iteration began.
        """
        with self._state:
            segments = [(seg.base, seg.path, seg.size) for seg in self._segments]
            position = max(start if start is not None else 0, self._acked)
        for base, path, size in segments:
            if base + size <= position:
                continue
            offset = max(position - base, len(SEGMENT_MAGIC))
            try:
                fh = open(path, "rb")  # noqa: SIM115 - closed below, across yields
            except FileNotFoundError:
                continue  # acknowledged and deleted meanwhile
            with fh:
                reader = _FrameReader(fh, offset, size)
                for frame_offset, record in reader:
                    end = base + frame_offset + FRAME_OVERHEAD + len(record)
                    yield SpooledBatch(end, self.key, record)
                if reader.problem:
                    raise SpoolCorrupt(f"{path} at byte {reader.offset}: {reader.problem}")

    def unacked_cached(self) -> list[SpooledBatch] | None:
        """What ``list(unacked())`` would give, from memory: the records this process
        appended since the acknowledged position, or ``None`` when memory does not hold
        all of them (records of an earlier process, or beyond the bound) and the files
        must be read. Cheap enough for the event loop's thread: no I/O."""
        with self._state:
            position = self._acked
            end = self._segments[-1].base + self._segments[-1].size if self._segments else position
            if position >= end:
                return []
            recent = self._recent
            if not recent or recent[0][0] > position:
                return None
            return [item for _, item in recent if item.position > position]

    def ack(self, position: int) -> None:
        """Mark every record up to ``position`` as delivered: persist it and (unless
        ``retain_acked``) delete segments that hold nothing else."""
        with self._ack_lock:
            with self._state:
                if position <= self._acked:
                    return
                end = self._segments[-1].base + self._segments[-1].size if self._segments else 0
                if position > end:
                    raise ValueError(f"ack({position}) is beyond the spool's end ({end})")
            # Rewritten in place and not fsynced: an acknowledgement lost to a crash only
            # means its records are sent again, and consumers drop exact duplicates (an
            # unreadable file is read as "nothing acknowledged"). Fsyncing it would cost
            # more than the batch it acknowledges.
            if self._ack_fd is None:
                self._ack_fd = os.open(self.directory / "ack", os.O_WRONLY | os.O_CREAT, 0o600)
                os.ftruncate(self._ack_fd, _ACK_BYTES)
            if os.pwrite(self._ack_fd, b"%020d\n" % position, 0) != _ACK_BYTES:
                raise SpoolError(f"short write to {self.directory / 'ack'}")
            with self._state:
                self._acked = position
                recent = self._recent
                while recent and recent[0][1].position <= position:
                    self._recent_bytes -= len(recent.popleft()[1].record)
                doomed: list[_Segment] = []
                if not self.retain_acked:
                    # Never the last segment: it holds the record a new epoch links to.
                    while len(self._segments) > 1 and self._segments[1].base <= position:
                        doomed.append(self._segments.pop(0))
                    self._size -= sum(seg.size for seg in doomed)
            for seg in doomed:
                with contextlib.suppress(FileNotFoundError):
                    seg.path.unlink()

    def close(self) -> None:
        """Release the file handles and the chain's lock."""
        if self._closed:
            return
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._ack_fd is not None:
            os.close(self._ack_fd)
            self._ack_fd = None
        os.close(self._lock_fd)


# ---------------------------------------------------------------------- reading for audit


def _segment_files(directory: Path) -> list[tuple[int, Path]]:
    """(base position, path) of a chain directory's segment files, in order."""
    return sorted(
        (int(m.group(1)), p) for p in directory.iterdir() if (m := _SEGMENT_NAME.match(p.name))
    )


def _workers_in(directory: Path) -> list[tuple[int, Path]]:
    return sorted(
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if p.is_dir() and (m := _WORKER_DIR.match(p.name))
    )


def _chain_dirs(path: Path) -> Iterator[tuple[str, int, Path]]:
    """(gateway id, worker, directory) of every chain under ``path``, which may be the
    spool root, one gateway's directory, or one chain's directory."""
    path = path.resolve()  # "." inside a chain's directory still has a name
    if m := _WORKER_DIR.match(path.name):
        yield urllib.parse.unquote(path.parent.name), int(m.group(1)), path
        return
    if workers := _workers_in(path):
        for worker, p in workers:
            yield urllib.parse.unquote(path.name), worker, p
        return
    for gateway_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        for worker, p in _workers_in(gateway_dir):
            yield urllib.parse.unquote(gateway_dir.name), worker, p


def read_spool(path: str | os.PathLike[str]) -> Iterator[SourcedRecord]:
    """Every record of every chain under ``path`` (a spool root, a gateway's directory or
    one chain's directory), chain by chain, in order, acknowledged ones included while
    their segment exists. Read-only: no lock, no recovery, so it can read a live spool.

    Problems of the container come as items with ``error`` set: a frame whose CRC does
    not match (its bytes are still passed on, so the verifier can say what changed) or a
    frame that cannot be read at all. An incomplete frame at the very end of a chain is
    marked ``tail``: a crash mid-append, or an append in progress.
    """
    root = Path(path)
    if not root.is_dir():
        raise SpoolError(f"{root} is not a directory")
    for gateway, worker, directory in _chain_dirs(root):
        key = partition_key(gateway, worker)
        segments = _segment_files(directory)
        for index, (_, seg_path) in enumerate(segments):
            last_segment = index == len(segments) - 1
            try:
                fh = open(seg_path, "rb")  # noqa: SIM115 - closed below, across yields
            except FileNotFoundError:
                continue  # deleted (acknowledged) while we were reading
            with fh:
                size = os.fstat(fh.fileno()).st_size
                if fh.read(len(SEGMENT_MAGIC)) != SEGMENT_MAGIC:
                    yield SourcedRecord(
                        b"", str(seg_path), key,
                        "not a spool segment (bad magic)", last_segment and size < 8,
                    )
                    continue
                yield from _read_segment(fh, seg_path, size, key, last_segment)


def _read_segment(
    fh: BinaryIO, path: Path, size: int, key: bytes, last_segment: bool
) -> Iterator[SourcedRecord]:
    offset = len(SEGMENT_MAGIC)
    while True:
        reader = _FrameReader(fh, offset, size)
        for frame_offset, record in reader:
            yield SourcedRecord(record, f"{path}@{frame_offset}", key)
        if not reader.problem:
            return
        offset = reader.offset
        if last_segment and _torn_tail(fh, reader, size):
            yield SourcedRecord(
                b"", f"{path}@{offset}", key,
                f"incomplete write at the end of the chain ({size - offset} bytes: "
                f"{reader.problem}): a crash mid-append, or an append in progress",
                True,
            )
            return
        if reader.bad_length:
            # The frame is whole but its bytes changed: pass them on with the finding, so
            # the verifier can also say what the change did (signature, chain).
            fh.seek(offset + FRAME_OVERHEAD)
            yield SourcedRecord(fh.read(reader.bad_length), f"{path}@{offset}", key, reader.problem)
            offset += FRAME_OVERHEAD + reader.bad_length
            continue
        yield SourcedRecord(
            b"", f"{path}@{offset}", key,
            f"unreadable frame ({reader.problem}); the rest of this segment "
            f"({size - offset} bytes) cannot be read",
        )
        return


def follow_spool(
    path: str | os.PathLike[str],
    *,
    interval: float = 0.5,
    stop: Callable[[], bool] | None = None,
) -> Iterator[SourcedRecord]:
    """Like :func:`read_spool`, then keep polling every ``interval`` seconds for records
    appended later (``pgwarden audit tail --follow``). Ends when ``stop()`` is true.

    An incomplete frame at the end of a chain is an append in progress: it is read again
    at the next poll instead of being reported.
    """
    root = Path(path)
    if not root.is_dir():
        raise SpoolError(f"{root} is not a directory")
    # chain directory -> (base of the segment being read, offset of its next frame)
    positions: dict[Path, tuple[int, int]] = {}
    while True:
        progressed = False
        for gateway, worker, directory in _chain_dirs(root):
            key = partition_key(gateway, worker)
            segments = _segment_files(directory)
            current_base, current_offset = positions.get(directory, (-1, 0))
            for index, (base, seg_path) in enumerate(segments):
                if base < current_base:
                    continue
                start = current_offset if base == current_base else len(SEGMENT_MAGIC)
                try:
                    fh = open(seg_path, "rb")  # noqa: SIM115 - closed below, across yields
                except FileNotFoundError:
                    continue
                with fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size < len(SEGMENT_MAGIC) or fh.read(len(SEGMENT_MAGIC)) != SEGMENT_MAGIC:
                        break  # being created; next poll
                    reader = _FrameReader(fh, start, size)
                    for frame_offset, record in reader:
                        progressed = True
                        yield SourcedRecord(record, f"{seg_path}@{frame_offset}", key)
                    positions[directory] = (base, reader.offset)
                    last_segment = index == len(segments) - 1
                    if reader.problem and last_segment and _torn_tail(fh, reader, size):
                        break  # an append in progress
                    if reader.problem:
                        yield SourcedRecord(
                            b"", f"{seg_path}@{reader.offset}", key,
                            f"unreadable frame ({reader.problem}); the rest of this segment "
                            "is skipped",
                        )
                        positions[directory] = (base, size)
                current_base, current_offset = positions.get(directory, (-1, 0))
        if stop is not None and stop():
            return
        if not progressed:
            time.sleep(interval)
