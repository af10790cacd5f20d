"""pgwarden evidence: a real spool written by AuditWriter at known times, turned into a
pack; the pack's contents, its escaping and guarding, the custody statement's secrecy,
the signed manifest, and what tampering with the spool or the pack does."""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import textwrap
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from gateway import cli
from gateway.audit import (
    ApprovalDecisionEvent,
    ApprovalRequestEvent,
    AuditWriter,
    AuthFailureEvent,
    AuthSuccessEvent,
    Event,
    EventsDroppedEvent,
    PolicyReloadEvent,
    SessionEndEvent,
    SessionStartEvent,
    StatementEvent,
    decode_batch,
    evidence,
    generate_key,
    load_public_keys,
    parse_record,
)
from gateway.audit.evidence import check_pack, guard_cell, parse_time
from gateway.audit.spool import SEGMENT_MAGIC
from gateway.config import load_config
from gateway.identity.static_secrets import hash_secret

GATEWAY = "gw-ev"
NS = 1_000_000_000
SINCE = parse_time("2030-03-01T10:00:00Z")
UNTIL = parse_time("2030-03-01T12:00:00Z")
MINUTE = 60 * NS

# Recognizable secrets: none of them, nor the static key's hash, may appear in the pack.
FILE_SECRET = "Fil3-Secret-etl-pw-6c1f0e"
ENV_SECRET = "Env-Secret-report-pw-93ab27"
UPSTREAM_SECRET = "Upstream-Secret-pw-51d8aa"
STATIC_KEY = "static-client-key-0d4e77"
REPORT_ENV = "PGW_EVIDENCE_TEST_REPORT_PW"
UPSTREAM_ENV = "PGW_EVIDENCE_TEST_UPSTREAM_PW"

HOSTILE_TEXT = "SELECT '<script>alert(1)</script>'"
HOSTILE_SUBJECT = '"><svg onload=alert(2)>'
FORMULA_TEXT = '=HYPERLINK("http://evil.example/x","click")'
MAIN_SUBJECT = "repo:acme/etl:ref:refs/heads/main"


# ---------------------------------------------------------------------- building


def statement(at: int, text: str, *, session: str = "s1", n: int = 0,
              subject: str = MAIN_SUBJECT, issuer: str = "github",
              decision: str = "allow", rule_ids: list[str] | None = None,
              sqlstate: str = "") -> StatementEvent:
    return StatementEvent(
        at=at, id=f"{session}:{n}", session_id=session, start=at - 150_000, end=at,
        issuer=issuer, subject=subject, client_id="", role="etl_loader",
        upstream_user="etl", database="warehouse", client_addr="10.1.2.3:50432",
        application_name="loader", protocol="simple", text=text,
        fingerprint="a1b2c3d4", decision=decision,  # type: ignore[arg-type]
        rule_ids=rule_ids or [], rows=1, command_tag="SELECT 1", sqlstate=sqlstate,
        duration_us=150,
    )


def session_start(at: int, session: str, subject: str, issuer: str = "github") -> SessionStartEvent:
    return SessionStartEvent(
        at=at, session_id=session, client_addr="10.1.2.3:50432", application_name="loader",
        database="warehouse", user="etl-job", issuer=issuer, subject=subject, client_id="",
        role="etl_loader", upstream_user="etl", tls=True,
    )


def session_end(at: int, session: str, statements: int) -> SessionEndEvent:
    return SessionEndEvent(at=at, session_id=session, reason="terminate",
                           statements=statements, bytes_in=100, bytes_out=200, duration=1.5)


