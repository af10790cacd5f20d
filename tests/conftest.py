"""Shared fixtures: a real PostgreSQL cluster and real pgwarden processes in front of it.

The cluster is started once per test session from the Debian binaries (initdb into a
temp dir, SCRAM authentication). ``start_gateway`` runs ``pgwarden serve`` as a separate
process (supervisor + forked workers) with a generated configuration, so the end-to-end
tests exercise exactly what a user runs.

``kafka`` is a real Apache Kafka broker (KRaft, one node, jars from scripts/kafka-assemble,
a plaintext and a mutual-TLS listener) for the session, started by the first test that asks
for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.devcluster import PgCluster, make_self_signed_cert
from gateway.devkafka import KafkaBroker
from tests.support import (
    DATABASE,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    Gateway,
    spawn_gateway,
)


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    cluster = PgCluster(tmp_path_factory.mktemp("pg"))
    cluster.start()
    try:
        cluster.create_role(UPSTREAM_USER, UPSTREAM_PASSWORD)
        cluster.create_database(DATABASE, owner=UPSTREAM_USER)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def start_gateway(
    pg: PgCluster,
    tls_files: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []
    cert, key = tls_files

    def start(**options: Any) -> Gateway:
        gw = spawn_gateway(tmp_path_factory.mktemp("gw"), pg, cert, key, **options)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="session")
def gateway(
    start_gateway: Callable[..., Gateway], tmp_path_factory: pytest.TempPathFactory
) -> Gateway:
    """The shared gateway: 2 workers, TLS available, plaintext allowed on loopback, the
    baseline policy for a read-write role, and the signed audit log on (so that every
    client of the compatibility matrix also runs through the audit trail)."""
    from gateway.audit.keys import generate_key

    audit_dir = tmp_path_factory.mktemp("shared-audit")
    generate_key(audit_dir / "audit.key")
    audit = (
        f'[audit]\nspool_dir = "{audit_dir / "spool"}"\n'
        f'signing_key_file = "{audit_dir / "audit.key"}"\n'
    )
    gw = start_gateway(audit=audit)
    gw.extra["audit_dir"] = audit_dir
    return gw


@pytest.fixture(scope="session")
def plain_gateway(
    start_gateway: Callable[..., Gateway], tmp_path_factory: pytest.TempPathFactory
) -> Gateway:
    """The shared gateway's twin with plain TCP to PostgreSQL: a client that connects
    without TLS has both sides of its session on direct socket I/O
    (gateway.server.fastio), which the compatibility matrix also runs through."""
    from gateway.audit.keys import generate_key

    audit_dir = tmp_path_factory.mktemp("plain-audit")
    generate_key(audit_dir / "audit.key")
    audit = (
        f'[audit]\nspool_dir = "{audit_dir / "spool"}"\n'
        f'signing_key_file = "{audit_dir / "audit.key"}"\n'
    )
    return start_gateway(audit=audit, upstream_extra='sslmode = "disable"')


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The shared Kafka broker. Tests must not stop it: one that takes Kafka away runs
    its own ``KafkaBroker``."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), tls=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
