//! `SwitchableConnection` and `SwitchablePool` against a real primary + replicas.

mod common;

use common::{admin, create_table, shared_cluster, statement_calls};
use diesel::prelude::*;
use diesel::result::DatabaseErrorKind;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_rwsplit::classify::{Classifier, Dialect};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::PooledConnection;
use diesel_rwsplit::{
    interlock_refusal, InterlockMode, Route, SwitchReason, SwitchablePool, Target,
};

diesel::table! {
    sw_routing (id) {
        id -> BigInt,
        note -> Text,
    }
}

diesel::table! {
    sw_ryw (id) {
        id -> BigInt,
        note -> Text,
    }
}

async fn pool(cluster: &LocalCluster, mode: InterlockMode) -> SwitchablePool<AsyncPgConnection> {
    SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .interlock(mode)
        .build()
        .await
        .unwrap()
}

async fn backend_pid(conn: &mut PooledConnection) -> i32 {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "pg_backend_pid()",
    ))
    .get_result(conn)
    .await
    .unwrap()
}

async fn in_recovery(conn: &mut PooledConnection) -> bool {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "pg_is_in_recovery()",
    ))
    .get_result(conn)
    .await
    .unwrap()
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test]
async fn writes_reach_only_the_primary_and_reads_are_served_by_replicas() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE sw_routing (id BIGSERIAL PRIMARY KEY, note TEXT NOT NULL)",
    )
    .await;
    let pool = pool(cluster, InterlockMode::Switch).await;

    for round in 0..4 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.target(), Target::Replica);
        let _on_replica: i64 = sw_routing::table
            .count()
            .get_result(&mut conn)
            .await
            .unwrap(); // may trail the previous round by a fraction of a millisecond
        assert_eq!(conn.target(), Target::Replica, "a count must not flip");
        diesel::insert_into(sw_routing::table)
            .values(sw_routing::note.eq(format!("round {round}")))
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(conn.target(), Target::Primary);
        assert_eq!(conn.switch_reason(), Some(SwitchReason::WriteStatement));
        let after: i64 = sw_routing::table
            .count()
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(after, round + 1, "read-your-write on the same connection");
    }

    // The nodes' own statement statistics, not only our counters.
    assert_eq!(
        statement_calls(&cluster.primary_url(), "insert", "sw_routing").await,
        4
    );
    let mut replica_reads = 0;
    for url in cluster.replica_urls() {
        assert_eq!(
            statement_calls(&url, "insert", "sw_routing").await,
            0,
            "an insert reached {url}"
        );
        replica_reads += statement_calls(&url, "select", "sw_routing").await;
    }
    assert_eq!(
        replica_reads, 4,
        "each unit of work's first read is served by a replica"
    );
    assert_eq!(
        statement_calls(&cluster.primary_url(), "select", "sw_routing").await,
        4,
        "reads after the write stay on the primary"
    );
    let stats = pool.stats();
    assert_eq!(stats.switches(SwitchReason::WriteStatement), 4);
    assert_eq!(stats.checkouts(Target::Primary), 4);
}

#[tokio::test]
async fn a_unit_of_work_reads_its_own_writes_even_while_replicas_lag() {
    // Its own cluster: pausing replay must not disturb other tests.
    let cluster = LocalCluster::start(2).await.unwrap();
    create_table(
        &cluster,
        "CREATE TABLE sw_ryw (id BIGSERIAL PRIMARY KEY, note TEXT NOT NULL)",
    )
    .await;
    cluster.pause_replay(0).await.unwrap();
    cluster.pause_replay(1).await.unwrap();
    let pool = pool(&cluster, InterlockMode::Switch).await;

    for i in 0..20 {
        let mut conn = pool.get().await.unwrap();
        let id: i64 = diesel::insert_into(sw_ryw::table)
            .values(sw_ryw::note.eq(format!("note {i}")))
            .returning(sw_ryw::id)
            .get_result(&mut conn)
            .await
            .unwrap();
        let note: String = sw_ryw::table
            .find(id)
            .select(sw_ryw::note)
            .first(&mut conn)
            .await
            .unwrap();
        assert_eq!(note, format!("note {i}"));
    }
    // A fresh connection reads the (paused) replica and cannot see them: the
    // stickiness above is what made those reads correct.
    let mut fresh = pool.get().await.unwrap();
    let on_replica: i64 = sw_ryw::table.count().get_result(&mut fresh).await.unwrap();
    assert_eq!((fresh.target(), on_replica), (Target::Replica, 0));
}

