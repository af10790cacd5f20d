"""pgwarden keys generate / audit verify / audit tail, through gateway.cli.main and as a
process."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gateway import cli
from gateway.audit import load_signing_key
from gateway.audit.batch import link_to
from tests.audit.helpers import GATEWAY, epoch_records, flip, frame, spool_dir, write_segment

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    assert cli.main(["keys", "generate", "--out", str(tmp_path / "audit.key")]) == 0
    return load_signing_key(tmp_path / "audit.key")


@pytest.fixture
def spool(tmp_path: Path, key: SigningKey) -> Path:
    first = epoch_records(key, 2, close=False)
    second = epoch_records(key, 3, link=link_to(first[-1]))
    write_segment(spool_dir(tmp_path / "spool"), first + second)
    write_segment(spool_dir(tmp_path / "spool", worker=1), epoch_records(key, 1, worker=1))
    return tmp_path / "spool"


def test_keys_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k"
    assert cli.main(["keys", "generate", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"private key: {out} (mode 0600" in text and f"public key:  {out}.pub" in text
    assert "key id:      " in text
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert cli.main(["keys", "generate", "--out", str(out)]) == 2
    assert "already exists; refusing to overwrite" in capsys.readouterr().err


def test_verify_ok(tmp_path: Path, spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["audit", "verify", "--spool", str(spool), "--keys", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0, out
    assert out[-1].startswith("OK; 2 chain(s), 11 batches")
    assert any(line.startswith("warning: ") and "unclosed" in line for line in out)
    assert f"chain {GATEWAY}/worker-0: 2 epoch(s), 8 batches" in "\n".join(out)


def test_verify_names_the_failing_batch(
    tmp_path: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]
) -> None:
    records = epoch_records(key, 3, compression="none")  # version 1: flip plain text
    records[2] = flip(records[2], b"SELECT")
    segment = write_segment(spool_dir(tmp_path / "spool"), records)
    # An attacker with disk access also fixes the frame's CRC.
    segment.write_bytes(segment.read_bytes()[:8] + b"".join(frame(r) for r in records))
    code = cli.main(
        ["audit", "verify", "--spool", str(tmp_path / "spool"), "--keys",
         str(tmp_path / "audit.key.pub")]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    [problem] = [line for line in out if line.startswith("problem: ")]
    assert f"{GATEWAY}/worker-0 epoch " in problem and " seq 2 (" in problem
    assert f"{segment}@" in problem and "bad signature" in problem
    assert out[-1].startswith("FAILED: 1 problem(s)")


def test_verify_json(tmp_path: Path, spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(
        ["audit", "verify", "--json", "--spool", str(spool), "--keys", str(tmp_path)]
    ) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["batches"] == 11 and report["problems"] == []
    assert {c["worker"] for c in report["chains"]} == {0, 1}


def test_verify_usage_errors(
    tmp_path: Path, spool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["audit", "verify", "--keys", str(tmp_path)]) == 2
    assert "give either --spool DIR" in capsys.readouterr().err
    assert cli.main(["audit", "verify", "--spool", str(spool), "--keys", str(spool)]) == 2
    assert "no *.pub public key files" in capsys.readouterr().err
    missing = str(tmp_path / "x")
    assert cli.main(["audit", "verify", "--spool", missing, "--keys", str(tmp_path)]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_tail_prints_verified_events(
    tmp_path: Path, spool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["audit", "tail", "--spool", str(spool), "--keys", str(tmp_path)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert {line["gateway"] for line in lines} == {GATEWAY}
    statements = [line for line in lines if line["event"]["type"] == "statement"]
    assert len(statements) == (2 + 3 + 1) * 3
    assert statements[0]["event"]["subject"] == "repo:acme/etl:ref:refs/heads/main"


def test_tail_ecs(tmp_path: Path, spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(
        ["audit", "tail", "--format", "ecs", "--spool", str(spool), "--keys", str(tmp_path)]
    ) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    statement = next(d for d in docs if d["event"]["action"] == "statement")
    assert statement["user"]["name"] == "repo:acme/etl:ref:refs/heads/main"
    assert statement["source"]["ip"] == "10.1.2.3" and statement["source"]["port"] == 50432
    assert statement["event"]["outcome"] == "success"
    assert statement["pgwarden"]["statement"]["text"].startswith("SELECT * FROM orders")
    assert statement["@timestamp"].endswith("Z")


def test_tail_reports_problems_on_stderr(
    tmp_path: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]
) -> None:
    records = epoch_records(key, 3)
    del records[2]
    write_segment(spool_dir(tmp_path / "spool"), records)
    code = cli.main(
        ["audit", "tail", "--spool", str(tmp_path / "spool"), "--keys", str(tmp_path)]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "batch 2 is missing" in captured.err
    assert len(captured.out.splitlines()) == 1 + 2 * 3 + 1


def test_tail_follow_as_a_process(tmp_path: Path, key: SigningKey) -> None:
    records = epoch_records(key, 4, close=False)
    directory = spool_dir(tmp_path / "spool")
    write_segment(directory, records[:2])
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "audit", "tail", "--follow", "--interval",
         "0.05", "--spool", str(tmp_path / "spool"), "--keys", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        seen = [json.loads(proc.stdout.readline()) for _ in range(1 + 3)]
        assert seen[-1]["seq"] == 1
        time.sleep(0.1)
        with open(next(directory.glob("*.seg")), "ab") as fh:
            fh.write(b"".join(frame(r) for r in records[2:]))
        more = [json.loads(proc.stdout.readline()) for _ in range(2 * 3)]
        assert [m["seq"] for m in more] == [2, 2, 2, 3, 3, 3]
    finally:
        proc.kill()
        proc.wait(10)


