//! The metric families: one table that the Prometheus text
//! ([`StatsSnapshot::to_prometheus`], `SwitchablePool::to_prometheus`) and the
//! `metrics` facade (feature `metrics`) are both rendered from, so that names,
//! help texts, kinds and labels cannot drift apart.
//!
//! A counter added to [`StatsSnapshot`] is one entry in [`COUNTERS`]; a gauge per
//! replica is one entry in [`REPLICA_GAUGES`].

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use crate::stats::{CausalOutcome, GroupCount, StatsSnapshot};
use crate::{ReplicaStatus, SwitchReason, Target};

/// Prometheus metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// How a counter family of a [`StatsSnapshot`] is read, by its label.
#[derive(Clone, Copy)]
enum Counts {
    /// One sample, no label.
    Single(fn(&StatsSnapshot) -> u64),
    /// One sample per [`SwitchReason`], label `reason`.
    ByReason(fn(&StatsSnapshot, SwitchReason) -> u64),
    /// One sample per [`Target`], label `target`.
    ByTarget(fn(&StatsSnapshot, Target) -> u64),
    /// One sample per [`CausalOutcome`], label `outcome`.
    ByOutcome(fn(&StatsSnapshot, CausalOutcome) -> u64),
    /// One sample per replica group, label `group`; a pool without groups has no
    /// sample and the family is left out (its text stays as it was).
    ByGroup(fn(&GroupCount) -> u64),
}

struct CounterFamily {
    name: &'static str,
    help: &'static str,
    counts: Counts,
}

const fn counter(name: &'static str, help: &'static str, counts: Counts) -> CounterFamily {
    CounterFamily { name, help, counts }
}

use Counts::{ByGroup, ByOutcome, ByReason, ByTarget, Single};

/// Every counter of a [`StatsSnapshot`], in the order of the Prometheus text. A new
/// counter is one entry here, e.g.
/// `counter("rwsplit_x_total", "What it counts.", Single(StatsSnapshot::x)),`.
#[rustfmt::skip]
const COUNTERS: &[CounterFamily] = &[
    counter("rwsplit_switches_total", "Flips of connections to the primary, by reason.", ByReason(StatsSnapshot::switches)),
    counter("rwsplit_refusals_total", "Statements refused in Raise mode, by reason.", ByReason(StatsSnapshot::refusals)),
    counter("rwsplit_would_switch_total", "Observe mode: flips Switch mode would have made, by reason.", ByReason(StatsSnapshot::would_switch)),
    counter("rwsplit_statements_total", "Statements run, by target.", ByTarget(StatsSnapshot::statements)),
    counter("rwsplit_would_be_statements_total", "Observe mode: statements by the target Switch mode would have used.", ByTarget(StatsSnapshot::would_be_statements)),
    counter("rwsplit_checkouts_total", "Node connections checked out, by target.", ByTarget(StatsSnapshot::checkouts)),
    counter("rwsplit_observed_units_total", "Observe mode: units of work ended.", Single(|s| s.observed_units().0)),
    counter("rwsplit_observed_replica_units_total", "Observe mode: units of work a replica alone would have served.", Single(|s| s.observed_units().1)),
    counter("rwsplit_replica_fallbacks_total", "Replica-first connections or reads served by the primary because no replica was available.", Single(StatsSnapshot::replica_fallbacks)),
    counter("rwsplit_read_retries_total", "Replica reads retried elsewhere after a connection-level failure.", Single(StatsSnapshot::read_retries)),
    counter("rwsplit_causal_reads_total", "Causal-token reads, by how they were served.", ByOutcome(StatsSnapshot::causal_reads)),
    counter("rwsplit_session_window_reads_total", "Session connections kept on the primary by a recent write.", Single(StatsSnapshot::session_window_reads)),
    counter("rwsplit_replica_ejections_total", "Replicas taken out of rotation.", Single(|s| s.ejections().0)),
    counter("rwsplit_replica_readmissions_total", "Ejected replicas re-admitted after a successful probe.", Single(|s| s.ejections().1)),
    counter("rwsplit_replica_saturations_total", "Replica checkouts that timed out on a busy replica that answers (never an ejection).", Single(StatsSnapshot::replica_saturations)),
    counter("rwsplit_read_timeouts_total", "Replica reads that ran past their client-side bound; the session was discarded.", Single(StatsSnapshot::read_timeouts)),
    counter("rwsplit_replica_read_only_transactions_total", "Read-only transactions served by replicas from BEGIN to COMMIT.", Single(StatsSnapshot::replica_read_only_transactions)),
    counter("rwsplit_topology_changes_total", "Changes of the primary seen by a pool that follows the cluster (nodes()).", Single(StatsSnapshot::topology_changes)),
    counter("rwsplit_no_primary_total", "Statements that needed the primary and failed because no member was the primary.", Single(StatsSnapshot::no_primary_refusals)),
    counter("rwsplit_primary_gaps_total", "Primary outages seen by writers, from the first failed primary checkout to the next that succeeded.", Single(|s| s.primary_gaps().0)),
    counter("rwsplit_primary_gap_milliseconds_total", "Time writers spent without a primary, summed over the outages.", Single(|s| u64::try_from(s.primary_gaps().1.as_millis()).unwrap_or(u64::MAX))),
    counter("rwsplit_group_reads_total", "Reads routed to a replica group and served by one of its replicas, by group.", ByGroup(|g| g.reads)),
    counter("rwsplit_group_fallbacks_total", "Reads routed to a replica group and served by another replica because none of the group's could, by group.", ByGroup(|g| g.fallbacks)),
];

