"""Client authentication: who is connecting, as a :class:`Principal`.

Three sources of identity, tried in this order:

1. A client certificate verified against ``tls.client_ca_file`` during the TLS handshake
   (:meth:`Authenticator.from_certificate`): the principal is its SPIFFE ID or common
   name, and no password is asked for.
2. An OIDC JWT given as the password (:func:`gateway.identity.oidc.looks_like_jwt`),
   verified by :class:`~gateway.identity.oidc.OidcVerifier`. The startup ``user`` is
   informational only.
3. A static key for a legacy job: the startup ``user`` names the key, the password is
   checked against its salted scrypt hash, and an expired key is refused.

Every refusal is an :class:`AuthenticationFailed` whose message says what failed without
echoing the credential. Must not import ``gateway.server`` or ``gateway.policy``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.config import ClientEntry, TlsConfig
from gateway.identity.bindings import static_key_expiry
from gateway.identity.oidc import OidcVerifier, TokenRejected, looks_like_jwt
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


class Authenticator:
    """Turns a certificate, a token or a static key into a Principal, or refuses."""

    def __init__(
        self,
        clients: Sequence[ClientEntry],
        oidc: OidcVerifier | None,
        tls: TlsConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._static = {c.user: (c, static_key_expiry(c)) for c in clients}
        self._oidc = oidc
        self._cert_identity = tls.client_cert_identity
        self._clock = clock
        self._cache = VerifiedSecretCache()
        # Unknown users are checked against a real hash too, so that response time does
        # not tell which static keys exist.
        self._decoy = hash_secret("pgwarden-decoy")

    async def authenticate(self, user: str, password: str, peer: str) -> Principal:
        if looks_like_jwt(password):
            if self._oidc is None:
                raise AuthenticationFailed(
                    "token authentication is not configured on this gateway",
                    INVALID_AUTHORIZATION,
                )
            try:
                return await self._oidc.verify(password)
            except TokenRejected as exc:
                raise AuthenticationFailed(exc.reason, exc.sqlstate) from None
        return await self._static_key(user, password)

    async def _static_key(self, user: str, password: str) -> Principal:
        found = self._static.get(user)
        stored = found[0].secret_hash if found is not None else self._decoy
        ok = self._cache.check(stored, password)
        if not ok:
            ok = await asyncio.to_thread(verify_secret, stored, password)
            if ok:
                self._cache.remember(stored, password)
        if found is None or not ok:
            raise AuthenticationFailed(f'password authentication failed for user "{user}"')
        entry, expires = found
        if expires is not None and self._clock() >= expires:
            raise AuthenticationFailed(
                f'static key "{user}" expired at {entry.expires}', INVALID_AUTHORIZATION
            )
        return Principal(
            method="static", issuer="static", subject=entry.user, label=entry.label,
            expires_at=expires,
        )

    def from_certificate(self, peercert: Mapping[str, Any] | None) -> Principal | None:
        """The principal of a client certificate the TLS layer already verified."""
        if not peercert:
            return None
        spiffe = ""
        for kind, value in peercert.get("subjectAltName", ()):
            if kind == "URI" and str(value).startswith("spiffe://"):
                spiffe = str(value)
                break
        common_name = ""
        for rdn in peercert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    common_name = str(value)
        mode = self._cert_identity
        if mode == "spiffe":
            subject = spiffe
        elif mode == "cn":
            subject = common_name
        else:
            subject = spiffe or common_name
        if not subject:
            raise AuthenticationFailed(
                f"client certificate carries no usable identity ({mode})", INVALID_AUTHORIZATION
            )
        not_after = peercert.get("notAfter")
        expires = float(ssl.cert_time_to_seconds(str(not_after))) if not_after else None
        return Principal(method="cert", issuer="cert", subject=subject, expires_at=expires)
