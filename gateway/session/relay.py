"""Steady-state relay of one established session, in both directions.

Once startup and authentication are done, every byte between client and server goes
through a :class:`Relay`. It frames both directions, looks only at the messages that
matter (statements for the hooks, ReadyForQuery for the transaction state, COPY
boundaries, ParameterStatus) and forwards everything else as the same bytes, in runs,
with one write per read.

When the hooks refuse a statement, the relay does not answer the client itself: it sends
the server, in the statement's place, a message that PostgreSQL answers with an error —
``EXECUTE pgwarden_refused_<nonce>`` for a Query or FunctionCall, ``Describe`` of the
nonexistent statement ``pgwarden_refused_<nonce>`` for a Parse or Bind — and rewrites that
error (SQLSTATE 26000 naming the nonce) into the refusal. So the error arrives exactly
where PostgreSQL would have put one: in order with pipelined results, followed by
discarding until Sync, and with an open transaction left failed (25P02 until ROLLBACK) —
the server keeps that state, the relay never imitates it. The nonce is random per
refusal, so no client can make the server produce (or pre-create) a matching name.
Statements whose Parse was refused are remembered by name, and a later Bind of one is
refused the same way.

It tracks what the supervisor needs to stop gracefully: a session is *idle* when every
request the client sent has been answered with ReadyForQuery and no transaction is open.

Sans-I/O: the relay writes through two objects with ``write``/``writelines`` (asyncio
transports in production, lists in tests) and never touches sockets itself.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Protocol

from gateway.session.hooks import Refusal, SessionHooks
from gateway.wire.backend import error_response
from gateway.wire.errors import ProtocolViolation
from gateway.wire.framer import (
    ACT_PASS,
    ACT_WATCH,
    DEFAULT_MAX_MESSAGE_SIZE,
    Chunk,
    Forward,
    Framer,
    Scanned,
    action_table,
)
from gateway.wire.frontend import Describe, Query
from gateway.wire.scan import scan
from gateway.wire.states import (
    BACKEND_TYPES,
    FRONTEND_TYPES,
    TX_IDLE,
    TX_STATUSES,
    Phase,
    next_phase,
)

_Q, _P, _F, _X, _B, _EXECUTE, _CLOSE = (ord(c) for c in "QPFXBEC")
_Z, _PARAM_STATUS, _ERROR = ord("Z"), ord("S"), ord("E")
_COMPLETE, _EMPTY, _SUSPENDED = ord("C"), ord("I"), ord("s")
_REFUSED_PREFIX = "pgwarden_refused_"
_MAX_REFUSED_NAMES = 10000
# The error PostgreSQL raises for our replacement: the prepared statement does not exist.
_UNDEFINED_PSTATEMENT = b"C26000\x00"


def _invalid_types(valid: bytes) -> bytes:
    return bytes(t for t in range(256) if t not in valid)


# Frontend. Pure forwarding only needs to count Query, Sync and FunctionCall (each is
# answered by one ReadyForQuery), which the scanner does without calling back; Terminate
# and every type that is not valid after startup are handed to the handler.
_FRONTEND_PASSIVE = action_table(watch=b"X" + _invalid_types(FRONTEND_TYPES), request=b"QSF")
# With active hooks, statements are watched so that the hooks can see and refuse them
# (and Bind too while some statement's Parse stands refused).
_FRONTEND_ACTIVE = action_table(watch=b"QPFX" + _invalid_types(FRONTEND_TYPES), request=b"S")
# Backend: ReadyForQuery counted by the scanner; the COPY phase changes, ParameterStatus
# and invalid types watched (and ErrorResponse while refusals are outstanding).
_BACKEND_PASSIVE = action_table(watch=b"GHWcS" + _invalid_types(BACKEND_TYPES), ready=b"Z")
_BACKEND_READY = action_table(watch=b"ZGHWcS" + _invalid_types(BACKEND_TYPES))
# Results tracked (audit): Bind and Execute, and every way the server ends a statement.
_FRONTEND_TRACK = action_table(
    watch=b"QPFXBEC" + _invalid_types(FRONTEND_TYPES), request=b"S"
)
_BACKEND_TRACK = action_table(watch=b"ZGHWcSCEIs" + _invalid_types(BACKEND_TYPES))


class Writer(Protocol):
    def write(self, data: Chunk, /) -> None: ...

    def writelines(self, data: list[Chunk], /) -> None: ...


class Relay:
    """Both directions of one session after ReadyForQuery was first sent to the client."""

    __slots__ = (
        "_backend",
        "_frontend",
        "_hooks",
        "_phase",
        "_phase_readies",
        "_refusals",
        "_refused_names",
        "_track",
        "client",
        "client_data",
        "client_terminated",
        "on_client_violation",
        "on_server_violation",
        "on_session_fatal",
        "on_terminate",
        "parameters",
        "server",
        "server_data",
    )

    def __init__(
        self,
        client: Writer,
        server: Writer,
        hooks: SessionHooks | None = None,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        tx_status: int = TX_IDLE,
        on_client_violation: Callable[[ProtocolViolation], None] | None = None,
        on_server_violation: Callable[[ProtocolViolation], None] | None = None,
    ) -> None:
        self.client = client
        self.server = server
        #: Called instead of raising when a side breaks the protocol (see client_data).
        self.on_client_violation = on_client_violation
        self.on_server_violation = on_server_violation
        #: Called when the client sends Terminate. The Terminate itself is not
        #: forwarded: the caller decides whether the upstream session ends or is reused.
        self.on_terminate: Callable[[], None] | None = None
        #: Called with (SQLSTATE, message) when the hooks end the session (on_parameter).
        self.on_session_fatal: Callable[[str, str], None] | None = None
        self._hooks = hooks if hooks is not None else SessionHooks()
        active = self._hooks.active
        self._track = track = active and self._hooks.tracks_results
        watch_ready = type(self._hooks).on_ready is not SessionHooks.on_ready
        # Outstanding refusals: the replacement statement's name -> (the ReadyForQuery
        # ordinal that ends its batch, the refusal).
        self._refusals: dict[bytes, tuple[int, Refusal]] = {}
        # Statement names whose Parse was refused -> why (Binds of them are refused too).
        self._refused_names: dict[bytes, Refusal] = {}
        # Copies of the shared tables, so that later work (policy) can change what one
        # session watches without touching the others.
        self._frontend = Framer(
            bytearray(
                _FRONTEND_TRACK if track else _FRONTEND_ACTIVE if active else _FRONTEND_PASSIVE
            ),
            self._on_frontend,
            max_message_size,
        )
        # The server is trusted to respect its own limit, not ours.
        self._backend = Framer(
            bytearray(
                _BACKEND_TRACK if track else _BACKEND_READY if watch_ready else _BACKEND_PASSIVE
            ),
            self._on_backend,
            DEFAULT_MAX_MESSAGE_SIZE,
        )
        self._backend.status = tx_status
        # The phase set by the last watched COPY boundary, and the ReadyForQuery count
        # then: any ReadyForQuery counted since means the server is back to READY.
        self._phase = Phase.READY
        self._phase_readies = 0
        self.client_terminated = False
        #: ParameterStatus values as last reported by the server.
        self.parameters: dict[str, str] = {}
        self._hooks.attach(self)
        scans = self._hooks.fast_scans(self, self._frontend, self._backend,
                                       self._refused_names)
        if scans is not None:
            self._frontend.scan, self._backend.scan = scans
        #: Bytes from the client, for the server; usable directly as a protocol's
        #: ``data_received``. A read of whole messages that need nothing but a walk is
        #: handled in C (gateway.wire.framer.Forward); the rest comes back to
        #: _client_read/_client_scanned. A protocol violation is passed to
        #: ``on_client_violation`` when set (the caller then closes the session), and
        #: raised otherwise.
        self.client_data: Forward = Forward(
            self._frontend, server.write, self._client_read, self._client_scanned
        )
        #: Bytes from the server, for the client: the counterpart of :attr:`client_data`.
        self.server_data: Forward = Forward(
            self._backend, client.write, self._server_read, self._server_scanned
        )

    @property
    def bytes_in(self) -> int:
        """Bytes received from the client (whole reads)."""
        return self.client_data.bytes

    @property
    def bytes_out(self) -> int:
        """Bytes received from the server (whole reads)."""
        return self.server_data.bytes

    @property
    def current_batch(self) -> int:
        """The ordinal of the ReadyForQuery the server's next messages lead up to."""
        return self._backend.readies + 1

    @property
    def next_request(self) -> int:
        """The ordinal of the ReadyForQuery that will answer the next Sync / Query."""
        return self._frontend.requests + 1

    @property
    def pending(self) -> int:
        """Requests (Query, Sync, FunctionCall) sent upstream and not yet answered."""
        return max(0, self._frontend.requests - self._backend.readies)

    @property
    def tx_status(self) -> int:
        """Transaction status byte of the last ReadyForQuery."""
        return self._backend.status

    @property
    def phase(self) -> Phase:
        if self._backend.readies != self._phase_readies:
            return Phase.READY
        return self._phase

    def _set_phase(self, phase: Phase) -> None:
        self._phase = phase
        self._phase_readies = self._backend.readies

    @property
    def idle(self) -> bool:
        """Nothing in flight, no open transaction, no half-received message."""
        return (
            self.pending == 0
            and self.tx_status == TX_IDLE
            and self._frontend.at_boundary
            and self._backend.at_boundary
        )

    @property
    def buffered(self) -> int:
        return self._frontend.buffered + self._backend.buffered

    # -- client -> server ---------------------------------------------------------------

    def _client_read(self, data: bytes) -> None:
        """A read from the client that the C path handed over whole."""
        _pass_on(data, None, self._frontend, self.on_client_violation, self.server)

    def _client_scanned(self, data: bytes, scanned: Scanned) -> None:
        """A read from the client that the C path walked up to a message to act on."""
        _pass_on(data, scanned, self._frontend, self.on_client_violation, self.server)

    def _on_frontend(self, msg_type: int, body: memoryview) -> bytes | None:
        # Only reached for watched types: statements when hooks are active, Terminate,
        # and invalid types.
        hooks = self._hooks
        if msg_type == _Q:
            refusal = hooks.on_query(_query_text(body))
            self._frontend.requests += 1
            if refusal is None:
                return None
            # The replacement is itself a Query: one request, one ReadyForQuery.
            return self._refuse(refusal, self._frontend.requests, as_query=True)
        if msg_type == _P:
            name, sql = _parse_fields(body)
            refusal = hooks.on_parse(name, sql)
            if refusal is None:
                if self._refused_names:
                    self._forget_refused(name)
                return None
            names = self._refused_names
            if len(names) >= _MAX_REFUSED_NAMES:
                # Forgetting one is safe: the server never created it (the refused Parse
                # was replaced); a Bind of it fails there, or binds the older, allowed one.
                del names[next(iter(names))]
            names[name] = refusal
            self._frontend.actions[_B] = ACT_WATCH
            return self._refuse(refusal, self._frontend.requests + 1, as_query=False)
        if msg_type == _B:
            portal, statement = _bind_names(body)
            refusal = self._refused_names.get(statement)
            if refusal is None and self._track:
                refusal = hooks.on_bind(portal, statement, body)
            if refusal is None:
                return None
            return self._refuse(refusal, self._frontend.requests + 1, as_query=False)
        if msg_type == _EXECUTE:  # only watched when results are tracked
            hooks.on_execute(_execute_portal(body))
            return None
        if msg_type == _CLOSE:  # only watched when results are tracked
            if len(body) >= 2 and body[-1] == 0:
                hooks.on_close_message(bytes(body[:1]), bytes(body[1:-1]))
            return None
        if msg_type == _F:
            refusal = hooks.on_function_call(body)
            self._frontend.requests += 1
            if refusal is None:
                return None
            return self._refuse(refusal, self._frontend.requests, as_query=True)
        if msg_type == _X:
            self.client_terminated = True
            if self.on_terminate is not None:
                self.on_terminate()
            return b""
        raise ProtocolViolation(f"invalid frontend message type {msg_type}")

    def _refuse(self, refusal: Refusal, batch: int, *, as_query: bool) -> bytes:
        """The message sent upstream in a refused one's place (see the module docstring).

        ``batch`` is the ordinal of the ReadyForQuery that ends the refused message's
        batch: its Query's own, or the next Sync's.
        """
        name = _REFUSED_PREFIX + secrets.token_hex(12)
        self._refusals[name.encode()] = (batch, refusal)
        self._backend.actions[_ERROR] = ACT_WATCH
        if as_query:
            return Query(f"EXECUTE {name}").encode()
        return Describe("S", name).encode()

    def _forget_refused(self, name: bytes) -> None:
        self._refused_names.pop(name, None)
        if not self._refused_names and not self._track:
            # (with results tracked, Bind stays watched: the audit trail needs it)
            self._frontend.actions[_B] = ACT_PASS

    @property
    def refusals_outstanding(self) -> int:
        """Refusals whose error has not come back from the server yet."""
        return len(self._refusals)

    # -- server -> client ---------------------------------------------------------------

    def _server_read(self, data: bytes) -> None:
        """A read from the server that the C path handed over whole."""
        _pass_on(data, None, self._backend, self.on_server_violation, self.client)

    def _server_scanned(self, data: bytes, scanned: Scanned) -> None:
        """A read from the server that the C path walked up to a message to act on."""
        _pass_on(data, scanned, self._backend, self.on_server_violation, self.client)

    def _on_backend(self, msg_type: int, body: memoryview) -> bytes | None:
        if msg_type == _COMPLETE:  # these three only watched when results are tracked
            self._hooks.on_complete(bytes(body[:-1]))
            return None
        if msg_type == _EMPTY:
            self._hooks.on_complete(b"")
            return None
        if msg_type == _SUSPENDED:
            self._hooks.on_complete(b"SUSPENDED")
            return None
        if msg_type == _ERROR:
            return self._on_error(body)
        if msg_type == _PARAM_STATUS:
            self._record_parameter(body)
            return None
        if msg_type == _Z:
            # Watched only when hooks are active; otherwise the scanner counts it.
            if len(body) != 1 or body[0] not in TX_STATUSES:
                raise ProtocolViolation("invalid ReadyForQuery message")
            self._backend.readies += 1
            self._backend.status = body[0]
            self._hooks.on_ready(body[0])
            return None
        if msg_type in BACKEND_TYPES:
            self._set_phase(next_phase(self.phase, msg_type))
            return None
        raise ProtocolViolation(f"invalid backend message type {msg_type}")

    def _on_error(self, body: memoryview) -> bytes | None:
        """An ErrorResponse while refusals are outstanding: ours is rewritten."""
        refusals = self._refusals
        if not refusals:  # watched for the results only
            if self._track:
                self._report_error(bytes(body), refusal=False)
            return None
        # Refusals of batches that already ended were skipped by an earlier error in
        # their batch (or their transaction had failed): their error will never come.
        current = self._backend.readies + 1
        for key in [k for k, (batch, _) in refusals.items() if batch < current]:
            del refusals[key]
        replacement: bytes | None = None
        raw = bytes(body)
        if _UNDEFINED_PSTATEMENT in raw:
            for key in refusals:
                if key in raw:
                    refusal = refusals.pop(key)[1]
                    replacement = error_response(
                        refusal.sqlstate, refusal.message,
                        detail=refusal.detail, hint=refusal.hint, position=refusal.position,
                    )
                    break
        if not refusals and not self._track:
            self._backend.actions[_ERROR] = ACT_PASS
        if self._track:
            self._report_error(raw, refusal=replacement is not None)
        return replacement

    def _report_error(self, raw: bytes, *, refusal: bool) -> None:
        sqlstate = message = ""
        for part in raw.split(b"\x00"):
            if part[:1] == b"C":
                sqlstate = part[1:].decode("ascii", "replace")
            elif part[:1] == b"M":
                message = part[1:].decode("utf-8", "replace")
        self._hooks.on_error(sqlstate, message, refusal)

    def _record_parameter(self, body: memoryview) -> None:
        raw = bytes(body)
        parts = raw.split(b"\x00")
        if len(parts) != 3 or parts[2] != b"":
            raise ProtocolViolation("invalid ParameterStatus message from server")
        try:
            name, value = parts[0].decode(), parts[1].decode()
        except UnicodeDecodeError as exc:
            raise ProtocolViolation("invalid ParameterStatus message from server") from exc
        self.parameters[name] = value
        fatal = self._hooks.on_parameter(name, value)
        if fatal is not None and self.on_session_fatal is not None:
            self.on_session_fatal("0A000", fatal)

    def close(self, reason: str) -> None:
        self._hooks.on_close(reason)
        self._hooks.detach_fast()
        self._frontend.scan = self._backend.scan = scan
        # The forwarders hold the framers, the writers and bound methods of this relay.
        self.client_data.close(_closed_data)
        self.server_data.close(_closed_data)
        # The framers hold bound methods of this relay: break the cycle now rather than
        # leave the session to the cyclic garbage collector.
        self._frontend.handler = _closed_handler
        self._backend.handler = _closed_handler
        self.on_client_violation = self.on_server_violation = None
        self.on_terminate = None
        self.on_session_fatal = None


