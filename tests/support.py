"""Constants and helpers shared by the end-to-end tests (imported by conftest.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.devcluster import PgCluster
from gateway.identity.static_secrets import hash_secret

UPSTREAM_USER = "app"
UPSTREAM_PASSWORD = "upstream-Secret-7d1f0c"  # must never reach a client or a log
CLIENT_USER = "job"
CLIENT_SECRET = "client-secret-42"
DATABASE = "app"

# The policy of the shared test gateway: the baseline pack, for a read-write job that
# owns its tables (an ETL loader, a migration job): it may drop and truncate them, and
# the test scripts raise notices from DO blocks. Everything else is the baseline's call,
# so the compatibility matrix shows that drivers' and tools' own housekeeping passes it.
READ_WRITE_POLICY = """
[policy]
baseline = true

[[rules]]
id = "rw.own_tables"
action = "allow"
commands = ["DROP TABLE", "DROP INDEX", "DROP VIEW", "DROP SEQUENCE", "DROP TYPE",
            "DROP FUNCTION", "DROP MATERIALIZED VIEW", "TRUNCATE", "ALTER TABLE DROP *"]
overrides = ["baseline.drop", "baseline.truncate", "baseline.alter_table_drop"]
message = "a read-write job manages its own tables"

[[rules]]
id = "rw.do_blocks"
action = "allow"
kinds = ["DO"]
overrides = ["baseline.dynamic_sql"]
"""
# No policy beyond the always-on integrity rule: what pure pass-through tests use.
OPEN_POLICY = """
[policy]
baseline = false
"""


@dataclass
class Gateway:
    """A running ``pgwarden serve`` process."""

    proc: subprocess.Popen[bytes]
    port: int
    config_path: Path
    log_path: Path
    cert: Path
    host: str = "127.0.0.1"
    user: str = CLIENT_USER
    secret: str = CLIENT_SECRET
    extra: dict[str, Any] = field(default_factory=dict)

    def dsn(self, sslmode: str = "require", **kw: str) -> str:
        parts = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "password": self.secret,
            "dbname": DATABASE,
            "sslmode": sslmode,
        }
        parts.update(kw)
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def env(self, sslmode: str = "require") -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user,
            PGPASSWORD=self.secret, PGDATABASE=DATABASE, PGSSLMODE=sslmode,
        )
        return env

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        """The log once it contains ``text`` (a worker writes it asynchronously), or as it
        is after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return log

    def children(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def wait_listening(
    port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgwarden exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgwarden did not listen on {port}:\n{log.read_text()}")


def write_config(
    path: Path,
    pg: PgCluster,
    port: int,
    cert: Path,
    key: Path,
    password_file: Path,
    *,
    workers: int = 2,
    heartbeat_timeout: float = 10.0,
    server_extra: str = "",
    tls_extra: str = "allow_plaintext_loopback = true",
    upstream_extra: str = 'sslmode = "prefer"',
    policy: str | None = None,
    audit: str = "",
) -> None:
    """A gateway config for the test cluster; ``policy`` replaces READ_WRITE_POLICY."""
    path.write_text(
        f"""
[server]
listen_host = "127.0.0.1"
listen_port = {port}
workers = {workers}
heartbeat_interval = 0.5
heartbeat_timeout = {heartbeat_timeout}
graceful_timeout = 10.0
{server_extra}

[tls]
cert_file = "{cert}"
key_file = "{key}"
require_tls = true
{tls_extra}

[upstream]
host = "{pg.host}"
port = {pg.port}
user = "{UPSTREAM_USER}"
password_file = "{password_file}"
{upstream_extra}

[log]
level = "debug"

[[clients]]
user = "{CLIENT_USER}"
secret_hash = "{hash_secret(CLIENT_SECRET)}"

{READ_WRITE_POLICY if policy is None else policy}

{audit}
"""
    )




PGBENCH_DATABASE = "pgbench"


def pgbench_database(pg: PgCluster) -> str:
    """A database with pgbench's tables (scale 1) that the upstream user may read; kept
    apart from DATABASE, whose contents the dump/restore tests compare."""
    if not pg.sql(f"select 1 from pg_database where datname = '{PGBENCH_DATABASE}'"):
        pg.create_database(PGBENCH_DATABASE, owner=UPSTREAM_USER)
        pg.pgbench_init(PGBENCH_DATABASE, 1)
        pg.sql(f"grant select on all tables in schema public to {UPSTREAM_USER}",
               dbname=PGBENCH_DATABASE)
    return PGBENCH_DATABASE


class RawClient:
    """A byte-level PostgreSQL client for sending what no driver would send."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def startup(self, user: str = CLIENT_USER, database: str = DATABASE, **params: str) -> None:
        body = b"\x00\x03\x00\x00"
        for key, value in {"user": user, "database": database, **params}.items():
            body += key.encode() + b"\x00" + value.encode() + b"\x00"
        body += b"\x00"
        self.send(len(body + b"1234").to_bytes(4, "big") + body)

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def read_message(self) -> tuple[bytes, bytes] | None:
        """The next (type, body), or None when the server closed the connection."""
        if not self._fill(5):
            return None
        length = int.from_bytes(self.buf[1:5], "big")
        if not self._fill(1 + length):
            return None
        msg_type, body = self.buf[:1], self.buf[5 : 1 + length]
        self.buf = self.buf[1 + length :]
        return msg_type, body

    def read_until(self, msg_type: bytes) -> list[tuple[bytes, bytes]]:
        seen = []
        while True:
            msg = self.read_message()
            if msg is None:
                return seen
            seen.append(msg)
            if msg[0] == msg_type:
                return seen

    def login(self, secret: str = CLIENT_SECRET) -> list[tuple[bytes, bytes]]:
        self.startup()
        assert self.read_message() == (b"R", b"\x00\x00\x00\x03")
        self.send(message(b"p", secret.encode() + b"\x00"))
        return self.read_until(b"Z")

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return True

    def close(self) -> None:
        self.sock.close()


def vm_rss(pid: int) -> int:
    """Resident memory of a process, in bytes (/proc/<pid>/status VmRSS)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def message(msg_type: bytes, body: bytes = b"") -> bytes:
    return msg_type + (len(body) + 4).to_bytes(4, "big") + body


def error_fields(body: bytes) -> dict[str, str]:
    return {
        chr(part[0]): part[1:].decode()
        for part in body.split(b"\x00")
        if part
    }


def spawn_gateway(
    base: Path,
    cluster: PgCluster,
    cert: Path,
    key: Path,
    upstream_password: str = UPSTREAM_PASSWORD,
    **options: Any,
) -> Gateway:
    """Run ``pgwarden serve`` from a config in ``base`` (as the ``start_gateway`` fixture
    does), in front of any cluster and with any upstream password. The caller stops it."""
    import sys

    from gateway.devcluster import free_port

    password_file = base / "upstream-password"
    password_file.write_text(upstream_password + "\n")
    password_file.chmod(0o600)
    port = free_port()
    config_path = base / "pgwarden.toml"
    write_config(config_path, cluster, port, cert, key, password_file, **options)
    log_path = base / "pgwarden.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    gw = Gateway(proc, port, config_path, log_path, cert)
    try:
        wait_listening(port, proc, log_path)
    except BaseException:
        gw.stop()
        raise
    return gw
