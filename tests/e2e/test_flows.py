"""Protocol flows through pgwarden with real processes: sizes, COPY, flow control, framing,
Terminate, startup parameters and the connection limit."""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import pq

from gateway.devcluster import PgCluster
from tests.support import (
    DATABASE,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    Gateway,
    RawClient,
    error_fields,
    message,
    vm_rss,
)

pytestmark = pytest.mark.e2e

MIB = 1 << 20


def direct_dsn(pg: PgCluster) -> str:
    return pg.dsn(dbname=DATABASE, user=UPSTREAM_USER, password=UPSTREAM_PASSWORD)


@pytest.fixture(scope="module")
def small(start_gateway: Callable[..., Gateway]) -> Gateway:
    """One worker (so a bystander shares the worker), 1 MiB message limit."""
    return start_gateway(workers=1, server_extra="max_message_size = 1048576")


@pytest.fixture
def bystander(small: Gateway) -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(small.dsn(sslmode="disable"), autocommit=True)
    assert conn.execute("select 1").fetchone() == (1,)
    yield conn
    assert conn.execute("select 'still here'").fetchone() == ("still here",)
    conn.close()


# -- raw protocol helpers ---------------------------------------------------------------


def simple_query(client: RawClient, sql: str) -> list[tuple[bytes, bytes]]:
    client.send(message(b"Q", sql.encode() + b"\x00"))
    return client.read_until(b"Z")


def first_value(reply: list[tuple[bytes, bytes]]) -> str:
    """The first column of the first DataRow in a reply."""
    for msg_type, body in reply:
        if msg_type == b"D":
            length = int.from_bytes(body[2:6], "big", signed=True)
            return body[6 : 6 + length].decode()
    raise AssertionError(f"no DataRow in {reply!r}")


