"""Machine identities end to end: OIDC tokens as passwords, roles, bindings, attacks.

A development OIDC issuer is served on loopback (discovery + JWKS over HTTP, keys from
`cryptography`); pgwarden is configured with two roles bound to different principals, each
with its own upstream user. Every attack is tried for real and must be refused with an
authentication SQLSTATE, with nothing reaching PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from gateway.devcluster import PgCluster, free_port
from gateway.identity.dev_issuer import DevIssuer
from tests.support import (
    DATABASE,
    Gateway,
    RawClient,
    error_fields,
    message,
    wait_listening,
)

pytestmark = pytest.mark.e2e

AUDIENCE = "pgwarden-test"
ETL_SUBJECT = "repo:acme/etl:ref:refs/heads/main"
ANALYST_SUBJECT = "svc-analytics"
ETL_PASSWORD = "etl-Upstream-91c2"
ANALYST_PASSWORD = "analyst-Upstream-77aa"


class TlsRawClient(RawClient):
    """RawClient that negotiates TLS first, as libpq does with sslmode=require."""

    def __init__(self, port: int, *, tls: bool = True) -> None:
        super().__init__(port)
        if tls:
            self.send(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
            assert self.sock.recv(1) == b"S"
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(self.sock)

    def try_token(self, token: str, user: str = "ci-job") -> tuple[bytes, dict[str, str]]:
        """Log in with *token*; return the first reply type and, for errors, its fields."""
        self.startup(user=user)
        first = self.read_message()
        assert first is not None
        if first[0] == b"E":
            return first[0], error_fields(first[1])
        assert first == (b"R", b"\x00\x00\x00\x03"), first
        self.send(message(b"p", token.encode() + b"\x00"))
        reply = self.read_message()
        assert reply is not None
        if reply[0] == b"E":
            return reply[0], error_fields(reply[1])
        return reply[0], {}


@pytest.fixture(scope="module")
def issuer() -> Iterator[DevIssuer]:
    with DevIssuer() as dev:
        yield dev


@pytest.fixture(scope="module")
def roles(pg: PgCluster) -> None:
    for name, password in (("etl", ETL_PASSWORD), ("analyst", ANALYST_PASSWORD)):
        if not pg.sql(f"select 1 from pg_roles where rolname = '{name}'"):
            pg.create_role(name, password)
    pg.sql("grant connect on database app to etl, analyst")


def identity_config(
    path: Path, pg: PgCluster, issuer: DevIssuer, port: int, tls: tuple[Path, Path],
    *, plaintext_loopback: bool, failure_limit: int, extra: str = "",
) -> None:
    base = path.parent
    (base / "etl.pw").write_text(ETL_PASSWORD)
    (base / "analyst.pw").write_text(ANALYST_PASSWORD)
    cert, key = tls
    path.write_text(
        f"""
[server]
listen_port = {port}
workers = 2
auth_failure_limit = {failure_limit}
auth_failure_window = 30.0

[tls]
cert_file = "{cert}"
key_file = "{key}"
require_tls = true
allow_plaintext_loopback = {str(plaintext_loopback).lower()}

[upstream]
host = "{pg.host}"
port = {pg.port}
user = "nobody-by-default"
sslmode = "disable"

[log]
level = "debug"

[[issuers]]
name = "dev"
issuer = "{issuer.url}"
audiences = ["{AUDIENCE}"]
allow_insecure_http = true
jwks_min_refresh_interval = 1.0

[[roles]]
name = "etl_loader"
upstream_user = "etl"
password_file = "{base / 'etl.pw'}"
databases = ["{DATABASE}"]

[[roles]]
name = "analytics"
upstream_user = "analyst"
password_file = "{base / 'analyst.pw'}"
databases = ["{DATABASE}"]
on_token_expiry = "terminate"

[[bindings]]
role = "etl_loader"
issuer = "dev"
subject = "repo:acme/etl:*"

