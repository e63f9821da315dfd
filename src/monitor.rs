#![cfg_attr(not(test), allow(dead_code))] // the waiting helpers are used by the module's tests
//! Replication lag monitor: one background task polls the primary's WAL position and
//! every replica's receive/replay positions and role, and publishes the result in
//! atomics that routing reads without a lock or a round trip.
//!
//! # What is measured
//!
//! Every [`MonitorConfig::interval`] (default 1 s) one *poll round* runs, over the
//! monitor's own connections (application name `diesel-rwsplit monitor`, no TLS,
//! reconnected when they break):
//!
//! 1. the primary: `pg_current_wal_lsn()`;
//! 2. then every replica concurrently: `pg_is_in_recovery()`,
//!    `pg_last_wal_receive_lsn()`, `pg_last_wal_replay_lsn()`.
//!
//! Each probe (connect + query) is bounded by [`MonitorConfig::probe_timeout`]
//! (default 1 s), so a frozen node cannot stall the loop: a round lasts at most two
//! probe timeouts. The primary is asked first, so a replica is never reported behind
//! a position the primary reached after the replica answered.
//!
//! - **Lag in bytes** (receive and replay): the primary's LSN of the same round minus
//!   the replica's, exact 64-bit arithmetic ([`Lsn::bytes_ahead_of`]).
//! - **Lag in time** is computed from LSNs only, never from timestamps
//!   (`pg_stat_replication.replay_lag` keeps its last sample while idle and
//!   `pg_last_xact_replay_timestamp()` keeps ageing while the primary is idle). The
//!   monitor remembers at which round each primary position was first observed. A
//!   replica whose replay LSN `R` is behind the primary is *behind since* the start
//!   of the first round that observed the primary past `R`: the oldest data it lacks
//!   existed then. Its lag is `now - behind_since` (it keeps growing between rounds)
//!   and zero when it has replayed the primary's position of its last round. The
//!   value can under-estimate the true staleness by at most one interval (the
//!   missing data may have been written any time since the round before), and a
//!   replica first seen behind is measured from the monitor's first observation.
//!
//! # Reading the state
//!
//! [`Monitor::is_usable`], [`Monitor::replay_lsn`], [`Monitor::lag_bytes`],
//! [`Monitor::lag`] read atomics only. Fields are published one by one (values
//! first, then the health flags), so a reader racing with a round may combine
//! values of that round and of the previous one; each value was true at one of
//! them, and a replica is usable only if every value it reads passes. A lag
//! measurement older than two rounds in the worst case
//! (`2 × (interval + 2 × probe_timeout)`, e.g. because the primary stopped
//! answering or the runtime starved the task) counts as unknown.
//!
//! # Stopping and cancel-safety
//!
//! Dropping the [`Monitor`] aborts its task ([`tokio::task::JoinHandle::abort`]);
//! its connections are closed (the task's future, which owns them, is dropped at its
//! next yield point). An abort may land between two stores of a round: every field
//! then holds either its old or its new value, which readers tolerate (see above).
//! [`Monitor::wait_next_poll`] is cancel-safe and returns at once when the task is
//! gone.

// Wired into the pool by `pool.rs`; until then only the tests use most of it.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::Lsn;

/// `application_name` of the monitor's connections (to find them in `pg_stat_activity`).
pub(crate) const APPLICATION_NAME: &str = "diesel-rwsplit monitor";

/// At most this many distinct primary positions are remembered for lag-in-time.
const MAX_HISTORY: usize = 8192;

/// How long a closed-by-us connection may take to say goodbye to its server.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Shortest interval and probe timeout accepted (zero would spin or always fail).
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// A node to monitor: a display name and a connection URL.
#[derive(Clone)]
pub(crate) struct NodeTarget {
    /// Shown in logs, errors and [`ReplicaStatus::name`], e.g. `replica1 (127.0.0.1:5433)`.
    /// Must not contain a password.
    pub(crate) name: String,
    /// A libpq-style URL or key/value string, as `tokio_postgres::Config` parses it.
    pub(crate) url: String,
}

impl NodeTarget {
    /// A target from its display name and URL.
    pub(crate) fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        NodeTarget {
            name: name.into(),
            url: url.into(),
        }
    }
}

impl fmt::Debug for NodeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password.
        f.debug_struct("NodeTarget")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How often and how patiently the monitor polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) struct MonitorConfig {
    /// Time between the starts of two poll rounds (default 1 s; at least 1 ms). A
    /// round that takes longer delays the next one instead of piling up.
    pub(crate) interval: Duration,
    /// Bound on one probe of one node, connecting included (default 1 s; at least 1 ms).
    pub(crate) probe_timeout: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(1),
        }
    }
}

impl MonitorConfig {
    fn normalized(self) -> Self {
        MonitorConfig {
            interval: self.interval.max(MIN_PERIOD),
            probe_timeout: self.probe_timeout.max(MIN_PERIOD),
        }
    }

    /// Age beyond which a lag measurement is unknown: two rounds in the worst case.
    fn staleness_bound(&self) -> Duration {
        (self.interval + self.probe_timeout * 2) * 2
    }
}

