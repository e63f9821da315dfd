//! `MariaCluster`: a throwaway MariaDB primary plus GTID replicas.

use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};

use super::binaries::{MariaPrograms, MariaSearch};
use super::cluster::{block_in_place, blocking, prepare_dir, Secret};
use super::node::{lock, percent_encode, startup_failed, Startup};
use super::process::{self, RunAs, Watchdog};
use super::tls;
use crate::{BoxError, ClusterStep, Error, Result};

/// How many times a server is re-spawned on another port when its port was taken.
const PORT_ATTEMPTS: usize = 5;
/// Longest socket path that fits in the 107 bytes of a Unix socket address.
const MAX_SOCKET_PATH: usize = 100;
/// How long a server gets to shut down on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// The application account and the replication account.
const APP_USER: &str = "app";
const REPL_USER: &str = "repl";
/// The application database.
const APP_DATABASE: &str = "test";

/// Server settings shared by every node: fast and unsafe for throwaway data
/// (`innodb_flush_log_at_trx_commit=2`, `sync_binlog=0`, no doublewrite), a small
/// buffer pool, row-based binary logs with strict GTIDs on every node.
const BASE_SETTINGS: &str = "\
bind_address = 127.0.0.1
skip_name_resolve = ON
log_bin = mysql-bin
relay_log = relay-bin
binlog_format = ROW
gtid_strict_mode = ON
log_slave_updates = ON
innodb_flush_log_at_trx_commit = 2
sync_binlog = 0
innodb_doublewrite = 0
innodb_buffer_pool_size = 32M
innodb_log_file_size = 16M
innodb_use_native_aio = 0
performance_schema = OFF
max_connections = 200
character_set_server = utf8mb4
collation_server = utf8mb4_general_ci
";

/// Builds and starts a [`MariaCluster`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MariaClusterBuilder {
    replicas: usize,
    bindir: Option<PathBuf>,
    dir: Option<PathBuf>,
    timeout: Duration,
    settings: Vec<(String, String)>,
    tls: bool,
    tls_only: bool,
}

impl Default for MariaClusterBuilder {
    fn default() -> Self {
        MariaClusterBuilder {
            replicas: 2,
            bindir: None,
            dir: None,
            timeout: Duration::from_secs(60),
            settings: Vec::new(),
            tls: false,
            tls_only: false,
        }
    }
}

impl MariaClusterBuilder {
    /// Number of GTID replicas. Default: 2. Zero gives a lone primary.
    pub fn replicas(mut self, count: usize) -> Self {
        self.replicas = count;
        self
    }

    /// A directory searched first for `mariadbd` and `mariadb-install-db`. Default:
    /// each program is searched, in order, in `RWSPLIT_MARIADB_BINDIR`, `PATH`,
    /// `/usr/sbin`, `/usr/bin` (Debian's `mariadb-server` puts `mariadbd` in
    /// `/usr/sbin` and `mariadb-install-db` in `/usr/bin`).
    pub fn mariadb_bindir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bindir = Some(dir.into());
        self
    }

    /// Directory to build the cluster in; it must not exist or be empty, and be
    /// short (the servers' Unix sockets live in it). Default: a new private
    /// `/dev/shm/rws-XXXXXX` (or `/tmp/rws-XXXXXX` where `/dev/shm` is not writable).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Upper bound for each wait of start-up (a server accepting connections, a
    /// replica replicating and caught up). Default: 60 s.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// An extra server setting for every node, written into its option file's
    /// `[mariadbd]` group, e.g. `.setting("max_connections", "400")`. Later
    /// settings win over the harness's own. Default: none.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Serve TLS: a CA made for this cluster (`ca.crt` in the cluster directory, see
    /// [`MariaCluster::ca_cert_path`]) and a server certificate it signed, for
    /// `127.0.0.1` (IP) and `localhost` (DNS), on every node (`ssl_cert`, `ssl_key`,
    /// `ssl_ca`); the replicas replicate over TLS too (`MASTER_SSL`, the server
    /// verified against that CA). Plaintext connections stay allowed (see
    /// [`tls_only`](Self::tls_only)). Default: off.
    ///
    /// A client trusts the cluster with the CA file, e.g. through this crate's
    /// `mysql://` URL parameters:
    /// `format!("{}?require_ssl=true&ssl_ca={}", cluster.primary_url(), ca.display())`
    /// (percent-encode the path if it has `&`, `#`, `%` or `+`).
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Require TLS for every TCP connection (`require_secure_transport = ON`;
    /// implies [`tls`](Self::tls)): a plaintext login over TCP is refused (MariaDB
    /// 10.11 answers 1045, access denied). The
    /// harness's own root sessions use the Unix sockets, which the server counts
    /// as secure. Default: off.
    pub fn tls_only(mut self, tls_only: bool) -> Self {
        self.tls_only = tls_only;
        self
    }

    fn tls_on(&self) -> bool {
        self.tls || self.tls_only
    }

    /// The harness's own settings of TLS, before the user's (which win).
    fn tls_settings(&self, dir: &Path) -> Vec<(String, String)> {
        let mut settings = Vec::new();
        if self.tls_on() {
            for (name, file) in [
                ("ssl_cert", tls::SERVER_CERT),
                ("ssl_key", tls::SERVER_KEY),
                ("ssl_ca", tls::CA_CERT),
            ] {
                settings.push((name.to_owned(), dir.join(file).display().to_string()));
            }
        }
        if self.tls_only {
            settings.push(("require_secure_transport".to_owned(), "ON".to_owned()));
        }
        settings
    }

    /// Build and start the cluster. Returns once every replica's
    /// `Slave_IO_Running` and `Slave_SQL_Running` are `Yes` and it has applied
    /// everything the primary has written.
    ///
    /// Cost: about 1.5 s for a primary and two replicas. If this future is cancelled
    /// or start-up fails, whatever was started is stopped and the directory removed.
    pub async fn start(self) -> Result<MariaCluster> {
        let cluster_err = |step: ClusterStep| {
            move |source: BoxError| Error::Cluster {
                node: "cluster".into(),
                step,
                source,
            }
        };
        let programs = MariaSearch::from_env(self.bindir.clone()).find()?;
        let run_as = RunAs::detect().map_err(|e| cluster_err(ClusterStep::Prepare)(e.into()))?;
        let dir = prepare_dir(self.dir.as_deref(), run_as)?;
        let longest = dir.join(format!("replica{}.sock", self.replicas.max(1)));
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            let _ = std::fs::remove_dir_all(&dir);
            let why = format!(
                "the servers' Unix sockets live in the cluster directory, whose path is too long: {}",
                longest.display()
            );
            return Err(cluster_err(ClusterStep::Prepare)(why.into()));
        }
        let watchdog = match Watchdog::spawn(&dir) {
            Ok(watchdog) => watchdog,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(cluster_err(ClusterStep::Prepare)(e.into()));
            }
        };
        let replicas = (1..=self.replicas)
            .map(|n| MariaNode::new(&dir, &format!("replica{n}"), n as u32 + 1))
            .collect();
        let ca_cert = self.tls_on().then(|| dir.join(tls::CA_CERT));
        // From here on, dropping `cluster` stops what runs and removes the directory.
        let cluster = MariaCluster {
            primary: MariaNode::new(&dir, "primary", 1),
            replicas,
            dir,
            programs,
            run_as,
            watchdog: Some(watchdog),
            timeout: self.timeout,
            app_password: Secret(random_password()),
            repl_password: Secret(random_password()),
            installing: Mutex::new(None),
            ca_cert,
        };
        if self.tls_on() {
            tls::write_server_files_named(&cluster.dir, run_as, "diesel-rwsplit MariaCluster CA")
                .map_err(|e| cluster_err(ClusterStep::Tls)(e.into()))?;
        }
        let mut settings = self.tls_settings(&cluster.dir);
        settings.extend(self.settings.iter().cloned());
        cluster.install(&settings).await?;
        cluster.start_node(&cluster.primary, true).await?;
        for index in 0..cluster.replicas.len() {
            let node = &cluster.replicas[index];
            cluster.start_node(node, true).await?;
            cluster.configure_replication(node).await?;
        }
        for node in &cluster.replicas {
            cluster.wait_replicating(node, true).await?;
        }
        cluster.wait_for_replicas(cluster.timeout).await?;
        Ok(cluster)
    }
}

