"""What one worker process shares between its connections.

The current configuration (replaced as a whole on SIGHUP; established sessions keep the
upstream they already have), the client authenticator, the TLS context, the upstream
secret, the connection registry used for limits, draining and cancel routing, and the
session hooks factory. Only ``gateway.server`` uses it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from gateway.config import Config, RoleConfig
from gateway.identity.authenticate import Authenticator
from gateway.identity.bindings import check_database, resolve_role
from gateway.identity.oidc import OidcVerifier
from gateway.identity.principal import Principal
from gateway.identity.ratelimit import FailureLimiter
from gateway.identity.secrets import read_role_password, read_upstream_password
from gateway.policy.cache import DecisionCache
from gateway.policy.engine import Policy
from gateway.server.auditing import SQLSTATE_AUDIT_FULL, AuditRuntime
from gateway.server.auditing import build as build_audit
from gateway.server.cancel import CancelRouter, secret_matches
from gateway.server.pool import PoolKey, UpstreamPool, close_session
from gateway.server.upstream import UpstreamSession, send_cancel
from gateway.session.audit import AuditedHooks, SessionInfo
from gateway.session.hooks import Refusal, SessionHooks
from gateway.session.policy import PolicyHooks

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
    if tls.client_ca_file:
        # A certificate is an identity when presented, and verified against this CA
        # only; clients without one go on to token or static-key authentication.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(tls.client_ca_file)
    return ctx


def implicit_role(config: Config) -> RoleConfig:
    """Single-role mode (no [[roles]]): every principal uses the [upstream] credential."""
    up = config.upstream
    return RoleConfig(
        name="default",
        upstream_user=up.user,
        password_env=up.password_env,
        password_file=up.password_file,
    )


class RoleBinding:
    """A principal's role and the upstream credential that goes with it."""

    __slots__ = ("password", "role")

    def __init__(self, role: RoleConfig, password: str | None) -> None:
        self.role = role
        self.password = password


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class WorkerContext:
    """Per-worker shared state; one instance per worker process."""

    def __init__(self, config: Config, config_path: str, run_dir: str, index: int) -> None:
        self.config_path = config_path
        self.index = index
        self.connections: set[ClientConnection] = set()
        self.sessions: dict[int, ClientConnection] = {}
        self.draining = False
        self.cancel = CancelRouter(
            run_dir, index, self._cancel_local, self._peer_failure, config.effective_workers()
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self.oidc: OidcVerifier | None = None
        self.limiter = FailureLimiter(
            config.server.auth_failure_limit, config.server.auth_failure_window
        )
        #: This worker's audit chain (None: no [audit] section). Built from the boot
        #: configuration only; see gateway.server.auditing.
        self.audit: AuditRuntime | None = build_audit(config, index)
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Install a (re)loaded configuration for sessions that start from now on.

        Everything is loaded first, so that a failure (unreadable secret, bad certificate)
        leaves the previous configuration in place. Secrets are re-read from their
        sources here, which is how a rotated secret file takes effect on SIGHUP.
        """
        server_ssl = server_ssl_context(config)
        if config.roles:
            passwords = {r.name: read_role_password(r) for r in config.roles}
        else:
            passwords = {"default": read_upstream_password(config.upstream)}
        # With the policy off, audited sessions still parse (for fingerprints and the
        # always-on integrity rule) under an empty rule set.
        policy = Policy.from_config(config) if config.policy.enabled else Policy(())
        oidc = OidcVerifier(config.issuers) if config.issuers else None
        authenticator = Authenticator(config.clients, oidc, config.tls)
        old_oidc = self.oidc
        self.config = config
        self.server_ssl = server_ssl
        self.role_passwords = passwords
        self.oidc = oidc
        self.authenticator = authenticator
        limits = (config.server.auth_failure_limit, config.server.auth_failure_window)
        if (self.limiter.limit, self.limiter.window) != limits:
            # Kept across reloads otherwise: a SIGHUP must not forgive an attacker.
            self.limiter = FailureLimiter(*limits)
        self._default_role = implicit_role(config)
        self.config_audit = getattr(self, "config_audit", config.audit)
        decisions: DecisionCache | None = getattr(self, "decisions", None)
        if decisions is None:
            self.decisions = DecisionCache(
                policy, config.policy.cache_size, config.policy.exact_cache_size
            )
        else:
            # One cache object for the worker's lifetime: sessions hold it, and see the
            # new policy (and version) from their next statement on.
            decisions.resize(config.policy.cache_size, config.policy.exact_cache_size)
            version = decisions.invalidate(policy)
            log.info("policy reloaded: version %d, %d rules", version, len(policy.rules))
            if self.audit is not None:
                self.audit.policy_reloaded(version, True)
                if config.audit != self.config_audit:
                    log.warning("[audit] changed: it takes effect when the workers restart")
        up = config.upstream
        old_pool = getattr(self, "pool", None)
        self.pool = UpstreamPool(up.pool_size, up.pool_idle_timeout)
        if old_pool is not None:
            # Idle sessions were opened with the old credentials and settings.
            old_pool.close_all()
        self.cancel.workers = config.effective_workers()
        loop = _running_loop()
        if loop is not None:
            if oidc is not None:
                self._spawn(oidc.start())
            if old_oidc is not None:
                self._spawn(old_oidc.close())

    async def start(self) -> None:
        """Work that needs the event loop: the audit chain's new epoch, first discovery of
        the OIDC issuers."""
        if self.audit is not None:
            await self.audit.start()
        if self.oidc is not None:
            await self.oidc.start()

    def _direct_io(self) -> dict[str, int]:
        sides = [c.direct.sides for c in self.sessions.values() if c.direct is not None]
        return {
            "sessions": len(sides),
            "client": sum(client for client, _ in sides),
            "upstream": sum(upstream for _, upstream in sides),
        }

    def stats(self) -> dict[str, object]:
        """This worker's counters, for `pgwarden stats` (written at each heartbeat)."""
        cache = self.decisions.stats()
        out: dict[str, object] = {
            "worker": self.index,
            "pid": os.getpid(),
            "connections": len(self.connections),
            "sessions": len(self.sessions),
            # Sessions with a socket read and written directly (gateway.server.fastio), and
            # how many of their client and upstream sides are.
            "direct_io": self._direct_io(),
            "policy_version": cache.version,
            "decision_cache": {
                "session_hits": cache.session_hits,
                "exact_hits": cache.exact_hits,
                "shape_hits": cache.shape_hits,
                "normalized_hits": cache.normalized_hits,
                "misses": cache.misses,
                "uncacheable": cache.uncacheable,
                "exact_size": cache.exact_size,
                "normalized_size": cache.normalized_size,
            },
            "upstream_pool_idle": len(self.pool),
        }
        if self.audit is not None:
            w = self.audit.writer.stats()
            out["audit"] = {
                "emitted": w.emitted, "durable": w.durable, "batches": w.batches,
                "appends": w.appends, "failures": w.failures, "dropped": w.dropped,
                "spool_full": self.audit.full,
            }
            if self.audit.shipper is not None:
                sh = self.audit.shipper.stats
                out["kafka"] = {
                    "delivered": sh.delivered, "pending": sh.pending,
                    "connected": sh.connected, "last_error": sh.last_error,
                }
        return out

    def reload_failed(self, error: str) -> None:
        """A reload was rejected: the previous configuration stays (and that is audited)."""
        if self.audit is not None:
            self.audit.policy_reloaded(self.decisions.version, False, error)

    def release_upstream(self, key: PoolKey, session: UpstreamSession) -> None:
        """Reset and pool the upstream session of a client that left cleanly."""
        if self.draining:
            close_session(session)
        else:
            self._spawn(self.pool.release(key, session))

    async def stop(self) -> None:
        self.pool.close_all()
        if self.oidc is not None:
            await self.oidc.close()
        if self.audit is not None:
            await self.audit.close()

    def bind(self, principal: Principal, database: str) -> RoleBinding:
        """The principal's role, checked against the database it asks for.

        Raises NoRoleBound (28000) or DatabaseNotAllowed (42501).
        """
        config = self.config
        role = (
            resolve_role(principal, config.bindings, config.roles)
            if config.roles
            else self._default_role
        )
        check_database(role, database)
        return RoleBinding(role, self.role_passwords.get(role.name))

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

    def hooks_for(self, info: SessionInfo, parameters: dict[str, str]) -> SessionHooks:
        """The hooks of a session that starts now: its statements decided by policy, and
        recorded when the audit log is on."""
        audit = self.audit
        if audit is None and not self.config.policy.enabled:
            return SessionHooks()  # pure pass-through: nothing decided, nothing recorded
        if audit is None:
            return PolicyHooks(
                self.decisions, info.role, f"{info.issuer}:{info.subject}", info.database,
                parameters,
            )
        cfg = audit.cfg
        return AuditedHooks(
            self.decisions, info, parameters, audit.emit,
            normalized_text=cfg.statement_text == "normalized",
            record_parameters=cfg.record_parameters,
            admit=self._audit_admit if audit.fail_closed else None,
            strict=audit.strict,
            gate=audit.writer,
        )

    def _audit_admit(self) -> Refusal | None:
        audit = self.audit
        if audit is not None and audit.full:
            return Refusal(
                SQLSTATE_AUDIT_FULL,
                "pgwarden: the audit spool is full; statements are refused until it drains "
                "(audit.on_spool_full = fail_closed)",
            )
        return None

    # -- failed authentication ----------------------------------------------------------

    def auth_failed(self, address: str) -> None:
        """Count a failure here and at every other worker (one limit per gateway)."""
        self.limiter.record_failure(address)
        self.cancel.broadcast_failure(address)

    def _peer_failure(self, address: str) -> None:
        self.limiter.record_failure(address)

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
        self._spawn(self._send_cancel(backend_pid, backend_secret))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_cancel(self, pid: int, secret: int) -> None:
        try:
            await send_cancel(self.config.upstream, pid, secret)
        except (OSError, TimeoutError) as exc:
            log.warning("could not send cancel upstream: %s", exc)