/// One replica's replication state, as the monitor saw it at its last poll.
///
/// Returned by the pool's `replication_status()`. Lags are `None` when they cannot be
/// measured now: the replica is unreachable or not a replica, the primary did not
/// answer recently, or no poll has completed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// The replica's name as configured (`replicaN (host:port)`, never a password).
    pub name: String,
    /// Bytes of WAL the primary has written that the replica has not yet received.
    pub receive_lag_bytes: Option<u64>,
    /// Bytes of WAL the primary has written that the replica has not yet replayed:
    /// the replica's reads do not see them.
    pub replay_lag_bytes: Option<u64>,
    /// How long the replica has been missing data the primary had (zero when it has
    /// replayed everything the primary had at the last poll). Computed from LSNs, see
    /// the module documentation.
    pub lag: Option<Duration>,
    /// Last position the replica reported having received (kept while it is unreachable).
    pub receive_lsn: Option<Lsn>,
    /// Last position the replica reported having replayed (kept while it is unreachable).
    pub replay_lsn: Option<Lsn>,
    /// When the replica last answered a probe.
    pub last_seen: Option<SystemTime>,
    /// The replica answered the last probe.
    pub healthy: bool,
    /// The replica said it is in recovery (a standby) at its last answer. `false` for
    /// a promoted node: it is not a replica of the primary any more.
    pub in_recovery: bool,
    /// Why the last probe failed, or why the node is not usable as a replica; `None`
    /// when the last probe succeeded on a standby.
    pub last_error: Option<String>,
}

/// An `Option<u64>` in one atomic: 0 is `None`, `v + 1` is `Some(v)` (saturating).
#[derive(Debug, Default)]
struct AtomicOptU64(AtomicU64);

impl AtomicOptU64 {
    fn load(&self) -> Option<u64> {
        self.0.load(Ordering::Acquire).checked_sub(1)
    }

    fn store(&self, value: Option<u64>) {
        self.0
            .store(value.map_or(0, |v| v.saturating_add(1)), Ordering::Release);
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// What the readers see of the primary.
#[derive(Debug)]
struct PrimaryCell {
    name: String,
    lsn: AtomicOptU64,
    healthy: AtomicBool,
    last_error: ArcSwapOption<String>,
}

/// What the readers see of one replica.
#[derive(Debug)]
struct ReplicaCell {
    name: String,
    /// A probe of this replica has completed (successfully or not).
    probed: AtomicBool,
    healthy: AtomicBool,
    in_recovery: AtomicBool,
    receive_lsn: AtomicOptU64,
    replay_lsn: AtomicOptU64,
    receive_lag: AtomicOptU64,
    replay_lag: AtomicOptU64,
    /// Nanoseconds since [`Shared::base`]; `None` when caught up.
    behind_since: AtomicOptU64,
    /// Nanoseconds since [`Shared::base`] of the last round in which both the primary
    /// and this replica (a standby) answered.
    measured_at: AtomicOptU64,
    /// Nanoseconds since the UNIX epoch of its last answer.
    last_seen: AtomicOptU64,
    last_error: ArcSwapOption<String>,
}

impl ReplicaCell {
    fn new(name: String) -> Self {
        ReplicaCell {
            name,
            probed: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            in_recovery: AtomicBool::new(false),
            receive_lsn: AtomicOptU64::default(),
            replay_lsn: AtomicOptU64::default(),
            receive_lag: AtomicOptU64::default(),
            replay_lag: AtomicOptU64::default(),
            behind_since: AtomicOptU64::default(),
            measured_at: AtomicOptU64::default(),
            last_seen: AtomicOptU64::default(),
            last_error: ArcSwapOption::empty(),
        }
    }

    /// Answered the last probe and is a standby.
    fn is_standby(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && self.in_recovery.load(Ordering::Acquire)
    }

    fn set_error(&self, message: Option<String>) {
        let same = match (&*self.last_error.load(), &message) {
            (Some(old), Some(new)) => **old == *new,
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.last_error.store(message.map(Arc::new));
        }
    }
}

/// State shared by the task (writer) and the [`Monitor`] (readers).
#[derive(Debug)]
struct Shared {
    /// Origin of the `Instant`s stored as nanoseconds.
    base: Instant,
    stale_after: Duration,
    primary: PrimaryCell,
    replicas: Box<[ReplicaCell]>,
    rounds_started: AtomicU64,
    polls: AtomicU64,
}

impl Shared {
    fn since_base(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.base))
    }

    fn at(&self, since_base: u64) -> Instant {
        self.base + Duration::from_nanos(since_base)
    }

    /// The replica's lag measurement is recent enough to be trusted.
    fn fresh(&self, cell: &ReplicaCell, now: Instant) -> bool {
        cell.measured_at
            .load()
            .is_some_and(|at| now.saturating_duration_since(self.at(at)) <= self.stale_after)
    }

    fn lag_bytes(&self, cell: &ReplicaCell, now: Instant) -> Option<(u64, Option<u64>)> {
        if !cell.is_standby() || !self.fresh(cell, now) {
            return None;
        }
        Some((cell.replay_lag.load()?, cell.receive_lag.load()))
    }

    fn lag(&self, cell: &ReplicaCell, now: Instant) -> Option<Duration> {
        if !cell.is_standby() || !self.fresh(cell, now) {
            return None;
        }
        Some(match cell.behind_since.load() {
            None => Duration::ZERO,
            Some(since) => now.saturating_duration_since(self.at(since)),
        })
    }
}

