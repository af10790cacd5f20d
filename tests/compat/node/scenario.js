#!/usr/bin/env node
// The node-postgres (pg, pg-copy-streams, pg-cursor) scenario of pgwarden's compatibility
// matrix. tests/compat/test_node.py runs it once directly against PostgreSQL and once through
// pgwarden and compares the two JSON documents it prints.
//
// Usage:
//   node scenario.js --suffix S [--host H] [--port P] [--user U] [--database D]
//                    [--sslmode disable|no-verify] [--ca CERT.pem] [--tls-host localhost]
// The password comes from --password or PGPASSWORD; host/port/user/database fall back to
// PGHOST/PGPORT/PGUSER/PGDATABASE. --sslmode is for the main connections; when --ca is given
// the TLS probes (no-verify, full verification by name and by IP, wrong name, untrusted CA)
// run against the same host/port whatever --sslmode says.
//
// Every step records its observable results (rows, command tags, row counts, error fields)
// under its own key; a step that fails records {step_failed: {...}} instead and goes on.
// The per-run suffix (table, channel names) is replaced by "<suffix>" in the output so that
// two runs can be compared. Exit status: 0 when every step ran (even if it recorded an
// error), 2 on a fatal error or the overall deadline; the document is printed either way.

'use strict'

const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')
const { Readable } = require('node:stream')
const { pipeline } = require('node:stream/promises')
const { parseArgs } = require('node:util')

const pg = require('pg')
const { from: copyFrom, to: copyTo } = require('pg-copy-streams')
const Cursor = require('pg-cursor')

const STEP_TIMEOUT_MS = 20000
const DEADLINE_MS = 90000

const { values: args } = parseArgs({
  options: {
    host: { type: 'string' },
    port: { type: 'string' },
    user: { type: 'string' },
    password: { type: 'string' },
    database: { type: 'string' },
    sslmode: { type: 'string', default: 'disable' },
    ca: { type: 'string' },
    'tls-host': { type: 'string', default: 'localhost' },
    suffix: { type: 'string' },
  },
})

if (!args.suffix || !/^[a-z0-9_]+$/.test(args.suffix)) {
  console.error('scenario.js: --suffix [a-z0-9_]+ is required')
  process.exit(64)
}
const SUFFIX = args.suffix
const HOST = args.host || process.env.PGHOST || '127.0.0.1'
const PORT = parseInt(args.port || process.env.PGPORT || '5432', 10)
const BASE = {
  host: HOST,
  port: PORT,
  user: args.user || process.env.PGUSER,
  password: args.password !== undefined ? args.password : process.env.PGPASSWORD,
  database: args.database || process.env.PGDATABASE,
  connectionTimeoutMillis: 10000,
}
const ITEMS = `nc_items_${SUFFIX}`
const COPYT = `nc_copy_${SUFFIX}`
const CHANNEL = `nc_chan_${SUFFIX}`

function sslFor(mode) {
  if (mode === 'disable') return false
  if (mode === 'no-verify') return { rejectUnauthorized: false }
  throw new Error(`unknown --sslmode ${mode}`)
}

function installedVersion(name) {
  // Not require('x/package.json'): pg-cursor's "exports" does not expose it.
  const file = path.join(__dirname, 'node_modules', name, 'package.json')
  return JSON.parse(fs.readFileSync(file, 'utf8')).version
}

const MAIN = { ...BASE, ssl: sslFor(args.sslmode) }
const doc = {
  versions: {
    node: process.version,
    pg: installedVersion('pg'),
    'pg-copy-streams': installedVersion('pg-copy-streams'),
    'pg-cursor': installedVersion('pg-cursor'),
  },
  target: { sslmode: args.sslmode },
}

// --- helpers -------------------------------------------------------------------------------

function describeError(e) {
  if (e === null || e === undefined) return { message: String(e) }
  const out = {}
  // DatabaseError fields (pg-protocol); the rest for Node errors (TLS, sockets, timeouts).
  for (const k of ['name', 'code', 'severity', 'message', 'detail', 'hint', 'position',
    'where', 'schema', 'table', 'column', 'constraint', 'routine']) {
    if (e[k] !== undefined && e[k] !== null) out[k] = e[k]
  }
  if (Object.keys(out).length === 0) out.message = String(e)
  return out
}

