"""gateway.identity.oidc against a real issuer on loopback (gateway.identity.dev_issuer).

Valid tokens for every default algorithm, every attack of issue 4 rejected with a precise
reason that never echoes the token, and key rotation without restarting the verifier.
Asyncio tests run through ``asyncio.run`` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import socket
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest

from gateway.config import IssuerConfig
from gateway.identity import dev_issuer
from gateway.identity.dev_issuer import DISCOVERY_PATH, DevIssuer
from gateway.identity.oidc import (
    INVALID_AUTHORIZATION,
    INVALID_PASSWORD,
    OidcVerifier,
    TokenRejected,
    looks_like_jwt,
)
from gateway.identity.principal import Principal

AUD = "pgwarden"
SECRET = "an-hmac-secret-that-is-long-enough-0123456789"
T = TypeVar("T")


class Clock:
    """Wall time plus an offset the test controls (drives the JWKS refresh rate limit).

    Following real time keeps the verifier's own ``iat`` check consistent with PyJWT's.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def hs_token(payload: dict[str, Any], key: bytes, *, alg: str = "HS256", kid: str = "") -> str:
    """An HMAC-signed JWT built by hand (PyJWT refuses to sign with a PEM key)."""
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def cfg(issuer: DevIssuer | str, name: str = "dev", **options: Any) -> IssuerConfig:
    url = issuer if isinstance(issuer, str) else issuer.url
    options.setdefault("audiences", [AUD])
    options.setdefault("allow_insecure_http", True)
    options.setdefault("http_timeout", 2.0)
    return IssuerConfig(name=name, issuer=url, **options)


async def verify_with(
    configs: Sequence[IssuerConfig], token: str, clock: Callable[[], float] | None = None
) -> Principal:
    verifier = OidcVerifier(configs, clock=clock or time.time)
    await verifier.start()
    try:
        return await verifier.verify(token)
    finally:
        await verifier.close()


def accept(configs: Sequence[IssuerConfig], token: str) -> Principal:
    return run(verify_with(configs, token))


def reject(configs: Sequence[IssuerConfig], token: str) -> TokenRejected:
    with pytest.raises(TokenRejected) as info:
        run(verify_with(configs, token))
    exc = info.value
    # Never echo the token, nor its payload or signature segment.
    for part in [p for p in (token, *token.split(".")) if len(p) > 12]:
        assert part not in exc.reason
        assert part not in str(exc)
    assert exc.sqlstate in (INVALID_AUTHORIZATION, INVALID_PASSWORD)
    return exc


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def dev() -> Iterator[DevIssuer]:
    """A shared issuer for tests that do not change its keys."""
    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture
