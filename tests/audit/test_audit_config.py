"""[audit] configuration: defaults, validation with file:line:key, paths, docs, example."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import msgspec
import pytest

from gateway.audit import generate_key
from gateway.config import (
    AuditConfig,
    AuditKafkaConfig,
    ConfigError,
    ConfigIssue,
    load_config,
)

REPO = Path(__file__).resolve().parents[2]

BASE = """
[tls]
allow_plaintext_loopback = true

[upstream]
user = "postgres"
"""


def write(tmp_path: Path, audit: str) -> Path:
    path = tmp_path / "pgwarden.toml"
    path.write_text(textwrap.dedent(BASE).lstrip("\n") + textwrap.dedent(audit))
    return path


def issues(path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.issues


@pytest.fixture
def key(tmp_path: Path) -> Path:
    generate_key(tmp_path / "audit.key")
    return tmp_path / "audit.key"


def test_no_section_means_no_audit(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).audit is None


def test_defaults_and_relative_paths(tmp_path: Path, key: Path) -> None:
    cfg = load_config(write(tmp_path, """
        [audit]
        spool_dir = "spool"
        signing_key_file = "audit.key"
    """))
    assert cfg.audit == AuditConfig(
        spool_dir=str(tmp_path / "spool"), signing_key_file=str(key)
    )
    a = cfg.audit
    assert (a.enabled, a.mode, a.on_spool_full) == (True, "async", "fail_closed")
    assert (a.segment_bytes, a.spool_max_bytes) == (16 << 20, 1 << 30)
    assert (a.flush_events, a.flush_interval) == (8192, 0.2)
    assert a.compression == "zstd"
    assert (a.statement_text, a.record_parameters) == ("exact", False)
    assert a.kafka == AuditKafkaConfig()
    assert a.kafka.bootstrap_servers == [] and a.kafka.topic == "pgwarden.audit"


def test_every_key(tmp_path: Path, key: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    cfg = load_config(write(tmp_path, """
        [audit]
        mode = "strict"
        spool_dir = "/var/lib/pgwarden/audit"
        segment_bytes = 1048576
        spool_max_bytes = 10485760
        on_spool_full = "fail_open"
        flush_events = 64
        flush_interval = 0.01
        compression = "none"
        signing_key_file = "audit.key"
        statement_text = "normalized"
        record_parameters = true

        [audit.kafka]
        bootstrap_servers = ["k1:9093", "[::1]:9093"]
        topic = "audit.pgwarden"
        client_id = "pgw-eu1"
        request_timeout = 10
        security_protocol = "SSL"
        ssl_cafile = "ca.pem"
        ssl_certfile = "client.pem"
        ssl_keyfile = "client.key"
    """))
    assert cfg.audit is not None
    assert cfg.audit.spool_dir == "/var/lib/pgwarden/audit"
    assert cfg.audit.kafka.ssl_keyfile == str(tmp_path / "client.key")
    assert cfg.audit.kafka.request_timeout == 10.0


def test_problems_carry_file_line_and_key(tmp_path: Path, key: Path) -> None:
    path = write(tmp_path, """
        [audit]
        spool_dir = "spool"
        signing_key_file = "audit.key"
        flush_events = 0
        flush_interval = 0
        segment_bytes = 100
        mode = "paranoid"
        spol_max_bytes = 1

        [audit.kafka]
        bootstrap_servers = ["nohost"]
        topic = "bad topic"
    """)
    found = [(i.line, i.key) for i in issues(path)]
    # Shape errors first (msgspec stops at the first; the walk finds them all).
    assert found == [(13, "audit.mode"), (14, "audit.spol_max_bytes")]
    assert "did you mean 'spool_max_bytes'" in issues(path)[1].message

    text = path.read_text().replace('mode = "paranoid"\n', "").replace("spol_max_bytes = 1\n", "")
    path.write_text(text)
    got = {(i.line, i.key): i.message for i in issues(path)}
    assert got[(10, "audit.flush_events")] == "must be between 1 and 65536, got 0"
    assert "more than 0" in got[(11, "audit.flush_interval")]
    assert "between 65536 (64 KiB)" in got[(12, "audit.segment_bytes")]
    assert got[(15, "audit.kafka.bootstrap_servers")] == "'nohost' is not host:port"
    assert "is not a Kafka topic name" in got[(16, "audit.kafka.topic")]


def test_compression_is_checked_with_file_line_and_key(tmp_path: Path, key: Path) -> None:
    path = write(tmp_path, """
        [audit]
        spool_dir = "spool"
        signing_key_file = "audit.key"
        compression = "gzip"
    """)
    [issue] = issues(path)
    assert (issue.file, issue.line, issue.key) == (str(path), 10, "audit.compression")
    assert issue.message == "Invalid enum value 'gzip'"  # as for every other enum key
    assert str(issue).startswith(f"{path}:10: audit.compression: ")
    path.write_text(path.read_text().replace('compression = "gzip"', "compression = true"))
    [issue] = issues(path)
    assert (issue.line, issue.key) == (10, "audit.compression")
    assert "Expected str, got bool" in issue.message
    path.write_text(path.read_text().replace("compression = true", 'compression = "none"'))
    cfg = load_config(path)
    assert cfg.audit is not None and cfg.audit.compression == "none"


def test_required_keys(tmp_path: Path) -> None:
    found = {(i.line, i.key): i.message for i in issues(write(tmp_path, "\n[audit]\n"))}
    assert found == {
        (7, "audit.spool_dir"): "missing required key 'spool_dir'",
        (7, "audit.signing_key_file"): "missing required key 'signing_key_file'",
    }


def test_signing_key_must_exist_and_be_private(tmp_path: Path, key: Path) -> None:
    path = write(tmp_path, """
        [audit]
        spool_dir = "spool"
        signing_key_file = "missing.key"
    """)
    [issue] = issues(path)
    assert (issue.line, issue.key) == (9, "audit.signing_key_file")
    assert "No such file" in issue.message and "pgwarden keys generate" in issue.message
    path.write_text(path.read_text().replace("missing.key", "audit.key"))
    os.chmod(key, 0o640)
    [issue] = issues(path)
    assert f"mode 0640); run: chmod 600 {key}" in issue.message


def test_disabled_audit_is_not_checked(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
        [audit]
        enabled = false
        spool_dir = ""
        signing_key_file = "nope"
    """))
    assert cfg.audit is not None and not cfg.audit.enabled


