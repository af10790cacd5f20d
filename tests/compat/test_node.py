"""Compatibility matrix, Node.js: node-postgres (``pg``, ``pg-copy-streams``, ``pg-cursor``).

``tests/compat/node/scenario.js`` runs the whole scenario (TLS with and without
verification, DDL, inserts, a 100k-row result, a named prepared statement reused, a rolled
back transaction, errors inside transactions, COPY in/out/fail, pg-cursor and SQL cursors,
notices, LISTEN/NOTIFY, cancel of a long query) and prints one JSON document. It runs once
directly against PostgreSQL and once through pgwarden; the documents must be equal except for
the fields that legitimately differ (timings, the connection's own TLS state, backend key
data), and the key facts are asserted on both.

Cancel uses node-postgres' own API, ``new pg.Client(config).cancel(client, query)``: it opens a
new connection and sends the CancelRequest on it in plaintext (pg 8.23 never negotiates TLS
for it), which pgwarden accepts because plaintext is allowed on loopback in this setup.

The packages are installed from ``package-lock.json`` with ``npm ci`` into
``tests/compat/node/node_modules`` (not committed). An install failure fails the tests.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.devcluster import PgCluster
from tests.support import (
    CLIENT_SECRET,
    CLIENT_USER,
    DATABASE,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    Gateway,
)

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).parent / "node"
# "plain-gateway": pgwarden with plain TCP on both sides (direct socket I/O, see
# gateway.server.fastio); its TLS probes are TLS to pgwarden, plain upstream.
TARGETS = ["direct", "gateway", "plain-gateway"]
PINNED = {"pg": "8.23.1", "pg-copy-streams": "7.0.0", "pg-cursor": "2.22.1"}

# Fields that differ between the two runs for a legitimate reason.
DIFFERING: list[tuple[str, ...]] = [
    ("timings_ms",),
    ("target",),
    ("session", "tls"),  # plaintext directly, TLS through pgwarden
    ("session", "backend_pid"),
    ("session", "key_pid"),  # pgwarden may hand out its own BackendKeyData
    ("session", "key_pid_is_backend_pid"),
    ("cancel", "elapsed_ms"),
    # Different TLS stacks (PostgreSQL's OpenSSL vs pgwarden's): same outcome, but the
    # negotiated protocol version may legitimately differ.
    ("tls", "no_verify", "protocol"),
    ("tls", "verify_full_name", "protocol"),
    ("tls", "verify_full_ip", "protocol"),
]


def _run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """``npm ci`` (``npm install`` without a lock file) in tests/compat/node; never skips."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm must be installed (.ci/run installs them)"
    has_lock = (NODE_DIR / "package-lock.json").exists()
    cmd = [npm, "ci" if has_lock else "install", "--no-audit", "--no-fund", "--prefer-offline"]
    result = _run(cmd, timeout=600, cwd=NODE_DIR)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed ({result.returncode}) in {NODE_DIR}:\n"
        f"{result.stdout}\n{result.stderr}"
    )
    return NODE_DIR / "node_modules"


def run_scenario(args: list[str], password: str, suffix: str) -> tuple[dict[str, Any], str]:
    env = dict(os.environ)
    for key in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSSLMODE", "NODE_OPTIONS"):
        env.pop(key, None)
    env["PGPASSWORD"] = password
    cmd = ["node", str(NODE_DIR / "scenario.js"), "--suffix", suffix, *args]
    result = _run(cmd, timeout=150, cwd=NODE_DIR, env=env)
    output = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    try:
        doc = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"scenario.js printed no JSON document:\n{output}")
    assert result.returncode == 0, output
    return doc, output


