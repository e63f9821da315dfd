#![cfg_attr(not(test), allow(dead_code))] // the waiting helpers are used by the module's tests
//! Replication lag monitor: one background task polls the primary's WAL position and
//! every replica's receive/replay positions and role, and publishes the result in
//! atomics that routing reads without a lock or a round trip.
//!
//! # What is measured
//!
//! Every [`MonitorConfig::interval`] (default 1 s) one *poll round* runs, over the
//! monitor's own connections (application name `diesel-rwsplit monitor`, opened as
//! the pool opens its sessions: the URL's TLS settings and the credentials provider;
//! reconnected when they break):
//!
//! 1. the primary: `pg_current_wal_lsn()`;
//! 2. then every replica concurrently: `pg_is_in_recovery()`,
//!    `pg_last_wal_receive_lsn()`, `pg_last_wal_replay_lsn()`.
//!
//! The connections use TCP keepalives (first probe after 10 s idle, then every 5 s,
//! given up after 3), overriding the URL, so that a node that vanished without
//! closing its sockets is noticed between rounds even with a long interval.
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
//! # When the primary does not answer
//!
//! A primary outage must not become a read outage. In a round in which the primary
//! does not answer (refused, failed or timed out), every standby that answers is
//! measured against the primary's *last known position* `K` instead: the larger of
//! the primary's last answer and the highest receive or replay position any standby
//! reports in that round (a primary sends only WAL it has, so what a standby holds
//! existed on it; a cleanly stopped primary streams its shutdown checkpoint, so
//! standbys that were caught up reach or pass its last answer). `K` is dated like a
//! primary answer of that round. For a standby at replay position `R`:
//!
//! - lag in bytes: `K - R`, zero when `R >= K`;
//! - lag in time: zero when `R >= K` (it lacks nothing the primary is known to have
//!   had), else `now - behind_since` as above, `behind_since` being the start of the
//!   first round that saw the primary past `R`, before or during the outage.
//!
//! This *outage measurement* is taken afresh each round from the standby's own replay
//! progress, and it is what [`Monitor::is_usable`] judges while it is the replica's
//! newest measurement. So a replica that was caught up stays usable however long the
//! outage lasts; one behind by more than the byte limit stays unusable until it has
//! replayed to within the limit of `K`; one behind within the time limit stays usable
//! until it has lacked data for longer than the limit. When the primary answers
//! again, the replicas' next answers are measured normally and supersede it.
//!
//! **The bound.** Besides what the limits allow against `K`, a replica judged this way
//! can be missing at most what the primary wrote after the monitor last reached it
//! and that no standby had received: nothing else that the primary ever had. This
//! pool's own writes fail while the primary is unreachable, so they are not among
//! them unless only the monitor cannot reach the primary (writes that do go through
//! still reach standbys, and so raise `K`). An outage measurement needs one answer
//! from the primary since the monitor started: until then nothing bounds a replica,
//! and with a limit it is not usable. [`Monitor::lag_bytes`], [`Monitor::lag`] and
//! [`ReplicaStatus`] keep reporting what the primary itself had, so they become
//! unknown during the outage; only routing uses the outage measurement.
//!
//! # Reading the state
//!
//! [`Monitor::is_usable`], [`Monitor::replay_lsn`], [`Monitor::lag_bytes`],
//! [`Monitor::lag`] read atomics only. Fields are published one by one (values
//! first, then the health flags), so a reader racing with a round may combine
//! values of that round and of the previous one; each value was true at one of
//! them, and a replica is usable only if every value it reads passes. A lag
//! measurement (normal or outage) older than two rounds in the worst case
//! (`2 × (interval + 2 × probe_timeout)`, e.g. because the replica has no replay
//! position or the runtime starved the task) counts as unknown. A normal measurement
//! also ages that way while the primary does not answer; its lags then become
//! unknown, and routing goes by the outage measurement (see above).
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::backend::{NodeEndpoint, ProbeSession, ProbeTarget, ReplicaSample};
use crate::Lsn;
#[cfg(test)]
use crate::{backend::pg::APPLICATION_NAME, connect::PgEndpoint};

/// At most this many distinct primary positions are remembered for lag-in-time.
const MAX_HISTORY: usize = 8192;

/// Shortest interval and probe timeout accepted (zero would spin or always fail).
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// A node to monitor: a display name and how to connect to it.
#[derive(Clone)]
pub(crate) struct NodeTarget {
    /// Shown in logs, errors and [`ReplicaStatus::name`], e.g. `replica1 (127.0.0.1:5433)`.
    /// Must not contain a password.
    pub(crate) name: String,
    /// The pool's recipe for the node (TLS, credentials, keepalives); `Err` when its
    /// URL could not be read (the error never echoes the URL).
    endpoint: Result<Arc<dyn ProbeTarget>, String>,
}

