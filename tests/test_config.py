"""gateway.config: decoding, validation, and FILE:LINE: KEY locations of every issue."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from gateway.config import (
    BindingConfig,
    ClientEntry,
    Config,
    ConfigError,
    ConfigIssue,
    IssuerConfig,
    LogConfig,
    RoleConfig,
    ServerConfig,
    TlsConfig,
    UpstreamConfig,
    load_config,
    parse_rfc3339,
)
from gateway.identity.static_secrets import hash_secret

REPO = Path(__file__).resolve().parents[1]

# Computing scrypt hashes is slow by design; one is enough for the whole module.
HASH = hash_secret("s3cret")


def write(tmp_path: Path, text: str, name: str = "pgwarden.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def issues(path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.issues


def located(path: Path) -> list[tuple[int, str]]:
    return [(i.line, i.key) for i in issues(path)]


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_text("cert")
    key.write_text("key")
    return cert, key


MINIMAL = """
[tls]
allow_plaintext_loopback = true

[upstream]
user = "postgres"
"""


# --------------------------------------------------------------------------- valid files


def test_minimal_config_uses_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.server == ServerConfig()
    assert cfg.upstream == UpstreamConfig(user="postgres")
    assert cfg.tls == TlsConfig(allow_plaintext_loopback=True)
    assert cfg.clients == []
    assert cfg.log == LogConfig()


def test_full_config_round_trip(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    path = write(
        tmp_path,
        f"""
        [server]
        listen_host = "0.0.0.0"
        listen_port = 7000
        workers = 3
        startup_timeout = 5      # an integer where a float is expected is fine
        run_dir = "run"
        gateway_id = "gw-1"

        [tls]
        cert_file = "{cert}"
        key_file = "server.key"
        min_version = "TLSv1.3"

        [upstream]
        host = "/var/run/postgresql"
        user = "app"
        password_env = "PGW_PASS"
        database = "appdb"
        sslmode = "verify-full"

        [[clients]]
        user = "etl"
        secret_hash = "{HASH}"
        label = "nightly"

        [[clients]]
        user = "ci"
        secret_hash = "{HASH}"

        [log]
        level = "debug"
        format = "json"
        """,
    )
    cfg = load_config(path)
    assert cfg.server.listen_port == 7000
    assert cfg.server.startup_timeout == 5.0
    assert isinstance(cfg.server.startup_timeout, float)
    assert cfg.effective_workers() == 3
    # Relative paths are anchored at the config file's directory, not the cwd.
    assert cfg.server.run_dir == str(tmp_path / "run")
    assert cfg.tls.key_file == str(key)
    assert cfg.tls.cert_file == str(cert)
    assert cfg.upstream.host == "/var/run/postgresql"
    assert cfg.clients == [
        ClientEntry(user="etl", secret_hash=HASH, label="nightly"),
        ClientEntry(user="ci", secret_hash=HASH),
    ]
    assert cfg.log == LogConfig(level="debug", format="json")
    # The decoded value survives an encode/decode cycle unchanged.
    assert msgspec.json.decode(msgspec.json.encode(cfg), type=Config) == cfg


def test_effective_workers_zero_means_cpu_count(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.effective_workers() == (os.cpu_count() or 1)


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(AttributeError):
        cfg.server.listen_port = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- shape errors


def test_unknown_key_reports_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        listen_host = "127.0.0.1"
        listn_port = 6432

        [tls]
        allow_plaintext_loopback = true

        [upstream]
        user = "postgres"
        """,
    )
    [issue] = issues(path)
    assert (issue.line, issue.key) == (3, "server.listn_port")
    assert "unknown key 'listn_port'" in issue.message
    assert "listen_port" in issue.message  # the suggestion
    assert str(issue) == f"{path}:3: server.listn_port: {issue.message}"


