//! Counters of the safety interlock and of routing, and their snapshot.
//!
//! Every counter is a private `AtomicU64` bumped with `Relaxed` ordering: they are
//! statistics, not synchronisation. The fingerprint table is a space-saving sketch
//! (fixed memory, the heavy hitters are kept with an error bound), sharded by
//! fingerprint hash so that no flip waits on a lock shared by the whole pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::{SwitchReason, Target};

const REASONS: usize = SwitchReason::ALL.len();
const SHARDS: usize = 16;
/// Fingerprints kept per shard; the whole table holds at most `SHARDS * SLOTS_PER_SHARD`.
const SLOTS_PER_SHARD: usize = 32;

/// How a causal read (`get_after`) was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CausalOutcome {
    /// By a replica the lag monitor had already seen past the token.
    Monitor,
    /// By a replica whose replay position was checked directly (waiting if needed).
    Checked,
    /// By the primary: no replica reached the token within the bound.
    Primary,
}

impl CausalOutcome {
    /// Every outcome, in order.
    pub const ALL: [CausalOutcome; 3] = [
        CausalOutcome::Monitor,
        CausalOutcome::Checked,
        CausalOutcome::Primary,
    ];

    /// Stable snake-case name (metric label).
    pub const fn as_str(self) -> &'static str {
        match self {
            CausalOutcome::Monitor => "replica_by_monitor",
            CausalOutcome::Checked => "replica_checked",
            CausalOutcome::Primary => "primary",
        }
    }
}

/// Shared counters of one pool (or one standalone connection's router).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    switches: [AtomicU64; REASONS],
    refusals: [AtomicU64; REASONS],
    would_switch: [AtomicU64; REASONS],
    statements: [AtomicU64; 2],
    would_be_replica_statements: AtomicU64,
    would_be_primary_statements: AtomicU64,
    observed_units: AtomicU64,
    observed_replica_units: AtomicU64,
    primary_checkouts: AtomicU64,
    replica_checkouts: AtomicU64,
    replica_fallbacks: AtomicU64,
    read_retries: AtomicU64,
    ejections: AtomicU64,
    readmissions: AtomicU64,
    replica_saturations: AtomicU64,
    read_timeouts: AtomicU64,
    causal: [AtomicU64; 3],
    session_window_reads: AtomicU64,
    replica_read_only_transactions: AtomicU64,
    topology_changes: AtomicU64,
    no_primary_refusals: AtomicU64,
    primary_gaps: AtomicU64,
    primary_gap_millis: AtomicU64,
    last_primary_gap_millis: AtomicU64,
    top: TopFingerprints,
    /// One entry per replica group, by group id (empty without groups).
    groups: Box<[GroupCounters]>,
}

/// The counters of one replica group.
#[derive(Debug)]
struct GroupCounters {
    name: Arc<str>,
    reads: AtomicU64,
    fallbacks: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn target_index(target: Target) -> usize {
    match target {
        Target::Primary => 0,
        Target::Replica => 1,
    }
}

impl Stats {
    /// Counters for these replica groups (group id = position).
    pub(crate) fn with_groups(names: &[Arc<str>]) -> Self {
        Stats {
            groups: names
                .iter()
                .map(|name| GroupCounters {
                    name: Arc::clone(name),
                    reads: AtomicU64::new(0),
                    fallbacks: AtomicU64::new(0),
                })
                .collect(),
            ..Stats::default()
        }
    }

    /// A read routed to replica group `group` ran on one of its replicas.
    pub(crate) fn record_group_read(&self, group: usize) {
        if let Some(counters) = self.groups.get(group) {
            bump(&counters.reads);
        }
    }

    /// A read routed to replica group `group` ran on another replica: none of the
    /// group's could serve it.
    pub(crate) fn record_group_fallback(&self, group: usize) {
        if let Some(counters) = self.groups.get(group) {
            bump(&counters.fallbacks);
        }
    }

    /// An automatic or explicit flip to the primary.
    pub(crate) fn record_switch(&self, reason: SwitchReason, fingerprint: Option<(u64, &str)>) {
        bump(&self.switches[reason.index()]);
        if let Some((hash, text)) = fingerprint {
            self.top.record(hash, text, reason);
        }
    }

    /// `Raise` mode refused a statement or a transaction.
    pub(crate) fn record_refusal(&self, reason: SwitchReason) {
        bump(&self.refusals[reason.index()]);
    }

