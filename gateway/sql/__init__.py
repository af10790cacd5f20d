"""SQL analysis for pgwarden: the only package that imports pglast.

``analyze(sql)`` splits a SQL string into statements with PostgreSQL's own parser and
classifies each one (kind, command, category, relations with access mode, functions,
flags) for the policy engine; ``fingerprint`` and ``normalize`` expose pglast's
constant-insensitive fingerprint and normalized text for the decision cache.
Must not import gateway.wire or asyncio (docs: ARCHITECTURE.md §2).
"""

from gateway.sql.classify import analyze, fingerprint, normalize, parser_setting_safe
from gateway.sql.model import Analysis, RelationRef, SqlSyntaxError, Statement

__all__ = [
    "Analysis",
    "RelationRef",
    "SqlSyntaxError",
    "Statement",
    "analyze",
    "fingerprint",
    "normalize",
    "parser_setting_safe",
]
