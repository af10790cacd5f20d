"""The policy vocabulary: actions, rules, decisions and the context a decision is made in.

This module owns what a rule *means*: which statements it matches and what it decides.
It knows nothing about where rules come from (configuration, the baseline pack), in
which order they are tried (``engine``) or how decisions are cached (``cache``), and it
never parses SQL: it reads the classification ``gateway.sql`` produced (``Statement``).

Matching rules, chosen so that a mistake in a rule errs towards refusing:

- Every matcher that is set must match (AND); the values listed inside one matcher are
  alternatives (OR). A rule without matchers matches every statement.
- Restrictive rules (``block``, ``approve``) match a statement when *any* of its
  relations / functions matches; ``allow`` rules only when *every* relation / function
  of the statement matches (and it has at least one), so that a join with one more
  table is not let through by an allow rule written for the first.
- Names compare case-insensitively, with shell globs (``*``, ``?``, ``[...]``).
- Function patterns match qualified and unqualified spellings: ``pg_read_file`` matches
  ``pg_read_file``, ``pg_catalog.pg_read_file`` and ``x.pg_read_file``; an unqualified
  call ``pg_read_file(...)`` also matches ``pg_catalog.pg_read_file`` (``pg_catalog`` is
  searched first unless a client reorders ``search_path``).
- Relation patterns: ``orders`` matches ``orders`` in any schema; ``sales.orders``
  matches that qualified name, and an *unqualified* reference ``orders`` only for
  restrictive rules, because the client controls ``search_path`` and the reference may
  resolve to ``sales.orders`` (for a block) or to anything else (for an allow).

No matcher looks at literal values: every decision is a function of the statement's
shape, which is what lets ``cache`` share one decision between ``WHERE id = 1`` and
``WHERE id = 2``.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "CATEGORIES",
    "FLAGS",
    "KINDS",
    "SQLSTATE_INSUFFICIENT_PRIVILEGE",
    "SQLSTATE_SYNTAX_ERROR",
    "Action",
    "Decision",
    "DecisionContext",
    "RelationLike",
    "Rule",
    "StatementLike",
]

SQLSTATE_INSUFFICIENT_PRIVILEGE = "42501"
SQLSTATE_SYNTAX_ERROR = "42601"

#: Statement kinds a rule may name. ``FUNCTION_CALL`` is the protocol-level FunctionCall
#: message (there is no SQL for it); the rest come from ``gateway.sql``.
KINDS = frozenset(
    {
        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "DDL", "DCL", "UTILITY",
        "TRANSACTION", "CURSOR", "PREPARE", "EXECUTE", "DEALLOCATE", "DO", "CALL", "SET",
        "RESET", "SHOW", "EXPLAIN", "LOCK", "LISTEN", "UNLISTEN", "NOTIFY", "DISCARD",
        "VACUUM", "ANALYZE", "CHECKPOINT", "LOAD", "TRUNCATE", "FUNCTION_CALL",
    }
)
CATEGORIES = frozenset({"read", "write", "ddl", "dcl", "admin", "transaction", "session"})
FLAGS = frozenset(
    {
        "no_where", "copy_program", "copy_file", "copy_to", "copy_from", "role_switch",
        "alter_system", "data_modifying_cte", "dynamic_sql", "explain_analyze", "row_lock",
    }
)


class RelationLike(Protocol):
    """What a rule reads of a ``gateway.sql.RelationRef``."""

    @property
    def schema(self) -> str | None: ...
    @property
    def name(self) -> str: ...
    @property
    def mode(self) -> str: ...


class StatementLike(Protocol):
    """What a rule reads of a ``gateway.sql.Statement`` (its classification, never its text)."""

    @property
    def kind(self) -> str: ...
    @property
    def command(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def relations(self) -> Sequence[RelationLike]: ...
    @property
    def functions(self) -> Sequence[str]: ...
    @property
    def flags(self) -> AbstractSet[str]: ...


class Action(enum.IntEnum):
    """What happens to a statement; the integer order is strictness (allow < approve < block)."""

    ALLOW = 0
    APPROVE = 1
    BLOCK = 2

    @property
    def label(self) -> str:
        """The spelling used in configuration and output: ``"allow"``, ...."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Action:
        """``"allow"`` / ``"approve"`` / ``"block"`` (any case) -> ``Action``."""
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown action {text!r} (allow, approve, block)") from None