def test_kafka_tls_settings(tmp_path: Path, key: Path) -> None:
    path = write(tmp_path, """
        [audit]
        spool_dir = "spool"
        signing_key_file = "audit.key"
        segment_bytes = 1048576
        spool_max_bytes = 1048576

        [audit.kafka]
        bootstrap_servers = ["k:9092"]
        ssl_cafile = "ca.pem"
    """)
    got = {i.key: i.message for i in issues(path)}
    assert got["audit.spool_max_bytes"].startswith("must be at least twice segment_bytes")
    assert got["audit.kafka.ssl_cafile"] == 'only used with security_protocol = "SSL"'
    path.write_text(path.read_text().replace(
        'ssl_cafile = "ca.pem"', 'security_protocol = "SSL"\nssl_certfile = "c.pem"'
    ))
    got = {i.key: i.message for i in issues(path)}
    assert got["audit.kafka.ssl_keyfile"] == "ssl_certfile and ssl_keyfile must be set together"
    assert "cannot read" in got["audit.kafka.ssl_certfile"]


def test_docs_mention_every_audit_key() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert "## `[audit]`" in doc and "### `[audit.kafka]`" in doc
    for struct in (AuditConfig, AuditKafkaConfig):
        for field in msgspec.structs.fields(struct):
            assert f"`{field.name}`" in doc, f"{struct.__name__}.{field.name} is undocumented"


def test_deploy_example_audit_block_is_valid(tmp_path: Path) -> None:
    """The [audit] block of deploy/pgwarden.toml, switched on, with a real key."""
    text = (REPO / "deploy" / "pgwarden.toml").read_text()
    begin, end = "# ----- audit example: begin -----", "# ----- audit example: end -----"
    block = text.split(begin + "\n")[1].split(end)[0]
    assert all(line.startswith("# ") or line == "#" for line in block.splitlines())
    audit = "\n".join(line[2:] for line in block.splitlines())
    key_path = "/etc/pgwarden/audit.key"
    assert key_path in audit
    generate_key(tmp_path / "audit.key")
    audit = audit.replace(key_path, str(tmp_path / "audit.key"))
    for name in ("kafka-ca.pem", "pgwarden-kafka.crt", "pgwarden-kafka.key"):
        (tmp_path / name).write_text("x")
    audit = audit.replace("/etc/pgwarden/tls/", f"{tmp_path}/")
    cfg = load_config(write(tmp_path, audit))
    assert cfg.audit is not None and cfg.audit.enabled
    assert cfg.audit.kafka.bootstrap_servers