def test_unknown_top_level_table(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[sever]\nlisten_port = 1\n")
    [issue] = issues(path)
    assert (issue.line, issue.key) == (7, "sever")
    assert "unknown key 'sever'" in issue.message


def test_wrong_type_reports_line_key_and_message(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [tls]
        allow_plaintext_loopback = true

        [server]
        workers = "four"

        [upstream]
        user = "postgres"
        """,
    )
    [issue] = issues(path)
    assert str(issue) == f"{path}:5: server.workers: Expected int, got str"


def test_all_shape_errors_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        [server]
        listen_port = "x"
        backlogg = 1

        [tls]
        min_version = "TLSv1.0"

        [upstream]
        port = 5432

        [[clients]]
        user = "a"
        secret_hash = "{HASH}"

        [[clients]]
        user = 7
        secret_hash = "{HASH}"
        """,
    )
    assert located(path) == [
        (2, "server.listen_port"),
        (3, "server.backlogg"),
        (6, "tls.min_version"),
        (8, "upstream.user"),  # missing: points at the [upstream] header
        (16, "clients[1].user"),  # in the second [[clients]] element
    ]


def test_missing_upstream_table(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nworkers = 1\n")
    [issue] = issues(path)
    assert (issue.line, issue.key) == (1, "upstream")
    assert "missing required table 'upstream'" in issue.message


def test_clients_must_be_an_array_of_tables(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[clients]\nuser = "a"\n')
    [issue] = issues(path)
    assert (issue.line, issue.key) == (7, "clients")
    assert "array of tables" in issue.message


def test_inline_table_falls_back_to_its_key_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        tls = { allow_plaintext_loopback = true }
        upstream = { user = "postgres", port = "x" }
        """,
    )
    assert located(path) == [(2, "upstream.port")]


def test_dotted_keys_and_quoted_keys_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        tls.allow_plaintext_loopback = true
        upstream.user = "postgres"
        [server]
        "workers" = "x"
        """,
    )
    assert located(path) == [(4, "server.workers")]


def test_multiline_string_does_not_confuse_the_locator(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '''
        [tls]
        allow_plaintext_loopback = true
        [[clients]]
        user = "a"
        secret_hash = """
        workers = 1
        [server]
        """
        [server]
        workers = "x"
        [upstream]
        user = "postgres"
        ''',
    )
    found = located(path)
    assert (10, "server.workers") in found


# --------------------------------------------------------------------------- TOML syntax


def test_syntax_error_reports_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [upstream]
        user = "postgres"

        [server]
        listen_port = 64 32
        """,
    )
    [issue] = issues(path)
    assert issue.line == 5
    assert issue.key == "server.listen_port"
    assert issue.message.startswith("invalid TOML: ")
    assert "(at line" not in issue.message  # the position is in FILE:LINE already


def test_syntax_error_on_header_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[upstream]\nuser = "a"\n[server\n')
    [issue] = issues(path)
    assert issue.line == 3
    assert issue.key == ""
    assert str(issue).startswith(f"{path}:3: invalid TOML: ")


def test_duplicate_key_points_at_the_duplicate(tmp_path: Path) -> None:
    path = write(tmp_path, '[upstream]\nuser = "a"\nport = 1\nuser = "b"\n')
    [issue] = issues(path)
    assert (issue.line, issue.key) == (4, "upstream.user")


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    [issue] = issues(missing)
    assert issue.line == 0
    assert str(issue).startswith(f"{missing}: cannot read")

    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'[upstream]\nuser = "\xff"\n')
    [issue] = issues(binary)
    assert (issue.line, issue.message) == (2, "file is not valid UTF-8")


# --------------------------------------------------------------------------- cross-field rules


def test_semantic_errors_all_reported_with_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        listen_port = 70000
        workers = -1
        startup_timeout = 0
        heartbeat_interval = 5.0
        heartbeat_timeout = 5.0
        max_message_size = 1024
        write_buffer_high = 100
        write_buffer_low = 100

        [tls]
        require_tls = true

        [upstream]
        host = "relative/dir"
        port = 0
        user = ""
        password_env = "A"
        password_file = "/b"
        connect_timeout = -1
        """,
    )
    assert located(path) == [
        (2, "server.listen_port"),
        (3, "server.workers"),
        (4, "server.startup_timeout"),
        (6, "server.heartbeat_timeout"),
        (7, "server.max_message_size"),
        (9, "server.write_buffer_low"),
        (12, "tls.require_tls"),
        (15, "upstream.host"),
        (16, "upstream.port"),
        (17, "upstream.user"),
        (19, "upstream.password_file"),
        (20, "upstream.connect_timeout"),
    ]


@pytest.mark.parametrize(
    ("size", "ok"),
    [(1 << 20, True), (1 << 30, True), ((1 << 20) - 1, False), ((1 << 30) + 1, False)],
)
def test_max_message_size_bounds(tmp_path: Path, size: int, ok: bool) -> None:
    path = write(tmp_path, MINIMAL + f"\n[server]\nmax_message_size = {size}\n")
    if ok:
        assert load_config(path).server.max_message_size == size
    else:
        assert located(path) == [(8, "server.max_message_size")]


def test_require_tls_without_cert_points_at_tls_header_when_key_absent(tmp_path: Path) -> None:
    path = write(tmp_path, '[tls]\nmin_version = "TLSv1.3"\n[upstream]\nuser = "a"\n')
    [issue] = issues(path)
    assert (issue.line, issue.key) == (1, "tls.require_tls")
    # No [tls] table at all: line 1.
    path = write(tmp_path, '[upstream]\nuser = "a"\n', name="other.toml")
    assert located(path) == [(1, "tls.require_tls")]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.5"])
def test_plaintext_loopback_allowed_on_loopback(tmp_path: Path, host: str) -> None:
    path = write(
        tmp_path,
        f'[server]\nlisten_host = "{host}"\n[tls]\nallow_plaintext_loopback = true\n'
        '[upstream]\nuser = "a"\n',
    )
    assert load_config(path).server.listen_host == host


def test_plaintext_loopback_refused_on_public_address(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nlisten_host = "0.0.0.0"\n[tls]\nallow_plaintext_loopback = true\n'
        '[upstream]\nuser = "a"\n',
    )
    [issue] = issues(path)
    assert issue.key == "tls.require_tls"
    assert "0.0.0.0" in issue.message


def test_plaintext_without_require_tls_is_allowed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nlisten_host = "0.0.0.0"\n[tls]\nrequire_tls = false\n[upstream]\nuser = "a"\n',
    )
    assert load_config(path).tls.require_tls is False


