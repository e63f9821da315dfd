//! Following the cluster with `nodes(urls)`: the pool finds the primary, follows a
//! promotion (the old primary stopped, a replica promoted, the old primary demoted
//! to follow it) under a load of writers and readers, and never runs a write on a
//! member that is not the primary. Checked against the nodes themselves.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::sql_types::{BigInt, Integer};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{rwsplit_error, Error, MemberRole, SwitchablePool, Target};

use common::{admin, port_of, WAIT};

#[derive(QueryableByName)]
struct Ran {
    #[diesel(sql_type = Integer)]
    port: i32,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn members(cluster: &LocalCluster) -> Vec<String> {
    std::iter::once(cluster.primary_url())
        .chain(cluster.replica_urls())
        .collect()
}

async fn pool(cluster: &LocalCluster, checkout: Duration) -> SwitchablePool {
    SwitchablePool::builder()
        .nodes(members(cluster))
        .monitor_interval(Duration::from_millis(100))
        .primary_checkout_timeout(checkout)
        .build()
        .await
        .unwrap()
}

/// Insert `id` through a fresh connection; the port of the node that ran it.
async fn write(pool: &SwitchablePool, table: &str, id: i64) -> Result<i32, String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let ran: Ran = diesel::sql_query(format!(
        "INSERT INTO {table} (id) VALUES ($1) RETURNING inet_server_port() AS port"
    ))
    .bind::<BigInt, _>(id)
    .get_result(&mut conn)
    .await
    .map_err(|e| e.to_string())?;
    assert_eq!(conn.target(), Target::Primary);
    Ok(ran.port)
}