#[tokio::test]
async fn raise_mode_refuses_and_nothing_is_written_anywhere() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE sw_raise (id BIGSERIAL PRIMARY KEY, note TEXT NOT NULL)",
    )
    .await;
    let pool = pool(cluster, InterlockMode::Raise).await;
    let mut conn = pool.get().await.unwrap();

    let count: Count = diesel::sql_query("SELECT count(*) AS n FROM sw_raise")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(count.n, 0);
    let insert = diesel::sql_query("INSERT INTO sw_raise (note) VALUES ($1)")
        .bind::<Text, _>("nope")
        .execute(&mut conn)
        .await;
    assert_eq!(
        interlock_refusal(&insert.unwrap_err()),
        Some(SwitchReason::WriteStatement)
    );
    let lock = diesel::sql_query("SELECT id FROM sw_raise FOR UPDATE SKIP LOCKED")
        .execute(&mut conn)
        .await;
    assert_eq!(
        interlock_refusal(&lock.unwrap_err()),
        Some(SwitchReason::LockingRead)
    );
    let txn = conn.transaction::<_, diesel::result::Error, _>(async |c| {
        diesel::sql_query("INSERT INTO sw_raise (note) VALUES ('in txn')")
            .execute(c)
            .await?;
        Ok(())
    });
    assert_eq!(
        interlock_refusal(&txn.await.unwrap_err()),
        Some(SwitchReason::TransactionBegin)
    );
    assert_eq!(
        interlock_refusal(&conn.before_save().await.unwrap_err()),
        Some(SwitchReason::SaveHook)
    );
    assert_eq!(conn.target(), Target::Replica, "Raise never flips");

    // Still usable for reads, and nothing reached any node.
    let count: Count = diesel::sql_query("SELECT count(*) AS n FROM sw_raise")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(count.n, 0);
    let primary = admin(&cluster.primary_url()).await;
    assert_eq!(
        primary
            .query_one("SELECT count(*) FROM sw_raise", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    assert_eq!(
        statement_calls(&cluster.primary_url(), "insert", "sw_raise").await,
        0
    );
    let stats = pool.stats();
    assert_eq!(stats.refusals(SwitchReason::WriteStatement), 1);
    assert_eq!(stats.refusals(SwitchReason::LockingRead), 1);
    assert_eq!(stats.refusals(SwitchReason::TransactionBegin), 1);
    assert_eq!(stats.refusals(SwitchReason::SaveHook), 1);
    assert_eq!(stats.total_switches(), 0);
    assert_eq!(stats.checkouts(Target::Primary), 0);
}

#[tokio::test]
async fn observe_mode_sends_nothing_to_replicas_and_counts_exactly() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE sw_observe (id BIGSERIAL PRIMARY KEY, note TEXT NOT NULL)",
    )
    .await;
    let pool = pool(cluster, InterlockMode::Observe).await;

    // 3 read-only units of 2 reads; 2 writing units of read, insert, read.
    for _ in 0..3 {
        let mut conn = pool.get().await.unwrap();
        for _ in 0..2 {
            diesel::sql_query("SELECT count(*) AS n FROM sw_observe")
                .get_result::<Count>(&mut conn)
                .await
                .unwrap();
        }
        assert_eq!(conn.target(), Target::Primary);
        assert_eq!(conn.would_switch_reason(), None);
    }
    for _ in 0..2 {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SELECT count(*) AS n FROM sw_observe")
            .get_result::<Count>(&mut conn)
            .await
            .unwrap();
        diesel::sql_query("INSERT INTO sw_observe (note) VALUES ('x')")
            .execute(&mut conn)
            .await
            .unwrap();
        diesel::sql_query("SELECT count(*) AS n FROM sw_observe")
            .get_result::<Count>(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            conn.would_switch_reason(),
            Some(SwitchReason::WriteStatement)
        );
    }
    let stats = pool.stats();
    assert_eq!(stats.would_be_statements(Target::Replica), 3 * 2 + 2);
    assert_eq!(stats.would_be_statements(Target::Primary), 2 * 2);
    assert_eq!(stats.would_switch(SwitchReason::WriteStatement), 2);
    assert_eq!(stats.observed_units(), (5, 3));
    assert_eq!(stats.statements(Target::Replica), 0);
    assert_eq!(stats.statements(Target::Primary), 12);
    assert_eq!(stats.total_switches(), 0, "Observe never flips");
    assert_eq!(stats.checkouts(Target::Replica), 0);
    let top = stats.top_fingerprints(5);
    assert_eq!(top.len(), 1, "{top:?}");
    assert_eq!(top[0].count, 2);
    assert!(
        top[0].fingerprint.contains("sw_observe") && !top[0].fingerprint.contains("'x'"),
        "{top:?}"
    );
    for url in cluster.replica_urls() {
        assert_eq!(
            statement_calls(&url, "select", "sw_observe").await,
            0,
            "Observe sent a read to {url}"
        );
    }
    assert_eq!(
        statement_calls(&cluster.primary_url(), "select", "sw_observe").await,
        10
    );
}

