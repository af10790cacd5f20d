"""The audit trail of one session: one ``statement`` event per statement, with its outcome.

:class:`AuditedHooks` decides like :class:`~gateway.session.policy.PolicyHooks` and also
follows each statement to its end, so that the event says what happened — command tag,
rows, SQLSTATE and message, duration, bytes — not only what was decided:

- a simple ``Query`` is one event (the whole string, however many statements it holds),
  completed by its ReadyForQuery;
- in the extended protocol an event is written per execution (``Execute``), with the text
  of the prepared statement its portal was bound to; an execution the server skipped
  (an earlier error in the same pipeline, before Sync) did not run and has no event;
- a refused message is an event at once (decision ``block`` / ``approve``), and the
  error the client receives for it is not counted against another statement;
- a FunctionCall is one event.

The events go to an emitter (the worker's ``AuditWriter.emit``); this module does no I/O.

Statement events are written here already encoded, as the bytes of JSON objects of the
``statement`` type of :mod:`gateway.audit.events` (every member of ``StatementEvent``, in
another order): the members that are the same for every statement
of a session (who) or of a prepared statement (its text, fingerprint and decision) are
encoded once, and each event only formats its numbers around them. Building and then
encoding a 29-member Struct per statement cost more than the rest of the audit trail.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import msgspec

from gateway.audit.events import Event, StatementStartEvent
from gateway.policy.cache import DecisionCache
from gateway.policy.model import Action, Decision
from gateway.session.hooks import Refusal, RelayState, Scan
from gateway.session.policy import PolicyHooks, ShapeEntry
from gateway.sql import SqlSyntaxError, normalize
from gateway.sql.shape import shape
from gateway.wire.errors import ProtocolViolation
from gateway.wire.framer import Framer
from gateway.wire.frontend import Bind, decode_frontend

_now = time.time_ns
_enc = msgspec.json.encode

# Named statements remembered per session (their text, for the events of their
# executions) until the client closes them. Past this many open ones a new Parse is
# refused: its executions could not be recorded with their text (fail closed).
MAX_STATEMENTS = 100_000
SQLSTATE_TOO_MANY = "54000"  # program_limit_exceeded


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """Who the session is, copied into each of its events."""

    session_id: str
    issuer: str
    subject: str
    client_id: str
    role: str
    upstream_user: str
    database: str
    client_addr: str
    application_name: str


class _Prepared:
    """A statement text with its decision, and those members of its events encoded."""

    __slots__ = ("decision", "extended", "fingerprint", "fragment", "protocol", "text")

    def __init__(self, protocol: str, text: str, fingerprint: str, decision: Decision) -> None:
        self.protocol = protocol
        self.extended = protocol == "extended"
        self.text = text
        self.fingerprint = fingerprint
        self.decision = decision
        self.fragment = _fragment(protocol, text, fingerprint, decision)


def _fragment(protocol: str, text: str, fingerprint: str, decision: Decision) -> bytes:
    """The members of a statement event that come from the statement and its decision."""
    return b'"protocol":"%s","text":%s%s' % (
        protocol.encode(), _enc(text), _decision_suffix(fingerprint, decision))


def _decision_suffix(fingerprint: str, decision: Decision) -> bytes:
    """The members after ``text`` in :func:`_fragment` (the C fast path adds the same
    after a text it encoded itself)."""
    return b',"fingerprint":%s,"decision":"%s","rule_ids":%s,"observed_rule_ids":%s' % (
        _enc(fingerprint), decision.action.label.encode(), _enc([decision.rule_id]),
        _enc(list(decision.observed)),
    )


def _session_fragment(info: SessionInfo) -> bytes:
    """The members of a statement event that are the same for the whole session: every
    field of SessionInfo (named as in StatementEvent), and the ones not recorded yet."""
    members = [b'"%s":%s' % (f.name.encode(), _enc(getattr(info, f.name))) for f in fields(info)]
    return b",".join([*members, b'"masked_columns":[]', b'"approval_id":""'])


# Command tags repeat ("SELECT 1", "UPDATE 1"): their JSON and row count, cached.
_TAGS: dict[bytes, tuple[bytes, int | None]] = {}
_MAX_TAGS = 4096


def _tag(raw: bytes) -> tuple[bytes, int | None]:
    """(the command tag as a JSON string, its row count) of a CommandComplete tag."""
    known = _TAGS.get(raw)
    if known is None:
        text = raw.decode("utf-8", "replace")
        known = (_enc(text), rows_of(text) if text != "SUSPENDED" else None)
        if len(_TAGS) < _MAX_TAGS:
            _TAGS[raw] = known
    return known


class _Pending:
    """A statement sent upstream whose outcome is not known yet."""

    __slots__ = (
        "batch",
        "bytes_in",
        "command_tag",
        "error_message",
        "id",
        "out_mark",
        "parameters",
        "rows",
        "sqlstate",
        "start",
        "statement",
    )

    def __init__(self, statement: _Prepared, batch: int, bytes_in: int, out_mark: int) -> None:
        self.statement = statement
        self.batch = batch
        self.bytes_in = bytes_in
        self.out_mark = out_mark
        self.start = _now()
        self.rows: int | None = None
        self.command_tag = b'""'  # JSON
        self.sqlstate = ""
        self.error_message = ""
        self.parameters: list[str | None] | None = None
        self.id = 0


_PyPending = _Pending

#: A bound portal: the statement, its parameters if recorded, the Bind's size and the
#: ReadyForQuery ordinal that ends the Bind's batch.
_Bound = tuple[_Prepared, list[str | None] | None, int, int]


class _PyCounters:
    """A session's statement counters; ``_trail.Counters`` is the same in C (plain
    integers its walks increment without allocating an int object)."""

    __slots__ = ("seq", "statements")

    def __init__(self) -> None:
        self.seq = 0  # the last id given to a statement of the session
        self.statements = 0  # statement events written


class _PyPortals(dict[bytes, _Bound]):
    """Bound portals by name; ``_trail.Portals`` is the same in C."""

    def end_batches(self, ended: int) -> None:
        """Drop the portals bound in a batch up to ``ended`` (their transaction ended)."""
        for name in [n for n, b in self.items() if b[3] <= ended]:
            del self[name]

try:  # the optional C fast path (gateway/session/_trail.c); the same behaviour without
    from gateway.session import _trail

    _Pending = _trail.Pending  # type: ignore[misc,assignment]
except ImportError:  # pragma: no cover - depends on the build
    _trail = None  # type: ignore[assignment]

#: Whether sessions use the C fast path (tests turn it off to check both paths agree).
ACCELERATED = _trail is not None


def rows_of(tag: str) -> int | None:
    """The row count a command tag carries (``INSERT 0 5`` -> 5), if any."""
    _, _, last = tag.rpartition(" ")
    return int(last) if last.isdigit() else None


class AuditedHooks(PolicyHooks):
    """PolicyHooks that also record every statement of the session as an event."""

    tracks_results = True

    __slots__ = (
        "_counts", "_emit", "_executions", "_gate", "_id_prefix", "_info", "_normalized",
        "_pending", "_portals", "_record_parameters", "_relay", "_session", "_statements",
    )

    def __init__(
        self,
        cache: DecisionCache,
        info: SessionInfo,
        parameters: dict[str, str],
        emit: Callable[[Event | bytes], None],
        *,
        normalized_text: bool = False,
        record_parameters: bool = False,
        admit: Callable[[], Refusal | None] | None = None,
        strict: bool = False,
        gate: Any = None,
    ) -> None:
        super().__init__(cache, info.role, f"{info.issuer}:{info.subject}", info.database,
                         parameters)
        self._info = info
        self._emit = emit
        self._session = _session_fragment(info)
        # '"<session_id>:' as JSON, without the closing quote: an event's id adds "<n>\"".
        self._id_prefix = _enc(info.session_id)[:-1] + b":"
        self._normalized = normalized_text
        self._record_parameters = record_parameters
        self._relay: RelayState | None = None
        self._counts: _PyCounters = (
            _PyCounters() if _trail is None else _trail.Counters()  # type: ignore[assignment]
        )
        # Simple queries, function calls and executions in the order the server answers.
        # With the C fast path, its Queue: the part of a deque's interface used here, in
        # a form its walks use without method calls.
        self._pending: collections.deque[_Pending] = (
            collections.deque() if _trail is None else _trail.Queue()  # type: ignore[assignment]
        )
        self._statements: dict[bytes, _Prepared] = {}
        # portal -> _Bound. With the C fast path, its Portals: the part of a dict's
        # interface used here, with the unnamed portal in members its walks use directly.
        self._portals: _PyPortals = (
            _PyPortals() if _trail is None else _trail.Portals()  # type: ignore[assignment]
        )
        self._executions = 0
        # Asked before each statement: a refusal while the audit log cannot take it.
        self._admit = admit
        # The AuditWriter behind emit, if the C fast path may append to it directly
        # (AuditWriter.fast_sink); None: every event goes through emit.
        self._gate = gate
        self.strict = strict
        #: Set when a statement was forwarded whose record must be durable first (strict
        #: mode): the server holds the bytes going upstream until then, then clears it.
        self.hold = False

    @property
    def statements(self) -> int:
        """Statement events written."""
        return self._counts.statements

    def attach(self, relay: RelayState) -> None:
        self._relay = relay

    def fast_scans(
        self, relay: RelayState, frontend: Framer, backend: Framer,
        refused: dict[bytes, Refusal],
    ) -> tuple[Scan, Scan] | None:
        """The C walks that record the common statements without calling back (see
        gateway/session/_trail.c); they share this object's dicts and queue."""
        if not ACCELERATED or _Pending is _PyPending:
            return None
        self._trail = _trail.Trail(
            hooks=self, relay=relay, frontend=frontend, backend=backend,
            statements=self._statements, portals=self._portals, pending=self._pending,
            counts=self._counts,  # type: ignore[arg-type]
            refused=refused, emit=self._emit, gate=self._gate, session=self._session,
            id_prefix=self._id_prefix,
            # Parameters to record and strict mode's start events are Python's work.
            fast=not (self._record_parameters or self.strict), audit=True,
            cache=self._cache, shapes=self._shapes, shape=shape,
        )
        return self._trail.scan_frontend, self._trail.scan_backend

    def _shape_entry(self, decision: Decision, fingerprint: str) -> ShapeEntry | None:
        if self._normalized:
            return None  # the recorded text is PostgreSQL's normalization: Python's work
        return (decision, fingerprint, _decision_suffix(fingerprint, decision))


    # -- what the client sends ----------------------------------------------------------

    def _blocked(self) -> Refusal | None:
        refusal = self._admit() if self._admit is not None else None
        if refusal is not None:
            self.outcome, self.fingerprint = refusal, ""
        return refusal

    def on_query(self, sql: bytes) -> Refusal | None:
        refusal = self._blocked() or self._statement(sql, "query")
        self._begin("simple", sql, refusal, len(sql) + 6)
        return refusal

    def on_function_call(self, body: memoryview) -> Refusal | None:
        refusal = self._blocked() or super().on_function_call(body)
        oid = int.from_bytes(body[:4], "big") if len(body) >= 4 else 0
        self._begin("function_call", f"<FunctionCall oid {oid}>".encode(), refusal,
                    len(body) + 5)
        return refusal

    def on_parse(self, name: bytes, sql: bytes) -> Refusal | None:
        refusal = self._blocked() or self._statement(sql, "prepared statement")
        if refusal is not None:
            self._refused("extended", sql, refusal, len(sql) + len(name) + 7)
            return refusal
        outcome = self.outcome
        assert isinstance(outcome, Decision)
        if name and name not in self._statements and len(self._statements) >= MAX_STATEMENTS:
            refusal = Refusal(
                SQLSTATE_TOO_MANY,
                f"pgwarden: more than {MAX_STATEMENTS} prepared statements are open in this "
                "session; close some (the audit trail records each one's text)",
            )
            self.outcome = refusal
            self._refused("extended", sql, refusal, len(sql) + len(name) + 7)
            return refusal
        self._statements[name] = _Prepared("extended", self._text(sql), self.fingerprint,
                                           outcome)
        return None

    def on_close_message(self, kind: bytes, name: bytes) -> None:
        if kind == b"S":
            self._statements.pop(name, None)
        elif kind == b"P":
            self._portals.pop(name, None)

    def on_bind(self, portal: bytes, statement: bytes, body: memoryview) -> Refusal | None:
        prepared = self._statements.get(statement)
        refusal = self._blocked()
        if refusal is not None:
            # Each execution is a statement to record: none while the log cannot take it.
            text = prepared.text if prepared is not None else f"<prepared statement {statement!r}>"
            self._refused("extended", text.encode(), refusal, len(body) + 5)
            return refusal
        if prepared is None:
            # Prepared before this session was audited, or beyond MAX_STATEMENTS.
            prepared = _Prepared(
                "extended", f"<prepared statement {statement!r}>", "",
                self.outcome if isinstance(self.outcome, Decision) else _UNKNOWN,
            )
        params = self._parameters(body) if self._record_parameters else None
        relay = self._relay
        batch = relay.next_request if relay is not None else 0
        self._portals[portal] = (prepared, params, len(body) + 5, batch)
        return None

    def on_execute(self, portal: bytes) -> None:
        bound = self._portals.get(portal)
        if bound is None:
            # Not bound through this session's Binds: a SQL cursor (DECLARE c CURSOR ...
            # shares the portal namespace), or a name the server will reject. Recorded
            # either way: if it runs, it fetches rows.
            name = portal.decode("utf-8", "replace")
            bound = (_Prepared("extended", f"<execute portal {name!r}>", "", _CURSOR),
                     None, 0, 0)
        prepared, params, size, _ = bound
        relay = self._relay
        if relay is not None:
            pending = _Pending(prepared, relay.next_request, size + 5 + len(portal) + 5,
                               relay.bytes_out)
        else:
            pending = _Pending(prepared, 0, size + 5 + len(portal) + 5, 0)
        pending.parameters = params
        self._track(pending)

    # -- what the server answers --------------------------------------------------------

    def on_complete(self, tag: bytes) -> None:
        if not self._pending:
            return
        head = self._pending[0]
        head.command_tag, rows = _tag(tag)
        if head.statement.extended:
            self._pending.popleft()
            head.rows = rows
            self._finish(head)
        elif rows is not None:
            head.rows = (head.rows or 0) + rows

    def on_error(self, sqlstate: str, message: str, refusal: bool) -> None:
        if refusal or not self._pending:
            return  # the refused statement's event is already written
        head = self._pending[0]
        relay = self._relay
        if head.sqlstate or (relay is not None and head.batch != relay.current_batch):
            return  # an error of a batch with no statement of its own (a lone Parse)
        head.sqlstate, head.error_message = sqlstate, message
        if head.statement.extended:
            # The execution failed (or its Parse/Bind did); until Sync the server skips
            # the rest of the batch, which on_ready discards.
            self._pending.popleft()
            self._finish(head)
            while self._pending and self._pending[0].batch == head.batch and (
                self._pending[0].statement.extended
            ):
                self._pending.popleft()

    def on_ready(self, status: int) -> None:
        relay = self._relay
        portals = self._portals
        if status == _IDLE and portals and relay is not None:
            # Portals end with their transaction: those bound in a batch that has now
            # ended outside a transaction are gone (later ones may still be executed).
            portals.end_batches(relay.current_batch - 1)
        # called after the relay counted this ReadyForQuery
        ended = relay.current_batch - 1 if relay is not None else 0
        pending = self._pending
        while pending and pending[0].batch <= ended:
            head = pending.popleft()
            if not head.statement.extended:
                self._finish(head)
            # an execution still pending at its batch's end was skipped: it did not run

    def on_close(self, reason: str) -> None:
        # Statements in flight when the session ended: recorded with what is known.
        while self._pending:
            head = self._pending.popleft()
            if not head.sqlstate:
                head.sqlstate = "08006"
                head.error_message = f"session ended before the statement completed: {reason}"
            self._finish(head)

    # -- events -------------------------------------------------------------------------

    def _text(self, sql: bytes) -> str:
        text = sql.decode("utf-8", "replace")
        if self._normalized:
            try:
                return normalize(text)
            except SqlSyntaxError:
                return "<does not parse>"
        return text

    def _begin(self, protocol: str, sql: bytes, refusal: Refusal | None, size: int) -> None:
        if refusal is not None:
            self._refused(protocol, sql, refusal, size)
            return
        outcome = self.outcome
        assert isinstance(outcome, Decision)
        relay = self._relay
        statement = _Prepared(protocol, self._text(sql), self.fingerprint, outcome)
        if relay is not None:
            self._track(_Pending(statement, relay.next_request, size, relay.bytes_out))
        else:
            self._track(_Pending(statement, 0, size, 0))

    def _track(self, pending: _Pending) -> None:
        counts = self._counts
        counts.seq += 1
        pending.id = counts.seq
        self._pending.append(pending)
        if self.strict:
            # Strict mode: the record that this statement is about to run must be durable
            # before it runs; the server holds what goes upstream until then.
            st = pending.statement
            d = st.decision
            self._emit(StatementStartEvent(
                at=pending.start, id=f"{self._info.session_id}:{pending.id}",
                session_id=self._info.session_id,
                protocol=st.protocol,  # type: ignore[arg-type]
                text=st.text, fingerprint=st.fingerprint,
                decision=d.action.label,  # type: ignore[arg-type]
                rule_ids=[d.rule_id],
            ))
            self.hold = True

    def _refused(self, protocol: str, sql: bytes, refusal: Refusal, size: int) -> None:
        outcome = self.outcome
        decision = outcome if isinstance(outcome, Decision) else _UNKNOWN_REFUSED
        at = _now()
        counts = self._counts
        counts.seq += 1
        self._write(
            _Prepared(protocol, self._text(sql), self.fingerprint, decision).fragment,
            counts.seq, at, at, size, 0, None, b'""', refusal.sqlstate, refusal.message, None,
        )

    def _finish(self, p: _Pending) -> None:
        relay = self._relay
        out = (relay.bytes_out - p.out_mark) if relay is not None else 0
        self._write(
            p.statement.fragment, p.id, p.start, _now(), p.bytes_in, out, p.rows,
            p.command_tag, p.sqlstate, p.error_message, p.parameters,
        )

    def _write(
        self, fragment: bytes, seq: int, start: int, end: int, bytes_in: int, bytes_out: int,
        rows: int | None, command_tag: bytes, sqlstate: str, error_message: str,
        parameters: list[str | None] | None,
    ) -> None:
        """Emit one ``statement`` event (the members of StatementEvent, as JSON)."""
        self._counts.statements += 1
        if sqlstate:
            outcome = b'"sqlstate":%s,"error_message":%s' % (_enc(sqlstate), _enc(error_message))
        else:
            outcome = b'"sqlstate":"","error_message":""'
        self._emit(_EVENT % (
            end, self._id_prefix, seq, self._session, fragment, start, end,
            b"null" if rows is None else b"%d" % rows, command_tag, outcome,
            (end - start) // 1000, bytes_in, bytes_out,
            b"null" if parameters is None else _enc(parameters),
        ))

    @staticmethod
    def _parameters(body: memoryview) -> list[str | None] | None:
        try:
            bind = decode_frontend(ord("B"), body)
        except (ProtocolViolation, ValueError):
            return None
        assert isinstance(bind, Bind)
        formats = bind.param_formats
        out: list[str | None] = []
        for i, value in enumerate(bind.params):
            fmt = formats[0] if len(formats) == 1 else formats[i] if formats else 0
            if value is None:
                out.append(None)
            elif fmt == 0:
                out.append(value.decode("utf-8", "replace"))
            else:
                out.append("\\x" + value.hex())
        return out


_IDLE = ord("I")
_EVENT = (
    b'{"type":"statement","at":%d,"id":%s%d",%s,%s,"start":%d,"end":%d,"rows":%s,'
    b'"command_tag":%s,%s,"duration_us":%d,"bytes_in":%d,"bytes_out":%d,"parameters":%s}'
)
# Execute of a portal that is a SQL cursor (its DECLARE was decided and recorded).
_CURSOR = Decision(Action.ALLOW, "cursor")
# A portal bound to a statement this session's trail does not know (see on_bind).
_UNKNOWN = Decision(Action.ALLOW, "unknown")
# Refused before any rule could be applied: text not UTF-8, or a session pgwarden cannot
# inspect (see gateway.session.policy).
_UNKNOWN_REFUSED = Decision(Action.BLOCK, "integrity.session")
