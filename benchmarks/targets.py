"""The things a benchmark connects to: PostgreSQL directly, PgBouncer, pgwarden.

Each proxy is started in front of a :class:`gateway.devcluster.PgCluster` on a free loopback
port, with its configuration, secrets and log in a work directory, and is waited for until
a real login through it succeeds. Every client-facing target uses the same database, role
and no TLS, so that the only difference between them is the proxy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.proctools import CpuTimes, ManagedProcess, TreeMemory
from gateway.devcluster import PgCluster, free_port

LOOPBACK = "127.0.0.1"
PG_OS_USER = "postgres"  # who runs pgbouncer when we are root (it refuses to run as root)


class TargetError(RuntimeError):
    """A target could not be started or does not accept logins."""


def _quote(value: str) -> str:
    """A libpq conninfo value."""
    if value and not any(c.isspace() or c in "'\\" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class Target:
    """Where a client connects to, and the proxy process behind it (None = direct)."""

    name: str
    host: str
    port: int
    dbname: str
    user: str
    password: str
    process: ManagedProcess | None = None

    def conninfo(self, **extra: str | int) -> str:
        params: dict[str, str | int] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "password": self.password,
            "sslmode": "disable",
        }
        params.update(extra)
        return " ".join(f"{k}={_quote(str(v))}" for k, v in params.items())

    def client_env(self) -> dict[str, str]:
        """Environment for libpq tools (pgbench, psql) connecting to this target."""
        env = dict(os.environ)
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=self.user,
            PGPASSWORD=self.password,
            PGDATABASE=self.dbname,
            PGSSLMODE="disable",
        )
        return env

    def proxy_cpu_seconds(self) -> float | None:
        return None if self.process is None else self.process.cpu_seconds()

    def proxy_cpu_times(self) -> CpuTimes | None:
        return None if self.process is None else self.process.cpu_times()

    def proxy_memory(self) -> TreeMemory | None:
        return None if self.process is None else self.process.memory()


def direct_target(cluster: PgCluster, dbname: str, user: str, password: str) -> Target:
    return Target("direct", cluster.host, cluster.port, dbname, user, password)


def wait_ready(target: Target, timeout: float = 30.0) -> None:
    """Until a login and ``SELECT 1`` through ``target`` succeed; fail early if it died."""
    import psycopg

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        proc = target.process
        if proc is not None and proc.exit_code() is not None:
            raise TargetError(
                f"{target.name} exited with {proc.exit_code()}\n"
                f"--- tail of {proc.log_path} ---\n{proc.log_tail()}"
            )
        try:
            with psycopg.connect(target.conninfo(connect_timeout=3)) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.Error as exc:
            last = exc
            time.sleep(0.2)
    tail = "" if target.process is None else target.process.log_tail()
    raise TargetError(f"{target.name} not ready after {timeout:.0f}s: {last}\n{tail}")


def _start_and_wait(target: Target) -> None:
    """Start the target's process; if it never becomes ready (or we are interrupted while
    waiting), stop it again before the error propagates."""
    assert target.process is not None
    target.process.start()
    try:
        wait_ready(target)
    except BaseException:
        target.process.stop()
        raise


# -- PgBouncer ----------------------------------------------------------------------------


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if found is None:
        raise TargetError("pgbouncer is not installed")
    return found


def _as_pg_os_user(argv: list[str]) -> list[str]:
    """Drop root for programs that refuse it; ``setpriv`` execs, so the pid stays ours."""
    if os.geteuid() != 0:
        return argv
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={PG_OS_USER}", f"--regid={PG_OS_USER}", "--init-groups", *argv]
    return ["runuser", "-u", PG_OS_USER, "--", *argv]


PGBOUNCER_AUTH = ("scram-secret", "scram-plain", "plain")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _pgbouncer_ini(
    cluster: PgCluster,
    dbname: str,
    port: int,
    workdir: Path,
    max_clients: int,
    pool_size: int,
    auth_type: str,
) -> str:
    return f"""\
[databases]
{dbname} = host={cluster.host} port={cluster.port} dbname={dbname}

