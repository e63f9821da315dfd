//! `LocalCluster`: a throwaway primary plus streaming replicas.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::binaries::Search;
use super::node::{lock, poll_until, Node, Startup};
use super::process::{self, RunAs, Watchdog};
use super::tls;
use crate::{BoxError, ClusterStep, Error, Lsn, Result};

/// Name of the file in the cluster directory that lets `attach` find a detached cluster.
const STATE_FILE: &str = "cluster.state";
/// How many times a server is re-spawned on another port when its port was taken.
const PORT_ATTEMPTS: usize = 5;

/// Server settings shared by every node. `fsync=off` is safe for throwaway data and
/// makes start-up fast; `synchronous_commit` stays on because turning it off adds
/// about 200 ms of replica lag (design section 5). A short
/// `wal_retrieve_retry_interval` (default 5 s) lets replicas stream again soon after
/// the primary comes back, which `start_primary` waits for.
const BASE_SETTINGS: &str = "
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
full_page_writes = off
synchronous_commit = on
wal_level = replica
max_wal_senders = 16
max_replication_slots = 16
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 100ms
max_connections = 200
shared_buffers = 32MB
logging_collector = off
";

const HBA: &str = "\
# Trust, and on the loopback address only: the cluster is a private throwaway.
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
";

/// Longest cluster directory that can hold the servers' Unix sockets
/// (`DIR/.s.PGSQL.NNNNN` must fit in the 107 bytes of a socket address).
const MAX_SOCKET_DIR: usize = 90;

/// A password, kept out of `Debug` output.
#[derive(Clone)]
pub(super) struct Secret(pub(super) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// How clients get in: the builder's TLS and authentication options.
#[derive(Debug, Clone, Default)]
struct Access {
    tls: bool,
    tls_only: bool,
    password_auth: bool,
    roles: Vec<(String, Secret)>,
    cert_roles: Vec<String>,
}

impl Access {
    /// Whether the servers run with `ssl = on`.
    fn tls_on(&self) -> bool {
        self.tls || self.tls_only || !self.cert_roles.is_empty()
    }

    /// Whether the superuser's TCP login without TLS or password is closed, so that
    /// the harness and replication go through a Unix socket instead.
    fn uses_socket(&self) -> bool {
        self.tls_only || self.password_auth
    }

    /// `pg_hba.conf`: exactly the historical trust file unless an option changes it.
    fn hba(&self) -> String {
        if !self.tls_on() && !self.password_auth {
            return HBA.to_owned();
        }
        let mut hba = String::from("# Written by diesel_rwsplit::testing::LocalCluster.\n");
        for role in &self.cert_roles {
            hba.push_str(&format!(
                "hostssl all \"{role}\" 127.0.0.1/32 cert\nhostnossl all \"{role}\" 127.0.0.1/32 reject\n"
            ));
        }
        if self.uses_socket() {
            hba.push_str("local all all trust\nlocal replication all trust\n");
        }
        let kind = if self.tls_only { "hostssl" } else { "host" };
        let method = if self.password_auth {
            "scram-sha-256"
        } else {
            "trust"
        };
        hba.push_str(&format!(
            "{kind} all all 127.0.0.1/32 {method}\n{kind} replication all 127.0.0.1/32 {method}\n"
        ));
        if self.tls_only {
            hba.push_str(
                "host all all 127.0.0.1/32 reject\nhost replication all 127.0.0.1/32 reject\n",
            );
        }
        hba
    }

    /// `postgresql.conf` lines for these options (none by default).
    fn settings(&self, dir: &Path) -> String {
        let quoted =
            |path: PathBuf| format!("'{}'", path.display().to_string().replace('\'', "''"));
        let mut conf = String::new();
        if self.uses_socket() {
            conf.push_str(&format!(
                "unix_socket_directories = {}\n",
                quoted(dir.to_path_buf())
            ));
        }
        if self.tls_on() {
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\nssl_ca_file = {}\n",
                quoted(dir.join(tls::SERVER_CERT)),
                quoted(dir.join(tls::SERVER_KEY)),
                quoted(dir.join(tls::CA_CERT)),
            ));
        }
        if self.password_auth {
            conf.push_str("password_encryption = 'scram-sha-256'\n");
        }
        conf
    }

    /// The SQL that creates the roles on the primary.
    fn roles_sql(&self) -> String {
        let grants = |role: &str| {
            format!(
                "GRANT CREATE ON SCHEMA public TO \"{role}\";\nGRANT pg_read_all_stats TO \"{role}\";\n"
            )
        };
        let mut sql = String::new();
        for (role, password) in &self.roles {
            sql.push_str(&format!(
                "CREATE ROLE \"{role}\" LOGIN PASSWORD '{}';\n",
                password.0.replace('\'', "''")
            ));
            sql.push_str(&grants(role));
        }
        for role in &self.cert_roles {
            sql.push_str(&format!("CREATE ROLE \"{role}\" LOGIN;\n"));
            sql.push_str(&grants(role));
        }
        sql
    }

    /// Role names go unescaped into pg_hba.conf, file names and certificates.
    fn check_names(&self) -> std::result::Result<(), String> {
        let names = self
            .roles
            .iter()
            .map(|(name, _)| name)
            .chain(&self.cert_roles);
        for name in names {
            let valid = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !valid {
                return Err(format!(
                    "role name {name:?}: use 1 to 63 ASCII letters, digits, `_`, `-` or `.`"
                ));
            }
        }
        Ok(())
    }
}

/// The directory holding the Unix sockets must make short, plain socket paths.
fn check_socket_dir(dir: &Path) -> std::result::Result<(), String> {
    let text = dir.to_string_lossy();
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.'));
    if text.len() > MAX_SOCKET_DIR || !plain {
        return Err(format!(
            "with tls_only or password_auth the harness reaches the servers through Unix sockets \
             in the cluster directory, whose path must be at most {MAX_SOCKET_DIR} bytes of ASCII \
             letters, digits, `/`, `_`, `-` or `.`: {text}"
        ));
    }
    Ok(())
}

