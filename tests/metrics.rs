//! Feature `metrics`: every counter and gauge of a pool reaches the `metrics`
//! recorder under the names and labels of its Prometheus text, with the values of
//! its own `stats()`, on a real cluster.
//!
//! Each test runs on a current-thread runtime with its own `DebuggingRecorder` as
//! the thread's default recorder: the pool's tasks (the periodic publisher
//! included) run on the test's thread and publish there, and tests running in
//! parallel do not see each other's pools.
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{admin, shared_cluster, token_after_write, until, write_event, WAIT};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{
    interlock_refusal, CausalOutcome, InterlockMode, StatsSnapshot, SwitchReason, SwitchablePool,
    SwitchablePoolBuilder, Target,
};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

fn builder(cluster: &LocalCluster) -> SwitchablePoolBuilder {
    SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
}

/// What a recorder holds, by metric name and its one label (if any).
struct Published {
    values: HashMap<(String, Option<(String, String)>), DebugValue>,
    descriptions: HashMap<String, String>,
}

impl Published {
    /// Take what the recorder holds now (a `DebuggingRecorder` snapshot resets it).
    fn take(snapshotter: &Snapshotter) -> Published {
        let mut values = HashMap::new();
        let mut descriptions = HashMap::new();
        for (key, _unit, description, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let labels: Vec<_> = key.labels().collect();
            assert!(labels.len() <= 1, "{key:?} has more than one label");
            let label = labels
                .into_iter()
                .next()
                .map(|l| (l.key().to_owned(), l.value().to_owned()));
            if let Some(description) = description {
                descriptions.insert(key.name().to_owned(), description.to_string());
            }
            values.insert((key.name().to_owned(), label), value);
        }
        Published {
            values,
            descriptions,
        }
    }

