//! A `default-features = false` build (no `tls` feature) refuses URLs that ask for
//! TLS with a configuration error. Features are fixed per build, so this builds
//! and runs a small program against the crate without them (`tests/no_tls_build`),
//! in a target directory of its own.

use std::process::Command;

#[test]
fn a_build_without_tls_refuses_urls_that_ask_for_it() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/no_tls_build/Cargo.toml");
    let target = concat!(env!("CARGO_TARGET_TMPDIR"), "/no-tls-build");
    let output = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--manifest-path", manifest])
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("no-tls: ok"),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
}
