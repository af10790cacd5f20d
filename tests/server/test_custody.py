"""Custody of secrets: the upstream password never reaches a client or the log, and a
client's secret never reaches the log, whatever happens during a session.

Every byte clients receive and every line pgwarden logs (at debug level) is captured
across complete sessions, failed logins, failed queries and upstream errors.
"""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.devcluster import PgCluster
from tests.support import (
    CLIENT_SECRET,
    CLIENT_USER,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    Gateway,
    RawClient,
    error_fields,
    message,
    spawn_gateway,
)

pytestmark = pytest.mark.e2e

WRONG_CLIENT_SECRET = "client-secret-43-typo"
OTHER_UPSTREAM_PASSWORD = "upstream-Other-b55e21"


class RecordingClient(RawClient):
    """A RawClient that keeps every byte the server sent it."""

    def __init__(self, port: int, transcript: bytearray, sqlstates: list[str]) -> None:
        super().__init__(port)
        self.transcript = transcript
        self.sqlstates = sqlstates

    def read_message(self) -> tuple[bytes, bytes] | None:
        msg = super().read_message()
        if msg is not None and msg[0] == b"E":
            self.sqlstates.append(error_fields(msg[1])["C"])
        return msg

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.transcript += chunk
            self.buf += chunk
        return True

    def drain(self) -> None:
        """Read (and record) until the server closes the connection."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return
            if not chunk:
                return
            self.transcript += chunk


@dataclass
class Capture:
    received: bytearray = field(default_factory=bytearray)
    logs: list[str] = field(default_factory=list)
    sqlstates: list[str] = field(default_factory=list)

    def client(self, gw: Gateway) -> RecordingClient:
        return RecordingClient(gw.port, self.received, self.sqlstates)

    def expect_error(self, client: RecordingClient) -> dict[str, str]:
        while True:
            msg = client.read_message()
            assert msg is not None, "connection closed without an ErrorResponse"
            if msg[0] == b"E":
                return error_fields(msg[1])


def md5_equivalent(password: str, user: str) -> bytes:
    """What md5 authentication sends is a password equivalent: it must not leak either."""
    return hashlib.md5(password.encode() + user.encode()).hexdigest().encode()


def query(client: RecordingClient, sql: str) -> list[tuple[bytes, bytes]]:
    client.send(message(b"Q", sql.encode() + b"\x00"))
    return client.read_until(b"Z")


def full_session(cap: Capture, gw: Gateway, pg: PgCluster) -> None:
    c = cap.client(gw)
    assert c.login()[-1] == (b"Z", b"I")
    reply = query(c, "select current_user, session_user, current_database()")
    assert any(t == b"D" and UPSTREAM_USER.encode() in body for t, body in reply)
    query(c, "show password_encryption; select setting from pg_settings where name = 'port'")
    query(c, "do $$ begin raise notice 'notice %', 1; end $$")
    # Extended protocol with a parameter, and COPY out.
    c.send(
        message(b"P", b"s1\x00select $1::text || current_user\x00\x00\x00")
        + message(b"B", b"\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x03abc\x00\x00")
        + message(b"D", b"P\x00")
        + message(b"E", b"\x00\x00\x00\x00\x00")
        + message(b"S")
    )
    reply = c.read_until(b"Z")
    assert any(t == b"D" and b"abc" + UPSTREAM_USER.encode() in body for t, body in reply)
    reply = query(c, "copy (select g from generate_series(1, 100) g) to stdout")
    assert sum(t == b"d" for t, _ in reply) == 100
    # A failing query, a failing transaction, then recovery.
    query(c, "select 1/0")
    query(c, "begin; select nonexistent_column; commit")
    query(c, "rollback")
    c.send(message(b"X"))
    c.drain()


def failing_logins(cap: Capture, gw: Gateway) -> None:
    c = cap.client(gw)
    c.startup()
    assert c.read_message() == (b"R", b"\x00\x00\x00\x03")
    c.send(message(b"p", WRONG_CLIENT_SECRET.encode() + b"\x00"))
    assert cap.expect_error(c)["C"] == "28P01"
    c.drain()

    c = cap.client(gw)
    c.startup(user="nobody")
    assert c.read_message() == (b"R", b"\x00\x00\x00\x03")
    c.send(message(b"p", CLIENT_SECRET.encode() + b"\x00"))
    assert cap.expect_error(c)["C"] == "28P01"
    c.drain()

    c = cap.client(gw)
    c.startup(role="postgres")
    assert cap.expect_error(c)["C"] == "42501"
    c.drain()


def upstream_errors(cap: Capture, gw: Gateway, pg: PgCluster) -> None:
    # PostgreSQL refuses the startup (database does not exist): forwarded to the client.
    c = cap.client(gw)
    c.startup(database="no_such_database")
    assert c.read_message() == (b"R", b"\x00\x00\x00\x03")
    c.send(message(b"p", CLIENT_SECRET.encode() + b"\x00"))
    assert cap.expect_error(c)["C"] == "3D000"
    c.drain()

    # The upstream backend is terminated in the middle of a session.
    c = cap.client(gw)
    c.login()
    reply = query(c, "select pg_backend_pid()")
    body = next(body for t, body in reply if t == b"D")
    pid = int(body[6:].decode())
    pg.sql(f"select pg_terminate_backend({pid})")
    assert cap.expect_error(c)["C"] == "57P01"
    c.drain()

    # A protocol violation after login.
    c = cap.client(gw)
    c.login()
    c.send(message(b"x", b"junk"))
    assert cap.expect_error(c)["C"] == "08P01"
    c.drain()


def wait_for_log(gw: Gateway, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in gw.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{gw.log()}"
        time.sleep(0.05)


def reload_with_broken_secret(cap: Capture, gw: Gateway) -> None:
    """A reload that fails on the password file must name the file, not its content."""
    password_file = gw.config_path.parent / "upstream-password"
    good = password_file.read_bytes()
    password_file.write_bytes(UPSTREAM_PASSWORD.encode() + b"\xff\n")
    gw.signal(signal.SIGHUP)
    wait_for_log(gw, "not valid UTF-8")
    password_file.write_bytes(good)
    gw.signal(signal.SIGHUP)
    wait_for_log(gw, "HUP: configuration reloaded")
    wait_for_log(gw, "reloaded configuration")
    c = cap.client(gw)
    assert c.login()[-1] == (b"Z", b"I")
    c.send(message(b"X"))
    c.drain()


@pytest.fixture(scope="module")
def capture(
    pg: PgCluster,
    start_gateway: Callable[..., Gateway],
    tls_files: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Capture:
    cap = Capture()
    gw = start_gateway(workers=1)  # [log] level = "debug"
    cert, key = tls_files
    misconfigured = spawn_gateway(
        tmp_path_factory.mktemp("gw-custody"), pg, cert, key, OTHER_UPSTREAM_PASSWORD, workers=1
    )
    try:
        full_session(cap, gw, pg)
        failing_logins(cap, gw)
        upstream_errors(cap, gw, pg)
        # pgwarden cannot authenticate upstream with the password it was given.
        c = cap.client(misconfigured)
        c.startup()
        assert c.read_message() == (b"R", b"\x00\x00\x00\x03")
        c.send(message(b"p", CLIENT_SECRET.encode() + b"\x00"))
        assert cap.expect_error(c)["C"] == "08004"
        c.drain()
        reload_with_broken_secret(cap, gw)
    finally:
        for g in (gw, misconfigured):
            g.stop()  # the logs are complete once the processes have exited
    cap.logs = [gw.log(), misconfigured.log()]
    return cap


def test_capture_saw_the_whole_story(capture: Capture) -> None:
    assert capture.sqlstates == [
        "22012", "42703", "28P01", "28P01", "42501", "3D000", "57P01", "08P01", "08004",
    ]
    assert b"division by zero" in capture.received
    log = "\n".join(capture.logs)
    # The failed logins were logged (the unknown user by name), so the log was captured.
    assert "nobody" in log and CLIENT_USER in log
    assert 'password authentication failed for user "app"' in log
    assert "invalid frontend message type" in log


def test_upstream_password_never_reaches_a_client(capture: Capture) -> None:
    for secret in (UPSTREAM_PASSWORD, OTHER_UPSTREAM_PASSWORD):
        assert secret.encode() not in capture.received
        assert md5_equivalent(secret, UPSTREAM_USER) not in capture.received


def test_upstream_password_never_logged(capture: Capture) -> None:
    for log in capture.logs:
        for secret in (UPSTREAM_PASSWORD, OTHER_UPSTREAM_PASSWORD):
            assert secret not in log
            assert md5_equivalent(secret, UPSTREAM_USER).decode() not in log


def test_client_secret_never_logged(capture: Capture) -> None:
    for log in capture.logs:
        assert CLIENT_SECRET not in log
        assert WRONG_CLIENT_SECRET not in log
