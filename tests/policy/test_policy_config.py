"""The [policy] and [[rules]] configuration: decoding, validation with file:line, docs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import msgspec
import pytest

from gateway.config import (
    ConfigError,
    ConfigIssue,
    PolicyConfig,
    RoleConfig,
    RuleConfig,
    load_config,
)
from gateway.policy.check import main as check_main
from gateway.policy.engine import Policy, decide_sql
from gateway.policy.model import Action

REPO = Path(__file__).resolve().parents[2]

HEAD = """\
[tls]
allow_plaintext_loopback = true

[upstream]
user = "postgres"
"""

ROLES = """
[[roles]]
name = "app"
upstream_user = "app"

[[roles]]
name = "readonly"
upstream_user = "ro"
default_action = "block"

[[bindings]]
role = "app"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pgwarden.toml"
    path.write_text(HEAD + textwrap.dedent(text))
    return path


def issues(path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.issues


def test_defaults() -> None:
    assert PolicyConfig() == PolicyConfig(
        default_action="allow", baseline=True, cache_size=10000, exact_cache_size=10000
    )
    assert RoleConfig(name="r", upstream_user="u").default_action is None


def test_rules_and_role_defaults_become_a_policy(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ROLES + """
        [policy]
        default_action = "approve"

        [[rules]]
        id = "ro-select"
        roles = ["readonly"]
        kinds = ["select"]
        action = "allow"

        [[rules]]
        id = "migrations"
        roles = ["app"]
        kinds = ["DDL"]
        action = "allow"
        overrides = ["baseline.drop"]
    """))
    assert [r.id for r in cfg.rules] == ["ro-select", "migrations"]
    policy = Policy.from_config(cfg)
    assert policy.context("readonly", "x:y", "db").default_action is Action.BLOCK
    assert policy.context("app", "x:y", "db").default_action is Action.APPROVE
    ro = policy.context("readonly", "x:y", "db")
    assert decide_sql(ro, "SELECT 1", policy).rule_id == "ro-select"
    assert decide_sql(ro, "INSERT INTO t VALUES (1)", policy).action is Action.BLOCK
    app = policy.context("app", "x:y", "db")
    assert decide_sql(app, "DROP TABLE t", policy).rule_id == "migrations"
    assert decide_sql(app, "DROP DATABASE d", policy).action is Action.BLOCK


def test_cache_from_config(tmp_path: Path) -> None:
    from gateway.policy.cache import DecisionCache

    cfg = load_config(write(tmp_path, "[policy]\ncache_size = 2\nexact_cache_size = 0\n"))
    cache = DecisionCache.from_config(cfg)
    ctx = cache.policy.context("r", "x:y", "db")
    for i in range(4):
        cache.decide(ctx, f"SELECT c{i} FROM t")
    assert (cache.stats().normalized_size, cache.stats().exact_size) == (2, 0)


def test_baseline_can_be_switched_off(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[policy]\nbaseline = false\n"))
    policy = Policy.from_config(cfg)
    assert decide_sql(policy.context("r", "x:y", "db"), "DROP DATABASE d", policy).allowed


def test_invalid_rules_are_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, ROLES + """
        [policy]
        cache_size = -1

        [[rules]]
        id = "a"
        action = "block"
        kinds = ["SELEKT"]
        flags = ["nowhere"]
        categories = ["reads"]

        [[rules]]
        id = "a"
        action = "allow"
        roles = ["nobody"]
        overrides = ["baseline.nothing"]

        [[rules]]
        id = "baseline.mine"
        action = "block"
        functions = [""]
    """)
    found = {(i.key, i.line) for i in issues(path)}
    text = path.read_text().splitlines()

    def line(fragment: str, after: int = 0) -> int:
        return next(n for n, t in enumerate(text, 1) if n > after and fragment in t)

    assert ("policy.cache_size", line("cache_size")) in found
    assert ("rules[0].kinds", line("SELEKT")) in found
    assert ("rules[0].flags", line("nowhere")) in found
    assert ("rules[0].categories", line("reads")) in found
    second = line('id = "a"', line('id = "a"'))
    assert ("rules[1].id", second) in found
    assert ("rules[1].roles", line("nobody")) in found
    assert ("rules[1].overrides", line("baseline.nothing")) in found
    assert ("rules[2].id", line("baseline.mine")) in found
    assert ("rules[2].functions", line('functions = [""]')) in found
    messages = " | ".join(str(i) for i in issues(path))
    assert "unknown kind 'SELEKT' (did you mean 'SELECT'?)" in messages
    assert "unknown flag 'nowhere' (did you mean 'no_where'?)" in messages
    assert "duplicate rule id 'a' (also rules[0])" in messages
    assert str(path) + ":" in messages


def test_wrong_types_and_unknown_keys(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [[rules]]
        id = "x"
        action = "deny"
        relation = ["t"]
    """)
    keys = {i.key for i in issues(path)}
    assert {"rules[0].action", "rules[0].relation"} <= keys


def test_docs_mention_every_policy_key() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    for struct in (PolicyConfig, RuleConfig, RoleConfig):
        for field in msgspec.structs.fields(struct):
            assert f"`{field.name}`" in doc, f"{struct.__name__}.{field.name} is undocumented"
    assert "## `[policy]`" in doc and "## `[[rules]]`" in doc


# ------------------------------------------------------------------ pgwarden policy check


def test_check_prints_decision_rule_and_classification(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, ROLES + """
        [[rules]]
        id = "watch-writes"
        categories = ["write"]
        action = "block"
        observe = true
    """)
    status = check_main(["--config", str(path), "--role", "app",
                         "UPDATE accounts SET x = 1 WHERE id = 2; DROP TABLE public.accounts"])
    out = capsys.readouterr().out
    assert status == 1
    assert "statement 0: allow   default" in out
    assert "statement 1: approve baseline.drop" in out
    assert "command='DROP TABLE'" in out and "public.accounts (write)" in out
    assert "observed:  watch-writes would block" in out
    assert "overall: approve (baseline.drop, statement 1) SQLSTATE 42501: requires approval" in out


def test_check_json_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, ROLES)
    sql = tmp_path / "q.sql"
    sql.write_text("SET extra_float_digits = 3;\nSELECT * FROM t WHERE id = 1;\n")
    status = check_main(["--config", str(path), "--role", "app", "--json", "--file", str(sql)])
    doc = json.loads(capsys.readouterr().out)
    assert status == 0
    assert doc["decision"] == "allow"
    assert [s["kind"] for s in doc["statements"]] == ["SET", "SELECT"]
    assert doc["statements"][1]["relations"] == [{"schema": None, "name": "t", "mode": "read"}]


def test_check_syntax_error_and_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, ROLES)
    assert check_main(["--config", str(path), "--role", "app", "SELEC 1"]) == 1
    assert "overall: block (syntax) SQLSTATE 42601" in capsys.readouterr().out
    assert check_main(["--config", str(path), "--role", "nobody", "SELECT 1"]) == 2
    assert "no role named 'nobody'" in capsys.readouterr().err
    assert check_main(["--config", str(tmp_path / "missing.toml"), "--role", "a", "x"]) == 2
