"""``pgwarden policy check``: a dry run of the policy for policy authors.

Loads the configuration, decides the given SQL for a role exactly as a session would
(same rules, same baseline, same evaluation order, no cache) and prints, per statement,
the decision, the rule that made it, and the classification it was made from::

    pgwarden policy check --config pgwarden.toml --role etl_loader "DELETE FROM t"
    pgwarden policy check --config pgwarden.toml --role etl_loader --file queries.sql

Exit status: 0 when the string would be allowed, 1 when it would be refused (block or
approve, syntax errors included), 2 when the configuration or the arguments are wrong.
``gateway.cli`` wires this in as ``pgwarden policy check``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from gateway.config import ConfigError, load_config
from gateway.policy.engine import Policy, analyze_or_decision, decide, decide_statements
from gateway.policy.model import Action, Decision
from gateway.sql import Statement

__all__ = ["main"]

DEFAULT_PRINCIPAL = "cli:policy-check"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pgwarden policy check",
        description="Show how the policy decides SQL for a role (nothing is executed).",
    )
    p.add_argument("--config", required=True, help="pgwarden TOML configuration")
    p.add_argument("--role", required=True, help="role name (a [[roles]] entry)")
    p.add_argument("--database", default="", help="database the session would open")
    p.add_argument(
        "--principal", default=DEFAULT_PRINCIPAL,
        help=f"principal as issuer:subject (default {DEFAULT_PRINCIPAL})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("sql", nargs="?", help="the SQL string to decide")
    source.add_argument("--file", help="read the SQL (one string, any statements) from a file")
    return p


def _statement_dict(stmt: Statement, decision: Decision) -> dict[str, object]:
    return {
        "index": decision.statement_index,
        "text": stmt.text,
        "decision": decision.action.label,
        "rule": decision.rule_id,
        "message": decision.message,
        "sqlstate": decision.sqlstate,
        "observed": list(decision.observed),
        "kind": stmt.kind,
        "command": stmt.command,
        "category": stmt.category,
        "relations": [
            {"schema": r.schema, "name": r.name, "mode": r.mode} for r in stmt.relations
        ],
        "functions": list(stmt.functions),
        "flags": sorted(stmt.flags),
    }


def _print_text(
    out: TextIO, statements: list[dict[str, object]], overall: Decision, policy: Policy
) -> None:
    for entry in statements:
        print(
            f"statement {entry['index']}: {entry['decision']:<7} {entry['rule']}", file=out
        )
        print(f"  sql:       {entry['text']}", file=out)
        print(
            f"  class:     kind={entry['kind']} command={entry['command']!r} "
            f"category={entry['category']}",
            file=out,
        )
        relations = entry["relations"]
        assert isinstance(relations, list)
        if relations:
            names = ", ".join(
                f"{r['schema'] + '.' if r['schema'] else ''}{r['name']} ({r['mode']})"
                for r in relations
            )
            print(f"  relations: {names}", file=out)
        for key in ("functions", "flags"):
            values = entry[key]
            assert isinstance(values, list)
            if values:
                print(f"  {key + ':':<10} {', '.join(values)}", file=out)
        if entry["message"]:
            print(f"  message:   {entry['message']} (SQLSTATE {entry['sqlstate']})", file=out)
        observed = entry["observed"]
        assert isinstance(observed, list)
        for rule_id in observed:
            rule = policy.rule(rule_id)
            would = rule.action.label if rule is not None else "?"
            print(f"  observed:  {rule_id} would {would} (observe mode)", file=out)
    where = f", statement {overall.statement_index}" if overall.statement_index >= 0 else ""
    line = f"overall: {overall.action.label} ({overall.rule_id}{where})"
    if overall.sqlstate:
        line += f" SQLSTATE {overall.sqlstate}: {overall.message}"
    print(line, file=out)


def main(argv: list[str] | None = None) -> int:
    """Run ``pgwarden policy check``; returns the exit status (see module docstring)."""
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if cfg.roles and args.role not in {role.name for role in cfg.roles}:
        known = ", ".join(sorted(role.name for role in cfg.roles))
        print(f"no role named {args.role!r} (roles: {known})", file=sys.stderr)
        return 2
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as fh:
                sql = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{args.file}: cannot read: {exc}", file=sys.stderr)
            return 2
    else:
        sql = args.sql

    policy = Policy.from_config(cfg)
    ctx = policy.context(args.role, args.principal, args.database)
    analysis = analyze_or_decision(sql)
    if isinstance(analysis, Decision):
        overall, statements = analysis, []
    else:
        overall = decide(ctx, analysis, policy)
        per = decide_statements(ctx, analysis, policy)
        statements = [
            _statement_dict(stmt, d) for stmt, d in zip(analysis.statements, per, strict=True)
        ]
    if args.json:
        doc = {
            "role": ctx.role,
            "principal": ctx.principal,
            "database": ctx.database,
            "default_action": ctx.default_action.label,
            "decision": overall.action.label,
            "rule": overall.rule_id,
            "message": overall.message,
            "sqlstate": overall.sqlstate,
            "statement_index": overall.statement_index,
            "observed": list(overall.observed),
            "statements": statements,
        }
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        _print_text(sys.stdout, statements, overall, policy)
    return 0 if overall.action is Action.ALLOW else 1
