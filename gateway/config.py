"""Typed configuration: TOML text -> frozen msgspec Structs, validated once at load.

This module owns the configuration schema, every rule about which values are acceptable,
and the mapping of each problem back to a ``FILE:LINE: KEY: MESSAGE`` line an operator can
act on. Everything downstream receives a ``Config`` that has already been checked, so no
other module re-validates settings or handles a half-valid configuration.

It must not know how the settings are used (sockets, TLS contexts, upstream sessions) and
must not import asyncio: ``pgwarden check-config`` has to work without starting anything.
Secrets never pass through here; the upstream password is read later, at connect time, by
``gateway.identity.secrets``.

Relative file paths (``tls.cert_file``, ``tls.key_file``, ``tls.client_ca_file``,
``upstream.password_file``, ``upstream.sslrootcert``, ``server.run_dir``,
``roles[].password_file``, ``issuers[].hmac_secret_file``, ``audit.spool_dir``,
``audit.signing_key_file``, ``audit.kafka.ssl_*``) are resolved against the directory
holding the configuration file, so a configuration means the same thing whatever
the working directory of the process that loads it.

Identity has two modes. With no ``[[roles]]`` (*single-role mode*, the behaviour before
roles existed) every authenticated principal connects upstream as ``[upstream] user`` with
its password, and ``[[bindings]]`` must be empty. With ``[[roles]]``, bindings map each
principal to one role, which names the upstream user and its secret; ``[upstream] user``
and its password are then not used for sessions.
"""

from __future__ import annotations

import datetime as dt
import difflib
import fnmatch
import ipaddress
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import msgspec

from gateway.identity.static_secrets import parse_secret_hash

__all__ = [
    "AuditConfig",
    "AuditKafkaConfig",
    "BindingConfig",
    "ClientEntry",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "IssuerConfig",
    "LogConfig",
    "PolicyConfig",
    "RoleConfig",
    "RuleConfig",
    "ServerConfig",
    "TlsConfig",
    "UpstreamConfig",
    "load_config",
    "parse_rfc3339",
]

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30


# --------------------------------------------------------------------------- schema


def default_pid_file(listen_port: int) -> str:
    """Where the supervisor writes its pid when ``server.pid_file`` is empty."""
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"pgwarden-{listen_port}.pid")


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Listener, process model and per-connection resource limits."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 6432
    workers: int = 0  # 0 = os.cpu_count()
    backlog: int = 1024
    max_client_connections: int = 10000  # per worker
    startup_timeout: float = 10.0
    graceful_timeout: float = 30.0
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 30.0
    max_message_size: int = GIB
    write_buffer_high: int = 262144
    write_buffer_low: int = 65536
    # Established plain-TCP sessions read and write their sockets directly (see
    # gateway.server.fastio); false keeps every session on the asyncio transports.
    direct_io: bool = True
    run_dir: str = ""  # "" = a private temp dir made by the supervisor
    pid_file: str = ""  # "" = <temp dir>/pgwarden-<listen_port>.pid (for pgwarden reload)
    gateway_id: str = ""  # "" = hostname
    auth_failure_limit: int = 10  # failed authentications per source address per window
    auth_failure_window: float = 60.0


class TlsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """TLS termination for client connections."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""  # verify client certificates against this CA (mTLS identity)
    client_cert_identity: Literal["spiffe_or_cn", "cn", "spiffe"] = "spiffe_or_cn"
    require_tls: bool = True
    allow_plaintext_loopback: bool = False
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"


class UpstreamConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The PostgreSQL server behind the gateway and where its credential lives."""

    host: str = "127.0.0.1"  # hostname/IP, or an absolute directory of a unix socket
    port: int = 5432
    user: str
    password_env: str = ""
    password_file: str = ""
    database: str = ""  # "" = the database the client asks for
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    sslrootcert: str = ""
    connect_timeout: float = 10.0
    pool_size: int = 16  # idle upstream sessions kept per worker and key; 0 = no pooling
    pool_idle_timeout: float = 60.0  # an idle pooled session is closed after this


class ClientEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A static key for a legacy job that cannot get tokens (stored as a scrypt hash).

    The job connects with ``user`` as its startup user name and the key as its password;
    the principal's subject is ``user``.
    """

    user: str
    secret_hash: str
    label: str = ""
    expires: str = ""  # RFC 3339 timestamp after which the key is refused; "" = never


class IssuerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """An OIDC identity provider whose JWTs are accepted as passwords."""

    name: str  # referenced by bindings
    issuer: str  # the exact `iss` value; discovery is issuer + /.well-known/openid-configuration
    discovery_url: str = ""  # "" = derived from issuer
    jwks_uri: str = ""  # set to skip discovery
    audiences: list[str]  # a token must carry at least one of these in `aud`
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])
    hmac_secret_env: str = ""  # only a configured shared secret enables HS256/384/512
    hmac_secret_file: str = ""
    required_claims: list[str] = msgspec.field(default_factory=lambda: ["exp", "iat", "sub"])
    leeway: float = 30.0  # seconds of clock skew allowed on exp/nbf/iat
    max_token_bytes: int = 16384
    jwks_refresh_interval: float = 3600.0  # scheduled JWKS refresh
    jwks_min_refresh_interval: float = 30.0  # at most one refresh per interval on unknown kid
    http_timeout: float = 5.0
    allow_insecure_http: bool = False  # http:// discovery/JWKS (development on loopback only)
    subject_claim: str = "sub"
    group_claim: str = "groups"
    client_id_claims: list[str] = msgspec.field(default_factory=lambda: ["azp", "client_id"])


class RoleConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A least-privilege upstream identity, and where its secret lives."""

    name: str
    upstream_user: str
    password_env: str = ""
    password_file: str = ""
    databases: list[str] = msgspec.field(default_factory=lambda: ["*"])  # "*" = any
    on_token_expiry: Literal["finish", "terminate"] = "finish"
    # Decision for statements no policy rule matches; None = [policy] default_action.
    default_action: Literal["allow", "approve", "block"] | None = None


class BindingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Maps matching principals to a role. Bindings are tried in file order; first wins."""

    role: str
    issuer: str = "*"  # an issuer name, "static", "cert", or "*"
    subject: str = "*"  # glob on the principal's subject
    client_id: str = ""  # exact azp/client_id; "" = any
    groups: list[str] = []  # the principal must be in at least one; [] = no condition
    claims: dict[str, str] = {}  # exact equality on string claims


class PolicyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How statements are decided when no rule matches, the baseline pack, the caches."""

    # false: statements are not parsed or decided at all (identity, custody and audit
    # only) — documented as not for production data paths
    enabled: bool = True
    default_action: Literal["allow", "approve", "block"] = "allow"
    baseline: bool = True  # the built-in least-privilege pack (docs/policy.md)
    cache_size: int = 10000  # decisions kept per worker, keyed by normalized statement
    exact_cache_size: int = 10000  # decisions kept per worker, keyed by exact text


class RuleConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One policy rule (``[[rules]]``), tried in file order before the baseline pack."""

    id: str
    action: Literal["allow", "approve", "block"]
    message: str = ""
    observe: bool = False  # log what the rule would decide, do not enforce it
    # scope ([] = any)
    roles: list[str] = []
    principals: list[str] = []  # globs on "issuer:subject"
    databases: list[str] = []
    # matchers ([] = any)
    kinds: list[str] = []
    categories: list[str] = []
    commands: list[str] = []
    relations: list[str] = []
    relation_mode: Literal["any", "read", "write"] = "any"
    functions: list[str] = []
    flags: list[str] = []
    overrides: list[str] = []  # globs of baseline rule ids this rule may loosen


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Log verbosity and output format."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class AuditKafkaConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Where audit batches are shipped. No ``bootstrap_servers`` = no Kafka: the spool is
    the audit log and nothing is ever deleted from it."""

    bootstrap_servers: list[str] = []  # "host:port"
    topic: str = "pgwarden.audit"
    client_id: str = "pgwarden"
    request_timeout: float = 30.0
    security_protocol: Literal["PLAINTEXT", "SSL"] = "PLAINTEXT"
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""


class AuditConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The signed audit log (docs/audit-format.md): batching, spool, signing, shipping."""

    enabled: bool = True
    mode: Literal["async", "strict"] = "async"  # strict: forward only once the event is durable
    spool_dir: str
    segment_bytes: int = 16 * MIB
    spool_max_bytes: int = GIB
    on_spool_full: Literal["fail_closed", "fail_open"] = "fail_closed"
    # Large batches: each costs a spool fsync, a Kafka round trip and an acknowledgement
    # (~1-2 ms of CPU), which at small sizes dominated the per-statement cost. 200 ms is
    # the durability bound PostgreSQL's own wal_writer_delay gives asynchronous commit.
    flush_events: int = 8192  # a batch is sealed at this many events ...
    flush_interval: float = 0.2  # ... or this many seconds after its first event
    # "zstd": record format 2 (payload compressed, ~150 KB for 8192 statements, under
    # Kafka's default 1 MB message limit); "none": format 1.
    compression: Literal["zstd", "none"] = "zstd"
    signing_key_file: str
    statement_text: Literal["exact", "normalized"] = "exact"
    record_parameters: bool = False  # bind parameter values in statement events
    kafka: AuditKafkaConfig = AuditKafkaConfig()


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The whole configuration file.

    Empty ``roles`` is *single-role mode*: every principal uses ``upstream.user`` and the
    upstream password, and ``bindings`` must be empty. Otherwise each principal is mapped
    to one of ``roles`` by the first matching entry of ``bindings`` (file order).
    """

    server: ServerConfig = ServerConfig()
    tls: TlsConfig = TlsConfig()
    upstream: UpstreamConfig
    clients: list[ClientEntry] = []
    issuers: list[IssuerConfig] = []
    roles: list[RoleConfig] = []
    bindings: list[BindingConfig] = []
    policy: PolicyConfig = PolicyConfig()
    rules: list[RuleConfig] = []
    log: LogConfig = LogConfig()
    audit: AuditConfig | None = None  # no [audit] section = no audit log

    def effective_workers(self) -> int:
        """Number of worker processes to fork: ``server.workers``, or one per CPU if 0."""
        return self.server.workers or os.cpu_count() or 1


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a configuration file. ``line`` is 1-based; 0 means "whole file"."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line > 0 else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = list(issues)
        # args holds the issues themselves, so the error survives pickling intact.
        super().__init__(self.issues)

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


# --------------------------------------------------------------------------- locator

KeyPath = tuple[str | int, ...]

