//! What the interlock did, for people: the audit report and Prometheus text.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::stats::StatsSnapshot;
use crate::{InterlockMode, SwitchReason, Target};

/// Where a pool's interlock carried the application: the statements that tripped
/// it, by fingerprint, and (in `Observe` mode) how much a replica would have served.
///
/// Print it (`Display` is a table) or serialise it with serde (e.g. to JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct AuditReport {
    /// `switch`, `raise` or `observe`.
    pub mode: &'static str,
    /// Statements that ran on the primary / on replicas.
    pub statements_on_primary: u64,
    /// Statements that ran on replicas.
    pub statements_on_replicas: u64,
    /// Share of statements served by replicas (`Switch`/`Raise`), or that would have
    /// been (`Observe`); `None` before any statement.
    pub replica_share_of_statements: Option<f64>,
    /// `Observe` mode: units of work (checkouts) ended, and how many only read.
    pub observed_units: u64,
    /// `Observe` mode: units of work that would have been served by replicas alone.
    pub observed_replica_units: u64,
    /// `Observe` mode: share of units of work a replica would have served.
    pub replica_share_of_units: Option<f64>,
    /// Flips (`Switch`), would-be flips (`Observe`) or refusals (`Raise`) by reason.
    pub trips_by_reason: BTreeMap<&'static str, u64>,
    /// The statements that tripped the interlock, most frequent first.
    pub statements: Vec<AuditEntry>,
}

/// One statement fingerprint in an [`AuditReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// The normalised statement (literals folded; never a bind value).
    pub fingerprint: String,
    /// Its stable hash, 16 hex digits.
    pub hash: String,
    /// Why it needed the primary (its most recent trip).
    pub reason: &'static str,
    /// How many times it tripped the interlock (an estimate once the bounded table
    /// has overflowed: at most `error` too high).
    pub count: u64,
    /// Over-estimation bound of `count`.
    pub error: u64,
    /// First trip, milliseconds since the Unix epoch.
    pub first_seen_unix_ms: u64,
    /// Last trip, milliseconds since the Unix epoch.
    pub last_seen_unix_ms: u64,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

impl AuditReport {
    pub(crate) fn new(mode: InterlockMode, stats: &StatsSnapshot) -> Self {
        let (mode_name, trips): (&'static str, fn(&StatsSnapshot, SwitchReason) -> u64) = match mode
        {
            InterlockMode::Switch => ("switch", StatsSnapshot::switches),
            InterlockMode::Raise => ("raise", StatsSnapshot::refusals),
            InterlockMode::Observe => ("observe", StatsSnapshot::would_switch),
        };
        let (primary, replica) = (
            stats.statements(Target::Primary),
            stats.statements(Target::Replica),
        );
        let replica_share_of_statements = if mode == InterlockMode::Observe {
            let would_replica = stats.would_be_statements(Target::Replica);
            share(
                would_replica,
                would_replica + stats.would_be_statements(Target::Primary),
            )
        } else {
            share(replica, replica + primary)
        };
        let (units, replica_units) = stats.observed_units();
        AuditReport {
            mode: mode_name,
            statements_on_primary: primary,
            statements_on_replicas: replica,
            replica_share_of_statements,
            observed_units: units,
            observed_replica_units: replica_units,
            replica_share_of_units: share(replica_units, units),
            trips_by_reason: SwitchReason::ALL
                .into_iter()
                .map(|r| (r.as_str(), trips(stats, r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            statements: stats
                .top_fingerprints(usize::MAX)
                .into_iter()
                .map(|f| AuditEntry {
                    fingerprint: f.fingerprint,
                    hash: format!("{:016x}", f.hash),
                    reason: f.reason.as_str(),
                    count: f.count,
                    error: f.error,
                    first_seen_unix_ms: unix_ms(f.first_seen),
                    last_seen_unix_ms: unix_ms(f.last_seen),
                })
                .collect(),
        }
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let percent =
            |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{:.1}%", s * 100.0));
        writeln!(f, "interlock mode: {}", self.mode)?;
        writeln!(
            f,
            "statements: {} on the primary, {} on replicas; replica share {}{}",
            self.statements_on_primary,
            self.statements_on_replicas,
            percent(self.replica_share_of_statements),
            if self.mode == "observe" {
                " (would have been)"
            } else {
                ""
            }
        )?;
        if self.observed_units > 0 {
            writeln!(
                f,
                "units of work: {} observed, {} read-only; replica share {}",
                self.observed_units,
                self.observed_replica_units,
                percent(self.replica_share_of_units)
            )?;
        }
        let reasons: Vec<String> = self
            .trips_by_reason
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        writeln!(
            f,
            "interlock trips by reason: {}",
            if reasons.is_empty() {
                "none".to_owned()
            } else {
                reasons.join(", ")
            }
        )?;
        if self.statements.is_empty() {
            return Ok(());
        }
        writeln!(f, "{:>8}  {:<20}  statement", "count", "reason")?;
        for entry in &self.statements {
            let mut statement = entry.fingerprint.clone();
            if statement.len() > 100 {
                let cut = (0..=97)
                    .rev()
                    .find(|i| statement.is_char_boundary(*i))
                    .unwrap_or(0);
                statement.truncate(cut);
                statement.push_str("...");
            }
            writeln!(f, "{:>8}  {:<20}  {statement}", entry.count, entry.reason)?;
        }
        Ok(())
    }
}

impl StatsSnapshot {
    /// Every counter in the Prometheus text exposition format, with stable metric
    /// names (`rwsplit_*`) and labels (`reason`, `target`, `outcome`). With feature
    /// `metrics`, [`SwitchablePool::publish_metrics`](crate::SwitchablePool::publish_metrics)
    /// publishes the same families under the same names and labels.
    pub fn to_prometheus(&self) -> String {
        crate::families::to_prometheus(&crate::families::families(self, None))
    }
}
