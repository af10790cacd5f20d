"""A throwaway local PostgreSQL cluster built from the installed server binaries.

This module owns everything needed to run a disposable PostgreSQL for the test suite,
the ``pgwarden demo`` command and the benchmarks:

* finding the server binaries (:func:`pg_bindir`),
* picking a free loopback port (:func:`free_port`),
* making a self-signed TLS certificate usable by both PostgreSQL and pgwarden
  (:func:`make_self_signed_cert`),
* :class:`PgCluster`: ``initdb`` with a superuser password, a ``pg_hba.conf`` that asks
  every connection (TCP *and* Unix socket) for a password, ``ssl=on``, start / wait / stop,
  and small helpers to run setup SQL, create roles and databases and load pgbench data.

It is a development tool, not part of the data path: nothing under ``gateway/`` may import
it at run time except the CLI's ``demo`` command. ``psycopg`` (a test dependency) is only
imported when SQL is actually run.

Running as root: ``initdb`` and ``postgres`` refuse to run as root, so every server binary
is run as the ``postgres`` OS user (``runuser -u postgres --``; override the user with
``PGWARDEN_PG_OS_USER``) and the data directory, socket directory, log file and TLS key are
handed to that user. If that user cannot reach ``base_dir`` (for example pytest's 0700
``tmp_path``), the server's files go into a private directory under the system temp dir
instead, which is removed by :meth:`PgCluster.stop` after the server log has been copied
into ``base_dir``. As any other user the binaries are run directly.

Layout (``R`` = ``base_dir`` or that private directory)::

    R/data/            the cluster (PGDATA)
    R/sock/            unix_socket_directories
    R/tls/server.crt   self-signed certificate (ssl_cert_file)
    R/tls/server.key   its private key, mode 0600 (ssl_key_file)
    R/postgresql.log   server log (stderr of the postmaster)

Binary directory override: ``PGWARDEN_PG_BINDIR``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "ClusterError",
    "PgCluster",
    "free_port",
    "make_self_signed_cert",
    "pg_bindir",
]

_AUTH_METHODS = ("scram-sha-256", "md5", "password", "trust")
_UNIX_SOCKET_MAX = 100  # sun_path is 108 bytes; keep a margin for ".s.PGSQL.NNNNN"
_LOG_TAIL_LINES = 40


class ClusterError(RuntimeError):
    """The development cluster could not be created, started or used."""


# ---------------------------------------------------------------------------------------
# Free functions
# ---------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def pg_bindir() -> Path:
    """Directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Order: ``$PGWARDEN_PG_BINDIR``; ``pg_config --bindir``; the newest
    ``/usr/lib/postgresql/*/bin``; the directory of ``initdb`` on ``PATH``.
    """
    candidates: list[Path] = []
    env = os.environ.get("PGWARDEN_PG_BINDIR")
    if env:
        candidates.append(Path(env))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    globbed = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    candidates.extend(globbed)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for cand in candidates:
        if (cand / "initdb").is_file() and (cand / "pg_ctl").is_file():
            return cand
    raise ClusterError(
        "PostgreSQL server binaries not found (looked at $PGWARDEN_PG_BINDIR, "
        "pg_config --bindir, /usr/lib/postgresql/*/bin, PATH); install postgresql"
    )


