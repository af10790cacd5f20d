"""Locust load test: an ETL-like PostgreSQL workload, psycopg 3 underneath.

Each locust user holds one psycopg connection (autocommit; explicit transactions where the
scenario needs one) to ``$PGWARDEN_LOADTEST_DSN`` and times every operation itself,
reporting it with ``environment.events.request.fire(request_type="pg", ...)``, so locust's
statistics, CSV files and failure lists work as for HTTP. ``response_length`` is the
number of rows returned or written.

The mix (task weights; names as they appear in the statistics):

* 60 ``lookup: item by pk``: ``SELECT ... FROM lt_items WHERE id = $1``.
* 10 ``insert: executemany 100``: 100 rows into ``lt_events`` with ``executemany``
  (psycopg pipelines it).
*  3 ``copy in: 1000 rows``: ``COPY lt_events (...) FROM STDIN``, 1,000 text rows.
*  2 ``copy out: 1000 rows``: ``COPY (SELECT ... 1,000 items) TO STDOUT``.
*  2 ``txn: long, <s>s idle inside``: ``BEGIN``; insert a batch row; an aggregate over
   1,000 items; 20 events with ``executemany``; then the client sleeps inside the open
   transaction (the session sits "idle in transaction"); update the batch row; ``COMMIT``.
   The time reported includes the sleep.
*  1 ``scratch: insert 10 rows`` followed by ``blocked: DELETE without WHERE`` or
   ``blocked: UPDATE without WHERE`` on ``lt_scratch``, a table the role owns. Without a
   policy they succeed. A policy that refuses them answers SQLSTATE 42501
   (insufficient_privilege): that is an *expected* outcome. It is reported to locust as a
   failure whose message starts with ``SQLSTATE 42501`` and is counted as "denied",
   apart from other errors; the user carries on.

Besides ``connect`` (each (re)connection is a request too), that is all.

Environment:

``PGWARDEN_LOADTEST_DSN``            libpq connection string or URI (required)
``PGWARDEN_LOADTEST_ITEMS``          rows in ``lt_items`` (default: ``max(id)`` is queried)
``PGWARDEN_LOADTEST_THINK_MS``       ``MIN,MAX`` wait between tasks, ms (default ``5,50``)
``PGWARDEN_LOADTEST_LONG_TX_SLEEP``  seconds idle inside the long transaction (default 1)
``PGWARDEN_LOADTEST_TIMINGS``        same as ``--pg-timings``

``--pg-timings PATH`` (an option this file adds to locust) writes, when the test stops, a
JSON summary computed from the exact response times (locust's own percentiles are rounded
to whole milliseconds, too coarse for sub-millisecond lookups): per request name the
count, denials (42501), other errors, mean, p50, p95, p99 and max in ms. The tables are
created by ``python -m loadtest.schema`` (``python -m loadtest.run`` does all of this).

psycopg must wait for the socket through gevent, or one user's query would block every
other user in the process: locust monkey-patches ``select`` when it is imported, and
psycopg (imported after locust here) then avoids its blocking C wait function. Of the
gevent-friendly ones it would pick ``wait_poll``; this file switches to ``wait_select``,
which measured about a third less client overhead per round trip under gevent (the same
choice as ``PSYCOPG_WAIT_FUNC=wait_select``, which, when set, is left alone). The function
in use is recorded in the JSON summary (``psycopg_wait``).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import locust  # noqa: F401  # first: it monkey-patches select before psycopg looks
import psycopg
from locust import User, between, events, task
from locust.env import Environment
from psycopg import pq, waiting

DSN_ENV = "PGWARDEN_LOADTEST_DSN"
ITEMS_ENV = "PGWARDEN_LOADTEST_ITEMS"
THINK_ENV = "PGWARDEN_LOADTEST_THINK_MS"
LONG_TX_SLEEP_ENV = "PGWARDEN_LOADTEST_LONG_TX_SLEEP"
TIMINGS_ENV = "PGWARDEN_LOADTEST_TIMINGS"

REQUEST_TYPE = "pg"
DENIED_SQLSTATE = "42501"  # insufficient_privilege: what a policy answers
BLOCKED_PREFIX = "blocked: "  # request names of statements a policy is expected to refuse

INSERT_BATCH = 100
COPY_ROWS = 1_000
COPY_OUT_ROWS = 1_000
LONG_TX_EVENTS = 20
SCRATCH_ROWS = 10
SLOWEST_KEPT = 8  # per request name, in the JSON summary


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _think_seconds() -> tuple[float, float]:
    raw = os.environ.get(THINK_ENV, "").strip() or "5,50"
    low, _, high = raw.partition(",")
    lo_ms = float(low)
    hi_ms = float(high) if high else lo_ms
    if not 0 <= lo_ms <= hi_ms:
        raise ValueError(f"{THINK_ENV}={raw!r}: want MIN,MAX with 0 <= MIN <= MAX (ms)")
    return lo_ms / 1000.0, hi_ms / 1000.0


LONG_TX_SLEEP = _env_float(LONG_TX_SLEEP_ENV, 1.0)

CONNECT = "connect"
LOOKUP = "lookup: item by pk"
INSERT_MANY = f"insert: executemany {INSERT_BATCH}"
COPY_IN = f"copy in: {COPY_ROWS} rows"
COPY_OUT = f"copy out: {COPY_OUT_ROWS} rows"
LONG_TX = f"txn: long, {LONG_TX_SLEEP:g}s idle inside"
SCRATCH_FILL = f"scratch: insert {SCRATCH_ROWS} rows"
BLOCKED_DELETE = BLOCKED_PREFIX + "DELETE without WHERE"
BLOCKED_UPDATE = BLOCKED_PREFIX + "UPDATE without WHERE"

_worker_ids = itertools.count(1)


def _use_gevent_select() -> None:
    """``wait_select`` instead of psycopg's ``wait_poll`` when gevent patched ``select``."""
    if os.environ.get("PSYCOPG_WAIT_FUNC") or waiting.wait is waiting.wait_c:
        return  # chosen explicitly, or select is not patched (not run under locust)
    waiting.wait = waiting.wait_select
    ready = getattr(waiting, "_ready_select", None)
    if ready is not None:
        setattr(waiting, "_ready", ready)  # noqa: B010  # its readiness check, to match