    /// `Observe` mode: the routing would have flipped here.
    pub(crate) fn record_would_switch(
        &self,
        reason: SwitchReason,
        fingerprint: Option<(u64, &str)>,
    ) {
        bump(&self.would_switch[reason.index()]);
        if let Some((hash, text)) = fingerprint {
            self.top.record(hash, text, reason);
        }
    }

    /// A statement ran on `target`.
    pub(crate) fn record_statement(&self, target: Target) {
        bump(&self.statements[target_index(target)]);
    }

    /// `Observe` mode: where the statement would have run.
    pub(crate) fn record_would_be(&self, target: Target) {
        match target {
            Target::Replica => bump(&self.would_be_replica_statements),
            Target::Primary => bump(&self.would_be_primary_statements),
        }
    }

    /// `Observe` mode: a unit of work (one checkout) ended; did it stay replica-servable?
    pub(crate) fn record_observed_unit(&self, replica_servable: bool) {
        bump(&self.observed_units);
        if replica_servable {
            bump(&self.observed_replica_units);
        }
    }

    pub(crate) fn record_checkout(&self, target: Target) {
        match target {
            Target::Primary => bump(&self.primary_checkouts),
            Target::Replica => bump(&self.replica_checkouts),
        }
    }

    /// A replica read failed at the connection level and ran once more elsewhere.
    pub(crate) fn record_read_retry(&self) {
        bump(&self.read_retries);
    }

    pub(crate) fn record_causal(&self, outcome: CausalOutcome) {
        bump(&self.causal[outcome as usize]);
    }

    pub(crate) fn record_session_window_read(&self) {
        bump(&self.session_window_reads);
    }

    /// The pool's view of the cluster changed (a new primary, or none).
    pub(crate) fn record_topology_change(&self) {
        bump(&self.topology_changes);
    }

    /// A statement that needed the primary failed because no member was the primary.
    pub(crate) fn record_no_primary(&self) {
        bump(&self.no_primary_refusals);
    }

    /// From losing the primary to the first connection to the new one.
    pub(crate) fn record_primary_gap(&self, gap: std::time::Duration) {
        let millis = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX);
        bump(&self.primary_gaps);
        self.primary_gap_millis.fetch_add(millis, Ordering::Relaxed);
        self.last_primary_gap_millis
            .store(millis, Ordering::Relaxed);
    }

    /// A read-only transaction began on a replica (and stays there to its end).
    pub(crate) fn record_replica_read_only_transaction(&self) {
        bump(&self.replica_read_only_transactions);
    }

    /// A replica was taken out of rotation.
    pub(crate) fn record_ejection(&self) {
        bump(&self.ejections);
    }

    /// An ejected replica answered its probe and is back in rotation.
    pub(crate) fn record_readmission(&self) {
        bump(&self.readmissions);
    }

    /// A replica checkout waited its whole timeout while the replica answered: busy, not dead.
    pub(crate) fn record_replica_saturation(&self) {
        bump(&self.replica_saturations);
    }

    /// A replica read ran past its client-side bound; its session was discarded.
    pub(crate) fn record_read_timeout(&self) {
        bump(&self.read_timeouts);
    }

    /// A replica-first checkout was served by the primary because no replica answered.
    pub(crate) fn record_replica_fallback(&self) {
        bump(&self.replica_fallbacks);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let array = |counters: &[AtomicU64; REASONS]| std::array::from_fn(|i| read(&counters[i]));
        StatsSnapshot {
            switches: array(&self.switches),
            refusals: array(&self.refusals),
            would_switch: array(&self.would_switch),
            statements: [read(&self.statements[0]), read(&self.statements[1])],
            would_be_replica_statements: read(&self.would_be_replica_statements),
            would_be_primary_statements: read(&self.would_be_primary_statements),
            observed_units: read(&self.observed_units),
            observed_replica_units: read(&self.observed_replica_units),
            primary_checkouts: read(&self.primary_checkouts),
            replica_checkouts: read(&self.replica_checkouts),
            replica_fallbacks: read(&self.replica_fallbacks),
            read_retries: read(&self.read_retries),
            ejections: read(&self.ejections),
            readmissions: read(&self.readmissions),
            replica_saturations: read(&self.replica_saturations),
            read_timeouts: read(&self.read_timeouts),
            causal: std::array::from_fn(|i| read(&self.causal[i])),
            session_window_reads: read(&self.session_window_reads),
            replica_read_only_transactions: read(&self.replica_read_only_transactions),
            topology_changes: read(&self.topology_changes),
            no_primary_refusals: read(&self.no_primary_refusals),
            primary_gaps: read(&self.primary_gaps),
            primary_gap_millis: read(&self.primary_gap_millis),
            last_primary_gap_millis: read(&self.last_primary_gap_millis),
            fingerprints: self.top.entries(),
            groups: self
                .groups
                .iter()
                .map(|g| GroupCount {
                    group: g.name.to_string(),
                    reads: read(&g.reads),
                    fallbacks: read(&g.fallbacks),
                })
                .collect(),
        }
    }
}

