"""The auditor's evidence pack: ``pgwarden evidence`` writes it, ``pgwarden evidence check``
checks it.

This module owns the pack: which files it holds and their columns, how the time window
selects events, the credential-custody statement derived from the configuration, the
HTML summary and its charts, and the signed manifest that makes the pack tamper-evident
once it has left the gateway. It does not verify the audit log itself: it feeds every
record it reads to :class:`gateway.audit.verify.Verifier` and takes only the events of
batches the verifier accepted. docs/evidence.md describes the pack for auditors.

Ground rules, each for a reason:

- The whole input is verified, not just the window: a batch missing before the window
  breaks the chain the window's batches hang from, and the auditor must see that.
- The pack is written even when verification finds problems (an auditor must see them);
  the exit status is then 1 and every summary says so first.
- Statement texts, subjects, application names and client addresses are chosen by
  clients, i.e. attacker-controlled. The CSV guards spreadsheet formulas, the HTML
  escapes every text, carries no script, loads nothing, and forbids both in its CSP.
- The custody statement names where secrets live (variable names, file paths), never a
  secret and never a secret's hash; it never opens a secret file.
- ``manifest.sig`` is a raw Ed25519 signature (64 bytes) over the exact bytes of
  ``manifest.json``, made with the audit signing key, so ``openssl pkeyutl -verify
  -rawin`` can check it without pgwarden. No domain tag is needed: the same key's audit
  signatures cover messages starting with ``pgwarden-audit-v1``, a manifest starts with
  ``{``, so neither kind of signature can be passed off as the other. The signer's key id
  is inside ``manifest.json`` (signed) and repeated in ``manifest.sig.json`` (an unsigned
  hint saying which key to try, checked against the signed one, as in the audit format).

Exit codes: 0 pack written and the audit log verified; 1 pack written but verification
found problems (or ``check`` found the pack altered); 2 bad usage, configuration or keys
(nothing written).
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import csv
import datetime as dt
import functools
import hashlib
import heapq
import html
import io
import json
import math
import os
import re
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gateway import __version__
from gateway.audit import commands
from gateway.audit.batch import Batch, SourcedRecord
from gateway.audit.events import (
    ApprovalDecisionEvent,
    ApprovalRequestEvent,
    AuthFailureEvent,
    AuthSuccessEvent,
    Event,
    EventsDroppedEvent,
    SessionEndEvent,
    SessionStartEvent,
    StatementEvent,
)
from gateway.audit.keys import AuditKeyError, key_id, load_public_keys, load_signing_key
from gateway.audit.spool import SpoolError, read_spool
from gateway.audit.verify import Report, VerifiedBatch, Verifier
from gateway.config import Config, ConfigError, load_config

__all__ = [
    "MANIFEST",
    "MANIFEST_SIG",
    "MANIFEST_SIG_INFO",
    "PACK_FORMAT",
    "add_arguments",
    "add_check_arguments",
    "check_pack",
    "guard_cell",
    "parse_time",
    "run",
    "run_check",
]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

PACK_FORMAT = "pgwarden-evidence-pack"
PACK_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_SIG = "manifest.sig"
MANIFEST_SIG_INFO = "manifest.sig.json"
#: The files that sign the manifest, so cannot be listed in it.
SIGNATURE_FILES = frozenset({MANIFEST, MANIFEST_SIG, MANIFEST_SIG_INFO})
DEFAULT_TOPIC = "pgwarden.audit"

# ---------------------------------------------------------------------- columns
# One list per log: the CSV header and, in the same order, the members of each JSONL line.

STATEMENT_COLUMNS = (
    "time", "start", "session_id", "statement_id", "issuer", "subject", "client_id", "role",
    "upstream_user", "database", "client_addr", "application_name", "protocol", "text",
    "fingerprint", "decision", "rule_ids", "observed_rule_ids", "masked_columns", "rows",
    "command_tag", "sqlstate", "error_message", "duration_us", "bytes_in", "bytes_out",
    "approval_id", "parameters", "gateway", "worker", "epoch", "seq",
)
AUTH_COLUMNS = (
    "time", "outcome", "method", "user", "issuer", "subject", "client_id", "role", "reason",
    "client_addr", "session_id", "gateway", "worker", "epoch", "seq",
)
APPROVAL_COLUMNS = (
    "time", "event", "approval_id", "session_id", "statement_id", "issuer", "subject",
    "client_id", "role", "database", "text", "fingerprint", "rule_ids", "approver",
    "decision", "justification", "gateway", "worker", "epoch", "seq",
)
SESSION_COLUMNS = (
    "session_id", "start", "end", "user", "issuer", "subject", "client_id", "role",
    "upstream_user", "database", "client_addr", "application_name", "tls", "end_reason",
    "statements", "statements_in_window", "bytes_in", "bytes_out", "duration",
    "gateway", "worker",
)
#: Cells holding a list of strings: joined with _LIST_SEPARATOR.
_LIST_CELLS = frozenset({"rule_ids", "observed_rule_ids", "masked_columns"})
#: Cells holding other structured values: written as JSON text.
_JSON_CELLS = frozenset({"parameters"})
#: A cell starting with one of these is a formula (or turns into one) in Excel, LibreOffice
#: and Google Sheets (OWASP "CSV injection": = + - @, and tab / CR which some strip first).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_FIRST = frozenset(_FORMULA_START)
_LIST_SEPARATOR = ";"
#: More ascending runs than this in one log, and it is sorted instead of merged.
MAX_MERGED_RUNS = 256

DECISIONS = ("allow", "block", "approve")
_DECISION_COLORS = {"allow": "#2e7d32", "block": "#c62828", "approve": "#ef8f00"}
_PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
)
_OTHER_COLOR = "#9c9c9c"
#: Identities drawn one by one in the chart; the rest are one "other" series.
CHART_IDENTITIES = len(_PALETTE)
MAX_BUCKETS = 60
#: Statements listed (blocked / held) and identities tabled in the HTML summary.
HTML_LISTED_STATEMENTS = 100
HTML_LISTED_IDENTITIES = 50
HTML_LISTED_FINDINGS = 50
HTML_TEXT_CHARS = 400


class UsageError(Exception):
    """Bad arguments, configuration or keys: printed as ``pgwarden: <message>``, exit 2."""


# ---------------------------------------------------------------------- time


_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})?)?"
)


def parse_time(text: str) -> int:
    """``YYYY-MM-DD`` (midnight UTC) or an RFC 3339 time, as ns since the Unix epoch.

    A time without an offset is UTC. Parsed by hand rather than with ``datetime``
    because the audit log has nanoseconds and the window's edges must be exact.
    """
    m = _TIME.fullmatch(text.strip())
    if not m:
        raise ValueError(
            f"{text!r} is not a date (2030-01-31) or an RFC 3339 time "
            "(2030-01-31T09:30:00Z, 2030-01-31T09:30:00.5+01:00)"
        )
    year, month, day, hour, minute, second = (int(g) if g else 0 for g in m.groups()[:6])
    try:
        moment = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    except ValueError as exc:  # month 13, February 30, second 60, ...
        raise ValueError(f"{text!r} is not a valid time: {exc}") from None
    fraction = m.group(7) or ""
    ns = calendar.timegm(moment.timetuple()) * 1_000_000_000 + int(fraction.ljust(9, "0") or 0)
    offset = m.group(8)
    if offset and offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"{text!r} has an impossible offset {offset}")
        ns -= sign * (hours * 3600 + minutes * 60) * 1_000_000_000
    return ns


@functools.lru_cache(maxsize=1024)
def _day(days: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=days)).isoformat()


def timestamp(ns: int) -> str:
    """RFC 3339 UTC with all 9 digits, as ``gateway.audit.ecs.timestamp`` writes it.
    Arithmetic on a cached date rather than strftime: two per statement were a fifth of
    the time of a large pack."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    days, second = divmod(seconds, 86400)
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    return f"{_day(days)}T{hour:02d}:{minute:02d}:{second:02d}.{nanos:09d}Z"


