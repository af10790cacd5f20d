"""Client authentication: who is connecting, as a :class:`Principal`.

The server asks the client for a password (inside TLS) and hands it here together with
the startup ``user``. This module decides who the caller is or refuses with an
authentication SQLSTATE. For now the only source of identity is a static secret per
client user, stored as a salted scrypt hash; OIDC tokens and client certificates plug
into the same :class:`ClientAuthenticator` seam.

Must not import ``gateway.server`` or ``gateway.policy``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from gateway.config import ClientEntry
from gateway.identity.principal import Principal
from gateway.identity.static_secrets import VerifiedSecretCache, hash_secret, verify_secret

INVALID_PASSWORD = "28P01"
INVALID_AUTHORIZATION = "28000"


class AuthenticationFailed(Exception):
    """Authentication was refused. ``message`` is safe to show the client."""

    def __init__(self, message: str, sqlstate: str = INVALID_PASSWORD) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


class ClientAuthenticator(Protocol):
    async def authenticate(self, user: str, password: str, peer: str) -> Principal: ...


class StaticSecretAuthenticator:
    """Static secrets per client user, verified against their scrypt hashes."""

    def __init__(self, clients: Sequence[ClientEntry]) -> None:
        self._by_user = {c.user: c for c in clients}
        self._cache = VerifiedSecretCache()
        # Unknown users are checked against a real hash too, so that response time does
        # not tell which client users exist.
        self._decoy = hash_secret("pgwarden-decoy")

    async def authenticate(self, user: str, password: str, peer: str) -> Principal:
        entry = self._by_user.get(user)
        stored = entry.secret_hash if entry is not None else self._decoy
        ok = self._cache.check(stored, password)
        if not ok:
            ok = await asyncio.to_thread(verify_secret, stored, password)
            if ok:
                self._cache.remember(stored, password)
        if entry is None or not ok:
            raise AuthenticationFailed(f'password authentication failed for user "{user}"')
        return Principal(method="static", issuer="static", subject=entry.user, label=entry.label)