/// The counters of one replica group (see
/// [`SwitchablePoolBuilder::replica_group`](crate::SwitchablePoolBuilder::replica_group)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupCount {
    /// The group's name.
    pub group: String,
    /// Reads routed to the group that one of its replicas served.
    pub reads: u64,
    /// Reads routed to the group that another replica served, because none of the
    /// group's could.
    pub fallbacks: u64,
}

/// A point-in-time copy of a pool's counters. Cheap to take; never blocks a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    switches: [u64; REASONS],
    refusals: [u64; REASONS],
    would_switch: [u64; REASONS],
    statements: [u64; 2],
    would_be_replica_statements: u64,
    would_be_primary_statements: u64,
    observed_units: u64,
    observed_replica_units: u64,
    primary_checkouts: u64,
    replica_checkouts: u64,
    replica_fallbacks: u64,
    read_retries: u64,
    ejections: u64,
    readmissions: u64,
    replica_saturations: u64,
    read_timeouts: u64,
    causal: [u64; 3],
    session_window_reads: u64,
    replica_read_only_transactions: u64,
    topology_changes: u64,
    no_primary_refusals: u64,
    primary_gaps: u64,
    primary_gap_millis: u64,
    last_primary_gap_millis: u64,
    fingerprints: Vec<FingerprintCount>,
    groups: Vec<GroupCount>,
}

impl StatsSnapshot {
    /// Flips to the primary for `reason` (the interlock's automatic flips and the hooks).
    pub fn switches(&self, reason: SwitchReason) -> u64 {
        self.switches[reason.index()]
    }

    /// All flips, whatever the reason.
    pub fn total_switches(&self) -> u64 {
        self.switches.iter().sum()
    }

    /// Statements or transactions refused in `Raise` mode, for `reason`.
    pub fn refusals(&self, reason: SwitchReason) -> u64 {
        self.refusals[reason.index()]
    }

    /// `Observe` mode: flips that `Switch` mode would have made, for `reason`.
    pub fn would_switch(&self, reason: SwitchReason) -> u64 {
        self.would_switch[reason.index()]
    }

    /// Statements that ran on `target`.
    pub fn statements(&self, target: Target) -> u64 {
        self.statements[target_index(target)]
    }

    /// `Observe` mode: statements that `Switch` mode would have run on `target`.
    pub fn would_be_statements(&self, target: Target) -> u64 {
        match target {
            Target::Replica => self.would_be_replica_statements,
            Target::Primary => self.would_be_primary_statements,
        }
    }

    /// `Observe` mode: checkouts (units of work) ended, and how many of them only read.
    pub fn observed_units(&self) -> (u64, u64) {
        (self.observed_units, self.observed_replica_units)
    }

    /// Connections checked out of the node pools, by role (a lazy primary counts once, at its flip).
    pub fn checkouts(&self, target: Target) -> u64 {
        match target {
            Target::Primary => self.primary_checkouts,
            Target::Replica => self.replica_checkouts,
        }
    }

    /// Replica-first checkouts served by the primary because no replica could be reached.
    pub fn replica_fallbacks(&self) -> u64 {
        self.replica_fallbacks
    }

    /// Replica reads that failed at the connection level before any row came back and
    /// were run once more on another replica or the primary.
    pub fn read_retries(&self) -> u64 {
        self.read_retries
    }

    /// Times a replica was ejected from rotation (it refused or did not answer new
    /// sessions: the evidence of a dead node), and times an ejected replica was re-admitted.
    pub fn ejections(&self) -> (u64, u64) {
        (self.ejections, self.readmissions)
    }

    /// Replica checkouts that waited their whole checkout timeout because every
    /// connection of the replica was busy while the replica itself answered:
    /// saturation, counted apart from failures and never a reason to eject.
    pub fn replica_saturations(&self) -> u64 {
        self.replica_saturations
    }