def rfc3339(ns: int) -> str:
    """A readable UTC time: whole seconds without a fraction, else all 9 digits."""
    if ns % 1_000_000_000:
        return timestamp(ns)
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pgwarden evidence``, and its ``check`` subcommand
    (``pgwarden evidence check DIR --keys ...``); :func:`run` handles both."""
    if parser.description is None:
        parser.description = (
            "Write an auditor-ready evidence pack for a time window: statement, "
            "authentication, approval and session logs (CSV and JSONL), the audit log's "
            "verification report, a credential-custody statement, an HTML summary, and a "
            "signed manifest. Exit status 0 = written and verified, 1 = written but the "
            "audit log failed verification, 2 = bad usage (nothing written). "
            "'pgwarden evidence check DIR --keys ...' checks a pack."
        )
    parser.add_argument(
        "--config", metavar="FILE",
        help="gateway configuration: the custody statement, and the defaults of --spool, "
        "--keys and --signing-key from [audit]",
    )
    parser.add_argument(
        "--spool", action="append", default=[], metavar="DIR",
        help="spool directory to read (repeatable; default: audit.spool_dir)",
    )
    parser.add_argument(
        "--kafka", metavar="BOOTSTRAP",
        help="read the Kafka topic too (host:port); read before any spool",
    )
    parser.add_argument(
        "--topic", default=None,
        help=f"Kafka topic (default: audit.kafka.topic, else {DEFAULT_TOPIC})",
    )
    parser.add_argument(
        "--keys", nargs="+", metavar="PATH",
        help="trusted public keys: *.pub files or directories of them "
        "(default: the .pub next to audit.signing_key_file)",
    )
    parser.add_argument(
        "--since", metavar="TIME",
        help="window start, inclusive: YYYY-MM-DD or RFC 3339 (UTC when no offset)",
    )
    parser.add_argument("--until", metavar="TIME", help="window end, exclusive (same forms)")
    parser.add_argument(
        "--out", metavar="DIR", help="output directory; must not exist, or be empty"
    )
    parser.add_argument(
        "--signing-key", metavar="FILE",
        help="private key that signs the manifest (default: audit.signing_key_file)",
    )
    parser.add_argument(
        "--allow-open", action="store_true",
        help="the last epoch of a chain may lack its close batch (a running gateway): "
        "warn only",
    )
    parser.add_argument(
        "--partial-history", action="store_true",
        help="the input may start mid-epoch (Kafka retention, trimmed spool): warn only",
    )
    sub = parser.add_subparsers(dest="evidence_tool", metavar="[check]", required=False)
    add_check_arguments(
        sub.add_parser(
            "check",
            help="check a pack: manifest signature, file hashes, nothing added or removed",
            description="Check an evidence pack: the manifest's Ed25519 signature with the "
            "given public keys, every file's size and SHA-256, and that no file was added "
            "or removed. Exit status 0 = intact, 1 = altered, 2 = bad usage.",
        )
    )


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``pgwarden evidence check`` (for :func:`run_check`)."""
    parser.add_argument("dir", metavar="DIR", help="the evidence pack directory")
    parser.add_argument(
        "--keys", nargs="+", required=True, metavar="PATH",
        help="trusted audit public keys (*.pub files or directories), obtained from the "
        "gateway's operators, never from the pack",
    )


# ---------------------------------------------------------------------- collecting


@dataclass(slots=True)
class EpochCoverage:
    """What verified batches of one epoch the input held."""

    epoch: str
    first_seq: int
    last_seq: int
    batches: int = 0
    opened: bool = False  # its open batch (seq 0) was verified
    closed: bool = False  # its close batch was verified
    first_at: int = 0
    last_at: int = 0


@dataclass(slots=True)
class ChainCoverage:
    """The verified batches of one (gateway, worker) chain, epoch by epoch."""

    gateway: str
    worker: int
    epochs: dict[str, EpochCoverage] = field(default_factory=dict)
    batches: int = 0
    events: int = 0


@dataclass(slots=True)
class _Session:
    gateway: str
    worker: int
    session_id: str
    first_at: int
    info: dict[str, Any] = field(default_factory=dict)
    start: int | None = None
    end: SessionEndEvent | None = None
    in_window: bool = False
    statements_in_window: int = 0


class _Log:
    """The rows of one log, spilled to an anonymous temporary file as they come (a pack
    may hold millions of statements; memory keeps 16 bytes a row) and read back in time
    order. The file is unlinked at once and private to the process (mode 0600)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._at = array("q")
        self._offsets = array("q")
        self._end = 0

    def __len__(self) -> int:
        return len(self._at)

    def append(self, at: int, line: bytes) -> None:
        self._at.append(at)
        self._offsets.append(self._end)
        self._file.write(line)
        self._end += len(line)

    def _order(self) -> Iterable[int]:
        at, n = self._at, len(self._at)
        # Each chain delivers its events nearly in time order, so the rows are a few
        # ascending runs (one per chain, plus the odd inversion): merging them is linear
        # and needs no copy. Ties keep the order of verification, as a stable sort would.
        starts = [0, *(i for i in range(1, n) if at[i] < at[i - 1])]
        if len(starts) == 1:
            return range(n)
        if len(starts) > MAX_MERGED_RUNS:
            return sorted(range(n), key=at.__getitem__)
        runs = [
            ((at[i], i) for i in range(start, end))
            for start, end in zip(starts, [*starts[1:], n], strict=True)
        ]
        return (i for _, i in heapq.merge(*runs))

    def lines(self) -> Iterator[bytes]:
        """The rows, by time; rows with the same time in the order they were verified."""
        self._file.flush()
        fd, offsets, n = self._file.fileno(), self._offsets, len(self._offsets)
        for i in self._order():
            start = offsets[i]
            yield os.pread(fd, (offsets[i + 1] if i + 1 < n else self._end) - start, start)

    def close(self) -> None:
        self._file.close()


@dataclass(slots=True)
class Collected:
    """Everything the pack needs from the verified events."""

    since: int
    until: int
    bucket_ns: int
    statements: _Log = field(default_factory=_Log)
    authentication: _Log = field(default_factory=_Log)
    approvals: _Log = field(default_factory=_Log)
    system: _Log = field(default_factory=_Log)
    sessions: dict[tuple[str, int, str], _Session] = field(default_factory=dict)
    chains: dict[tuple[str, int], ChainCoverage] = field(default_factory=dict)
    events_read: int = 0  # verified events, all times
    counts: Counter[str] = field(default_factory=Counter)
    decision_buckets: dict[str, list[int]] = field(default_factory=dict)
    identity_buckets: dict[str, list[int]] = field(default_factory=dict)
    identity_decisions: dict[str, Counter[str]] = field(default_factory=dict)
    auth_failures: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    #: The earliest blocked / held statements, as a max-heap on (time, arrival):
    #: (-at, -n, row), so the latest is at [0] and is the one replaced.
    refused: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    dropped_events: int = 0  # events_dropped counts whose loss overlaps the window


def choose_bucket(span_ns: int) -> int:
    """Chart bucket size: the smallest round step giving at most MAX_BUCKETS bars."""
    minute = 60 * 1_000_000_000
    for step in (1, 5, 15, 60, 180, 360, 720, 1440, 10080):
        if math.ceil(span_ns / (step * minute)) <= MAX_BUCKETS:
            return step * minute
    day = 1440 * minute
    return math.ceil(span_ns / MAX_BUCKETS / day) * day


def _bucket_count(collected: Collected) -> int:
    return max(1, math.ceil((collected.until - collected.since) / collected.bucket_ns))


_encoder = msgspec.json.Encoder()


def _dump(row: dict[str, Any]) -> bytes:
    # msgspec, not orjson: orjson 3.13's bytes keep a 16 KiB allocation each, 30 times
    # the row, which would add up for rows by the million.
    return _encoder.encode(row)


def _tag(event: Event) -> str:
    """The event's ``type`` tag (``statement``, ``policy_reload``, ...)."""
    return str(type(event).__struct_config__.tag)


def _place(batch: Batch) -> dict[str, Any]:
    return {"gateway": batch.gateway, "worker": batch.worker, "epoch": batch.epoch,
            "seq": batch.seq}