def test_cert_files_must_exist_and_come_in_pairs(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    cert, _ = tls_files
    path = write(
        tmp_path,
        f"""
        [tls]
        cert_file = "{cert}"

        [upstream]
        user = "a"
        sslrootcert = "missing-ca.crt"
        """,
    )
    found = issues(path)
    assert [(i.line, i.key) for i in found] == [
        (1, "tls.key_file"),  # key_file is not set: points at the [tls] header
        (1, "tls.require_tls"),
        (6, "upstream.sslrootcert"),
    ]
    assert str(tmp_path / "missing-ca.crt") in found[2].message

    path = write(
        tmp_path,
        f'[tls]\ncert_file = "{cert}"\nkey_file = "nope.key"\n[upstream]\nuser = "a"\n',
        name="b.toml",
    )
    [issue] = issues(path)
    assert (issue.line, issue.key) == (3, "tls.key_file")
    assert "No such file" in issue.message


def test_cert_file_that_is_a_directory(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    _, key = tls_files
    path = write(
        tmp_path, f'[tls]\ncert_file = "{tmp_path}"\nkey_file = "{key}"\n[upstream]\nuser = "a"\n'
    )
    [issue] = issues(path)
    assert (issue.line, issue.key) == (2, "tls.cert_file")
    assert "directory" in issue.message


def test_password_file_need_not_exist_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + 'password_file = "/run/secrets/does-not-exist"\n')
    assert load_config(path).upstream.password_file == "/run/secrets/does-not-exist"


def test_duplicate_client_users_and_bad_hashes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + f"""
[[clients]]
user = "etl"
secret_hash = "{HASH}"

[[clients]]
user = "etl"
secret_hash = "plaintext-oops"

[[clients]]
user = ""
secret_hash = "{HASH}"
""",
    )
    found = issues(path)
    assert [(i.line, i.key) for i in found] == [
        (12, "clients[1].user"),
        (13, "clients[1].secret_hash"),
        (16, "clients[2].user"),
    ]
    assert "duplicate client user 'etl'" in found[0].message
    assert "pgwarden hash-secret" in found[1].message


