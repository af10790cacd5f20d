"""Compatibility matrix, command-line tools: psql, pgbench, pg_dump and pg_restore (libpq).

Each tool runs directly against PostgreSQL and through pgwarden over TLS (``PGSSLMODE``
``verify-full`` with ``PGSSLROOTCERT`` and host ``localhost``, or ``require``), and through
a pgwarden with plain TCP on both sides of the session (both on direct socket I/O,
gateway.server.fastio); outputs,
errors and exit codes are compared, with the run's tag and the values that legitimately
differ per connection (backend PIDs, pg_dump's random ``\\restrict`` key) scrubbed.
tests/e2e/test_clients.py covers a first psql script and pgbench ``-M`` on plaintext; this
module covers the matrix's scenario for these tools.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateway.devcluster import PgCluster
from tests.support import DATABASE, UPSTREAM_PASSWORD, UPSTREAM_USER, Gateway

pytestmark = pytest.mark.e2e

TIMEOUT = 120


@dataclass(frozen=True)
class Endpoint:
    """PostgreSQL reached ``direct``ly or through the ``gateway``, as libpq variables."""

    name: str
    port: int
    user: str
    password: str
    cert: Path

    def env(self, sslmode: str = "verify-full", dbname: str = DATABASE) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PGHOST="localhost" if sslmode == "verify-full" else "127.0.0.1",
            PGPORT=str(self.port), PGUSER=self.user, PGPASSWORD=self.password,
            PGDATABASE=dbname, PGSSLMODE=sslmode, PGCONNECT_TIMEOUT="10",
            PGAPPNAME="compat-cli",
        )
        if sslmode == "verify-full":
            env["PGSSLROOTCERT"] = str(self.cert)
        return env


@dataclass(frozen=True)
class PlainEndpoint(Endpoint):
    """pgwarden without TLS anywhere: whatever TLS a scenario asks for, it gets none."""

    def env(self, sslmode: str = "verify-full", dbname: str = DATABASE) -> dict[str, str]:
        return super().env("disable", dbname)


@pytest.fixture(scope="module")
def endpoints(pg: PgCluster, gateway: Gateway, plain_gateway: Gateway) -> list[Endpoint]:
    return [
        Endpoint("direct", pg.port, UPSTREAM_USER, UPSTREAM_PASSWORD, pg.cert_file),
        Endpoint("gateway", gateway.port, gateway.user, gateway.secret, gateway.cert),
        PlainEndpoint("plain-gateway", plain_gateway.port, plain_gateway.user,
                      plain_gateway.secret, plain_gateway.cert),
    ]


def run(
    argv: list[str], env: dict[str, str], stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, input=stdin, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
    )


def scrub(text: str, tag: str) -> str:
    text = text.replace(tag, "<T>")
    text = re.sub(r"server process with PID \d+", "server process with PID <pid>", text)
    return text


def across(endpoints: list[Endpoint], scenario: Callable[[Endpoint, str], Any]) -> Any:
    """Run ``scenario(endpoint, tag)`` directly and through pgwarden; results must match."""
    results = {}
    for ep in endpoints:
        tag = f"{ep.name[0]}{uuid.uuid4().hex[:10]}"
        results[ep.name] = _scrub_all(scenario(ep, tag), tag)
    for name, result in results.items():
        assert result == results["direct"], f"{name} differs from direct"
    return results["direct"]


def _scrub_all(value: Any, tag: str) -> Any:
    if isinstance(value, str):
        return scrub(value, tag)
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_all(v, tag) for v in value)
    if isinstance(value, dict):
        return {k: _scrub_all(v, tag) for k, v in value.items()}
    return value


def direct_conn(pg: PgCluster, dbname: str = DATABASE) -> psycopg.Connection[Any]:
    return psycopg.connect(
        pg.dsn(dbname=dbname, user=UPSTREAM_USER, password=UPSTREAM_PASSWORD), autocommit=True
    )


# == psql ================================================================================


def psql_script(tag: str, infile: Path, outfile: Path) -> str:
    table = f"cli_{tag}"
    executes = "".join(f"execute byid({i});\n" for i in range(1, 2001, 40))
    return f"""\\set tbl {table}
