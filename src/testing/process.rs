//! Child processes of a local cluster: the OS user they run as, signals, and the
//! watchdog that cleans up when the owning process dies without dropping the cluster.

use std::ffi::CString;
use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged account servers run as when we are root.
const FALLBACK_USER: &str = "rwsplit-pg";

/// Who the server processes run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunAs {
    /// Not root: as ourselves.
    CurrentUser,
    /// Root: as this unprivileged account (PostgreSQL refuses to run as root).
    Account { uid: u32, gid: u32 },
}

impl RunAs {
    /// `postgres` where it exists, otherwise a system account created for the purpose.
    pub(super) fn detect() -> io::Result<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(RunAs::CurrentUser);
        }
        if let Some(account) = lookup_account("postgres") {
            return Ok(account);
        }
        if let Some(account) = lookup_account(FALLBACK_USER) {
            return Ok(account);
        }
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                FALLBACK_USER,
            ])
            .stdin(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "running as root, no `postgres` account, and `useradd {FALLBACK_USER}` failed ({status})"
            )));
        }
        lookup_account(FALLBACK_USER).ok_or_else(|| {
            io::Error::other(format!(
                "account {FALLBACK_USER} was created but cannot be looked up"
            ))
        })
    }

    /// A command that will run as this user.
    pub(super) fn command(self, program: &Path) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(program);
        if let RunAs::Account { uid, gid } = self {
            // std drops supplementary groups itself when root switches uid.
            command.uid(uid).gid(gid);
        }
        command
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .stdin(Stdio::null());
        command
    }

    /// Give `path` to this user, so the servers can write in it.
    pub(super) fn own(self, path: &Path) -> io::Result<()> {
        if let RunAs::Account { uid, gid } = self {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }
}

fn lookup_account(name: &str) -> Option<RunAs> {
    let name = CString::new(name).ok()?;
    // SAFETY: getpwnam takes a valid NUL-terminated string; the returned record is
    // read at once, before any other call that could overwrite it.
    unsafe {
        let record = libc::getpwnam(name.as_ptr());
        if record.is_null() {
            return None;
        }
        Some(RunAs::Account {
            uid: (*record).pw_uid,
            gid: (*record).pw_gid,
        })
    }
}

/// Run a short-lived program (initdb, pg_basebackup) to completion; stderr goes into the error.
pub(super) fn run_to_completion(mut command: Command) -> io::Result<()> {
    let output = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&output.stdout).into_owned();
    }
    Err(io::Error::other(format!(
        "{}: {}",
        output.status,
        tail(&text, 12)
    )))
}

/// The last `lines` lines of `text`, trimmed.
pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Send `signal` to one process.
pub(super) fn signal_pid(pid: u32, signal: libc::c_int) -> io::Result<()> {
    send(pid as libc::pid_t, signal)
}

/// Send `signal` to a whole process group (a postmaster and its backends).
pub(super) fn signal_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    send(-(pgid as libc::pid_t), signal)
}

fn send(target: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(target, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Every process whose parent is `parent` (a postmaster's backends and workers).
pub(super) fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            // Fields after the name: state, then ppid.
            stat[close + 1..]
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

/// The one-letter state of a process from `/proc/PID/stat` (`None`: no such process).
pub(super) fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.trim_start().chars().next()
}

/// Whether a process is gone. A zombie counts as gone: it runs nothing and only
/// waits for a late reaper (design section 5).
pub fn is_gone(pid: u32) -> bool {
    matches!(process_state(pid), None | Some('Z') | Some('X'))
}

/// Wait until a server process has exited, reaping it when it is our child.
pub(super) fn wait_exit(pid: u32, child: Option<&mut Child>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    match child {
        Some(child) => loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return true,
                Ok(None) if Instant::now() >= deadline => return false,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        },
        None => loop {
            if is_gone(pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5))
        },
    }
}