/// The replication lag monitor of one pool: a background task and the state it
/// publishes. Dropping it stops the task.
pub(crate) struct Monitor {
    shared: Arc<Shared>,
    done: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("primary", &self.shared.primary.name)
            .field(
                "replicas",
                &self
                    .shared
                    .replicas
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("polls", &self.polls())
            .finish_non_exhaustive()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Monitor {
    /// Start monitoring: spawns one task on the current tokio runtime (panics when
    /// called outside one). The first round starts at once. Replica indexes of the
    /// other methods are positions in `replicas`.
    pub(crate) fn spawn(
        primary: NodeTarget,
        replicas: Vec<NodeTarget>,
        config: MonitorConfig,
    ) -> Monitor {
        let config = config.normalized();
        let shared = Arc::new(Shared {
            base: Instant::now(),
            stale_after: config.staleness_bound(),
            primary: PrimaryCell {
                name: primary.name.clone(),
                lsn: AtomicOptU64::default(),
                healthy: AtomicBool::new(false),
                last_error: ArcSwapOption::empty(),
            },
            replicas: replicas
                .iter()
                .map(|r| ReplicaCell::new(r.name.clone()))
                .collect(),
            rounds_started: AtomicU64::new(0),
            polls: AtomicU64::new(0),
        });
        let (done_tx, done) = watch::channel(0);
        let task = tokio::spawn(run(Arc::clone(&shared), primary, replicas, config, done_tx));
        Monitor { shared, done, task }
    }

    /// Number of replicas monitored.
    pub(crate) fn replica_count(&self) -> usize {
        self.shared.replicas.len()
    }

    /// Last replay position of replica `index`; `None` if it has not answered yet,
    /// did not answer the last probe, is not in recovery, or does not exist. A replica
    /// whose replay LSN is at least a write's commit LSN shows that write.
    pub(crate) fn replay_lsn(&self, index: usize) -> Option<Lsn> {
        let cell = self.shared.replicas.get(index)?;
        if !cell.is_standby() {
            return None;
        }
        cell.replay_lsn.load().map(Lsn)
    }

    /// Replay lag of replica `index` in bytes; `None` when it cannot be measured now
    /// (see [`ReplicaStatus`]).
    pub(crate) fn lag_bytes(&self, index: usize) -> Option<u64> {
        let cell = self.shared.replicas.get(index)?;
        self.shared
            .lag_bytes(cell, Instant::now())
            .map(|(replay, _)| replay)
    }

    /// Replay lag of replica `index` in time (see the module documentation); `None`
    /// when it cannot be measured now.
    pub(crate) fn lag(&self, index: usize) -> Option<Duration> {
        let cell = self.shared.replicas.get(index)?;
        self.shared.lag(cell, Instant::now())
    }

    /// Whether reads may go to replica `index`:
    ///
    /// - before its first probe has completed: only when neither threshold is set
    ///   (routing without a lag bound must not wait for the monitor; the role is
    ///   still guarded by read-only replica sessions);
    /// - otherwise: it answered the last probe, is in recovery, and every threshold
    ///   that is set holds on a fresh measurement; an unknown lag fails any threshold.
    ///
    /// An index out of range is not usable.
    pub(crate) fn is_usable(
        &self,
        index: usize,
        max_lag_bytes: Option<u64>,
        max_lag: Option<Duration>,
    ) -> bool {
        let Some(cell) = self.shared.replicas.get(index) else {
            return false;
        };
        if !cell.probed.load(Ordering::Acquire) {
            return max_lag_bytes.is_none() && max_lag.is_none();
        }
        if !cell.is_standby() {
            return false;
        }
        let now = Instant::now();
        if let Some(max) = max_lag_bytes {
            match self.shared.lag_bytes(cell, now) {
                Some((lag, _)) if lag <= max => {}
                _ => return false,
            }
        }
        if let Some(max) = max_lag {
            match self.shared.lag(cell, now) {
                Some(lag) if lag <= max => {}
                _ => return false,
            }
        }
        true
    }

    /// The primary's WAL position at the last round it answered; `None` before that.
    pub(crate) fn primary_lsn(&self) -> Option<Lsn> {
        self.shared.primary.lsn.load().map(Lsn)
    }

    /// The primary answered the last round's probe.
    pub(crate) fn primary_healthy(&self) -> bool {
        self.shared.primary.healthy.load(Ordering::Acquire)
    }

    /// Why the primary's last probe failed; `None` when it answered.
    pub(crate) fn primary_error(&self) -> Option<String> {
        self.shared
            .primary
            .last_error
            .load_full()
            .map(|e| (*e).clone())
    }

    /// Number of completed poll rounds.
    pub(crate) fn polls(&self) -> u64 {
        self.shared.polls.load(Ordering::Acquire)
    }

    /// Wait until a poll round that started after this call has completed, so the
    /// state reflects the cluster as of this call or later. Returns at once if the
    /// task is no longer running. Cancel-safe.
    pub(crate) async fn wait_next_poll(&self) {
        let target = self.shared.rounds_started.load(Ordering::SeqCst) + 1;
        let mut done = self.done.clone();
        // An error means the task is gone: nothing more will come.
        let _ = done.wait_for(|&completed| completed >= target).await;
    }

    /// Every replica's state, in index order.
    pub(crate) fn status(&self) -> Vec<ReplicaStatus> {
        let now = Instant::now();
        self.shared
            .replicas
            .iter()
            .map(|cell| {
                let lag_bytes = self.shared.lag_bytes(cell, now);
                ReplicaStatus {
                    name: cell.name.clone(),
                    receive_lag_bytes: lag_bytes.and_then(|(_, receive)| receive),
                    replay_lag_bytes: lag_bytes.map(|(replay, _)| replay),
                    lag: self.shared.lag(cell, now),
                    receive_lsn: cell.receive_lsn.load().map(Lsn),
                    replay_lsn: cell.replay_lsn.load().map(Lsn),
                    last_seen: cell
                        .last_seen
                        .load()
                        .map(|n| UNIX_EPOCH + Duration::from_nanos(n)),
                    healthy: cell.healthy.load(Ordering::Acquire),
                    in_recovery: cell.in_recovery.load(Ordering::Acquire),
                    last_error: cell.last_error.load_full().map(|e| (*e).clone()),
                }
            })
            .collect()
    }
}

/// The primary positions observed, each with the start of the first round that saw
/// the primary at or past it; increasing in both.
#[derive(Debug, Default)]
struct History {
    entries: VecDeque<(Lsn, Instant)>,
}

impl History {
    fn observe(&mut self, lsn: Lsn, at: Instant) {
        match self.entries.back() {
            Some(&(last, _)) if lsn == last => {}
            Some(&(last, _)) if lsn < last => {
                // The primary went backwards: another server now answers at that
                // address. What we remembered says nothing about it.
                self.entries.clear();
                self.entries.push_back((lsn, at));
            }
            _ => {
                self.entries.push_back((lsn, at));
                if self.entries.len() > MAX_HISTORY {
                    self.entries.pop_front();
                }
            }
        }
    }

    /// When the primary was first seen past `replayed`; `None` if it never was.
    fn behind_since(&self, replayed: Lsn) -> Option<Instant> {
        let first = self.entries.partition_point(|&(lsn, _)| lsn <= replayed);
        self.entries.get(first).map(|&(_, at)| at)
    }

    /// Forget positions no replica can be behind any more (all replay at or past them).
    fn forget_up_to(&mut self, replayed: Lsn) {
        // Keep the newest entry: it detects a primary that goes backwards.
        while self.entries.len() > 1 && self.entries.front().is_some_and(|&(l, _)| l <= replayed) {
            self.entries.pop_front();
        }
    }
}

/// A dedicated connection whose driver task ends when it is dropped.
struct Conn {
    client: tokio_postgres::Client,
    /// Dropped with the connection: the driver then has [`CLOSE_GRACE`] to close politely.
    _closing: oneshot::Sender<()>,
}

/// One node's probe: its connection settings and current connection.
struct Prober {
    /// `Err` when the URL could not be parsed (the error never echoes the URL).
    config: Result<tokio_postgres::Config, String>,
    timeout: Duration,
    conn: Option<Conn>,
}

/// What a replica answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReplicaSample {
    in_recovery: bool,
    receive: Option<Lsn>,
    replay: Option<Lsn>,
}

impl Prober {
    fn new(target: NodeTarget, timeout: Duration) -> Self {
        let config = tokio_postgres::Config::from_str(&target.url)
            .map(|mut config| {
                config
                    .application_name(APPLICATION_NAME)
                    .connect_timeout(timeout);
                config
            })
            .map_err(|_| "invalid connection URL".to_owned());
        Prober {
            config,
            timeout,
            conn: None,
        }
    }

