"""A throwaway single-node Apache Kafka broker (KRaft) for the test suite.

This module owns running the real Kafka broker that the audit tests ship to, the way
:mod:`gateway.devcluster` owns a disposable PostgreSQL:

* finding the broker's jars (:func:`kafka_libs`), which ``scripts/kafka-assemble``
  copies from Maven Central (``org.apache.kafka:kafka_2.13`` and its dependencies) into
  ``$PGWARDEN_KAFKA_HOME`` (default ``~/.cache/pgwarden/kafka-<version>``)``/libs``,
* finding Java (:func:`java_executable`: ``$JAVA_HOME/bin/java``, else ``java`` on PATH),
* :class:`KafkaBroker`: one process that is both controller and broker, on free loopback
  ports, with its storage formatted by ``kafka.tools.StorageTool`` and run by
  ``kafka.Kafka``; start / wait until it answers metadata / stop (SIGTERM, then SIGKILL) /
  start again on the same ports and data, so a test can take Kafka away and bring it
  back; and topic creation. With ``tls=True`` it also listens with TLS and requires a
  client certificate (mutual TLS), with self-signed certificates it makes for both sides.

It is a development tool, not part of the data path: nothing under ``gateway/`` imports it.
``aiokafka`` is imported only when the broker is probed or a topic is created.

Layout under ``workdir``::

    server.properties   generated at every start (the same ports every time)
    log4j2.properties   the broker's logging: one file, no config dumps
    tls/server/         with tls=True: the broker's certificate (clients' CA file) and key
    tls/client/         with tls=True: the one client certificate the broker trusts
    data/               log.dirs and the KRaft metadata log (formatted once)
    kafka.log           the JVM's stdout and stderr, appended across restarts

The JVM is sized for a 2-core test machine: ``-Xmx256m -Xms64m``, the serial collector
and client-compiler-only JIT (``-XX:TieredStopAtLevel=1``). Measured there (medians of
three, from spawning the JVM to a metadata response): a first start, which formats the
storage first, 3.0 s with the JVM's defaults and 2.6 s with these flags; a restart 2.2 s
and 1.7 s. The broker's own thread pools and the log cleaner's buffer are shrunk to match.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from gateway.devcluster import free_port, make_self_signed_cert

__all__ = [
    "KAFKA_VERSION",
    "BrokerError",
    "KafkaBroker",
    "java_executable",
    "kafka_home",
    "kafka_libs",
]

#: The Kafka release scripts/kafka/pom.xml assembles (keep the two in step).
KAFKA_VERSION = "4.4.0"
_MAIN_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"
_LOG_TAIL_LINES = 40
_T = TypeVar("_T")

#: JVM flags: a small heap, and what starts a JVM fastest on 2 shared cores.
JVM_FLAGS = (
    "-Xmx256m",
    "-Xms64m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

_LOG4J2 = """\
# written by gateway.devkafka: everything to stdout (kafka.log), no per-start config dumps
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.config.name = org.apache.kafka.common.config
logger.config.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class BrokerError(RuntimeError):
    """The development Kafka broker could not be found, started or used."""


def kafka_home() -> Path:
    """``$PGWARDEN_KAFKA_HOME``, else ``~/.cache/pgwarden/kafka-<KAFKA_VERSION>``."""
    env = os.environ.get("PGWARDEN_KAFKA_HOME")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "pgwarden" / f"kafka-{KAFKA_VERSION}"


def kafka_libs(home: Path | None = None) -> Path:
    """The directory of the broker's jars; :class:`BrokerError` if not assembled."""
    libs = (home if home is not None else kafka_home()) / "libs"
    if not (libs / _MAIN_JAR).is_file():
        raise BrokerError(
            f"Apache Kafka {KAFKA_VERSION} is not assembled ({libs / _MAIN_JAR} is missing): "
            "run scripts/kafka-assemble (scripts/bootstrap does)"
        )
    return libs


