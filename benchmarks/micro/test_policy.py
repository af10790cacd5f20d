"""Micro-benchmarks for gateway/policy: cache hits, misses, and the cost of the cache key.

Run: python -m pytest benchmarks/micro/test_policy.py --benchmark-enable --benchmark-only \
         -p no:cacheprovider

Targets (issue 5): a cache hit <= 2 µs; a miss (parse + classify + decide) <= 50 µs for
typical statements. ``test_key_*`` measure the candidate keys of the normalized tier
(pglast fingerprint alone, fingerprint + verification digest, digest of the normalized
text alone) that gateway/policy/cache.py's docstring compares.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import pytest

from gateway.policy.baseline import BASELINE
from gateway.policy.cache import DecisionCache, normalized_digest
from gateway.policy.engine import Policy, decide, decide_sql
from gateway.policy.model import DecisionContext
from gateway.sql import analyze, fingerprint, normalize

TYPICAL: dict[str, str] = {
    "pgbench_select": "SELECT abalance FROM pgbench_accounts WHERE aid = 51234;",
    "pgbench_update": "UPDATE pgbench_accounts SET abalance = abalance + -4131 WHERE aid = 81;",
    "orm_select": (
        "SELECT users.id, users.email, users.created_at FROM users "
        "WHERE users.org_id = $1 AND users.deleted_at IS NULL ORDER BY users.id LIMIT $2"
    ),
    "join": (
        "SELECT a.id, b.name FROM accounts a JOIN branches b ON a.branch_id = b.id "
        "WHERE a.id = 1 AND b.region = 'eu' ORDER BY a.id LIMIT 10"
    ),
}
IDS = list(TYPICAL)

POLICY = Policy(BASELINE)
CTX = DecisionContext("app", "github:repo:acme/app", "app")


@pytest.mark.parametrize("name", IDS)
def test_hit_exact(benchmark: Any, name: str) -> None:
    cache = DecisionCache(POLICY)
    sql = TYPICAL[name]
    cache.decide(CTX, sql)
    result = benchmark(cache.decide, CTX, sql)
    assert result.allowed and cache.stats().misses == 1


@pytest.mark.parametrize("name", IDS)
def test_hit_normalized(benchmark: Any, name: str) -> None:
    """Same statement, a different constant each time: served by the normalized tier."""
    cache = DecisionCache(POLICY, exact_size=0)
    sql = TYPICAL[name]
    cache.decide(CTX, sql)
    result = benchmark(cache.decide, CTX, sql)
    assert result.allowed and cache.stats().misses == 1


@pytest.mark.parametrize("name", IDS)
def test_miss(benchmark: Any, name: str) -> None:
    """Parse + classify + decide, plus the cache's normalization: every text is new."""
    cache = DecisionCache(POLICY, size=0, exact_size=0)
    sql = TYPICAL[name]
    counter = itertools.count()

    def fresh() -> None:
        # A distinct comment defeats both tiers without changing the statement.
        cache.decide(CTX, f"{sql} /* {next(counter)} */")

    benchmark(fresh)


@pytest.mark.parametrize("name", IDS)
def test_decide_sql_uncached(benchmark: Any, name: str) -> None:
    benchmark(decide_sql, CTX, TYPICAL[name], POLICY)


@pytest.mark.parametrize("name", IDS)
def test_decide_only(benchmark: Any, name: str) -> None:
    analysis = analyze(TYPICAL[name])
    benchmark(decide, CTX, analysis, POLICY)


@pytest.mark.parametrize("name", IDS)
def test_key_fingerprint(benchmark: Any, name: str) -> None:
    benchmark(fingerprint, TYPICAL[name])


@pytest.mark.parametrize("name", IDS)
def test_key_fingerprint_and_verify(benchmark: Any, name: str) -> None:
    sql = TYPICAL[name]

    def both() -> tuple[str, bytes]:
        return fingerprint(sql), hashlib.blake2b(normalize(sql).encode(), digest_size=16).digest()

    benchmark(both)


@pytest.mark.parametrize("name", IDS)
def test_key_normalized_digest(benchmark: Any, name: str) -> None:
    benchmark(normalized_digest, TYPICAL[name])
