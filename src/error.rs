//! The crate's one error type.

use std::fmt;
#[cfg(feature = "testing")]
use std::path::PathBuf;

/// A boxed error from a lower layer (I/O, the PostgreSQL driver, a child process).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in this crate.
///
/// Each variant says which node or input and which step failed; the lower-level
/// cause is available through [`std::error::Error::source`], never repeated in the
/// message. No variant carries a password or a bind value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A classifier routing rule (the `index`-th added) is not a valid regular expression.
    #[error("classifier routing rule #{index} is not a valid regular expression")]
    InvalidRule {
        /// Zero-based position of the rule in the order it was added.
        index: usize,
        /// What the `regex` crate said.
        #[source]
        source: regex::Error,
    },

    /// The safety interlock, in `Raise` mode, refused a statement, a transaction or a
    /// hook that needs the primary; nothing was run. Returned inside
    /// `diesel::result::Error::QueryBuilderError`; see [`interlock_refusal`](crate::interlock_refusal).
    #[error("interlock (Raise mode) refused to leave the replica: {reason}{}; nothing was run", fingerprint.as_ref().map(|f| format!(" in `{f}`")).unwrap_or_default())]
    InterlockRefused {
        /// Why the primary would have been needed.
        reason: crate::SwitchReason,
        /// The statement's fingerprint (literals folded), when there was a statement.
        fingerprint: Option<String>,
    },

    /// A node could not be connected to or checked out of its pool.
    #[error("{node}: {step} failed: {kind}")]
    Node {
        /// `primary` or `replicaN`, with its host and port (never a password).
        node: String,
        /// What was being done.
        step: NodeStep,
        /// What kind of failure it was (decided by SQLSTATE and I/O error kind).
        kind: FailureKind,
        /// Why it failed.
        #[source]
        source: BoxError,
    },

    /// The primary could not be checked out within the primary checkout timeout:
    /// a write (or a read that needed the primary) could not run. Nothing was sent
    /// to the primary.
    /// Reads on replicas go on meanwhile.
    #[error("{node}: the primary is unavailable: {kind}")]
    PrimaryUnavailable {
        /// `primary (host:port)`.
        node: String,
        /// What kind of failure it was.
        kind: FailureKind,
        /// The last failure seen while waiting (a connect error), or the timeout.
        #[source]
        source: BoxError,
    },

    /// A pool built with [`nodes`](crate::SwitchablePoolBuilder::nodes) found no
    /// member that is the primary within the primary checkout timeout (a failover
    /// or switchover under way, or two members both claiming it): a write (or a
    /// read that needed the primary) could not run. Nothing was sent anywhere.
    /// Reads on replicas go on meanwhile.
    #[error("no primary: none of the {members} member(s) served as the primary within {waited:?}; nothing was sent")]
    NoPrimary {
        /// How many members the pool knows.
        members: usize,
        /// How long the statement waited for one.
        waited: std::time::Duration,
    },

    /// A replica read did not answer within its client-side bound (the replica
    /// statement timeout plus a grace period): the session was discarded (a cancel
    /// request was sent) and the replica is suspected.
    #[error("{node}: no answer to a read within {timeout:?}; the session was discarded")]
    ReadTimedOut {
        /// `replicaN (host:port)`.
        node: String,
        /// The client-side bound that passed.
        timeout: std::time::Duration,
    },

    /// A read-only transaction runs on a replica from `BEGIN` to its end, so nothing
    /// inside it may move the connection to the primary, outlive it in the pooled
    /// replica session, or begin or end a transaction behind diesel's back: a hook or
    /// an explicit switch, session state (`SET`, `LISTEN`; `SET LOCAL` is fine), a
    /// raw `COMMIT` inside `build_transaction`, or a `COMMIT` sent through `execute`
    /// rather than `batch_execute`, was refused. Nothing was run. (A write inside it
    /// runs on the replica, which refuses it as PostgreSQL refuses any write in a
    /// read-only transaction, SQLSTATE 25006.)
    #[error("inside a read-only transaction on a replica: refused ({reason}); nothing was run; end the transaction first")]
    InReplicaTransaction {
        /// What asked for the primary.
        reason: crate::SwitchReason,
    },

    /// A replica-first connection was asked for, every replica is ejected or
    /// unreachable, and fallback to the primary is off.
    #[error("none of the {replicas} replica(s) is available and fallback to the primary is off")]
    NoReplicaAvailable {
        /// How many replicas are configured.
        replicas: usize,
    },

    /// The pool was configured wrongly.
    #[error("invalid pool configuration: {0}")]
    InvalidConfig(String),

    /// The PostgreSQL server binaries (`initdb`, `postgres`, `pg_basebackup`) were not found.
    #[cfg(feature = "testing")]
    #[error("{}", binaries_not_found_message(searched))]
    PgBinariesNotFound {
        /// Every place that was searched, in order.
        searched: Vec<String>,
    },

    /// A step of starting, driving or stopping a local test cluster failed on one node.
    #[cfg(feature = "testing")]
    #[error("local cluster: {step} failed on {node}")]
    Cluster {
        /// `primary`, `replica1`, `replica2`, ... or `cluster` for the whole.
        node: String,
        /// What was being done.
        step: ClusterStep,
        /// Why it failed.
        #[source]
        source: BoxError,
    },

    /// `rwsplit cluster up` was pointed at a directory that already holds a cluster or other files.
    #[cfg(feature = "testing")]
    #[error("cluster directory {} is in use (it is not empty); pick another --dir or run `rwsplit cluster down --dir` on it", dir.display())]
    ClusterDirInUse {
        /// The directory.
        dir: PathBuf,
    },

    /// No local cluster is running in the given directory.
    #[cfg(feature = "testing")]
    #[error("no local cluster is running in {}", dir.display())]
    ClusterNotRunning {
        /// The directory.
        dir: PathBuf,
    },

    /// A replica index passed to a local-cluster method is out of range.
    #[cfg(feature = "testing")]
    #[error("replica #{index} does not exist: the cluster has {replicas} replica(s)")]
    NoSuchReplica {
        /// The index asked for (zero-based).
        index: usize,
        /// How many replicas there are.
        replicas: usize,
    },

    /// A member index passed to a [`PatroniCluster`](crate::testing::PatroniCluster)
    /// method is out of range.
    #[cfg(feature = "testing")]
    #[error("Patroni member #{index} does not exist: the cluster has {members} member(s)")]
    NoSuchMember {
        /// The index asked for (zero-based).
        index: usize,
        /// How many members there are.
        members: usize,
    },

    /// The programs a [`PatroniCluster`](crate::testing::PatroniCluster) needs
    /// (`patroni`, `patronictl`, `etcd`) were not found.
    #[cfg(feature = "testing")]
    #[error("{}", patroni_not_found_message(missing))]
    PatroniNotFound {
        /// What is missing and every place it was looked for.
        missing: Vec<String>,
    },

    /// The MariaDB programs a [`MariaCluster`](crate::testing::MariaCluster) needs
    /// (`mariadbd`, `mariadb-install-db`) were not found.
    #[cfg(feature = "testing")]
    #[error("{}", mariadb_not_found_message(missing))]
    MariaDbNotFound {
        /// What is missing and every place it was looked for.
        missing: Vec<String>,
    },

    /// Text that should be a [`CausalToken`](crate::CausalToken) is not one (the
    /// input is not repeated: it may be long or come from a client).
    #[error("invalid causal token: {reason}")]
    InvalidCausalToken {
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Error {
    /// What a TLS failure was, in TLS terms, if this error (or one it wraps) is one:
    /// a server without TLS, a certificate not trusted or not naming the host, a
    /// client certificate refused.
    ///
    /// ```
    /// # fn demo(error: diesel_rwsplit::Error) {
    /// use diesel_rwsplit::TlsFailure;
    /// if error.tls_failure() == Some(TlsFailure::NameMismatch) {
    ///     eprintln!("the certificate does not name this host: check the URL's host");
    /// }
    /// # }
    /// ```
    pub fn tls_failure(&self) -> Option<crate::TlsFailure> {
        self.causes()
            .find_map(|cause| cause.downcast_ref::<crate::connect::TlsError>())
            .map(|tls| tls.failure)
    }

    /// The SQLSTATE the server answered with, if a server error is among the
    /// causes (say `28P01` for a password it refused). Decide by this, never by
    /// message text.
    pub fn sqlstate(&self) -> Option<&str> {
        self.causes()
            .find_map(|cause| cause.downcast_ref::<tokio_postgres::Error>())
            .and_then(|error| error.code())
            .map(|code| code.code())
    }

    /// This error and its causes, a shared cause standing for the error it holds.
    fn causes(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self);
        std::iter::from_fn(move || {
            let current = next?;
            let current = match current.downcast_ref::<crate::connection::SharedError>() {
                Some(shared) => &*shared.0 as &(dyn std::error::Error + 'static),
                None => current,
            };
            next = current.source();
            Some(current)
        })
    }
}

/// What kind of failure a node had: decided from SQLSTATEs and I/O error kinds,
/// never from message text. Everything but [`FailureKind::Saturated`] is evidence
/// against the node itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// Every connection was busy for the whole checkout timeout while the server
    /// answered (or it refused a session for too many connections, SQLSTATE 53300):
    /// busy, not dead. A replica is never ejected for it.
    Saturated,
    /// The host refused, reset or could not route the connection.
    Refused,
    /// No answer within the connect timeout (a hung or frozen host), or a pooled
    /// session that did not answer its validation in time.
    NoAnswer,
    /// The server is shutting down, starting up or in recovery without hot
    /// standby (SQLSTATE 57P01-57P03), or a session was lost (class 08).
    NotAccepting,
    /// The server refused the credentials (SQLSTATE 28000, 28P01).
    Authentication,
    /// The application's credentials provider failed (its error is the source).
    Credentials,
    /// TLS could not be negotiated or verified: [`Error::tls_failure`] says how.
    Tls,
    /// The server answered the session set-up with another error (e.g. a database
    /// that does not exist, SQLSTATE 3D000).
    Server,
    /// Anything else (an I/O error of another kind).
    Other,
}

