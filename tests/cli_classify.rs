//! `rwsplit classify`, run as a process.
#![cfg(feature = "cli")]

mod common;

use std::process::Output;

use common::cli::stdout;

/// Run `rwsplit classify ARGS` with `stdin` on standard input.
fn rwsplit(args: &[&str], stdin: &str) -> Output {
    common::cli::run("classify", args, stdin.as_bytes())
}

#[test]
fn one_verdict_per_line_and_blank_lines_skipped() {
    let input = "SELECT 1\n\nDELETE FROM t\n   \nSELECT * FROM jobs FOR UPDATE\r\nSELECT nextval('s')\nBEGIN\n'open\n";
    let out = stdout(&rwsplit(&[], input));
    assert_eq!(
        out,
        "replica\nprimary\twrite_statement\nprimary\tlocking_read\nprimary\tside_effect_function\nprimary\ttransaction_begin\nprimary\tunknown\n"
    );
}

#[test]
fn mysql_dialect() {
    let out = stdout(&rwsplit(
        &["--dialect", "mysql"],
        "SELECT \"DELETE\"\nSELECT GET_LOCK('a', 1)\n",
    ));
    assert_eq!(out, "replica\nprimary\tside_effect_function\n");
    let out = stdout(&rwsplit(&[], "SELECT \"DELETE\"\n"));
    assert_eq!(out, "replica\n");
}

#[test]
fn write_functions_and_rules() {
    let args = [
        "--write-function",
        "billing.charge",
        "--write-function",
        "audit",
        "--rule",
        "(?i)from reports=primary",
        "--rule",
        "a=b=replica",
    ];
    let out = stdout(&rwsplit(
        &args,
        "SELECT charge(1)\nSELECT audit()\nSELECT * FROM reports\nSELECT 'a=b'\nSELECT other()\n",
    ));
    assert_eq!(
        out,
        "primary\tside_effect_function\nprimary\tside_effect_function\nprimary\trule\nreplica\nreplica\n"
    );
}

#[test]
fn fingerprint_columns() {
    let out = stdout(&rwsplit(
        &["--fingerprint"],
        "SELECT * FROM t WHERE id = 42\nDELETE FROM t WHERE name = 'secret'\n",
    ));
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0][..2], ["replica", ""]);
    assert_eq!(lines[0][3], "select * from t where id = ?");
    assert_eq!(lines[1][..2], ["primary", "write_statement"]);
    assert_eq!(lines[1][3], "delete from t where name = ?");
    for line in &lines {
        assert_eq!(line.len(), 4);
        assert_eq!(line[2].len(), 16);
        assert!(u64::from_str_radix(line[2], 16).is_ok());
    }
    assert!(!out.contains("secret") && !out.contains("42"));
}

#[test]
fn bad_rules_exit_2_with_a_clear_message() {
    let bad_target = rwsplit(&["--rule", "x=elsewhere"], "");
    assert_eq!(bad_target.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_target.stderr).contains("primary"));

    let no_target = rwsplit(&["--rule", "no-equals-sign"], "");
    assert_eq!(no_target.status.code(), Some(2));

    let bad_regex = rwsplit(&["--rule", "(unclosed=primary"], "SELECT 1\n");
    assert_eq!(bad_regex.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_regex.stderr);
    assert!(
        stderr.contains("(unclosed") && stderr.contains("regular expression"),
        "{stderr}"
    );
    assert!(bad_regex.stdout.is_empty());
}
