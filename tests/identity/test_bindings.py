"""gateway.identity.bindings: principal -> role in file order, database allowlists."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import pytest

from gateway.config import BindingConfig, ClientEntry, RoleConfig
from gateway.identity.bindings import (
    DatabaseNotAllowed,
    NoRoleBound,
    binding_matches,
    check_database,
    resolve_role,
    static_key_expiry,
)
from gateway.identity.principal import Principal

ETL = RoleConfig(name="etl", upstream_user="etl_user", databases=["warehouse"])
ANALYTICS = RoleConfig(name="analytics", upstream_user="analyst")
ADMIN = RoleConfig(name="admin", upstream_user="admin_user", databases=["app", "ops"])
ROLES = [ETL, ANALYTICS, ADMIN]

GITHUB_MAIN = "repo:acme/etl:ref:refs/heads/main"


def oidc(
    subject: str = GITHUB_MAIN,
    issuer: str = "github",
    client_id: str = "",
    groups: frozenset[str] = frozenset(),
    claims: Mapping[str, object] | None = None,
) -> Principal:
    return Principal(
        method="oidc", issuer=issuer, subject=subject, client_id=client_id, groups=groups,
        claims=dict(claims or {}),
    )


def bind(role: str, **conditions: object) -> BindingConfig:
    return BindingConfig(role=role, **conditions)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("binding", "matches"),
    [
        (bind("etl"), True),  # every condition at its default
        (bind("etl", issuer="github"), True),
        (bind("etl", issuer="gitlab"), False),
        (bind("etl", issuer="static"), False),
        (bind("etl", subject=GITHUB_MAIN), True),
        (bind("etl", subject="repo:acme/etl:*"), True),
        (bind("etl", subject="repo:acme/*:ref:refs/heads/main"), True),
        (bind("etl", subject="repo:acme/etl:ref:refs/heads/ma?n"), True),
        (bind("etl", subject="repo:acme/etl:ref:refs/heads/[mp]ain"), True),
        (bind("etl", subject="repo:acme/etl"), False),  # globs match the whole subject
        (bind("etl", subject="REPO:ACME/*"), False),  # case-sensitive on every platform
        (bind("etl", subject="repo:acme/etl:environment:*"), False),
    ],
)
def test_issuer_and_subject(binding: BindingConfig, matches: bool) -> None:
    assert binding_matches(binding, oidc()) is matches


def test_star_issuer_matches_every_method() -> None:
    catch_all = bind("analytics")
    for principal in (
        oidc(),
        Principal(method="static", issuer="static", subject="nightly-etl"),
        Principal(method="cert", issuer="cert", subject="spiffe://acme.org/ns/etl/sa/loader"),
    ):
        assert binding_matches(catch_all, principal)


def test_client_id_is_exact() -> None:
    binding = bind("etl", client_id="0oa1b2c3")
    assert binding_matches(binding, oidc(client_id="0oa1b2c3"))
    assert not binding_matches(binding, oidc(client_id="0oa1b2c3x"))
    assert not binding_matches(binding, oidc(client_id="0OA1B2C3"))
    assert not binding_matches(binding, oidc())


def test_groups_need_one_in_common() -> None:
    binding = bind("analytics", groups=["data-eng", "bi"])
    assert binding_matches(binding, oidc(groups=frozenset({"bi"})))
    assert binding_matches(binding, oidc(groups=frozenset({"ops", "data-eng", "bi"})))
    assert not binding_matches(binding, oidc(groups=frozenset({"ops"})))
    assert not binding_matches(binding, oidc())


def test_claims_must_all_be_equal() -> None:
    binding = bind("etl", claims={"repository_owner": "acme", "environment": "prod"})
    assert binding_matches(
        binding, oidc(claims={"repository_owner": "acme", "environment": "prod", "x": 1})
    )
    assert not binding_matches(binding, oidc(claims={"repository_owner": "acme"}))
    assert not binding_matches(
        binding, oidc(claims={"repository_owner": "acme", "environment": "staging"})
    )


@pytest.mark.parametrize(
    ("value", "expected", "matches"),
    [
        (True, "true", True),
        (False, "false", True),
        (True, "True", False),  # JSON spelling, not Python's
        (1, "true", False),
        (42, "42", True),
        (1.5, "1.5", True),
        ("42", "42", True),
        (["acme"], "acme", False),  # arrays never match a string
        ({"a": "b"}, "{'a': 'b'}", False),
        (None, "None", False),
        (None, "null", False),
    ],
)
def test_claim_values_compare_as_strings(value: object, expected: str, matches: bool) -> None:
    binding = bind("etl", claims={"c": expected})
    assert binding_matches(binding, oidc(claims={"c": value})) is matches


def test_all_conditions_are_anded() -> None:
    binding = bind(
        "etl", issuer="github", subject="repo:acme/*", client_id="cid",
        groups=["g"], claims={"k": "v"},
    )
    full = oidc(client_id="cid", groups=frozenset({"g"}), claims={"k": "v"})
    assert binding_matches(binding, full)
    for broken in (
        oidc(issuer="gitlab", client_id="cid", groups=frozenset({"g"}), claims={"k": "v"}),
        oidc(subject="repo:other/x", client_id="cid", groups=frozenset({"g"}), claims={"k": "v"}),
        oidc(client_id="other", groups=frozenset({"g"}), claims={"k": "v"}),
        oidc(client_id="cid", groups=frozenset({"h"}), claims={"k": "v"}),
        oidc(client_id="cid", groups=frozenset({"g"}), claims={"k": "w"}),
    ):
        assert not binding_matches(binding, broken)


# --------------------------------------------------------------------------- resolution


def test_first_matching_binding_wins_in_file_order() -> None:
    bindings = [
        bind("admin", subject="repo:acme/etl:ref:refs/heads/main", groups=["ops"]),
        bind("etl", subject="repo:acme/etl:*"),
        bind("analytics"),  # catch-all, last
    ]
    assert resolve_role(oidc(groups=frozenset({"ops"})), bindings, ROLES) is ADMIN
    assert resolve_role(oidc(), bindings, ROLES) is ETL
    assert resolve_role(oidc(subject="svc-bi"), bindings, ROLES) is ANALYTICS
    # The same bindings in another order give another answer: order is the contract.
    assert resolve_role(oidc(groups=frozenset({"ops"})), bindings[::-1], ROLES) is ANALYTICS


def test_role_is_looked_up_by_name_not_position() -> None:
    assert resolve_role(oidc(), [bind("admin")], ROLES) is ADMIN


def test_no_match_raises_28000_with_issuer_and_subject() -> None:
    with pytest.raises(NoRoleBound) as info:
        resolve_role(oidc(), [bind("etl", issuer="gitlab")], ROLES)
    assert str(info.value) == f'no role bound to principal "github:{GITHUB_MAIN}"'
    assert info.value.message == str(info.value)
    assert info.value.sqlstate == "28000"
    assert info.value.principal.subject == GITHUB_MAIN


def test_no_bindings_at_all_refuses() -> None:
    with pytest.raises(NoRoleBound):
        resolve_role(oidc(), [], ROLES)


def test_binding_to_a_missing_role_fails_closed() -> None:
    # A matching binding whose role is missing must not fall through to a broader one.
    bindings = [bind("ghost", subject="repo:acme/*"), bind("admin")]
    with pytest.raises(NoRoleBound):
        resolve_role(oidc(), bindings, ROLES)


def test_message_neutralises_control_characters_and_length() -> None:
    principal = oidc(subject="evil\nFAKE LOG LINE" + "x" * 1000)
    with pytest.raises(NoRoleBound) as info:
        resolve_role(principal, [], ROLES)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith('no role bound to principal "github:evil?FAKE LOG LINE')
    assert message.endswith('..."')
    assert len(message) < 300


# --------------------------------------------------------------------------- databases


def test_database_allowlist() -> None:
    check_database(ETL, "warehouse")
    check_database(ANALYTICS, "anything")  # default ["*"]
    check_database(ADMIN, "ops")
    with pytest.raises(DatabaseNotAllowed) as info:
        check_database(ETL, "payroll")
    assert str(info.value) == 'role "etl" may not open database "payroll"'
    assert info.value.sqlstate == "42501"
    assert (info.value.role, info.value.database) == ("etl", "payroll")


def test_database_names_are_exact_not_globs() -> None:
    role = RoleConfig(name="r", upstream_user="u", databases=["app_*"])
    check_database(role, "app_*")
    with pytest.raises(DatabaseNotAllowed):
        check_database(role, "app_prod")
    with pytest.raises(DatabaseNotAllowed):
        check_database(ETL, "Warehouse")


def test_database_message_is_one_line() -> None:
    with pytest.raises(DatabaseNotAllowed) as info:
        check_database(ETL, "x\r\ny")
    assert str(info.value) == 'role "etl" may not open database "x??y"'


# --------------------------------------------------------------------------- static keys


def test_static_key_expiry() -> None:
    assert static_key_expiry(ClientEntry(user="a", secret_hash="h")) is None
    entry = ClientEntry(user="a", secret_hash="h", expires="2030-01-31T00:00:00+01:00")
    expected = dt.datetime(2030, 1, 30, 23, 0, tzinfo=dt.UTC).timestamp()
    assert static_key_expiry(entry) == expected
    with pytest.raises(ValueError, match="RFC 3339"):
        static_key_expiry(ClientEntry(user="a", secret_hash="h", expires="2030-01-31"))
