//! Read-your-writes across connections: causal tokens, session windows, waiting
//! for replication.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{PooledConnection, SwitchablePool};
use crate::connection::{ReplicaLease, SwitchTarget, SwitchableConnection};
use crate::stats::CausalOutcome;
use crate::{CausalToken, Error, ReplicaStatus};

const SHARDS: usize = 16;

/// How much longer than its own bound a replica's replay wait may take before the
/// client gives up on its session.
const CAUSAL_POLL_CAP: Duration = Duration::from_millis(50);
/// Past this many keys in a shard, expired entries are swept on the next insert.
const SWEEP_AT: usize = 1024;

/// When each session key last finished a unit of work that wrote. Sharded by key
/// hash: no lock is shared by the whole pool.
#[derive(Debug, Default)]
pub(super) struct SessionWrites {
    shards: [Mutex<HashMap<String, Instant>>; SHARDS],
}

impl SessionWrites {
    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Instant>> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        &self.shards[(hasher.finish() % SHARDS as u64) as usize]
    }

    pub(super) fn record(&self, key: &str, window: Duration) {
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if shard.len() >= SWEEP_AT {
            shard.retain(|_, at| now.duration_since(*at) < window);
        }
        shard.insert(key.to_owned(), now);
    }

    fn wrote_within(&self, key: &str, window: Duration) -> bool {
        let shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        shard.get(key).is_some_and(|at| at.elapsed() < window)
    }
}

impl<C: SwitchTarget> SwitchablePool<C> {
    /// A replica-first connection on a replica that has replayed `token` (the
    /// primary's position after some unit of work wrote), so that it reads that
    /// write without pinning the primary.
    ///
    /// In order: a replica the lag monitor already saw past the token (PostgreSQL
    /// tokens: one number says it); else one replica (the one the monitor saw
    /// furthest ahead, among those in rotation) is checked out and asked until
    /// [`causal_wait`](crate::SwitchablePoolBuilder::causal_wait) has passed; else
    /// the primary. PostgreSQL has no server-side wait: the replica's replay position
    /// is read again after 1, 2, 4, ... ms (at most 50 ms apart), about
    /// `log2(causal_wait / 1 ms) + causal_wait / 50 ms` queries. MySQL and MariaDB
    /// wait in one statement (`MASTER_GTID_WAIT`, `WAIT_FOR_EXECUTED_GTID_SET`). So
    /// it costs one replica connection whatever the number of replicas. Each outcome
    /// is counted ([`StatsSnapshot::causal_reads`](crate::StatsSnapshot::causal_reads)).
    ///
    /// The whole wait, checkouts included, is bounded by `causal_wait` (then the
    /// primary's own checkout), plus at most 50 ms for a replica that does not
    /// answer its check, whose session is then discarded. In `Observe` mode it is
    /// the primary at once, as for every connection.
    ///
    /// Cancellation: a connection checked out while waiting goes back to its pool.
    pub async fn get_after(&self, token: &CausalToken) -> Result<PooledConnection<C>, Error> {
        let inner = &self.inner;
        if inner.router.mode == crate::InterlockMode::Observe {
            return self.get_primary().await;
        }
        let stats = &self.inner.router.stats;
        let deadline = tokio::time::Instant::now() + inner.causal_wait;
        let checkout = |index| tokio::time::timeout_at(deadline, inner.checkout_replica_at(index));
        let order = inner.replica_order(None);
        let seen = |i: usize| inner.monitor.as_ref().and_then(|m| m.replay_lsn(i));
        let mut tried = Vec::new();
        for &index in &order {
            if !seen(index).is_some_and(|lsn| token.is_reached_by(lsn)) {
                continue;
            }
            tried.push(index);
            if let Ok(Some(lease)) = checkout(index).await {
                stats.record_causal(CausalOutcome::Monitor);
                return Ok(self.wrap_replica(lease));
            }
        }
        // The replica furthest ahead is the likeliest to get there first; ties keep
        // the balancing order. One already tried above did not check out.
        let mut candidates: Vec<usize> = order.into_iter().filter(|i| !tried.contains(i)).collect();
        candidates.sort_by_key(|i| std::cmp::Reverse(seen(*i)));
        let mut lease = None;
        for index in candidates {
            match checkout(index).await {
                Ok(Some(found)) => {
                    lease = Some(found);
                    break;
                }
                Ok(None) => {}
                Err(_) => break,
            }
        }
        if let Some(mut lease) = lease {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            // The backend waits at most `remaining` (server-side where it can); the
            // client-side bound only catches a node that does not answer at all.
            let bound = remaining + CAUSAL_POLL_CAP;
            match tokio::time::timeout(
                bound,
                C::wait_replayed(lease.handle.get_mut(), token, remaining),
            )
            .await
            {
                Ok(Ok(true)) => {
                    stats.record_causal(CausalOutcome::Checked);
                    return Ok(self.wrap_replica(lease));
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(target: "diesel_rwsplit::pool", replica = &*lease.name, error = %e, "replay position check failed");
                    crate::connection::mark_broken::<C>(lease.handle.get_mut());
                }
                Err(_) => {
                    // Cut mid-query: the session's state is unknown.
                    crate::connection::mark_broken::<C>(lease.handle.get_mut());
                }
            }
        }
        stats.record_causal(CausalOutcome::Primary);
        self.get_primary().await
    }

