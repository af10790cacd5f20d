"""Policy: every SQL statement gets an explicit decision (allow, approve, block).

A pure, synchronous layer: it reads the classification ``gateway.sql`` produces and
the rules from ``gateway.config``, and never does I/O or imports asyncio.

- ``model``: actions, rules, decisions, the decision context.
- ``baseline``: the built-in least-privilege rule pack.
- ``engine``: ``decide`` and its evaluation order, ``decide_sql`` (fail closed).
- ``cache``: ``DecisionCache``, exact text then normalized statement.
- ``check``: ``pgwarden policy check``, a dry run for policy authors.

``model`` and ``baseline`` do not import ``gateway.sql`` (so configuration validation
stays light); the names from ``engine`` and ``cache`` are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gateway.policy.baseline import BASELINE, BASELINE_IDS
from gateway.policy.model import Action, Decision, DecisionContext, Rule

if TYPE_CHECKING:
    from gateway.policy.cache import CacheStats, DecisionCache
    from gateway.policy.engine import (
        Policy,
        decide,
        decide_sql,
        decide_statements,
        function_call_decision,
    )

__all__ = [
    "BASELINE",
    "BASELINE_IDS",
    "Action",
    "CacheStats",
    "Decision",
    "DecisionCache",
    "DecisionContext",
    "Policy",
    "Rule",
    "decide",
    "decide_sql",
    "decide_statements",
    "function_call_decision",
]

_LAZY = {
    "CacheStats": "gateway.policy.cache",
    "DecisionCache": "gateway.policy.cache",
    "Policy": "gateway.policy.engine",
    "decide": "gateway.policy.engine",
    "decide_sql": "gateway.policy.engine",
    "decide_statements": "gateway.policy.engine",
    "function_call_decision": "gateway.policy.engine",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.policy' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
