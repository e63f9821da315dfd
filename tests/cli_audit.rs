//! `rwsplit audit`, run as a process on the sample inputs in `tests/data/audit/`.
//!
//! The expected numbers were counted by hand from the samples (see the comments): if a
//! sample changes, count again.
#![cfg(feature = "cli")]

mod common;

use std::process::Output;

use common::cli::{input_error, json, noise, obj, stdout};
use serde_json::Value;

const PGSS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/audit/pgss.csv");
const LOG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/audit/postgres.log");

/// Run `rwsplit audit ARGS` with `stdin` on standard input.
fn audit(args: &[&str], stdin: &[u8]) -> Output {
    common::cli::run("audit", args, stdin)
}

/// The first number printed after `"key": ` in a `--json` report, parsed by Rust's
/// correctly rounded `f64::from_str` (serde_json's default float parser may be one ulp
/// off), so that shares can be compared exactly.
fn number(output: &Output, key: &str) -> f64 {
    let text = stdout(output);
    let pattern = format!("\"{key}\": ");
    let at = text
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        + pattern.len();
    let rest = &text[at..];
    let end = rest.find([',', '\n']).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {:?}: {e}", &rest[..end]))
}

// pgss.csv, by hand (line: calls, verdict):
//   replica:  2: 48210, 3: 31877, 10: 12040, 22: 17280, 23: 6020, 24: 4410, 28: 24, 37: 12,
//             41: 1800, 44: 940                                   = 122613 calls, 10 rows
//   locking_read: 4 (multi-line, lines 4-9): 86400, 39: 600        = 87000, 2
//   write_statement: 11: 3120, 12: 1804, 13: 15000, 14: 96, 16: 11873, 25: 2750, 38: 12
//                                                                 = 34655, 7
//   transaction_control: 18: 8800, 19: 200, 42: 150, 43: 150      = 9300, 4
//   transaction_begin: 17: 9000                                    = 9000, 1
//   side_effect_function: 15: 2400, 26: 1200, 36: 3120            = 6720, 3
//   session_state: 20: 340, 21: 340                                = 680, 2
//   unknown: 27: 57, 40: 21 (both `<insufficient privilege>`: one distinct) = 78, 1
//   31 rows, 30 distinct; 270046 calls, 147433 to the primary.
//   total_exec_time: 53634.75 ms in all, 22641.75 ms on replica rows.
const PGSS_CALLS: u64 = 270_046;
const PGSS_REPLICA_CALLS: u64 = 122_613;