@pytest.fixture(scope="module")
def docs(
    node_modules: Path, pg: PgCluster, gateway: Gateway, plain_gateway: Gateway
) -> dict[str, dict[str, Any]]:
    run_id = uuid.uuid4().hex[:8]
    out: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    out["direct"], _ = run_scenario(
        [
            "--host", pg.host, "--port", str(pg.port), "--user", UPSTREAM_USER,
            "--database", DATABASE, "--sslmode", "disable", "--ca", str(pg.cert_file),
        ],
        UPSTREAM_PASSWORD,
        f"direct_{run_id}",
    )
    out["gateway"], output = run_scenario(
        [
            "--host", gateway.host, "--port", str(gateway.port), "--user", CLIENT_USER,
            "--database", DATABASE, "--sslmode", "no-verify", "--ca", str(gateway.cert),
            "--tls-host", "localhost",
        ],
        CLIENT_SECRET,
        f"gw_{run_id}",
    )
    assert UPSTREAM_PASSWORD not in output
    out["plain-gateway"], output = run_scenario(
        [
            "--host", plain_gateway.host, "--port", str(plain_gateway.port),
            "--user", CLIENT_USER, "--database", DATABASE, "--sslmode", "disable",
            "--ca", str(plain_gateway.cert), "--tls-host", "localhost",
        ],
        CLIENT_SECRET,
        f"pgw_{run_id}",
    )
    assert UPSTREAM_PASSWORD not in output
    out["elapsed"] = {"seconds": round(time.monotonic() - started, 1)}
    return out