    /// Replica reads that ran past their client-side bound (the replica statement
    /// timeout plus a grace period): the session was discarded and the node suspected.
    pub fn read_timeouts(&self) -> u64 {
        self.read_timeouts
    }

    /// Causal reads (`get_after`) served each way.
    pub fn causal_reads(&self, outcome: CausalOutcome) -> u64 {
        self.causal[outcome as usize]
    }

    /// Session connections sent to the primary because the key wrote within its window.
    pub fn session_window_reads(&self) -> u64 {
        self.session_window_reads
    }

    /// Read-only transactions served by replicas, from `BEGIN` to `COMMIT`
    /// (`build_transaction().read_only()`, or a raw `BEGIN READ ONLY`, on a
    /// connection that was on a replica).
    pub fn replica_read_only_transactions(&self) -> u64 {
        self.replica_read_only_transactions
    }

    /// Times a pool built with [`nodes`](crate::SwitchablePoolBuilder::nodes) saw
    /// the primary change (a new member, or none while a change is under way).
    pub fn topology_changes(&self) -> u64 {
        self.topology_changes
    }

    /// Statements (and checkouts) that needed the primary and failed with
    /// [`Error::NoPrimary`](crate::Error::NoPrimary): no member was the primary for
    /// the whole primary checkout timeout.
    pub fn no_primary_refusals(&self) -> u64 {
        self.no_primary_refusals
    }

    /// Primary outages seen by this pool's writers, from the first primary checkout
    /// that failed (or found no primary) to the first that succeeded afterwards, on
    /// the same or a new primary: `(how many, total time)`.
    pub fn primary_gaps(&self) -> (u64, std::time::Duration) {
        (
            self.primary_gaps,
            std::time::Duration::from_millis(self.primary_gap_millis),
        )
    }

    /// The last of [`primary_gaps`](Self::primary_gaps).
    pub fn last_primary_gap(&self) -> Option<std::time::Duration> {
        (self.primary_gaps > 0)
            .then(|| std::time::Duration::from_millis(self.last_primary_gap_millis))
    }

    /// Reads routed to replica group `group` (by a
    /// [`group_rule`](crate::classify::ClassifierBuilder::group_rule) or
    /// [`heavy_reads`](crate::classify::ClassifierBuilder::heavy_reads)) that one of the
    /// group's replicas served. 0 for a group the pool does not know.
    pub fn group_reads(&self, group: &str) -> u64 {
        self.group(group).map_or(0, |g| g.reads)
    }

    /// Reads routed to replica group `group` that another replica served because
    /// none of the group's could (all ejected, unreachable, lagging or promoted).
    /// 0 for a group the pool does not know.
    pub fn group_fallbacks(&self, group: &str) -> u64 {
        self.group(group).map_or(0, |g| g.fallbacks)
    }

    /// Every replica group's counters: the groups of the replicas, in the order
    /// first given, then any other group the classifier's rules name. Empty when no
    /// group is configured.
    pub fn groups(&self) -> &[GroupCount] {
        &self.groups
    }

    fn group(&self, group: &str) -> Option<&GroupCount> {
        self.groups.iter().find(|g| g.group == group)
    }

    /// The `n` statement fingerprints that tripped the interlock most often (flips in
    /// `Switch` mode, would-be flips in `Observe` mode), most frequent first.
    pub fn top_fingerprints(&self, n: usize) -> Vec<FingerprintCount> {
        self.fingerprints.iter().take(n).cloned().collect()
    }
}

/// How often one statement fingerprint tripped the interlock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FingerprintCount {
    /// Stable 64-bit hash of the fingerprint.
    pub hash: u64,
    /// The normalised statement (literals folded; never a bind value).
    pub fingerprint: String,
    /// The reason of its most recent trip.
    pub reason: SwitchReason,
    /// Estimated count; exact unless the table overflowed, then at most `count - error` low.
    pub count: u64,
    /// Over-estimation bound inherited from an evicted entry (0 when exact).
    pub error: u64,
    /// First and last time it tripped.
    pub first_seen: SystemTime,
    /// Last time it tripped.
    pub last_seen: SystemTime,
}

#[derive(Debug)]
struct TopFingerprints {
    shards: [Mutex<Vec<FingerprintCount>>; SHARDS],
}

impl Default for TopFingerprints {
    fn default() -> Self {
        TopFingerprints {
            shards: std::array::from_fn(|_| Mutex::new(Vec::with_capacity(SLOTS_PER_SHARD))),
        }
    }
}