/// Stop a postmaster: fast shutdown, then immediate, then SIGKILL on its whole group.
pub(super) fn stop_server(pid: u32, mut child: Option<&mut Child>) -> bool {
    // A frozen server cannot act on SIGINT, nor can its frozen backends exit.
    let _ = signal_group(pid, libc::SIGCONT);
    for child in children(pid) {
        let _ = signal_pid(child, libc::SIGCONT);
    }
    for (signal, wait) in [
        (libc::SIGINT, Duration::from_secs(10)),
        (libc::SIGQUIT, Duration::from_secs(5)),
    ] {
        if signal_pid(pid, signal).is_err() || wait_exit(pid, child.as_deref_mut(), wait) {
            let _ = signal_group(pid, libc::SIGKILL); // stragglers of a crashed postmaster
            return true;
        }
    }
    let _ = signal_group(pid, libc::SIGKILL);
    wait_exit(pid, child, Duration::from_secs(5))
}

/// Stop a server that shuts down on SIGTERM (`mariadbd`): SIGCONT (a frozen server
/// cannot act on anything else), SIGTERM, then SIGKILL after `grace`.
pub(super) fn stop_by_sigterm(pid: u32, mut child: Option<&mut Child>, grace: Duration) -> bool {
    let _ = signal_pid(pid, libc::SIGCONT);
    if signal_pid(pid, libc::SIGTERM).is_err() || wait_exit(pid, child.as_deref_mut(), grace) {
        return true;
    }
    let _ = signal_pid(pid, libc::SIGKILL);
    wait_exit(pid, child, Duration::from_secs(5))
}

/// The shell script the watchdog runs. It blocks until its stdin reaches end-of-file,
/// which happens when the process holding the other end exits, however it exits
/// (drop, `process::exit`, panic abort, SIGKILL), then kills every process named by
/// a `*.pid` file at the top of the cluster directory whose command line names the
/// directory (a Patroni cluster's Patroni members and etcd: Patroni first, so that
/// it restarts nothing; a MariaDB cluster's `mariadbd` servers, whose
/// `--defaults-file` is in the directory), stops every server whose `postmaster.pid` is still in the
/// cluster directory and removes the directory.
const WATCHDOG_SCRIPT: &str = r#"
dir="$1"
cat >/dev/null
for f in "$dir"/*.pid; do
  [ -f "$f" ] || continue
  pid=$(head -n 1 "$f")
  case "$pid" in ''|*[!0-9]*) continue ;; esac
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir" || continue
  kill -KILL "$pid" 2>/dev/null
done
pids=""
for f in "$dir"/*/postmaster.pid; do
  [ -f "$f" ] || continue
  pid=$(head -n 1 "$f")
  [ "$(cat /proc/$pid/comm 2>/dev/null)" = postgres ] || continue
  kill -CONT -"$pid" 2>/dev/null
  pkill -CONT -P "$pid" 2>/dev/null
  kill -INT "$pid" 2>/dev/null
  pids="$pids $pid"
done
for i in $(seq 1 100); do
  alive=""
  for pid in $pids; do
    state=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -c1)
    [ -n "$state" ] && [ "$state" != Z ] && alive="$alive $pid"
  done
  [ -z "$alive" ] && break
  sleep 0.1
done
for pid in $pids; do kill -KILL -"$pid" 2>/dev/null; done
rm -rf "$dir"
"#;

/// A watchdog process tied to the life of this process through a pipe.
#[derive(Debug)]
pub(super) struct Watchdog {
    child: Child,
}

impl Watchdog {
    pub(super) fn spawn(dir: &Path) -> io::Result<Self> {
        use std::os::unix::process::CommandExt;
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("rwsplit-watchdog")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C aimed at the test run must not kill the
            // watchdog before it has cleaned up after the test binary.
            .process_group(0)
            .spawn()?;
        Ok(Watchdog { child })
    }

    /// Release the watchdog after a clean shutdown (it then finds nothing to stop).
    pub(super) fn release(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (free now; the caller retries if it is taken later).
pub(super) fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_state_reads_our_own_and_missing_processes() {
        assert!(process_state(std::process::id()).is_some());
        assert!(!is_gone(std::process::id()));
        assert!(is_gone(u32::MAX / 2));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
