"""Sustained-load scenarios: a locust PostgreSQL user running an ETL-like mix.

``python -m loadtest.run`` starts everything and writes ``loadtest/RESULTS.md``; see
``loadtest/README.md``.
"""