/// A throwaway MariaDB primary plus N GTID replicas, built from the machine's
/// MariaDB server programs (Debian's `mariadb-server`: `mariadbd`,
/// `mariadb-install-db`), for tests of MySQL-protocol code against real
/// replication. Feature `testing`.
///
/// ```no_run
/// # async fn demo() -> Result<(), diesel_rwsplit::Error> {
/// use std::time::Duration;
/// use diesel_rwsplit::testing::MariaCluster;
///
/// let cluster = MariaCluster::builder().replicas(2).start().await?; // ~1.5 s
/// let primary = cluster.primary_url();   // mysql://app:PASSWORD@127.0.0.1:PORT/test
/// let replicas = cluster.replica_urls();
/// cluster.pause_replication(0).await?;   // replica 0 stops applying
/// // ... write through `primary`, observe staleness on replicas[0] ...
/// cluster.resume_replication(0).await?;
/// cluster.wait_for_replicas(Duration::from_secs(5)).await?;
/// # let _ = (primary, replicas); Ok(()) }
/// ```
///
/// - Lives in a short private directory (`/dev/shm/rws-XXXXXX`, memory-backed,
///   or `/tmp/rws-XXXXXX`): per node a data directory, an option file
///   (`NAME.cnf`), a log (`NAME.log`) and a Unix socket (`NAME.sock`); each node
///   listens on a free port of 127.0.0.1 of its own, never on 3306.
/// - Every node is installed identically by `mariadb-install-db` (the primary's
///   data directory is copied), with the accounts already in place: `root@localhost`
///   without a password, reachable only through the Unix socket (the harness's
///   own account, see [`primary_admin_url`](Self::primary_admin_url)); `repl`
///   (REPLICATION SLAVE) for the replicas; and the application account `app`,
///   with a random password and SELECT, INSERT, UPDATE, DELETE, CREATE, DROP,
///   INDEX, ALTER on database `test` only, and no global privilege, so that
///   `read_only` refuses its writes on a replica (error 1290), as it would not
///   refuse root's (see "Who can write on a replica" below).
/// - Settings: `server_id` per node (primary 1, replica *n* is *n*+1),
///   `log_bin`, `binlog_format=ROW`, `gtid_strict_mode=ON`,
///   `log_slave_updates=ON`, `skip_name_resolve`, and fast, unsafe durability
///   (`innodb_flush_log_at_trx_commit=2`, `sync_binlog=0`, `innodb_doublewrite=0`,
///   a 32 MB buffer pool). Replicas: `read_only=ON`, and `CHANGE MASTER TO ...
///   MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1` from the primary's first GTID.
/// - As root, the servers run as the `postgres` OS user (or a `rwsplit-pg`
///   system account created for the purpose), like [`LocalCluster`](super::LocalCluster)'s.
/// - Dropping it stops every server it started, by pid, and removes the
///   directory, also when a test panics; a watchdog process tied to this process
///   by a pipe kills the servers and removes the directory if the process dies
///   without dropping it. Dropping blocks the current thread for the shutdown.
///
/// Replicas are addressed by zero-based index. Every fault-injection method
/// returns only once its effect can be observed.
///
/// # Who can write on a replica
///
/// Replicas run with `read_only=ON`, and `read_only` does not apply to every
/// account: it refuses writes to non-temporary tables (error 1290,
/// `ER_OPTION_PREVENTS_STATEMENT`) only to accounts without the privilege that
/// overrides it. On MySQL, and on MariaDB before 10.11, that privilege is `SUPER`
/// (MariaDB 10.5-10.10 also name it `READ ONLY ADMIN`, which `SUPER` includes
/// there); MySQL 5.7 and 8 add `super_read_only`, which refuses them too. MariaDB
/// 10.11 has no `super_read_only` (`SELECT @@super_read_only` fails with 1193):
/// there the `READ ONLY ADMIN` privilege alone lets an account write past
/// `read_only`, and `SUPER` no longer includes it (MDEV-29596). Root holds
/// every privilege, so root's sessions write on a replica; a replica that was
/// written to outside replication has diverged from its primary.
///
/// So the account an application uses against replicas must hold neither
/// `READ ONLY ADMIN` nor `SUPER` (nor `ALL PRIVILEGES ON *.*`): then `read_only` is
/// what refuses a misrouted write on a replica. `app` holds privileges on
/// database `test` only; it cannot write on a replica, whether or not its session
/// is read-only (1290: `read_only` is checked before the transaction's access
/// mode). Independently of the account, a session in a read-only transaction
/// (`SET SESSION TRANSACTION READ ONLY`, `tx_read_only=1`) refuses writes with
/// 1792 (`ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION`) even to root.
/// `tests/mariadb_harness.rs` (`only_read_only_admin_writes_past_read_only`)
/// checks each of these on a running cluster.
pub struct MariaCluster {
    dir: PathBuf,
    programs: MariaPrograms,
    run_as: RunAs,
    primary: MariaNode,
    replicas: Vec<MariaNode>,
    watchdog: Option<Watchdog>,
    timeout: Duration,
    app_password: Secret,
    repl_password: Secret,
    /// The process group of the install step running now (`mariadb-install-db`
    /// and the `mariadbd --bootstrap` it runs, or a `cp`): a start-up cancelled
    /// meanwhile kills it before removing the directory it writes in.
    installing: Mutex<Option<u32>>,
    /// The cluster CA's certificate, with TLS on.
    ca_cert: Option<PathBuf>,
}

