"""Direct socket I/O (gateway.server.fastio) with real clients, a real PostgreSQL and the
baseline policy and audit log on: every flow must behave exactly as through the
transports, each side taken over only when it is plain, flow control still bounding
memory, and no descriptor left behind however a session ends."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.audit import SessionEndEvent, StatementEvent
from gateway.devcluster import PgCluster
from tests.e2e.test_audit import audit_section, verified
from tests.support import (
    DATABASE,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    Gateway,
    RawClient,
    error_fields,
    message,
    pgbench_database,
    vm_rss,
)

pytestmark = pytest.mark.e2e

MIB = 1 << 20
PLAIN_UPSTREAM = 'sslmode = "disable"'


@pytest.fixture(scope="module")
def audited(
    start_gateway: Callable[..., Gateway], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Gateway, Path, Path]:
    """One worker, plain upstream, baseline policy, audit log: both sides go direct for a
    plain client."""
    section, spool, pub = audit_section(tmp_path_factory.mktemp("direct-audit"))
    gw = start_gateway(workers=1, upstream_extra=PLAIN_UPSTREAM, audit=section)
    return gw, spool, pub


@pytest.fixture(scope="module")
def plain(audited: tuple[Gateway, Path, Path]) -> Gateway:
    return audited[0]


@pytest.fixture(scope="module")
def unpooled(start_gateway: Callable[..., Gateway]) -> Gateway:
    """No upstream pool: a worker holds descriptors only for live sessions."""
    return start_gateway(workers=1, upstream_extra=PLAIN_UPSTREAM + "\npool_size = 0")


def stats(gw: Gateway, settle: float = 0.0) -> dict[str, Any]:
    """The single worker's counters, as written at its next heartbeat after ``settle``."""
    time.sleep(settle)
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "stats", "--config", str(gw.config_path)],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode == 0:
            doc = json.loads(out.stdout)
            workers = doc["workers"] if isinstance(doc, dict) and "workers" in doc else doc
            assert len(workers) == 1
            return dict(workers[0])
        assert time.monotonic() < deadline, out.stdout + out.stderr
        time.sleep(0.2)