_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED_KEY = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_ARRAY_HEADER = re.compile(rf"^\s*\[\[\s*({_DOTTED_KEY})\s*\]\]")
_TABLE_HEADER = re.compile(rf"^\s*\[\s*({_DOTTED_KEY})\s*\]")
_KEY_LINE = re.compile(rf"^\s*({_DOTTED_KEY})\s*=")
_KEY_PART_RE = re.compile(_KEY_PART)
# Strings and comments are blanked out before counting brackets, so that a "[" inside a
# value does not look like the start of a multi-line array.
_STRINGS_AND_COMMENT = re.compile(r""""(?:[^"\\]|\\.)*"|'[^']*'|#.*$""")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$|\s*\(at end of document\)\s*$")
_MSGSPEC_PATH_SUFFIX = re.compile(r" - at `\$[^`]*`$")
_MSGSPEC_PATH_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _split_key(dotted: str) -> list[str]:
    parts = []
    for raw in _KEY_PART_RE.findall(dotted):
        # Basic-string escapes in keys are vanishingly rare in a config file; unquoting
        # without unescaping is enough to match the key msgspec reports.
        parts.append(raw[1:-1] if raw[:1] in "\"'" else raw)
    return parts


class _Locator:
    """Maps key paths (``("clients", 1, "user")``) to the line that defines them.

    A line scanner, not a TOML parser: it follows ``[table]`` and ``[[array]]`` headers
    (counting array elements so ``clients[1]`` finds the second ``[[clients]]``) and
    ``key =`` lines, skipping the inside of multi-line strings and arrays. The document has
    already been parsed by tomllib, so it only has to be right for valid TOML, and when it
    does not know, callers fall back to the enclosing table's line and then to line 1.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[KeyPath, int] = {}
        self.keys_by_line: dict[int, KeyPath] = {}
        self.duplicate_lines: list[int] = []
        self._scan(text)

    def _record(self, path: KeyPath, lineno: int) -> None:
        if path in self.lines:
            self.duplicate_lines.append(lineno)
        else:
            self.lines[path] = lineno

    def _resolve(self, keys: list[str], counters: dict[KeyPath, int]) -> KeyPath:
        # A header names its parents by key only; a parent that is an array of tables
        # means "its most recent element".
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            if path in counters:
                path = (*path, counters[path] - 1)
        return path

    def _scan(self, text: str) -> None:
        counters: dict[KeyPath, int] = {}
        table: KeyPath = ()
        in_string: str | None = None
        depth = 0
        for lineno, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            if depth == 0:
                if m := _ARRAY_HEADER.match(line):
                    keys = _split_key(m.group(1))
                    array = (*self._resolve(keys[:-1], counters), keys[-1])
                    counters[array] = counters.get(array, 0) + 1
                    table = (*array, counters[array] - 1)
                    self.lines.setdefault(array, lineno)
                    self._record(table, lineno)
                    continue
                if m := _TABLE_HEADER.match(line):
                    table = self._resolve(_split_key(m.group(1)), counters)
                    self._record(table, lineno)
                    continue
                if m := _KEY_LINE.match(line):
                    keys = _split_key(m.group(1))
                    for i in range(1, len(keys)):
                        self.lines.setdefault((*table, *keys[:i]), lineno)
                    path = (*table, *keys)
                    self._record(path, lineno)
                    self.keys_by_line[lineno] = path
            for delimiter in ('"""', "'''"):
                if line.count(delimiter) % 2 == 1:
                    in_string = delimiter
                    break
            if in_string is None:
                value = line.split("=", 1)[1] if depth == 0 and "=" in line else line
                bare = _STRINGS_AND_COMMENT.sub("", value)
                opened = bare.count("[") + bare.count("{")
                closed = bare.count("]") + bare.count("}")
                depth = max(0, depth + opened - closed)

    def line_of(self, path: KeyPath) -> int:
        """Line of ``path``, else of its nearest enclosing key or table, else 1."""
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return 1


def _format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _msgspec_message(exc: msgspec.ValidationError) -> str:
    """msgspec's message without its ``- at `$.path``` suffix (we print the key) or
    backticks: ``Expected `int`, got `str``` -> ``Expected int, got str``."""
    return _MSGSPEC_PATH_SUFFIX.sub("", str(exc)).replace("`", "")


def _parse_msgspec_path(message: str) -> KeyPath:
    """``"... - at `$.clients[1].user`"`` -> ``("clients", 1, "user")``."""
    m = re.search(r" - at `\$([^`]*)`$", message)
    if not m:
        return ()
    return tuple(
        name if name else int(index) for name, index in _MSGSPEC_PATH_TOKEN.findall(m.group(1))
    )


# --------------------------------------------------------------------------- shape checks