\\pset null '<null>'
create table :"tbl" (id int primary key, name text not null, amount numeric(12,2),
                     at timestamptz, tags text[]);
insert into :"tbl"
  select g, :'label' || ' ' || g, g / 4.0,
         timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour',
         array['a', g::text, null]
  from generate_series(1, :n) g;
select count(*) as cnt, sum(amount) as total from :"tbl" \\gset
\\echo rows=:cnt total=:total rowcount=:ROW_COUNT
\\if :{{?cnt}}
\\echo cnt is set
\\endif
\\copy {table} to '{outfile}' with (format csv, header)
\\copy {table} (id, name, amount) from '{infile}'
\\copy {table} (id, name) from stdin
900001\tfrom stdin one
900002\tfrom stdin "two"
\\.
\\copy (select id, name, tags from {table} where id % 500 = 0 order by id) to stdout with csv
select count(*), max(id) from :"tbl";
prepare byid(int) as select id, name, amount, tags from :"tbl" where id = $1;
{executes}deallocate byid;
begin;
delete from :"tbl" where id > 0;
select count(*) as inside from :"tbl";
rollback;
select count(*) as after_rollback from :"tbl";
insert into :"tbl" (id, name) values (1, 'duplicate');
\\echo sqlstate=:SQLSTATE error=:ERROR
select 1/0;
\\echo last=:LAST_ERROR_SQLSTATE :LAST_ERROR_MESSAGE
begin;
insert into :"tbl" (id, name) values (2, 'duplicate');
select 'never runs';
\\echo in_failed_tx=:SQLSTATE
commit;
\\echo after_commit=:SQLSTATE
select count(*) from :"tbl" where name = 'duplicate';
select g, md5(g::text) from generate_series(1, 100000) g;
listen chan_{tag};
notify chan_{tag}, 'hello from psql';
select pg_notify('chan_{tag}', 'second ☃');
unlisten *;
select format('select %L::text as via_gexec', x) from unnest(array['a', 'b']) x \\gexec
\\x on
select * from :"tbl" where id = 3;
\\x off
\\d :"tbl"
copy (select 1) to stdout;
drop table :"tbl";
\\echo done
"""


def test_psql_script(endpoints: list[Endpoint], tmp_path: Path) -> None:
    def scenario(ep: Endpoint, tag: str) -> Any:
        work = tmp_path / tag
        work.mkdir()
        infile, outfile = work / "in.tsv", work / "out.csv"
        infile.write_text("".join(f"{i}\tloaded {i}\t{i}.5\n" for i in range(5001, 8001)))
        proc = run(
            ["psql", "-X", "-v", "ON_ERROR_STOP=0", "-v", "n=2000", "-v", "label=it's",
             "-f", "-"],
            ep.env(), stdin=psql_script(tag, infile, outfile),
        )
        return proc.returncode, proc.stdout, proc.stderr, outfile.read_text()

    rc, out, err, copied = across(endpoints, scenario)
    assert rc == 0
    assert "rows=2000 total=500250.00 rowcount=1" in out
    assert "COPY 3000" in out and "COPY 2" in out
    assert "sqlstate=23505" in out and "last=22012 division by zero" in out
    assert "in_failed_tx=25P02" in out and "after_commit=00000" in out
    assert 'Asynchronous notification "chan_<T>" with payload "second ☃"' in out
    assert out.count("\n") > 100_000 and out.rstrip().endswith("done")
    assert "current transaction is aborted" in err
    assert copied.count("\n") == 2001


@pytest.mark.parametrize("sslmode", ["require", "verify-full"])
def test_psql_tls_and_on_error_stop(
    endpoints: list[Endpoint], sslmode: str, tmp_path: Path
) -> None:
    endpoints = [ep for ep in endpoints if not isinstance(ep, PlainEndpoint)]
    script = "select 'first';\nselect * from no_such_table_anywhere;\nselect 'not reached';\n"

    def scenario(ep: Endpoint, tag: str) -> Any:
        info = run(["psql", "-X", "-c", r"\conninfo"], ep.env(sslmode))
        ssl_line = [ln for ln in info.stdout.splitlines() if ln.startswith("SSL connection")]
        stop = run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-f", "-"], ep.env(sslmode), script)
        return info.returncode, ssl_line, stop.returncode, stop.stdout, stop.stderr

    rc, ssl_line, stop_rc, out, err = across(endpoints, scenario)
    assert rc == 0 and ssl_line and "TLSv1.3" in ssl_line[0]
    assert stop_rc == 3 and "not reached" not in out
    assert 'relation "no_such_table_anywhere" does not exist' in err


def test_psql_cancel_long_query(
    endpoints: list[Endpoint], pg: PgCluster, tmp_path: Path
) -> None:
    """Ctrl-C in psql sends a CancelRequest: 57014, then the endpoint serves the next one."""

    def scenario(ep: Endpoint, tag: str) -> Any:
        marker = f"cancel-{tag}"
        script = f"select 'before';\nselect pg_sleep(30) /* {marker} */;\nselect 'after';\n"
        script_file = tmp_path / f"{tag}.sql"
        script_file.write_text(script)
        start = time.monotonic()
        with script_file.open() as stdin:
            proc = subprocess.Popen(
                ["psql", "-X", "-v", "ON_ERROR_STOP=0", "-f", "-"], env=ep.env(),
                stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
        with direct_conn(pg, "postgres") as admin:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                row = admin.execute(
                    "select count(*) from pg_stat_activity where state = 'active' "
                    "and query like %s and pid <> pg_backend_pid()", (f"%{marker}%",),
                ).fetchone()
                if row and row[0]:
                    break
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=TIMEOUT)
            elapsed = time.monotonic() - start
            # No backend may still hold the cancelled query once psql is gone. Directly,
            # the backend exits when psql does; through pgwarden it is one hop later, and
            # the session is either ended or reset with DISCARD ALL for the pool. Both
            # happen after psql exits, so allow them a moment.
            deadline = time.monotonic() + 5
            while True:
                active = admin.execute(
                    "select count(*) from pg_stat_activity where query like %s "
                    "and pid <> pg_backend_pid()", (f"%{marker}%",),
                ).fetchone()
                if active == (0,) or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        again = run(["psql", "-X", "-At", "-c", "select 'usable'"], ep.env())
        return proc.returncode, out, err, elapsed < 10, active, again.stdout

    rc, out, err, fast, active, again = across(endpoints, scenario)
    assert "before" in out and "after" not in out
    assert "Cancel request sent" in err
    assert "canceling statement due to user request" in err
    assert fast and active == (0,) and again == "usable\n"
    assert rc == 3


# == pgbench =============================================================================


def pgbench_summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", proc.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
    return {
        "rc": proc.returncode,
        "processed": processed.groups() if processed else proc.stdout + proc.stderr,
        "failed": failed.group(1) if failed else None,
    }


def test_pgbench_modes_and_reconnect(endpoints: list[Endpoint], pg: PgCluster) -> None:
    def scenario(ep: Endpoint, tag: str) -> Any:
        dbname = f"bench_{tag}"
        pg.create_database(dbname, owner=UPSTREAM_USER)
        try:
            env = ep.env(dbname=dbname)
            init = run(["pgbench", "-i", "-s", "1", "-q"], env)
            out: dict[str, Any] = {"init": (init.returncode, "done" in init.stderr)}
            total = 0
            for mode in ("simple", "extended", "prepared"):
                bench = run(["pgbench", "-n", "-M", mode, "-c", "4", "-j", "2", "-t", "100"], env)
                out[mode] = pgbench_summary(bench)
                reconnect = run(
                    ["pgbench", "-n", "-C", "-M", mode, "-c", "2", "-j", "2", "-t", "25"],
                    ep.env(sslmode="require", dbname=dbname),
                )
                out[f"{mode} -C"] = pgbench_summary(reconnect)
                total += 400 + 50
            select_only = run(["pgbench", "-n", "-S", "-M", "prepared", "-c", "8", "-j", "2",
                               "-t", "200"], env)
            out["-S"] = pgbench_summary(select_only)
            # TPC-B-like invariants: every transaction's delta landed everywhere exactly once.
            with direct_conn(pg, dbname) as conn:
                out["invariants"] = conn.execute(
                    "select (select count(*) from pgbench_history) = %s, "
                    "(select sum(abalance) from pgbench_accounts) "
                    "= (select sum(delta) from pgbench_history), "
                    "(select sum(bbalance) from pgbench_branches) "
                    "= (select sum(delta) from pgbench_history), "
                    "(select sum(tbalance) from pgbench_tellers) "
                    "= (select sum(delta) from pgbench_history), "
                    "(select count(*) from pgbench_accounts)",
                    (total,),
                ).fetchone()
            return out
        finally:
            pg.sql(f'drop database if exists "{dbname}" with (force)')

    out = across(endpoints, scenario)
    assert out["init"] == (0, True)
    for mode in ("simple", "extended", "prepared"):
        assert out[mode] == {"rc": 0, "processed": ("400", "400"), "failed": "0"}
        assert out[f"{mode} -C"] == {"rc": 0, "processed": ("50", "50"), "failed": "0"}
    assert out["-S"] == {"rc": 0, "processed": ("1600", "1600"), "failed": "0"}
    assert out["invariants"] == (True, True, True, True, 100000)


# == pg_dump / pg_restore ================================================================


def normalize_dump(text: str) -> str:
    """A plain dump without what differs between two dumps of the same database: the
    random ``\\restrict`` key and pg_dump's timestamps."""
    return "\n".join(
        line for line in text.splitlines()
        if not re.match(r"\\(un)?restrict ", line)
        and not re.match(r"-- (Started|Completed) on ", line)
    )


