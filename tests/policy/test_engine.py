"""decide(): rule matching, evaluation order, strictest-wins, observe, overrides, fail closed."""

from __future__ import annotations

import pytest

from gateway.policy.baseline import BASELINE
from gateway.policy.engine import (
    DEFAULT_RULE_ID,
    Policy,
    decide,
    decide_sql,
    decide_statements,
    function_call_decision,
)
from gateway.policy.model import Action, Decision, DecisionContext, Rule
from gateway.sql import Analysis, RelationRef, Statement

CTX = DecisionContext("app", "github:repo:acme/etl", "warehouse")


def stmt(
    kind: str = "SELECT",
    command: str | None = None,
    category: str = "read",
    relations: tuple[RelationRef, ...] = (),
    functions: tuple[str, ...] = (),
    flags: frozenset[str] = frozenset(),
) -> Statement:
    return Statement(
        text="-- test", kind=kind, command=command or kind, category=category,  # type: ignore[arg-type]
        relations=relations, functions=functions, flags=flags,
    )


def analysis(*statements: Statement) -> Analysis:
    return Analysis(statements=statements, fingerprint="0")


def rel(name: str, mode: str = "read") -> RelationRef:
    schema, _, table = name.rpartition(".")
    return RelationRef(schema or None, table, mode)  # type: ignore[arg-type]


def one(rule: Rule, s: Statement, ctx: DecisionContext = CTX) -> Decision:
    return decide(ctx, analysis(s), [rule])


# ------------------------------------------------------------------ actions and decisions


def test_action_strictness_order() -> None:
    assert Action.ALLOW < Action.APPROVE < Action.BLOCK
    assert Action.parse("Approve") is Action.APPROVE
    assert Action.BLOCK.label == "block"
    with pytest.raises(ValueError):
        Action.parse("deny")


def test_block_and_approve_carry_42501_and_messages() -> None:
    block = one(Rule(id="b", action=Action.BLOCK, message="no"), stmt())
    assert (block.action, block.sqlstate, block.rule_id) == (Action.BLOCK, "42501", "b")
    assert block.message.startswith("no") and "b" in block.message
    approve = one(Rule(id="a", action=Action.APPROVE, message="schema change"), stmt())
    assert approve.sqlstate == "42501"
    assert approve.message.startswith("requires approval: schema change")
    allow = one(Rule(id="ok", action=Action.ALLOW), stmt())
    assert allow.allowed and allow.sqlstate == "" and allow.rule_id == "ok"


def test_zero_statements_are_allowed() -> None:
    d = decide(CTX, analysis(), [Rule(id="b", action=Action.BLOCK)])
    assert d.action is Action.ALLOW and d.statement_index == -1
    assert decide_sql(CTX, "", Policy(BASELINE)).allowed
    assert decide_sql(CTX, " ; -- nothing\n", Policy(BASELINE)).allowed


def test_syntax_error_fails_closed_with_42601_and_parser_message() -> None:
    d = decide_sql(CTX, "SELEC 1", Policy([Rule(id="all", action=Action.ALLOW)]))
    assert d.action is Action.BLOCK and d.sqlstate == "42601"
    assert 'syntax error at or near "SELEC"' in d.message
    assert decide_sql(CTX, "SELECT 1; DROP", Policy([])).sqlstate == "42601"


def test_nul_in_query_is_blocked() -> None:
    assert decide_sql(CTX, "SELECT 1\x00; DROP TABLE t", Policy([])).action is Action.BLOCK


# ------------------------------------------------------------------ matchers


def test_every_set_matcher_must_match_and_list_values_are_alternatives() -> None:
    rule = Rule(id="r", action=Action.BLOCK, kinds=frozenset({"UPDATE", "DELETE"}),
                flags=frozenset({"no_where"}))
    assert one(rule, stmt("DELETE", flags=frozenset({"no_where"}))).action is Action.BLOCK
    assert one(rule, stmt("DELETE")).action is Action.ALLOW
    assert one(rule, stmt("SELECT", flags=frozenset({"no_where"}))).action is Action.ALLOW


def test_rule_without_matchers_matches_everything() -> None:
    assert one(Rule(id="all", action=Action.BLOCK), stmt("SHOW")).action is Action.BLOCK


