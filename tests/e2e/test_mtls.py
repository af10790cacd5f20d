"""Client certificates as machine identities (mTLS): SPIFFE ID or CN, bound to a role."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.devcluster import PgCluster, free_port
from tests.support import DATABASE, Gateway, wait_listening

pytestmark = pytest.mark.e2e

MTLS_PASSWORD = "mtls-Upstream-5e1a"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: Path, cn: str) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{cn}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def make_client_cert(
    directory: Path, name: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
    *, cn: str, spiffe: str | None = None,
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if spiffe:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mtls")
    ca_path, ca, ca_key = make_ca(d, "pgwarden-test-ca")
    _, rogue, rogue_key = make_ca(d, "rogue-ca")
    out = {"ca": ca_path}
    out["job"], out["job_key"] = make_client_cert(
        d, "job", ca, ca_key, cn="etl-job", spiffe="spiffe://acme.example/etl/loader"
    )
    out["cn_only"], out["cn_only_key"] = make_client_cert(d, "cn", ca, ca_key, cn="legacy-box")
    out["rogue"], out["rogue_key"] = make_client_cert(
        d, "rogue", rogue, rogue_key, cn="etl-job", spiffe="spiffe://acme.example/etl/loader"
    )
    return out


@pytest.fixture(scope="module")
def mtls_gateway(
    pg: PgCluster, certs: dict[str, Path], tls_files: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    if not pg.sql("select 1 from pg_roles where rolname = 'mtls_role'"):
        pg.create_role("mtls_role", MTLS_PASSWORD)
    base = tmp_path_factory.mktemp("mtlsgw")
    (base / "pw").write_text(MTLS_PASSWORD)
    port = free_port()
    config = base / "pgwarden.toml"
    config.write_text(
        f"""
[server]
listen_port = {port}
workers = 1

[tls]
cert_file = "{tls_files[0]}"
key_file = "{tls_files[1]}"
client_ca_file = "{certs['ca']}"
require_tls = true

[upstream]
host = "{pg.host}"
port = {pg.port}
user = "unused"
sslmode = "disable"

[[roles]]
name = "loader"
upstream_user = "mtls_role"
password_file = "{base / 'pw'}"

[[bindings]]
role = "loader"
issuer = "cert"
subject = "spiffe://acme.example/etl/*"
"""
    )
    log_path = base / "pgwarden.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["pgwarden", "serve", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    gw = Gateway(proc, port, config, log_path, tls_files[0], user="anyone", secret="")
    wait_listening(port, proc, log_path)
    yield gw
    gw.stop()


def dsn(gw: Gateway, cert: Path, key: Path) -> str:
    return (
        f"host=127.0.0.1 port={gw.port} user=anyone dbname={DATABASE} sslmode=require "
        f"sslcert={cert} sslkey={key}"
    )


def test_spiffe_certificate_is_the_identity(mtls_gateway: Gateway, certs: dict[str, Path]) -> None:
    # No password: the verified certificate is the identity.
    with psycopg.connect(dsn(mtls_gateway, certs["job"], certs["job_key"])) as conn:
        user, app = conn.execute(
            "select current_user, application_name from pg_stat_activity "
            "where pid = pg_backend_pid()"
        ).fetchone() or (None, None)
    assert user == "mtls_role"
    assert app == "pgwarden:cert:spiffe://acme.example/etl/loader"


def test_unbound_certificate_is_refused(mtls_gateway: Gateway, certs: dict[str, Path]) -> None:
    refusal = 'no role bound to principal "cert:legacy-box"'
    with pytest.raises(psycopg.OperationalError, match=refusal):
        psycopg.connect(dsn(mtls_gateway, certs["cn_only"], certs["cn_only_key"]))


def test_certificate_from_another_ca_is_refused(
    mtls_gateway: Gateway, certs: dict[str, Path]
) -> None:
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn(mtls_gateway, certs["rogue"], certs["rogue_key"]))
    expected = "TLS handshake"
    assert expected in mtls_gateway.wait_for_log(expected)
