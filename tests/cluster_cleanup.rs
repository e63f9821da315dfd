//! No postgres process outlives the process that started a `LocalCluster`, and no
//! mariadbd process the one that started a `MariaCluster`, however that process ends: dropping the cluster, panicking, `process::exit` (no
//! destructors run), or SIGKILL (nothing of ours runs at all; the watchdog acts).
//!
//! `harness = false`: this binary re-executes itself as the cluster's owner.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel_rwsplit::testing::{process_is_gone, LocalCluster, MariaCluster};

const CHILD_MODE: &str = "RWSPLIT_CLEANUP_CHILD_MODE";
const MODES: [&str; 4] = ["drop", "panic", "exit", "sigkill"];
/// MariaDB: the harness's own test covers drop; these are the endings the watchdog handles.
const MARIA_MODES: [&str; 3] = ["panic", "exit", "sigkill"];

fn main() {
    if let Ok(mode) = std::env::var(CHILD_MODE) {
        own_a_cluster_then_end(&mode);
        return;
    }
    let runs = MODES
        .iter()
        .map(|mode| ("postgres", *mode))
        .chain(MARIA_MODES.iter().map(|mode| ("mariadbd", *mode)));
    let mut passed = 0;
    for (server, mode) in runs {
        let started = Instant::now();
        check_nothing_outlives(server, mode);
        let name = match server {
            "postgres" => format!("cleanup_after_{mode}"),
            _ => format!("mariadb_cleanup_after_{mode}"),
        };
        println!("test {name} ... ok ({:?})", started.elapsed());
        passed += 1;
    }
    println!("\ntest result: ok. {passed} passed; 0 failed");
}

/// The child: start a cluster, report its pids and dir, wait for "go", then end as told.
fn own_a_cluster_then_end(mode: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, mode) = mode.split_once(':').unwrap();
    let (cluster, pids, dir): (Box<dyn std::any::Any>, Vec<u32>, PathBuf) = match server {
        "postgres" => {
            let cluster = runtime.block_on(LocalCluster::start(2)).unwrap();
            let mut pids = vec![cluster.primary_pid().unwrap()];
            pids.extend((0..2).map(|i| cluster.replica_pid(i).unwrap().unwrap()));
            let dir = cluster.dir().to_path_buf();
            (Box::new(cluster), pids, dir)
        }
        _ => {
            let cluster = runtime.block_on(MariaCluster::start(2)).unwrap();
            let mut pids = vec![cluster.primary_pid().unwrap()];
            pids.extend((0..2).map(|i| cluster.replica_pid(i).unwrap().unwrap()));
            let dir = cluster.dir().to_path_buf();
            (Box::new(cluster), pids, dir)
        }
    };
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("PIDS {}", pids.join(" "));
    println!("DIR {}", dir.display());
    std::io::stdout().flush().unwrap();
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    match mode {
        "drop" => drop(cluster),
        "panic" => panic!("deliberate panic with a live cluster"),
        "exit" => std::process::exit(0),
        "sigkill" => std::thread::sleep(Duration::from_secs(600)),
        other => panic!("unknown mode {other}"),
    }
}

fn check_nothing_outlives(server: &str, mode: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_MODE, format!("{server}:{mode}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pids: Vec<u32> = lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("PIDS ")
        .unwrap()
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    let dir = PathBuf::from(lines.next().unwrap().unwrap().strip_prefix("DIR ").unwrap());
    assert_eq!(pids.len(), 3);
    for pid in &pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            server,
            "{mode}: pid {pid} is not a live {server} before the end"
        );
    }
    assert!(dir.is_dir());

    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    if mode == "sigkill" {
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    match mode {
        "drop" | "exit" => assert!(status.success(), "{mode}: child failed: {status}"),
        _ => assert!(
            !status.success(),
            "{mode}: child should have died: {status}"
        ),
    }

    // The owner is gone. Give the watchdog (or the drop that already ran) a bounded
    // time; zombies count as gone since init reaps orphans late.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|pid| !process_is_gone(*pid))
            .collect();
        if alive.is_empty() && !dir.exists() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{mode}: {server} {alive:?} or {} outlived the test process",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
