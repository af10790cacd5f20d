"""Audit events as Elastic Common Schema (ECS) documents, for SIEM shippers.

This module owns the mapping table of docs/audit-format.md ("Mapping to ECS"): which ECS
field each event field becomes. Fields ECS has no place for live under the custom
``pgwarden.*`` namespace, as ECS asks of custom fields. ``pgwarden audit tail --format
ecs`` prints these documents one per line.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any

from gateway.audit.batch import BatchHeader
from gateway.audit.events import (
    ApprovalDecisionEvent,
    ApprovalRequestEvent,
    AuthFailureEvent,
    AuthSuccessEvent,
    Event,
    EventsDroppedEvent,
    PolicyReloadEvent,
    SessionEndEvent,
    SessionStartEvent,
    StatementEvent,
    StatementStartEvent,
    WorkerStartEvent,
    WorkerStopEvent,
)

__all__ = ["ECS_VERSION", "timestamp", "to_ecs"]

ECS_VERSION = "8.11.0"

# event type -> (event.category, event.type)
_CLASSIFICATION: dict[type[Any], tuple[list[str], list[str]]] = {
    WorkerStartEvent: (["process"], ["start"]),
    WorkerStopEvent: (["process"], ["end"]),
    SessionStartEvent: (["session"], ["start"]),
    SessionEndEvent: (["session"], ["end"]),
    AuthSuccessEvent: (["authentication"], ["start"]),
    AuthFailureEvent: (["authentication"], ["start"]),
    StatementEvent: (["database"], ["access"]),
    StatementStartEvent: (["database"], ["start"]),
    ApprovalRequestEvent: (["iam"], ["info"]),
    ApprovalDecisionEvent: (["iam"], ["info"]),
    PolicyReloadEvent: (["configuration"], ["change"]),
    EventsDroppedEvent: (["configuration"], ["error"]),
}


def timestamp(ns: int) -> str:
    """RFC 3339 UTC with nanoseconds: ``2030-01-31T09:30:00.123456789Z``."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


def _source(addr: str) -> dict[str, Any]:
    """``source.*`` from "ip:port", "[v6]:port" or a unix socket path."""
    if not addr:
        return {}
    out: dict[str, Any] = {"address": addr}
    host, sep, port = addr.rpartition(":")
    if sep and port.isdigit():
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            out["ip"] = str(ipaddress.ip_address(host))
            out["port"] = int(port)
        except ValueError:
            pass
    return out


def _user(issuer: str, subject: str, role: str, client_id: str = "") -> dict[str, Any]:
    user: dict[str, Any] = {"name": subject, "domain": issuer}
    if role:
        user["roles"] = [role]
    if client_id:
        user["id"] = client_id
    return user


