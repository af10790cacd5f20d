"""The signed audit log, end to end: real clients through a real gateway, then the chain
read back from the spool and verified with the public key.

Kafka delivery, outages and worker crashes under load are in tests/audit_kafka/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.audit import (
    AuthFailureEvent,
    AuthSuccessEvent,
    SessionEndEvent,
    SessionStartEvent,
    StatementEvent,
    StatementStartEvent,
    Verifier,
    WorkerStartEvent,
    WorkerStopEvent,
    load_public_keys,
    read_spool,
)
from gateway.audit.keys import generate_key
from gateway.devcluster import PgCluster
from tests.support import CLIENT_USER, Gateway, pgbench_database

pytestmark = pytest.mark.e2e


def audit_section(tmp: Path, **extra: str) -> tuple[str, Path, Path]:
    spool = tmp / "spool"
    key = tmp / "audit.key"
    generate_key(key)
    lines = [f'spool_dir = "{spool}"', f'signing_key_file = "{key}"', "flush_interval = 0.02"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "[audit]\n" + "\n".join(lines) + "\n", spool, Path(f"{key}.pub")


def verified(spool: Path, pub: Path, **opts: bool) -> tuple[Any, list[Any]]:
    verifier = Verifier(load_public_keys([str(pub)]), **opts)
    events = [event for _, event in verifier.events(read_spool(spool))]
    return verifier.finish(), events


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=120)


def start_audited(
    start_gateway: Callable[..., Gateway], tmp: Path, workers: int = 2, **extra: str
) -> tuple[Gateway, Path, Path]:
    section, spool, pub = audit_section(tmp, **extra)
    gw = start_gateway(workers=workers, audit=section)
    return gw, spool, pub


def test_every_statement_and_session_is_in_the_verified_chain(
    start_gateway: Callable[..., Gateway], tmp_path: Path, pg: PgCluster
) -> None:
    gw, spool, pub = start_audited(start_gateway, tmp_path)
    marker = f"m{time.time_ns()}"
    with psycopg.connect(gw.dsn(sslmode="disable", application_name="nightly-etl"),
                         autocommit=True) as conn:
        conn.execute(f"create temp table t_{marker} (id int)")
        conn.execute(f"insert into t_{marker} select generate_series(1, 7)")
        assert conn.execute(f"select count(*) from t_{marker} where id > %s",
                            (2,)).fetchone() == (5,)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"delete from t_{marker}")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gw.dsn(sslmode="disable", password="wrong-secret"))
    assert gw.stop() == 0  # TERM: every worker writes its close batch

    report, events = verified(spool, pub)
    assert report.ok, report.summary()
    statements = [e for e in events if isinstance(e, StatementEvent) and marker in e.text]
    by_text = {e.text.split(" ")[0].lower(): e for e in statements}
    assert by_text["insert"].rows == 7 and by_text["insert"].command_tag == "INSERT 0 7"
    select = by_text["select"]
    assert (select.rows, select.protocol, select.decision) == (1, "extended", "allow")
    assert select.subject == CLIENT_USER and select.issuer == "static"
    assert select.application_name == "nightly-etl" and select.fingerprint
    refused = by_text["delete"]
    assert (refused.decision, refused.rule_ids, refused.sqlstate) == (
        "block", ["baseline.no_where"], "42501")
    div = next(e for e in events if isinstance(e, StatementEvent) and e.text == "select 1/0")
    assert div.sqlstate == "22012"
    session_ids = {e.session_id for e in statements}
    assert len(session_ids) == 1
    (sid,) = session_ids
    assert any(isinstance(e, SessionStartEvent) and e.session_id == sid for e in events)
    end = next(e for e in events if isinstance(e, SessionEndEvent) and e.session_id == sid)
    assert end.statements >= 5 and end.bytes_out > 0
    assert any(isinstance(e, AuthSuccessEvent) and e.session_id == sid for e in events)
    assert any(isinstance(e, AuthFailureEvent) for e in events)
    assert sum(isinstance(e, WorkerStartEvent) for e in events) == 2
    assert sum(isinstance(e, WorkerStopEvent) for e in events) == 2

    # The command-line verifier agrees, and tail prints the same events.
    out = cli("audit", "verify", "--spool", str(spool), "--keys", str(pub), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["ok"] is True
    tail = cli("audit", "tail", "--spool", str(spool), "--keys", str(pub))
    assert tail.returncode == 0
    assert sum(marker in line for line in tail.stdout.splitlines()) == len(statements)

    # The auditor's pack, from the gateway's own configuration.
    pack = tmp_path / "evidence"
    out = cli("evidence", "--config", str(gw.config_path), "--since", "2000-01-01",
              "--until", "2100-01-01", "--out", str(pack))
    assert out.returncode == 0, out.stdout + out.stderr
    csv_text = (pack / "statements.csv").read_text(encoding="utf-8-sig")
    assert csv_text.count(marker) >= len(statements)
    assert "upstream-Secret" not in (pack / "custody.md").read_text()
    check = cli("evidence", "check", str(pack), "--keys", str(pub))
    assert check.returncode == 0, check.stdout + check.stderr


def test_pgbench_statements_all_recorded(
    start_gateway: Callable[..., Gateway], tmp_path: Path, pg: PgCluster
) -> None:
    gw, spool, pub = start_audited(start_gateway, tmp_path)
    db = pgbench_database(pg)
    env = gw.env(sslmode="disable")
    done = subprocess.run(
        ["pgbench", "-S", "-M", "prepared", "-c", "4", "-t", "200", "-n", db],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "number of transactions actually processed: 800/800" in done.stdout
    assert gw.stop() == 0
    report, events = verified(spool, pub)
    assert report.ok, report.summary()
    selects = [e for e in events if isinstance(e, StatementEvent)
               and e.text.startswith("SELECT abalance FROM pgbench_accounts")]
    assert len(selects) == 800
    assert {(e.decision, e.sqlstate, e.rows, e.subject) for e in selects} == {
        ("allow", "", 1, CLIENT_USER)}


def test_strict_mode_records_before_forwarding(
    start_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    gw, spool, pub = start_audited(start_gateway, tmp_path, workers=1, mode='"strict"')
    with psycopg.connect(gw.dsn(sslmode="disable"), autocommit=True) as conn:
        for i in range(20):
            assert conn.execute("select %s::int", (i,)).fetchone() == (i,)
        # While the gateway still runs, each statement's start record is already durable.
        report, events = verified(spool, pub, allow_open_tail=True)
        assert report.ok, report.summary()
        starts = [e for e in events if isinstance(e, StatementStartEvent)]
        assert len([e for e in starts if e.text == "select $1::int"]) == 20
    assert gw.stop() == 0
    report, events = verified(spool, pub)
    assert report.ok
    ids = {e.id for e in events if isinstance(e, StatementStartEvent)}
    done = {e.id for e in events if isinstance(e, StatementEvent)}
    assert ids <= done


def test_kill_9_of_a_worker_leaves_an_unclosed_epoch_and_no_gap(
    start_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    gw, spool, pub = start_audited(start_gateway, tmp_path, workers=1, mode='"strict"')
    with psycopg.connect(gw.dsn(sslmode="disable"), autocommit=True) as conn:
        for i in range(10):
            conn.execute("select %s::int", (i,))
    (child,) = gw.children()
    os.kill(child, signal.SIGKILL)
    deadline = time.time() + 20
    while time.time() < deadline:
        kids = gw.children()
        if kids and kids != [child]:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    with psycopg.connect(gw.dsn(sslmode="disable"), autocommit=True) as conn:
        conn.execute("select 'after restart'")
    assert gw.stop() == 0
    report, events = verified(spool, pub)
    assert report.ok, report.summary()
    assert any("unclosed" in str(w) for w in report.warnings), report.summary()
    texts = [e.text for e in events if isinstance(e, StatementStartEvent)]
    assert texts.count("select $1::int") == 10 and "select 'after restart'" in texts
    assert sum(isinstance(e, WorkerStartEvent) for e in events) == 2
