//! `rwsplit`: classify statements, and run local replicated PostgreSQL clusters.

mod audit;
mod classify;
mod cluster;
mod options;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Read/write splitting tools for diesel-rwsplit.
#[derive(Debug, Parser)]
#[command(name = "rwsplit", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Classify SQL statements read one per line from stdin: `replica`, or `primary<TAB>reason`.
    Classify(classify::ClassifyArgs),
    /// Estimate, before adopting, how much of a workload replicas could serve: from a
    /// `pg_stat_statements` CSV export or a PostgreSQL log with `log_statement = 'all'`,
    /// or a MySQL/MariaDB `performance_schema` digest export or general query log.
    Audit(audit::AuditArgs),
    /// Start, inspect and stop a local primary + streaming replicas (`up --mysql`:
    /// a MariaDB primary + GTID replicas).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Classify(args) => classify::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Cluster(command) => cluster::run(command),
    }
}