impl FailureKind {
    /// Whether this is evidence that the node cannot serve sessions (everything but saturation).
    pub fn is_node_failure(self) -> bool {
        self != FailureKind::Saturated
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Saturated => "every connection busy (saturated)",
            FailureKind::Refused => "connection refused or reset",
            FailureKind::NoAnswer => "no answer in time",
            FailureKind::NotAccepting => "server not accepting sessions",
            FailureKind::Authentication => "authentication failed",
            FailureKind::Credentials => "the credentials provider failed",
            FailureKind::Tls => "TLS failed",
            FailureKind::Server => "server error during session set-up",
            FailureKind::Other => "connection failed",
        })
    }
}

/// The crate's own [`Error`] inside a diesel error, if there is one: an interlock
/// refusal, an unavailable primary, a read that timed out on the client.
/// Statements of a [`SwitchableConnection`](crate::SwitchableConnection) return
/// these as `diesel::result::Error::QueryBuilderError` (the only diesel variant
/// that carries a typed error); nothing was sent to the database for them.
///
/// ```
/// # use diesel_rwsplit::{rwsplit_error, Error, FailureKind};
/// let failed = diesel::result::Error::QueryBuilderError(Box::new(Error::PrimaryUnavailable {
///     node: "primary (127.0.0.1:5432)".into(),
///     kind: FailureKind::Refused,
///     source: "connection refused".into(),
/// }));
/// assert!(matches!(rwsplit_error(&failed), Some(Error::PrimaryUnavailable { .. })));
/// assert!(rwsplit_error(&diesel::result::Error::NotFound).is_none());
/// ```
pub fn rwsplit_error(error: &diesel::result::Error) -> Option<&Error> {
    match error {
        diesel::result::Error::QueryBuilderError(inner) => inner.downcast_ref::<Error>(),
        _ => None,
    }
}

