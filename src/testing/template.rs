//! A cached, pristine `initdb` output per set of server binaries.
//!
//! `initdb` is most of a cluster's start-up (about 1-2.5 s here); copying its
//! output takes a tenth of that. Test suites start many clusters, so the first
//! `initdb` for a given binary directory is kept in the scratch directory (`/dev/shm` or `/tmp`) and copied after.

use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::process::{run_to_completion, RunAs};

/// Marks a template as complete; a template without it is ignored and rebuilt.
const COMPLETE_MARKER: &str = "rwsplit-template-complete";

/// Put a fresh, unconfigured data directory at `data_dir`.
pub(super) fn initdb(bindir: &Path, run_as: RunAs, data_dir: &Path) -> io::Result<()> {
    let template = template_dir(bindir, run_as);
    if template.join(COMPLETE_MARKER).is_file() && copy(run_as, &template, data_dir).is_ok() {
        let _ = std::fs::remove_file(data_dir.join(COMPLETE_MARKER));
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(data_dir);
    let mut command = run_as.command(&bindir.join("initdb"));
    command.arg("-D").arg(data_dir).args([
        "-U",
        "postgres",
        "-A",
        "trust",
        "--no-sync",
        "--no-instructions",
        "--encoding=UTF8",
        "--locale=C",
    ]);
    run_to_completion(command)?;
    // Best effort: a failure to cache only costs the next cluster an initdb.
    let _ = store(run_as, data_dir, &template);
    Ok(())
}

/// Keyed by the binaries' directory and the modification time of their `initdb`,
/// so an upgraded PostgreSQL never reuses an old template.
fn template_dir(bindir: &Path, run_as: RunAs) -> PathBuf {
    let stamp = std::fs::metadata(bindir.join("initdb"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let owner = match run_as {
        RunAs::CurrentUser => u64::from(unsafe_getuid()),
        RunAs::Account { uid, .. } => u64::from(uid),
    };
    let key = fnv1a(format!("{}|{stamp}|{owner}", bindir.display()).as_bytes());
    super::cluster::scratch_root().join(format!("rws-initdb-{key:016x}"))
}

fn store(run_as: RunAs, data_dir: &Path, template: &Path) -> io::Result<()> {
    let staging = template.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    copy(run_as, data_dir, &staging)?;
    std::fs::write(staging.join(COMPLETE_MARKER), b"")?;
    // Rename is atomic: a concurrent process sees either no template or a whole one.
    if std::fs::rename(&staging, template).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(())
}

/// `cp -a`, run as the server user so that ownership and modes come out right.
fn copy(run_as: RunAs, from: &Path, to: &Path) -> io::Result<()> {
    let mut command = run_as.command(Path::new("cp"));
    command.arg("-a").arg(from).arg(to);
    run_to_completion(command)
}

fn unsafe_getuid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
