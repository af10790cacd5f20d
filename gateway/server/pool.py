"""Idle upstream sessions kept for reuse (session pooling, one pool per worker).

Opening a PostgreSQL session costs a TCP connection, a SCRAM exchange on both sides and
a backend fork — milliseconds, against microseconds for everything else pgwarden does per
connection. When a client leaves cleanly (no transaction open, nothing in flight), its
upstream session is reset with ``DISCARD ALL`` (prepared statements, temporary tables,
session settings, LISTEN registrations, advisory locks, role — all back to how the session
started) and kept here for the next client that maps to the same upstream identity.

The pool key is everything that shaped the session at startup: the upstream user, the
database and the forwarded startup parameters (``application_name`` excepted: it names
the principal and is set anew for every client). Sessions are only ever reused for the
same key, so a client can never inherit another role's backend. A session that fails
its reset, errors, or is closed by the server is dropped, never reused.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from gateway.server.upstream import UpstreamError, UpstreamSession

log = logging.getLogger("pgwarden.pool")

PoolKey = tuple[str, str, tuple[tuple[str, str], ...]]

_TERMINATE = b"X\x00\x00\x00\x04"


def pool_key(upstream_user: str, database: str, params: dict[str, str]) -> PoolKey:
    shaped = tuple(sorted((k, v) for k, v in params.items() if k.lower() != "application_name"))
    return (upstream_user, database, shaped)


class _Idle:
    __slots__ = ("session", "timer")

    def __init__(self, session: UpstreamSession, timer: asyncio.TimerHandle) -> None:
        self.session = session
        self.timer = timer


class UpstreamPool:
    """Idle sessions by key, most recently used first out."""

    def __init__(self, max_idle: int, idle_timeout: float) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[PoolKey, OrderedDict[int, _Idle]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._idle.values())

    def acquire(self, key: PoolKey) -> UpstreamSession | None:
        bucket = self._idle.get(key)
        while bucket:
            _, idle = bucket.popitem(last=True)
            idle.timer.cancel()
            session = idle.session
            session.protocol.on_lost = None
            if not session.transport.is_closing():
                self.hits += 1
                return session
        self.misses += 1
        return None

    async def release(self, key: PoolKey, session: UpstreamSession) -> None:
        """Reset a session whose client left cleanly and keep it, or close it."""
        if self.max_idle <= 0 or session.transport.is_closing():
            close_session(session)
            return
        try:
            async with asyncio.timeout(5.0):
                await session.simple_query("DISCARD ALL")
        except (UpstreamError, TimeoutError, OSError) as exc:
            log.info("upstream session not reusable: %s", exc)
            close_session(session)
            return
        if session.tx_status != ord("I") or session.transport.is_closing():
            close_session(session)
            return
        bucket = self._idle.setdefault(key, OrderedDict())
        if len(bucket) >= self.max_idle:
            _, oldest = bucket.popitem(last=False)
            oldest.timer.cancel()
            close_session(oldest.session)
        loop = asyncio.get_running_loop()
        ident = id(session)
        timer = loop.call_later(self.idle_timeout, self._expire, key, ident)
        bucket[ident] = _Idle(session, timer)
        session.protocol.on_lost = lambda exc: self._forget(key, ident)

    def _expire(self, key: PoolKey, ident: int) -> None:
        bucket = self._idle.get(key)
        idle = bucket.pop(ident, None) if bucket else None
        if idle is not None:
            close_session(idle.session)

    def _forget(self, key: PoolKey, ident: int) -> None:
        bucket = self._idle.get(key)
        idle = bucket.pop(ident, None) if bucket else None
        if idle is not None:
            idle.timer.cancel()

    def close_all(self) -> None:
        for bucket in self._idle.values():
            for idle in bucket.values():
                idle.timer.cancel()
                close_session(idle.session)
        self._idle.clear()


def close_session(session: UpstreamSession) -> None:
    """End an upstream session that no client will use."""
    transport = session.transport
    if not transport.is_closing():
        # A polite goodbye lets the backend exit without logging an EOF error.
        transport.write(_TERMINATE)
        transport.close()
