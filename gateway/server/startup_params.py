"""Which client startup parameters are passed upstream.

Every startup parameter PostgreSQL receives is applied as a setting of the new session,
including privilege-relevant ones (``role``, ``session_authorization``) and the
``replication`` switch that turns the connection into a walsender that no statement
policy can see. So the gateway forwards an allowlist of harmless session settings and
refuses a connection that asks for anything else, rather than silently dropping it and
leaving the client with a session different from the one it asked for. The ``options``
parameter (``-c name=value`` …) is parsed and held to the same allowlist.

``user`` and ``database`` are handled by the caller: the gateway decides the upstream
user, and the client's own user name is never forwarded as a credential.
"""

from __future__ import annotations

#: Session settings a client may choose (compared case-insensitively).
ALLOWED_SETTINGS = frozenset(
    s.lower()
    for s in (
        "application_name",
        "client_encoding",
        "DateStyle",
        "TimeZone",
        "IntervalStyle",
        "extra_float_digits",
        "search_path",
        "standard_conforming_strings",
        "bytea_output",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "default_transaction_isolation",
        "default_transaction_read_only",
        "default_transaction_deferrable",
        "lc_messages",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "geqo",
        "jit",
        "work_mem",
        "maintenance_work_mem",
        "synchronous_commit",
        "row_security",
        "xmloption",
        "intervalstyle",
        "timezone",
        "datestyle",
        "enable_seqscan",
    )
)

# Handled by the caller, never forwarded as given.
_CALLER_HANDLED = frozenset(("user", "database"))


class StartupParamError(Exception):
    def __init__(self, message: str, sqlstate: str = "42501") -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


def split_options(value: str) -> list[str]:
    """Split ``options`` exactly as PostgreSQL's ``pg_split_opts`` does.

    Whitespace separates words and a backslash escapes the next character; quotes mean
    nothing. Using any other splitting rule (shlex, say) would let a crafted value look
    harmless here and set something else upstream.
    """
    words: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i].isspace():
            i += 1
        if i >= n:
            break
        word: list[str] = []
        while i < n and not value[i].isspace():
            if value[i] == "\\" and i + 1 < n:
                i += 1
            word.append(value[i])
            i += 1
        words.append("".join(word))
    return words


def _parse_options(value: str) -> list[tuple[str, str]]:
    """The settings in libpq ``options``: ``-c name=value``, ``-cname=value``,
    ``--name=value``. Any other switch is refused."""
    words = split_options(value)
    settings: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            assignment = words[i + 1]
            i += 2
        elif (word.startswith("-c") and len(word) > 2) or (word.startswith("--") and len(word) > 2):
            assignment = word[2:]
            i += 1
        else:
            raise StartupParamError(
                f'startup option "{word}" is not allowed through pgwarden'
            )
        name, sep, setting = assignment.partition("=")
        if not sep:
            raise StartupParamError(f'invalid startup option "{assignment}"', "22023")
        settings.append((name.replace("-", "_"), setting))
    return settings


def upstream_params(client_params: dict[str, str]) -> dict[str, str]:
    """The parameters to send upstream (without user/database), or StartupParamError."""
    out: dict[str, str] = {}
    for name, value in client_params.items():
        lname = name.lower()
        if lname in _CALLER_HANDLED or lname.startswith("_pq_."):
            continue
        if lname == "replication":
            if value.lower() in ("false", "off", "no", "0"):
                continue
            raise StartupParamError(
                "replication connections are not supported by pgwarden", "0A000"
            )
        if lname == "options":
            for setting, _ in _parse_options(value):
                if setting.lower() not in ALLOWED_SETTINGS:
                    raise StartupParamError(
                        f'setting "{setting}" in startup options is not allowed '
                        "through pgwarden"
                    )
            out[name] = value
            continue
        if lname not in ALLOWED_SETTINGS:
            raise StartupParamError(
                f'startup parameter "{name}" is not allowed through pgwarden'
            )
        out[name] = value
    return out
