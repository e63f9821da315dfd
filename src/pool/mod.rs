//! `SwitchablePool`: one bb8 pool per node, replica balancing, health and fallback.

mod causal;
mod export;
#[cfg(feature = "patroni")]
mod patroni;
mod topology;

use topology::Primary;
pub use topology::Topology;

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use diesel_async::AsyncPgConnection;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::backend::NodeEndpoint;
use crate::classify::Classifier;
use crate::connect::ConnectSettings;
use crate::connection::{
    BbNodePool, Handle, InterlockMode, NodeConnection, NodeFailure, NodePool as NodeConnections,
    NodePoolSettings, NodeSource, OnConnect, ReplicaLease, SwitchTarget, SwitchableConnection,
};
use crate::monitor::{Monitor, MonitorConfig, NodeTarget};
use crate::router::{GroupId, Router};
use crate::stats::StatsSnapshot;
use crate::{CredentialsProvider, Error, Route, Target};

/// How replica-first connections choose among the admitted replicas.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Balance {
    /// Each in turn (default).
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// The replica with the fewest connections currently checked out through this pool.
    LeastOutstanding,
    /// At random, in proportion to these weights (one per replica, in order; a
    /// weight of 0 takes a replica out of normal rotation).
    Weighted(Vec<u32>),
    /// The replica the lag monitor last saw least behind (in replayed bytes).
    LeastLag,
}

/// Health of one replica as seen by this pool. All fields are atomics: selection
/// reads them without a lock.
#[derive(Debug)]
struct Health {
    /// Out of rotation until a background probe succeeds.
    ejected: AtomicBool,
    /// Nanoseconds since the pool's epoch of the next probe of an ejected replica.
    next_probe_at: AtomicU64,
    consecutive_failures: AtomicU32,
    probing: AtomicBool,
    /// A suspicion probe (one new session) is under way.
    suspecting: AtomicBool,
    outstanding: AtomicUsize,
    /// Patroni tags it `noloadbalance`: no reads.
    no_load_balance: AtomicBool,
    /// The group Patroni's `group` tag puts it in, when the configuration
    /// gives it none (`NO_GROUP`: none).
    tag_group: AtomicUsize,
}

/// No group in [`Health::tag_group`].
const NO_GROUP: usize = usize::MAX;

impl Default for Health {
    fn default() -> Self {
        Health {
            ejected: AtomicBool::default(),
            next_probe_at: AtomicU64::default(),
            consecutive_failures: AtomicU32::default(),
            probing: AtomicBool::default(),
            suspecting: AtomicBool::default(),
            outstanding: AtomicUsize::default(),
            no_load_balance: AtomicBool::default(),
            tag_group: AtomicUsize::new(NO_GROUP),
        }
    }
}

struct NodePool<C: SwitchTarget> {
    /// Shared with every lease of the node: a checkout copies no string.
    name: Arc<str>,
    pool: Arc<dyn NodeConnections<C>>,
    /// Shared with the node's checked-out connections, which keep its outstanding count.
    health: Arc<Health>,
    weight: u32,
    /// The replica group it belongs to (`None`: the default group).
    group: Option<GroupId>,
}

impl<C: SwitchTarget> NodePool<C> {
    /// Its replica group: the configuration's, else Patroni's tag.
    fn group(&self) -> Option<GroupId> {
        self.group.or_else(|| {
            let tagged = self.health.tag_group.load(Ordering::Relaxed);
            (tagged != NO_GROUP).then_some(tagged)
        })
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn health(&self) -> &Health {
        &self.health
    }

    fn weight(&self) -> u32 {
        self.weight
    }

    async fn checkout(&self) -> Result<NodeConnection<C>, NodeFailure> {
        self.pool.checkout().await
    }
}

/// One checkout of a replica in its outstanding count, from before the checkout
/// starts until the connection goes back: a dropped checkout future or a
/// returned connection gives it back.
struct Outstanding(Arc<Health>);

impl Outstanding {
    fn enter(health: &Arc<Health>) -> Self {
        health.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(Arc::clone(health))
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A replica connection that keeps its node's outstanding count while checked out.
struct Counted<C> {
    inner: NodeConnection<C>,
    _outstanding: Outstanding,
}

impl<C> Deref for Counted<C> {
    type Target = C;

    fn deref(&self) -> &C {
        &self.inner
    }
}

impl<C> DerefMut for Counted<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.inner
    }
}

/// How long past the replica statement timeout the client waits for a read's
/// first row before it decides the replica is hung: the server's own timeout
/// answers well within it on a node that runs.
pub const REPLICA_READ_GRACE: Duration = Duration::from_secs(1);

/// Backoff of ejected replicas: `base * 2^(failures - 1)`, capped.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    fn after(self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

struct PoolInner<C: SwitchTarget> {
    epoch: Instant,
    primary: Primary<C>,
    replicas: Vec<NodePool<C>>,
    next_replica: AtomicUsize,
    /// Round-robin cursors of each replica group's replicas (by group id), and of
    /// the grouped replicas as a whole when the default group cannot serve: each
    /// rotation keeps its own, so that one does not skew another.
    next_in_group: Box<[AtomicUsize]>,
    next_grouped: AtomicUsize,
    random_state: AtomicU64,
    router: Arc<Router<C>>,
    default_route: Route,
    balance: Balance,
    backoff: Backoff,
    fallback_to_primary: bool,
    /// Some replica belongs to a group: checkouts try the default group first.
    grouped: AtomicBool,
    /// Every group name the pool or its classifier knows, by group id (Patroni's
    /// `group` tags are matched against them).
    #[cfg_attr(not(feature = "patroni"), allow(dead_code))]
    group_names: Box<[Arc<str>]>,
    /// Replication lag awareness (absent without replicas). Dropped with the pool,
    /// which stops its task.
    monitor: Option<Monitor>,
    max_lag_bytes: Option<u64>,
    max_lag: Option<Duration>,
    causal_wait: Duration,
    session_window: Duration,
    session_writes: causal::SessionWrites,
    /// Evidence that the primary moved: whoever follows the cluster looks now.
    rediscover_now: Arc<tokio::sync::Notify>,
    #[cfg(feature = "metrics")]
    publisher: export::Publisher,
}

impl<C: SwitchTarget> PoolInner<C> {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn replica(&self, index: usize) -> &NodePool<C> {
        &self.replicas[index]
    }

    fn is_admitted(&self, index: usize) -> bool {
        !self.replica(index).health().ejected.load(Ordering::Relaxed)
    }

    /// In rotation, and neither promoted, unreachable nor over a lag threshold as the
    /// monitor last saw it.
    fn is_routable(&self, index: usize) -> bool {
        self.is_admitted(index)
            && !self
                .replica(index)
                .health()
                .no_load_balance
                .load(Ordering::Relaxed)
            && self
                .monitor
                .as_ref()
                .is_none_or(|m| m.is_usable(index, self.max_lag_bytes, self.max_lag))
    }

    /// Admitted replicas in the order they should be tried, per the balancing
    /// policy: with replica groups, those of the default group (no group) first,
    /// then the others, so that a group's replicas serve the reads routed to them
    /// and others only when no default replica can.
    fn replica_order(&self, excluding: Option<usize>) -> Vec<usize> {
        let cursor = &self.next_replica;
        if !self.grouped.load(Ordering::Relaxed) {
            return self.order_among(excluding, |_| true, cursor);
        }
        let mut order = self.order_among(excluding, |i| self.replica(i).group().is_none(), cursor);
        order.extend(self.order_among(
            excluding,
            |i| self.replica(i).group().is_some(),
            &self.next_grouped,
        ));
        order
    }