def fresh() -> Iterator[DevIssuer]:
    """An RS256-only issuer of the test's own, for rotation and fetch counting."""
    with DevIssuer(algorithms=("RS256",)) as issuer:
        yield issuer


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_valid_token_gives_principal(dev: DevIssuer, alg: str) -> None:
    token = dev.mint(
        "etl-loader",
        audience=AUD,
        alg=alg,
        extra_claims={"groups": ["etl", "readers"], "azp": "loader-client"},
    )
    principal = accept([cfg(dev)], token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert principal.method == "oidc"
    assert principal.issuer == "dev"
    assert principal.subject == "etl-loader"
    assert principal.client_id == "loader-client"
    assert principal.groups == frozenset({"etl", "readers"})
    assert principal.expires_at == float(claims["exp"])
    assert dict(principal.claims) == claims
    assert principal.describe() == "dev:etl-loader"


def test_principal_mapping_options(dev: DevIssuer) -> None:
    token = dev.mint(
        "ignored",
        audience=["other", AUD],
        extra_claims={"email": "job@example.com", "roles": "admin", "client_id": "cid"},
    )
    issuer = cfg(dev, subject_claim="email", group_claim="roles")
    principal = accept([issuer], token)
    assert principal.subject == "job@example.com"
    assert principal.groups == frozenset({"admin"})
    assert principal.client_id == "cid"  # azp absent: the next configured claim


def test_unreadable_group_claim_is_rejected(dev: DevIssuer) -> None:
    token = dev.mint("job", audience=AUD, extra_claims={"groups": ["ok", 7]})
    assert "'groups' must be a string or a list of strings" in reject([cfg(dev)], token).reason


def test_token_within_leeway_is_accepted(dev: DevIssuer) -> None:
    accept([cfg(dev, leeway=30)], dev.mint("job", audience=AUD, ttl=-5))


def test_verify_before_start_fetches_keys_on_demand(dev: DevIssuer) -> None:
    async def scenario() -> Principal:
        verifier = OidcVerifier([cfg(dev)])
        try:
            return await verifier.verify(dev.mint("job", audience=AUD))
        finally:
            await verifier.close()

    assert run(scenario()).subject == "job"


def test_jwks_uri_configured_skips_discovery(fresh: DevIssuer) -> None:
    accept([cfg(fresh, jwks_uri=fresh.jwks_uri)], fresh.mint("job", audience=AUD))
    assert fresh.requests(DISCOVERY_PATH) == 0
    assert fresh.requests() == 1


# --------------------------------------------------------------------------- looks_like_jwt


def test_looks_like_jwt(dev: DevIssuer) -> None:
    assert looks_like_jwt(dev.mint("job", audience=AUD))
    assert looks_like_jwt(f"{b64json({'alg': 'none'})}.{b64json({'sub': 'x'})}.")
    for password in [
        "",
        "hunter2",
        "a.b.c",
        "a.b",
        f"{b64json({'typ': 'JWT'})}.{b64json({})}.sig",  # no alg
        f"{b64json(['alg'])}.{b64json({})}.sig",  # header not an object
        f"{b64json({'alg': 'RS256'})}.{b64json({})}.sig.extra",  # JWE-like, 4 dots
        f"{b64json({'alg': 'RS256'})}.{b64json({})}.si=g",
        "scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA",
    ]:
        assert not looks_like_jwt(password), password


# --------------------------------------------------------------------------- attacks


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_never_accepted(dev: DevIssuer, alg: str) -> None:
    payload = dev.claims("job", audience=AUD)
    token = f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(payload)}."
    assert looks_like_jwt(token)
    # Not even when an operator lists it.
    exc = reject([cfg(dev, algorithms=["none", "RS256"])], token)
    assert exc.reason == "token algorithm 'none' is never accepted"
    assert exc.sqlstate == INVALID_AUTHORIZATION


def test_key_confusion_hs256_with_public_key_pem(dev: DevIssuer) -> None:
    token = hs_token(
        dev.claims("job", audience=AUD), dev.public_key_pem(), kid=dev.signing_kid()
    )
    exc = reject([cfg(dev)], token)
    assert exc.reason == "token algorithm 'HS256' is not allowed for issuer 'dev'"
    # Listing HS256 without a shared secret still refuses it: the JWKS is never a secret.
    exc = reject([cfg(dev, algorithms=["RS256", "HS256"])], token)
    assert exc.reason == (
        "token algorithm 'HS256' is not allowed for issuer 'dev': no shared secret is configured"
    )


