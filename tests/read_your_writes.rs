//! Read-your-writes holes: session windows that renew on every writing unit, and
//! causal reads that cost one connection whatever the replica count.

mod common;

use std::time::Duration;

use common::{port_of, server_port, statement_calls, token_after_write};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{CausalOutcome, SwitchablePool, Target};

async fn cluster() -> LocalCluster {
    let cluster = LocalCluster::start(2).await.unwrap();
    cluster.apply_example_schema().await.unwrap();
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_keeps_writing_on_the_primary_keeps_its_window() {
    let cluster = cluster().await;
    let window = Duration::from_secs(2);
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .session_window(window)
        .build()
        .await
        .unwrap();
    let primary = port_of(&cluster.primary_url());
    let pool_ref = &pool;
    let write = |kind: &'static str| async move {
        let mut conn = pool_ref.get_for_session("user-7").await.unwrap();
        diesel::sql_query(format!("INSERT INTO events (kind) VALUES ('{kind}')"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.target()
    };
    // t = 0: the first write flips a replica-first connection and opens the window.
    assert_eq!(write("rw_first").await, Target::Primary);
    tokio::time::sleep(window * 6 / 10).await;
    // t = 1.2 s: inside the window the session starts on the primary, and writes.
    let mut conn = pool.get_for_session("user-7").await.unwrap();
    assert_eq!(server_port(&mut conn).await, primary);
    diesel::sql_query("INSERT INTO events (kind) VALUES ('rw_second')")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    tokio::time::sleep(window * 6 / 10).await;
    // t = 2.4 s: past the first window, inside the one the second write opened.
    let mut conn = pool.get_for_session("user-7").await.unwrap();
    assert_eq!(
        server_port(&mut conn).await,
        primary,
        "the write of a session connection that started on the primary renewed the window"
    );
    drop(conn); // read only: renews nothing
    tokio::time::sleep(window * 6 / 10).await;
    // t = 3.6 s: past the second window; the read-only unit did not extend it.
    let mut conn = pool.get_for_session("user-7").await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    assert_ne!(server_port(&mut conn).await, primary);
    assert_eq!(pool.stats().session_window_reads(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_causal_read_costs_one_connection_and_a_bounded_number_of_checks() {
    let cluster = cluster().await;
    let wait = Duration::from_secs(1);
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .causal_wait(wait)
        .monitor_interval(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    cluster.pause_replay(0).await.unwrap();
    cluster.pause_replay(1).await.unwrap();
    let token = token_after_write(&pool, &cluster, "rw_causal").await;

    let read = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get_after(&token).await.map(|c| c.target()) })
    };
    let mut most = 0;
    while !read.is_finished() {
        most = most.max(pool.replica_checked_out().iter().sum::<usize>());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(read.await.unwrap().unwrap(), Target::Primary);
    assert_eq!(most, 1, "one replica connection at a time");
    assert_eq!(pool.stats().causal_reads(CausalOutcome::Primary), 1);

    let mut checks = 0;
    for url in cluster.replica_urls() {
        checks += statement_calls(&url, "SELECT", "pg_last_wal_replay_lsn()::text").await;
    }
    // 1, 2, 4, ... 32 ms, then every 50 ms: about log2(1000) + 1000 / 50.
    assert!((2..=40).contains(&checks), "{checks} position checks");
    cluster.resume_replay(0).await.unwrap();
    cluster.resume_replay(1).await.unwrap();
}
