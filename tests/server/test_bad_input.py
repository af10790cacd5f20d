"""Malformed input gets a precise ErrorResponse and closes only the offending connection."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest

from tests.support import (
    CLIENT_SECRET,
    Gateway,
    RawClient,
    error_fields,
    message,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gw(start_gateway: Callable[..., Gateway]) -> Gateway:
    # One worker, so that every connection below shares the worker of the bystander.
    return start_gateway(
        workers=1,
        server_extra="startup_timeout = 1.5\nmax_message_size = 1048576",
    )


@pytest.fixture
def bystander(gw: Gateway) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(gw.dsn(sslmode="disable"), autocommit=True)
    conn.execute("select 1")
    yield conn
    # The same worker kept serving it through whatever the test did.
    assert conn.execute("select 'still here'").fetchone() == ("still here",)
    conn.close()


def expect_error(client: RawClient, sqlstate: str, fragment: str) -> dict[str, str]:
    msg = client.read_message()
    assert msg is not None, "connection closed without an ErrorResponse"
    assert msg[0] == b"E", msg
    fields = error_fields(msg[1])
    assert fields["C"] == sqlstate, fields
    assert fragment in fields["M"], fields
    assert fields["S"] == "FATAL"
    assert client.closed()
    return fields


def test_startup_length_too_small(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    c.send(b"\x00\x00\x00\x03\x00\x00")
    expect_error(c, "08P01", "invalid length of startup packet")


def test_startup_length_too_large(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    c.send((20000).to_bytes(4, "big") + b"\x00\x03\x00\x00")
    expect_error(c, "08P01", "invalid length of startup packet")


def test_truncated_startup_times_out(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    c.send(b"\x00\x00\x00\x40\x00\x03")
    started = time.monotonic()
    expect_error(c, "08006", "timeout expired during connection startup")
    assert time.monotonic() - started < 10


def test_silent_client_times_out(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    expect_error(c, "08006", "timeout")


def test_unsupported_protocol_version(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    body = b"\x00\x04\x00\x00user\x00job\x00\x00"
    c.send((len(body) + 4).to_bytes(4, "big") + body)
    expect_error(c, "0A000", "unsupported frontend protocol")


def test_non_utf8_startup_parameter(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    body = b"\x00\x03\x00\x00user\x00j\xffb\x00\x00"
    c.send((len(body) + 4).to_bytes(4, "big") + body)
    expect_error(c, "08P01", "")


def test_missing_user(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    body = b"\x00\x03\x00\x00database\x00app\x00\x00"
    c.send((len(body) + 4).to_bytes(4, "big") + body)
    expect_error(c, "28000", "no PostgreSQL user name")


def test_second_startup_message_during_authentication(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    c.startup()
    assert c.read_message() == (b"R", b"\x00\x00\x00\x03")
    c.startup()
    expect_error(c, "08P01", "expected password response")


def test_non_utf8_password(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    c.startup()
    assert c.read_message() == (b"R", b"\x00\x00\x00\x03")
    c.send(message(b"p", b"\xff\xfe\x00"))
    expect_error(c, "22021", "invalid byte sequence")


def test_wrong_secret(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    c.startup()
    assert c.read_message() == (b"R", b"\x00\x00\x00\x03")
    c.send(message(b"p", b"not-the-secret\x00"))
    expect_error(c, "28P01", 'password authentication failed for user "job"')


def test_forbidden_startup_parameter(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    c.startup(role="postgres")
    expect_error(c, "42501", 'startup parameter "role" is not allowed')


def test_replication_connection_refused(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    c.startup(replication="database")
    expect_error(c, "0A000", "replication connections are not supported")


def test_unknown_message_type_after_login(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    assert c.login(CLIENT_SECRET)[-1] == (b"Z", b"I")
    c.send(message(b"x", b"whatever"))
    expect_error(c, "08P01", "invalid frontend message type 120")


def test_malformed_length_after_login(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    c.login(CLIENT_SECRET)
    c.send(b"Q\x00\x00\x00\x02")
    expect_error(c, "08P01", "invalid message length")


def test_oversized_message(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    c.login(CLIENT_SECRET)
    c.send(b"Q" + (2 * 1024 * 1024).to_bytes(4, "big") + b"select ")
    expect_error(c, "08P01", "exceeds the limit of 1048576 bytes")


def test_bytes_after_ssl_request_are_refused(gw: Gateway, bystander: object) -> None:
    c = RawClient(gw.port)
    # An SSLRequest followed by a plaintext StartupMessage in the same packet: the
    # plaintext must not be treated as if it arrived inside TLS.
    ssl_request = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    body = b"\x00\x03\x00\x00user\x00job\x00\x00"
    c.send(ssl_request + (len(body) + 4).to_bytes(4, "big") + body)
    expect_error(c, "08P01", "unencrypted data after SSL request")


def test_gssenc_request_is_declined_then_startup_continues(gw: Gateway) -> None:
    c = RawClient(gw.port)
    c.send(b"\x00\x00\x00\x08\x04\xd2\x16\x30")
    assert c.sock.recv(1) == b"N"
    assert c.login(CLIENT_SECRET)[-1] == (b"Z", b"I")
    c.send(message(b"Q", b"select 42\x00"))
    reply = c.read_until(b"Z")
    assert any(t == b"D" and b"42" in body for t, body in reply)
    c.send(message(b"X"))
    assert c.closed()


def test_plaintext_refused_when_tls_required(
    start_gateway: Callable[..., Gateway],
) -> None:
    strict = start_gateway(workers=1, tls_extra="allow_plaintext_loopback = false")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(strict.dsn(sslmode="disable"))
    assert "requires an encrypted connection" in str(info.value)
    with psycopg.connect(strict.dsn(sslmode="require")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
