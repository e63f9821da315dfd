//! Failure paths nobody scripted, each on a real cluster: a replica down at build,
//! an Observe test transaction, saturation, a hung replica, a primary outage, a
//! write the classifier cannot see, a cancelled write.

mod common;

use std::time::{Duration, Instant};

use common::{
    admin, backend_pid, port_of, server_port, statement_calls, terminate, until, until_async,
    write_event, WAIT,
};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{
    rwsplit_error, Error, FailureKind, InterlockMode, NodeStep, SwitchReason, SwitchablePool,
    Target,
};

#[derive(diesel::QueryableByName)]
struct Number {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn cluster(replicas: usize) -> LocalCluster {
    let cluster = LocalCluster::start(replicas).await.unwrap();
    cluster.apply_example_schema().await.unwrap();
    cluster
}

fn builder(cluster: &LocalCluster) -> diesel_rwsplit::SwitchablePoolBuilder {
    SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .replica_connect_timeout(Duration::from_millis(500))
        .ejection_backoff(Duration::from_millis(100), Duration::from_millis(400))
        .monitor_interval(Duration::from_millis(50))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_down_at_build_starts_out_of_rotation_and_comes_back() {
    let cluster = cluster(2).await;
    cluster.stop_replica(1).await.unwrap();
    let pool = builder(&cluster).build().await.unwrap();
    assert_eq!(pool.replica_admitted(), vec![true, false]);

    let up = port_of(&cluster.replica_url(0).unwrap());
    for _ in 0..6 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(
            server_port(&mut conn).await,
            up,
            "reads go to the replica that is up"
        );
    }
    assert_eq!(pool.stats().replica_fallbacks(), 0);

    cluster.start_replica(1).await.unwrap();
    // Back in rotation, and seen answering by the lag monitor (which routing also
    // consults): on a loaded machine the two need not happen in the same instant.
    until("the replica is probed back into rotation", || {
        pool.replica_admitted() == vec![true, true]
            && pool.replication_status().iter().all(|s| s.healthy)
    })
    .await;
    let down = port_of(&cluster.replica_url(1).unwrap());
    let mut ports = Vec::new();
    for _ in 0..4 {
        let mut conn = pool.get().await.unwrap();
        ports.push(server_port(&mut conn).await);
    }
    assert!(
        ports.contains(&down),
        "the re-admitted replica serves: {ports:?}"
    );
}

#[tokio::test]
async fn an_unreachable_primary_fails_the_build_unless_reads_only_start_is_allowed() {
    let cluster = cluster(1).await;
    let dead = "postgres://postgres@127.0.0.1:1/postgres";
    let error = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(dead)
        .replicas(cluster.replica_urls())
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Node {
                step: NodeStep::Connect,
                kind: FailureKind::Refused,
                ..
            }
        ),
        "{error:?}"
    );

    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(dead)
        .replicas(cluster.replica_urls())
        .require_primary_at_build(false)
        .primary_checkout_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let replica = port_of(&cluster.replica_url(0).unwrap());
    assert_eq!(server_port(&mut conn).await, replica);
    let write = diesel::sql_query("INSERT INTO events (kind) VALUES ('x')")
        .execute(&mut conn)
        .await
        .unwrap_err();
    match rwsplit_error(&write) {
        Some(Error::PrimaryUnavailable { kind, .. }) => assert_eq!(*kind, FailureKind::Refused),
        other => panic!("expected PrimaryUnavailable, got {other:?} from {write:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_session_killed_while_idle_does_not_eject_its_replica() {
    let cluster = cluster(1).await;
    let pool = builder(&cluster).build().await.unwrap();
    let replica = port_of(&cluster.replica_url(0).unwrap());
    let mut conn = pool.get().await.unwrap();
    let pid = backend_pid(&mut conn).await;
    drop(conn); // idle in the replica's pool now
    terminate(&cluster.replica_url(0).unwrap(), pid).await;
    // As an idle_session_timeout would: the pooled session is gone, the node is fine.
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    assert_eq!(server_port(&mut conn).await, replica);
    assert_ne!(backend_pid(&mut conn).await, pid, "a new session");
    assert_eq!(pool.stats().ejections().0, 0);
    assert_eq!(pool.replica_admitted(), vec![true]);
}

#[tokio::test]
async fn observe_mode_runs_a_test_transaction_on_the_primary() {
    let cluster = cluster(1).await;
    let pool = builder(&cluster)
        .interlock(InterlockMode::Observe)
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    conn.begin_test_transaction().await.unwrap();
    write_event(&mut conn, &cluster, "observe_test_tx").await;
    drop(conn);
    // The test transaction was rolled back with the connection: nothing landed.
    let left = admin(&cluster.primary_url())
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE kind = 'observe_test_tx'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_replicas_are_not_ejected() {
    let cluster = cluster(2).await;
    let pool = builder(&cluster)
        .replica_max_size(2)
        .replica_checkout_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let reads = (0..30).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await?;
            diesel::sql_query("SELECT pg_sleep(0.6)")
                .execute(&mut conn)
                .await
                .map_err(|e| Error::InvalidConfig(e.to_string()))
        })
    });
    for read in futures_util::future::join_all(reads).await {
        read.unwrap().unwrap();
    }
    let stats = pool.stats();
    assert_eq!(stats.ejections().0, 0, "busy is not dead");
    assert_eq!(pool.replica_admitted(), vec![true, true]);
    assert!(stats.replica_saturations() > 0, "saturation was counted");
    assert!(
        stats.replica_fallbacks() > 0,
        "reads past the wait follow the fallback"
    );
    assert_eq!(pool.replica_checked_out(), vec![0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_cannot_hold_a_read() {
    let cluster = cluster(1).await;
    let pool = builder(&cluster)
        .replica_statement_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let replica_url = cluster.replica_url(0).unwrap();
    let watcher = admin(&replica_url).await;
    let read = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            let started = Instant::now();
            let rows: Vec<Number> =
                diesel::sql_query("SELECT 7::bigint AS n FROM pg_sleep(0.8) /* fz_read */")
                    .load(&mut conn)
                    .await
                    .unwrap();
            (rows[0].n, started.elapsed(), server_port(&mut conn).await)
        })
    };
    until_async("the read runs on the replica", || async {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%fz_read%' AND state = 'active' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    cluster.freeze_replica(0).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(2 + 3), read).await;
    cluster.thaw_replica(0).await.unwrap();
    let (n, _elapsed, port) = outcome
        .expect("the read returned within the statement timeout plus 3 s")
        .unwrap();
    assert_eq!(n, 7);
    assert_eq!(port, port_of(&cluster.primary_url()), "ran again elsewhere");
    let stats = pool.stats();
    assert_eq!(stats.read_timeouts(), 1);
    assert_eq!(stats.read_retries(), 1);
}

#[derive(diesel::QueryableByName)]
struct Payload {
    #[diesel(sql_type = diesel::sql_types::Text)]
    payload: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_frozen_mid_stream_cannot_hold_the_rest_of_a_read() {
    use futures_util::StreamExt;
    let cluster = cluster(1).await;
    let pool = builder(&cluster)
        .replica_statement_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let hung = (server_port(&mut conn).await, backend_pid(&mut conn).await);
    // 16 kB rows are flushed one by one; the fourth waits on the server.
    let query = diesel::sql_query(
        "SELECT repeat('x', 16384) || n AS payload /* fz_stream */ \
         FROM generate_series(1, 6) n CROSS JOIN LATERAL pg_sleep(CASE WHEN n = 4 THEN 1.5 ELSE 0 END)",
    );
    let mut rows = query.load_stream::<Payload>(&mut conn).await.unwrap();
    let first = rows.next().await.unwrap().unwrap();
    assert!(first.payload.ends_with('1'));
    cluster.freeze_replica(0).await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(2 + 3), async {
        let mut got = 1;
        loop {
            match rows.next().await {
                Some(Ok(_)) => got += 1,
                Some(Err(error)) => return (got, Some(error)),
                None => return (got, None),
            }
        }
    })
    .await;
    cluster.thaw_replica(0).await.unwrap();
    let (got, error) = rest.expect("the rest of the read is bounded too");
    assert!(got < 6, "{got} rows");
    let error = error.expect("the read ends with an error, not a short result");
    assert!(
        matches!(rwsplit_error(&error), Some(Error::ReadTimedOut { .. })),
        "{error:?}"
    );
    drop(rows);
    assert_eq!(pool.stats().read_timeouts(), 1);
    // The hung session is never used again: not by this connection, not by the next.
    let next = (server_port(&mut conn).await, backend_pid(&mut conn).await);
    assert_ne!(next, hung, "the connection moved off the hung session");
    drop(conn);
    let mut again = pool.get().await.unwrap();
    let other = (server_port(&mut again).await, backend_pid(&mut again).await);
    assert_ne!(other, hung, "the pool discarded the hung session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_outage_is_not_a_read_outage() {
    let cluster = cluster(2).await;
    let pool = builder(&cluster)
        .max_replica_lag(Duration::from_secs(5))
        .primary_checkout_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    // Let the monitor measure the replicas once.
    until("both replicas measured", || {
        pool.replication_status().iter().all(|r| r.lag.is_some())
    })
    .await;
    cluster.stop_primary().await.unwrap();
    let replicas: Vec<i32> = cluster.replica_urls().iter().map(|u| port_of(u)).collect();
    let outage = Instant::now();
    let mut reads = 0;
    while outage.elapsed() < Duration::from_secs(12) {
        let mut conn = pool.get().await.unwrap();
        let port = server_port(&mut conn).await;
        assert!(replicas.contains(&port), "read served by {port}");
        reads += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(reads >= 20, "{reads} reads");
    let mut conn = pool.get().await.unwrap();
    let write = diesel::sql_query("INSERT INTO events (kind) VALUES ('outage')")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(
        matches!(
            rwsplit_error(&write),
            Some(Error::PrimaryUnavailable { .. })
        ),
        "{write:?}"
    );
    drop(conn);
    cluster.start_primary().await.unwrap();
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query("INSERT INTO events (kind) VALUES ('after_outage')")
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_writes_heals_onto_the_primary_and_is_remembered() {
    let cluster = cluster(2).await;
    let primary = admin(&cluster.primary_url()).await;
    primary
        .batch_execute(
            "CREATE TABLE heal_log (id serial PRIMARY KEY);
             CREATE FUNCTION heal_write() RETURNS bigint LANGUAGE sql AS
               'INSERT INTO heal_log DEFAULT VALUES RETURNING id::bigint';",
        )
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();
    let pool = builder(&cluster).build().await.unwrap();

    for call in 1..=3 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.target(), Target::Replica);
        let rows: Vec<Number> = diesel::sql_query("SELECT heal_write() AS n")
            .load(&mut conn)
            .await
            .unwrap();
        assert_eq!(rows[0].n, call, "one insert per call");
        assert_eq!(conn.target(), Target::Primary);
        assert_eq!(conn.switch_reason(), Some(SwitchReason::ReplicaRefused));
    }
    let count: i64 = primary
        .query_one("SELECT count(*) FROM heal_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3);
    // Only the first call went to a replica (refused there, so rolled back: the
    // replicas' only failed transaction); the fingerprint sent the others straight on.
    let replica_rollbacks = || async {
        let mut total = 0;
        for url in cluster.replica_urls() {
            total += admin(&url)
                .await
                .query_one(
                    "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0);
        }
        total
    };
    until_async("the refusal shows in the replicas' statistics", || async {
        replica_rollbacks().await >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(replica_rollbacks().await, 1);
    assert_eq!(
        statement_calls(&cluster.primary_url(), "SELECT", "heal_write()").await,
        3
    );
    let stats = pool.stats();
    assert_eq!(stats.switches(SwitchReason::ReplicaRefused), 3);
    assert!(stats
        .top_fingerprints(10)
        .iter()
        .any(|f| f.reason == SwitchReason::ReplicaRefused && f.fingerprint.contains("heal_write")));
    assert!(pool.audit_report().to_string().contains("heal_write"));

    // Raise mode returns the refusal, as before.
    let strict = builder(&cluster)
        .interlock(InterlockMode::Raise)
        .build()
        .await
        .unwrap();
    let mut conn = strict.get().await.unwrap();
    let error = diesel::sql_query("SELECT heal_write() AS n")
        .load::<Number>(&mut conn)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            error,
            DieselError::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _)
        ),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_leaves_a_connection_that_works() {
    let cluster = cluster(1).await;
    let pool = builder(&cluster).primary_max_size(1).build().await.unwrap();
    let holder = pool.get_primary().await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let waiting = tokio::time::timeout(
        Duration::from_millis(200),
        diesel::sql_query("INSERT INTO events (kind) VALUES ('cancelled')").execute(&mut conn),
    )
    .await;
    assert!(waiting.is_err(), "the write waited for the primary");
    assert_eq!(conn.target(), Target::Replica, "nothing changed");
    drop(holder);
    write_event(&mut conn, &cluster, "after_cancel").await;
    assert_eq!(conn.target(), Target::Primary);
}