impl NodeTarget {
    /// A target connected to as the pool connects to it.
    pub(crate) fn from_endpoint<E: NodeEndpoint>(endpoint: Arc<E>) -> Self {
        NodeTarget {
            name: endpoint.name().to_owned(),
            endpoint: Ok(endpoint.probe_target()),
        }
    }

    /// A target from its display name and URL, with default connection settings.
    #[cfg(test)]
    pub(crate) fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        let endpoint = PgEndpoint::new("node", &url.into(), &Default::default())
            .map(|e| Arc::new(e).probe_target())
            .map_err(|_| "invalid connection URL".to_owned());
        NodeTarget {
            name: name.into(),
            endpoint,
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
    /// Bytes of WAL the primary has written that the replica has not yet received
    /// (`None` on MySQL and MariaDB, which do not say).
    pub receive_lag_bytes: Option<u64>,
    /// Bytes of WAL the primary has written that the replica has not yet replayed:
    /// the replica's reads do not see them. On MySQL and MariaDB: transactions (GTID
    /// sequence numbers) the replica has not yet applied.
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

/// What a member was at its last answer (see [`ReplicaStatus::role`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemberRole {
    /// Not in recovery: a primary (with a fixed primary, a replica that was
    /// promoted and gets no reads).
    Primary,
    /// In recovery: a standby.
    Replica,
    /// It did not answer its last probe (or none has completed yet).
    Unknown,
}

impl ReplicaStatus {
    /// What the node was at its last answer: with
    /// [`nodes`](crate::SwitchablePoolBuilder::nodes), every member's current role.
    pub fn role(&self) -> MemberRole {
        match (self.healthy, self.in_recovery) {
            (false, _) => MemberRole::Unknown,
            (true, true) => MemberRole::Replica,
            (true, false) => MemberRole::Primary,
        }
    }
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
    /// Replay lag in bytes behind the primary's last known position, measured in a
    /// round in which the primary did not answer (see the module documentation).
    outage_lag: AtomicOptU64,
    /// Like `behind_since`, for that measurement.
    outage_behind_since: AtomicOptU64,
    /// Like `measured_at`, for that measurement.
    outage_at: AtomicOptU64,
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
            outage_lag: AtomicOptU64::default(),
            outage_behind_since: AtomicOptU64::default(),
            outage_at: AtomicOptU64::default(),
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
    /// Discovery mode: the member (index in `replicas`) that answers as the primary,
    /// published after every round (`None`: none, or more than one).
    leader: watch::Sender<Option<usize>>,
    /// Wakes the task for a round now (evidence that the primary moved).
    wake: tokio::sync::Notify,
    /// Discovery mode: a member not in recovery is the primary, not an error.
    discovery: bool,
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

