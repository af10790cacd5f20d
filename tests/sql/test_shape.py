"""gateway.sql.shape: constants masked without parsing, only where that is sound.

The decision cache serves texts with equal shapes from one decision, so the properties
that matter are: the C and Python versions agree on every input; texts outside the safe
subset (the lexer tricks an attacker would use) get no shape; and equal shapes mean equal
normalized statements, as PostgreSQL's parser (pglast) sees them, and equal
classifications.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sql import analyze, normalize
from gateway.sql.shape import shape, shape_py, variant

ALPHABET = [*b"abcdeEBXNU019_ \n,.()*=<>;+-/%!|:'$\"\\&?#[]", 0xC3, 0xA9]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), max_size=60).map(bytes))
def test_c_and_python_agree(raw: bytes) -> None:
    assert shape(raw) == shape_py(raw)


def test_the_c_version_is_the_one_in_use() -> None:
    # setup.py builds it (optional); if it did not build, shape is shape_py and this
    # module's other tests still hold, but the fast path is slower.
    assert shape is not shape_py


@pytest.mark.parametrize("raw", [
    b"SELECT E'\\x27' FROM t", b"SELECT U&'\\0041' FROM t", b"SELECT X'ff'", b"SELECT B'01'",
    b"SELECT N'a'", b"SELECT $$a$$", b"SELECT $1", b'SELECT "weird""name" FROM t',
    b"SELECT 'it''s'", b"SELECT 1 -- comment", b"SELECT /* c */ 1", b"SELECT 1 */",
    b"SELECT 'unterminated", b"SELECT 'a\\' ; DROP TABLE t; --'", b"SELECT '\xc3\xa9'",
    b"SELECT x'1'", b"SELECT 1'a'", b"SELECT a::int[]", b"SELECT data ? 'k' FROM t",
    b"SELECT 'a' || '\x00'",
])
def test_no_shape_outside_the_safe_subset(raw: bytes) -> None:
    assert shape(raw) is None


@pytest.mark.parametrize(("raw", "expected"), [
    (b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
     b"SELECT abalance FROM pgbench_accounts WHERE aid = ?;"),
    (b"UPDATE t SET v = v + 1.25 WHERE id = 7 AND name = 'x y'",
     b"UPDATE t SET v = v + ? WHERE id = ? AND name = '?'"),
    (b"SELECT t1.c2, 1e5, 0x1F, 1_000, .5, 1. FROM t1",
     b"SELECT t1.c2, 1e5, 0x1F, 1_000, .5, 1. FROM t1"),
    (b"SELECT date '2024-01-01', interval '1' day", b"SELECT date '?', interval '?' day"),
    (b"SELECT ''", b"SELECT '?'"),
])
def test_constants_are_masked_and_everything_else_kept(raw: bytes, expected: bytes) -> None:
    assert shape(raw) == expected


TEMPLATES = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = {n};",
    "UPDATE pgbench_accounts SET abalance = abalance + {n} WHERE aid = {n};",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({n}, {n}, {n}, {n}, now());",
    "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.total > {d} "
    "AND c.name = {s} ORDER BY o.id LIMIT {n}",
    "SELECT {s}, {n}, {d} FROM t WHERE a IN ({n}, {n}) OR b = {s}",
    "DELETE FROM t WHERE id = {n}; SELECT count(*) FROM t",
    "SELECT set_config({s}, {s}, false)",
    "SELECT pg_read_file({s})",
    "COPY t TO {s}",
    "SELECT date {s} + interval {s}",
    "SELECT {s}\n{s}",
]


def fill(template: str, rnd: random.Random) -> str:
    out = template
    while "{" in out:
        start = out.index("{")
        kind = out[start + 1]
        if kind == "n":
            value = str(rnd.randrange(0, 10 ** rnd.randrange(1, 9)))
        elif kind == "d":
            value = f"{rnd.randrange(0, 10000)}.{rnd.randrange(0, 100)}"
        else:
            chars = "abc XYZ019_,.()*=<>;+-/%!|:\n"
            value = "'" + "".join(rnd.choice(chars) for _ in range(rnd.randrange(0, 12))) + "'"
        out = out[:start] + value + out[start + 3 :]
    return out


def classification(sql: str) -> list[tuple[object, ...]]:
    return [(s.kind, s.command, s.category, s.relations, s.functions, s.flags)
            for s in analyze(sql).statements]


@pytest.mark.parametrize("template", TEMPLATES)
def test_where_normalization_keeps_no_masked_constant_equal_shapes_normalize_alike(
    template: str,
) -> None:
    """The condition the decision cache checks before using a shape (variant())."""
    rnd = random.Random(template)
    texts = [fill(template, rnd) for _ in range(200)]
    by_shape: dict[bytes, list[str]] = {}
    for text in texts:
        masked = shape(text.encode())
        assert masked is not None, text
        by_shape.setdefault(masked, []).append(text)
    for same in by_shape.values():
        first = same[0]
        other = variant(first.encode())
        assert other is not None
        if normalize(other.decode()) != normalize(first):
            continue  # e.g. COPY t TO 'file': the cache does not use this shape
        for text in same[1:]:
            assert normalize(text) == normalize(first), (first, text)
            assert classification(text) == classification(first), (first, text)
            assert analyze(text).fingerprint == analyze(first).fingerprint


VALUE_MATTERS = [
    # (a statement allowed or classified harmlessly, one of the same shape that is not)
    ("EXPLAIN (ANALYZE 0) DELETE FROM t", "EXPLAIN (ANALYZE 1) DELETE FROM t"),
    ("EXPLAIN (ANALYZE 'off') DELETE FROM t", "EXPLAIN (ANALYZE 'on') DELETE FROM t"),
    ("SET client_encoding = 'UTF8'", "SET client_encoding = 'SJIS'"),
    ("SELECT set_config('search_path', 'a', false)", "SELECT set_config('role', 'a', false)"),
    ("SET standard_conforming_strings = 'on'", "SET standard_conforming_strings = 'off'"),
]


@pytest.mark.parametrize(("first", "second"), VALUE_MATTERS)
def test_the_cache_never_serves_a_shape_whose_constants_decide(first: str, second: str) -> None:
    from gateway.policy.baseline import BASELINE
    from gateway.policy.cache import DecisionCache
    from gateway.policy.engine import Policy, decide_sql
    from gateway.policy.model import DecisionContext

    ctx = DecisionContext("r", "p", "d")
    policy = Policy(BASELINE)
    cache = DecisionCache(policy)
    assert shape(first.encode()) == shape(second.encode())
    for _ in range(2):
        cache.decide_with_fingerprint(ctx, first, first.encode())
    got = cache.decide_with_fingerprint(ctx, second, second.encode())[0]
    assert got == decide_sql(ctx, second, policy)
    assert cache.shape_hits == 0


def test_the_cache_serves_shapes_of_ordinary_statements() -> None:
    from gateway.policy.baseline import BASELINE
    from gateway.policy.cache import DecisionCache
    from gateway.policy.engine import Policy
    from gateway.policy.model import DecisionContext

    ctx = DecisionContext("r", "p", "d")
    cache = DecisionCache(Policy(BASELINE))
    for aid in (1, 22, 333, 4444):
        sql = f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
        cache.decide_with_fingerprint(ctx, sql, sql.encode())
    stats = cache.stats()
    assert (stats.misses, stats.shape_hits) == (1, 3)


def test_string_and_number_constants_are_not_confused() -> None:
    assert shape(b"SELECT 1") != shape(b"SELECT '1'")