impl fmt::Debug for MariaCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports: Vec<u16> = self.replicas.iter().map(MariaNode::port).collect();
        f.debug_struct("MariaCluster")
            .field("dir", &self.dir)
            .field("primary_port", &self.primary.port())
            .field("replica_ports", &ports)
            .field("app_password", &self.app_password)
            .field("ca_cert", &self.ca_cert)
            .field("mariadbd", &self.programs.mariadbd)
            .finish()
    }
}

impl MariaCluster {
    /// A builder: two replicas, programs searched, a fresh `/dev/shm/rws-XXXXXX`.
    pub fn builder() -> MariaClusterBuilder {
        MariaClusterBuilder::default()
    }

    /// Start a cluster with `replicas` replicas and every other default.
    pub async fn start(replicas: usize) -> Result<MariaCluster> {
        Self::builder().replicas(replicas).start().await
    }

    /// The primary's URL for the application account, over TCP:
    /// `mysql://app:PASSWORD@127.0.0.1:PORT/test`.
    pub fn primary_url(&self) -> String {
        self.primary.app_url(&self.app_password.0)
    }

    /// The replicas' URLs for the application account, in index order (as
    /// [`primary_url`](Self::primary_url)).
    pub fn replica_urls(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|node| node.app_url(&self.app_password.0))
            .collect()
    }

    /// One replica's URL for the application account.
    pub fn replica_url(&self, index: usize) -> Result<String> {
        Ok(self.replica(index)?.app_url(&self.app_password.0))
    }

    /// The certificate (PEM) of the CA made for this cluster, which signed the
    /// servers' certificate: `DIR/ca.crt`. `None` without
    /// [`tls`](MariaClusterBuilder::tls). A client that trusts it verifies the
    /// servers by `127.0.0.1` or `localhost`.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// The application account's name: `app`.
    pub fn app_user(&self) -> &str {
        APP_USER
    }

    /// The application account's password (random, made for this cluster).
    pub fn app_password(&self) -> &str {
        &self.app_password.0
    }

    /// The primary's URL for `root` through its Unix socket, for the harness
    /// itself and for set-up that needs more than the application account may do:
    /// `mysql://root@localhost/test?socket=%2Fdev%2Fshm%2Frws-XXXXXX%2Fprimary.sock`
    /// (as `mysql_async` and diesel-async read it). Root has every privilege,
    /// `READ ONLY ADMIN` included: on a replica it can write despite `read_only`.
    pub fn primary_admin_url(&self) -> String {
        self.primary.admin_url()
    }

    /// A replica's URL for `root` through its Unix socket (see
    /// [`primary_admin_url`](Self::primary_admin_url)).
    pub fn replica_admin_url(&self, index: usize) -> Result<String> {
        Ok(self.replica(index)?.admin_url())
    }

    /// The primary's Unix socket.
    pub fn primary_socket(&self) -> &Path {
        &self.primary.socket
    }

    /// A replica's Unix socket.
    pub fn replica_socket(&self, index: usize) -> Result<&Path> {
        Ok(&self.replica(index)?.socket)
    }

    /// The primary's TCP port on 127.0.0.1.
    pub fn primary_port(&self) -> u16 {
        self.primary.port()
    }

    /// A replica's TCP port on 127.0.0.1.
    pub fn replica_port(&self, index: usize) -> Result<u16> {
        Ok(self.replica(index)?.port())
    }

    /// Number of replicas.
    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pid of the primary's `mariadbd` (`None` while it is stopped).
    pub fn primary_pid(&self) -> Option<u32> {
        self.primary.pid()
    }

    /// Pid of a replica's `mariadbd` (`None` while it is stopped).
    pub fn replica_pid(&self, index: usize) -> Result<Option<u32>> {
        Ok(self.replica(index)?.pid())
    }

    /// The primary's `@@gtid_binlog_pos`: the last GTID it has written per
    /// replication domain, e.g. `0-1-42` (empty before the first write).
    pub async fn primary_gtid(&self) -> Result<String> {
        self.primary
            .query_string("SELECT @@gtid_binlog_pos")
            .await
            .map(Option::unwrap_or_default)
            .map_err(|e| self.err(&self.primary.name, ClusterStep::Query, e))
    }

    /// A replica's `@@gtid_slave_pos`: the last GTID it has applied from the
    /// primary (empty before the first).
    pub async fn replica_gtid(&self, index: usize) -> Result<String> {
        let node = self.replica(index)?;
        node.query_string("SELECT @@gtid_slave_pos")
            .await
            .map(Option::unwrap_or_default)
            .map_err(|e| self.err(&node.name, ClusterStep::Query, e))
    }

    /// Wait until replica `index` has applied everything the primary had written
    /// when this was called (`MASTER_GTID_WAIT` on the primary's `@@gtid_binlog_pos`).
    pub async fn wait_for_replica(&self, index: usize, timeout: Duration) -> Result<()> {
        let target = self.primary_gtid().await?;
        self.wait_for_gtid(self.replica(index)?, &target, Instant::now() + timeout)
            .await
    }

    /// Wait until every replica has applied everything the primary had written
    /// when this was called: each one's `@@gtid_slave_pos` reaches the primary's
    /// `@@gtid_binlog_pos` (`MASTER_GTID_WAIT`). `timeout` bounds the whole wait.
    /// Fails on a paused, stopped or frozen replica.
    pub async fn wait_for_replicas(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let target = self.primary_gtid().await?;
        for node in &self.replicas {
            self.wait_for_gtid(node, &target, deadline).await?;
        }
        Ok(())
    }

    async fn wait_for_gtid(&self, node: &MariaNode, target: &str, deadline: Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        let sql = format!(
            "SELECT MASTER_GTID_WAIT({}, {:.3})",
            quote(target),
            left.as_secs_f64()
        );
        // A frozen server would not answer at all: bound the connection too.
        let waited = tokio::time::timeout(left + Duration::from_secs(1), node.query_string(&sql));
        let outcome = match waited.await {
            Ok(Ok(Some(result))) if result == "0" => return Ok(()),
            Ok(Ok(result)) => format!("MASTER_GTID_WAIT('{target}') returned {result:?}"),
            Ok(Err(e)) => return Err(self.err(&node.name, ClusterStep::CatchUp, e)),
            Err(_) => "no answer".to_owned(),
        };
        let why = format!("{target} not applied within the timeout: {outcome}");
        Err(self.err(&node.name, ClusterStep::CatchUp, why.into()))
    }

    /// Stop applying on a replica (`STOP SLAVE SQL_THREAD`): it keeps receiving
    /// the primary's binary log into its relay log but shows nothing new, and its
    /// `@@gtid_slave_pos` stays put. Returns once `Slave_SQL_Running` is `No`.
    pub async fn pause_replication(&self, index: usize) -> Result<()> {
        let node = self.replica(index)?;
        let run = async {
            node.exec("STOP SLAVE SQL_THREAD").await?;
            self.poll_slave_status(node, |s| (s.sql_running == "No").then_some(()))
                .await
        };
        run.await
            .map_err(|e| self.err(&node.name, ClusterStep::Replication, e))
    }

    /// Resume applying on a paused replica (`START SLAVE SQL_THREAD`). Returns once
    /// `Slave_SQL_Running` is `Yes`; use [`wait_for_replica`](Self::wait_for_replica)
    /// to wait until it has caught up.
    pub async fn resume_replication(&self, index: usize) -> Result<()> {
        let node = self.replica(index)?;
        let run = async {
            node.exec("START SLAVE SQL_THREAD").await?;
            self.poll_slave_status(node, |s| (s.sql_running == "Yes").then_some(()))
                .await
        };
        run.await
            .map_err(|e| self.err(&node.name, ClusterStep::Replication, e))
    }

    /// Delay applying on a replica: each transaction is applied no earlier than
    /// `delay` after the primary committed it (`MASTER_DELAY`, whole seconds:
    /// `delay` is rounded up). The server counts from the event's timestamp, which
    /// has whole seconds too: a transaction may be applied up to one second sooner
    /// than `delay` after its commit, never sooner than that. `Duration::ZERO` removes the delay. Restarts both
    /// replication threads (`STOP SLAVE`, `CHANGE MASTER TO MASTER_DELAY = n`,
    /// `START SLAVE`), which also resumes a paused one; returns once both run and
    /// `SQL_Delay` shows the new value.
    pub async fn set_replication_delay(&self, index: usize, delay: Duration) -> Result<()> {
        let node = self.replica(index)?;
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        let run = async {
            node.exec("STOP SLAVE").await?;
            node.exec(&format!("CHANGE MASTER TO MASTER_DELAY = {seconds}"))
                .await?;
            node.exec("START SLAVE").await?;
            let want = seconds.to_string();
            self.poll_slave_status(node, |s| {
                (s.sql_running == "Yes" && s.io_running == "Yes" && s.sql_delay == want)
                    .then_some(())
            })
            .await
        };
        run.await
            .map_err(|e| self.err(&node.name, ClusterStep::Replication, e))
    }

    /// Stop a replica (SIGTERM, a normal shutdown; SIGKILL after 20 s), by pid;
    /// returns once its process is gone. Open connections fail (2013 or 4031),
    /// new ones are refused at once.
    pub async fn stop_replica(&self, index: usize) -> Result<()> {
        self.stop_node(self.replica(index)?)
    }

    /// Stop the primary (SIGTERM, a normal shutdown; SIGKILL after 20 s), by pid;
    /// returns once its process is gone. The replicas stay up, `read_only`, and
    /// keep trying to reconnect every second.
    pub async fn stop_primary(&self) -> Result<()> {
        self.stop_node(&self.primary)
    }

    /// Start a stopped replica again on its port; returns once it accepts
    /// connections and both replication threads run (the IO thread only if the
    /// primary runs). A no-op if it runs.
    pub async fn start_replica(&self, index: usize) -> Result<()> {
        let node = self.replica(index)?;
        if node.pid().is_some() {
            return Ok(());
        }
        self.start_node(node, false).await?;
        self.wait_replicating(node, self.primary.pid().is_some())
            .await
    }

    /// Start the stopped primary again on its port; returns once it accepts
    /// connections and every running replica's IO thread is connected to it
    /// again. A no-op if it runs.
    pub async fn start_primary(&self) -> Result<()> {
        if self.primary.pid().is_some() {
            return Ok(());
        }
        self.start_node(&self.primary, false).await?;
        for node in self.replicas.iter().filter(|n| n.pid().is_some()) {
            let run = self.poll_slave_status(node, |s| (s.io_running == "Yes").then_some(()));
            run.await
                .map_err(|e| self.err(&node.name, ClusterStep::Replication, e))?;
        }
        Ok(())
    }

    /// Freeze a replica (SIGSTOP to its `mariadbd`): like a hung machine, it
    /// neither answers nor closes connections; new connections hang until the
    /// client's timeout. Returns once the process is stopped.
    pub async fn freeze_replica(&self, index: usize) -> Result<()> {
        self.signal_node(self.replica(index)?, libc::SIGSTOP, true)
            .await
    }

    /// Thaw a frozen replica (SIGCONT). Returns once it runs again.
    pub async fn thaw_replica(&self, index: usize) -> Result<()> {
        self.signal_node(self.replica(index)?, libc::SIGCONT, false)
            .await
    }

    /// Freeze the primary (SIGSTOP to its `mariadbd`), as
    /// [`freeze_replica`](Self::freeze_replica) does a replica.
    pub async fn freeze_primary(&self) -> Result<()> {
        self.signal_node(&self.primary, libc::SIGSTOP, true).await
    }

    /// Thaw the frozen primary (SIGCONT). Returns once it runs again.
    pub async fn thaw_primary(&self) -> Result<()> {
        self.signal_node(&self.primary, libc::SIGCONT, false).await
    }

    /// Stop every server and remove the directory (what dropping does, with the
    /// error reported).
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> Result<()> {
        if let Some(group) = lock(&self.installing).take() {
            kill_group(group);
        }
        let nodes: Vec<&MariaNode> = self
            .replicas
            .iter()
            .chain(std::iter::once(&self.primary))
            .collect();
        // Signal every node first so they shut down in parallel, then wait for each.
        for node in &nodes {
            if let Some(pid) = node.pid() {
                let _ = process::signal_pid(pid, libc::SIGCONT);
                let _ = process::signal_pid(pid, libc::SIGTERM);
            }
        }
        let mut failed = None;
        for node in &nodes {
            if !node.stop_blocking() {
                failed = Some(node.name.clone());
            }
        }
        if let Some(name) = failed {
            return Err(self.err(&name, ClusterStep::Stop, "server did not exit".into()));
        }
        let removed = std::fs::remove_dir_all(&self.dir);
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.release();
        }
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(self.err("cluster", ClusterStep::Stop, e.into()))
            }
            _ => Ok(()),
        }
    }

    fn replica(&self, index: usize) -> Result<&MariaNode> {
        self.replicas.get(index).ok_or(Error::NoSuchReplica {
            index,
            replicas: self.replicas.len(),
        })
    }

    fn err(&self, node: &str, step: ClusterStep, source: BoxError) -> Error {
        Error::Cluster {
            node: node.to_owned(),
            step,
            source,
        }
    }

    /// Option files for every node, `mariadb-install-db` (accounts and database
    /// included, through `--extra-file`) for the primary, copies for the replicas.
    /// Nothing is in a binary log yet: every node starts from the same state.
    async fn install(&self, settings: &[(String, String)]) -> Result<()> {
        for node in std::iter::once(&self.primary).chain(&self.replicas) {
            let text = node.option_file(node.name != "primary", settings);
            std::fs::write(&node.cnf, text)
                .and_then(|()| self.run_as.own(&node.cnf))
                .and_then(|()| std::fs::create_dir_all(&node.tmp_dir))
                .and_then(|()| self.run_as.own(&node.tmp_dir))
                .map_err(|e| self.err(&node.name, ClusterStep::Configure, e.into()))?;
        }
        let setup = self.dir.join("setup.sql");
        let written =
            write_private(&setup, &self.setup_sql()).and_then(|()| self.run_as.own(&setup));
        written.map_err(|e| self.err("primary", ClusterStep::Configure, e.into()))?;

        let mut install = self.run_as.command(&self.programs.install_db);
        install
            .arg(format!("--defaults-file={}", self.primary.cnf.display()))
            .arg(format!("--datadir={}", self.primary.data_dir.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            .arg(format!("--extra-file={}", setup.display()));
        let installed = self.run_install_step(install).await;
        let _ = std::fs::remove_file(&setup);
        installed.map_err(|e| self.err("primary", ClusterStep::InstallDb, e))?;

        for node in &self.replicas {
            let mut copy = self.run_as.command(Path::new("cp"));
            copy.arg("-a")
                .arg(&self.primary.data_dir)
                .arg(&node.data_dir);
            self.run_install_step(copy)
                .await
                .map_err(|e| self.err(&node.name, ClusterStep::InstallDb, e))?;
        }
        Ok(())
    }

    /// Run an install step to completion in a process group of its own, recorded in
    /// `installing` while it runs: dropping a start-up future here leaves it running
    /// on a blocking thread, and `stop_all` must kill it (with whatever it started)
    /// before it removes the directory, or the step goes on writing in it.
    async fn run_install_step(&self, mut command: Command) -> std::result::Result<(), BoxError> {
        use std::os::unix::process::CommandExt;
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        *lock(&self.installing) = Some(child.id());
        let finished = blocking(move || {
            let output = child.wait_with_output()?;
            if output.status.success() {
                return Ok(());
            }
            let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
            if text.trim().is_empty() {
                text = String::from_utf8_lossy(&output.stdout).into_owned();
            }
            Err(std::io::Error::other(format!(
                "{}: {}",
                output.status,
                process::tail(&text, 12)
            )))
        })
        .await;
        *lock(&self.installing) = None;
        finished
    }

    /// Run once at install time, before any binary log exists: root keeps only
    /// its socket account, `repl` and `app` are made, and database `test`.
    fn setup_sql(&self) -> String {
        format!(
            "DELETE FROM mysql.global_priv WHERE User = 'root' AND Host <> 'localhost';\n\
             DELETE FROM mysql.proxies_priv WHERE User = 'root' AND Host <> 'localhost';\n\
             DELETE FROM mysql.global_priv WHERE User = '';\n\
             FLUSH PRIVILEGES;\n\
             CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY {repl};\n\
             GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'%';\n\
             CREATE DATABASE `{APP_DATABASE}`;\n\
             CREATE USER '{APP_USER}'@'%' IDENTIFIED BY {app};\n\
             GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER ON `{APP_DATABASE}`.* TO '{APP_USER}'@'%';\n",
            repl = quote(&self.repl_password.0),
            app = quote(&self.app_password.0),
        )
    }

    /// Point a replica at the primary and start replicating from the beginning
    /// of the primary's binary log (its `gtid_slave_pos` is empty).
    async fn configure_replication(&self, node: &MariaNode) -> Result<()> {
        let mut sql = format!(
            "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, \
             MASTER_USER = '{REPL_USER}', MASTER_PASSWORD = {}, \
             MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1",
            self.primary.port(),
            quote(&self.repl_password.0)
        );
        if let Some(ca) = &self.ca_cert {
            sql.push_str(&format!(
                ", MASTER_SSL = 1, MASTER_SSL_CA = {}, MASTER_SSL_VERIFY_SERVER_CERT = 1",
                quote(&ca.display().to_string())
            ));
        }
        let run = async {
            node.exec(&sql).await?;
            node.exec("START SLAVE").await
        };
        run.await
            .map_err(|e| self.err(&node.name, ClusterStep::Replication, e))
    }

    /// Wait until a replica's SQL thread runs and, if `io` is set, its IO thread
    /// is connected to the primary.
    async fn wait_replicating(&self, node: &MariaNode, io: bool) -> Result<()> {
        self.poll_slave_status(node, |s| {
            (s.sql_running == "Yes" && (!io || s.io_running == "Yes")).then_some(())
        })
        .await
        .map_err(|e| self.err(&node.name, ClusterStep::Replication, e))
    }

    /// Poll `SHOW SLAVE STATUS` until `check` accepts it; the last status (with
    /// the last IO and SQL errors) is in the error after the start-up timeout.
    async fn poll_slave_status<T>(
        &self,
        node: &MariaNode,
        check: impl Fn(&SlaveStatus) -> Option<T>,
    ) -> std::result::Result<T, BoxError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let status = node.slave_status().await?;
            if let Some(value) = check(&status) {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not reached within {:?}: Slave_IO_Running {:?}, Slave_SQL_Running {:?}, \
                     SQL_Delay {:?}, Last_IO_Error {:?}, Last_SQL_Error {:?}",
                    self.timeout,
                    status.io_running,
                    status.sql_running,
                    status.sql_delay,
                    status.last_io_error,
                    status.last_sql_error
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Spawn a node's server and wait until it accepts connections; on a port taken
    /// by someone else in the meantime, retry on a fresh port when allowed.
    async fn start_node(&self, node: &MariaNode, may_move: bool) -> Result<()> {
        for _ in 0..PORT_ATTEMPTS {
            if may_move || node.port() == 0 {
                let port = process::free_port()
                    .map_err(|e| self.err(&node.name, ClusterStep::Start, e.into()))?;
                *lock(&node.port) = port;
            }
            node.spawn(&self.programs.mariadbd, self.run_as)
                .map_err(|e| self.err(&node.name, ClusterStep::Start, e.into()))?;
            match node.wait_ready(self.timeout).await {
                Ok(Startup::Ready) => return Ok(()),
                Ok(Startup::PortTaken) if may_move => {
                    block_in_place(|| node.stop_blocking());
                }
                Ok(Startup::PortTaken) => {
                    block_in_place(|| node.stop_blocking());
                    let why = format!("port {} is taken by another process", node.port());
                    return Err(self.err(&node.name, ClusterStep::Start, why.into()));
                }
                Err(e) => {
                    block_in_place(|| node.stop_blocking());
                    return Err(self.err(&node.name, ClusterStep::WaitReady, e));
                }
            }
        }
        Err(self.err(
            &node.name,
            ClusterStep::Start,
            "no free port after several attempts".into(),
        ))
    }

    fn stop_node(&self, node: &MariaNode) -> Result<()> {
        if block_in_place(|| node.stop_blocking()) {
            Ok(())
        } else {
            Err(self.err(&node.name, ClusterStep::Stop, "server did not exit".into()))
        }
    }

    async fn signal_node(
        &self,
        node: &MariaNode,
        signal: libc::c_int,
        stopped: bool,
    ) -> Result<()> {
        let run = async {
            let pid = node.pid().ok_or("server is not running")?;
            // One process, many threads: kill() reaches the whole thread group.
            process::signal_pid(pid, signal)?;
            super::node::poll_until(self.timeout, "process state", || async {
                let done =
                    process::is_gone(pid) || (process::process_state(pid) == Some('T')) == stopped;
                Ok(done.then_some(()))
            })
            .await
        };
        run.await
            .map_err(|e| self.err(&node.name, ClusterStep::Freeze, e))
    }
}

impl Drop for MariaCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop_all() {
            // Drop cannot fail; the watchdog is still there to finish the job.
            eprintln!("diesel_rwsplit::testing::MariaCluster: {e}");
        }
    }
}