def test_config_error_str_is_one_issue_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nworkers = "x"\nbacklog = "y"\n[upstream]\nuser = "a"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).splitlines() == [
        f"{path}:2: server.workers: Expected int, got str",
        f"{path}:3: server.backlog: Expected int, got str",
    ]


# --------------------------------------------------------------------------- deploy example


def test_deploy_example_parses_with_cert_paths_rewritten(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    for name in ("server.crt", "server.key", "upstream-ca.crt"):
        (tls_dir / name).write_text("placeholder")
    text = (REPO / "deploy" / "pgwarden.toml").read_text()
    assert "/etc/pgwarden/tls/" in text
    path = write(tmp_path, text.replace("/etc/pgwarden/tls/", f"{tls_dir}/"))

    cfg = load_config(path)
    assert cfg.tls.require_tls
    assert cfg.tls.cert_file == str(tls_dir / "server.crt")
    assert cfg.upstream.password_file == "/run/secrets/pgwarden-upstream"
    assert cfg.upstream.sslmode == "verify-full"
    assert [c.user for c in cfg.clients] == ["nightly-etl"]

    assert cfg.roles == [] and cfg.bindings == []  # single-role mode as shipped

    # Unrewritten, the only complaints are the missing certificate files.
    if not (Path("/etc/pgwarden/tls/server.crt")).exists():
        original = write(tmp_path, text, name="original.toml")
        keys = {i.key for i in issues(original)}
        assert keys == {"tls.cert_file", "tls.key_file", "upstream.sslrootcert"}


def uncomment_identity_example(text: str) -> str:
    """The deploy example with its commented identity block switched on, as documented."""
    begin = "# ----- identity example: begin -----"
    end = "# ----- identity example: end -----"
    head, rest = text.split(begin + "\n")
    block, tail = rest.split(end + "\n")
    lines = [line[2:] if line.startswith("# ") else "" for line in block.splitlines()]
    assert all(line.startswith("# ") or line == "#" for line in block.splitlines())
    return head + "\n".join(lines) + "\n" + tail


def test_deploy_example_identity_block_is_valid(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    for name in ("server.crt", "server.key", "upstream-ca.crt"):
        (tls_dir / name).write_text("placeholder")
    text = (REPO / "deploy" / "pgwarden.toml").read_text()
    text = text.replace("/etc/pgwarden/tls/", f"{tls_dir}/")
    cfg = load_config(write(tmp_path, uncomment_identity_example(text)))
    assert [i.name for i in cfg.issuers] == ["github", "okta"]
    assert [r.name for r in cfg.roles] == ["etl_loader", "analytics"]
    assert [(b.role, b.issuer) for b in cfg.bindings] == [
        ("etl_loader", "static"), ("etl_loader", "github"), ("analytics", "okta"),
    ]


def test_docs_mention_every_key() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    for struct in (
        ServerConfig, TlsConfig, UpstreamConfig, ClientEntry, IssuerConfig, RoleConfig,
        BindingConfig, LogConfig,
    ):
        for field in msgspec.structs.fields(struct):
            assert f"`{field.name}`" in doc, f"{struct.__name__}.{field.name} is undocumented"


def test_config_module_does_not_import_asyncio() -> None:
    # check-config must work without the event-loop machinery; run in a fresh interpreter
    # because this test process may already have imported asyncio.
    code = "import sys, gateway.config; sys.exit('asyncio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_missing_key_in_array_element_points_at_its_header(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL + f'\n[[clients]]\nuser = "a"\nsecret_hash = "{HASH}"\n\n[[clients]]\nuser = "b"\n',
    )
    [issue] = issues(path)
    assert (issue.line, issue.key) == (11, "clients[1].secret_hash")
    assert "missing required key 'secret_hash'" in issue.message


# --------------------------------------------------------------------------- identity


OKTA = "https://acme.okta.com/oauth2/default"
GITHUB = "https://token.actions.githubusercontent.com"


def test_identity_sections_decode_and_resolve_paths(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    (tmp_path / "clients-ca.pem").write_text("ca")
    path = write(
        tmp_path,
        f"""
        [server]
        auth_failure_limit = 5
        auth_failure_window = 120

        [tls]
        cert_file = "{cert}"
        key_file = "{key}"
        client_ca_file = "clients-ca.pem"
        client_cert_identity = "spiffe"

        [upstream]
        user = "unused-in-role-mode"

        [[clients]]
        user = "nightly-etl"
        secret_hash = "{HASH}"
        expires = "2030-01-31T00:00:00Z"

        [[issuers]]
        name = "okta"
        issuer = "{OKTA}"
        audiences = ["api://pgwarden"]

        [[issuers]]
        name = "legacy-hs"
        issuer = "https://sso.internal.example.com"
        audiences = ["pgwarden"]
        algorithms = ["HS256", "RS256"]
        hmac_secret_file = "secrets/legacy-hs.key"
        leeway = 0
        max_token_bytes = 1024

        [[roles]]
        name = "etl_loader"
        upstream_user = "etl"
        password_file = "secrets/etl.pw"
        databases = ["warehouse"]
        on_token_expiry = "terminate"

        [[roles]]
        name = "analytics"
        upstream_user = "analyst"
        password_env = "PGW_ANALYST_PASSWORD"

        [[bindings]]
        role = "etl_loader"
        issuer = "okta"
        subject = "0oa*"
        client_id = "0oa1etl"
        groups = ["etl"]
        claims = {{ env = "prod" }}

        [[bindings]]
        role = "etl_loader"
        issuer = "static"
        subject = "nightly-etl"

        [[bindings]]
        role = "analytics"
        issuer = "cert"
        subject = "spiffe://acme.org/ns/bi/*"

        [[bindings]]
        role = "analytics"
        """,
    )
    cfg = load_config(path)
    assert cfg.server.auth_failure_limit == 5 and cfg.server.auth_failure_window == 120.0
    assert cfg.tls.client_ca_file == str(tmp_path / "clients-ca.pem")
    assert cfg.roles[0].password_file == str(tmp_path / "secrets" / "etl.pw")
    assert cfg.roles[1].password_file == ""  # unset paths stay unset
    assert cfg.issuers[1].hmac_secret_file == str(tmp_path / "secrets" / "legacy-hs.key")
    assert cfg.issuers[0] == IssuerConfig(name="okta", issuer=OKTA, audiences=["api://pgwarden"])
    assert cfg.issuers[0].algorithms == ["RS256", "ES256", "EdDSA"]
    assert cfg.roles[1].databases == ["*"] and cfg.roles[1].on_token_expiry == "finish"
    assert cfg.bindings[0].claims == {"env": "prod"}
    assert cfg.bindings[3] == BindingConfig(role="analytics")
    assert cfg.clients[0].expires == "2030-01-31T00:00:00Z"
    assert msgspec.json.decode(msgspec.json.encode(cfg), type=Config) == cfg


def test_identity_semantic_errors_all_reported_with_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + f"""
[server]
auth_failure_limit = 0
auth_failure_window = 0

[[clients]]
user = "etl"
secret_hash = "{HASH}"
expires = "2030-01-31"

[[issuers]]
name = "static"
issuer = "http://idp.example.com"
audiences = []
algorithms = ["none", "HS256", "RS257"]
hmac_secret_env = "A"
hmac_secret_file = "b"
leeway = -1
max_token_bytes = 100
jwks_refresh_interval = 0
http_timeout = -5

[[issuers]]
name = "okta"
issuer = "{OKTA}"
audiences = ["x"]
algorithms = ["HS512"]
jwks_uri = "ftp://keys.example.com/jwks"

[[issuers]]
name = "okta"
issuer = "{OKTA}"
audiences = [""]
jwks_min_refresh_interval = 7200

[[roles]]
name = "etl"
upstream_user = ""
password_env = "X"
password_file = "y"
databases = []

[[roles]]
name = "etl"
upstream_user = "u"

[[bindings]]
role = "nope"
issuer = "gitlab"

[[bindings]]
role = "etl"
issuer = "cert"
subject = ""

[[bindings]]
role = "etl"
issuer = "static"
groups = ["g"]
""",
    )
    found = issues(path)
    assert [(i.line, i.key) for i in found] == [
        (8, "server.auth_failure_limit"),
        (9, "server.auth_failure_window"),
        (14, "clients[0].expires"),
        (17, "issuers[0].name"),  # reserved
        (18, "issuers[0].issuer"),  # plain http
        (19, "issuers[0].audiences"),  # empty
        (20, "issuers[0].algorithms"),  # none
        (20, "issuers[0].algorithms"),  # RS257 (HS256 is fine here: a secret is set)
        (22, "issuers[0].hmac_secret_file"),  # both env and file
        (23, "issuers[0].leeway"),
        (24, "issuers[0].max_token_bytes"),
        (25, "issuers[0].jwks_refresh_interval"),
        (26, "issuers[0].http_timeout"),
        (32, "issuers[1].algorithms"),  # HS512 without a secret
        (33, "issuers[1].jwks_uri"),
        (36, "issuers[2].name"),  # duplicate name
        (37, "issuers[2].issuer"),  # duplicate iss URL
        (38, "issuers[2].audiences"),  # empty audience
        (39, "issuers[2].jwks_min_refresh_interval"),
        (43, "roles[0].upstream_user"),
        (45, "roles[0].password_file"),
        (46, "roles[0].databases"),
        (49, "roles[1].name"),
        (53, "bindings[0].role"),
        (54, "bindings[0].issuer"),
        (58, "bindings[1].issuer"),  # cert without tls.client_ca_file
        (59, "bindings[1].subject"),
        (64, "bindings[2].groups"),  # static principals have no groups
    ]
    messages = {(i.key, i.message) for i in found}
    by_key = {i.key: i.message for i in found}
    assert "not an RFC 3339 timestamp with a timezone" in by_key["clients[0].expires"]
    assert "reserved" in by_key["issuers[0].name"]
    assert "plain http" in by_key["issuers[0].issuer"]
    assert ("issuers[0].algorithms", "'none' is never accepted: tokens must be signed") in (
        messages
    )
    assert any(k == "issuers[0].algorithms" and "'RS257'" in m for k, m in messages)
    assert "hmac_secret_env or hmac_secret_file" in by_key["issuers[1].algorithms"]
    assert "not an https URL" in by_key["issuers[1].jwks_uri"]
    assert "duplicate issuer name 'okta' (also issuers[1])" in by_key["issuers[2].name"]
    assert "also used by issuers[1]" in by_key["issuers[2].issuer"]
    assert "between 1024 (1 KiB) and 1048576 (1 MiB)" in by_key["issuers[0].max_token_bytes"]
    assert "duplicate role name 'etl' (also roles[0])" in by_key["roles[1].name"]
    assert "no role named 'nope'" in by_key["bindings[0].role"]
    assert "no issuer named 'gitlab'" in by_key["bindings[0].issuer"]
    # The choices are listed, once each.
    assert "(choose from 'okta', 'static', 'cert', '*')" in by_key["bindings[0].issuer"]
    assert "client_ca_file" in by_key["bindings[1].issuer"]
    assert "can never match" in by_key["bindings[2].groups"]


@pytest.mark.parametrize(
    ("algorithms", "secret", "ok"),
    [
        (["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"], "", True),
        (["ES256", "ES384", "ES512", "EdDSA"], "", True),
        (["HS256", "HS384", "HS512"], 'hmac_secret_env = "K"', True),
        (["HS256"], 'hmac_secret_file = "/run/secrets/k"', True),
        (["HS256"], "", False),
        (["RS256", "HS384"], "", False),
        (["None"], "", False),
        (["NONE"], 'hmac_secret_env = "K"', False),
        (["rs256"], "", False),  # algorithm names are case-sensitive (RFC 7518)
        (["ES256K"], "", False),
        ([], "", False),
    ],
)
def test_issuer_algorithms(tmp_path: Path, algorithms: list[str], secret: str, ok: bool) -> None:
    listed = ", ".join(f'"{a}"' for a in algorithms)
    path = write(
        tmp_path,
        MINIMAL
        + f'\n[[issuers]]\nname = "i"\nissuer = "{OKTA}"\naudiences = ["a"]\n'
        f"algorithms = [{listed}]\n{secret}\n",
    )
    if ok:
        assert load_config(path).issuers[0].algorithms == algorithms
    else:
        assert {i.key for i in issues(path)} == {"issuers[0].algorithms"}


@pytest.mark.parametrize(
    ("url", "insecure", "ok"),
    [
        (OKTA, False, True),
        (GITHUB, False, True),
        ("https://login.microsoftonline.com/tid/v2.0", False, True),
        ("http://127.0.0.1:8080", True, True),  # development issuer, flag set
        ("http://127.0.0.1:8080", False, False),
        ("HTTP://idp.example.com", False, False),
        ("ftp://idp.example.com", True, False),
        ("idp.example.com", False, False),
        ("https://", False, False),
        ("https://idp.example.com/realm?x=1", False, False),
        ("https://idp.example.com/realm#frag", False, False),
        ("https://[::1/realm", False, False),  # unparseable: reported, not a crash
    ],
)
def test_issuer_url(tmp_path: Path, url: str, insecure: bool, ok: bool) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + f'\n[[issuers]]\nname = "i"\nissuer = "{url}"\naudiences = ["a"]\n'
        f"allow_insecure_http = {str(insecure).lower()}\n",
    )
    if ok:
        assert load_config(path).issuers[0].issuer == url
    else:
        assert located(path) == [(9, "issuers[0].issuer")]


