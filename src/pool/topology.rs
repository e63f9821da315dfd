//! Following the cluster: a pool built with `nodes(urls)` finds which member is
//! the primary and keeps finding it. The HA engine (Patroni, repmgr, a cloud
//! provider) decides who the primary is; the pool only follows, through what each
//! member says of itself (`pg_is_in_recovery()`), asked every monitor interval
//! and at once on evidence (a primary checkout that fails).
//!
//! Who the primary is, is one value published as a whole ([`Topology`], with a
//! generation) that routing reads without a lock. A change publishes a new value
//! and gives the old primary's writable pool up: sessions checked out of it go
//! back to a pool nobody hands out from any more, so a demoted node's sessions are
//! never handed out as primary sessions again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{NodePool, PoolInner};
use crate::connection::{Handle, SwitchTarget};
use crate::{Error, FailureKind};

/// How soon a writer waiting for a primary looks again when nothing changed.
const RECHECK: Duration = Duration::from_millis(100);

/// The pool's view of the cluster: which member is the primary now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Topology {
    /// Grows by one at every change.
    pub generation: u64,
    /// The primary's name (`nodeN (host:port)`), `None` while there is none.
    pub primary: Option<String>,
    /// Every member, in the order given to `nodes`.
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Current {
    generation: u64,
    primary: Option<usize>,
}

/// Where the primary's sessions come from.
pub(super) enum Primary<C: SwitchTarget> {
    /// `.primary(url)`: one node, always the primary.
    Fixed(NodePool<C>),
    /// `.nodes(urls)`: whichever member is the primary now.
    Discovered(Discovered<C>),
}

/// The writable side of every member, and who the primary is.
pub(super) struct Discovered<C: SwitchTarget> {
    /// Each member's pool of writable sessions (checked read-write at connect).
    pools: Vec<ArcSwap<NodePool<C>>>,
    /// Makes a fresh writable pool for a member (its old one is given up).
    make: Box<dyn Fn(usize) -> NodePool<C> + Send + Sync>,
    current: ArcSwap<Current>,
    changed: watch::Sender<Current>,
    checkout_timeout: Duration,
    /// Nanoseconds since the pool's epoch, plus one, of the first primary checkout
    /// that failed since the last that succeeded (0: none failed).
    lost_since: AtomicU64,
}

impl<C: SwitchTarget> Discovered<C> {
    pub(super) fn new(
        members: usize,
        make: Box<dyn Fn(usize) -> NodePool<C> + Send + Sync>,
        checkout_timeout: Duration,
    ) -> Self {
        let current = Current {
            generation: 0,
            primary: None,
        };
        Discovered {
            pools: (0..members)
                .map(|i| ArcSwap::from_pointee(make(i)))
                .collect(),
            make,
            current: ArcSwap::from_pointee(current),
            changed: watch::channel(current).0,
            checkout_timeout,
            lost_since: AtomicU64::new(0),
        }
    }

    pub(super) fn member_names(&self) -> Vec<String> {
        self.pools
            .iter()
            .map(|pool| pool.load().name().to_owned())
            .collect()
    }
}

impl<C: SwitchTarget> Primary<C> {
    /// The primary's name now (`None` while a discovered cluster has none).
    pub(super) fn name(&self) -> Option<String> {
        match self {
            Primary::Fixed(node) => Some(node.name().to_owned()),
            Primary::Discovered(d) => d
                .current
                .load()
                .primary
                .map(|index| d.pools[index].load().name().to_owned()),
        }
    }
}

impl<C: SwitchTarget> PoolInner<C> {
    /// The topology as a value.
    pub(super) fn topology(&self) -> Topology {
        match &self.primary {
            Primary::Fixed(node) => Topology {
                generation: 0,
                primary: Some(node.name().to_owned()),
                members: std::iter::once(node.name().to_owned())
                    .chain(self.replicas.iter().map(|r| r.name().to_owned()))
                    .collect(),
            },
            Primary::Discovered(d) => {
                // One snapshot for both fields.
                let current = **d.current.load();
                Topology {
                    generation: current.generation,
                    primary: current
                        .primary
                        .map(|index| d.pools[index].load().name().to_owned()),
                    members: d.member_names(),
                }
            }
        }
    }

    /// The generation of the topology: 0 with a fixed primary.
    pub(super) fn topology_generation(&self) -> u64 {
        match &self.primary {
            Primary::Fixed(_) => 0,
            Primary::Discovered(d) => d.current.load().generation,
        }
    }

    /// Follow the monitor's view of who the primary is, until the pool is dropped.
    pub(super) async fn follow(pool: Weak<Self>, mut leader: watch::Receiver<Option<usize>>) {
        loop {
            if leader.changed().await.is_err() {
                return;
            }
            let new = *leader.borrow_and_update();
            let Some(pool) = pool.upgrade() else { return };
            pool.apply_leader(new);
        }
    }

