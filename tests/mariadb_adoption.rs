//! The adoption tools on MariaDB (the MySQL side of `adoption.rs` and
//! `bb8_adapter.rs`): a bb8 pool of switchable connections, the targeted and the
//! app-wide patterns, the audit report and the Prometheus text. Where statements
//! ran is checked with `@@port` and the nodes' own general query logs.
//!
//! PostgreSQL-only, so not here: `volatile_user_functions` (it reads
//! `pg_proc`) and the pg_stat_statements-based checks of the PostgreSQL suites.

mod maria;

use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_rwsplit::{
    InterlockMode, Route, SwitchReason, SwitchableConnection, SwitchableManager, Target,
};
use maria::{builder, calls_per_node, connect, setup, start, until, Count, WAIT};
use mysql_async::prelude::Queryable;

/// `(CONNECTION_ID(), @@port)` of the session that answers.
async fn session(conn: &mut SwitchableConnection<AsyncMysqlConnection>) -> (i64, i64) {
    diesel::select((
        diesel::dsl::sql::<diesel::sql_types::BigInt>("CAST(CONNECTION_ID() AS SIGNED)"),
        diesel::dsl::sql::<diesel::sql_types::BigInt>("CAST(@@port AS SIGNED)"),
    ))
    .get_result(conn)
    .await
    .unwrap()
}