@pytest.mark.parametrize("name", ["", "*", "cert", "static", "okta prod", "a:b", "-x"])
def test_issuer_name_rules(tmp_path: Path, name: str) -> None:
    path = write(
        tmp_path,
        MINIMAL + f'\n[[issuers]]\nname = "{name}"\nissuer = "{OKTA}"\naudiences = ["a"]\n',
    )
    assert located(path) == [(8, "issuers[0].name")]


@pytest.mark.parametrize(
    ("size", "ok"), [(1024, True), (1 << 20, True), (1023, False), ((1 << 20) + 1, False)]
)
def test_max_token_bytes_bounds(tmp_path: Path, size: int, ok: bool) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + f'\n[[issuers]]\nname = "i"\nissuer = "{OKTA}"\naudiences = ["a"]\n'
        f"max_token_bytes = {size}\n",
    )
    if ok:
        assert load_config(path).issuers[0].max_token_bytes == size
    else:
        assert located(path) == [(11, "issuers[0].max_token_bytes")]


@pytest.mark.parametrize(("leeway", "ok"), [(0, True), (300, True), (-0.5, False), (301, False)])
def test_leeway_bounds(tmp_path: Path, leeway: float, ok: bool) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + f'\n[[issuers]]\nname = "i"\nissuer = "{OKTA}"\naudiences = ["a"]\nleeway = {leeway}\n',
    )
    if ok:
        assert load_config(path).issuers[0].leeway == leeway
    else:
        assert located(path) == [(11, "issuers[0].leeway")]


