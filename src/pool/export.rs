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
