//! `PatroniCluster`: a PostgreSQL cluster managed by a real HA engine (Patroni over
//! a one-member etcd), for tests of planned switchovers and unplanned failovers.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::binaries::{PatroniPrograms, PatroniSearch, Search};
use super::cluster::{block_in_place, prepare_dir};
use super::node::lock;
use super::process::{self, RunAs, Watchdog};
use crate::{BoxError, ClusterStep, Error, Result};

/// Patroni's smallest `ttl`: a dead leader's key expires after it.
const TTL: u32 = 20;
/// Seconds between two runs of Patroni's HA loop.
const LOOP_WAIT: u32 = 1;
/// Patroni requires `loop_wait + 2 * retry_timeout <= ttl`.
const RETRY_TIMEOUT: u32 = 5;
/// How often the harness polls Patroni's REST API.
const POLL: Duration = Duration::from_millis(100);
/// Upper bound of one REST request.
const REST_TIMEOUT: Duration = Duration::from_secs(3);
/// Lines of each log put in a start-up error.
const LOG_TAIL: usize = 15;

/// Builds and starts a [`PatroniCluster`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PatroniClusterBuilder {
    members: usize,
    synchronous_mode: bool,
    tags: Vec<(usize, String, String)>,
    bindir: Option<PathBuf>,
    timeout: Duration,
}

impl Default for PatroniClusterBuilder {
    fn default() -> Self {
        PatroniClusterBuilder {
            members: 3,
            synchronous_mode: false,
            tags: Vec::new(),
            bindir: None,
            timeout: Duration::from_secs(120),
        }
    }
}

impl PatroniClusterBuilder {
    /// Number of Patroni members (each one PostgreSQL server). Default: 3. At least 1.
    pub fn members(mut self, count: usize) -> Self {
        self.members = count;
        self
    }

    /// Patroni's `synchronous_mode` (one replica confirms every commit; a
    /// switchover or failover only goes to a synchronous standby). Default: `false`.
    pub fn synchronous_mode(mut self, on: bool) -> Self {
        self.synchronous_mode = on;
        self
    }

    /// Give member `index` (zero-based) the Patroni tag `key: value`, as in
    /// `.tag(2, "nofailover", "true")` or `.tag(1, "group", "analytics")`. The values
    /// `true` and `false` are written as YAML booleans (what Patroni's own tags
    /// `nofailover`, `noloadbalance`, `nosync`, `nostream` and `clonefrom` need),
    /// everything else as a string. Patroni lists custom tags in `GET /cluster`
    /// (see [`PatroniCluster::cluster_status`]); it omits tags whose value is
    /// `false`. Keys: ASCII letters, digits and `_`. Default: no tags.
    pub fn tag(mut self, index: usize, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push((index, key.into(), value.into()));
        self
    }

    /// Several [`tag`](Self::tag)s of member `index` at once, as in
    /// `.tags(2, [("nofailover", "true"), ("group", "analytics")])`.
    pub fn tags<K, V>(mut self, index: usize, tags: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        for (key, value) in tags {
            self.tags.push((index, key.into(), value.into()));
        }
        self
    }

    /// Directory of the PostgreSQL server binaries. Default: searched as
    /// [`LocalClusterBuilder::pg_bindir`](super::LocalClusterBuilder::pg_bindir) says.
    pub fn pg_bindir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bindir = Some(dir.into());
        self
    }

    /// Upper bound for start-up (etcd answering, a leader elected, every member
    /// streaming) and for the waits of [`PatroniCluster::switchover`] and
    /// [`PatroniCluster::restart_member`]. Default: 120 s.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Start etcd and the members; returns once a leader is elected, runs and
    /// accepts writes, and every other member streams from it.
    ///
    /// Cost: about 10-18 s for 3 members. Fails with [`Error::PatroniNotFound`]
    /// when Patroni or etcd is not installed, and with [`Error::Cluster`] (the
    /// tails of the logs in its source) when the cluster does not come up. If this
    /// future is cancelled, or start-up fails, everything started is stopped and
    /// the directory removed.
    pub async fn start(self) -> Result<PatroniCluster> {
        let prepare = |why: String| Error::Cluster {
            node: "cluster".into(),
            step: ClusterStep::Prepare,
            source: why.into(),
        };
        if self.members == 0 {
            return Err(prepare(
                "a Patroni cluster needs at least one member".into(),
            ));
        }
        for (index, key, _) in &self.tags {
            if *index >= self.members {
                return Err(Error::NoSuchMember {
                    index: *index,
                    members: self.members,
                });
            }
            let valid =
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(prepare(format!(
                    "tag key {key:?}: use ASCII letters, digits and `_`"
                )));
            }
        }
        let programs = PatroniSearch::from_env().find()?;
        let bindir = Search::from_env(self.bindir.clone()).find()?;
        let run_as = RunAs::detect().map_err(|e| prepare(e.to_string()))?;
        let dir = prepare_dir(None, run_as)?;
        let watchdog = Watchdog::spawn(&dir).map_err(|e| prepare(e.to_string()))?;
        let scope = dir
            .file_name()
            .map_or_else(|| "rws".to_owned(), |n| n.to_string_lossy().into_owned());
        // Hold every listener at once so that the ports differ from each other.
        let ports = free_ports(2 + 2 * self.members).map_err(|e| prepare(e.to_string()))?;
        let members = (0..self.members)
            .map(|index| {
                let name = format!("member{index}");
                Member {
                    pg_port: ports[2 + 2 * index],
                    rest_port: ports[3 + 2 * index],
                    data_dir: dir.join(&name),
                    config: dir.join(format!("{name}.yml")),
                    log: dir.join(format!("{name}.log")),
                    pid_file: dir.join(format!("{name}.pid")),
                    patroni: Mutex::new(None),
                    name,
                }
            })
            .collect();
        let cluster = PatroniCluster {
            scope,
            bindir,
            programs,
            run_as,
            etcd: Mutex::new(None),
            etcd_client_port: ports[0],
            etcd_peer_port: ports[1],
            members,
            watchdog: Some(watchdog),
            timeout: self.timeout,
            synchronous_mode: self.synchronous_mode,
            tags: self.tags,
            dir,
        };
        cluster.start_etcd().await?;
        for index in 0..cluster.members.len() {
            cluster.write_config(index)?;
            cluster.spawn_member(index)?;
        }
        cluster.wait_healthy().await?;
        Ok(cluster)
    }
}