@pytest.mark.parametrize(
    ("expires", "ok"),
    [
        ("2030-01-31T00:00:00Z", True),
        ("2030-01-31T00:00:00+01:00", True),
        ("2030-01-31T00:00:00.123456-05:30", True),
        ("2030-01-31 00:00:00Z", True),  # RFC 3339 section 5.6 note: space allowed
        ("2030-01-31T00:00:00", False),  # no timezone
        ("2030-01-31", False),
        ("2030-01-31T00:00Z", False),  # seconds are not optional in RFC 3339
        ("20300131T000000Z", False),  # ISO 8601 basic format is not RFC 3339
        ("2030-13-01T00:00:00Z", False),  # well-formed, impossible
        ("2030-01-31T24:00:00Z", False),
        ("2030-01-31t00:00:00z", False),  # lower case: not read by fromisoformat on 3.11
        ("tomorrow", False),
    ],
)
def test_client_expiry_must_be_rfc3339_with_timezone(
    tmp_path: Path, expires: str, ok: bool
) -> None:
    path = write(
        tmp_path,
        MINIMAL + f'\n[[clients]]\nuser = "etl"\nsecret_hash = "{HASH}"\nexpires = "{expires}"\n',
    )
    if ok:
        assert load_config(path).clients[0].expires == expires
    else:
        assert located(path) == [(10, "clients[0].expires")]


