//! `rwsplit cluster up | status | down`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use diesel_rwsplit::testing::{LocalCluster, MariaCluster};

/// Start, inspect and stop a local primary + streaming replicas.
#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Start a cluster that keeps running after this command returns; prints
    /// `PRIMARY_URL=...`, `REPLICA_URLS=...` and `RWSPLIT_CLUSTER_DIR=...` (and
    /// `RWSPLIT_CA_CERT=...` with TLS) for `eval`. The URLs are the superuser's:
    /// through the servers' Unix sockets with --tls-only or --password-auth.
    ///
    /// With --mysql: a MariaDB primary + GTID replicas that run as long as this
    /// command does, until Ctrl-C or SIGTERM, which stop them and remove the
    /// directory (`status` and `down` do not apply). Prints `PRIMARY_URL=...` and
    /// `REPLICA_URLS=...` (the application account `app`, over TCP),
    /// `PRIMARY_ADMIN_URL=...` and `REPLICA_ADMIN_URLS=...` (root, through the Unix
    /// sockets), `RWSPLIT_CLUSTER_DIR=...` and `RWSPLIT_CLUSTER_PID=...` (whom to
    /// send SIGTERM).
    Up {
        /// Number of replicas.
        #[arg(long, default_value_t = 2)]
        replicas: usize,
        /// Directory to build it in (must not exist or be empty). Default: a new /dev/shm/rws-XXXXXX (or /tmp/rws-XXXXXX).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// MariaDB / MySQL protocol: a MariaDB primary + GTID replicas, in the
        /// foreground until Ctrl-C or SIGTERM (needs `mariadb-server`).
        #[arg(
            long,
            conflicts_with_all = ["pg_bindir", "tls", "tls_only", "password_auth", "roles"]
        )]
        mysql: bool,
        /// With --mysql: a directory searched first for `mariadbd` and
        /// `mariadb-install-db` (default: `RWSPLIT_MARIADB_BINDIR`, `PATH`, /usr/sbin, /usr/bin).
        #[arg(long, requires = "mysql")]
        mariadb_bindir: Option<PathBuf>,
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
    if let ClusterCommand::Up {
        mysql: true,
        replicas,
        dir,
        mariadb_bindir,
        ..
    } = command
    {
        return mysql_up(replicas, dir, mariadb_bindir);
    }
    let runtime = match runtime() {
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
            mysql: _,
            mariadb_bindir: _,
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

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// `cluster up --mysql`: start a [`MariaCluster`], print its URLs, and hold it
/// until SIGINT or SIGTERM; then stop it, which removes its directory. Should this
/// process die otherwise (SIGKILL), the cluster's watchdog cleans up.
fn mysql_up(replicas: usize, dir: Option<PathBuf>, bindir: Option<PathBuf>) -> ExitCode {
    // Before the runtime's threads exist, so that every thread inherits the mask.
    let signals = match StopSignals::block() {
        Ok(signals) => signals,
        Err(e) => return fail(&format!("cannot block SIGINT and SIGTERM: {e}")),
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel();
    let waiter = std::thread::Builder::new()
        .name("rwsplit-signals".into())
        .spawn(move || {
            let _ = stop_tx.send(signals.wait());
        });
    if let Err(e) = waiter {
        return fail(&format!("cannot start the signal thread: {e}"));
    }

    let mut builder = MariaCluster::builder().replicas(replicas);
    if let Some(dir) = dir {
        builder = builder.dir(dir);
    }
    if let Some(bindir) = bindir {
        builder = builder.mariadb_bindir(bindir);
    }
    // A signal during start-up drops the start, which stops what it started.
    let started = runtime.block_on(async {
        tokio::select! {
            started = builder.start() => Some(started),
            _ = &mut stop => None,
        }
    });
    let cluster = match started {
        Some(Ok(cluster)) => cluster,
        Some(Err(e)) => return fail(&describe(&e)),
        None => return fail("interrupted during start-up; nothing is left running"),
    };

    let admin_urls: Vec<String> = (0..cluster.replica_count())
        .filter_map(|index| cluster.replica_admin_url(index).ok())
        .collect();
    let mut out = std::io::stdout().lock();
    let printed = writeln!(out, "PRIMARY_URL={}", cluster.primary_url())
        .and_then(|()| writeln!(out, "REPLICA_URLS={}", cluster.replica_urls().join(",")))
        .and_then(|()| writeln!(out, "PRIMARY_ADMIN_URL={}", cluster.primary_admin_url()))
        .and_then(|()| writeln!(out, "REPLICA_ADMIN_URLS={}", admin_urls.join(",")))
        .and_then(|()| writeln!(out, "RWSPLIT_CLUSTER_DIR={}", cluster.dir().display()))
        .and_then(|()| writeln!(out, "RWSPLIT_CLUSTER_PID={}", std::process::id()))
        .and_then(|()| out.flush());
    drop(out);
    if let Err(e) = printed {
        let stopped = cluster.shutdown().map_err(|e| describe(&e)).err();
        let mut message = format!("cannot print the cluster's URLs: {e}");
        if let Some(stop_error) = stopped {
            message.push_str(&format!("\n{stop_error}"));
        }
        return fail(&message);
    }
    eprintln!(
        "rwsplit: MariaDB primary + {} replica(s) running in {}; \
         Ctrl-C or `kill {}` (SIGTERM) stops them and removes the directory",
        cluster.replica_count(),
        cluster.dir().display(),
        std::process::id()
    );

    let signal = runtime.block_on(stop).ok();
    let dir = cluster.dir().to_path_buf();
    let received = match signal {
        Some(libc::SIGINT) => "SIGINT",
        Some(libc::SIGTERM) => "SIGTERM",
        _ => "a stop request",
    };
    match cluster.shutdown() {
        Ok(()) => {
            eprintln!(
                "rwsplit: {received}: servers stopped, {} removed",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&describe(&e)),
    }
}

/// SIGINT and SIGTERM, blocked in every thread and taken by [`wait`](Self::wait).
/// Child processes start with an empty mask (std resets it), so the servers still
/// stop on their own signals.
struct StopSignals {
    set: libc::sigset_t,
}

impl StopSignals {
    /// Block SIGINT and SIGTERM in this thread and every thread it starts from now on.
    fn block() -> std::io::Result<Self> {
        // SAFETY: `set` is initialised by sigemptyset before any other use, and
        // every pointer passed is valid for the duration of the call.
        unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let failed = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if failed != 0 {
                return Err(std::io::Error::from_raw_os_error(failed));
            }
            Ok(StopSignals { set })
        }
    }

    /// Wait until one of them arrives; returns its number.
    fn wait(&self) -> libc::c_int {
        loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `self.set` is an initialised signal set and `signal` a valid
            // place for the result.
            if unsafe { libc::sigwait(&self.set, &mut signal) } == 0 {
                return signal;
            }
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
