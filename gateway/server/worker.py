"""One worker process: a uvloop event loop serving client connections.

Each worker opens its own listening socket with ``SO_REUSEPORT`` after the fork, so the
kernel spreads new connections across workers and no accept lock is needed. Signals
(installed on the loop, so handlers run as ordinary callbacks):

- TERM: drain — stop accepting, close each session as soon as it is idle (no request in
  flight, no open transaction), and force the rest closed after ``graceful_timeout``.
- INT, QUIT: stop fast — close every session now.
- HUP: re-read the configuration file; new sessions use it, established ones carry on.

A heartbeat file's mtime is touched every ``heartbeat_interval`` so the supervisor can
tell a hung loop from a busy one. A worker that cannot boot exits with
:data:`WORKER_BOOT_ERROR`, which makes the supervisor halt instead of respawning it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time

import orjson

from gateway.config import Config, ConfigError, load_config
from gateway.identity.secrets import SecretSourceError
from gateway.server.connection import ClientConnection, Phase
from gateway.server.context import WorkerContext

log = logging.getLogger("pgwarden.worker")

WORKER_BOOT_ERROR = 3
_DRAIN_POLL = 0.05


def listen_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking listening socket bound with SO_REUSEPORT."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Worker:
    def __init__(
        self, config: Config, config_path: str, run_dir: str, index: int, heartbeat: str
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.run_dir = run_dir
        self.index = index
        self.heartbeat = heartbeat
        self.ctx: WorkerContext | None = None
        self.server: asyncio.AbstractServer | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._drain_deadline = 0.0

    async def boot(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        ctx = WorkerContext(self.config, self.config_path, self.run_dir, self.index)
        self.ctx = ctx
        await ctx.start()
        ctx.cancel.start(loop)
        cfg = self.config.server
        sock = listen_socket(cfg.listen_host, cfg.listen_port, cfg.backlog)
        self.server = await loop.create_server(lambda: ClientConnection(ctx), sock=sock)
        loop.add_signal_handler(signal.SIGTERM, self.drain)
        loop.add_signal_handler(signal.SIGINT, self.stop_fast)
        loop.add_signal_handler(signal.SIGQUIT, self.stop_fast)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._beat()
        log.info(
            "worker %d (pid %d) listening on %s:%d",
            self.index, os.getpid(), cfg.listen_host, cfg.listen_port,
        )

    async def run(self) -> None:
        assert self._stopped is not None
        await self._stopped
        assert self.ctx is not None
        self.ctx.cancel.stop(asyncio.get_running_loop())
        await self.ctx.stop()

    def _beat(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.heartbeat)
        if self.ctx is not None:
            self._write_stats(self.ctx.stats())
        asyncio.get_running_loop().call_later(
            self.config.server.heartbeat_interval, self._beat
        )

    def _write_stats(self, stats: dict[str, object]) -> None:
        # Next to the heartbeat; replaced atomically so a reader never sees half a file.
        path = os.path.join(self.run_dir, f"worker-{self.index}.stats.json")
        try:
            with open(path + ".tmp", "wb") as fh:
                fh.write(orjson.dumps(stats))
            os.replace(path + ".tmp", path)
        except OSError as exc:
            log.debug("cannot write %s: %s", path, exc)

    # -- signals ------------------------------------------------------------------------

    def drain(self) -> None:
        assert self.ctx is not None
        if self.ctx.draining:
            return
        log.info("worker %d draining %d connections", self.index, len(self.ctx.connections))
        self.ctx.draining = True
        self.ctx.pool.close_all()
        if self.server is not None:
            self.server.close()
        self._drain_deadline = time.monotonic() + self.config.server.graceful_timeout
        self._drain_step()

    def _drain_step(self) -> None:
        assert self.ctx is not None
        forced = time.monotonic() >= self._drain_deadline
        for conn in list(self.ctx.connections):
            relay = conn.relay
            if forced or conn.phase is not Phase.RELAY or (relay is not None and relay.idle):
                conn.shutdown("57P01", "terminating connection due to administrator command")
        if not self.ctx.connections:
            self._finish()
            return
        asyncio.get_running_loop().call_later(_DRAIN_POLL, self._drain_step)

    def stop_fast(self) -> None:
        assert self.ctx is not None
        log.info("worker %d stopping now", self.index)
        self.ctx.draining = True
        self.ctx.pool.close_all()
        if self.server is not None:
            self.server.close()
        for conn in list(self.ctx.connections):
            conn.shutdown("57P01", "terminating connection due to administrator command")
        self._finish()

    def _finish(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            # Let the closing transports flush their last messages first.
            asyncio.get_running_loop().call_later(0.05, self._stopped.set_result, None)

    def reload(self) -> None:
        assert self.ctx is not None
        try:
            config = load_config(self.config_path)
            self.ctx.apply(config)
        except (ConfigError, SecretSourceError, OSError, ValueError) as exc:
            log.error("worker %d: reload failed, keeping the previous configuration: %s",
                      self.index, exc)
            self.ctx.reload_failed(str(exc))
            return
        self.config = config
        log.info("worker %d reloaded configuration", self.index)


def run_worker(
    config: Config, config_path: str, run_dir: str, index: int, heartbeat: str
) -> int:
    """Entry point in the forked child. Returns the process exit code."""
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(config, config_path, run_dir, index, heartbeat)
    try:
        loop.run_until_complete(worker.boot())
    except Exception as exc:
        log.error("worker %d failed to boot: %s", index, exc)
        return WORKER_BOOT_ERROR
    # Everything built so far lives as long as the worker: move it out of the cyclic
    # collector's view, and collect the young generation less often, since the relay's
    # per-read allocations (bytes, tuples) are freed by reference counting anyway.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        loop.run_until_complete(worker.run())
    finally:
        loop.close()
    return 0