def test_key_confusion_when_a_secret_is_configured(
    dev: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a secret configured, HS256 verifies with that secret only, never the RSA key.
    monkeypatch.setenv("PGW_TEST_HMAC", SECRET)
    issuer = cfg(dev, algorithms=["RS256", "HS256"], hmac_secret_env="PGW_TEST_HMAC")
    token = hs_token(dev.claims("job", audience=AUD), dev.public_key_pem())
    exc = reject([issuer], token)
    assert exc.reason == "token signature is invalid"
    assert exc.sqlstate == INVALID_PASSWORD


def test_hs256_accepted_only_with_the_configured_secret(
    dev: DevIssuer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PGW_TEST_HMAC", SECRET)
    secret_file = tmp_path / "hmac"
    secret_file.write_text(SECRET + "\n")
    payload = dev.claims("ci-job", audience=AUD)
    token = jwt.encode(payload, SECRET, algorithm="HS256")
    from_env = cfg(dev, algorithms=["HS256"], hmac_secret_env="PGW_TEST_HMAC")
    from_file = cfg(dev, algorithms=["HS384", "HS256"], hmac_secret_file=str(secret_file))
    assert accept([from_env], token).subject == "ci-job"
    assert accept([from_file], token).subject == "ci-job"
    # The same token without a configured secret is refused.
    without_secret = cfg(dev, algorithms=["HS256"])
    assert reject([without_secret], token).reason.endswith("no shared secret is configured")
    # And signed with another secret it is a bad signature.
    forged = jwt.encode(payload, SECRET + "x", algorithm="HS256")
    assert reject([from_env], forged).reason == "token signature is invalid"


def test_short_or_missing_hmac_secret_disables_hmac(
    dev: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGW_TEST_SHORT", "short")
    token = hs_token(dev.claims("job", audience=AUD), b"short")
    for env in ("PGW_TEST_SHORT", "PGW_TEST_UNSET_VARIABLE"):
        exc = reject([cfg(dev, algorithms=["HS256"], hmac_secret_env=env)], token)
        assert exc.reason.endswith("its shared secret is unavailable")


def test_algorithm_outside_allowlist(dev: DevIssuer) -> None:
    exc = reject([cfg(dev, algorithms=["RS256"])], dev.mint("job", audience=AUD, alg="ES256"))
    assert exc.reason == "token algorithm 'ES256' is not allowed for issuer 'dev'"


def test_key_of_wrong_type_for_algorithm(dev: DevIssuer) -> None:
    # An ES256 token pointing at the RSA key's kid: the key family must match the alg.
    rsa_kid = dev.signing_kid("RS256")
    token = dev.mint("job", audience=AUD, alg="ES256", headers={"kid": rsa_kid})
    exc = reject([cfg(dev)], token)
    assert exc.reason == (
        f"token signing key '{rsa_kid}' of issuer 'dev' cannot be used with algorithm 'ES256'"
    )


def test_expired(dev: DevIssuer) -> None:
    exc = reject([cfg(dev)], dev.mint("job", audience=AUD, ttl=-120))
    assert exc.reason.startswith("token expired at ")
    assert exc.sqlstate == INVALID_AUTHORIZATION


def test_not_yet_valid(dev: DevIssuer) -> None:
    token = dev.mint("job", audience=AUD, not_before=time.time() + 600)
    assert reject([cfg(dev)], token).reason.startswith("token not yet valid (nbf) before ")


def test_issued_in_the_future(dev: DevIssuer) -> None:
    token = dev.mint("job", audience=AUD, issued_at=time.time() + 600, ttl=1200)
    assert reject([cfg(dev)], token).reason == "token issued in the future (iat)"


def test_issued_in_the_future_by_the_verifiers_clock(dev: DevIssuer) -> None:
    # The verifier's own iat check (PyJWT-version independent) uses the injected clock.
    clock = Clock()
    clock.advance(-600)
    token = dev.mint("job", audience=AUD)
    with pytest.raises(TokenRejected, match=r"issued in the future"):
        run(verify_with([cfg(dev)], token, clock))


def test_wrong_audience(dev: DevIssuer) -> None:
    exc = reject([cfg(dev)], dev.mint("job", audience="someone-else"))
    assert exc.reason == "token audience does not match"


def test_wrong_issuer(dev: DevIssuer) -> None:
    token = dev.mint("job", audience=AUD, issuer="https://idp.example.com")
    assert reject([cfg(dev)], token).reason == "unknown token issuer 'https://idp.example.com'"
    # A trailing slash is a different issuer: iss is compared exactly.
    token = dev.mint("job", audience=AUD, issuer=dev.url + "/")
    assert reject([cfg(dev)], token).reason.startswith("unknown token issuer")


@pytest.mark.parametrize("how", ["unpublished key", "made-up kid"])
def test_unknown_kid_after_refresh(fresh: DevIssuer, how: str) -> None:
    # A real key the JWKS never lists, or a made-up kid over the current key's signature.
    hidden = fresh.add_key("RS256", publish=False) if how == "unpublished key" else "no-such-key"
    token = fresh.mint("job", audience=AUD, kid=hidden)
    assert jwt.get_unverified_header(token)["kid"] == hidden
    clock = Clock()

    async def scenario() -> TokenRejected:
        verifier = OidcVerifier([cfg(fresh)], clock=clock)
        await verifier.start()
        clock.advance(60)  # past the min refresh interval: one refresh is allowed
        try:
            await verifier.verify(token)
        except TokenRejected as exc:
            return exc
        finally:
            await verifier.close()
        raise AssertionError("accepted")

    exc = run(scenario())
    assert exc.reason == f"token signing key '{hidden}' is unknown to issuer 'dev'"
    assert fresh.requests() == 2  # the start-up fetch and one refresh


def test_tampered_payload(dev: DevIssuer) -> None:
    header, payload, signature = dev.mint("reader", audience=AUD).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "admin"
    tampered = f"{header}.{b64json(claims)}.{signature}"
    exc = reject([cfg(dev)], tampered)
    assert exc.reason == "token signature is invalid"
    assert exc.sqlstate == INVALID_PASSWORD


def test_tampered_signature(dev: DevIssuer) -> None:
    header, payload, signature = dev.mint("job", audience=AUD, alg="EdDSA").split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert reject([cfg(dev)], f"{header}.{payload}.{flipped}").reason == (
        "token signature is invalid"
    )


def test_token_from_issuer_a_carrying_issuer_b_iss(fresh: DevIssuer) -> None:
    with DevIssuer(algorithms=("RS256",)) as other:
        configs = [cfg(fresh, name="a"), cfg(other, name="b")]
        # Signed by A, claiming to be from B: checked with B's keys, where A's kid is unknown.
        token = fresh.mint("job", audience=AUD, issuer=other.url)
        exc = reject(configs, token)
        assert exc.reason == (
            f"token signing key '{fresh.signing_kid()}' is unknown to issuer 'b'"
        )
        # Even when it names B's kid, A's signature does not verify under B's key.
        token = fresh.mint(
            "job", audience=AUD, issuer=other.url, headers={"kid": other.signing_kid()}
        )
        exc = reject(configs, token)
        assert exc.reason == "token signature is invalid"
        # Each issuer's own tokens are fine.
        assert accept(configs, other.mint("job", audience=AUD)).issuer == "b"
        assert accept(configs, fresh.mint("job", audience=AUD)).issuer == "a"


def test_oversized_token(dev: DevIssuer) -> None:
    token = dev.mint("job", audience=AUD, extra_claims={"pad": "x" * 20000})
    assert reject([cfg(dev)], token).reason == "token exceeds 16384 bytes"
    small = cfg(dev, max_token_bytes=1024)
    token = dev.mint("job", audience=AUD, extra_claims={"pad": "x" * 1500})
    assert reject([small], token).reason == "token exceeds 1024 bytes"


def test_size_is_checked_before_parsing(dev: DevIssuer) -> None:
    # Far over the limit and not even a JWT: refused on size, nothing is decoded.
    exc = reject([cfg(dev)], "a" * 1_000_000)
    assert exc.reason == "token exceeds 16384 bytes"
    # Multi-byte characters count as bytes.
    assert reject([cfg(dev)], "é" * 9000).reason == "token exceeds 16384 bytes"


def test_missing_required_claim(dev: DevIssuer) -> None:
    exc = reject([cfg(dev)], dev.mint("job", audience=AUD, extra_claims={"sub": None}))
    assert exc.reason == "token is missing required claim 'sub'"
    stricter = cfg(dev, required_claims=["exp", "iat", "sub", "azp"])
    exc = reject([stricter], dev.mint("job", audience=AUD))
    assert exc.reason == "token is missing required claim 'azp'"
    exc = reject([cfg(dev)], dev.mint("job", audience=AUD, extra_claims={"iss": None}))
    assert exc.reason == "token is missing required claim 'iss'"


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "hunter2",
        "a.b.c",
        "....",
        "!!!.???.###",
        "e30.e30.",  # {} . {} . -- no alg
        f"{b64json({'alg': 'RS256'})}.bm90IGpzb24.sig",  # payload is not JSON
        f"{b64json({'alg': 'RS256'})}.{b64json([1, 2])}.sig",  # payload not an object
        f"{b64json({'alg': 'RS256'})}.{b64json({'iss': 5})}.sig",
        f"{b64json({'alg': 7})}.{b64json({})}.sig",
        f"{b64json({'alg': 'RS256'})}.{b64json({})}",
        "\x00\xff.\n.\t",
    ],
)
def test_garbage_is_rejected_cleanly(dev: DevIssuer, garbage: str) -> None:
    exc = reject([cfg(dev)], garbage)
    assert exc.sqlstate == INVALID_AUTHORIZATION
    assert exc.reason.startswith(("malformed token", "token is missing required claim 'iss'"))


def test_garbage_signature_and_kid(dev: DevIssuer) -> None:
    header, payload, signature = dev.mint("job", audience=AUD).split(".")
    assert reject([cfg(dev)], f"{header}.{payload}.!!").reason == "malformed token"
    # PyJWT will not sign such a header; the kid is refused before any signature check.
    bad_kid = f"{b64json({'alg': 'RS256', 'kid': 12})}.{payload}.{signature}"
    assert reject([cfg(dev)], bad_kid).reason == "malformed token: 'kid' is not a string"


# --------------------------------------------------------------------------- key rotation


def test_rotation_is_picked_up_on_unknown_kid_and_rate_limited(fresh: DevIssuer) -> None:
    clock = Clock()
    issuer = cfg(fresh, jwks_min_refresh_interval=30.0)

    async def scenario() -> None:
        verifier = OidcVerifier([issuer], clock=clock)
        await verifier.start()
        try:
            assert fresh.requests() == 1
            old_token = fresh.mint("job", audience=AUD)
            new_kid = fresh.rotate("RS256")
            new_token = fresh.mint("job", audience=AUD)

            # Within the min refresh interval of the start-up fetch: no fetch, refused.
            with pytest.raises(TokenRejected, match="unknown to issuer"):
                await verifier.verify(new_token)
            assert fresh.requests() == 1

            # Once the interval has passed, the unknown kid triggers one refresh.
            clock.advance(31)
            principal = await verifier.verify(new_token)
            assert principal.claims["sub"] == "job"
            assert fresh.requests() == 2
            assert new_kid in verifier.issuer_status()["dev"]["kids"]  # type: ignore[operator]

            # The old key is still published, so its tokens still verify, without fetches.
            await verifier.verify(old_token)
            # An attacker's stream of random kids costs at most one fetch per interval.
            for i in range(5):
                bogus = fresh.mint("job", audience=AUD, headers={"kid": f"bogus-{i}"})
                with pytest.raises(TokenRejected, match="unknown to issuer"):
                    await verifier.verify(bogus)
            assert fresh.requests() == 2
            clock.advance(31)
            with pytest.raises(TokenRejected, match="unknown to issuer"):
                await verifier.verify(bogus)
            assert fresh.requests() == 3
        finally:
            await verifier.close()

    run(scenario())


def test_concurrent_unknown_kid_refreshes_coalesce(fresh: DevIssuer) -> None:
    clock = Clock()

    async def scenario() -> None:
        verifier = OidcVerifier([cfg(fresh)], clock=clock)
        await verifier.start()
        try:
            fresh.rotate("RS256")
            tokens = [fresh.mint(f"job-{i}", audience=AUD) for i in range(20)]
            clock.advance(60)
            principals = await asyncio.gather(*(verifier.verify(t) for t in tokens))
            assert {p.subject for p in principals} == {f"job-{i}" for i in range(20)}
            assert fresh.requests() == 2  # start-up + one shared refresh
        finally:
            await verifier.close()

    run(scenario())


def test_dropped_key_is_refused_after_refresh(fresh: DevIssuer) -> None:
    clock = Clock()

    async def scenario() -> None:
        verifier = OidcVerifier([cfg(fresh)], clock=clock)
        await verifier.start()
        try:
            old_kid = fresh.signing_kid()
            old_token = fresh.mint("job", audience=AUD)
            fresh.rotate("RS256", drop_old=True)
            clock.advance(60)
            await verifier.verify(fresh.mint("job", audience=AUD))  # refreshes
            with pytest.raises(TokenRejected) as info:
                await verifier.verify(old_token)
            assert info.value.reason == f"token signing key '{old_kid}' is unknown to issuer 'dev'"
        finally:
            await verifier.close()

    run(scenario())


def test_scheduled_refresh_picks_up_new_key(fresh: DevIssuer) -> None:
    # The on-demand path is shut off (the clock never advances past a one-hour minimum),
    # so only the schedule can bring in the new key.
    issuer = cfg(fresh, jwks_refresh_interval=0.2, jwks_min_refresh_interval=3600.0)

    async def scenario() -> None:
        verifier = OidcVerifier([issuer], clock=Clock())
        await verifier.start()
        try:
            fresh.rotate("RS256")
            token = fresh.mint("job", audience=AUD)
            with pytest.raises(TokenRejected, match="unknown to issuer"):
                await verifier.verify(token)
            deadline = time.monotonic() + 5
            while fresh.requests() < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)  # let the fetched keys be installed
            assert (await verifier.verify(token)).subject == "job"
        finally:
            await verifier.close()

    run(scenario())


