//! `rwsplit cluster up | status | down` end to end.
#![cfg(feature = "cli")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diesel_rwsplit::testing::process_is_gone;

fn rwsplit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rwsplit"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn unique_dir(tag: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/rws-cli-{tag}-{}", std::process::id()))
}

fn postmaster_pids(dir: &Path) -> Vec<u32> {
    ["primary", "replica1", "replica2"]
        .iter()
        .filter_map(|node| std::fs::read_to_string(dir.join(node).join("postmaster.pid")).ok())
        .filter_map(|pid_file| pid_file.lines().next()?.trim().parse().ok())
        .collect()
}

#[test]
fn up_prints_urls_status_reports_lag_and_down_leaves_nothing() {
    let dir = unique_dir("life");
    let up = rwsplit(&[
        "cluster",
        "up",
        "--replicas",
        "2",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(up.status.success(), "up failed: {}", text(&up.stderr));
    let vars: HashMap<String, String> = text(&up.stdout)
        .lines()
        .filter_map(|line| {
            line.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    assert!(
        vars["PRIMARY_URL"].starts_with("postgres://postgres@127.0.0.1:"),
        "{vars:?}"
    );
    assert_eq!(vars["REPLICA_URLS"].split(',').count(), 2, "{vars:?}");
    let pids = postmaster_pids(&dir);
    assert_eq!(
        pids.len(),
        3,
        "servers must keep running after `up` returns"
    );
    assert!(pids.iter().all(|pid| !process_is_gone(*pid)));

    let again = rwsplit(&["cluster", "up", "--dir", dir.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("is in use"),
        "{}",
        text(&again.stderr)
    );

    let status = rwsplit(&["cluster", "status", "--dir", dir.to_str().unwrap()]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let report = text(&status.stdout);
    let rows: Vec<Vec<&str>> = report
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{report}");
    assert_eq!((rows[0][0], rows[0][2]), ("primary", "primary"), "{report}");
    for row in &rows[1..] {
        assert_eq!(row[2], "replica", "{report}");
        assert!(
            row[6].parse::<u64>().is_ok(),
            "lag is not a byte count: {report}"
        );
    }

    let down = rwsplit(&["cluster", "down", "--dir", dir.to_str().unwrap()]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert!(
        pids.iter().all(|pid| process_is_gone(*pid)),
        "a server outlived `down`"
    );
    assert!(!dir.exists());

    let gone = rwsplit(&["cluster", "status", "--dir", dir.to_str().unwrap()]);
    assert!(!gone.status.success());
    assert!(
        text(&gone.stderr).contains("no local cluster is running"),
        "{}",
        text(&gone.stderr)
    );
}

#[test]
fn up_with_tls_only_password_auth_and_a_role_prints_the_ca_and_status_and_down_work() {
    let dir = unique_dir("tls");
    let up = rwsplit(&[
        "cluster",
        "up",
        "--replicas",
        "1",
        "--tls-only",
        "--password-auth",
        "--role",
        "app:pw",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(up.status.success(), "up failed: {}", text(&up.stderr));
    let vars: HashMap<String, String> = text(&up.stdout)
        .lines()
        .filter_map(|line| {
            line.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    let ca = PathBuf::from(&vars["RWSPLIT_CA_CERT"]);
    assert!(ca.starts_with(&dir), "{vars:?}");
    assert!(
        std::fs::read_to_string(&ca)
            .unwrap()
            .contains("BEGIN CERTIFICATE"),
        "{vars:?}"
    );
    // The superuser's URL names the Unix socket: safe for `eval`, no `&` or space.
    assert!(
        vars["PRIMARY_URL"].starts_with("postgres://postgres@%2F"),
        "{vars:?}"
    );
    assert!(!text(&up.stdout).contains(['&', ' ', '\'']));
    let pids = postmaster_pids(&dir);
    assert_eq!(pids.len(), 2);

    let status = rwsplit(&["cluster", "status", "--dir", dir.to_str().unwrap()]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let report = text(&status.stdout);
    let roles: Vec<&str> = report
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(roles, ["primary", "replica"], "{report}");

    let down = rwsplit(&["cluster", "down", "--dir", dir.to_str().unwrap()]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert!(pids.iter().all(|pid| process_is_gone(*pid)));
    assert!(!dir.exists());
}

#[test]
fn a_role_without_a_password_separator_is_a_usage_error() {
    let out = rwsplit(&["cluster", "up", "--role", "app"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("NAME:PASSWORD"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn down_on_a_dir_without_a_cluster_is_a_clear_error() {
    let dir = unique_dir("empty");
    std::fs::create_dir_all(&dir).unwrap();
    let out = rwsplit(&["cluster", "down", "--dir", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no local cluster is running in"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn missing_binaries_are_named_with_install_hints() {
    let out = rwsplit(&["cluster", "up", "--pg-bindir", "/nonexistent/bin"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("/nonexistent/bin") && err.contains("apt-get install postgresql"),
        "{err}"
    );
}
