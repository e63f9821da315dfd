//! Replication lag and read-your-writes across connections, against a real cluster
//! with deterministic lag (`pg_wal_replay_pause()`).

mod common;

use std::time::{Duration, Instant};

use common::{admin, create_table, port_of, server_port, until, WAIT};
use diesel::sql_types::BigInt;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{CausalOutcome, CausalToken, SwitchablePool, Target};

const INTERVAL: Duration = Duration::from_millis(50);

async fn pool(cluster: &LocalCluster) -> SwitchablePool {
    SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .monitor_interval(INTERVAL)
        .build()
        .await
        .unwrap()
}

#[derive(diesel::QueryableByName)]
struct Found {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test]
async fn a_thousand_write_then_read_cycles_with_tokens_read_no_stale_row() {
    let cluster = LocalCluster::start(2).await.unwrap();
    create_table(&cluster, "CREATE TABLE causal_rows (id BIGINT PRIMARY KEY)").await;
    let pool = pool(&cluster).await;
    cluster.pause_replay(0).await.unwrap();
    let caught_up = port_of(&cluster.replica_url(1).unwrap());

    let (mut stale, mut on_caught_up) = (0, 0);
    for id in 0..1000i64 {
        let token = {
            let mut writer = pool.get().await.unwrap();
            diesel::sql_query("INSERT INTO causal_rows VALUES ($1)")
                .bind::<BigInt, _>(id)
                .execute(&mut writer)
                .await
                .unwrap();
            writer
                .causal_token()
                .await
                .unwrap()
                .expect("a unit of work that wrote has a token")
        };
        // The token travels as text, as it would in a cookie or a header.
        let token: CausalToken = token.to_string().parse().unwrap();
        let mut reader = pool.get_after(&token).await.unwrap();
        let found: Found = diesel::sql_query("SELECT count(*) AS n FROM causal_rows WHERE id = $1")
            .bind::<BigInt, _>(id)
            .get_result(&mut reader)
            .await
            .unwrap();
        if found.n != 1 {
            stale += 1;
        }
        if reader.target() == Target::Replica && server_port(&mut reader).await == caught_up {
            on_caught_up += 1;
        }
    }
    assert_eq!(stale, 0, "stale reads after a write");
    let stats = pool.stats();
    let by_replica =
        stats.causal_reads(CausalOutcome::Monitor) + stats.causal_reads(CausalOutcome::Checked);
    eprintln!(
        "causal reads: {} via monitor, {} checked, {} on the primary; {on_caught_up} on the caught-up replica",
        stats.causal_reads(CausalOutcome::Monitor),
        stats.causal_reads(CausalOutcome::Checked),
        stats.causal_reads(CausalOutcome::Primary)
    );
    assert_eq!(
        by_replica, on_caught_up,
        "every replica-served causal read used the caught-up replica"
    );
    assert!(
        on_caught_up >= 990,
        "reads should still use the caught-up replica, got {on_caught_up}/1000"
    );
    cluster.resume_replay(0).await.unwrap();
}

#[tokio::test]
async fn a_lagging_replica_is_skipped_and_used_again_after_it_catches_up() {
    let cluster = LocalCluster::start(2).await.unwrap();
    create_table(&cluster, "CREATE TABLE lag_rows (id INT)").await;
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .monitor_interval(INTERVAL)
        .max_replica_lag_bytes(0)
        .build()
        .await
        .unwrap();
    let lagging = port_of(&cluster.replica_url(0).unwrap());
    until("both replicas measured", || {
        pool.replication_status()
            .iter()
            .all(|r| r.replay_lag_bytes == Some(0))
    })
    .await;

    cluster.pause_replay(0).await.unwrap();
    admin(&cluster.primary_url())
        .await
        .batch_execute("INSERT INTO lag_rows VALUES (1)")
        .await
        .unwrap();
    until("replica1 seen lagging", || {
        pool.replication_status()[0]
            .replay_lag_bytes
            .is_some_and(|b| b > 0)
    })
    .await;
    let status = pool.replication_status();
    assert!(
        status[0].lag.is_some_and(|lag| lag > Duration::ZERO),
        "{status:?}"
    );
    for _ in 0..10 {
        let mut conn = pool.get().await.unwrap();
        assert_ne!(
            server_port(&mut conn).await,
            lagging,
            "a lagging replica served a read"
        );
    }

    cluster.resume_replay(0).await.unwrap();
    until("replica1 caught up", || {
        pool.replication_status()[0].replay_lag_bytes == Some(0)
    })
    .await;
    let mut served = 0;
    for _ in 0..10 {
        let mut conn = pool.get().await.unwrap();
        if server_port(&mut conn).await == lagging {
            served += 1;
        }
    }
    assert!(served > 0, "the caught-up replica is not used again");
}