    /// The routable replicas of `group`, in policy order, `excluding` one.
    fn group_order(&self, group: GroupId, excluding: Option<usize>) -> Vec<usize> {
        let Some(cursor) = self.next_in_group.get(group) else {
            // A group the classifier names and no replica carries.
            return Vec::new();
        };
        self.order_among(
            excluding,
            |i| self.replica(i).group() == Some(group),
            cursor,
        )
    }

    /// Routable replicas for which `member` holds, in policy order; `cursor` is
    /// the rotation of this set of replicas.
    fn order_among(
        &self,
        excluding: Option<usize>,
        member: impl Fn(usize) -> bool,
        cursor: &AtomicUsize,
    ) -> Vec<usize> {
        let mut admitted: Vec<usize> = (0..self.replicas.len())
            .filter(|i| Some(*i) != excluding && member(*i) && self.is_routable(*i))
            .collect();
        if admitted.len() <= 1 {
            return admitted;
        }
        let first = match &self.balance {
            Balance::RoundRobin => cursor.fetch_add(1, Ordering::Relaxed) % admitted.len(),
            Balance::Random => (self.random() % admitted.len() as u64) as usize,
            Balance::LeastOutstanding => {
                let load = |i: &usize| {
                    self.replica(*i)
                        .health()
                        .outstanding
                        .load(Ordering::Relaxed)
                };
                let least = admitted.iter().map(load).min().unwrap_or(0);
                // Among equally loaded replicas, rotate so that ties spread.
                let tied: Vec<usize> = (0..admitted.len())
                    .filter(|p| load(&admitted[*p]) == least)
                    .collect();
                tied[cursor.fetch_add(1, Ordering::Relaxed) % tied.len()]
            }
            Balance::LeastLag => {
                let lag = |i: &usize| {
                    self.monitor
                        .as_ref()
                        .and_then(|m| m.lag_bytes(*i))
                        .unwrap_or(u64::MAX)
                };
                admitted.sort_by_key(lag);
                0
            }
            Balance::Weighted(_) => {
                let total: u64 = admitted
                    .iter()
                    .map(|i| u64::from(self.replica(*i).weight()))
                    .sum();
                if total == 0 {
                    0
                } else {
                    let mut ticket = self.random() % total;
                    admitted
                        .iter()
                        .position(|i| {
                            let weight = u64::from(self.replica(*i).weight());
                            if ticket < weight {
                                true
                            } else {
                                ticket -= weight;
                                false
                            }
                        })
                        .unwrap_or(0)
                }
            }
        };
        admitted.rotate_left(first);
        admitted
    }

    /// xorshift64*: a shared, lock-free, statistically adequate generator for balancing.
    fn random(&self) -> u64 {
        let mut x = self.random_state.load(Ordering::Relaxed);
        loop {
            let mut next = x;
            next ^= next >> 12;
            next ^= next << 25;
            next ^= next >> 27;
            match self.random_state.compare_exchange_weak(
                x,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next.wrapping_mul(0x2545_F491_4F6C_DD1D),
                Err(actual) => x = actual,
            }
        }
    }
}

impl<C: SwitchTarget> PoolInner<C> {
    /// Take replica `index` out of rotation for a backoff and start probing it.
    fn eject(self: &Arc<Self>, index: usize, error: &str) {
        let node = self.replica(index);
        if node.health().ejected.load(Ordering::Acquire) {
            // Two checkouts failing at once: one ejection, one backoff step.
            return;
        }
        let failures = node
            .health()
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let backoff = self.backoff.after(failures);
        let until = self
            .now()
            .saturating_add(u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX));
        node.health().next_probe_at.store(until, Ordering::Relaxed);
        node.health().ejected.store(true, Ordering::Relaxed);
        self.router.stats.record_ejection();
        tracing::warn!(target: "diesel_rwsplit::pool", replica = node.name(), error, backoff = ?backoff, "replica ejected");
        if !node.health().probing.swap(true, Ordering::Relaxed) {
            // Weak: a probe must not keep a dropped pool (and its monitor) alive.
            tokio::spawn(Self::probe(Arc::downgrade(self), index));
        }
    }

    /// Probe an ejected replica after each backoff until a checkout succeeds, then
    /// re-admit it. Ends early when the pool is dropped.
    async fn probe(pool: Weak<Self>, index: usize) {
        loop {
            let wait = {
                let Some(pool) = pool.upgrade() else { return };
                let until = pool
                    .replica(index)
                    .health()
                    .next_probe_at
                    .load(Ordering::Relaxed);
                until.saturating_sub(pool.now())
            };
            tokio::time::sleep(Duration::from_nanos(wait)).await;
            let Some(pool) = pool.upgrade() else { return };
            let node = pool.replica(index);
            match node.pool.probe().await {
                Ok(()) => {
                    node.health()
                        .consecutive_failures
                        .store(0, Ordering::Relaxed);
                    node.health().probing.store(false, Ordering::Relaxed);
                    node.health().ejected.store(false, Ordering::Relaxed);
                    pool.router.stats.record_readmission();
                    tracing::info!(target: "diesel_rwsplit::pool", replica = node.name(), "replica re-admitted");
                    return;
                }
                Err(e) => {
                    let failures = node
                        .health()
                        .consecutive_failures
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    let backoff = pool.backoff.after(failures);
                    let until = pool
                        .now()
                        .saturating_add(u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX));
                    node.health().next_probe_at.store(until, Ordering::Relaxed);
                    tracing::debug!(target: "diesel_rwsplit::pool", replica = node.name(), error = %e, "probe failed");
                }
            }
        }
    }

    /// Check out a replica, trying routable replicas in policy order and ejecting
    /// the ones that fail. `None`: no replica could be checked out.
    async fn checkout_replica(
        self: &Arc<Self>,
        excluding: Option<usize>,
    ) -> Option<ReplicaLease<C>> {
        // A read retried after its replica failed goes to another replica of the
        // same group first, if it had one, then to the others.
        if let Some(group) = excluding.and_then(|failed| self.replica(failed).group()) {
            let others: Vec<usize> = self
                .replica_order(excluding)
                .into_iter()
                .filter(|i| self.replica(*i).group() != Some(group))
                .collect();
            for index in self.group_order(group, excluding).into_iter().chain(others) {
                if let Some(lease) = self.checkout_replica_at(index).await {
                    return Some(lease);
                }
            }
            return None;
        }
        for index in self.replica_order(excluding) {
            if let Some(lease) = self.checkout_replica_at(index).await {
                return Some(lease);
            }
        }
        None
    }

    /// Check out a replica of `group`, trying its routable replicas in policy order.
    /// `None`: none of them could be checked out.
    async fn checkout_group_replica(self: &Arc<Self>, group: GroupId) -> Option<ReplicaLease<C>> {
        for index in self.group_order(group, None) {
            if let Some(lease) = self.checkout_replica_at(index).await {
                return Some(lease);
            }
        }
        None
    }

    /// Check out replica `index`. A replica that fails is ejected; one that is
    /// only saturated (every connection busy for the checkout timeout) is not, and
    /// the caller moves on to the next node. Cancel-safe.
    async fn checkout_replica_at(self: &Arc<Self>, index: usize) -> Option<ReplicaLease<C>> {
        let node = self.replica(index);
        let outstanding = Outstanding::enter(&node.health);
        match node.checkout().await {
            Ok(handle) => {
                node.health()
                    .consecutive_failures
                    .store(0, Ordering::Relaxed);
                self.router.stats.record_checkout(Target::Replica);
                let handle: Handle<C> = Handle::new(Box::new(Counted {
                    inner: handle,
                    _outstanding: outstanding,
                }));
                Some(ReplicaLease {
                    handle,
                    index,
                    name: Arc::clone(&node.name),
                    group: node.group(),
                })
            }
            Err(failure) if !failure.kind.is_node_failure() => {
                self.router.stats.record_replica_saturation();
                tracing::debug!(target: "diesel_rwsplit::pool", replica = node.name(), error = %failure, "replica saturated: trying the next node");
                None
            }
            Err(failure) => {
                if self.is_admitted(index) {
                    self.eject(index, &failure.to_string());
                }
                None
            }
        }
    }

    async fn checkout_primary(&self) -> Result<Handle<C>, Error> {
        Ok(self.checkout_primary_in_generation().await?.0)
    }

    /// A primary session and the topology generation it was checked out in (0 with
    /// a fixed primary).
    async fn checkout_primary_in_generation(&self) -> Result<(Handle<C>, u64), Error> {
        let checked_out = match &self.primary {
            Primary::Fixed(primary) => {
                let handle =
                    primary
                        .checkout()
                        .await
                        .map_err(|failure| Error::PrimaryUnavailable {
                            node: primary.name.to_string(),
                            kind: failure.kind,
                            source: failure.into_source(),
                        })?;
                (Handle::new(handle), 0)
            }
            Primary::Discovered(discovered) => self.checkout_discovered(discovered).await?,
        };
        self.router.stats.record_checkout(Target::Primary);
        Ok(checked_out)
    }

    /// A replica lost a session or hung on a read: one new session decides. If the
    /// node does not serve one (refused, no answer, shutting down), it is ejected;
    /// if it does, one session died and the node is fine. One probe at a time.
    fn suspect(self: &Arc<Self>, index: usize, why: &str) {
        let node = self.replica(index);
        if !self.is_admitted(index) || node.health().suspecting.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(target: "diesel_rwsplit::pool", replica = node.name(), why, "replica suspected: probing it with a new session");
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let Some(pool) = pool.upgrade() else { return };
            let node = pool.replica(index);
            let outcome = node.pool.probe().await;
            node.health().suspecting.store(false, Ordering::Release);
            match outcome {
                Err(failure) if failure.kind.is_node_failure() && pool.is_admitted(index) => {
                    pool.eject(index, &failure.to_string());
                }
                _ => {}
            }
        });
    }
}

