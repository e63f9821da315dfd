//! A pool's numbers for monitoring systems: the Prometheus text and, with feature
//! `metrics`, the `metrics` facade. Both render the same families
//! ([`crate::families`]) from a snapshot: nothing is added to the statement path.

use super::{PoolInner, SwitchablePool};
use crate::connection::SwitchTarget;
use crate::families::{self, Family, ReplicaGauges};

impl<C: SwitchTarget> PoolInner<C> {
    /// Every family: the counters, then the gauges of each replica as the lag
    /// monitor last saw it.
    fn families(&self) -> Vec<Family> {
        let status = self
            .monitor
            .as_ref()
            .map(|m| m.status())
            .unwrap_or_default();
        let replicas: Vec<ReplicaGauges> = status
            .into_iter()
            .enumerate()
            .map(|(index, status)| ReplicaGauges {
                status,
                in_rotation: self.is_admitted(index),
            })
            .collect();
        families::families(&self.router.stats.snapshot(), Some(&replicas))
    }
}

impl<C: SwitchTarget> SwitchablePool<C> {
    /// Every counter ([`StatsSnapshot::to_prometheus`](crate::StatsSnapshot::to_prometheus))
    /// plus, per replica (label `node="replicaN"`), the lag gauges as the monitor
    /// last saw them: `rwsplit_replica_replay_lag_bytes`, `rwsplit_replica_lag_seconds`,
    /// `rwsplit_replica_healthy` and `rwsplit_replica_in_rotation`.
    pub fn to_prometheus(&self) -> String {
        families::to_prometheus(&self.inner.families())
    }
}

#[cfg(feature = "metrics")]
pub(super) use facade::Publisher;

#[cfg(feature = "metrics")]
mod facade {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock, Weak};
    use std::time::Duration;

    use super::super::{PoolInner, SwitchablePool};
    use crate::connection::SwitchTarget;
    use crate::families;

    /// A pool's link to the `metrics` recorder: whether the descriptions were
    /// registered, and the periodic publisher's task, aborted when the pool's
    /// state is dropped.
    #[derive(Debug, Default)]
    pub(in crate::pool) struct Publisher {
        described: AtomicBool,
        task: OnceLock<AbortOnDrop>,
    }

    #[derive(Debug)]
    struct AbortOnDrop(tokio::task::AbortHandle);

    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    impl<C: SwitchTarget> PoolInner<C> {
        pub(in crate::pool) fn publish_metrics(&self) {
            let describe = !self.publisher.described.swap(true, Ordering::Relaxed);
            families::publish(self.families(), describe);
        }

        /// Publish every `interval` (the first time at once) until the pool is
        /// dropped: the task holds only a `Weak`, so it does not keep the pool
        /// alive, and the pool's state aborts it when it goes.
        pub(in crate::pool) fn start_publishing(self: &Arc<Self>, interval: Duration) {
            let pool = Arc::downgrade(self);
            let task = tokio::spawn(publish_every(pool, interval));
            // Only `build` calls this, once.
            let _ = self.publisher.task.set(AbortOnDrop(task.abort_handle()));
        }
    }

    async fn publish_every<C: SwitchTarget>(pool: Weak<PoolInner<C>>, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // No strong reference across the await: a dropped pool ends here.
            let Some(pool) = pool.upgrade() else { return };
            pool.publish_metrics();
        }
    }

    impl<C: SwitchTarget> SwitchablePool<C> {
        /// Publish every counter and gauge of the pool, now, to the `metrics`
        /// recorder in scope (feature `metrics`): the global one
        /// (`metrics::set_global_recorder`, what the Prometheus and OpenTelemetry
        /// exporters install) or a thread-local one
        /// (`metrics::with_local_recorder`).
        ///
        /// The names and labels are those of [`to_prometheus`](Self::to_prometheus)
        /// (`rwsplit_switches_total{reason="write_statement"}`, ...). Counters are
        /// set with `Counter::absolute` to the pool's own totals (a recorder keeps
        /// the largest value it was given, so a counter never goes back), gauges
        /// with `Gauge::set`; a gauge whose value is unknown (a replica the monitor
        /// has not measured yet) is left as it was. The help texts are registered
        /// (`describe_counter!`, `describe_gauge!`) at the pool's first publication.
        ///
        /// It reads a snapshot of the counters, as [`stats`](Self::stats) does:
        /// no statement waits on it, and the statement path publishes nothing by
        /// itself. Call it before each scrape, or let
        /// [`metrics_interval`](crate::SwitchablePoolBuilder::metrics_interval) do
        /// it. The metrics carry no pool label: give each recorder one pool, or
        /// the pools' values mix.
        pub fn publish_metrics(&self) {
            self.inner.publish_metrics();
        }
    }
}