/// Builds and starts a [`LocalCluster`].
#[derive(Debug, Clone)]
#[must_use]
pub struct LocalClusterBuilder {
    replicas: usize,
    bindir: Option<PathBuf>,
    dir: Option<PathBuf>,
    detached: bool,
    timeout: Duration,
    settings: Vec<(String, String)>,
    access: Access,
}

impl Default for LocalClusterBuilder {
    fn default() -> Self {
        LocalClusterBuilder {
            replicas: 2,
            bindir: None,
            dir: None,
            detached: false,
            timeout: Duration::from_secs(60),
            settings: Vec::new(),
            access: Access::default(),
        }
    }
}

impl LocalClusterBuilder {
    /// Number of hot-standby replicas. Default: 2. Zero gives a lone primary.
    pub fn replicas(mut self, count: usize) -> Self {
        self.replicas = count;
        self
    }

    /// Directory of the PostgreSQL server binaries. Default: searched, in order,
    /// `RWSPLIT_PG_BINDIR`, `pg_config --bindir`, `PATH`, `/usr/lib/postgresql/*/bin`
    /// (newest first).
    pub fn pg_bindir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bindir = Some(dir.into());
        self
    }

    /// Directory to build the cluster in; it must not exist or be empty. Default: a
    /// new private `/dev/shm/rws-XXXXXX`
    /// (or `/tmp/rws-XXXXXX` where `/dev/shm` is not writable).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Leave the servers running when the `LocalCluster` is dropped (what
    /// `rwsplit cluster up` does); stop them later with [`LocalCluster::attach`] and
    /// [`LocalCluster::shutdown`]. Default: `false`, everything stops on drop.
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }

    /// Upper bound for each wait of start-up (a server accepting connections, a
    /// replica streaming). Default: 60 s.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// An extra `postgresql.conf` setting for every node, e.g.
    /// `.setting("max_connections", "400")`. Default: none.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Serve TLS: `ssl = on` on every node, with a certificate authority made for
    /// this cluster (a fresh key pair, `ca.crt` and `ca.key` in the cluster
    /// directory; see [`LocalCluster::ca_cert_path`]) and a server certificate
    /// signed by it for `127.0.0.1` (IP SAN) and `localhost` (DNS SAN).
    /// `ssl_ca_file` names the CA, so the servers verify client certificates.
    /// Plaintext connections stay allowed (see [`tls_only`](Self::tls_only)).
    /// Default: `false`.
    pub fn tls(mut self, tls: bool) -> Self {
        self.access.tls = tls;
        self
    }

    /// Require TLS for every TCP connection (implies [`tls`](Self::tls)): pg_hba.conf
    /// has only `hostssl` lines for TCP, then `host all all 127.0.0.1/32 reject`,
    /// so a plaintext TCP login fails with SQLSTATE 28000. The harness itself (and
    /// replication) then connects through a Unix socket in the cluster directory,
    /// and [`LocalCluster::primary_url`] names that socket. Default: `false`.
    pub fn tls_only(mut self, tls_only: bool) -> Self {
        self.access.tls_only = tls_only;
        self
    }

    /// Authenticate TCP logins with `scram-sha-256` (and `password_encryption =
    /// scram-sha-256`): a wrong password fails with SQLSTATE 28P01. Log in as a
    /// role made with [`role`](Self::role). The superuser `postgres` has no password:
    /// the harness (and replication) connects through a Unix socket in the cluster
    /// directory, and [`LocalCluster::primary_url`] names that socket.
    /// Default: `false` (trust).
    pub fn password_auth(mut self, password_auth: bool) -> Self {
        self.access.password_auth = password_auth;
        self
    }

    /// Create a `LOGIN` role `name` with a SCRAM password `password` on the primary
    /// once it runs (replicas get it by replication). It may create tables in
    /// schema `public` of database `postgres` and is a member of
    /// `pg_read_all_stats` (it sees `pg_stat_ssl` and `pg_stat_activity` of every
    /// session). It logs in with the password under
    /// [`password_auth`](Self::password_auth), and with any password or none
    /// under trust. Use [`LocalCluster::primary_url_as`] for its URLs. May be
    /// called several times. Names: 1 to 63 ASCII letters, digits, `_`, `-`, `.`.
    /// Default: no roles.
    pub fn role(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.access
            .roles
            .push((name.into(), Secret(password.into())));
        self
    }

    /// Create a `LOGIN` role `name` that logs in over TCP only with a client
    /// certificate (implies [`tls`](Self::tls)): pg_hba.conf starts with
    /// `hostssl all NAME 127.0.0.1/32 cert` (and refuses it without TLS). Its
    /// certificate (CN = `name`, signed by the cluster's CA) and PKCS#8 key are
    /// written in the cluster directory, see [`LocalCluster::client_cert`]. Same
    /// grants and names as [`role`](Self::role). May be called several times.
    /// Default: no such roles.
    pub fn cert_role(mut self, name: impl Into<String>) -> Self {
        self.access.cert_roles.push(name.into());
        self
    }

    /// Build and start the cluster. Returns once every replica is streaming.
    ///
    /// Cost: about 2 s for a primary and two replicas (initdb is most of it).
    /// If this future is cancelled, or start-up fails, whatever was started is
    /// stopped and the directory removed (unless `detached`, in which case a
    /// cancelled start-up may leave servers for `rwsplit cluster down`).
    pub async fn start(self) -> Result<LocalCluster> {
        let cluster_err = |step: ClusterStep| {
            move |source: BoxError| Error::Cluster {
                node: "cluster".into(),
                step,
                source,
            }
        };
        self.access
            .check_names()
            .map_err(|e| cluster_err(ClusterStep::Roles)(e.into()))?;
        let bindir = Search::from_env(self.bindir.clone()).find()?;
        let run_as = RunAs::detect().map_err(|e| cluster_err(ClusterStep::Prepare)(e.into()))?;
        if let (true, Some(dir)) = (self.access.uses_socket(), self.dir.as_deref()) {
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
            check_socket_dir(&dir).map_err(|e| cluster_err(ClusterStep::Prepare)(e.into()))?;
        }
        let dir = prepare_dir(self.dir.as_deref(), run_as)?;
        let socket_dir = self.access.uses_socket().then(|| dir.clone());
        if let Some(socket_dir) = &socket_dir {
            if let Err(e) = check_socket_dir(socket_dir) {
                let _ = std::fs::remove_dir_all(socket_dir);
                return Err(cluster_err(ClusterStep::Prepare)(e.into()));
            }
        }
        let watchdog = if self.detached {
            None
        } else {
            Some(Watchdog::spawn(&dir).map_err(|e| cluster_err(ClusterStep::Prepare)(e.into()))?)
        };
        let mut cluster = LocalCluster {
            primary: Node::new(&dir, "primary", 0).with_socket_dir(socket_dir.clone()),
            ca_cert: self.access.tls_on().then(|| dir.join(tls::CA_CERT)),
            cert_roles: self.access.cert_roles.clone(),
            socket_dir,
            dir,
            bindir,
            run_as,
            replicas: Vec::new(),
            watchdog,
            detached: false,
            timeout: self.timeout,
        };
        cluster.init_primary(&self.settings, &self.access).await?;
        for index in 0..self.replicas {
            cluster.add_replica(index).await?;
        }
        for index in 0..self.replicas {
            cluster.wait_streaming(index).await?;
        }
        cluster
            .write_state()
            .map_err(|e| cluster.err("cluster", ClusterStep::State, e.into()))?;
        cluster.detached = self.detached;
        Ok(cluster)
    }
}

