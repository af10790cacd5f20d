"""The ``pgwarden`` command: argument parsing and dispatch to the subsystems.

Owns the command-line surface (subcommands, options, exit codes, what goes to stdout
versus stderr). It does no serving itself: ``serve`` and ``demo`` import their modules
lazily, so ``check-config`` and ``hash-secret`` stay fast and work even where the server's
dependencies (uvloop, sockets) are unavailable.

Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from typing import TextIO

from gateway import __version__
from gateway.config import Config, ConfigError, load_config
from gateway.identity.static_secrets import hash_secret

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgwarden",
        description="PostgreSQL data-path gateway for non-human identities.",
    )
    parser.add_argument("--version", action="version", version=f"pgwarden {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the gateway (supervisor and workers)")
    serve.add_argument("--config", required=True, metavar="FILE", help="TOML configuration file")

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", required=True, metavar="FILE", help="TOML configuration file")

    reload = sub.add_parser(
        "reload",
        help="validate the configuration, then make the running gateway reload it",
        description="Validates FILE (errors with file, line and key; nothing is signalled "
        "then) and sends SIGHUP to the supervisor named in server.pid_file. Sessions stay "
        "open; new statements are decided by the new policy.",
    )
    reload.add_argument("--config", required=True, metavar="FILE", help="TOML configuration file")
    reload.add_argument("--pid", type=int, default=None, help="supervisor pid (default: pid file)")

    stats = sub.add_parser(
        "stats",
        help="print the running gateway's counters (decision cache, sessions, audit, Kafka)",
        description="Reads the counters each worker writes at every heartbeat and prints "
        "them as JSON, or in the Prometheus text format with --prometheus.",
    )
    stats.add_argument("--config", required=True, metavar="FILE", help="TOML configuration file")
    stats.add_argument("--prometheus", action="store_true", help="Prometheus text format")

    sub.add_parser(
        "hash-secret",
        help="hash a static client secret for a [[clients]] entry",
        description="Reads the secret from stdin (or prompts on a terminal) and prints "
        "its scrypt hash for clients[].secret_hash.",
    )

    demo = sub.add_parser("demo", help="run a self-contained local demo")
    demo.add_argument("--port", type=int, default=6432, help="listen port (default: 6432)")
    demo.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    demo.add_argument(
        "--dir",
        default=None,
        metavar="DIR",
        help="working directory, kept on exit (default: a temp dir, removed on exit)",
    )
    policy = sub.add_parser(
        "policy",
        help="policy tools: 'pgwarden policy check --config F --role R \"SQL\"'",
        description="Dry-run statements against the configured policy.",
    )
    policy.add_argument("tool", choices=["check"], help="the policy tool to run")
    policy.add_argument("rest", nargs=argparse.REMAINDER, help="the tool's own options")

    dev = sub.add_parser(
        "dev",
        help="development helpers (NOT for production)",
        description="'pgwarden dev issuer [--subject S --audience A ...]' serves a local OIDC "
        "issuer on loopback and mints tokens for it. NOT for production.",
    )
    dev.add_argument("tool", choices=["issuer"], help="the helper to run")
    dev.add_argument("rest", nargs=argparse.REMAINDER, help="the helper's own options")
    _add_audit_commands(sub)
    # Parsed by gateway.audit.evidence (see _evidence); listed here for --help.
    sub.add_parser(
        "evidence",
        help="auditor evidence pack: 'pgwarden evidence --config F --since D --until D "
        "--out DIR' (and 'pgwarden evidence check DIR --keys ...')",
    )
    return parser


def _add_audit_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser(
        "keys",
        help="audit signing keys: 'pgwarden keys generate --out PATH'",
        description="Manage the Ed25519 keys that sign the audit log.",
    )
    keys_sub = keys.add_subparsers(dest="tool", metavar="TOOL", required=True)
    generate = keys_sub.add_parser(
        "generate",
        help="create a signing key (mode 0600) and its public key (PATH.pub)",
        description="Create a new Ed25519 signing key at PATH (mode 0600, never overwritten) "
        "and its public key at PATH.pub, and print the key id.",
    )
    generate.add_argument("--out", required=True, metavar="PATH", help="private key file")

    audit = sub.add_parser(
        "audit",
        help="verify or stream the signed audit log: 'pgwarden audit verify|tail ...'",
        description="Verify the signed audit log, or stream its verified events.",
    )
    audit_sub = audit.add_subparsers(dest="tool", metavar="TOOL", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="check signatures, hash chains, sequence gaps and epoch closure",
        description="Verify every record and print a report naming each failing batch. "
        "Exit status 0 = verified, 1 = problems found, 2 = bad usage or keys.",
    )
    tail = audit_sub.add_parser(
        "tail",
        help="print verified events as JSON lines (for SIEM shippers)",
        description="Print the events of verified batches as JSON lines; problems go to "
        "stderr. Exit status 1 if any were found.",
    )
    for parser in (verify, tail):
        parser.add_argument(
            "--spool", action="append", default=[], metavar="DIR",
            help="spool directory: audit.spool_dir, one gateway's or one worker's "
            "directory (repeatable)",
        )
        parser.add_argument(
            "--kafka", metavar="BOOTSTRAP", help="read the Kafka topic instead (host:port)"
        )
        parser.add_argument(
            "--topic", default="pgwarden.audit", help="Kafka topic (default: pgwarden.audit)"
        )
        parser.add_argument(
            "--keys", nargs="+", required=True, metavar="PATH",
            help="trusted public keys: *.pub files or directories of them",
        )
        parser.add_argument(
            "--partial-history", action="store_true",
            help="the input may start mid-epoch (Kafka retention, trimmed spool): warn only",
        )
    verify.add_argument(
        "--allow-open", action="store_true",
        help="the last epoch of a chain may lack its close batch (a running gateway): warn only",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    tail.add_argument(
        "--follow", action="store_true", help="keep reading records as they are appended"
    )
    tail.add_argument(
        "--interval", type=float, default=0.5, metavar="SECONDS",
        help="--follow polling interval (default: 0.5)",
    )
    tail.add_argument(
        "--format", choices=["json", "ecs"], default="json",
        help="json: {gateway, worker, epoch, seq, event}; ecs: Elastic Common Schema",
    )


def _load(path: str, err: TextIO) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=err)
        return None


def _summary(cfg: Config) -> str:
    s, t, u = cfg.server, cfg.tls, cfg.upstream
    if t.cert_file:
        tls = f"tls>={t.min_version}" + (" required" if t.require_tls else " optional")
    else:
        tls = "plaintext" + (" (loopback only)" if t.require_tls else "")
    workers = f"{s.workers} workers" if s.workers else f"{cfg.effective_workers()} workers (auto)"
    database = u.database or "<client's database>"
    return (
        f"listen {s.listen_host}:{s.listen_port}, {workers}, {tls}; "
        f"upstream {u.user}@{u.host}:{u.port}/{database} sslmode={u.sslmode}; "
        f"{len(cfg.clients)} static key(s), {len(cfg.issuers)} issuer(s), "
        f"{len(cfg.roles)} role(s), {len(cfg.bindings)} binding(s); "
        f"log {cfg.log.level}/{cfg.log.format}; {_audit_summary(cfg)}"
    )


def _audit_summary(cfg: Config) -> str:
    a = cfg.audit
    if a is None or not a.enabled:
        return "audit off"
    sink = (
        f"kafka {','.join(a.kafka.bootstrap_servers)}/{a.kafka.topic}"
        if a.kafka.bootstrap_servers else "no kafka: the spool is the log"
    )
    return f"audit {a.mode} to {a.spool_dir} ({sink})"


def _cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config, sys.stderr)
    if cfg is None:
        return EXIT_CONFIG
    print(f"{args.config}: OK")
    print(_summary(cfg))
    return EXIT_OK


def _cmd_reload(args: argparse.Namespace) -> int:
    import os
    import signal

    from gateway.config import default_pid_file

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"not reloaded: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    pid = args.pid
    pid_file = config.server.pid_file or default_pid_file(config.server.listen_port)
    if pid is None:
        try:
            with open(pid_file) as fh:
                pid = int(fh.readline().strip())
        except (OSError, ValueError) as exc:
            print(f"pgwarden: cannot read the supervisor's pid from {pid_file}: {exc}",
                  file=sys.stderr)
            return EXIT_FAILURE
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\x00", b" ")
    except OSError:
        cmdline = b""
    if b"pgwarden" not in cmdline and b"gateway.cli" not in cmdline:
        print(f"pgwarden: process {pid} (from {pid_file}) is not a running pgwarden",
              file=sys.stderr)
        return EXIT_FAILURE
    os.kill(pid, signal.SIGHUP)
    print(f"reload signalled to pgwarden supervisor {pid}")
    return EXIT_OK


def _cmd_stats(args: argparse.Namespace) -> int:
    import glob
    import json
    import os

    from gateway.config import default_pid_file

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    pid_file = config.server.pid_file or default_pid_file(config.server.listen_port)
    try:
        with open(pid_file) as fh:
            run_dir = fh.read().splitlines()[1]
    except (OSError, IndexError) as exc:
        print(f"pgwarden: no running gateway found through {pid_file}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    workers = []
    for path in sorted(glob.glob(os.path.join(run_dir, "worker-*.stats.json"))):
        with open(path) as fh:
            workers.append(json.load(fh))
    if not args.prometheus:
        print(json.dumps({"workers": workers}, indent=2))
        return EXIT_OK
    for line in _prometheus(workers):
        print(line)
    return EXIT_OK


def _prometheus(workers: list[dict[str, object]]) -> list[str]:
    """Numeric counters as ``pgwarden_<path>{worker="n"} value`` lines."""
    lines: list[str] = []

    def walk(prefix: str, value: object, worker: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}_{key}", inner, worker)
        elif isinstance(value, bool):
            lines.append(f'{prefix}{{worker="{worker}"}} {int(value)}')
        elif isinstance(value, (int, float)):
            lines.append(f'{prefix}{{worker="{worker}"}} {value}')

    for stats in workers:
        worker = stats.get("worker", "?")
        for key, value in stats.items():
            if key not in ("worker", "pid"):
                walk(f"pgwarden_{key}", value, worker)
    return lines


def _cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(args.config, sys.stderr)
    if cfg is None:
        return EXIT_CONFIG
    # Imported here: the server pulls in uvloop and sockets, which no other command needs.
    from gateway.server.supervisor import serve

    return serve(cfg, args.config)


def _read_secret() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("Secret: ")
        if getpass.getpass("Repeat: ") != first:
            print("pgwarden: secrets do not match", file=sys.stderr)
            return None
        return first
    data = sys.stdin.read()
    # `echo secret | pgwarden hash-secret` appends one newline that is not part of it.
    if data.endswith("\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith("\n") else data


def _cmd_hash_secret(args: argparse.Namespace) -> int:
    secret = _read_secret()
    if secret is None:
        return EXIT_FAILURE
    if not secret:
        print("pgwarden: empty secret", file=sys.stderr)
        return EXIT_CONFIG
    print(hash_secret(secret))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    # args.dir None means "a temp dir, removed on exit": gateway.demo owns that decision.
    from gateway.demo import run_demo

    return run_demo(args)


def _cmd_policy(args: argparse.Namespace) -> int:
    from gateway.policy.check import main as policy_check_main

    return policy_check_main(list(args.rest))


def _cmd_dev(args: argparse.Namespace) -> int:
    from gateway.identity.dev_issuer import main as dev_issuer_main

    return dev_issuer_main(list(args.rest))


def _cmd_keys(args: argparse.Namespace) -> int:
    # Imported here: gateway.audit pulls in asyncio (its writer), which check-config and
    # hash-secret must not pay for.
    from gateway.audit.commands import keys_generate

    return keys_generate(args)


def _cmd_audit(args: argparse.Namespace) -> int:
    from gateway.audit.commands import audit_tail, audit_verify

    return audit_verify(args) if args.tool == "verify" else audit_tail(args)


_COMMANDS = {
    "audit": _cmd_audit,
    "keys": _cmd_keys,
    "dev": _cmd_dev,
    "policy": _cmd_policy,
    "serve": _cmd_serve,
    "reload": _cmd_reload,
    "stats": _cmd_stats,
    "check-config": _cmd_check_config,
    "hash-secret": _cmd_hash_secret,
    "demo": _cmd_demo,
}


def _evidence(argv: Sequence[str]) -> int:
    # Its own parser, built only when asked for: it imports gateway.audit (and asyncio),
    # which the other commands do not need to pay for.
    from gateway.audit import evidence

    parser = argparse.ArgumentParser(prog="pgwarden evidence")
    evidence.add_arguments(parser)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    return evidence.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pgwarden`` console script; returns the process exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["evidence"]:
        return _evidence(args_list[1:])
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help/--version (0) and on usage errors (2); return instead so
        # main() can be called from tests and embedding code.
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