    /// Publish `new` as the primary (a no-op if it already is).
    pub(super) fn apply_leader(&self, new: Option<usize>) {
        let Primary::Discovered(d) = &self.primary else {
            return;
        };
        let old = **d.current.load();
        if old.primary == new {
            return;
        }
        let next = Current {
            generation: old.generation + 1,
            primary: new,
        };
        d.current.store(Arc::new(next));
        if let Some(old_primary) = old.primary {
            // Its sessions go back to a pool nothing checks out of any more.
            d.pools[old_primary].store(Arc::new((d.make)(old_primary)));
        }
        let name = |index: Option<usize>| {
            index.map_or_else(
                || "none".to_owned(),
                |i| d.pools[i].load().name().to_owned(),
            )
        };
        if old.generation == 0 && old.primary.is_none() {
            // The first discovery at build: not a change of the cluster.
            tracing::info!(target: "diesel_rwsplit::pool", primary = %name(new), "primary found");
            d.changed.send_replace(next);
            return;
        }
        self.router.stats.record_topology_change();
        tracing::warn!(
            target: "diesel_rwsplit::pool",
            old_primary = %name(old.primary),
            new_primary = %name(new),
            generation = next.generation,
            cause = "the members' own answers (pg_is_in_recovery)",
            "topology changed"
        );
        d.changed.send_replace(next);
    }

    /// Ask the monitor for a round now: evidence that the primary moved.
    fn rediscover(&self) {
        if let Some(monitor) = &self.monitor {
            monitor.poll_now();
        }
        self.rediscover_now.notify_one();
    }

    /// A writable session of whichever member is the primary, waiting through a
    /// change for up to the primary checkout timeout. Cancel-safe: a session in
    /// hand when the future is dropped goes back to its pool.
    /// Returns the session with the generation it was checked out in.
    pub(super) async fn checkout_discovered(
        &self,
        d: &Discovered<C>,
    ) -> Result<(Handle<C>, u64), Error> {
        let started = Instant::now();
        let deadline = started + d.checkout_timeout;
        let mut changes = d.changed.subscribe();
        loop {
            changes.borrow_and_update();
            let current = **d.current.load();
            if let Some(index) = current.primary {
                let pool = d.pools[index].load_full();
                // A change while this checkout waits (a member that does not answer
                // holds a connect for its whole timeout) ends the wait at once.
                let checkout = tokio::select! {
                    biased;
                    result = tokio::time::timeout_at(deadline.into(), pool.checkout()) => result,
                    _ = changes.changed() => continue,
                };
                match checkout {
                    Ok(Ok(handle)) => {
                        if d.current.load().generation != current.generation {
                            // The primary moved while this checkout waited.
                            continue;
                        }
                        self.primary_reached(d);
                        return Ok((Handle::new(handle), current.generation));
                    }
                    // No failover mends these: say so now, typed, as a fixed
                    // primary does.
                    Ok(Err(failure))
                        if matches!(
                            failure.kind,
                            FailureKind::Tls
                                | FailureKind::Authentication
                                | FailureKind::Credentials
                        ) =>
                    {
                        return Err(Error::PrimaryUnavailable {
                            node: pool.name().to_owned(),
                            kind: failure.kind,
                            source: failure.into_source(),
                        })
                    }
                    Ok(Err(failure)) if failure.kind.is_node_failure() => {
                        self.primary_lost(d);
                        tracing::debug!(target: "diesel_rwsplit::pool", primary = pool.name(), error = %failure, "primary checkout failed: looking for the primary again");
                        self.rediscover();
                    }
                    Ok(Err(failure)) => {
                        return Err(Error::PrimaryUnavailable {
                            node: pool.name().to_owned(),
                            kind: failure.kind,
                            source: failure.into_source(),
                        })
                    }
                    Err(_) => break,
                }
            } else {
                self.primary_lost(d);
                self.rediscover();
            }
            let wait = tokio::time::timeout_at(
                deadline.min(Instant::now() + RECHECK).into(),
                changes.changed(),
            );
            let _ = wait.await;
            if Instant::now() >= deadline {
                break;
            }
        }
        self.router.stats.record_no_primary();
        Err(Error::NoPrimary {
            members: d.pools.len(),
            waited: started.elapsed(),
        })
    }

    fn primary_lost(&self, d: &Discovered<C>) {
        let now = self.now().saturating_add(1);
        let _ = d
            .lost_since
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
    }

    fn primary_reached(&self, d: &Discovered<C>) {
        let since = d.lost_since.swap(0, Ordering::AcqRel);
        if since != 0 {
            let gap = Duration::from_nanos(self.now().saturating_add(1).saturating_sub(since));
            self.router.stats.record_primary_gap(gap);
            tracing::info!(target: "diesel_rwsplit::pool", gap = ?gap, primary = ?self.primary.name(), "writes reach a primary again");
        }
    }
}