class Collector:
    """Receives verified batches in the order the verifier accepted them and keeps what
    falls in the window, plus the coverage of every chain and the chart counts."""

    def __init__(self, since: int, until: int) -> None:
        self.data = Collected(since, until, choose_bucket(until - since))
        buckets = _bucket_count(self.data)
        self.data.decision_buckets = {d: [0] * buckets for d in DECISIONS}

    def add(self, verified: VerifiedBatch) -> None:
        batch = verified.batch
        data = self.data
        chain = data.chains.get((batch.gateway, batch.worker))
        if chain is None:
            chain = data.chains[(batch.gateway, batch.worker)] = ChainCoverage(
                batch.gateway, batch.worker
            )
        epoch = chain.epochs.get(batch.epoch)
        if epoch is None:
            epoch = chain.epochs[batch.epoch] = EpochCoverage(batch.epoch, batch.seq, batch.seq)
        epoch.first_seq = min(epoch.first_seq, batch.seq)
        epoch.last_seq = max(epoch.last_seq, batch.seq)
        epoch.batches += 1
        epoch.opened = epoch.opened or batch.kind == "open"
        epoch.closed = epoch.closed or batch.kind == "close"
        epoch.first_at = min(epoch.first_at, batch.at) if epoch.first_at else batch.at
        epoch.last_at = max(epoch.last_at, batch.at)
        chain.batches += 1
        chain.events += len(batch.events)
        data.events_read += len(batch.events)
        for event in batch.events:
            self._event(batch, event)

    # The session view needs every event, in the window or not (a session that started
    # before the window but ran statements in it still has its start time).
    def _session(
        self,
        batch: Batch,
        event: SessionStartEvent | SessionEndEvent | AuthSuccessEvent | StatementEvent,
        in_window: bool,
    ) -> _Session | None:
        data = self.data
        if not event.session_id:
            return None
        key = (batch.gateway, batch.worker, event.session_id)
        session = data.sessions.get(key)
        if session is None:
            if event.at >= data.until:
                return None  # starts after the window: never part of this pack
            session = data.sessions[key] = _Session(
                batch.gateway, batch.worker, event.session_id, event.at
            )
        session.in_window = session.in_window or in_window
        if isinstance(event, SessionStartEvent):
            session.start = event.at
            session.info.update(
                user=event.user, issuer=event.issuer, subject=event.subject,
                client_id=event.client_id, role=event.role, upstream_user=event.upstream_user,
                database=event.database, client_addr=event.client_addr,
                application_name=event.application_name, tls=event.tls,
            )
        elif isinstance(event, SessionEndEvent):
            session.end = event
            if event.at < data.since and not session.in_window:
                # Over before the window began: keeps memory to the window's sessions.
                del data.sessions[key]
                return None
        elif not session.info:
            # No session_start seen (yet): the principal from its first event.
            session.info.update(
                issuer=event.issuer, subject=event.subject, client_id=event.client_id,
                role=event.role, client_addr=event.client_addr,
            )
        return session

    def _event(self, batch: Batch, event: Event) -> None:
        data = self.data
        at = event.at
        in_window = data.since <= at < data.until
        session: _Session | None = None
        if isinstance(
            event, SessionStartEvent | SessionEndEvent | AuthSuccessEvent | StatementEvent
        ):
            session = self._session(batch, event, in_window)
        if isinstance(event, EventsDroppedEvent):
            # A loss is evidence for the window whenever the lost events' times overlap it.
            if in_window or (event.first_at < data.until and event.last_at >= data.since):
                data.dropped_events += event.count
                data.system.append(at, _dump(self._system_row(batch, event)))
            return
        if not in_window:
            return
        if isinstance(event, StatementEvent):
            if session is not None:
                session.statements_in_window += 1
            data.statements.append(at, _dump(self._statement_row(batch, event)))
            self._count_statement(event)
        elif isinstance(event, AuthSuccessEvent | AuthFailureEvent):
            data.authentication.append(at, _dump(self._auth_row(batch, event)))
            if isinstance(event, AuthFailureEvent):
                data.counts["auth_failure"] += 1
                data.auth_failures[(event.reason, event.user, event.method)] += 1
            else:
                data.counts["auth_success"] += 1
        elif isinstance(event, ApprovalRequestEvent | ApprovalDecisionEvent):
            data.approvals.append(at, _dump(self._approval_row(batch, event)))
            data.counts[_tag(event)] += 1
        elif not isinstance(event, SessionStartEvent | SessionEndEvent):
            data.system.append(at, _dump(self._system_row(batch, event)))
            data.counts[_tag(event)] += 1

    def _count_statement(self, event: StatementEvent) -> None:
        data = self.data
        data.counts["statement"] += 1
        data.counts[f"decision:{event.decision}"] += 1
        if event.sqlstate:
            data.counts["statement_error"] += 1
        bucket = min((event.at - data.since) // data.bucket_ns, _bucket_count(data) - 1)
        data.decision_buckets[event.decision][bucket] += 1
        identity = f"{event.issuer}:{event.subject}"
        buckets = data.identity_buckets.get(identity)
        if buckets is None:
            buckets = data.identity_buckets[identity] = [0] * _bucket_count(data)
            data.identity_decisions[identity] = Counter()
        buckets[bucket] += 1
        data.identity_decisions[identity][event.decision] += 1
        if event.sqlstate:
            data.identity_decisions[identity]["error"] += 1
        if event.decision != "allow":
            refused = data.refused
            key = (-event.at, -data.counts["statement"])
            if len(refused) < HTML_LISTED_STATEMENTS or key > refused[0][:2]:
                item = (*key, {
                    "at": event.at, "identity": identity, "role": event.role,
                    "database": event.database, "decision": event.decision,
                    "rule_ids": event.rule_ids, "text": _short(event.text),
                })
                if len(refused) < HTML_LISTED_STATEMENTS:
                    heapq.heappush(refused, item)
                else:
                    heapq.heapreplace(refused, item)

    @staticmethod
    def _statement_row(batch: Batch, e: StatementEvent) -> dict[str, Any]:
        return {
            "time": timestamp(e.at), "start": timestamp(e.start), "session_id": e.session_id,
            "statement_id": e.id, "issuer": e.issuer, "subject": e.subject,
            "client_id": e.client_id, "role": e.role, "upstream_user": e.upstream_user,
            "database": e.database, "client_addr": e.client_addr,
            "application_name": e.application_name, "protocol": e.protocol, "text": e.text,
            "fingerprint": e.fingerprint, "decision": e.decision, "rule_ids": e.rule_ids,
            "observed_rule_ids": e.observed_rule_ids, "masked_columns": e.masked_columns,
            "rows": e.rows, "command_tag": e.command_tag, "sqlstate": e.sqlstate,
            "error_message": e.error_message, "duration_us": e.duration_us,
            "bytes_in": e.bytes_in, "bytes_out": e.bytes_out, "approval_id": e.approval_id,
            "parameters": e.parameters, **_place(batch),
        }

    @staticmethod
    def _auth_row(batch: Batch, e: AuthSuccessEvent | AuthFailureEvent) -> dict[str, Any]:
        if isinstance(e, AuthSuccessEvent):
            who = {"issuer": e.issuer, "subject": e.subject, "client_id": e.client_id,
                   "role": e.role, "reason": ""}
        else:
            who = {"issuer": "", "subject": "", "client_id": "", "role": "", "reason": e.reason}
        return {
            "time": timestamp(e.at),
            "outcome": "success" if isinstance(e, AuthSuccessEvent) else "failure",
            "method": e.method, "user": e.user, **who, "client_addr": e.client_addr,
            "session_id": e.session_id, **_place(batch),
        }

    @staticmethod
    def _approval_row(
        batch: Batch, e: ApprovalRequestEvent | ApprovalDecisionEvent
    ) -> dict[str, Any]:
        row: dict[str, Any] = dict.fromkeys(APPROVAL_COLUMNS, "")
        row.update(time=timestamp(e.at), approval_id=e.approval_id, rule_ids=[])
        if isinstance(e, ApprovalRequestEvent):
            row.update(
                event="request", session_id=e.session_id, statement_id=e.statement_id,
                issuer=e.issuer, subject=e.subject, client_id=e.client_id, role=e.role,
                database=e.database, text=e.text, fingerprint=e.fingerprint,
                rule_ids=e.rule_ids,
            )
        else:
            row.update(
                event="decision", approver=e.approver, decision=e.decision,
                justification=e.justification,
            )
        row.update(_place(batch))
        return row

    @staticmethod
    def _system_row(batch: Batch, e: Event) -> dict[str, Any]:
        details = msgspec.to_builtins(e)
        details.pop("at", None)
        kind = details.pop("type", "")
        return {"time": timestamp(e.at), "type": kind, "details": details, **_place(batch)}

    def session_rows(self) -> list[dict[str, Any]]:
        """One line per session with an event in the window, or spanning all of it."""
        data = self.data
        rows = []
        for s in data.sessions.values():
            spans = (s.start is not None and s.start < data.since and s.end is not None
                     and s.end.at >= data.until)
            if not (s.in_window or spans):
                continue
            info = s.info
            end = s.end
            rows.append((s.start if s.start is not None else s.first_at, {
                "session_id": s.session_id,
                "start": timestamp(s.start) if s.start is not None else None,
                "end": timestamp(end.at) if end is not None else None,
                "user": info.get("user", ""), "issuer": info.get("issuer", ""),
                "subject": info.get("subject", ""), "client_id": info.get("client_id", ""),
                "role": info.get("role", ""), "upstream_user": info.get("upstream_user", ""),
                "database": info.get("database", ""),
                "client_addr": info.get("client_addr", ""),
                "application_name": info.get("application_name", ""),
                "tls": info.get("tls"),
                "end_reason": end.reason if end is not None else None,
                "statements": end.statements if end is not None else None,
                "statements_in_window": s.statements_in_window,
                "bytes_in": end.bytes_in if end is not None else None,
                "bytes_out": end.bytes_out if end is not None else None,
                "duration": end.duration if end is not None else None,
                "gateway": s.gateway, "worker": s.worker,
            }))
        rows.sort(key=lambda item: item[0])  # stable: ties keep the order they were seen
        return [row for _, row in rows]


# ---------------------------------------------------------------------- reading


def _kafka_records(bootstrap: str, topic: str) -> Iterator[SourcedRecord]:
    """The records of a Kafka topic, read through ``commands.kafka_source`` (as ``audit
    verify`` does) and drained before anything else is read."""
    source: Callable[[str, str], AsyncIterator[SourcedRecord]] | None = getattr(
        commands, "kafka_source", None
    )
    if source is None:
        raise UsageError("reading Kafka is not available in this build")
    items: list[SourcedRecord] = []

    async def drain() -> None:
        async for item in source(bootstrap, topic):
            items.append(item)

    try:
        asyncio.run(drain())
    except commands.CommandError as exc:
        raise UsageError(
            f"{exc} (to use only the spool: --spool DIR, with --partial-history if "
            "acknowledged segments were deleted)"
        ) from None
    return iter(items)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything ``run`` resolved from the arguments and the configuration."""

    since: int
    until: int
    out: Path
    cfg: Config | None
    config_path: str | None
    spools: list[str]
    kafka: str | None
    topic: str
    keys: dict[str, VerifyKey]
    key_paths: list[str]
    signing_key: SigningKey
    signing_key_path: str
    allow_open: bool
    partial_history: bool


def _plan(args: argparse.Namespace) -> _Plan:
    for option in ("since", "until", "out"):
        if not getattr(args, option, None):
            raise UsageError(f"--{option} is required")
    try:
        since, until = parse_time(args.since), parse_time(args.until)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if since >= until:
        raise UsageError(f"--since {args.since} is not before --until {args.until}")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: exists and is not an empty directory")

    cfg: Config | None = None
    if args.config:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            raise UsageError(f"--config {args.config}:\n{exc}") from None
    audit = cfg.audit if cfg is not None else None

    spools: list[str] = list(args.spool)
    kafka: str | None = args.kafka
    if not spools and not kafka:
        if audit is None:
            raise UsageError("give --spool DIR or --kafka BOOTSTRAP, or --config with [audit]")
        # The configured log: with Kafka, acknowledged segments are deleted from the
        # spool, so the complete log is the topic followed by what the spool still holds.
        spools = [audit.spool_dir]
        if audit.kafka.bootstrap_servers:
            kafka = ",".join(audit.kafka.bootstrap_servers)
    topic = args.topic or (audit.kafka.topic if audit is not None else DEFAULT_TOPIC)

    key_paths: list[str] = list(args.keys or [])
    if not key_paths:
        if audit is None:
            raise UsageError("give --keys PATH (public keys), or --config with [audit]")
        key_paths = [audit.signing_key_file + ".pub"]
    signing_key_path = args.signing_key or (audit.signing_key_file if audit else "")
    if not signing_key_path:
        raise UsageError(
            "the manifest must be signed: give --signing-key FILE, or --config with [audit]"
        )
    try:
        keys = load_public_keys(key_paths)
        signing_key = load_signing_key(signing_key_path)
    except AuditKeyError as exc:
        raise UsageError(str(exc)) from None
    return _Plan(
        since, until, out, cfg, args.config, spools, kafka, topic, keys, key_paths,
        signing_key, signing_key_path, bool(getattr(args, "allow_open", False)),
        bool(getattr(args, "partial_history", False)),
    )


def _records(plan: _Plan) -> Iterator[SourcedRecord]:
    # Kafka first: it holds the older, acknowledged records; the spool then continues
    # each chain (records in both are exact duplicates, which the verifier drops).
    if plan.kafka:
        yield from _kafka_records(plan.kafka, plan.topic)
    for directory in plan.spools:
        yield from read_spool(directory)


def _sources(plan: _Plan) -> list[str]:
    found = [f"kafka:{plan.kafka}/{plan.topic}"] if plan.kafka else []
    return found + [f"spool:{os.path.abspath(d)}" for d in plan.spools]


# ---------------------------------------------------------------------- writing: logs


def guard_cell(value: str) -> str:
    """``value`` made safe to open in a spreadsheet: a leading ``'`` when it would
    otherwise start a formula (statement texts and subjects come from clients)."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _csv_row(
    row: dict[str, Any], columns: tuple[str, ...], lists: list[int], structured: list[int]
) -> list[Any]:
    values = [row.get(column) for column in columns]
    for index in lists:
        if (value := values[index]) is not None:
            values[index] = _LIST_SEPARATOR.join(str(v) for v in value)
    for index in structured:
        if (value := values[index]) is not None:
            values[index] = _encoder.encode(value).decode()
    # One pass over the cells, inlined: this runs tens of millions of times in a big pack.
    # csv writes None as an empty cell and numbers as themselves.
    return [
        "'" + v if v.__class__ is str and v[:1] in _FORMULA_FIRST else v for v in values
    ]