def test_idp_outage_keeps_last_good_keys(fresh: DevIssuer) -> None:
    clock = Clock()

    async def scenario() -> None:
        verifier = OidcVerifier([cfg(fresh)], clock=clock)
        await verifier.start()
        try:
            fresh.failing = True
            clock.advance(60)
            # An unknown kid forces a fetch, which fails; the known keys remain.
            with pytest.raises(TokenRejected, match="unknown to issuer"):
                await verifier.verify(fresh.mint("job", audience=AUD, headers={"kid": "nope"}))
            assert "HTTP 503" in str(verifier.issuer_status()["dev"]["last_error"])
            assert (await verifier.verify(fresh.mint("job", audience=AUD))).subject == "job"
        finally:
            await verifier.close()

    run(scenario())


# --------------------------------------------------------------------------- availability


def test_unreachable_issuer_at_start_is_not_fatal(dev: DevIssuer) -> None:
    down_url = f"http://127.0.0.1:{closed_port()}"
    configs = [cfg(down_url, name="down", http_timeout=1.0), cfg(dev)]

    async def scenario() -> None:
        verifier = OidcVerifier(configs)
        await verifier.start()  # must not raise
        try:
            status = verifier.issuer_status()
            assert status["down"]["loaded"] is False
            assert status["down"]["last_error"]
            assert status["dev"]["loaded"] is True
            token = dev.mint("job", audience=AUD, issuer=down_url)
            with pytest.raises(TokenRejected) as info:
                await verifier.verify(token)
            assert info.value.reason == (
                "issuer 'down' is unavailable: its signing keys could not be fetched"
            )
            assert info.value.sqlstate == INVALID_AUTHORIZATION
            # The healthy issuer is unaffected.
            assert (await verifier.verify(dev.mint("job", audience=AUD))).issuer == "dev"
        finally:
            await verifier.close()

    run(scenario())


