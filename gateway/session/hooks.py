"""The seam through which policy, masking and audit see a session's traffic.

A :class:`SessionHooks` object is consulted by the relay for the few messages that carry
meaning for those layers. The default implementation decides nothing and records
nothing, and the relay skips calling it at all on the hot path when ``active`` is false,
so pass-through costs no more than framing.

Hooks decide; the relay carries the decision out. A statement hook returns ``None`` to
let the message through or a :class:`Refusal`, which the relay turns into an error the
client sees in exactly the place PostgreSQL would have put it (see
:mod:`gateway.session.relay` for how).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.wire.framer import Framer
from gateway.wire.scan import Scanner

#: A header walk with gateway.wire.scan's contract.
Scan = Scanner


class RelayState(Protocol):
    """What hooks may read of their relay."""

    @property
    def next_request(self) -> int: ...

    @property
    def current_batch(self) -> int: ...

    @property
    def bytes_in(self) -> int: ...

    @property
    def bytes_out(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a statement is not forwarded: the ErrorResponse fields the client receives."""

    sqlstate: str
    message: str
    detail: str | None = None
    hint: str | None = None
    position: int | None = None  # 1-based character index into the statement


class SessionHooks:
    """No-op hooks. Subclasses override what they need and set ``active = True``."""

    #: When false the relay does not call the statement hooks (pure pass-through).
    active: bool = False
    #: When true the relay also reports Bind, Execute and how the server answered
    #: (CommandComplete, EmptyQueryResponse, PortalSuspended, ErrorResponse,
    #: ReadyForQuery): what the audit trail needs to record each statement's outcome.
    tracks_results: bool = False

    def attach(self, relay: RelayState) -> None:
        """Called once by the relay that will consult these hooks."""

    def fast_scans(
        self, relay: RelayState, frontend: Framer, backend: Framer,
        refused: dict[bytes, Refusal],
    ) -> tuple[Scan, Scan] | None:
        """Header walks for the client and server framers that handle some watched
        messages inline, with the same effect as these hooks' methods (``None``: the
        framers' own). ``refused`` is the relay's map of refused statement names."""
        return None

    def detach_fast(self) -> None:
        """The relay is closing: drop what :meth:`fast_scans` set up."""

    def on_query(self, sql: bytes) -> Refusal | None:
        """A simple-protocol Query; ``sql`` is its text (bytes before the terminator)."""
        return None

    def on_parse(self, name: bytes, sql: bytes) -> Refusal | None:
        """An extended-protocol Parse of statement ``name`` (``b""``: the unnamed one)."""
        return None

    def on_function_call(self, body: memoryview) -> Refusal | None:
        """A protocol-level FunctionCall message."""
        return None

    def on_parameter(self, name: str, value: str) -> str | None:
        """ParameterStatus from the server. Return a message to end the session with it
        (the session can no longer be inspected faithfully), ``None`` to carry on."""
        return None

    def on_bind(self, portal: bytes, statement: bytes, body: memoryview) -> Refusal | None:
        """A Bind of a statement whose Parse was not refused (``tracks_results``); a
        refusal refuses it (the audit log cannot take another statement, say)."""
        return None

    def on_execute(self, portal: bytes) -> None:
        """An Execute (``tracks_results``)."""

    def on_close_message(self, kind: bytes, name: bytes) -> None:
        """A Close of a prepared statement (``b"S"``) or portal (``b"P"``)
        (``tracks_results``)."""

    def on_complete(self, tag: bytes) -> None:
        """CommandComplete (its tag), EmptyQueryResponse (``b""``) or PortalSuspended
        (``b"SUSPENDED"``) from the server (``tracks_results``)."""

    def on_error(self, sqlstate: str, message: str, refusal: bool) -> None:
        """An ErrorResponse from the server (``tracks_results``); ``refusal`` when it is
        the answer to a refused message, rewritten."""

    def on_ready(self, status: int) -> None:
        """ReadyForQuery from the server with its transaction status byte."""

    def on_close(self, reason: str) -> None:
        """The session ended (client Terminate, disconnect, server close or error)."""
