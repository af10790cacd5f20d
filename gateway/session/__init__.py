"""The per-connection session: what happens to each message once a client is connected.

This package is sans-I/O like ``gateway.wire``: it is handed bytes and callables that
write bytes, and never touches sockets or the event loop. It is where the statement
decision (policy), the result masking plan (masking) and the audit events (audit) plug
in; until those exist the hooks are no-ops and the relay forwards everything unchanged.
"""