def to_ecs(header: BatchHeader, event: Event) -> dict[str, Any]:
    """One ECS document for ``event``, read from the batch ``header``."""
    category, types = _CLASSIFICATION[type(event)]
    doc: dict[str, Any] = {
        "@timestamp": timestamp(event.at),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "event",
            "module": "pgwarden",
            "dataset": "pgwarden.audit",
            "action": event.__struct_config__.tag,
            "category": category,
            "type": list(types),
        },
        "observer": {"name": header.gateway, "product": "pgwarden", "type": "proxy"},
        "pgwarden": {
            "audit": {
                "gateway": header.gateway,
                "worker": header.worker,
                "epoch": header.epoch,
                "seq": header.seq,
                "key_id": header.key_id,
            },
        },
    }
    ev, pg = doc["event"], doc["pgwarden"]
    if isinstance(event, StatementEvent):
        allowed = event.decision == "allow"
        ev["id"] = event.id
        ev["type"].append("allowed" if allowed else "denied")
        ev["outcome"] = "success" if allowed and not event.sqlstate else "failure"
        ev["start"], ev["end"] = timestamp(event.start), timestamp(event.end)
        ev["duration"] = event.duration_us * 1000
        doc["user"] = _user(event.issuer, event.subject, event.role, event.client_id)
        doc["source"] = {**_source(event.client_addr), "bytes": event.bytes_in}
        doc["destination"] = {"bytes": event.bytes_out}
        if event.sqlstate:
            doc["error"] = {"code": event.sqlstate, "message": event.error_message}
        pg.update(
            session_id=event.session_id,
            database=event.database,
            upstream_user=event.upstream_user,
            application_name=event.application_name,
            statement={
                "text": event.text,
                "fingerprint": event.fingerprint,
                "protocol": event.protocol,
                "command_tag": event.command_tag,
                "rows": event.rows,
                "parameters": event.parameters,
            },
            decision=event.decision,
            rule_ids=event.rule_ids,
            observed_rule_ids=event.observed_rule_ids,
            masked_columns=event.masked_columns,
            approval_id=event.approval_id,
        )
        if not allowed:
            ev["reason"] = f"{event.decision} by {', '.join(event.rule_ids) or 'policy'}"
    elif isinstance(event, StatementStartEvent):
        ev["id"] = event.id
        pg["statement"] = {
            "text": event.text, "fingerprint": event.fingerprint, "protocol": event.protocol,
        }
        pg.update(decision=event.decision, rule_ids=event.rule_ids,
                  session_id=event.session_id)
    elif isinstance(event, SessionStartEvent):
        doc["user"] = _user(event.issuer, event.subject, event.role, event.client_id)
        doc["source"] = _source(event.client_addr)
        doc["tls"] = {"established": event.tls}
        pg.update(
            session_id=event.session_id, database=event.database,
            upstream_user=event.upstream_user, application_name=event.application_name,
            startup_user=event.user,
        )
    elif isinstance(event, SessionEndEvent):
        ev["reason"] = event.reason
        ev["duration"] = int(event.duration * 1e9)
        doc["source"] = {"bytes": event.bytes_in}
        doc["destination"] = {"bytes": event.bytes_out}
        pg.update(session_id=event.session_id, statements=event.statements)
    elif isinstance(event, AuthSuccessEvent):
        ev["outcome"] = "success"
        doc["user"] = _user(event.issuer, event.subject, event.role, event.client_id)
        doc["source"] = _source(event.client_addr)
        pg.update(session_id=event.session_id, auth_method=event.method, startup_user=event.user)
    elif isinstance(event, AuthFailureEvent):
        ev["outcome"] = "failure"
        ev["reason"] = event.reason
        doc["user"] = {"name": event.user}
        doc["source"] = _source(event.client_addr)
        pg.update(session_id=event.session_id, auth_method=event.method)
    elif isinstance(event, ApprovalRequestEvent):
        doc["user"] = _user(event.issuer, event.subject, event.role, event.client_id)
        pg.update(
            approval_id=event.approval_id, session_id=event.session_id,
            statement={"id": event.statement_id, "text": event.text,
                       "fingerprint": event.fingerprint},
            database=event.database, rule_ids=event.rule_ids,
        )
    elif isinstance(event, ApprovalDecisionEvent):
        ev["outcome"] = "success" if event.decision == "approved" else "failure"
        ev["reason"] = event.justification
        doc["user"] = {"name": event.approver}
        pg.update(approval_id=event.approval_id, approval_decision=event.decision)
    elif isinstance(event, PolicyReloadEvent):
        ev["outcome"] = "success" if event.ok else "failure"
        if event.error:
            doc["error"] = {"message": event.error}
        pg.update(policy_version=event.version)
    elif isinstance(event, WorkerStartEvent | WorkerStopEvent):
        doc["process"] = {"pid": event.pid}
        doc["service"] = {"name": "pgwarden", "version": event.version} if isinstance(
            event, WorkerStartEvent
        ) else {"name": "pgwarden"}
        if isinstance(event, WorkerStopEvent):
            ev["reason"] = event.reason
    elif isinstance(event, EventsDroppedEvent):
        ev["outcome"] = "failure"
        ev["reason"] = f"audit spool full: {event.count} events discarded (fail_open)"
        ev["start"], ev["end"] = timestamp(event.first_at), timestamp(event.last_at)
        pg.update(dropped_events=event.count)
    return doc