/// One replica as the per-replica gauges see it: the lag monitor's last view and
/// whether the pool routes reads to it.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaGauges {
    pub(crate) status: ReplicaStatus,
    pub(crate) in_rotation: bool,
}

struct GaugeFamily {
    name: &'static str,
    help: &'static str,
    /// `None`: unknown, no sample.
    value: fn(&ReplicaGauges) -> Option<f64>,
}

const fn gauge(
    name: &'static str,
    help: &'static str,
    value: fn(&ReplicaGauges) -> Option<f64>,
) -> GaugeFamily {
    GaugeFamily { name, help, value }
}

/// The gauges of each replica (label `node="replicaN"`), after the counters.
#[rustfmt::skip]
const REPLICA_GAUGES: &[GaugeFamily] = &[
    gauge("rwsplit_replica_replay_lag_bytes", "WAL bytes the replica's replay is behind the primary.", |r| r.status.replay_lag_bytes.map(|b| b as f64)),
    gauge("rwsplit_replica_lag_seconds", "How long the replica has been behind the primary.", |r| r.status.lag.map(|d| d.as_secs_f64())),
    gauge("rwsplit_replica_healthy", "1 if the replica answered the monitor's last probe as a standby.", |r| Some(f64::from(u8::from(r.status.healthy && r.status.in_recovery)))),
    gauge("rwsplit_replica_in_rotation", "1 if the pool routes reads to the replica (not ejected).", |r| Some(f64::from(u8::from(r.in_rotation)))),
];

/// A sample's value: counters are exact integers, gauges floating point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value {
    Count(u64),
    Level(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Count(n) => write!(f, "{n}"),
            Value::Level(x) => write!(f, "{x}"),
        }
    }
}

/// One sample of a family: at most one label (`reason`, `target`, `outcome`, `node`,
/// `group`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) label: Option<(&'static str, Cow<'static, str>)>,
    pub(crate) value: Value,
}

/// A family with its samples, ready to render or publish.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    pub(crate) kind: Kind,
    pub(crate) samples: Vec<Sample>,
}

