"""Micro-benchmarks for gateway/sql: which pglast parse form to build on, and what analysis costs.

Run: python -m pytest benchmarks/micro/test_sql.py --benchmark-enable --benchmark-only \
         -p no:cacheprovider

The numbers that chose the parse form are recorded in gateway/sql/_analyze.py's docstring.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from pglast import parse_sql, parser

from gateway.sql import analyze, fingerprint, normalize

CORPUS: dict[str, str] = {
    "pgbench_select": "SELECT abalance FROM pgbench_accounts WHERE aid = 51234;",
    "update": "UPDATE pgbench_accounts SET abalance = abalance + -4131 WHERE aid = 81;",
    "join_cte": (
        "WITH recent AS (SELECT o.id, o.customer_id, o.total FROM orders o "
        "WHERE o.created_at > now() - interval '7 days') "
        "SELECT c.name, sum(r.total) AS total, count(*) FROM customers c "
        "JOIN recent r ON r.customer_id = c.id LEFT JOIN regions g ON g.id = c.region_id "
        "WHERE c.active AND g.code IN ('eu', 'us') GROUP BY c.name "
        "HAVING sum(r.total) > 100 ORDER BY total DESC LIMIT 50"
    ),
    "insert_values_100": "INSERT INTO t (a, b, c) VALUES "
    + ", ".join(f"({i}, 'x{i}', now())" for i in range(100)),
}

IDS = list(CORPUS)


def _json_orjson(sql: str) -> Any:
    return orjson.loads(parser.parse_sql_json(sql))


def _json_stdlib(sql: str) -> Any:
    return json.loads(parser.parse_sql_json(sql))


FORMS: dict[str, Callable[[str], Any]] = {
    "fingerprint": parser.fingerprint,
    "normalize": parser.normalize,
    "parse_sql_json_raw": parser.parse_sql_json,
    "parse_sql_json+orjson": _json_orjson,
    "parse_sql_json+json": _json_stdlib,
    "parse_sql_protobuf_raw": parser.parse_sql_protobuf,
    "parse_sql_ast": parse_sql,
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("name", IDS)
def test_parse_form(benchmark: Any, form: str, name: str) -> None:
    benchmark.group = f"parse-form:{name}"
    benchmark(FORMS[form], CORPUS[name])


@pytest.mark.parametrize("name", IDS)
def test_analyze(benchmark: Any, name: str) -> None:
    """The whole gateway/sql miss path: fingerprint + parse + decode + classify."""
    benchmark.group = f"analyze:{name}"
    result = benchmark(analyze, CORPUS[name])
    assert result.statements


def test_public_fingerprint(benchmark: Any) -> None:
    benchmark.group = "public"
    benchmark(fingerprint, CORPUS["pgbench_select"])


def test_public_normalize(benchmark: Any) -> None:
    benchmark.group = "public"
    benchmark(normalize, CORPUS["pgbench_select"])
