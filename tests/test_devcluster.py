"""gateway.devcluster: a throwaway PostgreSQL that demands a password from everyone."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.devcluster import (
    ClusterError,
    PgCluster,
    free_port,
    make_self_signed_cert,
    pg_bindir,
)

try:
    pg_bindir()
except ClusterError:  # pragma: no cover - depends on the machine
    pytest.skip("PostgreSQL server binaries are not installed", allow_module_level=True)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    with PgCluster(tmp_path_factory.mktemp("pg")) as pg:
        yield pg


def _auth_lines(pg: PgCluster) -> list[str]:
    return [line for line in pg.server_log().splitlines() if "connection authorized" in line]


def test_bindir_has_server_binaries() -> None:
    bindir = pg_bindir()
    assert (bindir / "initdb").is_file()
    assert (bindir / "postgres").is_file()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_superuser_connects_with_scram(cluster: PgCluster) -> None:
    with psycopg.connect(cluster.dsn(sslmode="disable")) as conn:
        row = conn.execute(
            "SELECT current_user, current_setting('password_encryption'), "
            "(SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid"
            " WHERE rolname = current_user)"
        ).fetchone()
    assert row == (cluster.superuser, "scram-sha-256", True)
    assert cluster.host == "127.0.0.1"
    assert cluster.port > 0


def test_wrong_password_is_refused(cluster: PgCluster) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(cluster.dsn(password="not-the-password", sslmode="disable"))


def test_missing_password_is_refused_over_tcp_and_socket(
    cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    for host in (cluster.host, str(cluster.socket_dir)):
        dsn = cluster.dsn(user=cluster.superuser, host=host, sslmode="disable")
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(dsn, passfile=os.devnull)


def test_unix_socket_with_password(cluster: PgCluster) -> None:
    assert (cluster.socket_dir / f".s.PGSQL.{cluster.port}").exists()
    with psycopg.connect(cluster.dsn(host=str(cluster.socket_dir))) as conn:
        assert conn.execute("SELECT inet_server_addr()").fetchone() == (None,)


def test_tls_is_on_and_verifiable(cluster: PgCluster) -> None:
    dsn = cluster.dsn(sslmode="verify-full", sslrootcert=str(cluster.cert_file))
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row == (True,)
    assert stat.S_IMODE(cluster.key_file.stat().st_mode) == 0o600


def test_sql_returns_rows_and_handles_utility(cluster: PgCluster) -> None:
    assert cluster.sql("SELECT 1, 'a'") == [(1, "a")]
    assert cluster.sql("CREATE TABLE IF NOT EXISTS t_sql (x int)") == []
    assert cluster.sql("SHOW max_connections") == [("300",)]
    assert cluster.sql("SHOW listen_addresses") == [("127.0.0.1",)]
    assert cluster.sql("SHOW fsync") == [("off",)]


def test_create_role_and_database(cluster: PgCluster) -> None:
    cluster.create_role("app_user", "app 'secret'")
    cluster.create_database("appdb", owner="app_user")
    dsn = cluster.dsn("appdb", user="app_user", password="app 'secret'")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "app_user",
            "appdb",
        )
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(cluster.dsn("appdb", user="app_user", password="nope"))
    assert any("user=app_user database=appdb" in line for line in _auth_lines(cluster))


def test_pgbench_init(cluster: PgCluster) -> None:
    cluster.create_database("bench")
    cluster.pgbench_init("bench", scale=1)
    assert cluster.sql("SELECT count(*) FROM pgbench_accounts", dbname="bench") == [(100000,)]


def test_dsn_quotes_values(cluster: PgCluster) -> None:
    dsn = cluster.dsn(user="u", password="a b'c\\")
    assert "password='a b\\'c\\\\'" in dsn
    assert "password" not in cluster.dsn(user="someone")


def test_self_signed_cert(tmp_path: Path) -> None:
    from cryptography import x509

    sans_in = ("db.example", "::1")
    cert_path, key_path = make_self_signed_cert(tmp_path / "tls", "db.example", sans_in)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["db.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["::1"]


def test_stop_is_idempotent_and_md5(tmp_path: Path) -> None:
    pg = PgCluster(tmp_path / "md5", auth="md5", password="fixed-pw")
    pg.stop()  # never started: a no-op
    pg.start()
    try:
        assert pg.password == "fixed-pw"
        stored = pg.sql("SELECT rolpassword FROM pg_authid WHERE rolname = current_user")
        assert stored[0][0].startswith("md5")
        with psycopg.connect(pg.dsn(sslmode="disable")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        port = pg.port
    finally:
        pg.stop()
    pg.stop()
    assert not pg.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.dsn(connect_timeout=2, sslmode="disable"))
    assert "database system is shut down" in pg.server_log()
    with socket.socket() as sock:
        # Nothing listens on the port any more. (SO_REUSEADDR: the server's side of the
        # connection above may linger in TIME_WAIT, which is not a listener.)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    pg = PgCluster(tmp_path / "bad", extra_conf={"shared_buffers": "'not-a-size'"})
    with pytest.raises(ClusterError, match="shared_buffers"):
        pg.start()
    pg.stop()
