"""Failed-authentication rate limiting per source address.

Owns one rule: a source that keeps failing to authenticate is refused for a while before
its credential is even looked at, so that guessing static keys or probing tokens costs
the attacker time, not the gateway CPU (a static-key check is a deliberate ~50-100 ms of
scrypt).

The window is **sliding**, approximated with two fixed buckets per source (the "sliding
window counter" of Cloudflare's and similar limiters): the failures of the previous bucket
count in proportion to how much of it still lies within the last ``window`` seconds,
rounded up, so the estimate errs towards blocking and never lets a burst that straddles
a bucket boundary through. An exact sliding log would keep up to ``limit`` timestamps per
address; this keeps a few numbers, whatever the limit. When the estimated failures in the
last ``window`` seconds reach
``limit``, the source is **blocked for ``window`` seconds** from that failure. A blocked
source that fails again (for instance with a certificate, which needs no password) extends
its block.

Sources are keyed by address: an IPv4 address as is, an IPv6 address by its /64 prefix
(one subscriber or host usually owns a whole /64 and can rotate through it freely), an
IPv4-mapped IPv6 address as the IPv4 address it carries. Anything else (``""`` for a unix
socket peer) is its own key, so all unix-socket clients share one budget.

Memory is bounded: entries idle for two windows are forgotten, and beyond ``max_sources``
the least recently failing source is evicted. A flood from more sources than that can
evict a blocked source early; the cap trades that for a worker that cannot be made to run
out of memory. Not thread-safe: one limiter per worker event loop, as the gateway uses it.

It knows nothing about connections or what failed; it must not import ``gateway.server``
or ``gateway.policy``.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_MAX_SOURCES", "FailureLimiter", "source_key"]

DEFAULT_MAX_SOURCES: Final = 100_000
_IPV6_PREFIX_MASK: Final = ((1 << 64) - 1) << 64


def source_key(address: str) -> str:
    """The key failures of ``address`` are counted under (see the module docstring)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        # The scope id (fe80::1%eth0) is dropped by going through the integer.
        return f"{ipaddress.IPv6Address(int(ip) & _IPV6_PREFIX_MASK)}/64"
    return str(ip)


def _weighted(previous: int, elapsed: float) -> int:
    """The part of a previous bucket's ``previous`` failures still inside the window.

    ``elapsed`` is the fraction of the current bucket already gone; the same fraction of
    the previous bucket has slid out. Rounded up (less a hair of float noise, so that
    6 x 0.5 stays 3): a failure is forgotten late rather than early.
    """
    share = previous * max(0.0, 1.0 - elapsed)
    return math.ceil(share - 1e-9) if share > 0 else 0


@dataclass(slots=True)
class _Source:
    bucket: int  # index of the current bucket: floor(now / window)
    current: int  # failures in the current bucket
    previous: int  # failures in the bucket before it
    blocked_until: float
    last_failure: float


class FailureLimiter:
    """Counts authentication failures per source and says when a source is blocked."""

    def __init__(
        self,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_sources: int = DEFAULT_MAX_SOURCES,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if not window > 0 or not math.isfinite(window):
            raise ValueError(f"window must be a positive number of seconds, got {window}")
        if max_sources < 1:
            raise ValueError(f"max_sources must be >= 1, got {max_sources}")
        self.limit = limit
        self.window = float(window)
        self._clock = clock
        self._max_sources = max_sources
        # Ordered by last failure, oldest first: expiry and eviction pop from the front.
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def blocked(self, address: str) -> bool:
        """True while ``address`` must be refused without checking its credential."""
        source = self._sources.get(source_key(address))
        return source is not None and self._clock() < source.blocked_until

    def record_failure(self, address: str) -> None:
        """Count one failed authentication from ``address``; block it at the limit."""
        now = self._clock()
        self._expire(now)
        key = source_key(address)
        bucket = math.floor(now / self.window)
        source = self._sources.get(key)
        if source is None:
            source = _Source(bucket, 0, 0, blocked_until=-math.inf, last_failure=now)
            self._sources[key] = source
            while len(self._sources) > self._max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(key)
            if bucket != source.bucket:
                source.previous = source.current if bucket == source.bucket + 1 else 0
                source.current = 0
                source.bucket = bucket
        source.current += 1
        source.last_failure = now
        if self._estimate(source, now) >= self.limit or now < source.blocked_until:
            source.blocked_until = now + self.window

    def reset(self, address: str) -> None:
        """Forget every failure of ``address`` (and lift its block)."""
        self._sources.pop(source_key(address), None)

    def failures(self, address: str) -> int:
        """Estimated failures of ``address`` within the last ``window`` seconds."""
        source = self._sources.get(source_key(address))
        if source is None:
            return 0
        now = self._clock()
        bucket = math.floor(now / self.window)
        if bucket == source.bucket:
            return self._estimate(source, now)
        if bucket == source.bucket + 1:
            # The current bucket has become the previous one; nothing new since.
            return _weighted(source.current, now / self.window - bucket)
        return 0

    def __len__(self) -> int:
        """Number of sources currently remembered."""
        return len(self._sources)

    def _estimate(self, source: _Source, now: float) -> int:
        return source.current + _weighted(source.previous, now / self.window - source.bucket)

    def _expire(self, now: float) -> None:
        # After two idle windows a source's buckets both lie outside the window, and any
        # block (at most one window after its last failure) has ended.
        horizon = now - 2 * self.window
        while self._sources:
            oldest = next(iter(self._sources.values()))
            if oldest.last_failure > horizon:
                break
            self._sources.popitem(last=False)
