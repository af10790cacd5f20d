"""Benchmarks for pgwarden: ``python -m benchmarks.compare`` compares direct PostgreSQL,
PgBouncer and pgwarden on this machine (see benchmarks/compare.py)."""
