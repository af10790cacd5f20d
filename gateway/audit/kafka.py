"""The Kafka transport of the audit log: ship a worker's spool to a topic, read it back.

This module owns everything that talks to Kafka (aiokafka); what a record contains is
:mod:`gateway.audit.batch`'s business, where records wait is :mod:`gateway.audit.spool`'s.

:class:`KafkaShipper` is one asyncio task per worker chain that drains a
:class:`ShipSource` (the spool) into one topic, in order:

* The producer is idempotent with ``acks="all"``; every message's key is the chain's
  partition key, so a chain stays in one partition, and its value is the record's bytes
  exactly as spooled (no headers: a verifier trusts only signed bytes).
* Records are sent as explicit Kafka record batches (``send_batch``), one batch in flight
  at a time. Kafka appends a record batch whole or not at all, so a failure can never
  leave a later record of the chain in the topic ahead of an earlier one that was lost;
  and with one batch in flight, nothing of ours is left in the producer when it is
  replaced. A batch counts as delivered only when the broker acknowledged it; then
  ``source.ack(position)`` of its last record (in an executor thread: it fsyncs).
* While Kafka is unreachable the idempotent producer retries the batch in flight by
  itself, with the same producer id and sequence number, so when the broker comes back
  the batch is written exactly once even if an earlier attempt had been written without
  its acknowledgement reaching us. Everything else stays in the spool. After
  ``stall_timeout`` without an acknowledgement the shipper reports itself disconnected.
* When a delivery fails outright (a non-retriable error, or no acknowledgement within
  ``recycle_after``) the producer is discarded, the shipper backs off (bounded
  exponential) and a new producer resends from the first unacknowledged record. If the
  failed batch had in fact been written, the topic then holds it twice: an exact
  redelivery of the same bytes, in order, which consumers drop by (worker, epoch, seq).
  ``stats.producers`` > 1 says that this may have happened.
* Every change of state (connected, a new kind of trouble) is logged once, not every retry.

:func:`read_topic` reads a topic back for ``pgwarden audit verify --kafka`` and ``audit
tail --kafka``: every partition from the beginning up to the end offsets it found when it
started (or on, with ``follow``), without a consumer group or committed offsets.

A topic for the audit log should not gain partitions while it is in use: the key ->
partition mapping (Kafka's murmur2 default, the same as any Java producer's) would move a
chain to another partition, and order across partitions is not defined.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    BrokerResponseError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from gateway.config import AuditKafkaConfig

__all__ = [
    "KafkaReadError",
    "KafkaRecord",
    "KafkaShipper",
    "ShipSource",
    "ShipperStats",
    "SpooledLike",
    "partition_for",
    "read_topic",
    "ssl_context",
]

log = logging.getLogger("pgwarden.audit")

#: Kafka's default largest record batch (message.max.bytes) is 1 MiB + 12 bytes; a batch
#: we build stays under it with room for the batch header.
DEFAULT_BATCH_BYTES = 1_000_000


class SpooledLike(Protocol):
    """One spooled record as a transport sees it."""

    @property
    def position(self) -> Any:
        """Opaque, increasing: ``ack(position)`` acknowledges this record and all before."""

    @property
    def key(self) -> bytes:
        """The chain's partition key (:func:`gateway.audit.batch.partition_key`)."""

    @property
    def record(self) -> bytes:
        """The record, shipped byte for byte."""


class ShipSource(Protocol):
    """What the shipper drains: :class:`gateway.audit.spool.Spool` provides exactly this."""

    def unacked(self) -> Iterable[SpooledLike]:
        """The records not yet acknowledged, in order. (A source may also offer
        ``unacked_cached()``: the same as a list, or ``None`` when that needs I/O; the
        shipper then calls it on the event loop's thread.)"""

    def ack(self, position: Any) -> None:
        """Everything up to and including ``position`` is delivered."""


class KafkaRecord(NamedTuple):
    """One message of the audit topic, as :func:`read_topic` yields it."""

    key: bytes | None
    value: bytes
    partition: int
    offset: int


class KafkaReadError(Exception):
    """The topic cannot be read: unreachable, missing, or no progress within the timeout."""