def _without_differing(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for path in DIFFERING:
        node: Any = doc
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return doc


def test_installed_versions_are_the_pinned_ones(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        versions = docs[target]["versions"]
        assert {k: versions[k] for k in PINNED} == PINNED
    package = json.loads((NODE_DIR / "package.json").read_text())
    assert package["dependencies"] == PINNED


def test_every_step_ran(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        doc = docs[target]
        assert "fatal" not in doc, (target, doc.get("fatal"))
        assert "async_errors" not in doc, (target, doc.get("async_errors"))
        failed = {
            name: value["step_failed"]
            for name, value in doc.items()
            if isinstance(value, dict) and "step_failed" in value
        }
        assert failed == {}, target
        assert doc["end"] == {"ended": True}


@pytest.mark.parametrize("through_name", ["gateway", "plain-gateway"])
def test_gateway_document_equals_direct(
    docs: dict[str, dict[str, Any]], through_name: str
) -> None:
    direct = _without_differing(docs["direct"])
    through = _without_differing(docs[through_name])
    for key in sorted(set(direct) | set(through)):
        assert through.get(key) == direct.get(key), f"step {key!r} differs"
    assert through == direct


def test_tls(docs: dict[str, dict[str, Any]]) -> None:
    gw = docs["gateway"]
    assert gw["session"]["tls"]["encrypted"] is True
    assert docs["direct"]["session"]["tls"]["encrypted"] is False
    assert docs["plain-gateway"]["session"]["tls"]["encrypted"] is False
    for target in TARGETS:
        tls = docs[target]["tls"]
        for probe in ("no_verify", "verify_full_name", "verify_full_ip"):
            assert tls[probe]["ok"] is True, (target, probe, tls[probe])
            assert tls[probe]["encrypted"] is True
            assert tls[probe]["protocol"] in ("TLSv1.2", "TLSv1.3")
            assert tls[probe]["rows"] == [{"u": UPSTREAM_USER, "two": 2}]
        assert tls["verify_full_name"]["authorized"] is True
        assert tls["verify_full_ip"]["authorized"] is True
        assert tls["wrong_name"]["ok"] is False
        assert tls["wrong_name"]["error"]["code"] == "ERR_TLS_CERT_ALTNAME_INVALID"
        assert tls["untrusted"]["ok"] is False
        assert tls["untrusted"]["error"]["code"] == "DEPTH_ZERO_SELF_SIGNED_CERT"


def test_session_ddl_and_inserts(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        doc = docs[target]
        assert doc["session"]["current_user"] == UPSTREAM_USER
        assert doc["session"]["db"] == DATABASE
        commands = [s["command"] for s in doc["ddl"]["statements"]]
        assert commands == ["DROP", "CREATE", "CREATE", "COMMENT", "DROP", "CREATE"]
        assert len(doc["ddl"]["columns"]) == 8
        assert doc["inserts"]["simple"] == {"command": "INSERT", "rowCount": 2}
        assert len(doc["inserts"]["returning"]) == 8
        table = doc["inserts"]["table"]
        assert table["rowCount"] == 10
        assert table["rows"][1]["name"] == "två ✓"
        assert table["rows"][0]["data"] == {"hex": "00ff"}
        assert table["rows"][2]["tags"] == ["t0", "x y", None]
    assert docs["gateway"]["session"]["session_user"] == UPSTREAM_USER
    assert docs["plain-gateway"]["session"]["session_user"] == UPSTREAM_USER


def test_big_result(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        big = docs[target]["big_result"]
        simple = big["simple"]
        assert (simple["count"], simple["rowCount"]) == (100_000, 100_000)
        assert simple["sum"] == 100_000 * 100_001 // 2
        assert simple["first"] == {"g": 1, "h": "c4ca4238a0b923820dcc509a6f75849b"}
        assert simple["last"]["g"] == 100_000
        assert big["extended"]["count"] == 100_000
        assert big["extended"]["sum"] == 100_000 * 100_001 // 2
        assert big["extended"]["last"] == [100_000, "x" * 10]


def test_named_prepared_statement_reused(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        prepared = docs[target]["prepared"]
        assert len(prepared["results"]) == 20
        assert prepared["results"][0] == [{"id": 1, "name": "one", "price": "1.50"}]
        assert prepared["second"] == [0, 2, 4, 6, 8]
        server = {row["name"]: row for row in prepared["server_side"]}
        # Parsed once on the server, executed 20 (and 5) times.
        assert server["q1"]["executions"] == "20", (target, server)
        assert server["q1"]["from_sql"] is False
        assert server["q2"]["executions"] == "5"


def test_transactions_and_errors(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        rollback = docs[target]["rollback"]
        assert rollback["steps"] == ["BEGIN", 1, 11, "SAVEPOINT", 5, "ROLLBACK", 11, "ROLLBACK"]
        assert rollback["after"] == {"n": 10, "rolled": 0}
        err = docs[target]["error_in_transaction"]
        assert err["error"]["code"] == "22012"
        assert err["error"]["message"] == "division by zero"
        assert err["next"]["code"] == "25P02"
        assert err["next_extended"]["code"] == "25P02"
        assert err["rollback"] == "ROLLBACK"
        assert err["duplicate"]["code"] == "23505"
        assert err["duplicate"]["detail"] == "Key (id)=(1) already exists."
        assert err["duplicate_next"]["code"] == "25P02"
        assert err["after"] == {"lost": 0}


def test_copy_in_and_out(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        cp = docs[target]["copy"]
        assert cp["copy_in_rows"] == 20_000
        assert cp["table"]["n"] == 20_000
        assert cp["text_out"]["equals_input"] is True
        assert cp["text_out"]["rowCount"] == 20_000
        assert cp["csv_out"]["head"][0] == "a,b,c,d"
        assert cp["bad_data"]["code"] == "22P02"
        assert cp["copy_fail"]["code"] == "57014"
        assert "client gave up" in cp["copy_fail"]["message"]
        assert cp["after"] == {"n": 20_000}


def test_cursors(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        cur = docs[target]["cursor"]
        assert cur["batches"] == [100] * 10 + [50]
        assert cur["first"] == {"g": 1, "twice": 2}
        assert cur["last"] == {"g": 1050, "twice": 2100}
        assert cur["sum"] == 1050 * 1051 // 2
        assert cur["declared"] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10], []]
        assert cur["after"] == {"answer": 42}


def test_notices(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        assert docs[target]["notices"] == [
            {"severity": "NOTICE", "code": "00000", "message": "hello 42"},
            {"severity": "WARNING", "code": "01000", "message": "careful"},
        ]


def test_listen_notify(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        ln = docs[target]["listen_notify"]
        assert ln["listen"] == "LISTEN"
        payloads = [n["payload"] for n in ln["received"]]
        assert payloads[:2] == ["payload-1", "payload-2 ✓"]
        assert payloads[2].startswith("7000:")
        assert payloads[3] == "self"
        assert len(payloads) == 4  # the rolled-back notification never arrives
        assert {n["channel"] for n in ln["received"]} == {"nc_chan_<suffix>"}
        assert [n["from_sender"] for n in ln["received"]] == [True, True, True, False]


def test_cancel_long_query(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        cancel = docs[target]["cancel"]
        assert cancel.get("was_active") is True, (target, cancel)
        assert cancel.get("error", {}).get("code") == "57014", (target, cancel)
        assert cancel["error"]["message"] == "canceling statement due to user request"
        assert cancel["cancelled_quickly"] is True
        assert cancel["after"] == {"still_usable": 1}
        assert cancel["backend_state_after"] == ["idle"]


def test_cleanup(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        assert docs[target]["drop"] == {"commands": ["DROP", "DROP"], "left": 0}
