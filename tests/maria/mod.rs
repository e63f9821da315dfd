//! Shared helpers for the MariaDB suites (`tests/mariadb_*.rs`): each test starts
//! its own [`MariaCluster`] and owns its data. Where a statement ran is checked
//! against the nodes themselves: `@@port` of the session that answered, and each
//! node's own general query log (on for these clusters).
#![allow(dead_code)] // each test binary uses a different subset

#[path = "../common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use diesel::sql_types::Integer;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use diesel_rwsplit::testing::MariaCluster;
use diesel_rwsplit::SwitchablePool;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

/// Upper bound of every wait (polling loops, replication catch-up).
pub const WAIT: Duration = Duration::from_secs(20);

pub type Pool = SwitchablePool<AsyncMysqlConnection>;
pub type Builder = diesel_rwsplit::SwitchablePoolBuilder<AsyncMysqlConnection>;
pub type Pooled = diesel_rwsplit::PooledConnection<AsyncMysqlConnection>;

/// A primary and `replicas` GTID replicas, each logging every statement it
/// receives into its `mysql.general_log` table: how a test counts what each node
/// ran (see [`calls_on`]).
pub async fn start(replicas: usize) -> MariaCluster {
    start_with(replicas, &[]).await
}

/// [`start`] with more server settings for every node.
pub async fn start_with(replicas: usize, settings: &[(&str, &str)]) -> MariaCluster {
    let mut builder = MariaCluster::builder()
        .replicas(replicas)
        .setting("general_log", "ON")
        .setting("log_output", "TABLE");
    for (name, value) in settings {
        builder = builder.setting(*name, *value);
    }
    builder
        .start()
        .await
        .expect("start a MariaDB cluster (apt-get install mariadb-server)")
}

/// A pool over the whole cluster, with short bounds so that faults are noticed fast.
pub fn builder(cluster: &MariaCluster) -> Builder {
    common::short_bounds(
        SwitchablePool::<AsyncMysqlConnection>::builder()
            .primary(cluster.primary_url())
            .replicas(cluster.replica_urls()),
    )
}

pub async fn connect(url: &str) -> Conn {
    Conn::new(Opts::from_url(url).unwrap()).await.unwrap()
}

/// Run `sql` (one or more statements) on the node at `url`.
pub async fn exec(url: &str, sql: &str) {
    let mut conn = connect(url).await;
    conn.query_drop(sql).await.unwrap();
    conn.disconnect().await.unwrap();
}

/// First column of the first row of `sql` on the node at `url`, as a number.
pub async fn scalar(url: &str, sql: &str) -> i64 {
    let mut conn = connect(url).await;
    let value: Option<i64> = conn.query_first(sql).await.unwrap();
    conn.disconnect().await.unwrap();
    value.expect("a row")
}

/// Run DDL as root on the primary and wait until every replica has applied it.
pub async fn setup(cluster: &MariaCluster, sql: &str) {
    exec(&cluster.primary_admin_url(), sql).await;
    cluster.wait_for_replicas(WAIT).await.unwrap();
}

/// Admin URLs of every node: primary first, then the replicas in order.
pub fn admin_urls(cluster: &MariaCluster) -> Vec<String> {
    std::iter::once(cluster.primary_admin_url())
        .chain((0..cluster.replica_count()).map(|i| cluster.replica_admin_url(i).unwrap()))
        .collect()
}

/// How many statements whose text starts with `verb` and mentions `needle` (both
/// case-insensitive) the node at `admin_url` received from the application account,
/// by its own general query log: text-protocol queries and prepared-statement
/// executions alike (performance_schema's digests miss the latter), whether they
/// succeeded or not. Root's own statements (the tests' set-up and checks) are not
/// counted.
pub async fn calls_on(admin_url: &str, verb: &str, needle: &str) -> i64 {
    logged(admin_url, &["Query", "Execute"], verb, needle).await
}

/// Like [`calls_on`], for prepares (`COM_STMT_PREPARE`) only: a statement refused
/// while it is prepared (the server opens its tables, a function's included, then)
/// is logged as a prepare and never executed.
pub async fn prepares_on(admin_url: &str, verb: &str, needle: &str) -> i64 {
    logged(admin_url, &["Prepare"], verb, needle).await
}

async fn logged(admin_url: &str, commands: &[&str], verb: &str, needle: &str) -> i64 {
    let mut conn = connect(admin_url).await;
    let count: Option<i64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM mysql.general_log \
             WHERE FIND_IN_SET(command_type, ?) AND user_host LIKE 'app[%' \
             AND UPPER(LTRIM(CONVERT(argument USING utf8mb4))) LIKE CONCAT(UPPER(?), '%') \
             AND UPPER(CONVERT(argument USING utf8mb4)) LIKE CONCAT('%', UPPER(?), '%')",
            (commands.join(","), verb, needle),
        )
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    count.unwrap()
}

/// [`calls_on`] on every node: `[primary, replica 1, ...]`.
pub async fn calls_per_node(cluster: &MariaCluster, verb: &str, needle: &str) -> Vec<i64> {
    let mut calls = Vec::new();
    for url in admin_urls(cluster) {
        calls.push(calls_on(&url, verb, needle).await);
    }
    calls
}

#[derive(diesel::QueryableByName)]
struct Port {
    #[diesel(sql_type = Integer)]
    port: i32,
}

/// `@@port` of the server whose session answers a read on this connection.
pub async fn port_of(conn: &mut Pooled) -> u16 {
    let row: Port = diesel::sql_query("SELECT @@port AS port")
        .get_result(conn)
        .await
        .unwrap();
    u16::try_from(row.port).unwrap()
}

#[derive(diesel::QueryableByName, Debug, PartialEq, Eq)]
pub struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub n: i64,
}

/// Poll `condition` every 10 ms until it holds; fail after [`WAIT`].
pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
