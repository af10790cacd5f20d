"""The policy enforced on live sessions, against a real PostgreSQL, with real clients.

Every attack carries a unique marker in a comment. The database the tests use logs every
statement its backends receive (``log_statement = 'all'``), so "never reached the server"
is checked in the server's own log, and a canary table shows nothing was changed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from gateway.devcluster import PgCluster
from tests.support import (
    CLIENT_SECRET,
    CLIENT_USER,
    UPSTREAM_USER,
    Gateway,
    RawClient,
    error_fields,
    message,
)

pytestmark = pytest.mark.e2e

DB = "policydb"

POLICY = """
[policy]
baseline = true

[[rules]]
id = "no-salaries"
action = "block"
relations = ["salaries"]
message = "salaries are not available through pgwarden"

[[rules]]
id = "watch-vacuum"
action = "block"
kinds = ["VACUUM"]
observe = true
"""


@pytest.fixture(scope="module")
def policy_db(pg: PgCluster) -> str:
    pg.create_database(DB, owner=UPSTREAM_USER)
    pg.sql(f"ALTER DATABASE {DB} SET log_statement = 'all'")
    with pg.connect(DB, user=UPSTREAM_USER, password=pg_password()) as conn:
        conn.execute("create table canary (id int primary key, v int)")
        conn.execute("insert into canary select g, g from generate_series(1, 10) g")
        conn.execute("create table salaries (id int, amount int)")
        conn.commit()
    return DB


def pg_password() -> str:
    from tests.support import UPSTREAM_PASSWORD

    return UPSTREAM_PASSWORD


@pytest.fixture(scope="module")
def gw(start_gateway: Callable[..., Gateway], policy_db: str) -> Gateway:
    return start_gateway(workers=1, policy=POLICY)


def canary_rows(pg: PgCluster) -> list[tuple[Any, ...]]:
    return pg.sql("select count(*), sum(v) from canary", dbname=DB)


def dsn(gw: Gateway) -> str:
    return gw.dsn(sslmode="disable", dbname=DB)


def raw_login(gw: Gateway) -> RawClient:
    client = RawClient(gw.port)
    client.startup(database=DB)
    assert client.read_message() == (b"R", b"\x00\x00\x00\x03")
    client.send(message(b"p", CLIENT_SECRET.encode() + b"\x00"))
    assert client.read_until(b"Z")[-1][0] == b"Z"
    return client


def simple(client: RawClient, sql: str) -> list[tuple[bytes, bytes]]:
    client.send(message(b"Q", sql.encode() + b"\x00"))
    return client.read_until(b"Z")


def errors(replies: list[tuple[bytes, bytes]]) -> list[dict[str, str]]:
    return [error_fields(body) for kind, body in replies if kind == b"E"]


# Statements the baseline (or the configured rules) refuses, each with the SQLSTATE and
# rule the client must see. {m} is replaced by a unique marker inside a comment.
ATTACKS: list[tuple[str, str, str]] = [
    ("DROP TABLE canary /*{m}*/", "42501", "baseline.drop"),
    ("SELECT 1; DROP TABLE canary /*{m}*/", "42501", "baseline.drop"),
    ("/*{m}*/ dRoP/**/TaBlE \"canary\"", "42501", "baseline.drop"),
    ('DROP TABLE U&"\\0063anary" /*{m}*/', "42501", "baseline.drop"),
    ("TRUNCATE canary /*{m}*/", "42501", "baseline.truncate"),
    ("DELETE FROM canary /*{m}*/", "42501", "baseline.no_where"),
    ("UPDATE canary SET v = 0 WHERE true /*{m}*/", "42501", "baseline.no_where"),
    ("WITH d AS (DELETE FROM canary RETURNING *) SELECT count(*) FROM d /*{m}*/", "42501",
     "baseline.no_where"),
    ("EXPLAIN ANALYZE DELETE FROM canary /*{m}*/", "42501", "baseline.no_where"),
    ("PREPARE p{m} AS DELETE FROM canary", "42501", "baseline.no_where"),
    ("DO $x$ BEGIN EXECUTE 'DROP TABLE canary'; END $x$ /*{m}*/", "42501",
     "baseline.dynamic_sql"),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT pg_read_file('/etc/passwd') /*{m}*/", "42501",
     "baseline.server_files"),
    ("COPY (SELECT 1) TO PROGRAM 'touch /tmp/pgwarden-pwned' /*{m}*/", "42501",
     "baseline.copy_program"),
    ("COPY canary FROM '/etc/passwd' /*{m}*/", "42501", "baseline.copy_file"),
    ("SET ROLE postgres /*{m}*/", "42501", "baseline.role_switch"),
    ("SET SESSION AUTHORIZATION postgres /*{m}*/", "42501", "baseline.role_switch"),
    ("SELECT set_config('role', 'postgres', false) /*{m}*/", "42501", "baseline.role_switch"),
    ("ALTER SYSTEM SET work_mem = '1GB' /*{m}*/", "42501", "baseline.alter_system"),
    ("CREATE ROLE r{m}", "42501", "baseline.role_management"),
    ("GRANT ALL ON canary TO public /*{m}*/", "42501", "baseline.privileges"),
    ("SELECT * FROM salaries /*{m}*/", "42501", "no-salaries"),
    ("SELECT * FROM public.SALARIES s JOIN canary c ON c.id = s.id /*{m}*/", "42501",
     "no-salaries"),
    ("SET client_encoding = 'SJIS' /*{m}*/", "42501", "integrity.parser_setting"),
    ("SET standard_conforming_strings = off /*{m}*/", "42501", "integrity.parser_setting"),
    ("SELEC 1 /*{m}*/", "42601", "syntax"),
    ("SELECT 1 /*{m}*/; " + "SELECT 2; " * 20000 + "DROP TABLE canary", "42501",
     "baseline.drop"),
]


def marked(template: str) -> tuple[str, str]:
    m = "m" + uuid.uuid4().hex[:16]
    return template.replace("{m}", m), m


@pytest.mark.parametrize(("template", "sqlstate", "rule"), ATTACKS,
                         ids=[a[0][:40] for a in ATTACKS])
def test_attack_is_refused_and_never_reaches_the_server(
    gw: Gateway, pg: PgCluster, template: str, sqlstate: str, rule: str
) -> None:
    sql, marker = marked(template)
    before = canary_rows(pg)
    client = raw_login(gw)
    try:
        replies = simple(client, sql)
        errs = errors(replies)
        assert len(errs) == 1, replies
        assert errs[0]["C"] == sqlstate
        if rule != "syntax":
            assert f"pgwarden rule {rule}" in errs[0]["M"]
        assert replies[-1] == (b"Z", b"I")
        # The session carries on.
        ok = simple(client, f"SELECT 'ok' /*{marker}-after*/")
        assert not errors(ok) and ok[-1] == (b"Z", b"I")
    finally:
        client.close()
    assert canary_rows(pg) == before
    log = pg.server_log()
    assert f"{marker}-after" in log  # statement logging works ...
    assert f"{marker}*/" not in log and f"p{marker}" not in log and f"r{marker}" not in log


def test_syntax_error_carries_the_parsers_position(gw: Gateway) -> None:
    client = raw_login(gw)
    try:
        (err,) = errors(simple(client, "SELECT 1 FROM canary WHERE"))
    finally:
        client.close()
    assert err["C"] == "42601" and err["M"] == 'syntax error at end of input'
    assert err["P"] == "27"


def test_extended_protocol_refusal_keeps_the_pipeline_in_sync(gw: Gateway, pg: PgCluster) -> None:
    sql, marker = marked("DELETE FROM canary /*{m}*/")
    before = canary_rows(pg)
    client = raw_login(gw)

    def parse(name: str, text: str) -> bytes:
        return message(b"P", name.encode() + b"\x00" + text.encode() + b"\x00\x00\x00")

    def bind(portal: str, stmt: str) -> bytes:
        return message(b"B", portal.encode() + b"\x00" + stmt.encode() + b"\x00" + b"\x00" * 6)

    execute = message(b"E", b"\x00\x00\x00\x00\x00")
    sync = message(b"S")
    try:
        # Batch 1: the refused Parse, then Bind/Execute of it, then a good statement:
        # one error, everything up to Sync discarded, ReadyForQuery.
        client.send(
            parse("bad", sql) + bind("", "bad") + execute
            + parse("", "SELECT 42") + bind("", "") + execute + sync
        )
        replies = client.read_until(b"Z")
        assert [kind for kind, _ in replies] == [b"E", b"Z"]
        assert error_fields(replies[0][1])["C"] == "42501"
        # Batch 2: binding the refused statement is still refused by pgwarden.
        client.send(bind("", "bad") + execute + sync)
        replies = client.read_until(b"Z")
        assert [kind for kind, _ in replies] == [b"E", b"Z"]
        assert "pgwarden rule baseline.no_where" in error_fields(replies[0][1])["M"]
        # Batch 3: the pipeline works.
        client.send(parse("", "SELECT 42") + bind("", "") + execute + sync)
        replies = client.read_until(b"Z")
        assert [kind for kind, _ in replies] == [b"1", b"2", b"D", b"C", b"Z"]
    finally:
        client.close()
    assert canary_rows(pg) == before
    assert f"{marker}*/" not in pg.server_log()


def test_function_call_message_refused_but_large_objects_work(gw: Gateway) -> None:
    client = raw_login(gw)
    try:
        # FunctionCall of an OID that is not a known built-in (no SQL to inspect).
        body = (16400).to_bytes(4, "big") + b"\x00\x00" + b"\x00\x00" + b"\x00\x00"
        client.send(message(b"F", body))
        replies = client.read_until(b"Z")
        assert [kind for kind, _ in replies] == [b"E", b"Z"]
        assert "baseline.function_call" in error_fields(replies[0][1])["M"]
    finally:
        client.close()
    # libpq's large-object API (pg_dump, pgjdbc) goes through FunctionCall: lo_creat is
    # a built-in with a fixed OID (957), decided like SELECT lo_creat(...): allowed.
    client = raw_login(gw)
    try:
        mode = (0x20000 | 0x40000).to_bytes(4, "big")
        body = (957).to_bytes(4, "big") + b"\x00\x01\x00\x01" + b"\x00\x01"
        body += (4).to_bytes(4, "big") + mode + b"\x00\x01"
        client.send(message(b"F", body))
        replies = client.read_until(b"Z")
        assert [kind for kind, _ in replies] == [b"V", b"Z"], replies
        oid = int.from_bytes(replies[0][1][4:8], "big")
        assert not errors(simple(client, f"select lo_unlink({oid})"))
    finally:
        client.close()


def test_refusal_in_a_transaction_fails_it_psycopg(gw: Gateway, pg: PgCluster) -> None:
    before = canary_rows(pg)
    with psycopg.connect(dsn(gw)) as conn:
        conn.execute("insert into canary values (1000, 1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="requires approval"):
            conn.execute("drop table canary")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute("select count(*) from canary").fetchone() == (before[0][0],)
        # Prepared (extended protocol) statements are decided at Parse.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from canary where %s", (True,), prepare=True)
        conn.rollback()
        # pipeline mode: the refusal is one error in the pipeline, the rest discarded
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
            conn.execute("select 1")
            conn.execute("truncate canary")
            conn.execute("select 2")
        conn.rollback()
        assert conn.execute("select 7").fetchone() == (7,)
    assert canary_rows(pg) == before


def test_refusal_in_a_transaction_fails_it_asyncpg(gw: Gateway, pg: PgCluster) -> None:
    before = canary_rows(pg)

    async def scenario() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=gw.port, user=CLIENT_USER,
                                     password=CLIENT_SECRET, database=DB, ssl=False)
        try:
            tr = conn.transaction()
            await tr.start()
            await conn.execute("insert into canary values (1001, 1)")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.execute("update canary set v = 0")
            with pytest.raises(asyncpg.exceptions.InFailedSQLTransactionError):
                await conn.fetchval("select 1")
            await tr.rollback()
            # asyncpg prepares everything: refused at Parse, every time
            for _ in range(2):
                with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                    await conn.fetch("select * from salaries where id = $1", 1)
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.prepare("delete from canary")
            count = await conn.fetchval("select count(*) from canary where id > $1", 0)
            assert count == before[0][0]
        finally:
            await conn.close()

    asyncio.run(scenario())
    assert canary_rows(pg) == before


def test_psql_refusal_runs_nothing_of_the_string(gw: Gateway, pg: PgCluster) -> None:
    before = canary_rows(pg)
    env = gw.env(sslmode="disable")
    env["PGDATABASE"] = DB
    proc = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c",
         "insert into canary values (2000, 1); drop table canary"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "requires approval: dropping objects (pgwarden rule baseline.drop)" in proc.stderr
    assert canary_rows(pg) == before


def test_observe_rule_logs_and_does_not_block(gw: Gateway) -> None:
    with psycopg.connect(dsn(gw), autocommit=True) as conn:
        conn.execute("vacuum canary")
    expected = "observe: rule watch-vacuum would block"
    assert expected in gw.wait_for_log(expected)


def test_session_switching_to_unsafe_encoding_is_ended(gw: Gateway, pg: PgCluster) -> None:
    # A function body can change client_encoding where no parser sees it; the server
    # reports the change and pgwarden ends the session before anything else is decided.
    pg.sql(
        "create or replace function public.sneaky() returns void language plpgsql as "
        "$$ begin perform set_config('client_encoding', 'SJIS', false); end $$",
        dbname=DB,
    )
    client = raw_login(gw)
    try:
        replies = simple(client, "select public.sneaky()")
        fatal = [error_fields(b) for k, b in replies if k == b"E"]
        assert fatal and fatal[-1]["C"] == "0A000" and "client_encoding" in fatal[-1]["M"]
        assert client.closed()
    finally:
        client.close()


@pytest.fixture()
def reloadable(start_gateway: Callable[..., Gateway], policy_db: str) -> Iterator[Gateway]:
    yield start_gateway(workers=1, policy=POLICY)


def test_sighup_reload_changes_decisions_and_bad_policy_keeps_the_old(
    reloadable: Gateway,
) -> None:
    import signal
    import time

    gw = reloadable
    with psycopg.connect(dsn(gw), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from salaries")
        text = gw.config_path.read_text()
        # An invalid policy: rejected with file/line/key, the old one stays in force.
        gw.config_path.write_text(text.replace('action = "block"', 'action = "blokc"', 1))
        gw.signal(signal.SIGHUP)
        deadline = time.time() + 10
        while "blokc" not in gw.log() and time.time() < deadline:
            time.sleep(0.1)
        assert "pgwarden.toml:" in gw.log()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from salaries")
        # `pgwarden reload` validates first: a bad file is reported and nothing signalled.
        bad = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "reload", "--config", str(gw.config_path)],
            capture_output=True, text=True, timeout=60,
        )
        assert bad.returncode == 2 and "pgwarden.toml:" in bad.stderr and "blokc" in bad.stderr
        # A valid new policy without the rule: the same open session sees it.
        gw.config_path.write_text(text.replace('relations = ["salaries"]',
                                               'relations = ["nothing_here"]', 1))
        ok = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "reload", "--config", str(gw.config_path)],
            capture_output=True, text=True, timeout=60,
        )
        assert ok.returncode == 0, ok.stderr
        assert f"supervisor {gw.proc.pid}" in ok.stdout
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                conn.execute("select * from salaries")
                break
            except psycopg.errors.InsufficientPrivilege:
                time.sleep(0.2)
        assert conn.execute("select count(*) from salaries").fetchone() == (0,)


def test_stats_expose_decision_cache_counters(gw: Gateway) -> None:
    import json
    import time

    with psycopg.connect(dsn(gw), autocommit=True) as conn:
        for _ in range(5):
            conn.execute("select count(*) from canary where id > 0", prepare=False)
    cmd = [sys.executable, "-m", "gateway.cli", "stats", "--config", str(gw.config_path)]
    deadline = time.time() + 10
    while True:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        (worker,) = json.loads(out.stdout)["workers"]
        cache = worker["decision_cache"]
        hits = cache["session_hits"] + cache["exact_hits"] + cache["normalized_hits"]
        if hits >= 4 or time.time() > deadline:
            break
        time.sleep(0.3)
    assert cache["misses"] >= 1 and hits >= 4
    prom = subprocess.run([*cmd, "--prometheus"], capture_output=True, text=True, timeout=60)
    assert 'pgwarden_decision_cache_misses{worker="0"}' in prom.stdout


def test_policy_disabled_is_pass_through(
    start_gateway: Callable[..., Gateway], policy_db: str
) -> None:
    gw = start_gateway(workers=1, policy="[policy]\nenabled = false\n")
    with psycopg.connect(dsn(gw), autocommit=True) as conn:
        conn.execute("create temp table scratch (id int)")
        conn.execute("delete from scratch")  # the baseline would refuse this
        conn.execute("drop table scratch")


def test_session_started_in_an_unsafe_encoding_is_refused_every_statement(gw: Gateway) -> None:
    client = RawClient(gw.port)
    try:
        client.startup(database=DB, client_encoding="SJIS")
        assert client.read_message() == (b"R", b"\x00\x00\x00\x03")
        client.send(message(b"p", CLIENT_SECRET.encode() + b"\x00"))
        client.read_until(b"Z")
        (err,) = errors(simple(client, "select 1"))
        assert err["C"] == "0A000" and "client_encoding" in err["M"]
    finally:
        client.close()


def test_statement_text_that_is_not_utf8_is_refused(gw: Gateway, pg: PgCluster) -> None:
    client = raw_login(gw)
    try:
        client.send(message(b"Q", b"select '\x81\x5c'; drop table canary\x00"))
        (err,) = errors(client.read_until(b"Z"))
        assert err["C"] == "22021"
    finally:
        client.close()
    assert canary_rows(pg)[0][0] is not None