    fn counter(&self, name: &str, label: Option<(&str, &str)>) -> u64 {
        let key = (
            name.to_owned(),
            label.map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        match self.values.get(&key) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!("counter {key:?}: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, node: &str) -> Option<f64> {
        let key = (name.to_owned(), Some(("node".to_owned(), node.to_owned())));
        match self.values.get(&key) {
            Some(DebugValue::Gauge(x)) => Some(x.into_inner()),
            None => None,
            other => panic!("gauge {key:?}: {other:?}"),
        }
    }

    /// One counter family with one label: `(label value, count)` per label value.
    fn family<T: Copy>(
        &self,
        name: &str,
        label: &str,
        all: &[T],
        value_of: fn(T) -> &'static str,
    ) -> Vec<(&'static str, u64)> {
        all.iter()
            .map(|item| {
                let value = value_of(*item);
                (value, self.counter(name, Some((label, value))))
            })
            .collect()
    }
}

const TARGETS: [Target; 2] = [Target::Primary, Target::Replica];

/// One assertion per counter family: the recorder holds what `stats` says, for
/// every label value.
fn assert_counters_published(published: &Published, stats: &StatsSnapshot) {
    let by_reason = |name, value: fn(&StatsSnapshot, SwitchReason) -> u64| {
        (
            published.family(name, "reason", &SwitchReason::ALL, SwitchReason::as_str),
            SwitchReason::ALL
                .map(|r| (r.as_str(), value(stats, r)))
                .to_vec(),
        )
    };
    let by_target = |name, value: fn(&StatsSnapshot, Target) -> u64| {
        (
            published.family(name, "target", &TARGETS, Target::as_str),
            TARGETS.map(|t| (t.as_str(), value(stats, t))).to_vec(),
        )
    };
    let single = |name| published.counter(name, None);

    let (seen, expected) = by_reason("rwsplit_switches_total", StatsSnapshot::switches);
    assert_eq!(seen, expected, "flips by reason");
    let (seen, expected) = by_reason("rwsplit_refusals_total", StatsSnapshot::refusals);
    assert_eq!(seen, expected, "refusals by reason");
    let (seen, expected) = by_reason("rwsplit_would_switch_total", StatsSnapshot::would_switch);
    assert_eq!(seen, expected, "would-be flips by reason");
    let (seen, expected) = by_target("rwsplit_statements_total", StatsSnapshot::statements);
    assert_eq!(seen, expected, "statements by target");
    let (seen, expected) = by_target(
        "rwsplit_would_be_statements_total",
        StatsSnapshot::would_be_statements,
    );
    assert_eq!(seen, expected, "would-be statements by target");
    let (seen, expected) = by_target("rwsplit_checkouts_total", StatsSnapshot::checkouts);
    assert_eq!(seen, expected, "checkouts by target");
    assert_eq!(
        (
            single("rwsplit_observed_units_total"),
            single("rwsplit_observed_replica_units_total")
        ),
        stats.observed_units(),
        "observed units"
    );
    assert_eq!(
        single("rwsplit_replica_fallbacks_total"),
        stats.replica_fallbacks(),
        "fallbacks"
    );
    assert_eq!(
        single("rwsplit_read_retries_total"),
        stats.read_retries(),
        "read retries"
    );
    assert_eq!(
        published.family(
            "rwsplit_causal_reads_total",
            "outcome",
            &CausalOutcome::ALL,
            CausalOutcome::as_str
        ),
        CausalOutcome::ALL
            .map(|o| (o.as_str(), stats.causal_reads(o)))
            .to_vec(),
        "causal reads by outcome"
    );
    assert_eq!(
        single("rwsplit_session_window_reads_total"),
        stats.session_window_reads(),
        "session-window reads"
    );
    assert_eq!(
        (
            single("rwsplit_replica_ejections_total"),
            single("rwsplit_replica_readmissions_total")
        ),
        stats.ejections(),
        "ejections and re-admissions"
    );
    assert_eq!(
        single("rwsplit_replica_saturations_total"),
        stats.replica_saturations(),
        "saturations"
    );
    assert_eq!(
        single("rwsplit_read_timeouts_total"),
        stats.read_timeouts(),
        "read timeouts"
    );
    assert_eq!(
        single("rwsplit_replica_read_only_transactions_total"),
        stats.replica_read_only_transactions(),
        "read-only transactions on replicas"
    );
    assert_eq!(
        single("rwsplit_topology_changes_total"),
        stats.topology_changes(),
        "topology changes"
    );
    assert_eq!(
        single("rwsplit_no_primary_total"),
        stats.no_primary_refusals(),
        "writes refused for lack of a primary"
    );
    assert_eq!(
        single("rwsplit_primary_gaps_total"),
        stats.primary_gaps().0,
        "primary gaps"
    );
}

/// The gauges of each replica as `pool.replication_status()` and
/// `pool.replica_admitted()` say, `(lag bytes, lag seconds, healthy, in rotation)`.
fn expected_gauges(pool: &SwitchablePool) -> Vec<(String, [Option<f64>; 4])> {
    pool.replication_status()
        .iter()
        .zip(pool.replica_admitted())
        .map(|(status, admitted)| {
            let node = status.name.split(" (").next().unwrap().to_owned();
            let healthy = status.healthy && status.in_recovery;
            let values = [
                status.replay_lag_bytes.map(|b| b as f64),
                status.lag.map(|d| d.as_secs_f64()),
                Some(f64::from(u8::from(healthy))),
                Some(f64::from(u8::from(admitted))),
            ];
            (node, values)
        })
        .collect()
}

fn published_gauges(published: &Published, nodes: &[String]) -> Vec<(String, [Option<f64>; 4])> {
    nodes
        .iter()
        .map(|node| {
            let values = [
                "rwsplit_replica_replay_lag_bytes",
                "rwsplit_replica_lag_seconds",
                "rwsplit_replica_healthy",
                "rwsplit_replica_in_rotation",
            ]
            .map(|name| published.gauge(name, node));
            (node.clone(), values)
        })
        .collect()
}

/// Publish and compare the replica gauges with the monitor's view, again if the
/// monitor polled in between.
async fn assert_gauges_published(pool: &SwitchablePool, snapshotter: &Snapshotter) {
    let deadline = Instant::now() + WAIT;
    loop {
        let before = expected_gauges(pool);
        pool.publish_metrics();
        let published = Published::take(snapshotter);
        if expected_gauges(pool) == before {
            let nodes: Vec<String> = before.iter().map(|(node, _)| node.clone()).collect();
            assert_eq!(nodes, ["replica1", "replica2"]);
            assert_eq!(
                published_gauges(&published, &nodes),
                before,
                "replica gauges"
            );
            return;
        }
        assert!(Instant::now() < deadline, "the monitor never held still");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(diesel::QueryableByName)]
struct Number {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn read(conn: &mut diesel_rwsplit::PooledConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Number>(conn)
        .await
        .unwrap()
        .n
}

/// Sessions of `url` sleeping in a statement that mentions `needle`.
async fn sleeper(url: &str, needle: &str) -> Option<i32> {
    admin(url)
        .await
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND wait_event = 'PgSleep' \
             AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid() LIMIT 1",
            &[&needle],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

#[tokio::test]
async fn publish_metrics_mirrors_every_counter_and_gauge_of_a_switching_pool() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let cluster = shared_cluster();
    let pool = builder(cluster)
        .replica_max_size(1)
        .replica_checkout_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();

    // A replica read; a write that flips; a transaction; an explicit flip.
    let mut conn = pool.get().await.unwrap();
    assert_eq!(read(&mut conn, "SELECT 1::bigint AS n").await, 1);
    write_event(&mut conn, cluster, "metrics-flip").await;
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    conn.transaction::<_, diesel::result::Error, _>(async |c| {
        diesel::sql_query("SELECT 1").execute(c).await.map(|_| ())
    })
    .await
    .unwrap();
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    conn.switch_to_primary().await.unwrap();
    drop(conn);

    // A causal read, and a session kept on the primary by its recent write.
    let token = token_after_write(&pool, cluster, "metrics-causal").await;
    let mut conn = pool.get_after(&token).await.unwrap();
    read(&mut conn, "SELECT count(*)::bigint AS n FROM events").await;
    drop(conn);
    let mut conn = pool.get_for_session("metrics-user").await.unwrap();
    write_event(&mut conn, cluster, "metrics-session").await;
    drop(conn);
    let conn = pool.get_for_session("metrics-user").await.unwrap();
    assert_eq!(conn.target(), Target::Primary);
    drop(conn);

    // A read whose session is killed under it runs again elsewhere.
    let mut conn = pool.get().await.unwrap();
    let reader = tokio::spawn(async move {
        let n = read(
            &mut conn,
            "SELECT 5::bigint AS n FROM pg_sleep(1) AS metrics_retry",
        )
        .await;
        (n, conn)
    });
    let deadline = Instant::now() + WAIT;
    'found: loop {
        for url in cluster.replica_urls() {
            if let Some(pid) = sleeper(&url, "metrics_retry").await {
                common::terminate(&url, pid).await;
                break 'found;
            }
        }
        assert!(Instant::now() < deadline, "the read never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (n, conn) = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    assert_eq!(n, 5);
    drop(conn);

    // Both replicas busy (one connection each): the next checkout saturates both
    // and falls back to the primary.
    let held = [pool.get().await.unwrap(), pool.get().await.unwrap()];
    assert!(held.iter().all(|c| c.target() == Target::Replica));
    let fallback = pool.get().await.unwrap();
    assert_eq!(fallback.target(), Target::Primary);
    drop((held, fallback));

    let stats = pool.stats();
    for (what, moved) in [
        ("write flips", stats.switches(SwitchReason::WriteStatement)),
        (
            "transaction flips",
            stats.switches(SwitchReason::TransactionBegin),
        ),
        ("explicit flips", stats.switches(SwitchReason::Explicit)),
        ("replica statements", stats.statements(Target::Replica)),
        ("primary statements", stats.statements(Target::Primary)),
        ("replica checkouts", stats.checkouts(Target::Replica)),
        ("primary checkouts", stats.checkouts(Target::Primary)),
        (
            "causal reads",
            CausalOutcome::ALL
                .iter()
                .map(|o| stats.causal_reads(*o))
                .sum(),
        ),
        ("session-window reads", stats.session_window_reads()),
        ("read retries", stats.read_retries()),
        ("saturations", stats.replica_saturations()),
        ("fallbacks", stats.replica_fallbacks()),
    ] {
        assert!(moved > 0, "{what} did not move");
    }
    pool.publish_metrics();
    let published = Published::take(&snapshotter);
    assert_counters_published(&published, &stats);

    // The help texts are those of the Prometheus text, for every family.
    let text = pool.to_prometheus();
    let helps: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP ")?.split_once(' '))
        .collect();
    assert_eq!(helps.len(), 21 + 4);
    for (name, help) in helps {
        assert_eq!(
            published.descriptions.get(name).map(String::as_str),
            Some(help),
            "description of {name}"
        );
    }

    assert_gauges_published(&pool, &snapshotter).await;
}

#[tokio::test]
async fn a_raise_pool_publishes_its_refusals() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let pool = builder(shared_cluster())
        .interlock(InterlockMode::Raise)
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let write = diesel::sql_query("INSERT INTO events (kind) VALUES ('metrics-raise')")
        .execute(&mut conn)
        .await;
    assert_eq!(
        interlock_refusal(&write.unwrap_err()),
        Some(SwitchReason::WriteStatement)
    );
    let lock = diesel::sql_query("SELECT id FROM events FOR UPDATE")
        .execute(&mut conn)
        .await;
    assert_eq!(
        interlock_refusal(&lock.unwrap_err()),
        Some(SwitchReason::LockingRead)
    );
    drop(conn);

    let stats = pool.stats();
    assert_eq!(stats.refusals(SwitchReason::WriteStatement), 1);
    assert_eq!(stats.refusals(SwitchReason::LockingRead), 1);
    pool.publish_metrics();
    let published = Published::take(&snapshotter);
    assert_eq!(
        published.counter("rwsplit_refusals_total", Some(("reason", "locking_read"))),
        1
    );
    assert_counters_published(&published, &stats);
}

#[tokio::test]
async fn an_observe_pool_publishes_what_routing_would_have_done() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let cluster = shared_cluster();
    let pool = builder(cluster)
        .interlock(InterlockMode::Observe)
        .build()
        .await
        .unwrap();
    // A unit that only reads, and one that reads then writes.
    let mut conn = pool.get().await.unwrap();
    read(&mut conn, "SELECT 1::bigint AS n").await;
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    read(&mut conn, "SELECT 2::bigint AS n").await;
    write_event(&mut conn, cluster, "metrics-observe").await;
    drop(conn);

    let stats = pool.stats();
    assert_eq!(stats.would_switch(SwitchReason::WriteStatement), 1);
    assert_eq!(stats.observed_units(), (2, 1));
    assert!(stats.would_be_statements(Target::Replica) >= 2);
    assert!(stats.would_be_statements(Target::Primary) >= 1);
    pool.publish_metrics();
    let published = Published::take(&snapshotter);
    assert_eq!(published.counter("rwsplit_observed_units_total", None), 2);
    assert_counters_published(&published, &stats);
}

#[tokio::test]
async fn a_hung_replica_publishes_timeouts_retries_ejections_fallbacks_and_readmissions() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let cluster = LocalCluster::builder().replicas(1).start().await.unwrap();
    let pool = builder(&cluster)
        .replica_statement_timeout(Duration::from_secs(1))
        .replica_connect_timeout(Duration::from_millis(300))
        .replica_checkout_timeout(Duration::from_millis(500))
        .ejection_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let replica_url = cluster.replica_url(0).unwrap();

    // A read hangs on a frozen replica: given up on at its bound, run on the
    // primary; the replica does not serve a new session and is ejected.
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    let reader = tokio::spawn(async move {
        let n = read(
            &mut conn,
            "SELECT 7::bigint AS n FROM pg_sleep(0.8) AS metrics_hung",
        )
        .await;
        (n, conn)
    });
    let deadline = Instant::now() + WAIT;
    while sleeper(&replica_url, "metrics_hung").await.is_none() {
        assert!(Instant::now() < deadline, "the read never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.freeze_replica(0).await.unwrap();
    let outcome = tokio::time::timeout(WAIT, reader).await;
    let (n, conn) = match outcome {
        Ok(done) => done.unwrap(),
        Err(_) => {
            cluster.thaw_replica(0).await.unwrap();
            panic!("the read was not given up on");
        }
    };
    assert_eq!(n, 7);
    drop(conn);
    until("the frozen replica is ejected", || {
        pool.stats().ejections().0 == 1
    })
    .await;

    // With the only replica out, a replica-first connection uses the primary.
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Primary);
    drop(conn);

    cluster.thaw_replica(0).await.unwrap();
    until("the replica is re-admitted", || {
        pool.stats().ejections().1 == 1
    })
    .await;

    let stats = pool.stats();
    assert_eq!(stats.read_timeouts(), 1);
    assert_eq!(stats.read_retries(), 1);
    // The retry on the primary and the checkout while ejected.
    assert!(stats.replica_fallbacks() >= 1);
    pool.publish_metrics();
    let published = Published::take(&snapshotter);
    assert_eq!(
        (
            published.counter("rwsplit_read_timeouts_total", None),
            published.counter("rwsplit_replica_ejections_total", None),
            published.counter("rwsplit_replica_readmissions_total", None),
        ),
        (1, 1, 1)
    );
    assert_counters_published(&published, &stats);
}

/// A `DebuggingRecorder` that also counts publications (registrations of one
/// counter that every publication sets).
#[derive(Default)]
struct CountingRecorder {
    inner: DebuggingRecorder,
    publications: AtomicUsize,
}

impl CountingRecorder {
    fn publications(&self) -> usize {
        AtomicUsize::load(&self.publications, Ordering::SeqCst)
    }
}

impl Recorder for CountingRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description)
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description)
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description)
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if key.name() == "rwsplit_read_timeouts_total" {
            self.publications.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(key, metadata)
    }
}

