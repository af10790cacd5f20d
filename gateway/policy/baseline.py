"""The built-in ``baseline`` rule pack: least privilege on the data path, on by default.

FFIEC's Information Security booklet expects access to be limited to what a job needs
(least privilege), privileged and administrative actions to be separately authorised and
logged, and changes to production to go through change management. For a non-human
identity on the data path that means:

- **Never** (``block``): anything that reaches outside the database or changes who the
  session is — the server's file system and programs (``COPY … PROGRAM``, server-file
  ``COPY``, ``pg_read_file`` and friends, large-object import/export), other servers
  (``dblink``, ``postgres_fdw`` connection functions), server configuration
  (``ALTER SYSTEM``, ``pg_reload_conf``), loading libraries, switching role
  (``SET ROLE``, ``SET SESSION AUTHORIZATION``), ``DROP DATABASE``; whole-table
  ``UPDATE``/``DELETE`` without ``WHERE``; and the protocol-level FunctionCall message,
  which calls a function by OID where no SQL can be inspected — except for the built-in
  large-object functions, whose OIDs are fixed (they are decided like a SELECT of them).
- **Change management** (``approve``): destructive schema changes (``DROP …``,
  ``TRUNCATE``, ``ALTER TABLE … DROP …``), identity and privilege administration
  (``CREATE``/``ALTER``/``DROP ROLE``, ``GRANT``, ``REVOKE``), access to foreign servers
  (``CREATE EXTENSION``, ``CREATE SERVER``, user mappings), and code whose SQL is only
  known when it runs (``DO`` blocks, dynamic SQL).
- **Untouched**: what drivers and tools send for themselves — ``SET``/``SHOW``/``RESET``
  of ordinary settings, transaction control, ``set_config`` of ordinary settings,
  ``DISCARD``, ``DEALLOCATE``, ``LISTEN``/``NOTIFY``, ``LOCK``, temporary tables
  (including ``DROP TABLE pg_temp.x``), ``COPY … TO STDOUT`` / ``FROM STDIN``.

Rules are tried in the order below and the first match decides (see ``engine`` for how
they combine with configured rules). One baseline rule may consist of several clauses
(several ``Rule`` objects with the same id), e.g. a command spelling and a flag.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.policy.model import Action, Rule

__all__ = ["BASELINE", "BASELINE_IDS", "FUNCTION_CALL_KIND"]

#: The statement kind under which the protocol-level FunctionCall message is decided.
FUNCTION_CALL_KIND = "FUNCTION_CALL"

_PACK = "baseline"
B = Action.BLOCK
A = Action.APPROVE

_SERVER_FILE_FUNCTIONS = (
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import",
    "lo_export", "pg_ls_logdir", "pg_ls_waldir", "pg_ls_tmpdir", "pg_ls_archive_statusdir",
    "pg_ls_logicalsnapdir", "pg_ls_logicalmapdir", "pg_ls_replslotdir",
    # adminpack
    "pg_file_write", "pg_file_rename", "pg_file_unlink", "pg_file_sync", "pg_logdir_ls",
)


def _rule(
    rule_id: str,
    action: Action,
    message: str,
    *,
    kinds: Iterable[str] = (),
    commands: Iterable[str] = (),
    functions: Iterable[str] = (),
    flags: Iterable[str] = (),
) -> Rule:
    return Rule(
        id=rule_id, action=action, message=message, pack=_PACK, kinds=frozenset(kinds),
        commands=tuple(commands), functions=tuple(functions), flags=frozenset(flags),
    )


BASELINE: tuple[Rule, ...] = (
    # ---------------------------------------------------------------- block
    _rule(
        "baseline.function_call", B,
        "the protocol-level FunctionCall message is not allowed (no SQL to inspect)",
        kinds=frozenset({FUNCTION_CALL_KIND}), flags=frozenset({"unknown_function"}),
    ),
    _rule("baseline.drop_database", B, "DROP DATABASE is not allowed",
          commands=("DROP DATABASE",)),
    _rule("baseline.alter_system", B, "changing the server configuration is not allowed",
          commands=("ALTER SYSTEM",)),
    _rule("baseline.alter_system", B, "changing the server configuration is not allowed",
          flags=frozenset({"alter_system"})),
    _rule("baseline.alter_system", B, "changing the server configuration is not allowed",
          functions=("pg_catalog.pg_reload_conf",)),
    _rule("baseline.copy_program", B, "COPY to or from a server program is not allowed",
          flags=frozenset({"copy_program"})),
    _rule("baseline.copy_file", B,
          "COPY to or from a server file is not allowed (use STDIN/STDOUT)",
          flags=frozenset({"copy_file"})),
    _rule("baseline.server_files", B, "server file access functions are not allowed",
          functions=_SERVER_FILE_FUNCTIONS),
    _rule("baseline.remote_connections", B,
          "connections to other servers (dblink, postgres_fdw) are not allowed",
          functions=("dblink", "dblink_*", "postgres_fdw_*")),
    _rule("baseline.load_library", B, "loading a shared library is not allowed",
          commands=("LOAD",)),
    # RESET ROLE / RESET SESSION AUTHORIZATION only return to the upstream user.
    Rule(
        id="baseline.role_reset", action=Action.ALLOW, pack=_PACK,
        commands=("RESET ROLE", "RESET SESSION AUTHORIZATION"),
    ),
    _rule("baseline.role_switch", B, "switching role is not allowed",
          commands=("SET ROLE", "SET SESSION AUTHORIZATION")),
    _rule("baseline.role_switch", B, "switching role is not allowed",
          flags=frozenset({"role_switch"})),
    _rule("baseline.no_where", B, "UPDATE or DELETE without WHERE is not allowed",
          flags=frozenset({"no_where"})),
    # ---------------------------------------------------------------- exceptions
    # Temporary tables are session scratch space (ORMs, ETL staging, pg_restore).
    Rule(
        id="baseline.temp_table_drop", action=Action.ALLOW, pack=_PACK,
        commands=("DROP TABLE",), relations=("pg_temp.*", "pg_temp_*.*"),
    ),
    # ---------------------------------------------------------------- approve
    _rule("baseline.role_management", A, "role administration",
          commands=(
              "CREATE ROLE", "ALTER ROLE", "DROP ROLE", "CREATE USER", "ALTER USER",
              "DROP USER", "CREATE GROUP", "ALTER GROUP", "DROP GROUP", "REASSIGN OWNED",
          )),
    _rule("baseline.privileges", A, "privilege administration",
          commands=("GRANT", "REVOKE", "ALTER DEFAULT PRIVILEGES")),
    _rule("baseline.privileges", A, "privilege administration", kinds=frozenset({"DCL"})),
    _rule("baseline.drop", A, "dropping objects", commands=("DROP *",)),
    _rule("baseline.truncate", A, "TRUNCATE", commands=("TRUNCATE", "TRUNCATE *")),
    _rule("baseline.alter_table_drop", A, "ALTER TABLE … DROP",
          commands=("ALTER TABLE DROP *", "ALTER FOREIGN TABLE DROP *")),
    _rule("baseline.foreign_access", A, "extensions and foreign servers",
          commands=(
              "CREATE EXTENSION", "ALTER EXTENSION", "CREATE SERVER", "ALTER SERVER",
              "CREATE USER MAPPING", "ALTER USER MAPPING", "IMPORT FOREIGN SCHEMA",
              "CREATE FOREIGN DATA WRAPPER", "ALTER FOREIGN DATA WRAPPER",
          )),
    _rule("baseline.dynamic_sql", A, "code whose SQL is only known when it runs (DO, dynamic SQL)",
          kinds=frozenset({"DO"})),
    _rule("baseline.dynamic_sql", A, "code whose SQL is only known when it runs (DO, dynamic SQL)",
          flags=frozenset({"dynamic_sql"})),
)

#: Every rule id of the pack, in order, without repeats.
BASELINE_IDS: tuple[str, ...] = tuple(dict.fromkeys(rule.id for rule in BASELINE))
