"""Compatibility matrix, Python clients: psycopg 3, asyncpg and SQLAlchemy 2.

Every scenario runs twice, once directly against PostgreSQL and once through pgwarden, both
over TLS (``verify-full`` against the server's own certificate unless a test says
otherwise), each run with its own table names in the shared database. The results *and*
the errors (SQLSTATE, message) of the two runs must be equal; the run's tag is scrubbed
from both before they are compared. tests/e2e/test_clients.py covers the basics; this
module goes through the whole scenario of the compatibility matrix per client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb
from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    any_,
    create_engine,
    delete,
    func,
    insert,
    literal,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError, PendingRollbackError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)
from sqlalchemy.pool import NullPool

from gateway.devcluster import PgCluster
from tests.support import DATABASE, UPSTREAM_PASSWORD, UPSTREAM_USER, Gateway

pytestmark = pytest.mark.e2e

BIG = 100_000  # rows in "a 100k-row result"
REUSE = 300  # executions of one prepared statement


# -- the two endpoints -------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One way to reach the database: ``direct`` or through the ``gateway``."""

    name: str
    port: int
    user: str
    password: str
    cert: Path  # the certificate the endpoint presents (its own CA)

    def params(self, sslmode: str = "verify-full", dbname: str = DATABASE) -> dict[str, str]:
        params = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "user": self.user,
            "password": self.password,
            "dbname": dbname,
            "sslmode": sslmode,
            "connect_timeout": "10",
        }
        if sslmode == "verify-full":
            params.update(host="localhost", sslrootcert=str(self.cert))
        return params

    def dsn(self, sslmode: str = "verify-full", **kw: str) -> str:
        params = self.params(sslmode)
        params.update(kw)
        return " ".join(f"{k}={v}" for k, v in params.items())

    def connect(self, sslmode: str = "verify-full", **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(sslmode), **kw)

    def asyncpg_kwargs(self, verify: bool = True) -> dict[str, Any]:
        if verify:
            ctx = ssl.create_default_context(cafile=str(self.cert))
            return dict(
                host="localhost", port=self.port, user=self.user, password=self.password,
                database=DATABASE, ssl=ctx,
            )
        return dict(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password,
            database=DATABASE, ssl="require",
        )

    def sa_url(self) -> URL:
        return URL.create(
            "postgresql+psycopg", username=self.user, password=self.password,
            host="localhost", port=self.port, database=DATABASE,
            query={"sslmode": "verify-full", "sslrootcert": str(self.cert)},
        )


@dataclass(frozen=True)
class PlainTarget(Target):
    """pgwarden without TLS anywhere: whatever TLS a scenario asks for, it gets none."""

    def params(self, sslmode: str = "verify-full", dbname: str = DATABASE) -> dict[str, str]:
        return super().params("disable", dbname)

    def asyncpg_kwargs(self, verify: bool = True) -> dict[str, Any]:
        return dict(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password,
            database=DATABASE, ssl=False,
        )

    def sa_url(self) -> URL:
        return URL.create(
            "postgresql+psycopg", username=self.user, password=self.password,
            host="127.0.0.1", port=self.port, database=DATABASE, query={"sslmode": "disable"},
        )


@pytest.fixture(scope="module")
def targets(pg: PgCluster, gateway: Gateway, plain_gateway: Gateway) -> list[Target]:
    return [
        Target("direct", pg.port, UPSTREAM_USER, UPSTREAM_PASSWORD, pg.cert_file),
        Target("gateway", gateway.port, gateway.user, gateway.secret, gateway.cert),
        PlainTarget("plain-gateway", plain_gateway.port, plain_gateway.user,
                    plain_gateway.secret, plain_gateway.cert),
    ]


@pytest.fixture(scope="module")
def tls_targets(targets: list[Target]) -> list[Target]:
    """The targets a client reaches over TLS (the scenarios about TLS itself)."""
    return [t for t in targets if not isinstance(t, PlainTarget)]


def scrub(value: Any, tag: str) -> Any:
    """``value`` with every occurrence of the run's tag replaced by ``<T>``."""
    if isinstance(value, str):
        return value.replace(tag, "<T>")
    if isinstance(value, bytes):
        return value.replace(tag.encode(), b"<T>")
    if isinstance(value, tuple):
        return tuple(scrub(v, tag) for v in value)
    if isinstance(value, list):
        return [scrub(v, tag) for v in value]
    if isinstance(value, dict):
        return {scrub(k, tag): scrub(v, tag) for k, v in value.items()}
    return value


def across(targets: list[Target], scenario: Callable[[Target, str], Any]) -> Any:
    """Run ``scenario(target, tag)`` directly and through pgwarden; the results must match."""
    results = {}
    for target in targets:
        tag = f"{target.name[0]}{uuid.uuid4().hex[:10]}"
        results[target.name] = scrub(scenario(target, tag), tag)
    for name, result in results.items():
        assert result == results["direct"], f"{name} differs from direct"
    return results["direct"]


def digest(rows: Iterable[Any]) -> tuple[int, str]:
    """(row count, sha256 of the rows' reprs): compares big results cheaply."""
    h = hashlib.sha256()
    n = 0
    for row in rows:
        h.update(repr(row).encode())
        h.update(b"\n")
        n += 1
    return n, h.hexdigest()


def failure(fn: Callable[[], Any]) -> tuple[str | None, str | None, str]:
    """The (SQLSTATE, primary message, exception class) ``fn`` fails with."""
    try:
        fn()
    except psycopg.Error as exc:
        return exc.sqlstate, exc.diag.message_primary, type(exc).__name__
    raise AssertionError("expected an error")


