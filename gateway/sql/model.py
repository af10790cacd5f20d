"""The value types of gateway/sql: what an analysed SQL string looks like to the rest of pgwarden.

Everything here is plain, immutable and hashable, so a ``Statement`` can be cached next to a
decision and handed between packages without copying. Nothing here imports pglast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["read", "write"]
Category = Literal["read", "write", "ddl", "dcl", "admin", "transaction", "session"]


class SqlSyntaxError(Exception):
    """The SQL did not parse (or cannot be analysed); the gateway must refuse it (42601).

    ``message`` is PostgreSQL's own parser message (e.g. ``syntax error at or near "frm"``),
    ``position`` the 1-based character position in the analysed string, as PostgreSQL puts
    it in the ErrorResponse ``P`` field, or ``None`` when the parser gives none.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position

    def __repr__(self) -> str:
        return f"SqlSyntaxError({self.message!r}, position={self.position!r})"


@dataclass(frozen=True, slots=True)
class RelationRef:
    """A table, view, sequence... named in a statement, as written (the parser folds case).

    ``mode`` is ``write`` when the statement changes the relation's rows, definition or
    privileges (INSERT/UPDATE/DELETE/MERGE/TRUNCATE/COPY FROM targets, SELECT INTO and CREATE
    TABLE AS targets, objects of DDL and GRANT/REVOKE, LOCK in a write-level lock mode) and
    ``read`` otherwise. ``schema`` is ``None`` when the name is unqualified: which schema it
    resolves to depends on the session's ``search_path``, which parsing cannot know.
    """

    schema: str | None
    name: str
    mode: Mode


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement of an analysed string, classified for the policy engine.

    ``kind`` is the coarse statement kind (SELECT, INSERT, UPDATE, DELETE, MERGE, COPY, DDL,
    DCL, UTILITY, TRANSACTION, CURSOR, PREPARE, EXECUTE, DEALLOCATE, DO, CALL, SET, RESET,
    EXPLAIN, SHOW, LISTEN, NOTIFY, LOCK, VACUUM, TRUNCATE); ``command`` the finer, upper-case
    command ("DROP TABLE", "ALTER TABLE DROP COLUMN", "SET ROLE", "COPY FROM", ...);
    ``category`` the log_statement-like class. See gateway/sql/classify.py for the rules.
    """

    text: str
    kind: str
    command: str
    category: Category
    relations: tuple[RelationRef, ...]
    functions: tuple[str, ...]
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class Analysis:
    """All statements of one SQL string, in order, and the pglast fingerprint of the string."""

    statements: tuple[Statement, ...]
    fingerprint: str
