"""``decide``: one decision for one SQL string, from its classification and the rules.

Pure and synchronous: no I/O, no clock, no asyncio. Given the same context, analysis and
rules it returns the same ``Decision``, which is what makes decisions cacheable.

Evaluation order, for each statement of the string:

1. **Configured rules**, in file order, that are in scope for the context (role,
   principal, database). ``observe`` rules that match are recorded in
   ``Decision.observed`` and evaluation goes on; the first other match is the candidate.
2. **Baseline rules** (when the pack is enabled), in pack order; the first match is the
   baseline candidate.
3. If both matched, the stricter wins — unless the configured rule is looser *and*
   names the baseline rule in its ``overrides``: loosening the baseline is always an
   explicit, reviewable act, never the side effect of a broad allow rule.
4. If nothing matched, the context's default action (the role's ``default_action``,
   else ``[policy] default_action``) decides, with rule id ``"default"``.

Across the statements of one string the strictest decision wins (block > approve >
allow); on a tie the first statement's. A string with no statements (``""``, ``";"``,
only comments) is allowed. SQL that does not parse is blocked with SQLSTATE 42601 and the
parser's message: nothing unparsed is ever passed through.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.policy.baseline import BASELINE, FUNCTION_CALL_KIND
from gateway.policy.model import (
    SQLSTATE_SYNTAX_ERROR,
    Action,
    Decision,
    DecisionContext,
    RelationLike,
    Rule,
    StatementLike,
    rule_decision,
)
from gateway.sql import Analysis, SqlSyntaxError, analyze

if TYPE_CHECKING:
    from gateway.config import Config, RuleConfig

__all__ = [
    "DEFAULT_RULE_ID",
    "FUNCTION_CALL",
    "SYNTAX_RULE_ID",
    "Policy",
    "decide",
    "decide_parsed",
    "decide_sql",
    "decide_statements",
    "function_call_decision",
    "rules_from_config",
    "syntax_error_decision",
]

DEFAULT_RULE_ID = "default"
#: Statements that would make PostgreSQL read later statements differently from the
#: parser that decides them (gateway.sql.classify.PARSER_GUCS) are always refused.
INTEGRITY_FLAG = "unsafe_parser_setting"
INTEGRITY_RULE = Rule(
    id="integrity.parser_setting",
    action=Action.BLOCK,
    message=(
        "pgwarden inspects SQL as UTF-8 (or another ASCII-safe encoding) with "
        "standard_conforming_strings on; this setting change is not allowed"
    ),
    pack="integrity",
    flags=frozenset({INTEGRITY_FLAG}),
)
SYNTAX_RULE_ID = "syntax"
SQLSTATE_TOO_COMPLEX = "54001"
# How many distinct (role, principal, database) scopes a policy remembers.
_SCOPE_MEMO_LIMIT = 4096
_BUCKET_LIMIT = 1024


_Bucket = tuple[tuple[Rule, ...], tuple[Rule, ...]]
_BucketKey = tuple[str, str, bool, bool, bool]


class _Scoped:
    """The rules in scope for one (role, principal, database), bucketed by what a statement
    has (kind, command, whether it has flags / functions / relations), so a statement is
    only checked against rules that can match it. A plain ``SELECT … WHERE id = $1``
    under the baseline checks no rule at all."""

    __slots__ = ("baseline", "buckets", "configured")

    def __init__(self, configured: tuple[Rule, ...], baseline: tuple[Rule, ...]) -> None:
        self.configured = configured
        self.baseline = baseline
        self.buckets: dict[_BucketKey, _Bucket] = {}

    def for_statement(self, stmt: StatementLike) -> _Bucket:
        key = (stmt.kind, stmt.command, bool(stmt.flags), bool(stmt.functions),
               bool(stmt.relations))
        try:
            return self.buckets[key]
        except KeyError:
            pass
        kind, command, *has = key

        def fits(rule: Rule) -> bool:
            needs = rule.needs()
            return (
                rule.kind_matches(kind)
                and rule.command_matches(command)
                and all(h or not n for h, n in zip(has, needs, strict=True))
            )

        pair = (
            tuple(r for r in self.configured if fits(r)),
            tuple(r for r in self.baseline if fits(r)),
        )
        # Kinds and commands come from the parser's fixed vocabulary, so this stays small;
        # the bound only guards against a classifier that puts free text in ``command``.
        if len(self.buckets) < _BUCKET_LIMIT:
            self.buckets[key] = pair
        return pair


class Policy:
    """An immutable rule set, compiled for fast evaluation.

    ``rules`` holds configured rules (``pack == ""``) and built-in ones in one sequence;
    the relative order within each group is the evaluation order.
    """

    __slots__ = (
        "_scoped", "baseline", "configured", "default_action", "role_defaults", "rules",
        "uses_databases", "uses_principals",
    )

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        default_action: Action = Action.ALLOW,
        role_defaults: Mapping[str, Action] | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self.configured = tuple(r for r in self.rules if not r.pack)
        self.baseline = tuple(r for r in self.rules if r.pack)
        self.default_action = default_action
        self.role_defaults = dict(role_defaults or {})
        self.uses_principals = any(r.principals for r in self.rules)
        self.uses_databases = any(r.databases for r in self.rules)
        self._scoped: dict[tuple[str, str, str], _Scoped] = {}

    @classmethod
    def from_config(cls, cfg: Config) -> Policy:
        """The policy a validated configuration describes (baseline included if enabled)."""
        rules = list(rules_from_config(cfg.rules))
        if cfg.policy.baseline:
            rules.extend(BASELINE)
        return cls(
            rules,
            default_action=Action.parse(cfg.policy.default_action),
            role_defaults={
                role.name: Action.parse(role.default_action)
                for role in cfg.roles
                if role.default_action is not None
            },
        )

    def context(self, role: str, principal: str, database: str) -> DecisionContext:
        """The context for a session, with the role's default action filled in."""
        default = self.role_defaults.get(role, self.default_action)
        return DecisionContext(role, principal, database, default)

    def scope_key(self, ctx: DecisionContext) -> tuple[str, str, str, Action]:
        """What a decision under this policy depends on besides the SQL (for caching).

        The principal and database only matter when some rule is scoped by them, so
        sessions of one role share cached decisions unless the policy says otherwise.
        """
        return (
            ctx.role,
            ctx.principal if self.uses_principals else "",
            ctx.database if self.uses_databases else "",
            ctx.default_action,
        )

    def rule(self, rule_id: str) -> Rule | None:
        """The first rule with this id (to log what an observed rule would have done)."""
        return next((r for r in self.rules if r.id == rule_id), None)

    def scoped(self, ctx: DecisionContext) -> _Scoped:
        key = (ctx.role, ctx.principal, ctx.database)
        try:
            return self._scoped[key]
        except KeyError:
            pass
        if len(self._scoped) >= _SCOPE_MEMO_LIMIT:
            self._scoped.clear()
        scoped = _Scoped(
            tuple(r for r in self.configured if r.in_scope(ctx)),
            tuple(r for r in self.baseline if r.in_scope(ctx)),
        )
        self._scoped[key] = scoped
        return scoped