def watch_and_cancel(pg: PgCluster, marker: str, cancel: Callable[[], Any]) -> threading.Thread:
    """Call ``cancel()`` from a thread once a query containing ``marker`` runs upstream."""

    def run() -> None:
        with pg.connect() as admin:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                row = admin.execute(
                    "select count(*) from pg_stat_activity where state = 'active' "
                    "and query like %s and pid <> pg_backend_pid()",
                    (f"%{marker}%",),
                ).fetchone()
                if row and row[0]:
                    cancel()
                    return
                time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def still_running(pg: PgCluster, marker: str) -> int:
    rows = pg.sql(
        "select count(*) from pg_stat_activity where state = 'active' "
        f"and query like '%{marker}%' and pid <> pg_backend_pid()"
    )
    return int(rows[0][0])


# -- a table with every type the scenario exercises --------------------------------------

COLUMNS = (
    "id int primary key, name text not null unique, amount numeric(16,4), at timestamptz, "
    "tags text[], doc jsonb, blob bytea, uid uuid, flag boolean"
)
T0 = dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)


def make_row(i: int) -> tuple[Any, ...]:
    return (
        i,
        f"name {i} é\t\\",
        Decimal(i) / Decimal(16) - Decimal(500),
        T0 + dt.timedelta(seconds=37 * i, microseconds=i),
        [f"t{i % 5}", None if i % 3 == 0 else "x,y", '"q"'],
        Jsonb({"i": i, "s": "snow ☃", "l": [i, None, True]}),
        bytes(range(i % 256)) + b"\x00\xff",
        uuid.UUID(int=i * 7919),
        i % 2 == 0,
    )


def create_table(conn: psycopg.Connection[Any], name: str) -> sql.Identifier:
    ident = sql.Identifier(name)
    conn.execute(sql.SQL("create table {} ({})").format(ident, sql.SQL(COLUMNS)))
    return ident


def drop_table(target: Target, *names: str) -> None:
    with target.connect(autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(name)))


# == psycopg 3 ===========================================================================


def test_psycopg_tls_require_and_verify_full(tls_targets: list[Target]) -> None:
    targets = tls_targets
    def run(t: Target, tag: str) -> Any:
        out = []
        for mode in ("require", "verify-full"):
            with t.connect(sslmode=mode) as conn:
                out.append((
                    mode,
                    conn.pgconn.ssl_in_use,
                    conn.info.encoding,
                    conn.info.parameter_status("server_version"),
                    conn.info.parameter_status("integer_datetimes"),
                    conn.execute("select current_database(), current_user").fetchone(),
                ))
        # verify-full against a certificate the endpoint does not present must fail.
        other = next(x for x in targets if x is not t).cert
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(t.dsn(sslrootcert=str(other)))
        out.append("certificate verify failed" in str(info.value))
        return out

    result = across(targets, run)
    assert result[0][1] and result[1][1] and result[-1] is True


def test_psycopg_ddl_inserts_and_100k_rows_in_every_mode(targets: list[Target]) -> None:
    big = (
        "select g, md5(g::text), g::numeric / 7, "
        "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', array[g, -g] "
        f"from generate_series(1, {BIG}) g"
    )

    def run(t: Target, tag: str) -> Any:
        name = f"pyc_{tag}"
        try:
            with t.connect(autocommit=True) as conn:
                ident = create_table(conn, name)
                cur = conn.cursor()
                insert = sql.SQL("insert into {} values ({})").format(
                    ident, sql.SQL(", ").join(sql.Placeholder() * 9)
                )
                cur.executemany(insert, [make_row(i) for i in range(1, 1001)])
                cur.execute(insert, make_row(1001), binary=True)
                ddl = [
                    conn.execute(
                        sql.SQL("alter table {} add column extra int default 7").format(ident)
                    ).statusmessage,
                    conn.execute(
                        sql.SQL("create index on {} (at)").format(ident)
                    ).statusmessage,
                ]
                table = cur.execute(sql.SQL("select * from {} order by id").format(ident))
                stored = digest(table.fetchall())
                text = digest(conn.execute(big, prepare=False).fetchall())
                extended = digest(conn.execute(big + " where g > %s", (0,)).fetchall())
                binary = digest(conn.cursor(binary=True).execute(big).fetchall())
                return ddl, stored, text, extended, binary
        finally:
            drop_table(t, name)

    ddl, stored, text, extended, binary = across(targets, run)
    assert ddl == ["ALTER TABLE", "CREATE INDEX"]
    assert stored[0] == 1001
    assert text == extended == binary and text[0] == BIG


def test_psycopg_simple_query_protocol(targets: list[Target]) -> None:
    def run(t: Target, tag: str) -> Any:
        name = f"pyc_{tag}"
        try:
            with t.connect(autocommit=True) as conn:
                ident = create_table(conn, name)
                cur = psycopg.ClientCursor(conn)
                # Client-side binding: every statement goes out as a simple Query.
                for i in range(1, 51):
                    cur.execute(
                        sql.SQL("insert into {} (id, name, amount, tags) values (%s, %s, %s, %s)")
                        .format(ident),
                        (i, f"o'neil {i}", Decimal("1.5") * i, ["a", None, "b c"]),
                    )
                # Several statements in one Query: several results.
                cur.execute(
                    sql.SQL(
                        "update {t} set flag = true where id <= 10; "
                        "select count(*) from {t} where flag; "
                        "select name, amount, tags from {t} order by id desc limit 3"
                    ).format(t=ident)
                )
                results = [(cur.statusmessage, cur.fetchall() if cur.description else None)]
                while cur.nextset():
                    results.append((cur.statusmessage, cur.fetchall()))
                # An error in a multi-statement Query rolls back the whole implicit transaction.
                err = failure(lambda: cur.execute(
                    sql.SQL("delete from {t} where id > 0; select 1/0; select 1").format(t=ident)
                ))
                count = conn.execute(
                    sql.SQL("select count(*) from {}").format(ident), prepare=False
                ).fetchone()
                empty = conn.execute("", prepare=False).pgresult
                return results, err, count, empty.status if empty else None
        finally:
            drop_table(t, name)

    results, err, count, _ = across(targets, run)
    assert results[0][0] == "UPDATE 10"
    assert err[:2] == ("22012", "division by zero")
    assert count == (50,)


