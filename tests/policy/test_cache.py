"""DecisionCache: exact-text tier, normalized tier, bounds, invalidation, collisions."""

from __future__ import annotations

import pytest

import gateway.policy.cache as cache_mod
import gateway.policy.engine as engine_mod
import gateway.sql
from gateway.policy.baseline import BASELINE
from gateway.policy.cache import EXACT_KEY_CHARS, DecisionCache
from gateway.policy.engine import Policy
from gateway.policy.model import Action, DecisionContext, Rule
from gateway.sql import Analysis

CTX = DecisionContext("app", "github:repo:acme/app", "app")


def make(size: int = 100, exact_size: int = 100, rules: list[Rule] | None = None) -> DecisionCache:
    return DecisionCache(Policy(rules if rules is not None else BASELINE), size, exact_size)


class CountingAnalyze:
    """Wraps gateway.sql.analyze to count how often the cache really parses."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, sql: str) -> Analysis:
        self.calls += 1
        return gateway.sql.analyze(sql)


@pytest.fixture
def analyze(monkeypatch: pytest.MonkeyPatch) -> CountingAnalyze:
    counter = CountingAnalyze()
    monkeypatch.setattr(engine_mod, "analyze", counter)
    return counter


def test_exact_text_hit_does_not_parse(analyze: CountingAnalyze) -> None:
    c = make()
    first = c.decide(CTX, "SELECT * FROM t WHERE id = 1")
    again = c.decide(CTX, "SELECT * FROM t WHERE id = 1")
    assert first is again and analyze.calls == 1
    s = c.stats()
    assert (s.misses, s.exact_hits, s.normalized_hits, s.hits) == (1, 1, 0, 1)


def test_constants_share_a_decision_through_the_normalized_tier(analyze: CountingAnalyze) -> None:
    c = make()
    c.decide(CTX, "SELECT * FROM t WHERE id = 1")
    d = c.decide(CTX, "SELECT * FROM t WHERE id = 2")
    assert d.allowed and analyze.calls == 1
    assert c.stats().normalized_hits == 1
    # ... and the new text is then served from the exact tier.
    c.decide(CTX, "SELECT * FROM t WHERE id = 2")
    assert c.stats().exact_hits == 1


def test_blocked_decisions_are_cached_too(analyze: CountingAnalyze) -> None:
    c = make()
    for _ in range(3):
        assert c.decide(CTX, "DELETE FROM t").action is Action.BLOCK
    assert analyze.calls == 1


def test_syntax_errors_fail_closed_and_are_exact_cached(analyze: CountingAnalyze) -> None:
    c = make()
    d = c.decide(CTX, "SELEC 1")
    assert (d.action, d.sqlstate) == (Action.BLOCK, "42601")
    assert c.decide(CTX, "SELEC 1") is d
    assert c.stats().normalized_size == 0


def test_tiers_are_bounded(analyze: CountingAnalyze) -> None:
    c = make(size=5, exact_size=3)
    for i in range(20):
        c.decide(CTX, f"SELECT c{i} FROM t")
    s = c.stats()
    # the exact tier starts a new generation when full (20 = 6 * 3 + 2)
    assert (s.exact_size, s.normalized_size, s.misses) == (2, 5, 20)
    assert s.exact_size <= 3


def test_normalized_tier_is_lru(analyze: CountingAnalyze) -> None:
    c = make(size=2, exact_size=0)
    c.decide(CTX, "SELECT a FROM t")
    c.decide(CTX, "SELECT b FROM t")
    c.decide(CTX, "SELECT a FROM t")  # refresh a
    c.decide(CTX, "SELECT c FROM t")  # evicts b
    calls = analyze.calls
    c.decide(CTX, "SELECT a FROM t")
    assert analyze.calls == calls
    c.decide(CTX, "SELECT b FROM t")
    assert analyze.calls == calls + 1


def test_zero_sizes_disable_caching(analyze: CountingAnalyze) -> None:
    c = make(size=0, exact_size=0)
    c.decide(CTX, "SELECT 1")
    c.decide(CTX, "SELECT 1")
    assert analyze.calls == 2


def test_long_texts_are_exact_cached_by_digest(analyze: CountingAnalyze) -> None:
    c = make()
    sql = "SELECT " + ", ".join(f"c{i}" for i in range(EXACT_KEY_CHARS)) + " FROM t"
    c.decide(CTX, sql)
    c.decide(CTX, sql)
    assert analyze.calls == 1 and c.stats().exact_hits == 1
    assert not any(isinstance(k[1], str) and len(k[1]) > EXACT_KEY_CHARS for k in c._exact)


def test_invalidate_bumps_version_and_forgets(analyze: CountingAnalyze) -> None:
    c = make(rules=[])
    assert c.decide(CTX, "DROP TABLE t").allowed
    version = c.version
    strict = Policy([Rule(id="no-drop", action=Action.BLOCK, commands=("DROP *",))])
    assert c.invalidate(strict) == version + 1
    assert c.stats().exact_size == c.stats().normalized_size == 0
    assert c.decide(CTX, "DROP TABLE t").rule_id == "no-drop"
    c.invalidate()
    assert c.decide(CTX, "DROP TABLE t").rule_id == "no-drop"
    assert analyze.calls == 3


def test_roles_do_not_share_decisions(analyze: CountingAnalyze) -> None:
    rules = [
        Rule(id="ro", action=Action.BLOCK, roles=("readonly",), categories=frozenset({"write"}))
    ]
    c = make(rules=rules)
    sql = "INSERT INTO t VALUES (1)"
    assert c.decide(CTX, sql).allowed
    ro = DecisionContext("readonly", CTX.principal, CTX.database)
    assert c.decide(ro, sql).action is Action.BLOCK


def test_principal_scoped_rules_key_on_the_principal(analyze: CountingAnalyze) -> None:
    rules = [Rule(id="bob", action=Action.BLOCK, principals=("okta:bob",))]
    c = make(rules=rules)
    assert c.decide(CTX, "SELECT 1").allowed
    bob = DecisionContext(CTX.role, "okta:bob", CTX.database)
    assert c.decide(bob, "SELECT 1").action is Action.BLOCK


def test_forced_fingerprint_collision_does_not_leak_an_allow(
    analyze: CountingAnalyze, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the fingerprint says, the cache keys on a strong digest of the normalized
    # text, so a crafted statement with an allowed statement's fingerprint is decided anew.
    monkeypatch.setattr(gateway.sql, "fingerprint", lambda sql: "0000000000000000")
    c = make()
    assert c.decide(CTX, "SELECT * FROM t WHERE id = 1").allowed
    d = c.decide(CTX, "SELECT pg_read_file('/etc/passwd')")
    assert (d.action, d.rule_id) == (Action.BLOCK, "baseline.server_files")
    assert c.decide(CTX, "DELETE FROM t").action is Action.BLOCK


def test_forced_normalized_digest_collision_is_the_only_way_to_leak(
    analyze: CountingAnalyze, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cache's safety rests on the digest: prove the test above would catch a weak one.
    monkeypatch.setattr(cache_mod, "normalized_digest", lambda sql: b"same")
    c = make()
    c.decide(CTX, "SELECT 1")
    assert c.decide(CTX, "DELETE FROM t").allowed  # a 16-byte BLAKE2b makes this infeasible


def test_literal_dependent_statements_are_not_shared_by_normalized_form(
    analyze: CountingAnalyze,
) -> None:
    c = make()
    ok = c.decide(CTX, "SELECT set_config('search_path', 'public', false)")
    assert ok.allowed
    d = c.decide(CTX, "SELECT set_config('role', 'postgres', false)")
    assert (d.action, d.rule_id) == (Action.BLOCK, "baseline.role_switch")
    assert c.stats().uncacheable == 2
    # Exact text is still cached.
    c.decide(CTX, "SELECT set_config('role', 'postgres', false)")
    assert c.stats().exact_hits == 1