def _toml_type_name(value: object) -> str:
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _struct_type(tp: object) -> type[msgspec.Struct] | None:
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def _shape_issues(value: object, tp: object, path: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    """Every unknown key, missing key and wrong type under ``path``.

    msgspec stops at the first error; an operator fixing a file wants all of them at once,
    so after a failed decode this walks the parsed document against the schema.
    """
    args = typing.get_args(tp)
    if len(args) == 2 and type(None) in args and typing.get_origin(tp) in (
        typing.Union, types.UnionType
    ):
        # An optional section (``audit: AuditConfig | None``): TOML has no null, so a
        # present value is checked against the section itself.
        tp = args[0] if args[1] is type(None) else args[1]
    struct = _struct_type(tp)
    if struct is not None:
        if not isinstance(value, dict):
            yield path, f"expected a table, got {_toml_type_name(value)}"
            return
        fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
        for key in value:
            if key not in fields:
                hint = difflib.get_close_matches(key, fields, n=1)
                suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
                yield (*path, key), f"unknown key {key!r}{suffix}"
        for name, field in fields.items():
            if name in value:
                yield from _shape_issues(value[name], field.type, (*path, name))
            elif field.required:
                what = "table" if _struct_type(field.type) else "key"
                yield (*path, name), f"missing required {what} {name!r}"
        return
    if typing.get_origin(tp) is list and _struct_type(typing.get_args(tp)[0]):
        if not isinstance(value, list):
            yield path, f"expected an array of tables, got {_toml_type_name(value)}"
            return
        for index, item in enumerate(value):
            yield from _shape_issues(item, typing.get_args(tp)[0], (*path, index))
        return
    try:
        msgspec.convert(value, type=tp)
    except msgspec.ValidationError as exc:
        yield path, _msgspec_message(exc)


# --------------------------------------------------------------------------- semantic checks


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _readable_file_issue(path: str) -> str | None:
    # Opening the file is the only honest readability test (os.access ignores ACLs and
    # capabilities); the contents are loaded later by whoever needs them.
    try:
        with open(path, "rb"):
            pass
    except IsADirectoryError:
        return f"{path} is a directory, not a file"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


# RFC 3339 section 5.6 date-time, restricted to the spellings datetime.fromisoformat also
# reads (upper-case "T"/"Z", or a space as the RFC's note allows), so that every accepted
# value means the same thing to whoever parses it later. The offset is mandatory: an
# expiry in "local time" would move with the TZ of whichever host runs the gateway.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})"
)


def parse_rfc3339(text: str) -> dt.datetime:
    """An RFC 3339 timestamp with a ``Z`` or ``+HH:MM`` offset, as an aware datetime.

    ``2030-01-31T00:00:00Z``, ``2030-01-31T09:30:00.5+02:00``. Raises ``ValueError`` for
    anything else, including a timestamp without an offset.
    """
    if not _RFC3339.fullmatch(text):
        raise ValueError(
            f"{text!r} is not an RFC 3339 timestamp with a timezone "
            "(e.g. '2030-01-31T00:00:00Z' or '2030-01-31T00:00:00+01:00')"
        )
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError as exc:  # well-formed but impossible: month 13, hour 24, ...
        raise ValueError(f"{text!r} is not a valid time: {exc}") from None


#: JWS algorithms an issuer may allow. ``none`` is never one of them; the HMAC family
#: additionally needs a shared secret, because a JWKS must never supply a symmetric key.
JWT_ALGORITHMS = frozenset(
    {
        "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
        "EdDSA", "HS256", "HS384", "HS512",
    }
)
_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
#: Principal issuers that are not OIDC issuer names; binding.issuer may use them.
RESERVED_ISSUER_NAMES = frozenset({"static", "cert", "*"})
# Issuer names end up in upstream application_name ("pgwarden:<issuer>:<subject>") and in
# log lines, where ":" or spaces would make the identity ambiguous to read back.
_ISSUER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# More leeway than this lets an expired token in for minutes; clock skew between an IdP
# and a server with NTP is seconds.
MAX_LEEWAY = 300.0


def _url_issue(url: str, allow_http: bool) -> str | None:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed "[" of an IPv6 literal
        return f"{url!r} is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_http:
        return f"{url!r} uses plain http; use https (allow_insecure_http is for loopback tests)"
    if scheme not in ("https", "http"):
        return f"{url!r} is not an https URL"
    if not parts.hostname:
        return f"{url!r} has no host"
    return None