@dataclass(frozen=True, slots=True)
class ShipperStats:
    """A snapshot of :attr:`KafkaShipper.stats`."""

    delivered: int  # records Kafka acknowledged (and the source was told) since start
    delivered_bytes: int
    pending: int  # records read from the source and not yet acknowledged (one window at most)
    connected: bool  # Kafka answered last time (producer start, delivery, or a refusal)
    last_error: str | None  # why shipping was last held up (kept after it resumed)
    last_delivery: float | None  # time.time() of the last acknowledgement
    producers: int  # producer sessions started; > 1: a batch may have been redelivered


def ssl_context(
    security_protocol: str = "PLAINTEXT",
    cafile: str = "",
    certfile: str = "",
    keyfile: str = "",
) -> ssl.SSLContext | None:
    """The TLS context for ``security_protocol="SSL"`` (server verified against
    ``cafile`` or the system store, hostname checked; a client certificate when
    ``certfile`` is given), or None for PLAINTEXT."""
    if security_protocol == "PLAINTEXT":
        return None
    if security_protocol != "SSL":
        raise ValueError(f"security_protocol must be PLAINTEXT or SSL, not {security_protocol!r}")
    context = ssl.create_default_context(cafile=cafile or None)
    if certfile:
        context.load_cert_chain(certfile, keyfile or None)
    return context


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """The partition of ``key`` among ``partitions``: Kafka's default partitioner
    (murmur2 of the key, as the Java client computes it), so any producer of the same
    topic agrees."""
    ordered = sorted(partitions)
    index: int = (murmur2(key) & 0x7FFFFFFF) % len(ordered)
    return ordered[index]


def _consume_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _RetryNoise(logging.Filter):
    """aiokafka logs every failed reconnect and retried request at WARNING or ERROR,
    about ten a second per connection while Kafka is away; the shipper reports such a
    spell once itself (and read_topic raises). These records are demoted to DEBUG."""

    TEMPLATES = frozenset({
        'Unable connect to "%s:%s": %s',
        "Unable connect to node with id %s: %s",
        "Unable to update metadata from %s",
        "Got error produce response: %s",
        "Got error produce response on topic-partition %s, retrying. Error: %s",
        "Cannot send %r to %s: %r",
        "Failed fetch messages from %s: %s",
        "Failed fetch offsets from %s: %s",
    })

    BOOTSTRAP = 'Unable connect to "%s:%s": %s'

    def __init__(self) -> None:
        super().__init__()
        #: why the last bootstrap connection failed: aiokafka's exception says only
        #: "Unable to bootstrap from [...]", the cause (refused, TLS handshake) is here
        self.last_bootstrap_error = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.BOOTSTRAP and isinstance(record.args, tuple) and record.args:
            self.last_bootstrap_error = str(record.args[-1])
        if record.levelno > logging.DEBUG and record.msg in self.TEMPLATES:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_RETRY_NOISE = _RetryNoise()


def _quiet_aiokafka_retries() -> None:
    for name in ("aiokafka", "aiokafka.producer.sender", "aiokafka.consumer.fetcher"):
        logger = logging.getLogger(name)
        if _RETRY_NOISE not in logger.filters:
            logger.addFilter(_RETRY_NOISE)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    if not text or text == name:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)


class _Stalled(Exception):
    """A batch was not acknowledged within ``recycle_after``."""


