//! `rwsplit audit` on MySQL/MariaDB inputs, run as a process: a known workload run on a
//! real MariaDB server (`testing::MariaCluster`), its
//! `performance_schema.events_statements_summary_by_digest` export (made as the audit's
//! docs say) and its general query log; and the sample inputs in `tests/data/audit/`
//! (`mysql8-general.log` is written from MySQL 8's documented format, as MySQL 8 is not
//! installed here; `mariadb-general.log` from what MariaDB 10.11 wrote).
#![cfg(feature = "cli")]

mod common;

use std::process::{Command, Output};

use common::cli::{input_error, json, noise, obj, stderr, stdout};
use diesel_rwsplit::testing::MariaCluster;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Row};
use serde_json::Value;

/// Run `rwsplit audit ARGS` with `stdin` on standard input.
fn audit(args: &[&str], stdin: &[u8]) -> Output {
    common::cli::run("audit", args, stdin)
}

/// `a` and `b` equal up to rounding (sums of milliseconds in another order).
fn close(a: &Value, b: f64) -> bool {
    let a = a.as_f64().unwrap_or_else(|| panic!("not a number: {a}"));
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// The workload, run by the application account: how many times each statement ran.
const TEXT_SELECTS: u64 = 20;
const PREPARED_SELECTS: u64 = 7;
const MULTI_LINE_SELECTS: u64 = 4;
const INSERTS: u64 = 5;
const PREPARED_UPDATES: u64 = 2;
/// Each: BEGIN, SELECT ... FOR UPDATE, UPDATE, COMMIT.
const JOB_CLAIMS: u64 = 3;
const MULTI_LINE: &str = "SELECT name\nFROM items\nWHERE qty BETWEEN 1 AND 3\nORDER BY name";

async fn run_workload(app: &mut Conn) {
    for i in 0..TEXT_SELECTS {
        app.query_drop(format!(
            "SELECT id, name FROM items WHERE id = {}",
            i % 5 + 1
        ))
        .await
        .unwrap();
    }
    for i in 0..PREPARED_SELECTS {
        app.exec_drop("SELECT name, qty FROM items WHERE qty > ?", (i,))
            .await
            .unwrap();
    }
    for _ in 0..MULTI_LINE_SELECTS {
        app.query_drop(MULTI_LINE).await.unwrap();
    }
    for i in 0..INSERTS {
        app.query_drop(format!(
            "INSERT INTO items (name, qty) VALUES ('new {i}', {i})"
        ))
        .await
        .unwrap();
    }
    for i in 0..PREPARED_UPDATES {
        app.exec_drop("UPDATE items SET qty = qty + 1 WHERE id = ?", (i + 1,))
            .await
            .unwrap();
    }
    for _ in 0..JOB_CLAIMS {
        app.query_drop("BEGIN").await.unwrap();
        let id: Option<u32> = app
            .query_first("SELECT id FROM jobs WHERE done = 0 ORDER BY id LIMIT 1 FOR UPDATE")
            .await
            .unwrap();
        let id = id.expect("a job left to claim");
        app.query_drop(format!("UPDATE jobs SET done = 1 WHERE id = {id}"))
            .await
            .unwrap();
        app.query_drop("COMMIT").await.unwrap();
    }
    let locked: Option<i64> = app
        .query_first("SELECT GET_LOCK('audit', 0)")
        .await
        .unwrap();
    assert_eq!(locked, Some(1));
    app.query_drop("SELECT RELEASE_LOCK('audit')")
        .await
        .unwrap();
}

/// The columns the audit's docs export, in the docs' words.
const DIGEST_SELECT: &str = "SELECT SCHEMA_NAME, DIGEST, DIGEST_TEXT, COUNT_STAR, SUM_TIMER_WAIT FROM performance_schema.events_statements_summary_by_digest";

/// `mariadb --batch ... -e "SELECT ..."`, as the audit's docs say, as the application
/// account (its password in `MYSQL_PWD`, not on the command line); its standard output.
fn mariadb_batch(cluster: &MariaCluster, sql: &str) -> Vec<u8> {
    let port = cluster.primary_port().to_string();
    let mut last_error = None;
    for client in ["mariadb", "mysql"] {
        let run = Command::new(client)
            .args([
                "--no-defaults",
                "--batch",
                "-h",
                "127.0.0.1",
                "-P",
                &port,
                "-u",
                cluster.app_user(),
                "test",
                "-e",
                sql,
            ])
            .env("MYSQL_PWD", cluster.app_password())
            .output();
        match run {
            Ok(output) => {
                assert!(
                    output.status.success(),
                    "{client} --batch: {:?}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
                return output.stdout;
            }
            Err(e) => last_error = Some(e),
        }
    }
    panic!("no mariadb or mysql client (apt-get install mariadb-client): {last_error:?}");
}

/// A CSV field, quoted when it must be (RFC 4180).
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

fn text(row: &Row, index: usize) -> Option<String> {
    match row.as_ref(index).expect("column") {
        mysql_async::Value::NULL => None,
        mysql_async::Value::Bytes(bytes) => Some(String::from_utf8(bytes.clone()).unwrap()),
        other => Some(other.as_sql(true)),
    }
}

/// 1-based number of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> u64 {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in\n{text}")) as u64
        + 1
}

/// `(calls, reason, first_line)` of each `top_primary` entry.
fn ranked(report: &Value) -> Vec<(u64, String, u64)> {
    report["top_primary"]
        .as_array()
        .expect("top_primary")
        .iter()
        .map(|e| {
            (
                e["calls"].as_u64().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
                e["first_line"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_digest_export_and_general_log() {
    let cluster = MariaCluster::builder()
        .replicas(0)
        .setting("performance_schema", "ON")
        .start()
        .await
        .expect("start MariaDB (apt-get install mariadb-server)");
    // Root through the socket, without a default schema: its statements are not counted
    // under the application's schema in the digest table.
    let root_opts = OptsBuilder::from_opts(Opts::from_url(&cluster.primary_admin_url()).unwrap())
        .db_name(None::<String>);
    let mut root = Conn::new(root_opts).await.unwrap();
    let mut app = Conn::new(Opts::from_url(&cluster.primary_url()).unwrap())
        .await
        .unwrap();
    for ddl in [
        "CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(40) NOT NULL, qty INT NOT NULL)",
        "CREATE TABLE jobs (id INT PRIMARY KEY, done TINYINT NOT NULL DEFAULT 0)",
        "INSERT INTO items (name, qty) VALUES ('a', 1), ('b', 2), ('c', 3), ('d', 4), ('e', 5)",
        "INSERT INTO jobs (id) VALUES (1), (2), (3), (4)",
    ] {
        app.query_drop(ddl).await.unwrap();
    }
    // The server adds a statement to the digest table after its reply: one more round
    // trip on the same connection (a ping, which has no digest) waits for that, so the
    // last INSERT is not counted after the TRUNCATE below.
    app.ping().await.unwrap();
    // What a DBA grants the account that exports, as the docs say.
    root.query_drop(
        "GRANT SELECT ON performance_schema.events_statements_summary_by_digest TO 'app'@'%'",
    )
    .await
    .unwrap();

    // From here on the digest table and the general log hold the workload only (and,
    // in the log, the statement that turns it off): both connections are already open.
    let log = cluster.dir().join("general.log");
    root.query_drop("TRUNCATE TABLE performance_schema.events_statements_summary_by_digest")
        .await
        .unwrap();
    root.query_drop(format!("SET GLOBAL general_log_file = '{}'", log.display()))
        .await
        .unwrap();
    root.query_drop("SET GLOBAL general_log = 1").await.unwrap();
    run_workload(&mut app).await;
    // As above: the workload's last statement is in the digest table before the export.
    app.ping().await.unwrap();
    root.query_drop("SET GLOBAL general_log = 0").await.unwrap();

    // The CSV export first, by root (no schema, so not in the next export), with
    // lower-case names in another order, as a GUI client might write them.
    let rows: Vec<Row> = root
        .query(format!("{DIGEST_SELECT} WHERE SCHEMA_NAME = 'test'"))
        .await
        .unwrap();
    let mut csv = String::from("count_star,digest_text,sum_timer_wait,schema_name,digest\n");
    let (mut picoseconds, mut replica_picoseconds) = (0f64, 0f64);
    for row in &rows {
        let field = |i| text(row, i).unwrap_or_else(|| "NULL".to_owned());
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            field(3),
            csv_field(&field(2)),
            field(4),
            field(0),
            field(1)
        ));
        let wait = field(4).parse::<f64>().unwrap();
        picoseconds += wait;
        // The workload's two reads of `items` are its only replica statements.
        if field(2).starts_with("SELECT") && field(2).contains("`items`") {
            replica_picoseconds += wait;
        }
    }
    assert!(replica_picoseconds > 0.0, "no read of items in\n{csv}");
    let csv_path = cluster.dir().join("digests.csv");
    std::fs::write(&csv_path, &csv).unwrap();
    // Then the documented export, by the application account.
    let tsv = mariadb_batch(
        &cluster,
        &format!("{DIGEST_SELECT} WHERE SCHEMA_NAME = DATABASE()"),
    );
    let tsv_path = cluster.dir().join("digests.tsv");
    std::fs::write(&tsv_path, &tsv).unwrap();
    drop(app);
    drop(root);

    // The general log: every Query and Execute of the workload, and root's
    // `SET GLOBAL general_log = 0`; not the two Prepares.
    let log_text = std::fs::read_to_string(&log).unwrap();
    let first = log_text.lines().next().unwrap();
    assert!(
        first.contains(", Version: ") && first.ends_with("started with:"),
        "{first}"
    );
    // Both kinds of entry lines are there: with MariaDB's time, and without (two tabs).
    assert!(
        log_text
            .lines()
            .any(|l| l.starts_with(|c: char| c.is_ascii_digit())),
        "{log_text}"
    );
    assert!(
        log_text.lines().any(|l| l.starts_with("\t\t")),
        "{log_text}"
    );
    assert_eq!(log_text.matches(" Prepare\t").count(), 2, "{log_text}");
    let log_path = log.to_str().unwrap();
    let output = audit(&[log_path, "--json"], b"");
    let report = json(&output);
    assert_eq!(report["format_version"], 1);
    assert_eq!(report["input"], log_path);
    assert_eq!(report["format"], "mysql-log");
    assert_eq!(report["dialect"], "mysql", "implied by the format");
    let replica = TEXT_SELECTS + PREPARED_SELECTS + MULTI_LINE_SELECTS;
    let writes = INSERTS + PREPARED_UPDATES + JOB_CLAIMS;
    let calls = replica + writes + 3 * JOB_CLAIMS + 2 + 1;
    assert_eq!(report["statements"], calls);
    assert_eq!(report["calls"], calls);
    assert_eq!(report["replica_calls"], replica);
    assert_eq!(report["primary_calls"], calls - replica);
    // Literals and placeholders fold: 3 reads, 3 writes, one of each other statement.
    assert_eq!(report["distinct_statements"], 12);
    assert_eq!(report["replica_distinct_statements"], 3);
    assert_eq!(report["exec_time_ms"], Value::Null);
    assert_eq!(
        report["calls_by_reason"],
        obj(&[
            ("write_statement", writes),
            ("locking_read", JOB_CLAIMS),
            ("transaction_begin", JOB_CLAIMS),
            ("transaction_control", JOB_CLAIMS),
            ("side_effect_function", 2),
            ("session_state", 1),
        ])
    );
    assert_eq!(
        report["distinct_statements_by_reason"],
        obj(&[
            ("write_statement", 3),
            ("locking_read", 1),
            ("transaction_begin", 1),
            ("transaction_control", 1),
            ("side_effect_function", 2),
            ("session_state", 1),
        ])
    );
    // Most calls first, ties in log order; the prepared UPDATE starts at its first
    // Execute, not at its Prepare.
    let at = |needle| line_of(&log_text, needle);
    let expected: Vec<(u64, String, u64)> = [
        (INSERTS, "write_statement", at("Query\tINSERT INTO items")),
        (JOB_CLAIMS, "transaction_begin", at("Query\tBEGIN")),
        (JOB_CLAIMS, "locking_read", at("FOR UPDATE")),
        (JOB_CLAIMS, "write_statement", at("Query\tUPDATE jobs")),
        (JOB_CLAIMS, "transaction_control", at("Query\tCOMMIT")),
        (
            PREPARED_UPDATES,
            "write_statement",
            at("Execute\tUPDATE items"),
        ),
        (1, "side_effect_function", at("GET_LOCK")),
        (1, "side_effect_function", at("RELEASE_LOCK")),
        (1, "session_state", at("general_log = 0")),
    ]
    .into_iter()
    .map(|(calls, reason, line)| (calls, reason.to_owned(), line))
    .collect();
    assert_eq!(ranked(&report), expected);
    assert_eq!(report["unknown"], serde_json::json!([]));
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));

    let text_report = stdout(&audit(&[log_path], b""));
    assert!(
        text_report.starts_with(&format!(
            "rwsplit audit of {log_path} (mysql-log, mysql dialect)\n"
        )),
        "{text_report}"
    );
    assert!(
        text_report.contains(&format!(
            "statements: {calls} (12 distinct)   calls: {calls}"
        )),
        "{text_report}"
    );

    // The digest exports, CSV and `mariadb --batch`, hold the same rows. MariaDB leaves
    // the binary protocol's executions (mysql_async's `exec`: the prepared SELECTs and
    // UPDATEs) out of the table; root's statements are in no schema.
    let digest_replica = TEXT_SELECTS + MULTI_LINE_SELECTS;
    let digest_writes = INSERTS + JOB_CLAIMS;
    let digest_calls = digest_replica + digest_writes + 3 * JOB_CLAIMS + 2;
    assert_eq!(rows.len(), 9, "{csv}");
    for (path, format) in [(&csv_path, "digest-csv"), (&tsv_path, "digest-tsv")] {
        let path = path.to_str().unwrap();
        let output = audit(&[path, "--json"], b"");
        let report = json(&output);
        assert!(stderr(&output).is_empty(), "{}", stderr(&output));
        assert_eq!(report["format"], format);
        assert_eq!(report["dialect"], "mysql", "implied by the format");
        assert_eq!(report["statements"], 9, "{format}");
        assert_eq!(report["distinct_statements"], 9, "{format}");
        assert_eq!(report["calls"], digest_calls, "{format}");
        assert_eq!(report["replica_calls"], digest_replica, "{format}");
        assert_eq!(report["replica_distinct_statements"], 2, "{format}");
        assert_eq!(
            report["calls_by_reason"],
            obj(&[
                ("write_statement", digest_writes),
                ("locking_read", JOB_CLAIMS),
                ("transaction_begin", JOB_CLAIMS),
                ("transaction_control", JOB_CLAIMS),
                ("side_effect_function", 2),
            ]),
            "{format}"
        );
        // SUM_TIMER_WAIT is in picoseconds.
        let time = &report["exec_time_ms"];
        assert!(close(&time["total"], picoseconds / 1e9), "{format}: {time}");
        assert!(
            close(&time["replica"], replica_picoseconds / 1e9),
            "{format}: {time}"
        );
        let top = &report["top_primary"][0];
        assert_eq!(top["calls"], INSERTS, "{format}");
        assert_eq!(top["reason"], "write_statement", "{format}");
        let fingerprint = top["fingerprint"].as_str().unwrap();
        assert!(
            fingerprint.starts_with("insert into `items`"),
            "{format}: {fingerprint}"
        );
    }
}

const MARIADB_LOG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/audit/mariadb-general.log"
);
const MYSQL8_LOG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/audit/mysql8-general.log"
);
const DIGESTS_TSV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/audit/mariadb-digests.tsv"
);
const DIGESTS_CSV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/audit/mariadb-digests.csv"
);

