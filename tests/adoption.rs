//! The adoption patterns (targeted and app-wide; per handler is in `axum_example`).

mod common;

use common::{create_table, shared_cluster, statement_calls, WAIT};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::{InterlockMode, Route, SwitchReason, SwitchablePool, Target};

#[tokio::test]
async fn targeted_only_the_chosen_read_reaches_a_replica() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE adopt_targeted (id INT); INSERT INTO adopt_targeted VALUES (1)",
    )
    .await;
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .default_route(Route::Primary)
        .build()
        .await
        .unwrap();
    for _ in 0..3 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.target(), Target::Primary);
        diesel::sql_query("SELECT count(*) FROM adopt_targeted WHERE id > 0")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let mut report = pool.get_replica().await.unwrap();
    diesel::sql_query("SELECT sum(id) FROM adopt_targeted")
        .execute(&mut report)
        .await
        .unwrap();
    assert_eq!(report.target(), Target::Replica);

    let replica_calls = |verb: &'static str, needle: &'static str| async move {
        let mut total = 0;
        for url in cluster.replica_urls() {
            total += statement_calls(&url, verb, needle).await;
        }
        total
    };
    assert_eq!(
        replica_calls("select sum", "adopt_targeted").await,
        1,
        "the chosen read ran on a replica"
    );
    assert_eq!(
        replica_calls("select count", "adopt_targeted").await,
        0,
        "default-route reads stayed on the primary"
    );
    assert_eq!(
        statement_calls(&cluster.primary_url(), "select count", "adopt_targeted").await,
        3
    );
    assert_eq!(pool.stats().total_switches(), 0);
}

#[tokio::test]
async fn app_wide_the_interlock_catches_every_unmarked_write() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE adopt_wide (id SERIAL PRIMARY KEY, note TEXT)",
    )
    .await;
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .interlock(InterlockMode::Switch)
        .build()
        .await
        .unwrap();
    let (mut writes, mut transactions) = (0, 0);
    for request in 0..30 {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SELECT count(*) FROM adopt_wide")
            .execute(&mut conn)
            .await
            .unwrap();
        if request % 3 == 0 {
            diesel::sql_query("INSERT INTO adopt_wide (note) VALUES ('x')")
                .execute(&mut conn)
                .await
                .unwrap();
            writes += 1;
        } else if request % 5 == 0 {
            conn.transaction::<_, diesel::result::Error, _>(async |c| {
                diesel::sql_query("UPDATE adopt_wide SET note = 'y'")
                    .execute(c)
                    .await
                    .map(|_| ())
            })
            .await
            .unwrap();
            transactions += 1;
        }
    }
    let stats = pool.stats();
    assert_eq!(stats.switches(SwitchReason::WriteStatement), writes);
    assert_eq!(stats.switches(SwitchReason::TransactionBegin), transactions);
    assert_eq!(
        stats.statements(Target::Replica),
        30,
        "every unit's first read ran on a replica"
    );
    for url in cluster.replica_urls() {
        assert_eq!(statement_calls(&url, "insert", "adopt_wide").await, 0);
        assert_eq!(statement_calls(&url, "update", "adopt_wide").await, 0);
    }
    let report = pool.audit_report();
    assert_eq!(
        report.statements.iter().map(|e| e.count).sum::<u64>(),
        writes + transactions
    );
    let text = pool.to_prometheus();
    assert!(
        text.contains(&format!(
            "rwsplit_switches_total{{reason=\"write_statement\"}} {writes}"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn prometheus_text_carries_the_lag_gauges_per_replica() {
    let cluster = shared_cluster();
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .monitor_interval(std::time::Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !pool
        .replication_status()
        .iter()
        .all(|r| r.replay_lag_bytes.is_some())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the monitor never measured the replicas"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let text = pool.to_prometheus();
    for node in ["replica1", "replica2"] {
        for metric in [
            "rwsplit_replica_replay_lag_bytes",
            "rwsplit_replica_healthy",
            "rwsplit_replica_in_rotation",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{metric}{{node=\"{node}\"}} "))),
                "{metric} {node} missing:\n{text}"
            );
        }
    }
    assert!(
        text.contains("rwsplit_replica_healthy{node=\"replica1\"} 1"),
        "{text}"
    );
}
