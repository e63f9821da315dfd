//! `SwitchablePool`: balancing, health, ejection, fallback, read retry.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{
    admin, create_table, port_of, server_port, shared_cluster, short_bounds, statement_calls,
    until, WAIT,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{Balance, Error, SwitchablePool, Target};
use futures_util::StreamExt;

fn builder(cluster: &LocalCluster) -> diesel_rwsplit::SwitchablePoolBuilder {
    short_bounds(
        SwitchablePool::<AsyncPgConnection>::builder()
            .primary(cluster.primary_url())
            .replicas(cluster.replica_urls()),
    )
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
    // An unreachable replica does not fail the build: it starts out of rotation.
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(["postgres://u:pw@127.0.0.1:1/db"])
        .build()
        .await
        .unwrap();
    assert_eq!(pool.replica_admitted(), vec![false]);
    // An unreachable primary does, naming it without the password.
    let started = Instant::now();
    let err = SwitchablePool::<AsyncPgConnection>::builder()
        .primary("postgres://u:pw@127.0.0.1:1/db")
        .replicas(cluster.replica_urls())
        .build()
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(&err, Error::Node { node, .. } if node == "primary (127.0.0.1:1)"),
        "{err:?}"
    );
    assert!(!format!("{err:?}").contains("pw"));
    assert!(!err.to_string().contains("pw"));
}

// --- Read retry: what is retried, where, and how often ---

/// `(pg_backend_pid(), inet_server_port())` of the session that answers a read.
async fn backend(conn: &mut diesel_rwsplit::PooledConnection) -> (i32, i32) {
    diesel::select((
        diesel::dsl::sql::<diesel::sql_types::Integer>("pg_backend_pid()"),
        diesel::dsl::sql::<diesel::sql_types::Integer>("inet_server_port()"),
    ))
    .get_result(conn)
    .await
    .unwrap()
}

