"""Who is connecting: the :class:`Principal` every authentication method produces.

A principal is the verified identity of a caller — an OIDC token's issuer and subject, a
client certificate's SPIFFE ID or common name, or a legacy static key's name — plus the
attributes bindings match on (client id, groups, claims) and when the identity expires.
It is plain data: it knows nothing about how it was verified or what role it maps to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Method = Literal["oidc", "static", "cert"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    method: Method
    #: The configured issuer *name* for OIDC; "static" or "cert" for the other methods.
    issuer: str
    subject: str
    client_id: str = ""
    groups: frozenset[str] = frozenset()
    claims: Mapping[str, object] = field(default_factory=dict)
    #: Unix time after which the credential is no longer valid (None: no expiry).
    expires_at: float | None = None
    label: str = ""

    def describe(self) -> str:
        """``issuer:subject``, as shown in logs and in upstream application_name."""
        return f"{self.issuer}:{self.subject}"