@pytest.mark.parametrize(
    ("pattern", "called", "matches"),
    [
        ("pg_read_file", "pg_read_file", True),
        ("pg_read_file", "pg_catalog.pg_read_file", True),
        ("pg_read_file", "evil.pg_read_file", True),
        ("pg_catalog.pg_read_file", "pg_read_file", True),  # pg_catalog is implied
        ("pg_catalog.pg_read_file", "pg_catalog.pg_read_file", True),
        ("pg_catalog.pg_read_file", "public.pg_read_file", False),
        ("PG_READ_FILE", "pg_read_file", True),
        ("dblink*", "public.dblink_connect", True),
        ("dblink*", "mydb.public.dblink_exec", True),
        ("public.f", "f", False),  # only pg_catalog is implied for unqualified calls
        ("pg_ls_*dir", "pg_ls_logdir", True),
        ("lo_export", "lo_import", False),
    ],
)
def test_function_patterns(pattern: str, called: str, matches: bool) -> None:
    rule = Rule(id="f", action=Action.BLOCK, functions=(pattern,))
    got = one(rule, stmt(functions=(called,))).action is Action.BLOCK
    assert got is matches


def test_commands_match_exactly_or_by_glob_case_insensitively() -> None:
    rule = Rule(id="d", action=Action.APPROVE, commands=("drop *", "TRUNCATE"))
    assert one(rule, stmt("DDL", "DROP TABLE")).action is Action.APPROVE
    assert one(rule, stmt("TRUNCATE", "TRUNCATE")).action is Action.APPROVE
    assert one(rule, stmt("DDL", "CREATE TABLE")).action is Action.ALLOW


def test_restrictive_relation_rules_match_any_relation() -> None:
    rule = Rule(id="hr", action=Action.BLOCK, relations=("hr.payroll",))
    both = stmt(relations=(rel("public.t"), rel("hr.payroll")))
    assert one(rule, both).action is Action.BLOCK
    # An unqualified name may resolve to hr.payroll through search_path: block it.
    assert one(rule, stmt(relations=(rel("payroll"),))).action is Action.BLOCK
    assert one(rule, stmt(relations=(rel("other.payroll"),))).action is Action.ALLOW


def test_allow_relation_rules_need_every_relation_and_a_qualified_match() -> None:
    policy = Policy(
        [Rule(id="reporting", action=Action.ALLOW, relations=("reporting.*",))],
        default_action=Action.BLOCK,
    )
    ctx = policy.context("app", "x:y", "db")
    assert ctx.default_action is Action.BLOCK

    def d(*relations: RelationRef) -> Action:
        return decide(ctx, analysis(stmt(relations=relations)), policy).action

    assert d(rel("reporting.sales")) is Action.ALLOW
    assert d(rel("reporting.sales"), rel("hr.payroll")) is Action.BLOCK  # a join too far
    assert d(rel("sales")) is Action.BLOCK  # unqualified: could be any schema
    assert d() is Action.BLOCK  # no relation at all is not "every relation in reporting"


def test_unqualified_relation_patterns_match_any_schema() -> None:
    rule = Rule(id="o", action=Action.ALLOW, relations=("orders",))
    assert one(rule, stmt(relations=(rel("sales.orders"),))).rule_id == "o"
    assert one(rule, stmt(relations=(rel("orders"),))).rule_id == "o"


def test_relation_mode() -> None:
    rule = Rule(id="w", action=Action.BLOCK, relations=("ledger",), relation_mode="write")
    assert one(rule, stmt("UPDATE", relations=(rel("ledger", "write"),))).action is Action.BLOCK
    assert one(rule, stmt(relations=(rel("ledger", "read"),))).action is Action.ALLOW


# ------------------------------------------------------------------ scope


def test_scope_by_role_principal_and_database() -> None:
    rule = Rule(
        id="scoped", action=Action.BLOCK, roles=("app*",),
        principals=("github:repo:acme/*",), databases=("warehouse",),
    )
    assert one(rule, stmt()).action is Action.BLOCK
    for ctx in (
        DecisionContext("admin", CTX.principal, CTX.database),
        DecisionContext(CTX.role, "okta:alice", CTX.database),
        DecisionContext(CTX.role, CTX.principal, "postgres"),
    ):
        assert one(rule, stmt(), ctx).action is Action.ALLOW


def test_role_default_action_applies_when_nothing_matches() -> None:
    policy = Policy([], default_action=Action.ALLOW, role_defaults={"ro": Action.BLOCK})
    ro = policy.context("ro", "x:y", "db")
    d = decide(ro, analysis(stmt()), policy)
    assert (d.action, d.rule_id, d.sqlstate) == (Action.BLOCK, DEFAULT_RULE_ID, "42501")
    assert "role ro" in d.message
    assert decide(policy.context("rw", "x:y", "db"), analysis(stmt()), policy).allowed


# ------------------------------------------------------------------ evaluation order


def test_first_matching_configured_rule_wins() -> None:
    rules = [
        Rule(id="first", action=Action.ALLOW, kinds=frozenset({"SELECT"})),
        Rule(id="second", action=Action.BLOCK),
    ]
    assert decide(CTX, analysis(stmt()), rules).rule_id == "first"
    assert decide(CTX, analysis(stmt("INSERT")), rules).rule_id == "second"