/// The parts of `SHOW SLAVE STATUS` the harness looks at.
#[derive(Debug, Default)]
struct SlaveStatus {
    io_running: String,
    sql_running: String,
    sql_delay: String,
    last_io_error: String,
    last_sql_error: String,
}

/// One `mariadbd` of a cluster.
#[derive(Debug)]
struct MariaNode {
    name: String,
    server_id: u32,
    port: Mutex<u16>,
    data_dir: PathBuf,
    cnf: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// `NAME.pid` at the top of the cluster directory, written by the harness: the
    /// watchdog kills the process it names if this process dies.
    pid_file: PathBuf,
    /// Its own temporary directory: installs and servers of clusters started at
    /// the same time collided in the shared `/tmp` (a temporary table of one
    /// removed by another, and `mariadb-install-db` aborting).
    tmp_dir: PathBuf,
    process: Mutex<Option<Child>>,
}

impl MariaNode {
    fn new(dir: &Path, name: &str, server_id: u32) -> Self {
        MariaNode {
            name: name.to_owned(),
            server_id,
            port: Mutex::new(0),
            data_dir: dir.join(name),
            cnf: dir.join(format!("{name}.cnf")),
            socket: dir.join(format!("{name}.sock")),
            log: dir.join(format!("{name}.log")),
            pid_file: dir.join(format!("{name}.pid")),
            tmp_dir: dir.join(format!("{name}.tmp")),
            process: Mutex::new(None),
        }
    }

