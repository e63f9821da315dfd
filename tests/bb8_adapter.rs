//! `SwitchableManager`: a `bb8::Pool` of switchable connections.

mod common;

use common::{create_table, shared_cluster};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
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

    // A raw BEGIN left open: the item is discarded rather than reused.
    conn.batch_execute("BEGIN").await.unwrap();
    let replica_backend = backend(&mut conn).await;
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    assert_ne!(backend(&mut conn).await, replica_backend);
    assert!(pool.state().statistics.connections_closed_broken >= 1);
}

/// `pid@port` of the backend that answers.
async fn backend(conn: &mut diesel_rwsplit::SwitchableConnection<AsyncPgConnection>) -> String {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "pg_backend_pid()::text || '@' || inet_server_port()::text",
    ))
    .get_result(conn)
    .await
    .unwrap()
}