#[test]
fn csv_export_json_report() {
    let output = audit(&[PGSS, "--json"], b"");
    let report = json(&output);
    assert_eq!(report["format_version"], 1);
    assert_eq!(report["input"], PGSS);
    assert_eq!(report["format"], "csv");
    assert_eq!(report["dialect"], "postgres");
    assert_eq!(report["statements"], 31);
    assert_eq!(report["distinct_statements"], 30);
    assert_eq!(report["calls"], PGSS_CALLS);
    assert_eq!(report["replica_calls"], PGSS_REPLICA_CALLS);
    assert_eq!(report["primary_calls"], PGSS_CALLS - PGSS_REPLICA_CALLS);
    assert_eq!(report["replica_distinct_statements"], 10);
    assert_eq!(report["primary_distinct_statements"], 20);
    assert_eq!(
        number(&output, "replica_share_of_calls"),
        122_613.0 / 270_046.0
    );
    assert_eq!(
        number(&output, "replica_share_of_distinct_statements"),
        10.0 / 30.0
    );
    assert_eq!(number(&output, "total"), 53_634.75);
    assert_eq!(number(&output, "replica"), 22_641.75);
    assert_eq!(number(&output, "replica_share"), 22_641.75 / 53_634.75);
    assert_eq!(
        report["calls_by_reason"],
        obj(&[
            ("locking_read", 87_000),
            ("write_statement", 34_655),
            ("transaction_control", 9_300),
            ("transaction_begin", 9_000),
            ("side_effect_function", 6_720),
            ("session_state", 680),
            ("unknown", 78),
        ])
    );
    assert_eq!(
        report["distinct_statements_by_reason"],
        obj(&[
            ("locking_read", 2),
            ("write_statement", 7),
            ("transaction_control", 4),
            ("transaction_begin", 1),
            ("side_effect_function", 3),
            ("session_state", 2),
            ("unknown", 1),
        ])
    );

    // The job queue claim, a multi-line `FOR UPDATE SKIP LOCKED` polled every second, leads.
    let top = report["top_primary"].as_array().expect("top_primary");
    assert_eq!(top.len(), 10, "--top defaults to 10");
    let first = &top[0];
    assert_eq!(first["rank"], 1);
    assert_eq!(first["reason"], "locking_read");
    assert_eq!(first["calls"], 86_400);
    assert_eq!(number(&output, "share_of_calls"), 86_400.0 / 270_046.0);
    assert_eq!(first["statements"], 1);
    assert_eq!(first["first_line"], 4);
    let fingerprint = first["fingerprint"].as_str().expect("fingerprint");
    assert!(
        fingerprint.starts_with("select \"jobs\".\"id\"")
            && fingerprint.ends_with("limit ? for update skip locked"),
        "{fingerprint}"
    );
    let hash = first["hash"].as_str().expect("hash");
    assert!(
        hash.len() == 16 && u64::from_str_radix(hash, 16).is_ok(),
        "{hash}"
    );
    // Most calls first; the tie at 3120 (INSERT on line 11, pg_notify on line 36) in input order.
    let ranked: Vec<(u64, &str, u64)> = top
        .iter()
        .map(|e| {
            (
                e["calls"].as_u64().unwrap(),
                e["reason"].as_str().unwrap(),
                e["first_line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ranked,
        [
            (86_400, "locking_read", 4),
            (15_000, "write_statement", 13),
            (11_873, "write_statement", 16),
            (9_000, "transaction_begin", 17),
            (8_800, "transaction_control", 18),
            (3_120, "write_statement", 11),
            (3_120, "side_effect_function", 36),
            (2_750, "write_statement", 25),
            (2_400, "side_effect_function", 15),
            (1_804, "write_statement", 12),
        ]
    );
    for (i, entry) in top.iter().enumerate() {
        assert_eq!(entry["rank"], i + 1);
        let keys: Vec<&str> = entry
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys.len(),
            8,
            "rank, fingerprint, hash, reason, calls, share_of_calls, statements, first_line: {keys:?}"
        );
    }

    // The two `<insufficient privilege>` rows (other users' statements) are one unknown.
    let unknown = report["unknown"].as_array().expect("unknown");
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0]["calls"], 78);
    assert_eq!(unknown[0]["lines"], serde_json::json!([27, 40]));
    assert_eq!(unknown[0]["fingerprint"], "< insufficient privilege >");

    // No literal from the export leaks into the report.
    let text = report.to_string();
    for literal in ["UTC", "UTF8", "controller", "axum"] {
        assert!(!text.contains(literal), "{literal} in {text}");
    }
}

