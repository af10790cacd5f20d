"""Sans-I/O PostgreSQL v3 protocol: framing, message codecs, per-direction state.

Nothing in this package touches sockets, asyncio, pglast or any other gateway package;
it consumes bytes and produces events and bytes, so it can be tested, fuzzed and
benchmarked on its own.
"""