fn labelled<T: Copy>(
    key: &'static str,
    all: &[T],
    name: fn(T) -> &'static str,
    value: impl Fn(T) -> u64,
) -> Vec<Sample> {
    all.iter()
        .map(|item| Sample {
            label: Some((key, Cow::Borrowed(name(*item)))),
            value: Value::Count(value(*item)),
        })
        .collect()
}

impl CounterFamily {
    fn samples(&self, stats: &StatsSnapshot) -> Vec<Sample> {
        match self.counts {
            Single(value) => vec![Sample {
                label: None,
                value: Value::Count(value(stats)),
            }],
            ByReason(value) => labelled("reason", &SwitchReason::ALL, SwitchReason::as_str, |r| {
                value(stats, r)
            }),
            ByTarget(value) => labelled(
                "target",
                &[Target::Primary, Target::Replica],
                Target::as_str,
                |t| value(stats, t),
            ),
            ByOutcome(value) => {
                labelled("outcome", &CausalOutcome::ALL, CausalOutcome::as_str, |o| {
                    value(stats, o)
                })
            }
            ByGroup(value) => stats
                .groups()
                .iter()
                .map(|group| Sample {
                    label: Some(("group", Cow::Owned(group.group.clone()))),
                    value: Value::Count(value(group)),
                })
                .collect(),
        }
    }
}

/// The `node` label of a replica: its configured name without the address
/// (`replica1 (host:port)` gives `replica1`).
fn node_label(name: &str) -> String {
    name.split(" (").next().unwrap_or(name).to_owned()
}

/// Every family: the counters of `stats`, then, when `replicas` is given (a pool's
/// view, even with no replica), the per-replica gauges.
pub(crate) fn families(stats: &StatsSnapshot, replicas: Option<&[ReplicaGauges]>) -> Vec<Family> {
    let counters = COUNTERS
        .iter()
        .filter(|family| !matches!(family.counts, ByGroup(_)) || !stats.groups().is_empty())
        .map(|family| Family {
            name: family.name,
            help: family.help,
            kind: Kind::Counter,
            samples: family.samples(stats),
        });
    let gauges = replicas.into_iter().flat_map(|replicas| {
        REPLICA_GAUGES.iter().map(move |family| Family {
            name: family.name,
            help: family.help,
            kind: Kind::Gauge,
            samples: replicas
                .iter()
                .filter_map(|replica| {
                    (family.value)(replica).map(|value| Sample {
                        label: Some(("node", Cow::Owned(node_label(&replica.status.name)))),
                        value: Value::Level(value),
                    })
                })
                .collect(),
        })
    });
    counters.chain(gauges).collect()
}

/// The Prometheus text exposition format of `families`.
pub(crate) fn to_prometheus(families: &[Family]) -> String {
    let mut out = String::new();
    for family in families {
        let (name, help, kind) = (family.name, family.help, family.kind.as_str());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for sample in &family.samples {
            let value = sample.value;
            let _ = match &sample.label {
                Some((key, label)) => writeln!(out, "{name}{{{key}=\"{label}\"}} {value}"),
                None => writeln!(out, "{name} {value}"),
            };
        }
    }
    out
}