def _issuer_issues(cfg: Config) -> Iterator[tuple[KeyPath, str]]:
    names: dict[str, int] = {}
    urls: dict[str, int] = {}
    for index, iss in enumerate(cfg.issuers):
        at = ("issuers", index)
        if not iss.name:
            yield (*at, "name"), "must not be empty"
        elif iss.name in RESERVED_ISSUER_NAMES:
            yield (
                (*at, "name"),
                f"{iss.name!r} is reserved (bindings use \"static\", \"cert\" and \"*\")",
            )
        elif not _ISSUER_NAME.fullmatch(iss.name):
            yield (
                (*at, "name"),
                f"{iss.name!r} may contain only letters, digits, '_', '-' and '.'",
            )
        elif iss.name in names:
            yield (
                (*at, "name"),
                f"duplicate issuer name {iss.name!r} (also issuers[{names[iss.name]}])",
            )
        else:
            names[iss.name] = index

        if not iss.issuer:
            yield (*at, "issuer"), "must not be empty"
        else:
            if problem := _url_issue(iss.issuer, iss.allow_insecure_http):
                yield (*at, "issuer"), problem
            elif (parts := urllib.parse.urlsplit(iss.issuer)).query or parts.fragment:
                # OpenID Connect Discovery 1.0 section 3: no query or fragment in `iss`.
                yield (*at, "issuer"), "an issuer URL has no query or fragment"
            if iss.issuer in urls:
                # Tokens name their issuer by `iss`; two entries for one `iss` would make
                # the choice of audiences and keys depend on file order.
                yield (
                    (*at, "issuer"),
                    f"issuer URL {iss.issuer!r} is also used by issuers[{urls[iss.issuer]}]",
                )
            else:
                urls[iss.issuer] = index
        for key in ("discovery_url", "jwks_uri"):
            url = getattr(iss, key)
            if url and (problem := _url_issue(url, iss.allow_insecure_http)):
                yield (*at, key), problem

        if not iss.audiences:
            yield (*at, "audiences"), "must list at least one audience"
        elif any(not aud for aud in iss.audiences):
            yield (*at, "audiences"), "must not contain an empty audience"

        has_secret = bool(iss.hmac_secret_env or iss.hmac_secret_file)
        if not iss.algorithms:
            yield (*at, "algorithms"), "must list at least one algorithm"
        for alg in iss.algorithms:
            if alg.lower() == "none":
                yield (*at, "algorithms"), "'none' is never accepted: tokens must be signed"
            elif alg not in JWT_ALGORITHMS:
                yield (
                    (*at, "algorithms"),
                    f"unknown algorithm {alg!r} (choose from {', '.join(sorted(JWT_ALGORITHMS))})",
                )
            elif alg in _HMAC_ALGORITHMS and not has_secret:
                yield (
                    (*at, "algorithms"),
                    f"{alg} needs a shared secret: set hmac_secret_env or hmac_secret_file",
                )
        if iss.hmac_secret_env and iss.hmac_secret_file:
            yield (
                (*at, "hmac_secret_file"),
                "set at most one of hmac_secret_env and hmac_secret_file",
            )

        if not 0 <= iss.leeway <= MAX_LEEWAY:
            yield (
                (*at, "leeway"),
                f"must be between 0 and {MAX_LEEWAY:g} seconds, got {iss.leeway}",
            )
        for key in ("jwks_refresh_interval", "jwks_min_refresh_interval", "http_timeout"):
            if not getattr(iss, key) > 0:
                yield (*at, key), f"must be a positive number of seconds, got {getattr(iss, key)}"
        if 0 < iss.jwks_refresh_interval < iss.jwks_min_refresh_interval:
            yield (
                (*at, "jwks_min_refresh_interval"),
                f"must not exceed jwks_refresh_interval ({iss.jwks_refresh_interval})",
            )
        if not KIB <= iss.max_token_bytes <= MIB:
            yield (
                (*at, "max_token_bytes"),
                f"must be between {KIB} (1 KiB) and {MIB} (1 MiB), got {iss.max_token_bytes}",
            )
        for key in ("subject_claim", "group_claim"):
            if not getattr(iss, key):
                yield (*at, key), "must not be empty"
        for key in ("required_claims", "client_id_claims"):
            if any(not claim for claim in getattr(iss, key)):
                yield (*at, key), "must not contain an empty claim name"


def _role_issues(cfg: Config) -> Iterator[tuple[KeyPath, str]]:
    names: dict[str, int] = {}
    for index, role in enumerate(cfg.roles):
        at = ("roles", index)
        if not role.name:
            yield (*at, "name"), "must not be empty"
        elif role.name in names:
            yield (
                (*at, "name"),
                f"duplicate role name {role.name!r} (also roles[{names[role.name]}])",
            )
        else:
            names[role.name] = index
        if not role.upstream_user:
            yield (*at, "upstream_user"), "must not be empty"
        if role.password_env and role.password_file:
            yield (*at, "password_file"), "set at most one of password_env and password_file"
        if not role.databases:
            # An empty list would be a role that can open nothing: surely a mistake.
            yield (*at, "databases"), 'must list at least one database (or "*" for any)'
        elif any(not db for db in role.databases):
            yield (*at, "databases"), "must not contain an empty database name"
    if cfg.roles and not cfg.bindings:
        yield (
            ("roles",),
            "[[roles]] are defined but no [[bindings]] map principals to them, "
            "so every connection would be refused",
        )


def _binding_issues(cfg: Config) -> Iterator[tuple[KeyPath, str]]:
    roles = {role.name for role in cfg.roles}
    issuers = {iss.name for iss in cfg.issuers}
    for index, binding in enumerate(cfg.bindings):
        at = ("bindings", index)
        if not cfg.roles:
            yield (
                (*at, "role"),
                f"no role named {binding.role!r}: there are no [[roles]], so every principal "
                "uses [upstream] user (single-role mode) and bindings cannot apply",
            )
        elif binding.role not in roles:
            known = ", ".join(repr(name) for name in sorted(roles))
            yield (*at, "role"), f"no role named {binding.role!r} (roles: {known})"

        if binding.issuer not in RESERVED_ISSUER_NAMES and binding.issuer not in issuers:
            named = sorted(issuers - RESERVED_ISSUER_NAMES)
            choices = ", ".join(repr(n) for n in [*named, "static", "cert", "*"])
            yield (*at, "issuer"), f"no issuer named {binding.issuer!r} (choose from {choices})"
        elif binding.issuer == "cert" and not cfg.tls.client_ca_file:
            yield (
                (*at, "issuer"),
                "binds client certificates, but tls.client_ca_file is not set, so no "
                "certificate principal can exist",
            )
        elif binding.issuer == "static" and not cfg.clients:
            yield (
                (*at, "issuer"),
                "binds static keys, but there are no [[clients]], so no static principal "
                "can exist",
            )
        if binding.issuer in ("static", "cert"):
            # Only OIDC principals carry these attributes; such a binding could never match.
            for key in ("client_id", "groups", "claims"):
                if getattr(binding, key):
                    yield (
                        (*at, key),
                        f"{binding.issuer!r} principals have no {key.replace('_', ' ')}; "
                        "this binding can never match",
                    )
        if not binding.subject:
            yield (*at, "subject"), 'must not be empty ("*" matches any subject)'
        if any(not group for group in binding.groups):
            yield (*at, "groups"), "must not contain an empty group name"
        if any(not claim for claim in binding.claims):
            yield (*at, "claims"), "must not contain an empty claim name"


