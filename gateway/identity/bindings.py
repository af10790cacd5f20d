"""Principal → role: which least-privilege role a verified caller gets, and where it may go.

Owns the matching of a :class:`~gateway.identity.principal.Principal` against the
``[[bindings]]`` of the configuration, the database allowlist of a role, and the two
refusals that follow from them (:class:`NoRoleBound`, :class:`DatabaseNotAllowed`).

Evaluation order — deterministic, and the same on every worker:

1. Bindings are tried **in file order**; the **first** binding whose every condition holds
   decides the role. Later bindings are not looked at, so put narrow bindings before
   broad ones (a catch-all ``issuer = "*"``, ``subject = "*"`` belongs last, if anywhere).
2. Within one binding all conditions must hold (AND); a condition left at its default
   always holds:

   * ``issuer``: ``"*"`` matches every principal (OIDC, static key and certificate);
     otherwise it must equal the principal's issuer — an ``[[issuers]]`` name, or
     ``"static"`` / ``"cert"``;
   * ``subject``: a case-sensitive :func:`fnmatch.fnmatchcase` glob over the whole
     subject. ``*`` also crosses ``/`` and ``:``, so ``repo:acme/etl*`` matches
     ``repo:acme/etl-fork:...`` too; anchor patterns with the separators that follow;
   * ``client_id``: exact equality with the principal's ``azp`` / ``client_id``;
   * ``groups``: the principal is in **at least one** of the listed groups;
   * ``claims``: **every** listed claim is present and equal to the configured string.
     String claims compare as they are; booleans as ``true`` / ``false``, numbers as
     their JSON spelling; arrays, objects and ``null`` never match. Only top-level
     claims are looked at.
3. No binding matches → :class:`NoRoleBound` (SQLSTATE 28000), and nothing is sent
   upstream. There is no implicit default role in this mode.

A binding that matches but names a role that does not exist refuses the principal rather
than falling through to a later (possibly broader) binding. ``load_config`` makes that
impossible; the check is a second line of defence for hand-built configurations.

Single-role mode (no ``[[roles]]``) never reaches this module's :func:`resolve_role`: the
caller uses the ``[upstream]`` credential for everyone.

It does not know how a principal was verified, how the upstream connection is made, or
anything about policy; it must not import ``gateway.server`` or ``gateway.policy``.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from typing import Final

from gateway.config import BindingConfig, ClientEntry, RoleConfig, parse_rfc3339
from gateway.identity.principal import Principal

__all__ = [
    "ANY_DATABASE",
    "DatabaseNotAllowed",
    "NoRoleBound",
    "binding_matches",
    "check_database",
    "resolve_role",
    "static_key_expiry",
]

INVALID_AUTHORIZATION: Final = "28000"
INSUFFICIENT_PRIVILEGE: Final = "42501"
#: In ``RoleConfig.databases``, allows every database.
ANY_DATABASE: Final = "*"
# Subjects and database names come from the caller; a message is shown to the client and
# logged, so keep it on one line and of bounded length.
_MAX_QUOTED_CHARS: Final = 200


def _printable(value: str) -> str:
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in value[:_MAX_QUOTED_CHARS])
    return cleaned + ("..." if len(value) > _MAX_QUOTED_CHARS else "")


class NoRoleBound(Exception):
    """No binding maps this principal to a role. ``message`` is safe to show the client."""

    sqlstate: Final = INVALID_AUTHORIZATION

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.message = f'no role bound to principal "{_printable(principal.describe())}"'
        super().__init__(self.message)


class DatabaseNotAllowed(Exception):
    """The principal's role may not open the requested database."""

    sqlstate: Final = INSUFFICIENT_PRIVILEGE

    def __init__(self, role: str, database: str) -> None:
        self.role = role
        self.database = database
        self.message = f'role "{role}" may not open database "{_printable(database)}"'
        super().__init__(self.message)


def _claim_text(value: object) -> str | None:
    """A claim value as a binding compares it, or None if it is not a scalar."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        # JSON spelling: a token's `"email_verified": true` matches the string "true".
        return json.dumps(value)
    return None


def binding_matches(binding: BindingConfig, principal: Principal) -> bool:
    """True if every condition of ``binding`` holds for ``principal``."""
    if binding.issuer != "*" and binding.issuer != principal.issuer:
        return False
    if not fnmatch.fnmatchcase(principal.subject, binding.subject):
        return False
    if binding.client_id and binding.client_id != principal.client_id:
        return False
    if binding.groups and principal.groups.isdisjoint(binding.groups):
        return False
    for name, expected in binding.claims.items():
        if name not in principal.claims or _claim_text(principal.claims[name]) != expected:
            return False
    return True


def resolve_role(
    principal: Principal, bindings: Sequence[BindingConfig], roles: Sequence[RoleConfig]
) -> RoleConfig:
    """The role of the first binding (in order) that matches ``principal``.

    Raises :class:`NoRoleBound` when none matches, or when the matching binding names a
    role missing from ``roles``.
    """
    for binding in bindings:
        if binding_matches(binding, principal):
            for role in roles:
                if role.name == binding.role:
                    return role
            # Fail closed: the operator meant this principal to get *that* role.
            raise NoRoleBound(principal)
    raise NoRoleBound(principal)


def check_database(role: RoleConfig, database: str) -> None:
    """Raise :class:`DatabaseNotAllowed` unless ``role`` may open ``database``.

    ``databases`` holds exact names, or ``"*"`` for any; names are not globs, so that a
    database whose name contains ``*`` or ``?`` cannot widen an allowlist by accident.
    """
    if ANY_DATABASE in role.databases or database in role.databases:
        return
    raise DatabaseNotAllowed(role.name, database)


def static_key_expiry(entry: ClientEntry) -> float | None:
    """Unix time after which a static key is refused, or None if it never expires.

    ``entry.expires`` has been validated by ``load_config``; a value that does not parse
    raises ``ValueError``.
    """
    if not entry.expires:
        return None
    return parse_rfc3339(entry.expires).timestamp()