class KafkaShipper:
    """Drains ``source`` to ``topic`` in order; see the module docstring for the rules.

    Call :meth:`start` from the event loop, :meth:`notify` whenever records were added to
    the source (it also looks every ``idle_poll`` seconds), and :meth:`close` at the end
    (after the writer wrote its closing batch, so that it is shipped too).
    """

    def __init__(
        self,
        source: ShipSource,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        *,
        client_id: str = "pgwarden",
        request_timeout: float = 30.0,
        security_protocol: str = "PLAINTEXT",
        ssl_cafile: str = "",
        ssl_certfile: str = "",
        ssl_keyfile: str = "",
        stall_timeout: float | None = None,
        recycle_after: float | None = None,
        backoff_min: float = 0.5,
        backoff_max: float = 5.0,
        window_records: int = 1024,
        window_bytes: int = 8 * 1024 * 1024,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        idle_poll: float = 1.0,
    ) -> None:
        if isinstance(bootstrap_servers, str):
            bootstrap_servers = [s for s in bootstrap_servers.split(",") if s]
        if not bootstrap_servers:
            raise ValueError("bootstrap_servers is empty")
        self._source = source
        self._servers = list(bootstrap_servers)
        self._topic = topic
        self._client_id = client_id
        self._request_timeout = request_timeout
        self._ssl = ssl_context(security_protocol, ssl_cafile, ssl_certfile, ssl_keyfile)
        self._security_protocol = security_protocol
        self._stall_timeout = request_timeout if stall_timeout is None else stall_timeout
        self._recycle_after = (
            max(5 * request_timeout, self._stall_timeout) if recycle_after is None
            else recycle_after
        )
        self._backoff_min = backoff_min
        self._backoff_max = max(backoff_max, backoff_min)
        self._window_records = window_records
        self._window_bytes = window_bytes
        self._batch_bytes = batch_bytes
        self._idle_poll = idle_poll

        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()  # set by close(): ends a back-off early
        self._task: asyncio.Task[None] | None = None
        self._producer: Any = None
        self._partitions: list[int] = []
        self._in_flight: tuple[Any, int, int] = (None, 0, 0)  # first position, records, bytes
        self._batch_limit = batch_bytes  # lowered when the broker refuses a batch as too large
        # ack() fsyncs and unacked() reads files: never on the event loop. One thread, so
        # acknowledgements reach the source in order.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="audit-ship")
        self._closing = False

        self._delivered = 0
        self._delivered_bytes = 0
        self._pending = 0
        self._connected = False
        self._trouble: str | None = None  # what was last logged as the reason
        self._trouble_since: float | None = None
        self._last_error: str | None = None
        self._last_delivery: float | None = None
        self._producers = 0

    @classmethod
    def from_config(
        cls, source: ShipSource, cfg: AuditKafkaConfig, **options: Any
    ) -> KafkaShipper:
        """A shipper for ``[audit.kafka]`` (paths already resolved by the config loader)."""
        return cls(
            source,
            cfg.bootstrap_servers,
            cfg.topic,
            client_id=cfg.client_id,
            request_timeout=cfg.request_timeout,
            security_protocol=cfg.security_protocol,
            ssl_cafile=cfg.ssl_cafile,
            ssl_certfile=cfg.ssl_certfile,
            ssl_keyfile=cfg.ssl_keyfile,
            **options,
        )

    # ------------------------------------------------------------------ public API

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def stats(self) -> ShipperStats:
        return ShipperStats(
            delivered=self._delivered,
            delivered_bytes=self._delivered_bytes,
            pending=self._pending,
            connected=self._connected,
            last_error=self._last_error,
            last_delivery=self._last_delivery,
            producers=self._producers,
        )

    def start(self) -> None:
        """Start the shipping task on the running event loop."""
        if self._task is not None:
            raise RuntimeError("KafkaShipper.start() called twice")
        _quiet_aiokafka_retries()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"audit-shipper:{self._topic}"
        )

    def notify(self) -> None:
        """New records are in the source (call on the event loop's thread)."""
        self._wake.set()

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what the source holds within ``timeout`` seconds, then stop (it
        returns within ``timeout`` plus at most 0.2 s). Whatever is not acknowledged by
        then stays in the source for the next start."""
        self._closing = True
        self._wake.set()
        self._stopping.set()
        task = self._task
        deadline = time.monotonic() + timeout
        try:
            if task is not None and not task.done():
                try:
                    # leave a little of the time for closing the producer
                    await asyncio.wait_for(asyncio.shield(task), timeout * 0.9)
                except TimeoutError:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        finally:
            left = deadline - time.monotonic()
            await self._drop_producer(grace=min(max(left / 2, 0.1), 2.0))
            self._executor.shutdown(wait=False, cancel_futures=True)
            if self._pending:
                log.warning(
                    "audit: shipper for Kafka topic %s stopped with %d record(s) not "
                    "acknowledged; they stay in the spool", self._topic, self._pending,
                )

    # ------------------------------------------------------------------ the task

    async def _run(self) -> None:
        backoff = self._backoff_min
        while True:
            try:
                if self._producer is None:
                    await self._connect()
                self._wake.clear()
                window = await self._read_window()
                if not window:
                    self._pending = 0
                    self._cleared()
                    if self._closing:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._idle_poll)
                    continue
                await self._deliver(window)
                backoff = self._backoff_min
                continue
            except asyncio.CancelledError:
                raise
            except _SourceError as exc:
                self._trouble_is(f"cannot read the spool: {_describe(exc.__cause__ or exc)}")
            except Exception as exc:  # every Kafka failure: new producer, resend, in order
                # The broker answered (it refused something): Kafka itself is reachable.
                self._trouble_is(self._explain(exc),
                                 reachable=isinstance(exc, BrokerResponseError))
                await self._drop_producer(grace=1.0)
                if self._shrink_batches(exc):
                    continue  # smaller batches can make progress at once
            # Back off, but not past close(): a stopping worker gets one more attempt
            # (Kafka may be back) instead of sleeping through its shutdown deadline.
            if self._closing:
                await asyncio.sleep(0.2)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, self._backoff_max)

    async def _connect(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._servers,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=int(self._request_timeout * 1000),
            max_batch_size=self._batch_bytes,
            linger_ms=0,
            security_protocol=self._security_protocol,
            ssl_context=self._ssl,
        )
        self._producer = producer
        await producer.start()
        self._producers += 1
        partitions = await producer.partitions_for(self._topic)
        if not partitions:
            raise UnknownTopicOrPartitionError(self._topic)
        self._partitions = sorted(partitions)
        self._connected = True
        if self._producers == 1:
            log.info("audit: shipping to Kafka topic %s at %s", self._topic,
                     ",".join(self._servers))

    async def _read_window(self) -> list[SpooledLike]:
        # What the spool still holds in memory (what this worker appended since the last
        # acknowledgement: the steady state) is taken right here; otherwise the segment
        # files are read in the executor.
        cached = getattr(self._source, "unacked_cached", None)
        try:
            held: list[SpooledLike] | None = cached() if cached is not None else None
            if held is None:
                loop = asyncio.get_running_loop()
                window = await loop.run_in_executor(self._executor, self._read_window_sync)
            else:
                window = self._limit(held)
        except Exception as exc:
            raise _SourceError() from exc
        self._pending = len(window)
        return window

    def _limit(self, items: Iterable[SpooledLike]) -> list[SpooledLike]:
        """The first records of ``items`` that make one window."""
        window: list[SpooledLike] = []
        size = 0
        for item in items:
            window.append(item)
            size += len(item.record)
            if len(window) >= self._window_records or size >= self._window_bytes:
                break
        return window

    def _read_window_sync(self) -> list[SpooledLike]:
        iterator = iter(self._source.unacked())
        try:
            return self._limit(iterator)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a generator holding a segment file open

    async def _deliver(self, window: list[SpooledLike]) -> None:
        """Send ``window`` as record batches, one in flight at a time, each acknowledged
        to the source as soon as Kafka acknowledged it."""
        producer = self._producer
        i = 0
        while i < len(window):
            partition = partition_for(window[i].key, self._partitions)
            builder = producer.create_batch()
            j = i
            size = 0
            while j < len(window):
                item = window[j]
                if j > i and (
                    partition_for(item.key, self._partitions) != partition
                    or size + len(item.record) > self._batch_limit
                ):
                    break
                # The first record always fits (alone, it may exceed the limit).
                if builder.append(key=item.key, value=item.record, timestamp=None) is None:
                    break
                size += len(item.record)
                j += 1
            builder.close()
            self._in_flight = (window[i].position, j - i, size)
            future = await producer.send_batch(builder, self._topic, partition=partition)
            # If this task is cancelled meanwhile, the outcome is nobody's to read.
            future.add_done_callback(_consume_outcome)
            await self._acknowledged(future)
            await self._ack(window[j - 1].position)
            self._delivered += j - i
            self._delivered_bytes += size
            self._pending -= j - i
            self._last_delivery = time.time()
            self._connected = True
            self._cleared()
            i = j

    async def _acknowledged(self, future: asyncio.Future[Any]) -> None:
        """Wait for the broker's acknowledgement of one batch. Past ``stall_timeout``
        report the shipper disconnected and keep waiting (the producer retries by itself,
        which keeps exactly-once across an outage) up to ``recycle_after``."""
        try:
            await asyncio.wait_for(asyncio.shield(future), self._stall_timeout)
            return
        except TimeoutError:
            pass
        self._trouble_is(
            f"no acknowledgement from Kafka for {self._stall_timeout:g}s (the producer "
            "keeps retrying)"
        )
        try:
            await asyncio.wait_for(
                asyncio.shield(future), max(self._recycle_after - self._stall_timeout, 0.0)
            )
        except TimeoutError:
            raise _Stalled(
                f"no acknowledgement from Kafka for {self._recycle_after:g}s; "
                "starting a new producer"
            ) from None

    async def _ack(self, position: Any) -> None:
        """Tell the source; if it cannot record that (its disk), try again rather than
        resend what Kafka already has."""
        loop = asyncio.get_running_loop()
        delay = self._backoff_min
        while True:
            try:
                await loop.run_in_executor(self._executor, self._source.ack, position)
                return
            except Exception as exc:
                self._trouble_is(f"cannot record a Kafka acknowledgement in the spool: "
                                 f"{_describe(exc)}", reachable=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max)

    def _shrink_batches(self, exc: BaseException) -> bool:
        """After the broker refused a batch of several records as too large, build
        smaller ones: the records before the culprit then go through, and a single record
        that is too large is named as such. The learnt limit stays for this shipper."""
        _, count, size = self._in_flight
        if not isinstance(exc, _TOO_LARGE) or count <= 1:
            return False
        self._batch_limit = max(size // 2, 1)
        return True

    def _explain(self, exc: BaseException) -> str:
        if isinstance(exc, KafkaConnectionError) and "bootstrap" in str(exc):
            cause = _RETRY_NOISE.last_bootstrap_error
            return f"cannot connect to Kafka at {','.join(self._servers)}" + (
                f": {cause}" if cause else ""
            )
        if isinstance(exc, UnknownTopicOrPartitionError):
            return (
                f"topic {self._topic!r} not found on {','.join(self._servers)} (it must be "
                "created beforehand; auto-creation is not relied on)"
            )
        if isinstance(exc, _TOO_LARGE):
            first, count, size = self._in_flight
            if count > 1:
                return (
                    f"{_describe(exc)}: the broker refused a batch of {count} records "
                    f"({size} bytes); trying smaller batches"
                )
            return (
                f"{_describe(exc)}: the broker refused the record at spool position "
                f"{first} ({size} bytes) as too large; raise the topic's max.message.bytes "
                "(and the broker's message.max.bytes if lower) above that. It stays in the "
                "spool, and nothing after it is shipped until Kafka takes it"
            )
        return _describe(exc)

    # ------------------------------------------------------------------ state, logging

    def _cleared(self) -> None:
        """Records went through (or there was nothing to send): any trouble is over."""
        if self._trouble is None:
            return
        since = self._trouble_since or time.monotonic()
        log.warning(
            "audit: shipping to Kafka topic %s at %s resumed after %.1fs; delivering what "
            "the spool kept", self._topic, ",".join(self._servers), time.monotonic() - since,
        )
        self._trouble = None
        self._trouble_since = None

    def _trouble_is(self, reason: str, *, reachable: bool = False) -> None:
        """Record a failure; log it only when it is news: the first since records last
        went through, or a different reason from the one last logged."""
        self._last_error = reason
        self._connected = reachable
        if reason == self._trouble:
            return
        if self._trouble_since is None:
            self._trouble_since = time.monotonic()
        self._trouble = reason
        log.warning(
            "audit: shipping to Kafka topic %s is held up (%s); records stay in the spool "
            "and are delivered in order when this clears (retrying with back-off up to "
            "%gs)", self._topic, reason, self._backoff_max,
        )

    async def _drop_producer(self, grace: float) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        stop = asyncio.ensure_future(producer.stop())
        stop.add_done_callback(_consume_outcome)
        try:
            done, _ = await asyncio.wait({stop}, timeout=grace)
            if not done:
                _abandon(producer)
                done, _ = await asyncio.wait({stop}, timeout=grace)
        except asyncio.CancelledError:
            _abandon(producer)  # so that the stop() left running ends by itself
            raise
        if not done:
            stop.cancel()
            log.warning("audit: a Kafka producer did not stop within %.1fs", 2 * grace)
        elif not stop.cancelled() and stop.exception() is not None:
            log.debug("audit: stopping a Kafka producer: %s", _describe(stop.exception()))


def _abandon(producer: Any) -> None:
    """Make a producer's stop() return while Kafka is away.

    stop() waits until every batch is delivered, and the idempotent producer retries a
    batch forever while Kafka is away. Stop its sender task, then fail what it still
    holds (the records stay in the source), so that stop() goes on to close the
    connections. In that order: a sender that sees its batches failed under it dies with
    an error that aiokafka's own cleanup then trips over. (aiokafka has no public way to
    do this; these are its attributes as of 0.11-0.14.)
    """
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if task is not None and not task.done():
        task.cancel()
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:
        accumulator.fail_all(KafkaError("audit shipper: producer discarded"))


class _SourceError(Exception):
    """Reading the source failed (the cause is chained)."""


# ---------------------------------------------------------------------- reading


async def read_topic(
    bootstrap_servers: str | Sequence[str],
    topic: str,
    *,
    from_beginning: bool = True,
    follow: bool = False,
    timeout: float = 30.0,
    client_id: str = "pgwarden-audit-reader",
    security_protocol: str = "PLAINTEXT",
    ssl_cafile: str = "",
    ssl_certfile: str = "",
    ssl_keyfile: str = "",
) -> AsyncIterator[KafkaRecord]:
    """Every message of ``topic``, each partition in offset order.

    All partitions are assigned directly (no consumer group, nothing committed), read
    from the beginning (or from the end with ``from_beginning=False``) up to the end
    offsets found at the start; with ``follow`` it goes on and waits for more. Partitions
    are those the topic has when reading starts. ``timeout`` bounds connecting, and,
    without ``follow``, any wait for the next fetch to make progress:
    :class:`KafkaReadError` then.
    """
    servers = (
        [s for s in bootstrap_servers.split(",") if s] if isinstance(bootstrap_servers, str)
        else list(bootstrap_servers)
    )
    _quiet_aiokafka_retries()
    context = ssl_context(security_protocol, ssl_cafile, ssl_certfile, ssl_keyfile)
    common: dict[str, Any] = {
        "bootstrap_servers": servers,
        "client_id": client_id,
        "request_timeout_ms": int(timeout * 1000),
        "security_protocol": security_protocol,
        "ssl_context": context,
    }
    partitions = await _partitions_of(topic, timeout, common)
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **common,
    )
    try:
        await asyncio.wait_for(consumer.start(), timeout)
    except Exception as exc:
        await consumer.stop()
        raise KafkaReadError(f"cannot connect to Kafka at {','.join(servers)}: "
                             f"{_describe(exc)}") from exc
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        ends: dict[Any, int] = {}
        if not follow:
            ends = dict(await consumer.end_offsets(tps))
            for tp in tps:
                if await consumer.position(tp) >= ends[tp]:
                    del ends[tp]  # nothing (more) to read there
                    consumer.pause(tp)
        last_progress = time.monotonic()
        while follow or ends:
            fetched = await consumer.getmany(timeout_ms=500)
            for tp, messages in fetched.items():
                for message in messages:
                    if not follow and (tp not in ends or message.offset >= ends[tp]):
                        break
                    yield KafkaRecord(
                        message.key,
                        message.value if message.value is not None else b"",
                        tp.partition,
                        message.offset,
                    )
                    last_progress = time.monotonic()
            if not follow:
                for tp in list(ends):
                    # position, not the last offset seen: it also steps over offsets
                    # that hold no message (transaction markers, compacted gaps)
                    if await consumer.position(tp) >= ends[tp]:
                        del ends[tp]
                        consumer.pause(tp)
                if ends and time.monotonic() - last_progress > timeout:
                    behind = {tp.partition: ends[tp] for tp in ends}
                    raise KafkaReadError(
                        f"reading {topic}: no progress for {timeout:g}s with partitions "
                        f"{sorted(behind)} not yet at their end offsets {behind}"
                    )
    finally:
        await consumer.stop()


async def _partitions_of(topic: str, timeout: float, common: dict[str, Any]) -> list[int]:
    admin = AIOKafkaAdminClient(**common)
    servers = ",".join(common["bootstrap_servers"])
    try:
        await asyncio.wait_for(admin.start(), timeout)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await admin.close()
        raise KafkaReadError(f"cannot connect to Kafka at {servers}: {_describe(exc)}") from exc
    try:
        described = await asyncio.wait_for(admin.describe_topics([topic]), timeout)
    except Exception as exc:
        raise KafkaReadError(f"cannot describe topic {topic!r}: {_describe(exc)}") from exc
    finally:
        await admin.close()
    if not described or described[0]["error_code"] != 0 or not described[0]["partitions"]:
        code = described[0]["error_code"] if described else None
        raise KafkaReadError(f"topic {topic!r} not found on {servers} (error code {code})")
    return sorted(int(p["partition"]) for p in described[0]["partitions"])