#[test]
fn csv_export_text_report() {
    let out = stdout(&audit(&[PGSS, "--top", "3"], b""));
    for expected in [
        "statements: 31 (30 distinct)   calls: 270046",
        "a replica could serve 45.40% of calls (122613 of 270046) and 33.33% of distinct statements (10 of 30)",
        "execution time on replicas: 42.21% (22641.75 of 53634.75 ms)",
        "top 3 statements for the primary, by calls:",
        "unknown (could not classify, so sent to the primary): 1 distinct, 78 calls",
        "27,40",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }
    let line = |prefix: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(line("replica ")[..4], ["replica", "122613", "45.40%", "10"]);
    assert_eq!(line("primary ")[..4], ["primary", "147433", "54.60%", "20"]);
    assert_eq!(
        line("locking_read ")[..4],
        ["locking_read", "87000", "32.22%", "2"]
    );
    assert_eq!(line("unknown ")[..4], ["unknown", "78", "0.03%", "1"]);
    let first = line("1 ");
    assert_eq!(first[..4], ["1", "86400", "31.99%", "locking_read"]);
    assert_eq!(first[5], "4", "line of the first statement");
    assert!(line("3 ").contains(&"write_statement".to_owned()));
    assert!(
        !out.lines().any(|l| l.trim_start().starts_with("4 ")),
        "{out}"
    );
}

// postgres.log, by hand (line: verdict), one call each:
//   replica: 5, 20, 34 (the same users SELECT), 24, 30, 38 (`select ?`: `SELECT 1` and a
//            string that contains `LOG:  statement:`), 39 (five lines, a literal with a
//            newline)                                             = 7 calls, 3 distinct
//   write_statement: 7, 22, 36, 44 (UPDATE users), 17 (UPDATE jobs), 27 (INSERT) = 6, 3
//   session_state: 3, 4; transaction_begin: 9; locking_read: 10 (six lines);
//   transaction_control: 19; side_effect_function: 26; unknown: 31 (unterminated string)
//   20 statements = 20 calls, 13 distinct. DETAIL (with a two-line value), ERROR,
//   STATEMENT, duration and connection lines count for nothing.
#[test]
fn log_json_report() {
    let output = audit(&[LOG, "--json"], b"");
    let report = json(&output);
    assert_eq!(report["format"], "log");
    assert_eq!(report["statements"], 20);
    assert_eq!(report["calls"], 20);
    assert_eq!(report["distinct_statements"], 13);
    assert_eq!(report["replica_calls"], 7);
    assert_eq!(report["primary_calls"], 13);
    assert_eq!(report["replica_distinct_statements"], 3);
    assert_eq!(report["primary_distinct_statements"], 10);
    assert_eq!(number(&output, "replica_share_of_calls"), 7.0 / 20.0);
    assert_eq!(
        number(&output, "replica_share_of_distinct_statements"),
        3.0 / 13.0
    );
    assert_eq!(report["exec_time_ms"], Value::Null);
    assert_eq!(
        report["calls_by_reason"],
        obj(&[
            ("write_statement", 6),
            ("session_state", 2),
            ("transaction_begin", 1),
            ("locking_read", 1),
            ("transaction_control", 1),
            ("side_effect_function", 1),
            ("unknown", 1),
        ])
    );
    let top = report["top_primary"].as_array().expect("top_primary");
    assert_eq!(top.len(), 10);
    assert_eq!(top[0]["reason"], "write_statement");
    assert_eq!(top[0]["calls"], 4);
    assert_eq!(top[0]["statements"], 4);
    assert_eq!(top[0]["first_line"], 7);
    assert_eq!(
        top[0]["fingerprint"],
        "update \"users\" set \"last_seen_at\" = ? where \"users\".\"id\" = ?"
    );
    // Ties (one call each) in input order.
    let lines: Vec<u64> = top
        .iter()
        .map(|e| e["first_line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [7, 3, 4, 9, 10, 17, 19, 26, 27, 31]);
    assert_eq!(top[4]["reason"], "locking_read");
    assert!(
        top[4]["fingerprint"]
            .as_str()
            .unwrap()
            .ends_with("limit ? for update skip locked"),
        "{}",
        top[4]
    );

    let unknown = report["unknown"].as_array().expect("unknown");
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0]["lines"], serde_json::json!([31]));
    assert_eq!(unknown[0]["calls"], 1);
    assert_eq!(
        unknown[0]["fingerprint"],
        "select \"posts\".\"title\" from \"posts\" where \"posts\".\"title\" = ?"
    );
}