def rules_from_config(rules: Sequence[RuleConfig]) -> Iterable[Rule]:
    """``[[rules]]`` entries (already validated by ``gateway.config``) as ``Rule``s."""
    for rc in rules:
        yield Rule(
            id=rc.id,
            action=Action.parse(rc.action),
            message=rc.message,
            roles=tuple(rc.roles),
            principals=tuple(rc.principals),
            databases=tuple(rc.databases),
            kinds=frozenset(rc.kinds),
            categories=frozenset(rc.categories),
            commands=tuple(rc.commands),
            relations=tuple(rc.relations),
            relation_mode=rc.relation_mode,
            functions=tuple(rc.functions),
            flags=frozenset(rc.flags),
            observe=rc.observe,
            overrides=tuple(rc.overrides),
        )


def _as_policy(rules: Policy | Sequence[Rule]) -> Policy:
    return rules if isinstance(rules, Policy) else Policy(rules)


def _first_match(
    rules: tuple[Rule, ...], stmt: StatementLike, observed: list[str]
) -> Rule | None:
    for rule in rules:
        if rule.matches_rest(stmt):
            if rule.observe:
                observed.append(rule.id)
                continue
            return rule
    return None


def _decide_one(
    scoped: _Scoped, ctx: DecisionContext, stmt: StatementLike, observed: list[str]
) -> tuple[Action, Rule | None]:
    if INTEGRITY_FLAG in stmt.flags:
        # Not a policy choice: no rule, pack or default can allow it (see INTEGRITY_RULE).
        return Action.BLOCK, INTEGRITY_RULE
    configured, baseline = scoped.for_statement(stmt)
    chosen = _first_match(configured, stmt, observed)
    if chosen is None or chosen.action is not Action.BLOCK:
        base = _first_match(baseline, stmt, observed)
        if base is not None and (
            chosen is None
            or (base.action > chosen.action and not chosen.may_override(base.id))
        ):
            chosen = base
    if chosen is None:
        return ctx.default_action, None
    return chosen.action, chosen


