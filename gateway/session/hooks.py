"""The seam through which policy, masking and audit see a session's traffic.

A :class:`SessionHooks` object is consulted by the relay for the few messages that carry
meaning for those layers. The default implementation decides nothing and records
nothing, and the relay skips calling it at all on the hot path when ``active`` is false,
so pass-through costs no more than framing.
"""

from __future__ import annotations


class SessionHooks:
    """No-op hooks. Subclasses override what they need and set ``active = True``."""

    #: When false the relay does not call the statement hooks (pure pass-through).
    active: bool = False

    def on_query(self, body: memoryview) -> bytes | None:
        """A simple-protocol Query. Return ``None`` to forward it, or the bytes to send
        the client instead (an ErrorResponse and ReadyForQuery) to refuse it."""
        return None

    def on_parse(self, body: memoryview) -> bytes | None:
        """An extended-protocol Parse. Same contract as :meth:`on_query`."""
        return None

    def on_function_call(self, body: memoryview) -> bytes | None:
        """A protocol-level FunctionCall. Same contract as :meth:`on_query`."""
        return None

    def on_ready(self, status: int) -> None:
        """ReadyForQuery from the server with its transaction status byte."""

    def on_close(self, reason: str) -> None:
        """The session ended (client Terminate, disconnect, server close or error)."""