#[test]
fn format_from_the_first_line_on_stdin_and_forced() {
    let log = std::fs::read(LOG).unwrap();
    let csv = std::fs::read(PGSS).unwrap();
    let from_stdin = json(&audit(&["-", "--json"], &log));
    assert_eq!(from_stdin["format"], "log");
    assert_eq!(from_stdin["input"], "-");
    assert_eq!(from_stdin["calls"], 20);
    let from_stdin = json(&audit(&["-", "--json"], &csv));
    assert_eq!(from_stdin["format"], "csv");
    assert_eq!(from_stdin["calls"], PGSS_CALLS);

    // A byte order mark, CRLF line ends and blank lines before the header are fine.
    let mut excel = b"\xEF\xBB\xBF\r\n".to_vec();
    excel.extend_from_slice(&csv.iter().fold(Vec::new(), |mut v, b| {
        if *b == b'\n' {
            v.push(b'\r');
        }
        v.push(*b);
        v
    }));
    let report = json(&audit(&["-", "--json"], &excel));
    assert_eq!(report["replica_calls"], PGSS_REPLICA_CALLS);
    assert_eq!(report["top_primary"][0]["first_line"], 5);
    assert_eq!(report["unknown"][0]["lines"], serde_json::json!([28, 41]));

    // Forcing the wrong format is an input error, not a report.
    let err = input_error(&audit(&[LOG, "--format", "csv"], b""));
    assert!(err.contains("line 1:") && err.contains("`query`"), "{err}");
    let err = input_error(&audit(&["-", "--format", "log"], &csv));
    assert!(
        err.contains("line 1:") && err.contains("log_line_prefix"),
        "{err}"
    );

    let err = input_error(&audit(&["-"], b"\n\nhello, world\n"));
    assert!(err.contains("line 3:") && err.contains("--format"), "{err}");
}

#[test]
fn other_log_line_prefixes() {
    let log = "\
2026-11-22 07:00:00 UTC:10.0.0.7(50412):app@app:[1234]:LOG:  statement: SELECT 1
2026-11-22 07:00:01.5 CET [1234] app@app LOG:  duration: 0.1 ms  execute <unnamed>: DELETE FROM t
LOG:  execute fetch from S_1/C_2: SELECT * FROM t FOR SHARE
";
    let report = json(&audit(&["-", "--json"], log.as_bytes()));
    assert_eq!(report["calls"], 3);
    assert_eq!(report["replica_calls"], 1);
    assert_eq!(
        report["calls_by_reason"],
        obj(&[("write_statement", 1), ("locking_read", 1)])
    );
}

#[test]
fn classifier_options_change_the_verdicts() {
    // nextval (2400 calls) and pg_notify (3120) declared read-only move to the replica;
    // a rule sends the 12 migration-table reads to the primary.
    let report = json(&audit(
        &[
            PGSS,
            "--json",
            "--top",
            "2",
            "--read-only-function",
            "nextval",
            "--read-only-function",
            "pg_notify",
            "--rule",
            "__diesel_schema_migrations=primary",
        ],
        b"",
    ));
    assert_eq!(
        report["replica_calls"],
        PGSS_REPLICA_CALLS + 2_400 + 3_120 - 12
    );
    assert_eq!(report["calls_by_reason"]["side_effect_function"], 1_200);
    // The rule matches the CREATE TABLE too: rules come before the built-in judgement.
    assert_eq!(report["calls_by_reason"]["rule"], 24);
    assert_eq!(report["top_primary"].as_array().unwrap().len(), 2);

    let report = json(&audit(
        &[
            PGSS,
            "--json",
            "--write-function",
            "date_trunc",
            "--top",
            "0",
        ],
        b"",
    ));
    assert_eq!(report["replica_calls"], PGSS_REPLICA_CALLS - 24);
    assert_eq!(report["top_primary"], serde_json::json!([]));

    let mysql = "query,calls\n\"SELECT `id` FROM `users` WHERE `id` = ?\",10\n\"SELECT GET_LOCK('job', 10)\",2\n";
    let report = json(&audit(
        &["-", "--json", "--dialect", "mysql"],
        mysql.as_bytes(),
    ));
    assert_eq!(report["dialect"], "mysql");
    assert_eq!(report["replica_calls"], 10);
    assert_eq!(report["calls_by_reason"]["side_effect_function"], 2);

    let err = input_error(&audit(&[PGSS, "--rule", "(unclosed=primary"], b""));
    assert!(
        err.contains("(unclosed") && err.contains("regular expression"),
        "{err}"
    );
    let err = input_error(&audit(&[PGSS, "--rule", "x=elsewhere"], b""));
    assert!(err.contains("primary"), "{err}");
}

