//! `SwitchablePool<AsyncMysqlConnection>` on MariaDB: balancing, ejection and
//! re-admission, read retry, a frozen replica, fallback to the primary, replica
//! statement timeouts. Where each read ran is checked with `@@port` and the nodes'
//! own general query logs.

mod maria;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use diesel_rwsplit::{Balance, Error, Target};
use maria::{builder, calls_per_node, connect, port_of, setup, start, until, Count, Pool, WAIT};
use mysql_async::prelude::Queryable;

async fn reads_per_port(pool: &Pool, n: usize) -> HashMap<u16, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let mut conn = pool.get().await.unwrap();
        *seen.entry(port_of(&mut conn).await).or_default() += 1;
        assert_eq!(conn.target(), Target::Replica);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates_and_least_outstanding_picks_the_idler_replica() {
    let cluster = start(2).await;
    setup(&cluster, "CREATE TABLE pool_rr (id INT)").await;
    let ports = [
        cluster.replica_port(0).unwrap(),
        cluster.replica_port(1).unwrap(),
    ];

    let pool = builder(&cluster).build().await.unwrap();
    for _ in 0..20 {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SELECT COUNT(*) AS n FROM pool_rr")
            .get_result::<Count>(&mut conn)
            .await
            .unwrap();
    }
    // Each node's own log: 10 reads on each replica, none on the primary.
    assert_eq!(
        calls_per_node(&cluster, "SELECT", "pool_rr").await,
        [0, 10, 10]
    );
    let seen = reads_per_port(&pool, 20).await;
    assert_eq!(seen.get(&ports[0]), Some(&10), "{seen:?}");
    assert_eq!(seen.get(&ports[1]), Some(&10), "{seen:?}");

    let pool = builder(&cluster)
        .balance(Balance::LeastOutstanding)
        .build()
        .await
        .unwrap();
    let mut held = pool.get().await.unwrap();
    let busy = port_of(&mut held).await;
    for _ in 0..5 {
        let mut conn = pool.get().await.unwrap();
        assert_ne!(
            port_of(&mut conn).await,
            busy,
            "picked the replica with a checkout"
        );
    }
    drop(held);
    let pool = builder(&cluster)
        .balance(Balance::Weighted(vec![0, 1]))
        .build()
        .await
        .unwrap();
    assert_eq!(reads_per_port(&pool, 10).await.get(&ports[1]), Some(&10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_is_ejected_and_readmitted_after_it_starts() {
    let cluster = start(2).await;
    // The lag monitor polls once an hour: were it to see the stopped replica first,
    // routing would skip it without trying it, and so without ejecting it (a
    // pooled session found dead does not eject; a refused connect does). Here the
    // pool's own checkouts must find out.
    let pool = builder(&cluster)
        .monitor_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let (victim, other) = (
        cluster.replica_port(0).unwrap(),
        cluster.replica_port(1).unwrap(),
    );
    reads_per_port(&pool, 4).await; // idle pooled sessions on both
    cluster.stop_replica(0).await.unwrap();
    for _ in 0..6 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(
            port_of(&mut conn).await,
            other,
            "reads go to the replica that is up"
        );
    }
    until("the stopped replica is ejected", || {
        pool.replica_admitted() == [false, true]
    })
    .await;
    assert!(pool.stats().ejections().0 >= 1);
    assert_eq!(pool.stats().replica_fallbacks(), 0);

    cluster.start_replica(0).await.unwrap();
    until("re-admitted by the pool's probe", || {
        pool.replica_admitted() == [true, true]
    })
    .await;
    assert!(pool.stats().ejections().1 >= 1);
    let seen = reads_per_port(&pool, 6).await;
    assert!(
        seen.contains_key(&victim),
        "the re-admitted replica serves no reads: {seen:?}"
    );
}

/// Ids of the sessions on the node at `admin_url` running a statement mentioning `needle`.
async fn running(admin_url: &str, needle: &str) -> Vec<u64> {
    let mut conn = connect(admin_url).await;
    let ids: Vec<u64> = conn
        .exec(
            "SELECT ID FROM information_schema.PROCESSLIST \
             WHERE COMMAND IN ('Query', 'Execute') AND INFO LIKE CONCAT('%', ?, '%') \
             AND ID <> CONNECTION_ID()",
            (needle,),
        )
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_in_flight_on_a_replica_that_stops_runs_again_elsewhere() {
    let cluster = start(2).await;
    setup(
        &cluster,
        "CREATE TABLE pool_retry (id INT); INSERT INTO pool_retry VALUES (1), (2), (3)",
    )
    .await;
    let pool = builder(&cluster).build().await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let victim = port_of(&mut conn).await;
    let victim_index = (0..2)
        .find(|i| cluster.replica_port(*i).unwrap() == victim)
        .unwrap();
    // Sleeps 30 s on the victim only: it can only end early by the stop.
    let sql = format!(
        "SELECT COUNT(*) AS n FROM pool_retry WHERE SLEEP(IF(@@port = {victim}, 30, 0)) = 0"
    );
    let read = tokio::spawn(async move {
        let result = diesel::sql_query(sql).get_result::<Count>(&mut conn).await;
        let port = port_of(&mut conn).await;
        (result, port)
    });
    let victim_admin = cluster.replica_admin_url(victim_index).unwrap();
    let deadline = Instant::now() + WAIT;
    while running(&victim_admin, "FROM pool_retry WHERE SLEEP")
        .await
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the read never ran on the victim"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.stop_replica(victim_index).await.unwrap();
    let (result, port) = tokio::time::timeout(WAIT, read).await.unwrap().unwrap();
    assert_eq!(result.unwrap().n, 3, "the read succeeds");
    let survivor = cluster.replica_port(1 - victim_index).unwrap();
    assert_eq!(port, survivor, "served elsewhere");
    let stats = pool.stats();
    assert_eq!(stats.read_retries(), 1);
    assert_eq!(stats.total_switches(), 0, "a retried read is not a flip");
    // The nodes' own logs (the victim is down): the survivor received it once, the
    // primary never.
    let on_primary = maria::calls_on(&cluster.primary_admin_url(), "SELECT", "pool_retry").await;
    let survivor_admin = cluster.replica_admin_url(1 - victim_index).unwrap();
    let on_survivor = maria::calls_on(&survivor_admin, "SELECT", "pool_retry").await;
    assert_eq!((on_primary, on_survivor), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_does_not_hold_reads_past_the_bound() {
    let cluster = start(2).await;
    let pool = builder(&cluster)
        .replica_statement_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    reads_per_port(&pool, 4).await; // idle pooled sessions on both
    let frozen = cluster.replica_port(0).unwrap();
    cluster.freeze_replica(0).await.unwrap();
    for _ in 0..6 {
        let port = tokio::time::timeout(WAIT, async {
            let mut conn = pool.get().await.unwrap();
            port_of(&mut conn).await
        })
        .await
        .expect("a read hung on the frozen replica");
        assert_eq!(port, cluster.replica_port(1).unwrap());
    }
    until("the frozen replica is out of rotation", || {
        !pool.replica_admitted()[0]
    })
    .await;
    cluster.thaw_replica(0).await.unwrap();
    until("the thawed replica is back", || pool.replica_admitted()[0]).await;
    let seen = reads_per_port(&pool, 6).await;
    assert!(seen.contains_key(&frozen), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_down_reads_go_to_the_primary_or_fail_typed() {
    let cluster = start(2).await;
    let pool = builder(&cluster).build().await.unwrap();
    let strict = builder(&cluster)
        .fallback_to_primary(false)
        .build()
        .await
        .unwrap();
    cluster.stop_replica(0).await.unwrap();
    cluster.stop_replica(1).await.unwrap();
    for _ in 0..3 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.target(), Target::Primary);
        assert_eq!(port_of(&mut conn).await, cluster.primary_port());
    }
    assert_eq!(pool.stats().replica_fallbacks(), 3);
    assert_eq!(pool.stats().total_switches(), 0, "a fallback is not a flip");
    let err = strict.get().await.unwrap_err();
    assert!(
        matches!(err, Error::NoReplicaAvailable { replicas: 2 }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_statement_timeout_stops_a_long_read_on_the_replica_only() {
    let cluster = start(1).await;
    let pool = builder(&cluster)
        .replica_statement_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    assert_eq!(port_of(&mut conn).await, cluster.replica_port(0).unwrap());
    let err =
        diesel::sql_query("SELECT CAST(SLEEP(5) AS SIGNED) AS n FROM (SELECT 1) AS pool_timeout")
            .load::<Count>(&mut conn)
            .await
            .unwrap_err();
    assert!(err.to_string().contains("max_statement_time"), "{err:?}");
    assert_eq!(conn.target(), Target::Replica);
    drop(conn);
    let stats = pool.stats();
    assert_eq!(stats.read_retries(), 0, "a timed-out read is not retried");
    // The nodes' own logs: it ran on the replica once, never on the primary.
    assert_eq!(
        calls_per_node(&cluster, "SELECT", "pool_timeout").await,
        [0, 1]
    );
    assert!(
        pool.replica_admitted()[0],
        "a statement timeout is not the replica's failure"
    );
    // Primary sessions have no such limit.
    let mut primary = pool.get_primary().await.unwrap();
    let rows: Vec<Count> =
        diesel::sql_query("SELECT CAST(SLEEP(1.5) AS SIGNED) AS n FROM (SELECT 1) AS pool_untimed")
            .load(&mut primary)
            .await
            .unwrap();
    assert_eq!(rows, [Count { n: 0 }], "SLEEP ran to its end");
    assert_eq!(port_of(&mut primary).await, cluster.primary_port());
}

/// `(node admin URL, session id)` of every session of the application account
/// running a statement mentioning `needle`, on every node of `cluster`.
async fn running_anywhere(
    cluster: &diesel_rwsplit::testing::MariaCluster,
    needle: &str,
) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for url in maria::admin_urls(cluster) {
        for id in running(&url, needle).await {
            found.push((url.clone(), id));
        }
    }
    found
}

/// Wait until a session other than those in `seen` runs a statement mentioning
/// `needle` somewhere in `cluster`.
async fn wait_for_runner(
    cluster: &diesel_rwsplit::testing::MariaCluster,
    needle: &str,
    seen: &[(String, u64)],
) -> (String, u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = running_anywhere(cluster, needle)
            .await
            .into_iter()
            .find(|s| !seen.contains(s))
        {
            return found;
        }
        assert!(Instant::now() < deadline, "nothing runs {needle}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn kill(admin_url: &str, id: u64) {
    maria::exec(admin_url, &format!("KILL CONNECTION {id}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_read_runs_again_once_elsewhere_and_a_second_kill_is_returned() {
    let cluster = start(2).await;
    setup(
        &cluster,
        "CREATE TABLE pool_kill (id INT); INSERT INTO pool_kill VALUES (1)",
    )
    .await;
    let pool = builder(&cluster).build().await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let started_on = port_of(&mut conn).await;

    // Once: killed where it runs, it runs again on another node and succeeds
    // there (it sleeps on the first node only).
    let sql = format!(
        "SELECT COUNT(*) AS n FROM pool_kill WHERE SLEEP(IF(@@port = {started_on}, 30, 0)) = 0"
    );
    let read = tokio::spawn(async move {
        let result = diesel::sql_query(sql).get_result::<Count>(&mut conn).await;
        (result, conn)
    });
    let first = wait_for_runner(&cluster, "FROM pool_kill WHERE SLEEP", &[]).await;
    kill(&first.0, first.1).await;
    let (result, mut conn) = tokio::time::timeout(WAIT, read).await.unwrap().unwrap();
    assert_eq!(result.unwrap().n, 1);
    assert_eq!(conn.target(), Target::Replica);
    assert_ne!(port_of(&mut conn).await, started_on, "served elsewhere");
    assert_eq!(pool.stats().read_retries(), 1);
    assert_eq!(pool.stats().total_switches(), 0);

    // Twice: the second failure is returned, and it is not run a third time.
    let read = tokio::spawn(async move {
        let result =
            diesel::sql_query("SELECT COUNT(*) AS n FROM pool_kill WHERE SLEEP(30) = 0 AND id > 0")
                .get_result::<Count>(&mut conn)
                .await;
        (result, conn)
    });
    let first = wait_for_runner(&cluster, "SLEEP(30) = 0 AND id", &[]).await;
    kill(&first.0, first.1).await;
    let second = wait_for_runner(
        &cluster,
        "SLEEP(30) = 0 AND id",
        std::slice::from_ref(&first),
    )
    .await;
    assert_ne!(first.0, second.0, "the retry runs on another node");
    kill(&second.0, second.1).await;
    let (result, conn) = tokio::time::timeout(WAIT, read)
        .await
        .expect("retried a second time")
        .unwrap();
    let error = result.expect_err("the second failure is returned");
    eprintln!("second failure: {error:?}");
    assert_eq!(pool.stats().read_retries(), 2, "once per read");
    drop(conn);
    assert_eq!(running_anywhere(&cluster, "SLEEP(30) = 0 AND id").await, []);
    let runs = calls_per_node(&cluster, "SELECT", "SLEEP(30) = 0 AND id").await;
    assert_eq!(runs.iter().sum::<i64>(), 2, "two runs in all: {runs:?}");
}