    /// A connection for a session key (a user id, a session cookie): on the primary
    /// if that key's last unit of work that wrote ended less than
    /// [`session_window`](crate::SwitchablePoolBuilder::session_window) ago, else on
    /// the default route. A connection from here that wrote (flipped to the
    /// primary, or, if it started there, ran a statement the classifier sends to
    /// the primary) starts the key's window again when it is dropped: a session
    /// that keeps writing stays on the primary, one that stops writing leaves it
    /// once the window has passed.
    pub async fn get_for_session(&self, key: &str) -> Result<PooledConnection<C>, Error> {
        let mut conn = if self
            .inner
            .session_writes
            .wrote_within(key, self.inner.session_window)
        {
            self.inner.router.stats.record_session_window_read();
            self.get_primary().await?
        } else {
            self.get().await?
        };
        let (pool, key) = (std::sync::Arc::clone(&self.inner), key.to_owned());
        conn.set_after_write(Box::new(move || {
            pool.session_writes.record(&key, pool.session_window)
        }));
        Ok(conn)
    }

    /// Wait until every replica in rotation has applied everything the primary had at
    /// the time of the call (its WAL position, or its GTID position on MySQL and
    /// MariaDB); `false` if `timeout` passes first. Checks
    /// the replicas directly (one connection each); opens a primary connection to
    /// read its position.
    pub async fn wait_for_replication(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let target = match tokio::time::timeout(timeout, async {
            let mut primary = self.inner.checkout_primary().await.ok()?;
            C::current_position(primary.get_mut()).await.ok()
        })
        .await
        {
            Ok(Some(token)) => token,
            _ => return false,
        };
        let indexes: Vec<usize> = (0..self.inner.replicas.len())
            .filter(|i| self.inner.is_routable(*i))
            .collect();
        for index in indexes {
            let Ok(Some(mut lease)) =
                tokio::time::timeout_at(deadline.into(), self.inner.checkout_replica_at(index))
                    .await
            else {
                return false;
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let wait = C::wait_replayed(lease.handle.get_mut(), &target, remaining);
            match tokio::time::timeout(remaining + CAUSAL_POLL_CAP, wait).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return false,
                _ => {
                    // Failed or cut mid-query: the session's state is unknown.
                    crate::connection::mark_broken::<C>(lease.handle.get_mut());
                    return false;
                }
            }
        }
        true
    }

    /// Each replica's replication state as the lag monitor last saw it: lag in bytes
    /// and time, last seen, health, role, last error. Empty without replicas.
    pub fn replication_status(&self) -> Vec<ReplicaStatus> {
        self.inner
            .monitor
            .as_ref()
            .map(|m| m.status())
            .unwrap_or_default()
    }

    fn wrap_replica(&self, lease: ReplicaLease<C>) -> PooledConnection<C> {
        let conn = SwitchableConnection::replica_first(
            lease,
            self.source(),
            std::sync::Arc::clone(&self.inner.router),
        );
        PooledConnection::new(conn)
    }
}
