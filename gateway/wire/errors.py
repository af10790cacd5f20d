"""Protocol errors raised by the sans-I/O wire layer.

One family, as in h11: code inside ``gateway.wire`` raises :class:`ProtocolViolation`
(or a subclass) when bytes from a peer break the PostgreSQL v3 protocol. Each error
carries the SQLSTATE the gateway should report to the peer, so the I/O layer can turn
it into an ErrorResponse without knowing why it happened. This module knows nothing
about sockets or sessions.
"""

from __future__ import annotations

PROTOCOL_VIOLATION = "08P01"
FEATURE_NOT_SUPPORTED = "0A000"
INVALID_AUTHORIZATION = "28000"
INVALID_PASSWORD = "28P01"
CHARACTER_NOT_IN_REPERTOIRE = "22021"
PROGRAM_LIMIT_EXCEEDED = "54000"


class ProtocolViolation(Exception):
    """A peer sent bytes that break the protocol; the connection cannot continue.

    ``sqlstate`` is what the gateway reports in the ErrorResponse it sends before
    closing that one connection.
    """

    def __init__(self, message: str, sqlstate: str = PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


class MessageTooLarge(ProtocolViolation):
    """A length prefix exceeds the configured maximum message size."""

    def __init__(self, msg_type: str, length: int, limit: int) -> None:
        super().__init__(
            f"invalid message length: message {msg_type!s} of {length} bytes exceeds "
            f"the limit of {limit} bytes"
        )
        self.length = length
        self.limit = limit