@dataclass(frozen=True, slots=True)
class DecisionContext:
    """Who is asking: the session's role, principal (``issuer:subject``) and database.

    ``default_action`` is the role's default (or the policy's), applied to statements
    no rule matches. A session builds one context and reuses it for every statement.
    """

    role: str
    principal: str
    database: str
    default_action: Action = Action.ALLOW


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one SQL string (or one statement of it).

    ``sqlstate`` and ``message`` are what the client sees when the action is not
    ``allow``: 42501 for ``block`` and ``approve`` (whose message begins "requires
    approval"), 42601 for SQL that does not parse. ``statement_index`` is the statement
    that decided (-1 when none did, e.g. an empty string). ``observed`` lists the ids of
    ``observe`` rules that matched: what they would have done is logged, not enforced.
    """

    action: Action
    rule_id: str
    message: str = ""
    sqlstate: str = ""
    observed: tuple[str, ...] = ()
    statement_index: int = -1
    #: For SQL that does not parse: where (1-based character index), as PostgreSQL
    #: reports it in the error's Position field.
    position: int | None = None

    @property
    def allowed(self) -> bool:
        return self.action is Action.ALLOW


RelationMode = Literal["any", "read", "write"]
# Function names a rule remembers its verdict on (they repeat: count, now, lower, ...).
_FUNCTION_MEMO_LIMIT = 4096


def _glob_regex(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One compiled, case-insensitive alternation of shell globs (None for no patterns)."""
    parts = [fnmatch.translate(p.lower()) for p in patterns]
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def _norm_command(text: str) -> str:
    return " ".join(text.upper().split())


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """One policy rule: scope (who), matchers (what) and the action it decides.

    Empty scope and matcher lists mean "any". ``pack`` is ``""`` for rules from the
    configuration and the pack name (``"baseline"``) for built-in rules; ``overrides``
    lists globs of built-in rule ids a configured rule may loosen (see ``engine``).
    """

    id: str
    action: Action
    message: str = ""
    roles: tuple[str, ...] = ()
    principals: tuple[str, ...] = ()
    databases: tuple[str, ...] = ()
    kinds: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    commands: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()
    relation_mode: RelationMode = "any"
    functions: tuple[str, ...] = ()
    flags: frozenset[str] = frozenset()
    observe: bool = False
    overrides: tuple[str, ...] = ()
    pack: str = ""
    # Compiled forms, derived in __post_init__.
    _roles: re.Pattern[str] | None = field(init=False, repr=False, default=None)
    _principals: re.Pattern[str] | None = field(init=False, repr=False, default=None)
    _databases: re.Pattern[str] | None = field(init=False, repr=False, default=None)
    _command_set: frozenset[str] = field(init=False, repr=False, default=frozenset())
    _command_re: re.Pattern[str] | None = field(init=False, repr=False, default=None)
    _qualified_rel: re.Pattern[str] | None = field(init=False, repr=False, default=None)
    _bare_rel: re.Pattern[str] | None = field(init=False, repr=False, default=None)
    _rel_names: re.Pattern[str] | None = field(init=False, repr=False, default=None)
    _functions: re.Pattern[str] | None = field(init=False, repr=False, default=None)
    _overrides: re.Pattern[str] | None = field(init=False, repr=False, default=None)
    _all_parts: bool = field(init=False, repr=False, default=False)
    _decisions: dict[int, Decision] = field(init=False, repr=False, default_factory=dict)
    _function_memo: dict[str, bool] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "kinds", frozenset(k.upper() for k in self.kinds))
        s(self, "categories", frozenset(c.lower() for c in self.categories))
        s(self, "flags", frozenset(f.lower() for f in self.flags))
        s(self, "_roles", _glob_regex(self.roles))
        s(self, "_principals", _glob_regex(self.principals))
        s(self, "_databases", _glob_regex(self.databases))
        commands = [_norm_command(c) for c in self.commands]
        s(self, "_command_set", frozenset(c for c in commands if not _is_glob(c)))
        s(self, "_command_re", _glob_regex(c for c in commands if _is_glob(c)))
        qualified = [p for p in self.relations if "." in p]
        bare = [p for p in self.relations if "." not in p]
        s(self, "_qualified_rel", _glob_regex(qualified))
        s(self, "_bare_rel", _glob_regex(bare))
        # For restrictive rules an unqualified reference is compared with the name part
        # of every pattern (it may resolve to any schema on the search_path).
        s(self, "_rel_names", _glob_regex(p.rsplit(".", 1)[1] for p in qualified))
        s(self, "_functions", _glob_regex(self.functions))
        s(self, "_overrides", _glob_regex(self.overrides))
        s(self, "_all_parts", self.action is Action.ALLOW)

    # ------------------------------------------------------------------ scope

    def in_scope(self, ctx: DecisionContext) -> bool:
        """Whether the rule applies to this role, principal and database at all."""
        return (
            (self._roles is None or self._roles.fullmatch(ctx.role) is not None)
            and (self._principals is None or self._principals.fullmatch(ctx.principal) is not None)
            and (self._databases is None or self._databases.fullmatch(ctx.database) is not None)
        )

    def may_override(self, rule_id: str) -> bool:
        """Whether this (configured) rule is allowed to loosen built-in rule ``rule_id``."""
        return self._overrides is not None and self._overrides.fullmatch(rule_id) is not None

    # ------------------------------------------------------------------ matching

    def matches(self, stmt: StatementLike) -> bool:
        """Whether the statement is one this rule is about (scope is checked separately)."""
        if self.kinds and stmt.kind not in self.kinds:
            return False
        if self.commands and not self.command_matches(stmt.command):
            return False
        return self.matches_rest(stmt)

    def matches_rest(self, stmt: StatementLike) -> bool:
        """``matches`` without the kind and command checks (the engine buckets by those)."""
        if self.flags and self.flags.isdisjoint(stmt.flags):
            return False
        if self.categories and stmt.category not in self.categories:
            return False
        if self.functions and not self._functions_match(stmt.functions):
            return False
        return not self.relations or self._relations_match(stmt.relations)

    def kind_matches(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds

    def command_matches(self, command: str) -> bool:
        """Whether ``command`` (upper case, single spaces, as gateway.sql spells it) matches."""
        if not self.commands or command in self._command_set:
            return True
        command = _norm_command(command)
        if command in self._command_set:
            return True
        return self._command_re is not None and self._command_re.fullmatch(command) is not None

    def _function_matches(self, name: str) -> bool:
        memo = self._function_memo
        try:
            return memo[name]
        except KeyError:
            pass
        result = self._function_matches_uncached(name)
        if len(memo) >= _FUNCTION_MEMO_LIMIT:
            memo.clear()
        memo[name] = result
        return result

    def _function_matches_uncached(self, name: str) -> bool:
        assert self._functions is not None
        match = self._functions.fullmatch
        parts = name.split(".")
        if match(name) or match(parts[-1]):
            return True
        if len(parts) == 1:
            return match("pg_catalog." + name) is not None
        return len(parts) > 2 and match(".".join(parts[-2:])) is not None

    def _functions_match(self, functions: Sequence[str]) -> bool:
        if self._all_parts:
            return bool(functions) and all(self._function_matches(f) for f in functions)
        return any(self._function_matches(f) for f in functions)

    def _relation_matches(self, rel: RelationLike) -> bool:
        if self.relation_mode != "any" and rel.mode != self.relation_mode:
            return False
        name = rel.name
        if self._bare_rel is not None and self._bare_rel.fullmatch(name):
            return True
        if rel.schema:
            return (
                self._qualified_rel is not None
                and self._qualified_rel.fullmatch(f"{rel.schema}.{name}") is not None
            )
        # Unqualified: only a restrictive rule may assume it resolves to its schema.
        return (
            not self._all_parts
            and self._rel_names is not None
            and self._rel_names.fullmatch(name) is not None
        )

    def _relations_match(self, relations: Sequence[RelationLike]) -> bool:
        if self._all_parts:
            return bool(relations) and all(self._relation_matches(r) for r in relations)
        return any(self._relation_matches(r) for r in relations)

    # ------------------------------------------------------------------ outcome

    def decision(self, statement_index: int = -1, observed: tuple[str, ...] = ()) -> Decision:
        """The decision this rule produces for the statement at ``statement_index``."""
        if observed or statement_index > 7:
            return rule_decision(self.action, self.id, self.message, statement_index, observed)
        try:
            return self._decisions[statement_index]
        except KeyError:
            made = rule_decision(self.action, self.id, self.message, statement_index)
            self._decisions[statement_index] = made
            return made

    def needs(self) -> tuple[bool, bool, bool]:
        """Whether a statement needs flags / functions / relations for this rule to match.

        Every flag, function and relation matcher needs at least one of its kind in the
        statement (an allow rule's "every relation" included), so the engine can skip the
        rule for statements that have none.
        """
        return bool(self.flags), bool(self.functions), bool(self.relations)


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def rule_decision(
    action: Action,
    rule_id: str,
    message: str,
    statement_index: int = -1,
    observed: tuple[str, ...] = (),
) -> Decision:
    """A decision with the client-facing message and SQLSTATE its action implies."""
    if action is Action.ALLOW:
        return Decision(action, rule_id, message, "", observed, statement_index)
    if action is Action.APPROVE:
        text = f"requires approval: {message}" if message else "requires approval"
    else:
        text = message or "blocked by policy"
    text = f"{text} (pgwarden rule {rule_id})"
    return Decision(
        action, rule_id, text, SQLSTATE_INSUFFICIENT_PRIVILEGE, observed, statement_index
    )