#[tokio::test]
async fn a_token_no_replica_reaches_falls_back_to_the_primary_within_the_bound() {
    const BOUND: Duration = Duration::from_millis(200);
    let cluster = LocalCluster::start(2).await.unwrap();
    create_table(&cluster, "CREATE TABLE unreachable_token (id INT)").await;
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .causal_wait(BOUND)
        .build()
        .await
        .unwrap();
    cluster.pause_replay(0).await.unwrap();
    cluster.pause_replay(1).await.unwrap();
    let token = {
        let mut writer = pool.get().await.unwrap();
        diesel::sql_query("INSERT INTO unreachable_token VALUES (1)")
            .execute(&mut writer)
            .await
            .unwrap();
        writer.causal_token().await.unwrap().unwrap()
    };
    let before = pool.stats();
    let started = Instant::now();
    let mut reader = tokio::time::timeout(WAIT, pool.get_after(&token))
        .await
        .expect("get_after hung")
        .unwrap();
    let waited = started.elapsed();
    eprintln!("fell back after {waited:?}");
    // The wait is bounded by `causal_wait` (200 ms), not by anything longer: 2 s of
    // slack for a loaded machine, still far below the 10 s outer timeout.
    assert!(
        waited < BOUND + Duration::from_secs(2),
        "get_after waited {waited:?}, past its {BOUND:?} bound"
    );
    let after = pool.stats();
    assert_eq!(
        (
            after.causal_reads(CausalOutcome::Primary)
                - before.causal_reads(CausalOutcome::Primary),
            after.causal_reads(CausalOutcome::Monitor)
                - before.causal_reads(CausalOutcome::Monitor),
            after.causal_reads(CausalOutcome::Checked)
                - before.causal_reads(CausalOutcome::Checked),
        ),
        (1, 0, 0),
        "the read is counted as a primary fallback, and only as that"
    );
    assert_eq!(reader.target(), Target::Primary);
    assert_eq!(
        server_port(&mut reader).await,
        port_of(&cluster.primary_url())
    );
    cluster.resume_replay(0).await.unwrap();
    cluster.resume_replay(1).await.unwrap();
}

#[tokio::test]
async fn wait_for_replication_is_false_while_a_replica_is_paused_and_true_after() {
    let cluster = LocalCluster::start(2).await.unwrap();
    create_table(&cluster, "CREATE TABLE waited (id INT)").await;
    let pool = pool(&cluster).await;
    assert!(pool.wait_for_replication(WAIT).await);
    cluster.pause_replay(1).await.unwrap();
    admin(&cluster.primary_url())
        .await
        .batch_execute("INSERT INTO waited VALUES (1)")
        .await
        .unwrap();
    assert!(!pool.wait_for_replication(Duration::from_millis(300)).await);
    cluster.resume_replay(1).await.unwrap();
    assert!(pool.wait_for_replication(WAIT).await);
}

#[tokio::test]
async fn a_session_reads_from_the_primary_within_its_window_after_a_write() {
    let cluster = LocalCluster::start(1).await.unwrap();
    create_table(&cluster, "CREATE TABLE session_rows (id INT)").await;
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .session_window(Duration::from_millis(400))
        .build()
        .await
        .unwrap();
    cluster.pause_replay(0).await.unwrap();
    {
        let mut conn = pool.get_for_session("user-42").await.unwrap();
        assert_eq!(conn.target(), Target::Replica);
        diesel::sql_query("INSERT INTO session_rows VALUES (1)")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let mut same_user = pool.get_for_session("user-42").await.unwrap();
    assert_eq!(
        same_user.target(),
        Target::Primary,
        "the writer's next read must see its write"
    );
    let found: Found = diesel::sql_query("SELECT count(*) AS n FROM session_rows")
        .get_result(&mut same_user)
        .await
        .unwrap();
    assert_eq!(found.n, 1);
    let other_user = pool.get_for_session("user-7").await.unwrap();
    assert_eq!(other_user.target(), Target::Replica);
    drop((same_user, other_user));
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        pool.get_for_session("user-42").await.unwrap().target(),
        Target::Replica,
        "the window ends"
    );
    assert_eq!(pool.stats().session_window_reads(), 1);
    cluster.resume_replay(0).await.unwrap();
}

#[tokio::test]
async fn a_promoted_replica_stops_being_used_as_a_replica() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let pool = pool(&cluster).await;
    let promoted = port_of(&cluster.replica_url(1).unwrap());
    until("replicas measured", || {
        pool.replication_status().iter().all(|r| r.healthy)
    })
    .await;
    cluster.promote_replica(1).await.unwrap();
    until("promotion noticed", || {
        !pool.replication_status()[1].in_recovery
    })
    .await;
    for _ in 0..10 {
        let mut conn = pool.get().await.unwrap();
        assert_ne!(
            server_port(&mut conn).await,
            promoted,
            "a promoted node served a replica read"
        );
    }
}
