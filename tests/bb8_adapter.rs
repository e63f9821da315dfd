//! `SwitchableManager`: a `bb8::Pool` of switchable connections.

mod common;

use common::{admin, create_table, port_of, shared_cluster, WAIT};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{SwitchReason, SwitchableManager, Target};

#[tokio::test]
async fn a_bb8_pool_hands_out_replica_first_connections_reset_on_return() {
    let cluster = shared_cluster();
    create_table(cluster, "CREATE TABLE bb8_items (id SERIAL PRIMARY KEY)").await;
    let manager =
        SwitchableManager::<AsyncPgConnection>::new(&cluster.primary_url(), cluster.replica_urls())
            .await
            .unwrap();
    let stats_pool = manager.pool().clone();
    let pool = bb8::Pool::builder()
        .max_size(1)
        .build(manager)
        .await
        .unwrap();

    let first_backend = {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.target(), Target::Replica);
        diesel::sql_query("SELECT count(*) FROM bb8_items")
            .execute(&mut conn)
            .await
            .unwrap();
        diesel::sql_query("INSERT INTO bb8_items DEFAULT VALUES")
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(conn.target(), Target::Primary);
        assert_eq!(conn.switch_reason(), Some(SwitchReason::WriteStatement));
        backend(&mut conn).await
    };
    // The same pooled item (max_size 1), back on its replica with its state reset.
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    assert_eq!(conn.switch_reason(), None);
    assert_ne!(
        backend(&mut conn).await,
        first_backend,
        "reads after the return must go to the replica"
    );
    assert_eq!(stats_pool.stats().switches(SwitchReason::WriteStatement), 1);

    // A raw BEGIN left open: the item is discarded rather than reused, and so are
    // both node connections it held (the replica's and the primary's with the open
    // transaction): their server sessions end instead of going back to a pool.
    let replica_backend = backend(&mut conn).await; // before anything flips
    assert_eq!(conn.target(), Target::Replica);
    conn.batch_execute("BEGIN").await.unwrap();
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(conn.switch_reason(), Some(SwitchReason::TransactionBegin));
    let primary_backend = backend(&mut conn).await;
    assert_ne!(primary_backend, replica_backend);
    assert_eq!(
        primary_backend.1,
        port_of(&cluster.primary_url()),
        "the transaction runs on the primary"
    );
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    assert_ne!(backend(&mut conn).await, replica_backend);
    assert!(pool.state().statistics.connections_closed_broken >= 1);
    session_ends(cluster, replica_backend, "the replica connection").await;
    session_ends(
        cluster,
        primary_backend,
        "the primary connection with an open BEGIN",
    )
    .await;
}

/// Wait until the server session `(pid, port)` is gone: its connection was closed,
/// not kept in a pool. Fails after [`WAIT`].
async fn session_ends(cluster: &LocalCluster, (pid, port): (i32, i32), what: &str) {
    let url = std::iter::once(cluster.primary_url())
        .chain(cluster.replica_urls())
        .find(|url| port_of(url) == port)
        .expect("a node of the cluster");
    let client = admin(&url).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let alive: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if alive == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} (backend {pid} on port {port}) was kept open, not discarded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `(pid, port)` of the backend that answers.
async fn backend(conn: &mut diesel_rwsplit::SwitchableConnection<AsyncPgConnection>) -> (i32, i32) {
    diesel::select((
        diesel::dsl::sql::<diesel::sql_types::Integer>("pg_backend_pid()"),
        diesel::dsl::sql::<diesel::sql_types::Integer>("inet_server_port()"),
    ))
    .get_result(conn)
    .await
    .unwrap()
}