// mariadb-general.log, by hand (line: verdict), one call each:
//   replica: 6, 9 (same SELECT), 10 (four lines, a tab in a literal), 15, 16 (Executes of
//            the Prepare on line 14)                            = 5 calls, 3 distinct
//   write_statement: 20 (UPDATE jobs), 25 (INSERT, then a blank line), 29 (the INSERT's
//            Execute, two lines; its Prepare on 27 not counted)  = 3 calls, 2 distinct
//   session_state: 5; transaction_begin: 18; locking_read: 19; transaction_control: 21;
//   side_effect_function: 31; unknown: 32 (unterminated string)
//   14 statements, 11 distinct. Lines 1-3 and 22-24 are the server's header (written
//   again when the log was reopened); Connect, Init DB, Close stmt, Quit count nothing.
#[test]
fn mariadb_general_log_sample() {
    let report = json(&audit(&[MARIADB_LOG, "--json"], b""));
    assert_eq!(report["format"], "mysql-log");
    assert_eq!(report["dialect"], "mysql");
    assert_eq!(report["statements"], 14);
    assert_eq!(report["calls"], 14);
    assert_eq!(report["distinct_statements"], 11);
    assert_eq!(report["replica_calls"], 5);
    assert_eq!(report["replica_distinct_statements"], 3);
    assert_eq!(
        report["calls_by_reason"],
        obj(&[
            ("write_statement", 3),
            ("session_state", 1),
            ("transaction_begin", 1),
            ("locking_read", 1),
            ("transaction_control", 1),
            ("side_effect_function", 1),
            ("unknown", 1),
        ])
    );
    let expected: Vec<(u64, String, u64)> = [
        (2, "write_statement", 25),
        (1, "session_state", 5),
        (1, "transaction_begin", 18),
        (1, "locking_read", 19),
        (1, "write_statement", 20),
        (1, "transaction_control", 21),
        (1, "side_effect_function", 31),
        (1, "unknown", 32),
    ]
    .into_iter()
    .map(|(calls, reason, line)| (calls, reason.to_owned(), line))
    .collect();
    assert_eq!(ranked(&report), expected);
    assert_eq!(report["top_primary"][0]["statements"], 2);
    assert_eq!(report["unknown"][0]["lines"], serde_json::json!([32]));

    // The same from standard input: the first line tells the format.
    let from_stdin = json(&audit(
        &["-", "--json"],
        &std::fs::read(MARIADB_LOG).unwrap(),
    ));
    assert_eq!(from_stdin["format"], "mysql-log");
    assert_eq!(from_stdin["dialect"], "mysql");
    assert_eq!(from_stdin["calls_by_reason"], report["calls_by_reason"]);
    assert_eq!(from_stdin["top_primary"], report["top_primary"]);
}