/// One Patroni member: its ports, files and Patroni process.
#[derive(Debug)]
struct Member {
    name: String,
    pg_port: u16,
    rest_port: u16,
    data_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// Patroni's pid, for the watchdog.
    pid_file: PathBuf,
    /// `None` once killed.
    patroni: Mutex<Option<Child>>,
}

impl Member {
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.pg_port)
    }

    fn rest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest_port)
    }

    fn patroni_running(&self) -> bool {
        let mut guard = lock(&self.patroni);
        match guard.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The postmaster's pid from `postmaster.pid`, if it still runs PostgreSQL.
    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse::<u32>().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "postgres" && !process::is_gone(pid)).then_some(pid)
    }

    /// SIGKILL Patroni and wait for it (blocking).
    fn kill_patroni(&self) {
        if let Some(mut child) = lock(&self.patroni).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Everything a member's Patroni configuration depends on (see [`patroni_yaml`]).
#[derive(Debug, Clone)]
struct MemberConfig<'a> {
    scope: &'a str,
    name: &'a str,
    dir: &'a Path,
    data_dir: &'a Path,
    bindir: &'a Path,
    pg_port: u16,
    rest_port: u16,
    etcd_port: u16,
    synchronous_mode: bool,
    tags: Vec<(&'a str, &'a str)>,
}

/// A YAML scalar: `true`/`false` bare, everything else a double-quoted string (JSON
/// string syntax, which YAML reads the same way).
fn yaml_value(value: &str) -> String {
    match value {
        "true" | "false" => value.to_owned(),
        _ => quote(value),
    }
}

fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// A member's `patroni.yml`.
fn patroni_yaml(c: &MemberConfig<'_>) -> String {
    let q = quote;
    let path = |p: &Path| quote(&p.display().to_string());
    let mut tags = String::new();
    if c.tags.is_empty() {
        tags.push_str("tags: {}\n");
    } else {
        tags.push_str("tags:\n");
        for (key, value) in &c.tags {
            tags.push_str(&format!("  {key}: {}\n", yaml_value(value)));
        }
    }
    format!(
        "\
# Written by diesel_rwsplit::testing::PatroniCluster.
scope: {scope}
namespace: \"/rwsplit/\"
name: {name}
restapi:
  listen: \"127.0.0.1:{rest}\"
  connect_address: \"127.0.0.1:{rest}\"
etcd3:
  hosts: [\"127.0.0.1:{etcd}\"]
bootstrap:
  dcs:
    ttl: {TTL}
    loop_wait: {LOOP_WAIT}
    retry_timeout: {RETRY_TIMEOUT}
    maximum_lag_on_failover: 1048576
    synchronous_mode: {sync}
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: \"replica\"
        hot_standby: \"on\"
        wal_log_hints: \"on\"
        full_page_writes: \"on\"
        fsync: \"off\"
        synchronous_commit: \"on\"
        max_connections: 100
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: \"128MB\"
  initdb:
    - encoding: \"UTF8\"
    - locale: \"C\"
    - \"no-sync\"
postgresql:
  listen: \"127.0.0.1:{pg}\"
  connect_address: \"127.0.0.1:{pg}\"
  data_dir: {data_dir}
  bin_dir: {bindir}
  pgpass: {pgpass}
  authentication:
    superuser:
      username: \"postgres\"
    replication:
      username: \"replicator\"
    rewind:
      username: \"postgres\"
  parameters:
    unix_socket_directories: {socket_dir}
    shared_buffers: \"32MB\"
    hot_standby_feedback: \"on\"
    wal_receiver_status_interval: \"1s\"
    wal_retrieve_retry_interval: \"100ms\"
  pg_hba:
    - \"local all all trust\"
    - \"host all all 127.0.0.1/32 trust\"
    - \"host replication all 127.0.0.1/32 trust\"
{tags}",
        scope = q(c.scope),
        name = q(c.name),
        rest = c.rest_port,
        etcd = c.etcd_port,
        sync = c.synchronous_mode,
        pg = c.pg_port,
        data_dir = path(c.data_dir),
        bindir = path(c.bindir),
        pgpass = path(&c.dir.join(format!("{}.pgpass", c.name))),
        socket_dir = path(c.dir),
    )
}

/// A PostgreSQL cluster managed by Patroni 4 over a one-member etcd 3.4, all on
/// loopback ports, for tests of planned switchovers and unplanned failovers.
///
/// ```no_run
/// # async fn demo() -> Result<(), diesel_rwsplit::Error> {
/// use std::time::Duration;
/// use diesel_rwsplit::testing::PatroniCluster;
///
/// let cluster = PatroniCluster::builder().members(3).start().await?; // ~15 s
/// let old = cluster.leader().await?.expect("a leader");
/// let took = cluster.switchover(None).await?;             // ~4-5 s
/// let killed = cluster.kill_leader().await?;              // SIGKILL Patroni + PostgreSQL
/// let (new, seen) = cluster.wait_for_leader(Duration::from_secs(60), Some(killed)).await?;
/// cluster.restart_member(killed).await?;                  // rejoins (pg_rewind)
/// cluster.wait_member_streaming(killed, Duration::from_secs(60)).await?;
/// # let _ = (old, took, new, seen); Ok(()) }
/// ```
///
/// - Members are addressed by zero-based index; member `i` is named `member{i}`
///   (its stable identity in Patroni: `GET /cluster` lists members by name).
/// - Settings: `ttl` 20 (Patroni's minimum: a killed leader is replaced after
///   about 21 s), `loop_wait` 1, `retry_timeout` 5, `use_pg_rewind` with
///   `wal_log_hints` and `full_page_writes` on, replication slots, `fsync=off`,
///   `synchronous_commit=on`, hot standby, trust authentication on 127.0.0.1 for
///   the superuser `postgres` and the replication user `replicator`.
/// - Lives in a short private directory (`/dev/shm/rws-XXXXXX`), which is also the
///   Patroni scope. Each member logs (Patroni and its PostgreSQL) to
///   `memberN.log` there, etcd to `etcd.log`.
/// - As root, etcd, Patroni and PostgreSQL run as the `postgres` OS user (as
///   [`LocalCluster`](super::LocalCluster)'s servers do).
/// - Dropping it kills every Patroni, stops the PostgreSQL servers they leave, then
///   etcd, by pid, and removes the directory, also when a test panics. A watchdog
///   process does the same if the test process dies without dropping it. Dropping
///   blocks the current thread for about a second.
///
/// Requirements: PostgreSQL server binaries, etcd and Patroni: see
/// [`Error::PatroniNotFound`] for how to install them (`.ci/run` does).
pub struct PatroniCluster {
    dir: PathBuf,
    scope: String,
    bindir: PathBuf,
    programs: PatroniPrograms,
    run_as: RunAs,
    etcd: Mutex<Option<Child>>,
    etcd_client_port: u16,
    etcd_peer_port: u16,
    members: Vec<Member>,
    watchdog: Option<Watchdog>,
    timeout: Duration,
    synchronous_mode: bool,
    tags: Vec<(usize, String, String)>,
}

impl fmt::Debug for PatroniCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatroniCluster")
            .field("dir", &self.dir)
            .field("scope", &self.scope)
            .field("etcd", &self.etcd_url())
            .field("members", &self.member_names())
            .field("urls", &self.member_urls())
            .field("rest_urls", &self.rest_urls())
            .field("synchronous_mode", &self.synchronous_mode)
            .finish()
    }
}

/// One member as Patroni's `GET /cluster` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PatroniMember {
    /// Patroni's member name (`member0`, ...).
    pub name: String,
    /// The member's index in this cluster, when the name is one of ours.
    pub index: Option<usize>,
    /// `leader`, `replica`, `sync_standby`, ... as Patroni says.
    pub role: String,
    /// `running`, `streaming`, `stopped`, `starting`, ... as Patroni says.
    pub state: String,
    /// PostgreSQL host (`127.0.0.1`).
    pub host: String,
    /// PostgreSQL port.
    pub port: u16,
    /// The timeline, when reported.
    pub timeline: Option<u64>,
    /// Replication lag in bytes (replicas), when reported as a number.
    pub lag: Option<u64>,
    /// Tags, values as text (`true` for a boolean tag).
    pub tags: BTreeMap<String, String>,
}