_DEFAULT_ALLOW = tuple(Decision(Action.ALLOW, DEFAULT_RULE_ID, statement_index=i) for i in range(8))


def _default_decision(ctx: DecisionContext, index: int, observed: tuple[str, ...]) -> Decision:
    action = ctx.default_action
    if action is Action.ALLOW and not observed and index < len(_DEFAULT_ALLOW):
        return _DEFAULT_ALLOW[index]
    message = "" if action is Action.ALLOW else f"no rule allows this statement for role {ctx.role}"
    return rule_decision(action, DEFAULT_RULE_ID, message, index, observed)


def decide_statements(
    ctx: DecisionContext, analysis: Analysis, rules: Policy | Sequence[Rule]
) -> list[Decision]:
    """One decision per statement of the analysis (for ``policy check`` and audit)."""
    scoped = _as_policy(rules).scoped(ctx)
    out = []
    for index, stmt in enumerate(analysis.statements):
        observed: list[str] = []
        _, rule = _decide_one(scoped, ctx, stmt, observed)
        seen = tuple(dict.fromkeys(observed))
        if rule is None:
            out.append(_default_decision(ctx, index, seen))
        else:
            out.append(rule.decision(index, seen))
    return out


def decide(
    ctx: DecisionContext, analysis: Analysis, rules: Policy | Sequence[Rule]
) -> Decision:
    """The decision for a whole SQL string: the strictest of its statements' decisions."""
    return decide_parsed(ctx, analysis.statements, rules)


def decide_parsed(
    ctx: DecisionContext, statements: Sequence[StatementLike], rules: Policy | Sequence[Rule]
) -> Decision:
    """``decide`` over classified statements (``Analysis.statements``)."""
    scoped = _as_policy(rules).scoped(ctx)
    observed: list[str] = []
    best_action = Action.ALLOW
    best_rule: Rule | None = None
    best_index = -1
    for index, stmt in enumerate(statements):
        action, rule = _decide_one(scoped, ctx, stmt, observed)
        if best_index < 0 or action > best_action:
            best_action, best_rule, best_index = action, rule, index
    seen = tuple(dict.fromkeys(observed)) if observed else ()
    if best_index < 0:
        return Decision(Action.ALLOW, DEFAULT_RULE_ID, observed=seen)
    if best_rule is None:
        return _default_decision(ctx, best_index, seen)
    return best_rule.decision(best_index, seen)