    /// The first row of `sql`, as text columns; bounded by the probe timeout. Any
    /// failure drops the connection: the next probe reconnects.
    async fn query_row(&mut self, sql: &str) -> Result<Vec<Option<String>>, String> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.query_row_unbounded(sql)).await {
            Ok(Ok(row)) => Ok(row),
            Ok(Err(message)) => {
                self.conn = None;
                Err(message)
            }
            Err(_) => {
                self.conn = None;
                Err(format!("no answer within {timeout:?}"))
            }
        }
    }

    async fn query_row_unbounded(&mut self, sql: &str) -> Result<Vec<Option<String>>, String> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            slot @ None => slot.insert(connect(&self.config).await?),
        };
        let messages = conn
            .client
            .simple_query(sql)
            .await
            .map_err(|e| describe("query", &e))?;
        for message in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                return Ok((0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect());
            }
        }
        Err("query returned no row".to_owned())
    }

    async fn primary_lsn(&mut self) -> Result<Lsn, String> {
        let row = self.query_row("SELECT pg_current_wal_lsn()").await?;
        parse_lsn(row.first())?.ok_or_else(|| "pg_current_wal_lsn() returned NULL".to_owned())
    }

    async fn replica_sample(&mut self) -> Result<ReplicaSample, String> {
        let row = self
            .query_row(
                "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()",
            )
            .await?;
        let in_recovery = match row.first() {
            Some(Some(t)) if t == "t" => true,
            Some(Some(f)) if f == "f" => false,
            _ => return Err("unexpected answer to pg_is_in_recovery()".to_owned()),
        };
        Ok(ReplicaSample {
            in_recovery,
            receive: parse_lsn(row.get(1))?,
            replay: parse_lsn(row.get(2))?,
        })
    }
}

fn parse_lsn(column: Option<&Option<String>>) -> Result<Option<Lsn>, String> {
    match column {
        None => Err("missing column in the answer".to_owned()),
        Some(None) => Ok(None),
        Some(Some(text)) => text
            .parse::<Lsn>()
            .map(Some)
            .map_err(|_| "unexpected LSN format in the answer".to_owned()),
    }
}

async fn connect(config: &Result<tokio_postgres::Config, String>) -> Result<Conn, String> {
    let config = config.as_ref().map_err(Clone::clone)?;
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| describe("connect", &e))?;
    let (closing, closed) = oneshot::channel::<()>();
    tokio::spawn(async move {
        // Errors surface through the client; this only drives the socket. Once the
        // client is dropped the connection says goodbye and ends by itself; the grace
        // period bounds that on a server that does not answer.
        tokio::select! {
            _ = connection => {}
            _ = async {
                let _ = closed.await;
                tokio::time::sleep(CLOSE_GRACE).await;
            } => {}
        }
    });
    Ok(Conn {
        client,
        _closing: closing,
    })
}