/// A throwaway PostgreSQL primary plus N hot-standby streaming replicas, built from
/// the machine's PostgreSQL server binaries, for tests, examples and benchmarks.
///
/// - Lives in a short private directory (`/dev/shm/rws-XXXXXX`, memory-backed, or
///   `/tmp/rws-XXXXXX`), on free loopback
///   ports chosen by itself, so many clusters run at once. Trust auth on 127.0.0.1
///   only by default (see [`LocalClusterBuilder::tls`], [`tls_only`](LocalClusterBuilder::tls_only),
///   [`password_auth`](LocalClusterBuilder::password_auth), [`role`](LocalClusterBuilder::role)
///   and [`cert_role`](LocalClusterBuilder::cert_role) for TLS and real
///   authentication); one physical replication slot per replica; `fsync=off`,
///   `synchronous_commit=on`; `pg_stat_statements` preloaded and created when the
///   machine has it.
/// - As root, the servers run as the `postgres` OS user (or a `rwsplit-pg` system
///   account created for the purpose).
/// - Dropping it stops every server it started, by pid, and removes the directory,
///   also when a test panics. A watchdog process tied to this process by a pipe
///   does the same if the process dies without dropping it (`process::exit`,
///   SIGKILL, a `static` that is never dropped).
/// - Start-up of a primary and two replicas takes about 2 s; shutdown about 0.3 s.
///   Dropping blocks the current thread for the shutdown.
///
/// Replicas are addressed by zero-based index. Every fault-injection method returns
/// only once its effect can be observed.
pub struct LocalCluster {
    dir: PathBuf,
    /// The cluster CA's certificate, when the servers run TLS.
    ca_cert: Option<PathBuf>,
    /// Roles that log in with a client certificate.
    cert_roles: Vec<String>,
    /// Where the harness reaches the servers' Unix sockets (tls_only, password_auth).
    socket_dir: Option<PathBuf>,
    bindir: PathBuf,
    run_as: RunAs,
    primary: Node,
    replicas: Vec<Node>,
    watchdog: Option<Watchdog>,
    detached: bool,
    timeout: Duration,
}

impl fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCluster")
            .field("dir", &self.dir)
            .field("primary", &self.primary.url())
            .field("replicas", &self.replica_urls())
            .field("detached", &self.detached)
            .finish()
    }
}

impl LocalCluster {
    /// A builder: two replicas, binaries searched, a fresh `/dev/shm/rws-XXXXXX`.
    pub fn builder() -> LocalClusterBuilder {
        LocalClusterBuilder::default()
    }

    /// Start a cluster with `replicas` replicas and every other default.
    pub async fn start(replicas: usize) -> Result<LocalCluster> {
        Self::builder().replicas(replicas).start().await
    }

    /// Connection URL of the primary for the superuser `postgres`, which needs no
    /// password and no TLS: `postgres://postgres@127.0.0.1:PORT/postgres` by
    /// default and with [`tls`](LocalClusterBuilder::tls) alone (trust over TCP).
    /// With [`tls_only`](LocalClusterBuilder::tls_only) or
    /// [`password_auth`](LocalClusterBuilder::password_auth), TCP logins need TLS
    /// or a password, so this URL names the server's Unix socket in the cluster
    /// directory instead (trust for local connections only):
    /// `postgres://postgres@%2Fdev%2Fshm%2Frws-XXXXXX:PORT/postgres`, which
    /// tokio-postgres, diesel-async and libpq all read. For TCP logins as a role,
    /// see [`primary_url_as`](Self::primary_url_as).
    pub fn primary_url(&self) -> String {
        self.primary.url()
    }

    /// Connection URLs of the replicas for the superuser, in index order (TCP or
    /// Unix socket, as [`primary_url`](Self::primary_url) says).
    pub fn replica_urls(&self) -> Vec<String> {
        self.replicas.iter().map(Node::url).collect()
    }

    /// Connection URL of one replica for the superuser (see
    /// [`replica_urls`](Self::replica_urls)).
    pub fn replica_url(&self, index: usize) -> Result<String> {
        Ok(self.replica(index)?.url())
    }