def syntax_error_decision(message: str, position: int | None = None) -> Decision:
    """SQL that does not parse: blocked with the parser's message (fail closed)."""
    return Decision(
        Action.BLOCK, SYNTAX_RULE_ID, message, SQLSTATE_SYNTAX_ERROR, position=position
    )


def analyze_or_decision(sql: str) -> Analysis | Decision:
    """``analyze(sql)``, or the blocking decision when the SQL cannot be analysed."""
    try:
        return analyze(sql)
    except SqlSyntaxError as exc:
        return syntax_error_decision(exc.message, exc.position)
    except RecursionError:
        return Decision(
            Action.BLOCK, SYNTAX_RULE_ID, "statement is too deeply nested to inspect",
            SQLSTATE_TOO_COMPLEX,
        )


def decide_sql(ctx: DecisionContext, sql: str, rules: Policy | Sequence[Rule]) -> Decision:
    """Parse, classify and decide ``sql``; unparseable SQL is blocked with 42601."""
    analysis = analyze_or_decision(sql)
    if isinstance(analysis, Decision):
        return analysis
    return decide(ctx, analysis, rules)


@dataclass(frozen=True, slots=True)
class FunctionCallStatement:
    """The protocol-level FunctionCall message, as a statement rules can match."""

    kind: str = FUNCTION_CALL_KIND
    command: str = "FUNCTION CALL"
    category: str = "admin"
    relations: tuple[RelationLike, ...] = ()
    functions: tuple[str, ...] = ()
    flags: AbstractSet[str] = frozenset({"unknown_function"})


FUNCTION_CALL = FunctionCallStatement()

#: Built-in functions libpq's large-object API calls through FunctionCall, by their OIDs.
#: These OIDs are fixed in PostgreSQL's catalog (pg_proc.dat) and cannot be taken by a
#: user-defined function (those get OIDs >= 16384), so the OID names the function.
LARGE_OBJECT_FUNCTIONS: dict[int, tuple[str, str]] = {
    715: ("lo_create", "write"), 764: ("lo_import", "admin"), 765: ("lo_export", "admin"),
    767: ("lo_import", "admin"), 952: ("lo_open", "read"), 953: ("lo_close", "read"),
    954: ("loread", "read"), 955: ("lowrite", "write"), 956: ("lo_lseek", "read"),
    957: ("lo_creat", "write"), 958: ("lo_tell", "read"), 964: ("lo_unlink", "write"),
    1004: ("lo_truncate", "write"), 3170: ("lo_lseek64", "read"), 3171: ("lo_tell64", "read"),
    3172: ("lo_truncate64", "write"),
}
_KNOWN_CALLS = {
    oid: FunctionCallStatement(
        category=category, functions=(f"pg_catalog.{name}",), flags=frozenset()
    )
    for oid, (name, category) in LARGE_OBJECT_FUNCTIONS.items()
}


def function_call_decision(
    ctx: DecisionContext, rules: Policy | Sequence[Rule] = BASELINE, oid: int | None = None
) -> Decision:
    """The decision for a FunctionCall ('F') message calling function ``oid``.

    It calls a function by OID with no SQL text. The built-in large-object functions
    (``LARGE_OBJECT_FUNCTIONS``: how libpq, pg_dump and pgjdbc read and write large
    objects) are decided like a SELECT of that function — so the baseline's server-file
    rule still blocks ``lo_import`` / ``lo_export``; any other OID is unknown and blocked by
    the baseline (rule ``baseline.function_call``; a configured rule matching
    ``kinds = ["FUNCTION_CALL"]`` with ``overrides = ["baseline.function_call"]`` can allow
    it). Without the baseline and without rules, the default action applies.
    """
    statement = _KNOWN_CALLS.get(oid, FUNCTION_CALL) if oid is not None else FUNCTION_CALL
    return decide_parsed(ctx, (statement,), rules)