#[tokio::test]
async fn metrics_interval_publishes_by_itself_and_stops_with_the_pool() {
    let recorder = CountingRecorder::default();
    let snapshotter = recorder.inner.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let pool = builder(shared_cluster())
        .metrics_interval(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    read(&mut conn, "SELECT 3::bigint AS n").await;
    drop(conn);
    let replica_reads = pool.stats().statements(Target::Replica);
    assert_eq!(replica_reads, 1);

    // Published without a call, and again at each interval.
    let deadline = Instant::now() + WAIT;
    loop {
        let published = Published::take(&snapshotter);
        let seen = published
            .values
            .contains_key(&(
                "rwsplit_statements_total".into(),
                Some(("target".into(), "replica".into())),
            ))
            .then(|| published.counter("rwsplit_statements_total", Some(("target", "replica"))));
        if seen == Some(replica_reads) && recorder.publications() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "not published: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A clone keeps it alive; dropping the last one stops the task at once.
    let clone = pool.clone();
    drop(pool);
    let before = recorder.publications();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(recorder.publications() > before, "a clone keeps publishing");
    drop(clone);
    let after_drop = recorder.publications();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        recorder.publications(),
        after_drop,
        "published after the pool was dropped"
    );
}

#[tokio::test]
async fn a_zero_metrics_interval_is_refused() {
    let error = builder(shared_cluster())
        .metrics_interval(Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(error, diesel_rwsplit::Error::InvalidConfig(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_prometheus_text_and_the_recorder_hold_the_same_samples() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let cluster = shared_cluster();
    let pool = builder(cluster)
        .monitor_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    read(&mut conn, "SELECT 4::bigint AS n").await;
    write_event(&mut conn, cluster, "metrics-text").await;
    drop(conn);
    until("the monitor measured both replicas", || {
        pool.replication_status()
            .iter()
            .all(|r| r.replay_lag_bytes.is_some())
    })
    .await;

    let text = pool.to_prometheus();
    pool.publish_metrics();
    let published = Published::take(&snapshotter);

    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect();
    assert_eq!(
        names,
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
            "rwsplit_replica_replay_lag_bytes gauge",
            "rwsplit_replica_lag_seconds gauge",
            "rwsplit_replica_healthy gauge",
            "rwsplit_replica_in_rotation gauge",
        ]
    );
    // Every sample line of the text is in the recorder with its value, and the
    // recorder holds nothing else.
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, label) = match series.split_once('{') {
            Some((name, label)) => {
                let (key, value) = label.trim_end_matches('}').split_once('=').unwrap();
                (
                    name,
                    Some((key.to_owned(), value.trim_matches('"').to_owned())),
                )
            }
            None => (series, None),
        };
        let recorded = published
            .values
            .get(&(name.to_owned(), label.clone()))
            .unwrap_or_else(|| panic!("{line} was not published"));
        let recorded = match recorded {
            DebugValue::Counter(n) => n.to_string(),
            DebugValue::Gauge(x) => x.into_inner().to_string(),
            DebugValue::Histogram(_) => panic!("{line} published as a histogram"),
        };
        assert_eq!(recorded, value, "{line}");
        lines += 1;
    }
    assert_eq!(published.values.len(), lines);
}
