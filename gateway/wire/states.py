"""Per-direction protocol states as tables.

The tables say which message types each side may send after startup and how the
server's messages move a session between its phases (ready, busy, COPY in/out/both).
The startup and authentication phases are untyped or strictly request/response and are
handled by the code that runs them; this module covers everything after
``ReadyForQuery`` was first seen. Like h11's ``EVENT_TRIGGERED_TRANSITIONS``, the logic
is data so that it can be read at a glance and tested exhaustively.

Pipelining means the client may already be several messages ahead of the server, so the
frontend table is a per-type allowlist, not a per-phase one: PostgreSQL itself rejects a
message that arrives in the wrong phase, and the gateway must not second-guess it.
"""

from __future__ import annotations

import enum

#: Message types a client may send once the session is established.
#: Q Query, P Parse, B Bind, D Describe, E Execute, S Sync, H Flush, C Close,
#: F FunctionCall, d CopyData, c CopyDone, f CopyFail, X Terminate.
FRONTEND_TYPES = b"QPBDESHCFdcfX"

#: Message types a server may send once the session is established.
BACKEND_TYPES = b"123ACDEGHINSTVWZcdnstv"


class Phase(enum.IntEnum):
    """Where the server's side of a session is, as seen from its messages."""

    READY = 0  # after ReadyForQuery; nothing in flight from the server's view
    BUSY = 1  # executing a request
    COPY_IN = 2  # CopyInResponse seen: the client streams CopyData
    COPY_OUT = 3  # CopyOutResponse seen: the server streams CopyData
    COPY_BOTH = 4  # CopyBothResponse seen (replication-style streaming)


#: (phase, backend message type) -> next phase. Types not listed leave the phase as is.
BACKEND_TRANSITIONS: dict[tuple[Phase, int], Phase] = {}
for _phase in Phase:
    BACKEND_TRANSITIONS[(_phase, ord("Z"))] = Phase.READY
for _phase in (Phase.READY, Phase.BUSY):
    BACKEND_TRANSITIONS[(_phase, ord("G"))] = Phase.COPY_IN
    BACKEND_TRANSITIONS[(_phase, ord("H"))] = Phase.COPY_OUT
    BACKEND_TRANSITIONS[(_phase, ord("W"))] = Phase.COPY_BOTH
    for _t in b"123ACDEINSTVnst":
        BACKEND_TRANSITIONS[(_phase, _t)] = Phase.BUSY
# The end of a COPY: the server's CopyDone (out), or CommandComplete/ErrorResponse (in).
BACKEND_TRANSITIONS[(Phase.COPY_OUT, ord("c"))] = Phase.BUSY
BACKEND_TRANSITIONS[(Phase.COPY_OUT, ord("E"))] = Phase.BUSY
BACKEND_TRANSITIONS[(Phase.COPY_IN, ord("C"))] = Phase.BUSY
BACKEND_TRANSITIONS[(Phase.COPY_IN, ord("E"))] = Phase.BUSY
BACKEND_TRANSITIONS[(Phase.COPY_BOTH, ord("c"))] = Phase.BUSY
BACKEND_TRANSITIONS[(Phase.COPY_BOTH, ord("E"))] = Phase.BUSY
del _phase, _t


def next_phase(phase: Phase, msg_type: int) -> Phase:
    """The phase after the server sent *msg_type* in *phase*."""
    return BACKEND_TRANSITIONS.get((phase, msg_type), phase)


#: Transaction status byte of ReadyForQuery.
TX_IDLE = ord("I")
TX_IN_BLOCK = ord("T")
TX_FAILED = ord("E")
TX_STATUSES = frozenset((TX_IDLE, TX_IN_BLOCK, TX_FAILED))