_use_gevent_select()


# -- errors --------------------------------------------------------------------------------


class PgRequestError(Exception):
    """A failed request as locust records it: ``SQLSTATE <code>: <primary message>``.

    The message deliberately leaves out details (row values, positions), so that locust's
    failure list groups the same failure under one line.
    """

    def __init__(self, sqlstate: str | None, message: str) -> None:
        self.sqlstate = sqlstate
        self.message = message
        prefix = f"SQLSTATE {sqlstate}" if sqlstate else "client"
        super().__init__(f"{prefix}: {message}")

    @property
    def denied(self) -> bool:
        return self.sqlstate == DENIED_SQLSTATE

    @classmethod
    def from_psycopg(cls, exc: psycopg.Error) -> PgRequestError:
        text = exc.diag.message_primary if exc.sqlstate else None
        if not text:
            lines = str(exc).strip().splitlines()
            text = lines[0] if lines else type(exc).__name__
        return cls(exc.sqlstate, text)


# -- the client ----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a timed block reports besides its time: rows, and whether it failed."""

    rows: int = 0
    error: PgRequestError | None = None


class PgClient:
    """One psycopg connection whose operations are timed and reported as locust requests."""

    def __init__(self, environment: Environment, conninfo: str, application_name: str) -> None:
        # EventHook.fire is untyped; keep it as a typed callable
        self._fire: Callable[..., object] = environment.events.request.fire
        self._conninfo = conninfo
        self._application_name = application_name
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    @property
    def conn(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None:
            raise RuntimeError("not connected")
        return self._conn

    @contextlib.contextmanager
    def request(self, name: str) -> Iterator[Outcome]:
        """Time the block and fire a locust request event named ``name``.

        A ``psycopg.Error`` raised inside the block is recorded as the request's failure
        and swallowed (the user carries on; a broken connection is dropped and reopened
        by the next task). Any other exception propagates: that is a bug in this file.
        """
        outcome = Outcome()
        start = time.perf_counter()
        try:
            yield outcome
        except psycopg.Error as exc:
            outcome.error = PgRequestError.from_psycopg(exc)
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        self._fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=elapsed_ms,
            response_length=outcome.rows,
            exception=outcome.error,
            context={},
        )
        if outcome.error is not None:
            self._after_error()

    def ensure_connected(self) -> bool:
        """Connect unless a usable connection is open; the connection is a request too."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return True
        self.close()
        with self.request(CONNECT) as outcome:
            self._conn = psycopg.connect(
                self._conninfo, autocommit=True, application_name=self._application_name
            )
        if outcome.error is not None:
            time.sleep(0.5)  # gevent sleep: do not spin on a target that refuses us
            return False
        return True

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _after_error(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if conn.closed or conn.broken:
            self.close()
            return
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                self.close()


# -- users -----------------------------------------------------------------------------------


class PostgresUser(User):
    """A locust user with a :class:`PgClient` (``self.client``) to ``$PGWARDEN_LOADTEST_DSN``.

    Subclasses set ``conninfo`` to connect elsewhere, and write tasks that use
    ``self.client.request(name)`` around what they do with ``self.client.conn``.
    """

    abstract = True
    conninfo: str = ""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        conninfo = self.conninfo or os.environ.get(DSN_ENV, "")
        if not conninfo:
            raise RuntimeError(f"set {DSN_ENV} to a libpq connection string or URI")
        self.worker = f"u{next(_worker_ids)}"
        self.client = PgClient(environment, conninfo, f"pgwarden-loadtest {self.worker}")

    def on_start(self) -> None:
        self.client.ensure_connected()

    def on_stop(self) -> None:
        self.client.close()


_items_cache: list[int] = []


def _item_count(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
    if not _items_cache:
        raw = os.environ.get(ITEMS_ENV, "").strip()
        if raw:
            _items_cache.append(int(raw))
        else:
            row = conn.execute("SELECT coalesce(max(id), 0) FROM lt_items").fetchone()
            _items_cache.append(int(row[0]) if row else 0)
    return _items_cache[0]


_THINK_MIN, _THINK_MAX = _think_seconds()


class EtlUser(PostgresUser):
    """The ETL-like mix described at the top of this file."""

    wait_time = between(_THINK_MIN, _THINK_MAX)

    def _ready(self) -> bool:
        return self.client.ensure_connected()

    def _items(self) -> int:
        return max(_item_count(self.client.conn), COPY_OUT_ROWS)

    def _event_rows(self, count: int, kind: str) -> list[tuple[int, str, str, int, float]]:
        items = self._items()
        return [
            (
                random.randint(1, items),
                self.worker,
                kind,
                random.randint(1, 50),
                round(random.uniform(1, 500), 2),
            )
            for _ in range(count)
        ]

    @task(60)
    def lookup(self) -> None:
        if not self._ready():
            return
        item = random.randint(1, self._items())
        with self.client.request(LOOKUP) as out:
            cur = self.client.conn.execute(
                "SELECT id, sku, price, stock, updated_at FROM lt_items WHERE id = %s", (item,)
            )
            out.rows = len(cur.fetchall())

    @task(10)
    def insert_many(self) -> None:
        if not self._ready():
            return
        rows = self._event_rows(INSERT_BATCH, "insert")
        with self.client.request(INSERT_MANY) as out, self.client.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO lt_events (item_id, worker, kind, qty, amount) "
                "VALUES (%s, %s, %s, %s, %s)",
                rows,
            )
            out.rows = len(rows)

    @task(3)
    def copy_in(self) -> None:
        if not self._ready():
            return
        payload = "".join(
            f"{item}\t{worker}\t{kind}\t{qty}\t{amount:.2f}\t\\N\n"
            for item, worker, kind, qty, amount in self._event_rows(COPY_ROWS, "copy")
        ).encode()
        with self.client.request(COPY_IN) as out, self.client.conn.cursor() as cur:
            with cur.copy(
                "COPY lt_events (item_id, worker, kind, qty, amount, note) FROM STDIN"
            ) as copy:
                copy.write(payload)
            out.rows = COPY_ROWS

    @task(2)
    def copy_out(self) -> None:
        if not self._ready():
            return
        low = random.randint(1, self._items() - COPY_OUT_ROWS + 1)
        high = low + COPY_OUT_ROWS - 1
        statement = (
            "COPY (SELECT id, sku, price, stock, updated_at FROM lt_items "
            f"WHERE id BETWEEN {low:d} AND {high:d}) TO STDOUT"
        )
        with self.client.request(COPY_OUT) as out, self.client.conn.cursor() as cur:
            lines = 0
            with cur.copy(statement) as copy:
                for chunk in copy:
                    lines += bytes(chunk).count(b"\n")
            out.rows = lines

    @task(2)
    def long_transaction(self) -> None:
        if not self._ready():
            return
        conn = self.client.conn
        low = random.randint(1, self._items() - COPY_OUT_ROWS + 1)
        events_rows = self._event_rows(LONG_TX_EVENTS, "batch")
        with self.client.request(LONG_TX) as out, conn.transaction():
            row = conn.execute(
                "INSERT INTO lt_batches (worker) VALUES (%s) RETURNING id", (self.worker,)
            ).fetchone()
            batch_id = row[0] if row else None
            conn.execute(
                "SELECT count(*), sum(stock), avg(price) FROM lt_items WHERE id BETWEEN %s AND %s",
                (low, low + COPY_OUT_ROWS - 1),
            ).fetchall()
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO lt_events (item_id, worker, kind, qty, amount) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    events_rows,
                )
            time.sleep(LONG_TX_SLEEP)  # gevent-patched: idle in transaction
            conn.execute(
                "UPDATE lt_batches SET finished_at = now(), rows = %s WHERE id = %s",
                (len(events_rows), batch_id),
            )
            out.rows = len(events_rows) + 2

    @task(1)
    def blocked_statement(self) -> None:
        """Refill the scratch table, then empty or overwrite all of it (no WHERE)."""
        if not self._ready():
            return
        with self.client.request(SCRATCH_FILL) as out:
            cur = self.client.conn.execute(
                "INSERT INTO lt_scratch (worker, note) "
                "SELECT %s, 'row ' || g FROM generate_series(1, %s) AS g",
                (self.worker, SCRATCH_ROWS),
            )
            out.rows = cur.rowcount
        if not self._ready():
            return
        if random.random() < 0.5:
            name, statement = BLOCKED_DELETE, "DELETE FROM lt_scratch"
        else:
            name, statement = BLOCKED_UPDATE, "UPDATE lt_scratch SET note = 'overwritten'"
        with self.client.request(name) as out:
            out.rows = self.client.conn.execute(statement).rowcount


# -- exact timings -----------------------------------------------------------------------------


@dataclass
class _Series:
    times_ms: list[float] = field(default_factory=list)
    denied: int = 0
    errors: int = 0
    rows: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    slowest: list[tuple[float, float]] = field(default_factory=list)  # heap of (ms, at)


def _percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (not empty)."""
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class TimingCollector:
    """Keeps every response time of every request name; summarises them as JSON."""

    def __init__(self) -> None:
        self.series: dict[str, _Series] = {}
        self.started = time.time()
        self.stopped: float | None = None
        self.max_cpu_warning: float | None = None

    def reset(self) -> None:
        self.series.clear()
        self.started = time.time()
        self.stopped = None
        self.max_cpu_warning = None

    def record(
        self, name: str, response_time: float, response_length: int, exception: object
    ) -> None:
        series = self.series.setdefault(name, _Series())
        series.times_ms.append(float(response_time))
        # when it started, in seconds since the test started: lines stalls up across names
        at = time.time() - self.started - response_time / 1000.0
        if len(series.slowest) < SLOWEST_KEPT:
            heapq.heappush(series.slowest, (float(response_time), at))
        elif response_time > series.slowest[0][0]:
            heapq.heapreplace(series.slowest, (float(response_time), at))
        series.rows += int(response_length or 0)
        if exception is None:
            return
        if getattr(exception, "sqlstate", None) == DENIED_SQLSTATE:
            series.denied += 1
        else:
            series.errors += 1
        series.messages[str(exception)] += 1

    def summary(self) -> dict[str, Any]:
        stopped = self.stopped if self.stopped is not None else time.time()
        requests: dict[str, Any] = {}
        for name in sorted(self.series):
            series = self.series[name]
            ordered = sorted(series.times_ms)
            count = len(ordered)
            requests[name] = {
                "count": count,
                "denied": series.denied,
                "errors": series.errors,
                "rows": series.rows,
                "mean_ms": sum(ordered) / count if count else None,
                "p50_ms": _percentile(ordered, 50) if count else None,
                "p95_ms": _percentile(ordered, 95) if count else None,
                "p99_ms": _percentile(ordered, 99) if count else None,
                "max_ms": ordered[-1] if count else None,
                "blocked": name.startswith(BLOCKED_PREFIX),
                "messages": dict(series.messages.most_common(5)),
                "slowest": [
                    {"ms": ms, "started_at_s": round(at, 3)}
                    for ms, at in sorted(series.slowest, reverse=True)
                ],
            }
        return {
            "started": self.started,
            "stopped": stopped,
            "window_s": stopped - self.started,
            "psycopg_wait": getattr(waiting.wait, "__name__", repr(waiting.wait)),
            "libpq_version": pq.version(),
            "locust_cpu_warning_max_percent": self.max_cpu_warning,
            "long_tx_sleep_s": LONG_TX_SLEEP,
            "requests": requests,
        }