// mysql8-general.log (MySQL 8's format, `log_timestamps = UTC`, as its sql/log.cc
// writes it; MySQL 8 is not installed here), by hand (line: verdict):
//   replica: 6, 8, 10 (Executes of the Prepare on 7; `Reset stmt` between), 19
//            (another connection)                               = 4 calls, 3 distinct
//   write_statement: 16 (UPDATE), 20 (INSERT)                    = 2 calls, 2 distinct
//   session_state: 5; transaction_begin: 11; locking_read: 12 (four lines);
//   transaction_control: 17                                      = 10 calls, 9 distinct
#[test]
fn mysql8_general_log_sample() {
    let report = json(&audit(&[MYSQL8_LOG, "--json"], b""));
    assert_eq!(report["format"], "mysql-log");
    assert_eq!(report["dialect"], "mysql");
    assert_eq!(report["statements"], 10);
    assert_eq!(report["calls"], 10);
    assert_eq!(report["distinct_statements"], 9);
    assert_eq!(report["replica_calls"], 4);
    assert_eq!(report["replica_distinct_statements"], 3);
    let expected: Vec<(u64, String, u64)> = [
        (1, "session_state", 5),
        (1, "transaction_begin", 11),
        (1, "locking_read", 12),
        (1, "write_statement", 16),
        (1, "transaction_control", 17),
        (1, "write_statement", 20),
    ]
    .into_iter()
    .map(|(calls, reason, line)| (calls, reason.to_owned(), line))
    .collect();
    assert_eq!(ranked(&report), expected);
    assert!(
        report["top_primary"][2]["fingerprint"]
            .as_str()
            .unwrap()
            .ends_with("for update skip locked"),
        "{}",
        report["top_primary"][2]
    );
    assert_eq!(report["unknown"], serde_json::json!([]));

    // CRLF line ends (a log copied off Windows) change nothing.
    let crlf = std::fs::read_to_string(MYSQL8_LOG)
        .unwrap()
        .replace('\n', "\r\n");
    let from_stdin = json(&audit(&["-", "--json"], crlf.as_bytes()));
    assert_eq!(from_stdin["format"], "mysql-log");
    assert_eq!(from_stdin["top_primary"], report["top_primary"]);
}