/// The pool as its connections' node source.
struct Source<C: SwitchTarget>(Arc<PoolInner<C>>);

impl<C: SwitchTarget> NodeSource<C> for Source<C> {
    fn acquire_primary(&self) -> BoxFuture<'static, Result<(Handle<C>, u64), Error>> {
        let inner = Arc::clone(&self.0);
        async move { inner.checkout_primary_in_generation().await }.boxed()
    }

    fn acquire_other_replica(&self, failed: usize) -> BoxFuture<'static, Option<ReplicaLease<C>>> {
        let inner = Arc::clone(&self.0);
        async move { inner.checkout_replica(Some(failed)).await }.boxed()
    }

    fn replica_suspect(&self, index: usize, why: &str) {
        self.0.suspect(index, why);
    }

    fn acquire_group_replica(&self, group: GroupId) -> BoxFuture<'static, Option<ReplicaLease<C>>> {
        let inner = Arc::clone(&self.0);
        async move { inner.checkout_group_replica(group).await }.boxed()
    }

    fn primary_generation(&self) -> u64 {
        self.0.topology_generation()
    }
}

/// A pool of [`SwitchableConnection`]s over a primary and its replicas.
///
/// Under it there is one bb8 pool of diesel-async connections per node. Replica
/// connections are read-only at the server (`default_transaction_read_only = on`),
/// so a write that got past the classifier fails loudly (SQLSTATE 25006) instead
/// of landing anywhere. The primary pool opens no connection until a connection
/// first flips to it.
///
/// Health: a replica that fails to serve a new session (refused, no answer within
/// the connect timeout, shutting down, bad credentials) is ejected for a backoff
/// (exponential, capped) and probed in the background until it answers, then
/// re-admitted. A replica that loses one session, or hangs a read, is probed with
/// a new session first; a replica whose connections are all busy is saturated,
/// never ejected (see the crate docs, "Failure behaviour"). The primary is never
/// ejected.
/// With every replica out, replica-first connections are served by the primary
/// (counted in [`StatsSnapshot::replica_fallbacks`]) unless
/// [`fallback_to_primary(false)`](SwitchablePoolBuilder::fallback_to_primary).
///
/// Replication lag: with replicas, a background task (stopped when the pool is
/// dropped) keeps one connection per node, named `diesel-rwsplit monitor`, and polls
/// WAL positions every [`monitor_interval`](SwitchablePoolBuilder::monitor_interval);
/// replicas that are promoted, unreachable or over a lag threshold are skipped. See
/// [`get_after`](SwitchablePool::get_after) for read-your-writes across connections.
///
/// Cheap to clone; `Send + Sync`. Build it inside a Tokio runtime.
///
/// ```no_run
/// # async fn demo(primary_url: &str, replica_urls: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
/// use diesel_async::AsyncPgConnection;
/// use diesel_rwsplit::{InterlockMode, Route, SwitchablePool, Target};
///
/// let pool = SwitchablePool::<AsyncPgConnection>::builder()
///     .primary(primary_url)
///     .replicas(replica_urls)
///     .interlock(InterlockMode::Switch)
///     .default_route(Route::Replica)
///     .build()
///     .await?;
/// let mut conn = pool.get().await?;
/// assert_eq!(conn.target(), Target::Replica);
/// # Ok(()) }
/// ```
pub struct SwitchablePool<C: SwitchTarget = AsyncPgConnection> {
    inner: Arc<PoolInner<C>>,
    /// The pool as its connections' node source, made once rather than per checkout.
    source: Arc<dyn NodeSource<C>>,
}

impl<C: SwitchTarget> Clone for SwitchablePool<C> {
    fn clone(&self) -> Self {
        SwitchablePool {
            inner: Arc::clone(&self.inner),
            source: Arc::clone(&self.source),
        }
    }
}

impl<C: SwitchTarget> fmt::Debug for SwitchablePool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwitchablePool")
            .field("nodes", &self.node_names())
            .field("interlock", &self.inner.router.mode)
            .field("default_route", &self.inner.default_route)
            .field("balance", &self.inner.balance)
            .finish()
    }
}

impl<C: SwitchTarget> SwitchablePool<C> {
    /// A builder. Only [`primary`](SwitchablePoolBuilder::primary) is required.
    pub fn builder() -> SwitchablePoolBuilder<C> {
        SwitchablePoolBuilder::default()
    }

    /// A connection on the default route ([`Route::Replica`] unless configured):
    /// replica-first with the interlock armed, or on the primary.
    ///
    /// In `Observe` mode every connection uses the primary only (checked out at its
    /// first statement) and records what `Switch` would have done.
    ///
    /// Cancellation: dropping the future while it waits for a node returns what it
    /// had checked out to its pool; nothing leaks.
    pub async fn get(&self) -> Result<PooledConnection<C>, Error> {
        match self.inner.default_route {
            Route::Replica => self.get_replica().await,
            Route::Primary => self.get_primary().await,
        }
    }

    /// A connection on the primary, checked out now.
    pub async fn get_primary(&self) -> Result<PooledConnection<C>, Error> {
        let (primary, generation) = self.inner.checkout_primary_in_generation().await?;
        let conn = SwitchableConnection::on_primary(
            primary,
            Some(self.source()),
            Arc::clone(&self.inner.router),
            generation,
        );
        Ok(PooledConnection::new(conn))
    }

