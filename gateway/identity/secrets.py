"""Upstream secret sources: where the gateway's own PostgreSQL passwords come from.

Owns reading an upstream credential — the ``[upstream]`` one in single-role mode, or a
role's (``[[roles]]``) — from an environment variable or a file, at the moment it is
needed (so a rotated file is picked up on the next connection or reload). Errors name
the source (variable name or file path) and never the value, not even a fragment of it:
messages end up in logs and in audit events.

It does not know how the password is used (SCRAM, md5, cleartext) and must not import
server or policy. Later sources (a vault) belong here too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from gateway.config import RoleConfig, UpstreamConfig

__all__ = [
    "MAX_SECRET_FILE_BYTES",
    "SecretSourceError",
    "read_role_password",
    "read_upstream_password",
]

# A password file is a few dozen bytes; anything far larger is a misconfigured path
# (a log, a device), and reading it whole would only waste memory.
MAX_SECRET_FILE_BYTES = 64 * 1024


class SecretSourceError(Exception):
    """A configured secret source could not provide a secret.

    ``source`` describes where the gateway looked (``env:NAME`` or ``file:/path``).
    """

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(message)


def _strip_one_newline(value: str) -> str:
    # Editors and `echo` add one trailing newline; anything beyond that (spaces,
    # several newlines) may be part of the secret and is kept.
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith("\n"):
        return value[:-1]
    return value


# ``owner`` prefixes messages about a role's secret (``role "etl": ``) so an operator knows
# which of several credentials is missing; it is empty for the [upstream] one.


def _read_env(name: str, environ: Mapping[str, str], owner: str = "") -> str:
    source = f"env:{name}"
    value = environ.get(name)
    if value is None:
        raise SecretSourceError(
            source, f"{owner}upstream password environment variable {name} is not set"
        )
    if not value:
        raise SecretSourceError(
            source, f"{owner}upstream password environment variable {name} is empty"
        )
    return value


def _read_file(path: str, owner: str = "") -> str:
    source = f"file:{path}"
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        # strerror only ("Permission denied"), never str(exc) of something that read data.
        reason = exc.strerror or type(exc).__name__
        raise SecretSourceError(
            source, f"{owner}cannot read upstream password file {path}: {reason}"
        ) from None
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise SecretSourceError(
            source,
            f"{owner}upstream password file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # The UnicodeDecodeError text quotes the offending byte, i.e. part of the secret.
        raise SecretSourceError(
            source, f"{owner}upstream password file {path} is not valid UTF-8"
        ) from None
    value = _strip_one_newline(text)
    if not value:
        raise SecretSourceError(source, f"{owner}upstream password file {path} is empty")
    return value


def read_upstream_password(
    cfg: UpstreamConfig, environ: Mapping[str, str] | None = None
) -> str | None:
    """The upstream password, or None when no source is configured (trust/cert upstreams).

    ``environ`` defaults to ``os.environ``; tests pass their own mapping.
    """
    if cfg.password_env and cfg.password_file:
        # load_config rejects this; refuse rather than guess which one was meant.
        raise SecretSourceError(
            "config", "both upstream.password_env and upstream.password_file are set"
        )
    if cfg.password_env:
        return _read_env(cfg.password_env, os.environ if environ is None else environ)
    if cfg.password_file:
        return _read_file(cfg.password_file)
    return None


def read_role_password(role: RoleConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The upstream password of ``role``, or None when it names no source (trust/cert).

    Read from the source each time it is called: the gateway calls it at start and on
    SIGHUP, which is how a rotated secret takes effect. Errors name the role and the
    source, never the value. ``environ`` defaults to ``os.environ``.
    """
    owner = f'role "{role.name}": '
    if role.password_env and role.password_file:
        # load_config rejects this; refuse rather than guess which one was meant.
        raise SecretSourceError(
            "config", f"{owner}both password_env and password_file are set"
        )
    if role.password_env:
        return _read_env(role.password_env, os.environ if environ is None else environ, owner)
    if role.password_file:
        return _read_file(role.password_file, owner)
    return None
