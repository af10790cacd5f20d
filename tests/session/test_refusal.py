"""How the relay carries out a refusal, without sockets: what goes upstream in the refused
message's place, and how the server's answer to it is rewritten for the client.

The server's side is played by hand here (its replies are what PostgreSQL sends for the
replacement messages); tests/e2e/test_policy.py shows the same against a real server.
"""

from __future__ import annotations

import re
import struct

from gateway.policy.baseline import BASELINE
from gateway.policy.cache import DecisionCache
from gateway.policy.engine import Policy
from gateway.session.hooks import Refusal, SessionHooks
from gateway.session.policy import PolicyHooks
from gateway.session.relay import Relay
from gateway.wire.backend import error_response
from tests.session.test_relay import Sink, msg


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def parse(name: str, sql: str) -> bytes:
    return msg(b"P", cstr(name) + cstr(sql) + b"\x00\x00")


def bind(portal: str, statement: str) -> bytes:
    return msg(b"B", cstr(portal) + cstr(statement) + b"\x00\x00" * 3)


SYNC = msg(b"S")
EXECUTE = msg(b"E", b"\x00\x00\x00\x00\x00")


class RefuseDrops(SessionHooks):
    active = True

    def on_query(self, sql: bytes) -> Refusal | None:
        return Refusal("42501", "drops need approval") if b"drop" in sql.lower() else None

    def on_parse(self, name: bytes, sql: bytes) -> Refusal | None:
        return self.on_query(sql)

    def on_function_call(self, body: memoryview) -> Refusal | None:
        return Refusal("42501", "no function calls")


def make(hooks: SessionHooks) -> tuple[Relay, Sink, Sink]:
    client, server = Sink(), Sink()
    return Relay(client, server, hooks), client, server


def replacement_name(sent: bytes) -> str:
    found = re.search(rb"pgwarden_refused_[0-9a-f]+", sent)
    assert found is not None, sent
    return found.group().decode()


def server_error_for(name: str) -> bytes:
    # What PostgreSQL answers to EXECUTE / Describe of a statement that does not exist.
    return error_response("26000", f'prepared statement "{name}" does not exist')


def fields(err: bytes) -> dict[str, str]:
    assert err[:1] == b"E"
    body = err[5:-1]
    return {p[:1].decode(): p[1:].decode() for p in body.split(b"\x00") if p}


def test_refused_query_is_replaced_and_its_error_rewritten() -> None:
    relay, client, server = make(RefuseDrops())
    relay.client_data(msg(b"Q", b"DROP TABLE accounts\x00"))
    sent = server.bytes()
    assert b"accounts" not in sent
    name = replacement_name(sent)
    assert sent == msg(b"Q", cstr(f"EXECUTE {name}"))
    relay.server_data(server_error_for(name) + msg(b"Z", b"I"))
    out = client.bytes()
    err_len = struct.unpack("!I", out[1:5])[0] + 1
    assert fields(out[:err_len]) == {
        "S": "ERROR", "V": "ERROR", "C": "42501", "M": "drops need approval",
    }
    assert out[err_len:] == msg(b"Z", b"I")
    assert relay.idle and relay.refusals_outstanding == 0


def test_names_are_unpredictable() -> None:
    relay, _, server = make(RefuseDrops())
    relay.client_data(msg(b"Q", b"drop table a\x00") + msg(b"Q", b"drop table b\x00"))
    first, second = re.findall(rb"pgwarden_refused_[0-9a-f]+", server.bytes())
    assert first != second and len(first) >= len("pgwarden_refused_") + 24


def test_other_errors_pass_unchanged_even_while_refusals_are_outstanding() -> None:
    relay, client, server = make(RefuseDrops())
    relay.client_data(msg(b"Q", b"select 1/0\x00") + msg(b"Q", b"drop table t\x00"))
    name = replacement_name(server.bytes())
    div = error_response("22012", "division by zero")
    relay.server_data(div + msg(b"Z", b"I"))
    assert client.bytes() == div + msg(b"Z", b"I")
    # A client cannot get its own 26000 rewritten: the name is in no other error.
    forged = error_response("26000", 'prepared statement "pgwarden_refused_00" does not exist')
    relay.server_data(forged)
    assert client.bytes().endswith(forged)
    client.chunks.clear()
    relay.server_data(server_error_for(name) + msg(b"Z", b"I"))
    assert fields(client.bytes()[:-6])["C"] == "42501"