    /// A replica-first connection whatever the default route (targeted adoption:
    /// send one chosen read to a replica). The interlock stays armed.
    ///
    /// Admitted replicas are tried in the balancing policy's order; a replica that
    /// fails is ejected and the next one tried. If none answers, the connection is
    /// served by the primary (counted), or [`Error::NoReplicaAvailable`] is
    /// returned when fallback is off. With no replicas configured, everything is on
    /// the primary.
    pub async fn get_replica(&self) -> Result<PooledConnection<C>, Error> {
        if self.inner.router.mode == InterlockMode::Observe {
            // Observe runs everything on the primary, as the application did
            // before: the connection holds it from the start.
            return self.get_primary().await;
        }
        if self.inner.replicas.is_empty() {
            return self.get_primary().await;
        }
        if let Some(lease) = self.inner.checkout_replica(None).await {
            let conn = SwitchableConnection::replica_first(
                lease,
                self.source(),
                Arc::clone(&self.inner.router),
            );
            return Ok(PooledConnection::new(conn));
        }
        if !self.inner.fallback_to_primary {
            return Err(Error::NoReplicaAvailable {
                replicas: self.inner.replicas.len(),
            });
        }
        self.inner.router.stats.record_replica_fallback();
        self.get_primary().await
    }

    fn source(&self) -> Arc<dyn NodeSource<C>> {
        Arc::clone(&self.source)
    }

    /// A snapshot of the pool's counters (flips by reason, statements per target,
    /// fallbacks, retries, ejections, top fingerprints, ...). Cheap; takes no lock
    /// that a statement waits on.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.router.stats.snapshot()
    }

    /// Where the interlock carried the application: the statements that tripped it,
    /// by fingerprint, with reason, count and first and last seen; in `Observe`
    /// mode, the share of statements and units of work replicas would have served.
    pub fn audit_report(&self) -> crate::AuditReport {
        crate::AuditReport::new(self.inner.router.mode, &self.stats())
    }

    /// The interlock mode.
    pub fn interlock(&self) -> InterlockMode {
        self.inner.router.mode
    }

    /// Printable names of the nodes (`primary (host:port)`, `replica1 (host:port)`, ...).
    pub fn node_names(&self) -> Vec<String> {
        match &self.inner.primary {
            Primary::Fixed(primary) => std::iter::once(primary)
                .chain(&self.inner.replicas)
                .map(|n| n.name().to_owned())
                .collect(),
            Primary::Discovered(_) => self
                .inner
                .replicas
                .iter()
                .map(|n| n.name().to_owned())
                .collect(),
        }
    }

    /// Which member is the primary now, as one value (see
    /// [`SwitchablePoolBuilder::nodes`]); with a fixed primary, generation 0.
    pub fn topology(&self) -> Topology {
        self.inner.topology()
    }

    /// How many connections of each replica are checked out through this pool
    /// right now (checkouts under way included), in order: what
    /// [`Balance::LeastOutstanding`] balances on.
    pub fn replica_checked_out(&self) -> Vec<usize> {
        self.inner
            .replicas
            .iter()
            .map(|r| r.health().outstanding.load(Ordering::Relaxed))
            .collect()
    }

    /// Whether each replica is currently in rotation (not ejected), in order.
    pub fn replica_admitted(&self) -> Vec<bool> {
        (0..self.inner.replicas.len())
            .map(|i| self.inner.is_admitted(i))
            .collect()
    }
}

/// A [`SwitchableConnection`] checked out of a [`SwitchablePool`].
///
/// Derefs to the connection and is itself a diesel-async `AsyncConnection`, so
/// `RunQueryDsl` methods take `&mut conn` directly. Dropping it returns the
/// replica and (if it flipped) the primary connection to their pools with all
/// routing state reset; a connection dropped in the middle of a transaction or
/// while panicking is discarded, not reused.
pub struct PooledConnection<C: SwitchTarget = AsyncPgConnection> {
    conn: SwitchableConnection<C>,
}

impl<C: SwitchTarget> PooledConnection<C> {
    fn new(conn: SwitchableConnection<C>) -> Self {
        PooledConnection { conn }
    }

    /// The connection itself, for code that manages its lifetime (the bb8 adapter).
    /// Dropping it still returns its node connections to their pools.
    pub fn into_inner(self) -> SwitchableConnection<C> {
        self.conn
    }
}

impl<C: SwitchTarget> fmt::Debug for PooledConnection<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PooledConnection").field(&self.conn).finish()
    }
}

impl<C: SwitchTarget> Deref for PooledConnection<C> {
    type Target = SwitchableConnection<C>;

    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl<C: SwitchTarget> DerefMut for PooledConnection<C> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

/// Settings of one role's node pools.
#[derive(Debug, Clone, Copy)]
struct RoleSettings {
    max_size: u32,
    connect_timeout: Duration,
    checkout_timeout: Duration,
    statement_timeout: Option<Duration>,
}

/// Builds a [`SwitchablePool`].
#[must_use]
pub struct SwitchablePoolBuilder<C: SwitchTarget = AsyncPgConnection> {
    primary: Option<String>,
    replicas: Vec<String>,
    members: Vec<String>,
    #[cfg(feature = "patroni")]
    patroni: Vec<String>,
    #[cfg(feature = "patroni")]
    patroni_interval: Duration,
    /// `replica_group` calls: (replica index, group), in order.
    replica_groups: Vec<(usize, String)>,
    interlock: InterlockMode,
    default_route: Route,
    classifier: Option<Classifier>,
    balance: Balance,
    primary_settings: RoleSettings,
    replica_settings: RoleSettings,
    backoff: Backoff,
    fallback_to_primary: bool,
    read_retry: bool,
    verify_on_build: bool,
    require_primary: bool,
    #[cfg(feature = "testing")]
    faults: Option<crate::testing::Faults>,
    monitor: MonitorConfig,
    max_lag_bytes: Option<u64>,
    max_lag: Option<Duration>,
    causal_wait: Duration,
    session_window: Duration,
    connect: ConnectSettings,
    on_connect: Option<OnConnect<C>>,
    #[cfg(feature = "metrics")]
    metrics_interval: Option<Duration>,
    _connection: std::marker::PhantomData<fn() -> C>,
}

impl<C: SwitchTarget> fmt::Debug for SwitchablePoolBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry passwords: show only how many there are.
        f.debug_struct("SwitchablePoolBuilder")
            .field("primary", &self.primary.as_ref().map(|_| "<set>"))
            .field("replicas", &self.replicas.len())
            .field("interlock", &self.interlock)
            .field("default_route", &self.default_route)
            .field("balance", &self.balance)
            .field("connect", &self.connect)
            .field("on_connect", &self.on_connect.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: SwitchTarget> Default for SwitchablePoolBuilder<C> {
    fn default() -> Self {
        SwitchablePoolBuilder {
            primary: None,
            replicas: Vec::new(),
            members: Vec::new(),
            #[cfg(feature = "patroni")]
            patroni: Vec::new(),
            #[cfg(feature = "patroni")]
            patroni_interval: Duration::from_millis(200),
            replica_groups: Vec::new(),
            interlock: InterlockMode::Switch,
            default_route: Route::Replica,
            classifier: None,
            balance: Balance::RoundRobin,
            primary_settings: RoleSettings {
                max_size: 10,
                connect_timeout: Duration::from_secs(10),
                checkout_timeout: Duration::from_secs(30),
                statement_timeout: None,
            },
            replica_settings: RoleSettings {
                max_size: 20,
                connect_timeout: Duration::from_secs(2),
                checkout_timeout: Duration::from_secs(3),
                statement_timeout: None,
            },
            backoff: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(30),
            },
            fallback_to_primary: true,
            read_retry: true,
            verify_on_build: true,
            require_primary: true,
            #[cfg(feature = "testing")]
            faults: None,
            monitor: MonitorConfig::default(),
            max_lag_bytes: None,
            max_lag: None,
            causal_wait: Duration::from_millis(500),
            session_window: Duration::from_secs(1),
            connect: ConnectSettings::default(),
            on_connect: None,
            #[cfg(feature = "metrics")]
            metrics_interval: None,
            _connection: std::marker::PhantomData,
        }
    }
}

impl<C: SwitchTarget> SwitchablePoolBuilder<C> {
    /// Connection URL of the primary. Required.
    pub fn primary(mut self, url: impl Into<String>) -> Self {
        self.primary = Some(url.into());
        self
    }

