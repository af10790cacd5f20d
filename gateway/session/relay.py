"""Steady-state relay of one established session, in both directions.

Once startup and authentication are done, every byte between client and server goes
through a :class:`Relay`. It frames both directions, looks only at the messages that
matter (statements for the hooks, ReadyForQuery for the transaction state, COPY
boundaries, ParameterStatus) and forwards everything else as the same bytes, in runs,
with one write per read.

It tracks what the supervisor needs to stop gracefully: a session is *idle* when every
request the client sent has been answered with ReadyForQuery and no transaction is open.

Sans-I/O: the relay writes through two objects with ``write``/``writelines`` (asyncio
transports in production, lists in tests) and never touches sockets itself.
"""

from __future__ import annotations

from typing import Protocol

from gateway.session.hooks import SessionHooks
from gateway.wire.errors import ProtocolViolation
from gateway.wire.framer import DEFAULT_MAX_MESSAGE_SIZE, Chunk, Framer, watch_table
from gateway.wire.states import (
    BACKEND_TYPES,
    FRONTEND_TYPES,
    TX_IDLE,
    TX_STATUSES,
    Phase,
    next_phase,
)

_Q, _P, _S, _F, _X = (ord(c) for c in "QPSFX")
_Z, _PARAM_STATUS = ord("Z"), ord("S")


def _invalid_types(valid: bytes) -> bytes:
    return bytes(t for t in range(256) if t not in valid)


# Frontend: statements (for the hooks), Sync and FunctionCall (each gets one
# ReadyForQuery, so they count towards what is in flight), Terminate, and every type that
# is not valid after startup (so that the handler can refuse it).
_FRONTEND_WATCH = watch_table(b"QPSFX" + _invalid_types(FRONTEND_TYPES))
# Backend: ReadyForQuery, the COPY phase changes, ParameterStatus, and invalid types.
_BACKEND_WATCH = watch_table(b"ZGHWcS" + _invalid_types(BACKEND_TYPES))


class Writer(Protocol):
    def write(self, data: Chunk, /) -> None: ...

    def writelines(self, data: list[Chunk], /) -> None: ...


class Relay:
    """Both directions of one session after ReadyForQuery was first sent to the client."""

    __slots__ = (
        "_backend",
        "_frontend",
        "_hooks",
        "client",
        "client_terminated",
        "parameters",
        "pending",
        "phase",
        "server",
        "tx_status",
    )

    def __init__(
        self,
        client: Writer,
        server: Writer,
        hooks: SessionHooks | None = None,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        tx_status: int = TX_IDLE,
    ) -> None:
        self.client = client
        self.server = server
        self._hooks = hooks if hooks is not None else SessionHooks()
        # Copies of the shared tables, so that later work (policy) can watch more types
        # in one session without touching the others.
        self._frontend = Framer(bytearray(_FRONTEND_WATCH), max_message_size)
        # The server is trusted to respect its own limit, not ours.
        self._backend = Framer(bytearray(_BACKEND_WATCH), DEFAULT_MAX_MESSAGE_SIZE)
        #: Requests (Query, Sync, FunctionCall) sent upstream and not yet answered.
        self.pending = 0
        self.tx_status = tx_status
        self.phase = Phase.READY
        self.client_terminated = False
        #: ParameterStatus values as last reported by the server.
        self.parameters: dict[str, str] = {}

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

    def client_data(self, data: bytes) -> None:
        """Bytes from the client. Raises ProtocolViolation on malformed input."""
        out = self._frontend.feed(data, self._on_frontend)
        if out:
            if len(out) == 1:
                self.server.write(out[0])
            else:
                self.server.writelines(out)

    def _on_frontend(self, msg_type: int, body: memoryview) -> bytes | None:
        hooks = self._hooks
        if msg_type == _Q:
            if hooks.active:
                refusal = hooks.on_query(body)
                if refusal is not None:
                    self.client.write(refusal)
                    return b""
            self.pending += 1
            return None
        if msg_type == _S:
            self.pending += 1
            return None
        if msg_type == _P:
            if hooks.active:
                refusal = hooks.on_parse(body)
                if refusal is not None:
                    self.client.write(refusal)
                    return b""
            return None
        if msg_type == _F:
            if hooks.active:
                refusal = hooks.on_function_call(body)
                if refusal is not None:
                    self.client.write(refusal)
                    return b""
            self.pending += 1
            return None
        if msg_type == _X:
            self.client_terminated = True
            return None
        raise ProtocolViolation(f"invalid frontend message type {msg_type}")

    # -- server -> client ---------------------------------------------------------------

    def server_data(self, data: bytes) -> None:
        """Bytes from the server. Raises ProtocolViolation on malformed input."""
        out = self._backend.feed(data, self._on_backend)
        if out:
            if len(out) == 1:
                self.client.write(out[0])
            else:
                self.client.writelines(out)

    def _on_backend(self, msg_type: int, body: memoryview) -> bytes | None:
        if msg_type == _Z:
            if len(body) != 1 or body[0] not in TX_STATUSES:
                raise ProtocolViolation("invalid ReadyForQuery message from server")
            self.tx_status = body[0]
            if self.pending:
                self.pending -= 1
            self.phase = Phase.READY
            if self._hooks.active:
                self._hooks.on_ready(self.tx_status)
            return None
        if msg_type == _PARAM_STATUS:
            self._record_parameter(body)
            return None
        if msg_type in BACKEND_TYPES:
            self.phase = next_phase(self.phase, msg_type)
            return None
        raise ProtocolViolation(f"invalid backend message type {msg_type}")

    def _record_parameter(self, body: memoryview) -> None:
        raw = bytes(body)
        parts = raw.split(b"\x00")
        if len(parts) != 3 or parts[2] != b"":
            raise ProtocolViolation("invalid ParameterStatus message from server")
        try:
            self.parameters[parts[0].decode()] = parts[1].decode()
        except UnicodeDecodeError as exc:
            raise ProtocolViolation("invalid ParameterStatus message from server") from exc

    def close(self, reason: str) -> None:
        self._hooks.on_close(reason)
