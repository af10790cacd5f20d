"""Table-driven tests for gateway.sql.analyze: classification, evasions and failure modes.

Each case is one SQL string and what must hold for one of its statements (by index).
Relations are written as ``"schema.name:mode"`` (``"name:mode"`` when unqualified);
``flags``, ``relations`` and ``functions`` are compared exactly when given, ``has_flags``
as a subset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sql import (
    Analysis,
    RelationRef,
    SqlSyntaxError,
    Statement,
    analyze,
    fingerprint,
    normalize,
)


@dataclass
class Case:
    sql: str
    index: int = 0
    count: int | None = None
    kind: str | None = None
    command: str | None = None
    category: str | None = None
    relations: set[str] | None = None
    functions: set[str] | None = None
    flags: set[str] | None = None
    has_flags: set[str] = field(default_factory=set)

    def __str__(self) -> str:
        return self.sql[:60]


def rel(r: RelationRef) -> str:
    return f"{r.schema + '.' if r.schema else ''}{r.name}:{r.mode}"


ROLE = {"role_switch"}
PARSER = {"parser_setting"}
UNSAFE_PARSER = {"parser_setting", "unsafe_parser_setting"}

CASES: list[Case] = [
    # --- plain DML / reads
    Case("SELECT 1", kind="SELECT", command="SELECT", category="read", relations=set(),
         functions=set(), flags=set()),
    Case("SELECT abalance FROM pgbench_accounts WHERE aid = 5", kind="SELECT",
         relations={"pgbench_accounts:read"}, flags=set()),
    Case("select * from public.t join s.u on true", relations={"public.t:read", "s.u:read"}),
    Case("INSERT INTO t (a) VALUES (1)", kind="INSERT", category="write",
         relations={"t:write"}, flags=set()),
    Case("INSERT INTO t SELECT * FROM s", kind="INSERT", relations={"t:write", "s:read"}),
    Case("INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = excluded.b",
         kind="INSERT", relations={"t:write"}),
    Case("UPDATE t SET a = 1 WHERE id = 2", kind="UPDATE", category="write",
         relations={"t:write"}, flags=set()),
    Case("UPDATE t SET a = 1", kind="UPDATE", flags={"no_where"}),
    Case("UPDATE t SET a = u.a FROM u WHERE t.id = u.id", relations={"t:write", "u:read"},
         flags=set()),
    Case("DELETE FROM t", kind="DELETE", command="DELETE", flags={"no_where"}),
    Case("DELETE FROM t WHERE true", flags={"no_where"}),
    Case("DELETE FROM t WHERE 1 = 1", flags={"no_where"}),
    Case("DELETE FROM t WHERE id = 1", flags=set()),
    Case("DELETE FROM t WHERE CURRENT OF c", flags=set()),
    Case("DELETE FROM t USING u WHERE t.id = u.id", relations={"t:write", "u:read"}),
    Case("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", kind="MERGE",
         relations={"t:write", "s:read"}, flags=set()),
    Case("TABLE t", kind="SELECT", relations={"t:read"}),
    Case("VALUES (1), (2)", kind="SELECT", relations=set()),
    Case("SELECT 1 UNION SELECT a FROM t EXCEPT SELECT b FROM u",
         relations={"t:read", "u:read"}),
    # SELECT ... FOR UPDATE takes row locks (needs UPDATE privilege) but reads: flag row_lock
    Case("SELECT * FROM t WHERE id = 1 FOR UPDATE", kind="SELECT", category="read",
         relations={"t:read"}, flags={"row_lock"}),
    Case("SELECT * FROM t FOR SHARE SKIP LOCKED", flags={"row_lock"}),
    Case("SELECT * INTO newt FROM t", kind="DDL", command="SELECT INTO", category="ddl",
         relations={"newt:write", "t:read"}),
    # --- multiple statements
    Case("SELECT 1; DROP TABLE t", count=2, index=1, kind="DDL", command="DROP TABLE",
         category="ddl", relations={"t:write"}),
    Case("SELECT 1; DROP TABLE t", count=2, index=0, kind="SELECT"),
    Case("select 1;;; delete from t;", count=2, index=1, kind="DELETE", flags={"no_where"}),
    Case("BEGIN; DELETE FROM t; COMMIT", count=3, index=1, kind="DELETE"),
    # --- comments and hints
    Case("/* harmless */ DROP TABLE t", kind="DDL", command="DROP TABLE"),
    Case("SELECT 1 -- ; DROP TABLE t", count=1, kind="SELECT"),
    Case("SELECT /* ; DROP TABLE t; */ 1", count=1, kind="SELECT"),
    Case("/*+ SeqScan(t) */ DELETE FROM t", kind="DELETE", flags={"no_where"}),
    Case("/* nested /* comment */ ; */ DROP DATABASE prod", count=1,
         command="DROP DATABASE"),
    # --- case and quoting tricks
    Case("dRoP tAbLe T", command="DROP TABLE", relations={"t:write"}),
    Case('DROP TABLE "T"', command="DROP TABLE", relations={"T:write"}),
    Case("SELECT \"pg_read_file\"('/etc/passwd')", functions={"pg_read_file"}),
    Case("SELECT pg_catalog.\"pg_read_file\"('/etc/passwd')",
         functions={"pg_catalog.pg_read_file"}),
    Case("SELECT PG_CATALOG.PG_READ_FILE('x')", functions={"pg_catalog.pg_read_file"}),
    Case('SELECT "PG_READ_FILE"(\'x\')', functions={"pg_read_file"}),
    Case('SELECT * FROM U&"d\\0061ta"', relations={"data:read"}),
    Case('DELETE FROM U&"!0073ecret" UESCAPE \'!\'', relations={"secret:write"},
         flags={"no_where"}),
    Case("SELECT * FROM \"my schema\".\"My Table\"", relations={"my schema.My Table:read"}),
    # --- dollar quoting
    Case("SELECT $x$ ; DROP TABLE t; $x$", count=1, kind="SELECT", relations=set()),
    Case("SELECT $$;$$; DROP TABLE t", count=2, index=1, command="DROP TABLE"),
    Case("SELECT E'\\'; DROP TABLE t; --'", count=1, kind="SELECT"),
    # --- data-modifying CTEs
    Case("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", kind="DELETE",
         command="DELETE", category="write", relations={"t:write"},
         flags={"data_modifying_cte", "no_where"}),
    Case("WITH u AS (UPDATE t SET a = 1 WHERE id = 1 RETURNING *) SELECT count(*) FROM u",
         kind="UPDATE", relations={"t:write"}, flags={"data_modifying_cte"},
         functions={"count"}),
    Case("WITH i AS (INSERT INTO log VALUES (1) RETURNING *) SELECT 1", kind="INSERT",
         flags={"data_modifying_cte"}),
    Case("WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) INSERT INTO arch SELECT * FROM d",
         kind="DELETE", relations={"t:write", "arch:write"}, flags={"data_modifying_cte"}),
    Case("WITH x AS (SELECT * FROM secret) SELECT * FROM x", kind="SELECT",
         relations={"secret:read"}, flags=set()),
    # a CTE name only hides tables inside its scope
    Case("SELECT * FROM (WITH secret AS (SELECT 1) SELECT * FROM secret) s, secret",
         relations={"secret:read"}),
    Case("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a, b",
         relations={"b:read"}),
    Case("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
         relations=set()),
    # --- EXPLAIN
    Case("EXPLAIN ANALYZE DELETE FROM t", kind="DELETE", category="write",
         relations={"t:write"}, flags={"explain_analyze", "no_where"}),
    Case("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1 WHERE id = 1", kind="UPDATE",
         has_flags={"explain_analyze"}),
    Case("EXPLAIN (ANALYZE off) DELETE FROM t", kind="EXPLAIN", category="read",
         relations={"t:read"}, flags=set()),
    Case("EXPLAIN DELETE FROM t", kind="EXPLAIN", command="EXPLAIN", flags=set()),
    Case("explain analyze select pg_sleep(1)", kind="SELECT", functions={"pg_sleep"},
         flags={"explain_analyze"}),
    # --- SQL-level PREPARE / EXECUTE
    Case("PREPARE p AS DELETE FROM t", kind="PREPARE", command="PREPARE", category="write",
         relations={"t:write"}, flags={"no_where"}),
    Case("PREPARE q(int) AS SELECT * FROM t WHERE id = $1", kind="PREPARE",
         category="read", relations={"t:read"}),
    # runs what PREPARE prepared, which was decided then; its arguments are inspected
    Case("EXECUTE p", kind="EXECUTE", flags=set()),
    Case("EXECUTE q(pg_read_file('x'))", functions={"pg_read_file"}),
    Case("DEALLOCATE ALL", kind="DEALLOCATE", category="session"),
    # --- DO
    Case("DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$", kind="DO", flags={"dynamic_sql"}),
    Case("DO LANGUAGE plpgsql $body$ BEGIN PERFORM 1; END $body$", kind="DO",
         flags={"dynamic_sql"}),
    # --- cursors
    Case("DECLARE c CURSOR FOR SELECT * FROM t", kind="CURSOR", command="DECLARE CURSOR",
         category="read", relations={"t:read"}),
    Case("FETCH 10 FROM c", kind="CURSOR", command="FETCH"),
    Case("MOVE NEXT IN c", kind="CURSOR", command="MOVE"),
    Case("CLOSE c", kind="CURSOR", command="CLOSE CURSOR"),
    # --- COPY
    Case("COPY (SELECT * FROM t) TO PROGRAM 'curl x'", kind="COPY", command="COPY TO",
         category="admin", relations={"t:read"}, flags={"copy_to", "copy_program"}),
    Case("COPY t FROM '/etc/passwd'", kind="COPY", command="COPY FROM", category="admin",
         relations={"t:write"}, flags={"copy_from", "copy_file"}),
    Case("COPY t TO '/tmp/out'", command="COPY TO", flags={"copy_to", "copy_file"}),
    Case("COPY t TO STDOUT", kind="COPY", command="COPY TO", category="read",
         relations={"t:read"}, flags={"copy_to"}),
    Case("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", command="COPY FROM",
         category="write", relations={"t:write"}, flags={"copy_from"}),
    Case("COPY t FROM PROGRAM 'id'", flags={"copy_from", "copy_program"}),
    Case("COPY (SELECT lo_export(1, '/tmp/x')) TO STDOUT", functions={"lo_export"}),
    Case("COPY (DELETE FROM t RETURNING *) TO STDOUT", kind="DELETE", command="COPY TO",
         category="write", relations={"t:write"}, flags={"copy_to", "no_where"}),
    # --- role switching
    Case("SET ROLE admin", kind="SET", command="SET ROLE", category="session", flags=ROLE),
    Case("SET LOCAL ROLE admin", command="SET ROLE", flags=ROLE),
    Case("set session role admin", command="SET ROLE", flags=ROLE),
    Case("SET SESSION AUTHORIZATION postgres", command="SET SESSION AUTHORIZATION",
         flags=ROLE),
    Case("SET SESSION AUTHORIZATION DEFAULT", flags=ROLE),
    Case("RESET ROLE", kind="RESET", command="RESET ROLE", flags=ROLE),
    Case("RESET SESSION AUTHORIZATION", command="RESET SESSION AUTHORIZATION", flags=ROLE),
    Case("SET role = 'admin'", command="SET ROLE", flags=ROLE),
    Case("select set_config('role','x',false)", kind="SELECT", functions={"set_config"},
         flags=ROLE),
    Case("SELECT pg_catalog.set_config('session_authorization', 'x', true)", flags=ROLE),
    Case("SELECT set_config(' ROLE ', 'x', false)", flags=ROLE),
    Case("SELECT set_config(name, 'x', false) FROM t", flags=ROLE | UNSAFE_PARSER),
    Case("SELECT set_config('search_path', 'x', false)", flags=set()),
    Case("UPDATE pg_settings SET setting = 'admin' WHERE name = 'role'", has_flags=ROLE),
    Case("ALTER ROLE me SET role = 'admin'", kind="DCL", command="ALTER ROLE", flags=ROLE),
    Case("SET search_path = a, b", kind="SET", command="SET", flags=set()),
    Case("RESET ALL", kind="RESET", command="RESET ALL", flags=set()),
    Case("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", kind="TRANSACTION",
         category="transaction"),
    # --- admin
    Case("ALTER SYSTEM SET log_statement = 'none'", kind="UTILITY", command="ALTER SYSTEM",
         category="admin", flags={"alter_system"}),
    Case("ALTER SYSTEM RESET ALL", command="ALTER SYSTEM", flags={"alter_system"}),
    Case("DROP DATABASE prod", kind="DDL", command="DROP DATABASE", category="ddl"),
    Case("DROP DATABASE IF EXISTS prod WITH (FORCE)", command="DROP DATABASE"),
    Case("LOAD 'evil.so'", command="LOAD", category="admin"),
    Case("CHECKPOINT", command="CHECKPOINT", category="admin"),
    Case("VACUUM FULL t", kind="VACUUM", command="VACUUM", category="admin"),
    Case("ANALYZE t", kind="VACUUM", command="ANALYZE"),
    # --- TRUNCATE / DROP / ALTER
    Case("TRUNCATE t, s.u CASCADE", kind="TRUNCATE", command="TRUNCATE", category="write",
         relations={"t:write", "s.u:write"}),
    Case("ALTER TABLE t DROP COLUMN c", kind="DDL", command="ALTER TABLE DROP COLUMN",
         category="ddl", relations={"t:write"}),
    Case("ALTER TABLE t ADD COLUMN x int, DROP COLUMN c", command="ALTER TABLE DROP COLUMN"),
    Case("ALTER TABLE t ADD COLUMN x int DEFAULT nextval('s')",
         command="ALTER TABLE", functions={"nextval"}),
    Case("ALTER TABLE t DISABLE ROW LEVEL SECURITY",
         command="ALTER TABLE DISABLE ROW LEVEL SECURITY"),
    Case("ALTER TABLE t RENAME TO u", command="ALTER TABLE", relations={"t:write"}),
    Case("ALTER TABLE t OWNER TO someone", command="ALTER TABLE OWNER TO"),
    Case("DROP VIEW IF EXISTS s.v, w", command="DROP VIEW",
         relations={"s.v:write", "w:write"}),
    Case("DROP FUNCTION f(int)", command="DROP FUNCTION", relations=set()),
    Case("DROP SCHEMA s CASCADE", command="DROP SCHEMA"),
    Case("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", kind="LOCK", category="write",
         relations={"t:write"}),
    Case("LOCK TABLE t IN ACCESS SHARE MODE", kind="LOCK", category="read",
         relations={"t:read"}),
    # --- DCL and roles
    Case("GRANT SELECT ON t TO u", kind="DCL", command="GRANT", category="dcl",
         relations={"t:write"}),
    Case("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC", command="REVOKE",
         category="dcl"),
    Case("GRANT admin TO me", kind="DCL", command="GRANT"),
    Case("REVOKE admin FROM me", command="REVOKE"),
    Case("CREATE ROLE r LOGIN PASSWORD 'x'", kind="DCL", command="CREATE ROLE",
         category="dcl"),
    Case("CREATE USER u WITH SUPERUSER", command="CREATE ROLE"),
    Case("ALTER ROLE r SUPERUSER", command="ALTER ROLE"),
    Case("ALTER USER u PASSWORD 'y'", command="ALTER ROLE"),
    Case("ALTER ROLE r RENAME TO s", command="ALTER ROLE", category="dcl"),
    Case("DROP ROLE r", command="DROP ROLE", category="dcl"),
    Case("DROP USER IF EXISTS u", command="DROP ROLE"),
    Case("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO u",
         command="ALTER DEFAULT PRIVILEGES"),
    # --- DDL with functions in DEFAULT / CHECK / generated
    Case("CREATE TABLE t (a text DEFAULT pg_read_file('/etc/passwd'))", kind="DDL",
         command="CREATE TABLE", relations={"t:write"}, functions={"pg_read_file"}),
    Case("CREATE TABLE t (a int CHECK (lo_import('/x') > 0))", functions={"lo_import"}),
    Case("CREATE TABLE t (a int, b int GENERATED ALWAYS AS (abs(a)) STORED)",
         functions={"abs"}),
    Case("CREATE TABLE t AS SELECT * FROM s", command="CREATE TABLE AS",
         relations={"t:write", "s:read"}),
    Case("CREATE MATERIALIZED VIEW mv AS SELECT 1", command="CREATE MATERIALIZED VIEW"),
    Case("CREATE VIEW v AS SELECT now() FROM t", command="CREATE VIEW",
         relations={"v:write", "t:read"}, functions={"now"}),
    Case("CREATE INDEX ON t (lower(a))", command="CREATE INDEX", functions={"lower"}),
    Case("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
         command="CREATE FUNCTION"),
    Case("CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT pg_ls_dir('.'); END",
         command="CREATE PROCEDURE", functions={"pg_ls_dir"}),
    Case("CREATE EXTENSION dblink", command="CREATE EXTENSION", category="ddl"),
    Case("COMMENT ON TABLE t IS 'x'", command="COMMENT"),
    # --- functions nested everywhere
    Case("SELECT * FROM t WHERE a IN (SELECT pg_read_file('x'))",
         functions={"pg_read_file"}),
    Case("WITH c AS (SELECT lo_import('/etc/passwd')) SELECT * FROM c",
         functions={"lo_import"}, relations=set()),
    Case("SELECT * FROM t, LATERAL (SELECT pg_ls_dir('/')) x", functions={"pg_ls_dir"}),
    Case("SELECT * FROM t ORDER BY pg_read_binary_file('x')",
         functions={"pg_read_binary_file"}),
    Case("SELECT * FROM pg_ls_dir('/')", functions={"pg_ls_dir"}, relations=set()),
    Case("SELECT count(*) FILTER (WHERE upper(a) = 'X') OVER (ORDER BY lower(b)) FROM t",
         functions={"count", "upper", "lower"}),
    Case("SELECT coalesce(x, (SELECT max(y) FROM u)) FROM t", functions={"max"},
         relations={"t:read", "u:read"}),
    Case("SELECT dblink('host=x', 'DELETE FROM t')", functions={"dblink"},
         flags={"dynamic_sql"}),
    Case("SELECT public.dblink_exec('x', 'DROP TABLE t')", flags={"dynamic_sql"}),
    Case("SELECT query_to_xml('DELETE FROM t RETURNING 1', true, true, '')",
         flags={"dynamic_sql"}),
    Case("SELECT extract(year FROM now())", functions={"pg_catalog.extract", "now"}),
    # --- CALL, transactions, session utilities
    Case("CALL proc()", kind="CALL", command="CALL", functions={"proc"}),
    Case("CALL s.proc(pg_read_file('x'))", functions={"s.proc", "pg_read_file"}),
    Case("BEGIN ISOLATION LEVEL SERIALIZABLE", kind="TRANSACTION", command="BEGIN",
         category="transaction"),
    Case("START TRANSACTION READ ONLY", command="START TRANSACTION"),
    Case("COMMIT", command="COMMIT"),
    Case("ROLLBACK TO SAVEPOINT s", command="ROLLBACK TO SAVEPOINT"),
    Case("PREPARE TRANSACTION 'x'", command="PREPARE TRANSACTION"),
    Case("SHOW search_path", kind="SHOW", category="session"),
    Case("LISTEN chan", kind="LISTEN", category="session"),
    Case("NOTIFY chan, 'x'", kind="NOTIFY"),
    Case("DISCARD ALL", command="DISCARD ALL", category="session", flags=set()),
    # --- non-ASCII text slicing
    Case("SELECT 'é€'; DELETE FROM ü", count=2, index=1, kind="DELETE",
         relations={"ü:write"}),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_classify(case: Case) -> None:
    result = analyze(case.sql)
    if case.count is not None:
        assert len(result.statements) == case.count
    s = result.statements[case.index]
    for attr in ("kind", "command", "category"):
        want = getattr(case, attr)
        if want is not None:
            assert getattr(s, attr) == want, (attr, s)
    if case.relations is not None:
        assert {rel(r) for r in s.relations} == case.relations, s
    if case.functions is not None:
        assert set(s.functions) == case.functions, s
    if case.flags is not None:
        assert set(s.flags) == case.flags, s
    assert case.has_flags <= s.flags, s


def test_corpus_is_broad() -> None:
    assert len(CASES) >= 80


def test_statement_text_is_the_statements_own_slice() -> None:
    result = analyze("  SELECT 1 ;\n\n/* c */ DROP TABLE t;  SELECT 'é' ")
    assert [s.text for s in result.statements] == [
        "SELECT 1",
        "DROP TABLE t",  # PostgreSQL 18 starts a statement at its first token
        "SELECT 'é'",
    ]


def test_types_are_frozen_and_hashable() -> None:
    result = analyze("SELECT * FROM t")
    assert isinstance(result, Analysis)
    s = result.statements[0]
    assert isinstance(s, Statement)
    assert hash(s) == hash(analyze("SELECT * FROM t").statements[0])
    with pytest.raises(AttributeError):
        s.kind = "DELETE"  # type: ignore[misc]


@pytest.mark.parametrize("sql", ["", "   ", ";", ";;\n;", "-- only a comment", "/* c */"])
def test_empty_input_has_no_statements(sql: str) -> None:
    result = analyze(sql)
    assert result.statements == ()
    assert result.fingerprint


def test_fingerprint_ignores_constants_and_is_hex() -> None:
    a = fingerprint("SELECT * FROM t WHERE id = 1")
    assert a == fingerprint("select *   from t where id = 2")
    assert a != fingerprint("SELECT * FROM u WHERE id = 1")
    int(a, 16)
    assert analyze("SELECT * FROM t WHERE id = 1").fingerprint == a


def test_normalize_replaces_constants() -> None:
    assert normalize("SELECT * FROM t WHERE id = 42 AND s = 'x'") == (
        "SELECT * FROM t WHERE id = $1 AND s = $2"
    )


@pytest.mark.parametrize(
    ("sql", "message", "position"),
    [
        ("SELEC 1", 'syntax error at or near "SELEC"', 1),
        ("select 1 frm x", 'syntax error at or near "x"', 14),
        ("select 'é' frm x", 'syntax error at or near "x"', 16),
        ("SELECT 1; DROP TABLE", "syntax error at end of input", 21),
        ("DECLARE c CURSOR FOR DELETE FROM t", 'syntax error at or near "DELETE"', 22),
        ("SELECT 'unterminated", "unterminated quoted string at or near \"'unterminated\"", 8),
        ("SELECT $x$ never closed", None, None),
    ],
)
def test_unparseable_input_raises_with_parser_message(
    sql: str, message: str | None, position: int | None
) -> None:
    for fn in (analyze, fingerprint, normalize):
        with pytest.raises(SqlSyntaxError) as info:
            fn(sql)
        if message is not None:
            assert info.value.message == message
            assert str(info.value) == message
            assert info.value.position == position


def test_one_bad_statement_fails_the_whole_string() -> None:
    with pytest.raises(SqlSyntaxError):
        analyze("SELECT 1; DELETE FRM t; SELECT 2")


def test_nul_is_refused_not_truncated() -> None:
    # pglast passes C strings: "SELECT 1\0; DROP TABLE t" would otherwise look like SELECT 1
    with pytest.raises(SqlSyntaxError) as info:
        analyze("SELECT 1\x00; DROP TABLE t")
    assert info.value.position == 9


def test_lone_surrogate_is_a_syntax_error() -> None:
    with pytest.raises(SqlSyntaxError):
        analyze("SELECT '\ud800'")


def test_very_long_flat_statement() -> None:
    sql = "SELECT * FROM t WHERE id IN (" + ", ".join(map(str, range(20000))) + ")"
    sql += "; DELETE FROM secret"
    result = analyze(sql)
    assert [s.kind for s in result.statements] == ["SELECT", "DELETE"]
    assert result.statements[1].text == "DELETE FROM secret"


def test_very_long_literal_hides_nothing() -> None:
    sql = "SELECT '" + "x" * 1_000_000 + "'; DROP TABLE t"
    assert [s.command for s in analyze(sql).statements] == ["SELECT", "DROP TABLE"]


def test_deeply_nested_statement_does_not_hit_recursion_limit() -> None:
    depth = 2000
    sql = "SELECT " + "(SELECT " * depth + "pg_read_file('x')" + ")" * depth
    s = analyze(sql).statements[0]
    assert s.functions == ("pg_read_file",)
    sql = "SELECT " + " || ".join(["'a'"] * 5000) + " FROM t"
    assert analyze(sql).statements[0].relations == (RelationRef(None, "t", "read"),)


def test_parser_stack_limit_is_a_syntax_error() -> None:
    with pytest.raises(SqlSyntaxError):
        analyze("SELECT " + "(" * 50000 + "1" + ")" * 50000)


def test_relations_and_functions_are_deduplicated_in_order() -> None:
    s = analyze("SELECT f(a), g(b), f(c) FROM t, u, t").statements[0]
    assert s.functions == ("f", "g")
    assert [r.name for r in s.relations] == ["t", "u"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_fuzz_random_text_only_raises_syntax_error(sql: str) -> None:
    try:
        result = analyze(sql)
    except SqlSyntaxError as exc:
        assert isinstance(exc.message, str)
        return
    for s in result.statements:
        assert s.kind and s.command and s.category


SQLISH = st.lists(
    st.sampled_from(
        [
            "SELECT", "DELETE", "FROM", "t", "WHERE", "(", ")", ";", ",", "'x'", "$$",
            "$a$", "1", "WITH", "AS", "INSERT", "INTO", "VALUES", "UPDATE", "SET", "=",
            "ROLE", "DROP", "TABLE", "COPY", "TO", "PROGRAM", "EXPLAIN", "ANALYZE", "--",
            "/*", "*/", "\n", "E'\\'", 'U&"d\\0061"', "RETURNING", "*", "f(", "DO",
        ]
    ),
    max_size=30,
).map(" ".join)


@settings(max_examples=500, deadline=None)
@given(SQLISH)
def test_fuzz_sql_like_tokens_only_raise_syntax_error(sql: str) -> None:
    try:
        analyze(sql)
    except SqlSyntaxError:
        pass


def test_public_api_names() -> None:
    import gateway.sql as api

    assert set(api.__all__) == {
        "Analysis", "RelationRef", "SqlSyntaxError", "Statement", "analyze", "fingerprint",
        "normalize", "parser_setting_safe",
    }
    err: Any = SqlSyntaxError("m", 3)
    assert (err.message, err.position) == ("m", 3)