[pgbouncer]
listen_addr = {LOOPBACK}
listen_port = {port}
unix_socket_dir =
auth_type = {auth_type}
auth_file = {workdir / "userlist.txt"}
pool_mode = session
max_client_conn = {max_clients}
default_pool_size = {pool_size}
server_tls_sslmode = disable
client_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
logfile = {workdir / "pgbouncer.log"}
"""


def start_pgbouncer(
    cluster: PgCluster,
    workdir: Path,
    *,
    dbname: str,
    user: str,
    password: str,
    clients: int,
    pool_size: int | None = None,
    name: str = "pgbouncer",
    auth: str = "scram-secret",
) -> Target:
    """PgBouncer in session mode.

    ``clients`` is the most clients that will be connected at once; the server pool is
    ``pool_size`` (default ``clients + 4``), so that in session mode no client waits for a
    server connection. ``auth``:

    - ``scram-secret`` (default, the usual production setup): ``auth_type =
      scram-sha-256`` with the role's SCRAM verifier from ``pg_authid`` in the userlist;
      PgBouncer checks the client's proof with HMACs and logs in upstream with the keys
      of the client's own SCRAM exchange. The client (libpq) pays the PBKDF2.
    - ``scram-plain``: the same with the plain password in the userlist, which makes
      PgBouncer run the 4096-iteration PBKDF2 for every login too.
    - ``plain``: ``auth_type = plain``, the client sends the password in cleartext, as it
      does to pgwarden's static secrets (no key derivation on either side).
    """
    if auth not in PGBOUNCER_AUTH:
        raise ValueError(f"auth must be one of {PGBOUNCER_AUTH}, not {auth!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ini = workdir / "pgbouncer.ini"
    pool = clients + 4 if pool_size is None else pool_size
    auth_type = "plain" if auth == "plain" else "scram-sha-256"
    ini.write_text(
        _pgbouncer_ini(cluster, dbname, port, workdir, clients * 2 + 20, pool, auth_type)
    )
    secret = password
    if auth == "scram-secret":
        rows = cluster.sql(f"SELECT rolpassword FROM pg_authid WHERE rolname = {_literal(user)}")
        if not rows or not str(rows[0][0]).startswith("SCRAM-SHA-256$"):
            raise TargetError(f"role {user!r} has no SCRAM verifier for PgBouncer's userlist")
        secret = str(rows[0][0])
    userlist = workdir / "userlist.txt"
    userlist.write_text(f'"{user}" "{secret}"\n')
    userlist.chmod(0o600)
    if os.geteuid() == 0:
        for path in (workdir, ini, userlist):
            shutil.chown(path, user=PG_OS_USER)
    argv = _as_pg_os_user([pgbouncer_binary(), str(ini)])
    proc = ManagedProcess(name, argv, workdir / "stdout.log", stop_signal=signal.SIGTERM)
    target = Target(name, LOOPBACK, port, dbname, user, password, proc)
    _start_and_wait(target)
    return target


# -- pgwarden -----------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string of printable text is a TOML basic string


def _pgwarden_toml(
    cluster: PgCluster,
    port: int,
    workers: int,
    upstream_user: str,
    password_file: Path,
    client_user: str,
    secret_hash: str,
    extra: str = "",
) -> str:
    return f"""\
# written by benchmarks/targets.py
[server]
listen_host = {_toml_str(LOOPBACK)}
listen_port = {port}
workers = {workers}

[tls]
require_tls = false

[upstream]
host = {_toml_str(cluster.host)}
port = {cluster.port}
user = {_toml_str(upstream_user)}
password_file = {_toml_str(str(password_file))}
sslmode = "disable"

[[clients]]
user = {_toml_str(client_user)}
secret_hash = {_toml_str(secret_hash)}

{extra}
"""


def pgwarden_command() -> list[str]:
    exe = shutil.which("pgwarden")
    return [exe] if exe else [sys.executable, "-m", "gateway.cli"]


def _check_config(config: Path) -> None:
    proc = subprocess.run(
        [*pgwarden_command(), "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        raise TargetError(f"pgwarden check-config failed:\n{proc.stdout}{proc.stderr}")


def start_pgwarden(
    cluster: PgCluster,
    workdir: Path,
    *,
    dbname: str,
    user: str,
    upstream_password: str,
    client_secret: str,
    workers: int,
    name: str = "pgwarden",
    extra_toml: str = "",
    source: Path | None = None,
) -> Target:
    """``pgwarden serve`` with ``workers`` workers; the client logs in with a static secret.

    ``source``: run the ``gateway`` package of that source tree (a checkout with its C
    extensions built in place) instead of the installed one, to compare revisions."""
    from gateway.identity.static_secrets import hash_secret

    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    password_file = workdir / "upstream.pw"
    password_file.write_text(upstream_password + "\n")
    password_file.chmod(0o600)
    config = workdir / "pgwarden.toml"
    secret_hash = hash_secret(client_secret)
    config.write_text(
        _pgwarden_toml(
            cluster, port, workers, user, password_file, user, secret_hash, extra_toml
        )
    )
    _check_config(config)
    command = pgwarden_command() if source is None else [
        "env", f"PYTHONPATH={source}", sys.executable, "-m", "gateway.cli"]
    argv = [*command, "serve", "--config", str(config)]
    proc = ManagedProcess(name, argv, workdir / "pgwarden.log", stop_signal=signal.SIGINT)
    target = Target(name, LOOPBACK, port, dbname, user, client_secret, proc)
    _start_and_wait(target)
    return target