# Worker 0: a session that starts before the window, statements at and around both edges.
BEFORE_WINDOW: list[Event] = [
    session_start(SINCE - 5 * MINUTE, "s1", MAIN_SUBJECT),
    AuthSuccessEvent(at=SINCE - 5 * MINUTE, session_id="s1", client_addr="10.1.2.3:50432",
                     user="etl-job", method="oidc", issuer="github", subject=MAIN_SUBJECT,
                     client_id="", role="etl_loader"),
    statement(SINCE - 1, "SELECT 'before'", n=1),
]
WORKER0_WINDOW: list[Event] = [
    statement(SINCE, "SELECT 'first'", n=2),
    statement(SINCE + 30 * MINUTE, HOSTILE_TEXT, n=3, decision="block",
              rule_ids=["baseline.no-server-files", "custom.x"], sqlstate="42501"),
    statement(SINCE + 45 * MINUTE, FORMULA_TEXT, n=4),
    statement(UNTIL - 1, "SELECT 'last'", n=5),
    statement(UNTIL, "SELECT 'after'", n=6),
    session_end(UNTIL + 30 * MINUTE, "s1", 6),
]
# Worker 1: a hostile subject, interleaved in time with worker 0.
WORKER1: list[Event] = [
    AuthFailureEvent(at=SINCE + 5 * MINUTE, reason="token expired", user="-cmd|calc",
                     method="oidc", client_addr="10.9.9.9:4000"),
    session_start(SINCE + 10 * MINUTE, "s2", HOSTILE_SUBJECT, issuer="static"),
    statement(SINCE + 20 * MINUTE, "SELECT 'worker1'", session="s2", n=1,
              subject=HOSTILE_SUBJECT, issuer="static", decision="approve"),
    ApprovalRequestEvent(at=SINCE + 21 * MINUTE, approval_id="ap-1", session_id="s2",
                         statement_id="s2:1", issuer="static", subject=HOSTILE_SUBJECT,
                         client_id="", role="etl_loader", database="warehouse",
                         text="DROP TABLE staging", fingerprint="ff", rule_ids=["baseline.drop"]),
    ApprovalDecisionEvent(at=SINCE + 25 * MINUTE, approval_id="ap-1", approver="alice",
                          decision="approved", justification="+ticket 42"),
    PolicyReloadEvent(at=SINCE + 26 * MINUTE, version="v2", ok=True),
    # Written after the window, about a loss inside it: evidence for the window.
    EventsDroppedEvent(at=UNTIL + MINUTE, count=3, first_at=SINCE + 40 * MINUTE,
                       last_at=SINCE + 41 * MINUTE),
    session_end(SINCE + 60 * MINUTE, "s2", 1),
    # A loss entirely before the window is not.
    EventsDroppedEvent(at=UNTIL + 2 * MINUTE, count=7, first_at=SINCE - 20 * MINUTE,
                       last_at=SINCE - 10 * MINUTE),
]
WINDOW_TEXTS = [
    "SELECT 'first'", "SELECT 'worker1'", HOSTILE_TEXT, FORMULA_TEXT, "SELECT 'last'",
]

CONFIG = """
[server]
gateway_id = "{gateway}"

[tls]
allow_plaintext_loopback = true

[upstream]
user = "pgwarden_admin"
password_env = "{upstream_env}"

[[clients]]
user = "nightly-etl"
secret_hash = "{secret_hash}"
label = "Nightly ETL (team data-platform)"
expires = "2031-01-01T00:00:00Z"

[[issuers]]
name = "github"
issuer = "https://token.actions.githubusercontent.com"
audiences = ["https://pgwarden.example.com"]
algorithms = ["RS256", "ES256"]

[[roles]]
name = "etl_loader"
upstream_user = "etl"
password_file = "secrets/etl.pw"
databases = ["warehouse"]

[[roles]]
name = "reporting"
upstream_user = "report_ro"
password_env = "{report_env}"
default_action = "block"

[[bindings]]
role = "etl_loader"
issuer = "github"
subject = "repo:acme/etl:*"

[[bindings]]
role = "reporting"
issuer = "static"
subject = "nightly-etl"

[audit]
spool_dir = "spool"
signing_key_file = "keys/audit.key"
flush_events = 4
flush_interval = 0.01
"""


def _clock(start: int) -> Callable[[], int]:
    now = [start]

    def clock() -> int:
        now[0] += 1000
        return now[0]

    return clock


