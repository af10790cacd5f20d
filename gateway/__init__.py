"""pgwarden: a PostgreSQL data-path gateway for non-human identities.

The import package is ``gateway``; the distribution and the command are ``pgwarden``.
Package boundaries are described in docs/architecture.md and enforced by
tests/test_import_rules.py.
"""

__version__ = "0.1.0"