#: Largest accepted decision cache (entries per worker).
MAX_POLICY_CACHE = 10_000_000
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def _policy_issues(cfg: Config) -> Iterator[tuple[KeyPath, str]]:
    # Imported here: the policy vocabulary lives with the policy, and check-config should
    # not pay for it unless there is a policy section to check. Neither module imports
    # gateway.sql (pglast).
    from gateway.policy.baseline import BASELINE_IDS
    from gateway.policy.model import CATEGORIES, FLAGS, KINDS

    p = cfg.policy
    for key in ("cache_size", "exact_cache_size"):
        value = getattr(p, key)
        if not 0 <= value <= MAX_POLICY_CACHE:
            yield (
                ("policy", key),
                f"must be between 0 (no cache) and {MAX_POLICY_CACHE}, got {value}",
            )

    role_names = {role.name for role in cfg.roles}
    ids: dict[str, int] = {}
    for index, rule in enumerate(cfg.rules):
        at = ("rules", index)
        if not rule.id:
            yield (*at, "id"), "must not be empty"
        elif not _RULE_ID.fullmatch(rule.id):
            yield (*at, "id"), f"{rule.id!r} may contain only letters, digits, '_', '-', '.', ':'"
        elif rule.id.startswith("baseline.") or rule.id in ("default", "syntax"):
            yield (*at, "id"), f"{rule.id!r} is reserved for built-in decisions"
        elif rule.id in ids:
            yield (*at, "id"), f"duplicate rule id {rule.id!r} (also rules[{ids[rule.id]}])"
        else:
            ids[rule.id] = index
        for key in ("roles", "principals", "databases", "commands", "relations", "functions"):
            if any(not value.strip() for value in getattr(rule, key)):
                yield (*at, key), "must not contain an empty entry"
        if cfg.roles:
            for name in rule.roles:
                if not any(ch in name for ch in "*?[") and name not in role_names:
                    known = ", ".join(repr(n) for n in sorted(role_names))
                    yield (*at, "roles"), f"no role named {name!r} (roles: {known})"
        for key, known_values, spell in (
            ("kinds", KINDS, str.upper), ("categories", CATEGORIES, str.lower),
            ("flags", FLAGS, str.lower),
        ):
            for value in getattr(rule, key):
                if spell(value) not in known_values:
                    # A misspelt matcher would silently never match: a block that is not.
                    hint = difflib.get_close_matches(spell(value), known_values, n=1)
                    suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
                    what = "category" if key == "categories" else key[:-1]
                    yield (*at, key), f"unknown {what} {value!r}{suffix}"
        for pattern in rule.overrides:
            if not any(fnmatch.fnmatchcase(rid, pattern) for rid in BASELINE_IDS):
                yield (
                    (*at, "overrides"),
                    f"{pattern!r} names no baseline rule "
                    f"(baseline rules: {', '.join(BASELINE_IDS)})",
                )
        if rule.overrides and rule.observe:
            yield (*at, "overrides"), "an observe rule decides nothing, so it cannot override"


