"""The gateway's audit log delivered to a real Kafka broker, verified from the topic.

- statements through the gateway reach the topic, and `pgwarden audit verify --kafka` /
  `audit tail --kafka` verify and stream them;
- Kafka stopped for 60 s under pgbench load, then restarted: every statement pgbench
  executed is in the verified stream exactly once (redeliveries are dropped by
  (gateway, worker, epoch, seq)), with no gap.
"""

from __future__ import annotations

import asyncio
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
    SourcedRecord,
    StatementEvent,
    StatementStartEvent,
    Verifier,
    load_public_keys,
)
from gateway.audit.kafka import read_topic
from gateway.audit.keys import generate_key
from gateway.devcluster import PgCluster
from gateway.devkafka import KafkaBroker
from tests.support import CLIENT_USER, Gateway, pgbench_database

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = 60


def audit_section(tmp: Path, bootstrap: str, topic: str) -> tuple[str, Path]:
    key = tmp / "audit.key"
    generate_key(key)
    section = (
        f'[audit]\nspool_dir = "{tmp / "spool"}"\nsigning_key_file = "{key}"\n'
        "flush_interval = 0.05\n\n"
        f'[audit.kafka]\nbootstrap_servers = ["{bootstrap}"]\ntopic = "{topic}"\n'
        "request_timeout = 5.0\n"
    )
    return section, Path(f"{key}.pub")


def topic_records(bootstrap: str, topic: str) -> list[SourcedRecord]:
    async def collect() -> list[SourcedRecord]:
        return [
            SourcedRecord(r.value, f"kafka:{topic}[{r.partition}]@{r.offset}", r.key)
            async for r in read_topic(bootstrap, topic)
        ]

    return asyncio.run(collect())


def verify_topic(bootstrap: str, topic: str, pub: Path) -> tuple[Any, list[Any]]:
    verifier = Verifier(load_public_keys([str(pub)]))
    events = [e for _, e in verifier.events(topic_records(bootstrap, topic))]
    return verifier.finish(), events


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=180)


def test_statements_reach_kafka_and_verify_from_the_topic(
    start_gateway: Callable[..., Gateway], kafka: KafkaBroker, tmp_path: Path
) -> None:
    topic = "audit-e2e"
    kafka.create_topic(topic, partitions=2)
    section, pub = audit_section(tmp_path, kafka.bootstrap, topic)
    gw = start_gateway(workers=2, audit=section)
    marker = f"k{time.time_ns()}"
    with psycopg.connect(gw.dsn(sslmode="disable"), autocommit=True) as conn:
        for i in range(25):
            conn.execute(f"select {i} as {marker}")
    assert gw.stop() == 0  # close batches written and shipped on the way out

    report, events = verify_topic(kafka.bootstrap, topic, pub)
    assert report.ok, report.summary()
    mine = [e for e in events if isinstance(e, StatementEvent) and marker in e.text]
    assert len(mine) == 25 and {e.subject for e in mine} == {CLIENT_USER}
    out = cli("audit", "verify", "--kafka", kafka.bootstrap, "--topic", topic, "--keys",
              str(pub), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["ok"] is True
    tail = cli("audit", "tail", "--kafka", kafka.bootstrap, "--topic", topic, "--keys", str(pub))
    assert tail.returncode == 0, tail.stderr
    assert sum(marker in line for line in tail.stdout.splitlines()) == 25


def test_kafka_outage_under_pgbench_load_loses_nothing(
    start_gateway: Callable[..., Gateway], pg: PgCluster, tmp_path: Path
) -> None:
    # Its own broker: this test takes Kafka away.
    broker = KafkaBroker(tmp_path / "kafka")
    broker.start()
    try:
        topic = "audit-outage"
        broker.create_topic(topic, partitions=1)
        section, pub = audit_section(tmp_path, broker.bootstrap, topic)
        gw = start_gateway(workers=2, audit=section)
        db = pgbench_database(pg)
        duration = OUTAGE_SECONDS + 20
        bench = subprocess.Popen(
            ["pgbench", "-S", "-M", "prepared", "-c", "4", "-R", "300", "-T", str(duration),
             "-n", db],
            env=gw.env(sslmode="disable"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(5)
        broker.stop()
        time.sleep(OUTAGE_SECONDS)
        broker.start()
        out, err = bench.communicate(timeout=duration + 120)
        assert bench.returncode == 0, err
        processed = int(out.split("number of transactions actually processed: ")[1]
                        .split("\n")[0].split("/")[0])
        assert processed > 300 * (duration - 10)
        assert gw.stop() == 0  # workers deliver the rest, then write their close batches
        report, events = verify_topic(broker.bootstrap, topic, pub)
        assert report.ok, report.summary()
        selects = [e for e in events if isinstance(e, StatementEvent)
                   and e.text.startswith("SELECT abalance FROM pgbench_accounts")]
        assert len(selects) == processed
        assert len({e.id for e in selects}) == processed  # each exactly once
        assert {(e.decision, e.sqlstate, e.subject) for e in selects} == {
            ("allow", "", CLIENT_USER)}
        assert "Kafka" in gw.log() or "kafka" in gw.log()
    finally:
        broker.stop()


def test_worker_killed_under_load_its_successor_ships_the_rest(
    start_gateway: Callable[..., Gateway], kafka: KafkaBroker, pg: PgCluster, tmp_path: Path
) -> None:
    topic = "audit-kill9"
    kafka.create_topic(topic, partitions=1)
    section, pub = audit_section(tmp_path, kafka.bootstrap, topic)
    section = section.replace("[audit]\n", '[audit]\nmode = "strict"\n', 1)
    gw = start_gateway(workers=1, audit=section)
    db = pgbench_database(pg)
    bench = subprocess.Popen(
        ["pgbench", "-S", "-M", "prepared", "-c", "2", "-T", "6", "-n", db],
        env=gw.env(sslmode="disable"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    (child,) = gw.children()
    os.kill(child, signal.SIGKILL)  # mid-load: its chain is left open
    bench.communicate(timeout=60)  # pgbench's sessions on that worker die with it
    deadline = time.time() + 20
    while time.time() < deadline and gw.children() in ([], [child]):
        time.sleep(0.2)
    time.sleep(1.0)
    with psycopg.connect(gw.dsn(sslmode="disable"), autocommit=True) as conn:
        conn.execute("select 'after the crash'")
    assert gw.stop() == 0
    report, events = verify_topic(kafka.bootstrap, topic, pub)
    # The dead epoch is unclosed (a warning: its successor's signed link confirms where
    # it ended) and nothing is missing from it.
    assert report.ok, report.summary()
    assert any("unclosed" in str(w) for w in report.warnings), report.summary()
    starts = [e for e in events if isinstance(e, StatementStartEvent)]
    assert len(starts) > 100
    assert any(isinstance(e, StatementEvent) and e.text == "select 'after the crash'"
               for e in events)
