//! `rwsplit cluster up | status | down`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use diesel_rwsplit::testing::LocalCluster;

/// Start, inspect and stop a local primary + streaming replicas.
#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Start a cluster that keeps running after this command returns; prints
    /// `PRIMARY_URL=...`, `REPLICA_URLS=...` and `RWSPLIT_CLUSTER_DIR=...` (and
    /// `RWSPLIT_CA_CERT=...` with TLS) for `eval`. The URLs are the superuser's:
    /// through the servers' Unix sockets with --tls-only or --password-auth.
    Up {
        /// Number of replicas.
        #[arg(long, default_value_t = 2)]
        replicas: usize,
        /// Directory to build it in (must not exist or be empty). Default: a new /dev/shm/rws-XXXXXX (or /tmp/rws-XXXXXX).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Directory of the PostgreSQL server binaries (default: searched).
        #[arg(long)]
        pg_bindir: Option<PathBuf>,
        /// Serve TLS with a CA made for this cluster (plaintext stays allowed).
        #[arg(long)]
        tls: bool,
        /// Require TLS for every TCP connection (implies --tls).
        #[arg(long)]
        tls_only: bool,
        /// Authenticate TCP logins with scram-sha-256 passwords.
        #[arg(long)]
        password_auth: bool,
        /// Create a login role NAME with password PASSWORD (repeatable); log in as
        /// postgres://NAME:PASSWORD@127.0.0.1:PORT/postgres.
        #[arg(long = "role", value_name = "NAME:PASSWORD", value_parser = parse_role)]
        roles: Vec<(String, String)>,
    },
    /// Print each node's role, WAL positions and replay lag in bytes.
    Status {
        /// The cluster's directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop every server of the cluster and remove its directory.
    Down {
        /// The cluster's directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

pub(crate) fn run(command: ClusterCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(execute(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&describe(&e)),
    }
}

async fn execute(command: ClusterCommand) -> Result<(), diesel_rwsplit::Error> {
    match command {
        ClusterCommand::Up {
            replicas,
            dir,
            pg_bindir,
            tls,
            tls_only,
            password_auth,
            roles,
        } => {
            let mut builder = LocalCluster::builder()
                .replicas(replicas)
                .detached(true)
                .tls(tls)
                .tls_only(tls_only)
                .password_auth(password_auth);
            for (name, password) in roles {
                builder = builder.role(name, password);
            }
            if let Some(dir) = dir {
                builder = builder.dir(dir);
            }
            if let Some(bindir) = pg_bindir {
                builder = builder.pg_bindir(bindir);
            }
            let cluster = builder.start().await?;
            println!("PRIMARY_URL={}", cluster.primary_url());
            println!("REPLICA_URLS={}", cluster.replica_urls().join(","));
            println!("RWSPLIT_CLUSTER_DIR={}", cluster.dir().display());
            if let Some(ca) = cluster.ca_cert_path() {
                println!("RWSPLIT_CA_CERT={}", ca.display());
            }
            Ok(())
        }
        ClusterCommand::Status { dir } => {
            let cluster = attach_running(dir)?;
            println!(
                "{:<10} {:>6} {:<8} {:>14} {:>14} {:>14} {:>10}",
                "node", "port", "role", "current_lsn", "receive_lsn", "replay_lsn", "lag_bytes"
            );
            let show = |lsn: Option<diesel_rwsplit::Lsn>| {
                lsn.map_or_else(|| "-".to_owned(), |l| l.to_string())
            };
            for node in cluster.status().await {
                println!(
                    "{:<10} {:>6} {:<8} {:>14} {:>14} {:>14} {:>10}",
                    node.name,
                    node.port,
                    node.role,
                    show(node.current_lsn),
                    show(node.receive_lsn),
                    show(node.replay_lsn),
                    node.lag_bytes
                        .map_or_else(|| "-".to_owned(), |b| b.to_string()),
                );
            }
            Ok(())
        }
        ClusterCommand::Down { dir } => {
            let cluster = attach_running(dir)?;
            cluster.shutdown()?;
            Ok(())
        }
    }
}

/// Parse `--role NAME:PASSWORD`, splitting on the first `:`.
fn parse_role(value: &str) -> Result<(String, String), String> {
    match value.split_once(':') {
        Some((name, password)) if !name.is_empty() => Ok((name.to_owned(), password.to_owned())),
        _ => Err("expected NAME:PASSWORD".to_owned()),
    }
}

fn attach_running(dir: PathBuf) -> Result<LocalCluster, diesel_rwsplit::Error> {
    let cluster = LocalCluster::attach(&dir)?;
    if !cluster.is_running() {
        return Err(diesel_rwsplit::Error::ClusterNotRunning { dir });
    }
    Ok(cluster)
}

/// The error and its chain of causes, one per line.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    text
}

fn fail(message: &str) -> ExitCode {
    eprintln!("rwsplit: {message}");
    ExitCode::from(1)
}