async def _write_chain(cfg: Any, key: SigningKey, worker: int, groups: list[list[Event]]) -> None:
    # Batch seal times after the window: the worker_start/stop events they carry stay out.
    writer = AuditWriter(cfg.audit, GATEWAY, worker, key, clock=_clock(UNTIL + 3600 * NS))
    await writer.start()
    for group in groups:
        for event in group:
            writer.emit(event)
        await writer.flush()  # a batch boundary between groups
    await writer.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A gateway's files: config, keys, a secret file, and a spool with two chains."""
    root = tmp_path_factory.mktemp("site")
    (root / "keys").mkdir()
    key, _ = generate_key(root / "keys" / "audit.key")
    (root / "secrets").mkdir()
    (root / "secrets" / "etl.pw").write_text(FILE_SECRET + "\n")
    saved = {name: os.environ.get(name) for name in (REPORT_ENV, UPSTREAM_ENV)}
    os.environ[REPORT_ENV] = ENV_SECRET
    os.environ[UPSTREAM_ENV] = UPSTREAM_SECRET
    (root / "pgwarden.toml").write_text(textwrap.dedent(CONFIG).format(
        gateway=GATEWAY, upstream_env=UPSTREAM_ENV, report_env=REPORT_ENV,
        secret_hash=_static_hash(),
    ))
    cfg = load_config(root / "pgwarden.toml")

    async def main() -> None:
        await _write_chain(cfg, key, 0, [BEFORE_WINDOW, WORKER0_WINDOW])
        await _write_chain(cfg, key, 1, [WORKER1])

    asyncio.run(main())
    yield root
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


_HASH: list[str] = []


def _static_hash() -> str:
    if not _HASH:
        _HASH.append(hash_secret(STATIC_KEY))
    return _HASH[0]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgwarden evidence")
    evidence.add_arguments(p)
    return p


def run_evidence(site: Path, out: Path, *extra: str, spool: Path | None = None,
                 since: str = "2030-03-01T10:00:00Z", until: str = "2030-03-01T12:00:00Z") -> int:
    argv = ["--config", str(site / "pgwarden.toml"), "--since", since, "--until", until,
            "--out", str(out), *extra]
    if spool is not None:
        argv += ["--spool", str(spool)]
    return evidence.run(parser().parse_args(argv))


@pytest.fixture(scope="module")
def pack(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packs") / "pack"
    assert run_evidence(site, out) == 0
    return out


def keys(site: Path) -> dict[str, Any]:
    return load_public_keys(site / "keys" / "audit.key.pub")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------- the pack


def test_pack_holds_every_file_and_nothing_else(pack: Path) -> None:
    assert sorted(p.name for p in pack.iterdir()) == sorted([
        "statements.csv", "statements.jsonl", "authentication.csv", "authentication.jsonl",
        "approvals.csv", "approvals.jsonl", "sessions.jsonl", "system.jsonl",
        "verification.txt", "verification.json", "custody.md", "summary.html", "README.txt",
        "manifest.json", "manifest.sig", "manifest.sig.json",
    ])
    assert stat.S_IMODE(pack.stat().st_mode) == 0o700


def test_statements_in_the_window_in_time_order(pack: Path) -> None:
    rows = read_jsonl(pack / "statements.jsonl")
    # since is inclusive, until exclusive; both chains merged by time.
    assert [r["text"] for r in rows] == WINDOW_TEXTS
    assert rows[0]["time"] == "2030-03-01T10:00:00.000000000Z"
    assert rows[-1]["time"] == "2030-03-01T11:59:59.999999999Z"
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
    blocked = rows[2]
    assert blocked["decision"] == "block" and blocked["sqlstate"] == "42501"
    assert blocked["rule_ids"] == ["baseline.no-server-files", "custom.x"]
    assert blocked["subject"] == MAIN_SUBJECT and blocked["issuer"] == "github"
    assert blocked["role"] == "etl_loader" and blocked["upstream_user"] == "etl"
    assert blocked["database"] == "warehouse" and blocked["client_addr"] == "10.1.2.3:50432"
    assert blocked["application_name"] == "loader" and blocked["protocol"] == "simple"
    assert blocked["fingerprint"] == "a1b2c3d4" and blocked["duration_us"] == 150
    assert blocked["rows"] == 1 and blocked["statement_id"] == "s1:3"
    assert blocked["gateway"] == GATEWAY and blocked["worker"] == 0
    assert rows[1]["worker"] == 1 and rows[1]["subject"] == HOSTILE_SUBJECT

    table = read_csv(pack / "statements.csv")
    assert list(table[0]) == list(evidence.STATEMENT_COLUMNS)
    assert len(table) == len(rows)
    for row, line in zip(table, rows, strict=True):
        assert row["time"] == line["time"] and row["statement_id"] == line["statement_id"]
    assert table[2]["text"] == HOSTILE_TEXT
    assert table[2]["rule_ids"] == "baseline.no-server-files;custom.x"
    assert table[2]["rows"] == "1" and table[2]["parameters"] == ""


def test_csv_guards_formulas_and_jsonl_keeps_the_exact_text(pack: Path) -> None:
    table = read_csv(pack / "statements.csv")
    assert table[3]["text"] == "'" + FORMULA_TEXT
    assert read_jsonl(pack / "statements.jsonl")[3]["text"] == FORMULA_TEXT
    auth = read_csv(pack / "authentication.csv")
    [failure] = [r for r in auth if r["outcome"] == "failure"]
    assert failure["user"] == "'-cmd|calc" and failure["reason"] == "token expired"
    [decision] = [r for r in read_csv(pack / "approvals.csv") if r["event"] == "decision"]
    assert decision["justification"] == "'+ticket 42"
    # No cell of any CSV starts a formula.
    for name in ("statements.csv", "authentication.csv", "approvals.csv"):
        for row in read_csv(pack / name):
            for value in row.values():
                assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), (name, value)
    assert [guard_cell(v) for v in ("=1", "+1", "-1", "@x", "\tx", "a=1", "")] == [
        "'=1", "'+1", "'-1", "'@x", "'\tx", "a=1", "",
    ]