def table_checksums(pg: PgCluster, dbname: str) -> dict[str, Any]:
    """Row count and md5 of every table's rows; large objects; sequence positions."""
    with direct_conn(pg, dbname) as conn:
        tables = [
            r[0] for r in conn.execute(
                "select format('%I.%I', schemaname, tablename) from pg_tables "
                "where schemaname not in ('pg_catalog', 'information_schema') order by 1"
            )
        ]
        out: dict[str, Any] = {}
        for table in tables:
            out[table] = conn.execute(
                sql.SQL(
                    "select count(*), md5(coalesce(string_agg(t::text, ',' order by t::text), ''))"
                    " from {} t"
                ).format(sql.SQL(table))
            ).fetchone()
        out["large objects"] = conn.execute(
            "select coalesce(array_agg(array[oid::text, md5(lo_get(oid))] order by oid), '{}') "
            "from pg_largeobject_metadata"
        ).fetchone()
        out["sequences"] = conn.execute(
            "select coalesce(array_agg(array[sequencename, last_value::text] "
            "order by sequencename), '{}') from pg_sequences"
        ).fetchone()
    return out


@pytest.fixture
def dump_fixture(pg: PgCluster) -> Any:
    """Tables of many kinds in the application database, dropped again afterwards."""
    tag = uuid.uuid4().hex[:10]
    with direct_conn(pg) as conn:
        conn.execute(f"""
            create table dump_{tag}_parent (
                id int generated always as identity primary key,
                name text not null unique, amount numeric(14,4), at timestamptz,
                tags text[], doc jsonb, blob bytea, uid uuid, flag boolean, span int4range);
            create table dump_{tag}_child (
                id bigserial primary key,
                parent_id int not null references dump_{tag}_parent (id) on delete cascade,
                note text default 'n/a', created date not null default '2024-01-01');
            create index on dump_{tag}_child (parent_id);
            create view dump_{tag}_view as
                select p.name, count(c.*) from dump_{tag}_parent p
                left join dump_{tag}_child c on c.parent_id = p.id group by p.name;
            create function dump_{tag}_fn(x int) returns int language plpgsql
                as $$ begin return x * 2; end $$;
            comment on table dump_{tag}_parent is 'parents, with ''quotes'' and é';
            insert into dump_{tag}_parent (name, amount, at, tags, doc, blob, uid, flag, span)
                select 'p' || g || E'\\t"\\\\', g / 3.0,
                       timestamptz '2024-02-29 12:00:00+00' + g * interval '1 min',
                       array['x', null, g::text], jsonb_build_object('g', g, 's', 'é☃'),
                       decode(md5(g::text), 'hex'), md5(g::text)::uuid, g % 2 = 0,
                       int4range(g, g + 10)
                from generate_series(1, 20000) g;
            insert into dump_{tag}_child (parent_id, note)
                select (g % 20000) + 1, case when g % 3 = 0 then null else 'c' || g end
                from generate_series(1, 30000) g;
        """)
        lo = conn.execute(
            "select lo_from_bytea(0, decode(repeat('00ff10', 100000), 'hex'))"
        ).fetchone()
    yield tag
    with direct_conn(pg) as conn:
        conn.execute(f"drop view if exists dump_{tag}_view")
        conn.execute(f"drop table if exists dump_{tag}_child, dump_{tag}_parent")
        conn.execute(f"drop function if exists dump_{tag}_fn")
        if lo:
            conn.execute("select lo_unlink(%s)", (lo[0],))