def test_a_broad_allow_does_not_loosen_the_baseline() -> None:
    select_all = Rule(id="analysts", action=Action.ALLOW, kinds=frozenset({"SELECT"}))
    policy = Policy([select_all, *BASELINE])
    d = decide_sql(CTX, "SELECT pg_read_file('/etc/passwd')", policy)
    assert (d.action, d.rule_id) == (Action.BLOCK, "baseline.server_files")
    assert decide_sql(CTX, "SELECT 1", policy).rule_id == "analysts"


def test_overrides_loosen_only_the_named_baseline_rules() -> None:
    migrate = Rule(
        id="migrations", action=Action.ALLOW, roles=("migrator",), kinds=frozenset({"DDL"}),
        overrides=("baseline.drop",),
    )
    policy = Policy([migrate, *BASELINE])
    migrator = policy.context("migrator", "x:y", "db")
    assert decide_sql(migrator, "DROP TABLE t", policy).rule_id == "migrations"
    # Not named: DROP DATABASE stays blocked for the migrator.
    d = decide_sql(migrator, "DROP DATABASE prod", policy)
    assert d.rule_id == "baseline.drop_database" and d.action is Action.BLOCK
    # Other roles are out of the rule's scope.
    assert decide_sql(CTX, "DROP TABLE t", policy).rule_id == "baseline.drop"


def test_configured_rules_can_tighten_the_baseline() -> None:
    no_ddl = Rule(id="no-ddl", action=Action.BLOCK, kinds=frozenset({"DDL"}))
    d = decide_sql(CTX, "DROP TABLE t", Policy([no_ddl, *BASELINE]))
    assert (d.action, d.rule_id) == (Action.BLOCK, "no-ddl")


def test_strictest_statement_wins_and_ties_go_to_the_first() -> None:
    rules = [
        Rule(id="ins", action=Action.APPROVE, kinds=frozenset({"INSERT"})),
        Rule(id="del", action=Action.BLOCK, kinds=frozenset({"DELETE"})),
    ]
    d = decide(CTX, analysis(stmt(), stmt("INSERT"), stmt("DELETE"), stmt("INSERT")), rules)
    assert (d.action, d.rule_id, d.statement_index) == (Action.BLOCK, "del", 2)
    d = decide(CTX, analysis(stmt("INSERT"), stmt("INSERT")), rules)
    assert d.statement_index == 0
    per = decide_statements(CTX, analysis(stmt(), stmt("DELETE")), rules)
    assert [(x.action, x.statement_index) for x in per] == [(Action.ALLOW, 0), (Action.BLOCK, 1)]


def test_multi_statement_string_refused_as_a_whole() -> None:
    d = decide_sql(CTX, "SELECT 1; DROP DATABASE prod", Policy(BASELINE))
    assert d.action is Action.BLOCK and d.statement_index == 1


# ------------------------------------------------------------------ observe mode


def test_observe_rules_record_but_do_not_enforce() -> None:
    rules = [
        Rule(id="watch-deletes", action=Action.BLOCK, kinds=frozenset({"DELETE"}), observe=True),
        Rule(id="watch-all", action=Action.APPROVE, observe=True),
        Rule(id="allow-dml", action=Action.ALLOW, kinds=frozenset({"DELETE", "SELECT"})),
    ]
    d = decide(CTX, analysis(stmt("DELETE"), stmt()), rules)
    assert d.action is Action.ALLOW and d.rule_id == "allow-dml"
    assert d.observed == ("watch-deletes", "watch-all")
    assert decide(CTX, analysis(stmt()), rules).observed == ("watch-all",)


# ------------------------------------------------------------------ FunctionCall


def test_function_call_message_is_blocked_by_the_baseline() -> None:
    d = function_call_decision(CTX)
    assert (d.action, d.rule_id, d.sqlstate) == (Action.BLOCK, "baseline.function_call", "42501")


def test_function_call_can_be_allowed_explicitly() -> None:
    lo = Rule(id="jdbc-lo", action=Action.ALLOW, kinds=frozenset({"FUNCTION_CALL"}),
              roles=("app",), overrides=("baseline.function_call",))
    assert function_call_decision(CTX, Policy([lo, *BASELINE])).rule_id == "jdbc-lo"
    assert function_call_decision(CTX, Policy([])).allowed  # no baseline: default action


def test_policy_scope_key_only_includes_what_rules_use() -> None:
    plain = Policy(BASELINE)
    assert plain.scope_key(CTX) == ("app", "", "", Action.ALLOW)
    by_principal = Policy([Rule(id="p", action=Action.BLOCK, principals=("okta:*",))])
    assert by_principal.scope_key(CTX)[1] == CTX.principal