    fn port(&self) -> u16 {
        *lock(&self.port)
    }

    fn pid(&self) -> Option<u32> {
        lock(&self.process).as_ref().map(Child::id)
    }

    fn app_url(&self, password: &str) -> String {
        format!(
            "mysql://{APP_USER}:{}@127.0.0.1:{}/{APP_DATABASE}",
            percent_encode(password),
            self.port()
        )
    }

    fn admin_url(&self) -> String {
        format!(
            "mysql://root@localhost/{APP_DATABASE}?socket={}",
            percent_encode(&self.socket.to_string_lossy())
        )
    }

    /// The node's option file (the port is given on the command line).
    fn option_file(&self, replica: bool, settings: &[(String, String)]) -> String {
        let mut text = format!(
            "# Written by diesel_rwsplit::testing::MariaCluster.\n[mariadbd]\n\
             datadir = {}\nsocket = {}\npid_file = {}\nserver_id = {}\ntmpdir = {}\n",
            self.data_dir.display(),
            self.socket.display(),
            self.data_dir.join("mariadbd.pid").display(),
            self.server_id,
            self.tmp_dir.display(),
        );
        text.push_str(BASE_SETTINGS);
        if replica {
            text.push_str("read_only = ON\n");
        }
        for (name, value) in settings {
            text.push_str(&format!("{name} = {value}\n"));
        }
        text
    }

