"""Memory per idle client connection: hold N real sessions open and weigh the process tree.

For one target, :func:`idle_memory` opens ``n`` connections with asyncpg (no TLS, the same
role and password as every other benchmark; ``concurrency`` logins in flight at a time),
so that each completes the full login through the target and the proxy holds a real
session. Then:

1. after every login has finished (and ``settle`` seconds), the memory of the process
   tree behind the target is read (phase *login*);
2. every connection runs one ``SELECT 1``, which makes PgBouncer in session mode link a
   server connection to each client (it links one only on the first query; pgwarden
   opens its upstream session during the login already), and the tree is read again
   (phase *query*: both proxies now hold one client and one server connection per
   session);
3. every connection is closed.

The figure per connection is (memory in a phase - memory before opening any) / n, from
the sum of ``Rss`` (and ``Pss``) over the proxy's processes (:mod:`benchmarks.proctools`).
Before the baseline, a few connections are opened, used and closed, so that code paths
and caches touched by the first logins are not counted as per-connection cost.

For direct PostgreSQL the same is measured over the postmaster's process tree (one
backend process per connection): PSS is the meaningful figure there, since every backend's
RSS also counts the shared buffers it touched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from benchmarks.measure import Sample
from benchmarks.proctools import TreeMemory
from benchmarks.targets import Target

KIB = 1024
MIB = 1024 * 1024
WARM_CONNECTIONS = 5


async def _connect(target: Target, timeout: float) -> Any:
    import asyncpg  # type: ignore[import-untyped]

    return await asyncpg.connect(
        host=target.host,
        port=target.port,
        user=target.user,
        password=target.password,
        database=target.dbname,
        ssl=False,
        timeout=timeout,
        statement_cache_size=0,
    )


async def _open(target: Target, n: int, concurrency: int) -> list[Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> Any:
        async with sem:
            return await _connect(target, timeout=120)

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    conns = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await _close(conns)
        raise RuntimeError(
            f"{len(errors)} of {n} connections via {target.name} failed; first: {errors[0]!r}"
        )
    return conns


async def _close(conns: list[Any]) -> None:
    await asyncio.gather(*(c.close(timeout=30) for c in conns), return_exceptions=True)


async def _measure(
    target: Target,
    n: int,
    concurrency: int,
    settle: float,
    memory: Callable[[], TreeMemory],
) -> dict[str, float]:
    warm = await _open(target, WARM_CONNECTIONS, WARM_CONNECTIONS)
    await asyncio.gather(*(c.execute("SELECT 1") for c in warm))
    await _close(warm)
    await asyncio.sleep(settle)
    base = memory()
    start = time.perf_counter()
    conns = await _open(target, n, concurrency)
    try:
        open_s = time.perf_counter() - start
        await asyncio.sleep(settle)
        login = memory()
        await asyncio.gather(*(c.execute("SELECT 1") for c in conns))
        await asyncio.sleep(settle)
        query = memory()
    finally:
        await _close(conns)
    metrics: dict[str, float] = {
        "connections": float(n),
        "open_s": open_s,
        "logins_per_s": n / open_s,
        "base_rss_mib": base.rss_bytes / MIB,
        "rss_mib": query.rss_bytes / MIB,
        "processes": float(query.processes),
        "rss_kib_per_conn_login": (login.rss_bytes - base.rss_bytes) / n / KIB,
        "rss_kib_per_conn": (query.rss_bytes - base.rss_bytes) / n / KIB,
    }
    if base.pss_bytes is not None and login.pss_bytes is not None:
        metrics["pss_kib_per_conn_login"] = (login.pss_bytes - base.pss_bytes) / n / KIB
    if base.pss_bytes is not None and query.pss_bytes is not None:
        metrics["pss_kib_per_conn"] = (query.pss_bytes - base.pss_bytes) / n / KIB
    return metrics


def idle_memory(
    target: Target,
    *,
    n: int,
    round_no: int,
    memory: Callable[[], TreeMemory],
    concurrency: int = 32,
    settle: float = 1.0,
) -> Sample:
    """Hold ``n`` idle sessions through ``target``; ``memory`` weighs the tree behind it."""
    metrics = asyncio.run(_measure(target, n, concurrency, settle, memory))
    return Sample(round_no, "idle", f"n{n}", target.name, metrics)
