"""Policy enforcement for one session: every statement decided before it is forwarded.

:class:`PolicyHooks` is the :class:`~gateway.session.hooks.SessionHooks` that turns the
text of each Query and Parse (and each FunctionCall message) into a decision through the
worker's :class:`~gateway.policy.cache.DecisionCache`, and anything but ``allow`` into a
:class:`~gateway.session.hooks.Refusal` the relay delivers in PostgreSQL's place.

It also owns the conditions under which a decision can be trusted at all. pgwarden parses
statements as UTF-8 text with standard-conforming strings; the server reads them in the
session's ``client_encoding`` and with its ``standard_conforming_strings``. Both are
reported by the server (ParameterStatus), so:

- text that is not valid UTF-8 is refused (22021), never guessed at;
- a session whose encoding could swallow an ASCII byte into a multibyte character
  (SJIS, BIG5, GBK, UHC, GB18030, JOHAB) or whose strings treat backslash as an escape
  is not inspectable: its statements are refused (0A000), and a session that switches to
  such a setting after it started (the SQL that does so is refused by the policy
  engine's integrity rule, but a function body could still do it) is ended.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

from gateway.policy.cache import DecisionCache
from gateway.policy.engine import DEFAULT_RULE_ID, function_call_decision
from gateway.policy.model import Action, Decision, DecisionContext
from gateway.session.hooks import Refusal, RelayState, Scan, SessionHooks
from gateway.sql import parser_setting_safe
from gateway.sql.shape import shape
from gateway.wire.framer import Framer

try:  # the optional C fast path (gateway/session/_trail.c)
    from gateway.session import _trail
except ImportError:  # pragma: no cover - depends on the build
    _trail = None  # type: ignore[assignment]

#: Whether sessions use the C fast path (tests turn it off to check both paths agree).
ACCELERATED = _trail is not None

log = logging.getLogger("pgwarden.policy")

_NOTHING_YET = Decision(Action.ALLOW, DEFAULT_RULE_ID)

# Per session: how many allowed texts are remembered, and up to what length.
_ALLOWED_MEMO = 64
_ALLOWED_MEMO_TEXT = 4096
# Per session: how many shapes of allowed texts the C fast path may serve.
_SHAPES_MEMO = 256
#: A session's memo of allowed shapes: shape -> (decision, fingerprint, the statement
#: event's members after "text" when the session is audited, else b"").
ShapeEntry = tuple[Decision, str, bytes]
SQLSTATE_BAD_ENCODING = "22021"  # character_not_in_repertoire, as PostgreSQL reports it
SQLSTATE_NOT_SUPPORTED = "0A000"


def unsafe_setting(name: str, value: str) -> str | None:
    """Why a reported server setting makes statements uninspectable, or ``None``."""
    if name in ("client_encoding", "standard_conforming_strings") and not (
        parser_setting_safe(name, value)
    ):
        return (
            f"pgwarden cannot inspect statements with {name} = {value}: "
            "use client_encoding UTF8 and standard_conforming_strings on"
        )
    return None


class PolicyHooks(SessionHooks):
    """Decides each statement of one session (role, principal, database) by policy."""

    active = True

    __slots__ = (
        "_allowed", "_cache", "_ctx", "_shapes", "_trail", "_unsafe", "_version", "database",
        "fingerprint", "outcome", "principal", "role",
    )

    def __init__(
        self,
        cache: DecisionCache,
        role: str,
        principal: str,
        database: str,
        parameters: dict[str, str],
    ) -> None:
        self._cache = cache
        self.role = role
        self.principal = principal
        self.database = database
        self._version = cache.version
        self._ctx = cache.policy.context(role, principal, database)
        self._unsafe: str | None = None
        # Statement texts this session sent that were allowed (without observe rules)
        # under policy version _version: a session repeats its statements, and this
        # serves them with one lookup of the bytes as received. Cleared on reload.
        self._allowed: dict[bytes, tuple[Decision, str]] = {}
        # Shapes (gateway.sql.shape) of texts served allowed by the decision cache's shape
        # tier: the C fast path serves later texts of the same shape from here without
        # calling back (see fast_scans). Cleared with _allowed.
        self._shapes: dict[bytes, ShapeEntry] = {}
        self._trail: Any = None
        #: What the last statement hook decided and the statement's fingerprint (read by
        #: the audit trail right after the hook returns).
        self.outcome: Decision | Refusal = _NOTHING_YET
        self.fingerprint = ""
        for name, value in parameters.items():
            self._unsafe = self._unsafe or unsafe_setting(name, value)

    # -- decisions ----------------------------------------------------------------------

    def context(self) -> DecisionContext:
        """The decision context under the cache's current policy (it may be reloaded)."""
        cache = self._cache
        if cache.version != self._version:
            self._version = cache.version
            self._ctx = cache.policy.context(self.role, self.principal, self.database)
            self._allowed.clear()
            self._shapes.clear()
        return self._ctx

    def decide(self, sql: bytes) -> tuple[Decision | Refusal, str]:
        """The decision for SQL text as it came off the wire (or why it cannot be made),
        and the statement's fingerprint."""
        if self._unsafe is not None:
            return Refusal(SQLSTATE_NOT_SUPPORTED, self._unsafe), ""
        try:
            text = sql.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Refusal(
                SQLSTATE_BAD_ENCODING,
                f"invalid byte sequence for encoding UTF8 at byte {exc.start}: "
                "pgwarden inspects statements as UTF-8",
            ), ""
        return self._cache.decide_with_fingerprint(self.context(), text, sql)

    def _verdict(self, outcome: Decision | Refusal, what: str) -> Refusal | None:
        if isinstance(outcome, Refusal):
            log.warning("refused %s of %s (role %s): %s", what, self.principal, self.role,
                        outcome.message)
            return outcome
        if outcome.observed:
            policy = self._cache.policy
            for rule_id in outcome.observed:
                rule = policy.rule(rule_id)
                would = rule.action.label if rule is not None else "?"
                log.warning("observe: rule %s would %s a %s of %s (role %s)", rule_id, would,
                            what, self.principal, self.role)
        if outcome.allowed:
            return None
        log.info("%s %s of %s (role %s) by rule %s", outcome.action.label, what,
                 self.principal, self.role, outcome.rule_id)
        return Refusal(outcome.sqlstate, outcome.message, position=outcome.position)

    def _statement(self, sql: bytes, what: str) -> Refusal | None:
        memo = self._allowed.get(sql)
        if memo is not None and self._version == self._cache.version:
            self._cache.session_hits += 1
            self.outcome, self.fingerprint = memo
            return None
        shape_hits = self._cache.shape_hits
        outcome, self.fingerprint = self.decide(sql)
        self.outcome = outcome
        if isinstance(outcome, Decision) and outcome.allowed and not outcome.observed:
            # A text served by its shape has constants that change from statement to
            # statement (simple protocol): remembering it would only churn the memo.
            if self._cache.shape_hits != shape_hits:
                if self._trail is not None and what == "query":
                    self._remember_shape(sql, outcome)
            elif len(sql) <= _ALLOWED_MEMO_TEXT:
                if len(self._allowed) >= _ALLOWED_MEMO:
                    self._allowed.clear()
                self._allowed[sql] = (outcome, self.fingerprint)
            return None
        return self._verdict(outcome, what)

    def _remember_shape(self, sql: bytes, outcome: Decision) -> None:
        """Let the C fast path serve later queries of this text's shape."""
        entry = self._shape_entry(outcome, self.fingerprint)
        masked = shape(sql)
        if entry is None or masked is None:
            return
        if len(self._shapes) >= _SHAPES_MEMO:
            self._shapes.clear()
        self._shapes[masked] = entry

    def _shape_entry(self, decision: Decision, fingerprint: str) -> ShapeEntry | None:
        """What the fast path needs to serve a query like the one just allowed."""
        return (decision, fingerprint, b"")

    def fast_scans(
        self, relay: RelayState, frontend: Framer, backend: Framer,
        refused: dict[bytes, Refusal],
    ) -> tuple[Scan, Scan] | None:
        """A client-side walk that lets through, without calling back, the Queries this
        session's memo of allowed shapes decides (what the decision cache's shape tier
        would); the server side is not watched for policy."""
        if not ACCELERATED:
            return None
        self._trail = _trail.Trail(
            hooks=self, relay=relay, frontend=frontend, backend=backend, statements={},
            portals={}, pending=collections.deque(), refused=refused, emit=_no_emit,
            gate=None, session=b"", id_prefix=b"", fast=True, audit=False,
            cache=self._cache, shapes=self._shapes, shape=shape,
        )
        return self._trail.scan_frontend, backend.scan

    def detach_fast(self) -> None:
        if self._trail is not None:
            self._trail.close()
            self._trail = None

    def on_query(self, sql: bytes) -> Refusal | None:
        return self._statement(sql, "query")

    def on_parse(self, name: bytes, sql: bytes) -> Refusal | None:
        return self._statement(sql, "prepared statement")

    def on_function_call(self, body: memoryview) -> Refusal | None:
        if self._unsafe is not None:
            self.outcome = Refusal(SQLSTATE_NOT_SUPPORTED, self._unsafe)
            return self._verdict(self.outcome, "function call")
        oid = int.from_bytes(body[:4], "big") if len(body) >= 4 else None
        outcome = function_call_decision(self.context(), self._cache.policy, oid)
        self.outcome, self.fingerprint = outcome, ""
        return self._verdict(outcome, "function call")

    def on_parameter(self, name: str, value: str) -> str | None:
        reason = unsafe_setting(name, value)
        if reason is not None:
            self._unsafe = reason
            self._allowed.clear()
            self._shapes.clear()
        return reason


def _no_emit(event: object) -> None:
    """A policy-only session records nothing (the C walk never calls it)."""
