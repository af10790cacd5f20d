"""``pgwarden demo``: pgwarden in front of a throwaway local PostgreSQL, in one command.

It starts a PostgreSQL cluster from the Debian binaries in a scratch directory (SCRAM
authentication on, a random superuser password), creates a least-privilege upstream
user ``app`` and a database ``app``, writes a pgwarden configuration with TLS (a
self-signed certificate) and one client identity, prints the connection string to paste
into psql, and runs the gateway in the foreground until Ctrl-C. Everything it made is
removed on exit unless ``--dir`` was given.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import tempfile
from pathlib import Path

from gateway.config import load_config
from gateway.devcluster import PgCluster, make_self_signed_cert
from gateway.identity.static_secrets import hash_secret

_CONFIG = """\
# Written by `pgwarden demo`. See docs/configuration.md for every key.
[server]
listen_host = "127.0.0.1"
listen_port = {port}
workers = {workers}

[tls]
cert_file = "{cert}"
key_file = "{key}"
require_tls = true

[upstream]
host = "{pg_host}"
port = {pg_port}
user = "app"
password_file = "{password_file}"
sslmode = "prefer"

[[clients]]
user = "demo"
secret_hash = "{secret_hash}"
label = "pgwarden demo client"
"""


def run_demo(args: argparse.Namespace) -> int:
    from gateway.server.supervisor import serve

    keep = bool(getattr(args, "dir", None))
    base = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="pgwarden-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    cluster = PgCluster(base / "postgres")
    try:
        print(f"starting a throwaway PostgreSQL in {base / 'postgres'} ...", flush=True)
        cluster.start()
        upstream_password = secrets.token_urlsafe(24)
        cluster.create_role("app", upstream_password)
        cluster.create_database("app", owner="app")

        gateway_dir = base / "pgwarden"
        gateway_dir.mkdir(exist_ok=True)
        password_file = gateway_dir / "upstream-password"
        password_file.write_text(upstream_password + "\n")
        password_file.chmod(0o600)
        cert, key = make_self_signed_cert(gateway_dir)
        client_secret = secrets.token_urlsafe(18)
        config_path = gateway_dir / "pgwarden.toml"
        config_path.write_text(
            _CONFIG.format(
                port=args.port,
                workers=args.workers,
                cert=cert,
                key=key,
                pg_host=cluster.host,
                pg_port=cluster.port,
                password_file=password_file,
                secret_hash=hash_secret(client_secret),
            )
        )
        config = load_config(config_path)
        print(
            "\npgwarden is starting in front of it. Connect with:\n\n"
            f'  psql "postgresql://demo:{client_secret}@127.0.0.1:{args.port}/app'
            '?sslmode=require"\n\n'
            f"configuration: {config_path}\n"
            "Ctrl-C stops pgwarden and the throwaway PostgreSQL.\n",
            flush=True,
        )
        return serve(config, str(config_path))
    finally:
        cluster.stop()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