@pytest.mark.parametrize("through_name", ["gateway", "plain-gateway"])
def test_pg_dump_and_restore_through_gateway(
    endpoints: list[Endpoint], pg: PgCluster, dump_fixture: str, tmp_path: Path,
    through_name: str,
) -> None:
    direct = endpoints[0]
    through = next(ep for ep in endpoints if ep.name == through_name)
    tag = dump_fixture

    # pg_dump -Fc of the application database through pgwarden ...
    dump = tmp_path / "app.dump"
    proc = run(["pg_dump", "-Fc", "-f", str(dump)], through.env())
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    # ... and pg_restore of it through pgwarden into a fresh database (parallel: 2 sessions).
    restored = f"restored_{tag}"
    pg.create_database(restored, owner=UPSTREAM_USER)
    try:
        proc = run(
            ["pg_restore", "--exit-on-error", "-j", "2", "-d", restored, str(dump)],
            through.env(dbname=restored),
        )
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr

        original = table_checksums(pg, DATABASE)
        copy = table_checksums(pg, restored)
        assert copy == original
        assert f"public.dump_{tag}_parent" in original
        assert original[f"public.dump_{tag}_parent"][0] == 20000
        assert original[f"public.dump_{tag}_child"][0] == 30000
        assert original["large objects"][0]

        # The restored database dumps exactly like the original (schema and data).
        plain_original = run(["pg_dump"], direct.env())
        plain_restored = run(["pg_dump"], direct.env(dbname=restored))
        assert plain_original.returncode == plain_restored.returncode == 0
        assert normalize_dump(plain_restored.stdout) == normalize_dump(plain_original.stdout)
    finally:
        pg.sql(f'drop database if exists "{restored}" with (force)')