def _write_log(
    directory: Path, name: str, columns: tuple[str, ...] | None, rows: Iterable[bytes]
) -> None:
    """``name.jsonl`` and, with ``columns``, ``name.csv`` (RFC 4180, UTF-8 with a BOM so
    spreadsheets detect the encoding, CRLF, quoted where needed, formulas guarded)."""
    with open(directory / f"{name}.jsonl", "wb") as jsonl:
        if columns is None:
            for line in rows:
                jsonl.write(line + b"\n")
            return
        decode = msgspec.json.decode
        lists = [i for i, column in enumerate(columns) if column in _LIST_CELLS]
        structured = [i for i, column in enumerate(columns) if column in _JSON_CELLS]
        with open(directory / f"{name}.csv", "w", encoding="utf-8-sig", newline="") as fh:
            writer = csv.writer(fh, dialect="excel", quoting=csv.QUOTE_MINIMAL)
            writer.writerow(columns)
            for line in rows:
                jsonl.write(line + b"\n")
                writer.writerow(_csv_row(decode(line), columns, lists, structured))


# ---------------------------------------------------------------------- writing: report


def _report_json(report: Report, plan: _Plan) -> dict[str, Any]:
    data = commands.report_dict(report)
    data["summary"] = report.summary()
    data["duplicate_list"] = [
        {"message": f.message, "source": f.source, "gateway": f.gateway, "worker": f.worker,
         "epoch": f.epoch, "seq": f.seq}
        for f in report.duplicate_list
    ]
    data["input"] = {
        "sources": _sources(plan),
        "trusted_key_ids": sorted(plan.keys),
        "allow_open_tail": plan.allow_open,
        "partial_history": plan.partial_history,
    }
    return data


def _report_text(report: Report, plan: _Plan) -> str:
    out = io.StringIO()
    verdict = "VERIFIED" if report.ok else "VERIFICATION FAILED"
    print(f"pgwarden audit log verification: {verdict}", file=out)
    print(f"  {report.summary()}", file=out)
    print("", file=out)
    print("Everything read was verified, not only the window: a problem before the window "
          "is a problem for the evidence in it.", file=out)
    for source in _sources(plan):
        print(f"  read: {source}", file=out)
    print(f"  trusted key ids: {', '.join(sorted(plan.keys))}", file=out)
    if plan.allow_open or plan.partial_history:
        relaxed = [name for name, on in (("--allow-open", plan.allow_open),
                                          ("--partial-history", plan.partial_history)) if on]
        print(f"  relaxed by {' and '.join(relaxed)}: those findings are warnings", file=out)
    print("", file=out)
    print("Findings (as 'pgwarden audit verify' prints them; 'problem' = the evidence is not "
          "intact, 'warning' = worth reading, nothing missing or altered):", file=out)
    print("", file=out)
    commands.print_report(report, out)
    return out.getvalue()


# ---------------------------------------------------------------------- writing: custody


def _md(value: object) -> str:
    """A configuration value in a Markdown table cell: a code span (literal, so nothing in
    it is read as markup), with ``|`` escaped as GFM tables require even inside code."""
    text = " ".join(str(value).split()).replace("|", "\\|")
    if not text:
        return "—"
    if "`" in text:
        return f"`` {text} ``"
    return f"`{text}`"


def _md_list(values: Iterable[object]) -> str:
    items = [_md(v) for v in values]
    return ", ".join(items) if items else "—"


def _secret_source(env: str, file: str, none: str) -> str:
    if env:
        return f"environment variable {_md(env)}"
    if file:
        return f"file {_md(file)}"
    return none