    /// TCP connection URL of the primary for `user`:
    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/postgres` (user and password
    /// percent-encoded; no `:PASSWORD` when `None`), with no `sslmode` or other
    /// option: append `?sslmode=require` (or what the client understands) yourself.
    pub fn primary_url_as(&self, user: &str, password: Option<&str>) -> String {
        self.primary.tcp_url_as(user, password)
    }

    /// TCP connection URLs of the replicas for `user`, in index order, as
    /// [`primary_url_as`](Self::primary_url_as) makes them.
    pub fn replica_urls_as(&self, user: &str, password: Option<&str>) -> Vec<String> {
        self.replicas
            .iter()
            .map(|node| node.tcp_url_as(user, password))
            .collect()
    }

    /// The PEM certificate of the cluster's CA, which signed the servers' and the
    /// client certificates (`None` without TLS). Clients verifying the servers
    /// (`sslmode=verify-ca`, or `verify-full` for `127.0.0.1` / `localhost`) trust it.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// The client certificate and its PKCS#8 key (both PEM files in the cluster
    /// directory, mode 0600, owned by the user of the process that started the
    /// cluster) of a role made with [`cert_role`](LocalClusterBuilder::cert_role);
    /// `None` for any other name.
    pub fn client_cert(&self, role: &str) -> Option<(PathBuf, PathBuf)> {
        self.cert_roles
            .iter()
            .any(|r| r == role)
            .then(|| tls::client_paths(&self.dir, role))
    }

    /// Number of replicas.
    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of the server binaries in use.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Pid of the primary's postmaster (`None` if it is not running).
    pub fn primary_pid(&self) -> Option<u32> {
        self.primary.pid()
    }

    /// Pid of a replica's postmaster (`None` if it is stopped).
    pub fn replica_pid(&self, index: usize) -> Result<Option<u32>> {
        Ok(self.replica(index)?.pid())
    }

    /// Current WAL write position of the primary (`pg_current_wal_lsn()`).
    pub async fn primary_lsn(&self) -> Result<Lsn> {
        self.primary
            .query_lsn("SELECT pg_current_wal_lsn()")
            .await
            .and_then(|lsn| lsn.ok_or_else(|| "no LSN returned".into()))
            .map_err(|e| self.err("primary", ClusterStep::Query, e))
    }

    /// Last WAL position a replica has replayed (`pg_last_wal_replay_lsn()`).
    pub async fn replay_lsn(&self, index: usize) -> Result<Lsn> {
        self.replica_lsn(index, "SELECT pg_last_wal_replay_lsn()")
            .await
    }

    /// Last WAL position a replica has received and flushed (`pg_last_wal_receive_lsn()`).
    pub async fn receive_lsn(&self, index: usize) -> Result<Lsn> {
        self.replica_lsn(index, "SELECT pg_last_wal_receive_lsn()")
            .await
    }

    async fn replica_lsn(&self, index: usize, sql: &str) -> Result<Lsn> {
        let node = self.replica(index)?;
        node.query_lsn(sql)
            .await
            .and_then(|lsn| lsn.ok_or_else(|| "not in recovery: no replica LSN".into()))
            .map_err(|e| self.err(&node.name, ClusterStep::Query, e))
    }

    /// Wait until replica `index` has replayed everything the primary had written
    /// when this was called.
    pub async fn wait_for_replica(&self, index: usize, timeout: Duration) -> Result<()> {
        let target = self.primary_lsn().await?;
        let node = self.replica(index)?;
        poll_until(timeout, "replay position", || async {
            let replayed = node.query_lsn("SELECT pg_last_wal_replay_lsn()").await?;
            Ok(replayed.filter(|lsn| *lsn >= target).map(|_| ()))
        })
        .await
        .map_err(|e| self.err(&node.name, ClusterStep::CatchUp, e))
    }

    /// Wait until every replica has replayed everything the primary had written
    /// when this was called (fails on a paused, stopped or frozen replica).
    pub async fn wait_for_replicas(&self, timeout: Duration) -> Result<()> {
        for index in 0..self.replicas.len() {
            self.wait_for_replica(index, timeout).await?;
        }
        Ok(())
    }

    /// Pause WAL replay on a replica (`pg_wal_replay_pause()`): it keeps receiving
    /// but shows nothing new. Returns once the pause has taken effect.
    pub async fn pause_replay(&self, index: usize) -> Result<()> {
        self.set_replay(index, "pg_wal_replay_pause", "paused")
            .await
    }

    /// Resume WAL replay on a replica. Returns once replay runs again.
    pub async fn resume_replay(&self, index: usize) -> Result<()> {
        self.set_replay(index, "pg_wal_replay_resume", "not paused")
            .await
    }

    async fn set_replay(&self, index: usize, function: &str, state: &str) -> Result<()> {
        let node = self.replica(index)?;
        let run = async {
            node.query_text(&format!("SELECT {function}()")).await?;
            poll_until(self.timeout, "replay pause state", || async {
                let now = node
                    .query_text("SELECT pg_get_wal_replay_pause_state()")
                    .await?;
                Ok((now.as_deref() == Some(state)).then_some(()))
            })
            .await
        };
        run.await
            .map_err(|e| self.err(&node.name, ClusterStep::Replay, e))
    }

    /// Delay WAL apply on a replica by `delay` (`recovery_min_apply_delay`, applied
    /// by a configuration reload, no restart). `Duration::ZERO` removes the delay.
    /// Returns once the server reports the new setting.
    pub async fn set_apply_delay(&self, index: usize, delay: Duration) -> Result<()> {
        let node = self.replica(index)?;
        let millis = delay.as_millis();
        let run = async {
            node.query_text(&format!(
                "ALTER SYSTEM SET recovery_min_apply_delay = '{millis}ms'"
            ))
            .await?;
            node.query_text("SELECT pg_reload_conf()").await?;
            poll_until(self.timeout, "recovery_min_apply_delay", || async {
                let now = node
                    .query_text(
                        "SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'",
                    )
                    .await?;
                Ok((now == Some(millis.to_string())).then_some(()))
            })
            .await
        };
        run.await
            .map_err(|e| self.err(&node.name, ClusterStep::ApplyDelay, e))
    }

    /// Stop a replica with a fast shutdown, by pid; returns once its process is gone.
    /// Open connections to it fail with SQLSTATE 57P01, new ones are refused.
    pub async fn stop_replica(&self, index: usize) -> Result<()> {
        self.stop_node(self.replica(index)?)
    }

    /// Stop the primary with a fast shutdown, by pid; returns once its process is
    /// gone. Open connections to it fail with SQLSTATE 57P01, new ones are refused.
    /// The replicas stay up, in recovery, and keep retrying to stream from it; they
    /// have received its shutdown checkpoint (a fast shutdown sends all WAL to
    /// connected standbys before it exits).
    pub async fn stop_primary(&self) -> Result<()> {
        self.stop_node(&self.primary)
    }

    fn stop_node(&self, node: &Node) -> Result<()> {
        let stopped = block_in_place(|| node.stop_blocking());
        if stopped {
            Ok(())
        } else {
            Err(self.err(&node.name, ClusterStep::Stop, "server did not exit".into()))
        }
    }

    /// Start a stopped replica again; returns once it accepts connections and, if it
    /// is still a standby, streams from the primary. A no-op if it runs.
    pub async fn start_replica(&self, index: usize) -> Result<()> {
        let node = self.replica(index)?;
        if node.pid().is_some() {
            return Ok(());
        }
        self.start_node(node, false).await?;
        self.wait_streaming_if_standby(index).await
    }

    /// Wait until replica `index` streams again, unless it is no longer a standby.
    async fn wait_streaming_if_standby(&self, index: usize) -> Result<()> {
        let node = self.replica(index)?;
        let standby = node
            .in_recovery()
            .await
            .map_err(|e| self.err(&node.name, ClusterStep::Query, e))?;
        if standby {
            self.wait_streaming(index).await?;
        }
        Ok(())
    }

    /// Start the stopped primary again on its port; returns once it accepts
    /// connections and every running standby streams from it again. A no-op if it
    /// runs.
    pub async fn start_primary(&self) -> Result<()> {
        if self.primary.pid().is_some() {
            return Ok(());
        }
        // Same port: the replicas' primary_conninfo names it.
        self.start_node(&self.primary, false).await?;
        for (index, node) in self.replicas.iter().enumerate() {
            if node.pid().is_some() {
                self.wait_streaming_if_standby(index).await?;
            }
        }
        Ok(())
    }

    /// Freeze a replica (SIGSTOP to its postmaster's process group and to every
    /// server process): like a hung machine, it neither answers nor closes
    /// connections; open connections hang and new ones hang until the client's
    /// connect timeout. Returns once every process is stopped.
    pub async fn freeze_replica(&self, index: usize) -> Result<()> {
        self.signal_node(self.replica(index)?, libc::SIGSTOP, true)
            .await
    }

    /// Thaw a frozen replica (SIGCONT to the same processes). Returns once they run again.
    pub async fn thaw_replica(&self, index: usize) -> Result<()> {
        self.signal_node(self.replica(index)?, libc::SIGCONT, false)
            .await
    }

    /// Freeze the primary (SIGSTOP to its postmaster's process group and to every
    /// server process, WAL senders included): like a hung machine, it neither answers
    /// nor closes connections; open connections hang, new ones hang until the
    /// client's connect timeout, and the replicas receive nothing. Returns once every
    /// process is stopped.
    pub async fn freeze_primary(&self) -> Result<()> {
        self.signal_node(&self.primary, libc::SIGSTOP, true).await
    }

    /// Thaw the frozen primary (SIGCONT to the same processes). Returns once they run
    /// again.
    pub async fn thaw_primary(&self) -> Result<()> {
        self.signal_node(&self.primary, libc::SIGCONT, false).await
    }

    async fn signal_node(&self, node: &Node, signal: libc::c_int, stopped: bool) -> Result<()> {
        let run = async {
            let pid = node.pid().ok_or("server is not running")?;
            // Backends lead process groups of their own (PostgreSQL calls setsid() in
            // each child), so the postmaster's group alone would leave open
            // connections answering: signal every child as well.
            let mut processes = vec![pid];
            processes.extend(process::children(pid));
            process::signal_group(pid, signal)?;
            for child in &processes[1..] {
                let _ = process::signal_pid(*child, signal);
            }
            poll_until(self.timeout, "process state", || async {
                let all = processes
                    .iter()
                    .filter(|p| !process::is_gone(**p))
                    .all(|p| (process::process_state(*p) == Some('T')) == stopped);
                Ok(all.then_some(()))
            })
            .await
        };
        run.await
            .map_err(|e| self.err(&node.name, ClusterStep::Freeze, e))
    }

    /// Promote a replica to a primary (`pg_promote()`); returns once it accepts writes.
    /// The other replicas keep following the original primary.
    pub async fn promote_replica(&self, index: usize) -> Result<()> {
        let node = self.replica(index)?;
        let run = async {
            let promoted = node.query_text("SELECT pg_promote(true, 60)").await?;
            if promoted.as_deref() != Some("t") {
                return Err::<(), BoxError>("pg_promote() returned false".into());
            }
            poll_until(self.timeout, "end of recovery", || async {
                Ok((!node.in_recovery().await?).then_some(()))
            })
            .await
        };
        run.await
            .map_err(|e| self.err(&node.name, ClusterStep::Promote, e))
    }

    /// Make the original primary a standby of replica `leader` after
    /// [`promote_replica(leader)`](Self::promote_replica): the second half of a
    /// failover, as an HA engine does it. Stops the old primary cleanly if it runs
    /// (a clean shutdown streams its last checkpoint to the standbys, so it can
    /// follow the promoted one's new timeline without `pg_rewind`), points it at the
    /// promoted replica and starts it in recovery on the same port. Returns once it
    /// streams from the new primary. [`primary_url`](Self::primary_url) still names
    /// this node: it is a replica now.
    pub async fn demote_primary(&self, leader: usize) -> Result<()> {
        let new_primary = self.replica(leader)?;
        let node = &self.primary;
        if node.pid().is_some() {
            self.stop_node(node)?;
        }
        let host = self
            .socket_dir
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_owned(), |d| d.display().to_string());
        let standby = format!(
            "primary_conninfo = 'host={host} port={} user=postgres application_name=primary'
primary_slot_name = ''
recovery_target_timeline = 'latest'
",
            new_primary.port()
        );
        let configure = || -> std::io::Result<()> {
            append(&node.data_dir.join("postgresql.auto.conf"), &standby)?;
            let signal = node.data_dir.join("standby.signal");
            std::fs::write(&signal, b"")?;
            self.run_as.own(&signal)
        };
        configure().map_err(|e| self.err(&node.name, ClusterStep::Configure, e.into()))?;
        self.start_node(node, false).await?;
        let streaming = poll_until(
            self.timeout,
            "streaming from the promoted replica",
            || async {
                let status = node
                    .query_text("SELECT status FROM pg_stat_wal_receiver")
                    .await?;
                Ok((status.as_deref() == Some("streaming")).then_some(()))
            },
        );
        streaming
            .await
            .map_err(|e| self.err(&node.name, ClusterStep::WaitStreaming, e))
    }

    /// Apply the crate's example schema (users, orders, events) to the primary with
    /// `diesel_migrations`, then wait until every replica has it.
    pub async fn apply_example_schema(&self) -> Result<()> {
        super::example::run_example_migrations(&self.primary_url()).await?;
        self.wait_for_replicas(self.timeout).await
    }

    /// Each node's role, positions and lag, as `rwsplit cluster status` prints them.
    pub async fn status(&self) -> Vec<NodeStatus> {
        let primary_lsn = self
            .primary
            .query_lsn("SELECT pg_current_wal_lsn()")
            .await
            .ok()
            .flatten();
        let mut out = vec![node_status(&self.primary, primary_lsn).await];
        for node in &self.replicas {
            out.push(node_status(node, primary_lsn).await);
        }
        out
    }

    /// Re-open a detached cluster from its directory (for `rwsplit cluster status`
    /// and `down`). The returned value stays detached: dropping it stops nothing.
    pub fn attach(dir: impl AsRef<Path>) -> Result<LocalCluster> {
        let dir = dir.as_ref().to_path_buf();
        let not_running = || Error::ClusterNotRunning { dir: dir.clone() };
        let text = std::fs::read_to_string(dir.join(STATE_FILE)).map_err(|_| not_running())?;
        let state_path = dir.join(STATE_FILE);
        let state_err = |why: &str| Error::Cluster {
            node: "cluster".into(),
            step: ClusterStep::State,
            source: format!("{}: {why}", state_path.display()).into(),
        };
        let mut bindir = None;
        let mut socket_dir = None;
        let mut ca_cert = None;
        let mut cert_roles = Vec::new();
        let mut listed = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match line.split_once('=') {
                Some(("bindir", value)) => bindir = Some(PathBuf::from(value)),
                Some(("socket_dir", value)) => socket_dir = Some(PathBuf::from(value)),
                Some(("ca_cert", value)) => ca_cert = Some(PathBuf::from(value)),
                Some(("cert_role", value)) => cert_roles.push(value.to_owned()),
                Some(("node", value)) => {
                    let (name, port) = value
                        .split_once(' ')
                        .ok_or_else(|| state_err("malformed node line"))?;
                    let port = port
                        .parse::<u16>()
                        .map_err(|_| state_err("malformed port"))?;
                    listed.push((name.to_owned(), port));
                }
                _ => return Err(state_err("unknown line")),
            }
        }
        let mut nodes = Vec::new();
        for (name, port) in listed {
            let node = Node::new(&dir, &name, port).with_socket_dir(socket_dir.clone());
            let pid = std::fs::read_to_string(node.data_dir.join("postmaster.pid"))
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
                .filter(|pid| !process::is_gone(*pid));
            *lock(&node.process) = pid.map(|pid| super::node::ServerProcess { pid, child: None });
            nodes.push(node);
        }
        let bindir = bindir.ok_or_else(|| state_err("no bindir"))?;
        if nodes.is_empty() || nodes[0].name != "primary" {
            return Err(state_err("no primary"));
        }
        let primary = nodes.remove(0);
        Ok(LocalCluster {
            dir,
            ca_cert,
            cert_roles,
            socket_dir,
            bindir,
            run_as: RunAs::detect().map_err(|e| state_err(&e.to_string()))?,
            primary,
            replicas: nodes,
            watchdog: None,
            detached: true,
            timeout: Duration::from_secs(60),
        })
    }

    /// Whether any server of the cluster is running.
    pub fn is_running(&self) -> bool {
        self.primary.pid().is_some() || self.replicas.iter().any(|n| n.pid().is_some())
    }

    /// Stop every server and remove the directory, detached or not.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> Result<()> {
        // Signal every node first so they shut down in parallel, then wait for each.
        let nodes: Vec<&Node> = self
            .replicas
            .iter()
            .chain(std::iter::once(&self.primary))
            .collect();
        for node in &nodes {
            if let Some(pid) = node.pid() {
                let _ = process::signal_group(pid, libc::SIGCONT);
                for child in process::children(pid) {
                    let _ = process::signal_pid(child, libc::SIGCONT);
                }
                let _ = process::signal_pid(pid, libc::SIGINT);
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

    fn replica(&self, index: usize) -> Result<&Node> {
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

    async fn init_primary(&mut self, settings: &[(String, String)], access: &Access) -> Result<()> {
        let (bindir, run_as, data_dir) = (
            self.bindir.clone(),
            self.run_as,
            self.primary.data_dir.clone(),
        );
        blocking(move || super::template::initdb(&bindir, run_as, &data_dir))
            .await
            .map_err(|e| self.err("primary", ClusterStep::InitDb, e))?;

        let mut conf = String::from(BASE_SETTINGS);
        let stat_statements = self.has_pg_stat_statements();
        if stat_statements {
            conf.push_str(
                "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n",
            );
        }
        conf.push_str(&access.settings(&self.dir));
        for (name, value) in settings {
            conf.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        if access.tls_on() {
            let made = tls::write_server_files(&self.dir, self.run_as).and_then(|ca| {
                access
                    .cert_roles
                    .iter()
                    .try_for_each(|role| tls::write_client_files(&ca, &self.dir, role))
            });
            made.map_err(|e| self.err("cluster", ClusterStep::Tls, e.into()))?;
        }
        let data_dir = &self.primary.data_dir;
        let written = append(&data_dir.join("postgresql.conf"), &conf)
            .and_then(|()| std::fs::write(data_dir.join("pg_hba.conf"), access.hba()));
        written.map_err(|e| self.err("primary", ClusterStep::Configure, e.into()))?;

        self.start_node(&self.primary, true).await?;
        if stat_statements {
            self.primary
                .query_text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .await
                .map_err(|e| self.err("primary", ClusterStep::Configure, e))?;
        }
        let roles = access.roles_sql();
        if !roles.is_empty() {
            // Before any base backup: the replicas start with the roles.
            self.primary
                .query_text(&roles)
                .await
                .map_err(|e| self.err("primary", ClusterStep::Roles, e))?;
        }
        Ok(())
    }

    fn has_pg_stat_statements(&self) -> bool {
        let libdir = std::process::Command::new(self.bindir.join("pg_config"))
            .arg("--pkglibdir")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
            .unwrap_or_else(|| self.bindir.join("../lib"));
        libdir.join("pg_stat_statements.so").is_file()
            || libdir.join("pg_stat_statements.dylib").is_file()
    }

    async fn add_replica(&mut self, index: usize) -> Result<()> {
        let name = format!("replica{}", index + 1);
        let node = Node::new(&self.dir, &name, 0).with_socket_dir(self.socket_dir.clone());
        let slot = format!("slot{}", index + 1);
        // The Unix socket where TCP logins need TLS or a password; trust over TCP else.
        let host = self
            .socket_dir
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_owned(), |d| d.display().to_string());
        let mut basebackup = self.run_as.command(&self.bindir.join("pg_basebackup"));
        basebackup
            .args([
                "-h",
                &host,
                "-p",
                &self.primary.port().to_string(),
                "-U",
                "postgres",
                "-D",
            ])
            .arg(&node.data_dir)
            .args([
                "-C",
                "-S",
                &slot,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]);
        blocking(move || process::run_to_completion(basebackup))
            .await
            .map_err(|e| self.err(&name, ClusterStep::BaseBackup, e))?;
        // Later lines win over what `-R` wrote; application_name lets the primary's
        // pg_stat_replication tell the replicas apart.
        let standby = format!(
            "primary_conninfo = 'host={host} port={} user=postgres application_name={name}'\nprimary_slot_name = '{slot}'\n",
            self.primary.port()
        );
        append(&node.data_dir.join("postgresql.auto.conf"), &standby)
            .map_err(|e| self.err(&name, ClusterStep::Configure, e.into()))?;
        self.replicas.push(node);
        self.start_node(&self.replicas[index], true).await
    }

    /// Spawn a node's server and wait until it accepts connections; on a port taken
    /// by someone else in the meantime, retry on a fresh port when allowed.
    async fn start_node(&self, node: &Node, may_move: bool) -> Result<()> {
        for _ in 0..PORT_ATTEMPTS {
            if may_move || node.port() == 0 {
                let port = process::free_port()
                    .map_err(|e| self.err(&node.name, ClusterStep::Start, e.into()))?;
                *lock(&node.port) = port;
            }
            node.spawn(&self.bindir, self.run_as)
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

    async fn wait_streaming(&self, index: usize) -> Result<()> {
        let node = &self.replicas[index];
        let sql = format!(
            "SELECT state FROM pg_stat_replication WHERE application_name = '{}'",
            node.name
        );
        poll_until(self.timeout, "streaming", || async {
            let state = self.primary.query_text(&sql).await?;
            Ok((state.as_deref() == Some("streaming")).then_some(()))
        })
        .await
        .map_err(|e| self.err(&node.name, ClusterStep::WaitStreaming, e))
    }

    fn write_state(&self) -> std::io::Result<()> {
        let mut text = format!("bindir={}\n", self.bindir.display());
        if let Some(dir) = &self.socket_dir {
            text.push_str(&format!("socket_dir={}\n", dir.display()));
        }
        if let Some(ca) = &self.ca_cert {
            text.push_str(&format!("ca_cert={}\n", ca.display()));
        }
        for role in &self.cert_roles {
            text.push_str(&format!("cert_role={role}\n"));
        }
        for node in std::iter::once(&self.primary).chain(&self.replicas) {
            text.push_str(&format!("node={} {}\n", node.name, node.port()));
        }
        std::fs::write(self.dir.join(STATE_FILE), text)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Err(e) = self.stop_all() {
            // Drop cannot fail; the watchdog is still there to finish the job.
            eprintln!("diesel_rwsplit::testing::LocalCluster: {e}");
        }
    }
}

/// One node's state, as reported by [`LocalCluster::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStatus {
    /// `primary`, `replica1`, ...
    pub name: String,
    /// Its loopback port.
    pub port: u16,
    /// `primary`, `replica`, or `down` (not running or not answering).
    pub role: &'static str,
    /// The primary's current WAL position (for a primary node), else `None`.
    pub current_lsn: Option<Lsn>,
    /// WAL received by a replica.
    pub receive_lsn: Option<Lsn>,
    /// WAL replayed by a replica.
    pub replay_lsn: Option<Lsn>,
    /// Bytes the replica's replay is behind the original primary's current position.
    pub lag_bytes: Option<u64>,
}

async fn node_status(node: &Node, primary_lsn: Option<Lsn>) -> NodeStatus {
    let mut status = NodeStatus {
        name: node.name.clone(),
        port: node.port(),
        role: "down",
        current_lsn: None,
        receive_lsn: None,
        replay_lsn: None,
        lag_bytes: None,
    };
    if node.pid().is_none() {
        return status;
    }
    let probe = tokio::time::timeout(Duration::from_secs(3), async {
        let recovering = node.in_recovery().await?;
        if recovering {
            status.role = "replica";
            status.receive_lsn = node.query_lsn("SELECT pg_last_wal_receive_lsn()").await?;
            status.replay_lsn = node.query_lsn("SELECT pg_last_wal_replay_lsn()").await?;
            status.lag_bytes = primary_lsn
                .zip(status.replay_lsn)
                .map(|(p, r)| p.bytes_ahead_of(r));
        } else {
            status.role = "primary";
            status.current_lsn = node.query_lsn("SELECT pg_current_wal_lsn()").await?;
        }
        Ok::<_, BoxError>(())
    });
    if !matches!(probe.await, Ok(Ok(()))) {
        status.role = "down";
    }
    status
}

/// Create the cluster directory: a given one must be absent or empty.
pub(super) fn prepare_dir(requested: Option<&Path>, run_as: RunAs) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let prepare_err = |source: BoxError| Error::Cluster {
        node: "cluster".into(),
        step: ClusterStep::Prepare,
        source,
    };
    let dir = match requested {
        Some(dir) => {
            if let Ok(mut entries) = std::fs::read_dir(dir) {
                if entries.next().is_some() {
                    return Err(Error::ClusterDirInUse {
                        dir: dir.to_path_buf(),
                    });
                }
            } else {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| prepare_err(e.into()))?;
            }
            std::path::absolute(dir).map_err(|e| prepare_err(e.into()))?
        }
        None => create_temp_dir().map_err(|e| prepare_err(e.into()))?,
    };
    run_as.own(&dir).map_err(|e| prepare_err(e.into()))?;
    Ok(dir)
}