/// Wait until session `id` is gone from the node at `admin_url`.
async fn session_ends(admin_url: &str, id: i64, what: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut conn = connect(admin_url).await;
        let alive: Option<i64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?",
                (id,),
            )
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        if alive == Some(0) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} (session {id}) was kept open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bb8_pool_hands_out_replica_first_connections_reset_on_return() {
    let cluster = start(1).await;
    setup(
        &cluster,
        "CREATE TABLE bb8_items (id INT AUTO_INCREMENT PRIMARY KEY)",
    )
    .await;
    let manager = SwitchableManager::<AsyncMysqlConnection>::new(
        &cluster.primary_url(),
        cluster.replica_urls(),
    )
    .await
    .unwrap();
    let stats_pool = manager.pool().clone();
    let pool = bb8::Pool::builder()
        .max_size(1)
        .build(manager)
        .await
        .unwrap();
    let (primary, replica) = (
        i64::from(cluster.primary_port()),
        i64::from(cluster.replica_port(0).unwrap()),
    );

    let first = {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.target(), Target::Replica);
        assert_eq!(session(&mut conn).await.1, replica);
        diesel::sql_query("INSERT INTO bb8_items VALUES ()")
            .execute(&mut *conn)
            .await
            .unwrap();
        assert_eq!(conn.target(), Target::Primary);
        assert_eq!(conn.switch_reason(), Some(SwitchReason::WriteStatement));
        session(&mut conn).await
    };
    assert_eq!(first.1, primary);
    // The same pooled item (max_size 1), back on its replica with its state reset.
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    assert_eq!(conn.switch_reason(), None);
    let replica_session = session(&mut conn).await;
    assert_eq!(replica_session.1, replica);
    assert_eq!(stats_pool.stats().switches(SwitchReason::WriteStatement), 1);

    // A raw BEGIN left open: the item is discarded, with both node sessions.
    conn.batch_execute("BEGIN").await.unwrap();
    assert_eq!(conn.switch_reason(), Some(SwitchReason::TransactionBegin));
    let primary_session = session(&mut conn).await;
    assert_eq!(
        primary_session.1, primary,
        "the transaction runs on the primary"
    );
    diesel::sql_query("INSERT INTO bb8_items VALUES ()")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    assert_ne!(session(&mut conn).await, replica_session);
    assert!(pool.state().statistics.connections_closed_broken >= 1);
    session_ends(
        &cluster.replica_admin_url(0).unwrap(),
        replica_session.0,
        "the replica session",
    )
    .await;
    session_ends(
        &cluster.primary_admin_url(),
        primary_session.0,
        "the primary session with an open BEGIN",
    )
    .await;
    assert_eq!(
        maria::scalar(
            &cluster.primary_admin_url(),
            "SELECT COUNT(*) FROM bb8_items"
        )
        .await,
        1,
        "the abandoned transaction did not commit"
    );
    assert_eq!(
        calls_per_node(&cluster, "INSERT", "bb8_items").await,
        [2, 0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_only_the_chosen_read_reaches_a_replica() {
    let cluster = start(2).await;
    setup(
        &cluster,
        "CREATE TABLE adopt_targeted (id INT); INSERT INTO adopt_targeted VALUES (1)",
    )
    .await;
    let pool = builder(&cluster)
        .default_route(Route::Primary)
        .build()
        .await
        .unwrap();
    for _ in 0..3 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.target(), Target::Primary);
        diesel::sql_query("SELECT COUNT(*) AS n FROM adopt_targeted WHERE id > 0")
            .get_result::<Count>(&mut conn)
            .await
            .unwrap();
    }
    let mut report = pool.get_replica().await.unwrap();
    diesel::sql_query("SELECT SUM(id) FROM adopt_targeted")
        .execute(&mut report)
        .await
        .unwrap();
    assert_eq!(report.target(), Target::Replica);
    drop(report);

    let counts = calls_per_node(&cluster, "SELECT COUNT", "adopt_targeted").await;
    assert_eq!(
        counts,
        [3, 0, 0],
        "default-route reads stayed on the primary"
    );
    let sums = calls_per_node(&cluster, "SELECT SUM", "adopt_targeted").await;
    assert_eq!(sums[0], 0);
    assert_eq!(
        sums[1] + sums[2],
        1,
        "the chosen read ran on a replica: {sums:?}"
    );
    assert_eq!(pool.stats().total_switches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_wide_the_interlock_catches_every_unmarked_write() {
    let cluster = start(2).await;
    setup(
        &cluster,
        "CREATE TABLE adopt_wide (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT)",
    )
    .await;
    let pool = builder(&cluster)
        .interlock(InterlockMode::Switch)
        .build()
        .await
        .unwrap();
    let (mut writes, mut transactions) = (0u64, 0u64);
    for request in 0..30 {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SELECT COUNT(*) AS n FROM adopt_wide")
            .get_result::<Count>(&mut conn)
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
    assert_eq!(stats.statements(Target::Replica), 30);
    let selects = calls_per_node(&cluster, "SELECT COUNT", "adopt_wide").await;
    assert_eq!(selects[0], 0, "every unit's first read ran on a replica");
    assert_eq!(selects[1] + selects[2], 30, "{selects:?}");
    assert_eq!(
        calls_per_node(&cluster, "INSERT", "adopt_wide").await,
        [writes as i64, 0, 0]
    );
    assert_eq!(
        calls_per_node(&cluster, "UPDATE", "adopt_wide").await,
        [transactions as i64, 0, 0]
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_audit_names_the_writes_before_any_read_moves() {
    let cluster = start(1).await;
    setup(
        &cluster,
        "CREATE TABLE adopt_observe (id INT AUTO_INCREMENT PRIMARY KEY)",
    )
    .await;
    let pool = builder(&cluster)
        .interlock(InterlockMode::Observe)
        .build()
        .await
        .unwrap();
    for _ in 0..4 {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SELECT COUNT(*) AS n FROM adopt_observe")
            .get_result::<Count>(&mut conn)
            .await
            .unwrap();
        diesel::sql_query("INSERT INTO adopt_observe VALUES ()")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let report = pool.audit_report();
    let text = report.to_string();
    assert!(text.to_lowercase().contains("adopt_observe"), "{text}");
    assert_eq!(pool.stats().would_switch(SwitchReason::WriteStatement), 4);
    assert_eq!(
        calls_per_node(&cluster, "SELECT", "adopt_observe").await,
        [4, 0]
    );
    assert_eq!(
        calls_per_node(&cluster, "INSERT", "adopt_observe").await,
        [4, 0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_text_carries_the_lag_gauges_per_replica() {
    let cluster = start(2).await;
    let pool = builder(&cluster).build().await.unwrap();
    until("the monitor measured the replicas", || {
        pool.replication_status()
            .iter()
            .all(|r| r.replay_lag_bytes.is_some())
    })
    .await;
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
        assert!(
            text.contains(&format!("rwsplit_replica_healthy{{node=\"{node}\"}} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "rwsplit_replica_replay_lag_bytes{{node=\"{node}\"}} 0"
            )),
            "{text}"
        );
    }
}

#[cfg(feature = "deadpool")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadpool_pool_hands_out_replica_first_connections_reset_on_return() {
    use diesel_rwsplit::{SwitchableDeadpool, SwitchableDeadpoolManager};
    let cluster = start(1).await;
    setup(
        &cluster,
        "CREATE TABLE dp_items (id INT AUTO_INCREMENT PRIMARY KEY)",
    )
    .await;
    let inner = builder(&cluster).build().await.unwrap();
    let pool: SwitchableDeadpool<AsyncMysqlConnection> =
        SwitchableDeadpool::builder(SwitchableDeadpoolManager::from_pool(inner.clone()))
            .max_size(1)
            .build()
            .unwrap();
    let debug = format!("{:?}", pool.manager());
    assert!(!debug.contains("mysql://"), "no URL in Debug: {debug}");
    let (primary, replica) = (
        i64::from(cluster.primary_port()),
        i64::from(cluster.replica_port(0).unwrap()),
    );
    let mut replica_sessions = Vec::new();
    for round in 0..3 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.target(), Target::Replica, "round {round}");
        assert_eq!(conn.switch_reason(), None, "reset on return");
        let on_replica = session(&mut conn).await;
        assert_eq!(on_replica.1, replica);
        replica_sessions.push(on_replica.0);
        diesel::sql_query("INSERT INTO dp_items VALUES ()")
            .execute(&mut *conn)
            .await
            .unwrap();
        assert_eq!(conn.switch_reason(), Some(SwitchReason::WriteStatement));
        assert_eq!(session(&mut conn).await.1, primary);
    }
    replica_sessions.dedup();
    assert_eq!(
        replica_sessions.len(),
        1,
        "one pooled item, one replica session"
    );
    assert_eq!(inner.stats().switches(SwitchReason::WriteStatement), 3);
    assert_eq!(calls_per_node(&cluster, "INSERT", "dp_items").await, [3, 0]);
    assert_eq!(
        maria::scalar(
            &cluster.primary_admin_url(),
            "SELECT COUNT(*) FROM dp_items"
        )
        .await,
        3
    );
}