/// What was being done with a node when it failed (see [`Error::Node`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeStep {
    /// Parsing its connection URL.
    ParseUrl,
    /// Preparing its connection settings when the pool is built (reading the TLS
    /// certificate and key files the URL names).
    Configure,
    /// Reaching its host (TCP) when the pool is built.
    Connect,
    /// Validating a pooled connection before handing it out.
    Validate,
    /// Checking a connection out of its pool (connecting, or waiting for one).
    Checkout,
    /// Opening a fresh session to see whether a suspected or ejected node answers.
    Probe,
    /// Reading the function catalog (`pg_proc`).
    Catalog,
}

impl fmt::Display for NodeStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeStep::ParseUrl => "parsing the connection URL",
            NodeStep::Configure => "preparing the connection settings",
            NodeStep::Connect => "reaching the host",
            NodeStep::Validate => "validating a pooled connection",
            NodeStep::Checkout => "checking out a connection",
            NodeStep::Probe => "probing with a new session",
            NodeStep::Catalog => "reading the function catalog",
        })
    }
}

/// The step of a local cluster's life that failed (see [`Error::Cluster`]).
#[cfg(feature = "testing")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterStep {
    /// Creating or owning the cluster directory, or finding the OS user to run as.
    Prepare,
    /// `initdb` of the primary.
    InitDb,
    /// `pg_basebackup` of a replica.
    BaseBackup,
    /// Writing a node's configuration.
    Configure,
    /// Spawning the server process.
    Start,
    /// Waiting for the server to accept connections.
    WaitReady,
    /// Waiting for a replica to stream from the primary.
    WaitStreaming,
    /// Stopping the server.
    Stop,
    /// Pausing or resuming WAL replay.
    Replay,
    /// Setting `recovery_min_apply_delay`.
    ApplyDelay,
    /// Sending SIGSTOP / SIGCONT.
    Freeze,
    /// Promoting a replica.
    Promote,
    /// Reading an LSN or other state.
    Query,
    /// Waiting for a replica to replay up to the primary's position.
    CatchUp,
    /// Applying the example schema's migrations.
    Migrate,
    /// Reading or writing the state file of a detached cluster.
    State,
    /// Making or writing the cluster's TLS certificates and keys.
    Tls,
    /// Creating the roles asked for with `role` / `cert_role`.
    Roles,
    /// Starting etcd or waiting for it to answer (Patroni clusters).
    Etcd,
    /// Writing a Patroni configuration, starting Patroni, or waiting for its
    /// members to run.
    Patroni,
    /// Waiting for Patroni to name a leader.
    WaitLeader,
    /// A planned switchover through Patroni's REST API.
    Switchover,
    /// Killing a member's Patroni and PostgreSQL (an unplanned failover).
    Kill,
    /// `mariadb-install-db` of a MariaDB cluster (users and database included).
    InstallDb,
    /// Setting up, starting, stopping or changing MariaDB replication on a replica.
    Replication,
}