function withTimeout(promise, ms, what) {
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

async function step(name, fn) {
  const started = process.hrtime.bigint()
  try {
    doc[name] = await withTimeout(Promise.resolve().then(fn), STEP_TIMEOUT_MS, name)
  } catch (e) {
    doc[name] = { step_failed: describeError(e) }
  }
  const ms = Number(process.hrtime.bigint() - started) / 1e6
  doc.timings_ms = doc.timings_ms || {}
  doc.timings_ms[name] = Math.round(ms)
}

// A query expected to fail: its error fields, or {unexpected_success: ...}.
async function expectError(client, query, values) {
  try {
    const r = await client.query(query, values)
    return { unexpected_success: { command: r.command, rowCount: r.rowCount } }
  } catch (e) {
    return describeError(e)
  }
}

function sha256(data) {
  return crypto.createHash('sha256').update(data).digest('hex')
}

function plain(value) {
  // JSON-friendly rows: Buffers as hex, Dates as ISO strings (JSON does that already).
  if (Buffer.isBuffer(value)) return { hex: value.toString('hex') }
  if (Array.isArray(value)) return value.map(plain)
  if (value && typeof value === 'object' && !(value instanceof Date)) {
    const o = {}
    for (const [k, v] of Object.entries(value)) o[k] = plain(v)
    return o
  }
  return value
}

function summary(r) {
  return { command: r.command, rowCount: r.rowCount, rows: plain(r.rows) }
}

function tlsInfo(client) {
  const s = client.connection.stream
  return {
    encrypted: Boolean(s.encrypted),
    authorized: s.encrypted ? s.authorized : null,
    protocol: s.encrypted && s.getProtocol ? s.getProtocol() : null,
  }
}

async function connect(config) {
  const client = new pg.Client(config)
  client.on('error', (e) => {
    doc.async_errors = doc.async_errors || []
    doc.async_errors.push(describeError(e))
  })
  await client.connect()
  return client
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// --- the scenario --------------------------------------------------------------------------

async function tlsProbe(ssl, host) {
  let client
  try {
    client = await connect({ ...BASE, host, ssl })
    const r = await client.query('select current_user as u, 1 + 1 as two')
    return { ok: true, ...tlsInfo(client), rows: r.rows }
  } catch (e) {
    return { ok: false, error: describeError(e) }
  } finally {
    if (client) await client.end().catch(() => {})
  }
}

async function tlsProbes() {
  const ca = fs.readFileSync(args.ca)
  return {
    // sslmode=require: encrypted, certificate not checked.
    no_verify: await tlsProbe({ rejectUnauthorized: false }, HOST),
    // sslmode=verify-full by name: the CA is the server's certificate, name 'localhost'.
    verify_full_name: await tlsProbe({ ca, servername: 'localhost' }, args['tls-host']),
    // verify-full against the IP SAN (no SNI is sent for an IP address).
    verify_full_ip: await tlsProbe({ ca }, '127.0.0.1'),
    // The right CA but a name the certificate does not carry: must be refused.
    wrong_name: await tlsProbe({ ca, servername: 'wrong.invalid' }, '127.0.0.1'),
    // Default trust store: a self-signed certificate must be refused.
    untrusted: await tlsProbe({}, HOST),
  }
}

async function main() {
  if (args.ca) await step('tls', tlsProbes)

  const client = await connect(MAIN)
  const notices = []
  client.on('notice', (n) => notices.push({ severity: n.severity, code: n.code,
    message: n.message }))

  await step('session', async () => {
    const r = await client.query(
      'select current_user as current_user, session_user as session_user,' +
      ' current_database() as db, current_setting(\'server_version_num\') as version_num,' +
      ' pg_backend_pid() as backend_pid')
    const row = r.rows[0]
    return {
      tls: tlsInfo(client),
      current_user: row.current_user,
      session_user: row.session_user,
      db: row.db,
      version_num: row.version_num,
      // Through pgwarden the key data the client holds is pgwarden's own, not the backend's.
      backend_pid: row.backend_pid,
      key_pid: client.processID,
      key_pid_is_backend_pid: client.processID === row.backend_pid,
    }
  })

  await step('ddl', async () => {
    const out = []
    for (const sql of [
      `drop table if exists ${ITEMS}`,
      `create table ${ITEMS} (id int primary key, name text not null, price numeric(12,2),` +
        ' flag boolean, at timestamptz, doc jsonb, data bytea, tags text[])',
      `create index on ${ITEMS} (name)`,
      `comment on table ${ITEMS} is 'node compat'`,
      `drop table if exists ${COPYT}`,
      `create table ${COPYT} (a int, b text, c numeric, d boolean)`,
    ]) {
      const r = await client.query(sql)
      out.push({ command: r.command, rowCount: r.rowCount })
    }
    const cols = await client.query(
      'select column_name, data_type from information_schema.columns' +
      ' where table_name = $1 order by ordinal_position', [ITEMS])
    return { statements: out, columns: cols.rows }
  })

  await step('inserts', async () => {
    const simple = await client.query(
      `insert into ${ITEMS} (id, name, price, flag, at, doc, data, tags) values` +
      ` (1, 'one', 1.50, true, '2024-01-02 03:04:05+00', '{"a": 1}', '\\x00ff', '{x,y}'),` +
      ` (2, 'två ✓', null, false, null, null, null, '{}')`)
    const rows = []
    for (let i = 3; i <= 10; i++) {
      const r = await client.query(
        `insert into ${ITEMS} (id, name, price, flag, at, doc, data, tags)` +
        ' values ($1, $2, $3, $4, $5, $6, $7, $8) returning id, name',
        [i, `item ${i}\ttab "q" \\ back`, (i * 1.25).toFixed(2), i % 2 === 0,
          new Date(Date.UTC(2024, 0, i, 12, 0, 0)), { i, nested: [i, null] },
          Buffer.from([i, 0, 255]), [`t${i % 3}`, 'x y', null]])
      rows.push(summary(r))
    }
    const back = await client.query(`select * from ${ITEMS} order by id`)
    return { simple: { command: simple.command, rowCount: simple.rowCount }, returning: rows,
      table: summary(back) }
  })

  await step('big_result', async () => {
    const r = await client.query(
      'select g, md5(g::text) as h from generate_series(1, 100000) g')
    let sum = 0
    const hash = crypto.createHash('sha256')
    for (const row of r.rows) {
      sum += row.g
      hash.update(`${row.g}:${row.h}\n`)
    }
    const ext = await client.query({
      text: 'select g, repeat(\'x\', $1::int) as pad from generate_series(1, $2::int) g',
      values: [10, 100000],
      rowMode: 'array',
    })
    let extSum = 0
    for (const row of ext.rows) extSum += row[0]
    return {
      simple: { command: r.command, count: r.rows.length, rowCount: r.rowCount, sum,
        first: r.rows[0], last: r.rows[r.rows.length - 1], sha256: hash.digest('hex'),
        fields: r.fields.map((f) => [f.name, f.dataTypeID]) },
      extended: { count: ext.rows.length, sum: extSum, first: ext.rows[0],
        last: ext.rows[ext.rows.length - 1] },
    }
  })

  await step('prepared', async () => {
    const results = []
    for (let i = 0; i < 20; i++) {
      const r = await client.query({
        name: 'q1',
        text: `select id, name, price from ${ITEMS} where id = $1`,
        values: [(i % 10) + 1],
      })
      results.push(r.rows)
    }
    const second = []
    for (let i = 0; i < 5; i++) {
      const r = await client.query({ name: 'q2', text: 'select $1::int * 2 as v', values: [i] })
      second.push(r.rows[0].v)
    }
    const ps = await client.query(
      'select name, statement, from_sql, parameter_types::text as types,' +
      ' generic_plans + custom_plans as executions from pg_prepared_statements order by name')
    return { results, second, server_side: ps.rows }
  })

  await step('rollback', async () => {
    const out = []
    out.push((await client.query('begin')).command)
    out.push((await client.query(
      `insert into ${ITEMS} (id, name) values (100, 'rolled back')`)).rowCount)
    out.push((await client.query(`select count(*)::int as n from ${ITEMS}`)).rows[0].n)
    out.push((await client.query('savepoint s1')).command)
    out.push((await client.query(`delete from ${ITEMS} where id <= 5`)).rowCount)
    out.push((await client.query('rollback to savepoint s1')).command)
    out.push((await client.query(`select count(*)::int as n from ${ITEMS}`)).rows[0].n)
    out.push((await client.query('rollback')).command)
    const after = await client.query(
      `select count(*)::int as n, count(*) filter (where id = 100)::int as rolled from ${ITEMS}`)
    return { steps: out, after: after.rows[0] }
  })

  await step('error_in_transaction', async () => {
    await client.query('begin')
    await client.query(`insert into ${ITEMS} (id, name) values (200, 'lost')`)
    const error = await expectError(client, 'select 1/0')
    const next = await expectError(client, 'select 1')
    const nextExtended = await expectError(client, 'select $1::int', [1])
    const rollback = (await client.query('rollback')).command
    // A unique violation raised by an extended-protocol statement, same dance.
    await client.query('begin')
    const dup = await expectError(client,
      `insert into ${ITEMS} (id, name) values ($1, $2)`, [1, 'dup'])
    const dupNext = await expectError(client, 'select 1')
    const rollback2 = (await client.query('rollback')).command
    const usable = await client.query(
      `select count(*) filter (where id = 200)::int as lost from ${ITEMS}`)
    return { error, next, next_extended: nextExtended, rollback, duplicate: dup,
      duplicate_next: dupNext, rollback2, after: usable.rows[0] }
  })

  await step('copy', async () => {
    const lines = []
    for (let i = 1; i <= 20000; i++) {
      const b = i % 97 === 0 ? '\\N' : `row ${i} \\t tab \\\\ back ✓ ${'z'.repeat(i % 50)}`
      const c = i % 89 === 0 ? '\\N' : `${i}.${String(i % 100).padStart(2, '0')}`
      lines.push(`${i}\t${b}\t${c}\t${i % 3 === 0 ? 't' : 'f'}\n`)
    }
    const input = lines.join('')
    const chunks = []
    for (let i = 0; i < input.length; i += 7919) chunks.push(input.slice(i, i + 7919))
    const ingest = client.query(copyFrom(`copy ${COPYT} (a, b, c, d) from stdin`))
    await pipeline(Readable.from(chunks), ingest)
    const counted = await client.query(
      `select count(*)::int as n, sum(a)::text as s, count(b)::int as b, sum(c)::text as c` +
      ` from ${COPYT}`)

    async function copyOut(sql) {
      const parts = []
      const stream = client.query(copyTo(sql))
      stream.on('data', (chunk) => parts.push(chunk))
      await new Promise((resolve, reject) => {
        stream.on('end', resolve)
        stream.on('error', reject)
      })
      const buf = Buffer.concat(parts)
      return { bytes: buf.length, sha256: sha256(buf), buf, rowCount: stream.rowCount }
    }
    const text = await copyOut(`copy (select a, b, c, d from ${COPYT} order by a) to stdout`)
    const csv = await copyOut(
      `copy (select a, b, c, d from ${COPYT} order by a) to stdout (format csv, header)`)
    const binary = await copyOut(
      `copy (select a, b, c, d from ${COPYT} order by a) to stdout (format binary)`)

    // Bad data: the server's error comes back and the connection stays usable.
    const bad = client.query(copyFrom(`copy ${COPYT} (a, b) from stdin`))
    let badError = null
    try {
      await pipeline(Readable.from(['1\tok\n', 'not-a-number\tx\n']), bad)
    } catch (e) {
      badError = describeError(e)
    }
    // The client aborts a COPY FROM (CopyFail).
    const aborted = client.query(copyFrom(`copy ${COPYT} (a, b) from stdin`))
    const abortError = await new Promise((resolve) => {
      aborted.on('error', (e) => resolve(describeError(e)))
      aborted.write('1\tfirst\n', () => aborted.destroy(new Error('client gave up')))
    })
    const after = await client.query(`select count(*)::int as n from ${COPYT}`)
    return {
      copy_in_rows: ingest.rowCount,
      table: counted.rows[0],
      text_out: { bytes: text.bytes, sha256: text.sha256, rowCount: text.rowCount,
        equals_input: text.buf.toString('utf8') === input },
      csv_out: { bytes: csv.bytes, sha256: csv.sha256, rowCount: csv.rowCount,
        head: csv.buf.toString('utf8').split('\n').slice(0, 3) },
      binary_out: { bytes: binary.bytes, sha256: binary.sha256, rowCount: binary.rowCount },
      bad_data: badError,
      copy_fail: abortError,
      after: after.rows[0],
    }
  })

  await step('cursor', async () => {
    const cursor = client.query(new Cursor(
      'select g, g * 2 as twice from generate_series(1, $1::int) g', [1050]))
    const batches = []
    let first = null
    let last = null
    let sum = 0
    for (;;) {
      const rows = await cursor.read(100)
      if (rows.length === 0) break
      batches.push(rows.length)
      if (first === null) first = rows[0]
      last = rows[rows.length - 1]
      for (const row of rows) sum += row.g
    }
    await cursor.close()
    // A server-side cursor declared in SQL, fetched in batches inside a transaction.
    await client.query('begin')
    await client.query(`declare c1 cursor for select id, name from ${ITEMS} order by id`)
    const fetched = []
    for (;;) {
      const r = await client.query('fetch 4 from c1')
      fetched.push(r.rows.map((row) => row.id))
      if (r.rows.length === 0) break
    }
    await client.query('close c1')
    await client.query('commit')
    const usable = await client.query('select 42 as answer')
    return { batches, first, last, sum, declared: fetched, after: usable.rows[0] }
  })

  await step('notices', async () => {
    notices.length = 0
    await client.query("do $$ begin raise notice 'hello %', 42; end $$")
    await client.query("do $$ begin raise warning 'careful'; end $$")
    return notices.slice()
  })

  await step('listen_notify', async () => {
    const listener = await connect(MAIN)
    const sender = await connect(MAIN)
    try {
      const got = []
      let wake = null
      listener.on('notification', (n) => {
        got.push(n)
        if (wake) wake()
      })
      const listen = await listener.query(`listen ${CHANNEL}`)
      const senderPid = (await sender.query('select pg_backend_pid() as pid')).rows[0].pid
      await sender.query(`notify ${CHANNEL}, 'payload-1'`)
      await sender.query('select pg_notify($1, $2)', [CHANNEL, 'payload-2 ✓'])
      await sender.query('begin')
      await sender.query(`notify ${CHANNEL}, 'rolled-back'`)
      await sender.query('rollback')
      const big = 'p'.repeat(7000)
      await sender.query('select pg_notify($1, $2)', [CHANNEL, big])
      // The listener also notifies itself.
      await listener.query(`notify ${CHANNEL}, 'self'`)
      while (got.length < 4) {
        await new Promise((resolve) => {
          wake = resolve
        })
      }
      wake = null
      await sleep(200) // anything late (e.g. the rolled-back one) would show up here
      await listener.query(`unlisten ${CHANNEL}`)
      return {
        listen: listen.command,
        received: got.map((n) => ({
          channel: n.channel,
          payload: n.payload.length > 100 ? `${n.payload.length}:${sha256(n.payload)}` : n.payload,
          from_sender: n.processId === senderPid,
        })),
      }
    } finally {
      await listener.end().catch(() => {})
      await sender.end().catch(() => {})
    }
  })

  await step('cancel', async () => {
    // node-postgres cancels with a second, unconnected Client: client.cancel(target, query)
    // opens a new connection and sends CancelRequest with the target's BackendKeyData.
    const victim = await connect(MAIN)
    const watcher = await connect(MAIN)
    try {
      const pid = (await victim.query('select pg_backend_pid() as pid')).rows[0].pid
      const query = new pg.Query('select pg_sleep(30)')
      const done = new Promise((resolve) => {
        query.on('error', (e) => resolve({ error: e }))
        query.on('end', () => resolve({ ok: true }))
      })
      const started = Date.now()
      victim.query(query)
      // Wait until the backend is really executing it: a cancel that arrives before is lost.
      let active = false
      for (let i = 0; i < 200 && !active; i++) {
        const r = await watcher.query(
          "select count(*)::int as n from pg_stat_activity where pid = $1 and state = 'active'" +
          " and query like 'select pg_sleep%'", [pid])
        active = r.rows[0].n === 1
        if (!active) await sleep(25)
      }
      const canceller = new pg.Client(MAIN)
      canceller.connection.on('error', () => {}) // the server just closes that connection
      canceller.cancel(victim, query)
      const outcome = await done
      const elapsed = Date.now() - started
      const after = await victim.query('select 1 as still_usable')
      const idle = await watcher.query(
        'select state from pg_stat_activity where pid = $1', [pid])
      return {
        was_active: active,
        error: outcome.error ? describeError(outcome.error) : { unexpected_success: true },
        cancelled_quickly: elapsed < 10000,
        elapsed_ms: elapsed,
        after: after.rows[0],
        backend_state_after: idle.rows.map((row) => row.state),
      }
    } finally {
      await victim.end().catch(() => {})
      await watcher.end().catch(() => {})
    }
  })

  await step('drop', async () => {
    const a = await client.query(`drop table ${ITEMS}`)
    const b = await client.query(`drop table ${COPYT}`)
    const left = await client.query(
      'select count(*)::int as n from pg_tables where tablename in ($1, $2)', [ITEMS, COPYT])
    return { commands: [a.command, b.command], left: left.rows[0].n }
  })

  await step('end', async () => {
    await client.end()
    return { ended: true }
  })
}

function emit(code) {
  const text = JSON.stringify(doc, null, 1).split(SUFFIX).join('<suffix>')
  process.stdout.write(text + '\n', () => process.exit(code))
}

const deadline = setTimeout(() => {
  doc.fatal = { message: `overall deadline of ${DEADLINE_MS} ms exceeded` }
  emit(2)
}, DEADLINE_MS)

main().then(
  () => {
    clearTimeout(deadline)
    emit(0)
  },
  (e) => {
    clearTimeout(deadline)
    doc.fatal = describeError(e)
    emit(2)
  },
)
