"""gateway.identity.ratelimit: sliding-window failure counting, blocking, bounded memory."""

from __future__ import annotations

import pytest

from gateway.identity.ratelimit import FailureLimiter, source_key


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter(limit: int = 3, window: float = 60.0, **kw: int) -> tuple[FailureLimiter, Clock]:
    clock = Clock()
    return FailureLimiter(limit, window, clock, **kw), clock


def fail(lim: FailureLimiter, address: str, times: int) -> None:
    for _ in range(times):
        lim.record_failure(address)


def test_blocks_at_the_limit_not_before() -> None:
    lim, _ = limiter(limit=3)
    fail(lim, "192.0.2.1", 2)
    assert not lim.blocked("192.0.2.1")
    lim.record_failure("192.0.2.1")
    assert lim.blocked("192.0.2.1")


def test_limit_of_one_blocks_after_first_failure() -> None:
    lim, _ = limiter(limit=1)
    lim.record_failure("192.0.2.1")
    assert lim.blocked("192.0.2.1")


def test_addresses_are_independent() -> None:
    lim, _ = limiter(limit=2)
    fail(lim, "192.0.2.1", 2)
    assert lim.blocked("192.0.2.1")
    assert not lim.blocked("192.0.2.2")
    assert not lim.blocked("2001:db8::1")


def test_block_lasts_one_window_from_the_blocking_failure() -> None:
    lim, clock = limiter(limit=3, window=60.0)
    fail(lim, "a", 3)
    clock.now += 59.9
    assert lim.blocked("a")
    clock.now += 0.2
    assert not lim.blocked("a")


def test_failures_outside_the_window_do_not_count() -> None:
    lim, clock = limiter(limit=3, window=60.0)
    fail(lim, "a", 2)
    clock.now += 200  # two full windows later: forgotten
    fail(lim, "a", 2)
    assert not lim.blocked("a")
    assert lim.failures("a") == 2


def test_window_slides_instead_of_resetting_at_a_boundary() -> None:
    # A fixed window would forget everything at the boundary, letting 2 x (limit - 1)
    # failures through in a moment; the sliding estimate still counts the earlier ones.
    lim, clock = limiter(limit=4, window=60.0)
    clock.now = 119.0  # one second before a bucket boundary
    fail(lim, "a", 3)
    assert not lim.blocked("a")
    clock.now = 121.0  # just after it: the previous bucket still weighs ~98%, rounded up
    assert lim.failures("a") == 3
    lim.record_failure("a")
    assert lim.blocked("a")


def test_previous_bucket_weight_decays() -> None:
    lim, clock = limiter(limit=10, window=60.0)
    clock.now = 60.0
    fail(lim, "a", 6)
    clock.now = 150.0  # halfway through the next bucket
    assert lim.failures("a") == 3
    clock.now = 170.0  # 5/6 through: 6 x 1/6 = 1 left
    assert lim.failures("a") == 1
    clock.now = 179.0  # a sliver left rounds up to one failure, not down to none
    assert lim.failures("a") == 1
    clock.now = 180.0  # the bucket after that: nothing left
    assert lim.failures("a") == 0


def test_failing_while_blocked_extends_the_block() -> None:
    lim, clock = limiter(limit=2, window=60.0)
    fail(lim, "a", 2)
    clock.now += 50
    lim.record_failure("a")
    clock.now += 50  # 100 s after the first block started
    assert lim.blocked("a")


def test_reset_lifts_the_block() -> None:
    lim, _ = limiter(limit=2)
    fail(lim, "a", 2)
    lim.reset("a")
    assert not lim.blocked("a")
    assert lim.failures("a") == 0
    lim.reset("never-seen")  # no error


def test_ipv6_is_keyed_by_slash_64() -> None:
    lim, _ = limiter(limit=2)
    lim.record_failure("2001:db8:1:2::1")
    lim.record_failure("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert lim.blocked("2001:db8:1:2::abcd")
    assert not lim.blocked("2001:db8:1:3::1")


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:0DB8:0001:0002::9", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped: same budget as plain IPv4
        ("", ""),  # unix socket peers share one key
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_source_key(address: str, key: str) -> None:
    assert source_key(address) == key


def test_idle_sources_are_forgotten() -> None:
    lim, clock = limiter(limit=5, window=10.0)
    for i in range(100):
        lim.record_failure(f"10.0.0.{i}")
    assert len(lim) == 100
    clock.now += 20.0
    lim.record_failure("10.0.1.1")
    assert len(lim) == 1


def test_memory_is_capped_by_evicting_the_oldest() -> None:
    lim, clock = limiter(limit=2, window=60.0, max_sources=3)
    fail(lim, "10.0.0.1", 2)
    assert lim.blocked("10.0.0.1")
    for i in range(2, 5):
        clock.now += 1
        lim.record_failure(f"10.0.0.{i}")
    assert len(lim) == 3
    assert not lim.blocked("10.0.0.1")  # evicted, as the documented price of the cap
    # A source that fails again moves to the back and survives eviction.
    lim.record_failure("10.0.0.2")
    lim.record_failure("10.0.0.5")
    assert lim.failures("10.0.0.2") == 2
    assert lim.failures("10.0.0.3") == 0


@pytest.mark.parametrize(
    ("limit", "window", "max_sources"),
    [(0, 60.0, 10), (1, 0.0, 10), (1, -1.0, 10), (1, float("inf"), 10), (1, 60.0, 0)],
)
def test_invalid_parameters(limit: int, window: float, max_sources: int) -> None:
    with pytest.raises(ValueError):
        FailureLimiter(limit, window, max_sources=max_sources)


def test_default_clock_is_monotonic() -> None:
    lim = FailureLimiter(1, 60.0)
    lim.record_failure("192.0.2.1")
    assert lim.blocked("192.0.2.1")