/// Patroni's view of the cluster (`GET /cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PatroniStatus {
    /// The Patroni scope (the cluster's name).
    pub scope: String,
    /// Every member Patroni knows, in the order it lists them.
    pub members: Vec<PatroniMember>,
}

impl PatroniStatus {
    /// The member whose role is `leader`, if any.
    pub fn leader(&self) -> Option<&PatroniMember> {
        self.members.iter().find(|m| m.role == "leader")
    }

    /// The member named `name`, if Patroni lists it.
    pub fn member(&self, name: &str) -> Option<&PatroniMember> {
        self.members.iter().find(|m| m.name == name)
    }

    fn parse(body: &str, names: &[String]) -> std::result::Result<Self, BoxError> {
        let value: serde_json::Value = serde_json::from_str(body)?;
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let members = value
            .get("members")
            .and_then(|m| m.as_array())
            .ok_or("no `members` in GET /cluster")?
            .iter()
            .map(|m| {
                let field = |key: &str| m.get(key).map(text).unwrap_or_default();
                let name = field("name");
                PatroniMember {
                    index: names.iter().position(|n| *n == name),
                    name,
                    role: field("role"),
                    state: field("state"),
                    host: field("host"),
                    port: m
                        .get("port")
                        .and_then(serde_json::Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or(0),
                    timeline: m.get("timeline").and_then(serde_json::Value::as_u64),
                    lag: m.get("lag").and_then(serde_json::Value::as_u64),
                    tags: m
                        .get("tags")
                        .and_then(serde_json::Value::as_object)
                        .map(|tags| tags.iter().map(|(k, v)| (k.clone(), text(v))).collect())
                        .unwrap_or_default(),
                }
            })
            .collect();
        Ok(PatroniStatus {
            scope: value.get("scope").map(text).unwrap_or_default(),
            members,
        })
    }
}

impl PatroniCluster {
    /// A builder: 3 members, no synchronous mode, no tags, binaries searched.
    pub fn builder() -> PatroniClusterBuilder {
        PatroniClusterBuilder::default()
    }