def test_psycopg_prepared_statements_reused(targets: list[Target]) -> None:
    def run(t: Target, tag: str) -> Any:
        name = f"pyc_{tag}"
        try:
            with t.connect(autocommit=True) as conn:
                ident = create_table(conn, name)
                ins = sql.SQL("insert into {} (id, name, amount) values (%s, %s, %s)").format(ident)
                get = sql.SQL("select name, amount from {} where id = %s").format(ident)
                cur = conn.cursor()
                for i in range(1, REUSE + 1):
                    cur.execute(ins, (i, f"n{i}", Decimal(i) / 3), prepare=True)
                fetched = [cur.execute(get, (i,), prepare=True).fetchone() for i in range(1, REUSE)]
                # Automatic preparation after prepare_threshold executions.
                conn.prepare_threshold = 2
                auto = [
                    cur.execute("select %s::int + 1", (i,)).fetchone() for i in range(REUSE)
                ]
                binary = [
                    cur.execute(get, (i,), prepare=True, binary=True).fetchone()
                    for i in range(1, 30)
                ]
                prepared = conn.execute(
                    "select count(*), bool_and(name like '_pg3_%%') from pg_prepared_statements"
                ).fetchone()
                dup = failure(lambda: cur.execute(ins, (1, "again", 0), prepare=True))
                # DEALLOCATE ALL: psycopg forgets its statements and prepares them again.
                conn.execute("deallocate all")
                again = [cur.execute(get, (i,), prepare=True).fetchone() for i in (1, 2, 3)]
                sql_level = [
                    conn.execute("prepare p(int) as select $1 * 2").statusmessage,
                    *[conn.execute(f"execute p({i})").fetchone() for i in range(20)],
                    failure(lambda: conn.execute("prepare p(int) as select 1")),
                ]
                return digest(fetched), digest(auto), binary, prepared, dup, again, sql_level
        finally:
            drop_table(t, name)

    fetched, auto, _, prepared, dup, _, sql_level = across(targets, run)
    assert fetched[0] == REUSE - 1 and auto[0] == REUSE
    assert prepared == (3, True)
    assert dup[0] == "23505"
    assert sql_level[-1][0] == "42P05"


def test_psycopg_binary_types(targets: list[Target]) -> None:
    def run(t: Target, tag: str) -> Any:
        name = f"pyc_{tag}"
        try:
            with t.connect(autocommit=True) as conn:
                ident = create_table(conn, name)
                cur = conn.cursor(binary=True)
                insert = sql.SQL("insert into {} values ({})").format(
                    ident, sql.SQL(", ").join(sql.Placeholder() * 9)
                )
                cur.executemany(insert, [make_row(i) for i in range(1, 301)])
                rows = cur.execute(sql.SQL("select * from {} order by id").format(ident)).fetchall()
                extras = cur.execute(
                    "select 'NaN'::numeric, 1e-30::numeric, -12345678901234567890.5::numeric,"
                    " 'infinity'::timestamptz < now(), interval '1 year 2 mons 3 days 04:05:06.7',"
                    " '192.168.0.1/24'::inet, date '2000-02-29', array[[1,2],[3,null]]::int[],"
                    " '{\"a\": [1, 2.5, null]}'::jsonb, ''::bytea, %s::bytea",
                    (bytes(range(256)) * 4,),
                ).fetchone()
                return digest(rows), rows[:2], repr(extras)
        finally:
            drop_table(t, name)

    rows, first, _ = across(targets, run)
    assert rows[0] == 300 and first[0][0] == 1


def test_psycopg_transactions_rollback_and_errors(targets: list[Target]) -> None:
    def run(t: Target, tag: str) -> Any:
        name = f"pyc_{tag}"
        try:
            with t.connect() as conn:
                ident = create_table(conn, name)
                count = sql.SQL("select count(*) from {}").format(ident)
                ins = sql.SQL("insert into {} (id, name) values (%s, %s)").format(ident)
                conn.commit()
                out: list[Any] = []
                # A transaction rolled back.
                for i in range(1, 11):
                    conn.execute(ins, (i, f"n{i}"))
                out.append(conn.execute(count).fetchone())
                conn.rollback()
                out.append(conn.execute(count).fetchone())
                conn.execute(ins, (1, "kept"))
                conn.commit()
                # An error inside a transaction: 23505, then 25P02 for everything until rollback.
                conn.execute(ins, (2, "lost"))
                out.append(failure(lambda: conn.execute(ins, (1, "dup"))))
                out.append(failure(lambda: conn.execute(count)))
                out.append(failure(lambda: conn.execute("select 1", prepare=False)))
                out.append(conn.info.transaction_status.name)
                conn.rollback()
                out.append(conn.execute(count).fetchone())
                # Savepoints: the inner error is contained.
                with conn.transaction():
                    conn.execute(ins, (3, "outer"))
                    try:
                        with conn.transaction():
                            conn.execute(ins, (4, "inner"))
                            conn.execute(ins, (3, "dup"))
                    except psycopg.errors.UniqueViolation as exc:
                        out.append(exc.sqlstate)
                out.append(conn.execute(sql.SQL("select array_agg(id order by id) from {}")
                                        .format(ident)).fetchone())
                # A deferred constraint fails at COMMIT.
                conn.execute(sql.SQL(
                    "alter table {} add constraint even check (id < 100) not valid"
                ).format(ident))
                conn.commit()
                conn.execute(sql.SQL(
                    "create temp table deferred_t (a int unique deferrable initially deferred)"
                ))
                conn.execute("insert into deferred_t values (1), (1)")
                out.append(failure(conn.commit))
                out.append(conn.info.transaction_status.name)
                return out
        finally:
            drop_table(t, name)

    out = across(targets, run)
    assert out[0] == (10,) and out[1] == (0,)
    assert out[2][0] == "23505" and out[3][0] == out[4][0] == "25P02"
    assert out[5] == "INERROR" and out[6] == (1,)
    assert out[8] == ([1, 3],)
    assert out[9][0] == "23505"


