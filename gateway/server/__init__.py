"""The only package that touches sockets, signals and ``os.fork``.

Supervisor (process management), worker (one uvloop event loop per process),
connections (client and upstream I/O glue around ``gateway.session``), cancel routing
between workers, and TLS contexts. Everything protocol-shaped lives in ``gateway.wire``
and ``gateway.session``; this package stays thin.
"""
