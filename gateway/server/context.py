"""What one worker process shares between its connections.

The current configuration (replaced as a whole on SIGHUP; established sessions keep the
upstream they already have), the client authenticator, the TLS context, the upstream
secret, the connection registry used for limits, draining and cancel routing, and the
session hooks factory. Only ``gateway.server`` uses it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from gateway.config import Config
from gateway.identity.authenticate import ClientAuthenticator, StaticSecretAuthenticator
from gateway.identity.secrets import read_upstream_password
from gateway.server.cancel import CancelRouter, secret_matches
from gateway.server.upstream import UpstreamSession, send_cancel
from gateway.session.hooks import SessionHooks

if TYPE_CHECKING:
    from gateway.server.connection import ClientConnection

log = logging.getLogger("pgwarden.worker")


def server_ssl_context(config: Config) -> ssl.SSLContext | None:
    tls = config.tls
    if not tls.cert_file:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.load_cert_chain(tls.cert_file, tls.key_file or None)
    return ctx


class WorkerContext:
    """Per-worker shared state; one instance per worker process."""

    def __init__(self, config: Config, config_path: str, run_dir: str, index: int) -> None:
        self.config_path = config_path
        self.index = index
        self.connections: set[ClientConnection] = set()
        self.sessions: dict[int, ClientConnection] = {}
        self.draining = False
        self.cancel = CancelRouter(run_dir, index, self._cancel_local)
        self._tasks: set[asyncio.Task[None]] = set()
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Install a (re)loaded configuration for sessions that start from now on."""
        # Load everything first so that a failure leaves the previous state in place.
        server_ssl = server_ssl_context(config)
        password = read_upstream_password(config.upstream)
        authenticator: ClientAuthenticator = StaticSecretAuthenticator(config.clients)
        self.config = config
        self.server_ssl = server_ssl
        self.upstream_password = password
        self.authenticator = authenticator

    # -- registry -----------------------------------------------------------------------

    def admit(self, conn: ClientConnection) -> bool:
        if self.draining or len(self.connections) >= self.config.server.max_client_connections:
            return False
        self.connections.add(conn)
        return True

    def release(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if conn.key is not None:
            self.sessions.pop(conn.key[0], None)

    def register_session(
        self, conn: ClientConnection, upstream: UpstreamSession
    ) -> tuple[int, int]:
        key = self.cancel.new_key()
        self.sessions[key[0]] = conn
        return key

    def hooks_for(self, conn: ClientConnection) -> SessionHooks:
        return SessionHooks()

    # -- cancel -------------------------------------------------------------------------

    def route_cancel(self, pid: int, secret: int) -> None:
        self.cancel.route(pid, secret)

    def _cancel_local(self, pid: int, secret: int) -> None:
        conn = self.sessions.get(pid)
        if conn is None or conn.key is None or not secret_matches(conn.key[1], secret):
            log.info("cancel request for unknown session key %d ignored", pid)
            return
        conn.cancel_upstream()

    def spawn_cancel(self, backend_pid: int, backend_secret: int) -> None:
        task = asyncio.get_running_loop().create_task(
            self._send_cancel(backend_pid, backend_secret)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_cancel(self, pid: int, secret: int) -> None:
        try:
            await send_cancel(self.config.upstream, pid, secret)
        except (OSError, TimeoutError) as exc:
            log.warning("could not send cancel upstream: %s", exc)