    /// Connection URLs of the replicas. Default: none (everything on the primary).
    pub fn replicas<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.replicas = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The members of one replicated cluster, roles unknown, instead of
    /// [`primary`](Self::primary) and [`replicas`](Self::replicas). The pool finds
    /// the primary (the one member not in recovery) and keeps finding it: every
    /// [`monitor_interval`](Self::monitor_interval), and at once when a primary
    /// checkout fails. Reads go to the members in recovery. The HA engine decides
    /// who the primary is; the pool follows. Default: none.
    ///
    /// During a change, statements that need the primary wait for the new one up
    /// to the [`primary_checkout_timeout`](Self::primary_checkout_timeout), then
    /// fail with [`Error::NoPrimary`]; a write never runs on a member that is not
    /// the primary (primary sessions are checked read-write at connect, and
    /// PostgreSQL ends every session of a demoted server). Two members that both
    /// answer as the primary (an old primary not fenced yet) make no primary until
    /// one of them is demoted. Members are named `nodeN (host:port)`; see
    /// [`SwitchablePool::topology`] and [`StatsSnapshot::topology_changes`].
    pub fn nodes<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.members = urls.into_iter().map(Into::into).collect();
        self
    }

    /// Follow Patroni's REST API (feature `patroni`): the members' Patroni
    /// endpoints, e.g. `http://db-1:8008`, for a pool built with
    /// [`nodes`](Self::nodes). The member Patroni names leader (state `running`) is
    /// the primary, matched to the `nodes` URLs by host and port; while it names none,
    /// writes wait; members tagged `noloadbalance` get no reads. Asked every
    /// [`patroni_interval`](Self::patroni_interval), which notices a change sooner
    /// than the members' own answers. When no Patroni member answers, the pool falls
    /// back to those. Default: none.
    #[cfg(feature = "patroni")]
    pub fn patroni<I, S>(mut self, rest_urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.patroni = rest_urls.into_iter().map(Into::into).collect();
        self
    }

    /// How often Patroni's REST API is asked who the leader is (feature
    /// `patroni`). Default: 200 ms.
    #[cfg(feature = "patroni")]
    pub fn patroni_interval(mut self, interval: Duration) -> Self {
        self.patroni_interval = interval;
        self
    }

