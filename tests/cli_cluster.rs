//! `rwsplit cluster up | status | down` end to end.
#![cfg(feature = "cli")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// `rwsplit cluster up --mysql` running in the foreground; dropping it (a failed
/// assertion) sends SIGTERM and waits, so that the servers and directory go.
struct Foreground {
    child: Child,
    vars: HashMap<String, String>,
}

impl Foreground {
    /// Start it and read its variables, up to `RWSPLIT_CLUSTER_PID`, its last.
    fn start(args: &[&str]) -> Foreground {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rwsplit"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut vars = HashMap::new();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        for line in stdout.lines() {
            let line = line.unwrap();
            let Some((key, value)) = line.split_once('=') else {
                panic!("not KEY=VALUE: {line:?}");
            };
            vars.insert(key.to_owned(), value.to_owned());
            if key == "RWSPLIT_CLUSTER_PID" {
                return Foreground { child, vars };
            }
        }
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!(
            "up --mysql ended before printing its URLs: {:?}\n{err}",
            child.wait()
        );
    }

    /// Send `signal` and wait for the exit; returns its status and stderr.
    fn stop(&mut self, signal: libc::c_int) -> (std::process::ExitStatus, String) {
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "still running 60 s after the signal"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut err).unwrap();
        }
        (status, err)
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.stop(libc::SIGTERM);
        }
    }
}

/// Pids of the `mariadbd` servers the harness recorded at the top of `dir`.
fn mariadbd_pids(dir: &Path, nodes: &[&str]) -> Vec<u32> {
    nodes
        .iter()
        .filter_map(|node| std::fs::read_to_string(dir.join(format!("{node}.pid"))).ok())
        .filter_map(|text| text.trim().parse().ok())
        .collect()
}

async fn mysql_scalar(url: &str, sql: &str) -> String {
    use mysql_async::prelude::Queryable;
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(url).unwrap())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let value: Option<String> = conn.query_first(sql).await.unwrap();
    conn.disconnect().await.unwrap();
    value.unwrap()
}

#[test]
fn up_mysql_prints_working_urls_and_sigterm_stops_it_and_removes_the_dir() {
    let dir = unique_dir("mysql");
    let started = Instant::now();
    let mut up = Foreground::start(&[
        "cluster",
        "up",
        "--mysql",
        "--replicas",
        "1",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    eprintln!(
        "up --mysql --replicas 1 printed its URLs after {:.2?}",
        started.elapsed()
    );
    let vars = up.vars.clone();
    assert!(vars["PRIMARY_URL"].starts_with("mysql://app:"), "{vars:?}");
    let replicas: Vec<&str> = vars["REPLICA_URLS"].split(',').collect();
    assert_eq!(replicas.len(), 1, "{vars:?}");
    assert!(replicas[0].starts_with("mysql://app:"), "{vars:?}");
    assert!(vars["PRIMARY_ADMIN_URL"].starts_with("mysql://root@localhost/"));
    assert_eq!(vars["REPLICA_ADMIN_URLS"].split(',').count(), 1);
    assert_eq!(PathBuf::from(&vars["RWSPLIT_CLUSTER_DIR"]), dir);
    assert_eq!(vars["RWSPLIT_CLUSTER_PID"], up.child.id().to_string());
    // Safe for `eval`: no `&`, space or quote in any value.
    assert!(
        vars.values().all(|v| !v.contains(['&', ' ', '\''])),
        "{vars:?}"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let primary = &vars["PRIMARY_URL"];
        let primary_port = mysql_scalar(primary, "SELECT @@port").await;
        let replica_port = mysql_scalar(replicas[0], "SELECT @@port").await;
        assert_ne!(primary_port, replica_port);
        assert!(primary.contains(&format!("@127.0.0.1:{primary_port}/")));
        assert_eq!(mysql_scalar(replicas[0], "SELECT @@read_only").await, "1");
        assert_eq!(mysql_scalar(primary, "SELECT @@read_only").await, "0");
        assert_eq!(
            mysql_scalar(primary, "SELECT CURRENT_USER()").await,
            "app@%"
        );
        let replica_admin = &vars["REPLICA_ADMIN_URLS"];
        assert_eq!(
            mysql_scalar(replica_admin, "SELECT CURRENT_USER()").await,
            "root@localhost"
        );
        assert_eq!(
            mysql_scalar(replica_admin, "SELECT @@port").await,
            replica_port
        );
    });

    let pids = mariadbd_pids(&dir, &["primary", "replica1"]);
    assert_eq!(pids.len(), 2, "servers run while `up --mysql` does");
    assert!(pids.iter().all(|pid| !process_is_gone(*pid)));

    let stopping = Instant::now();
    let (status, err) = up.stop(libc::SIGTERM);
    eprintln!("stopped {:.2?} after SIGTERM", stopping.elapsed());
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("SIGTERM"), "{err}");
    assert!(
        pids.iter().all(|pid| process_is_gone(*pid)),
        "a server outlived SIGTERM"
    );
    assert!(!dir.exists(), "{} is still there", dir.display());
}

#[test]
fn up_mysql_stops_on_ctrl_c_too() {
    let mut up = Foreground::start(&["cluster", "up", "--mysql", "--replicas", "0"]);
    let dir = PathBuf::from(&up.vars["RWSPLIT_CLUSTER_DIR"]);
    assert_eq!(up.vars["REPLICA_URLS"], "");
    let pids = mariadbd_pids(&dir, &["primary"]);
    assert_eq!(pids.len(), 1);
    let (status, err) = up.stop(libc::SIGINT);
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("SIGINT"), "{err}");
    assert!(process_is_gone(pids[0]));
    assert!(!dir.exists(), "{} is still there", dir.display());
}

#[test]
fn postgres_only_options_with_mysql_are_usage_errors() {
    for extra in [
        &["--tls"][..],
        &["--tls-only"],
        &["--password-auth"],
        &["--role", "app:pw"],
        &["--pg-bindir", "/usr/lib/postgresql/15/bin"],
    ] {
        let mut args = vec!["cluster", "up", "--mysql"];
        args.extend_from_slice(extra);
        let out = rwsplit(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--mysql") && err.contains(extra[0]),
            "{args:?}: {err}"
        );
    }
    let out = rwsplit(&["cluster", "up", "--mariadb-bindir", "/usr/sbin"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--mysql"),
        "{}",
        text(&out.stderr)
    );
}
