"""Parse SQL with PostgreSQL's own parser (pglast) and classify every statement.

Parse form
----------
Measured with ``benchmarks/micro/test_sql.py`` (pytest-benchmark min / median, µs per call;
pglast 8.8 = libpg_query **18** (``version 180006``), orjson 3.8.3, CPython 3.11.7, this 2-core
machine with a load average of ~6 from concurrent work, so medians are noisy; trust ratios)::

                               pgbench SELECT   UPDATE      CTE+joins    INSERT 100 rows
    normalize                     2.3 / 2.4     2.2 / 3.7   14 / 23       61 / 62
    fingerprint                   3.3 / 3.4     4.0 / 4.0   25 / 33      120 / 124
    parse_sql_json (text only)    2.9 / 3.0     3.3 / 4.8   19 / 31       87 / 89
    parse_sql_json + orjson       5.3 / 5.5     6.3 / 6.5   39 / 62      217 / 223
    parse_sql_json + json         8.5 / 8.7     9.8 / 16    53 / 55      297 / 318
    parse_sql_protobuf (bytes)    4.8 / 5.6     5.5 / 6.5   35 / 42      186 / 237
    parse_sql (Python AST)         45 / 62       55 / 59    305 / 329    1631 / 2330
    analyze() (fp+parse+classify)  19 / 20       23 / 24    105 / 189     657 / 823

So we parse with ``parse_sql_json`` and decode with orjson: ~9x cheaper than building
pglast's AST objects. Protobuf bytes are produced about as fast but cannot be walked here
without a protobuf runtime and the pg_query schema (neither is installed), and decoding them
in Python would cost more than orjson. Of analyze() for a pgbench-size statement, ~4 µs is
the fingerprint, ~6 µs parse+decode and ~10 µs the Python walk below: a generic iterative
walk over the decoded dicts (no Python recursion, so deeply nested expressions cannot hit
the recursion limit). The cost grows with the size of the parse tree.

JSON shape notes (libpg_query): a node in a ``Node *`` field or a list is wrapped
(``{"RangeVar": {...}}``); a node in a typed field is not (``"relation": {"relname": ...}``,
``"larg"``/``"rarg"`` SelectStmts, ``"withClause"``, ``"setstmt"``, ``"into"``). Fields at
their default value (false, 0, empty) are omitted. ``stmt_location``/``stmt_len`` are UTF-8
byte offsets; parser error positions come back from pglast as 0-based character indexes.

What parsing cannot see (documented for the policy engine): bodies of functions,
procedures, triggers, rules and views that already exist (``CALL p()`` or ``SELECT f()``
runs whatever ``p``/``f`` contain); the SQL text run by ``DO`` blocks and PL/pgSQL
``EXECUTE`` (``DO`` is flagged ``dynamic_sql``; SQL-level ``EXECUTE p`` runs what
``PREPARE p`` prepared, decided when it was prepared); which schema an unqualified name resolves to
(``search_path``); functions reached through operators, casts or ``CREATE OPERATOR`` /
``CREATE CAST`` definitions. The role's least-privilege upstream user is the backstop.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any

import orjson
from pglast import parser

from gateway.sql.model import Analysis, Category, Mode, RelationRef, SqlSyntaxError, Statement

Node = dict[str, Any]
# Walk context: (mode for RangeVars, CTE names in scope, inside a CTE body, under plain EXPLAIN)
Ctx = tuple[Mode, frozenset[str], bool, bool]
Stack = list[tuple[Any, Ctx]]

_EMPTY: frozenset[str] = frozenset()

# --------------------------------------------------------------------------------------
# Name tables

ROLE_GUCS = frozenset({"role", "session_authorization"})

# Settings that change how PostgreSQL splits the bytes of later statements into tokens.
# pgwarden parses statements as UTF-8 with standard-conforming strings; if a session could
# switch to an encoding whose multibyte characters may end in an ASCII byte (SJIS's
# 0x81 0x5C swallows a backslash) or turn standard_conforming_strings off (backslash
# escapes a quote), the server would read a statement differently from the parser that
# decided it. Changing them to anything else is flagged ``parser_setting``; to an unsafe
# or non-constant value ``unsafe_parser_setting`` (refused whatever the policy says).
PARSER_GUCS = frozenset({"client_encoding", "standard_conforming_strings"})
# Encodings (normalized as PostgreSQL does: lowercase, alphanumerics only) in which every
# byte of a multibyte character is >= 0x80, so ASCII syntax bytes are never swallowed.
_SAFE_ENCODING = re.compile(
    r"(utf8|unicode|sqlascii|latin([1-9]|10)|iso8859(1[0-6]|[1-9])|win(125[0-8]|866|874)?"
    r"|windows(125[0-8]|866|874)|alt|koi8[ru]?|euc(jp|cn|kr|tw|jis2004)|muleinternal"
    r"|tcvn(5712)?|vscii|abc)"
)
_TRUE_WORDS = frozenset({"on", "1", "t", "tr", "tru", "true", "y", "ye", "yes"})


def parser_setting_safe(name: str, value: object) -> bool:
    """Whether setting ``name`` (one of PARSER_GUCS) to ``value`` keeps parsing faithful.

    ``value`` is the constant given (``None`` for DEFAULT / RESET, which return to the
    session's initial value, itself checked when the session starts); anything that is
    not a constant string, number or boolean is unsafe.
    """
    if value is None:
        return True
    if isinstance(value, bool):
        text = "on" if value else "off"
    elif isinstance(value, (int, str)):
        text = str(value)
    else:
        return False
    if name == "client_encoding":
        return _SAFE_ENCODING.fullmatch(re.sub(r"[^0-9a-z]", "", text.lower())) is not None
    return text.strip().lower() in _TRUE_WORDS

# Functions that run SQL text they are given (or talk to other servers running SQL).
DYNAMIC_SQL_FUNCTIONS = frozenset(
    {
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "ts_stat",
        "ts_rewrite",
        "pg_background_launch",
    }
)
DYNAMIC_SQL_PREFIXES = ("dblink",)

# DML kinds, most severe first: a statement doing several kinds of writes is the first one.
WRITE_SEVERITY = ("DELETE", "MERGE", "UPDATE", "INSERT")
_DML = {"InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE",
        "MergeStmt": "MERGE"}

RELATION_OBJECTS = frozenset(
    {"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE",
     "OBJECT_SEQUENCE", "OBJECT_INDEX"}
)

_OBJECT_WORDS = {
    "OBJECT_MATVIEW": "MATERIALIZED VIEW",
    "OBJECT_FDW": "FOREIGN DATA WRAPPER",
    "OBJECT_FOREIGN_SERVER": "SERVER",
    "OBJECT_TSCONFIGURATION": "TEXT SEARCH CONFIGURATION",
    "OBJECT_TSDICTIONARY": "TEXT SEARCH DICTIONARY",
    "OBJECT_TSPARSER": "TEXT SEARCH PARSER",
    "OBJECT_TSTEMPLATE": "TEXT SEARCH TEMPLATE",
    "OBJECT_STATISTIC_EXT": "STATISTICS",
    "OBJECT_TABCONSTRAINT": "CONSTRAINT",
    "OBJECT_DOMCONSTRAINT": "DOMAIN CONSTRAINT",
    "OBJECT_LARGEOBJECT": "LARGE OBJECT",
    "OBJECT_OPCLASS": "OPERATOR CLASS",
    "OBJECT_OPFAMILY": "OPERATOR FAMILY",
    "OBJECT_PARAMETER_ACL": "PARAMETER",
}


def _object_word(objtype: str | None) -> str:
    if not objtype:
        return "OBJECT"
    return _OBJECT_WORDS.get(objtype) or objtype.removeprefix("OBJECT_").replace("_", " ")


# ALTER TABLE sub-commands that get their own ``command``, most significant first.
_ALTER_TABLE_SUBCOMMANDS = (
    ("AT_DropColumn", "DROP COLUMN"),
    ("AT_DisableRowSecurity", "DISABLE ROW LEVEL SECURITY"),
    ("AT_NoForceRowSecurity", "NO FORCE ROW LEVEL SECURITY"),
    ("AT_DisableTrig", "DISABLE TRIGGER"),
    ("AT_DisableTrigAll", "DISABLE TRIGGER"),
    ("AT_DisableTrigUser", "DISABLE TRIGGER"),
    ("AT_DisableRule", "DISABLE RULE"),
    ("AT_DropConstraint", "DROP CONSTRAINT"),
    ("AT_DetachPartition", "DETACH PARTITION"),
    ("AT_ChangeOwner", "OWNER TO"),
    ("AT_AlterColumnType", "ALTER COLUMN TYPE"),
)

# Statements whose kind/command/category do not depend on their fields: (kind, command, cat)
_STATIC: dict[str, tuple[str, str, Category]] = {
    "SelectStmt": ("SELECT", "SELECT", "read"),
    "InsertStmt": ("INSERT", "INSERT", "write"),
    "UpdateStmt": ("UPDATE", "UPDATE", "write"),
    "DeleteStmt": ("DELETE", "DELETE", "write"),
    "MergeStmt": ("MERGE", "MERGE", "write"),
    "TruncateStmt": ("TRUNCATE", "TRUNCATE", "write"),
    "CallStmt": ("CALL", "CALL", "write"),
    "DoStmt": ("DO", "DO", "write"),
    "ExecuteStmt": ("EXECUTE", "EXECUTE", "write"),
    "DeallocateStmt": ("DEALLOCATE", "DEALLOCATE", "session"),
    "DeclareCursorStmt": ("CURSOR", "DECLARE CURSOR", "read"),
    "ClosePortalStmt": ("CURSOR", "CLOSE CURSOR", "read"),
    "ListenStmt": ("LISTEN", "LISTEN", "session"),
    "UnlistenStmt": ("LISTEN", "UNLISTEN", "session"),
    "NotifyStmt": ("NOTIFY", "NOTIFY", "session"),
    "VariableShowStmt": ("SHOW", "SHOW", "session"),
    "ConstraintsSetStmt": ("TRANSACTION", "SET CONSTRAINTS", "transaction"),
    "AlterSystemStmt": ("UTILITY", "ALTER SYSTEM", "admin"),
    "CheckPointStmt": ("UTILITY", "CHECKPOINT", "admin"),
    "LoadStmt": ("UTILITY", "LOAD", "admin"),
    "ClusterStmt": ("UTILITY", "CLUSTER", "admin"),
    "ReindexStmt": ("UTILITY", "REINDEX", "admin"),
    # DCL
    "GrantRoleStmt": ("DCL", "GRANT", "dcl"),  # REVOKE handled in _classify
    "AlterDefaultPrivilegesStmt": ("DCL", "ALTER DEFAULT PRIVILEGES", "dcl"),
    "CreateRoleStmt": ("DCL", "CREATE ROLE", "dcl"),
    "AlterRoleStmt": ("DCL", "ALTER ROLE", "dcl"),
    "AlterRoleSetStmt": ("DCL", "ALTER ROLE", "dcl"),
    "DropRoleStmt": ("DCL", "DROP ROLE", "dcl"),
    "ReassignOwnedStmt": ("DCL", "REASSIGN OWNED", "dcl"),
    "DropOwnedStmt": ("DDL", "DROP OWNED", "ddl"),
    # DDL
    "CreateStmt": ("DDL", "CREATE TABLE", "ddl"),
    "CreateForeignTableStmt": ("DDL", "CREATE FOREIGN TABLE", "ddl"),
    "ViewStmt": ("DDL", "CREATE VIEW", "ddl"),
    "IndexStmt": ("DDL", "CREATE INDEX", "ddl"),
    "CreateSchemaStmt": ("DDL", "CREATE SCHEMA", "ddl"),
    "CreateSeqStmt": ("DDL", "CREATE SEQUENCE", "ddl"),
    "AlterSeqStmt": ("DDL", "ALTER SEQUENCE", "ddl"),
    "AlterFunctionStmt": ("DDL", "ALTER FUNCTION", "ddl"),
    "CreateTrigStmt": ("DDL", "CREATE TRIGGER", "ddl"),
    "CreateEventTrigStmt": ("DDL", "CREATE EVENT TRIGGER", "ddl"),
    "AlterEventTrigStmt": ("DDL", "ALTER EVENT TRIGGER", "ddl"),
    "CreateExtensionStmt": ("DDL", "CREATE EXTENSION", "ddl"),
    "AlterExtensionStmt": ("DDL", "ALTER EXTENSION", "ddl"),
    "AlterExtensionContentsStmt": ("DDL", "ALTER EXTENSION", "ddl"),
    "CreatedbStmt": ("DDL", "CREATE DATABASE", "ddl"),
    "AlterDatabaseStmt": ("DDL", "ALTER DATABASE", "ddl"),
    "AlterDatabaseSetStmt": ("DDL", "ALTER DATABASE", "ddl"),
    "AlterDatabaseRefreshCollStmt": ("DDL", "ALTER DATABASE", "ddl"),
    "DropdbStmt": ("DDL", "DROP DATABASE", "ddl"),
    "CreateTableSpaceStmt": ("DDL", "CREATE TABLESPACE", "ddl"),
    "DropTableSpaceStmt": ("DDL", "DROP TABLESPACE", "ddl"),
    "AlterTableSpaceOptionsStmt": ("DDL", "ALTER TABLESPACE", "ddl"),
    "AlterTableMoveAllStmt": ("DDL", "ALTER TABLE", "ddl"),
    "CreateDomainStmt": ("DDL", "CREATE DOMAIN", "ddl"),
    "AlterDomainStmt": ("DDL", "ALTER DOMAIN", "ddl"),
    "CompositeTypeStmt": ("DDL", "CREATE TYPE", "ddl"),
    "CreateEnumStmt": ("DDL", "CREATE TYPE", "ddl"),
    "CreateRangeStmt": ("DDL", "CREATE TYPE", "ddl"),
    "AlterEnumStmt": ("DDL", "ALTER TYPE", "ddl"),
    "AlterTypeStmt": ("DDL", "ALTER TYPE", "ddl"),
    "CreateCastStmt": ("DDL", "CREATE CAST", "ddl"),
    "CreateConversionStmt": ("DDL", "CREATE CONVERSION", "ddl"),
    "CreateAmStmt": ("DDL", "CREATE ACCESS METHOD", "ddl"),
    "CreateOpClassStmt": ("DDL", "CREATE OPERATOR CLASS", "ddl"),
    "CreateOpFamilyStmt": ("DDL", "CREATE OPERATOR FAMILY", "ddl"),
    "AlterOpFamilyStmt": ("DDL", "ALTER OPERATOR FAMILY", "ddl"),
    "AlterOperatorStmt": ("DDL", "ALTER OPERATOR", "ddl"),
    "AlterCollationStmt": ("DDL", "ALTER COLLATION", "ddl"),
    "CreatePLangStmt": ("DDL", "CREATE LANGUAGE", "ddl"),
    "CreateFdwStmt": ("DDL", "CREATE FOREIGN DATA WRAPPER", "ddl"),
    "AlterFdwStmt": ("DDL", "ALTER FOREIGN DATA WRAPPER", "ddl"),
    "CreateForeignServerStmt": ("DDL", "CREATE SERVER", "ddl"),
    "AlterForeignServerStmt": ("DDL", "ALTER SERVER", "ddl"),
    "CreateUserMappingStmt": ("DDL", "CREATE USER MAPPING", "ddl"),
    "AlterUserMappingStmt": ("DDL", "ALTER USER MAPPING", "ddl"),
    "DropUserMappingStmt": ("DDL", "DROP USER MAPPING", "ddl"),
    "ImportForeignSchemaStmt": ("DDL", "IMPORT FOREIGN SCHEMA", "ddl"),
    "CreatePublicationStmt": ("DDL", "CREATE PUBLICATION", "ddl"),
    "AlterPublicationStmt": ("DDL", "ALTER PUBLICATION", "ddl"),
    "CreateSubscriptionStmt": ("DDL", "CREATE SUBSCRIPTION", "ddl"),
    "AlterSubscriptionStmt": ("DDL", "ALTER SUBSCRIPTION", "ddl"),
    "DropSubscriptionStmt": ("DDL", "DROP SUBSCRIPTION", "ddl"),
    "CreateStatsStmt": ("DDL", "CREATE STATISTICS", "ddl"),
    "AlterStatsStmt": ("DDL", "ALTER STATISTICS", "ddl"),
    "CreateTransformStmt": ("DDL", "CREATE TRANSFORM", "ddl"),
    "RuleStmt": ("DDL", "CREATE RULE", "ddl"),
    "CreatePolicyStmt": ("DDL", "CREATE POLICY", "ddl"),
    "AlterPolicyStmt": ("DDL", "ALTER POLICY", "ddl"),
    "CommentStmt": ("DDL", "COMMENT", "ddl"),
    "SecLabelStmt": ("DDL", "SECURITY LABEL", "ddl"),
    "AlterTSConfigurationStmt": ("DDL", "ALTER TEXT SEARCH CONFIGURATION", "ddl"),
    "AlterTSDictionaryStmt": ("DDL", "ALTER TEXT SEARCH DICTIONARY", "ddl"),
    "RefreshMatViewStmt": ("DDL", "REFRESH MATERIALIZED VIEW", "ddl"),
}

_TRANSACTION_COMMANDS = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK TO SAVEPOINT",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}

_ROW_LOCKS = 3  # RowExclusiveLock and stronger need write privileges: LOCK is then a write


# --------------------------------------------------------------------------------------
# Statement-level classification (no walking: just the top node's own fields)


def _explain_analyze(body: Node) -> bool:
    for opt in body.get("options") or ():
        d = opt.get("DefElem") or {}
        if d.get("defname") != "analyze":
            continue
        arg = d.get("arg")
        if arg is None:
            return True
        if "String" in arg:
            value = str(arg["String"].get("sval", "")).strip().lower()
            return value not in {"false", "off", "0", "no", "f", "n", "of"}
        if "Boolean" in arg:
            return bool(arg["Boolean"].get("boolval", False))
        if "Integer" in arg:
            return bool(arg["Integer"].get("ival", 0))
        return True  # unknown spelling: assume it runs (fail closed)
    return False


def _only(node: Node) -> tuple[str, Node]:
    for key, value in node.items():
        return key, value if isinstance(value, dict) else {}
    return "", {}


def _classify(ntype: str, body: Node) -> tuple[str, str, Category]:
    """kind, command and category of one statement node, from its own fields only."""
    static = _STATIC.get(ntype)
    if static is not None:
        if ntype == "GrantRoleStmt" and not body.get("is_grant"):
            return "DCL", "REVOKE", "dcl"
        if ntype == "SelectStmt" and body.get("intoClause"):
            return "DDL", "SELECT INTO", "ddl"
        return static
    if ntype == "GrantStmt":
        return "DCL", "GRANT" if body.get("is_grant") else "REVOKE", "dcl"
    if ntype == "VariableSetStmt":
        return _classify_set(body)
    if ntype == "TransactionStmt":
        return "TRANSACTION", _TRANSACTION_COMMANDS.get(body.get("kind", ""), "TRANSACTION"), (
            "transaction"
        )
    if ntype == "CopyStmt":
        command = "COPY FROM" if body.get("is_from") else "COPY TO"
        category: Category = "write" if body.get("is_from") else "read"
        if body.get("is_program") or body.get("filename") is not None:
            category = "admin"
        return "COPY", command, category
    if ntype == "ExplainStmt":
        if _explain_analyze(body):
            return _classify(*_only(body.get("query") or {}))
        return "EXPLAIN", "EXPLAIN", "read"
    if ntype == "PrepareStmt":
        return "PREPARE", "PREPARE", _classify(*_only(body.get("query") or {}))[2]
    if ntype == "CreateTableAsStmt":
        if body.get("is_select_into"):
            return "DDL", "SELECT INTO", "ddl"
        if body.get("objtype") == "OBJECT_MATVIEW":
            return "DDL", "CREATE MATERIALIZED VIEW", "ddl"
        return "DDL", "CREATE TABLE AS", "ddl"
    if ntype == "FetchStmt":
        return "CURSOR", "MOVE" if body.get("ismove") else "FETCH", "read"
    if ntype == "LockStmt":
        write = int(body.get("mode", 0)) >= _ROW_LOCKS
        return "LOCK", "LOCK TABLE", "write" if write else "read"
    if ntype == "VacuumStmt":
        return "VACUUM", "VACUUM" if body.get("is_vacuumcmd") else "ANALYZE", "admin"
    if ntype == "DiscardStmt":
        target = str(body.get("target", "DISCARD_ALL")).removeprefix("DISCARD_")
        return "UTILITY", f"DISCARD {target}", "session"
    if ntype == "DropStmt":
        return "DDL", f"DROP {_object_word(body.get('removeType'))}", "ddl"
    if ntype == "AlterTableStmt":
        base = f"ALTER {_object_word(body.get('objtype'))}"
        subtypes = {
            (c.get("AlterTableCmd") or {}).get("subtype") for c in body.get("cmds") or ()
        }
        for subtype, words in _ALTER_TABLE_SUBCOMMANDS:
            if subtype in subtypes:
                return "DDL", f"{base} {words}", "ddl"
        return "DDL", base, "ddl"
    if ntype in ("RenameStmt", "AlterOwnerStmt", "AlterObjectSchemaStmt",
                 "AlterObjectDependsStmt"):
        objtype = body.get("renameType") or body.get("objectType")
        if objtype in ("OBJECT_COLUMN", "OBJECT_TABCONSTRAINT", "OBJECT_TRIGGER",
                       "OBJECT_POLICY", "OBJECT_RULE", "OBJECT_ATTRIBUTE"):
            objtype = body.get("relationType") or objtype
        if objtype == "OBJECT_ROLE":
            return "DCL", "ALTER ROLE", "dcl"
        return "DDL", f"ALTER {_object_word(objtype)}", "ddl"
    if ntype == "CreateFunctionStmt":
        return "DDL", "CREATE PROCEDURE" if body.get("is_procedure") else "CREATE FUNCTION", "ddl"
    if ntype == "DefineStmt":
        return "DDL", f"CREATE {_object_word(body.get('kind'))}", "ddl"
    # Unknown to this table (a newer PostgreSQL statement): treat as administrative.
    return "UTILITY", ntype.removesuffix("Stmt").upper() or "UNKNOWN", "admin"


def _classify_set(body: Node) -> tuple[str, str, Category]:
    kind = body.get("kind", "")
    name = str(body.get("name", "")).lower()
    reset = kind in ("VAR_RESET", "VAR_RESET_ALL")
    verb = "RESET" if reset else "SET"
    if kind == "VAR_RESET_ALL":
        return "RESET", "RESET ALL", "session"
    if name == "role":
        return verb, f"{verb} ROLE", "session"
    if name == "session_authorization":
        return verb, f"{verb} SESSION AUTHORIZATION", "session"
    if name == "transaction" or name == "session characteristics":
        return "TRANSACTION", "SET TRANSACTION", "transaction"
    return verb, verb, "session"


# --------------------------------------------------------------------------------------
# The walk: relations, functions, flags, writes anywhere in the tree


class _Walker:
    __slots__ = ("flags", "functions", "known_setting", "relations", "writes")

    def __init__(self) -> None:
        # (id of a set_config call, the setting its `name` argument is known to be)
        self.known_setting: tuple[int, str] | None = None
        # name -> first source location (byte offset), to report in source order
        self.relations: dict[RelationRef, int] = {}
        self.functions: dict[str, int] = {}
        self.flags: set[str] = set()
        self.writes: set[str] = set()

    def run(self, node: Any, ctx: Ctx) -> None:
        stack: Stack = [(node, ctx)]
        pop = stack.pop
        push = stack.append
        handlers = _HANDLERS
        while stack:
            obj, ctx = pop()
            if type(obj) is list:
                stack.extend([(x, ctx) for x in obj])
                continue
            if type(obj) is not dict:
                continue
            if "relname" in obj and "relpersistence" in obj:
                self.relation(obj, ctx)
            for key, value in obj.items():
                if type(value) is not dict and type(value) is not list:
                    continue  # scalars: locations, names, enum values
                handler = handlers.get(key)
                if handler is None:
                    push((value, ctx))
                elif handler is not _skip and type(value) is dict:
                    handler(self, value, ctx, stack)

    def relation(self, rv: Node, ctx: Ctx) -> None:
        name = str(rv.get("relname", ""))
        schema = rv.get("schemaname")
        mode = ctx[0]
        if mode == "read" and schema is None and name in ctx[1]:
            return  # a reference to a CTE in scope, not a table
        if mode == "write" and name == "pg_settings" and schema in (None, "pg_catalog"):
            # UPDATE pg_settings runs set_config() with values pgwarden cannot see
            self.flags.update(("role_switch", "parser_setting", "unsafe_parser_setting"))
        ref = RelationRef(schema, name, mode)
        location = int(rv.get("location", 0))
        if location < self.relations.get(ref, location + 1):
            self.relations[ref] = location


def _in_order(seen: dict[Any, int]) -> tuple[Any, ...]:
    if len(seen) < 2:
        return tuple(seen)
    return tuple(sorted(seen, key=seen.__getitem__))


def _read(ctx: Ctx) -> Ctx:
    return ctx if ctx[0] == "read" else ("read", ctx[1], ctx[2], ctx[3])


def _write(ctx: Ctx) -> Ctx:
    if ctx[3]:  # under a plain EXPLAIN nothing is written
        return _read(ctx)
    return ctx if ctx[0] == "write" else ("write", ctx[1], ctx[2], ctx[3])


def _with_scope(body: Node, ctx: Ctx, out: Stack) -> Ctx:
    """Push the CTE bodies of ``body``'s WITH clause; return the context for the rest."""
    wc = body.get("withClause")
    if not isinstance(wc, dict):
        return ctx
    ctes = [c.get("CommonTableExpr") or {} for c in wc.get("ctes") or ()]
    names = [str(c.get("ctename", "")) for c in ctes]
    everything = ctx[1] | frozenset(names)
    recursive = bool(wc.get("recursive"))
    for i, cte in enumerate(ctes):
        # a non-recursive CTE sees only the CTEs before it; a later name is a real table
        scope = everything if recursive else ctx[1] | frozenset(names[:i])
        out.append((cte, ("read", scope, True, ctx[3])))
    return ctx[0], everything, ctx[2], ctx[3]


def _on_select(w: _Walker, body: Node, ctx: Ctx, out: Stack) -> None:
    inner = _read(_with_scope(body, ctx, out))
    for key, value in body.items():
        if key == "withClause":
            continue
        if key in ("larg", "rarg"):
            if isinstance(value, dict):
                out.append(({"SelectStmt": value}, inner))
        elif key == "intoClause":
            out.append((value, _write(inner)))
        elif key == "lockingClause":
            w.flags.add("row_lock")
            out.append((value, inner))
        elif type(value) in (dict, list):
            out.append((value, inner))


def _on_dml(kind: str) -> Callable[[_Walker, Node, Ctx, Stack], None]:
    def handler(w: _Walker, body: Node, ctx: Ctx, out: Stack) -> None:
        if not ctx[3]:
            w.writes.add(kind)
            if ctx[2]:
                w.flags.add("data_modifying_cte")
            if kind in ("UPDATE", "DELETE") and _row_independent(body.get("whereClause")):
                w.flags.add("no_where")
        scoped = _with_scope(body, ctx, out)
        for key, value in body.items():
            if key == "withClause":
                continue
            if key == "relation":
                out.append((value, _write(scoped)))
            elif type(value) in (dict, list):
                out.append((value, _read(scoped)))

    return handler


def _row_independent(where: Any) -> bool:
    """True when a WHERE clause is absent or cannot tell rows apart (no column reference):
    ``WHERE true``, ``WHERE 1 = 1``, ``WHERE $1``. A tautology that mentions a column
    (``WHERE id = id OR true``) is not detected.

    Searched in the re-encoded JSON (C speed): a key is always followed by ``":``, which a
    string constant's encoding can never produce (its quotes are escaped)."""
    if where is None:
        return True
    encoded = orjson.dumps(where)
    return b'"ColumnRef":' not in encoded and b'"CurrentOfExpr":' not in encoded


def _on_func(w: _Walker, body: Node, ctx: Ctx, out: Stack) -> None:
    parts = [
        str((p.get("String") or {}).get("sval", "")) for p in body.get("funcname") or ()
    ]
    name = ".".join(parts).lower()
    location = int(body.get("location", 0))
    if location < w.functions.get(name, location + 1):
        w.functions[name] = location
    base = parts[-1].lower() if parts else ""
    if base in DYNAMIC_SQL_FUNCTIONS or base.startswith(DYNAMIC_SQL_PREFIXES):
        w.flags.add("dynamic_sql")
    if base == "set_config":
        args = body.get("args") or []
        first = (args[0].get("A_Const") or {}) if args else {}
        setting = first.get("sval", {}).get("sval") if "sval" in first else None
        if setting is None and w.known_setting is not None and w.known_setting[0] == id(body):
            setting = w.known_setting[1]
        # a non-constant setting name could be 'role': assume the worst
        if not isinstance(setting, str) or setting.strip().lower() in ROLE_GUCS:
            w.flags.add("role_switch")
        name_key = setting.strip().lower() if isinstance(setting, str) else None
        if name_key is None or name_key in PARSER_GUCS:
            w.flags.add("parser_setting")
            value = _const_value(args[1]) if len(args) > 1 else _NOT_CONST
            if name_key is None or not parser_setting_safe(name_key, value):
                w.flags.add("unsafe_parser_setting")
    out.append((body, ctx))


def _on_set(w: _Walker, body: Node, ctx: Ctx, out: Stack) -> None:
    name = str(body.get("name", "")).lower()
    if name in ROLE_GUCS:
        w.flags.add("role_switch")
    if name in PARSER_GUCS:
        w.flags.add("parser_setting")
        args = body.get("args") or []
        kind = body.get("kind", "")
        if kind == "VAR_SET_VALUE":
            value = _const_value(args[0]) if len(args) == 1 else _NOT_CONST
        elif kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
            value = None
        else:  # SET ... FROM CURRENT and anything newer: not a value we can check
            value = _NOT_CONST
        if not parser_setting_safe(name, value):
            w.flags.add("unsafe_parser_setting")
    out.append((body, ctx))


_NOT_CONST = object()


def _const_value(node: Any) -> object:
    """The value of an A_Const argument (str / int / bool), else a non-constant marker."""
    const = node.get("A_Const") if isinstance(node, dict) else None
    if not isinstance(const, dict):
        return _NOT_CONST
    for key, field in (("sval", "sval"), ("ival", "ival"), ("boolval", "boolval")):
        if key in const:
            inner = const[key]
            if not isinstance(inner, dict):
                return inner
            # pglast omits zero / false values from its JSON
            return inner.get(field, 0 if key == "ival" else False)
    if "fval" in const:
        return str((const["fval"] or {}).get("fval", ""))
    return _NOT_CONST


def _on_copy(w: _Walker, body: Node, ctx: Ctx, out: Stack) -> None:
    is_from = bool(body.get("is_from"))
    w.flags.add("copy_from" if is_from else "copy_to")
    if body.get("is_program"):
        w.flags.add("copy_program")
    elif body.get("filename") is not None:
        w.flags.add("copy_file")
    for key, value in body.items():
        if key == "relation":
            out.append((value, _write(ctx) if is_from else _read(ctx)))
        elif type(value) in (dict, list):
            out.append((value, _read(ctx)))


def _on_explain(w: _Walker, body: Node, ctx: Ctx, out: Stack) -> None:
    if _explain_analyze(body):
        w.flags.add("explain_analyze")
        out.append((body, ctx))
    else:
        out.append((body, ("read", ctx[1], ctx[2], True)))


def _on_dynamic(w: _Walker, body: Node, ctx: Ctx, out: Stack) -> None:
    w.flags.add("dynamic_sql")
    out.append((body, ctx))


def _on_alter_system(w: _Walker, body: Node, ctx: Ctx, out: Stack) -> None:
    w.flags.add("alter_system")
    out.append((body, ctx))


def _on_drop(w: _Walker, body: Node, ctx: Ctx, out: Stack) -> None:
    if body.get("removeType") in RELATION_OBJECTS:
        for obj in body.get("objects") or ():
            names = [
                str((i.get("String") or {}).get("sval", ""))
                for i in (obj.get("List") or {}).get("items") or ()
            ]
            if names:
                schema = names[-2] if len(names) > 1 else None
                w.relations.setdefault(RelationRef(schema, names[-1], "write"), -1)
    out.append((body, ctx))


def _on_lock(w: _Walker, body: Node, ctx: Ctx, out: Stack) -> None:
    write = int(body.get("mode", 0)) >= _ROW_LOCKS
    out.append((body, _write(ctx) if write else _read(ctx)))


def _skip(w: _Walker, body: Node, ctx: Ctx, out: Stack) -> None:
    """Subtrees that can hold no relation, function call or statement."""


_HANDLERS: dict[str, Callable[[_Walker, Node, Ctx, Stack], None]] = {
    **dict.fromkeys(
        ("A_Const", "ColumnRef", "ParamRef", "String", "Integer", "Float", "Boolean",
         "BitString", "A_Star", "TypeName", "typeName", "RoleSpec", "location"),
        _skip,
    ),
    "SelectStmt": _on_select,
    "FuncCall": _on_func,
    "funccall": _on_func,  # CallStmt.funccall (typed field, unwrapped)
    "VariableSetStmt": _on_set,
    "setstmt": _on_set,  # ALTER ROLE/DATABASE ... SET (typed field, unwrapped)
    "CopyStmt": _on_copy,
    "ExplainStmt": _on_explain,
    "DoStmt": _on_dynamic,
    "AlterSystemStmt": _on_alter_system,
    "DropStmt": _on_drop,
    "LockStmt": _on_lock,
    **{name: _on_dml(kind) for name, kind in _DML.items()},
}

_WRITE_CATEGORIES = frozenset({"write", "ddl", "dcl", "admin"})
_ESCALATE = frozenset({"SELECT", "COPY", "INSERT", "UPDATE", "DELETE", "MERGE"})


def _settings_lookup(body: Node) -> tuple[int, str] | None:
    """pg_dump's guarded setting change, whose setting name is a constant after all:

        SELECT set_config(name, 'value', false) FROM pg_settings WHERE name = 'setting'

    (it only sets a setting the server has). Recognized in exactly this shape, so that a
    ``name`` column of any other row source can never pass for a constant.
    """
    targets = body.get("targetList") or []
    sources = body.get("fromClause") or []
    if len(targets) != 1 or len(sources) != 1 or set(body) - _LOOKUP_KEYS:
        return None
    call = ((targets[0].get("ResTarget") or {}).get("val") or {}).get("FuncCall")
    rv = sources[0].get("RangeVar") or {}
    if (
        not isinstance(call, dict)
        or rv.get("relname") != "pg_settings"
        or rv.get("schemaname") not in (None, "pg_catalog")
        or [f.get("String", {}).get("sval") for f in call.get("funcname") or ()]
        not in (["set_config"], ["pg_catalog", "set_config"])
        or not call.get("args")
        or not _is_name_column(call["args"][0])
    ):
        return None
    where = (body.get("whereClause") or {}).get("A_Expr") or {}
    if where.get("kind") != "AEXPR_OP" or [
        n.get("String", {}).get("sval") for n in where.get("name") or ()
    ] != ["="]:
        return None
    left, right = where.get("lexpr"), where.get("rexpr")
    if _is_name_column(right):
        left, right = right, left
    value = _const_value(right)
    if not _is_name_column(left) or not isinstance(value, str):
        return None
    return id(call), value


_LOOKUP_KEYS = frozenset({"targetList", "fromClause", "whereClause", "limitOption", "op"})


def _is_name_column(node: Any) -> bool:
    ref = node.get("ColumnRef") if isinstance(node, dict) else None
    if not isinstance(ref, dict):
        return False
    fields = [f.get("String", {}).get("sval") for f in ref.get("fields") or ()]
    return fields in (["name"], ["pg_settings", "name"])


def _statement(text: str, node: Node) -> Statement:
    ntype, body = _only(node)
    kind, command, category = _classify(ntype, body)
    walker = _Walker()
    if ntype == "SelectStmt":
        walker.known_setting = _settings_lookup(body)
    mode: Mode = "write" if category in _WRITE_CATEGORIES else "read"
    walker.run(node, (mode, _EMPTY, False, False))
    if walker.writes:
        strongest = next(k for k in WRITE_SEVERITY if k in walker.writes or k == kind)
        if kind in _ESCALATE and kind != strongest:
            # WITH d AS (DELETE ...) SELECT / COPY (DELETE ... RETURNING) TO: a DELETE
            if command == "SELECT":
                command = strongest
            kind = strongest
        if category in ("read", "session"):
            category = "write"
    return Statement(
        text=text,
        kind=kind,
        command=command,
        category=category,
        relations=_in_order(walker.relations),
        functions=_in_order(walker.functions),
        flags=frozenset(walker.flags),
    )


# --------------------------------------------------------------------------------------
# Public functions


def _syntax_error(sql: str, exc: parser.ParseError) -> SqlSyntaxError:
    message = str(exc.args[0]) if exc.args else "syntax error"
    index = exc.args[1] if len(exc.args) > 1 else None
    if isinstance(index, int):
        return SqlSyntaxError(message, index + 1)
    if message.endswith("at end of input"):
        return SqlSyntaxError(message, len(sql) + 1)
    return SqlSyntaxError(message, None)


def _check_input(sql: str) -> None:
    nul = sql.find("\x00")
    if nul >= 0:
        # pglast hands C strings to the parser: it would silently stop at the NUL
        raise SqlSyntaxError("invalid message format: NUL character in query", nul + 1)
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SqlSyntaxError('invalid byte sequence for encoding "UTF8"', exc.start + 1) from None


def _call(fn: Callable[[str], str], sql: str) -> str:
    _check_input(sql)
    try:
        return fn(sql)
    except parser.ParseError as exc:
        raise _syntax_error(sql, exc) from None


def fingerprint(sql: str) -> str:
    """pglast fingerprint (hex) of the whole string: constants and whitespace do not count."""
    return _call(parser.fingerprint, sql)


# orjson refuses JSON nested deeper than 1024 levels (about 100 nested subqueries, or a
# few hundred chained binary operators). Such trees are rare but legitimate, so they are
# decoded by the standard library with a raised recursion limit instead; beyond that the
# statement is refused (fail closed), never passed through unanalysed.
_DEEP_RECURSION_LIMIT = 30000


def _loads(document: str) -> dict[str, Any]:
    try:
        return orjson.loads(document)  # type: ignore[no-any-return]
    except orjson.JSONDecodeError as exc:
        if "depth" not in str(exc):
            raise
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, _DEEP_RECURSION_LIMIT))
    try:
        return json.loads(document)  # type: ignore[no-any-return]
    except RecursionError:
        raise SqlSyntaxError("statement is nested too deeply to be analysed", None) from None
    finally:
        sys.setrecursionlimit(previous)


def normalize(sql: str) -> str:
    """The string with its constants replaced by ``$n`` placeholders."""
    return _call(parser.normalize, sql)


def analyze(sql: str) -> Analysis:
    """Split, fingerprint, parse and classify ``sql``; raise SqlSyntaxError if it does not parse.

    An empty string (or only comments / semicolons) gives zero statements.
    """
    fp = _call(parser.fingerprint, sql)
    tree = _loads(_call(parser.parse_sql_json, sql))
    raw = tree.get("stmts") or []
    encoded: bytes | None = None if sql.isascii() else sql.encode("utf-8")
    statements = []
    for entry in raw:
        start = int(entry.get("stmt_location", 0))
        length = int(entry.get("stmt_len", 0))
        if encoded is None:
            text = sql[start : start + length] if length else sql[start:]
        else:
            chunk = encoded[start : start + length] if length else encoded[start:]
            text = chunk.decode("utf-8", errors="replace")
        statements.append(_statement(text.strip(), entry.get("stmt") or {}))
    return Analysis(statements=tuple(statements), fingerprint=fp)
