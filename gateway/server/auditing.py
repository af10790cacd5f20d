"""A worker's audit machinery: its signed chain (AuditWriter), and Kafka delivery.

One :class:`AuditRuntime` per worker process, built at boot from ``[audit]``. Sessions
emit through it; ``strict`` mode makes a session wait for :meth:`durable` before a
statement is forwarded; ``fail_closed`` refuses statements while the spool is full. The
``[audit]`` section is read at boot only: a reload that changes it is logged and takes
effect when the workers restart (an epoch belongs to one key and one spool).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING

from gateway.audit.events import PolicyReloadEvent
from gateway.audit.keys import load_signing_key
from gateway.audit.writer import AuditWriter

if TYPE_CHECKING:
    from gateway.audit.kafka import KafkaShipper
    from gateway.config import AuditConfig, Config

log = logging.getLogger("pgwarden.audit")

SQLSTATE_AUDIT_FULL = "53100"  # disk_full: the audit spool cannot take more events
_CLOSE_DELIVERY_TIMEOUT = 5.0


def gateway_id(config: Config) -> str:
    return config.server.gateway_id or socket.gethostname()


class AuditRuntime:
    """The audit writer (and Kafka shipper) of one worker."""

    def __init__(self, cfg: AuditConfig, gateway: str, worker_id: int) -> None:
        self.cfg = cfg
        self.strict = cfg.mode == "strict"
        self.fail_closed = cfg.on_spool_full == "fail_closed"
        self.shipper: KafkaShipper | None = None
        self.writer = AuditWriter(
            cfg, gateway, worker_id, load_signing_key(cfg.signing_key_file),
            on_batch=self._on_batch,
        )
        self.emit = self.writer.emit
        self._ship_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.writer.start()
        kafka = self.cfg.kafka
        if kafka.bootstrap_servers:
            from gateway.audit.kafka import KafkaShipper

            spool = self.writer.spool
            assert spool is not None
            self.shipper = KafkaShipper.from_config(spool, kafka)
            self.shipper.start()
        log.info("audit: worker chain epoch %s, spool %s, mode %s%s", self.writer.epoch,
                 self.cfg.spool_dir, self.cfg.mode,
                 f", shipping to Kafka topic {kafka.topic}" if self.shipper else "")

    def _on_batch(self) -> None:
        if self.shipper is not None:
            self.shipper.notify()

    @property
    def full(self) -> bool:
        """The spool is at its size limit (statements are refused under fail_closed)."""
        return self.writer.full

    def durable(self) -> asyncio.Future[None]:
        return self.writer.durable()

    def policy_reloaded(self, version: int, ok: bool, error: str = "") -> None:
        self.emit(PolicyReloadEvent(at=time.time_ns(), version=str(version), ok=ok,
                                    error=error))

    async def close(self, reason: str = "shutdown") -> None:
        """Write the closing batch, then give Kafka a moment to take what is pending."""
        shipper = self.shipper

        async def deliver() -> None:
            if shipper is not None:
                await shipper.close(_CLOSE_DELIVERY_TIMEOUT)

        try:
            await self.writer.close(reason, before_release=deliver)
        except Exception:  # the spool keeps what it has; the next start replays it
            log.exception("audit: closing the chain failed")


def build(config: Config, worker_id: int) -> AuditRuntime | None:
    """The runtime ``[audit]`` asks for, or None (no section, or ``enabled = false``)."""
    cfg = config.audit
    if cfg is None or not cfg.enabled:
        return None
    return AuditRuntime(cfg, gateway_id(config), worker_id)


__all__ = ["SQLSTATE_AUDIT_FULL", "AuditRuntime", "build", "gateway_id"]