def _semantic_issues(cfg: Config) -> Iterator[tuple[KeyPath, str]]:
    s, t, u = cfg.server, cfg.tls, cfg.upstream

    for path, port in ((("server", "listen_port"), s.listen_port), (("upstream", "port"), u.port)):
        if not 1 <= port <= 65535:
            yield path, f"port must be between 1 and 65535, got {port}"
    if not s.listen_host:
        yield ("server", "listen_host"), "must not be empty"
    if s.workers < 0:
        yield ("server", "workers"), f"must be >= 0 (0 = one per CPU), got {s.workers}"
    for name in ("backlog", "max_client_connections"):
        if getattr(s, name) < 1:
            yield ("server", name), f"must be >= 1, got {getattr(s, name)}"
    for name in ("startup_timeout", "graceful_timeout", "heartbeat_interval", "heartbeat_timeout"):
        if not getattr(s, name) > 0:
            yield ("server", name), f"must be a positive number of seconds, got {getattr(s, name)}"
    if s.heartbeat_interval > 0 and 0 < s.heartbeat_timeout <= s.heartbeat_interval:
        # A worker is only declared dead after missing several beats.
        yield (
            ("server", "heartbeat_timeout"),
            f"must be greater than heartbeat_interval ({s.heartbeat_interval})",
        )
    if not MIB <= s.max_message_size <= GIB:
        yield (
            ("server", "max_message_size"),
            f"must be between {MIB} (1 MiB) and {GIB} (1 GiB), got {s.max_message_size}",
        )
    if s.write_buffer_low < 0:
        yield ("server", "write_buffer_low"), f"must be >= 0, got {s.write_buffer_low}"
    if s.write_buffer_low >= s.write_buffer_high:
        yield (
            ("server", "write_buffer_low"),
            f"must be less than write_buffer_high ({s.write_buffer_high}), "
            f"got {s.write_buffer_low}",
        )
    if s.auth_failure_limit < 1:
        yield ("server", "auth_failure_limit"), f"must be >= 1, got {s.auth_failure_limit}"
    if not s.auth_failure_window > 0:
        yield (
            ("server", "auth_failure_window"),
            f"must be a positive number of seconds, got {s.auth_failure_window}",
        )

    if bool(t.cert_file) != bool(t.key_file):
        missing = "key_file" if t.cert_file else "cert_file"
        yield ("tls", missing), "cert_file and key_file must be set together"
    for name in ("cert_file", "key_file", "client_ca_file"):
        if getattr(t, name) and (problem := _readable_file_issue(getattr(t, name))):
            yield ("tls", name), problem
    if t.client_ca_file and not t.cert_file:
        yield (
            ("tls", "client_ca_file"),
            "client certificates are only verified over TLS: set cert_file and key_file too",
        )
    if t.require_tls and not (t.cert_file and t.key_file):
        if not t.allow_plaintext_loopback:
            yield (
                ("tls", "require_tls"),
                "require_tls is true but cert_file/key_file are not set "
                "(set them, or allow_plaintext_loopback with a loopback listen_host)",
            )
        elif not _is_loopback(s.listen_host):
            yield (
                ("tls", "require_tls"),
                "require_tls is true without cert_file/key_file; allow_plaintext_loopback "
                f"only covers a loopback listen_host, not {s.listen_host!r}",
            )

    if not u.host:
        yield ("upstream", "host"), "must not be empty"
    elif "/" in u.host and not os.path.isabs(u.host):
        yield ("upstream", "host"), "a unix socket directory must be an absolute path"
    if not u.user:
        yield ("upstream", "user"), "must not be empty"
    if u.password_env and u.password_file:
        yield ("upstream", "password_file"), "set at most one of password_env and password_file"
    if not u.connect_timeout > 0:
        yield (
            ("upstream", "connect_timeout"),
            f"must be a positive number of seconds, got {u.connect_timeout}",
        )
    if u.pool_size < 0:
        yield ("upstream", "pool_size"), f"must be >= 0 (0 = no pooling), got {u.pool_size}"
    if not u.pool_idle_timeout > 0:
        yield (
            ("upstream", "pool_idle_timeout"),
            f"must be a positive number of seconds, got {u.pool_idle_timeout}",
        )
    if u.sslrootcert and (problem := _readable_file_issue(u.sslrootcert)):
        yield ("upstream", "sslrootcert"), problem

    seen: dict[str, int] = {}
    for index, client in enumerate(cfg.clients):
        if not client.user:
            yield ("clients", index, "user"), "must not be empty"
        elif client.user in seen:
            yield (
                ("clients", index, "user"),
                f"duplicate client user {client.user!r} (also clients[{seen[client.user]}])",
            )
        else:
            seen[client.user] = index
        try:
            parse_secret_hash(client.secret_hash)
        except ValueError as exc:
            yield ("clients", index, "secret_hash"), str(exc)
        if client.expires:
            try:
                parse_rfc3339(client.expires)
            except ValueError as exc:
                yield ("clients", index, "expires"), str(exc)

    yield from _issuer_issues(cfg)
    yield from _role_issues(cfg)
    yield from _binding_issues(cfg)
    yield from _policy_issues(cfg)
    yield from _audit_issues(cfg)


#: Bounds of audit.segment_bytes: small enough to delete acknowledged data promptly,
#: large enough that rotation (a file create and a directory fsync) stays rare.
MIN_SEGMENT_BYTES = 64 * KIB
MAX_FLUSH_EVENTS = 65536
MAX_FLUSH_INTERVAL = 10.0
# Kafka's own rule for topic names (kafka.common.internals.Topic).
_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _audit_issues(cfg: Config) -> Iterator[tuple[KeyPath, str]]:
    a = cfg.audit
    if a is None or not a.enabled:
        return
    if not a.spool_dir:
        yield ("audit", "spool_dir"), "must not be empty"
    elif os.path.exists(a.spool_dir) and not os.path.isdir(a.spool_dir):
        yield ("audit", "spool_dir"), f"{a.spool_dir} exists and is not a directory"
    if not a.signing_key_file:
        yield ("audit", "signing_key_file"), "must not be empty"
    elif problem := _readable_file_issue(a.signing_key_file):
        yield ("audit", "signing_key_file"), f"{problem} (create one: pgwarden keys generate)"
    elif (mode := os.stat(a.signing_key_file).st_mode) & 0o077:
        # Whoever can read the key can forge audit records; the worker refuses it too.
        yield (
            ("audit", "signing_key_file"),
            f"{a.signing_key_file} is accessible by group or others "
            f"(mode {mode & 0o7777:04o}); run: chmod 600 {a.signing_key_file}",
        )
    if not MIN_SEGMENT_BYTES <= a.segment_bytes <= GIB:
        yield (
            ("audit", "segment_bytes"),
            f"must be between {MIN_SEGMENT_BYTES} (64 KiB) and {GIB} (1 GiB), "
            f"got {a.segment_bytes}",
        )
    elif a.spool_max_bytes < 2 * a.segment_bytes:
        yield (
            ("audit", "spool_max_bytes"),
            f"must be at least twice segment_bytes ({2 * a.segment_bytes}), "
            f"got {a.spool_max_bytes}",
        )
    if not 1 <= a.flush_events <= MAX_FLUSH_EVENTS:
        yield (
            ("audit", "flush_events"),
            f"must be between 1 and {MAX_FLUSH_EVENTS}, got {a.flush_events}",
        )
    if not 0 < a.flush_interval <= MAX_FLUSH_INTERVAL:
        yield (
            ("audit", "flush_interval"),
            f"must be more than 0 and at most {MAX_FLUSH_INTERVAL:g} seconds, "
            f"got {a.flush_interval}",
        )

    k = a.kafka
    at: KeyPath = ("audit", "kafka")
    for server in k.bootstrap_servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            yield (*at, "bootstrap_servers"), f"{server!r} is not host:port"
    if not _KAFKA_TOPIC.fullmatch(k.topic) or k.topic in (".", ".."):
        yield (
            (*at, "topic"),
            f"{k.topic!r} is not a Kafka topic name (1-249 of letters, digits, '.', '_', '-')",
        )
    if not k.client_id:
        yield (*at, "client_id"), "must not be empty"
    if not k.request_timeout > 0:
        yield (
            (*at, "request_timeout"),
            f"must be a positive number of seconds, got {k.request_timeout}",
        )
    ssl_keys = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    if k.security_protocol == "PLAINTEXT":
        for key in ssl_keys:
            if getattr(k, key):
                yield (*at, key), 'only used with security_protocol = "SSL"'
    else:
        if bool(k.ssl_certfile) != bool(k.ssl_keyfile):
            missing = "ssl_keyfile" if k.ssl_certfile else "ssl_certfile"
            yield (*at, missing), "ssl_certfile and ssl_keyfile must be set together"
        for key in ssl_keys:
            if getattr(k, key) and (problem := _readable_file_issue(getattr(k, key))):
                yield (*at, key), problem