/// A new `rws-XXXXXX` under [`scratch_root`], kept short: PostgreSQL's socket and
/// path limits bite under long `TMPDIR`s and `target/` trees.
fn create_temp_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for _ in 0..100 {
        let seed = u64::from(nanos)
            ^ (u64::from(std::process::id()) << 20)
            ^ COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let dir = scratch_root().join(format!("rws-{:06x}", seed % 0x100_0000));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "could not create a unique rws-* scratch directory",
    ))
}

/// `/dev/shm` where it is a writable directory (a memory file system: copying a
/// data directory there is more than ten times faster than to disk here, and the
/// data is throwaway), otherwise `/tmp`.
pub(super) fn scratch_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<&'static Path> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let probe = shm.join(format!(".rws-probe-{}", std::process::id()));
        if std::fs::create_dir(&probe).is_ok() {
            let _ = std::fs::remove_dir(&probe);
            shm
        } else {
            Path::new("/tmp")
        }
    })
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Run blocking process work off the async threads.
pub(super) async fn blocking<F>(work: F) -> std::result::Result<(), BoxError>
where
    F: FnOnce() -> std::io::Result<()> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(Into::into),
        Err(join) => Err(join.into()),
    }
}

/// Run a short blocking wait (a server shutting down) from async code, letting a
/// multi-threaded runtime move other tasks off this thread meanwhile.
pub(super) fn block_in_place<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// A primary and replicas to run against: the servers named by `PRIMARY_URL` and
/// `REPLICA_URLS` (comma-separated) when both are set, else a fresh
/// [`LocalCluster`], kept alive as long as this value.
#[derive(Debug)]
#[non_exhaustive]
pub struct ClusterUrls {
    /// The primary's URL.
    pub primary: String,
    /// The replicas' URLs.
    pub replicas: Vec<String>,
    /// The cluster started for the purpose, if one was (dropping it stops it).
    pub cluster: Option<LocalCluster>,
    started_in: Option<Duration>,
}