// mariadb-digests.tsv (as `mariadb --batch` prints the export without a WHERE) and
// mariadb-digests.csv (the same rows: lower-case names in another order, NULL as `\N`),
// by hand (line: COUNT_STAR, verdict):
//   replica: 2: 48210, 3: 5000 (`IN (...)`), 4: 1200, 12: 3 (root's, no schema)
//                                                              = 54413 calls, 4 rows
//   write_statement: 5: 3120, 6: 900; transaction_begin: 7: 900; locking_read: 8: 900;
//   transaction_control: 9: 900; side_effect_function: 10: 60; session_state: 13: 40
//   line 11: NULL digest, 77 calls, skipped with a warning.
//   11 rows, 61233 calls. SUM_TIMER_WAIT: 15127.003 ms in all, 12740.003 ms on replica rows.
#[test]
fn digest_export_samples() {
    for (path, format) in [(DIGESTS_TSV, "digest-tsv"), (DIGESTS_CSV, "digest-csv")] {
        let output = audit(&[path, "--json"], b"");
        let report = json(&output);
        assert_eq!(report["format"], format);
        assert_eq!(report["dialect"], "mysql");
        assert_eq!(report["statements"], 11, "{format}");
        assert_eq!(report["distinct_statements"], 11, "{format}");
        assert_eq!(report["calls"], 61_233, "{format}");
        assert_eq!(report["replica_calls"], 54_413, "{format}");
        assert_eq!(report["replica_distinct_statements"], 4, "{format}");
        assert_eq!(
            report["calls_by_reason"],
            obj(&[
                ("write_statement", 4_020),
                ("transaction_begin", 900),
                ("locking_read", 900),
                ("transaction_control", 900),
                ("side_effect_function", 60),
                ("session_state", 40),
            ]),
            "{format}"
        );
        let time = &report["exec_time_ms"];
        assert!(close(&time["total"], 15_127.003), "{format}: {time}");
        assert!(close(&time["replica"], 12_740.003), "{format}: {time}");
        let lines: Vec<u64> = ranked(&report).iter().map(|e| e.2).collect();
        assert_eq!(lines, [5, 6, 7, 8, 9, 10, 13], "{format}");
        let warning = stderr(&output);
        assert!(
            warning.starts_with(&format!(
                "warning: {path}: skipped 1 row with a NULL `DIGEST_TEXT` (77 calls)"
            )),
            "{format}: {warning}"
        );
        assert_eq!(warning.lines().count(), 1, "{warning}");
    }

    // From standard input, the header tells the format (and so the dialect); an explicit
    // --dialect wins. The rows are read the same either way.
    let tsv = std::fs::read(DIGESTS_TSV).unwrap();
    let report = json(&audit(&["-", "--json"], &tsv));
    assert_eq!(report["format"], "digest-tsv");
    assert_eq!(report["dialect"], "mysql");
    let postgres = json(&audit(&["-", "--json", "--dialect", "postgres"], &tsv));
    assert_eq!(postgres["format"], "digest-tsv");
    assert_eq!(postgres["dialect"], "postgres");
    assert_eq!(postgres["calls"], 61_233);
    let csv = std::fs::read(DIGESTS_CSV).unwrap();
    let report = json(&audit(&["-", "--json"], &csv));
    assert_eq!(report["format"], "digest-csv");
    assert_eq!(report["calls"], 61_233);
    // A forced format is the format; the dialect still follows it.
    let report = json(&audit(&["-", "--json", "--format", "digest-csv"], &csv));
    assert_eq!(report["dialect"], "mysql");
    // And a pg_stat_statements-style CSV stays PostgreSQL unless told.
    let pgss = json(&audit(&["-", "--json"], b"query,calls\nSELECT 1,2\n"));
    assert_eq!(
        (&pgss["format"], &pgss["dialect"]),
        (&"csv".into(), &"postgres".into())
    );
}