#[test]
fn statements_run_inside_functions_are_skipped() {
    // `toplevel` = f: run by a function with `pg_stat_statements.track = 'all'`, not sent
    // by the application.
    let input = b"toplevel,calls,query\nt,5,SELECT 1\nf,3,DELETE FROM t\ntrue,2,SELECT 2\n";
    let report = json(&audit(&["-", "--json"], input));
    assert_eq!(report["statements"], 2);
    assert_eq!(report["calls"], 7);
    assert_eq!(report["replica_calls"], 7);
    assert_eq!(report["primary_calls"], 0);
    assert_eq!(report["top_primary"], serde_json::json!([]));

    let err = input_error(&audit(
        &["-"],
        b"toplevel,calls,query\nt,5,SELECT 1\nyes,3,SELECT 2\n",
    ));
    assert!(
        err.contains("line 3:") && err.contains("`toplevel`"),
        "{err}"
    );
}

#[test]
fn malformed_csv_names_the_line() {
    let err = input_error(&audit(
        &["-", "--format", "csv"],
        b"queryid,query,total_exec_time\n1,SELECT 1,2\n",
    ));
    assert!(
        err.contains("line 1:") && err.contains("no `calls` column"),
        "{err}"
    );
    let err = input_error(&audit(&["-", "--format", "csv"], b"queryid,rows\n1,2\n"));
    assert!(
        err.contains("line 1:") && err.contains("no `query` and `calls` column"),
        "{err}"
    );

    // The record on line 3 spans two lines: the bad one starts on line 5.
    let input = b"queryid,calls,query\n1,10,\"SELECT 1\"\n2,5,\"SELECT\n  2\"\n3,-4,\"SELECT 3\"\n";
    let err = input_error(&audit(&["-"], input));
    assert!(
        err.contains("line 5:") && err.contains("non-negative integer") && err.contains("\"-4\""),
        "{err}"
    );
    for bad in ["abc", "1.5", "", "18446744073709551616"] {
        let input = format!("query,calls\nSELECT 1,3\nSELECT 2,{bad}\n");
        let err = input_error(&audit(&["-"], input.as_bytes()));
        assert!(
            err.contains("line 3:") && err.contains("`calls`"),
            "{bad}: {err}"
        );
    }
    let err = input_error(&audit(
        &["-"],
        b"query,calls,total_exec_time\nSELECT 1,3,NaN\n",
    ));
    assert!(
        err.contains("line 2:") && err.contains("total_exec_time"),
        "{err}"
    );

    let err = input_error(&audit(&["-"], b"queryid,calls,query\n1,10,x\n2,3\n"));
    assert!(
        err.contains("line 3:") && err.contains("bad CSV record"),
        "{err}"
    );
    let err = input_error(&audit(&["-"], b"query,calls\n\"SELECT 1\" ,1\n"));
    assert!(
        err.contains("line 2:") && err.contains("closing quote"),
        "{err}"
    );
    let err = input_error(&audit(&["-"], b"query,calls\nx,1\n\"SELECT\n1,2\n"));
    assert!(
        err.contains("line 3:") && err.contains("not closed"),
        "{err}"
    );

    // CRLF line ends, a CRLF inside a quoted field and a blank line still count: line 6.
    let err = input_error(&audit(
        &["-"],
        b"query,calls\r\n\r\nx,1\r\n\"a\r\nb\",2\r\ny,z\r\n",
    ));
    assert!(err.contains("line 6:") && err.contains("\"z\""), "{err}");

    // Invalid UTF-8 on the second line of a quoted field: line 4.
    let err = input_error(&audit(
        &["-"],
        b"queryid,calls,query\n1,1,x\n1,10,\"SELECT\n \xff 2\"\n",
    ));
    assert!(err.contains("line 4:") && err.contains("UTF-8"), "{err}");
    let err = input_error(&audit(&["-"], b"query\xc3,calls\nSELECT 1,1\n"));
    assert!(err.contains("line 1:") && err.contains("UTF-8"), "{err}");

    let err = input_error(&audit(&["-"], b"queryid,calls,query\n"));
    assert!(err.contains("line 1:") && err.contains("no rows"), "{err}");
}

