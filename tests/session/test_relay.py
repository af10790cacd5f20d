"""Relay: byte-exact forwarding in both directions, idle tracking, hooks, bad input."""

from __future__ import annotations

import struct

import pytest

from gateway.session.hooks import Refusal, SessionHooks
from gateway.session.relay import Relay
from gateway.wire.errors import ProtocolViolation
from gateway.wire.framer import Chunk


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


class Sink:
    def __init__(self) -> None:
        self.chunks: list[Chunk] = []

    def write(self, data: Chunk) -> None:
        self.chunks.append(data)

    def writelines(self, data: list[Chunk]) -> None:
        self.chunks.extend(data)

    def bytes(self) -> bytes:
        return b"".join(bytes(c) for c in self.chunks)


def make(hooks: SessionHooks | None = None) -> tuple[Relay, Sink, Sink]:
    client, server = Sink(), Sink()
    return Relay(client, server, hooks), client, server


def test_simple_query_round_trip_is_byte_exact_and_tracks_idle() -> None:
    relay, client, server = make()
    q = msg(b"Q", b"select 1\x00")
    relay.client_data(q)
    assert server.chunks == [q] and server.chunks[0] is q
    assert not relay.idle and relay.pending == 1
    reply = (
        msg(b"T", b"\x00\x01?column?\x00" + b"\x00" * 6 + b"\x00\x00\x00\x17\x00\x04"
            + b"\xff\xff\xff\xff\x00\x00")
        + msg(b"D", b"\x00\x01\x00\x00\x00\x011")
        + msg(b"C", b"SELECT 1\x00")
        + msg(b"Z", b"I")
    )
    relay.server_data(reply)
    assert client.bytes() == reply
    assert relay.idle


def test_transaction_keeps_session_busy_until_commit() -> None:
    relay, _, _ = make()
    relay.client_data(msg(b"Q", b"begin\x00"))
    relay.server_data(msg(b"C", b"BEGIN\x00") + msg(b"Z", b"T"))
    assert relay.pending == 0 and not relay.idle
    relay.client_data(msg(b"Q", b"commit\x00"))
    relay.server_data(msg(b"C", b"COMMIT\x00") + msg(b"Z", b"I"))
    assert relay.idle


def test_pipelined_extended_protocol_counts_syncs() -> None:
    relay, _, server = make()
    batch = (
        msg(b"P", b"\x00select $1\x00\x00\x00")
        + msg(b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x011\x00\x00")
        + msg(b"E", b"\x00\x00\x00\x00\x00")
        + msg(b"S")
    ) * 3
    relay.client_data(batch)
    assert server.bytes() == batch
    assert relay.pending == 3
    for _ in range(3):
        relay.server_data(msg(b"1") + msg(b"2") + msg(b"C", b"SELECT 1\x00") + msg(b"Z", b"I"))
    assert relay.idle


def test_parameter_status_is_recorded() -> None:
    relay, client, _ = make()
    relay.server_data(msg(b"S", b"client_encoding\x00LATIN1\x00"))
    assert relay.parameters == {"client_encoding": "LATIN1"}
    assert client.bytes() == msg(b"S", b"client_encoding\x00LATIN1\x00")


def test_copy_phases_follow_the_table() -> None:
    relay, _, _ = make()
    relay.client_data(msg(b"Q", b"copy t to stdout\x00"))
    relay.server_data(msg(b"H", b"\x00\x00\x00"))
    assert relay.phase.name == "COPY_OUT"
    relay.server_data(msg(b"d", b"1\n") + msg(b"c"))
    assert relay.phase.name == "BUSY"
    relay.server_data(msg(b"C", b"COPY 1\x00") + msg(b"Z", b"I"))
    assert relay.phase.name == "READY" and relay.idle


@pytest.mark.parametrize("bad", [b"p", b"x", b"\x00", b"Z", b"T"])
def test_invalid_frontend_types_are_refused(bad: bytes) -> None:
    relay, _, server = make()
    with pytest.raises(ProtocolViolation) as info:
        relay.client_data(msg(bad, b"junk"))
    assert info.value.sqlstate == "08P01"
    assert server.chunks == []


def test_invalid_ready_for_query_from_server() -> None:
    relay, _, _ = make()
    with pytest.raises(ProtocolViolation):
        relay.server_data(msg(b"Z", b"Q"))


class RefuseDrop(SessionHooks):
    active = True

    def on_query(self, sql: bytes) -> Refusal | None:
        return Refusal("42501", "no drops") if b"drop" in sql else None


def test_hooks_can_refuse_a_statement() -> None:
    relay, client, server = make(RefuseDrop())
    ok = msg(b"Q", b"select 1\x00")
    relay.client_data(msg(b"Q", b"drop table x\x00") + ok)
    sent = server.bytes()
    # The refused Query is replaced by one the server will answer with an error.
    assert sent.endswith(ok) and b"drop" not in sent
    assert sent.startswith(b"Q") and b"EXECUTE pgwarden_refused_" in sent
    assert client.bytes() == b""
    assert relay.pending == 2
