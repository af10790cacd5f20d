"""Supervisor and workers: drain on TERM, reload on HUP, replacement, cancel routing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from gateway.devcluster import PgCluster
from gateway.identity.static_secrets import hash_secret
from tests.support import CLIENT_SECRET, Gateway

pytestmark = pytest.mark.e2e


def worker_pids(gw: Gateway) -> dict[int, int]:
    """worker index -> pid, from the supervisor's log (latest spawn wins)."""
    pids: dict[int, int] = {}
    for m in re.finditer(r"spawned worker (\d+) \(pid (\d+)\)", gw.log()):
        pids[int(m.group(1))] = int(m.group(2))
    return pids


def worker_of(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    # The gateway-issued backend pid encodes the index of the worker that owns it.
    return conn.info.backend_pid >> 23


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def connections_on_each_worker(
    gw: Gateway, n_workers: int
) -> dict[int, psycopg.Connection[tuple[object, ...]]]:
    by_worker: dict[int, psycopg.Connection[tuple[object, ...]]] = {}
    spare = []
    for _ in range(60):
        conn = psycopg.connect(gw.dsn(sslmode="disable"), autocommit=True)
        w = worker_of(conn)
        if w in by_worker:
            spare.append(conn)
        else:
            by_worker[w] = conn
        if len(by_worker) == n_workers:
            break
    for conn in spare:
        conn.close()
    assert len(by_worker) == n_workers, "SO_REUSEPORT never spread connections"
    return by_worker


def test_term_drains_an_open_transaction(
    start_gateway: Callable[..., Gateway], pg: PgCluster
) -> None:
    gw = start_gateway(workers=1)
    conn = psycopg.connect(gw.dsn(sslmode="disable"))
    conn.execute("create table if not exists drained (a int)")
    conn.commit()
    conn.execute("insert into drained values (1)")  # transaction open
    gw.signal(signal.SIGTERM)
    time.sleep(0.5)
    # Still serving the open transaction; new connections are no longer accepted.
    conn.execute("insert into drained values (2)")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gw.dsn(sslmode="disable"), connect_timeout=3)
    conn.commit()
    # Once idle, the session is closed and the gateway exits cleanly.
    assert gw.proc.wait(15) == 0
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select 1")
    rows = pg.sql("select count(*) from drained", dbname="app")
    assert rows == [(2,)]


def test_hup_reloads_without_dropping_sessions(start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway(workers=2)
    conns = connections_on_each_worker(gw, 2)
    for conn in conns.values():
        conn.execute("begin")
        conn.execute("select 1")
    # Rotate the client secret in the file, then HUP.
    new_secret = "rotated-secret-99"
    text = gw.config_path.read_text()
    text = re.sub(r'secret_hash = ".*"', f'secret_hash = "{hash_secret(new_secret)}"', text)
    gw.config_path.write_text(text)
    gw.signal(signal.SIGHUP)
    wait_for(lambda: gw.log().count("reloaded configuration") >= 2)
    for conn in conns.values():
        assert conn.execute("select 'alive'").fetchone() == ("alive",)
        conn.execute("commit")
    with psycopg.connect(gw.dsn(sslmode="disable", password=new_secret)) as fresh:
        assert fresh.execute("select 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(gw.dsn(sslmode="disable", password=CLIENT_SECRET))
    for conn in conns.values():
        conn.close()


def test_broken_config_on_hup_keeps_running(start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway(workers=1)
    gw.config_path.write_text(gw.config_path.read_text() + "\n[server]\nbogus = 1\n")
    gw.signal(signal.SIGHUP)
    wait_for(lambda: "configuration not reloaded" in gw.log())
    with psycopg.connect(gw.dsn(sslmode="disable")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_killed_worker_is_replaced_and_others_survive(
    start_gateway: Callable[..., Gateway],
) -> None:
    gw = start_gateway(workers=2)
    conns = connections_on_each_worker(gw, 2)
    victim_pid = worker_pids(gw)[0]
    os.kill(victim_pid, signal.SIGKILL)
    # The other worker's session is unaffected.
    assert conns[1].execute("select 'survivor'").fetchone() == ("survivor",)
    with pytest.raises(psycopg.OperationalError):
        conns[0].execute("select 1")
    wait_for(lambda: worker_pids(gw).get(0, victim_pid) != victim_pid)
    new_pid = worker_pids(gw)[0]
    wait_for(lambda: f"(pid {new_pid}) listening" in gw.log())
    assert "exited with -9; replacing it" in gw.log()
    # Both workers serve again.
    fresh = connections_on_each_worker(gw, 2)
    for conn in [*fresh.values(), conns[1]]:
        assert conn.execute("select 1").fetchone() == (1,)
        conn.close()


def test_hung_worker_is_killed_by_heartbeat(start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway(workers=1, heartbeat_timeout=2.0)
    pid = worker_pids(gw)[0]
    os.kill(pid, signal.SIGSTOP)  # alive but not running: its heartbeat goes stale
    wait_for(lambda: "missed its heartbeat" in gw.log(), timeout=20)
    wait_for(lambda: worker_pids(gw)[0] != pid, timeout=10)
    new_pid = worker_pids(gw)[0]
    wait_for(lambda: f"(pid {new_pid}) listening" in gw.log(), timeout=10)
    with psycopg.connect(gw.dsn(sslmode="disable")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_worker_that_cannot_boot_halts_the_supervisor(
    start_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    gw = start_gateway(workers=1)
    gw.stop()
    bad_cert = tmp_path / "garbage.pem"
    bad_cert.write_text("not a certificate\n")
    text = re.sub(r'cert_file = ".*"', f'cert_file = "{bad_cert}"', gw.config_path.read_text())
    config = tmp_path / "bad.toml"
    config.write_text(text)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert "could not boot" in result.stderr
    assert time.monotonic() - started < 30
    assert result.stderr.count("spawned worker 0") == 1


def test_cancel_from_psycopg_routes_to_owning_worker(
    start_gateway: Callable[..., Gateway],
) -> None:
    gw = start_gateway(workers=2)
    conns = connections_on_each_worker(gw, 2)
    # Cancel requests arrive on whichever worker the kernel picks; try each session a few
    # times so that both the local and the routed path are taken.
    for _ in range(3):
        for conn in conns.values():
            timer = threading.Timer(0.5, conn.cancel)
            timer.start()
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(20)")
            assert time.monotonic() - started < 10
            timer.join()
            assert conn.execute("select 'after cancel'").fetchone() == ("after cancel",)
    for conn in conns.values():
        conn.close()


def test_cancel_from_psql(gateway: Gateway) -> None:
    proc = subprocess.Popen(
        ["psql", "-X", "-c", "select pg_sleep(20)"],
        env=gateway.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert time.monotonic() - started < 10
    assert "canceling statement due to user request" in err
