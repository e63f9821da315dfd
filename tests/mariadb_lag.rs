//! Replication lag on MariaDB: the lag monitor's GTID positions, lag limits,
//! `Balance::LeastLag`, `wait_for_replication` and causal tokens, with
//! deterministic lag (`STOP SLAVE SQL_THREAD`). Where each read ran is checked
//! with `@@port`; what a replica has applied, with its own `@@gtid_slave_pos`.

mod maria;

use std::time::Duration;

use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use diesel_rwsplit::{Balance, CausalOutcome, CausalToken, Target};
use maria::{builder, exec, port_of, setup, start, until, Count, WAIT};

async fn write_rows(cluster: &diesel_rwsplit::testing::MariaCluster, table: &str, n: usize) {
    for i in 0..n {
        exec(
            &cluster.primary_admin_url(),
            &format!("INSERT INTO {table} VALUES ({i})"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_measured_in_transactions_and_time_and_a_lagging_replica_is_skipped() {
    let cluster = start(2).await;
    setup(&cluster, "CREATE TABLE lag_rows (id INT)").await;
    let pool = builder(&cluster)
        .max_replica_lag_bytes(0)
        .build()
        .await
        .unwrap();
    until("both replicas measured, caught up", || {
        pool.replication_status()
            .iter()
            .all(|r| r.healthy && r.replay_lag_bytes == Some(0) && r.lag == Some(Duration::ZERO))
    })
    .await;
    let status = pool.replication_status();
    assert!(
        status
            .iter()
            .all(|r| r.in_recovery && r.last_error.is_none()),
        "{status:?}"
    );

    cluster.pause_replication(0).await.unwrap();
    write_rows(&cluster, "lag_rows", 3).await;
    cluster.wait_for_replica(1, WAIT).await.unwrap();
    until("replica1 seen 3 transactions behind", || {
        pool.replication_status()[0].replay_lag_bytes == Some(3)
    })
    .await;
    let first = pool.replication_status()[0].lag.expect("a lag time");
    assert!(first > Duration::ZERO);
    until("its lag time grows", || {
        pool.replication_status()[0]
            .lag
            .is_some_and(|lag| lag > first)
    })
    .await;
    // The replica's own position says the same: it has applied nothing since.
    assert_ne!(
        cluster.replica_gtid(0).await.unwrap(),
        cluster.primary_gtid().await.unwrap()
    );
    let (lagging, caught_up) = (
        cluster.replica_port(0).unwrap(),
        cluster.replica_port(1).unwrap(),
    );
    until("replica2 measured caught up", || {
        pool.replication_status()[1].replay_lag_bytes == Some(0)
    })
    .await;
    for _ in 0..10 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(
            port_of(&mut conn).await,
            caught_up,
            "a lagging replica served a read"
        );
        let count: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM lag_rows")
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(count.n, 3, "served by a replica that has every row");
    }

    // Both behind: the primary serves.
    cluster.pause_replication(1).await.unwrap();
    write_rows(&cluster, "lag_rows", 1).await;
    until("both seen lagging", || {
        pool.replication_status()
            .iter()
            .all(|r| r.replay_lag_bytes.is_some_and(|b| b > 0))
    })
    .await;
    for _ in 0..3 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(port_of(&mut conn).await, cluster.primary_port());
    }
    assert!(pool.stats().replica_fallbacks() >= 3);

    cluster.resume_replication(0).await.unwrap();
    cluster.resume_replication(1).await.unwrap();
    until("both caught up", || {
        pool.replication_status()
            .iter()
            .all(|r| r.replay_lag_bytes == Some(0))
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let mut conn = pool.get().await.unwrap();
        seen.push(port_of(&mut conn).await);
    }
    assert!(
        seen.contains(&lagging),
        "the caught-up replica is used again: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lag_time_takes_a_lagging_replica_out_and_least_lag_prefers_the_freshest() {
    let cluster = start(2).await;
    setup(&cluster, "CREATE TABLE lag_time (id INT)").await;
    let limit = Duration::from_millis(300);
    let pool = builder(&cluster)
        .max_replica_lag(limit)
        .build()
        .await
        .unwrap();
    let least_lag = builder(&cluster)
        .balance(Balance::LeastLag)
        .build()
        .await
        .unwrap();
    until("measured", || {
        pool.replication_status()
            .iter()
            .all(|r| r.replay_lag_bytes == Some(0))
            && least_lag
                .replication_status()
                .iter()
                .all(|r| r.replay_lag_bytes == Some(0))
    })
    .await;
    let (lagging, fresh) = (
        cluster.replica_port(1).unwrap(),
        cluster.replica_port(0).unwrap(),
    );
    cluster.pause_replication(1).await.unwrap();
    write_rows(&cluster, "lag_time", 1).await;
    until("replica2 behind for longer than the limit", || {
        pool.replication_status()[1]
            .lag
            .is_some_and(|lag| lag > limit)
    })
    .await;
    for _ in 0..8 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(port_of(&mut conn).await, fresh, "max_replica_lag");
    }
    until("least-lag pool sees it behind", || {
        least_lag.replication_status()[1]
            .replay_lag_bytes
            .is_some_and(|b| b > 0)
            && least_lag.replication_status()[0].replay_lag_bytes == Some(0)
    })
    .await;
    for _ in 0..8 {
        let mut conn = least_lag.get().await.unwrap();
        assert_eq!(port_of(&mut conn).await, fresh, "LeastLag");
    }
    cluster.resume_replication(1).await.unwrap();
    until("caught up", || {
        pool.replication_status()[1].lag == Some(Duration::ZERO)
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let mut conn = pool.get().await.unwrap();
        seen.push(port_of(&mut conn).await);
    }
    assert!(seen.contains(&lagging), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_replication_is_false_while_a_replica_is_paused_and_true_after() {
    let cluster = start(2).await;
    setup(&cluster, "CREATE TABLE waited (id INT)").await;
    let pool = builder(&cluster).build().await.unwrap();
    assert!(pool.wait_for_replication(WAIT).await);
    cluster.pause_replication(1).await.unwrap();
    write_rows(&cluster, "waited", 1).await;
    assert!(!pool.wait_for_replication(Duration::from_millis(300)).await);
    cluster.resume_replication(1).await.unwrap();
    assert!(pool.wait_for_replication(WAIT).await);
    // The replicas' own positions agree.
    let primary = cluster.primary_gtid().await.unwrap();
    assert_eq!(cluster.replica_gtid(0).await.unwrap(), primary);
    assert_eq!(cluster.replica_gtid(1).await.unwrap(), primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_causal_token_falls_back_to_the_primary_while_paused_and_uses_the_replica_after() {
    let cluster = start(1).await;
    setup(&cluster, "CREATE TABLE causal_rows (id BIGINT PRIMARY KEY)").await;
    let pool = builder(&cluster)
        .causal_wait(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    cluster.pause_replication(0).await.unwrap();
    let token = {
        let mut writer = pool.get().await.unwrap();
        diesel::sql_query("INSERT INTO causal_rows VALUES (?)")
            .bind::<BigInt, _>(7)
            .execute(&mut writer)
            .await
            .unwrap();
        assert_eq!(port_of(&mut writer).await, cluster.primary_port());
        writer
            .causal_token()
            .await
            .unwrap()
            .expect("a unit that wrote has a token")
    };
    // The token travels as text.
    let text = token.to_string();
    assert!(text.starts_with("rw1m."), "{text}");
    let parsed: CausalToken = text.parse().unwrap();
    assert_eq!(parsed, token);
    assert_eq!(parsed.to_string(), text);
    assert!("rw1m.garbage".parse::<CausalToken>().is_err());

    let count = async |conn: &mut maria::Pooled| {
        diesel::sql_query("SELECT COUNT(*) AS n FROM causal_rows WHERE id = 7")
            .get_result::<Count>(conn)
            .await
            .unwrap()
            .n
    };
    let mut reader = tokio::time::timeout(WAIT, pool.get_after(&parsed))
        .await
        .expect("get_after hung")
        .unwrap();
    assert_eq!(reader.target(), Target::Primary);
    assert_eq!(port_of(&mut reader).await, cluster.primary_port());
    assert_eq!(count(&mut reader).await, 1);
    drop(reader);
    let stats = pool.stats();
    assert_eq!(
        (
            stats.causal_reads(CausalOutcome::Primary),
            stats.causal_reads(CausalOutcome::Monitor) + stats.causal_reads(CausalOutcome::Checked)
        ),
        (1, 0)
    );
    // The replica indeed lacks the row.
    assert_eq!(
        maria::scalar(
            &cluster.replica_admin_url(0).unwrap(),
            "SELECT COUNT(*) FROM causal_rows"
        )
        .await,
        0
    );

    cluster.resume_replication(0).await.unwrap();
    cluster.wait_for_replica(0, WAIT).await.unwrap();
    let mut reader = pool.get_after(&parsed).await.unwrap();
    assert_eq!(reader.target(), Target::Replica);
    assert_eq!(port_of(&mut reader).await, cluster.replica_port(0).unwrap());
    assert_eq!(count(&mut reader).await, 1, "the replica shows the write");
    drop(reader);
    let stats = pool.stats();
    assert_eq!(stats.causal_reads(CausalOutcome::Primary), 1);
    assert_eq!(
        stats.causal_reads(CausalOutcome::Monitor) + stats.causal_reads(CausalOutcome::Checked),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_of_work_reads_its_own_writes_while_replicas_lag() {
    let cluster = start(2).await;
    setup(
        &cluster,
        "CREATE TABLE lag_ryw (id BIGINT PRIMARY KEY, note TEXT NOT NULL)",
    )
    .await;
    cluster.pause_replication(0).await.unwrap();
    cluster.pause_replication(1).await.unwrap();
    let pool = builder(&cluster).build().await.unwrap();
    for id in 0..10i64 {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("INSERT INTO lag_ryw VALUES (?, ?)")
            .bind::<BigInt, _>(id)
            .bind::<diesel::sql_types::Text, _>(format!("note {id}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let found: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM lag_ryw WHERE id = ?")
            .bind::<BigInt, _>(id)
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(found.n, 1, "read-your-write on the same connection");
        assert_eq!(port_of(&mut conn).await, cluster.primary_port());
    }
    // A fresh connection reads a (paused) replica and cannot see them: the
    // stickiness above is what made those reads correct.
    let mut fresh = pool.get().await.unwrap();
    let on_replica: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM lag_ryw")
        .get_result(&mut fresh)
        .await
        .unwrap();
    assert_eq!((fresh.target(), on_replica.n), (Target::Replica, 0));
    let port = port_of(&mut fresh).await;
    assert!(
        [
            cluster.replica_port(0).unwrap(),
            cluster.replica_port(1).unwrap()
        ]
        .contains(&port),
        "{port}"
    );
    let primary_reads =
        maria::calls_on(&cluster.primary_admin_url(), "SELECT COUNT", "lag_ryw").await;
    assert_eq!(primary_reads, 10);
    cluster.resume_replication(0).await.unwrap();
    cluster.resume_replication(1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_from_the_primary_within_its_window_after_a_write() {
    let cluster = start(1).await;
    setup(&cluster, "CREATE TABLE lag_session (id INT)").await;
    let pool = builder(&cluster)
        .session_window(Duration::from_millis(400))
        .build()
        .await
        .unwrap();
    cluster.pause_replication(0).await.unwrap();
    {
        let mut conn = pool.get_for_session("user-42").await.unwrap();
        assert_eq!(conn.target(), Target::Replica);
        diesel::sql_query("INSERT INTO lag_session VALUES (1)")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let mut same_user = pool.get_for_session("user-42").await.unwrap();
    assert_eq!(
        same_user.target(),
        Target::Primary,
        "the writer's next read sees its write"
    );
    assert_eq!(port_of(&mut same_user).await, cluster.primary_port());
    let found: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM lag_session")
        .get_result(&mut same_user)
        .await
        .unwrap();
    assert_eq!(found.n, 1);
    let mut other_user = pool.get_for_session("user-7").await.unwrap();
    assert_eq!(
        port_of(&mut other_user).await,
        cluster.replica_port(0).unwrap()
    );
    drop((same_user, other_user));
    assert_eq!(pool.stats().session_window_reads(), 1);
    // The window ends (polled, bounded).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut conn = pool.get_for_session("user-42").await.unwrap();
        if conn.target() == Target::Replica {
            assert_eq!(port_of(&mut conn).await, cluster.replica_port(0).unwrap());
            break;
        }
        drop(conn);
        assert!(
            std::time::Instant::now() < deadline,
            "the window never ends"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.resume_replication(0).await.unwrap();
}
