"""The development Kafka broker (gateway/devkafka.py) is a real, working Apache Kafka.

It starts from the jars scripts/kafka-assemble fetched from Maven Central, takes a topic,
round-trips bytes through aiokafka with the producer settings the audit shipper uses
(acks=all, idempotent), and keeps what it acknowledged across a stop and a start on the
same ports and data directory.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from gateway.devkafka import KAFKA_VERSION, BrokerError, KafkaBroker, kafka_libs

ROOT = Path(__file__).resolve().parents[2]


async def produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for key, value in items:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def consume_all(
    bootstrap: str, topic: str, partitions: int = 1
) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every message of ``topic``: (partition, offset, key, value), partitions assigned
    directly and read from the beginning to the end offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[tuple[int, int, bytes | None, bytes]] = []
        for _ in range(200):
            if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
            batch = await consumer.getmany(timeout_ms=200)
            for tp, messages in batch.items():
                out.extend((tp.partition, m.offset, m.key, m.value) for m in messages)
        return sorted(out)
    finally:
        await consumer.stop()


def test_kafka_version_matches_the_pom() -> None:
    pom = (ROOT / "scripts" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert match is not None
    assert match.group(1) == KAFKA_VERSION


def test_the_broker_is_the_assembled_release(kafka: KafkaBroker) -> None:
    libs = kafka_libs()
    assert (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()
    assert kafka.running and kafka.port > 0
    assert kafka.bootstrap == f"127.0.0.1:{kafka.port}"
    assert kafka.last_start_seconds is not None
    log = kafka.log_file.read_text()
    assert "Kafka Server started" in log
    assert "SLF4J" not in log  # the binding is there: no "no providers" warning


def test_produce_and_consume_the_same_bytes(kafka: KafkaBroker) -> None:
    kafka.create_topic("broker-roundtrip", partitions=2)
    items = [
        (b"gw:1", bytes(range(256)) * 4),
        (b"gw:2", b"\x00" * 70_000),
        (b"gw:1", "é\u2028\x00end".encode()),
        (b"gw:1", b""),
    ]
    asyncio.run(produce(kafka.bootstrap, "broker-roundtrip", items))
    got = asyncio.run(consume_all(kafka.bootstrap, "broker-roundtrip", partitions=2))
    assert sorted((k, v) for _, _, k, v in got) == sorted(items)
    # one key, one partition, in the order sent
    by_key: dict[bytes | None, set[int]] = {}
    for partition, _, key, _ in got:
        by_key.setdefault(key, set()).add(partition)
    assert all(len(parts) == 1 for parts in by_key.values())
    gw1 = [v for _, _, k, v in got if k == b"gw:1"]
    assert gw1 == [v for k, v in items if k == b"gw:1"]


def test_create_topic_twice(kafka: KafkaBroker) -> None:
    kafka.create_topic("broker-twice")
    kafka.create_topic("broker-twice", exist_ok=True)
    with pytest.raises(BrokerError, match="already exists"):
        kafka.create_topic("broker-twice")


def test_stop_and_start_keep_ports_and_data(tmp_path: Path) -> None:
    with KafkaBroker(tmp_path / "k") as broker:
        broker.create_topic("kept")
        port, controller = broker.port, broker.controller_port
        first = [(b"k", b"before-%d" % i) for i in range(20)]
        asyncio.run(produce(broker.bootstrap, "kept", first))
        broker.stop()
        assert not broker.running
        broker.start()
        assert (broker.port, broker.controller_port) == (port, controller)
        second = [(b"k", b"after-%d" % i) for i in range(5)]
        asyncio.run(produce(broker.bootstrap, "kept", second))
        got = asyncio.run(consume_all(broker.bootstrap, "kept"))
        assert [(k, v) for _, _, k, v in got] == first + second
        assert [offset for _, offset, _, _ in got] == list(range(25))
    assert not broker.running


def test_missing_jars_say_how_to_get_them(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "k", home=tmp_path / "no-kafka-here")
    with pytest.raises(BrokerError, match="run scripts/kafka-assemble"):
        broker.start()
