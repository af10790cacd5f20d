"""The spool: group commit, torn-tail recovery, rotation, ack and deletion, limits, locks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gateway.audit import read_spool, verify_records
from gateway.audit.spool import SEGMENT_MAGIC, SpoolCorrupt, SpoolError, follow_spool
from tests.audit.helpers import (
    GATEWAY,
    epoch_records,
    file_size_limit,
    kafka_key,
    keys_of,
    open_spool,
    spool_dir,
)

KEY = SigningKey(bytes(range(1, 33)))


@pytest.fixture
def records() -> list[bytes]:
    return epoch_records(KEY, 6)


def segments(root: Path, worker: int = 0) -> list[Path]:
    return sorted(spool_dir(root, worker).glob("*.seg"))




def test_append_then_read_back_in_order(tmp_path: Path, records: list[bytes]) -> None:
    spool = open_spool(tmp_path)
    end = spool.append(records[:3])
    assert spool.append(records[3:]) > end
    got = list(spool.unacked())
    assert [b.record for b in got] == records
    assert {b.key for b in got} == {kafka_key()}
    assert [b.position for b in got] == sorted(b.position for b in got)
    assert got[-1].position == spool.end
    assert spool.last_record() == records[-1]
    # unacked(start) continues after a batch already handed out.
    assert [b.record for b in spool.unacked(got[2].position)] == records[3:]
    spool.close()
    assert [r.record for r in read_spool(tmp_path)] == records


def test_one_fsync_per_append_group_commit(
    tmp_path: Path, records: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = open_spool(tmp_path)
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    spool.append(records)  # 8 records
    assert len(calls) == 1
    spool.append(records[:1])
    assert len(calls) == 2


def test_torn_tail_is_cut_on_open_and_earlier_records_survive(
    tmp_path: Path, records: list[bytes]
) -> None:
    spool = open_spool(tmp_path)
    spool.append(records[:5])
    spool.close()
    [segment] = segments(tmp_path)
    whole = segment.stat().st_size
    # A crash in the middle of appending the sixth record.
    with open(segment, "ab") as fh:
        fh.write((len(records[5]) + 8).to_bytes(4, "big") + b"\x00\x01\x02\x03" + records[5][:40])
    report = verify_records(read_spool(tmp_path), keys_of(KEY))
    [tail] = report.warnings[:1]
    assert "incomplete write at the end of the chain" in tail.message
    assert tail.source.endswith(f"@{whole}")

    spool = open_spool(tmp_path)
    assert spool.recovered_bytes == 8 + 40
    assert segment.stat().st_size == whole
    assert spool.last_record() == records[4]
    spool.append(records[5:])
    spool.close()
    assert [r.record for r in read_spool(tmp_path)] == records


def test_a_segment_truncated_mid_record_keeps_every_earlier_record(
    tmp_path: Path, records: list[bytes]
) -> None:
    spool = open_spool(tmp_path)
    spool.append(records)
    spool.close()
    [segment] = segments(tmp_path)
    size = segment.stat().st_size
    os.truncate(segment, size - len(records[-1]) // 2)  # the last record, half written
    spool = open_spool(tmp_path)
    assert spool.recovered_bytes == 8 + len(records[-1]) - len(records[-1]) // 2
    assert segment.stat().st_size == size - 8 - len(records[-1])
    assert [b.record for b in spool.unacked()] == records[:-1]
    assert spool.last_record() == records[-2]
    spool.close()


def test_zero_filled_tail_counts_as_torn(tmp_path: Path, records: list[bytes]) -> None:
    spool = open_spool(tmp_path)
    spool.append(records[:2])
    spool.close()
    [segment] = segments(tmp_path)
    whole = segment.stat().st_size
    with open(segment, "ab") as fh:
        fh.write(b"\0" * 4096)  # blocks allocated, data never written
    spool = open_spool(tmp_path)
    assert spool.recovered_bytes == 4096 and segment.stat().st_size == whole
    spool.close()


def test_a_segment_holding_only_a_torn_first_frame_is_removed(
    tmp_path: Path, records: list[bytes]
) -> None:
    spool = open_spool(tmp_path, segment_bytes=4096)
    spool.append(records[:2])
    spool.close()
    before = segments(tmp_path)
    # Rotation created the next segment, then the process died.
    spool_dir(tmp_path).joinpath(f"{10**6:020d}.seg").write_bytes(SEGMENT_MAGIC[:3])
    spool = open_spool(tmp_path, segment_bytes=4096)
    assert segments(tmp_path) == before
    assert spool.last_record() == records[1]
    spool.close()


def test_corruption_before_the_tail_is_refused_not_cut(
    tmp_path: Path, records: list[bytes]
) -> None:
    spool = open_spool(tmp_path)
    spool.append(records[:4])
    spool.close()
    [segment] = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[len(SEGMENT_MAGIC) + 8 + 20] ^= 0xFF  # inside the first record
    segment.write_bytes(bytes(data))
    with pytest.raises(SpoolCorrupt, match="complete records follow it"):
        open_spool(tmp_path)
    assert segment.read_bytes() == bytes(data)  # evidence untouched


def test_rotation_at_segment_bytes(tmp_path: Path) -> None:
    # Uncompressed (version 1) records: these tests need records of a known, large size.
    big = epoch_records(KEY, 12, per_batch=20, compression="none")
    spool = open_spool(tmp_path, segment_bytes=8192)
    for record in big:
        spool.append([record])
    files = segments(tmp_path)
    assert len(files) > 2
    for path in files[:-1]:
        assert path.stat().st_size <= 8192 or path.stat().st_size < 8192 + len(max(big, key=len))
    # Segment names are the positions of their first byte: contiguous.
    bases = [int(p.stem) for p in files]
    sizes = [p.stat().st_size for p in files]
    assert all(bases[i] + sizes[i] == bases[i + 1] for i in range(len(files) - 1))
    assert [b.record for b in spool.unacked()] == big
    assert spool.size_bytes == sum(sizes)


def test_a_batch_bigger_than_a_segment_gets_its_own(tmp_path: Path) -> None:
    huge = epoch_records(KEY, 1, per_batch=100, compression="none")
    assert len(huge[1]) > 4096
    spool = open_spool(tmp_path, segment_bytes=4096)
    spool.append(huge)
    assert [b.record for b in spool.unacked()] == huge


def test_ack_persists_and_deletes_fully_acknowledged_segments(tmp_path: Path) -> None:
    recs = epoch_records(KEY, 12, per_batch=20)
    spool = open_spool(tmp_path, segment_bytes=8192)
    for record in recs:
        spool.append([record])
    batches = list(spool.unacked())
    files_before = segments(tmp_path)
    middle = batches[len(batches) // 2]
    spool.ack(middle.position)
    rest = [b.record for b in batches[len(batches) // 2 + 1 :]]
    assert [b.record for b in spool.unacked()] == rest
    files_after = segments(tmp_path)
    assert 0 < len(files_after) < len(files_before)
    assert spool.size_bytes == sum(p.stat().st_size for p in files_after)
    spool.ack(middle.position - 1)  # going backwards is ignored
    with pytest.raises(ValueError, match="beyond the spool's end"):
        spool.ack(spool.end + 1)
    spool.close()

    spool = open_spool(tmp_path, segment_bytes=8192)
    assert spool.acked == middle.position
    assert next(spool.unacked()).record == rest[0]
    # Everything acknowledged: only the last segment stays, for the next epoch's link.
    spool.ack(spool.end)
    assert segments(tmp_path) == [files_before[-1]]
    assert list(spool.unacked()) == []
    assert spool.last_record() == recs[-1]
    spool.close()
    spool = open_spool(tmp_path, segment_bytes=8192)
    assert spool.last_record() == recs[-1]
    end = spool.end
    assert spool.append(recs[:1]) > end  # positions keep growing
    spool.close()


def test_retain_acked_deletes_nothing(tmp_path: Path) -> None:
    recs = epoch_records(KEY, 12, per_batch=20)
    spool = open_spool(tmp_path, segment_bytes=8192, retain_acked=True)
    spool.append(recs)
    files = segments(tmp_path)
    spool.ack(spool.end)
    assert segments(tmp_path) == files
    assert list(spool.unacked()) == []
    assert [r.record for r in read_spool(tmp_path)] == recs


def test_size_limit(tmp_path: Path) -> None:
    recs = epoch_records(KEY, 12, per_batch=20, compression="none")
    spool = open_spool(tmp_path, segment_bytes=8192, max_bytes=20000)
    assert not spool.full
    for record in recs:
        spool.append([record])
    assert spool.size_bytes >= 20000 and spool.full
    spool.ack(spool.end)  # the transport caught up: space is freed
    assert not spool.full


def test_a_failed_append_leaves_nothing_behind_and_can_be_retried(
    tmp_path: Path, records: list[bytes]
) -> None:
    spool = open_spool(tmp_path)
    spool.append(records[:2])
    [segment] = segments(tmp_path)
    size = segment.stat().st_size
    with file_size_limit(size + 100), pytest.raises(SpoolError, match="File too large"):
        spool.append(records[2:])  # a partial write, then EFBIG
    assert segment.stat().st_size == size
    assert spool.end == list(spool.unacked())[-1].position
    spool.append(records[2:])
    spool.close()
    report = verify_records(read_spool(tmp_path), keys_of(KEY))
    assert report.ok, report.problems
    assert report.batches == len(records)


def test_one_process_per_chain(tmp_path: Path) -> None:
    first = open_spool(tmp_path)
    with pytest.raises(SpoolError, match=rf"in use by another process \(pid {os.getpid()}\)"):
        open_spool(tmp_path)
    open_spool(tmp_path, worker=1).close()  # other chains are independent
    first.close()
    open_spool(tmp_path).close()


def test_gateway_ids_become_safe_directory_names(tmp_path: Path, records: list[bytes]) -> None:
    from gateway.audit.spool import Spool

    for gateway in ("../escape", "a/b", ".."):
        spool = Spool(tmp_path, gateway, 0)
        assert spool.directory.parent.parent == tmp_path
        spool.close()
    spool = Spool(tmp_path, "../escape", 0)
    spool.append(records[:1])
    spool.close()
    [item] = [r for r in read_spool(tmp_path) if r.key == b"../escape:0"]
    assert item.record == records[0]


def test_read_spool_accepts_root_gateway_or_chain_directory(
    tmp_path: Path, records: list[bytes]
) -> None:
    for worker in (0, 1):
        spool = open_spool(tmp_path, worker=worker)
        spool.append(records)
        spool.close()
    assert len(list(read_spool(tmp_path))) == 2 * len(records)
    assert len(list(read_spool(tmp_path / GATEWAY))) == 2 * len(records)
    chain = list(read_spool(spool_dir(tmp_path, 1)))
    assert [r.record for r in chain] == records
    assert {r.key for r in chain} == {kafka_key(1)}


def test_follow_spool_sees_later_appends(tmp_path: Path, records: list[bytes]) -> None:
    spool = open_spool(tmp_path, segment_bytes=4096)
    spool.append(records[:2])
    seen: list[bytes] = []
    polls = iter(range(10))

    def stop() -> bool:
        # Between polls the writer appends more, across a segment rotation.
        n = next(polls)
        if n == 0:
            spool.append(records[2:5])
        elif n == 1:
            spool.append(records[5:])
        return n >= 2

    for item in follow_spool(tmp_path, interval=0.01, stop=stop):
        assert not item.error
        seen.append(item.record)
    assert seen == records
    spool.close()


def test_unacked_cached_is_unacked_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a transport reads on the event loop's thread: exactly ``list(unacked())``
    across appends of several records, segment rotation and acknowledgements, or None
    when memory does not hold it all (an earlier process's records, beyond the bound)."""
    import gateway.audit.spool as spool_mod

    recs = epoch_records(KEY, 30, per_batch=20, compression="none")
    spool = open_spool(tmp_path, segment_bytes=8192)
    assert spool.unacked_cached() == []
    for i in range(0, 24, 3):
        spool.append(recs[i : i + 3])
        assert spool.unacked_cached() == list(spool.unacked())
    assert len(segments(tmp_path)) > 2  # rotation happened along the way
    everything = list(spool.unacked())
    for item in everything[:10:3]:
        spool.ack(item.position)
        assert spool.unacked_cached() == list(spool.unacked())
    spool.ack(everything[-1].position)
    assert spool.unacked_cached() == [] == list(spool.unacked())
    spool.append(recs[24:26])
    assert spool.unacked_cached() == list(spool.unacked())
    spool.close()

    # A new process: what the last one left unacknowledged is on disk only.
    spool = open_spool(tmp_path, segment_bytes=8192)
    assert spool.unacked_cached() is None
    spool.append(recs[26:27])
    assert spool.unacked_cached() is None  # still the files' (the earlier records)
    spool.ack(list(spool.unacked())[-2].position)
    assert spool.unacked_cached() == list(spool.unacked())
    assert [b.record for b in spool.unacked_cached() or []] == recs[26:27]

    # Beyond the bound, memory lets go of the oldest and the files serve.
    monkeypatch.setattr(spool_mod, "RECENT_BYTES", len(recs[28]) + len(recs[29]))
    spool.append(recs[27:30])
    assert spool.unacked_cached() is None
    spool.ack(list(spool.unacked())[1].position)
    assert spool.unacked_cached() == list(spool.unacked())
    assert [b.record for b in spool.unacked_cached() or []] == recs[28:30]
    spool.close()
