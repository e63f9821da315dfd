//! `rwsplit classify` (not implemented yet).

use std::process::ExitCode;

/// Arguments of `rwsplit classify`.
#[derive(Debug, clap::Args)]
pub(crate) struct ClassifyArgs {}

pub(crate) fn run(_args: ClassifyArgs) -> ExitCode {
    eprintln!("rwsplit classify: not implemented yet");
    ExitCode::from(2)
}
