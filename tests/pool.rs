//! `SwitchablePool`: balancing, health, ejection, fallback, read retry.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{admin, create_table, port_of, server_port, shared_cluster, WAIT};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{Balance, Error, SwitchablePool, Target};

fn builder(cluster: &LocalCluster) -> diesel_rwsplit::SwitchablePoolBuilder {
    SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .replica_connect_timeout(Duration::from_millis(500))
        .replica_checkout_timeout(Duration::from_millis(800))
        .ejection_backoff(Duration::from_millis(100), Duration::from_millis(400))
        .monitor_interval(Duration::from_millis(50))
}

async fn reads_per_port(pool: &SwitchablePool, n: usize) -> HashMap<i32, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let mut conn = pool.get().await.unwrap();
        *seen.entry(server_port(&mut conn).await).or_default() += 1;
        assert_eq!(conn.target(), Target::Replica);
    }
    seen
}

#[tokio::test]
async fn round_robin_alternates_and_weighted_follows_the_weights() {
    let cluster = shared_cluster();
    let ports: Vec<i32> = cluster.replica_urls().iter().map(|u| port_of(u)).collect();

    let pool = builder(cluster).build().await.unwrap();
    let seen = reads_per_port(&pool, 20).await;
    assert_eq!(seen.get(&ports[0]), Some(&10), "{seen:?}");
    assert_eq!(seen.get(&ports[1]), Some(&10), "{seen:?}");

    let pool = builder(cluster)
        .balance(Balance::Weighted(vec![3, 1]))
        .build()
        .await
        .unwrap();
    let seen = reads_per_port(&pool, 400).await;
    let heavy = *seen.get(&ports[0]).unwrap_or(&0) as f64 / 400.0;
    // Expected 0.75; the bound is many standard deviations (0.022) wide.
    assert!(
        (0.6..0.9).contains(&heavy),
        "weighted share {heavy}: {seen:?}"
    );
    assert_eq!(seen.len(), 2, "both replicas serve: {seen:?}");

    let pool = builder(cluster)
        .balance(Balance::Weighted(vec![1, 0]))
        .build()
        .await
        .unwrap();
    assert_eq!(reads_per_port(&pool, 30).await.get(&ports[0]), Some(&30));

    let pool = builder(cluster)
        .balance(Balance::Random)
        .build()
        .await
        .unwrap();
    let seen = reads_per_port(&pool, 200).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|n| *n > 50), "{seen:?}");
}

#[tokio::test]
async fn least_outstanding_picks_the_idler_replica() {
    let cluster = shared_cluster();
    let pool = builder(cluster)
        .balance(Balance::LeastOutstanding)
        .build()
        .await
        .unwrap();
    let mut held = pool.get().await.unwrap();
    let busy = server_port(&mut held).await;
    for _ in 0..5 {
        let mut conn = pool.get().await.unwrap();
        assert_ne!(
            server_port(&mut conn).await,
            busy,
            "picked the replica that already has a checkout"
        );
    }
    drop(held);
}