[[bindings]]
role = "analytics"
issuer = "dev"
subject = "{ANALYST_SUBJECT}"
{extra}
"""
    )


@pytest.fixture(scope="module")
def start_identity_gateway(
    pg: PgCluster, issuer: DevIssuer, roles: None, tls_files: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(
        plaintext_loopback: bool = True, failure_limit: int = 1000, extra: str = ""
    ) -> Gateway:
        base = tmp_path_factory.mktemp("idgw")
        port = free_port()
        config = base / "pgwarden.toml"
        identity_config(config, pg, issuer, port, tls_files,
                        plaintext_loopback=plaintext_loopback,
                        failure_limit=failure_limit, extra=extra)
        log_path = base / "pgwarden.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ["pgwarden", "serve", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        gw = Gateway(proc, port, config, log_path, tls_files[0], user="ci-job", secret="")
        started.append(gw)
        wait_listening(port, proc, log_path)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def gw(start_identity_gateway: Callable[..., Gateway]) -> Gateway:
    return start_identity_gateway()


def connections_received(pg: PgCluster) -> int:
    return pg.server_log().count("connection received")


def token_dsn(gw: Gateway, token: str, sslmode: str = "require") -> str:
    return gw.dsn(sslmode=sslmode, password=token)


def test_token_as_password_with_psycopg_psql_asyncpg(gw: Gateway, issuer: DevIssuer) -> None:
    token = issuer.mint(ETL_SUBJECT, audience=AUDIENCE)
    with psycopg.connect(token_dsn(gw, token)) as conn:
        row = conn.execute("select current_user, application_name from pg_stat_activity "
                           "where pid = pg_backend_pid()").fetchone()
        assert row == ("etl", f"pgwarden:dev:{ETL_SUBJECT}"[:63])
    env = gw.env()
    env["PGPASSWORD"] = token
    out = subprocess.run(["psql", "-X", "-At", "-c", "select current_user"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "etl", out.stderr

    async def via_asyncpg() -> str:
        conn = await asyncpg.connect(host=gw.host, port=gw.port, user="ci-job",
                                     password=token, database=DATABASE, ssl="require")
        try:
            return str(await conn.fetchval("select current_user"))
        finally:
            await conn.close()

    assert asyncio.run(via_asyncpg()) == "etl"


def test_two_principals_get_different_upstream_users(gw: Gateway, issuer: DevIssuer) -> None:
    users = {}
    for subject in (ETL_SUBJECT, ANALYST_SUBJECT):
        with psycopg.connect(token_dsn(gw, issuer.mint(subject, audience=AUDIENCE))) as conn:
            users[subject] = conn.execute("select current_user").fetchone()
    assert users == {ETL_SUBJECT: ("etl",), ANALYST_SUBJECT: ("analyst",)}


def test_key_rotation_mid_run(gw: Gateway, issuer: DevIssuer) -> None:
    issuer.rotate("ES256")
    # Refreshes on an unknown kid are rate-limited (jwks_min_refresh_interval = 1 s here):
    # wait out any refresh the workers made at start-up.
    time.sleep(1.2)
    token = issuer.mint(ETL_SUBJECT, audience=AUDIENCE, alg="ES256")
    with psycopg.connect(token_dsn(gw, token)) as conn:
        assert conn.execute("select current_user").fetchone() == ("etl",)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], alg: str = "none") -> str:
    return f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}." \
           f"{b64(json.dumps(claims).encode())}."


def claims_for(issuer: DevIssuer, subject: str = ETL_SUBJECT) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer.url, "sub": subject, "aud": AUDIENCE, "iat": now, "exp": now + 300}


def key_confusion_token(issuer: DevIssuer) -> str:
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    jwks = issuer.jwks()
    rsa_jwk = next(k for k in jwks["keys"] if k["kty"] == "RSA")
    from jwt.algorithms import RSAAlgorithm

    public = RSAAlgorithm.from_jwk(json.dumps(rsa_jwk))
    pem = public.public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": rsa_jwk["kid"]}).encode())
    payload = b64(json.dumps(claims_for(issuer)).encode())
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = ANALYST_SUBJECT
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


ATTACKS: dict[str, Callable[[DevIssuer, DevIssuer], str]] = {
    "alg none": lambda i, other: unsigned(claims_for(i)),
    "HS256 with the RSA public key": lambda i, other: key_confusion_token(i),
    "expired": lambda i, other: i.mint(ETL_SUBJECT, audience=AUDIENCE, ttl=-600),
    "not yet valid": lambda i, other: i.mint(
        ETL_SUBJECT, audience=AUDIENCE, not_before=int(time.time()) + 3600
    ),
    "wrong audience": lambda i, other: i.mint(ETL_SUBJECT, audience="someone-else"),
    "wrong issuer": lambda i, other: i.mint(
        ETL_SUBJECT, audience=AUDIENCE, issuer="https://evil.example"
    ),
    "unknown kid": lambda i, other: i.mint(ETL_SUBJECT, audience=AUDIENCE, kid="no-such-key"),
    "tampered payload": lambda i, other: tampered(i.mint(ETL_SUBJECT, audience=AUDIENCE)),
    "issuer A carrying issuer B's iss": lambda i, other: other.mint(
        ETL_SUBJECT, audience=AUDIENCE, issuer=i.url
    ),
    "oversized": lambda i, other: i.mint(
        ETL_SUBJECT, audience=AUDIENCE, extra_claims={"pad": "x" * 20000}
    ),
    "garbage": lambda i, other: "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",
}


@pytest.fixture(scope="module")
def other_issuer() -> Iterator[DevIssuer]:
    with DevIssuer() as dev:
        yield dev


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_refused_and_nothing_reaches_upstream(
    attack: str, gw: Gateway, issuer: DevIssuer, other_issuer: DevIssuer, pg: PgCluster
) -> None:
    token = ATTACKS[attack](issuer, other_issuer)
    before = connections_received(pg)
    client = TlsRawClient(gw.port)
    kind, fields = client.try_token(token)
    assert kind == b"E", f"{attack}: accepted"
    assert fields["C"] in ("28000", "28P01"), fields
    assert fields["S"] == "FATAL"
    # The error says what failed without echoing the token.
    assert token not in fields["M"] and token[:40] not in fields["M"]
    assert client.closed()
    time.sleep(0.2)
    assert connections_received(pg) == before, f"{attack}: reached PostgreSQL"


def test_error_messages_say_what_failed(gw: Gateway, issuer: DevIssuer) -> None:
    expectations = {
        "expired": issuer.mint(ETL_SUBJECT, audience=AUDIENCE, ttl=-600),
        "audience": issuer.mint(ETL_SUBJECT, audience="someone-else"),
        "issuer": issuer.mint(ETL_SUBJECT, audience=AUDIENCE, issuer="https://evil.example"),
    }
    for word, token in expectations.items():
        _, fields = TlsRawClient(gw.port).try_token(token)
        assert word in fields["M"].lower(), fields


def test_unbound_principal_is_refused(gw: Gateway, issuer: DevIssuer, pg: PgCluster) -> None:
    before = connections_received(pg)
    _, fields = TlsRawClient(gw.port).try_token(issuer.mint("nobody-knows-me", audience=AUDIENCE))
    assert fields["C"] == "28000"
    assert fields["M"] == 'no role bound to principal "dev:nobody-knows-me"'
    assert connections_received(pg) == before


def test_token_over_plaintext_refused(
    start_identity_gateway: Callable[..., Gateway], issuer: DevIssuer, pg: PgCluster
) -> None:
    strict = start_identity_gateway(plaintext_loopback=False)
    before = connections_received(pg)
    kind, fields = TlsRawClient(strict.port, tls=False).try_token(
        issuer.mint(ETL_SUBJECT, audience=AUDIENCE)
    )
    assert kind == b"E" and fields["C"] == "28000"
    assert "encrypted" in fields["M"]
    assert connections_received(pg) == before


def test_second_startup_during_token_exchange(gw: Gateway) -> None:
    client = TlsRawClient(gw.port)
    client.startup(user="ci-job")
    assert client.read_message() == (b"R", b"\x00\x00\x00\x03")
    client.startup(user="ci-job")
    reply = client.read_message()
    assert reply is not None and reply[0] == b"E"
    assert error_fields(reply[1])["C"] == "08P01"


def test_brute_force_triggers_rate_limit(
    start_identity_gateway: Callable[..., Gateway], issuer: DevIssuer
) -> None:
    limited = start_identity_gateway(failure_limit=5)
    bad = issuer.mint(ETL_SUBJECT, audience="wrong")
    codes = []
    for _ in range(12):
        _, fields = TlsRawClient(limited.port).try_token(bad)
        codes.append(fields["M"])
    assert any("too many failed authentication attempts" in m for m in codes)
    # Even a valid token is refused while the address is blocked.
    _, fields = TlsRawClient(limited.port).try_token(issuer.mint(ETL_SUBJECT, audience=AUDIENCE))
    assert "too many failed authentication attempts" in fields["M"]


def test_token_expiry_terminate_role(gw: Gateway, issuer: DevIssuer) -> None:
    token = issuer.mint(ANALYST_SUBJECT, audience=AUDIENCE, ttl=3)
    with psycopg.connect(token_dsn(gw, token), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        time.sleep(4.5)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    expected = "expired; terminating its session"
    assert expected in gw.wait_for_log(expected)


def test_token_expiry_finish_role(gw: Gateway, issuer: DevIssuer) -> None:
    token = issuer.mint(ETL_SUBJECT, audience=AUDIENCE, ttl=3)
    with psycopg.connect(token_dsn(gw, token), autocommit=True) as conn:
        time.sleep(4.5)
        assert conn.execute("select current_user").fetchone() == ("etl",)
    expected = "expired; its session continues"
    assert expected in gw.wait_for_log(expected)