def _file_digest(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def custody_statement(
    cfg: Config | None, config_path: str | None, *, signer_key_id: str, generated_at: int,
) -> str:
    """The credential-custody statement (Markdown) that ``cfg`` supports.

    Only names, paths and settings: it never opens a secret file or reads a secret
    variable, and never reproduces a static key's hash.
    """
    lines: list[str] = ["# Credential custody statement", ""]
    add = lines.append
    if cfg is None or config_path is None:
        add("No gateway configuration was given (`--config`), so no custody statement "
            "could be derived for this pack.")
        add("")
        return "\n".join(lines)
    digest = _file_digest(config_path)
    add(f"Derived from the gateway configuration `{_md(os.path.abspath(config_path))}` "
        f"(SHA-256 `{digest or 'unreadable'}`) on {rfc3339(generated_at)}. It states what "
        "that configuration makes pgwarden do. **It is exactly as true as that file is "
        "the configuration the gateway ran with throughout the window**: compare the "
        "digest with the deployed file and its change history.")
    add("")
    roles_mode = bool(cfg.roles)
    u = cfg.upstream

    add("## Summary")
    add("")
    add("- **Clients never hold a database credential.** A client authenticates to pgwarden "
        "with its own credential (an OIDC token, a static key, or a client certificate, as "
        "configured below); pgwarden checks it, maps the principal to a role through the "
        "bindings below, and logs in to PostgreSQL itself as that role's upstream user. "
        "The client's credential is never forwarded upstream.")
    add("- **Upstream secrets are held only by the gateway.** pgwarden reads each upstream "
        "password from the environment variable or file named below, when it starts and "
        "on reload; the configuration file holds no secret value. This statement names "
        "where the secrets are, never the secrets.")
    if roles_mode:
        add(f"- {len(cfg.roles)} role(s), each a separate upstream user; "
            f"{len(cfg.bindings)} binding(s) decide which principal gets which role "
            "(first match wins; no match = connection refused).")
    else:
        add(f"- Single-role mode: every authenticated principal uses the one upstream user "
            f"{_md(u.user)}.")
    methods = []
    if cfg.issuers:
        methods.append(f"{len(cfg.issuers)} OIDC issuer(s)")
    if cfg.clients:
        methods.append(f"{len(cfg.clients)} static key(s)")
    if cfg.tls.client_ca_file:
        methods.append("client certificates (mTLS)")
    add("- Clients authenticate with: "
        + (", ".join(methods) if methods else "nothing configured (no client can authenticate)")
        + ".")
    add("")

    add("## Upstream PostgreSQL")
    add("")
    add("| host | port | database | TLS to PostgreSQL (sslmode) | server CA file |")
    add("|---|---|---|---|---|")
    add(f"| {_md(u.host)} | {u.port} | "
        f"{_md(u.database) if u.database else 'the one the client names'} | "
        f"{_md(u.sslmode)} | {_md(u.sslrootcert)} |")
    add("")

    add("## Roles: upstream identities and where their secrets are")
    add("")
    add("| role | upstream user | databases | secret source | on credential expiry | "
        "default action |")
    add("|---|---|---|---|---|---|")
    none = "none (upstream trust or certificate authentication)"
    if roles_mode:
        for role in cfg.roles:
            add(f"| {_md(role.name)} | {_md(role.upstream_user)} | "
                f"{'any' if '*' in role.databases else _md_list(role.databases)} | "
                f"{_secret_source(role.password_env, role.password_file, none)} | "
                f"{role.on_token_expiry} | "
                f"{role.default_action or f'{cfg.policy.default_action} (policy default)'} |")
    else:
        add(f"| (single-role mode) | {_md(u.user)} | "
            f"{_md(u.database) if u.database else 'any the client names'} | "
            f"{_secret_source(u.password_env, u.password_file, none)} | — | "
            f"{cfg.policy.default_action} (policy default) |")
    add("")
    if roles_mode:
        add(f"`[upstream] user` ({_md(u.user)}) is not used for client sessions in this mode.")
        add("")

    add("## How clients authenticate")
    add("")
    add("### OIDC issuers (tokens as passwords)")
    add("")
    if cfg.issuers:
        add("| name | issuer (`iss`) | audiences | algorithms | shared secret (HS*) | "
            "required claims | subject claim | keys from |")
        add("|---|---|---|---|---|---|---|---|")
        for iss in cfg.issuers:
            keys_from = iss.jwks_uri or iss.discovery_url or (
                iss.issuer.rstrip("/") + "/.well-known/openid-configuration"
            )
            add(f"| {_md(iss.name)} | {_md(iss.issuer)} | {_md_list(iss.audiences)} | "
                f"{_md_list(iss.algorithms)} | "
                f"{_secret_source(iss.hmac_secret_env, iss.hmac_secret_file, 'none')} | "
                f"{_md_list(iss.required_claims)} | {_md(iss.subject_claim)} | "
                f"{_md(keys_from)} |")
    else:
        add("None configured.")
    add("")
    add("### Static keys (for jobs that cannot obtain tokens)")
    add("")
    if cfg.clients:
        add(f"{len(cfg.clients)} static key(s). Only a salted scrypt hash of each key is "
            "configured; neither keys nor hashes are reproduced here.")
        add("")
        add("| user (subject) | label | expires | at generation |")
        add("|---|---|---|---|")
        for client in cfg.clients:
            status = "valid"
            if client.expires:
                try:
                    expired = parse_time(client.expires) <= generated_at
                except ValueError:
                    expired = False
                status = "expired" if expired else "valid"
            add(f"| {_md(client.user)} | {_md(client.label)} | "
                f"{_md(client.expires) if client.expires else 'never'} | {status} |")
    else:
        add("None configured.")
    add("")
    add("### Client certificates (mTLS)")
    add("")
    if cfg.tls.client_ca_file:
        add(f"Certificates issued by the CA in {_md(cfg.tls.client_ca_file)} are accepted as "
            f"identities (issuer `cert`); the subject is taken from "
            f"{_md(cfg.tls.client_cert_identity)}.")
    else:
        add("Not configured.")
    add("")

    add("## Bindings: which principal gets which role (first match wins)")
    add("")
    if cfg.bindings:
        add("| # | role | issuer | subject | client id | groups | claims |")
        add("|---|---|---|---|---|---|---|")
        for index, b in enumerate(cfg.bindings, 1):
            claims = ", ".join(f"{k}={v}" for k, v in sorted(b.claims.items()))
            add(f"| {index} | {_md(b.role)} | {_md(b.issuer)} | {_md(b.subject)} | "
                f"{_md(b.client_id) if b.client_id else 'any'} | "
                f"{_md_list(b.groups) if b.groups else 'any'} | "
                f"{_md(claims) if claims else 'any'} |")
    else:
        add("None (single-role mode: every authenticated principal gets the upstream user).")
    add("")

    t = cfg.tls
    add("## Transport security towards clients")
    add("")
    add(f"- Listener: {_md(f'{cfg.server.listen_host}:{cfg.server.listen_port}')}.")
    if t.cert_file and t.require_tls:
        add(f"- TLS (at least {t.min_version}) is required before any credential is "
            "accepted" + (", except from loopback clients, which may use plaintext"
                          if t.allow_plaintext_loopback else "") + ".")
    elif t.cert_file:
        add(f"- TLS (at least {t.min_version}) is offered but **not required**: credentials "
            "may cross the network in plaintext.")
    elif t.require_tls:
        add("- No TLS certificate: clients connect in plaintext, which the configuration "
            "allows only because the listener is on loopback (`allow_plaintext_loopback`).")
    else:
        add("- **No TLS**: credentials cross the network in plaintext.")
    add("")

    p = cfg.policy
    enforced = [r for r in cfg.rules if not r.observe]
    add("## Policy")
    add("")
    add(f"- Built-in baseline rule pack: {'on' if p.baseline else 'OFF'}.")
    overrides = ", ".join(
        f"{_md(r.name)}={r.default_action}" for r in cfg.roles if r.default_action
    )
    add(f"- Default decision for statements no rule matches: {p.default_action}"
        + (f"; overridden by role(s): {overrides}" if overrides else "") + ".")
    add(f"- {len(enforced)} configured rule(s) enforced, {len(cfg.rules) - len(enforced)} "
        "observe-only.")
    add("")

    a = cfg.audit
    add("## Audit")
    add("")
    if a is None or not a.enabled:
        add("- The audit log is **not enabled** in this configuration.")
    else:
        add(f"- Mode {a.mode}; when the spool is full: {a.on_spool_full}"
            + (" (**events are dropped**, and the loss is recorded)"
               if a.on_spool_full == "fail_open" else " (statements are refused)") + ".")
        add(f"- Statement text recorded {a.statement_text}; bind parameters "
            f"{'recorded' if a.record_parameters else 'not recorded'}.")
        add(f"- Signed with the key in {_md(a.signing_key_file)}; this pack's manifest was "
            f"signed by key id `{signer_key_id}`.")
        if a.kafka.bootstrap_servers:
            add(f"- Shipped to Kafka topic {_md(a.kafka.topic)} at "
                f"{_md_list(a.kafka.bootstrap_servers)}.")
        else:
            add("- No Kafka: the local spool is the audit log.")
    add("")

    add("## What this statement cannot show")
    add("")
    add("- It is derived from the configuration file, not observed: it is as true as the "
        "deployed configuration, and says nothing about the window if the file changed.")
    add("- It cannot show who else knows an upstream password (whoever set it, the "
        "administrators of the secret store or of the gateway host).")
    add("- It cannot show that PostgreSQL refuses these upstream users from anywhere but "
        "the gateway; that is pg_hba.conf and the network's job, to be checked there.")
    add("- It cannot show that the identity providers issue tokens only to the right "
        "workloads; the bindings above say what pgwarden accepts from them.")
    add("")
    return "\n".join(lines)


# ---------------------------------------------------------------------- writing: HTML

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _h(value: object) -> str:
    """HTML-escaped text (quotes too, for attributes); control characters replaced."""
    return html.escape(_CONTROL.sub("\ufffd", str(value)), quote=True)


def _short(text: str, limit: int = HTML_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def _axis(value: int) -> tuple[int, int]:
    """The y axis for a maximum of ``value``: (top, step), step a round 1/2/5 x 10^k so
    that at most 4 steps reach the top."""
    if value <= 4:
        return max(value, 1), 1
    raw = value / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(int(m * magnitude) for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return math.ceil(value / step) * step, step


def _bucket_label(ns: int, bucket_ns: int) -> str:
    moment = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC)
    return moment.strftime("%Y-%m-%d" if bucket_ns % (86400 * 10**9) == 0 else "%m-%d %H:%M")


def stacked_bars(
    title: str, series: list[tuple[str, str, list[int]]], since: int, bucket_ns: int
) -> str:
    """An inline SVG stacked bar chart: one bar per time bucket, one colour per series.
    Pure markup (no script), every text escaped."""
    width, height = 960, 280
    left, right, top, bottom = 56, 12, 12, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max((len(values) for _, _, values in series), default=1)
    totals = [sum(values[i] for _, _, values in series) for i in range(n)]
    ymax, ystep = _axis(max(totals, default=0))
    bar_w = plot_w / n
    parts = [
        f'<svg role="img" aria-label="{_h(title)}" viewBox="0 0 {width} {height}" '
        f'width="100%" preserveAspectRatio="xMinYMin meet">',
        f"<title>{_h(title)}</title>",
    ]
    for value in range(0, ymax + 1, ystep):
        y = top + plot_h - plot_h * value / ymax
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
            'stroke="#ddd" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{value}</text>"
        )
    for i in range(n):
        x = left + i * bar_w
        y = top + plot_h
        start = since + i * bucket_ns
        for label, color, values in series:
            count = values[i] if i < len(values) else 0
            if not count:
                continue
            h = plot_h * count / ymax
            y -= h
            parts.append(
                f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
                f'height="{h:.1f}" fill="{_h(color)}"><title>'
                f"{_h(label)}: {count} from {_h(rfc3339(start))}</title></rect>"
            )
    every = math.ceil(n / 8)
    for i in range(0, n, every):
        x = left + i * bar_w
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 16}" font-size="11">'
            f"{_h(_bucket_label(since + i * bucket_ns, bucket_ns))}</text>"
        )
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" '
        'stroke="#333" stroke-width="1"/>'
    )
    if not any(totals):
        parts.append(
            f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" '
            'text-anchor="middle" font-size="14" fill="#666">no statements in the window</text>'
        )
    parts.append("</svg>")
    legend = "".join(
        f'<li><span class="swatch" style="background:{_h(color)}"></span>{_h(label)} '
        f"({sum(values)})</li>"
        for label, color, values in series
    )
    return "\n".join(parts) + f'\n<ul class="legend">{legend}</ul>'


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1040px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{background:#e8f5e9;border:2px solid #2e7d32;padding:.8em 1em}
.failed{background:#ffebee;border:3px solid #c62828;padding:.8em 1em}
.failed strong{color:#c62828;font-size:1.3em}.ok strong{color:#2e7d32;font-size:1.2em}
.alert{color:#c62828;font-weight:bold}
pre,code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap;
word-break:break-all}
ul.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4em 1.2em;font-size:13px}
.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.35em;vertical-align:middle}
.muted{color:#666}
"""


def summary_html(
    collected: Collected, report: Report, plan: _Plan, sessions: int, generated_at: int
) -> str:
    """The self-contained HTML summary: no script, no external resource, all text escaped."""
    c = collected
    counts = c.counts
    out: list[str] = []
    add = out.append
    window = f"{rfc3339(c.since)} to {rfc3339(c.until)}"
    add("<!DOCTYPE html>")
    add('<html lang="en"><head><meta charset="utf-8">')
    # Defence in depth behind the escaping: even injected markup could run nothing and
    # fetch nothing.
    add('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'\">")
    add('<meta name="referrer" content="no-referrer">')
    add(f"<title>pgwarden evidence: {_h(window)}</title>")
    add(f"<style>{_CSS}</style></head><body>")
    add("<h1>pgwarden evidence pack</h1>")
    add(f'<p class="muted">Window: <b>{_h(rfc3339(c.since))}</b> (inclusive) to '
        f"<b>{_h(rfc3339(c.until))}</b> (exclusive), UTC, by event time. Generated "
        f"{_h(rfc3339(generated_at))} by pgwarden {_h(__version__)}.</p>")
    if report.ok:
        add(f'<div class="ok"><strong>Audit log verified.</strong> {_h(report.summary())}. '
            "Every event below comes from a batch whose signature and chain position were "
            "verified.</div>")
    else:
        add(f'<div class="failed"><strong>AUDIT LOG VERIFICATION FAILED: '
            f"{len(report.problems)} problem(s).</strong><br>The evidence in this pack may "
            "be incomplete or altered. Events of batches that failed verification are "
            "not in the logs. Details: <code>verification.txt</code>."
            f"<br>{_h(report.summary())}<ul>")
        for finding in report.problems[:HTML_LISTED_FINDINGS]:
            add(f"<li><code>{_h(finding)}</code></li>")
        if len(report.problems) > HTML_LISTED_FINDINGS:
            add(f"<li>… and {len(report.problems) - HTML_LISTED_FINDINGS} more</li>")
        add("</ul></div>")
    if c.dropped_events:
        add(f'<p class="alert">{c.dropped_events} audit event(s) were DROPPED (spool full '
            "under on_spool_full = fail_open) in a period overlapping the window: statements "
            "ran that this pack cannot show. See <code>system.jsonl</code>.</p>")
    if report.warnings:
        add(f"<p>{len(report.warnings)} verification warning(s) (nothing missing or altered; "
            "see <code>verification.txt</code>).</p>")

    add("<h2>Counts in the window</h2><table>")
    rows = [
        ("statements", counts["statement"]),
        ("&nbsp;&nbsp;allowed", counts["decision:allow"]),
        ("&nbsp;&nbsp;blocked", counts["decision:block"]),
        ("&nbsp;&nbsp;held for approval", counts["decision:approve"]),
        ("&nbsp;&nbsp;ended in an error (SQLSTATE)", counts["statement_error"]),
        ("distinct identities (issuer:subject)", len(c.identity_buckets)),
        ("sessions", sessions),
        ("authentication successes", counts["auth_success"]),
        ("authentication failures", counts["auth_failure"]),
        ("approval requests", counts["approval_request"]),
        ("approval decisions", counts["approval_decision"]),
        ("policy reloads", counts["policy_reload"]),
        ("audit events dropped", c.dropped_events),
    ]
    for label, value in rows:  # labels are ours, with deliberate entities
        add(f'<tr><th>{label}</th><td class="n">{value}</td></tr>')
    add("</table>")

    bucket_minutes = c.bucket_ns // 60_000_000_000
    bucket_text = (f"{bucket_minutes // 1440} day(s)" if bucket_minutes % 1440 == 0
                   else f"{bucket_minutes} minute(s)")
    add(f"<h2>Statements per decision over time</h2><p class=\"muted\">One bar per "
        f"{_h(bucket_text)}.</p>")
    add(stacked_bars(
        "Statements per decision over time",
        [(d, _DECISION_COLORS[d], c.decision_buckets[d]) for d in DECISIONS],
        c.since, c.bucket_ns,
    ))
    ranked = sorted(c.identity_buckets, key=lambda i: (-sum(c.identity_buckets[i]), i))
    series = [
        (identity, _PALETTE[n], c.identity_buckets[identity])
        for n, identity in enumerate(ranked[:CHART_IDENTITIES])
    ]
    if len(ranked) > CHART_IDENTITIES:
        rest = [0] * _bucket_count(c)
        for identity in ranked[CHART_IDENTITIES:]:
            rest = [a + b for a, b in zip(rest, c.identity_buckets[identity], strict=True)]
        series.append((f"{len(ranked) - CHART_IDENTITIES} other identities", _OTHER_COLOR, rest))
    add("<h2>Statements per identity over time</h2>")
    add(stacked_bars("Statements per identity over time", series, c.since, c.bucket_ns))

    add("<h2>Statements per identity</h2><table><tr><th>identity (issuer:subject)</th>"
        "<th>total</th><th>allowed</th><th>blocked</th><th>held</th><th>errors</th></tr>")
    for identity in ranked[:HTML_LISTED_IDENTITIES]:
        d = c.identity_decisions[identity]
        add(f"<tr><td><code>{_h(identity)}</code></td>"
            f'<td class="n">{sum(c.identity_buckets[identity])}</td>'
            f'<td class="n">{d["allow"]}</td><td class="n">{d["block"]}</td>'
            f'<td class="n">{d["approve"]}</td><td class="n">{d["error"]}</td></tr>')
    add("</table>")
    if len(ranked) > HTML_LISTED_IDENTITIES:
        add(f"<p>… and {len(ranked) - HTML_LISTED_IDENTITIES} more in statements.csv.</p>")

    add("<h2>Statements not allowed</h2>")
    if c.refused:
        refused = [row for _, _, row in sorted(c.refused, reverse=True)]
        not_allowed = counts["decision:block"] + counts["decision:approve"]
        add(f'<p class="muted">The first {len(refused)} of {not_allowed} blocked or held '
            "statements, by time; all of them are in statements.csv.</p><table><tr>"
            "<th>time</th><th>identity</th><th>role</th><th>database</th><th>decision</th>"
            "<th>rules</th><th>statement</th></tr>")
        for r in refused:
            add(f"<tr><td>{_h(timestamp(r['at']))}</td><td><code>{_h(r['identity'])}</code>"
                f"</td><td>{_h(r['role'])}</td><td>{_h(r['database'])}</td>"
                f"<td>{_h(r['decision'])}</td><td>{_h(', '.join(r['rule_ids']))}</td>"
                f"<td><pre>{_h(r['text'])}</pre></td></tr>")
        add("</table>")
    else:
        add("<p>None.</p>")

    add("<h2>Authentication failures</h2>")
    if c.auth_failures:
        add("<table><tr><th>reason</th><th>startup user</th><th>method</th><th>count</th></tr>")
        for (reason, user, method), count in c.auth_failures.most_common(20):
            add(f"<tr><td>{_h(reason)}</td><td><code>{_h(user)}</code></td>"
                f'<td>{_h(method)}</td><td class="n">{count}</td></tr>')
        add("</table>")
    else:
        add("<p>None.</p>")

    add("<h2>Audit chains read</h2><table><tr><th>gateway</th><th>worker</th>"
        "<th>epochs</th><th>batches</th><th>events</th><th>first batch sealed</th>"
        "<th>last batch sealed</th></tr>")
    for chain in c.chains.values():
        first = min((e.first_at for e in chain.epochs.values()), default=0)
        last = max((e.last_at for e in chain.epochs.values()), default=0)
        add(f"<tr><td>{_h(chain.gateway)}</td><td class=\"n\">{chain.worker}</td>"
            f'<td class="n">{len(chain.epochs)}</td><td class="n">{chain.batches}</td>'
            f'<td class="n">{chain.events}</td><td>{_h(rfc3339(first))}</td>'
            f"<td>{_h(rfc3339(last))}</td></tr>")
    add("</table>")
    add("<h2>Checking this pack</h2><p>Every file is listed with its SHA-256 in "
        "<code>manifest.json</code>, which is signed (<code>manifest.sig</code>) with the "
        "audit signing key. Run <code>pgwarden evidence check DIR --keys KEY.pub</code>, or "
        "see <code>README.txt</code> for checking with OpenSSL.</p>")
    add("</body></html>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- writing: README

_FILES_TEXT = """\
  statements.csv / .jsonl      every statement in the window, in time order: identity,
                               role, database, statement text, decision, rules, outcome
  authentication.csv / .jsonl  authentication successes and failures
  approvals.csv / .jsonl       approval requests and decisions (may hold only a header)
  sessions.jsonl               one line per session active in the window
  system.jsonl                 worker starts/stops, policy reloads, dropped-event notices
  verification.txt / .json     the audit log verifier's full report
  custody.md                   credential-custody statement derived from the configuration
  summary.html                 overview with charts (open in a browser; no scripts)
  README.txt                   this file
  manifest.json                every other file's name, size and SHA-256; window;
                               verification verdict; chain coverage
  manifest.sig                 Ed25519 signature (64 raw bytes) over manifest.json
  manifest.sig.json            which key signed it (key id)
"""


def readme_text(report: Report, since: int, until: int, signer_key_id: str) -> str:
    verdict = ("VERIFIED: " if report.ok else "VERIFICATION FAILED: ") + report.summary()
    return f"""\
pgwarden evidence pack
======================

Window:        {rfc3339(since)} (inclusive) to {rfc3339(until)} (exclusive), UTC,
               by event time
Audit log:     {verdict}
Signed by:     audit key id {signer_key_id}
Generator:     pgwarden {__version__}

{"" if report.ok else '''*** The audit log did NOT verify. The logs in this pack may be incomplete
*** or altered; verification.txt names every failing batch and why.

'''}Files
-----
{_FILES_TEXT}
CSV files are UTF-8 with a byte-order mark, comma-separated, RFC 4180 quoting. A cell that
would start with = + - @, a tab or a carriage return (a spreadsheet formula) is prefixed
with ' ; the JSONL files hold the exact texts. Lists (rule ids) are separated by ';'.
Times are RFC 3339 UTC with nanoseconds.

Checking this pack
------------------
Get the audit public key(s) (*.pub) from the gateway's operators through a channel you
trust - never from the pack itself - then either:

1. With pgwarden:

     pgwarden evidence check THIS_DIRECTORY --keys audit.key.pub

   It checks the manifest's signature, every file's size and SHA-256, and that no file
   was added or removed. Exit status 0 = intact.

2. Without pgwarden (OpenSSL 3 and sha256sum):

     openssl pkeyutl -verify -pubin -inkey audit.key.pub -rawin \\
         -in manifest.json -sigfile manifest.sig
     sha256sum *

   The first must print "Signature Verified Successfully". Compare each digest with the
   "sha256" of that file in manifest.json, and check that the directory holds no file
   the manifest does not list (besides manifest.json, manifest.sig, manifest.sig.json).
   The key id in manifest.sig.json is the first 16 bytes of SHA-256 of the raw 32-byte
   public key, in hex.

The signature proves the pack is unchanged since it was made and signed with the audit
signing key. That the audit log behind it is complete and authentic is what
verification.txt reports; anyone with the public keys and the audit log (spool or Kafka
topic) can repeat that with 'pgwarden audit verify'.
"""


# ---------------------------------------------------------------------- writing: manifest


def _file_entry(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"name": path.name, "bytes": size, "sha256": digest.hexdigest()}


def _coverage(collected: Collected) -> list[dict[str, Any]]:
    chains = []
    for chain in collected.chains.values():
        epochs = [
            {
                "epoch": e.epoch, "first_seq": e.first_seq, "last_seq": e.last_seq,
                "batches": e.batches,
                # seqs between the first and last that were not verified (see the report)
                "missing_seqs": e.last_seq - e.first_seq + 1 - e.batches,
                "opened": e.opened, "closed": e.closed,
                "first_at": rfc3339(e.first_at), "last_at": rfc3339(e.last_at),
            }
            for e in chain.epochs.values()
        ]
        chains.append({
            "gateway": chain.gateway, "worker": chain.worker, "batches": chain.batches,
            "events": chain.events, "epochs": epochs,
        })
    return chains


def _manifest(
    directory: Path, collected: Collected, report: Report, plan: _Plan, signer_key_id: str,
    generated_at: int, sessions: int,
) -> bytes:
    files = [
        _file_entry(p) for p in sorted(directory.iterdir(), key=lambda p: p.name)
        if p.name not in SIGNATURE_FILES
    ]
    counts = collected.counts
    manifest = {
        "format": PACK_FORMAT,
        "format_version": PACK_VERSION,
        "generator": {"name": "pgwarden", "version": __version__},
        "generated_at": rfc3339(generated_at),
        "window": {
            "since": rfc3339(collected.since), "until": rfc3339(collected.until),
            "since_ns": collected.since, "until_ns": collected.until,
            "rule": "since <= event time < until (UTC)",
        },
        "signer": {"algorithm": "Ed25519", "key_id": signer_key_id},
        "verification": {
            "ok": report.ok,
            "verdict": "verified" if report.ok else "failed",
            "summary": report.summary(),
            "problems": len(report.problems),
            "warnings": len(report.warnings),
            "records": report.records,
            "batches": report.batches,
            "events": report.events,
            "duplicates": report.duplicates,
            "allow_open_tail": plan.allow_open,
            "partial_history": plan.partial_history,
            "trusted_key_ids": sorted(plan.keys),
            "sources": _sources(plan),
        },
        "coverage": _coverage(collected),
        "counts": {
            "statements": counts["statement"],
            "statements_allowed": counts["decision:allow"],
            "statements_blocked": counts["decision:block"],
            "statements_held": counts["decision:approve"],
            "auth_successes": counts["auth_success"],
            "auth_failures": counts["auth_failure"],
            "approval_requests": counts["approval_request"],
            "approval_decisions": counts["approval_decision"],
            "sessions": sessions,
            "events_dropped": collected.dropped_events,
        },
        "config": (
            {"path": os.path.abspath(plan.config_path),
             "sha256": _file_digest(plan.config_path)}
            if plan.config_path else None
        ),
        "files": files,
    }
    return (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()


def write_pack(
    plan: _Plan, collector: Collector, report: Report, generated_at: int | None = None
) -> dict[str, Any]:
    """Write every file of the pack into ``plan.out`` (created mode 0700: statement texts
    may be personal data), the manifest last. Returns the manifest."""
    if generated_at is None:
        generated_at = time.time_ns() // 1_000_000_000 * 1_000_000_000  # whole seconds
    out = plan.out
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(out.iterdir()):  # checked before reading too; something raced us since
        raise FileExistsError(f"{out} is no longer empty")
    data = collector.data
    signer_key_id = key_id(plan.signing_key.verify_key)

    for name, columns, log in (
        ("statements", STATEMENT_COLUMNS, data.statements),
        ("authentication", AUTH_COLUMNS, data.authentication),
        ("approvals", APPROVAL_COLUMNS, data.approvals),
        ("system", None, data.system),
    ):
        _write_log(out, name, columns, log.lines())
        log.close()
    sessions = collector.session_rows()
    _write_log(out, "sessions", None, (_dump(row) for row in sessions))

    (out / "verification.txt").write_text(_report_text(report, plan), encoding="utf-8")
    (out / "verification.json").write_text(
        json.dumps(_report_json(report, plan), indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    (out / "custody.md").write_text(
        custody_statement(plan.cfg, plan.config_path, signer_key_id=signer_key_id,
                          generated_at=generated_at),
        encoding="utf-8",
    )
    (out / "summary.html").write_text(
        summary_html(data, report, plan, len(sessions), generated_at), encoding="utf-8"
    )
    (out / "README.txt").write_text(
        readme_text(report, data.since, data.until, signer_key_id), encoding="utf-8"
    )

    manifest = _manifest(out, data, report, plan, signer_key_id, generated_at, len(sessions))
    (out / MANIFEST).write_bytes(manifest)
    (out / MANIFEST_SIG).write_bytes(plan.signing_key.sign(manifest).signature)
    (out / MANIFEST_SIG_INFO).write_text(
        json.dumps({
            "algorithm": "Ed25519",
            "key_id": signer_key_id,
            "signed_file": MANIFEST,
            "signature_file": MANIFEST_SIG,
            "note": "manifest.sig is the raw 64-byte Ed25519 signature over the exact bytes "
                    "of manifest.json; key_id is a hint (the signed one is in manifest.json)",
        }, indent=2) + "\n",
        encoding="utf-8",
    )
    parsed: dict[str, Any] = json.loads(manifest)
    return parsed


# ---------------------------------------------------------------------- run


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``pgwarden evidence``: verify, collect the window, write the pack. Dispatches
    ``pgwarden evidence check`` to :func:`run_check`."""
    if getattr(args, "evidence_tool", None) == "check":
        return run_check(args, out)
    out = out or sys.stdout
    try:
        plan = _plan(args)
        verifier = Verifier(
            plan.keys, allow_open_tail=plan.allow_open, partial_history=plan.partial_history
        )
        collector = Collector(plan.since, plan.until)
        # Everything is read and verified before anything is written: a source that
        # cannot be read is a usage error that leaves no half-made pack behind.
        for item in _records(plan):
            verified = verifier.feed(item)
            if verified is not None:
                collector.add(verified)
    except (UsageError, SpoolError) as exc:
        print(f"pgwarden: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = verifier.finish()
    try:
        manifest = write_pack(plan, collector, report)
    except OSError as exc:
        print(f"pgwarden: cannot write the evidence pack in {plan.out}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    counts = manifest["counts"]
    print(f"evidence pack written to {plan.out}", file=out)
    print(
        f"  window {manifest['window']['since']} .. {manifest['window']['until']}: "
        f"{counts['statements']} statement(s), {counts['auth_successes']} authentication(s), "
        f"{counts['auth_failures']} failed, {counts['approval_requests']} approval "
        f"request(s), {counts['sessions']} session(s)",
        file=out,
    )
    print(f"  manifest signed by key {manifest['signer']['key_id']}", file=out)
    if counts["events_dropped"]:
        print(f"  WARNING: {counts['events_dropped']} audit event(s) were dropped in a period "
              "overlapping the window (see system.jsonl)", file=out)
    if report.ok:
        print(f"audit log VERIFIED: {report.summary()}", file=out)
        return EXIT_OK
    message = (f"AUDIT LOG VERIFICATION FAILED: {report.summary()} - the pack is written so "
               f"the problems can be examined; see {plan.out / 'verification.txt'}")
    print(message, file=out)
    if out is not sys.stderr:
        print(f"pgwarden: {message}", file=sys.stderr)
    return EXIT_PROBLEMS


# ---------------------------------------------------------------------- check


def _plain_name(name: object) -> bool:
    return (isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name
            and name not in (".", "..") and "\x00" not in name)


def check_pack(
    directory: str | os.PathLike[str], keys: Mapping[str, VerifyKey]
) -> list[str]:
    """Problems with the pack in ``directory``; empty when it is intact.

    Checks the manifest's signature with the trusted ``keys`` (the hinted key first, then
    any other, like the audit verifier), that the signed key id is the signer's, then
    every listed file's size and SHA-256, and that nothing was added or removed.
    """
    root = Path(directory)
    problems: list[str] = []
    if not root.is_dir():
        return [f"{root}: not a directory"]
    try:
        manifest_bytes = (root / MANIFEST).read_bytes()
    except OSError as exc:
        return [f"{MANIFEST}: cannot be read ({exc.strerror or exc}): not an evidence pack, "
                "or the manifest was removed"]
    try:
        signature = (root / MANIFEST_SIG).read_bytes()
    except OSError as exc:
        signature = b""
        problems.append(f"{MANIFEST_SIG}: cannot be read ({exc.strerror or exc}): the "
                        "manifest is unsigned")
    hint = ""
    try:
        info = json.loads((root / MANIFEST_SIG_INFO).read_bytes())
        hint = str(info.get("key_id", "")) if isinstance(info, dict) else ""
    except (OSError, ValueError) as exc:
        problems.append(f"{MANIFEST_SIG_INFO}: missing or unreadable ({exc}); trying every "
                        "trusted key")

    signer: str | None = None
    if signature:
        if len(signature) != 64:
            problems.append(f"{MANIFEST_SIG}: {len(signature)} bytes, an Ed25519 signature "
                            "has 64")
        else:
            ordered = sorted(keys.items(), key=lambda item: item[0] != hint)
            for kid, key in ordered:
                try:
                    key.verify(manifest_bytes, signature)
                except BadSignatureError:
                    continue
                signer = kid
                break
            if signer is None:
                if hint and hint not in keys:
                    problems.append(
                        f"{MANIFEST}: the signature does not verify with any of the "
                        f"{len(keys)} trusted key(s); it names key {hint}, which is not "
                        "among them (wrong --keys, or the pack was not signed by this "
                        "gateway)"
                    )
                else:
                    problems.append(
                        f"{MANIFEST}: bad signature: the manifest (or its signature) was "
                        "modified after signing"
                    )
            elif hint and hint != signer:
                problems.append(f"{MANIFEST_SIG_INFO}: names key {hint}, but the manifest is "
                                f"signed by key {signer} (the unsigned hint was edited)")

    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as exc:
        return [*problems, f"{MANIFEST}: not JSON ({exc})"]
    if not isinstance(manifest, dict) or manifest.get("format") != PACK_FORMAT:
        return [*problems, f"{MANIFEST}: not a {PACK_FORMAT} manifest"]
    signed_id = (manifest.get("signer") or {}).get("key_id")
    if signer is not None and signed_id != signer:
        problems.append(f"{MANIFEST}: names signer key {signed_id}, but is signed by key "
                        f"{signer}")

    listed: dict[str, dict[str, Any]] = {}
    entries = manifest.get("files")
    if not isinstance(entries, list):
        return [*problems, f"{MANIFEST}: has no file list"]
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not _plain_name(name) or name in SIGNATURE_FILES:
            problems.append(f"{MANIFEST}: lists an unacceptable file name {name!r}")
            continue
        assert isinstance(name, str) and isinstance(entry, dict)
        listed[name] = entry
    for name, entry in listed.items():
        path = root / name
        if not path.is_file() or path.is_symlink():
            problems.append(f"{name}: listed in the manifest but missing (removed)"
                            if not path.exists() and not path.is_symlink()
                            else f"{name}: not a regular file")
            continue
        actual = _file_entry(path)
        if actual["sha256"] != entry.get("sha256") or actual["bytes"] != entry.get("bytes"):
            problems.append(
                f"{name}: modified: {actual['bytes']} bytes, SHA-256 {actual['sha256']}; the "
                f"manifest says {entry.get('bytes')} bytes, SHA-256 {entry.get('sha256')}"
            )
    for path in sorted(root.iterdir(), key=lambda p: p.name):
        if path.name not in listed and path.name not in SIGNATURE_FILES:
            problems.append(f"{path.name}: not listed in the manifest (added after signing)")
    return problems


def run_check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``pgwarden evidence check DIR --keys PATH...``: 0 intact, 1 altered, 2 bad usage."""
    out = out or sys.stdout
    try:
        keys = load_public_keys(args.keys)
    except AuditKeyError as exc:
        print(f"pgwarden: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not Path(args.dir).is_dir():
        print(f"pgwarden: {args.dir} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    problems = check_pack(args.dir, keys)
    for problem in problems:
        print(f"problem: {problem}", file=out)
    if problems:
        print(f"evidence pack {args.dir}: ALTERED or incomplete: {len(problems)} problem(s)",
              file=out)
        return EXIT_PROBLEMS
    manifest = json.loads((Path(args.dir) / MANIFEST).read_bytes())
    verification = manifest.get("verification", {})
    window = manifest.get("window", {})
    print(
        f"evidence pack {args.dir}: intact ({len(manifest['files'])} files, manifest signed "
        f"by key {manifest['signer']['key_id']}); window {window.get('since')} .. "
        f"{window.get('until')}",
        file=out,
    )
    if verification.get("ok"):
        print(f"  the audit log verified when the pack was made: {verification.get('summary')}",
              file=out)
    else:
        print(f"  NOTE: the audit log FAILED verification when the pack was made: "
              f"{verification.get('summary')} (see verification.txt)", file=out)
    return EXIT_OK