#[tokio::test]
async fn stopping_a_replica_under_concurrent_reads_fails_none_and_it_comes_back() {
    let cluster = LocalCluster::start(2).await.unwrap();
    create_table(&cluster, "CREATE TABLE pool_load (id INT PRIMARY KEY); INSERT INTO pool_load SELECT generate_series(1, 100)").await;
    let pool = builder(&cluster)
        .replica_max_size(16)
        .build()
        .await
        .unwrap();
    let victim = port_of(&cluster.replica_url(0).unwrap());
    let (workers, reads) = (16, 12);

    // A read that the victim serves sleeps 5 s: it can only end early by the stop,
    // so every one seen running when the stop comes is provably in flight. Reads on
    // the other replica take 10 ms.
    let sql = format!(
        "SELECT count(*) AS n FROM pool_load, \
         pg_sleep(CASE WHEN inet_server_port() = {victim} THEN 5 ELSE 0.01 END)"
    );
    let readers: Vec<_> = (0..workers)
        .map(|worker| {
            let (pool, sql) = (pool.clone(), sql.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for i in 0..reads {
                    let result = async {
                        let mut conn = pool.get().await?;
                        let n: i64 = diesel::sql_query(&sql)
                            .get_result::<Count>(&mut conn)
                            .await
                            .map_err(|e| Error::InvalidConfig(e.to_string()))?
                            .n;
                        Ok::<_, Error>(n)
                    }
                    .await;
                    match result {
                        Ok(100) => {}
                        other => failures.push(format!("worker {worker} read {i}: {other:?}")),
                    }
                }
                failures
            })
        })
        .collect();
    // Stop it only once reads are running on it.
    let watcher = admin(&cluster.replica_url(0).unwrap()).await;
    let deadline = Instant::now() + WAIT;
    let in_flight = loop {
        let active: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                 AND query LIKE '%FROM pool_load, pg_sleep%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if active >= 8 {
            break active as u64;
        }
        assert!(Instant::now() < deadline, "no reads running on the victim");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drop(watcher);
    cluster.stop_replica(0).await.unwrap();
    let mut failures = Vec::new();
    for reader in readers {
        failures.extend(reader.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of {} reads failed: {failures:#?}",
        failures.len(),
        workers * reads
    );
    let stats = pool.stats();
    assert!(
        stats.ejections().0 >= 1,
        "the stopped replica was not ejected: {stats:?}"
    );
    assert_eq!(pool.replica_admitted(), [false, true]);
    eprintln!(
        "{in_flight} reads in flight at the stop; read retries: {}",
        stats.read_retries()
    );
    assert!(
        stats.read_retries() >= in_flight,
        "the {in_flight} reads in flight on the stopped replica were not all retried: {stats:?}"
    );

    // Started again, it is probed, re-admitted and serves reads.
    cluster.start_replica(0).await.unwrap();
    let deadline = Instant::now() + WAIT;
    // Re-admitted by the pool's probe, and seen healthy again by the lag monitor.
    while pool.replica_admitted() != [true, true] || !pool.replication_status()[0].healthy {
        assert!(Instant::now() < deadline, "not re-admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pool.stats().ejections().1 >= 1);
    let seen = reads_per_port(&pool, 10).await;
    assert!(
        seen.contains_key(&victim),
        "the re-admitted replica serves no reads: {seen:?}"
    );
}

#[derive(diesel::QueryableByName, Debug)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[tokio::test]
async fn a_frozen_replica_does_not_hold_reads_past_the_timeout() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let pool = builder(&cluster).build().await.unwrap();
    // Warm both replicas so the frozen one has idle pooled connections too.
    reads_per_port(&pool, 4).await;
    cluster.freeze_replica(0).await.unwrap();
    let frozen = port_of(&cluster.replica_url(0).unwrap());
    for _ in 0..6 {
        let started = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut conn = pool.get().await.unwrap();
            server_port(&mut conn).await
        })
        .await
        .expect("a read hung on the frozen replica");
        assert_ne!(read, frozen);
        eprintln!("read served by port {read} in {:?}", started.elapsed());
    }
    assert!(
        !pool.replica_admitted()[0],
        "the frozen replica stays ejected"
    );
    cluster.thaw_replica(0).await.unwrap();
}

#[tokio::test]
async fn with_every_replica_down_reads_go_to_the_primary_or_fail_typed() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let pool = builder(&cluster).build().await.unwrap();
    let strict = builder(&cluster)
        .fallback_to_primary(false)
        .build()
        .await
        .unwrap();
    cluster.stop_replica(0).await.unwrap();
    cluster.stop_replica(1).await.unwrap();

    let primary_port = port_of(&cluster.primary_url());
    for _ in 0..3 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.target(), Target::Primary);
        assert_eq!(server_port(&mut conn).await, primary_port);
    }
    assert_eq!(pool.stats().replica_fallbacks(), 3);
    assert_eq!(
        pool.stats().total_switches(),
        0,
        "a fallback is not an interlock flip"
    );

    let err = strict.get().await.unwrap_err();
    assert!(
        matches!(err, Error::NoReplicaAvailable { replicas: 2 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn replica_statement_timeout_applies_to_replica_sessions_only() {
    let cluster = shared_cluster();
    let pool = builder(cluster)
        .replica_statement_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let err = diesel::sql_query("SELECT pg_sleep(2)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    let mut primary = pool.get_primary().await.unwrap();
    diesel::sql_query("SELECT pg_sleep(0.3)")
        .execute(&mut primary)
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_configurations_are_typed_errors_naming_the_node() {
    let cluster = shared_cluster();
    let err = builder(cluster)
        .replica_max_size(0)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    let err = builder(cluster)
        .balance(Balance::Weighted(vec![1]))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    let started = Instant::now();
    let err = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(["postgres://u:pw@127.0.0.1:1/db"])
        .build()
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(&err, Error::Node { node, .. } if node == "replica1 (127.0.0.1:1)"),
        "{err:?}"
    );
    assert!(!format!("{err:?}").contains("pw"));
}