def wait_eof(client: RawClient, timeout: float = 5.0) -> bool:
    """True if the server closes the connection (without sending anything) in time."""
    client.sock.settimeout(timeout)
    try:
        return client.sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def poll(fn: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if fn():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# -- sizes ------------------------------------------------------------------------------


def test_64_mib_simple_query(gateway: Gateway) -> None:
    size = 64 * MIB
    with psycopg.connect(gateway.dsn(sslmode="disable"), autocommit=True) as conn:
        query = "select length($$" + "x" * size + "$$)"
        row = conn.execute(query, prepare=False).fetchone()
        assert row == (size,)
        # The session is still usable after the big message.
        assert conn.execute("select 'after'").fetchone() == ("after",)


def test_message_over_the_limit_is_refused(
    small: Gateway, bystander: psycopg.Connection[Any]
) -> None:
    conn = psycopg.connect(small.dsn(sslmode="disable"), autocommit=True)
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("select length($$" + "x" * (2 * MIB) + "$$)", prepare=False)
        assert info.value.sqlstate == "08P01", str(info.value)
        assert "exceeds the limit of 1048576 bytes" in str(info.value)
        assert conn.closed or conn.broken
    finally:
        conn.close()
    # Just under the limit is fine, on the same worker.
    with psycopg.connect(small.dsn(sslmode="disable"), autocommit=True) as ok:
        row = ok.execute("select length($$" + "y" * (MIB - 1000) + "$$)", prepare=False)
        assert row.fetchone() == (MIB - 1000,)


# -- COPY -------------------------------------------------------------------------------


def copy_fail_outcome(dsn: str) -> tuple[Any, ...]:
    with psycopg.connect(dsn) as conn:
        conn.execute("create temp table t_fail (a int, b text)")
        conn.commit()
        with (
            pytest.raises(RuntimeError, match="client gave up"),
            conn.cursor().copy("copy t_fail from stdin") as cp,
        ):
            cp.write_row((1, "one"))
            cp.write_row((2, "two"))
            raise RuntimeError("client gave up")
        error = conn.pgconn.error_message.decode()
        status = conn.info.transaction_status
        conn.rollback()
        # The session carries on: the next COPY and query work.
        with conn.cursor().copy("copy t_fail from stdin") as cp:
            cp.write_row((3, "three"))
        rows = conn.execute("select a, b from t_fail order by a").fetchall()
        conn.commit()
        return error, status, rows


def test_copy_from_stdin_aborted_with_copy_fail(pg: PgCluster, gateway: Gateway) -> None:
    direct = copy_fail_outcome(direct_dsn(pg))
    through = copy_fail_outcome(gateway.dsn())
    assert through == direct
    error, status, rows = through
    assert "COPY from stdin failed" in error and "client gave up" in error, error
    assert status == pq.TransactionStatus.INERROR
    assert rows == [(3, "three")]


def test_copy_fail_raw(gateway: Gateway) -> None:
    c = RawClient(gateway.port)
    assert c.login()[-1] == (b"Z", b"I")
    assert simple_query(c, "create temp table t_raw (a int)")[-1] == (b"Z", b"I")
    c.send(message(b"Q", b"copy t_raw from stdin\x00"))
    assert c.read_message() == (b"G", b"\x00\x00\x01\x00\x00")  # text, one column
    c.send(message(b"d", b"1\n2\n") + message(b"f", b"aborted by the client\x00"))
    reply = c.read_until(b"Z")
    errors = [error_fields(body) for t, body in reply if t == b"E"]
    assert len(errors) == 1, reply
    assert errors[0]["C"] == "57014"
    assert "aborted by the client" in errors[0]["M"]
    assert reply[-1] == (b"Z", b"I")
    assert first_value(simple_query(c, "select count(*) from t_raw")) == "0"
    c.send(message(b"X"))
    assert wait_eof(c)


def test_copy_binary_round_trip(pg: PgCluster, gateway: Gateway) -> None:
    types = ["int4", "text", "bytea", "float8"]
    rows = [(i, f"name {i}\t\\\n", bytes(range(i % 256)) * 3, i / 7) for i in range(3000)]
    with psycopg.connect(gateway.dsn()) as conn:
        conn.execute("create temp table t_bin (a int4, b text, c bytea, d float8)")
        with conn.cursor().copy("copy t_bin from stdin (format binary)") as cp:
            cp.set_types(types)
            for row in rows:
                cp.write_row(row)
        with conn.cursor().copy("copy t_bin to stdout (format binary)") as cp:
            cp.set_types(types)
            back = list(cp.rows())
        assert back == rows

    query = (
        "copy (select g, md5(g::text)::bytea, g * 1.5::float8 from generate_series(1, 20000) g)"
        " to stdout (format binary)"
    )

    def raw_copy_out(dsn: str) -> bytes:
        with psycopg.connect(dsn) as conn, conn.cursor().copy(query) as cp:
            return b"".join(bytes(block) for block in cp)

    through = raw_copy_out(gateway.dsn())
    assert through.startswith(b"PGCOPY\n\xff\r\n\x00")
    assert through == raw_copy_out(direct_dsn(pg))


def test_copy_out_50_mb_matches_direct(pg: PgCluster, gateway: Gateway) -> None:
    query = "copy (select g, repeat(md5(g::text), 3) from generate_series(1, 500000) g) to stdout"

    def digest(dsn: str) -> tuple[int, str]:
        h = hashlib.sha256()
        total = 0
        with psycopg.connect(dsn) as conn, conn.cursor().copy(query) as cp:
            for block in cp:
                h.update(block)
                total += len(block)
        return total, h.hexdigest()

    through = digest(gateway.dsn(sslmode="disable"))
    assert through[0] > 50_000_000
    assert through == digest(direct_dsn(pg))


# -- flow control -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_upstream(start_gateway: Callable[..., Gateway]) -> Gateway:
    """One worker, TLS to PostgreSQL."""
    return start_gateway(workers=1, upstream_extra='sslmode = "require"')


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls-both-sides"])
def test_slow_reader_bounds_worker_memory(tls: bool, request: pytest.FixtureRequest) -> None:
    gw: Gateway = request.getfixturevalue("tls_upstream" if tls else "small")
    (worker,) = gw.children()
    rows, width = 300_000, 1000
    expected_row = b"\x00\x01" + width.to_bytes(4, "big") + b"x" * width
    c = RawClient(gw.port, timeout=30)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    if tls:
        c.send(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest
        assert c.sock.recv(1) == b"S"
        ctx = ssl.create_default_context(cafile=str(gw.cert))
        c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
    assert c.login()[-1] == (b"Z", b"I")
    if tls:
        ssl_in_use = first_value(
            simple_query(c, "select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        )
        assert ssl_in_use == "t"
    baseline = vm_rss(worker)
    c.send(
        message(
            b"Q", f"select repeat('x', {width}) from generate_series(1, {rows})".encode() + b"\x00"
        )
    )

    buf = bytearray(c.buf)
    c.buf = b""
    pos = 0
    counts: Counter[int] = Counter()
    damaged = 0
    peak = baseline
    slow_until = time.monotonic() + 3.0
    done = False
    while not done:
        while len(buf) - pos >= 5:
            msg_type = buf[pos]
            length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if len(buf) - pos < 1 + length:
                break
            if msg_type == ord("D") and buf[pos + 5 : pos + 1 + length] != expected_row:
                damaged += 1
            counts[msg_type] += 1
            pos += 1 + length
            if msg_type == ord("Z"):
                done = True
                break
        if done:
            break
        del buf[:pos]
        pos = 0
        if time.monotonic() < slow_until:
            # A slow consumer: a little, then a pause, while the server has ~300 MB to send.
            time.sleep(0.05)
            chunk = c.sock.recv(4096)
            peak = max(peak, vm_rss(worker))
        else:
            chunk = c.sock.recv(1 << 20)
        assert chunk, "gateway closed the connection in the middle of the result"
        buf += chunk
    c.buf = bytes(buf[pos:])

    grown = peak - baseline
    assert grown < 32 * MIB, f"worker RSS grew by {grown / MIB:.1f} MiB for a slow reader"
    assert counts[ord("E")] == 0
    assert counts[ord("D")] == rows
    assert damaged == 0
    assert counts[ord("C")] == 1 and counts[ord("T")] == 1 and counts[ord("Z")] == 1
    assert first_value(simple_query(c, "select 'next'")) == "next"
    c.close()


# -- framing ----------------------------------------------------------------------------


def extended_batch(n: int) -> bytes:
    out = bytearray()
    for i in range(n):
        value = str(i).encode()
        out += message(b"P", b"\x00select $1::int * 2, 'row-' || $1\x00\x00\x00")
        out += message(
            b"B",
            b"\x00\x00"  # portal, statement
            + b"\x00\x00"  # parameter formats: all text
            + b"\x00\x01"
            + len(value).to_bytes(4, "big")
            + value
            + b"\x00\x00",  # result formats: all text
        )
        out += message(b"E", b"\x00\x00\x00\x00\x00")
        out += message(b"S")
    return bytes(out)


def read_replies(client: RawClient, readies: int) -> list[tuple[bytes, bytes]]:
    replies: list[tuple[bytes, bytes]] = []
    for _ in range(readies):
        replies += client.read_until(b"Z")
    return replies


def test_pipelined_batch_in_one_write_and_byte_by_byte(gateway: Gateway) -> None:
    n = 20
    batch = extended_batch(n)
    c = RawClient(gateway.port)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert c.login()[-1] == (b"Z", b"I")

    c.send(batch)
    at_once = read_replies(c, n)

    for i in range(len(batch)):
        c.send(batch[i : i + 1])
        if i % 4 == 0:
            time.sleep(0.001)
    split = read_replies(c, n)

    assert split == at_once
    counts = Counter(t for t, _ in at_once)
    assert counts == {b"1": n, b"2": n, b"D": n, b"C": n, b"Z": n}, counts
    values = [body for t, body in at_once if t == b"D"]
    for i, body in enumerate(values):
        assert str(i * 2).encode() in body and f"row-{i}".encode() in body
    assert all(body == b"SELECT 1\x00" for t, body in at_once if t == b"C")
    assert first_value(simple_query(c, "select 'still in sync'")) == "still in sync"
    c.close()


# -- Terminate and startup parameters ---------------------------------------------------


def backend_count(pg: PgCluster, pid: int) -> int:
    rows = pg.sql(f"select count(*) from pg_stat_activity where usename = 'app' and pid = {pid}")
    return int(rows[0][0])


@pytest.fixture(scope="module")
def unpooled(start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway(workers=1, upstream_extra='sslmode = "prefer"\npool_size = 0')


def test_terminate_closes_client_and_upstream(pg: PgCluster, unpooled: Gateway) -> None:
    c = RawClient(unpooled.port)
    assert c.login()[-1] == (b"Z", b"I")
    pid = int(first_value(simple_query(c, "select pg_backend_pid()")))
    assert backend_count(pg, pid) == 1
    c.send(message(b"X"))
    assert wait_eof(c), "gateway did not close the connection after Terminate"
    assert poll(lambda: backend_count(pg, pid) == 0), "upstream backend still present"


def test_application_name_reaches_upstream(pg: PgCluster, gateway: Gateway) -> None:
    name = "pgwarden-flows-app-7"
    with psycopg.connect(gateway.dsn(application_name=name), autocommit=True) as conn:
        (pid,) = conn.execute("select pg_backend_pid()").fetchone() or (0,)
        rows = pg.sql(f"select application_name, usename from pg_stat_activity where pid = {pid}")
        assert len(rows) == 1, rows
        application_name, user = rows[0]
        assert user == UPSTREAM_USER
        # The gateway may add to it (who connected), but what the client set must show.
        assert name in application_name, application_name


# -- limits -----------------------------------------------------------------------------


def test_max_client_connections(start_gateway: Callable[..., Gateway]) -> None:
    limited = start_gateway(workers=1, server_extra="max_client_connections = 3")
    dsn = limited.dsn(sslmode="disable")
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(3)]
    try:
        fourth = RawClient(limited.port)
        msg = fourth.read_message()
        assert msg is not None and msg[0] == b"E", msg
        fields = error_fields(msg[1])
        assert fields["C"] == "53300", fields
        assert "too many clients" in fields["M"]
        assert fourth.read_message() is None
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            psycopg.connect(dsn)
        for i, conn in enumerate(conns):
            assert conn.execute("select %s::int", (i,)).fetchone() == (i,)
        # A slot that is given back can be used again.
        conns.pop().close()

        def admitted() -> bool:
            try:
                conns.append(psycopg.connect(dsn, autocommit=True))
            except psycopg.OperationalError:
                return False
            return True

        assert poll(admitted)
        assert conns[-1].execute("select 'new'").fetchone() == ("new",)
    finally:
        for conn in conns:
            conn.close()


# -- Upstream session pooling ------------------------------------------------------------


def test_pooled_session_is_reset_before_reuse(
    pg: PgCluster, start_gateway: Callable[..., Gateway]
) -> None:
    gw = start_gateway(workers=1)
    with psycopg.connect(gw.dsn(sslmode="disable", application_name="first"), autocommit=True) as a:
        pid = a.info.backend_pid
        upstream_pid = a.execute("select pg_backend_pid()").fetchone()
        a.execute("set search_path = pg_catalog")
        a.execute("set statement_timeout = 1234")
        a.execute("create temp table leftover (x int)")
        a.execute("prepare leftover_stmt as select 1")
        a.execute("listen leftover_channel")
        a.execute("select pg_advisory_lock(4242)")

    # The client left cleanly: its backend is reset (DISCARD ALL) and pooled ...
    (upid,) = upstream_pid or (0,)
    assert poll(
        lambda: (
            pg.sql(f"select query from pg_stat_activity where pid = {upid}") == [("DISCARD ALL",)]
        )
    ), "the backend was not reset for reuse"
    # ... and the next client of the same role gets it.
    with psycopg.connect(
        gw.dsn(sslmode="disable", application_name="second"), autocommit=True
    ) as b:
        assert b.execute("select pg_backend_pid()").fetchone() == upstream_pid
        assert b.info.backend_pid != pid  # a new gateway-issued key
        state = b.execute(
            "select current_setting('search_path'), current_setting('statement_timeout'),"
            " (select count(*) from pg_prepared_statements),"
            " (select count(*) from pg_listening_channels()),"
            " (select count(*) from pg_locks"
            "  where locktype = 'advisory' and pid = pg_backend_pid()),"
            " to_regclass('leftover') is null,"
            " (select application_name from pg_stat_activity where pid = pg_backend_pid())"
        ).fetchone()
    assert state is not None, "the pooled backend was never reused"
    assert state == ('"$user", public', "0", 0, 0, 0, True, "pgwarden:static:job (second)")


def test_session_in_transaction_is_not_pooled(
    pg: PgCluster, start_gateway: Callable[..., Gateway]
) -> None:
    gw = start_gateway(workers=1)
    c = RawClient(gw.port)
    c.login()
    upstream_pid = int(first_value(simple_query(c, "select pg_backend_pid()")))
    simple_query(c, "begin")
    c.close()  # gone with a transaction open: the backend must not be reused
    assert poll(lambda: backend_count(pg, upstream_pid) == 0), "backend kept after abort"


def test_reused_session_shows_the_new_clients_identity(
    pg: PgCluster, start_gateway: Callable[..., Gateway]
) -> None:
    gw = start_gateway(workers=1)
    with psycopg.connect(gw.dsn(sslmode="disable", application_name="x"), autocommit=True) as a:
        upstream_pid = a.execute("select pg_backend_pid()").fetchone()
        # The client renames itself; the next client must not inherit that name.
        a.execute("set application_name = 'sneaky'")
    (upid,) = upstream_pid or (0,)
    assert poll(
        lambda: (
            pg.sql(f"select query from pg_stat_activity where pid = {upid}") == [("DISCARD ALL",)]
        )
    )
    with psycopg.connect(gw.dsn(sslmode="disable", application_name="x"), autocommit=True) as b:
        assert b.execute("select pg_backend_pid()").fetchone() == upstream_pid
        row = b.execute(
            "select application_name from pg_stat_activity where pid = pg_backend_pid()"
        ).fetchone()
    assert row == ("pgwarden:static:job (x)",)