def wait_stats(gw: Gateway, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        current = stats(gw)
        if check(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.3)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fds(pid: int) -> int:
    """The worker's descriptor count once it stayed the same for half a second."""
    last, same, deadline = -1, 0, time.monotonic() + 10
    while same < 5 and time.monotonic() < deadline:
        n = open_fds(pid)
        same = same + 1 if n == last else 0
        last = n
        time.sleep(0.1)
    return last


def wait_fds(pid: int, expected: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while (n := open_fds(pid)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


# -- which sides go direct ---------------------------------------------------------------


def test_plain_sides_go_direct_and_tls_sides_stay_on_transports(plain: Gateway) -> None:
    with psycopg.connect(plain.dsn(sslmode="disable"), autocommit=True) as a:
        assert a.execute("select 1").fetchone() == (1,)
        now = wait_stats(plain, lambda s: s["direct_io"]["sessions"] == 1)
        assert now["direct_io"] == {"sessions": 1, "client": 1, "upstream": 1}
        with psycopg.connect(plain.dsn(sslmode="require"), autocommit=True) as b:
            # TLS to the client: that side keeps its transport, the upstream side is plain.
            assert b.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()"
                             ).fetchone() == (False,)
            assert b.pgconn.ssl_in_use
            now = wait_stats(plain, lambda s: s["direct_io"]["sessions"] == 2)
            assert now["direct_io"] == {"sessions": 2, "client": 1, "upstream": 2}
    now = wait_stats(plain, lambda s: s["direct_io"]["sessions"] == 0)
    assert now["direct_io"] == {"sessions": 0, "client": 0, "upstream": 0}


def test_direct_io_can_be_turned_off(start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway(workers=1, upstream_extra=PLAIN_UPSTREAM, server_extra="direct_io = false")
    with psycopg.connect(gw.dsn(sslmode="disable"), autocommit=True) as conn:
        assert conn.execute("select 2").fetchone() == (2,)
        now = wait_stats(gw, lambda s: s["sessions"] == 1)
        assert now["sessions"] == 1
        assert now["direct_io"] == {"sessions": 0, "client": 0, "upstream": 0}


# -- flows -------------------------------------------------------------------------------


def test_results_prepared_statements_and_pipelines(plain: Gateway, pg: PgCluster) -> None:
    query = "select g, md5(g::text) from generate_series(1, 200000) g"
    with psycopg.connect(pg.dsn(dbname=DATABASE, user=UPSTREAM_USER,
                                password=UPSTREAM_PASSWORD), autocommit=True) as direct:
        expected = direct.execute(query).fetchall()
    with psycopg.connect(plain.dsn(sslmode="disable"), autocommit=True) as conn:
        assert conn.execute(query).fetchall() == expected
        for i in range(50):  # server-side prepared after the first few executions
            assert conn.execute("select %s::int * 2", (i,), prepare=True).fetchone() == (2 * i,)
        with conn.pipeline():
            cursors = [conn.execute("select %s::int + 1", (i,)) for i in range(100)]
        assert [c.fetchone() for c in cursors] == [(i + 1,) for i in range(100)]


def test_refusals_keep_transactions_and_pipelines_in_sync(plain: Gateway) -> None:
    with psycopg.connect(plain.dsn(sslmode="disable")) as conn:
        conn.execute("create temp table t (id int)")
        conn.execute("insert into t values (1), (2)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from t")  # baseline.no_where
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute("select 'after'").fetchone() == ("after",)
        conn.commit()
    with psycopg.connect(plain.dsn(sslmode="disable"), autocommit=True) as conn:
        conn.execute("create temp table u (id int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            # Nothing of a string with a refused statement runs.
            conn.execute("insert into u values (1); delete from u; insert into u values (2)")
        assert conn.execute("select count(*) from u").fetchone() == (0,)


def test_copy_out_and_in_are_byte_identical(plain: Gateway, pg: PgCluster) -> None:
    sql = "copy (select g, repeat(md5(g::text), 4) from generate_series(1, 180000) g) to stdout"

    def digest(dsn: str) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur, \
                cur.copy(sql) as copy:
            for block in copy:
                h.update(block)
                size += len(block)
        return h.hexdigest(), size

    direct = digest(pg.dsn(dbname=DATABASE, user=UPSTREAM_USER, password=UPSTREAM_PASSWORD))
    through = digest(plain.dsn(sslmode="disable"))
    assert through == direct and direct[1] > 20 * MIB
    rows = [(i, f"row-{i}" * 3) for i in range(100000)]
    with psycopg.connect(plain.dsn(sslmode="disable"), autocommit=True) as conn:
        conn.execute("create temp table c (id int, v text)")
        with conn.cursor() as cur, cur.copy("copy c from stdin") as copy:
            for row in rows:
                copy.write_row(row)
        assert conn.execute("select count(*), sum(id), md5(string_agg(v, ',' order by id))"
                            " from c").fetchone() == (
            len(rows), sum(r[0] for r in rows),
            hashlib.md5(",".join(r[1] for r in rows).encode()).hexdigest())


def extended_batch(n: int) -> bytes:
    out = bytearray()
    for i in range(n):
        value = str(i).encode()
        out += message(b"P", b"\x00select $1::int * 3\x00\x00\x00")
        out += message(b"B", b"\x00\x00\x00\x00\x00\x01" + len(value).to_bytes(4, "big")
                       + value + b"\x00\x00")
        out += message(b"E", b"\x00\x00\x00\x00\x00")
        out += message(b"S")
    return bytes(out)


def values(replies: list[tuple[bytes, bytes]]) -> list[str]:
    out = []
    for msg_type, body in replies:
        if msg_type == b"D":
            length = int.from_bytes(body[2:6], "big")
            out.append(body[6 : 6 + length].decode())
    return out


def test_pipelined_batch_in_one_write_and_byte_by_byte(plain: Gateway) -> None:
    n = 30
    batch = extended_batch(n)
    for byte_by_byte in (False, True):
        c = RawClient(plain.port)
        assert c.login()[-1] == (b"Z", b"I")
        if byte_by_byte:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(batch)):
                c.send(batch[i : i + 1])
        else:
            c.send(batch)
        replies = []
        for _ in range(n):
            replies += c.read_until(b"Z")
        assert values(replies) == [str(3 * i) for i in range(n)]
        assert Counter(t for t, _ in replies)[b"Z"] == n
        c.close()


def test_slow_reader_bounds_worker_memory(plain: Gateway) -> None:
    (worker,) = plain.children()
    rows, width = 200_000, 1000
    expected = b"\x00\x01" + width.to_bytes(4, "big") + b"x" * width
    c = RawClient(plain.port, timeout=30)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    assert c.login()[-1] == (b"Z", b"I")

    baseline = peak = vm_rss(worker)
    c.send(message(b"Q", f"select repeat('x', {width}) from generate_series(1, {rows})"
                   .encode() + b"\x00"))
    counts: Counter[bytes] = Counter()
    damaged = 0
    slow_until = time.monotonic() + 3.0
    while True:
        if time.monotonic() < slow_until:
            time.sleep(0.05)
            c.sock.settimeout(30)
            chunk = c.sock.recv(4096)
            c.buf += chunk
            peak = max(peak, vm_rss(worker))
        msg = c.read_message()
        assert msg is not None, "gateway closed the connection in the middle of the result"
        counts[msg[0]] += 1
        if msg[0] == b"D" and msg[1] != expected:
            damaged += 1
        if msg[0] == b"Z":
            break
    assert peak - baseline < 32 * MIB, f"worker RSS grew by {(peak - baseline) / MIB:.1f} MiB"
    assert (counts[b"D"], counts[b"C"], counts[b"E"], damaged) == (rows, 1, 0, 0)
    c.send(message(b"Q", b"select 'next'\x00"))
    assert values(c.read_until(b"Z")) == ["next"]
    c.close()


def test_cancel_reaches_the_right_query(plain: Gateway) -> None:
    with psycopg.connect(plain.dsn(sslmode="disable"), autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        assert time.monotonic() - started < 10
        timer.join()
        assert conn.execute("select 'alive'").fetchone() == ("alive",)


def test_pgbench_prepared_and_simple_recorded_in_the_audit_log(
    audited: tuple[Gateway, Path, Path], pg: PgCluster
) -> None:
    gw, spool, pub = audited
    db = pgbench_database(pg)
    for mode in ("prepared", "simple"):
        done = subprocess.run(
            ["pgbench", "-S", "-M", mode, "-c", "4", "-t", "250", "-n", db],
            env=gw.env(sslmode="disable"), capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "number of transactions actually processed: 1000/1000" in done.stdout
    time.sleep(0.5)  # flush_interval is 0.02 s: the batches are sealed by now
    report, events = verified(spool, pub, allow_open_tail=True)
    assert report.ok, report.summary()
    selects = [e for e in events if isinstance(e, StatementEvent)
               and e.text.startswith("SELECT abalance FROM pgbench_accounts")]
    assert len(selects) == 2000
    assert Counter(e.protocol for e in selects) == {"extended": 1000, "simple": 1000}
    assert {(e.decision, e.sqlstate, e.rows) for e in selects} == {("allow", "", 1)}
    ends = [e for e in events if isinstance(e, SessionEndEvent)]
    assert ends and all(e.bytes_in > 0 and e.bytes_out > 0 for e in ends)


# -- however a session ends, nothing is left open ----------------------------------------


def _end_by_terminate(gw: Gateway) -> None:
    c = RawClient(gw.port)
    c.login()
    c.send(message(b"X"))
    assert c.closed()
    c.close()


def _end_by_reset(gw: Gateway) -> None:
    c = RawClient(gw.port)
    c.login()
    c.send(message(b"Q", b"select pg_sleep(0.2)\x00"))
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST with a query in flight


def _end_mid_result(gw: Gateway) -> None:
    c = RawClient(gw.port)
    c.login()
    c.send(message(b"Q", b"select repeat('y', 1000) from generate_series(1, 100000)\x00"))
    c.sock.recv(1000)
    c.close()


def _end_by_violation(gw: Gateway) -> None:
    c = RawClient(gw.port)
    c.login()
    c.send(b"Q\x00\x00\x00\x02")  # a length below 4
    reply = c.read_until(b"Z")
    assert reply and reply[-1][0] == b"E"
    assert error_fields(reply[-1][1])["C"] == "08P01"
    assert c.closed()
    c.close()


def _end_by_server(gw: Gateway, pg: PgCluster) -> None:
    c = RawClient(gw.port)
    c.login()
    c.send(message(b"Q", b"select pg_backend_pid()\x00"))
    (pid,) = values(c.read_until(b"Z"))
    pg.sql(f"select pg_terminate_backend({pid})")
    reply = c.read_until(b"Z")  # the backend's FATAL, then the close
    assert any(t == b"E" and error_fields(b)["C"] == "57P01" for t, b in reply)
    assert c.closed()
    c.close()


def test_no_descriptor_is_left_behind(unpooled: Gateway, pg: PgCluster) -> None:
    (worker,) = unpooled.children()
    _end_by_terminate(unpooled)  # warm-up: lazily opened files (logs, stats) are open now
    baseline = settled_fds(worker)
    endings: list[Callable[[], None]] = [
        lambda: _end_by_terminate(unpooled),
        lambda: _end_by_reset(unpooled),
        lambda: _end_mid_result(unpooled),
        lambda: _end_by_violation(unpooled),
        lambda: _end_by_server(unpooled, pg),
    ]
    for _ in range(4):
        for end in endings:
            end()
    assert wait_fds(worker, baseline) == baseline
    with psycopg.connect(unpooled.dsn(sslmode="disable"), autocommit=True) as conn:
        assert conn.execute("select 'still serving'").fetchone() == ("still serving",)
