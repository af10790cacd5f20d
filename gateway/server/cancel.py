"""Cancel keys issued to clients, and the datagram bus between a gateway's workers.

The client never sees the upstream backend's key: it gets a gateway-issued
BackendKeyData whose process id encodes the index of the worker that owns the session.
With ``SO_REUSEPORT`` a CancelRequest may arrive at any worker; that worker forwards the
key over a Unix datagram socket to the owner (one socket per worker index in the run
directory, so a replaced worker takes over its predecessor's address), and the owner
checks the secret and cancels the upstream query itself.

The same sockets carry failed-authentication notices, so that the per-address failure
limit holds for the gateway as a whole and not once per worker (the kernel spreads one
attacker's connections over all workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable

log = logging.getLogger("pgwarden.cancel")

_WORKER_SHIFT = 23
_SEQ_MASK = (1 << _WORKER_SHIFT) - 1
MAX_WORKERS = 255
_KEY = struct.Struct("!II")
_CANCEL = b"C"
_FAILURE = b"F"


def worker_of(pid: int) -> int:
    return pid >> _WORKER_SHIFT


def socket_path(run_dir: str, worker_index: int) -> str:
    return os.path.join(run_dir, f"cancel-{worker_index}.sock")


class CancelRouter:
    """Issues keys for one worker's sessions and delivers cancels to their owners."""

    def __init__(
        self,
        run_dir: str,
        worker_index: int,
        on_cancel: Callable[[int, int], None],
        on_peer_failure: Callable[[str], None] | None = None,
        workers: int = 1,
    ) -> None:
        if not 0 <= worker_index <= MAX_WORKERS:
            raise ValueError(f"worker index {worker_index} out of range")
        self._run_dir = run_dir
        self._index = worker_index
        self._seq = 0
        self._on_cancel = on_cancel
        self._on_peer_failure = on_peer_failure
        self.workers = workers
        self._sock: socket.socket | None = None

    def new_key(self) -> tuple[int, int]:
        """A (pid, secret) pair for a new session of this worker."""
        self._seq = (self._seq % _SEQ_MASK) + 1
        pid = (self._index << _WORKER_SHIFT) | self._seq
        return pid, secrets.randbits(32)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        path = socket_path(self._run_dir, self._index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(path)
        os.chmod(path, 0o600)
        self._sock = sock
        loop.add_reader(sock.fileno(), self._readable)

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            kind, payload = data[:1], data[1:]
            if kind == _CANCEL and len(payload) == _KEY.size:
                self._on_cancel(*_KEY.unpack(payload))
            elif kind == _FAILURE and self._on_peer_failure is not None:
                self._on_peer_failure(payload.decode("ascii", "replace"))

    def route(self, pid: int, secret: int) -> None:
        """Deliver a CancelRequest received by this worker to the worker that owns it."""
        owner = worker_of(pid)
        if owner == self._index:
            self._on_cancel(pid, secret)
            return
        if not self._send(owner, _CANCEL + _KEY.pack(pid, secret)):
            # Unknown worker or gone: PostgreSQL also ignores cancels it cannot match.
            log.debug("cancel for pid %d not delivered to worker %d", pid, owner)

    def broadcast_failure(self, address: str) -> None:
        """Tell every other worker that *address* failed to authenticate here."""
        payload = _FAILURE + address.encode("ascii", "replace")[:64]
        for index in range(self.workers):
            if index != self._index:
                self._send(index, payload)

    def _send(self, index: int, payload: bytes) -> bool:
        sock = self._sock
        try:
            if sock is None:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as tmp:
                    tmp.setblocking(False)
                    tmp.sendto(payload, socket_path(self._run_dir, index))
            else:
                # Best effort: a full or missing peer socket drops the notice.
                sock.sendto(payload, socket_path(self._run_dir, index))
        except OSError:
            return False
        return True


def secret_matches(expected: int, given: int) -> bool:
    return hmac.compare_digest(_KEY.pack(0, expected), _KEY.pack(0, given))
