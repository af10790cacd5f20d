"""The tables the load test runs against, and how to create and reset them.

Everything is created by (and so owned by) the role the load test logs in as: the scratch
table that the "blocked" statements empty belongs to that role, so without a policy those
statements succeed, and only a policy in front of PostgreSQL can refuse them.

Standalone use, against any database the role may create tables in::

    python -m loadtest.schema "host=127.0.0.1 port=5432 dbname=app user=etl password=..."
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import psycopg

DEFAULT_ITEMS = 100_000

TABLES = ("lt_items", "lt_events", "lt_batches", "lt_scratch")

CREATE = (
    """CREATE TABLE lt_items (
        id bigint PRIMARY KEY,
        sku text NOT NULL,
        price numeric(12, 2) NOT NULL,
        stock integer NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE lt_events (
        id bigserial PRIMARY KEY,
        item_id bigint NOT NULL,
        worker text NOT NULL,
        kind text NOT NULL,
        qty integer NOT NULL,
        amount numeric(12, 2) NOT NULL,
        note text,
        at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE lt_batches (
        id bigserial PRIMARY KEY,
        worker text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        rows integer
    )""",
    """CREATE TABLE lt_scratch (
        id bigserial PRIMARY KEY,
        worker text NOT NULL,
        note text
    )""",
)

FILL_ITEMS = """INSERT INTO lt_items (id, sku, price, stock)
    SELECT g, 'SKU-' || lpad(g::text, 8, '0'), (g %% 10000) / 100.0, g %% 500
    FROM generate_series(1, %s) AS g"""


def prepare(conninfo: str, items: int = DEFAULT_ITEMS) -> None:
    """Drop and create the load-test tables, fill ``lt_items`` with ``items`` rows."""
    if items < 1_000:
        raise ValueError(f"items must be at least 1000 (a COPY OUT batch), got {items}")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("DROP TABLE IF EXISTS " + ", ".join(TABLES))
            for statement in CREATE:
                conn.execute(statement)
            conn.execute(FILL_ITEMS, (items,))
        conn.execute("VACUUM ANALYZE " + ", ".join(TABLES))


def reset(conninfo: str) -> None:
    """Empty what a run writes (events, batches, scratch), so each target starts alike."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("TRUNCATE lt_events, lt_batches, lt_scratch RESTART IDENTITY")
        conn.execute("VACUUM ANALYZE " + ", ".join(TABLES))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtest.schema", description=__doc__.split("\n")[0])
    parser.add_argument("conninfo", help="libpq connection string of the role that will own it")
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS, help="rows in lt_items")
    args = parser.parse_args(argv)
    prepare(args.conninfo, args.items)
    print(f"created {', '.join(TABLES)}; lt_items has {args.items} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