def test_parse_rfc3339() -> None:
    import datetime as dt

    moment = parse_rfc3339("2030-01-31T09:30:00.5+02:00")
    assert moment == dt.datetime(2030, 1, 31, 7, 30, 0, 500000, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="not a valid time"):
        parse_rfc3339("2030-02-30T00:00:00Z")


def test_bindings_without_roles_are_refused(tmp_path: Path) -> None:
    # Single-role mode: no [[roles]] means [upstream] user for everyone; a binding there
    # would be a silent no-op, so it is an error.
    path = write(tmp_path, MINIMAL + '\n[[bindings]]\nrole = "etl"\n')
    [issue] = issues(path)
    assert (issue.line, issue.key) == (8, "bindings[0].role")
    assert "single-role mode" in issue.message


def test_roles_without_bindings_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[[roles]]\nname = "etl"\nupstream_user = "etl"\n')
    [issue] = issues(path)
    assert (issue.line, issue.key) == (7, "roles")
    assert "every connection would be refused" in issue.message


def test_single_role_mode_is_the_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.roles == [] and cfg.bindings == [] and cfg.issuers == []


def test_static_binding_needs_clients(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL + '\n[[roles]]\nname = "r"\nupstream_user = "u"\n'
        '\n[[bindings]]\nrole = "r"\nissuer = "static"\n',
    )
    [issue] = issues(path)
    assert (issue.line, issue.key) == (13, "bindings[0].issuer")
    assert "[[clients]]" in issue.message


