"""Authenticator: static keys (with expiry), token routing, certificate identities."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import ClientEntry, TlsConfig
from gateway.identity.authenticate import AuthenticationFailed, Authenticator
from gateway.identity.static_secrets import hash_secret

KEY = "legacy-key-123"


def make(expires: str = "", clock: float = 1_800_000_000.0) -> Authenticator:
    entry = ClientEntry(user="nightly", secret_hash=hash_secret(KEY), label="cron", expires=expires)
    return Authenticator([entry], None, TlsConfig(), clock=lambda: clock)


def run(auth: Authenticator, user: str, password: str) -> object:
    return asyncio.run(auth.authenticate(user, password, "127.0.0.1:1"))


def test_static_key_principal() -> None:
    principal = run(make(), "nightly", KEY)
    assert principal == run(make(), "nightly", KEY)
    assert principal.subject == "nightly"
    assert principal.method == "static"
    assert principal.label == "cron"


@pytest.mark.parametrize(("user", "password"), [("nightly", "wrong"), ("nobody", KEY)])
def test_wrong_key_or_unknown_user(user: str, password: str) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        run(make(), user, password)
    assert info.value.sqlstate == "28P01"
    assert info.value.message == f'password authentication failed for user "{user}"'


def test_expired_static_key_is_refused() -> None:
    auth = make(expires="2026-01-01T00:00:00Z", clock=1_800_000_000.0)  # 2027
    with pytest.raises(AuthenticationFailed) as info:
        run(auth, "nightly", KEY)
    assert info.value.sqlstate == "28000"
    assert "expired" in info.value.message and KEY not in info.value.message


def test_unexpired_static_key_carries_its_expiry() -> None:
    principal = run(make(expires="2030-01-01T00:00:00+00:00"), "nightly", KEY)
    assert principal.expires_at == 1893456000.0


def test_token_without_issuers_is_refused_clearly() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    with pytest.raises(AuthenticationFailed, match="token authentication is not configured"):
        run(make(), "ci", token)


def cert(cn: str | None, uri: str | None) -> dict[str, object]:
    out: dict[str, object] = {"notAfter": "Jan  1 00:00:00 2030 GMT"}
    if cn:
        out["subject"] = ((("commonName", cn),),)
    if uri:
        out["subjectAltName"] = (("URI", uri), ("DNS", "x.example"))
    return out


@pytest.mark.parametrize(
    ("mode", "peercert", "subject"),
    [
        ("spiffe_or_cn", cert("box", "spiffe://acme/etl"), "spiffe://acme/etl"),
        ("spiffe_or_cn", cert("box", None), "box"),
        ("cn", cert("box", "spiffe://acme/etl"), "box"),
        ("spiffe", cert("box", "spiffe://acme/etl"), "spiffe://acme/etl"),
    ],
)
def test_certificate_identity(mode: str, peercert: dict[str, object], subject: str) -> None:
    auth = Authenticator([], None, TlsConfig(client_cert_identity=mode))  # type: ignore[arg-type]
    principal = auth.from_certificate(peercert)
    assert principal is not None
    assert (principal.method, principal.issuer, principal.subject) == ("cert", "cert", subject)
    assert principal.expires_at == 1893456000.0


def test_certificate_without_the_required_identity() -> None:
    auth = Authenticator([], None, TlsConfig(client_cert_identity="spiffe"))
    with pytest.raises(AuthenticationFailed, match="no usable identity"):
        auth.from_certificate(cert("box", None))
    assert auth.from_certificate(None) is None
