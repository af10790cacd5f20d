"""`pgwarden demo` (the README's first command) works as printed, and cleans up after itself."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from gateway.devcluster import free_port

pytestmark = pytest.mark.e2e


def test_demo_prints_working_connection_strings() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops" in line or time.monotonic() > deadline:
                break
        text = "".join(lines)
        url = re.search(r'psql "(postgresql://[^"]+)"', text)
        token = re.search(r"PGPASSWORD=(\S+) psql \"([^\"]+)\"", text)
        demo_dir = re.search(r"configuration: (\S+)", text)
        assert url and token and demo_dir, text
        for _ in range(100):  # the workers start right after the banner
            try:
                with psycopg.connect(url.group(1)) as conn:
                    assert conn.execute("select current_user").fetchone() == ("app",)
                break
            except psycopg.OperationalError:
                time.sleep(0.1)
        else:
            raise AssertionError("could not connect with the printed static-key string")
        with psycopg.connect(token.group(2), password=token.group(1)) as conn:
            row = conn.execute(
                "select current_user, application_name from pg_stat_activity "
                "where pid = pg_backend_pid()"
            ).fetchone()
        assert row is not None and row[0] == "app"
        assert str(row[1]).startswith("pgwarden:dev:demo-job")
        # The printed verify command works on the live spool, and saw the statement.
        verify = re.search(r"  (pgwarden audit verify [^\n]+)", text)
        tail = re.search(r"  pgwarden audit tail (--spool \S+ --keys \S+)", text)
        assert verify and tail, text
        args = verify.group(1).split()[1:]
        time.sleep(0.3)  # one flush interval
        out = subprocess.run([sys.executable, "-m", "gateway.cli", *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        events = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "audit", "tail", *tail.group(1).split()],
            capture_output=True, text=True, timeout=60,
        ).stdout
        assert "pg_backend_pid()" in events and "demo-job" in events
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
    # Everything the demo made is gone (it was not given --dir).
    assert not Path(demo_dir.group(1)).exists()