    /// Number of members.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Patroni's member names, in member order (`member0`, `member1`, ...).
    pub fn member_names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    /// Connection URLs of every member for the superuser (trust, no TLS), in member
    /// order: `postgres://postgres@127.0.0.1:PORT/postgres`. A member keeps its
    /// URL across switchovers, failovers and restarts; which one is the primary
    /// changes (see [`leader`](Self::leader)).
    pub fn member_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::url).collect()
    }

    /// Connection URL of member `index` (see [`member_urls`](Self::member_urls)).
    pub fn member_url(&self, index: usize) -> Result<String> {
        Ok(self.member(index)?.url())
    }

    /// Base URLs of the members' Patroni REST APIs, in member order:
    /// `http://127.0.0.1:PORT` (`GET /primary` answers 200 only on the leader,
    /// `GET /cluster` lists every member).
    pub fn rest_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::rest_url).collect()
    }

    /// The etcd client URL: `http://127.0.0.1:PORT`.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_client_port)
    }

    /// The Patroni scope (the cluster's name in etcd; the directory's name).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The cluster directory (configurations, data directories, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `patronictl` program of the Patroni in use (run it with
    /// `-c <dir>/memberN.yml`).
    pub fn patronictl(&self) -> &Path {
        &self.programs.patronictl
    }

    /// The log file of member `index` (Patroni's log and its PostgreSQL's).
    pub fn member_log(&self, index: usize) -> Result<PathBuf> {
        Ok(self.member(index)?.log.clone())
    }

    /// Patroni's view of the cluster (`GET /cluster`), asked of the first member
    /// whose Patroni runs and answers.
    pub async fn cluster_status(&self) -> Result<PatroniStatus> {
        self.status()
            .await
            .map_err(|e| self.err("cluster", ClusterStep::Query, e))
    }

    /// Index of the member Patroni currently names leader (`None`: no leader now,
    /// e.g. between a leader's death and the end of its `ttl`).
    pub async fn leader(&self) -> Result<Option<usize>> {
        let status = self.cluster_status().await?;
        Ok(status.leader().and_then(|m| m.index))
    }

    /// Wait until Patroni names a running leader other than `not`; returns its
    /// index and when it was first seen so. Returns only once that leader's
    /// PostgreSQL also accepts writes (not in recovery), so the caller may write at
    /// once; the `Instant` is still when Patroni was first seen naming it.
    pub async fn wait_for_leader(
        &self,
        timeout: Duration,
        not: Option<usize>,
    ) -> Result<(usize, Instant)> {
        let deadline = Instant::now() + timeout;
        let mut last_error: Option<BoxError> = None;
        let (index, seen) = loop {
            match self.status().await {
                Ok(status) => {
                    let leader = status
                        .leader()
                        .filter(|m| m.state == "running")
                        .and_then(|m| m.index)
                        .filter(|index| Some(*index) != not);
                    if let Some(index) = leader {
                        break (index, Instant::now());
                    }
                }
                Err(e) => last_error = Some(e),
            }
            if Instant::now() >= deadline {
                let why = match last_error {
                    Some(e) => format!("no new leader within {timeout:?} (last error: {e})"),
                    None => format!("no new leader within {timeout:?}"),
                };
                return Err(self.err("cluster", ClusterStep::WaitLeader, why.into()));
            }
            tokio::time::sleep(POLL).await;
        };
        let url = self.members[index].url();
        loop {
            if let Ok(false) = in_recovery(&url).await {
                return Ok((index, seen));
            }
            if Instant::now() >= deadline {
                let why = format!("leader {index} still in recovery after {timeout:?}");
                return Err(self.err(
                    &self.members[index].name,
                    ClusterStep::WaitLeader,
                    why.into(),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A planned switchover through Patroni's REST API (`POST /switchover` to the
    /// leader, with `candidate`'s name if given, else Patroni picks). Returns, with
    /// the time it took from the request, once another member is the running
    /// leader and accepts writes (and is `candidate` when one was given). The old
    /// leader goes on as a replica: see
    /// [`wait_member_streaming`](Self::wait_member_streaming). Takes about 4-5 s.
    pub async fn switchover(&self, candidate: Option<usize>) -> Result<Duration> {
        let fail = |why: String| self.err("cluster", ClusterStep::Switchover, why.into());
        if let Some(candidate) = candidate {
            self.member(candidate)?;
        }
        let old = self
            .leader()
            .await?
            .ok_or_else(|| fail("there is no leader to switch over from".into()))?;
        if candidate == Some(old) {
            return Err(fail(format!("member {old} is already the leader")));
        }
        let mut body = serde_json::json!({ "leader": self.members[old].name });
        if let Some(candidate) = candidate {
            body["candidate"] = self.members[candidate].name.clone().into();
        }
        let started = Instant::now();
        let (status, answer) = http(
            self.members[old].rest_port,
            "POST",
            "/switchover",
            Some(&body.to_string()),
            self.timeout,
        )
        .await
        .map_err(|e| fail(format!("POST /switchover: {e}")))?;
        if !(200..300).contains(&status) {
            return Err(fail(format!(
                "POST /switchover answered {status}: {}",
                answer.trim()
            )));
        }
        let (new, _) = self.wait_for_leader(self.timeout, Some(old)).await?;
        if let Some(candidate) = candidate {
            if new != candidate {
                return Err(fail(format!(
                    "member {new} became leader instead of member {candidate}"
                )));
            }
        }
        Ok(started.elapsed())
    }

    /// An unplanned failover: SIGKILL the current leader's Patroni and then its
    /// PostgreSQL (postmaster and every server process), so neither can hand over.
    /// Returns the killed member's index once its processes are gone. Patroni names
    /// a new leader after the leader key's `ttl` (about 21 s): see
    /// [`wait_for_leader`](Self::wait_for_leader). The member stays down until
    /// [`restart_member`](Self::restart_member).
    pub async fn kill_leader(&self) -> Result<usize> {
        let leader = self.leader().await?.ok_or_else(|| {
            self.err(
                "cluster",
                ClusterStep::Kill,
                "there is no leader to kill".into(),
            )
        })?;
        self.kill_member(leader).await?;
        Ok(leader)
    }

    /// SIGKILL member `index`'s Patroni and then its PostgreSQL, as
    /// [`kill_leader`](Self::kill_leader) does for the leader. Returns once the
    /// processes are gone. A no-op for processes that are not running.
    pub async fn kill_member(&self, index: usize) -> Result<()> {
        let member = self.member(index)?;
        let gone = block_in_place(|| {
            member.kill_patroni();
            let Some(pid) = member.postmaster_pid() else {
                return true;
            };
            let children = process::children(pid);
            let _ = process::signal_pid(pid, libc::SIGKILL);
            for child in &children {
                let _ = process::signal_pid(*child, libc::SIGKILL);
            }
            std::iter::once(pid)
                .chain(children)
                .all(|pid| process::wait_exit(pid, None, Duration::from_secs(10)))
        });
        if gone {
            Ok(())
        } else {
            Err(self.err(
                &member.name,
                ClusterStep::Kill,
                "PostgreSQL did not exit".into(),
            ))
        }
    }

    /// Start member `index`'s Patroni again after [`kill_leader`](Self::kill_leader)
    /// or [`kill_member`](Self::kill_member). It rejoins as a replica of the current
    /// leader (through `pg_rewind` when its timeline diverged). Returns once its
    /// REST API answers; wait for replication with
    /// [`wait_member_streaming`](Self::wait_member_streaming). A no-op if its
    /// Patroni runs.
    pub async fn restart_member(&self, index: usize) -> Result<()> {
        let member = self.member(index)?;
        if member.patroni_running() {
            return Ok(());
        }
        self.spawn_member(index)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            if http(member.rest_port, "GET", "/patroni", None, REST_TIMEOUT)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if !member.patroni_running() {
                return Err(self.err(
                    &member.name,
                    ClusterStep::Patroni,
                    format!("Patroni exited:\n{}", log_tail(&member.log)).into(),
                ));
            }
            if Instant::now() >= deadline {
                return Err(self.err(
                    &member.name,
                    ClusterStep::Patroni,
                    format!(
                        "REST API not answering after {:?}:\n{}",
                        self.timeout,
                        log_tail(&member.log)
                    )
                    .into(),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Wait until Patroni reports member `index` as a replica (not the leader) in
    /// state `streaming`.
    pub async fn wait_member_streaming(&self, index: usize, timeout: Duration) -> Result<()> {
        let member = self.member(index)?;
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            match self.status().await {
                Ok(status) => match status.member(&member.name) {
                    Some(m) if m.role != "leader" && m.state == "streaming" => return Ok(()),
                    Some(m) => last = format!("role {}, state {}", m.role, m.state),
                    None => last = "not listed".into(),
                },
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(self.err(
                    &member.name,
                    ClusterStep::WaitStreaming,
                    format!(
                        "not streaming after {timeout:?} (last seen: {last}); log:\n{}",
                        log_tail(&member.log)
                    )
                    .into(),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn member(&self, index: usize) -> Result<&Member> {
        self.members.get(index).ok_or(Error::NoSuchMember {
            index,
            members: self.members.len(),
        })
    }

    fn err(&self, node: &str, step: ClusterStep, source: BoxError) -> Error {
        Error::Cluster {
            node: node.to_owned(),
            step,
            source,
        }
    }

    /// `GET /cluster` from the first member whose Patroni runs and answers.
    async fn status(&self) -> std::result::Result<PatroniStatus, BoxError> {
        let names = self.member_names();
        let mut last: BoxError = "no member's Patroni is running".into();
        for member in self.members.iter().filter(|m| m.patroni_running()) {
            match http(member.rest_port, "GET", "/cluster", None, REST_TIMEOUT).await {
                Ok((200, body)) => return PatroniStatus::parse(&body, &names),
                Ok((status, body)) => {
                    last = format!("{}: GET /cluster answered {status}: {body}", member.name).into()
                }
                Err(e) => last = format!("{}: {e}", member.name).into(),
            }
        }
        Err(last)
    }

    async fn start_etcd(&self) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let fail = |why: String| self.err("etcd", ClusterStep::Etcd, why.into());
        let log_path = self.dir.join("etcd.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| fail(e.to_string()))?;
        let client = self.etcd_url();
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        let child = self
            .run_as
            .command(&self.programs.etcd)
            .arg("--name")
            .arg("etcd")
            .arg("--data-dir")
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("etcd={peer}"))
            .args(["--initial-cluster-state", "new"])
            .env("HOME", &self.dir)
            .stdout(log.try_clone().map_err(|e| fail(e.to_string()))?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| fail(format!("{}: {e}", self.programs.etcd.display())))?;
        std::fs::write(self.dir.join("etcd.pid"), format!("{}\n", child.id()))
            .map_err(|e| fail(e.to_string()))?;
        *lock(&self.etcd) = Some(child);
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Ok((200, body)) =
                http(self.etcd_client_port, "GET", "/health", None, REST_TIMEOUT).await
            {
                if body.contains("true") {
                    return Ok(());
                }
            }
            let exited = match lock(&self.etcd).as_mut() {
                Some(child) => !matches!(child.try_wait(), Ok(None)),
                None => true,
            };
            if exited || Instant::now() >= deadline {
                let what = if exited {
                    "etcd exited".to_owned()
                } else {
                    format!("etcd not healthy after {:?}", self.timeout)
                };
                return Err(fail(format!("{what}:\n{}", log_tail(&log_path))));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn write_config(&self, index: usize) -> Result<()> {
        let member = &self.members[index];
        let config = MemberConfig {
            scope: &self.scope,
            name: &member.name,
            dir: &self.dir,
            data_dir: &member.data_dir,
            bindir: &self.bindir,
            pg_port: member.pg_port,
            rest_port: member.rest_port,
            etcd_port: self.etcd_client_port,
            synchronous_mode: self.synchronous_mode,
            tags: self
                .tags
                .iter()
                .filter(|(i, _, _)| *i == index)
                .map(|(_, k, v)| (k.as_str(), v.as_str()))
                .collect(),
        };
        std::fs::write(&member.config, patroni_yaml(&config))
            .and_then(|()| self.run_as.own(&member.config))
            .map_err(|e| self.err(&member.name, ClusterStep::Configure, e.into()))
    }

    fn spawn_member(&self, index: usize) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let member = &self.members[index];
        let fail = |e: std::io::Error| self.err(&member.name, ClusterStep::Patroni, e.into());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .map_err(fail)?;
        let child = self
            .run_as
            .command(&self.programs.patroni)
            .arg(&member.config)
            // The `postgres` user cannot read root's home; keep Patroni (and psql,
            // libpq) out of it.
            .env("HOME", &self.dir)
            .env_remove("PGPASSFILE")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGUSER")
            .stdout(log.try_clone().map_err(fail)?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(fail)?;
        std::fs::write(&member.pid_file, format!("{}\n", child.id())).map_err(fail)?;
        *lock(&member.patroni) = Some(child);
        Ok(())
    }

    /// Wait until a leader runs and accepts writes and every other member streams.
    async fn wait_healthy(&self) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut last: String;
        loop {
            if let Some(dead) = self.members.iter().find(|m| !m.patroni_running()) {
                return Err(self.startup_error(format!("{}'s Patroni exited", dead.name)));
            }
            match self.status().await {
                Ok(status) => {
                    let healthy = status.members.len() == self.members.len()
                        && status
                            .members
                            .iter()
                            .filter(|m| m.role == "leader" && m.state == "running")
                            .count()
                            == 1
                        && status
                            .members
                            .iter()
                            .all(|m| m.role == "leader" || m.state == "streaming");
                    if healthy {
                        let (index, _) = self.wait_for_leader(self.timeout, None).await?;
                        if status.leader().and_then(|m| m.index) == Some(index) {
                            return Ok(());
                        }
                    }
                    last = status
                        .members
                        .iter()
                        .map(|m| format!("{} {} {}", m.name, m.role, m.state))
                        .collect::<Vec<_>>()
                        .join(", ");
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(self.startup_error(format!(
                    "not healthy after {:?} (last seen: {last})",
                    self.timeout
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A start-up error with the tails of every log.
    fn startup_error(&self, what: String) -> Error {
        let mut text = what;
        for member in &self.members {
            text.push_str(&format!(
                "\n--- {} ---\n{}",
                member.log.display(),
                log_tail(&member.log)
            ));
        }
        let etcd_log = self.dir.join("etcd.log");
        text.push_str(&format!(
            "\n--- {} ---\n{}",
            etcd_log.display(),
            log_tail(&etcd_log)
        ));
        self.err("cluster", ClusterStep::Patroni, text.into())
    }

    /// Kill every Patroni, stop the PostgreSQL servers they leave, then etcd;
    /// remove the directory. Blocking.
    fn stop_all(&mut self) {
        for member in &self.members {
            member.kill_patroni();
        }
        let postmasters: Vec<u32> = self
            .members
            .iter()
            .filter_map(Member::postmaster_pid)
            .collect();
        for pid in &postmasters {
            let _ = process::signal_pid(*pid, libc::SIGCONT);
            let _ = process::signal_pid(*pid, libc::SIGINT);
        }
        for pid in &postmasters {
            let children = process::children(*pid);
            if !process::stop_server(*pid, None) {
                eprintln!("diesel_rwsplit::testing::PatroniCluster: postmaster {pid} did not exit");
            }
            for child in children {
                let _ = process::signal_pid(child, libc::SIGKILL);
            }
        }
        if let Some(mut etcd) = lock(&self.etcd).take() {
            let _ = process::signal_pid(etcd.id(), libc::SIGTERM);
            if !process::wait_exit(etcd.id(), Some(&mut etcd), Duration::from_secs(5)) {
                let _ = etcd.kill();
                let _ = etcd.wait();
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "diesel_rwsplit::testing::PatroniCluster: removing {}: {e}",
                    self.dir.display()
                );
            }
        }
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.release();
        }
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// `count` distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// The last lines of a log file.
fn log_tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    process::tail(&String::from_utf8_lossy(&bytes), LOG_TAIL)
}

/// Whether the server at `url` is in recovery (a fresh connection, 3 s at most).
async fn in_recovery(url: &str) -> std::result::Result<bool, BoxError> {
    let probe = async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await?;
        Ok::<bool, BoxError>(row.get(0))
    };
    tokio::time::timeout(REST_TIMEOUT, probe)
        .await
        .map_err(|_| BoxError::from("timed out"))?
}

/// A minimal HTTP/1.1 request to 127.0.0.1:`port`; returns the status and body.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::result::Result<(u16, String), BoxError> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        parse_http(&response)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| BoxError::from(format!("{method} {path}: no answer within {timeout:?}")))?
}

fn parse_http(response: &[u8]) -> std::result::Result<(u16, String), BoxError> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("malformed HTTP status line")?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_owned()));
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    Ok((status, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config<'a>(tags: Vec<(&'a str, &'a str)>, synchronous_mode: bool) -> MemberConfig<'a> {
        MemberConfig {
            scope: "rws-abc123",
            name: "member1",
            dir: Path::new("/dev/shm/rws-abc123"),
            data_dir: Path::new("/dev/shm/rws-abc123/member1"),
            bindir: Path::new("/usr/lib/postgresql/15/bin"),
            pg_port: 40001,
            rest_port: 40002,
            etcd_port: 40003,
            synchronous_mode,
            tags,
        }
    }

    #[test]
    fn the_patroni_yaml_has_every_setting_the_harness_relies_on() {
        let yaml = patroni_yaml(&config(
            vec![("nofailover", "true"), ("group", "analytics \"a\"")],
            true,
        ));
        for expected in [
            "scope: \"rws-abc123\"\n",
            "name: \"member1\"\n",
            "  listen: \"127.0.0.1:40002\"\n",
            "  hosts: [\"127.0.0.1:40003\"]\n",
            "    ttl: 20\n",
            "    loop_wait: 1\n",
            "    retry_timeout: 5\n",
            "    synchronous_mode: true\n",
            "      use_pg_rewind: true\n",
            "        wal_log_hints: \"on\"\n",
            "        full_page_writes: \"on\"\n",
            "        fsync: \"off\"\n",
            "        synchronous_commit: \"on\"\n",
            "        hot_standby: \"on\"\n",
            "  listen: \"127.0.0.1:40001\"\n",
            "  data_dir: \"/dev/shm/rws-abc123/member1\"\n",
            "  bin_dir: \"/usr/lib/postgresql/15/bin\"\n",
            "  pgpass: \"/dev/shm/rws-abc123/member1.pgpass\"\n",
            "      username: \"replicator\"\n",
            "    wal_retrieve_retry_interval: \"100ms\"\n",
            "    - \"host all all 127.0.0.1/32 trust\"\n",
            "    - \"host replication all 127.0.0.1/32 trust\"\n",
            "tags:\n  nofailover: true\n  group: \"analytics \\\"a\\\"\"\n",
        ] {
            assert!(yaml.contains(expected), "missing {expected:?} in:\n{yaml}");
        }
        // Patroni's constraint on its timing settings.
        const { assert!(LOOP_WAIT + 2 * RETRY_TIMEOUT <= TTL) };

        let yaml = patroni_yaml(&config(Vec::new(), false));
        assert!(yaml.contains("    synchronous_mode: false\n"), "{yaml}");
        assert!(yaml.ends_with("tags: {}\n"), "{yaml}");
        // Every line is indented by two spaces per level: no tabs.
        assert!(!yaml.contains('\t'));
    }

    #[test]
    fn cluster_status_is_parsed_from_patroni_json() {
        let body = r#"{"members": [
            {"name": "member0", "role": "replica", "state": "streaming", "host": "127.0.0.1",
             "port": 40001, "timeline": 2, "tags": {"group": "x", "nofailover": true}, "lag": 0},
            {"name": "member1", "role": "leader", "state": "running", "host": "127.0.0.1",
             "port": 40003, "timeline": 2},
            {"name": "stranger", "role": "replica", "state": "starting", "host": "127.0.0.1",
             "port": 40005, "lag": "unknown"}
        ], "scope": "rws-abc"}"#;
        let names = vec!["member0".to_owned(), "member1".to_owned()];
        let status = PatroniStatus::parse(body, &names).unwrap();
        assert_eq!(status.scope, "rws-abc");
        assert_eq!(status.leader().unwrap().index, Some(1));
        let m0 = status.member("member0").unwrap();
        assert_eq!(m0.lag, Some(0));
        assert_eq!(m0.timeline, Some(2));
        assert_eq!(m0.tags["nofailover"], "true");
        assert_eq!(m0.tags["group"], "x");
        let stranger = status.member("stranger").unwrap();
        assert_eq!(
            (stranger.index, stranger.lag, stranger.timeline),
            (None, None, None)
        );
    }

    #[test]
    fn http_responses_plain_and_chunked() {
        let plain = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_http(plain).unwrap(), (200, "{}".to_owned()));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_http(chunked).unwrap(), (503, "abcde".to_owned()));
        assert!(parse_http(b"garbage").is_err());
    }

    #[test]
    fn builder_debug_and_defaults() {
        let builder = PatroniCluster::builder()
            .tags(2, [("nofailover", "true"), ("group", "analytics")])
            .tag(0, "noloadbalance", "true");
        assert_eq!(builder.members, 3);
        assert!(!builder.synchronous_mode);
        assert_eq!(builder.tags.len(), 3);
        assert!(format!("{builder:?}").contains("analytics"));
    }
}