impl TopFingerprints {
    /// Space-saving: count a known fingerprint; otherwise take a free slot, or evict
    /// the smallest count and inherit it as the new entry's error bound.
    fn record(&self, hash: u64, text: &str, reason: SwitchReason) {
        let now = SystemTime::now();
        let shard = &self.shards[(hash % SHARDS as u64) as usize];
        let mut slots = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = slots.iter_mut().find(|e| e.hash == hash) {
            entry.count += 1;
            entry.reason = reason;
            entry.last_seen = now;
            return;
        }
        let fresh = |count: u64, error: u64| FingerprintCount {
            hash,
            fingerprint: text.to_owned(),
            reason,
            count,
            error,
            first_seen: now,
            last_seen: now,
        };
        if slots.len() < SLOTS_PER_SHARD {
            slots.push(fresh(1, 0));
        } else if let Some(smallest) = slots.iter_mut().min_by_key(|e| e.count) {
            let floor = smallest.count;
            *smallest = fresh(floor + 1, floor);
        }
    }

    fn entries(&self) -> Vec<FingerprintCount> {
        let mut all: Vec<FingerprintCount> = self
            .shards
            .iter()
            .flat_map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone()
            })
            .collect();
        all.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.fingerprint.cmp(&b.fingerprint))
        });
        all
    }
}

/// Merge helper for tests and reports: total count per fingerprint text.
#[cfg(test)]
fn counts_by_text(entries: &[FingerprintCount]) -> std::collections::HashMap<String, u64> {
    entries
        .iter()
        .map(|e| (e.fingerprint.clone(), e.count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_land_under_their_reason_and_target() {
        let stats = Stats::default();
        let cases = [
            (SwitchReason::WriteStatement, 3),
            (SwitchReason::TransactionBegin, 2),
            (SwitchReason::SaveHook, 1),
            (SwitchReason::Unknown, 0),
        ];
        for (reason, times) in cases {
            for _ in 0..times {
                stats.record_switch(reason, None);
            }
        }
        stats.record_statement(Target::Replica);
        stats.record_statement(Target::Replica);
        stats.record_statement(Target::Primary);
        stats.record_refusal(SwitchReason::LockingRead);
        let snap = stats.snapshot();
        for (reason, times) in cases {
            assert_eq!(snap.switches(reason), times, "{reason}");
        }
        assert_eq!(snap.total_switches(), 6);
        assert_eq!(snap.statements(Target::Replica), 2);
        assert_eq!(snap.statements(Target::Primary), 1);
        assert_eq!(snap.refusals(SwitchReason::LockingRead), 1);
        assert_eq!(snap.refusals(SwitchReason::WriteStatement), 0);
    }

    #[test]
    fn top_fingerprints_are_exact_below_capacity_and_ordered() {
        let stats = Stats::default();
        for (hash, text, times) in [
            (1u64, "insert a", 5),
            (2, "update b", 9),
            (3, "delete c", 1),
        ] {
            for _ in 0..times {
                stats.record_switch(SwitchReason::WriteStatement, Some((hash, text)));
            }
        }
        let top = stats.snapshot().top_fingerprints(2);
        assert_eq!(
            top.iter()
                .map(|e| (e.fingerprint.as_str(), e.count, e.error))
                .collect::<Vec<_>>(),
            [("update b", 9, 0), ("insert a", 5, 0)]
        );
        assert!(top[0].first_seen <= top[0].last_seen);
    }

    #[test]
    fn memory_stays_bounded_and_heavy_hitters_survive_a_flood_of_singletons() {
        let stats = Stats::default();
        for round in 0..50u64 {
            stats.record_switch(
                SwitchReason::WriteStatement,
                Some((7 * SHARDS as u64, "heavy")),
            );
            for k in 0..100u64 {
                let hash = 1000 + round * 100 + k;
                stats.record_switch(SwitchReason::WriteStatement, Some((hash, "singleton")));
            }
        }
        let entries = stats.snapshot().fingerprints;
        assert!(entries.len() <= SHARDS * SLOTS_PER_SHARD);
        let heavy = entries
            .iter()
            .find(|e| e.fingerprint == "heavy")
            .expect("heavy hitter evicted");
        assert!(
            heavy.count >= 50 && heavy.count - heavy.error <= 50,
            "{heavy:?}"
        );
        assert_eq!(counts_by_text(&entries).len(), 2);
    }
}