/// The backend pids on the node at `url` that are sleeping (`pg_sleep`) in a
/// statement mentioning `needle`.
async fn sleepers(url: &str, needle: &str) -> Vec<i32> {
    admin(url)
        .await
        .query(
            "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND wait_event = 'PgSleep' \
             AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
            &[&needle],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Wait until some node of `cluster` has a session sleeping in a statement that
/// mentions `needle`, other than those in `seen`; `(url, pid)` of the first found.
async fn wait_for_sleeper(cluster: &LocalCluster, needle: &str, seen: &[i32]) -> (String, i32) {
    let deadline = Instant::now() + WAIT;
    loop {
        for url in std::iter::once(cluster.primary_url()).chain(cluster.replica_urls()) {
            if let Some(pid) = sleepers(&url, needle)
                .await
                .into_iter()
                .find(|pid| !seen.contains(pid))
            {
                return (url, pid);
            }
        }
        assert!(Instant::now() < deadline, "no session sleeping in {needle}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn terminate(url: &str, pid: i32) {
    let terminated: bool = admin(url)
        .await
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated, "backend {pid} was not there to terminate");
}

/// Whether `error` is a connection lost or terminated by the server, as a read
/// whose backend was killed fails.
fn is_terminated(error: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match error {
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => true,
        Error::DatabaseError(_, info) => info.message().starts_with("terminating connection"),
        _ => false,
    }
}

/// Calls of completed statements mentioning `needle` (an identifier: literals are
/// `$n` in pg_stat_statements) on every node of `cluster`:
/// (primary, replica 1, replica 2, ...).
async fn calls_per_node(cluster: &LocalCluster, verb: &str, needle: &str) -> Vec<i64> {
    let mut calls = Vec::new();
    for url in std::iter::once(cluster.primary_url()).chain(cluster.replica_urls()) {
        calls.push(statement_calls(&url, verb, needle).await);
    }
    calls
}

#[derive(diesel::QueryableByName)]
struct Streamed {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pad: String,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "row {} ({} bytes)", self.n, self.pad.len())
    }
}

#[tokio::test]
async fn a_read_that_already_returned_rows_is_not_retried() {
    let cluster = shared_cluster();
    let pool = builder(cluster).build().await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let (_, port) = backend(&mut conn).await;
    // Rows 1-4 go out at once (16 kB each: more than the server's 8 kB send buffer,
    // so none is held back); row 5 sleeps, on this replica only, until its backend
    // is terminated. A retry anywhere else would run to the end: 6 rows.
    let sql = format!(
        "SELECT g::bigint AS n, repeat('x', 16384) AS pad \
         FROM generate_series(1, 6) AS pool_streamed(g) \
         WHERE pg_sleep(CASE WHEN g = 5 AND inet_server_port() = {port} THEN 30 ELSE 0 END)::text = ''"
    );
    // Once the server is at row 5, kill the session: rows are already out. (Run
    // beside the read, so that it happens whenever the connection hands the
    // stream over.)
    let killer = tokio::spawn(async move {
        let (url, pid) = wait_for_sleeper(cluster, "pool_streamed", &[]).await;
        assert_eq!(port_of(&url), port, "the read sleeps where it started");
        terminate(&url, pid).await;
    });
    let mut rows = diesel::sql_query(&sql)
        .load_stream::<Streamed>(&mut conn)
        .await
        .unwrap();
    let first = rows.next().await.expect("a first row").unwrap();
    assert_eq!(first.n, 1);
    assert_eq!(first.pad.len(), 16384);
    killer.await.unwrap();
    // Up to the first error (a row stream whose connection is gone says so again
    // on every poll, as tokio-postgres' does: it never ends by itself).
    let mut rest = Vec::new();
    while let Some(item) = rows.next().await {
        let failed = item.is_err();
        rest.push(item);
        if failed || rest.len() > 6 {
            break;
        }
    }
    let after = rows.next().await;
    assert!(
        !matches!(after, Some(Ok(_))),
        "a row came after the error: {after:?}"
    );
    drop(rows);
    drop(conn);

    let (last, delivered) = rest.split_last().expect("the stream ends with an error");
    let error = last.as_ref().expect_err("the stream ends with the error");
    assert!(is_terminated(error), "{error:?}");
    let delivered: Vec<i64> = delivered
        .iter()
        .map(|row| row.as_ref().expect("rows before the error").n)
        .collect();
    assert!(
        delivered.iter().copied().eq(2..2 + delivered.len() as i64) && delivered.len() <= 3,
        "after row 1, only rows 2-4 of the killed read, in order: {delivered:?}"
    );
    assert_eq!(
        pool.stats().read_retries(),
        0,
        "a read with rows out was retried"
    );
    // No node ran it to completion: it was not re-run anywhere.
    assert_eq!(
        calls_per_node(cluster, "select", "pool_streamed").await,
        [0, 0, 0]
    );
}

#[derive(diesel::QueryableByName, Debug)]
#[allow(dead_code)] // the read it is for never returns a row
struct Tagged {
    #[diesel(sql_type = diesel::sql_types::Text)]
    tag: String,
}

#[tokio::test]
async fn a_read_that_fails_again_after_its_retry_returns_the_error() {
    let cluster = shared_cluster();
    let pool = builder(cluster).build().await.unwrap();
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    let read = tokio::spawn(async move {
        let result = diesel::sql_query(
            "SELECT pg_sleep(30)::text AS tag FROM (SELECT 1) AS pool_retry_twice",
        )
        .load::<Tagged>(&mut conn)
        .await;
        (result, conn)
    });
    // Kill it where it runs, then kill its retry where that runs.
    let (first_url, first_pid) = wait_for_sleeper(cluster, "pool_retry_twice", &[]).await;
    terminate(&first_url, first_pid).await;
    let (second_url, second_pid) =
        wait_for_sleeper(cluster, "pool_retry_twice", &[first_pid]).await;
    assert_ne!(first_url, second_url, "the retry runs on another node");
    terminate(&second_url, second_pid).await;

    let (result, conn) = tokio::time::timeout(WAIT, read)
        .await
        .expect("the read was retried a second time")
        .unwrap();
    let error = result.expect_err("the second failure is returned");
    assert!(is_terminated(&error), "{error:?}");
    assert_eq!(pool.stats().read_retries(), 1, "retried once only");
    drop(conn);
    for url in std::iter::once(cluster.primary_url()).chain(cluster.replica_urls()) {
        assert_eq!(
            sleepers(&url, "pool_retry_twice").await,
            Vec::<i32>::new(),
            "a third run on {url}"
        );
    }
    assert_eq!(
        calls_per_node(cluster, "select", "pool_retry_twice").await,
        [0, 0, 0],
        "a run completed somewhere"
    );
}

#[tokio::test]
async fn a_read_cancelled_by_a_recovery_conflict_is_retried_on_another_replica() {
    // Its own cluster: standbys cancel conflicting queries at once, and one of them
    // has its replay paused.
    let cluster = LocalCluster::builder()
        .replicas(2)
        .setting("max_standby_streaming_delay", "0")
        .start()
        .await
        .unwrap();
    create_table(
        &cluster,
        "CREATE TABLE pool_conflict (id INT); INSERT INTO pool_conflict SELECT generate_series(1, 10)",
    )
    .await;
    let pool = builder(&cluster).build().await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let (_, victim) = backend(&mut conn).await;
    let ports: Vec<i32> = cluster.replica_urls().iter().map(|u| port_of(u)).collect();
    let victim_index = ports.iter().position(|p| *p == victim).unwrap();
    let other = 1 - victim_index;
    // The other replica does not replay the lock below, so the retry meets no conflict.
    cluster.pause_replay(other).await.unwrap();
    let conflicts = || async {
        admin(&cluster.replica_url(victim_index).unwrap())
            .await
            .query_one(
                "SELECT confl_lock FROM pg_stat_database_conflicts WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let conflicts_before = conflicts().await;

    // A read holding a lock on the table, sleeping on the victim only.
    let sql = format!(
        "SELECT count(*) AS n, inet_server_port() AS port FROM pool_conflict, \
         pg_sleep(CASE WHEN inet_server_port() = {victim} THEN 30 ELSE 0 END)"
    );
    let read = tokio::spawn(async move {
        let result = diesel::sql_query(sql)
            .get_result::<CountAt>(&mut conn)
            .await;
        (result, conn)
    });
    let (url, _) = wait_for_sleeper(&cluster, "FROM pool_conflict", &[]).await;
    assert_eq!(port_of(&url), victim);

    // On the primary, an ACCESS EXCLUSIVE lock: its WAL record (flushed by another
    // session's commit) makes the victim's replay cancel the read (SQLSTATE 40001).
    let locker = admin(&cluster.primary_url()).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE pool_conflict IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    admin(&cluster.primary_url())
        .await
        .batch_execute("CREATE TABLE pool_conflict_flush (id INT)")
        .await
        .unwrap();
    until("the cancelled read is retried", || {
        pool.stats().read_retries() == 1
    })
    .await;
    locker.batch_execute("COMMIT").await.unwrap();

    let (result, mut conn) = tokio::time::timeout(WAIT, read).await.unwrap().unwrap();
    let row = result.unwrap();
    assert_eq!(
        (row.n, row.port),
        (10, ports[other]),
        "served by the other replica"
    );
    assert_eq!(conn.target(), Target::Replica);
    let stats = pool.stats();
    assert_eq!(stats.read_retries(), 1);
    assert_eq!(stats.total_switches(), 0, "a retried read is not a flip");
    assert_eq!(
        stats.ejections().0,
        0,
        "a recovery conflict is not the replica's failure"
    );
    assert_eq!(server_port(&mut conn).await, ports[other]);
    // The victim's own statistics count the conflict. The cancelled backend reports
    // it when it next flushes its statistics: at once when its session ends, so
    // close the pool's sessions first.
    drop(conn);
    drop(pool);
    let deadline = Instant::now() + WAIT;
    while conflicts().await <= conflicts_before {
        assert!(
            Instant::now() < deadline,
            "the victim's own statistics show no lock conflict"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.resume_replay(other).await.unwrap();
}

#[derive(diesel::QueryableByName, Debug)]
struct CountAt {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    port: i32,
}

#[tokio::test]
async fn an_execute_whose_session_is_killed_runs_again_on_another_node() {
    let cluster = shared_cluster();
    let pool = builder(cluster).build().await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let (pid, port) = backend(&mut conn).await;
    let sql = format!(
        "SELECT pg_sleep(CASE WHEN inet_server_port() = {port} THEN 30 ELSE 0 END) \
         FROM (SELECT 1) AS pool_execute_retry"
    );
    let run = tokio::spawn(async move {
        let result = diesel::sql_query(sql).execute(&mut conn).await;
        (result, conn)
    });
    let (url, sleeping) = wait_for_sleeper(cluster, "pool_execute_retry", &[]).await;
    assert_eq!(
        (port_of(&url), sleeping),
        (port, pid),
        "it runs where it started"
    );
    terminate(&url, pid).await;

    let (result, mut conn) = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(result.unwrap(), 1, "one row");
    let stats = pool.stats();
    assert_eq!(stats.read_retries(), 1);
    assert_eq!(stats.total_switches(), 0, "a retried read is not a flip");
    assert_eq!(conn.target(), Target::Replica);
    assert_ne!(
        backend(&mut conn).await,
        (pid, port),
        "still the killed session"
    );
    // The nodes' own statistics: it completed once, and not on the killed node.
    let calls = calls_per_node(cluster, "select", "pool_execute_retry").await;
    let victim = 1 + cluster
        .replica_urls()
        .iter()
        .position(|u| port_of(u) == port)
        .unwrap();
    assert_eq!(calls[victim], 0, "{calls:?}");
    assert_eq!(calls.iter().sum::<i64>(), 1, "{calls:?}");
}
