//! `SwitchableConnection<AsyncMysqlConnection>` and `SwitchablePool` on real MariaDB
//! servers: where each statement ran is checked against the nodes themselves
//! (`@@port`), never against the crate's own counters alone.

mod maria;

use diesel::sql_types::BigInt;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use diesel_rwsplit::testing::MariaCluster;
use diesel_rwsplit::{CausalOutcome, SwitchReason, SwitchablePool, Target};
use maria::{port_of, setup, WAIT};

async fn pool(cluster: &MariaCluster) -> SwitchablePool<AsyncMysqlConnection> {
    SwitchablePool::<AsyncMysqlConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build()
        .await
        .unwrap()
}

async fn cluster(replicas: usize) -> MariaCluster {
    let cluster = MariaCluster::start(replicas).await.unwrap();
    setup(
        &cluster,
        "CREATE TABLE items (id BIGINT AUTO_INCREMENT PRIMARY KEY, name TEXT NOT NULL)",
    )
    .await;
    cluster
}

#[tokio::test]
async fn reads_run_on_the_replica_and_writes_flip_to_the_primary() {
    let cluster = cluster(1).await;
    let pool = pool(&cluster).await;
    let replica_port = cluster.replica_port(0).unwrap();
    let primary_port = cluster.primary_port();

    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    assert_eq!(port_of(&mut conn).await, replica_port);
    let inserted = diesel::sql_query("INSERT INTO items (name) VALUES (?)")
        .bind::<diesel::sql_types::Text, _>("one")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(
        port_of(&mut conn).await,
        primary_port,
        "stays on the primary"
    );
    let token = conn.causal_token().await.unwrap().unwrap();
    assert!(token.to_string().starts_with("rw1m."), "{token}");
    drop(conn);

    let mut reader = pool.get_after(&token).await.unwrap();
    assert_eq!(port_of(&mut reader).await, replica_port);
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let count: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM items")
        .get_result(&mut reader)
        .await
        .unwrap();
    assert_eq!(
        count.n, 1,
        "the replica shows the write the token stands for"
    );
    let stats = pool.stats();
    assert_eq!(stats.switches(SwitchReason::WriteStatement), 1);
    assert_eq!(stats.causal_reads(CausalOutcome::Primary), 0);
}

diesel::table! {
    items (id) {
        id -> BigInt,
        name -> Text,
    }
}

#[derive(
    diesel::Queryable,
    diesel::Selectable,
    diesel::Identifiable,
    diesel::AsChangeset,
    Debug,
    Clone,
    Copy,
    PartialEq,
)]
#[diesel(table_name = items)]
struct Item<'a> {
    id: i64,
    name: &'a str,
}

#[derive(diesel::Queryable, Debug, PartialEq)]
struct OwnedItem {
    id: i64,
    name: String,
}

#[tokio::test]
async fn save_changes_updates_on_the_primary_and_reads_the_row_back_there() {
    use diesel::{ExpressionMethods, QueryDsl};
    use diesel_async::SaveChangesDsl;
    let cluster = cluster(1).await;
    let pool = pool(&cluster).await;
    let mut writer = pool.get_primary().await.unwrap();
    diesel::insert_into(items::table)
        .values((items::id.eq(7), items::name.eq("before")))
        .execute(&mut writer)
        .await
        .unwrap();
    drop(writer);
    cluster.wait_for_replicas(WAIT).await.unwrap();

    let mut conn = pool.get().await.unwrap();
    let found: OwnedItem = items::table.find(7).first(&mut conn).await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    assert_eq!(found.name, "before");
    let saved: OwnedItem = Item {
        id: 7,
        name: "after",
    }
    .save_changes(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        saved,
        OwnedItem {
            id: 7,
            name: "after".into()
        },
        "read back after the update, on the primary"
    );
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(port_of(&mut conn).await, cluster.primary_port());
}

#[tokio::test]
async fn discovered_members_route_writes_to_the_writable_one() {
    let cluster = cluster(1).await;
    // Replica first: the pool must find which member is the primary.
    let pool = SwitchablePool::<AsyncMysqlConnection>::builder()
        .nodes([cluster.replica_urls()[0].clone(), cluster.primary_url()])
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    assert_eq!(port_of(&mut conn).await, cluster.replica_port(0).unwrap());
    diesel::sql_query("INSERT INTO items (name) VALUES ('discovered')")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(port_of(&mut conn).await, cluster.primary_port());
    let status = pool.replication_status();
    assert_eq!(status.len(), 2, "{status:?}");
}

/// The session's diagnostics area, not the message text, says what an untyped
/// error was: diesel-async keeps only the message of MySQL server errors.
#[tokio::test]
async fn untyped_errors_are_told_apart_by_the_sessions_own_error_code() {
    use diesel_async::AsyncConnection;
    use diesel_rwsplit::__private::StatementFailure;
    use diesel_rwsplit::SwitchTarget;
    let cluster = cluster(1).await;
    let mut replica = AsyncMysqlConnection::establish(&cluster.replica_urls()[0])
        .await
        .unwrap();
    // The app account has no READ ONLY ADMIN: the read_only replica refuses (1290).
    let refused = diesel::sql_query("INSERT INTO items (name) VALUES ('no')")
        .execute(&mut replica)
        .await
        .unwrap_err();
    assert_eq!(
        <AsyncMysqlConnection as SwitchTarget>::statement_failure(&refused),
        StatementFailure::Other,
        "diesel-async does not type 1290: {refused:?}"
    );
    assert_eq!(
        <AsyncMysqlConnection as SwitchTarget>::diagnose(&mut replica)
            .await
            .unwrap(),
        StatementFailure::ReadOnlyRefused
    );
    let missing = diesel::sql_query("SELECT * FROM no_such_table")
        .execute(&mut replica)
        .await
        .unwrap_err();
    assert_eq!(
        <AsyncMysqlConnection as SwitchTarget>::statement_failure(&missing),
        StatementFailure::Other
    );
    assert_eq!(
        <AsyncMysqlConnection as SwitchTarget>::diagnose(&mut replica)
            .await
            .unwrap(),
        StatementFailure::Other,
        "1146 is the statement's own error"
    );
}