def test_issuer_recovering_after_start_is_used_on_demand(fresh: DevIssuer) -> None:
    clock = Clock()
    fresh.failing = True

    async def scenario() -> None:
        verifier = OidcVerifier([cfg(fresh)], clock=clock)
        await verifier.start()
        try:
            token = fresh.mint("job", audience=AUD)
            with pytest.raises(TokenRejected, match="is unavailable"):
                await verifier.verify(token)
            fresh.failing = False
            clock.advance(60)
            assert (await verifier.verify(token)).subject == "job"
        finally:
            await verifier.close()

    run(scenario())


def test_plain_http_needs_allow_insecure_http(fresh: DevIssuer) -> None:
    async def scenario() -> None:
        verifier = OidcVerifier([cfg(fresh, allow_insecure_http=False)])
        await verifier.start()
        try:
            with pytest.raises(TokenRejected, match="is unavailable"):
                await verifier.verify(fresh.mint("job", audience=AUD))
            assert "plain http is refused" in str(verifier.issuer_status()["dev"]["last_error"])
        finally:
            await verifier.close()

    run(scenario())
    assert fresh.requests(DISCOVERY_PATH) == 0  # nothing was fetched over http


def test_closed_verifier_still_verifies_with_cached_keys(dev: DevIssuer) -> None:
    async def scenario() -> None:
        verifier = OidcVerifier([cfg(dev)])
        await verifier.start()
        await verifier.close()
        assert (await verifier.verify(dev.mint("job", audience=AUD))).subject == "job"

    run(scenario())