#[cfg(feature = "testing")]
impl fmt::Display for ClusterStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClusterStep::Prepare => "preparing the directory",
            ClusterStep::InitDb => "initdb",
            ClusterStep::BaseBackup => "pg_basebackup",
            ClusterStep::Configure => "configuring",
            ClusterStep::Start => "starting the server",
            ClusterStep::WaitReady => "waiting for the server to accept connections",
            ClusterStep::WaitStreaming => "waiting for streaming replication",
            ClusterStep::Stop => "stopping the server",
            ClusterStep::Replay => "pausing or resuming WAL replay",
            ClusterStep::ApplyDelay => "setting the apply delay",
            ClusterStep::Freeze => "freezing or thawing the server",
            ClusterStep::Promote => "promoting",
            ClusterStep::Query => "querying",
            ClusterStep::CatchUp => "waiting for the replica to catch up",
            ClusterStep::Migrate => "applying migrations",
            ClusterStep::State => "reading the cluster state file",
            ClusterStep::Tls => "making TLS certificates",
            ClusterStep::Roles => "creating roles",
            ClusterStep::Etcd => "running etcd",
            ClusterStep::Patroni => "running Patroni",
            ClusterStep::WaitLeader => "waiting for a Patroni leader",
            ClusterStep::Switchover => "switching over",
            ClusterStep::Kill => "killing the member",
            ClusterStep::InstallDb => "mariadb-install-db",
            ClusterStep::Replication => "setting up or changing replication",
        })
    }
}

#[cfg(feature = "testing")]
fn binaries_not_found_message(searched: &[String]) -> String {
    not_found_message(
        "PostgreSQL server binaries (initdb, postgres, pg_basebackup) not found. Searched:",
        searched,
        "Install them, or point RWSPLIT_PG_BINDIR at their directory:\n  \
         Debian/Ubuntu: sudo apt-get install postgresql   (binaries in /usr/lib/postgresql/<version>/bin)\n  \
         macOS:         brew install postgresql@15         (then export RWSPLIT_PG_BINDIR=\"$(brew --prefix postgresql@15)/bin\")",
    )
}

#[cfg(feature = "testing")]
fn patroni_not_found_message(missing: &[String]) -> String {
    not_found_message(
        "Patroni cluster: required programs not found:",
        missing,
        "Install them (Debian/Ubuntu, as root; .ci/run does the same):\n  \
         etcd:    apt-get install etcd-server   (with a policy-rc.d that exits 101, so no daemon starts)\n  \
         Patroni: apt-get install python3-venv && /usr/bin/python3 -m venv /opt/rwsplit/patroni-venv \\\n           \
         && /opt/rwsplit/patroni-venv/bin/pip install 'patroni[etcd3]' 'psycopg[binary]'\n\
         or point RWSPLIT_PATRONI_BIN at a directory holding patroni and patronictl \
         (readable by the user the servers run as).",
    )
}

#[cfg(feature = "testing")]
fn mariadb_not_found_message(missing: &[String]) -> String {
    not_found_message(
        "MariaDB cluster: required programs not found:",
        missing,
        "Install them (Debian/Ubuntu, as root; .ci/run does the same):\n  \
         apt-get install mariadb-server   (with a policy-rc.d that exits 101, so the package starts no server;\n  \
         mariadbd lands in /usr/sbin, mariadb-install-db in /usr/bin)\n\
         or point RWSPLIT_MARIADB_BINDIR at a directory holding them.",
    )
}

/// `header`, one `  - item` line each, then `advice`.
#[cfg(feature = "testing")]
fn not_found_message(header: &str, items: &[String], advice: &str) -> String {
    let mut message = format!("{header}\n");
    for item in items {
        message.push_str("  - ");
        message.push_str(item);
        message.push('\n');
    }
    message.push_str(advice);
    message
}

/// Shorthand for `Result<T, diesel_rwsplit::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