def _closed_handler(msg_type: int, body: memoryview) -> bytes | None:
    raise ProtocolViolation("session is closed")


def _closed_data(data: bytes) -> None:
    raise ProtocolViolation("session is closed")


def _pass_on(
    data: bytes,
    scanned: Scanned | None,
    framer: Framer,
    on_violation: Callable[[ProtocolViolation], None] | None,
    writer: Writer,
) -> None:
    """Frame one read (already walked by the C path when ``scanned`` is given) and write
    what it gives. A protocol violation goes to ``on_violation`` when set (the caller then
    closes the session), and is raised otherwise."""
    try:
        out = framer.feed(data) if scanned is None else framer.feed_scanned(data, scanned)
    except ProtocolViolation as exc:
        if on_violation is None:
            raise
        on_violation(exc)
        return
    if out is None:
        writer.write(data)
    elif out:
        writer.writelines(out)


def _query_text(body: memoryview) -> bytes:
    """The text of a Query body: one string and its terminator, nothing after it."""
    raw = bytes(body)
    end = raw.find(b"\x00")
    if end != len(raw) - 1:
        raise ProtocolViolation("invalid Query message: the string must end the message")
    return raw[:end]


def _parse_fields(body: memoryview) -> tuple[bytes, bytes]:
    """(statement name, SQL text) of a Parse body."""
    raw = bytes(body)
    name_end = raw.find(b"\x00")
    sql_end = raw.find(b"\x00", name_end + 1) if name_end >= 0 else -1
    if sql_end < 0:
        raise ProtocolViolation("invalid Parse message")
    return raw[:name_end], raw[name_end + 1 : sql_end]


def _bind_names(body: memoryview) -> tuple[bytes, bytes]:
    """(portal name, statement name) of a Bind body."""
    # Names come first and are short; the parameters after them may be large.
    head = bytes(body[:256])
    portal_end = head.find(b"\x00")
    end = head.find(b"\x00", portal_end + 1) if portal_end >= 0 else -1
    if end < 0:
        head = bytes(body)
        portal_end = head.find(b"\x00")
        end = head.find(b"\x00", portal_end + 1) if portal_end >= 0 else -1
        if end < 0:
            raise ProtocolViolation("invalid Bind message")
    return head[:portal_end], head[portal_end + 1 : end]


def _execute_portal(body: memoryview) -> bytes:
    raw = bytes(body)
    end = raw.find(b"\x00")
    if end < 0 or len(raw) != end + 5:
        raise ProtocolViolation("invalid Execute message")
    return raw[:end]
