"""AuditWriter: the per-worker asyncio batcher between ``emit(event)`` and the spool.

This module owns *when* events become records: batching by count and time, sealing
(:class:`gateway.audit.batch.Chain`), group commit into the spool
(:class:`gateway.audit.spool.Spool`) off the event loop, durability notifications for
``strict`` mode, the open and close batches of an epoch, and what happens when the spool
is full or cannot be written. Shipping to Kafka is not here: a shipper reads the spool and
is woken by ``on_batch``.

Life of an event: ``emit`` encodes it into the pending batch, an
:class:`~gateway.audit.pending.EventBuffer` (the session trail's C fast path formats
statement events straight into it). A batch is sealed into a record as soon as it holds
``flush_events`` events, ``flush_interval`` seconds after its first event, or at once when
someone awaits :meth:`AuditWriter.durable`. One drain task hands the sealed records to a
single-thread executor that writes and fsyncs them; records sealed meanwhile wait and go
into the next append, so one fsync covers everything that arrived during the previous one
(group commit), whatever the load.

Failures are never silent: a spool write error is logged at ERROR, exposed as ``failed``,
fails pending ``durable()`` waiters, and the sealed records are kept and retried (the
spool cuts a failed append back, so a retry neither tears nor duplicates), so no event is
lost while the process lives. Under ``on_spool_full = "fail_open"`` events emitted while
the spool is full are discarded, counted, and an ``events_dropped`` event records the
loss as soon as the spool has room again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import msgspec
from nacl.signing import SigningKey

from gateway import __version__
from gateway.audit.batch import Chain, Link, link_to
from gateway.audit.events import Event, EventsDroppedEvent, WorkerStartEvent, WorkerStopEvent
from gateway.audit.pending import EventBuffer
from gateway.audit.spool import Spool
from gateway.config import AuditConfig

__all__ = ["AuditWriteError", "AuditWriter", "WriterStats"]

log = logging.getLogger("pgwarden.audit")

#: After a failed spool write, the next attempt waits this long (seconds).
RETRY_DELAY = 1.0
_encoder = msgspec.json.Encoder()
_EventTypes = tuple(getattr(Event, "__args__", ()))


class AuditWriteError(Exception):
    """Events could not (yet) be made durable; they are kept and retried."""


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A snapshot of an AuditWriter's counters, for metrics and tests."""

    emitted: int  # events queued (emitted ones and the writer's own events_dropped)
    durable: int  # of those, events fsynced in the spool
    batches: int  # records written, open and close batches included
    appends: int  # spool appends, i.e. fsyncs: batches / appends is the group-commit size
    failures: int  # failed spool appends
    dropped: int  # events discarded under fail_open while the spool was full