def test_refusal_in_failed_transaction_gets_the_servers_25p02() -> None:
    relay, client, _ = make(RefuseDrops())
    relay.client_data(msg(b"Q", b"drop table t\x00"))
    aborted = error_response("25P02", "current transaction is aborted, commands ignored "
                             "until end of transaction block")
    relay.server_data(aborted + msg(b"Z", b"E"))
    # PostgreSQL would have said the same for the original statement.
    assert client.bytes() == aborted + msg(b"Z", b"E")
    assert relay.refusals_outstanding == 1  # dropped at the next error
    relay.client_data(msg(b"Q", b"rollback\x00"))
    relay.server_data(msg(b"C", b"ROLLBACK\x00") + msg(b"Z", b"I"))
    relay.client_data(msg(b"Q", b"select 1/0\x00"))
    relay.server_data(error_response("22012", "division by zero") + msg(b"Z", b"I"))
    assert relay.refusals_outstanding == 0


def test_refused_parse_becomes_describe_and_later_bind_is_refused_too() -> None:
    relay, client, server = make(RefuseDrops())
    relay.client_data(parse("s1", "drop table t") + bind("", "s1") + EXECUTE + SYNC)
    sent = server.bytes()
    name = replacement_name(sent)
    describe = msg(b"D", b"S" + cstr(name))
    assert sent.startswith(describe) and sent.endswith(EXECUTE + SYNC)
    # The Bind of the refused statement is refused as well (the server would skip it
    # anyway, being in the error state until Sync).
    middle = sent[len(describe):-len(EXECUTE + SYNC)]
    assert middle.startswith(b"D") and b"pgwarden_refused_" in middle
    relay.server_data(server_error_for(name) + msg(b"Z", b"I"))
    assert fields(client.bytes()[:-6])["C"] == "42501"
    # In a later batch the statement name is still refused, not left to the server.
    server.chunks.clear()
    relay.client_data(bind("p", "s1") + EXECUTE + SYNC)
    again = server.bytes()
    assert again.startswith(b"D") and b"pgwarden_refused_" in again
    assert bind("p", "s1") not in again and again.endswith(EXECUTE + SYNC)
    # Parse of the same name, allowed this time, clears it.
    server.chunks.clear()
    relay.client_data(parse("s1", "select 1") + bind("", "s1") + SYNC)
    assert server.bytes() == parse("s1", "select 1") + bind("", "s1") + SYNC


def test_function_call_refused_as_a_query() -> None:
    relay, _, server = make(RefuseDrops())
    relay.client_data(msg(b"F", b"\x00\x00\x03\xb8" + b"\x00\x00" * 3 + b"\x00\x00"))
    sent = server.bytes()
    assert sent.startswith(b"Q") and b"EXECUTE pgwarden_refused_" in sent
    assert relay.pending == 1


def test_policy_hooks_refuse_invalid_utf8_and_unsafe_sessions() -> None:
    cache = DecisionCache(Policy(BASELINE))
    hooks = PolicyHooks(cache, "r", "static:job", "app", {"client_encoding": "UTF8"})
    assert hooks.on_query(b"select 1") is None
    bad = hooks.on_query(b"select '\xff'")
    assert bad is not None and bad.sqlstate == "22021"
    # The session switched to an encoding pgwarden cannot parse: it must end.
    assert hooks.on_parameter("client_encoding", "SJIS") is not None
    refused = hooks.on_query(b"select 1")
    assert refused is not None and refused.sqlstate == "0A000"
    off = PolicyHooks(cache, "r", "static:job", "app", {"standard_conforming_strings": "off"})
    refused = off.on_query(b"select 1")
    assert refused is not None and "standard_conforming_strings" in refused.message


def test_policy_reload_takes_effect_for_open_sessions() -> None:
    cache = DecisionCache(Policy(BASELINE))
    hooks = PolicyHooks(cache, "r", "static:job", "app", {})
    assert hooks.on_query(b"drop table t") is not None
    cache.invalidate(Policy(()))
    assert hooks.on_query(b"drop table t") is None


def test_large_object_function_calls_are_decided_by_function() -> None:
    cache = DecisionCache(Policy(BASELINE))
    hooks = PolicyHooks(cache, "r", "static:job", "app", {})
    lo_open = memoryview(struct.pack("!I", 952) + b"\x00" * 6)
    lo_import = memoryview(struct.pack("!I", 764) + b"\x00" * 6)
    unknown = memoryview(struct.pack("!I", 16400) + b"\x00" * 6)
    assert hooks.on_function_call(lo_open) is None
    refused = hooks.on_function_call(lo_import)
    assert refused is not None and "server file" in refused.message
    refused = hooks.on_function_call(unknown)
    assert refused is not None and "FunctionCall" in refused.message