def test_jsonl_members_are_the_documented_columns_in_order(pack: Path) -> None:
    for name, columns in (
        ("statements", evidence.STATEMENT_COLUMNS), ("authentication", evidence.AUTH_COLUMNS),
        ("approvals", evidence.APPROVAL_COLUMNS), ("sessions", evidence.SESSION_COLUMNS),
    ):
        rows = read_jsonl(pack / f"{name}.jsonl")
        assert rows, name
        for row in rows:
            assert tuple(row) == columns, name


def test_authentication_approvals_sessions(pack: Path) -> None:
    # The auth_success of s1 was before the window: only the failure is in it.
    auth = read_jsonl(pack / "authentication.jsonl")
    assert [(a["outcome"], a["user"], a["method"]) for a in auth] == [
        ("failure", "-cmd|calc", "oidc"),
    ]
    assert list(read_csv(pack / "authentication.csv")[0]) == list(evidence.AUTH_COLUMNS)
    approvals = read_jsonl(pack / "approvals.jsonl")
    assert [(a["event"], a["approval_id"]) for a in approvals] == [
        ("request", "ap-1"), ("decision", "ap-1"),
    ]
    assert approvals[0]["text"] == "DROP TABLE staging" and approvals[1]["approver"] == "alice"
    sessions = read_jsonl(pack / "sessions.jsonl")
    assert [s["session_id"] for s in sessions] == ["s1", "s2"]  # by start time
    s1, s2 = sessions
    assert s1["start"] == "2030-03-01T09:55:00.000000000Z"  # before the window, still shown
    assert s1["end"] == "2030-03-01T12:30:00.000000000Z"
    assert s1["statements"] == 6 and s1["statements_in_window"] == 4
    assert s1["subject"] == MAIN_SUBJECT and s1["tls"] is True
    assert s2["subject"] == HOSTILE_SUBJECT and s2["statements_in_window"] == 1
    # Worker start/stop are outside the window; the reload is in it, and so is the loss.
    system = read_jsonl(pack / "system.jsonl")
    assert [(e["type"], e["worker"]) for e in system] == [
        ("policy_reload", 1), ("events_dropped", 1),
    ]
    assert system[0]["details"] == {"version": "v2", "ok": True, "error": ""}
    assert system[1]["details"]["count"] == 3
    manifest = json.loads((pack / "manifest.json").read_bytes())
    assert manifest["counts"]["events_dropped"] == 3