async fn read(pool: &SwitchablePool) -> Result<i32, String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let ran: Ran = diesel::sql_query("SELECT inet_server_port() AS port")
        .get_result(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ran.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_finds_the_primary_and_reads_from_the_others() {
    let cluster = LocalCluster::start(2).await.unwrap();
    admin(&cluster.primary_url())
        .await
        .batch_execute("CREATE TABLE found (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();
    let pool = pool(&cluster, Duration::from_secs(5)).await;
    let topology = pool.topology();
    assert_eq!(topology.members.len(), 3);
    assert!(
        topology
            .primary
            .as_deref()
            .is_some_and(|p| p.starts_with("node1 ")),
        "{topology:?}"
    );
    let primary_port = port_of(&cluster.primary_url());
    assert_eq!(write(&pool, "found", 1).await.unwrap(), primary_port);
    let replica_ports: Vec<i32> = cluster.replica_urls().iter().map(|u| port_of(u)).collect();
    for _ in 0..6 {
        let port = read(&pool).await.unwrap();
        assert!(replica_ports.contains(&port), "read on {port}");
    }
    let roles: Vec<(bool, bool)> = pool
        .replication_status()
        .iter()
        .map(|s| (s.healthy, s.in_recovery))
        .collect();
    assert_eq!(roles, [(true, false), (true, true), (true, true)]);
    assert_eq!(
        pool.stats().topology_changes(),
        0,
        "finding it is not a change"
    );

    // Both-or-neither: nodes() replaces primary() and replicas().
    let both = SwitchablePool::<diesel_async::AsyncPgConnection>::builder()
        .nodes(members(&cluster))
        .primary(cluster.primary_url())
        .build()
        .await;
    assert!(matches!(both, Err(Error::InvalidConfig(_))), "{both:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_is_followed_under_load() {
    let cluster = Arc::new(LocalCluster::start(2).await.unwrap());
    admin(&cluster.primary_url())
        .await
        .batch_execute("CREATE TABLE followed (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();
    let pool = pool(&cluster, Duration::from_secs(20)).await;
    let old_port = port_of(&cluster.primary_url());
    let new_port = port_of(&cluster.replica_urls()[0]);

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(i64, i32)>>> = Arc::default();
    let failed_writes = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (pool, stop, acked, failed) = (
            pool.clone(),
            stop.clone(),
            acked.clone(),
            failed_writes.clone(),
        );
        tokio::spawn(async move {
            let mut id = 0;
            while !AtomicBool::load(&stop, Ordering::Acquire) {
                id += 1;
                match write(&pool, "followed", id).await {
                    Ok(port) => acked.lock().unwrap().push((id, port)),
                    Err(e) => failed.lock().unwrap().push(e),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let reads = Arc::new(Mutex::new((0u32, 0u32)));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (pool, stop, reads) = (pool.clone(), stop.clone(), reads.clone());
            tokio::spawn(async move {
                while !AtomicBool::load(&stop, Ordering::Acquire) {
                    let ok = read(&pool).await.is_ok();
                    {
                        let mut counts = reads.lock().unwrap();
                        counts.0 += 1;
                        counts.1 += u32::from(!ok);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();

    let acked_on = |port: i32| {
        acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| *p == port)
            .count()
    };
    common::until("writes on the old primary", || acked_on(old_port) >= 20).await;
    // The failover: the old primary goes, a replica is promoted, the old primary
    // comes back as a replica of the new one.
    cluster.stop_primary().await.unwrap();
    cluster.promote_replica(0).await.unwrap();
    common::until("writes on the new primary", || acked_on(new_port) >= 20).await;
    cluster.demote_primary(0).await.unwrap();
    common::until_async("the old primary serves reads again", || async {
        read(&pool).await == Ok(old_port)
    })
    .await;
    stop.store(true, Ordering::Release);
    writer.await.unwrap();
    for reader in readers {
        reader.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    // Writes ran on the old primary, then on the new one, never anywhere else, and
    // never on the old one again once the new one took writes.
    let first_new = acked.iter().position(|(_, p)| *p == new_port).unwrap();
    assert!(acked[..first_new].iter().all(|(_, p)| *p == old_port));
    assert!(acked[first_new..].iter().all(|(_, p)| *p == new_port));
    // Every acknowledged write is on the new primary (the old one shut down
    // cleanly, streaming all it had).
    let ids: Vec<i64> = acked.iter().map(|(id, _)| *id).collect();
    let present: i64 = admin(&cluster.replica_urls()[0])
        .await
        .query_one("SELECT count(*) FROM followed WHERE id = ANY($1)", &[&ids])
        .await
        .unwrap()
        .get(0);
    assert_eq!(present, ids.len() as i64, "acknowledged writes lost");
    let (reads, failed_reads) = *reads.lock().unwrap();
    assert!(
        failed_reads * 100 <= reads,
        "{failed_reads} of {reads} reads failed"
    );
    let topology = pool.topology();
    assert!(
        topology
            .primary
            .as_deref()
            .is_some_and(|p| p.starts_with("node2 ")),
        "{topology:?}"
    );
    let stats = pool.stats();
    assert!(stats.topology_changes() >= 1, "{stats:?}");
    let (gaps, _) = stats.primary_gaps();
    assert!(gaps >= 1, "the writers' outage was measured");
    let roles: Vec<MemberRole> = pool.replication_status().iter().map(|s| s.role()).collect();
    assert_eq!(
        roles,
        [
            MemberRole::Replica,
            MemberRole::Primary,
            MemberRole::Replica
        ]
    );
    // A replica read sees every write once it has replayed them (the demoted
    // primary may still be catching up on a loaded machine).
    assert!(pool.wait_for_replication(Duration::from_secs(20)).await);
    let mut count = pool.get().await.unwrap();
    let n: Count = diesel::sql_query("SELECT count(*) AS n FROM followed")
        .get_result(&mut count)
        .await
        .unwrap();
    assert!(n.n >= ids.len() as i64);
    eprintln!(
        "acked {} writes ({} failed meanwhile), {reads} reads ({failed_reads} failed), gap {:?}",
        ids.len(),
        failed_writes.lock().unwrap().len(),
        stats.last_primary_gap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_primary_writes_wait_then_fail_and_reads_go_on() {
    let cluster = LocalCluster::start(1).await.unwrap();
    admin(&cluster.primary_url())
        .await
        .batch_execute("CREATE TABLE orphaned (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();
    let pool = pool(&cluster, Duration::from_secs(1)).await;
    assert_eq!(
        write(&pool, "orphaned", 1).await.unwrap(),
        port_of(&cluster.primary_url())
    );
    cluster.stop_primary().await.unwrap();

    let mut conn = pool.get().await.unwrap();
    let error = diesel::sql_query("INSERT INTO orphaned (id) VALUES (2)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(
        matches!(
            rwsplit_error(&error),
            Some(Error::NoPrimary { members: 2, .. })
        ),
        "{error:?}"
    );
    drop(conn);
    assert_eq!(
        read(&pool).await.unwrap(),
        port_of(&cluster.replica_urls()[0])
    );
    assert!(pool.stats().no_primary_refusals() >= 1);

    cluster.start_primary().await.unwrap();
    let mut wrote = None;
    for id in 3..200 {
        if let Ok(port) = write(&pool, "orphaned", id).await {
            wrote = Some(port);
            break;
        }
    }
    assert_eq!(wrote, Some(port_of(&cluster.primary_url())));
    assert!(pool.stats().last_primary_gap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_url_that_points_at_a_replica_never_hands_out_its_sessions() {
    // A DNS writer endpoint that still resolves to the old primary, now a replica.
    let cluster = LocalCluster::start(1).await.unwrap();
    let pool = SwitchablePool::<diesel_async::AsyncPgConnection>::builder()
        .primary(cluster.replica_urls()[0].clone())
        .primary_checkout_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let error = pool.get_primary().await.err().unwrap();
    assert!(
        matches!(error, Error::PrimaryUnavailable { .. }),
        "{error:?}"
    );
    let sessions: i64 = admin(&cluster.replica_urls()[0])
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND pid <> pg_backend_pid() AND application_name <> 'diesel-rwsplit monitor'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        sessions, 0,
        "read-only sessions are closed at connect, never pooled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_causal_token_from_before_a_promotion_is_honoured_after_it() {
    let cluster = LocalCluster::start(2).await.unwrap();
    admin(&cluster.primary_url())
        .await
        .batch_execute("CREATE TABLE remembered (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();
    let pool = SwitchablePool::builder()
        .nodes(members(&cluster))
        .monitor_interval(Duration::from_millis(100))
        .causal_wait(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    write(&pool, "remembered", 1).await.unwrap();
    conn.switch_to_primary().await.unwrap();
    let token = conn.causal_token().await.unwrap().unwrap();
    drop(conn);

    cluster.stop_primary().await.unwrap();
    cluster.promote_replica(0).await.unwrap();
    cluster.demote_primary(0).await.unwrap();
    common::until("the new primary is followed", || {
        pool.topology()
            .primary
            .is_some_and(|p| p.starts_with("node2 "))
    })
    .await;

    // Every member holds the write: the token is satisfied on the new timeline.
    let mut after = pool.get_after(&token).await.unwrap();
    let n: Count = diesel::sql_query("SELECT count(*) AS n FROM remembered")
        .get_result(&mut after)
        .await
        .unwrap();
    assert_eq!(n.n, 1);
    drop(after);

    // A token past anything any member has (a write lost in an asynchronous
    // failover) cannot hang a read: bounded, then the primary, counted.
    let lost: diesel_rwsplit::CausalToken = "rw1.7fffffff00000000".parse().unwrap();
    let before = pool
        .stats()
        .causal_reads(diesel_rwsplit::CausalOutcome::Primary);
    let started = std::time::Instant::now();
    let mut served = pool.get_after(&lost).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(served.target(), Target::Primary);
    let ran: Ran = diesel::sql_query("SELECT inet_server_port() AS port")
        .get_result(&mut served)
        .await
        .unwrap();
    assert_eq!(
        ran.port,
        port_of(&cluster.replica_urls()[0]),
        "the new primary"
    );
    assert_eq!(
        pool.stats()
            .causal_reads(diesel_rwsplit::CausalOutcome::Primary),
        before + 1
    );
}