def java_executable() -> str:
    """``$JAVA_HOME/bin/java`` when it exists, else ``java`` on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise BrokerError(
            "Java not found (looked at $JAVA_HOME/bin/java and PATH); Kafka 4 needs Java 17+"
        )
    return found


def _cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding, as
    ``kafka-storage random-uuid`` prints (and never starting with '-', which a command
    line would take for an option)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no broker log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _run_async(factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion on a private event loop in a helper thread, so the
    synchronous API works both from plain code and from inside a running event loop (an
    async test that stops and restarts the broker from a thread)."""

    async def main() -> _T:
        return await factory()

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="devkafka") as pool:
        return pool.submit(asyncio.run, main()).result()


def _another_free_port(taken: set[int]) -> int:
    port = free_port()
    while port in taken:
        port = free_port()
    return port


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


class KafkaBroker:
    """A single-node Kafka (KRaft, combined broker and controller) under ``workdir``.

    >>> with KafkaBroker(tmp_path) as kafka:           # doctest: +SKIP
    ...     kafka.create_topic("audit", partitions=3)
    ...     producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)

    ``port`` (the client listener) and ``controller_port`` are picked free at the first
    start unless given, and kept for every later start, as is the data directory: a
    stopped broker comes back with everything it had acknowledged. ``extra_config`` is
    appended to ``server.properties`` last (a later key wins).

    ``tls=True`` adds a TLS listener (:attr:`ssl_bootstrap`) that requires the client
    certificate :attr:`client_cert_file` / :attr:`client_key_file`; clients verify the
    broker against :attr:`tls_ca_file` (its self-signed certificate, for ``localhost``
    and ``127.0.0.1``).
    """

    def __init__(
        self,
        workdir: str | Path,
        port: int | None = None,
        controller_port: int | None = None,
        *,
        tls: bool = False,
        ssl_port: int | None = None,
        extra_config: Mapping[str, str] | None = None,
        home: str | Path | None = None,
    ) -> None:
        self._workdir = Path(workdir).absolute()
        self._fixed_ports = any(p is not None for p in (port, controller_port, ssl_port))
        self._port = port or 0
        self._controller_port = controller_port or 0
        self._tls = tls or ssl_port is not None
        self._ssl_port = ssl_port or 0
        self._extra = dict(extra_config or {})
        self._home = Path(home) if home is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self.last_start_seconds: float | None = None

    # -- properties ------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The client (PLAINTEXT) port; 0 before the first start."""
        return self._port

    @property
    def controller_port(self) -> int:
        return self._controller_port

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:<port>"``, for ``bootstrap_servers``."""
        return f"{self.host}:{self._port}"

    @property
    def ssl_port(self) -> int:
        """The TLS listener's port (``tls=True``); 0 before the first start."""
        return self._ssl_port

    @property
    def ssl_bootstrap(self) -> str:
        """``"127.0.0.1:<ssl_port>"``: the TLS listener, client certificate required."""
        if not self._tls:
            raise BrokerError("this broker has no TLS listener (KafkaBroker(..., tls=True))")
        return f"{self.host}:{self._ssl_port}"

    @property
    def tls_ca_file(self) -> Path:
        """The broker's certificate, which a client verifies it against (``cafile``)."""
        return self._workdir / "tls" / "server" / "server.crt"

    @property
    def client_cert_file(self) -> Path:
        return self._workdir / "tls" / "client" / "server.crt"

    @property
    def client_key_file(self) -> Path:
        return self._workdir / "tls" / "client" / "server.key"

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def data_dir(self) -> Path:
        return self._workdir / "data"

    @property
    def log_file(self) -> Path:
        return self._workdir / "kafka.log"

    @property
    def config_file(self) -> Path:
        return self._workdir / "server.properties"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Format the storage if this is the first start, start the broker and wait until
        it answers metadata (:meth:`wait_ready`). A no-op while it runs."""
        if self.running:
            return
        libs = kafka_libs(self._home)
        java = java_executable()
        self._workdir.mkdir(parents=True, exist_ok=True)
        if self._tls and not self.tls_ca_file.exists():
            make_self_signed_cert(self.tls_ca_file.parent, "localhost", ("localhost", "127.0.0.1"))
            make_self_signed_cert(self.client_cert_file.parent, "pgwarden-test-client",
                                  ("pgwarden-test-client",))
        started = time.monotonic()
        first = self._port == 0 or self._controller_port == 0
        # A port picked free can be taken before the JVM binds it; pick again then. Ports
        # that were given, or that an earlier start used, are the broker's identity.
        attempts = 3 if first and not self._fixed_ports else 1
        for attempt in range(attempts):
            if self._port == 0 or attempt:
                self._port = free_port()
            taken = {self._port}
            if self._controller_port == 0 or attempt:
                self._controller_port = _another_free_port(taken)
            taken.add(self._controller_port)
            if self._tls and (self._ssl_port == 0 or attempt):
                self._ssl_port = _another_free_port(taken)
            self._write_config()
            if not (self.data_dir / "meta.properties").exists():
                self._format(java, libs)
            self._spawn(java, libs)
            try:
                self.wait_ready(max(1.0, timeout - (time.monotonic() - started)))
                break
            except BrokerError:
                in_use = "Address already in use" in _tail(self.log_file, 200)
                self._terminate(10.0)
                if attempt + 1 < attempts and in_use:
                    continue
                raise
        self.last_start_seconds = time.monotonic() - started
        atexit.register(self.stop)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the broker lists itself in a metadata response: the controller has
        elected itself and the broker is registered and unfenced, so topics can be
        created and written. :class:`BrokerError` (with the log's tail) otherwise."""
        deadline = time.monotonic() + timeout
        last = "the port did not open"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise BrokerError(
                    f"the Kafka broker exited (status {code}) before it was ready\n"
                    f"--- tail of {self.log_file} ---\n{_tail(self.log_file)}"
                )
            if _port_open(self._port):
                try:
                    brokers = _run_async(lambda: self._describe_brokers(5.0))
                except Exception as exc:  # any failure of the probe means "not yet"
                    last = f"metadata probe: {type(exc).__name__}: {exc}"
                else:
                    if brokers:
                        return
                    last = "the metadata response lists no broker yet"
            time.sleep(0.1)
        raise BrokerError(
            f"the Kafka broker on {self.bootstrap} was not ready within {timeout:.0f}s "
            f"({last})\n--- tail of {self.log_file} ---\n{_tail(self.log_file)}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown that flushes the logs), wait up to ``timeout``,
        then SIGKILL. Safe to call more than once; :meth:`start` brings it back."""
        self._terminate(timeout)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def kill(self) -> None:
        """SIGKILL at once: a crash, for tests of what survives one."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- topics ----------------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        config: Mapping[str, str] | None = None,
        exist_ok: bool = False,
        timeout: float = 30.0,
    ) -> None:
        """Create ``name`` (replication factor 1) and wait until every partition has a
        leader, so the next produce does not race the topic's creation."""
        _run_async(lambda: self._create_topic(name, partitions, config, exist_ok, timeout))

    async def _create_topic(
        self,
        name: str,
        partitions: int,
        config: Mapping[str, str] | None,
        exist_ok: bool,
        timeout: float,
    ) -> None:
        from aiokafka.admin import (  # type: ignore[import-untyped]
            AIOKafkaAdminClient,
            NewTopic,
        )
        from aiokafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped]

        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=int(timeout * 1000)
        )
        await admin.start()
        try:
            topic = NewTopic(name, partitions, 1, topic_configs=dict(config or {}))
            try:
                response = await admin.create_topics([topic])
            except TopicAlreadyExistsError:
                if not exist_ok:
                    raise
            else:
                for _name, code, *rest in response.topic_errors:
                    if code == TopicAlreadyExistsError.errno and exist_ok:
                        continue
                    if code:
                        message = rest[0] if rest else ""
                        raise BrokerError(f"creating topic {name!r}: error {code} {message}")
            deadline = time.monotonic() + timeout
            while True:
                described = await admin.describe_topics([name])
                parts = described[0]["partitions"] if described else []
                if (
                    described
                    and described[0]["error_code"] == 0
                    and len(parts) >= partitions
                    and all(p["leader"] >= 0 for p in parts)
                ):
                    return
                if time.monotonic() > deadline:
                    raise BrokerError(f"topic {name!r} has no leaders after {timeout:.0f}s")
                await asyncio.sleep(0.05)
        finally:
            await admin.close()

    # -- internals -------------------------------------------------------------------

    async def _describe_brokers(self, timeout: float) -> list[Any]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=int(timeout * 1000)
        )
        await asyncio.wait_for(admin.start(), timeout)
        try:
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
            brokers: list[Any] = cluster.get("brokers", [])
            return brokers
        finally:
            await admin.close()

    def _properties(self) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self._controller_port}",
            "listeners": (
                f"PLAINTEXT://{self.host}:{self._port},CONTROLLER://{self.host}:"
                f"{self._controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self._port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # One node: every internal topic with one replica, one partition where the
            # default (50) would only slow down the first consumer group or transaction.
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            # Small segments (1 MiB is Kafka's minimum), small thread pools, and a cleaner
            # buffer that fits the 256 MiB heap (the default alone is 128 MiB).
            "log.segment.bytes": "1048576",
            "log.cleaner.dedupe.buffer.size": "8388608",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "num.replica.fetchers": "1",
        }
        if self._tls:
            props["listeners"] += f",SSL://{self.host}:{self._ssl_port}"
            props["advertised.listeners"] += f",SSL://{self.host}:{self._ssl_port}"
            props["listener.security.protocol.map"] += ",SSL:SSL"
            # PEM inline (Kafka 2.7+), so no Java keystore has to be made; a properties
            # file spells the newlines as \n.
            inline = {
                "ssl.keystore.certificate.chain": self.tls_ca_file,
                "ssl.keystore.key": self.tls_ca_file.with_name("server.key"),
                "ssl.truststore.certificates": self.client_cert_file,
            }
            for key, path in inline.items():
                props[f"listener.name.ssl.{key}"] = path.read_text().replace("\n", "\\n")
            props["listener.name.ssl.ssl.keystore.type"] = "PEM"
            props["listener.name.ssl.ssl.truststore.type"] = "PEM"
            props["listener.name.ssl.ssl.client.auth"] = "required"
        props.update(self._extra)
        return props

    def _write_config(self) -> None:
        lines = ["# written by gateway.devkafka"]
        lines += [f"{key}={value}" for key, value in self._properties().items()]
        self.config_file.write_text("\n".join(lines) + "\n")
        self.config_file.chmod(0o600)  # with tls=True it holds the broker's private key
        (self._workdir / "log4j2.properties").write_text(_LOG4J2)

    def _java_command(self, java: str, libs: Path, main: str, *args: str) -> list[str]:
        return [
            java,
            *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={self._workdir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self._workdir}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _format(self, java: str, libs: Path) -> None:
        # A static quorum (controller.quorum.voters): `format -t <id>` without
        # --standalone, which is for a dynamic quorum (controller.quorum.bootstrap.servers).
        cmd = self._java_command(
            java, libs, "kafka.tools.StorageTool",
            "format", "-t", _cluster_id(), "-c", str(self.config_file),
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        with open(self.log_file, "a") as log:
            log.write(f"--- kafka.tools.StorageTool format (exit {proc.returncode})\n")
            log.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        if proc.returncode != 0:
            raise BrokerError(
                f"formatting the Kafka storage failed (exit {proc.returncode}):\n"
                f"{(proc.stderr or proc.stdout)[-3000:]}"
            )

    def _spawn(self, java: str, libs: Path) -> None:
        cmd = self._java_command(java, libs, "kafka.Kafka", str(self.config_file))
        with open(self.log_file, "ab") as log:
            log.write(f"--- kafka.Kafka on {self.bootstrap} ({time.ctime()})\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
                start_new_session=True,
            )

    def _terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._proc = None
