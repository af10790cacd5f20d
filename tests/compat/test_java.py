"""Compatibility matrix, Java: pgjdbc (``org.postgresql:postgresql`` from Maven Central).

``tests/compat/java`` is a small Maven project (``pom.xml``, ``dev.pgwarden.compat.Scenario``)
that the module fixture builds with ``mvn -q -B package -DskipTests`` into one
jar-with-dependencies. The scenario connects over TLS (``sslmode=require``, ``verify-full``
against the server's certificate by name and by IP, ``verify-ca``, and two probes that must be
refused: a wrong host name and an untrusted CA), then runs DDL, inserts, a 100k-row result, a
PreparedStatement reused past ``prepareThreshold`` (so that it becomes a named server-side
statement), batch inserts with ``reWriteBatchedInserts=true``, ``CopyManager`` COPY in and out
(text, CSV, binary, the low-level API, an aborted COPY, bad data), a rolled back transaction and
savepoint, errors inside a transaction (22012 then 25P02), a server-side cursor (autocommit off
+ ``setFetchSize``), notices, LISTEN/NOTIFY, and cancel of ``pg_sleep(20)`` by
``Statement.cancel()`` and by ``setQueryTimeout`` (57014, the connection still usable). It
prints one JSON document.

It runs once directly against PostgreSQL (plaintext) and once through pgwarden (TLS, the client
identity); the documents must be equal except for the fields that legitimately differ, and the
key facts are asserted on both. A Maven failure fails the tests (never a skip).
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

JAVA_DIR = Path(__file__).parent / "java"
JAR = JAVA_DIR / "target" / "scenario-jar-with-dependencies.jar"
PGJDBC_VERSION = "42.7.14"
# "plain-gateway": pgwarden with plain TCP on both sides (direct socket I/O, see
# gateway.server.fastio); its TLS probes are TLS to pgwarden, plain upstream.
TARGETS = ["direct", "gateway", "plain-gateway"]

# Fields that differ between the two runs for a legitimate reason.
DIFFERING: list[tuple[str, ...]] = [
    ("timings_ms",),
    ("target",),
    ("session", "backend_pid"),
    ("session", "key_pid"),  # pgwarden hands out its own BackendKeyData
    ("session", "key_pid_is_backend_pid"),
    ("session", "upstream_ssl"),  # pg_stat_ssl: pgwarden's own upstream leg uses TLS
    ("listen_notify", "pid_is_sender_key_pid"),
    ("cancel", "statement_cancel", "elapsed_ms"),
    ("cancel", "in_transaction", "elapsed_ms"),
    ("cancel", "query_timeout", "elapsed_ms"),
    # Different TLS stacks (PostgreSQL's OpenSSL vs pgwarden's): same outcome, but the
    # negotiated protocol version and cipher may legitimately differ.
    ("tls", "require_recorded", "protocol"),
    ("tls", "require_recorded", "cipher"),
    # SQL that does not parse is refused by pgwarden (fail closed) with the parser's own
    # message, SQLSTATE and position; the server-internal routine name is not reported.
    ("errors", "syntax", "error", "server", "routine"),
]


@pytest.fixture(scope="module")
def scenario_jar() -> dict[str, Any]:
    """Build the scenario with Maven (Maven Central, the default ~/.m2); never skips."""
    mvn, java = shutil.which("mvn"), shutil.which("java")
    assert mvn and java, "java (17) and mvn must be installed (.ci/run installs them)"
    cmd = [mvn, "-q", "-B", "package", "-DskipTests"]
    started = time.monotonic()
    result = subprocess.run(
        cmd, cwd=JAVA_DIR, capture_output=True, text=True, timeout=600
    )
    seconds = round(time.monotonic() - started, 1)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed ({result.returncode}) in {JAVA_DIR} after {seconds}s:\n"
        f"{result.stdout}\n{result.stderr}"
    )
    assert JAR.is_file(), f"{JAR} was not built:\n{result.stdout}\n{result.stderr}"
    return {"jar": JAR, "build_seconds": seconds}


def run_scenario(
    jar: Path, url: str, user: str, password: str, suffix: str, *extra: str
) -> tuple[dict[str, Any], str]:
    env = dict(os.environ)
    for key in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSSLMODE", "PGPASSWORD"):
        env.pop(key, None)
    env["PGWARDEN_COMPAT_PASSWORD"] = password
    cmd = [
        "java", "-Duser.timezone=UTC", "-jar", str(jar),
        "--url", url, "--user", user, "--suffix", suffix, *extra,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env)
    output = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    try:
        doc = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"Scenario printed no JSON document:\n{output}")
    assert result.returncode == 0, output
    return doc, output


@pytest.fixture(scope="module")
def docs(
    scenario_jar: dict[str, Any], pg: PgCluster, gateway: Gateway, plain_gateway: Gateway
) -> dict[str, dict[str, Any]]:
    run_id = uuid.uuid4().hex[:8]
    jar = scenario_jar["jar"]
    out: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    out["direct"], _ = run_scenario(
        jar,
        f"jdbc:postgresql://{pg.host}:{pg.port}/{DATABASE}?sslmode=disable",
        UPSTREAM_USER,
        UPSTREAM_PASSWORD,
        f"direct_{run_id}",
        "--ca", str(pg.cert_file), "--wrong-ca", str(gateway.cert), "--tls-host", "localhost",
    )
    direct_seconds = round(time.monotonic() - started, 1)
    out["gateway"], output = run_scenario(
        jar,
        f"jdbc:postgresql://{gateway.host}:{gateway.port}/{DATABASE}?sslmode=require",
        CLIENT_USER,
        CLIENT_SECRET,
        f"gw_{run_id}",
        "--ca", str(gateway.cert), "--wrong-ca", str(pg.cert_file), "--tls-host", "localhost",
    )
    assert UPSTREAM_PASSWORD not in output
    out["plain-gateway"], output = run_scenario(
        jar,
        f"jdbc:postgresql://{plain_gateway.host}:{plain_gateway.port}/{DATABASE}"
        "?sslmode=disable",
        CLIENT_USER,
        CLIENT_SECRET,
        f"pgw_{run_id}",
        "--ca", str(plain_gateway.cert), "--wrong-ca", str(pg.cert_file),
        "--tls-host", "localhost",
    )
    assert UPSTREAM_PASSWORD not in output
    for target in TARGETS:  # for a look after a failure (target/ is not committed)
        (JAVA_DIR / "target" / f"doc-{target}.json").write_text(
            json.dumps(out[target], indent=2, ensure_ascii=False)
        )
    out["elapsed"] = {
        "build_seconds": scenario_jar["build_seconds"],
        "direct_seconds": direct_seconds,
        "total_seconds": round(time.monotonic() - started, 1),
    }
    print(f"pgjdbc scenario timings: {out['elapsed']}")
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


def test_driver_is_the_pinned_pgjdbc(docs: dict[str, dict[str, Any]]) -> None:
    pom = (JAVA_DIR / "pom.xml").read_text()
    assert f"<pgjdbc.version>{PGJDBC_VERSION}</pgjdbc.version>" in pom
    for target in TARGETS:
        assert docs[target]["versions"]["pgjdbc"] == PGJDBC_VERSION
        assert docs[target]["metadata"]["driver_version"] == PGJDBC_VERSION


def test_every_step_ran(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        doc = docs[target]
        assert "fatal" not in doc, (target, doc.get("fatal"))
        failed = {
            name: value["step_failed"]
            for name, value in doc.items()
            if isinstance(value, dict) and "step_failed" in value
        }
        assert failed == {}, target
        assert doc["end"] == {"ended": True, "tables_left": "0", "closed": True}


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
    for target in TARGETS:
        tls = docs[target]["tls"]
        for probe in ("require", "require_recorded", "verify_full_name", "verify_full_ip",
                      "verify_ca"):
            assert tls[probe]["ok"] is True, (target, probe, tls[probe])
            assert tls[probe]["rows"] == [[UPSTREAM_USER, "2"]]
        assert tls["require_recorded"]["encrypted"] is True
        assert tls["require_recorded"]["protocol"] in ("TLSv1.2", "TLSv1.3")
        for probe in ("wrong_name", "untrusted"):
            assert tls[probe]["ok"] is False, (target, probe)
            assert tls[probe]["error"]["sqlstate"] == "08006", (target, probe, tls[probe])
        # Both certificates are self-signed for CN=localhost: the JDK finds the issuer by name
        # and then fails on its signature.
        root_cause = tls["untrusted"]["error"]["root_cause"]
        assert root_cause.startswith(("java.security.", "sun.security.")), root_cause
        assert "wrong-name" not in json.dumps(tls["wrong_name"])  # refused by the verifier


def test_session_ddl_and_inserts(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        doc = docs[target]
        assert doc["session"]["current_user"] == UPSTREAM_USER
        assert doc["session"]["session_user"] == UPSTREAM_USER
        assert doc["session"]["db"] == DATABASE
        assert doc["session"]["valid"] is True
        assert doc["parameters"]["after_set"] == "changed-by-java"
        assert doc["parameters"]["status"]["application_name"] == "pgwarden-compat-java"
        assert doc["ddl"]["update_counts"] == [0] * 9
        assert len(doc["ddl"]["columns"]) == 8
        assert doc["ddl"]["temp_is_temp"] == "t"
        assert doc["inserts"]["simple"] == 2
        assert doc["inserts"]["prepared_counts"] == [1] * 48
        assert doc["inserts"]["generated_keys"] == [["52", "n/a"]]
        assert len(doc["inserts"]["table"]) == 52
        assert len(doc["types"]["rows"]) == 8


def test_large_result(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        large = docs[target]["large_result"]
        assert large["count"] == 100_000
        assert large["sum"] == 100_000 * 100_001 // 2
        assert large["first"] == ["1", "c4ca4238a0b923820dcc509a6f75849b", "1.5"]
        assert large["last"][0] == "100000"


def test_prepared_statement_becomes_server_side(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        prepared = docs[target]["prepared"]
        assert prepared["prepare_threshold"] == 5
        assert prepared["executions"] == 20
        assert all(prepared["use_server_prepare"][4:]), prepared["use_server_prepare"]
        # pgjdbc names the statement (S_n) once the threshold is passed.
        statements = prepared["server_statements"]
        assert len(statements) == 1, statements
        assert statements[0][0].startswith("S_")
        assert statements[0][2] == "{integer,integer}"
        assert prepared["results"][0] == [
            ["1", "one", "1.50", "{a,b}"], ["51", "r", None, None]
        ]
        assert prepared["update_total"] == 20
        assert prepared["sql_prepared"] == ["0", "2", "4"]


def test_batch_inserts_rewritten(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        batch = docs[target]["batch"]
        assert batch["count_entries"] == 1000
        # reWriteBatchedInserts turns the batch into multi-row INSERTs: SUCCESS_NO_INFO (-2).
        assert batch["distinct_counts"] == [-2]
        assert batch["after"][0][:2] == ["1000", "500500"]
        assert batch["duplicate"]["sqlstate"] == "23505"
        assert batch["after_failed_batch"] == "1000"
        assert batch["statement_batch"] == [1, 10, 1]


def test_copy_manager(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        cp = docs[target]["copy"]
        assert cp["copy_in_rows"] == 5000
        assert cp["copy_out_rows"] == 5000
        assert cp["text_roundtrip_equal"] is True
        assert cp["csv_rows"] == 5000
        assert cp["csv_head"][0] == "a,b,c"
        assert cp["binary_rows"] == 5000
        assert cp["binary_copy_in_rows"] == 5000
        assert cp["binary_tables_equal"] == "t"
        assert cp["low_level_rows"] == 10
        assert cp["after_cancel_copy"] == "0"
        assert cp["bad_data"]["sqlstate"] == "22P02"
        assert cp["after_bad_data"] == [["5010"]]


def test_transactions_and_errors(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        doc = docs[target]
        assert doc["rollback"]["inside"] == "1"
        assert doc["rollback"]["after_rollback"] == "0"
        assert doc["rollback"]["after_savepoint"] == [["101", "kept"]]
        tx = doc["error_in_transaction"]
        assert tx["error"]["error"]["sqlstate"] == "22012"
        assert tx["next_statement"]["error"]["sqlstate"] == "25P02"
        assert tx["after_rollback"] == {"ok": [["0"]]}
        assert tx["prepared_error"]["sqlstate"] == "42703"
        assert tx["prepared_next"]["sqlstate"] == "25P02"
        assert tx["usable"] == "usable"
        errors = doc["errors"]
        assert errors["syntax"]["error"]["sqlstate"] == "42601"
        assert errors["syntax"]["error"]["server"]["position"] == 1
        assert errors["undefined_table"]["error"]["sqlstate"] == "42P01"
        unique = errors["unique_violation"]["error"]["server"]
        assert unique["sqlstate"] == "23505"
        assert unique["constraint"] == "jc_items_<suffix>_pkey"
        assert unique["detail"] == "Key (id)=(1) already exists."
        assert errors["not_null"]["error"]["sqlstate"] == "23502"
        raised = errors["raise"]["error"]["server"]
        assert (raised["sqlstate"], raised["message"], raised["detail"], raised["hint"]) == (
            "P0001", "custom failure", "some detail", "a hint"
        )


def test_server_side_cursor(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        cur = docs[target]["cursor"]
        assert cur["count"] == 50_000
        assert cur["sum"] == 50_000 * 50_001 // 2
        # The rows come from a named portal (C_n) that stays open while they are fetched.
        portals = cur["open_portals"]
        assert len(portals) == 1, portals
        assert portals[0][0].startswith("C_")
        assert "generate_series(1, 50000)" in portals[0][1]
        assert cur["after"] == [["0"]]
        assert cur["prepared_fetch_counts"] == [1000 + i for i in range(7)]
        assert cur["sql_fetch"] == [["1"], ["2"], ["3"]]
        assert cur["sql_fetch_after_move"] == [["54"], ["55"]]
        assert cur["sql_fetch_backward"] == [["54"]]


def test_notices_and_listen_notify(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        doc = docs[target]
        assert [w["message"] for w in doc["notices"]["warnings"]] == ["hello 42", "careful"]
        ln = doc["listen_notify"]
        channel = "jc_chan_<suffix>"
        assert ln["received"] == [
            {"channel": channel, "payload": "hello"},
            {"channel": channel, "payload": "payload ü ' \" with quotes"},
            {"channel": channel, "payload": "in transaction"},
        ]
        assert ln["before_commit"] == 0
        assert ln["pid_is_sender_backend_pid"] is True
        assert ln["self"] == ["self"]
        assert ln["after_unlisten"] == 0
        assert ln["listener_usable"] == "usable"


def test_cancel(docs: dict[str, dict[str, Any]]) -> None:
    for target in TARGETS:
        cancel = docs[target]["cancel"]
        for case in ("statement_cancel", "in_transaction", "query_timeout"):
            got = cancel[case]
            assert got["result"]["sqlstate"] == "57014", (target, case, got)
            assert got["within_10s"] is True, (target, case, got)
            assert got["cancel_call_error"] is None, (target, case, got)
        assert cancel["statement_cancel"]["elapsed_ms"] >= 400
        assert cancel["after"] == {"ok": [["usable"]]}
        assert cancel["in_transaction"]["next_statement"]["error"]["sqlstate"] == "25P02"
        assert cancel["in_transaction"]["after_rollback"] == {"ok": [["0"]]}
        assert cancel["after_timeout"] == {"ok": [["usable"]]}