/// A driver error as text: the server's message and SQLSTATE, or the error and its
/// causes. tokio-postgres does not put connection parameters (so no password) in
/// either; configuration errors are never formatted (the URL is parsed up front).
fn describe(step: &str, error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!(
            "{step}: {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        );
    }
    let mut message = format!("{step}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// What the task remembers of each replica between rounds (for logging transitions).
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    healthy: Option<bool>,
    in_recovery: Option<bool>,
}

async fn run(
    shared: Arc<Shared>,
    primary: NodeTarget,
    replicas: Vec<NodeTarget>,
    config: MonitorConfig,
    done: watch::Sender<u64>,
) {
    let mut primary = Prober::new(primary, config.probe_timeout);
    let mut probers: Vec<Prober> = replicas
        .into_iter()
        .map(|r| Prober::new(r, config.probe_timeout))
        .collect();
    let mut seen = vec![Seen::default(); probers.len()];
    let mut primary_seen: Option<bool> = None;
    let mut history = History::default();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        shared.rounds_started.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();

        let primary_lsn = match primary.primary_lsn().await {
            Ok(lsn) => {
                history.observe(lsn, started);
                let cell = &shared.primary;
                cell.lsn.store(Some(lsn.0));
                if cell.last_error.load().is_some() {
                    cell.last_error.store(None);
                }
                cell.healthy.store(true, Ordering::Release);
                if primary_seen == Some(false) {
                    tracing::info!(target: "diesel_rwsplit::monitor", primary = %cell.name, "primary answers again");
                }
                primary_seen = Some(true);
                Some(lsn)
            }
            Err(message) => {
                let cell = &shared.primary;
                cell.healthy.store(false, Ordering::Release);
                if primary_seen != Some(false) {
                    tracing::warn!(target: "diesel_rwsplit::monitor", primary = %cell.name, error = %message, "primary does not answer: replica lag cannot be measured");
                }
                cell.last_error.store(Some(Arc::new(message)));
                primary_seen = Some(false);
                None
            }
        };

        let samples =
            futures_util::future::join_all(probers.iter_mut().map(Prober::replica_sample)).await;
        let now = Instant::now();
        let wall = SystemTime::now();
        for ((cell, sample), seen) in shared.replicas.iter().zip(samples).zip(&mut seen) {
            record(
                &shared,
                cell,
                sample,
                primary_lsn,
                &history,
                now,
                wall,
                seen,
            );
        }

        // Forget primary positions every standby has replayed (an unreachable one
        // keeps its last position; MAX_HISTORY bounds what it pins).
        let oldest = shared
            .replicas
            .iter()
            .filter(|c| !c.probed.load(Ordering::Acquire) || c.in_recovery.load(Ordering::Acquire))
            .map(|c| c.replay_lsn.load())
            .min()
            .flatten();
        if let Some(oldest) = oldest {
            history.forget_up_to(Lsn(oldest));
        }

        let polls = shared.polls.fetch_add(1, Ordering::AcqRel) + 1;
        done.send_replace(polls);
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    shared: &Shared,
    cell: &ReplicaCell,
    sample: Result<ReplicaSample, String>,
    primary_lsn: Option<Lsn>,
    history: &History,
    now: Instant,
    wall: SystemTime,
    seen: &mut Seen,
) {
    let sample = match sample {
        Ok(sample) => sample,
        Err(message) => {
            // Unhealthy first, so readers stop using it before anything else changes.
            cell.healthy.store(false, Ordering::Release);
            if seen.healthy != Some(false) {
                tracing::warn!(target: "diesel_rwsplit::monitor", replica = %cell.name, error = %message, "replica does not answer: not used for reads");
            }
            cell.set_error(Some(message));
            cell.probed.store(true, Ordering::Release);
            seen.healthy = Some(false);
            return;
        }
    };
    cell.last_seen
        .store(wall.duration_since(UNIX_EPOCH).ok().map(nanos));
    cell.receive_lsn.store(sample.receive.map(|l| l.0));
    cell.replay_lsn.store(sample.replay.map(|l| l.0));
    if !sample.in_recovery {
        // Not a replica any more: never read from it as one.
        cell.in_recovery.store(false, Ordering::Release);
        cell.measured_at.store(None);
        if seen.in_recovery != Some(false) {
            tracing::error!(target: "diesel_rwsplit::monitor", replica = %cell.name, "replica is not in recovery (promoted?): it no longer follows the primary and gets no reads");
        }
        cell.set_error(Some(
            "not in recovery (pg_is_in_recovery() is false): promoted, not a replica".to_owned(),
        ));
    } else {
        // When the primary did not answer this round, or the standby has not replayed
        // anything yet, the previous measurement ages and becomes stale.
        if let (Some(primary), Some(replay)) = (primary_lsn, sample.replay) {
            cell.replay_lag.store(Some(primary.bytes_ahead_of(replay)));
            cell.receive_lag
                .store(sample.receive.map(|r| primary.bytes_ahead_of(r)));
            let since = if replay >= primary {
                None
            } else {
                history.behind_since(replay)
            };
            cell.behind_since
                .store(since.map(|at| shared.since_base(at)));
            cell.measured_at.store(Some(shared.since_base(now)));
        }
        cell.in_recovery.store(true, Ordering::Release);
        cell.set_error(None);
        if seen.in_recovery == Some(false) {
            tracing::info!(target: "diesel_rwsplit::monitor", replica = %cell.name, "replica is in recovery again");
        }
    }
    cell.healthy.store(true, Ordering::Release);
    cell.probed.store(true, Ordering::Release);
    if seen.healthy == Some(false) {
        tracing::info!(target: "diesel_rwsplit::monitor", replica = %cell.name, "replica answers again");
    }
    seen.healthy = Some(true);
    seen.in_recovery = Some(sample.in_recovery);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_for_test(replicas: usize, stale_after: Duration) -> Arc<Shared> {
        Arc::new(Shared {
            base: Instant::now(),
            stale_after,
            primary: PrimaryCell {
                name: "primary".into(),
                lsn: AtomicOptU64::default(),
                healthy: AtomicBool::new(false),
                last_error: ArcSwapOption::empty(),
            },
            replicas: (0..replicas)
                .map(|i| ReplicaCell::new(format!("replica{}", i + 1)))
                .collect(),
            rounds_started: AtomicU64::new(0),
            polls: AtomicU64::new(0),
        })
    }

    /// A monitor over hand-fed state: no task polls anything.
    fn idle_monitor(shared: Arc<Shared>) -> Monitor {
        let (_tx, done) = watch::channel(0);
        Monitor {
            shared,
            done,
            task: tokio::spawn(std::future::pending()),
        }
    }

    fn standby(replay: u64) -> Result<ReplicaSample, String> {
        Ok(ReplicaSample {
            in_recovery: true,
            receive: Some(Lsn(replay)),
            replay: Some(Lsn(replay)),
        })
    }

    #[test]
    fn optional_atomics_round_trip() {
        let cell = AtomicOptU64::default();
        assert_eq!(cell.load(), None);
        for value in [Some(0), Some(1), Some(u64::MAX - 1), None] {
            cell.store(value);
            assert_eq!(cell.load(), value);
        }
    }

    #[test]
    fn history_dates_the_first_position_a_replica_lacks() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut history = History::default();
        history.observe(Lsn(100), at(0));
        history.observe(Lsn(100), at(10)); // idle primary: first sighting kept
        history.observe(Lsn(200), at(20));
        history.observe(Lsn(300), at(30));
        assert_eq!(history.behind_since(Lsn(50)), Some(at(0)));
        assert_eq!(history.behind_since(Lsn(100)), Some(at(20)));
        assert_eq!(history.behind_since(Lsn(250)), Some(at(30)));
        assert_eq!(history.behind_since(Lsn(300)), None);

        history.forget_up_to(Lsn(250));
        assert_eq!(history.entries.len(), 1);
        assert_eq!(history.behind_since(Lsn(250)), Some(at(30)));
        history.forget_up_to(Lsn(1000));
        assert_eq!(history.entries.len(), 1, "the newest position is kept");

        // A primary that goes backwards is another server: start over.
        history.observe(Lsn(10), at(40));
        assert_eq!(history.behind_since(Lsn(5)), Some(at(40)));
        assert_eq!(history.entries.len(), 1);
    }

    #[test]
    fn history_is_bounded() {
        let t0 = Instant::now();
        let mut history = History::default();
        for i in 0..(MAX_HISTORY as u64 + 10) {
            history.observe(Lsn(i + 1), t0 + Duration::from_millis(i));
        }
        assert_eq!(history.entries.len(), MAX_HISTORY);
    }

    #[tokio::test]
    async fn usable_rule_never_probed_unhealthy_promoted_and_stale() {
        let shared = shared_for_test(1, Duration::from_secs(3600));
        let monitor = idle_monitor(Arc::clone(&shared));
        let cell = &shared.replicas[0];
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut seen = Seen::default();
        let mut history = History::default();

        // Never probed: usable only without thresholds; nothing measured.
        assert!(monitor.is_usable(0, None, None));
        assert!(!monitor.is_usable(0, Some(u64::MAX), None));
        assert!(!monitor.is_usable(0, None, Some(Duration::MAX)));
        assert_eq!(monitor.replay_lsn(0), None);
        assert_eq!(monitor.lag(0), None);
        assert!(!monitor.is_usable(1, None, None), "out of range");

        // Caught up.
        history.observe(Lsn(500), now);
        record(
            &shared,
            cell,
            standby(500),
            Some(Lsn(500)),
            &history,
            now,
            wall,
            &mut seen,
        );
        assert_eq!(monitor.lag_bytes(0), Some(0));
        assert_eq!(monitor.lag(0), Some(Duration::ZERO));
        assert_eq!(monitor.replay_lsn(0), Some(Lsn(500)));
        assert!(monitor.is_usable(0, Some(0), Some(Duration::ZERO)));

        // Behind: byte lag exact, time lag from the first round that saw 600.
        std::thread::sleep(Duration::from_millis(2));
        let later = Instant::now();
        history.observe(Lsn(600), later);
        record(
            &shared,
            cell,
            standby(550),
            Some(Lsn(600)),
            &history,
            later,
            wall,
            &mut seen,
        );
        assert_eq!(monitor.lag_bytes(0), Some(50));
        assert!(monitor.is_usable(0, Some(50), None));
        assert!(!monitor.is_usable(0, Some(49), None));
        std::thread::sleep(Duration::from_millis(2));
        let lag = monitor.lag(0).unwrap();
        assert!(lag > Duration::ZERO);
        assert!(monitor.lag(0).unwrap() >= lag, "lag time keeps growing");
        assert!(!monitor.is_usable(0, None, Some(Duration::ZERO)));

        // Primary silent this round: the old measurement stays until it is stale.
        record(
            &shared,
            cell,
            standby(600),
            None,
            &history,
            later,
            wall,
            &mut seen,
        );
        assert_eq!(monitor.lag_bytes(0), Some(50));
        assert_eq!(monitor.replay_lsn(0), Some(Lsn(600)));

        // Unreachable.
        record(
            &shared,
            cell,
            Err("connect: refused".into()),
            Some(Lsn(600)),
            &history,
            later,
            wall,
            &mut seen,
        );
        assert!(!monitor.is_usable(0, None, None));
        assert_eq!(monitor.replay_lsn(0), None);
        assert_eq!(monitor.lag_bytes(0), None);
        let status = &monitor.status()[0];
        assert!(!status.healthy);
        assert_eq!(status.last_error.as_deref(), Some("connect: refused"));
        assert_eq!(
            status.replay_lsn,
            Some(Lsn(600)),
            "last known position kept"
        );

        // Promoted.
        let promoted = Ok(ReplicaSample {
            in_recovery: false,
            receive: None,
            replay: Some(Lsn(600)),
        });
        record(
            &shared,
            cell,
            promoted,
            Some(Lsn(600)),
            &history,
            later,
            wall,
            &mut seen,
        );
        assert!(!monitor.is_usable(0, None, None));
        assert_eq!(monitor.replay_lsn(0), None);
        let status = &monitor.status()[0];
        assert!(status.healthy && !status.in_recovery);
        assert!(status
            .last_error
            .as_deref()
            .unwrap()
            .contains("not in recovery"));
    }

    #[tokio::test]
    async fn a_stale_measurement_is_unknown() {
        let shared = shared_for_test(1, Duration::from_millis(1));
        let monitor = idle_monitor(Arc::clone(&shared));
        let now = Instant::now();
        let mut history = History::default();
        history.observe(Lsn(10), now);
        let mut seen = Seen::default();
        record(
            &shared,
            &shared.replicas[0],
            standby(10),
            Some(Lsn(10)),
            &history,
            now,
            SystemTime::now(),
            &mut seen,
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(monitor.lag_bytes(0), None);
        assert_eq!(monitor.lag(0), None);
        assert!(!monitor.is_usable(0, Some(u64::MAX), None));
        assert!(
            monitor.is_usable(0, None, None),
            "no threshold: healthy standby"
        );
        assert_eq!(
            monitor.replay_lsn(0),
            Some(Lsn(10)),
            "a replay LSN never goes stale"
        );
    }

    #[tokio::test]
    async fn unreachable_nodes_report_errors_without_passwords() {
        // Port 1 on loopback refuses connections at once.
        let monitor = Monitor::spawn(
            NodeTarget::new(
                "primary (127.0.0.1:1)",
                "postgres://u:s3cretpw@127.0.0.1:1/db",
            ),
            vec![
                NodeTarget::new(
                    "replica1 (127.0.0.1:1)",
                    "postgres://u:s3cretpw@127.0.0.1:1/db",
                ),
                NodeTarget::new("replica2 (bad url)", "postgres://u:s3cretpw@[::1/db?x=%"),
            ],
            MonitorConfig {
                interval: Duration::from_millis(20),
                probe_timeout: Duration::from_millis(500),
            },
        );
        monitor.wait_next_poll().await;
        assert!(monitor.polls() >= 1);
        assert!(!monitor.primary_healthy());
        assert_eq!(monitor.primary_lsn(), None);
        let primary_error = monitor.primary_error().unwrap();
        assert!(!primary_error.contains("s3cretpw"), "{primary_error}");
        for (i, status) in monitor.status().iter().enumerate() {
            assert!(!status.healthy);
            assert!(!monitor.is_usable(i, None, None));
            let error = status.last_error.as_deref().unwrap();
            assert!(!error.contains("s3cretpw"), "{error}");
        }
        assert_eq!(
            monitor.status()[1].last_error.as_deref(),
            Some("invalid connection URL")
        );
        let debug = format!(
            "{monitor:?} {:?}",
            NodeTarget::new("n", "postgres://u:s3cretpw@h/d")
        );
        assert!(!debug.contains("s3cretpw"), "{debug}");
    }

    #[tokio::test]
    async fn wait_next_poll_returns_when_the_task_is_gone() {
        let monitor = idle_monitor(shared_for_test(0, Duration::from_secs(1)));
        // The sender was dropped at once: nothing will ever come.
        tokio::time::timeout(Duration::from_secs(5), monitor.wait_next_poll())
            .await
            .unwrap();
    }
}

#[cfg(all(test, feature = "testing"))]
mod cluster_tests {
    use super::*;
    use crate::testing::LocalCluster;

    const WAIT: Duration = Duration::from_secs(15);
    /// A byte-lag threshold far below the WAL that `write_some_wal` generates.
    const SMALL_LAG: u64 = 1024;

    fn config() -> MonitorConfig {
        MonitorConfig {
            interval: Duration::from_millis(50),
            probe_timeout: Duration::from_millis(500),
        }
    }

    fn spawn(cluster: &LocalCluster) -> Monitor {
        let replicas = cluster
            .replica_urls()
            .into_iter()
            .enumerate()
            .map(|(i, url)| NodeTarget::new(format!("replica{}", i + 1), url))
            .collect();
        Monitor::spawn(
            NodeTarget::new("primary", cluster.primary_url()),
            replicas,
            config(),
        )
    }

    async fn connect(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    /// Wait (poll round by poll round) until `done` holds, or fail with the status.
    async fn until(monitor: &Monitor, what: &str, mut done: impl FnMut(&Monitor) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if done(monitor) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached within {WAIT:?}; primary {:?}, status {:#?}",
                monitor.primary_lsn(),
                monitor.status()
            );
            let _ = tokio::time::timeout(Duration::from_secs(2), monitor.wait_next_poll()).await;
        }
    }

    async fn write_some_wal(primary: &tokio_postgres::Client) {
        primary
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS monitor_churn (id BIGSERIAL PRIMARY KEY, payload TEXT);
                 INSERT INTO monitor_churn (payload) SELECT repeat('x', 100) FROM generate_series(1, 200);",
            )
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caught_up_replicas_show_zero_lag() {
        let cluster = LocalCluster::start(2).await.unwrap();
        cluster.wait_for_replicas(WAIT).await.unwrap();
        let monitor = spawn(&cluster);
        assert_eq!(monitor.replica_count(), 2);
        until(&monitor, "both replicas at zero lag", |m| {
            (0..2).all(|i| {
                m.lag_bytes(i) == Some(0)
                    && m.lag(i) == Some(Duration::ZERO)
                    && m.is_usable(i, Some(0), Some(Duration::ZERO))
            })
        })
        .await;
        assert!(monitor.primary_lsn().is_some());
        assert!(monitor.primary_healthy());
        for (i, status) in monitor.status().iter().enumerate() {
            assert_eq!(status.name, format!("replica{}", i + 1));
            assert!(status.healthy && status.in_recovery, "{status:?}");
            assert_eq!(status.last_error, None);
            assert!(status.last_seen.is_some());
            assert!(status.replay_lsn.is_some_and(|lsn| lsn.0 > 0));
            assert!(monitor.replay_lsn(i).is_some());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_replica_lags_in_bytes_and_time_until_resumed() {
        let cluster = LocalCluster::start(2).await.unwrap();
        let primary = connect(&cluster.primary_url()).await;
        let monitor = spawn(&cluster);
        cluster.wait_for_replicas(WAIT).await.unwrap();
        until(&monitor, "both caught up", |m| {
            m.lag_bytes(0) == Some(0) && m.lag_bytes(1) == Some(0)
        })
        .await;

        cluster.pause_replay(0).await.unwrap();
        let frozen_at = cluster.replay_lsn(0).await.unwrap();
        write_some_wal(&primary).await;
        cluster.wait_for_replica(1, WAIT).await.unwrap();
        let written = cluster.primary_lsn().await.unwrap();
        assert!(written.bytes_ahead_of(frozen_at) > SMALL_LAG);

        until(&monitor, "replica 0 lags, replica 1 does not", |m| {
            m.lag_bytes(0).is_some_and(|lag| lag > SMALL_LAG)
                && m.lag(0).is_some_and(|lag| lag > Duration::ZERO)
                && m.lag_bytes(1) == Some(0)
                // It keeps receiving while replay is paused.
                && m.status()[0]
                    .receive_lag_bytes
                    .is_some_and(|receive| receive < SMALL_LAG)
        })
        .await;
        assert!(!monitor.is_usable(0, Some(SMALL_LAG), None));
        assert!(monitor.is_usable(1, Some(SMALL_LAG), None));
        assert_eq!(monitor.replay_lsn(0), Some(frozen_at));
        let status = &monitor.status()[0];
        assert!(status.replay_lag_bytes.unwrap() >= written.bytes_ahead_of(frozen_at));

        // Lag in time grows while it stays paused, and fails a time threshold.
        let first = monitor.lag(0).unwrap();
        monitor.wait_next_poll().await;
        monitor.wait_next_poll().await;
        let second = monitor.lag(0).unwrap();
        assert!(second > first, "{first:?} then {second:?}");
        until(&monitor, "time threshold exceeded", |m| {
            !m.is_usable(0, None, Some(Duration::from_millis(100)))
                && m.is_usable(1, None, Some(Duration::from_millis(100)))
        })
        .await;

        cluster.resume_replay(0).await.unwrap();
        until(&monitor, "replica 0 caught up again", |m| {
            m.lag_bytes(0) == Some(0)
                && m.lag(0) == Some(Duration::ZERO)
                && m.is_usable(0, Some(SMALL_LAG), Some(Duration::from_millis(100)))
        })
        .await;
        assert!(monitor.replay_lsn(0).unwrap() >= written);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_replica_is_unhealthy_until_started_again() {
        let cluster = LocalCluster::start(2).await.unwrap();
        let monitor = spawn(&cluster);
        until(&monitor, "replica 0 healthy", |m| {
            m.is_usable(0, Some(SMALL_LAG), None)
        })
        .await;

        cluster.stop_replica(0).await.unwrap();
        until(&monitor, "replica 0 unhealthy", |m| {
            let status = &m.status()[0];
            !status.healthy && status.last_error.is_some()
        })
        .await;
        assert!(!monitor.is_usable(0, None, None));
        assert_eq!(monitor.replay_lsn(0), None);
        assert_eq!(monitor.lag_bytes(0), None);
        assert!(
            monitor.is_usable(1, Some(SMALL_LAG), None),
            "{:?}",
            monitor.status()
        );
        let error = monitor.status()[0].last_error.clone().unwrap();
        eprintln!("stopped replica: {error}");
        assert!(!error.contains("postgres://"), "{error}");

        cluster.start_replica(0).await.unwrap();
        until(&monitor, "replica 0 healthy again", |m| {
            let status = &m.status()[0];
            status.healthy && status.last_error.is_none() && m.is_usable(0, Some(SMALL_LAG), None)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_promoted_replica_is_not_usable() {
        let cluster = LocalCluster::start(2).await.unwrap();
        let monitor = spawn(&cluster);
        until(&monitor, "replica 1 usable", |m| {
            m.is_usable(1, None, None) && m.status()[1].in_recovery
        })
        .await;

        cluster.promote_replica(1).await.unwrap();
        until(&monitor, "replica 1 promoted", |m| {
            let status = &m.status()[1];
            status.healthy && !status.in_recovery
        })
        .await;
        assert!(!monitor.is_usable(1, None, None));
        assert_eq!(monitor.replay_lsn(1), None);
        assert_eq!(monitor.lag_bytes(1), None);
        assert!(monitor.status()[1]
            .last_error
            .as_deref()
            .unwrap()
            .contains("not in recovery"));
        until(&monitor, "replica 0 still usable", |m| {
            m.is_usable(0, Some(SMALL_LAG), None)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_monitor_closes_its_connections() {
        let cluster = LocalCluster::start(1).await.unwrap();
        let monitor = spawn(&cluster);
        until(&monitor, "two rounds", |m| m.polls() >= 2).await;

        let count_sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APPLICATION_NAME}'"
        );
        let clients = [
            connect(&cluster.primary_url()).await,
            connect(&cluster.replica_url(0).unwrap()).await,
        ];
        for client in &clients {
            let count: i64 = client.query_one(&count_sql, &[]).await.unwrap().get(0);
            assert_eq!(count, 1, "one monitor connection per node");
        }

        drop(monitor);
        let deadline = Instant::now() + WAIT;
        for client in &clients {
            loop {
                let count: i64 = client.query_one(&count_sql, &[]).await.unwrap().get(0);
                if count == 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "monitor connections still open");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