/// Publish `families` to the `metrics` recorder in scope: counters with
/// `Counter::absolute`, gauges with `Gauge::set`; with `describe`, their help texts
/// first (`describe_counter!`, `describe_gauge!`).
#[cfg(feature = "metrics")]
pub(crate) fn publish(families: Vec<Family>, describe: bool) {
    for family in families {
        let name = family.name;
        if describe {
            match family.kind {
                Kind::Counter => metrics::describe_counter!(name, family.help),
                Kind::Gauge => metrics::describe_gauge!(name, family.help),
            }
        }
        for sample in family.samples {
            let labels: Vec<metrics::Label> = sample
                .label
                .map(|(key, value)| metrics::Label::new(key, value))
                .into_iter()
                .collect();
            match sample.value {
                Value::Count(n) => metrics::counter!(name, labels).absolute(n),
                Value::Level(x) => metrics::gauge!(name, labels).set(x),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;
    use std::time::Duration;

    fn busy_stats() -> StatsSnapshot {
        let stats = Stats::default();
        for (i, reason) in SwitchReason::ALL.into_iter().enumerate() {
            for _ in 0..i {
                stats.record_switch(reason, None);
            }
            for _ in 0..(i % 3) {
                stats.record_refusal(reason);
                stats.record_would_switch(reason, None);
            }
        }
        stats.record_statement(Target::Replica);
        stats.record_statement(Target::Replica);
        stats.record_statement(Target::Primary);
        stats.record_would_be(Target::Replica);
        stats.record_observed_unit(true);
        stats.record_observed_unit(false);
        stats.record_checkout(Target::Replica);
        stats.record_read_retry();
        stats.record_causal(CausalOutcome::Checked);
        stats.record_session_window_read();
        stats.record_ejection();
        stats.record_ejection();
        stats.record_readmission();
        stats.record_replica_saturation();
        stats.record_read_timeout();
        stats.record_replica_fallback();
        stats.snapshot()
    }

    fn replica(name: &str, lag: Option<(u64, Duration)>, healthy: bool) -> ReplicaGauges {
        ReplicaGauges {
            status: ReplicaStatus {
                name: name.to_owned(),
                receive_lag_bytes: lag.map(|(b, _)| b),
                replay_lag_bytes: lag.map(|(b, _)| b),
                lag: lag.map(|(_, d)| d),
                receive_lsn: None,
                replay_lsn: None,
                last_seen: None,
                healthy,
                in_recovery: true,
                last_error: None,
            },
            in_rotation: healthy,
        }
    }

    #[test]
    fn the_prometheus_text_keeps_its_names_order_and_format() {
        let text = busy_stats().to_prometheus();
        let expected_start = "\
# HELP rwsplit_switches_total Flips of connections to the primary, by reason.
# TYPE rwsplit_switches_total counter
rwsplit_switches_total{reason=\"write_statement\"} 0
rwsplit_switches_total{reason=\"locking_read\"} 1
";
        assert!(text.starts_with(expected_start), "{text}");
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            types,
            [
                "rwsplit_switches_total counter",
                "rwsplit_refusals_total counter",
                "rwsplit_would_switch_total counter",
                "rwsplit_statements_total counter",
                "rwsplit_would_be_statements_total counter",
                "rwsplit_checkouts_total counter",
                "rwsplit_observed_units_total counter",
                "rwsplit_observed_replica_units_total counter",
                "rwsplit_replica_fallbacks_total counter",
                "rwsplit_read_retries_total counter",
                "rwsplit_causal_reads_total counter",
                "rwsplit_session_window_reads_total counter",
                "rwsplit_replica_ejections_total counter",
                "rwsplit_replica_readmissions_total counter",
                "rwsplit_replica_saturations_total counter",
                "rwsplit_read_timeouts_total counter",
                "rwsplit_replica_read_only_transactions_total counter",
                "rwsplit_topology_changes_total counter",
                "rwsplit_no_primary_total counter",
                "rwsplit_primary_gaps_total counter",
                "rwsplit_primary_gap_milliseconds_total counter",
            ]
        );
        for line in [
            "rwsplit_statements_total{target=\"primary\"} 1",
            "rwsplit_statements_total{target=\"replica\"} 2",
            "rwsplit_would_be_statements_total{target=\"replica\"} 1",
            "rwsplit_checkouts_total{target=\"primary\"} 0",
            "rwsplit_observed_units_total 2",
            "rwsplit_observed_replica_units_total 1",
            "rwsplit_causal_reads_total{outcome=\"replica_checked\"} 1",
            "rwsplit_causal_reads_total{outcome=\"primary\"} 0",
            "rwsplit_replica_ejections_total 2",
            "rwsplit_replica_readmissions_total 1",
            "rwsplit_read_timeouts_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn replica_gauges_follow_the_counters_and_skip_unknown_values() {
        let replicas = [
            replica(
                "replica1 (127.0.0.1:5433)",
                Some((1234, Duration::from_millis(1500))),
                true,
            ),
            replica("replica2 (127.0.0.1:5434)", None, false),
        ];
        let text = to_prometheus(&families(&busy_stats(), Some(&replicas)));
        let gauges = &text[text
            .find("# HELP rwsplit_replica_replay_lag_bytes")
            .unwrap()..];
        assert_eq!(
            gauges,
            "\
# HELP rwsplit_replica_replay_lag_bytes WAL bytes the replica's replay is behind the primary.
# TYPE rwsplit_replica_replay_lag_bytes gauge
rwsplit_replica_replay_lag_bytes{node=\"replica1\"} 1234
# HELP rwsplit_replica_lag_seconds How long the replica has been behind the primary.
# TYPE rwsplit_replica_lag_seconds gauge
rwsplit_replica_lag_seconds{node=\"replica1\"} 1.5
# HELP rwsplit_replica_healthy 1 if the replica answered the monitor's last probe as a standby.
# TYPE rwsplit_replica_healthy gauge
rwsplit_replica_healthy{node=\"replica1\"} 1
rwsplit_replica_healthy{node=\"replica2\"} 0
# HELP rwsplit_replica_in_rotation 1 if the pool routes reads to the replica (not ejected).
# TYPE rwsplit_replica_in_rotation gauge
rwsplit_replica_in_rotation{node=\"replica1\"} 1
rwsplit_replica_in_rotation{node=\"replica2\"} 0
"
        );
        // Without replicas a pool still prints the gauge families, with no sample.
        let empty = to_prometheus(&families(&busy_stats(), Some(&[])));
        assert!(empty.ends_with("# TYPE rwsplit_replica_in_rotation gauge\n"));
    }

    #[test]
    fn group_families_appear_only_with_groups() {
        let plain = busy_stats().to_prometheus();
        assert!(!plain.contains("rwsplit_group_"), "{plain}");
        let names: Vec<std::sync::Arc<str>> = vec!["analytics".into(), "eu-1".into()];
        let stats = Stats::with_groups(&names);
        stats.record_group_read(0);
        stats.record_group_read(0);
        stats.record_group_fallback(0);
        stats.record_group_fallback(1);
        stats.record_group_read(7); // unknown: ignored
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.group_reads("analytics"), 2);
        assert_eq!(snapshot.group_fallbacks("analytics"), 1);
        assert_eq!(snapshot.group_fallbacks("eu-1"), 1);
        assert_eq!(snapshot.group_reads("nope"), 0);
        let text = snapshot.to_prometheus();
        let groups = &text[text.find("# HELP rwsplit_group_reads_total").unwrap()..];
        assert_eq!(
            groups,
            "\
# HELP rwsplit_group_reads_total Reads routed to a replica group and served by one of its replicas, by group.
# TYPE rwsplit_group_reads_total counter
rwsplit_group_reads_total{group=\"analytics\"} 2
rwsplit_group_reads_total{group=\"eu-1\"} 0
# HELP rwsplit_group_fallbacks_total Reads routed to a replica group and served by another replica because none of the group's could, by group.
# TYPE rwsplit_group_fallbacks_total counter
rwsplit_group_fallbacks_total{group=\"analytics\"} 1
rwsplit_group_fallbacks_total{group=\"eu-1\"} 1
"
        );
    }

    #[test]
    fn every_family_has_a_distinct_rwsplit_name_and_a_help_text() {
        let all = families(&busy_stats(), Some(&[]));
        let mut names: Vec<&str> = all.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        for family in &all {
            assert!(family.name.starts_with("rwsplit_"), "{}", family.name);
            assert_eq!(
                family.kind == Kind::Counter,
                family.name.ends_with("_total"),
                "{}",
                family.name
            );
            assert!(!family.help.is_empty());
        }
    }
}