def test_client_ca_file_must_be_readable_and_needs_tls(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    path = write(
        tmp_path,
        f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\nclient_ca_file = "missing-ca.pem"\n'
        '[upstream]\nuser = "a"\n',
    )
    [issue] = issues(path)
    assert (issue.line, issue.key) == (4, "tls.client_ca_file")
    assert str(tmp_path / "missing-ca.pem") in issue.message

    (tmp_path / "ca.pem").write_text("ca")
    path = write(
        tmp_path,
        '[tls]\nallow_plaintext_loopback = true\nclient_ca_file = "ca.pem"\n'
        '[upstream]\nuser = "a"\n',
        name="b.toml",
    )
    [issue] = issues(path)
    assert (issue.line, issue.key) == (3, "tls.client_ca_file")
    assert "cert_file" in issue.message


def test_role_password_file_need_not_exist_at_load(tmp_path: Path) -> None:
    # Like upstream.password_file: a Kubernetes secret mount may appear after validation.
    path = write(
        tmp_path,
        MINIMAL + '\n[[roles]]\nname = "r"\nupstream_user = "u"\n'
        'password_file = "/run/secrets/none"\n\n[[bindings]]\nrole = "r"\n',
    )
    assert load_config(path).roles[0].password_file == "/run/secrets/none"


@pytest.mark.parametrize(
    ("limit", "window", "bad"),
    [(1, 0.5, []), (0, 60, ["server.auth_failure_limit"]), (5, -1, ["server.auth_failure_window"])],
)
def test_auth_failure_settings(tmp_path: Path, limit: int, window: float, bad: list[str]) -> None:
    path = write(
        tmp_path,
        MINIMAL + f"\n[server]\nauth_failure_limit = {limit}\nauth_failure_window = {window}\n",
    )
    if bad:
        assert [i.key for i in issues(path)] == bad
    else:
        assert load_config(path).server.auth_failure_window == window