impl ClusterUrls {
    /// Read the environment, or start a cluster with `replicas` replicas.
    pub async fn from_env_or_start(replicas: usize) -> Result<ClusterUrls> {
        if let (Ok(primary), Ok(list)) =
            (std::env::var("PRIMARY_URL"), std::env::var("REPLICA_URLS"))
        {
            let replicas = list
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            return Ok(ClusterUrls {
                primary,
                replicas,
                cluster: None,
                started_in: None,
            });
        }
        let started = std::time::Instant::now();
        let cluster = LocalCluster::start(replicas).await?;
        Ok(ClusterUrls {
            primary: cluster.primary_url(),
            replicas: cluster.replica_urls(),
            started_in: Some(started.elapsed()),
            cluster: Some(cluster),
        })
    }

    /// One line saying where the servers come from.
    pub fn describe(&self) -> String {
        match (&self.cluster, self.started_in) {
            (Some(cluster), Some(took)) => format!(
                "started a local primary + {} streaming replica(s) in {took:.2?} under {}",
                self.replicas.len(),
                cluster.dir().display()
            ),
            _ => format!(
                "using PRIMARY_URL and {} replica(s) from REPLICA_URLS",
                self.replicas.len()
            ),
        }
    }

    /// The cluster guard (keep it alive), the primary URL and the replica URLs.
    pub fn into_parts(self) -> (Option<LocalCluster>, String, Vec<String>) {
        (self.cluster, self.primary, self.replicas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_new_options_the_hba_and_settings_are_as_before() {
        let access = Access::default().role("app", "pw");
        assert_eq!(access.hba(), HBA);
        assert_eq!(access.settings(Path::new("/dev/shm/rws-abc")), "");
        assert!(!access.uses_socket());
    }

    #[test]
    fn cert_roles_come_first_and_tls_only_rejects_plaintext_last() {
        let access = Access {
            tls_only: true,
            password_auth: true,
            cert_roles: vec!["certy".into()],
            ..Access::default()
        };
        assert_eq!(
            access.hba().lines().skip(1).collect::<Vec<_>>(),
            [
                "hostssl all \"certy\" 127.0.0.1/32 cert",
                "hostnossl all \"certy\" 127.0.0.1/32 reject",
                "local all all trust",
                "local replication all trust",
                "hostssl all all 127.0.0.1/32 scram-sha-256",
                "hostssl replication all 127.0.0.1/32 scram-sha-256",
                "host all all 127.0.0.1/32 reject",
                "host replication all 127.0.0.1/32 reject",
            ]
        );
        let conf = access.settings(Path::new("/dev/shm/rws-abc"));
        assert!(conf.contains("unix_socket_directories = '/dev/shm/rws-abc'"));
        assert!(conf.contains("ssl_ca_file = '/dev/shm/rws-abc/ca.crt'"));
        assert!(conf.contains("password_encryption = 'scram-sha-256'"));
    }

    #[test]
    fn passwords_stay_out_of_debug_and_names_are_checked() {
        let builder = LocalCluster::builder().role("app", "hunter2");
        assert!(!format!("{builder:?}").contains("hunter2"));
        assert!(Access::default().role("a b", "x").check_names().is_err());
        assert!(Access::default()
            .role("app_1.x-y", "x")
            .check_names()
            .is_ok());
        assert!(check_socket_dir(Path::new("/dev/shm/rws-abc")).is_ok());
        assert!(check_socket_dir(Path::new("/tmp/a dir")).is_err());
        assert!(check_socket_dir(&Path::new("/tmp").join("x".repeat(90))).is_err());
    }

    impl Access {
        fn role(mut self, name: &str, password: &str) -> Self {
            self.roles.push((name.into(), Secret(password.into())));
            self
        }
    }
}
