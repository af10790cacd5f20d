"""``DecisionCache``: the decision for a SQL string without parsing it again.

Two tiers, both keyed by the policy version and the part of the session context the
policy depends on (``Policy.scope_key``: the role, plus principal / database only when
some rule is scoped by them, plus the default action):

1. **Exact text** — a dict from the statement text to its decision. Drivers and ORMs
   send the same text over and over (prepared statements carry ``$1`` parameters, not
   literals), so this serves the common case with one dict lookup. Texts longer than
   ``EXACT_KEY_CHARS`` are keyed by their BLAKE2b digest instead, so a few huge
   statements cannot pin megabytes. Bounded; when full it starts a new generation.
2. **Shape** — for texts in the safe subset of ``gateway.sql.shape`` (no comments,
   quoting tricks or escapes), a dict keyed by the text with its string and number
   constants masked, computed in C without parsing: the simple query protocol's
   ``WHERE aid = 48213`` stream is decided without running the parser per statement.
   Equal shapes imply equal normalized statements (shape.py; tests/sql/test_shape.py),
   and only entries of tier 3 — never literal-sensitive ones — are stored here.
3. **Normalized statement** — an LRU keyed by a 128-bit BLAKE2b digest of
   ``gateway.sql.normalize(sql)`` (the text with every constant replaced by ``$n``), so
   ``WHERE id = 1`` and ``WHERE id = 2`` share one decision.

Why not the pglast fingerprint as the key: it is a 64-bit non-cryptographic hash
(xxhash), so a client can search for a statement whose fingerprint equals that of an
allowed one; keyed by it, the crafted statement would inherit the allow. Keying by the
fingerprint *and verifying* a digest of the normalized text costs the fingerprint plus
the normalization; keying by the digest of the normalized text costs the normalization
alone, and finding a second text with the same 128-bit BLAKE2b digest is infeasible.
Measured on this machine (pglast 8.8): fingerprint 3.4 µs / 12.5 µs, normalize + BLAKE2b
2.6 µs / 6.3 µs for a point SELECT / a 2-table join — so the safe key is also the cheaper
one (``benchmarks/micro/test_policy.py``). The price: texts that differ in more than
constants (whitespace, comments such as per-request sqlcommenter tags) do not share an
entry, where the fingerprint would have shared them.

What the key does not see must not change the decision. The rule language has no
matcher on literal values, and the only classification ``gateway.sql`` derives from a
literal is ``set_config('role', …)`` (flagged ``role_switch``): a string calling
``set_config`` is therefore only cached by exact text, never by its normalized form,
where ``set_config('search_path', …)`` and ``set_config('role', …)`` are the same.

Reload: ``invalidate()`` (optionally with the new policy) bumps ``version`` and empties
both tiers; a decision computed under the old version can never be served under the new.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.policy.engine import Policy, analyze_or_decision, decide
from gateway.policy.model import Decision, DecisionContext
from gateway.sql import Analysis, SqlSyntaxError, normalize
from gateway.sql.shape import shape, variant

if TYPE_CHECKING:
    from gateway.config import Config

__all__ = ["EXACT_KEY_CHARS", "LITERAL_SENSITIVE_FUNCTIONS", "CacheStats", "DecisionCache"]

#: A cached decision and the statement's pglast fingerprint ("" if it does not parse).
Entry = tuple[Decision, str]
#: Texts up to this many characters are exact-cached under their own text.
EXACT_KEY_CHARS = 2048
#: Functions whose classification depends on a literal argument (see module docstring).
LITERAL_SENSITIVE_FUNCTIONS = frozenset({"set_config"})


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters for metrics: where decisions came from, and the tiers' sizes."""

    version: int
    session_hits: int  # served by a session's own memo of its allowed texts
    exact_hits: int
    shape_hits: int
    normalized_hits: int
    misses: int
    uncacheable: int
    exact_size: int
    normalized_size: int

    @property
    def hits(self) -> int:
        return self.session_hits + self.exact_hits + self.shape_hits + self.normalized_hits


def normalized_digest(sql: str) -> bytes:
    """128-bit BLAKE2b of the normalized text (raises SqlSyntaxError if it does not parse)."""
    return hashlib.blake2b(normalize(sql).encode(), digest_size=16).digest()


def literal_sensitive(analysis: Analysis) -> bool:
    """Whether a classification of this analysis may depend on a constant's value."""
    for stmt in analysis.statements:
        if "parser_setting" in stmt.flags:
            return True  # SET client_encoding = 'UTF8' / 'SJIS' normalize alike
        for name in stmt.functions:
            if name.rpartition(".")[2].lower() in LITERAL_SENSITIVE_FUNCTIONS:
                return True
    return False