_collector = TimingCollector()


def _add_arguments(parser: argparse.ArgumentParser, **_kwargs: Any) -> None:
    parser.add_argument(
        "--pg-timings",
        default=os.environ.get(TIMINGS_ENV, ""),
        help="write a JSON summary of exact response times here when the test stops",
    )


def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    _collector.reset()


def _on_request(
    name: str,
    response_time: float,
    response_length: int,
    exception: object = None,
    **_kwargs: Any,
) -> None:
    _collector.record(name, response_time, response_length, exception)


def _on_cpu_warning(environment: Environment, cpu_usage: float, **_kwargs: Any) -> None:
    _collector.max_cpu_warning = max(cpu_usage, _collector.max_cpu_warning or 0.0)


def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    _collector.stopped = time.time()
    options = environment.parsed_options
    path = getattr(options, "pg_timings", "") if options is not None else ""
    if path:
        Path(path).write_text(json.dumps(_collector.summary(), indent=2) + "\n")


def _listen(hook: Any, handler: Callable[..., object]) -> None:
    hook.add_listener(handler)  # EventHook.add_listener is untyped


_listen(events.init_command_line_parser, _add_arguments)
_listen(events.test_start, _on_test_start)
_listen(events.request, _on_request)
_listen(events.cpu_warning, _on_cpu_warning)
_listen(events.test_stop, _on_test_stop)