    /// Put replica `index` (zero-based, in the order of [`replicas`](Self::replicas),
    /// or of [`nodes`](Self::nodes): a member's index, whatever its role; a member
    /// that is the primary serves no reads anyway) in the replica group `group`.
    /// A replica belongs to at most one group: a later call for the same index
    /// replaces the group. Replicas without one form the default group.
    ///
    /// Reads go to a group when the classifier's
    /// [`group_rule`](crate::classify::ClassifierBuilder::group_rule) or
    /// [`heavy_reads`](crate::classify::ClassifierBuilder::heavy_reads) rules route
    /// them there (see the crate docs, "Replica groups"). Everything else prefers
    /// the default group: a replica-first connection is checked out from a replica
    /// without a group while one is usable, so a group's replicas are kept for the
    /// reads routed to them. `group`: 1 to 64 ASCII letters, digits, `_`, `-`, `.`.
    /// An index past the last replica, or a bad name, fails the
    /// [`build`](Self::build) with [`Error::InvalidConfig`]. Default: no group (every
    /// replica in the default group; selection exactly as without groups).
    ///
    /// ```no_run
    /// # async fn demo(primary: &str, replicas: Vec<String>) -> Result<(), diesel_rwsplit::Error> {
    /// use diesel_async::AsyncPgConnection;
    /// use diesel_rwsplit::classify::{Classifier, Dialect};
    /// use diesel_rwsplit::SwitchablePool;
    ///
    /// let pool = SwitchablePool::<AsyncPgConnection>::builder()
    ///     .primary(primary)
    ///     .replicas(replicas)          // replica1, replica2
    ///     .replica_group(1, "analytics")
    ///     .classifier(Classifier::builder(Dialect::Postgres).heavy_reads(3, "analytics").build()?)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn replica_group(mut self, index: usize, group: impl Into<String>) -> Self {
        self.replica_groups.push((index, group.into()));
        self
    }

    /// What the safety interlock does. Default: [`InterlockMode::Switch`].
    pub fn interlock(mut self, mode: InterlockMode) -> Self {
        self.interlock = mode;
        self
    }

    /// Where [`SwitchablePool::get`] connections start. Default: [`Route::Replica`].
    pub fn default_route(mut self, route: Route) -> Self {
        self.default_route = route;
        self
    }

    /// The statement classifier, e.g. with the application's own write functions
    /// declared. Default: `Classifier::new(Dialect::Postgres)`, built-in rules only.
    pub fn classifier(mut self, classifier: Classifier) -> Self {
        self.classifier = Some(classifier);
        self
    }

    /// How replicas are chosen. Default: [`Balance::RoundRobin`].
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }

    /// Maximum connections in the primary's pool. Default: 10.
    ///
    /// Replica-first connections hold one only from their first flip to the end of
    /// their unit of work: size it for the writing units that run at once, not for
    /// the handlers (see the crate docs, "Sizing the pools").
    pub fn primary_max_size(mut self, size: u32) -> Self {
        self.primary_settings.max_size = size;
        self
    }

    /// Maximum connections in each replica's pool. Default: 20 (replicas take the
    /// reads; about `handlers / replicas` suits a read-mostly service).
    pub fn replica_max_size(mut self, size: u32) -> Self {
        self.replica_settings.max_size = size;
        self
    }

    /// Bound on establishing one primary connection. Default: 10 s.
    pub fn primary_connect_timeout(mut self, timeout: Duration) -> Self {
        self.primary_settings.connect_timeout = timeout;
        self
    }

    /// Bound on establishing one replica connection. Default: 2 s (short: a frozen
    /// replica must not hold reads up when another node can serve them).
    pub fn replica_connect_timeout(mut self, timeout: Duration) -> Self {
        self.replica_settings.connect_timeout = timeout;
        self
    }

    /// How long a checkout may wait for a primary connection (failed connects are
    /// retried within it). When it passes, the statement that needed the primary
    /// fails with [`Error::PrimaryUnavailable`], which says why. Default: 30 s.
    pub fn primary_checkout_timeout(mut self, timeout: Duration) -> Self {
        self.primary_settings.checkout_timeout = timeout;
        self
    }

    /// How long a checkout may wait for a replica connection (connecting and
    /// validating included) before the next node is tried. A checkout that waited
    /// this long while the replica answered counts as saturation, not failure: the
    /// replica stays in rotation. A failed connect ends the checkout at once and
    /// ejects the replica. Default: 3 s.
    pub fn replica_checkout_timeout(mut self, timeout: Duration) -> Self {
        self.replica_settings.checkout_timeout = timeout;
        self
    }

    /// Server-side `statement_timeout` for primary sessions. Default: none (the
    /// server's setting).
    pub fn primary_statement_timeout(mut self, timeout: Duration) -> Self {
        self.primary_settings.statement_timeout = Some(timeout);
        self
    }

    /// `statement_timeout` for replica sessions, set on the server and enforced on
    /// the client as well: a replica read that has not returned its first row
    /// within this plus [`REPLICA_READ_GRACE`] (the server's own timeout should
    /// have answered by then: the node is hung) is given up on. A cancel request is
    /// sent, the session discarded, the replica probed (ejected if it does not serve
    /// a new session) and, with [`read_retry`](Self::read_retry), the read runs once
    /// more on another node. The rest of its rows must then come within the bound
    /// again; if they do not, the row stream ends with [`Error::ReadTimedOut`] (rows
    /// came back, so it is not retried) and the session is discarded. Default: none
    /// (no bound on either side; TCP keepalives still notice a vanished host, but
    /// not a frozen one whose kernel answers).
    pub fn replica_statement_timeout(mut self, timeout: Duration) -> Self {
        self.replica_settings.statement_timeout = Some(timeout);
        self
    }

    /// How long an ejected replica stays out before its first probe, doubling per
    /// failed probe up to `cap`. Default: 500 ms, capped at 30 s.
    pub fn ejection_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff = Backoff {
            base,
            cap: cap.max(base),
        };
        self
    }

    /// Serve replica-first connections from the primary when no replica can be
    /// checked out (counted). `false`: return [`Error::NoReplicaAvailable`]
    /// instead. Default: `true`.
    pub fn fallback_to_primary(mut self, fallback: bool) -> Self {
        self.fallback_to_primary = fallback;
        self
    }

    /// Retry once, on another replica or the primary, a replica read whose session
    /// was lost, that a hot standby cancelled for a recovery conflict, or that passed
    /// its client-side bound, before any row came back (counted; writes are never
    /// retried). The rendering that makes reads re-runnable also lets a statement a
    /// replica refused as a write (25006) run again on the primary. Default: `true`.
    ///
    /// To be re-runnable, each replica read is rendered to owned SQL and binds; the
    /// SQL text of a query type with a static query id is built once and shared, so
    /// this path costs the client fewer instructions than diesel-async's own (see
    /// `BENCHMARKS.md`). With `false`, reads are handed to the inner connection as they are.
    pub fn read_retry(mut self, retry: bool) -> Self {
        self.read_retry = retry;
        self
    }

    /// How often the lag monitor polls the nodes' WAL positions. Default: 1 s.
    pub fn monitor_interval(mut self, interval: Duration) -> Self {
        self.monitor.interval = interval;
        self
    }

    /// Skip replicas whose replay is more than this many bytes behind the primary
    /// (as the monitor last saw it; an unknown lag counts as too much). Default: no limit.
    ///
    /// While the primary does not answer the monitor, replicas are not dropped for
    /// want of a measurement (a primary outage must not become a read outage): each
    /// standby that answers is measured against the primary's *last known
    /// position*, the larger of its last answer and the most WAL any standby has
    /// received since. A replica caught up with it keeps serving; one that was too
    /// far behind stays out until it has replayed to within the limit. The bound:
    /// such a replica can miss, beyond the limit, only what the primary wrote after
    /// the monitor last reached it that no standby received (this pool's writes fail
    /// meanwhile). The same holds for [`max_replica_lag`](Self::max_replica_lag).
    pub fn max_replica_lag_bytes(mut self, bytes: u64) -> Self {
        self.max_lag_bytes = Some(bytes);
        self
    }

    /// Skip replicas that have been behind the primary for longer than this.
    /// Default: no limit. During a primary outage, a replica that has replayed the
    /// primary's last known position lacks nothing it is known to have had and keeps
    /// serving (see [`max_replica_lag_bytes`](Self::max_replica_lag_bytes)).
    pub fn max_replica_lag(mut self, lag: Duration) -> Self {
        self.max_lag = Some(lag);
        self
    }

    /// How long [`SwitchablePool::get_after`] waits for a replica to replay up to a
    /// causal token before using the primary. Default: 500 ms.
    pub fn causal_wait(mut self, bound: Duration) -> Self {
        self.causal_wait = bound;
        self
    }

    /// After a session key's unit of work wrote, how long that key's connections
    /// from [`SwitchablePool::get_for_session`] stay on the primary. Default: 1 s.
    pub fn session_window(mut self, window: Duration) -> Self {
        self.session_window = window;
        self
    }

    /// Check at [`build`](Self::build) that every node's host accepts TCP
    /// connections (within the role's connect timeout), without opening a database
    /// session. A replica that does not starts out of rotation and is probed in
    /// the background until it serves a session; the primary is handled as
    /// [`require_primary_at_build`](Self::require_primary_at_build) says.
    /// Default: `true`.
    pub fn verify_on_build(mut self, verify: bool) -> Self {
        self.verify_on_build = verify;
        self
    }

    /// What [`build`](Self::build) does when the primary's host does not accept
    /// TCP connections. `true`: fail with [`Error::Node`] (step
    /// [`NodeStep::Connect`](crate::NodeStep::Connect)): a service that cannot write usually should not start.
    /// `false`: start anyway, for read-mostly services: reads are served by the
    /// replicas, writes fail with [`Error::PrimaryUnavailable`] after the primary
    /// checkout timeout until the primary answers. Default: `true`.
    pub fn require_primary_at_build(mut self, require: bool) -> Self {
        self.require_primary = require;
        self
    }

    /// The TLS client configuration for every connection the pool opens, for what a
    /// URL cannot say: roots of your own (say from a secrets store, not a file),
    /// ALPN, a custom certificate verifier, other protocol versions (feature `tls`;
    /// [`rustls`](crate::rustls) is re-exported so the versions match). It replaces
    /// what the URLs' `sslrootcert`, `sslcert` and `sslkey` would build, for every
    /// node; their `sslmode` still says whether TLS is used (`disable`, `allow`,
    /// `prefer`, `require` and stricter). Default: none (built from each URL).
    ///
    /// ```no_run
    /// # async fn demo(primary: &str, ca_pem: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    /// use diesel_async::AsyncPgConnection;
    /// use diesel_rwsplit::rustls::{self, pki_types::{pem::PemObject, CertificateDer}};
    /// use diesel_rwsplit::SwitchablePool;
    ///
    /// let mut roots = rustls::RootCertStore::empty();
    /// roots.add(CertificateDer::from_pem_slice(ca_pem)?)?;
    /// let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    /// let mut config = rustls::ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()?
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// config.alpn_protocols = vec![b"postgresql".to_vec()];
    /// let pool = SwitchablePool::<AsyncPgConnection>::builder()
    ///     // `require`: TLS; the custom configuration's verifier decides what is trusted.
    ///     .primary(format!("{primary}?sslmode=require"))
    ///     .tls_config(config)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.connect.tls_config = Some(Arc::new(config));
        self
    }

    /// Ask `provider` for the password (and optionally the user) of every new
    /// session the pool opens, on every node, its lag monitor included: for
    /// passwords that rotate (RDS IAM tokens, Vault leases). The URLs' own password
    /// is then unused. See [`CredentialsProvider`] for an example and what happens
    /// when it fails. Default: none (the URLs' credentials).
    pub fn credentials(mut self, provider: impl CredentialsProvider) -> Self {
        self.connect.credentials = Some(Arc::new(provider));
        self
    }

    /// Run `hook` on every new session of the node pools (primary and replicas, and
    /// the fresh sessions of health probes), once it is connected and
    /// authenticated, before the crate's own session SQL (a replica session is made
    /// read-only after the hook, so a hook cannot make it writable). For `SET
    /// search_path`, `SET timezone`, `SET role`, prepared statements, and the like.
    /// If it fails, the new session is dropped and the checkout fails as for a
    /// node that refused the session ([`FailureKind::Server`](crate::FailureKind::Server)).
    /// The lag monitor's own sessions do not run it. Default: none.
    ///
    /// The counterpart of diesel-async's `ManagerConfig::custom_setup`, which opens
    /// the connection itself: here the crate opens it (so TLS, credentials and
    /// keepalives apply) and hands it to the hook.
    ///
    /// ```no_run
    /// # async fn demo(primary: &str) -> Result<(), diesel_rwsplit::Error> {
    /// use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
    /// use diesel_rwsplit::SwitchablePool;
    ///
    /// let pool = SwitchablePool::<AsyncPgConnection>::builder()
    ///     .primary(primary)
    ///     .on_connect(|conn| Box::pin(conn.batch_execute("SET search_path TO app, public")))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: for<'c> Fn(&'c mut C) -> BoxFuture<'c, diesel::QueryResult<()>> + Send + Sync + 'static,
    {
        self.on_connect = Some(Arc::new(hook));
        self
    }

    /// Publish the pool's counters and gauges to the `metrics` recorder every
    /// `interval` (feature `metrics`), as
    /// [`SwitchablePool::publish_metrics`] does, from a task on the runtime that
    /// builds the pool: the first time at [`build`](Self::build), then every
    /// `interval`. The task holds no reference that keeps the pool alive; it stops
    /// when the pool (its last clone and its last checked-out connection) is
    /// dropped. It publishes to the global recorder, or to the thread-local one
    /// of the thread it runs on. Default: none (no task; call
    /// [`SwitchablePool::publish_metrics`] yourself, e.g. before each scrape).
    /// A zero interval fails the build with [`Error::InvalidConfig`].
    #[cfg(feature = "metrics")]
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics_interval = Some(interval);
        self
    }

    /// Put a deterministic fault seam between the pool and its nodes' pools (feature
    /// `testing`): see [`testing::Faults`](crate::testing::Faults). Default: none.
    #[cfg(feature = "testing")]
    pub fn faults(mut self, faults: crate::testing::Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Build the pool. Validates the configuration and every URL and, unless
    /// [`verify_on_build(false)`](Self::verify_on_build), that every host is
    /// reachable: unreachable replicas start out of rotation (probed until they
    /// answer), an unreachable primary fails the build unless
    /// [`require_primary_at_build(false)`](Self::require_primary_at_build). Opens no
    /// database session (the first checkout does). Must run inside a Tokio runtime.
    pub async fn build(self) -> Result<SwitchablePool<C>, Error> {
        let discover = !self.members.is_empty();
        if discover && (self.primary.is_some() || !self.replicas.is_empty()) {
            return Err(Error::InvalidConfig(
                "nodes() names every member and replaces primary() and replicas(): give one or the other".into(),
            ));
        }
        #[cfg(feature = "patroni")]
        if !self.patroni.is_empty() && (!discover || self.patroni_interval.is_zero()) {
            return Err(Error::InvalidConfig(
                "patroni() needs nodes() (the members' connection URLs) and a patroni_interval longer than zero".into(),
            ));
        }
        let primary_url = match (&self.primary, discover) {
            (_, true) => None,
            (Some(url), false) => Some(url.clone()),
            (None, false) => {
                return Err(Error::InvalidConfig(
                    "no primary URL was given (primary(), or nodes() for a cluster whose primary is found)".into(),
                ))
            }
        };
        for (role, settings) in [
            ("primary", &self.primary_settings),
            ("replica", &self.replica_settings),
        ] {
            if settings.max_size == 0 {
                return Err(Error::InvalidConfig(format!(
                    "the {role} pool size must be at least 1"
                )));
            }
            if settings.checkout_timeout.is_zero() || settings.connect_timeout.is_zero() {
                return Err(Error::InvalidConfig(format!(
                    "the {role} timeouts must be longer than zero"
                )));
            }
        }
        // In discovery mode every member is a possible replica (a member serves
        // reads only while it is in recovery) and a possible primary.
        let (reader_urls, label) = if discover {
            (&self.members, "node")
        } else {
            (&self.replicas, "replica")
        };
        #[cfg(feature = "metrics")]
        if self.metrics_interval.is_some_and(|every| every.is_zero()) {
            return Err(Error::InvalidConfig(
                "the metrics interval must be longer than zero".into(),
            ));
        }
        if let Balance::Weighted(weights) = &self.balance {
            if weights.len() != reader_urls.len() {
                return Err(Error::InvalidConfig(format!(
                    "{} weights given for {} replicas",
                    weights.len(),
                    reader_urls.len()
                )));
            }
        }
        let mut replica_group_ids: Vec<Option<GroupId>> = vec![None; reader_urls.len()];
        let mut replica_group_names: Vec<Arc<str>> = Vec::new();
        {
            let mut chosen: Vec<Option<&str>> = vec![None; reader_urls.len()];
            for (index, group) in &self.replica_groups {
                if !crate::classify::valid_group_name(group) {
                    return Err(Error::InvalidConfig(format!(
                        "{group:?} is not a replica group name (1 to 64 ASCII letters, digits, '_', '-', '.')"
                    )));
                }
                let Some(slot) = chosen.get_mut(*index) else {
                    return Err(Error::InvalidConfig(format!(
                        "replica_group({index}, {group:?}): there are {} {label}s (indexes from 0)",
                        reader_urls.len()
                    )));
                };
                *slot = Some(group.as_str());
            }
            for (index, group) in chosen.into_iter().enumerate() {
                let Some(group) = group else { continue };
                let id = match replica_group_names.iter().position(|n| &**n == group) {
                    Some(id) => id,
                    None => {
                        replica_group_names.push(Arc::from(group));
                        replica_group_names.len() - 1
                    }
                };
                replica_group_ids[index] = Some(id);
            }
        }
        let primary_endpoint = match &primary_url {
            Some(url) => Some(Arc::new(C::Endpoint::parse("primary", url, &self.connect)?)),
            None => None,
        };
        let mut replica_endpoints = Vec::with_capacity(reader_urls.len());
        for (index, url) in reader_urls.iter().enumerate() {
            let label = format!("{label}{}", index + 1);
            replica_endpoints.push(Arc::new(C::Endpoint::parse(&label, url, &self.connect)?));
        }
        let mut unreachable_replicas = Vec::new();
        if self.verify_on_build {
            let primary_check = async {
                match &primary_endpoint {
                    Some(endpoint) => {
                        endpoint
                            .reachable(self.primary_settings.connect_timeout)
                            .await
                    }
                    None => Ok(()),
                }
            };
            let replica_checks = replica_endpoints
                .iter()
                .map(|endpoint| endpoint.reachable(self.replica_settings.connect_timeout));
            let (primary_ok, replicas_ok) = futures_util::future::join(
                primary_check,
                futures_util::future::join_all(replica_checks),
            )
            .await;
            match primary_ok {
                Err(e) if self.require_primary => return Err(e),
                Err(e) => {
                    tracing::warn!(target: "diesel_rwsplit::pool", error = %e, "primary unreachable at build: starting for reads only")
                }
                Ok(()) => {}
            }
            let reachable_members = replicas_ok.iter().filter(|r| r.is_ok()).count();
            for (index, result) in replicas_ok.into_iter().enumerate() {
                if let Err(e) = result {
                    if discover && reachable_members == 0 && self.require_primary {
                        return Err(e);
                    }
                    unreachable_replicas.push((index, e.to_string()));
                }
            }
        }
        #[cfg(feature = "patroni")]
        let member_addresses: Vec<(String, u16)> =
            replica_endpoints.iter().map(|e| e.host_port()).collect();
        let monitor_primary = primary_endpoint
            .as_ref()
            .map(|endpoint| NodeTarget::from_endpoint(Arc::clone(endpoint)));
        #[cfg_attr(not(feature = "testing"), allow(unused_mut))]
        let mut primary = match primary_endpoint {
            // A primary URL that names a moving endpoint (a DNS writer endpoint)
            // may point at a replica for a while: such sessions are refused at
            // connect, never handed out as primary sessions.
            Some(endpoint) => Primary::Fixed(node_pool::<C>(
                Arc::new(endpoint.read_write()),
                false,
                self.primary_settings,
                self.on_connect.clone(),
                1,
                true,
            )),
            None => {
                let writable: Vec<Arc<C::Endpoint>> = replica_endpoints
                    .iter()
                    .map(|endpoint| Arc::new(endpoint.read_write()))
                    .collect();
                let (settings, on_connect) = (self.primary_settings, self.on_connect.clone());
                // The first failure ends a checkout: the pool then looks for the
                // primary again rather than wait on a member that may be gone.
                let make = move |index: usize| {
                    node_pool::<C>(
                        Arc::clone(&writable[index]),
                        false,
                        settings,
                        on_connect.clone(),
                        1,
                        false,
                    )
                };
                Primary::Discovered(topology::Discovered::new(
                    replica_endpoints.len(),
                    Box::new(make),
                    self.primary_settings.checkout_timeout,
                ))
            }
        };
        let mut replicas: Vec<NodePool<C>> = Vec::with_capacity(replica_endpoints.len());
        let mut monitored = Vec::with_capacity(replica_endpoints.len());
        for (index, endpoint) in replica_endpoints.into_iter().enumerate() {
            monitored.push(NodeTarget::from_endpoint(Arc::clone(&endpoint)));
            let weight = match &self.balance {
                Balance::Weighted(weights) => weights[index],
                _ => 1,
            };
            let mut replica = node_pool::<C>(
                endpoint,
                true,
                self.replica_settings,
                self.on_connect.clone(),
                weight,
                false,
            );
            replica.group = replica_group_ids[index];
            replicas.push(replica);
        }
        #[cfg(feature = "testing")]
        if let Some(faults) = &self.faults {
            use crate::testing::FaultNode;
            if let Primary::Fixed(primary) = &mut primary {
                let primary_pool = Arc::clone(&primary.pool);
                primary.pool = faults.wrap(FaultNode::Primary, primary_pool);
            }
            for (index, replica) in replicas.iter_mut().enumerate() {
                let pool = Arc::clone(&replica.pool);
                replica.pool = faults.wrap(FaultNode::Replica(index), pool);
            }
        }
        let classifier = self
            .classifier
            .unwrap_or_else(|| Classifier::new(C::DIALECT));
        let read_bound = self
            .replica_settings
            .statement_timeout
            .map(|timeout| timeout + REPLICA_READ_GRACE);
        for group in classifier.group_names() {
            if !replica_group_names.contains(group) {
                tracing::warn!(target: "diesel_rwsplit::pool", group = %group, "the classifier routes reads to a replica group no replica belongs to: they will all be served by other replicas (counted as group fallbacks)");
            }
        }
        let router = Router::new(
            classifier,
            self.interlock,
            self.read_retry,
            read_bound,
            &replica_group_names,
        );
        let grouped = !replica_group_names.is_empty();
        // Patroni's tags may put members in a group the classifier names: every
        // known group gets its cursor.
        for name in router.classifier.group_names() {
            if !replica_group_names.contains(name) {
                replica_group_names.push(Arc::clone(name));
            }
        }
        let seed = u64::from(std::process::id()) << 32
            | u64::from(Instant::now().elapsed().subsec_nanos())
            | 1;
        let inner = Arc::new(PoolInner {
            epoch: Instant::now(),
            primary,
            replicas,
            next_replica: AtomicUsize::new(0),
            next_in_group: replica_group_names
                .iter()
                .map(|_| AtomicUsize::new(0))
                .collect(),
            next_grouped: AtomicUsize::new(0),
            random_state: AtomicU64::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            router,
            default_route: self.default_route,
            balance: self.balance,
            backoff: self.backoff,
            fallback_to_primary: self.fallback_to_primary,
            grouped: AtomicBool::new(grouped),
            group_names: replica_group_names.into_boxed_slice(),
            monitor: (!monitored.is_empty())
                .then(|| Monitor::spawn(monitor_primary, monitored, self.monitor)),
            max_lag_bytes: self.max_lag_bytes,
            max_lag: self.max_lag,
            causal_wait: self.causal_wait,
            session_window: self.session_window,
            session_writes: causal::SessionWrites::default(),
            rediscover_now: Arc::default(),
            #[cfg(feature = "metrics")]
            publisher: export::Publisher::default(),
        });
        #[cfg(feature = "metrics")]
        if let Some(every) = self.metrics_interval {
            inner.start_publishing(every);
        }
        for (index, why) in unreachable_replicas {
            // Out of rotation from the start; the probe re-admits it once it answers.
            inner.eject(index, &why);
        }
        if let (Primary::Discovered(_), Some(monitor)) = (&inner.primary, &inner.monitor) {
            // Know the primary before the first write: one round, bounded by the
            // monitor's probe timeouts.
            let first_round = self.monitor.probe_timeout * 2 + Duration::from_millis(100);
            let _ = tokio::time::timeout(first_round, monitor.wait_next_poll()).await;
            // Subscribed before the first value is applied: a change published in
            // between is then delivered to the follower, never lost.
            let mut leader_changes = monitor.leader_changes();
            let first = *leader_changes.borrow_and_update();
            inner.apply_leader(first);
            #[cfg(feature = "patroni")]
            let follow_patroni = !self.patroni.is_empty();
            #[cfg(not(feature = "patroni"))]
            let follow_patroni = false;
            if follow_patroni {
                #[cfg(feature = "patroni")]
                tokio::spawn(PoolInner::follow_patroni(
                    Arc::downgrade(&inner),
                    self.patroni.clone(),
                    member_addresses,
                    self.patroni_interval,
                ));
            } else {
                tokio::spawn(PoolInner::follow(Arc::downgrade(&inner), leader_changes));
            }
        }
        let source: Arc<dyn NodeSource<C>> = Arc::new(Source(Arc::clone(&inner)));
        Ok(SwitchablePool { inner, source })
    }
}

fn node_pool<C: SwitchTarget>(
    endpoint: Arc<C::Endpoint>,
    read_only: bool,
    role: RoleSettings,
    on_connect: Option<OnConnect<C>>,
    weight: u32,
    retry_connect: bool,
) -> NodePool<C> {
    let name = Arc::from(endpoint.name());
    let pool = Arc::new(BbNodePool::<C>::new(NodePoolSettings {
        endpoint,
        on_connect,
        read_only,
        statement_timeout: role.statement_timeout,
        max_size: role.max_size,
        connect_timeout: role.connect_timeout,
        checkout_timeout: role.checkout_timeout,
        retry_connect,
    }));
    NodePool {
        name,
        pool,
        health: Arc::default(),
        weight,
        group: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let cases = [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (60, 1000),
        ];
        for (failures, millis) in cases {
            assert_eq!(
                backoff.after(failures),
                Duration::from_millis(millis),
                "after {failures} failures"
            );
        }
    }
}