def test_html_escapes_everything_and_loads_nothing(pack: Path) -> None:
    page = (pack / "summary.html").read_text()
    assert "<script" not in page.lower()
    assert "<svg onload" not in page.lower() and "onload=" not in page.replace(
        "onload=alert", ""
    )
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;svg onload=alert(2)&gt;" in page
    for external in ("src=", "href=", "<link", "@import", "url("):
        assert external not in page.lower(), external
    assert "default-src 'none'" in page
    assert "Audit log verified" in page and "2030-03-01T10:00:00Z" in page
    assert "3 audit event(s) were DROPPED" in page
    # Refused statements by time, whichever chain they came from.
    assert page.index("SELECT &#x27;worker1&#x27;") < page.index("&lt;script&gt;alert(1)")
    assert page.count("<svg ") == 2  # decisions over time, identities over time


def test_custody_statement_says_who_holds_what_and_no_secret(site: Path, pack: Path) -> None:
    text = (pack / "custody.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()
            if line.startswith("| `")}
    # Each role: its upstream user, databases and where (never what) its secret is.
    assert rows["`etl_loader`"] == (
        f"| `etl_loader` | `etl` | `warehouse` | file `{site / 'secrets' / 'etl.pw'}` | "
        "finish | allow (policy default) |"
    )
    assert rows["`reporting`"] == (
        f"| `reporting` | `report_ro` | any | environment variable `{REPORT_ENV}` | finish | "
        "block |"
    )
    assert rows["`github`"].startswith(
        "| `github` | `https://token.actions.githubusercontent.com` | "
        "`https://pgwarden.example.com` | `RS256`, `ES256` | none | "
    )
    assert rows["`nightly-etl`"] == (
        "| `nightly-etl` | `Nightly ETL (team data-platform)` | `2031-01-01T00:00:00Z` | "
        "valid |"
    )
    for needed in (
        "| 1 | `etl_loader` | `github` | `repo:acme/etl:*` | any | any | any |",
        "1 static key(s)", "held only by the gateway", "as true as",
        "Client certificates (mTLS)\n\nNot configured.", "allows only because the listener "
        "is on loopback", "overridden by role(s): `reporting`=block",
    ):
        assert needed in text, needed
    config_digest = hashlib.sha256((site / "pgwarden.toml").read_bytes()).hexdigest()
    assert config_digest in text
    static_hash = _static_hash()
    forbidden = [FILE_SECRET, ENV_SECRET, UPSTREAM_SECRET, STATIC_KEY, static_hash,
                 *static_hash.split("$")[2:]]  # salt and hash, base64
    for path in pack.iterdir():
        data = path.read_bytes()
        for secret in forbidden:
            assert secret.encode() not in data, (path.name, secret)