def _san_entries(sans: Iterable[str]) -> list[Any]:
    from cryptography import x509

    entries: list[Any] = []
    for name in sans:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def make_self_signed_cert(
    directory: str | Path,
    common_name: str = "localhost",
    sans: Sequence[str] = ("localhost", "127.0.0.1"),
    *,
    owner: str | None = None,
    days: int = 30,
) -> tuple[Path, Path]:
    """Write ``server.crt`` and ``server.key`` (mode 0600) into ``directory``.

    An EC P-256 key and a self-signed certificate for ``common_name`` with the given
    subject alternative names (IP literals become IP SANs). The certificate is its own CA,
    so a client can verify it with ``sslrootcert=<cert>``. ``owner`` (an OS user name)
    chowns both files, e.g. to ``postgres`` when running as root: PostgreSQL insists that
    the key belongs to it (or to root with mode 0640), root can read it either way.
    Returns ``(cert_path, key_path)``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _dt.datetime.now(_dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_san_entries(sans)), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "server.crt"
    key_path = directory / "server.key"
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if owner is not None:
        for path in (cert_path, key_path):
            shutil.chown(path, user=owner)
    return cert_path, key_path


def _write_private(path: Path, data: bytes) -> None:
    """Create/overwrite ``path`` with mode 0600 from the start (no readable window)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _quote_conninfo(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no server log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------------------


class PgCluster:
    """A disposable PostgreSQL cluster under ``base_dir``, listening on 127.0.0.1.

    >>> with PgCluster(tmp_path) as pg:           # doctest: +SKIP
    ...     pg.create_role("app", "s3cret")
    ...     psycopg.connect(pg.dsn(user="app", password="s3cret"))

    ``auth`` is the ``pg_hba.conf`` method for every line (TCP and Unix socket):
    ``scram-sha-256`` (default), ``md5`` (passwords are then stored as md5 too),
    ``password`` or ``trust``. ``extra_conf`` is appended to ``postgresql.conf`` last.
    """

    def __init__(
        self,
        base_dir: str | Path,
        *,
        port: int | None = None,
        superuser: str = "postgres",
        password: str | None = None,
        auth: str = "scram-sha-256",
        extra_conf: dict[str, str] | None = None,
    ) -> None:
        if auth not in _AUTH_METHODS:
            raise ValueError(f"auth must be one of {_AUTH_METHODS}, not {auth!r}")
        self._base_dir = Path(base_dir).absolute()
        self._fixed_port = port
        self._port = port if port is not None else 0
        self._superuser = superuser
        self._password = password if password is not None else secrets.token_urlsafe(18)
        self._auth = auth
        self._extra_conf = dict(extra_conf or {})
        self._os_user: str | None = None
        if os.geteuid() == 0:
            self._os_user = os.environ.get("PGWARDEN_PG_OS_USER", "postgres")
        self._runtime_dir = self._base_dir
        self._private_dirs: list[Path] = []
        self._socket_dir = self._base_dir / "sock"
        self._bindir: Path | None = None
        self._running = False
        self._final_log: Path | None = None

    # -- properties ------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self._port

    @property
    def superuser(self) -> str:
        return self._superuser

    @property
    def password(self) -> str:
        return self._password

    @property
    def auth(self) -> str:
        return self._auth

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def data_dir(self) -> Path:
        return self._runtime_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self._socket_dir

    @property
    def log_file(self) -> Path:
        if self._final_log is not None:
            return self._final_log
        return self._runtime_dir / "postgresql.log"

    @property
    def tls_dir(self) -> Path:
        return self._runtime_dir / "tls"

    @property
    def cert_file(self) -> Path:
        """The server certificate; clients can use it as ``sslrootcert``."""
        return self.tls_dir / "server.crt"

    @property
    def key_file(self) -> Path:
        return self.tls_dir / "server.key"

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = pg_bindir()
        return self._bindir

    @property
    def running(self) -> bool:
        return self._running

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Create the cluster if needed, start it and wait until it accepts logins."""
        if self._running:
            return
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        attempts = 1 if self._fixed_port is not None else 3
        for attempt in range(attempts):
            if self._fixed_port is None:
                self._port = free_port()
            self._write_config()
            try:
                self._pg_ctl_start(timeout)
                break
            except ClusterError:
                if attempt + 1 < attempts and "already in use" in _tail(self.log_file):
                    continue
                raise
        self._running = True
        atexit.register(self.stop)
        self._wait_ready(timeout)
        if self._auth == "md5":
            # initdb stored the superuser's password as SCRAM; re-store it as md5.
            self.sql(
                "SET password_encryption = 'md5'; ALTER ROLE "
                f"{_quote_ident(self._superuser)} PASSWORD {_quote_literal(self._password)}"
            )

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``). Safe to call more than once."""
        if self._running or (self.data_dir / "postmaster.pid").exists():
            self._running = False
            with contextlib.suppress(ClusterError, OSError):
                self._run(
                    [
                        str(self.bindir / "pg_ctl"),
                        "stop",
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        "60",
                    ],
                    check=False,
                )
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        self._remove_private_dirs()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- client helpers --------------------------------------------------------------

    def dsn(
        self,
        dbname: str = "postgres",
        user: str | None = None,
        password: str | None = None,
        **kw: str | int,
    ) -> str:
        """A libpq conninfo string for this cluster over TCP.

        ``user`` defaults to the superuser, whose password is then filled in; for any other
        user the password is only included when given. Extra keywords (``sslmode``,
        ``host`` = :attr:`socket_dir` for the Unix socket, ...) are added or override.
        """
        if user is None:
            user = self._superuser
            if password is None:
                password = self._password
        params: dict[str, str | int] = {
            "host": self.host,
            "port": self._port,
            "dbname": dbname,
            "user": user,
        }
        if password is not None:
            params["password"] = password
        params.update(kw)
        return " ".join(f"{k}={_quote_conninfo(str(v))}" for k, v in params.items())

    def connect(
        self,
        dbname: str = "postgres",
        user: str | None = None,
        password: str | None = None,
        **kw: str | int,
    ) -> psycopg.Connection[Any]:
        """An autocommit psycopg connection (default: as the superuser); see :meth:`dsn`."""
        import psycopg

        kw.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn(dbname, user, password, **kw), autocommit=True)

    def sql(self, statement: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run ``statement`` as the superuser (autocommit); return the last result's rows."""
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(statement)
            if cur.description is None:
                return []
            return list(cur.fetchall())

    def create_role(
        self, name: str, password: str | None, *, login: bool = True, superuser: bool = False
    ) -> None:
        """``CREATE ROLE`` with a password (stored with the cluster's password encryption)."""
        opts = ["LOGIN" if login else "NOLOGIN", "SUPERUSER" if superuser else "NOSUPERUSER"]
        opts.append("PASSWORD NULL" if password is None else f"PASSWORD {_quote_literal(password)}")
        self.sql(f"CREATE ROLE {_quote_ident(name)} {' '.join(opts)}")

    def create_database(self, name: str, owner: str | None = None) -> None:
        stmt = f"CREATE DATABASE {_quote_ident(name)}"
        if owner is not None:
            stmt += f" OWNER {_quote_ident(owner)}"
        self.sql(stmt)

    def pgbench_init(self, dbname: str, scale: int) -> None:
        """``pgbench -i -s scale -q`` into ``dbname`` as the superuser."""
        pgbench = self.bindir / "pgbench"
        cmd = [
            str(pgbench) if pgbench.exists() else "pgbench",
            "-i",
            "-s",
            str(scale),
            "-q",
            "-h",
            self.host,
            "-p",
            str(self._port),
            "-U",
            self._superuser,
            dbname,
        ]
        proc = subprocess.run(
            cmd, env=self.client_env(), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise ClusterError(f"pgbench -i failed ({proc.returncode}):\n{proc.stderr}")

    def client_env(self, user: str | None = None, password: str | None = None) -> dict[str, str]:
        """``os.environ`` plus PGHOST/PGPORT/PGUSER/PGPASSWORD for libpq command-line tools."""
        env = dict(os.environ)
        env.update(
            PGHOST=self.host,
            PGPORT=str(self._port),
            PGUSER=user or self._superuser,
            PGPASSWORD=password if password is not None else self._password,
        )
        return env

    def server_log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    # -- internals -------------------------------------------------------------------

    def _os_cmd(self, argv: Sequence[str]) -> list[str]:
        if self._os_user is None:
            return list(argv)
        return ["runuser", "-u", self._os_user, "--", *argv]

    def _run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = self._os_cmd(argv)
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                cwd="/",
                env=dict(env) if env is not None else None,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterError(f"{' '.join(cmd)}: {exc}") from exc
        if check and proc.returncode != 0:
            raise ClusterError(
                f"{' '.join(cmd)} exited with {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def _os_user_can_reach(self, path: Path) -> bool:
        if self._os_user is None:
            return True
        proc = subprocess.run(
            self._os_cmd(["test", "-x", str(path)]), check=False, capture_output=True
        )
        return proc.returncode == 0

    def _make_private_dir(self, prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        path.chmod(0o711)
        self._private_dirs.append(path)
        return path

    def _prepare_dirs(self) -> None:
        if self._os_user is not None:
            try:
                pwd.getpwnam(self._os_user)
            except KeyError as exc:
                raise ClusterError(
                    f"running as root, but there is no OS user {self._os_user!r} to run "
                    "PostgreSQL as (set PGWARDEN_PG_OS_USER)"
                ) from exc
        self._base_dir.mkdir(parents=True, exist_ok=True)
        if (
            self._runtime_dir == self._base_dir
            and not (self.data_dir / "PG_VERSION").exists()
            and not self._os_user_can_reach(self._base_dir)
        ):
            self._runtime_dir = self._make_private_dir("pgwarden-pg-")
        self._socket_dir = self._runtime_dir / "sock"
        if len(str(self._socket_dir)) + len("/.s.PGSQL.65535") > _UNIX_SOCKET_MAX:
            self._socket_dir = self._make_private_dir("pgw-sock-")
        self._final_log = None
        for path in (self.data_dir, self._socket_dir):
            path.mkdir(mode=0o700, exist_ok=True)
            path.chmod(0o700)
        self.log_file.touch(exist_ok=True)
        if not self.cert_file.exists():
            make_self_signed_cert(self.tls_dir)
        if self._os_user is not None:
            for path in (
                self.data_dir,
                self._socket_dir,
                self.log_file,
                self.tls_dir,
                self.cert_file,
                self.key_file,
            ):
                shutil.chown(path, user=self._os_user)

    def _initdb(self) -> None:
        pwfile = self.tls_dir / "superuser.pw"
        _write_private(pwfile, self._password.encode() + b"\n")
        if self._os_user is not None:
            shutil.chown(pwfile, user=self._os_user)
        method = "scram-sha-256" if self._auth == "trust" else self._auth
        try:
            self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self._superuser,
                    f"--pwfile={pwfile}",
                    f"--auth-host={method}",
                    f"--auth-local={method}",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _conf(self) -> dict[str, str]:
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self._port),
            "unix_socket_directories": _quote_literal(str(self._socket_dir)),
            "max_connections": "300",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
            "log_connections": "on",
            "log_disconnections": "off",
            "log_statement": "'none'",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "ssl": "on",
            "ssl_cert_file": _quote_literal(str(self.cert_file)),
            "ssl_key_file": _quote_literal(str(self.key_file)),
            "password_encryption": "md5" if self._auth == "md5" else "'scram-sha-256'",
        }
        conf.update(self._extra_conf)
        return conf

    def _write_config(self) -> None:
        lines = ["# written by gateway.devcluster"]
        lines += [f"{key} = {value}" for key, value in self._conf().items()]
        (self.data_dir / "pgwarden-dev.conf").write_text("\n".join(lines) + "\n")
        main = self.data_dir / "postgresql.conf"
        text = main.read_text()
        if "include = 'pgwarden-dev.conf'" not in text:
            main.write_text(text + "\ninclude = 'pgwarden-dev.conf'\n")
        hba = [
            f"{kind} all all {addr} {self._auth}".replace("  ", " ")
            for kind, addr in (("local", ""), ("host", "127.0.0.1/32"), ("host", "::1/128"))
        ]
        (self.data_dir / "pg_hba.conf").write_text(
            "# written by gateway.devcluster: a password for everyone, socket included\n"
            + "\n".join(hba)
            + "\n"
        )
        if self._os_user is not None:
            for name in ("pgwarden-dev.conf", "postgresql.conf", "pg_hba.conf"):
                shutil.chown(self.data_dir / name, user=self._os_user)

    def _pg_ctl_start(self, timeout: float) -> None:
        proc = self._run(
            [
                str(self.bindir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(timeout)),
            ],
            check=False,
            timeout=timeout + 30,
        )
        if proc.returncode != 0:
            raise ClusterError(
                f"PostgreSQL did not start (pg_ctl exit {proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}\n"
                f"--- tail of {self.log_file} ---\n{_tail(self.log_file)}"
            )

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with self.connect(sslmode="disable") as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.1)
        raise ClusterError(
            f"PostgreSQL on {self.host}:{self._port} did not accept a login within "
            f"{timeout:.0f}s: {last}\n--- tail of {self.log_file} ---\n{_tail(self.log_file)}"
        )

    def _remove_private_dirs(self) -> None:
        if self._runtime_dir != self._base_dir:
            src = self._runtime_dir / "postgresql.log"
            dst = self._base_dir / "postgresql.log"
            with contextlib.suppress(OSError):
                shutil.copyfile(src, dst)
                self._final_log = dst
        for path in self._private_dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._private_dirs.clear()
        self._runtime_dir = self._base_dir
        self._socket_dir = self._base_dir / "sock"