# --------------------------------------------------------------------------- loading


def _resolve_paths(cfg: Config, base: str) -> Config:
    def resolve(p: str) -> str:
        return os.path.normpath(os.path.join(base, os.path.expanduser(p))) if p else p

    replace = msgspec.structs.replace
    return replace(
        cfg,
        server=replace(cfg.server, run_dir=resolve(cfg.server.run_dir)),
        tls=replace(
            cfg.tls,
            cert_file=resolve(cfg.tls.cert_file),
            key_file=resolve(cfg.tls.key_file),
            client_ca_file=resolve(cfg.tls.client_ca_file),
        ),
        upstream=replace(
            cfg.upstream,
            password_file=resolve(cfg.upstream.password_file),
            sslrootcert=resolve(cfg.upstream.sslrootcert),
        ),
        issuers=[
            replace(iss, hmac_secret_file=resolve(iss.hmac_secret_file)) for iss in cfg.issuers
        ],
        roles=[replace(role, password_file=resolve(role.password_file)) for role in cfg.roles],
        audit=None if cfg.audit is None else replace(
            cfg.audit,
            spool_dir=resolve(cfg.audit.spool_dir),
            signing_key_file=resolve(cfg.audit.signing_key_file),
            kafka=replace(
                cfg.audit.kafka,
                ssl_cafile=resolve(cfg.audit.kafka.ssl_cafile),
                ssl_certfile=resolve(cfg.audit.kafka.ssl_certfile),
                ssl_keyfile=resolve(cfg.audit.kafka.ssl_keyfile),
            ),
        ),
    )


def _syntax_issue(file: str, text: str, exc: Exception) -> ConfigIssue:
    message = str(exc)
    m = _TOML_POSITION.search(message)
    locator = _Locator(text)
    if m and m.group(1):
        line = int(m.group(1))
    elif "overwrite" in message and locator.duplicate_lines:
        # tomllib reports duplicate keys "at end of document"; the scanner saw where.
        line = locator.duplicate_lines[0]
    else:
        line = 1
    message = _TOML_POSITION.sub("", message) if m else message
    key = locator.keys_by_line.get(line)
    return ConfigIssue(file, line, _format_path(key) if key else "", f"invalid TOML: {message}")


def _issues(file: str, locator: _Locator, found: list[tuple[KeyPath, str]]) -> list[ConfigIssue]:
    located = [ConfigIssue(file, locator.line_of(p), _format_path(p), msg) for p, msg in found]
    # In file order, as an operator reads and fixes them; sorted() is stable, so issues
    # on the same line keep the order in which the checks found them.
    return sorted(located, key=lambda issue: issue.line)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, decode and validate the TOML file at ``path``.

    Raises ``ConfigError`` listing every problem found (unreadable file, TOML syntax,
    unknown keys, wrong types, and cross-field rules).
    """
    file = os.fspath(path)
    try:
        with open(file, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(file, 0, "", f"cannot read: {exc.strerror or exc}")]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(file, line, "", "file is not valid UTF-8")]) from None

    try:
        decoded = msgspec.toml.decode(text, type=Config)
    except msgspec.ValidationError as exc:
        locator = _Locator(text)
        found = list(_shape_issues(tomllib.loads(text), Config, ()))
        if not found:  # the walk mirrors msgspec's rules; never lose msgspec's own error
            found = [(_parse_msgspec_path(str(exc)), _msgspec_message(exc))]
        raise ConfigError(_issues(file, locator, found)) from None
    except msgspec.DecodeError as exc:
        raise ConfigError([_syntax_issue(file, text, exc)]) from None

    cfg = _resolve_paths(decoded, os.path.dirname(os.path.abspath(file)))
    problems = list(_semantic_issues(cfg))
    if problems:
        locator = _Locator(text)
        raise ConfigError(_issues(file, locator, problems))
    return cfg
