//! `SwitchableConnection<AsyncMysqlConnection>` and `SwitchablePool` on real MariaDB
//! servers: where each statement ran is checked against the nodes themselves
//! (`@@port`), never against the crate's own counters alone.

use std::time::Duration;

use diesel::sql_types::{BigInt, Integer};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use diesel_rwsplit::testing::MariaCluster;
use diesel_rwsplit::{CausalOutcome, SwitchReason, SwitchablePool, Target};

const WAIT: Duration = Duration::from_secs(20);

#[derive(diesel::QueryableByName)]
struct Port {
    #[diesel(sql_type = Integer)]
    port: i32,
}

async fn port_of(conn: &mut diesel_rwsplit::PooledConnection<AsyncMysqlConnection>) -> u16 {
    let row: Port = diesel::sql_query("SELECT @@port AS port")
        .get_result(conn)
        .await
        .unwrap();
    u16::try_from(row.port).unwrap()
}

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
    let mut admin =
        mysql_async::Conn::new(mysql_async::Opts::from_url(&cluster.primary_url()).unwrap())
            .await
            .unwrap();
    mysql_async::prelude::Queryable::query_drop(
        &mut admin,
        "CREATE TABLE items (id BIGINT AUTO_INCREMENT PRIMARY KEY, name TEXT NOT NULL)",
    )
    .await
    .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();
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
