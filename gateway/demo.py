"""``pgwarden demo``: pgwarden in front of a throwaway local PostgreSQL, in one command.

It starts a PostgreSQL cluster from the Debian binaries in a scratch directory (SCRAM
authentication on, a random superuser password), creates a least-privilege upstream
user ``app`` and a database ``app``, starts a development OIDC issuer on loopback
(``pgwarden dev issuer``, not for production), writes a pgwarden configuration with TLS
(a self-signed certificate), that issuer, one static key and a role bound to both, prints
the connection strings to paste into psql (one with a static key, one with a freshly
minted token as the password), and runs the gateway in the foreground until Ctrl-C.
Everything it made is removed on exit unless ``--dir`` was given.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gateway.audit.keys import generate_key
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

# A development issuer (pgwarden dev issuer): NOT for production.
[[issuers]]
name = "dev"
issuer = "{issuer_url}"
audiences = ["pgwarden-demo"]
allow_insecure_http = true

[[roles]]
name = "app_rw"
upstream_user = "app"
password_file = "{password_file}"
databases = ["app"]

[[bindings]]
role = "app_rw"
issuer = "static"
subject = "demo"

[[bindings]]
role = "app_rw"
issuer = "dev"
subject = "demo-job"

# The signed audit log. No Kafka here: the spool is the audit log.
[audit]
spool_dir = "{spool_dir}"
signing_key_file = "{audit_key}"
"""


def _start_dev_issuer() -> tuple[subprocess.Popen[str], str, str]:
    """Run `pgwarden dev issuer` and read its URL and a minted token from its output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "dev", "issuer", "--subject", "demo-job",
         "--audience", "pgwarden-demo", "--ttl", "3600"],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    url = token = ""
    for line in proc.stdout:
        if line.startswith("issuer: "):
            url = line.split(" ", 1)[1].strip()
        elif line.startswith("# token for"):
            token = proc.stdout.readline().strip()
            break
    if not url or not token:
        proc.kill()
        raise RuntimeError("the development issuer did not start")
    return proc, url, token


def run_demo(args: argparse.Namespace) -> int:
    from gateway.server.supervisor import serve

    keep = bool(getattr(args, "dir", None))
    base = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="pgwarden-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    cluster = PgCluster(base / "postgres")
    issuer: subprocess.Popen[str] | None = None
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
        issuer, issuer_url, token = _start_dev_issuer()
        config_path = gateway_dir / "pgwarden.toml"
        audit_key = gateway_dir / "audit.key"
        generate_key(audit_key)
        spool_dir = gateway_dir / "audit"
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
                issuer_url=issuer_url,
                spool_dir=spool_dir,
                audit_key=audit_key,
            )
        )
        config = load_config(config_path)
        print(
            "\npgwarden is starting in front of it. Connect with a static key:\n\n"
            f'  psql "postgresql://demo:{client_secret}@127.0.0.1:{args.port}/app'
            '?sslmode=require"\n\n'
            "or as the machine identity 'demo-job' with an OIDC token as the password:\n\n"
            f'  PGPASSWORD={token} psql "host=127.0.0.1 port={args.port} dbname=app '
            'user=demo-job sslmode=require"\n\n'
            "Every statement is decided by the baseline policy (try DROP TABLE) and recorded\n"
            "in the signed audit log; verify it and stream its events with:\n\n"
            f"  pgwarden audit verify --spool {spool_dir} --keys {audit_key}.pub --allow-open\n"
            f"  pgwarden audit tail --spool {spool_dir} --keys {audit_key}.pub --follow\n\n"
            f"configuration: {config_path}\n"
            "Ctrl-C stops pgwarden and the throwaway PostgreSQL.\n",
            flush=True,
        )
        return serve(config, str(config_path))
    finally:
        if issuer is not None:
            issuer.terminate()
            issuer.wait()
        cluster.stop()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