def test_psycopg_pipeline_mode(targets: list[Target]) -> None:
    def run(t: Target, tag: str) -> Any:
        name = f"pyc_{tag}"
        try:
            with t.connect(autocommit=True) as conn:
                ident = create_table(conn, name)
                ins = sql.SQL("insert into {} (id, name, amount) values (%s, %s, %s)").format(ident)
                out: list[Any] = []
                with conn.pipeline() as p:
                    cur = conn.cursor()
                    cur.executemany(ins, [(i, f"p{i}", i) for i in range(1, 2001)])
                    curs = [
                        conn.execute(
                            sql.SQL("select name from {} where id = %s").format(ident), (i,),
                            prepare=True,
                        )
                        for i in range(1, 200)
                    ]
                    p.sync()
                    big = conn.cursor(binary=True).execute(
                        f"select g, g::text from generate_series(1, {BIG}) g"
                    )
                out.append([c.fetchone() for c in curs])
                out.append(digest(big.fetchall()))
                # An error in the middle: the rest of that sync is skipped, the next runs.
                after: list[Any] = []
                try:
                    with conn.pipeline() as p:
                        ok = conn.execute("select 'before'")
                        conn.execute(ins, (1, "duplicate", 0))
                        conn.execute("select 'skipped'")
                        p.sync()
                except psycopg.errors.UniqueViolation as exc:
                    after.append((exc.sqlstate, exc.diag.message_primary))
                after.append(ok.fetchone())
                with conn.pipeline():
                    after.append(conn.execute("select 'next sync'").fetchone())
                out.append(after)
                # A transaction inside a pipeline, rolled back.
                with conn.pipeline(), conn.transaction(force_rollback=True):
                    # (the baseline refuses a DELETE without WHERE)
                    conn.execute(sql.SQL("delete from {} where id > 0").format(ident))
                out.append(conn.execute(sql.SQL("select count(*) from {}").format(ident))
                           .fetchone())
                return out
        finally:
            drop_table(t, name)

    out = across(targets, run)
    assert out[0][0] == ("p1",) and out[1][0] == BIG
    assert out[2][0][0] == "23505" and out[3] == (2000,)


def test_psycopg_server_side_cursors(targets: list[Target]) -> None:
    def run(t: Target, tag: str) -> Any:
        big = f"select g, md5(g::text) from generate_series(1, {BIG}) g"
        with t.connect() as conn:
            out: list[Any] = []
            with conn.cursor(name=f"c_{tag}") as cur:
                cur.itersize = 3000
                cur.execute(big)
                out.append(digest(cur))
                out.append(conn.execute(
                    "select count(*) from pg_cursors where not is_holdable"
                ).fetchone())
            with conn.cursor(name=f"s_{tag}", scrollable=True) as cur:
                cur.execute("select g from generate_series(1, 1000) g where g > %s", (10,))
                first = cur.fetchmany(5)
                cur.scroll(100)
                mid = cur.fetchone()
                cur.scroll(-50)
                back = cur.fetchone()
                cur.scroll(0, mode="absolute")
                out.append((first, mid, back, cur.fetchone(), len(cur.fetchall())))
            with conn.cursor(name=f"b_{tag}", binary=True) as cur:
                cur.execute("select g, g * 1.5, array[g], now() > now() - interval '1s' "
                            "from generate_series(1, 20000) g")
                out.append(digest(cur.fetchmany(7000) + cur.fetchall()))
            conn.commit()
            # WITH HOLD survives the commit.
            with conn.cursor(name=f"h_{tag}", withhold=True) as cur:
                cur.execute("select g from generate_series(1, 5000) g")
                conn.commit()
                out.append(digest(cur))
            # An error while fetching: the transaction is aborted.
            with conn.cursor(name=f"e_{tag}") as cur:
                cur.itersize = 100
                cur.execute("select 1 / (500 - g) from generate_series(1, 1000) g")
                got = cur.fetchmany(300)
                out.append((len(got), failure(cur.fetchall)))
            out.append(failure(lambda: conn.execute("select 1")))
            conn.rollback()
            out.append(conn.execute("select 'usable'").fetchone())
            return out

    out = across(targets, run)
    assert out[0][0] == BIG and out[1] == (1,)
    assert out[-3][1][0] == "22012" and out[-2][0] == "25P02"


