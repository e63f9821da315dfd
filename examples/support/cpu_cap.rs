//! Per-node CPU caps through cgroups, to stand in for one machine per node
//! (shared by the benchmark examples).
//!
//! `RWSPLIT_NODE_CPUS=0.4` caps each server of a `LocalCluster` at that many CPUs
//! (Linux, root, cgroup v1 `cpu` or v2); the benchmark process is not capped.

use std::fs;
use std::path::PathBuf;

use diesel_rwsplit::testing::LocalCluster;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The caps `RWSPLIT_NODE_CPUS` asks for, applied to every node of `cluster`;
/// none when it is not set. Keep them until the run is over.
pub(crate) fn from_env(cluster: &LocalCluster) -> Result<Vec<CpuCap>, Error> {
    let Ok(cpus) = std::env::var("RWSPLIT_NODE_CPUS") else {
        return Ok(Vec::new());
    };
    let cpus: f64 = cpus.parse()?;
    let mut pids = vec![cluster.primary_pid()];
    for index in 0..cluster.replica_count() {
        pids.push(cluster.replica_pid(index)?);
    }
    let mut caps = Vec::new();
    for (node, pid) in pids.into_iter().enumerate() {
        let pid = pid.ok_or("a node has no server process")?;
        caps.push(CpuCap::apply(&format!("node{node}"), pid, cpus)?);
    }
    println!("each server capped at {cpus} CPUs (cgroup), the benchmark not");
    Ok(caps)
}

/// A cgroup holding one server's processes, removed on drop (once they are gone).
pub(crate) struct CpuCap(PathBuf);

impl CpuCap {
    /// Cap the server whose postmaster is `pid`, and every process it has
    /// forked or will fork, at `cpus` CPUs.
    pub(crate) fn apply(name: &str, pid: u32, cpus: f64) -> Result<CpuCap, Error> {
        let period: u64 = 100_000;
        let quota = (cpus * period as f64).round().max(1000.0) as u64;
        let group = format!("rws-bench-{}-{name}", std::process::id());
        let v1 = PathBuf::from("/sys/fs/cgroup/cpu");
        let dir = if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(&group);
            fs::create_dir_all(&dir)?;
            fs::write(dir.join("cpu.cfs_period_us"), period.to_string())?;
            fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
            dir
        } else {
            let dir = PathBuf::from("/sys/fs/cgroup").join(&group);
            fs::create_dir_all(&dir)?;
            fs::write(dir.join("cpu.max"), format!("{quota} {period}"))?;
            dir
        };
        let cap = CpuCap(dir);
        fs::write(cap.0.join("cgroup.procs"), pid.to_string())?;
        for child in children(pid) {
            // A short-lived child may be gone by now: nothing to cap.
            let _ = fs::write(cap.0.join("cgroup.procs"), child.to_string());
        }
        Ok(cap)
    }
}

/// The direct children of `parent` (a postmaster's server processes).
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
                    let after = &stat[stat.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        // A cgroup with members cannot be removed: hand them back to the parent.
        if let (Ok(members), Some(parent)) = (
            fs::read_to_string(self.0.join("cgroup.procs")),
            self.0.parent(),
        ) {
            for pid in members.lines() {
                let _ = fs::write(parent.join("cgroup.procs"), pid);
            }
        }
        // Exiting members linger as zombies for a moment (design.md): retry.
        for _ in 0..60 {
            if fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        eprintln!("could not remove {}", self.0.display());
    }
}
