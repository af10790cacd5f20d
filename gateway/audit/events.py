"""The audit event schema: one msgspec Struct per event type, a tagged union, versioned.

This module owns what an audit event *is*: its type name (the ``"type"`` tag in JSON), its
fields and their meaning. It knows nothing about batches, signatures or files
(:mod:`gateway.audit.batch` wraps events into signed records). docs/audit-format.md
documents every field for consumers; keep the two in step.

Versioning: ``SCHEMA_VERSION`` is written into every batch. Within one version, new
*optional* fields may be added (consumers ignore fields they do not know, as msgspec does
by default); renaming or removing a field, changing its type or meaning, or adding an
event type is a new version.

Timestamps are integer nanoseconds since the Unix epoch (``time.time_ns()``): exact, no
float rounding, no time-zone parsing in the verifier. Durations carry their unit in the
name (``duration_us``) except ``session_end.duration``, which is in seconds.

The Structs are built on the hot path (one ``StatementEvent`` per statement), so they are
``gc=False`` (they hold only strings, numbers and lists of strings, which cannot form a
reference cycle back to the event) and keyword-only, so a call site reads like a record.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "ApprovalDecisionEvent",
    "ApprovalRequestEvent",
    "AuthFailureEvent",
    "AuthSuccessEvent",
    "Event",
    "EventsDroppedEvent",
    "PolicyReloadEvent",
    "SessionEndEvent",
    "SessionStartEvent",
    "StatementEvent",
    "StatementStartEvent",
    "WorkerStartEvent",
    "WorkerStopEvent",
]

#: Version of the event schema below, written into every batch as ``"schema"``.
SCHEMA_VERSION = 1

Protocol = Literal["simple", "extended", "function_call"]
Decision = Literal["allow", "block", "approve"]


class _Event(msgspec.Struct, tag_field="type", kw_only=True, gc=False):
    """Fields every event carries."""

    #: When it happened, ns since the Unix epoch.
    at: int


class WorkerStartEvent(_Event, tag="worker_start", kw_only=True, gc=False):
    """A worker process started and opened a new epoch of its chain (the open batch)."""

    pid: int
    version: str  # pgwarden version


class WorkerStopEvent(_Event, tag="worker_stop", kw_only=True, gc=False):
    """A worker stopped gracefully; always in the close batch of its epoch."""

    pid: int
    reason: str  # "shutdown", "reload", ...
    events: int  # events this worker emitted in the epoch, this one excluded


class SessionStartEvent(_Event, tag="session_start", kw_only=True, gc=False):
    """A client authenticated and its upstream session is ready."""

    session_id: str
    client_addr: str  # "ip:port", "[ipv6]:port" or a unix socket path
    application_name: str
    database: str
    user: str  # the startup user name the client sent
    issuer: str  # principal: OIDC issuer name, "static" or "cert"
    subject: str
    client_id: str
    role: str
    upstream_user: str
    tls: bool


class SessionEndEvent(_Event, tag="session_end", kw_only=True, gc=False):
    """A session ended."""

    session_id: str
    reason: str  # "terminate", "client_disconnect", "server_close", "error: ...", ...
    statements: int
    bytes_in: int  # client -> gateway
    bytes_out: int  # gateway -> client
    duration: float  # seconds


class AuthSuccessEvent(_Event, tag="auth_success", kw_only=True, gc=False):
    """A client proved its identity and was bound to a role."""

    session_id: str
    client_addr: str
    user: str
    method: str  # "oidc", "static", "cert"
    issuer: str
    subject: str
    client_id: str
    role: str


class AuthFailureEvent(_Event, tag="auth_failure", kw_only=True, gc=False):
    """A client failed to authenticate (or was refused before trying: rate limit)."""

    reason: str
    user: str
    method: str  # "oidc", "static", "cert", "" when not known
    client_addr: str
    session_id: str = ""


class StatementEvent(_Event, tag="statement", kw_only=True, gc=False):
    """One statement: its decision and, if it ran, its outcome.

    An extended-protocol statement is recorded once per execution (Execute), with the
    text of its prepared statement. ``at`` is ``end``.
    """

    id: str  # unique within the session: "<session_id>:<n>"
    session_id: str
    start: int  # ns since the epoch, when the gateway received it
    end: int  # ns, when it completed (or was refused)
    issuer: str
    subject: str
    client_id: str
    role: str
    upstream_user: str
    database: str
    client_addr: str
    application_name: str
    protocol: Protocol
    text: str  # exact text, or normalized (constants as $n) per audit.statement_text
    fingerprint: str  # pglast fingerprint (hex); "" if the text does not parse
    decision: Decision
    rule_ids: list[str] = []  # rules that decided
    observed_rule_ids: list[str] = []  # observe-only rules that matched
    masked_columns: list[str] = []  # output columns masked, "relation.column"
    rows: int | None = None  # from the command tag; None if it carries no count
    command_tag: str = ""
    sqlstate: str = ""  # "" = success
    error_message: str = ""
    duration_us: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    approval_id: str = ""
    parameters: list[str | None] | None = None  # bind values (text), if recorded


class StatementStartEvent(_Event, tag="statement_start", kw_only=True, gc=False):
    """A statement about to be forwarded, written only in ``strict`` mode: the gateway
    holds the statement until this record is durable in the spool. The ``statement``
    event with the same ``id`` follows with the outcome."""

    id: str
    session_id: str
    protocol: Protocol
    text: str
    fingerprint: str
    decision: Decision
    rule_ids: list[str] = []


class ApprovalRequestEvent(_Event, tag="approval_request", kw_only=True, gc=False):
    """A statement was held for human approval."""

    approval_id: str
    session_id: str
    statement_id: str
    issuer: str
    subject: str
    client_id: str
    role: str
    database: str
    text: str
    fingerprint: str
    rule_ids: list[str] = []


class ApprovalDecisionEvent(_Event, tag="approval_decision", kw_only=True, gc=False):
    """A human (or the expiry timer) decided a held statement."""

    approval_id: str
    approver: str
    decision: str  # "approved", "denied", "expired"
    justification: str = ""


class PolicyReloadEvent(_Event, tag="policy_reload", kw_only=True, gc=False):
    """The worker (re)loaded its policy; on failure it keeps the previous one."""

    version: str
    ok: bool
    error: str = ""


class EventsDroppedEvent(_Event, tag="events_dropped", kw_only=True, gc=False):
    """Events were discarded because the spool was full under ``on_spool_full =
    "fail_open"``; written as soon as the spool accepts events again, so a loss is
    itself on the signed record."""

    count: int
    first_at: int  # ns, the first dropped event's time
    last_at: int


Event: TypeAlias = (
    WorkerStartEvent
    | WorkerStopEvent
    | SessionStartEvent
    | SessionEndEvent
    | AuthSuccessEvent
    | AuthFailureEvent
    | StatementEvent
    | StatementStartEvent
    | ApprovalRequestEvent
    | ApprovalDecisionEvent
    | PolicyReloadEvent
    | EventsDroppedEvent
)

#: ``"type"`` tag -> Struct, for consumers dispatching on the tag.
EVENT_TYPES: dict[str, type[_Event]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        WorkerStartEvent,
        WorkerStopEvent,
        SessionStartEvent,
        SessionEndEvent,
        AuthSuccessEvent,
        AuthFailureEvent,
        StatementEvent,
        StatementStartEvent,
        ApprovalRequestEvent,
        ApprovalDecisionEvent,
        PolicyReloadEvent,
        EventsDroppedEvent,
    )
}