def test_manifest_lists_every_file_with_its_hash(site: Path, pack: Path) -> None:
    manifest = json.loads((pack / "manifest.json").read_bytes())
    names = {f["name"] for f in manifest["files"]}
    assert names == {p.name for p in pack.iterdir()} - evidence.SIGNATURE_FILES
    for entry in manifest["files"]:
        data = (pack / entry["name"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["window"] == {
        "since": "2030-03-01T10:00:00Z", "until": "2030-03-01T12:00:00Z",
        "since_ns": SINCE, "until_ns": UNTIL, "rule": "since <= event time < until (UTC)",
    }
    assert manifest["verification"]["ok"] is True
    assert manifest["counts"]["statements"] == 5
    [kid] = keys(site)
    assert manifest["signer"]["key_id"] == kid
    assert json.loads((pack / "manifest.sig.json").read_bytes())["key_id"] == kid
    coverage = {(c["gateway"], c["worker"]): c for c in manifest["coverage"]}
    assert set(coverage) == {(GATEWAY, 0), (GATEWAY, 1)}
    [epoch] = coverage[(GATEWAY, 0)]["epochs"]
    assert epoch["first_seq"] == 0 and epoch["opened"] and epoch["closed"]
    assert epoch["last_seq"] == epoch["batches"] - 1 and epoch["missing_seqs"] == 0


def test_check_pack_passes_and_openssl_agrees(site: Path, pack: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert check_pack(pack, keys(site)) == []
    args = parser().parse_args(["check", str(pack), "--keys", str(site / "keys")])
    assert evidence.run(args) == 0
    assert "intact" in capsys.readouterr().out
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    done = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey",
         str(site / "keys" / "audit.key.pub"), "-rawin", "-in", str(pack / "manifest.json"),
         "-sigfile", str(pack / "manifest.sig")],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0 and "Verified Successfully" in done.stdout, done


# ---------------------------------------------------------------------- tampered packs


def _tamper_modify(pack: Path) -> str:
    with open(pack / "statements.csv", "ab") as fh:
        fh.write(b"forged,row\r\n")
    return "statements.csv: modified"


def _tamper_remove(pack: Path) -> str:
    (pack / "approvals.csv").unlink()
    return "approvals.csv: listed in the manifest but missing"


def _tamper_add(pack: Path) -> str:
    (pack / "extra.csv").write_text("time,text\n")
    return "extra.csv: not listed in the manifest"


def _tamper_manifest(pack: Path) -> str:
    manifest = json.loads((pack / "manifest.json").read_bytes())
    manifest["verification"]["ok"] = not manifest["verification"]["ok"]
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return "manifest.json: bad signature"


def _tamper_manifest_and_file(pack: Path) -> str:
    # The attacker edits a log and updates its hash in the manifest: the signature breaks.
    (pack / "statements.jsonl").write_text("")
    manifest = json.loads((pack / "manifest.json").read_bytes())
    for entry in manifest["files"]:
        if entry["name"] == "statements.jsonl":
            entry.update(bytes=0, sha256=hashlib.sha256(b"").hexdigest())
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return "manifest.json: bad signature"


def _tamper_hint(pack: Path) -> str:
    info = json.loads((pack / "manifest.sig.json").read_bytes())
    info["key_id"] = "0" * 32
    (pack / "manifest.sig.json").write_text(json.dumps(info))
    return "(the unsigned hint was edited)"


@pytest.mark.parametrize("tamper", [
    _tamper_modify, _tamper_remove, _tamper_add, _tamper_manifest, _tamper_manifest_and_file,
    _tamper_hint,
], ids=lambda f: f.__name__.removeprefix("_tamper_"))
def test_check_pack_detects_tampering(
    site: Path, pack: Path, tmp_path: Path, tamper: Callable[[Path], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    expected = tamper(copy)
    problems = check_pack(copy, keys(site))
    assert any(expected in p for p in problems), problems
    args = parser().parse_args(["check", str(copy), "--keys", str(site / "keys" / "audit.key.pub")])
    assert evidence.run_check(args) == 1
    assert "ALTERED" in capsys.readouterr().out


def test_check_pack_with_the_wrong_key(pack: Path, tmp_path: Path) -> None:
    generate_key(tmp_path / "other.key")
    [problem] = check_pack(pack, load_public_keys(tmp_path / "other.key.pub"))
    assert "not among them" in problem


# ---------------------------------------------------------------------- tampered spools


def _frames(segment: Path) -> list[bytes]:
    data = segment.read_bytes()
    assert data.startswith(SEGMENT_MAGIC)
    records, offset = [], len(SEGMENT_MAGIC)
    while offset < len(data):
        length, _ = struct.unpack_from(">II", data, offset)
        records.append(data[offset + 8 : offset + 8 + length])
        offset += 8 + length
    return records


def _holds(record: bytes, text: str) -> bool:
    """Whether a statement event of ``record`` (version 1 or 2) has this text."""
    batch = decode_batch(parse_record(record))
    return any(getattr(event, "text", None) == text for event in batch.events)


def _rewrite(segment: Path, records: list[bytes]) -> None:
    # What an attacker with disk access writes: frames with correct CRCs.
    segment.write_bytes(SEGMENT_MAGIC + b"".join(
        struct.pack(">II", len(r), zlib.crc32(r)) + r for r in records
    ))


def _spool_copy(site: Path, tmp_path: Path) -> tuple[Path, Path]:
    spool = tmp_path / "spool"
    shutil.copytree(site / "spool", spool)
    [segment] = sorted((spool / GATEWAY / "worker-0").glob("*.seg"))
    return spool, segment


def test_tampered_spool_fails_and_the_pack_says_where(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool, segment = _spool_copy(site, tmp_path)
    records = _frames(segment)
    [index] = [i for i, r in enumerate(records) if _holds(r, "SELECT 'first'")]
    batch = decode_batch(parse_record(records[index]))
    # One byte of the compressed (version 2) payload changed: the verifier cannot read what
    # the record claims to be, and names it by its place in its chain's spool.
    at = len(records[index]) - 80 - 20
    records[index] = records[index][:at] + b"D" + records[index][at + 1 :]
    _rewrite(segment, records)

    out = tmp_path / "pack"
    assert run_evidence(site, out, spool=spool) == 1
    captured = capsys.readouterr()
    assert "AUDIT LOG VERIFICATION FAILED" in captured.out and "FAILED" in captured.err
    report = (out / "verification.txt").read_text()
    assert report.startswith("pgwarden audit log verification: VERIFICATION FAILED")
    [problem] = [line for line in report.splitlines() if line.startswith("problem: ")]
    assert f"{GATEWAY}/worker-0 epoch {batch.epoch} seq {batch.seq}" in problem
    assert "bad signature" in problem and str(segment) in problem
    verification = json.loads((out / "verification.json").read_bytes())
    assert verification["ok"] is False and verification["problems"][0]["seq"] == batch.seq
    manifest = json.loads((out / "manifest.json").read_bytes())
    assert manifest["verification"]["verdict"] == "failed"
    assert "AUDIT LOG VERIFICATION FAILED" in (out / "summary.html").read_text()
    assert "did NOT verify" in (out / "README.txt").read_text()
    # The altered batch's events are not evidence; the others still are.
    texts = [r["text"] for r in read_jsonl(out / "statements.jsonl")]
    assert "SELECT 'first'" not in texts and "DELECT 'first'" not in texts
    assert "SELECT 'worker1'" in texts
    # The pack itself is intact: it faithfully reports a failed verification.
    assert check_pack(out, keys(site)) == []


def test_a_gap_before_the_window_is_reported(site: Path, tmp_path: Path) -> None:
    spool, segment = _spool_copy(site, tmp_path)
    records = _frames(segment)
    [index] = [i for i, r in enumerate(records) if _holds(r, "SELECT 'before'")]
    assert not any(_holds(records[index], t) for t in WINDOW_TEXTS)
    del records[index]
    _rewrite(segment, records)
    out = tmp_path / "pack"
    assert run_evidence(site, out, spool=spool) == 1
    report = (out / "verification.txt").read_text()
    assert f"batch {index} is missing" in report
    # Every statement of the window is still there: the problem is the chain's, shown.
    assert [r["text"] for r in read_jsonl(out / "statements.jsonl")] == WINDOW_TEXTS


# ---------------------------------------------------------------------- usage


def test_usage_errors_write_nothing(site: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    assert run_evidence(site, taken) == 2
    assert "not an empty directory" in capsys.readouterr().err
    out = tmp_path / "out"
    assert run_evidence(site, out, since="2030-03-02", until="2030-03-01") == 2
    assert run_evidence(site, out, since="yesterday") == 2
    assert run_evidence(site, out, "--keys", str(tmp_path / "missing.pub")) == 2
    assert run_evidence(site, out, spool=tmp_path / "no-spool") == 2
    assert not out.exists()
    args = parser().parse_args(["--since", "2030-03-01", "--until", "2030-03-02",
                                "--out", str(out), "--spool", str(site / "spool")])
    assert evidence.run(args) == 2  # no keys and no signing key without --config
    assert not out.exists()


def test_an_empty_directory_is_accepted_and_dates_are_whole_days(
    site: Path, tmp_path: Path
) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert run_evidence(site, out, since="2030-03-01", until="2030-03-02") == 0
    # The whole day: everything the test wrote, including what is outside the 2 h window.
    texts = [r["text"] for r in read_jsonl(out / "statements.jsonl")]
    assert texts[0] == "SELECT 'before'" and texts[-1] == "SELECT 'after'"


def test_parse_time() -> None:
    assert parse_time("2030-03-01") == SINCE - 10 * 3600 * NS
    assert parse_time("2030-03-01T10:00:00Z") == SINCE
    assert parse_time("2030-03-01T10:00:00") == SINCE  # no offset: UTC
    assert parse_time("2030-03-01T11:00:00+01:00") == SINCE
    assert parse_time("2030-03-01T09:30:00-00:30") == SINCE
    assert parse_time("2030-03-01T10:00:00.000000001Z") == SINCE + 1
    assert parse_time("2030-03-01t10:00:00.5z") == SINCE + NS // 2
    for bad in ("2030-02-30", "2030-03-01T25:00:00Z", "2030-03-01T10:00Z", "tomorrow",
                "2030-03-01T10:00:00+24:00"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_cli_wiring(site: Path, tmp_path: Path) -> None:
    assert cli.main(["evidence", "--help"]) == 0
    out = tmp_path / "pack"
    assert cli.main(["evidence", "--config", str(site / "pgwarden.toml"), "--since",
                     "2030-03-01T10:00:00Z", "--until", "2030-03-01T12:00:00Z",
                     "--out", str(out)]) == 0
    assert cli.main(["evidence", "check", str(out), "--keys", str(site / "keys")]) == 0


def test_kafka_then_spool_drops_duplicates(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The topic holds worker 0's chain; the spool holds both chains (as a spool whose
    # acknowledged segments were kept would): the overlap is exact duplicates, dropped.
    from gateway.audit import commands, read_spool
    from gateway.audit.batch import SourcedRecord

    calls: list[tuple[str, str]] = []

    def kafka_source(bootstrap: str, topic: str) -> Any:
        calls.append((bootstrap, topic))

        async def records() -> Any:
            for offset, item in enumerate(read_spool(site / "spool" / GATEWAY / "worker-0")):
                yield SourcedRecord(item.record, f"kafka:{topic}[0]@{offset}", item.key)

        return records()

    monkeypatch.setattr(commands, "kafka_source", kafka_source)
    out = tmp_path / "pack"
    assert run_evidence(site, out, "--kafka", "127.0.0.1:9092", spool=site / "spool") == 0
    assert calls == [("127.0.0.1:9092", "pgwarden.audit")]
    manifest = json.loads((out / "manifest.json").read_bytes())
    assert manifest["verification"]["duplicates"] == 5  # worker 0's batches, again
    assert manifest["verification"]["sources"][0] == "kafka:127.0.0.1:9092/pgwarden.audit"
    assert [r["text"] for r in read_jsonl(out / "statements.jsonl")] == WINDOW_TEXTS


def test_kafka_unavailable_is_a_usage_error(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gateway.audit import commands

    def kafka_source(bootstrap: str, topic: str) -> Any:
        raise commands.CommandError("reading Kafka is not available in this build (test)")

    monkeypatch.setattr(commands, "kafka_source", kafka_source)
    out = tmp_path / "pack"
    assert run_evidence(site, out, "--kafka", "127.0.0.1:9092") == 2
    assert "not available" in capsys.readouterr().err and not out.exists()


def test_log_orders_by_time_merging_runs_or_sorting(monkeypatch: pytest.MonkeyPatch) -> None:
    def order(times: list[int]) -> list[bytes]:
        log = evidence._Log()
        for n, at in enumerate(times):
            log.append(at, f"{at}:{n}".encode())
        lines = list(log.lines())
        log.close()
        return lines

    def expected(times: list[int]) -> list[bytes]:  # a stable sort: ties in input order
        ranked = sorted(range(len(times)), key=times.__getitem__)
        return [f"{times[n]}:{n}".encode() for n in ranked]

    ascending = [1, 2, 2, 3]
    two_chains = [5, 7, 9, 1, 7, 8, 2, 9]  # three runs: merged
    assert order(ascending) == expected(ascending)
    assert order(two_chains) == expected(two_chains)
    assert order([]) == []
    monkeypatch.setattr(evidence, "MAX_MERGED_RUNS", 2)  # too many runs: sorted
    assert order(two_chains) == expected(two_chains)
    shuffled = [(n * 7919) % 101 for n in range(300)]
    assert order(shuffled) == expected(shuffled)