#[test]
fn the_wrong_format_says_which_one_to_pass() {
    let csv = std::fs::read(DIGESTS_CSV).unwrap();
    let tsv = std::fs::read(DIGESTS_TSV).unwrap();
    for (args, input, hint) in [
        (&["--format", "csv"][..], &csv[..], "--format digest-csv"),
        (&["--format", "digest-tsv"], &csv, "--format digest-csv"),
        (&["--format", "digest-csv"], &tsv, "--format digest-tsv"),
        (
            &["--format", "digest-tsv"],
            b"query,calls\nSELECT 1,2\n",
            "--format csv",
        ),
    ] {
        let mut all = vec!["-"];
        all.extend(args);
        let err = input_error(&audit(&all, input));
        assert!(
            err.contains("line 1:") && err.contains(hint),
            "{args:?}: {err}"
        );
    }
    // `mariadb --batch --skip-column-names` leaves the header out.
    let err = input_error(&audit(
        &["-", "--format", "digest-tsv"],
        b"test\tSELECT ? \t3\t1000\n",
    ));
    assert!(
        err.contains("line 1:") && err.contains("--skip-column-names"),
        "{err}"
    );
    // A PostgreSQL log read as a MySQL log, and the other way round.
    let pg = b"2026-11-22 07:00:00.101 UTC [1] LOG:  statement: SELECT 1\n";
    let err = input_error(&audit(&["-", "--format", "mysql-log"], pg));
    assert!(
        err.contains("line 1:") && err.contains("not a MySQL/MariaDB general query log line"),
        "{err}"
    );
    let mysql = std::fs::read(MYSQL8_LOG).unwrap();
    let err = input_error(&audit(&["-", "--format", "log"], &mysql));
    assert!(err.contains("log_line_prefix"), "{err}");
    let err = input_error(&audit(&["-"], b"\nhello\tworld\n"));
    assert!(
        err.contains("line 2:") && err.contains("digest-tsv") && err.contains("mysql-log"),
        "{err}"
    );
}

