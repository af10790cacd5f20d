"""pgwarden authenticates upstream with every method PostgreSQL may ask for, over TLS when
configured, and keeps upstream authentication failures out of what the client sees."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.devcluster import PgCluster
from tests.support import (
    CLIENT_SECRET,
    DATABASE,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    Gateway,
    RawClient,
    error_fields,
    message,
    spawn_gateway,
)

pytestmark = pytest.mark.e2e

WRONG_PASSWORD = "not-the-upstream-pw-91c3"

StartGateway = Callable[..., Gateway]


def make_cluster(base: Path, auth: str) -> PgCluster:
    cluster = PgCluster(base, auth=auth)
    cluster.start()
    try:
        cluster.create_role(UPSTREAM_USER, UPSTREAM_PASSWORD)
        cluster.create_database(DATABASE, owner=UPSTREAM_USER)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def clusters(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, PgCluster]]:
    """One cluster per pg_hba method; the session cluster is the scram-sha-256 one."""
    made: dict[str, PgCluster] = {"scram-sha-256": pg}
    try:
        for auth in ("md5", "password", "trust"):
            made[auth] = make_cluster(tmp_path_factory.mktemp(f"pg-{auth}"), auth)
        yield made
    finally:
        for auth, cluster in made.items():
            if auth != "scram-sha-256":
                cluster.stop()


@pytest.fixture(scope="module")
def launch(
    tls_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartGateway]:
    """Like the ``start_gateway`` fixture, in front of any cluster and with any password."""
    started: list[Gateway] = []
    cert, key = tls_files

    def start(cluster: PgCluster, password: str = UPSTREAM_PASSWORD, **options: Any) -> Gateway:
        base = tmp_path_factory.mktemp("gw-upstream")
        gw = spawn_gateway(base, cluster, cert, key, password, **options)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def session_facts(gw: Gateway) -> tuple[Any, ...]:
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "select current_user, current_database(),"
            " (select ssl from pg_stat_ssl where pid = pg_backend_pid())"
        ).fetchone()
        assert row is not None
        return tuple(row)


@pytest.mark.parametrize("auth", ["scram-sha-256", "md5", "password", "trust"])
def test_upstream_auth_method(
    auth: str, clusters: dict[str, PgCluster], launch: StartGateway
) -> None:
    cluster = clusters[auth]
    if auth == "md5":
        # Stored as md5, so PostgreSQL really sends an md5 challenge (not SCRAM).
        stored = cluster.sql(f"select rolpassword from pg_authid where rolname = '{UPSTREAM_USER}'")
        assert stored[0][0].startswith("md5")
    gw = launch(cluster, workers=1, upstream_extra='sslmode = "disable"')
    assert session_facts(gw) == (UPSTREAM_USER, DATABASE, False)
    if auth != "trust":
        # PostgreSQL logs how the backend authenticated: the configured method was used.
        pattern = rf'connection authenticated: identity="{UPSTREAM_USER}" method={auth}\b'
        assert re.search(pattern, cluster.server_log()), cluster.server_log()[-2000:]


def test_trust_upstream_never_uses_the_password(
    clusters: dict[str, PgCluster], launch: StartGateway
) -> None:
    gw = launch(clusters["trust"], password=WRONG_PASSWORD, workers=1,
                upstream_extra='sslmode = "disable"')
    assert session_facts(gw) == (UPSTREAM_USER, DATABASE, False)


@pytest.mark.parametrize("auth", ["scram-sha-256", "md5", "password"])
def test_wrong_upstream_password(
    auth: str, clusters: dict[str, PgCluster], launch: StartGateway
) -> None:
    gw = launch(clusters[auth], password=WRONG_PASSWORD, workers=1)
    client = RawClient(gw.port)
    client.startup()
    assert client.read_message() == (b"R", b"\x00\x00\x00\x03")
    client.send(message(b"p", CLIENT_SECRET.encode() + b"\x00"))
    received = bytearray()
    msg = client.read_message()
    assert msg is not None and msg[0] == b"E", msg
    received += msg[1]
    fields = error_fields(msg[1])
    assert fields["C"] == "08004", fields
    assert fields["S"] == "FATAL"
    assert client.read_message() is None, "connection not closed after the FATAL"
    text = received.decode(errors="replace")
    assert not re.search(rf"\b{UPSTREAM_USER}\b", text), text
    for secret in (WRONG_PASSWORD, UPSTREAM_PASSWORD):
        assert secret not in text
    assert "password authentication failed" not in text
    # A driver sees the same.
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gw.dsn())
    assert "could not authenticate to the upstream server" in str(info.value)
    assert WRONG_PASSWORD not in str(info.value)
    # The operator finds the reason in the gateway log, without the password.
    log = gw.log()
    assert f'password authentication failed for user "{UPSTREAM_USER}"' in log, log
    assert "28P01" in log
    assert WRONG_PASSWORD not in log
    assert UPSTREAM_PASSWORD not in log


def test_upstream_tls_verify_full(pg: PgCluster, launch: StartGateway) -> None:
    gw = launch(
        pg, workers=1,
        upstream_extra=f'sslmode = "verify-full"\nsslrootcert = "{pg.cert_file}"',
    )
    assert session_facts(gw) == (UPSTREAM_USER, DATABASE, True)


def test_upstream_tls_require(pg: PgCluster, launch: StartGateway) -> None:
    gw = launch(pg, workers=1, upstream_extra='sslmode = "require"')
    assert session_facts(gw) == (UPSTREAM_USER, DATABASE, True)


def test_upstream_tls_verify_full_with_wrong_root_refuses(
    pg: PgCluster, launch: StartGateway, tls_files: tuple[Path, Path]
) -> None:
    # The gateway's own client-facing certificate is a different self-signed CA.
    other_ca, _ = tls_files
    gw = launch(
        pg, workers=1,
        upstream_extra=f'sslmode = "verify-full"\nsslrootcert = "{other_ca}"',
    )
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gw.dsn())
    assert "could not connect to the upstream server" in str(info.value)
    assert "certificate verify failed" in gw.log()