    /// Spawn `mariadbd` in its own process group (a Ctrl-C aimed at the test run
    /// does not reach it) and record its pid for the watchdog.
    fn spawn(&self, mariadbd: &Path, run_as: RunAs) -> std::io::Result<()> {
        use std::os::unix::process::CommandExt;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = run_as
            .command(mariadbd)
            .arg(format!("--defaults-file={}", self.cnf.display()))
            .arg(format!("--port={}", self.port()))
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        let recorded = std::fs::write(&self.pid_file, format!("{}\n", child.id()));
        *lock(&self.process) = Some(child);
        recorded
    }

    /// Wait until the server accepts root's connections on its socket.
    async fn wait_ready(&self, timeout: Duration) -> std::result::Result<Startup, BoxError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last_error = match self.admin().await {
                Ok(conn) => {
                    let _ = conn.disconnect().await;
                    return Ok(Startup::Ready);
                }
                Err(e) => e,
            };
            if let Some(outcome) =
                startup_failed(self.has_exited(), &self.log, deadline, timeout, &last_error)
            {
                return outcome;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn has_exited(&self) -> bool {
        match lock(&self.process).as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Stop the server (SIGTERM by pid, SIGKILL after a grace period) and wait
    /// until it is gone. Blocking.
    fn stop_blocking(&self) -> bool {
        let taken = lock(&self.process).take();
        let stopped = match taken {
            None => true,
            Some(mut child) => process::stop_by_sigterm(child.id(), Some(&mut child), STOP_GRACE),
        };
        let _ = std::fs::remove_file(&self.pid_file);
        stopped
    }

    /// A fresh connection as root through the Unix socket.
    async fn admin(&self) -> std::result::Result<Conn, mysql_async::Error> {
        let opts = OptsBuilder::default()
            .socket(Some(self.socket.to_string_lossy()))
            .user(Some("root"))
            .prefer_socket(false);
        Conn::new(opts).await
    }

    async fn exec(&self, sql: &str) -> std::result::Result<(), BoxError> {
        let mut conn = self.admin().await?;
        let result = conn.query_drop(sql).await;
        let _ = conn.disconnect().await;
        Ok(result?)
    }

    /// First column of the first row of `sql`, as text (`None` for NULL or no row).
    async fn query_string(&self, sql: &str) -> std::result::Result<Option<String>, BoxError> {
        let mut conn = self.admin().await?;
        let result = conn.query_first::<Row, _>(sql).await;
        let _ = conn.disconnect().await;
        Ok(result?.and_then(|row| row_text(&row, 0)))
    }

    async fn slave_status(&self) -> std::result::Result<SlaveStatus, BoxError> {
        let mut conn = self.admin().await?;
        let result = conn.query_first::<Row, _>("SHOW SLAVE STATUS").await;
        let _ = conn.disconnect().await;
        let Some(row) = result? else {
            return Ok(SlaveStatus::default());
        };
        let column = |name: &str| {
            row.columns_ref()
                .iter()
                .position(|c| c.name_str() == name)
                .and_then(|i| row_text(&row, i))
                .unwrap_or_default()
        };
        Ok(SlaveStatus {
            io_running: column("Slave_IO_Running"),
            sql_running: column("Slave_SQL_Running"),
            sql_delay: column("SQL_Delay"),
            last_io_error: column("Last_IO_Error"),
            last_sql_error: column("Last_SQL_Error"),
        })
    }
}

/// SIGKILL a process group and wait (up to 5 s) until none of its processes runs.
fn kill_group(group: u32) {
    let _ = process::signal_group(group, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while group_runs(group) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a process of group `group` still runs (zombies do not count).
fn group_runs(group: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            // Fields after the name: state, ppid, pgrp.
            let mut fields = stat[close + 1..].split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|p| p.parse::<u32>().ok());
            pgrp == Some(group) && !matches!(state, Some("Z" | "X"))
        })
}

/// A column of a text-protocol row as a string (`None` for NULL).
fn row_text(row: &Row, index: usize) -> Option<String> {
    match row.as_ref(index)? {
        mysql_async::Value::NULL => None,
        mysql_async::Value::Bytes(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        other => Some(other.as_sql(true)),
    }
}

/// A single-quoted SQL string literal (backslashes and quotes escaped).
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// 32 random hex digits (std's per-process random hash keys, the time and a counter).
fn random_password() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let half = |salt: u64| {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u64(count);
        hasher.write_u64(salt);
        hasher.write_u32(std::process::id());
        hasher.finish()
    };
    format!("{:016x}{:016x}", half(1), half(2))
}

/// Write a file only its owner can read (it holds passwords).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_option_files_and_debug_keep_what_they_should() {
        let node = MariaNode::new(Path::new("/dev/shm/rws-abc"), "replica1", 2);
        *lock(&node.port) = 41234;
        assert_eq!(
            node.app_url("p@ss"),
            "mysql://app:p%40ss@127.0.0.1:41234/test"
        );
        let admin = node.admin_url();
        assert_eq!(
            admin,
            "mysql://root@localhost/test?socket=%2Fdev%2Fshm%2Frws-abc%2Freplica1.sock"
        );
        let opts = mysql_async::Opts::from_url(&admin).unwrap();
        assert_eq!(opts.socket(), Some("/dev/shm/rws-abc/replica1.sock"));
        let cnf = node.option_file(true, &[("max_connections".into(), "7".into())]);
        for line in [
            "server_id = 2",
            "read_only = ON",
            "gtid_strict_mode = ON",
            "socket = /dev/shm/rws-abc/replica1.sock",
            "max_connections = 7",
        ] {
            assert!(cnf.lines().any(|l| l == line), "{line:?} not in\n{cnf}");
        }
        assert!(!node.option_file(false, &[]).contains("read_only"));
        assert_eq!(quote("a'b\\c"), "'a\\'b\\\\c'");
        let (a, b) = (random_password(), random_password());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(!format!("{:?}", Secret(a.clone())).contains(&a));
    }
}
