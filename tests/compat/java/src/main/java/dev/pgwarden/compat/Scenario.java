package dev.pgwarden.compat;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.SQLWarning;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Timestamp;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.atomic.AtomicReference;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyIn;
import org.postgresql.copy.CopyManager;
import org.postgresql.util.DriverInfo;
import org.postgresql.util.PSQLException;
import org.postgresql.util.ServerErrorMessage;

/**
 * The pgjdbc scenario of pgwarden's compatibility matrix. tests/compat/test_java.py runs it once
 * directly against PostgreSQL and once through pgwarden and compares the two JSON documents.
 *
 * <pre>
 * java -jar scenario-jar-with-dependencies.jar --url JDBC_URL --user U --suffix S
 *      [--password P] [--ca CERT.pem] [--wrong-ca OTHER.pem] [--tls-host localhost]
 * </pre>
 *
 * The password comes from --password or the environment variable PGWARDEN_COMPAT_PASSWORD.
 * --url is the main connection (its sslmode included); the TLS probes connect to the URL's host
 * and port with sslmode=require and verify-full (sslrootcert=--ca), and must fail with
 * --wrong-ca or a wrong host name. Every step records its observable results under its own key;
 * a step that fails records {"step_failed": {...}} instead and the scenario goes on. The per-run
 * suffix is replaced by "&lt;suffix&gt;" in the output so that two runs can be compared. Exit
 * status 0 when every step ran, 2 on a fatal error or the deadline; the document is printed
 * either way, and nothing else goes to stdout.
 */
public final class Scenario {
  private static final long DEADLINE_MS = 100_000;
  private static final int LARGE_ROWS = 100_000;
  private static final int PREPARED_RUNS = 20;
  private static final int BATCH_ROWS = 1_000;
  private static final int COPY_ROWS = 5_000;
  private static final int CURSOR_ROWS = 50_000;
  private static final int FETCH_SIZE = 1_000;

  private final Map<String, String> args;
  private final String suffix;
  private final String url;
  private final String user;
  private final String password;
  private final String host;
  private final int port;
  private final String database;
  private final String items;
  private final String batch;
  private final String copy;
  private final String copy2;
  private final String channel;

  private final Map<String, Object> doc = new LinkedHashMap<>();
  private final Map<String, Object> timings = new LinkedHashMap<>();
  private final Object printLock = new Object();
  private boolean printed;
  private Connection conn;

  private Scenario(Map<String, String> args) {
    this.args = args;
    this.suffix = args.get("suffix");
    this.url = args.get("url");
    this.user = args.get("user");
    this.password = args.containsKey("password")
        ? args.get("password") : System.getenv("PGWARDEN_COMPAT_PASSWORD");
    Matcher m = Pattern.compile("^jdbc:postgresql://([^:/?]+):(\\d+)/([^?]+)").matcher(url);
    if (!m.find()) {
      throw new IllegalArgumentException("--url must look like jdbc:postgresql://host:port/db");
    }
    this.host = m.group(1);
    this.port = Integer.parseInt(m.group(2));
    this.database = m.group(3);
    this.items = "jc_items_" + suffix;
    this.batch = "jc_batch_" + suffix;
    this.copy = "jc_copy_" + suffix;
    this.copy2 = "jc_copy2_" + suffix;
    this.channel = "jc_chan_" + suffix;
  }

