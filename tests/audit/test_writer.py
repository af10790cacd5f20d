"""AuditWriter on a real event loop and a real spool: batching, durability, epochs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gateway.audit import (
    AuditWriteError,
    AuditWriter,
    EventsDroppedEvent,
    PolicyReloadEvent,
    StatementEvent,
    WorkerStartEvent,
    WorkerStopEvent,
    decode_batch,
    generate_key,
    load_public_keys,
    load_signing_key,
    parse_record,
    read_spool,
    verify_records,
)
from gateway.audit.batch import Batch
from gateway.config import AuditConfig, AuditKafkaConfig
from tests.audit.helpers import (
    GATEWAY,
    audit_config,
    file_size_limit,
    keys_of,
    spool_dir,
    statement,
)

KEY = SigningKey(bytes(range(2, 34)))


def batches(cfg: AuditConfig, worker: int = 0) -> list[Batch]:
    root = spool_dir(Path(cfg.spool_dir), worker)
    return [decode_batch(parse_record(r.record)) for r in read_spool(root)]


def writer(cfg: AuditConfig, worker: int = 0, **options: object) -> AuditWriter:
    return AuditWriter(cfg, GATEWAY, worker, KEY, **options)  # type: ignore[arg-type]


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_start_opens_an_epoch_and_close_closes_it(tmp_path: Path) -> None:
    cfg = audit_config(tmp_path)

    async def main() -> None:
        w = writer(cfg)
        await w.start()
        w.emit(statement())
        await w.close()

    run(main())
    got = batches(cfg)
    assert [b.kind for b in got] == ["open", "data", "close"]
    assert isinstance(got[0].events[0], WorkerStartEvent) and got[0].link is None
    stop = got[-1].events[-1]
    assert isinstance(stop, WorkerStopEvent) and stop.events == 1
    report = verify_records(read_spool(cfg.spool_dir), keys_of(KEY))
    assert report.ok and not report.warnings, report.problems + report.warnings


def test_flush_by_count_seals_full_batches(tmp_path: Path) -> None:
    cfg = audit_config(tmp_path, flush_events=8, flush_interval=60.0)

    async def main() -> None:
        w = writer(cfg)
        await w.start()
        for _ in range(8):
            w.emit(statement())
        for _ in range(50):  # no timer can fire within a minute: the count flushed it
            await asyncio.sleep(0.01)
            if w.stats().durable == 8:
                break
        assert w.stats().durable == 8
        for _ in range(3):
            w.emit(statement())
        await asyncio.sleep(0.05)
        assert w.stats().durable == 8  # 3 < flush_events, and the timer is a minute away
        await w.close()

    run(main())
    assert [(b.kind, len(b.events)) for b in batches(cfg)] == [
        ("open", 1), ("data", 8), ("data", 3), ("close", 1),
    ]


def test_flush_by_timer(tmp_path: Path) -> None:
    cfg = audit_config(tmp_path, flush_events=1000, flush_interval=0.03)

    async def main() -> None:
        w = writer(cfg)
        await w.start()
        w.emit(statement())
        started = time.monotonic()
        while w.stats().durable < 1:
            await asyncio.sleep(0.005)
            assert time.monotonic() - started < 5
        assert time.monotonic() - started >= 0.02
        await w.close()

    run(main())
    assert [b.kind for b in batches(cfg)] == ["open", "data", "close"]


def test_durable_resolves_after_fsync_and_group_commits(tmp_path: Path) -> None:
    cfg = audit_config(tmp_path, mode="strict", flush_events=512, flush_interval=60.0)
    notified: list[int] = []

    async def main() -> None:
        w = writer(cfg, on_batch=lambda: notified.append(1))
        await w.start()
        assert await asyncio.wait_for(w.durable(), 1) is None  # nothing pending
        # 200 concurrent "statements", each waiting for its own event to be durable.
        async def one_statement(n: int) -> None:
            await asyncio.sleep(0.001 * (n % 7))
            w.emit(statement(n))
            await asyncio.wait_for(w.durable(), 10)

        await asyncio.gather(*(one_statement(n) for n in range(200)))
        stats = w.stats()
        assert stats.durable == 200
        # Strict mode does not wait for the timer, and many waiters share one fsync.
        assert stats.appends < 200 / 2
        await w.close()

    run(main())
    assert len(notified) >= 3  # open, data appends, close
    events = [e for b in batches(cfg) for e in b.events if isinstance(e, StatementEvent)]
    assert sorted(e.id for e in events) == sorted(f"s1:{n}" for n in range(200))


def test_restart_opens_a_new_epoch_linked_to_the_previous(tmp_path: Path) -> None:
    cfg = audit_config(tmp_path)

    async def life(close: bool) -> str:
        w = writer(cfg)
        await w.start()
        w.emit(statement())
        await w.flush()
        if close:
            await w.close()
        else:  # killed: no close batch
            assert w.spool is not None
            w.spool.close()
        return w.epoch

    first = run(life(close=True))
    second = run(life(close=False))
    third = run(life(close=True))
    got = batches(cfg)
    opens = [b for b in got if b.kind == "open"]
    assert [b.epoch for b in opens] == [first, second, third]
    assert opens[0].link is None
    assert opens[1].link is not None and opens[1].link.epoch == first and opens[1].link.closed
    assert opens[2].link is not None and opens[2].link.epoch == second
    assert not opens[2].link.closed
    report = verify_records(read_spool(cfg.spool_dir), keys_of(KEY))
    assert report.ok, report.problems
    [warning] = report.warnings
    assert warning.epoch == second and "unclosed (worker stopped without closing)" in (
        warning.message
    )


def test_events_emitted_in_one_loop_iteration_share_an_append(tmp_path: Path) -> None:
    cfg = audit_config(tmp_path, flush_events=4)

    async def main() -> None:
        w = writer(cfg)
        await w.start()
        for _ in range(10):
            w.emit(statement())
        await w.flush()
        assert w.stats().appends == 2  # open, then one group commit of 3 batches
        assert w.stats().batches == 1 + 3
        await w.close()

    run(main())


def test_events_appended_through_fast_sink_are_counted_and_made_durable(
    tmp_path: Path,
) -> None:
    """The session trail's C fast path appends encoded events to the list fast_sink
    returns, while the shared byte says fast_ok, and only calls fast_kick: the writer
    counts them as emitted all the same (durable() waits for them, stats and the close
    batch's worker_stop count them), also across a failed append that puts them back."""
    import msgspec

    cfg = audit_config(tmp_path, flush_events=4, flush_interval=60.0)

    async def main() -> None:
        w = writer(cfg)
        sink, flush_events, flag = w.fast_sink()
        assert flush_events == 4 and not w.fast_ok and flag == b"\x00"
        await w.start()
        assert w.fast_ok and flag == b"\x01"
        for n in range(3):
            sink.append(msgspec.json.encode(statement(n)))
            w.fast_kick()
        assert w.stats().emitted == 3 and w.stats().durable == 0
        await w.durable()
        assert w.stats().emitted == w.stats().durable == 3
        w.emit(statement(3))
        sink.append(msgspec.json.encode(statement(4)))
        w.fast_kick()
        assert w.stats().emitted == 5
        await w.close()
        assert not w.fast_ok and flag == b"\x00"
        assert w.stats().durable == 5

    run(main())
    got = batches(cfg)
    ids = [e.id for b in got for e in b.events if isinstance(e, StatementEvent)]
    assert ids == [f"s1:{n}" for n in range(5)]
    stop = got[-1].events[-1]
    assert isinstance(stop, WorkerStopEvent) and stop.events == 5


def test_a_failing_spool_is_loud_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import gateway.audit.writer as writer_mod

    monkeypatch.setattr(writer_mod, "RETRY_DELAY", 0.05)
    cfg = audit_config(tmp_path, flush_events=4)

    async def main() -> None:
        w = writer(cfg)
        await w.start()
        assert w.spool is not None
        [segment] = spool_dir(Path(cfg.spool_dir)).glob("*.seg")
        with file_size_limit(segment.stat().st_size + 50):
            for n in range(6):
                w.emit(statement(n))
            with pytest.raises(AuditWriteError, match="File too large"):
                await w.durable()
            assert w.failed is not None
            with pytest.raises(AuditWriteError):
                await w.durable()  # fails fast while the spool is failing
        for _ in range(200):  # the retry timer writes the held events
            await asyncio.sleep(0.01)
            if w.failed is None:
                break
        assert w.failed is None
        await w.durable()
        assert w.stats().failures >= 1
        assert w.stats().emitted == w.stats().durable == 6
        await w.close()

    run(main())
    assert "cannot write the spool; 6 events are held in memory" in caplog.text
    report = verify_records(read_spool(cfg.spool_dir), keys_of(KEY))
    assert report.ok, report.problems
    ids = [e.id for b in batches(cfg) for e in b.events if isinstance(e, StatementEvent)]
    assert ids == [f"s1:{n}" for n in range(6)]


def test_a_failing_seal_keeps_what_was_sealed_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is sealed when it fills. If sealing fails (here the second batch, once
    when it fills and again in the drain), the chain has not advanced: the records sealed
    before are kept (they must be written, in order), the events stay pending, durability
    waiters are told, and the next attempt writes everything."""
    import gateway.audit.writer as writer_mod
    from gateway.audit.batch import Chain

    monkeypatch.setattr(writer_mod, "RETRY_DELAY", 0.05)
    cfg = audit_config(tmp_path, flush_events=4)
    real_seal = Chain.seal_buffer
    calls = {"n": 0}

    def flaky_seal(self: Chain, buffer: object) -> bytes:
        calls["n"] += 1
        if calls["n"] in (2, 3):
            raise MemoryError("simulated")
        return real_seal(self, buffer)  # type: ignore[arg-type]

    monkeypatch.setattr(Chain, "seal_buffer", flaky_seal)

    async def main() -> None:
        w = writer(cfg)
        await w.start()
        for n in range(10):  # the first batch is sealed at 4 events, the second fails
            w.emit(statement(n))
        assert calls["n"] == 2 and w.stats().durable == 0
        with pytest.raises(AuditWriteError, match="simulated"):
            await w.durable()
        assert w.failed is not None
        for _ in range(200):
            await asyncio.sleep(0.01)
            if w.failed is None:
                break
        await w.durable()
        assert w.stats().durable == 10
        await w.close()

    run(main())
    report = verify_records(read_spool(cfg.spool_dir), keys_of(KEY))
    assert report.ok, report.problems
    ids = [e.id for b in batches(cfg) for e in b.events if isinstance(e, StatementEvent)]
    assert ids == [f"s1:{n}" for n in range(10)]


def test_fail_open_drops_and_records_the_loss(tmp_path: Path) -> None:
    cfg = audit_config(
        tmp_path, on_spool_full="fail_open", segment_bytes=64 * 1024,
        spool_max_bytes=128 * 1024, flush_events=64,
        # With Kafka configured, acknowledged segments are deleted and free space.
        kafka=AuditKafkaConfig(bootstrap_servers=["127.0.0.1:9"]),
    )

    async def main() -> None:
        w = writer(cfg)
        await w.start()
        assert w.spool is not None
        while not w.full:
            for _ in range(64):
                w.emit(statement(text="x" * 500))
            await w.flush()
        before = w.stats().emitted
        for _ in range(5):
            w.emit(PolicyReloadEvent(at=time.time_ns(), version="v", ok=True))
        assert w.stats().dropped == 5 and w.stats().emitted == before
        # Kafka catches up; the spool has room again.
        w.spool.ack(w.spool.end)
        assert not w.full
        w.emit(statement())
        await w.close()

    run(main())
    got = batches(cfg)
    dropped = [e for b in got for e in b.events if isinstance(e, EventsDroppedEvent)]
    assert [d.count for d in dropped] == [5]


def test_fail_closed_never_drops(tmp_path: Path) -> None:
    cfg = audit_config(tmp_path, segment_bytes=64 * 1024, spool_max_bytes=128 * 1024)

    async def main() -> None:
        w = writer(cfg)
        await w.start()
        while not w.full:
            w.emit(statement(text="x" * 2000))
            await w.flush()
        w.emit(statement(n=-1))  # the server refuses statements now, but events still land
        await w.flush()
        assert w.stats().dropped == 0
        await w.close()

    run(main())
    assert any(
        isinstance(e, StatementEvent) and e.id == "s1:-1" for b in batches(cfg) for e in b.events
    )


def test_two_workers_two_chains(tmp_path: Path) -> None:
    cfg = audit_config(tmp_path)

    async def main() -> None:
        writers = [writer(cfg, worker) for worker in (0, 1)]
        for w in writers:
            await w.start()
        for n in range(20):
            writers[n % 2].emit(statement(n))
        for w in writers:
            await w.close()

    run(main())
    report = verify_records(read_spool(cfg.spool_dir), keys_of(KEY))
    assert report.ok, report.problems
    assert sorted(report.chains) == [(GATEWAY, 0), (GATEWAY, 1)]
    assert all(stats.events == 10 + 2 for stats in report.chains.values())


WORKER_SCRIPT = """
import asyncio, sys, time
from gateway.audit import AuditWriter, StatementEvent, load_signing_key
from gateway.config import AuditConfig

cfg = AuditConfig(spool_dir=sys.argv[1], signing_key_file=sys.argv[2], flush_events=16,
                  flush_interval=0.005)

async def main():
    writer = AuditWriter(cfg, "gw-test", 0, load_signing_key(sys.argv[2]))
    await writer.start()
    print("started", flush=True)
    n = 0
    while True:
        for _ in range(50):
            now = time.time_ns()
            writer.emit(StatementEvent(
                at=now, id=f"s:{n}", session_id="s", start=now, end=now, issuer="i",
                subject="s", client_id="", role="r", upstream_user="u", database="d",
                client_addr="127.0.0.1:1", application_name="a", protocol="simple",
                text="SELECT 1", fingerprint="f", decision="allow"))
            n += 1
        await asyncio.sleep(0.001)

asyncio.run(main())
"""


def test_kill_9_under_load_then_the_successor_links_and_nothing_is_missing(
    tmp_path: Path,
) -> None:
    generate_key(tmp_path / "audit.key")
    cfg = audit_config(tmp_path)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, cfg.spool_dir, str(tmp_path / "audit.key")],
        stdout=subprocess.PIPE, cwd=repo,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
    time.sleep(0.3)  # appends in full flow
    proc.kill()  # SIGKILL, possibly in the middle of a write
    proc.wait(10)

    async def successor() -> None:
        w = AuditWriter(cfg, GATEWAY, 0, load_signing_key(tmp_path / "audit.key"))
        await w.start()
        w.emit(statement())
        await w.close()

    run(successor())
    keys = load_public_keys(tmp_path / "audit.key.pub")
    report = verify_records(read_spool(cfg.spool_dir), keys)
    assert report.ok, [str(p) for p in report.problems]
    [warning] = report.warnings
    assert "unclosed (worker stopped without closing)" in warning.message
    assert "nothing is missing" in warning.message
    killed = [b for b in batches(cfg) if b.epoch == warning.epoch]
    ids = [e.id for b in killed for e in b.events if isinstance(e, StatementEvent)]
    assert len(ids) > 100 and ids == [f"s:{n}" for n in range(len(ids))]  # no gap