@pytest.mark.parametrize("through_name", ["gateway", "plain-gateway"])
def test_pg_dump_output_equals_direct(
    endpoints: list[Endpoint], dump_fixture: str, tmp_path: Path, through_name: str
) -> None:
    direct = endpoints[0]
    through = next(ep for ep in endpoints if ep.name == through_name)
    tag = dump_fixture
    plain = {ep.name: run(["pg_dump"], ep.env()) for ep in (direct, through)}
    for proc in plain.values():
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert normalize_dump(plain[through.name].stdout) == normalize_dump(plain["direct"].stdout)
    assert f"CREATE TABLE public.dump_{tag}_parent" in plain[through.name].stdout

    # Custom format (and a parallel directory-format dump, which synchronizes snapshots
    # across sessions) through pgwarden hold the same archive as a direct custom dump.
    scripts = {}
    for name, ep, args in (
        ("direct -Fc", direct, ["-Fc"]),
        ("gateway -Fc", through, ["-Fc"]),
        ("gateway -Fd -j 2", through, ["-Fd", "-j", "2"]),
    ):
        target = tmp_path / name.replace(" ", "_")
        proc = run(["pg_dump", *args, "-f", str(target)], ep.env())
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        listing = run(["pg_restore", "-f", "-", str(target)], direct.env())
        assert listing.returncode == 0, listing.stderr
        scripts[name] = normalize_dump(listing.stdout)
    assert scripts["gateway -Fc"] == scripts["direct -Fc"]
    assert scripts["gateway -Fd -j 2"] == scripts["direct -Fc"]
    assert scripts["direct -Fc"] == normalize_dump(plain["direct"].stdout)