  public static void main(String[] argv) throws Exception {
    Map<String, String> args = new LinkedHashMap<>();
    for (int i = 0; i < argv.length; i++) {
      if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
        System.err.println("usage: --url U --user U --suffix S [--password P] [--ca F] ...");
        System.exit(64);
      }
      args.put(argv[i].substring(2), argv[++i]);
    }
    String suffix = args.get("suffix");
    if (suffix == null || !suffix.matches("[a-z0-9_]+") || !args.containsKey("url")
        || !args.containsKey("user")) {
      System.err.println("Scenario: --url, --user and --suffix [a-z0-9_]+ are required");
      System.exit(64);
    }
    // Everything that is not the document goes to stderr (pgjdbc logs nothing by default).
    PrintStream stdout = System.out;
    System.setOut(System.err);
    new Scenario(args).run(stdout);
  }

  // -- plumbing ---------------------------------------------------------------------------------

  @FunctionalInterface
  interface Body {
    Object run() throws Exception;
  }

  private void run(PrintStream stdout) {
    Thread watchdog = new Thread(() -> {
      try {
        Thread.sleep(DEADLINE_MS);
      } catch (InterruptedException e) {
        return;
      }
      synchronized (printLock) {
        doc.put("fatal", Map.of("error", "deadline of " + DEADLINE_MS + " ms exceeded"));
      }
      finish(stdout, 2);
    }, "deadline");
    watchdog.setDaemon(true);
    watchdog.start();

    doc.put("target", host + ":" + port);
    Map<String, Object> versions = new LinkedHashMap<>();
    versions.put("pgjdbc", DriverInfo.DRIVER_VERSION);
    versions.put("java", System.getProperty("java.specification.version"));
    doc.put("versions", versions);
    int status = 0;
    try {
      conn = connect(url, mainProps());
      step("session", this::session);
      step("tls", this::tls);
      step("parameters", this::parameters);
      step("ddl", this::ddl);
      step("inserts", this::inserts);
      step("types", this::types);
      step("large_result", this::largeResult);
      step("prepared", this::prepared);
      step("batch", this::batch);
      step("copy", this::copy);
      step("rollback", this::rollback);
      step("error_in_transaction", this::errorInTransaction);
      step("errors", this::errors);
      step("cursor", this::cursor);
      step("notices", this::notices);
      step("listen_notify", this::listenNotify);
      step("cancel", this::cancel);
      step("metadata", this::metadata);
      step("end", this::end);
    } catch (Throwable e) {
      synchronized (printLock) {
        doc.put("fatal", describe(e));
      }
      status = 2;
    } finally {
      closeQuietly(conn);
    }
    finish(stdout, status);
  }

  private void finish(PrintStream stdout, int status) {
    synchronized (printLock) {
      if (!printed) {
        printed = true;
        doc.put("timings_ms", timings);
        stdout.println(Json.write(doc, suffix, "<suffix>"));
        stdout.flush();
      }
    }
    System.exit(status);
  }

  private void step(String name, Body body) {
    long t0 = System.nanoTime();
    Object result;
    try {
      result = body.run();
    } catch (Throwable e) {
      result = Map.of("step_failed", describe(e));
      // A failed step may leave the main connection in a transaction: start the next clean.
      try {
        if (!conn.getAutoCommit()) {
          conn.rollback();
          conn.setAutoCommit(true);
        }
      } catch (SQLException ignored) {
        // reported by the next step
      }
    }
    synchronized (printLock) {
      doc.put(name, result);
      timings.put(name, (System.nanoTime() - t0) / 1_000_000);
    }
  }

  private Properties baseProps() {
    Properties p = new Properties();
    p.setProperty("user", user);
    if (password != null) {
      p.setProperty("password", password);
    }
    p.setProperty("connectTimeout", "10");
    p.setProperty("socketTimeout", "60");
    p.setProperty("ApplicationName", "pgwarden-compat-java");
    return p;
  }

  private Properties mainProps() {
    Properties p = baseProps();
    p.setProperty("reWriteBatchedInserts", "true");
    return p;
  }

  private static Connection connect(String jdbcUrl, Properties props) throws SQLException {
    return DriverManager.getConnection(jdbcUrl, props);
  }

  private Connection connectMain() throws SQLException {
    return connect(url, mainProps());
  }

  private static void closeQuietly(AutoCloseable c) {
    if (c != null) {
      try {
        c.close();
      } catch (Exception ignored) {
        // nothing to report
      }
    }
  }

  /** The observable parts of an exception: class, SQLSTATE and the server's error fields. */
  static Map<String, Object> describe(Throwable e) {
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("class", e.getClass().getName());
    if (e instanceof SQLException sql) {
      out.put("sqlstate", sql.getSQLState());
    }
    if (e instanceof PSQLException psql && psql.getServerErrorMessage() != null) {
      ServerErrorMessage m = psql.getServerErrorMessage();
      Map<String, Object> server = new LinkedHashMap<>();
      server.put("severity", m.getSeverity());
      server.put("sqlstate", m.getSQLState());
      server.put("message", m.getMessage());
      server.put("detail", m.getDetail());
      server.put("hint", m.getHint());
      server.put("position", m.getPosition());
      server.put("where", m.getWhere());
      server.put("schema", m.getSchema());
      server.put("table", m.getTable());
      server.put("column", m.getColumn());
      server.put("datatype", m.getDatatype());
      server.put("constraint", m.getConstraint());
      server.put("routine", m.getRoutine());
      out.put("server", server);
    } else {
      out.put("message", String.valueOf(e.getMessage()));
    }
    Throwable root = e;
    while (root.getCause() != null && root.getCause() != root) {
      root = root.getCause();
    }
    if (root != e) {
      out.put("root_cause", root.getClass().getName());
    }
    return out;
  }

  private static Map<String, Object> map(Object... kv) {
    Map<String, Object> m = new LinkedHashMap<>();
    for (int i = 0; i < kv.length; i += 2) {
      m.put((String) kv[i], kv[i + 1]);
    }
    return m;
  }

  private static List<Object> row(ResultSet rs) throws SQLException {
    List<Object> out = new ArrayList<>();
    ResultSetMetaData md = rs.getMetaData();
    for (int i = 1; i <= md.getColumnCount(); i++) {
      if ("bytea".equals(md.getColumnTypeName(i))) {
        // getString() on a bytea received in binary (past prepareThreshold) is "[B@hash".
        byte[] b = rs.getBytes(i);
        out.add(b == null ? null : "\\x" + HexFormat.of().formatHex(b));
      } else {
        out.add(rs.getString(i));
      }
    }
    return out;
  }

  private List<List<Object>> rows(Connection c, String sql) throws SQLException {
    try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
      List<List<Object>> out = new ArrayList<>();
      while (rs.next()) {
        out.add(row(rs));
      }
      return out;
    }
  }

  private Object scalar(Connection c, String sql) throws SQLException {
    List<List<Object>> r = rows(c, sql);
    return r.isEmpty() ? null : r.get(0).get(0);
  }

  private static int update(Connection c, String sql) throws SQLException {
    try (Statement st = c.createStatement()) {
      return st.executeUpdate(sql);
    }
  }

  /** Runs {@code sql}, returning {"ok": rows} or the error it raised. */
  private Map<String, Object> attempt(Connection c, String sql) {
    try {
      return map("ok", rows(c, sql));
    } catch (SQLException e) {
      return map("error", describe(e));
    }
  }

  private static String sha256(byte[] data) throws Exception {
    return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
  }

  // -- steps ------------------------------------------------------------------------------------

  private Object session() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    PGConnection pg = conn.unwrap(PGConnection.class);
    List<Object> r = rows(conn,
        "select current_user, session_user, current_database(), pg_backend_pid(),"
            + " current_setting('server_version_num')").get(0);
    out.put("current_user", r.get(0));
    out.put("session_user", r.get(1));
    out.put("db", r.get(2));
    out.put("server_version_num", r.get(4));
    out.put("backend_pid", Integer.parseInt((String) r.get(3)));
    out.put("key_pid", pg.getBackendPID());
    out.put("key_pid_is_backend_pid", pg.getBackendPID() == Integer.parseInt((String) r.get(3)));
    out.put("upstream_ssl", scalar(conn,
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()"));
    out.put("autocommit", conn.getAutoCommit());
    out.put("prepare_threshold", pg.getPrepareThreshold());
    out.put("rewrite_batched_inserts", mainProps().getProperty("reWriteBatchedInserts"));
    out.put("valid", conn.isValid(5));
    return out;
  }

  private Map<String, Object> probe(String probeHost, String params, boolean recorded) {
    String probeUrl = "jdbc:postgresql://" + probeHost + ":" + port + "/" + database + "?" + params;
    Map<String, Object> out = new LinkedHashMap<>();
    RecordingSSLFactory.last = null;
    try (Connection c = connect(probeUrl, baseProps())) {
      out.put("ok", true);
      out.put("rows", rows(c, "select current_user, 1 + 1"));
      if (recorded) {
        var s = RecordingSSLFactory.last;
        out.put("encrypted", s != null && s.getSession().isValid());
        out.put("protocol", s == null ? null : s.getSession().getProtocol());
        out.put("cipher", s == null ? null : s.getSession().getCipherSuite());
      }
    } catch (SQLException e) {
      out.put("ok", false);
      out.put("error", describe(e));
    }
    return out;
  }

  private Object tls() {
    Map<String, Object> out = new LinkedHashMap<>();
    String ca = args.get("ca");
    String wrongCa = args.get("wrong-ca");
    String tlsHost = args.getOrDefault("tls-host", "localhost");
    out.put("require", probe(host, "sslmode=require", false));
    out.put("require_recorded", probe(host,
        "sslmode=require&sslfactory=dev.pgwarden.compat.RecordingSSLFactory", true));
    if (ca != null) {
      out.put("verify_full_name", probe(tlsHost, "sslmode=verify-full&sslrootcert=" + ca, false));
      out.put("verify_full_ip", probe("127.0.0.1", "sslmode=verify-full&sslrootcert=" + ca, false));
      out.put("verify_ca", probe(host, "sslmode=verify-ca&sslrootcert=" + ca, false));
      out.put("wrong_name", probe(tlsHost, "sslmode=verify-full&sslrootcert=" + ca
          + "&sslhostnameverifier=dev.pgwarden.compat.WrongNameVerifier", false));
    }
    if (wrongCa != null) {
      out.put("untrusted", probe(tlsHost, "sslmode=verify-full&sslrootcert=" + wrongCa, false));
    }
    return out;
  }

  private Object parameters() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    PGConnection pg = conn.unwrap(PGConnection.class);
    Map<String, String> status = new TreeMap<>(pg.getParameterStatuses());
    out.put("status_keys", new ArrayList<>(status.keySet()));
    Map<String, Object> selected = new LinkedHashMap<>();
    for (String key : List.of("application_name", "client_encoding", "DateStyle",
        "integer_datetimes", "IntervalStyle", "is_superuser", "server_encoding",
        "server_version", "session_authorization", "standard_conforming_strings", "TimeZone")) {
      selected.put(key, status.get(key));
    }
    out.put("status", selected);
    out.put("show", rows(conn, "select current_setting('application_name'),"
        + " current_setting('DateStyle'), current_setting('extra_float_digits'),"
        + " current_setting('TimeZone'), current_setting('client_encoding')"));
    update(conn, "set application_name = 'changed-by-java'");
    out.put("after_set", pg.getParameterStatus("application_name"));
    update(conn, "set application_name = 'pgwarden-compat-java'");
    out.put("after_reset", pg.getParameterStatus("application_name"));
    return out;
  }

  private Object ddl() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    List<Object> counts = new ArrayList<>();
    for (String sql : List.of(
        "drop table if exists " + items + ", " + batch + ", " + copy + ", " + copy2,
        "create table " + items + " (id int primary key, name text not null, price numeric(12,2),"
            + " tags text[], data bytea, at timestamptz default '2024-01-02 03:04:05+00',"
            + " flag boolean)",
        "create index on " + items + " (name)",
        "comment on table " + items + " is 'pgjdbc compat'",
        "alter table " + items + " add column note varchar(20) default 'n/a'",
        "create table " + batch + " (a int primary key, b text)",
        "create table " + copy + " (a int, b text, c text)",
        "create table " + copy2 + " (a int, b text, c text)",
        "create temp table jc_tmp (x int)")) {
      counts.add(update(conn, sql));
    }
    out.put("update_counts", counts);
    out.put("columns", rows(conn, "select column_name, data_type, is_nullable, column_default"
        + " from information_schema.columns where table_name = '" + items + "'"
        + " order by ordinal_position"));
    out.put("comment", scalar(conn, "select obj_description('" + items + "'::regclass)"));
    out.put("temp_is_temp", scalar(conn,
        "select relpersistence from pg_class where oid = 'jc_tmp'::regclass"));
    return out;
  }

  private Object inserts() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("simple", update(conn, "insert into " + items + " (id, name, price, tags, data, flag)"
        + " values (1, 'one', 1.50, '{a,b}', '\\x0102', true),"
        + " (2, 'two ü €', 2.25, '{}', null, false)"));
    try (PreparedStatement ps = conn.prepareStatement(
        "insert into " + items + " (id, name, price, tags, data, at, flag) values"
            + " (?, ?, ?, ?, ?, ?, ?)")) {
      List<Object> counts = new ArrayList<>();
      for (int i = 3; i <= 50; i++) {
        ps.setInt(1, i);
        ps.setString(2, "item " + i + (i % 5 == 0 ? " \"quoted\" 'x'\ttab" : ""));
        ps.setBigDecimal(3, new BigDecimal(i).multiply(new BigDecimal("1.25")));
        ps.setArray(4, conn.createArrayOf("text", new Object[] {"t" + i % 7, null, "x,y"}));
        ps.setBytes(5, new byte[] {(byte) i, 0, (byte) 255});
        ps.setTimestamp(6, Timestamp.from(Instant.parse("2024-03-04T05:06:07.123456Z")
            .plusSeconds(3600L * i)));
        if (i % 3 == 0) {
          ps.setNull(7, java.sql.Types.BOOLEAN);
        } else {
          ps.setBoolean(7, i % 2 == 0);
        }
        counts.add(ps.executeUpdate());
      }
      out.put("prepared_counts", counts);
    }
    try (Statement st = conn.createStatement();
        ResultSet rs = st.executeQuery("insert into " + items + " (id, name) values (51, 'r')"
            + " returning id, name, price, note, at")) {
      List<Object> ret = new ArrayList<>();
      while (rs.next()) {
        ret.add(row(rs));
      }
      out.put("returning", ret);
    }
    try (PreparedStatement ps = conn.prepareStatement(
        "insert into " + items + " (id, name) values (?, ?)", new String[] {"id", "note"})) {
      ps.setInt(1, 52);
      ps.setString(2, "generated");
      out.put("generated_count", ps.executeUpdate());
      try (ResultSet rs = ps.getGeneratedKeys()) {
        List<Object> keys = new ArrayList<>();
        while (rs.next()) {
          keys.add(row(rs));
        }
        out.put("generated_keys", keys);
      }
    }
    out.put("table", rows(conn, "select id, name, price, tags, encode(data, 'hex'), at, flag,"
        + " note from " + items + " order by id"));
    return out;
  }

  private Object types() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    String sql = "select ?::int4, ?::int8, ?::numeric, ?::text, ?::bytea, ?::bool, ?::date,"
        + " ?::timestamptz, ?::uuid, ?::jsonb, ?::float8, ?::interval, ?::int4[], ?::text";
    List<Object> results = new ArrayList<>();
    try (PreparedStatement ps = conn.prepareStatement(sql)) {
      for (int i = 0; i < 8; i++) {
        ps.setInt(1, -2147483648 + i);
        ps.setLong(2, 9007199254740993L * (i + 1));
        ps.setBigDecimal(3, new BigDecimal("12345678901234567890.0123456789").negate());
        ps.setString(4, "ünïcødé ✓ 😀 " + i);
        ps.setBytes(5, new byte[] {0, 1, (byte) 0x7f, (byte) 0x80, (byte) 0xff});
        ps.setBoolean(6, i % 2 == 0);
        ps.setObject(7, java.time.LocalDate.of(2024, 2, 29).plusDays(i));
        ps.setObject(8, java.time.OffsetDateTime.parse("2024-06-30T23:59:59.999999+02:00"));
        ps.setObject(9, java.util.UUID.fromString("123e4567-e89b-12d3-a456-42661417400" + i));
        ps.setString(10, "{\"k\": [1, 2.5, null, \"v\"], \"n\": " + i + "}");
        ps.setDouble(11, 0.1 + i);
        ps.setString(12, "1 day 02:03:04." + i);
        ps.setArray(13, conn.createArrayOf("int4", new Integer[] {1, null, i}));
        ps.setNull(14, java.sql.Types.VARCHAR);
        try (ResultSet rs = ps.executeQuery()) {
          rs.next();
          List<Object> r = row(rs);
          r.add(rs.getObject(1).getClass().getSimpleName());
          r.add(HexFormat.of().formatHex(rs.getBytes(5)));
          results.add(r);
        }
      }
    }
    out.put("rows", results);
    out.put("float_and_special", rows(conn, "select 'NaN'::float8, 'Infinity'::float8,"
        + " 1e-300::float8, pi(), 'infinity'::timestamptz, '-infinity'::date"));
    return out;
  }

  private Object largeResult() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    MessageDigest digest = MessageDigest.getInstance("SHA-256");
    long count = 0;
    long sum = 0;
    List<Object> first = null;
    List<Object> last = null;
    try (Statement st = conn.createStatement();
        ResultSet rs = st.executeQuery("select g, md5(g::text), g * 1.5 as half"
            + " from generate_series(1, " + LARGE_ROWS + ") g")) {
      while (rs.next()) {
        count++;
        sum += rs.getLong(1);
        List<Object> r = row(rs);
        if (first == null) {
          first = r;
        }
        last = r;
        digest.update((r.get(0) + ":" + r.get(1) + ":" + r.get(2) + "\n")
            .getBytes(StandardCharsets.UTF_8));
      }
    }
    out.put("count", count);
    out.put("sum", sum);
    out.put("first", first);
    out.put("last", last);
    out.put("sha256", HexFormat.of().formatHex(digest.digest()));
    return out;
  }

  private Object prepared() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    PGConnection pg = conn.unwrap(PGConnection.class);
    List<Object> results = new ArrayList<>();
    List<Object> serverPrepared = new ArrayList<>();
    try (PreparedStatement ps = conn.prepareStatement(
        "select id, name, price, tags from " + items + " where id = ? or id = ? order by id")) {
      for (int i = 1; i <= PREPARED_RUNS; i++) {
        ps.setInt(1, i);
        ps.setInt(2, 52 - i);
        List<Object> r = new ArrayList<>();
        try (ResultSet rs = ps.executeQuery()) {
          while (rs.next()) {
            r.add(row(rs));
          }
        }
        results.add(r);
        serverPrepared.add(ps.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare());
      }
      out.put("executions", results.size());
      out.put("results", results);
      out.put("use_server_prepare", serverPrepared);
      out.put("prepare_threshold", pg.getPrepareThreshold());
      // While the statement is still open, the server lists it as a named protocol statement.
      out.put("server_statements", rows(conn, "select name, statement, parameter_types::text,"
          + " from_sql from pg_prepared_statements where not from_sql and statement like"
          + " '%" + items + " where id = $1%' order by name"));
    }
    // A prepared INSERT reused past the threshold too, in a transaction.
    conn.setAutoCommit(false);
    try (PreparedStatement ps = conn.prepareStatement(
        "update " + items + " set note = ? where id = ?")) {
      int total = 0;
      for (int i = 1; i <= PREPARED_RUNS; i++) {
        ps.setString(1, "note " + i);
        ps.setInt(2, i);
        total += ps.executeUpdate();
      }
      out.put("update_total", total);
    }
    conn.commit();
    conn.setAutoCommit(true);
    out.put("notes", rows(conn, "select count(*), min(note), max(note) from " + items
        + " where note like 'note %'"));
    // SQL-level PREPARE / EXECUTE / DEALLOCATE.
    update(conn, "prepare jc_sql_prep (int) as select $1 * 2");
    List<Object> sqlPrepared = new ArrayList<>();
    for (int i = 0; i < 3; i++) {
      sqlPrepared.add(scalar(conn, "execute jc_sql_prep(" + i + ")"));
    }
    out.put("sql_prepared", sqlPrepared);
    out.put("sql_prepared_listed", rows(conn,
        "select name, statement, from_sql from pg_prepared_statements where from_sql"));
    update(conn, "deallocate jc_sql_prep");
    return out;
  }

  private Object batch() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    try (PreparedStatement ps = conn.prepareStatement(
        "insert into " + batch + " (a, b) values (?, ?)")) {
      for (int i = 1; i <= BATCH_ROWS; i++) {
        ps.setInt(1, i);
        ps.setString(2, "batch row " + i);
        ps.addBatch();
      }
      int[] counts = ps.executeBatch();
      out.put("count_entries", counts.length);
      out.put("distinct_counts", new ArrayList<>(new TreeSet<>(
          java.util.Arrays.stream(counts).boxed().toList())));
    }
    out.put("after", rows(conn, "select count(*), sum(a), md5(string_agg(b, ',' order by a))"
        + " from " + batch));
    // A batch whose rows collide with existing keys: BatchUpdateException, nothing committed.
    conn.setAutoCommit(false);
    try (PreparedStatement ps = conn.prepareStatement(
        "insert into " + batch + " (a, b) values (?, ?)")) {
      for (int i : new int[] {5001, 5002, 3, 5003}) {
        ps.setInt(1, i);
        ps.setString(2, "dup");
        ps.addBatch();
      }
      ps.executeBatch();
      out.put("duplicate", "no error");
    } catch (BatchUpdateException e) {
      Map<String, Object> err = new LinkedHashMap<>();
      err.put("sqlstate", e.getSQLState());
      err.put("update_counts", e.getUpdateCounts());
      SQLException next = e.getNextException();
      err.put("next", next == null ? null : describe(next));
      out.put("duplicate", err);
    }
    conn.rollback();
    conn.setAutoCommit(true);
    out.put("after_failed_batch", scalar(conn, "select count(*) from " + batch));
    // A plain Statement batch.
    try (Statement st = conn.createStatement()) {
      st.addBatch("insert into " + batch + " values (9001, 's1')");
      st.addBatch("update " + batch + " set b = b || '!' where a <= 10");
      st.addBatch("delete from " + batch + " where a = 9001");
      out.put("statement_batch", st.executeBatch());
    }
    out.put("final", rows(conn, "select count(*), sum(a), md5(string_agg(b, ',' order by a))"
        + " from " + batch));
    return out;
  }

  private Object copy() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    CopyManager cm = conn.unwrap(PGConnection.class).getCopyAPI();
    StringBuilder data = new StringBuilder();
    for (int i = 1; i <= COPY_ROWS; i++) {
      data.append(i).append('\t')
          .append("row ").append(i).append(" tab\\there ü € ✓ back\\\\slash").append('\t')
          .append(i % 10 == 0 ? "\\N" : "c" + (i * 7919 % 1000))
          .append('\n');
    }
    String input = data.toString();
    out.put("copy_in_rows", cm.copyIn("copy " + copy + " (a, b, c) from stdin",
        new StringReader(input)));
    out.put("after_copy_in", rows(conn, "select count(*), sum(a), count(c), md5(string_agg(b,"
        + " ',' order by a)) from " + copy));

    StringWriter text = new StringWriter();
    out.put("copy_out_rows", cm.copyOut("copy (select a, b, c from " + copy + " order by a)"
        + " to stdout", text));
    out.put("text_roundtrip_equal", text.toString().equals(input));
    out.put("text_sha256", sha256(text.toString().getBytes(StandardCharsets.UTF_8)));

    StringWriter csv = new StringWriter();
    out.put("csv_rows", cm.copyOut("copy (select a, b, c from " + copy + " order by a) to stdout"
        + " (format csv, header)", csv));
    out.put("csv_head", List.of(csv.toString().split("\n", 4)).subList(0, 3));
    out.put("csv_sha256", sha256(csv.toString().getBytes(StandardCharsets.UTF_8)));

    ByteArrayOutputStream bin = new ByteArrayOutputStream();
    out.put("binary_rows", cm.copyOut("copy (select a, b, c from " + copy + " order by a)"
        + " to stdout (format binary)", bin));
    out.put("binary_bytes", bin.size());
    out.put("binary_sha256", sha256(bin.toByteArray()));
    out.put("binary_copy_in_rows", cm.copyIn("copy " + copy2 + " from stdin (format binary)",
        new ByteArrayInputStream(bin.toByteArray())));
    out.put("binary_tables_equal", scalar(conn, "select count(*) = 0 from ((select * from "
        + copy + " except all select * from " + copy2 + ") union all (select * from " + copy2
        + " except all select * from " + copy + ")) d"));

    // The low-level API: write in pieces, then end.
    CopyIn in = cm.copyIn("copy " + copy2 + " (a, b) from stdin (format csv)");
    for (int i = 0; i < 10; i++) {
      byte[] piece = ("-" + i + ",\"piece, " + i + "\"\n").getBytes(StandardCharsets.UTF_8);
      in.writeToCopy(piece, 0, piece.length);
    }
    out.put("low_level_rows", in.endCopy());

    // A COPY that the client aborts (CopyFail): no rows, the connection stays usable.
    CopyIn aborted = cm.copyIn("copy " + copy2 + " (a, b) from stdin");
    byte[] piece = "99999\tnever\n".getBytes(StandardCharsets.UTF_8);
    aborted.writeToCopy(piece, 0, piece.length);
    try {
      aborted.cancelCopy();
      out.put("cancel_copy", "no error");
    } catch (SQLException e) {
      out.put("cancel_copy", describe(e));
    }
    out.put("after_cancel_copy", scalar(conn, "select count(*) from " + copy2 + " where a = 99999"));

    // Bad data: the server rejects it with 22P02 and the connection stays usable.
    try {
      cm.copyIn("copy " + copy2 + " (a, b) from stdin", new StringReader("1\tok\nx\tbad\n"));
      out.put("bad_data", "no error");
    } catch (SQLException e) {
      out.put("bad_data", describe(e));
    }
    out.put("after_bad_data", rows(conn, "select count(*) from " + copy2));
    return out;
  }

  private Object rollback() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    conn.setAutoCommit(false);
    update(conn, "insert into " + items + " (id, name) values (100, 'rolled back')");
    out.put("inside", scalar(conn, "select count(*) from " + items + " where id = 100"));
    conn.rollback();
    out.put("after_rollback", scalar(conn, "select count(*) from " + items + " where id = 100"));
    update(conn, "insert into " + items + " (id, name) values (101, 'kept')");
    Savepoint sp = conn.setSavepoint("jc_sp");
    update(conn, "insert into " + items + " (id, name) values (102, 'undone')");
    conn.rollback(sp);
    conn.commit();
    conn.setAutoCommit(true);
    out.put("after_savepoint", rows(conn, "select id, name from " + items
        + " where id between 100 and 102 order by id"));
    update(conn, "delete from " + items + " where id = 101");
    return out;
  }

  private Object errorInTransaction() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    conn.setAutoCommit(false);
    update(conn, "insert into " + items + " (id, name) values (200, 'lost')");
    out.put("error", attempt(conn, "select 1/0"));
    out.put("next_statement", attempt(conn, "select 1"));
    conn.rollback();
    conn.setAutoCommit(true);
    out.put("after_rollback", attempt(conn, "select count(*) from " + items + " where id = 200"));
    // The same with a prepared statement as the failing and the refused one.
    conn.setAutoCommit(false);
    try (PreparedStatement ps = conn.prepareStatement("select nonexistent_column from " + items)) {
      ps.executeQuery();
      out.put("prepared_error", "no error");
    } catch (SQLException e) {
      out.put("prepared_error", describe(e));
    }
    try (PreparedStatement ps = conn.prepareStatement("select ?::int + 1")) {
      ps.setInt(1, 1);
      ps.executeQuery();
      out.put("prepared_next", "no error");
    } catch (SQLException e) {
      out.put("prepared_next", describe(e));
    }
    conn.rollback();
    conn.setAutoCommit(true);
    out.put("usable", scalar(conn, "select 'usable'"));
    return out;
  }

  private Object errors() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("syntax", attempt(conn, "selec 1"));
    out.put("undefined_table", attempt(conn, "select * from jc_no_such_table_" + suffix));
    out.put("unique_violation", attempt(conn,
        "insert into " + items + " (id, name) values (1, 'dup') returning id"));
    out.put("not_null", attempt(conn,
        "insert into " + items + " (id, name) values (300, null) returning id"));
    out.put("raise", attempt(conn, "do $$ begin raise exception using errcode = 'P0001',"
        + " message = 'custom failure', detail = 'some detail', hint = 'a hint'; end $$"));
    out.put("usable", scalar(conn, "select 'usable'"));
    return out;
  }

  private Object cursor() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    conn.setAutoCommit(false);
    long count = 0;
    long sum = 0;
    List<List<Object>> cursors = null;
    MessageDigest digest = MessageDigest.getInstance("SHA-256");
    try (Statement st = conn.createStatement()) {
      st.setFetchSize(FETCH_SIZE);
      try (ResultSet rs = st.executeQuery("select g, md5(g::text) from generate_series(1, "
          + CURSOR_ROWS + ") g")) {
        while (rs.next()) {
          count++;
          sum += rs.getLong(1);
          digest.update((rs.getString(1) + rs.getString(2)).getBytes(StandardCharsets.UTF_8));
          if (count == 1) {
            // The portal is open on the server while the rows are fetched in batches.
            cursors = rows(conn, "select name, statement, is_holdable, is_binary, is_scrollable"
                + " from pg_cursors where name <> '' order by name");
          }
        }
      }
    }
    out.put("fetch_size", FETCH_SIZE);
    out.put("count", count);
    out.put("sum", sum);
    out.put("sha256", HexFormat.of().formatHex(digest.digest()));
    out.put("open_portals", cursors);
    out.put("after", rows(conn, "select count(*) from pg_cursors where name <> ''"));
    // A prepared statement with a fetch size, past the threshold.
    List<Object> preparedCounts = new ArrayList<>();
    try (PreparedStatement ps = conn.prepareStatement(
        "select g from generate_series(1, ?) g")) {
      ps.setFetchSize(100);
      for (int i = 0; i < 7; i++) {
        ps.setInt(1, 1000 + i);
        long n = 0;
        try (ResultSet rs = ps.executeQuery()) {
          while (rs.next()) {
            n++;
          }
        }
        preparedCounts.add(n);
      }
    }
    out.put("prepared_fetch_counts", preparedCounts);
    // An SQL cursor.
    update(conn, "declare jc_cur scroll cursor for select g from generate_series(1, 100) g");
    out.put("sql_fetch", rows(conn, "fetch forward 3 from jc_cur"));
    update(conn, "move forward 50 in jc_cur");
    out.put("sql_fetch_after_move", rows(conn, "fetch 2 from jc_cur"));
    out.put("sql_fetch_backward", rows(conn, "fetch backward 1 from jc_cur"));
    update(conn, "close jc_cur");
    conn.commit();
    conn.setAutoCommit(true);
    return out;
  }

  private Object notices() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    try (Statement st = conn.createStatement()) {
      st.execute("do $$ begin raise notice 'hello %', 42; raise warning 'careful'; end $$");
      List<Object> warnings = new ArrayList<>();
      for (SQLWarning w = st.getWarnings(); w != null; w = w.getNextWarning()) {
        warnings.add(map("sqlstate", w.getSQLState(), "message", w.getMessage()));
      }
      out.put("warnings", warnings);
    }
    return out;
  }

  private static List<Object> drain(PGConnection pg, int want, long timeoutMs) throws SQLException {
    List<Object> got = new ArrayList<>();
    long deadline = System.currentTimeMillis() + timeoutMs;
    while (got.size() < want) {
      long left = deadline - System.currentTimeMillis();
      if (left <= 0) {
        break;
      }
      PGNotification[] ns = pg.getNotifications((int) Math.max(1, left));
      if (ns != null) {
        for (PGNotification n : ns) {
          got.add(n);
        }
      }
    }
    return got;
  }

  private Object listenNotify() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    try (Connection listener = connectMain(); Connection sender = connectMain()) {
      PGConnection pgl = listener.unwrap(PGConnection.class);
      update(listener, "listen " + channel);
      int senderPid = Integer.parseInt((String) scalar(sender, "select pg_backend_pid()"));
      int senderKeyPid = sender.unwrap(PGConnection.class).getBackendPID();
      update(sender, "notify " + channel + ", 'hello'");
      try (PreparedStatement ps = sender.prepareStatement("select pg_notify(?, ?)")) {
        ps.setString(1, channel);
        ps.setString(2, "payload ü ' \" with quotes");
        ps.executeQuery().close();
      }
      // Inside a transaction: delivered only at commit.
      sender.setAutoCommit(false);
      update(sender, "notify " + channel + ", 'in transaction'");
      List<Object> got = drain(pgl, 2, 10_000);
      List<Object> beforeCommit = drain(pgl, 1, 300);
      sender.commit();
      sender.setAutoCommit(true);
      got.addAll(beforeCommit);
      got.addAll(drain(pgl, 3 - got.size(), 10_000));
      List<Object> received = new ArrayList<>();
      boolean pidsMatch = true;
      boolean keyPidsMatch = true;
      for (Object o : got) {
        PGNotification n = (PGNotification) o;
        received.add(map("channel", n.getName(), "payload", n.getParameter()));
        pidsMatch &= n.getPID() == senderPid;
        keyPidsMatch &= n.getPID() == senderKeyPid;
      }
      out.put("received", received);
      out.put("before_commit", beforeCommit.size());
      out.put("pid_is_sender_backend_pid", pidsMatch);
      out.put("pid_is_sender_key_pid", keyPidsMatch);
      // A notification to oneself arrives with the response to the NOTIFY itself.
      update(listener, "notify " + channel + ", 'self'");
      List<Object> self = new ArrayList<>();
      for (Object o : drain(pgl, 1, 5_000)) {
        self.add(((PGNotification) o).getParameter());
      }
      out.put("self", self);
      // After UNLISTEN nothing arrives.
      update(listener, "unlisten " + channel);
      update(sender, "notify " + channel + ", 'after unlisten'");
      out.put("after_unlisten", drain(pgl, 1, 500).size());
      out.put("listener_usable", scalar(listener, "select 'usable'"));
    }
    return out;
  }

  private Map<String, Object> cancelled(Connection c, String sql, long delayMs, boolean timeout)
      throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    try (Statement st = c.createStatement()) {
      AtomicReference<Throwable> cancelError = new AtomicReference<>();
      Thread canceller = null;
      if (timeout) {
        st.setQueryTimeout(1);
      } else {
        canceller = new Thread(() -> {
          try {
            Thread.sleep(delayMs);
            st.cancel();
          } catch (Throwable e) {
            cancelError.set(e);
          }
        }, "canceller");
        canceller.start();
      }
      long t0 = System.nanoTime();
      try {
        st.executeQuery(sql).close();
        out.put("result", "completed");
      } catch (SQLException e) {
        out.put("result", describe(e));
      }
      long elapsed = (System.nanoTime() - t0) / 1_000_000;
      if (canceller != null) {
        canceller.join(15_000);
      }
      out.put("elapsed_ms", elapsed);
      out.put("within_10s", elapsed < 10_000);
      out.put("cancel_call_error", cancelError.get() == null ? null : describe(cancelError.get()));
    }
    return out;
  }

  private Object cancel() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("statement_cancel", cancelled(conn, "select pg_sleep(20)", 500, false));
    out.put("after", attempt(conn, "select 'usable'"));
    // Inside a transaction: the cancelled statement aborts it.
    conn.setAutoCommit(false);
    update(conn, "insert into " + items + " (id, name) values (400, 'cancelled tx')");
    Map<String, Object> tx = cancelled(conn, "select pg_sleep(20)", 500, false);
    tx.put("next_statement", attempt(conn, "select 1"));
    conn.rollback();
    conn.setAutoCommit(true);
    tx.put("after_rollback", attempt(conn, "select count(*) from " + items + " where id = 400"));
    out.put("in_transaction", tx);
    // setQueryTimeout: pgjdbc cancels the statement itself after 1 s.
    out.put("query_timeout", cancelled(conn, "select pg_sleep(20)", 0, true));
    out.put("after_timeout", attempt(conn, "select 'usable'"));
    return out;
  }

  private Object metadata() throws Exception {
    Map<String, Object> out = new LinkedHashMap<>();
    DatabaseMetaData md = conn.getMetaData();
    out.put("product", md.getDatabaseProductName());
    out.put("product_version", md.getDatabaseProductVersion());
    out.put("driver_version", md.getDriverVersion());
    List<Object> columns = new ArrayList<>();
    try (ResultSet rs = md.getColumns(null, "public", items, null)) {
      while (rs.next()) {
        columns.add(List.of(rs.getString("COLUMN_NAME"), rs.getString("TYPE_NAME"),
            rs.getInt("DATA_TYPE"), rs.getInt("NULLABLE")));
      }
    }
    out.put("columns", columns);
    List<Object> keys = new ArrayList<>();
    try (ResultSet rs = md.getPrimaryKeys(null, "public", items)) {
      while (rs.next()) {
        keys.add(List.of(rs.getString("COLUMN_NAME"), rs.getString("PK_NAME")));
      }
    }
    out.put("primary_keys", keys);
    try (Statement st = conn.createStatement();
        ResultSet rs = st.executeQuery("select id, name, price from " + items + " limit 0")) {
      ResultSetMetaData rmd = rs.getMetaData();
      List<Object> cols = new ArrayList<>();
      for (int i = 1; i <= rmd.getColumnCount(); i++) {
        cols.add(List.of(rmd.getColumnName(i), rmd.getColumnTypeName(i), rmd.getTableName(i),
            rmd.getPrecision(i), rmd.getScale(i)));
      }
      out.put("result_columns", cols);
    }
    return out;
  }

  private Object end() throws Exception {
    update(conn, "drop table " + items + ", " + batch + ", " + copy + ", " + copy2);
    update(conn, "drop table jc_tmp");
    Object left = scalar(conn, "select count(*) from pg_class where relname like 'jc\\_%"
        + suffix + "'");
    conn.close();
    return map("ended", true, "tables_left", left, "closed", conn.isClosed());
  }
}