# --------------------------------------------------------------------------- dev issuer


def test_dev_issuer_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        DevIssuer(host="0.0.0.0")


def test_dev_issuer_cli_prints_a_working_snippet_and_token() -> None:
    out = io.StringIO()
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            dev_issuer.main(
                ["--subject", "demo-job", "--audience", "demo", "--group", "etl"],
                stop=stop,
                out=out,
            )
        )
    )
    thread.start()
    try:
        assert wait_until(lambda: out.getvalue().count("\n") >= 10)
        text = out.getvalue()
        token = text.strip().splitlines()[-1]
        snippet = text[text.index("[[issuers]]") : text.index("# token")]
        table = tomllib.loads(snippet)["issuers"][0]
        principal = accept([IssuerConfig(**table)], token)
        assert principal.subject == "demo-job"
        assert principal.groups == frozenset({"etl"})
        assert principal.issuer == "dev"
    finally:
        stop.set()
        thread.join(timeout=10)
    assert result == [0]


def test_token_rejected_carries_reason_and_sqlstate_through_pickling() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(TokenRejected("token signature is invalid", INVALID_PASSWORD)))
    assert (exc.reason, exc.sqlstate, str(exc)) == (
        "token signature is invalid",
        INVALID_PASSWORD,
        "token signature is invalid",
    )
