"""Real clients through pgwarden give exactly what they get from PostgreSQL directly."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import sql

from gateway.devcluster import PgCluster
from tests.support import DATABASE, UPSTREAM_PASSWORD, UPSTREAM_USER, Gateway

pytestmark = pytest.mark.e2e


def direct_dsn(pg: PgCluster) -> str:
    return pg.dsn(dbname=DATABASE, user=UPSTREAM_USER, password=UPSTREAM_PASSWORD)


@pytest.fixture(scope="module")
def dsns(pg: PgCluster, gateway: Gateway) -> dict[str, str]:
    with psycopg.connect(direct_dsn(pg), autocommit=True) as conn:
        conn.execute("drop table if exists items")
        conn.execute(
            "create table items (id int primary key, name text, price numeric, "
            "tags text[], data bytea, at timestamptz default '2024-01-02 03:04:05+00')"
        )
        with conn.cursor().copy("copy items (id, name, price, tags, data) from stdin") as cp:
            for i in range(1, 2001):
                cp.write_row((i, f"item {i}", i * 1.5, [f"t{i % 7}", "x"], bytes([i % 256]) * 3))
    return {"direct": direct_dsn(pg), "gateway": gateway.dsn()}


def both(dsns: dict[str, str], fn: Callable[[psycopg.Connection[Any]], Any]) -> None:
    results = {}
    for name, dsn in dsns.items():
        with psycopg.connect(dsn) as conn:
            results[name] = fn(conn)
    assert results["gateway"] == results["direct"]
    assert results["gateway"] is not None


def test_psycopg_connects_over_tls(gateway: Gateway) -> None:
    with psycopg.connect(gateway.dsn(sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select current_user").fetchone() == (UPSTREAM_USER,)


def test_psycopg_verify_full_against_gateway_certificate(gateway: Gateway) -> None:
    dsn = gateway.dsn(sslmode="verify-full", sslrootcert=str(gateway.cert), host="localhost")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_simple_and_extended_queries(dsns: dict[str, str]) -> None:
    def run(conn: psycopg.Connection[Any]) -> Any:
        cur = conn.cursor()
        simple = cur.execute(
            "select id, name, price, tags, data, at from items order by id", prepare=False
        ).fetchall()
        extended = cur.execute(
            "select id, name from items where id > %s order by id limit %s", (1990, 5)
        ).fetchall()
        return simple, extended

    both(dsns, run)


def test_binary_results(dsns: dict[str, str]) -> None:
    def run(conn: psycopg.Connection[Any]) -> Any:
        cur = conn.cursor(binary=True)
        return cur.execute("select id, price, tags, data from items order by id").fetchall()

    both(dsns, run)


def test_prepared_statements_reused(dsns: dict[str, str]) -> None:
    def run(conn: psycopg.Connection[Any]) -> Any:
        cur = conn.cursor()
        return [
            cur.execute("select name from items where id = %s", (i,), prepare=True).fetchone()
            for i in range(1, 60)
        ]

    both(dsns, run)


def test_large_result(dsns: dict[str, str]) -> None:
    def run(conn: psycopg.Connection[Any]) -> Any:
        cur = conn.execute("select g, md5(g::text) from generate_series(1, 100000) g")
        rows = cur.fetchall()
        return len(rows), rows[0], rows[-1]

    both(dsns, run)


def test_copy_out_text_csv_binary(dsns: dict[str, str]) -> None:
    def run(conn: psycopg.Connection[Any]) -> Any:
        out = []
        for fmt in ("text", "csv", "binary"):
            buf = io.BytesIO()
            q = sql.SQL("copy (select * from items order by id) to stdout (format {})").format(
                sql.SQL(fmt)
            )
            with conn.cursor().copy(q) as cp:
                for block in cp:
                    buf.write(block)
            out.append(buf.getvalue())
        return out

    both(dsns, run)


def test_copy_in_then_read_back(dsns: dict[str, str]) -> None:
    def run(conn: psycopg.Connection[Any]) -> Any:
        conn.execute("create temp table t_in (a int, b text)")
        with conn.cursor().copy("copy t_in from stdin") as cp:
            for i in range(5000):
                cp.write_row((i, f"row {i}\ttab"))
        with conn.cursor().copy("copy t_in from stdin (format binary)") as cp:
            cp.set_types(["int4", "text"])
            cp.write_row((-1, "binary"))
        return conn.execute("select count(*), sum(a), max(b) from t_in").fetchone()

    both(dsns, run)


def test_transaction_rollback_and_error_in_transaction(dsns: dict[str, str]) -> None:
    def run(conn: psycopg.Connection[Any]) -> Any:
        conn.execute("create temp table t_tx (a int)")
        conn.commit()
        with conn.transaction():
            conn.execute("insert into t_tx values (1)")
        try:
            with conn.transaction():
                conn.execute("insert into t_tx values (2)")
                conn.execute("select 1/0")
        except psycopg.errors.DivisionByZero as exc:
            err = (exc.sqlstate, str(exc).splitlines()[0])
        conn.execute("begin")
        conn.execute("insert into t_tx values (3)")
        try:
            conn.execute("select nonexistent_column from t_tx")
        except psycopg.errors.UndefinedColumn as exc:
            err2 = exc.sqlstate
        try:
            conn.execute("select 1")
        except psycopg.errors.InFailedSqlTransaction as exc:
            err3 = exc.sqlstate
        conn.rollback()
        return err, err2, err3, conn.execute("select array_agg(a) from t_tx").fetchone()

    both(dsns, run)


def test_pipeline_mode(dsns: dict[str, str]) -> None:
    def run(conn: psycopg.Connection[Any]) -> Any:
        results = []
        with conn.pipeline():
            curs = [conn.execute("select %s::int * 2", (i,)) for i in range(50)]
            bad = conn.cursor()
        results = [c.fetchone() for c in curs]
        # An error inside a pipeline: later statements in the same sync are skipped.
        errors = []
        try:
            with conn.pipeline():
                conn.execute("select 1")
                bad.execute("select 1/0")
                conn.execute("select 2")
        except psycopg.Error as exc:
            errors.append(exc.sqlstate)
        conn.rollback()
        return results, errors

    both(dsns, run)


def test_notices_and_parameter_status(dsns: dict[str, str]) -> None:
    def run(conn: psycopg.Connection[Any]) -> Any:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("do $$ begin raise notice 'hello %', 42; end $$")
        conn.execute("set application_name = 'changed-by-client'")
        return notices, conn.info.parameter_status("application_name")

    both(dsns, run)


def test_listen_notify(gateway: Gateway) -> None:
    with (
        psycopg.connect(gateway.dsn(), autocommit=True) as listener,
        psycopg.connect(gateway.dsn(), autocommit=True) as sender,
    ):
        listener.execute("listen pgwarden_chan")
        sender.execute("notify pgwarden_chan, 'payload-1'")
        got = next(listener.notifies(timeout=10))
        assert (got.channel, got.payload) == ("pgwarden_chan", "payload-1")


def test_asyncpg_prepared_and_binary(dsns: dict[str, str], gateway: Gateway, pg: PgCluster) -> None:
    async def run(**kw: Any) -> Any:
        conn = await asyncpg.connect(**kw)
        try:
            stmt = await conn.prepare(
                "select id, name, price, tags, data from items where id <= $1 order by id"
            )
            rows = [tuple(r) for r in await stmt.fetch(500)]
            again = [tuple(r) for r in await stmt.fetch(3)]
            async with conn.transaction():
                cursor_rows = [
                    tuple(r) async for r in conn.cursor("select g from generate_series(1,1000) g")
                ]
            await conn.execute("create temp table t_async (a int, b text)")
            await conn.copy_records_to_table("t_async", records=[(i, str(i)) for i in range(1000)])
            count = await conn.fetchval("select count(*) from t_async")
            return rows, again, cursor_rows[-1], count
        finally:
            await conn.close()

    direct = asyncio.run(
        run(
            host=pg.host,
            port=pg.port,
            user=UPSTREAM_USER,
            password=UPSTREAM_PASSWORD,
            database=DATABASE,
            ssl=False,
        )
    )
    through = asyncio.run(
        run(
            host=gateway.host,
            port=gateway.port,
            user=gateway.user,
            password=gateway.secret,
            database=DATABASE,
            ssl="require",
        )
    )
    assert through == direct


def test_psql_script_and_copy(gateway: Gateway, pg: PgCluster, tmp_path: Any) -> None:
    script = (
        "select count(*) from items;\n"
        "\\copy (select id, name from items where id <= 3 order by id) to stdout with csv\n"
        "select 1/0;\n"
        "select 'after error';\n"
    )
    out_gw = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=0", "-At"],
        input=script,
        capture_output=True,
        text=True,
        env=gateway.env(),
        timeout=60,
    )
    env = dict(gateway.env())
    env.update(
        PGHOST=pg.host,
        PGPORT=str(pg.port),
        PGUSER=UPSTREAM_USER,
        PGPASSWORD=UPSTREAM_PASSWORD,
        PGSSLMODE="disable",
    )
    out_direct = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=0", "-At"],
        input=script,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out_gw.stdout == out_direct.stdout
    assert "2000\n1,item 1\n" in out_gw.stdout
    assert "division by zero" in out_gw.stderr


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_modes(gateway: Gateway, pg: PgCluster, mode: str) -> None:
    env = gateway.env(sslmode="disable")
    subprocess.run(
        ["pgbench", "-i", "-s", "1", "-q"], env=env, check=True, capture_output=True, timeout=120
    )
    result = subprocess.run(
        ["pgbench", "-M", mode, "-c", "4", "-j", "2", "-t", "200", "-n"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"number of transactions actually processed: 800/800", result.stdout)
    assert "number of failed transactions: 0" in result.stdout