def test_psycopg_copy_in_and_out(targets: list[Target]) -> None:
    def run(t: Target, tag: str) -> Any:
        name = f"pyc_{tag}"
        try:
            with t.connect(autocommit=True) as conn:
                ident = create_table(conn, name)
                cols = sql.SQL("(id, name, amount, at, tags, doc, blob, uid, flag)")
                out: list[Any] = []
                cur = conn.cursor()
                with cur.copy(sql.SQL("copy {} {} from stdin").format(ident, cols)) as cp:
                    for i in range(1, 20001):
                        cp.write_row(make_row(i))
                out.append(cur.rowcount)
                with cur.copy(
                    sql.SQL("copy {} {} from stdin (format binary)").format(ident, cols)
                ) as cp:
                    cp.set_types(
                        ["int4", "text", "numeric", "timestamptz", "text[]", "jsonb", "bytea",
                         "uuid", "bool"]
                    )
                    for i in range(20001, 30001):
                        cp.write_row(make_row(i))
                out.append(cur.rowcount)
                with cur.copy(
                    sql.SQL("copy {} (id, name) from stdin (format csv, header)").format(ident)
                ) as cp:
                    cp.write("id,name\n")
                    for i in range(30001, 40001, 1000):
                        cp.write("".join(f'{j},"csv, {j}"\n' for j in range(i, i + 1000)))
                out.append(cur.rowcount)
                # Out: text blocks, binary rows, csv.
                order = sql.SQL("(select * from {} order by id)").format(ident)
                text = hashlib.sha256()
                with cur.copy(sql.SQL("copy {} to stdout").format(order)) as cp:
                    for block in cp:
                        text.update(block)
                out.append((cur.rowcount, text.hexdigest()))
                with cur.copy(sql.SQL("copy {} to stdout (format binary)").format(order)) as cp:
                    cp.set_types(
                        ["int4", "text", "numeric", "timestamptz", "text[]", "jsonb", "bytea",
                         "uuid", "bool"]
                    )
                    out.append(digest(cp.rows()))
                csv = io.BytesIO()
                with cur.copy(sql.SQL("copy {} to stdout (format csv, header, force_quote *)")
                              .format(order)) as cp:
                    for block in cp:
                        csv.write(block)
                out.append(hashlib.sha256(csv.getvalue()).hexdigest())
                big = hashlib.sha256()
                with cur.copy(f"copy (select g, repeat('x', g % 100) from generate_series(1, {BIG})"
                              " g) to stdout") as cp:
                    for block in cp:
                        big.update(block)
                out.append((cur.rowcount, big.hexdigest()))
                # Errors: bad data (from the server), an aborted COPY (CopyFail from the client).
                def bad_data() -> None:
                    with cur.copy(sql.SQL("copy {} (id, name) from stdin").format(ident)) as cp:
                        cp.write("1000000\tok\nnot-a-number\tbad\n")

                out.append(failure(bad_data))

                def aborted() -> None:
                    with cur.copy(sql.SQL("copy {} (id, name) from stdin").format(ident)) as cp:
                        cp.write_row((2000000, "never"))
                        raise RuntimeError("client gave up")

                try:
                    aborted()
                except (psycopg.Error, RuntimeError) as exc:
                    out.append((type(exc).__name__, getattr(exc, "sqlstate", None)))
                out.append(conn.execute(sql.SQL("select count(*), max(id) from {}")
                                        .format(ident)).fetchone())
                return out
        finally:
            drop_table(t, name)

    out = across(targets, run)
    assert out[:3] == [20000, 10000, 10000]
    assert out[3][0] == 40000 and out[4][0] == 40000 and out[6][0] == BIG
    assert out[7][0] == "22P02"
    assert out[9] == (40000, 40000)


def test_psycopg_listen_notify(targets: list[Target]) -> None:
    def run(t: Target, tag: str) -> Any:
        chan = f"chan_{tag}"
        with (
            t.connect(autocommit=True) as listener,
            t.connect(autocommit=True) as sender,
        ):
            listener.execute(sql.SQL("listen {}").format(sql.Identifier(chan)))
            pids = {
                "sender": sender.execute("select pg_backend_pid()").fetchone(),
                "listener": listener.execute("select pg_backend_pid()").fetchone(),
            }
            notify = "select pg_notify(%s, %s)"
            sender.execute(notify, (chan, "first"))
            with sender.transaction(force_rollback=True):
                sender.execute(notify, (chan, "rolled back"))
            with sender.transaction():
                sender.execute(notify, (chan, "second"))
                sender.execute(notify, (chan, "second"))  # folded into one
                sender.execute(notify, (chan, "third ☃"))
            sender.execute(notify, (chan, "x" * 7000))
            listener.execute(notify, (chan, "to myself"))
            got = list(listener.notifies(timeout=10, stop_after=5))
            listener.execute(sql.SQL("unlisten {}").format(sql.Identifier(chan)))
            sender.execute(notify, (chan, "after unlisten"))
            late = list(listener.notifies(timeout=0.5))
            by = {v[0]: k for k, v in pids.items() if v}
            return [(n.channel, n.payload[:20], len(n.payload), by.get(n.pid)) for n in got], late

    got, late = across(targets, run)
    assert [g[1] for g in got] == ["first", "second", "third ☃", "x" * 20, "to myself"]
    assert [g[3] for g in got] == ["sender"] * 4 + ["listener"]
    assert late == []


@pytest.mark.parametrize("how", ["cancel", "cancel_safe"])
def test_psycopg_cancel_long_query(targets: list[Target], pg: PgCluster, how: str) -> None:
    def run(t: Target, tag: str) -> Any:
        out: list[Any] = []
        with t.connect(autocommit=True) as conn:
            for in_tx in (False, True):
                marker = f"cancel-{tag}-{in_tx}"
                if in_tx:
                    conn.execute("begin")
                watcher = watch_and_cancel(pg, marker, getattr(conn, how))
                start = time.monotonic()
                err = failure(lambda m=marker: conn.execute(f"select pg_sleep(30) /* {m} */"))
                elapsed = time.monotonic() - start
                watcher.join()
                out.append((err, elapsed < 10, still_running(pg, marker)))
                if in_tx:
                    out.append(failure(lambda: conn.execute("select 1")))
                    conn.execute("rollback")
                out.append(conn.execute("select 'usable'").fetchone())
        return out

    out = across(targets, run)
    assert out[0] == (("57014", "canceling statement due to user request", "QueryCanceled"),
                      True, 0)
    assert out[3][0] == "25P02" and out[-1] == ("usable",)