#[tokio::test]
async fn a_write_forced_onto_a_replica_session_fails_with_25006_even_after_promotion() {
    let cluster = LocalCluster::start(1).await.unwrap();
    create_table(&cluster, "CREATE TABLE sw_forced (id INT)").await;
    // A node promoted behind our back: the server-side read-only session is what
    // still stops a write that a (wrong) rule lets through.
    cluster.promote_replica(0).await.unwrap();
    let classifier = Classifier::builder(Dialect::Postgres)
        .rule("^INSERT INTO sw_forced", Target::Replica)
        .build()
        .unwrap();
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .classifier(classifier)
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    // The promoted node's read-only session refuses it (25006) before doing it; in
    // Switch mode it then runs on the real primary.
    diesel::sql_query("INSERT INTO sw_forced VALUES (1)")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(conn.switch_reason(), Some(SwitchReason::ReplicaRefused));
    let on_primary = admin(&cluster.primary_url())
        .await
        .query_one("SELECT count(*) FROM sw_forced", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(on_primary, 1);
    drop(conn);
    // Raise mode returns the refusal, by its SQLSTATE.
    let strict = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .classifier(
            Classifier::builder(Dialect::Postgres)
                .rule("^INSERT INTO sw_forced", Target::Replica)
                .build()
                .unwrap(),
        )
        .interlock(InterlockMode::Raise)
        .build()
        .await
        .unwrap();
    let mut conn = strict.get().await.unwrap();
    let err = diesel::sql_query("INSERT INTO sw_forced VALUES (2)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    // SQLSTATE 25006 (read_only_sql_transaction), as diesel maps it: the kind, not
    // the message text, which depends on the server's language and version.
    assert!(
        matches!(
            err,
            diesel::result::Error::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _)
        ),
        "{err:?}"
    );
    assert_eq!(conn.target(), Target::Replica);
    let promoted = admin(&cluster.replica_url(0).unwrap()).await;
    assert_eq!(
        promoted
            .query_one("SELECT count(*) FROM sw_forced", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
}

#[tokio::test]
async fn a_read_only_unit_of_work_never_opens_a_primary_connection() {
    let cluster = LocalCluster::start(1).await.unwrap();
    create_table(
        &cluster,
        "CREATE TABLE sw_lazy (id INT); INSERT INTO sw_lazy VALUES (1)",
    )
    .await;
    let pool = pool(&cluster, InterlockMode::Switch).await;
    let primary = admin(&cluster.primary_url()).await;
    let client_backends = || async {
        primary
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name <> 'diesel-rwsplit monitor'", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(client_backends().await, 0);
    for _ in 0..5 {
        let mut conn = pool.get().await.unwrap();
        let rows: Vec<Count> = diesel::sql_query("SELECT id::bigint AS n FROM sw_lazy")
            .load(&mut conn)
            .await
            .unwrap();
        assert_eq!(rows, [Count { n: 1 }]);
        conn.transaction_state(); // inspecting state must not flip either
    }
    assert_eq!(
        client_backends().await,
        0,
        "a read-only unit of work opened a primary connection"
    );
    assert_eq!(pool.stats().checkouts(Target::Primary), 0);

    let mut conn = pool.get().await.unwrap();
    conn.switch_to_primary().await.unwrap();
    assert_eq!(client_backends().await, 1, "the flip opens exactly one");
    assert_eq!(pool.stats().switches(SwitchReason::Explicit), 1);
}

#[tokio::test]
async fn counters_are_exact_under_concurrency() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE sw_concurrent (id BIGSERIAL PRIMARY KEY, worker INT NOT NULL)",
    )
    .await;
    let pool = pool(cluster, InterlockMode::Switch).await;
    let (workers, units) = (16, 10);
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for unit in 0..units {
                let mut conn = pool.get().await.unwrap();
                diesel::sql_query("SELECT count(*) AS n FROM sw_concurrent")
                    .get_result::<Count>(&mut conn)
                    .await
                    .unwrap();
                match unit % 3 {
                    0 => {
                        diesel::sql_query("INSERT INTO sw_concurrent (worker) VALUES ($1)")
                            .bind::<diesel::sql_types::Integer, _>(worker)
                            .execute(&mut conn)
                            .await
                            .unwrap();
                    }
                    1 => conn
                        .transaction::<_, diesel::result::Error, _>(async |c| {
                            diesel::sql_query("SELECT 1 AS n")
                                .execute(c)
                                .await
                                .map(|_| ())
                        })
                        .await
                        .unwrap(),
                    _ => {}
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = pool.stats();
    let per_worker = |kind: i32| (0..units).filter(|u| u % 3 == kind).count() as u64;
    let (writes, txns) = (
        workers as u64 * per_worker(0),
        workers as u64 * per_worker(1),
    );
    assert_eq!(stats.switches(SwitchReason::WriteStatement), writes);
    assert_eq!(stats.switches(SwitchReason::TransactionBegin), txns);
    assert_eq!(stats.total_switches(), writes + txns);
    assert_eq!(stats.statements(Target::Replica), (workers * units) as u64);
    let top = stats.top_fingerprints(10);
    let insert = top
        .iter()
        .find(|f| f.fingerprint.contains("insert"))
        .unwrap();
    assert_eq!(insert.count, writes);
    let primary = admin(&cluster.primary_url()).await;
    let rows: i64 = primary
        .query_one("SELECT count(*) FROM sw_concurrent", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as u64, writes);
}

#[tokio::test]
async fn a_connection_dropped_mid_transaction_is_not_reused() {
    let cluster = shared_cluster();
    create_table(cluster, "CREATE TABLE sw_dropped (id INT)").await;
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .primary_max_size(1)
        .build()
        .await
        .unwrap();
    let first_pid = {
        let mut conn = pool.get().await.unwrap();
        conn.batch_execute("BEGIN").await.unwrap();
        assert_eq!(conn.switch_reason(), Some(SwitchReason::TransactionBegin));
        diesel::sql_query("INSERT INTO sw_dropped VALUES (1)")
            .execute(&mut conn)
            .await
            .unwrap();
        backend_pid(&mut conn).await
    }; // dropped with the transaction open
    let mut conn = pool.get_primary().await.unwrap();
    let second_pid = backend_pid(&mut conn).await;
    assert_ne!(
        first_pid, second_pid,
        "the primary connection with an open transaction was reused"
    );
    let rows: Count = diesel::sql_query("SELECT count(*) AS n FROM sw_dropped")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        rows.n, 0,
        "the abandoned transaction must not have committed"
    );

    drop(conn);

    // A healthy connection goes back to the pool and is reused (max size 1).
    let reused_pid = {
        let mut conn = pool.get_primary().await.unwrap();
        backend_pid(&mut conn).await
    };
    assert_eq!(reused_pid, second_pid, "a healthy connection is reused");

    // Panicking with a live connection: it is discarded too, and the pool still works.
    // The task reports which backend it held before it panics, so that the check
    // that it held the reused (healthy) connection is made here, not in the task.
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let pool2 = pool.clone();
    let panicked = tokio::spawn(async move {
        let mut conn = pool2.get_primary().await.unwrap();
        held_tx.send(backend_pid(&mut conn).await).unwrap();
        panic!("deliberate");
    })
    .await;
    let held_pid = held_rx
        .await
        .expect("the task panicked before it had a connection");
    assert_eq!(
        held_pid, second_pid,
        "the panicking task held the healthy, reused connection"
    );
    let payload = panicked
        .expect_err("the task was meant to panic")
        .into_panic();
    assert_eq!(
        payload.downcast_ref::<&str>().copied(),
        Some("deliberate"),
        "the task panicked for another reason"
    );
    let mut conn = pool.get_primary().await.unwrap();
    assert_ne!(
        backend_pid(&mut conn).await,
        held_pid,
        "the connection of a panicking task was reused"
    );
}

#[tokio::test]
async fn default_route_primary_and_explicit_routes() {
    let cluster = shared_cluster();
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .default_route(Route::Primary)
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Primary);
    assert!(!in_recovery(&mut conn).await);
    let mut replica = pool.get_replica().await.unwrap();
    assert_eq!(replica.target(), Target::Replica);
    assert!(in_recovery(&mut replica).await);
    let mut primary = pool.get_primary().await.unwrap();
    assert!(!in_recovery(&mut primary).await);
    assert_eq!(pool.stats().total_switches(), 0);

    let no_replicas = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .build()
        .await
        .unwrap();
    let mut conn = no_replicas.get().await.unwrap();
    assert_eq!(conn.target(), Target::Primary);
    assert!(!in_recovery(&mut conn).await);
}

#[tokio::test]
async fn bad_configuration_is_a_typed_error_without_the_password() {
    let err = SwitchablePool::<AsyncPgConnection>::builder()
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, diesel_rwsplit::Error::InvalidConfig(_)),
        "{err:?}"
    );
    let err = SwitchablePool::<AsyncPgConnection>::builder()
        .primary("postgres://app:s3cret@127.0.0.1:1/db")
        .replicas(["postgres://app:s3cret@127.0.0.1:notaport/db"])
        .build()
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        matches!(err, diesel_rwsplit::Error::Node { ref node, .. } if node == "replica1"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary("postgres://app:s3cret@127.0.0.1:1/db")
        .primary_max_size(0)
        .build()
        .await;
    assert!(matches!(pool, Err(diesel_rwsplit::Error::InvalidConfig(_))));
    let unreachable = SwitchablePool::<AsyncPgConnection>::builder()
        .primary("postgres://app:s3cret@127.0.0.1:1/db")
        .build()
        .await
        .unwrap_err();
    let text = format!("{unreachable} {unreachable:?}");
    assert!(
        matches!(&unreachable, diesel_rwsplit::Error::Node { node, step: diesel_rwsplit::NodeStep::Connect, .. } if node == "primary (127.0.0.1:1)"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary("postgres://app:s3cret@127.0.0.1:1/db")
        .verify_on_build(false)
        .build()
        .await
        .unwrap();
    assert!(!format!("{pool:?}").contains("s3cret"));
}

#[tokio::test]
async fn an_empty_replica_read_is_empty_not_an_error() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE sw_empty (id BIGINT PRIMARY KEY, note TEXT NOT NULL)",
    )
    .await;
    for read_retry in [true, false] {
        let pool = SwitchablePool::<AsyncPgConnection>::builder()
            .primary(cluster.primary_url())
            .replicas(cluster.replica_urls())
            .read_retry(read_retry)
            .build()
            .await
            .unwrap();
        let mut conn = pool.get().await.unwrap();
        let rows: Vec<(i64, String)> = sw_empty_table::table.load(&mut conn).await.unwrap();
        assert!(rows.is_empty());
        let missing = sw_empty_table::table
            .find(1)
            .first::<(i64, String)>(&mut conn)
            .await;
        assert!(
            matches!(missing, Err(diesel::result::Error::NotFound)),
            "read_retry {read_retry}: {missing:?}"
        );
        assert_eq!(conn.target(), Target::Replica);
    }
}

mod sw_empty_table {
    diesel::table! {
        sw_empty (id) {
            id -> BigInt,
            note -> Text,
        }
    }
    pub(crate) use self::sw_empty::table;
}