class DecisionCache:
    """Decisions of one policy, by exact text then by normalized statement (one per worker).

    Not thread-safe: a worker's event loop is its only user.
    """

    __slots__ = (
        "_exact", "_exact_size", "_lru", "_lru_size", "_shapes", "exact_hits", "misses",
        "normalized_hits", "policy", "session_hits", "shape_hits", "uncacheable", "version",
    )

    def __init__(self, policy: Policy, size: int = 10000, exact_size: int = 10000) -> None:
        self.policy = policy
        self.version = 1
        self._lru_size = size
        self._exact_size = exact_size
        self._exact: dict[Hashable, Entry] = {}
        self._lru: OrderedDict[Hashable, Entry] = OrderedDict()
        self._shapes: dict[Hashable, Entry] = {}
        #: Served by the shape tier (constants masked without parsing).
        self.shape_hits = 0
        #: Counted by the sessions (gateway.session.policy) that serve from their memo.
        self.session_hits = 0
        self.exact_hits = 0
        self.normalized_hits = 0
        self.misses = 0
        self.uncacheable = 0

    @classmethod
    def from_config(cls, cfg: Config) -> DecisionCache:
        """A cache for the policy ``cfg`` describes, sized by ``[policy]``."""
        return cls(Policy.from_config(cfg), cfg.policy.cache_size, cfg.policy.exact_cache_size)

    def decide(self, ctx: DecisionContext, sql: str) -> Decision:
        """The decision for ``sql`` in this context, from the cache or freshly made."""
        return self.decide_with_fingerprint(ctx, sql)[0]

    def decide_with_fingerprint(
        self, ctx: DecisionContext, sql: str, raw: bytes | None = None
    ) -> Entry:
        """``(decision, pglast fingerprint)`` — the fingerprint for the audit record, ""
        for SQL that does not parse. It is computed once per statement shape (on a miss):
        texts with the same normalized form have the same fingerprint.

        ``raw`` is the text as received (UTF-8), when the caller has it: then texts that
        differ only in constants are served from the shape tier without parsing
        (``gateway.sql.shape``)."""
        policy = self.policy
        scope = (self.version, *policy.scope_key(ctx))
        text_key = (scope, sql if len(sql) <= EXACT_KEY_CHARS else _text_digest(sql))
        entry = self._exact.get(text_key)
        if entry is not None:
            self.exact_hits += 1
            return entry

        shape_key: tuple[Hashable, bytes, bytes] | None = None
        if raw is not None and len(raw) <= EXACT_KEY_CHARS:
            masked = shape(raw)
            if masked is not None:
                shape_key = (scope, masked, raw)
                entry = self._shapes.get(shape_key[:2])
                if entry is not None:
                    self.shape_hits += 1
                    return entry

        try:
            norm_key: Hashable | None = (scope, normalized_digest(sql))
        except SqlSyntaxError:
            norm_key = None  # analyze() reports it, with the same message
        if norm_key is not None and (entry := self._lru.get(norm_key)) is not None:
            self._lru.move_to_end(norm_key)
            self.normalized_hits += 1
            self._remember_text(text_key, entry)
            if shape_key is not None:
                self._remember_shape(shape_key, entry)
            return entry

        self.misses += 1
        analysis = analyze_or_decision(sql)
        if isinstance(analysis, Decision):
            entry = (analysis, "")
        else:
            entry = (decide(ctx, analysis, policy), analysis.fingerprint)
            if norm_key is not None:
                if literal_sensitive(analysis):
                    self.uncacheable += 1
                elif self._lru_size > 0:
                    self._lru[norm_key] = entry
                    if len(self._lru) > self._lru_size:
                        self._lru.popitem(last=False)
                    if shape_key is not None:
                        self._remember_shape(shape_key, entry)
        self._remember_text(text_key, entry)
        return entry

    def _remember_shape(self, key: tuple[Hashable, bytes, bytes], entry: Entry) -> None:
        """Store under the text's shape, if the shape determines its normalized form.

        Only entries of the normalized tier come here (never a literal-sensitive one).
        The shape masks every plain constant, normalization only some (not the options
        of utility statements: ``EXPLAIN (ANALYZE 0)`` and ``(ANALYZE 1)`` are different
        statements): a variant of the text with every masked constant changed must
        normalize to the same text, or the shape is not used for it.
        """
        if self._lru_size <= 0:
            return
        scope, masked, raw = key
        other = variant(raw)
        try:
            if other is None or normalize(other.decode()) != normalize(raw.decode()):
                return
        except (SqlSyntaxError, UnicodeDecodeError):
            return
        shapes = self._shapes
        if len(shapes) >= self._lru_size:
            shapes.clear()  # a new generation, as for the exact tier
        shapes[(scope, masked)] = entry

    def _remember_text(self, key: Hashable, entry: Entry) -> None:
        if self._exact_size <= 0:
            return
        exact = self._exact
        if len(exact) >= self._exact_size:
            # Start a new generation rather than evict one by one: removing a dict's
            # oldest entry (next(iter(d))) walks the holes earlier deletions left, which
            # made every insert O(size) under a stream of distinct texts (literals in
            # simple-protocol queries). Texts that recur are back after one normalized
            # lookup.
            exact.clear()
        exact[key] = entry

    def resize(self, size: int, exact_size: int) -> None:
        """New bounds for the two tiers (applied as entries are next added)."""
        self._lru_size = size
        self._exact_size = exact_size

    def invalidate(self, policy: Policy | None = None) -> int:
        """Forget every decision (and switch to ``policy`` if given); returns the new version."""
        if policy is not None:
            self.policy = policy
        self.version += 1
        self._exact.clear()
        self._lru.clear()
        self._shapes.clear()
        return self.version

    def stats(self) -> CacheStats:
        return CacheStats(
            self.version, self.session_hits, self.exact_hits, self.shape_hits,
            self.normalized_hits, self.misses,
            self.uncacheable, len(self._exact), len(self._lru),
        )


def _text_digest(sql: str) -> bytes:
    return hashlib.blake2b(sql.encode("utf-8", "surrogatepass"), digest_size=16).digest()