# == asyncpg =============================================================================


def run_async(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


def apg_error(exc: asyncpg.PostgresError) -> tuple[str, str, str]:
    return exc.sqlstate, str(exc), type(exc).__name__


async def apg_failure(aw: Any) -> tuple[str, str, str]:
    try:
        await aw
    except asyncpg.PostgresError as exc:
        return apg_error(exc)
    raise AssertionError("expected an error")


def test_asyncpg_tls_require_and_verify_full(tls_targets: list[Target]) -> None:
    targets = tls_targets
    async def scenario(t: Target) -> Any:
        out = []
        for verify in (False, True):
            conn = await asyncpg.connect(**t.asyncpg_kwargs(verify=verify))
            try:
                out.append((
                    conn.get_server_version(),
                    conn.get_settings().server_encoding,
                    conn.get_settings().client_encoding,
                    await conn.fetchrow("select current_database(), current_user"),
                    conn._transport.get_extra_info("ssl_object") is not None,
                ))
            finally:
                await conn.close()
        return [tuple(o) for o in out]

    out = across(targets, lambda t, tag: run_async(scenario(t)))
    assert out[0][-1] is True and out[1][-1] is True


def test_asyncpg_scenario(targets: list[Target]) -> None:
    async def scenario(t: Target, tag: str) -> Any:
        table = f"apg_{tag}"
        conn = await asyncpg.connect(**t.asyncpg_kwargs())
        await conn.set_type_codec("jsonb", encoder=str, decoder=str, schema="pg_catalog")
        out: dict[str, Any] = {}
        try:
            out["ddl"] = await conn.execute(
                f'create table "{table}" (id int primary key, amount numeric, at timestamptz, '
                "ints int[], names text[], doc jsonb, uid uuid, blob bytea)"
            )
            # Binary types through bind parameters and results.
            values = [
                (
                    i,
                    Decimal(i) / 7 if i % 10 else Decimal("NaN"),
                    dt.datetime(2024, 2, 29, 23, 59, 59, i, tzinfo=dt.UTC) + dt.timedelta(days=i),
                    [i, None, -i],
                    [f"n{i}", "", "é,\"}"],
                    f'{{"i": {i}, "nested": {{"a": [1, 2]}}}}',
                    uuid.UUID(int=i),
                    bytes([i % 256]) * (i % 50),
                )
                for i in range(1, 501)
            ]
            out["insert"] = await conn.executemany(
                f'insert into "{table}" values ($1, $2, $3, $4, $5, $6, $7, $8)', values
            )
            rows = await conn.fetch(f'select * from "{table}" order by id')
            out["roundtrip"] = [repr(tuple(r)) for r in rows] == [repr(v) for v in values]
            out["rows"] = digest(repr(tuple(r)) for r in rows)
            out["arrays"] = repr(await conn.fetchrow(
                "select array[[1,2],[3,4]]::int[], array[1.5, null]::numeric[], "
                "'{}'::text[], array['2024-01-01'::date], '-infinity'::timestamptz"
            ))
            # Prepared statements reused many times.
            stmt = await conn.prepare(f'select amount, names from "{table}" where id = $1')
            out["prepared"] = digest(
                [repr(tuple(await stmt.fetchrow(i % 500 + 1))) for i in range(REUSE)]
            )
            out["prepared_attrs"] = (
                [a.name for a in stmt.get_attributes()],
                [p.name for p in stmt.get_parameters()],
            )
            # A 100k-row result.
            big = await conn.fetch(
                f"select g, md5(g::text), g::numeric / 3 from generate_series(1, {BIG}) g"
            )
            out["big"] = digest(tuple(r) for r in big)
            # A transaction rolled back; an error inside a transaction.
            tr = conn.transaction()
            await tr.start()
            await conn.execute(f'delete from "{table}" where id > 0')
            out["in_tx"] = await conn.fetchval(f'select count(*) from "{table}"')
            await tr.rollback()
            out["after_rollback"] = await conn.fetchval(f'select count(*) from "{table}"')
            tr = conn.transaction()
            await tr.start()
            out["dup"] = await apg_failure(
                conn.execute(f'insert into "{table}" (id) values (1)')
            )
            out["aborted"] = await apg_failure(conn.fetchval("select 1"))
            await tr.rollback()
            # copy_records_to_table, copy_to_table, copy_from_query, copy_from_table.
            out["copy_records"] = await conn.copy_records_to_table(
                table, records=[(i, Decimal(i), [i]) for i in range(1000, 21000)],
                columns=["id", "amount", "ints"],
            )
            source = io.BytesIO(
                "".join(f"{i},{i}.25,\"{{{i}}}\"\n" for i in range(30000, 35000)).encode()
            )
            out["copy_to_table"] = await conn.copy_to_table(
                table, source=source, columns=["id", "amount", "ints"], format="csv"
            )
            for fmt in ("text", "csv", "binary"):
                buf = io.BytesIO()
                status = await conn.copy_from_query(
                    f'select * from "{table}" where id > $1 order by id', 0,
                    output=buf, format=fmt,
                )
                out[f"copy_from_query_{fmt}"] = (status, hashlib.sha256(buf.getvalue()).hexdigest())
            buf = io.BytesIO()
            out["copy_from_table"] = await conn.copy_from_table(table, output=buf, format="csv")
            out["copy_error"] = await apg_failure(conn.copy_records_to_table(
                table, records=[(1, Decimal(1), [1])], columns=["id", "amount", "ints"]
            ))
            # Cursors in a transaction.
            async with conn.transaction():
                out["cursor_iter"] = digest([
                    tuple(r) async for r in conn.cursor(
                        f'select id, amount from "{table}" order by id', prefetch=700
                    )
                ])
                cur = await conn.cursor(
                    "select g from generate_series(1, 10000) g where g % $1 = 0", 3
                )
                first = await cur.fetch(5)
                skipped = await cur.forward(1000)
                row = await cur.fetchrow()
                rest = await cur.fetch(100000)
                out["cursor_ops"] = ([r[0] for r in first], skipped, row[0] if row else None,
                                     len(rest))
            # LISTEN / NOTIFY.
            got: list[tuple[str, str]] = []
            done = asyncio.Event()

            def on_notify(_c: Any, _pid: int, channel: str, payload: str) -> None:
                got.append((channel, payload))
                if len(got) == 3:
                    done.set()

            await conn.add_listener(f"chan_{tag}", on_notify)
            sender = await asyncpg.connect(**t.asyncpg_kwargs(verify=False))
            try:
                for payload in ("one", "two ☃", "three"):
                    await sender.execute("select pg_notify($1, $2)", f"chan_{tag}", payload)
            finally:
                await sender.close()
            await asyncio.wait_for(done.wait(), 10)
            out["notify"] = got
            await conn.remove_listener(f"chan_{tag}", on_notify)
        finally:
            await conn.execute(f'drop table if exists "{table}"')
            await conn.close()
        return out

    out = across(targets, lambda t, tag: run_async(scenario(t, tag)))
    assert out["roundtrip"] is True
    assert out["big"][0] == BIG
    assert out["dup"][0] == "23505" and out["aborted"][0] == "25P02"
    assert out["after_rollback"] == 500
    assert out["copy_records"] == "COPY 20000" and out["copy_to_table"] == "COPY 5000"
    assert out["copy_error"][0] == "23505"
    assert out["cursor_ops"] == ([3, 6, 9, 12, 15], 1000, 3018, 2327)
    assert [p for _, p in out["notify"]] == ["one", "two ☃", "three"]


def test_asyncpg_cancel_on_timeout_keeps_connection(targets: list[Target], pg: PgCluster) -> None:
    async def scenario(t: Target, tag: str) -> Any:
        conn = await asyncpg.connect(**t.asyncpg_kwargs())
        out: list[Any] = []
        try:
            for how in ("wait_for", "timeout", "transaction"):
                marker = f"cancel-{tag}-{how}"
                query = f"select pg_sleep(30) /* {marker} */"
                tr = None
                if how == "transaction":
                    tr = conn.transaction()
                    await tr.start()
                start = time.monotonic()
                try:
                    if how == "timeout":
                        await conn.fetchval(query, timeout=1.0)
                    else:
                        await asyncio.wait_for(conn.fetchval(query), 1.0)
                    result: Any = "finished"
                except TimeoutError:
                    result = "timeout"
                if tr is not None:
                    out.append(await apg_failure(conn.fetchval("select 1")))
                    await tr.rollback()
                # The next statement waits for the cancelled one to end: fast only if the
                # cancel request reached PostgreSQL.
                usable = await conn.fetchval("select 'usable'")
                elapsed = time.monotonic() - start
                out.append((how, result, usable, elapsed < 10, still_running(pg, marker)))
        finally:
            await conn.close()
        return out

    out = across(targets, lambda t, tag: run_async(scenario(t, tag)))
    assert out[0] == ("wait_for", "timeout", "usable", True, 0)
    assert out[1] == ("timeout", "timeout", "usable", True, 0)
    assert out[2][0] == "25P02"
    assert out[3] == ("transaction", "timeout", "usable", True, 0)


# == SQLAlchemy 2 on psycopg =============================================================


def test_sqlalchemy_core(targets: list[Target]) -> None:

    def run(t: Target, tag: str) -> Any:
        engine = create_engine(t.sa_url(), poolclass=NullPool)
        md = MetaData()
        items = Table(
            f"sa_core_{tag}", md,
            Column("id", Integer, primary_key=True),
            Column("name", String(60), nullable=False, unique=True),
            Column("amount", Numeric(12, 2)),
            Column("at", DateTime(timezone=True)),
            Column("tags", ARRAY(Text)),
            Column("doc", JSONB),
        )
        out: dict[str, Any] = {}
        try:
            md.create_all(engine)
            with engine.begin() as conn:
                ids = conn.execute(
                    insert(items).returning(items.c.id, sort_by_parameter_order=True),
                    [
                        {"id": i, "name": f"item {i}", "amount": Decimal(i) / 4,
                         "at": T0 + dt.timedelta(hours=i), "tags": [str(i % 3), "x"],
                         "doc": {"i": i, "even": i % 2 == 0}}
                        for i in range(1, 3001)
                    ],
                ).scalars().all()
                out["ids"] = (len(ids), ids[:3], ids[-1])
            with engine.connect() as conn:
                out["rows"] = digest(conn.execute(
                    select(items).where(items.c.id % 7 == 0).order_by(items.c.id)
                ).all())
                out["agg"] = tuple(conn.execute(
                    select(func.count(), func.sum(items.c.amount),
                           func.max(items.c.doc["i"].as_integer()))
                ).one())
                out["any"] = conn.execute(
                    select(items.c.id)
                    .where(literal("2") == any_(items.c.tags))
                    .order_by(items.c.id)
                    .limit(3)
                ).scalars().all()
                conn.commit()
                # A transaction rolled back.
                tx = conn.begin()
                conn.execute(delete(items).where(items.c.id > 0))
                out["in_tx"] = conn.scalar(select(func.count()).select_from(items))
                tx.rollback()
                out["after_rollback"] = conn.scalar(select(func.count()).select_from(items))
                conn.commit()
                # An error inside a transaction.
                tx = conn.begin()
                try:
                    conn.execute(insert(items), {"id": 1, "name": "dup"})
                except IntegrityError as exc:
                    out["dup"] = (exc.orig.sqlstate, type(exc.orig).__name__)  # type: ignore[union-attr]
                try:
                    conn.execute(text("select 1"))
                except DBAPIError as exc:
                    out["aborted"] = (exc.orig.sqlstate, type(exc.orig).__name__)  # type: ignore[union-attr]
                tx.rollback()
                # A server-side cursor (stream_results / yield_per) over 100k rows.
                result = conn.execute(
                    text(f"select g, md5(g::text) from generate_series(1, {BIG}) g")
                    .execution_options(yield_per=5000)
                )
                out["cursor_kind"] = type(result.cursor).__name__
                first = result.fetchmany(10)
                out["open_cursors"] = conn.exec_driver_sql(
                    "select count(*) from pg_cursors"
                ).scalar()
                out["streamed"] = digest(first + [tuple(r) for r in result])
                conn.rollback()
        finally:
            md.drop_all(engine)
            engine.dispose()
        return out

    out = across(targets, run)
    assert out["ids"] == (3000, [1, 2, 3], 3000)
    assert out["in_tx"] == 0 and out["after_rollback"] == 3000
    assert out["dup"] == ("23505", "UniqueViolation")
    assert out["aborted"] == ("25P02", "InFailedSqlTransaction")
    assert out["cursor_kind"] == "ServerCursor" and out["open_cursors"] == 1
    assert out["streamed"][0] == BIG


def test_sqlalchemy_orm(targets: list[Target]) -> None:

    def models(tag: str) -> tuple[Any, Any, Any]:
        class Base(DeclarativeBase):
            pass

        class Customer(Base):
            __tablename__ = f"sa_customer_{tag}"
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str] = mapped_column(String(40), unique=True)
            orders: Mapped[list[Any]] = relationship(
                "Order", back_populates="customer", order_by="Order.id"
            )

        class Order(Base):
            __tablename__ = f"sa_order_{tag}"
            id: Mapped[int] = mapped_column(primary_key=True)
            customer_id: Mapped[int] = mapped_column(ForeignKey(f"sa_customer_{tag}.id"))
            amount: Mapped[Decimal]
            note: Mapped[str | None]
            customer: Mapped[Any] = relationship("Customer", back_populates="orders")

        return Base, Customer, Order

    def run(t: Target, tag: str) -> Any:
        base, customer, order = models(tag)
        engine = create_engine(t.sa_url(), poolclass=NullPool)
        out: dict[str, Any] = {}
        try:
            base.metadata.create_all(engine)
            with Session(engine) as session:
                session.add_all([
                    customer(
                        name=f"c{c}",
                        orders=[order(amount=Decimal(c * 10 + o) / 8, note=None if o % 2 else "n")
                                for o in range(10)],
                    )
                    for c in range(200)
                ])
                session.commit()
                loaded = session.scalars(
                    select(customer).options(selectinload(customer.orders)).order_by(customer.id)
                ).all()
                out["loaded"] = digest(
                    (c.name, [(o.amount, o.note) for o in c.orders]) for c in loaded
                )
                # Change, then roll back: the session sees the old values again.
                loaded[0].name = "renamed"
                session.flush()
                out["flushed"] = session.scalar(
                    select(func.count()).where(customer.name == "renamed")
                )
                session.rollback()
                out["after_rollback"] = session.get(customer, loaded[0].id).name
                # A constraint violation at flush inside a SAVEPOINT is contained.
                with session.begin_nested():
                    session.add(customer(name="extra"))
                try:
                    with session.begin_nested():
                        session.add(customer(name="c1"))
                except IntegrityError as exc:
                    out["nested_dup"] = exc.orig.sqlstate  # type: ignore[union-attr]
                session.commit()
                out["customers"] = session.scalar(select(func.count()).select_from(customer))
                # A failed flush outside a savepoint requires a rollback.
                session.add(customer(name="c2"))
                try:
                    session.flush()
                except IntegrityError as exc:
                    out["dup"] = exc.orig.sqlstate  # type: ignore[union-attr]
                try:
                    session.scalar(select(1))
                except PendingRollbackError:
                    out["pending"] = "PendingRollbackError"
                session.rollback()
                # An error in a statement: the server aborts the transaction (25P02).
                try:
                    session.execute(text("select 1/0"))
                except DBAPIError as exc:
                    out["div"] = exc.orig.sqlstate  # type: ignore[union-attr]
                try:
                    session.execute(text("select 1"))
                except DBAPIError as exc:
                    out["aborted"] = exc.orig.sqlstate  # type: ignore[union-attr]
                session.rollback()
                # yield_per streams through a server-side cursor.
                result = session.scalars(
                    select(order).order_by(order.id).execution_options(yield_per=150)
                )
                chunks = 0
                rows = []
                for part in result.partitions():
                    chunks += 1
                    rows.extend((o.id, o.customer_id, o.amount) for o in part)
                    if chunks == 1:
                        out["open_cursors"] = session.execute(
                            text("select count(*) from pg_cursors")
                        ).scalar()
                out["yield_per"] = (chunks, digest(rows))
                session.rollback()
        finally:
            base.metadata.drop_all(engine)
            engine.dispose()
        return out

    out = across(targets, run)
    assert out["loaded"][0] == 200 and out["flushed"] == 1 and out["after_rollback"] == "c0"
    assert out["nested_dup"] == "23505" and out["customers"] == 201
    assert out["dup"] == "23505" and out["pending"] == "PendingRollbackError"
    assert out["div"] == "22012" and out["aborted"] == "25P02"
    assert out["open_cursors"] == 1 and out["yield_per"][0] == 14