#[test]
fn malformed_log_names_the_line() {
    let err = input_error(&audit(
        &["-", "--format", "log"],
        b"2026-11-22 07:00:00.101 UTC [1] LOG:  statement: SELECT 1\n2026-11-22 07:00:00.102 UTC [1] LOG:  statement: SELECT '\xfe'\n",
    ));
    assert!(err.contains("line 2:") && err.contains("UTF-8"), "{err}");

    let only_connections = b"2026-11-22 07:00:00.101 UTC [1] LOG:  connection received: host=[local]\n2026-11-22 07:00:00.102 UTC [1] LOG:  connection authorized: user=app\n";
    let err = input_error(&audit(&["-"], only_connections));
    assert!(
        err.contains("lines 1-2") && err.contains("log_statement"),
        "{err}"
    );

    let err = input_error(&audit(
        &["-", "--format", "log"],
        b"\nSELECT 1;\nSELECT 2;\n",
    ));
    assert!(
        err.contains("line 2:") && err.contains("log_line_prefix"),
        "{err}"
    );
}

#[test]
fn empty_unreadable_and_arbitrary_input() {
    for empty in [&b""[..], b"\n", b"  \r\n\t\n", b"\xEF\xBB\xBF"] {
        for format in ["csv", "log"] {
            let err = input_error(&audit(&["-", "--format", format], empty));
            assert!(err.contains("empty"), "{empty:?} as {format}: {err}");
        }
        let err = input_error(&audit(&["-"], empty));
        assert!(err.contains("empty"), "{empty:?}: {err}");
    }

    let err = input_error(&audit(&["/nonexistent/pgss.csv"], b""));
    assert!(
        err.contains("/nonexistent/pgss.csv") && err.contains("cannot open"),
        "{err}"
    );

    // Deterministic pseudo-random bytes, valid UTF-8 or not: always an input error, never
    // a panic or a report.
    const ALPHABET: &[u8] = b" \n,\"aq\r\t;'x";
    for (round, bytes) in noise(0x2545_f491_4f6c_dd1d, 24, 97, ALPHABET)
        .into_iter()
        .enumerate()
    {
        for format in [None, Some("csv"), Some("log")] {
            let mut args = vec!["-"];
            if let Some(format) = format {
                args.extend(["--format", format]);
            }
            let output = audit(&args, &bytes);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!stderr.contains("panicked"), "{stderr}");
            if output.status.success() {
                // Printable junk can be a one-column "CSV"... only with `query` and `calls`.
                panic!(
                    "round {round} {format:?} gave a report: {}",
                    String::from_utf8_lossy(&output.stdout)
                );
            }
            assert_eq!(
                output.status.code(),
                Some(2),
                "round {round} {format:?}: {stderr}"
            );
        }
    }
}