class AuditWriter:
    """Batches one worker's events into its signed chain in the spool.

    ``start()`` before use, ``close()`` at the end; ``emit`` and ``durable`` must be called
    from the event loop's thread.
    """

    def __init__(
        self,
        cfg: AuditConfig,
        gateway_id: str,
        worker_id: int,
        signing_key: SigningKey,
        *,
        on_batch: Callable[[], None] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.cfg = cfg
        self.gateway_id = gateway_id
        self.worker_id = worker_id
        self.spool: Spool | None = None
        self.chain: Chain | None = None
        self._key = signing_key
        self._on_batch = on_batch
        self._clock = clock
        self._flush_events = cfg.flush_events
        self._flush_interval = cfg.flush_interval
        self._fail_open = cfg.on_spool_full == "fail_open"
        # The encoded events of the batch being filled. The buffer is never replaced
        # (sealing reads and clears it): the session audit trail's C fast path writes
        # events into it directly while fast_ok is true (see fast_sink).
        self._pending = EventBuffer()
        # Events ever sealed off the pending buffer: with the buffer's count, every event
        # ever queued (``_emitted``), so that appending an event is all the C fast path
        # does per event.
        self._taken = 0
        # fast_ok as one byte the C fast path reads directly (see fast_sink).
        self._fast = bytearray(1)
        self._durable = 0  # of those, fsynced
        self._batches = 0
        self._appends = 0
        self._failures = 0
        self._dropped = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = (
            collections.deque()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._task: asyncio.Task[None] | None = None
        # Records sealed and not yet written (in chain order: a failed append puts its
        # records back in front), and the events in them.
        self._sealed: list[bytes] = []
        self._sealed_events = 0
        self._failed: BaseException | None = None
        self._closing = False
        self._dropped_first = 0
        self._dropped_last = 0
        self._dropped_pending = 0  # dropped since the last events_dropped event
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"audit-{worker_id}")

    # ------------------------------------------------------------------ state

    @property
    def fast_ok(self) -> bool:
        """Whether events may be appended to the pending list without emit()'s checks:
        not closing, nothing dropped to report, and the spool not full."""
        return bool(self._fast[0])

    @property
    def _emitted(self) -> int:
        """Events ever queued (emitted ones and the writer's own events_dropped)."""
        return self._taken + len(self._pending)

    @property
    def epoch(self) -> str:
        """This worker's epoch id (after ``start``)."""
        if self.chain is None:
            raise RuntimeError("AuditWriter.start() has not run")
        return self.chain.epoch

    @property
    def full(self) -> bool:
        """The spool has reached ``spool_max_bytes``: under ``fail_closed`` the server
        refuses new statements."""
        return self.spool is not None and self.spool.full

    def stats(self) -> WriterStats:
        """The counters now."""
        return WriterStats(
            self._emitted, self._durable, self._batches, self._appends, self._failures,
            self._dropped,
        )

    @property
    def failed(self) -> BaseException | None:
        """The last spool write error while it persists, ``None`` when writes succeed."""
        return self._failed

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open (and recover) the spool, then write the open batch of a new epoch, linked
        to the last record the previous epoch of this worker slot left in the spool."""
        loop = self._loop = asyncio.get_running_loop()
        cfg = self.cfg
        self.spool = await loop.run_in_executor(
            self._executor,
            lambda: Spool(
                cfg.spool_dir,
                self.gateway_id,
                self.worker_id,
                segment_bytes=cfg.segment_bytes,
                max_bytes=cfg.spool_max_bytes,
                retain_acked=not cfg.kafka.bootstrap_servers,
                # A predecessor of this slot may still be finishing its close batch.
                lock_timeout=10.0,
            ),
        )
        if self.spool.recovered_bytes:
            log.warning(
                "audit: worker %d recovered its spool after an unclean stop (%d bytes of an "
                "incomplete write removed)", self.worker_id, self.spool.recovered_bytes,
            )
        link: Link | None = None
        last = self.spool.last_record()
        if last is not None:
            try:
                link = link_to(last)
            except Exception as exc:  # any decode failure means the same here
                # The verifier will report the new epoch as unlinked; say why here.
                log.error("audit: cannot read the last record of %s to link the new epoch "
                          "to it (%s)", self.spool.directory, exc)
        self.chain = Chain(self._key, self.gateway_id, self.worker_id, link=link,
                           clock=self._clock, compression=self.cfg.compression)
        if link is not None and not link.closed:
            log.warning(
                "audit: the previous epoch %s of worker %d was not closed (the process "
                "stopped without closing it); the new epoch %s records that",
                link.epoch, self.worker_id, self.chain.epoch,
            )
        record = self.chain.seal(
            [WorkerStartEvent(at=self._clock(), pid=os.getpid(), version=__version__)], "open"
        )
        try:
            await loop.run_in_executor(self._executor, self.spool.append, [record])
        except Exception as exc:
            # The chain has advanced past the open batch: keep it, so a later flush or
            # close writes it first and the chain stays whole.
            self._sealed = [record]
            self._failed = exc
            self._timer = loop.call_later(RETRY_DELAY, self._flush_soon)
            log.error("audit: cannot write the open batch of epoch %s: %s", self.chain.epoch, exc)
            raise AuditWriteError(f"cannot write the audit spool: {exc}") from exc
        self._batches += 1
        self._appends += 1
        self._update_fast()
        self._notify()
        if self._pending:
            self._schedule_now()

    async def close(
        self, reason: str = "shutdown", before_release: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Write everything pending and the close batch (with ``worker_stop``), fsync,
        release the spool. Raises AuditWriteError if that last write fails.

        ``before_release`` runs after the close batch is durable and before the spool's
        lock is released (the Kafka shipper delivers the rest then, so that a successor
        worker taking the lock cannot send the same records again)."""
        if self._closing:
            return
        self._closing = True
        self._fast[0] = 0
        for handle in (self._timer, self._soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._soon = None
        if self._task is not None:
            await asyncio.shield(self._task)
        chain, spool, loop = self.chain, self.spool, self._loop
        try:
            if chain is None or spool is None or loop is None:
                return
            if self._dropped_pending:  # fail_open losses nobody emitted after
                self._pending.append(_encoder.encode(self._dropped_event()))
            self._seal_now()
            records, events = self._sealed, self._sealed_events
            self._sealed, self._sealed_events = [], 0
            stop = WorkerStopEvent(
                at=self._clock(), pid=os.getpid(), reason=reason, events=self._emitted
            )
            records.append(chain.seal([stop], "close"))
            try:
                await loop.run_in_executor(self._executor, spool.append, records)
            except Exception as exc:
                log.error(
                    "audit: LOST %d events and the close batch of epoch %s: %s",
                    events, chain.epoch, exc,
                )
                self._fail_waiters(exc)
                raise AuditWriteError(str(exc)) from exc
            self._written(records, events)
        finally:
            if before_release is not None:
                try:
                    await before_release()
                except Exception:
                    log.exception("audit: delivering the last records failed; the spool keeps them")
            if spool is not None:
                spool.close()
            self._executor.shutdown(wait=False)

    # ------------------------------------------------------------------ hot path

    def emit(self, event: Event | msgspec.Raw | bytes) -> None:
        """Queue ``event`` for the next batch. Cheap and synchronous; never raises.

        ``event`` is an event Struct, or one already encoded as a JSON object (``bytes``
        or ``msgspec.Raw``)."""
        if self._closing:
            self._dropped += 1
            log.error("audit: event emitted after close() is LOST: %r", event)
            return
        if self._fail_open and self.spool is not None and self.spool.full:
            self._drop(event.at if isinstance(event, _EventTypes) else self._clock())
            self._fast[0] = 0
            return
        if type(event) is not bytes:
            try:
                event = _encoder.encode(event)
            except (TypeError, ValueError):
                # A caller put something unencodable into an event (a bug): say loudly
                # which one is lost, and keep everything else.
                self._dropped += 1
                log.exception("audit: event cannot be encoded and is LOST: %r", event)
                return
        pending = self._pending
        if self._dropped_pending:
            pending.append(_encoder.encode(self._dropped_event()))
        pending.append(event)
        self.fast_kick()
        self._update_fast()

    def fast_kick(self) -> None:
        """After events were added to the pending batch: start the batch's timer, or
        seal it if it is full (the C fast path calls this for the first event of a batch
        and when it reaches ``flush_events``)."""
        if len(self._pending) >= self._flush_events:
            # Sealed now, so that a batch holds flush_events events; while writes or
            # seals are failing, only the retry timer tries again.
            if self.chain is not None and not self._closing and self._failed is None:
                try:
                    self._seal_now()
                except Exception as exc:  # nothing sealed; the events stay pending
                    self._hold("cannot seal a batch", exc, self._sealed_events)
                    return
            self._schedule_now()
        elif self._timer is None and self._loop is not None and not self._closing:
            self._timer = self._loop.call_later(self._flush_interval, self._flush_soon)

    def fast_sink(self) -> tuple[EventBuffer, int, bytearray]:
        """(the pending EventBuffer, flush_events, the fast_ok byte) for the C fast path,
        which writes encoded events into the buffer while the byte is non-zero
        (:attr:`fast_ok`) and calls :meth:`fast_kick` as emit() would. The buffer and the
        byte are never replaced."""
        return self._pending, self._flush_events, self._fast

    def _update_fast(self) -> None:
        self._fast[0] = not (
            self._closing or self._dropped_pending or self.chain is None
            or (self.spool is not None and self.spool.full)
        )

    def durable(self) -> asyncio.Future[None]:
        """A future resolved once every event emitted so far is fsynced in the spool, or
        failed with AuditWriteError if the spool cannot be written (the events are kept
        and retried; the future does not wait for that)."""
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._durable >= self._emitted:
            future.set_result(None)
        elif self._failed is not None:
            future.set_exception(AuditWriteError(f"audit spool write failing: {self._failed}"))
        else:
            self._waiters.append((self._emitted, future))
            self._schedule_now()
        return future

    async def flush(self) -> None:
        """Write everything emitted so far; returns when it is durable."""
        await self.durable()

    # ------------------------------------------------------------------ flushing

    def _flush_soon(self) -> None:
        self._timer = None
        self._start_drain()

    def _schedule_now(self) -> None:
        # call_soon, not a direct drain: every emit of the current loop iteration (say, a
        # pipeline's statements) joins the same batch.
        if self._soon is None and self._loop is not None and not self._closing:
            self._soon = self._loop.call_soon(self._kick)

    def _kick(self) -> None:
        self._soon = None
        if self._failed is None:  # while failing, only the retry timer tries again
            self._start_drain()

    def _start_drain(self) -> None:
        if self.chain is None or self._closing:
            return
        if self._task is None or self._task.done():
            assert self._loop is not None
            self._task = self._loop.create_task(self._drain())

    def _due(self) -> bool:
        """Whether what is pending must be written now rather than when the timer fires:
        sealed records (a full batch, or what a failed append left behind), someone
        waiting for durability (strict mode, ``flush``), or closing."""
        return bool(
            self._sealed or self._waiters or self._closing
            or len(self._pending) >= self._flush_events
        )

    async def _drain(self) -> None:
        assert self._loop is not None and self.chain is not None and self.spool is not None
        # The first pass writes whatever is pending (the timer fired, or a batch filled, or
        # someone waits). Later passes only when that is still so: events that arrived
        # during an fsync otherwise wait for their own timer (set by emit), so that under
        # steady async load a batch is ``flush_events`` events or ``flush_interval`` long,
        # not whatever trickled in during one fsync (each batch costs an fsync, a Kafka
        # round trip and an acknowledgement).
        first = True
        while (self._pending or self._sealed) and (first or self._due()):
            first = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            try:
                # Sealed here, on the loop: in the spool's thread the batch's compression
                # would fight the event loop for the GIL (measured: more CPU, no better
                # latency).
                self._seal_now()
            except Exception as exc:  # nothing was sealed: the events stay pending
                self._hold("cannot seal a batch", exc, self._sealed_events)
                return
            records, events = self._sealed, self._sealed_events
            self._sealed, self._sealed_events = [], 0
            try:
                await self._loop.run_in_executor(self._executor, self.spool.append, records)
            except Exception as exc:  # SpoolError, or anything else: hold and retry
                # Back in front of whatever was sealed meanwhile: the chain's order.
                self._sealed[:0] = records
                self._sealed_events += events
                self._hold("cannot write the spool", exc, self._sealed_events)
                return
            if self._failed is not None:
                log.warning("audit: spool writes work again; %d held events written", events)
                self._failed = None
            self._written(records, events)
        if self._pending and self._timer is None and not self._closing:
            self._timer = self._loop.call_later(self._flush_interval, self._flush_soon)

    def _hold(self, what: str, exc: BaseException, events: int) -> None:
        """A seal or an append failed: everything stays (sealed records and pending
        events alike); report, fail the durability waiters, retry after RETRY_DELAY."""
        if self._loop is None:
            raise exc
        self._failures += 1
        if self._failed is None:
            log.error(
                "audit: %s; %d events are held in memory and retried every %gs: %s",
                what, events + len(self._pending), RETRY_DELAY, exc,
            )
        self._failed = exc
        self._fail_waiters(exc)
        if not self._closing:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_later(RETRY_DELAY, self._flush_soon)

    def _seal_now(self) -> None:
        """Seal the pending batch (if any) onto the sealed records. If sealing raises,
        nothing has changed: the events stay pending and the chain has not advanced."""
        pending = self._pending
        count = len(pending)
        if not count:
            return
        assert self.chain is not None
        record = self.chain.seal_buffer(pending)
        pending.clear()
        self._taken += count
        self._sealed.append(record)
        self._sealed_events += count

    def _written(self, records: list[bytes], events: int) -> None:
        self._batches += len(records)
        self._appends += 1
        self._durable += events
        self._update_fast()
        durable = self._durable
        waiters = self._waiters
        while waiters and waiters[0][0] <= durable:
            _, future = waiters.popleft()
            if not future.done():
                future.set_result(None)
        self._notify()

    def _notify(self) -> None:
        if self._on_batch is not None:
            try:
                self._on_batch()
            except Exception:
                log.exception("audit: on_batch callback failed")

    def _fail_waiters(self, exc: BaseException) -> None:
        waiters, self._waiters = self._waiters, collections.deque()
        for _, future in waiters:
            if not future.done():
                future.set_exception(AuditWriteError(f"audit spool write failed: {exc}"))

    # ------------------------------------------------------------------ fail_open

    def _drop(self, at: int) -> None:
        if not self._dropped_pending:
            self._dropped_first = at
            log.error(
                "audit: spool %s is full (%d bytes); on_spool_full = fail_open: DISCARDING "
                "audit events until it has room", self.spool and self.spool.directory,
                self.cfg.spool_max_bytes,
            )
        self._dropped_last = at
        self._dropped_pending += 1
        self._dropped += 1

    def _dropped_event(self) -> EventsDroppedEvent:
        event = EventsDroppedEvent(
            at=self._clock(), count=self._dropped_pending,
            first_at=self._dropped_first, last_at=self._dropped_last,
        )
        log.error("audit: spool has room again; %d events were discarded", self._dropped_pending)
        self._dropped_pending = 0
        return event