    /// What [`Monitor::is_usable`] judges: the replay lag in bytes and in time of the
    /// replica's newest measurement, normal or taken while the primary did not
    /// answer, if it is fresh.
    fn judged_lag(&self, cell: &ReplicaCell, now: Instant) -> Option<(u64, Duration)> {
        let normal = cell.measured_at.load();
        let outage = cell.outage_at.load();
        // `None` sorts first: a measurement that exists beats one that does not.
        let (at, bytes, since) = if outage > normal {
            (
                outage?,
                cell.outage_lag.load(),
                cell.outage_behind_since.load(),
            )
        } else {
            (normal?, cell.replay_lag.load(), cell.behind_since.load())
        };
        if now.saturating_duration_since(self.at(at)) > self.stale_after {
            return None;
        }
        let lag = since.map_or(Duration::ZERO, |since| {
            now.saturating_duration_since(self.at(since))
        });
        Some((bytes?, lag))
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
    ///
    /// `primary: None` is discovery mode: `replicas` are all the members of one
    /// cluster, roles unknown; each round asks every member whether it is in
    /// recovery, and the one member that is not (with its WAL position) is the
    /// primary of that round ([`Monitor::leader`]). Two members that both claim it
    /// (an old primary not yet fenced) make no primary: writes wait.
    pub(crate) fn spawn(
        primary: Option<NodeTarget>,
        replicas: Vec<NodeTarget>,
        config: MonitorConfig,
    ) -> Monitor {
        let config = config.normalized();
        let shared = Arc::new(Shared {
            base: Instant::now(),
            leader: watch::channel(None).0,
            wake: tokio::sync::Notify::new(),
            discovery: primary.is_none(),
            stale_after: config.staleness_bound(),
            primary: PrimaryCell {
                name: primary
                    .as_ref()
                    .map_or_else(|| "primary (discovered)".to_owned(), |p| p.name.clone()),
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

    /// Discovery mode: the member that answered as the primary in the last round.
    pub(crate) fn leader(&self) -> Option<usize> {
        *self.shared.leader.borrow()
    }

    /// Discovery mode: a receiver that sees every change of [`leader`](Self::leader).
    pub(crate) fn leader_changes(&self) -> watch::Receiver<Option<usize>> {
        self.shared.leader.subscribe()
    }

    /// Start a round now rather than at the next interval (evidence that the
    /// primary moved). Rounds never overlap; calls during a round start one more.
    pub(crate) fn poll_now(&self) {
        self.shared.wake.notify_one();
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
    ///   that is set holds on its newest measurement, which must be fresh (at most
    ///   `2 × (interval + 2 × probe_timeout)` old); an unknown lag fails any threshold.
    ///
    /// The newest measurement is an *outage measurement* when the primary did not
    /// answer in that round (see the module documentation): with `K` the primary's
    /// last known position (its last answer, or more WAL a standby has since
    /// received), `max_lag_bytes` holds when the replica had replayed to within
    /// `max_lag_bytes` of `K`, and `max_lag` holds when it had replayed `K`, or the
    /// first position past its replay position was first seen at most `max_lag` ago.
    /// A replica usable this way can, besides that, be missing at most what the
    /// primary wrote after the monitor last reached it that no standby had received.
    /// It needs one answer from the primary since the monitor started.
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
        if max_lag_bytes.is_none() && max_lag.is_none() {
            return true;
        }
        let Some((lag_bytes, lag)) = self.shared.judged_lag(cell, Instant::now()) else {
            return false;
        };
        max_lag_bytes.is_none_or(|max| lag_bytes <= max) && max_lag.is_none_or(|max| lag <= max)
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

    /// The newest position observed.
    fn last(&self) -> Option<Lsn> {
        self.entries.back().map(|&(lsn, _)| lsn)
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

/// One node's probe: how to reach it and its current monitoring session.
struct Prober {
    endpoint: Result<Arc<dyn ProbeTarget>, String>,
    timeout: Duration,
    session: Option<Box<dyn ProbeSession>>,
}

impl Prober {
    fn new(target: NodeTarget, timeout: Duration) -> Self {
        // The endpoint sets keepalives whatever the URL says: they let the kernel
        // notice a peer that vanished without a reset (host down, network cut) on a
        // connection idle between rounds, so the next probe reconnects at once
        // instead of spending its timeout on a dead socket, and they keep idle
        // connections open through NAT and firewall idle timeouts.
        Prober {
            endpoint: target.endpoint,
            timeout,
            session: None,
        }
    }

    /// One question to the node, bounded by the probe timeout. Any failure drops
    /// the session: the next probe reconnects.
    async fn ask<T>(
        &mut self,
        question: for<'s> fn(
            &'s mut dyn ProbeSession,
        ) -> futures_util::future::BoxFuture<'s, Result<T, String>>,
    ) -> Result<T, String> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.ask_unbounded(question)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(message)) => {
                self.session = None;
                Err(message)
            }
            Err(_) => {
                self.session = None;
                Err(format!("no answer within {timeout:?}"))
            }
        }
    }

    async fn ask_unbounded<T>(
        &mut self,
        question: for<'s> fn(
            &'s mut dyn ProbeSession,
        ) -> futures_util::future::BoxFuture<'s, Result<T, String>>,
    ) -> Result<T, String> {
        if self.session.as_ref().is_some_and(|s| s.is_closed()) {
            self.session = None;
        }
        let session = match &mut self.session {
            Some(session) => session,
            slot @ None => {
                let target = self.endpoint.as_ref().map_err(Clone::clone)?;
                slot.insert(target.open(self.timeout).await?)
            }
        };
        question(&mut **session).await
    }

    async fn primary_lsn(&mut self) -> Result<Lsn, String> {
        self.ask(|s| s.primary_position()).await
    }

    async fn replica_sample(&mut self) -> Result<ReplicaSample, String> {
        self.ask(|s| s.replica_sample()).await
    }
}

/// What the task remembers of each replica between rounds (for logging transitions).
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    healthy: Option<bool>,
    in_recovery: Option<bool>,
}

/// What the task remembers between rounds.
#[derive(Debug)]
struct TaskState {
    history: History,
    /// Per replica, for logging transitions.
    seen: Vec<Seen>,
    primary_seen: Option<bool>,
}

impl TaskState {
    fn new(replicas: usize) -> Self {
        TaskState {
            history: History::default(),
            seen: vec![Seen::default(); replicas],
            primary_seen: None,
        }
    }
}

/// What the replicas' positions are measured against in one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reference {
    /// The primary answered this round with this position.
    Answered(Lsn),
    /// The primary did not answer; the highest position known to exist on it (its
    /// last answer, or WAL a standby has received or replayed since).
    LastKnown(Lsn),
    /// The primary did not answer and never has: nothing to measure against.
    Unknown,
}

/// Publish the primary's answer of a round started at `started`; its position, if
/// it answered.
fn publish_primary(
    shared: &Shared,
    state: &mut TaskState,
    answer: Result<Lsn, String>,
    started: Instant,
) -> Option<Lsn> {
    let cell = &shared.primary;
    match answer {
        Ok(lsn) => {
            state.history.observe(lsn, started);
            cell.lsn.store(Some(lsn.0));
            if cell.last_error.load().is_some() {
                cell.last_error.store(None);
            }
            cell.healthy.store(true, Ordering::Release);
            if state.primary_seen == Some(false) {
                tracing::info!(target: "diesel_rwsplit::monitor", primary = %cell.name, "primary answers again");
            }
            state.primary_seen = Some(true);
            Some(lsn)
        }
        Err(message) => {
            cell.healthy.store(false, Ordering::Release);
            if state.primary_seen != Some(false) {
                tracing::warn!(target: "diesel_rwsplit::monitor", primary = %cell.name, error = %message, "primary does not answer: replicas are judged against its last known position");
            }
            cell.last_error.store(Some(Arc::new(message)));
            state.primary_seen = Some(false);
            None
        }
    }
}

/// Publish the replicas' answers of a round started at `started` (answered by `now`).
fn publish_replicas(
    shared: &Shared,
    state: &mut TaskState,
    primary_lsn: Option<Lsn>,
    samples: Vec<Result<ReplicaSample, String>>,
    started: Instant,
    now: Instant,
    wall: SystemTime,
) {
    let reference = match (primary_lsn, state.history.last()) {
        (Some(lsn), _) => Reference::Answered(lsn),
        (None, None) => Reference::Unknown,
        (None, Some(last)) => {
            // WAL a standby holds was on the primary (it sends only what it has
            // flushed): a primary that only the monitor cannot reach still shows
            // its progress this way. Dated like a primary answer of this round.
            let streamed = samples
                .iter()
                .filter_map(|s| s.as_ref().ok())
                .filter(|s| s.in_recovery)
                .flat_map(|s| [s.receive, s.replay])
                .flatten()
                .max();
            let known = streamed.map_or(last, |s| s.max(last));
            state.history.observe(known, started);
            Reference::LastKnown(known)
        }
    };
    for ((cell, sample), seen) in shared.replicas.iter().zip(samples).zip(&mut state.seen) {
        record(
            shared,
            cell,
            sample,
            reference,
            &state.history,
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
        state.history.forget_up_to(Lsn(oldest));
    }
}

/// Discovery mode: the one member that answered as a primary, if exactly one did.
fn leader_of(samples: &[Result<ReplicaSample, String>]) -> Option<(usize, Lsn)> {
    let mut primaries = samples
        .iter()
        .enumerate()
        .filter_map(|(index, sample)| match sample {
            Ok(ReplicaSample {
                in_recovery: false,
                current: Some(lsn),
                ..
            }) => Some((index, *lsn)),
            _ => None,
        });
    let first = primaries.next()?;
    primaries.next().is_none().then_some(first)
}

/// A member that answered as a primary.
fn claims_primary(sample: &Result<ReplicaSample, String>) -> bool {
    matches!(
        sample,
        Ok(ReplicaSample {
            in_recovery: false,
            ..
        })
    )
}

async fn run(
    shared: Arc<Shared>,
    primary: Option<NodeTarget>,
    replicas: Vec<NodeTarget>,
    config: MonitorConfig,
    done: watch::Sender<u64>,
) {
    let mut primary = primary.map(|p| Prober::new(p, config.probe_timeout));
    let mut probers: Vec<Prober> = replicas
        .into_iter()
        .map(|r| Prober::new(r, config.probe_timeout))
        .collect();
    let mut state = TaskState::new(probers.len());
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.wake.notified() => {}
        }
        shared.rounds_started.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let (primary_lsn, samples) = match primary.as_mut() {
            Some(primary) => {
                // Published before the replicas are asked, so readers see the
                // primary's state as soon as it is known.
                let answer = primary.primary_lsn().await;
                let primary_lsn = publish_primary(&shared, &mut state, answer, started);
                let samples =
                    futures_util::future::join_all(probers.iter_mut().map(Prober::replica_sample))
                        .await;
                (primary_lsn, samples)
            }
            None => {
                let samples =
                    futures_util::future::join_all(probers.iter_mut().map(Prober::replica_sample))
                        .await;
                let leader = leader_of(&samples);
                let mut published = leader.map(|(index, _)| index);
                if leader.is_none() && !samples.iter().any(claims_primary) {
                    // The primary missed a probe and nobody else claims its role:
                    // it stays the primary rather than churn the topology (its
                    // writers see the failure and ask again; a promotion elsewhere
                    // replaces it). Its position is unknown this round.
                    let previous = *shared.leader.borrow();
                    published = previous.filter(|i| samples[*i].is_err());
                }
                let answer = leader
                    .map(|(_, lsn)| lsn)
                    .ok_or_else(|| "no single member answers as the primary".to_owned());
                let primary_lsn = publish_primary(&shared, &mut state, answer, started);
                shared
                    .leader
                    .send_if_modified(|current| std::mem::replace(current, published) != published);
                (primary_lsn, samples)
            }
        };
        publish_replicas(
            &shared,
            &mut state,
            primary_lsn,
            samples,
            started,
            Instant::now(),
            SystemTime::now(),
        );

        let polls = shared.polls.fetch_add(1, Ordering::AcqRel) + 1;
        done.send_replace(polls);
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    shared: &Shared,
    cell: &ReplicaCell,
    sample: Result<ReplicaSample, String>,
    reference: Reference,
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
        cell.outage_at.store(None);
        if shared.discovery {
            if seen.in_recovery != Some(false) {
                tracing::info!(target: "diesel_rwsplit::monitor", member = %cell.name, "member is not in recovery: a primary");
            }
            cell.set_error(None);
        } else {
            if seen.in_recovery != Some(false) {
                tracing::error!(target: "diesel_rwsplit::monitor", replica = %cell.name, "replica is not in recovery (promoted?): it no longer follows the primary and gets no reads");
            }
            cell.set_error(Some(
                "not in recovery (pg_is_in_recovery() is false): promoted, not a replica"
                    .to_owned(),
            ));
        }
    } else {
        // A standby that has not replayed anything yet gets no measurement: the
        // previous one ages and becomes stale.
        let behind_since = |primary: Lsn, replay: Lsn| {
            let since = if replay >= primary {
                None
            } else {
                history.behind_since(replay)
            };
            since.map(|at| shared.since_base(at))
        };
        match (reference, sample.replay) {
            (Reference::Answered(primary), Some(replay)) => {
                cell.replay_lag.store(Some(primary.bytes_ahead_of(replay)));
                cell.receive_lag
                    .store(sample.receive.map(|r| primary.bytes_ahead_of(r)));
                cell.behind_since.store(behind_since(primary, replay));
                cell.measured_at.store(Some(shared.since_base(now)));
            }
            (Reference::LastKnown(known), Some(replay)) => {
                cell.outage_lag.store(Some(known.bytes_ahead_of(replay)));
                cell.outage_behind_since.store(behind_since(known, replay));
                cell.outage_at.store(Some(shared.since_base(now)));
            }
            (Reference::Unknown, _) | (_, None) => {}
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
            // Early enough for tests to date rounds in the past.
            base: Instant::now() - Duration::from_secs(2 * 3600),
            leader: watch::channel(None).0,
            wake: tokio::sync::Notify::new(),
            discovery: false,
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

    #[test]
    fn the_leader_is_the_one_member_not_in_recovery() {
        let primary = |lsn: u64| {
            Ok(ReplicaSample {
                in_recovery: false,
                receive: None,
                replay: None,
                current: Some(Lsn(lsn)),
            })
        };
        let down = || Err::<ReplicaSample, String>("connect: refused".into());
        type Samples = Vec<Result<ReplicaSample, String>>;
        let cases: Vec<(Samples, Option<(usize, Lsn)>)> = vec![
            (vec![standby(1), primary(9), standby(2)], Some((1, Lsn(9)))),
            (vec![primary(5), down(), standby(2)], Some((0, Lsn(5)))),
            (vec![standby(1), standby(2), down()], None),
            // An old primary not fenced yet: no primary until one is demoted.
            (vec![primary(5), primary(7), standby(2)], None),
            (vec![], None),
        ];
        for (samples, expected) in cases {
            assert_eq!(leader_of(&samples), expected, "{samples:?}");
        }
    }

    fn standby(replay: u64) -> Result<ReplicaSample, String> {
        Ok(ReplicaSample {
            in_recovery: true,
            receive: Some(Lsn(replay)),
            replay: Some(Lsn(replay)),
            current: None,
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
            Reference::Answered(Lsn(500)),
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
            Reference::Answered(Lsn(600)),
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
            Reference::Unknown,
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
            Reference::Answered(Lsn(600)),
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
            current: Some(Lsn(700)),
        });
        record(
            &shared,
            cell,
            promoted,
            Reference::Answered(Lsn(600)),
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

    /// A replica's answer in a hand-fed round.
    #[derive(Debug, Clone, Copy)]
    enum Answer {
        Standby { receive: u64, replay: u64 },
        Down,
        Promoted { replay: u64 },
    }
    use Answer::{Down, Promoted, Standby};

    const fn at(lsn: u64) -> Answer {
        Standby {
            receive: lsn,
            replay: lsn,
        }
    }

    impl Answer {
        fn sample(self) -> Result<ReplicaSample, String> {
            match self {
                Standby { receive, replay } => Ok(ReplicaSample {
                    in_recovery: true,
                    receive: Some(Lsn(receive)),
                    replay: Some(Lsn(replay)),
                    current: None,
                }),
                Down => Err("connect: refused".into()),
                Promoted { replay } => Ok(ReplicaSample {
                    in_recovery: false,
                    receive: None,
                    replay: Some(Lsn(replay)),
                    current: Some(Lsn(replay)),
                }),
            }
        }
    }

    /// One hand-fed poll round.
    struct Round {
        /// When it started, in minutes before the checks.
        minutes_ago: u64,
        /// The primary's answer; `None`: it did not answer.
        primary: Option<u64>,
        /// Replica answers in index order; empty: the round has asked only the primary
        /// so far.
        replicas: &'static [Answer],
    }

    const fn round(minutes_ago: u64, primary: Option<u64>, replicas: &'static [Answer]) -> Round {
        Round {
            minutes_ago,
            primary,
            replicas,
        }
    }

    /// `is_usable(replica, max bytes, max minutes)` must be `usable`.
    struct Check(usize, Option<u64>, Option<u64>, bool);

    struct Case {
        name: &'static str,
        rounds: &'static [Round],
        checks: &'static [Check],
    }

    /// Measurements older than this are stale in every case.
    const STALE_MINUTES: u64 = 30;
    const MAX: Option<u64> = Some(u64::MAX);

    const OUTAGE_CASES: &[Case] = &[
        Case {
            name: "primary answers, replicas caught up",
            rounds: &[round(1, Some(1000), &[at(1000), at(1000)])],
            checks: &[Check(0, Some(0), Some(0), true)],
        },
        Case {
            name: "primary stopped: caught-up replicas keep serving past the staleness bound",
            rounds: &[
                round(40, Some(1000), &[at(1000), at(1000)]),
                round(1, None, &[at(1000), at(1000)]),
            ],
            checks: &[
                Check(0, Some(0), Some(0), true),
                Check(1, Some(0), Some(0), true),
            ],
        },
        Case {
            name: "replicas past the last answer (the shutdown checkpoint) lack nothing",
            rounds: &[
                round(40, Some(1000), &[at(1000), at(1000)]),
                round(1, None, &[at(1100), at(1100)]),
            ],
            checks: &[Check(0, Some(0), Some(0), true)],
        },
        Case {
            name: "WAL another standby holds raises the last known position",
            rounds: &[
                round(40, Some(1000), &[at(1000), at(1000)]),
                round(
                    1,
                    None,
                    &[
                        Standby {
                            receive: 1100,
                            replay: 1000,
                        },
                        at(1100),
                    ],
                ),
            ],
            checks: &[
                Check(0, Some(100), None, true),
                Check(0, Some(99), None, false),
                // Behind since the outage round, one minute ago.
                Check(0, None, Some(10), true),
                Check(0, None, Some(0), false),
                Check(1, Some(0), Some(0), true),
            ],
        },
        Case {
            name: "a primary only the monitor cannot reach: standbys show its progress",
            rounds: &[
                round(40, Some(1000), &[at(1000), at(1000)]),
                round(1, None, &[at(1000), at(5000)]),
            ],
            checks: &[
                Check(0, Some(100), None, false),
                Check(0, Some(4000), None, true),
                Check(0, None, Some(10), true),
                Check(0, None, Some(0), false),
                Check(1, Some(0), Some(0), true),
            ],
        },
        Case {
            name: "behind by more than the limit before the outage: still not usable",
            rounds: &[
                round(40, Some(1000), &[at(500), at(1000)]),
                round(1, None, &[at(500), at(1000)]),
            ],
            checks: &[
                Check(0, Some(100), None, false),
                Check(0, Some(500), None, true),
                // Lacks data the primary had 40 minutes ago.
                Check(0, None, Some(10), false),
                Check(0, None, Some(45), true),
                Check(0, None, None, true),
                Check(1, Some(0), Some(0), true),
            ],
        },
        Case {
            name: "replay progress during the outage counts",
            rounds: &[
                round(40, Some(1000), &[at(500), at(1000)]),
                round(20, None, &[at(800), at(1000)]),
                round(1, None, &[at(1000), at(1000)]),
            ],
            checks: &[Check(0, Some(0), Some(0), true)],
        },
        Case {
            name: "the primary never answered: nothing bounds the replicas",
            rounds: &[
                round(2, None, &[at(1000), at(1000)]),
                round(1, None, &[at(1000), at(1000)]),
            ],
            checks: &[
                Check(0, MAX, None, false),
                Check(0, None, MAX, false),
                Check(0, None, None, true),
            ],
        },
        Case {
            name: "a replica down during the outage is not usable and raises nothing",
            rounds: &[
                round(40, Some(1000), &[at(1000), at(1000)]),
                round(1, None, &[Down, at(1000)]),
            ],
            checks: &[
                Check(0, None, None, false),
                Check(0, MAX, MAX, false),
                Check(1, Some(0), Some(0), true),
            ],
        },
        Case {
            name: "a node promoted during the outage is not usable and raises nothing",
            rounds: &[
                round(40, Some(1000), &[at(1000), at(1000)]),
                round(1, None, &[Promoted { replay: 9000 }, at(1000)]),
            ],
            checks: &[
                Check(0, None, None, false),
                Check(1, Some(0), Some(0), true),
            ],
        },
        Case {
            name: "an outage measurement goes stale like any other",
            rounds: &[
                round(50, Some(1000), &[at(1000), at(1000)]),
                round(STALE_MINUTES + 10, None, &[at(1000), at(1000)]),
            ],
            checks: &[Check(0, MAX, None, false), Check(0, None, None, true)],
        },
        Case {
            name: "the primary is back: its measurement supersedes the outage one",
            rounds: &[
                round(40, Some(1000), &[at(500), at(1000)]),
                round(20, None, &[at(1000), at(1000)]),
                round(1, Some(9000), &[at(1000), at(9000)]),
            ],
            checks: &[
                Check(0, Some(7999), None, false),
                Check(0, Some(8000), None, true),
                // Behind since the primary was first seen past 1000, a minute ago.
                Check(0, None, Some(10), true),
                Check(0, None, Some(0), false),
                Check(1, Some(0), Some(0), true),
            ],
        },
        Case {
            name: "the primary is back, replicas not asked yet: the outage measurement stands",
            rounds: &[
                round(40, Some(1000), &[at(1000), at(1000)]),
                round(20, None, &[at(1000), at(1000)]),
                round(1, Some(9000), &[]),
            ],
            checks: &[Check(0, Some(0), Some(0), true)],
        },
    ];

    #[tokio::test]
    async fn replicas_are_judged_on_evidence_while_the_primary_does_not_answer() {
        for case in OUTAGE_CASES {
            let shared = shared_for_test(2, Duration::from_secs(STALE_MINUTES * 60));
            let monitor = idle_monitor(Arc::clone(&shared));
            let mut state = TaskState::new(2);
            let checked_at = Instant::now();
            for round in case.rounds {
                let started = checked_at - Duration::from_secs(round.minutes_ago * 60);
                let answer = round
                    .primary
                    .map(Lsn)
                    .ok_or_else(|| "connect: refused".to_owned());
                let primary = publish_primary(&shared, &mut state, answer, started);
                if !round.replicas.is_empty() {
                    let samples = round.replicas.iter().map(|a| a.sample()).collect();
                    publish_replicas(
                        &shared,
                        &mut state,
                        primary,
                        samples,
                        started,
                        started,
                        SystemTime::now(),
                    );
                }
            }
            for &Check(index, max_bytes, max_minutes, usable) in case.checks {
                let max_lag = max_minutes.map(|m| Duration::from_secs(m.saturating_mul(60)));
                assert_eq!(
                    monitor.is_usable(index, max_bytes, max_lag),
                    usable,
                    "{}: replica {index}, max bytes {max_bytes:?}, max minutes {max_minutes:?}; {:#?}",
                    case.name,
                    monitor.status()
                );
            }
        }
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
            Reference::Answered(Lsn(10)),
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
            Some(NodeTarget::new(
                "primary (127.0.0.1:1)",
                "postgres://u:s3cretpw@127.0.0.1:1/db",
            )),
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

    #[test]
    fn probes_use_short_keepalives_whatever_the_url_says() {
        use crate::connect::{KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_RETRIES};
        // Probes open their sessions through the node's endpoint.
        let endpoint = PgEndpoint::new(
            "n",
            "host=127.0.0.1 user=u keepalives=0 keepalives_idle=7200",
            &Default::default(),
        )
        .unwrap();
        let config = endpoint.config();
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(config.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
        assert_eq!(config.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
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
            Some(NodeTarget::new("primary", cluster.primary_url())),
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

    /// Wait for `rounds` more rounds after `stale` first holds, asserting `every_round`
    /// after each round.
    async fn for_rounds_past(
        monitor: &Monitor,
        rounds: usize,
        stale: impl Fn(&Monitor) -> bool,
        every_round: impl Fn(&Monitor),
    ) {
        let deadline = Instant::now() + WAIT;
        let mut past = 0;
        while past < rounds {
            assert!(
                Instant::now() < deadline,
                "not reached within {WAIT:?}: {:#?}",
                monitor.status()
            );
            monitor.wait_next_poll().await;
            every_round(monitor);
            if stale(monitor) {
                past += 1;
            }
        }
    }

    /// The measurements taken while the primary answered are stale: the old rule
    /// gave up on every replica with a limit from here on.
    fn stale_without_primary(m: &Monitor) -> bool {
        !m.primary_healthy() && (0..m.replica_count()).all(|i| m.lag_bytes(i).is_none())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caught_up_replicas_keep_serving_reads_while_the_primary_is_down() {
        let cluster = LocalCluster::start(2).await.unwrap();
        let monitor = spawn(&cluster);
        cluster.wait_for_replicas(WAIT).await.unwrap();
        let usable = |m: &Monitor| (0..2).all(|i| m.is_usable(i, Some(SMALL_LAG), None));
        until(&monitor, "both usable", usable).await;

        cluster.stop_primary().await.unwrap();
        until(&monitor, "primary down", |m| !m.primary_healthy()).await;
        for_rounds_past(&monitor, 3, stale_without_primary, |m| {
            assert!(usable(m), "during the outage: {:#?}", m.status());
        })
        .await;
        for i in 0..2 {
            // Both have replayed the shutdown checkpoint: they lack nothing.
            assert!(
                monitor.is_usable(i, Some(0), Some(Duration::ZERO)),
                "{:#?}",
                monitor.status()
            );
        }

        cluster.start_primary().await.unwrap();
        let measured = |m: &Monitor| {
            m.primary_healthy() && (0..2).all(|i| m.lag_bytes(i).is_some_and(|b| b < SMALL_LAG))
        };
        for_rounds_past(&monitor, 2, measured, |m| {
            assert!(usable(m), "after the restart: {:#?}", m.status());
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_behind_when_the_primary_stops_stays_unusable_until_it_replays() {
        let cluster = LocalCluster::start(2).await.unwrap();
        let primary = connect(&cluster.primary_url()).await;
        let monitor = spawn(&cluster);
        cluster.wait_for_replicas(WAIT).await.unwrap();
        until(&monitor, "both caught up", |m| {
            m.lag_bytes(0) == Some(0) && m.lag_bytes(1) == Some(0)
        })
        .await;
        cluster.pause_replay(0).await.unwrap();
        write_some_wal(&primary).await;
        cluster.wait_for_replica(1, WAIT).await.unwrap();
        until(&monitor, "replica 0 behind", |m| {
            m.lag_bytes(0).is_some_and(|lag| lag > SMALL_LAG)
        })
        .await;

        cluster.stop_primary().await.unwrap();
        until(&monitor, "primary down", |m| !m.primary_healthy()).await;
        for_rounds_past(&monitor, 3, stale_without_primary, |m| {
            assert!(!m.is_usable(0, Some(SMALL_LAG), None), "{:#?}", m.status());
            assert!(!m.is_usable(0, None, Some(Duration::ZERO)));
            assert!(m.is_usable(0, None, None), "without a limit it serves");
            assert!(m.is_usable(1, Some(SMALL_LAG), None), "{:#?}", m.status());
        })
        .await;

        // It received everything before the primary stopped: replaying it is enough.
        cluster.resume_replay(0).await.unwrap();
        until(&monitor, "replica 0 replayed what it lacked", |m| {
            m.is_usable(0, Some(SMALL_LAG), Some(Duration::ZERO))
        })
        .await;
        assert!(!monitor.primary_healthy());
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