#[test]
fn malformed_mysql_inputs_name_the_line() {
    let header = "SCHEMA_NAME\tDIGEST\tDIGEST_TEXT\tCOUNT_STAR\tSUM_TIMER_WAIT\n";
    for (rows, line, message) in [
        (
            "app\tab\tSELECT ? \t3\t1000\napp\tcd\tSELECT ? \tmany\t1000\n",
            "line 3:",
            "`COUNT_STAR` must be a non-negative integer",
        ),
        (
            "\napp\tab\tSELECT ? \t3\t-1\n",
            "line 3:",
            "`SUM_TIMER_WAIT` must be a non-negative integer number of picoseconds",
        ),
        (
            "app\tab\tSELECT ? \t3\n",
            "line 2:",
            "bad record: it has 4 fields, the header has 5",
        ),
        ("", "line 1:", "no rows"),
        (
            "NULL\tNULL\tNULL\t3\t1000\n",
            "line 1:",
            "NULL `DIGEST_TEXT`",
        ),
    ] {
        let input = format!("{header}{rows}");
        let err = input_error(&audit(&["-"], input.as_bytes()));
        assert!(
            err.contains(line) && err.contains(message),
            "{rows:?}: {err}"
        );
    }
    let err = input_error(&audit(
        &["-"],
        b"DIGEST_TEXT\tCOUNT_STAR\nSELECT ? \t1\nSELECT '\xff' \t1\n",
    ));
    assert!(err.contains("line 3:") && err.contains("UTF-8"), "{err}");
    let err = input_error(&audit(
        &["-", "--format", "digest-csv"],
        b"digest_text,count_star\n\"SELECT ?\n,1\n",
    ));
    assert!(
        err.contains("line 2:") && err.contains("not closed"),
        "{err}"
    );

    // A general log with entries but no statement, or only its header.
    let err = input_error(&audit(
        &["-"],
        b"2024-12-04T01:02:03.101010Z\t    8 Connect\tapp@10.0.0.7 on shop using SSL/TLS\n2024-12-04T01:02:03.109500Z\t    8 Quit\t\n",
    ));
    assert!(
        err.contains("none of the 2 general log entries in lines 1-2") && err.contains("`Query`"),
        "{err}"
    );
    let header_only = b"/usr/sbin/mariadbd, Version: 10.11.19-MariaDB-0+deb12u1-log (Debian 12). started with:\nTcp port: 3306  Unix socket: /run/mysqld/mysqld.sock\nTime\t\t    Id Command\tArgument\n";
    let err = input_error(&audit(&["-"], header_only));
    assert!(err.contains("only its header"), "{err}");

    // Binary bytes in a logged statement: a report, and a warning naming the line.
    let binary =
        b"\t\t     3 Query\tSELECT 1\n\t\t     3 Query\tINSERT INTO b VALUES ('\xff\xfe')\n";
    let output = audit(&["-", "--format", "mysql-log", "--json"], binary);
    let report = json(&output);
    assert_eq!(report["calls"], 2);
    assert_eq!(report["calls_by_reason"], obj(&[("write_statement", 1)]));
    let warning = stderr(&output);
    assert!(
        warning.starts_with("warning: standard input: 1 line not UTF-8 (the first: line 2)"),
        "{warning}"
    );
}

#[test]
fn arbitrary_input_is_never_a_mysql_report() {
    for empty in [&b""[..], b"\n", b"\xEF\xBB\xBF"] {
        for format in ["digest-csv", "digest-tsv", "mysql-log"] {
            let err = input_error(&audit(&["-", "--format", format], empty));
            assert!(err.contains("empty"), "{empty:?} as {format}: {err}");
        }
    }
    // Deterministic pseudo-random bytes, raw or from an alphabet of the formats'
    // separators: always an input error, never a panic or a report.
    const ALPHABET: &[u8] = b" \n\t\t,\"\\1Q:-T";
    for (round, bytes) in noise(0x9e37_79b9_7f4a_7c15, 16, 131, ALPHABET)
        .into_iter()
        .enumerate()
    {
        for format in ["digest-csv", "digest-tsv", "mysql-log"] {
            let output = audit(&["-", "--format", format], &bytes);
            let stderr = stderr(&output);
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert_eq!(
                output.status.code(),
                Some(2),
                "round {round} {format}: {stderr}\n{}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
    }
}
