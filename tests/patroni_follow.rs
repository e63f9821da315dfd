//! A pool built with `nodes(urls)` follows a Patroni-managed cluster (3 members,
//! synchronous mode) through a planned switchover and an unplanned failover, under
//! a load of one writer and four readers: no acknowledged write missing on the new
//! leader, at most 1% of reads failed, writes on the new leader within 5 s of
//! Patroni naming it (SQL polling every 500 ms).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Integer};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use diesel_rwsplit::testing::PatroniCluster;
use diesel_rwsplit::SwitchablePool;

use common::{admin, port_of};

#[derive(QueryableByName)]
struct Ran {
    #[diesel(sql_type = Integer)]
    port: i32,
}

/// What the load saw.
#[derive(Default)]
struct Load {
    /// (id, port it ran on, when it was acknowledged)
    acked: Vec<(i64, i32, Instant)>,
    failed_writes: usize,
    reads: usize,
    failed_reads: usize,
}

struct Running {
    stop: Arc<AtomicBool>,
    load: Arc<Mutex<Load>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn start(pool: &SwitchablePool, table: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let load: Arc<Mutex<Load>> = Arc::default();
        let mut tasks = Vec::new();
        {
            let (pool, stop, load) = (pool.clone(), stop.clone(), load.clone());
            tasks.push(tokio::spawn(async move {
                let mut id = 0;
                while !AtomicBool::load(&stop, Ordering::Acquire) {
                    id += 1;
                    let result = async {
                        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                        diesel::sql_query(format!(
                            "INSERT INTO {table} (id) VALUES ($1) RETURNING inet_server_port() AS port"
                        ))
                        .bind::<BigInt, _>(id)
                        .get_result::<Ran>(&mut conn)
                        .await
                        .map_err(|e| e.to_string())
                    }
                    .await;
                    {
                        let mut load = load.lock().unwrap();
                        match result {
                            Ok(ran) => load.acked.push((id, ran.port, Instant::now())),
                            Err(_) => load.failed_writes += 1,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        for _ in 0..4 {
            let (pool, stop, load) = (pool.clone(), stop.clone(), load.clone());
            tasks.push(tokio::spawn(async move {
                while !AtomicBool::load(&stop, Ordering::Acquire) {
                    let ok = async {
                        let mut conn = pool.get().await.ok()?;
                        diesel::sql_query(format!("SELECT count(*)::int AS port FROM {table}"))
                            .get_result::<Ran>(&mut conn)
                            .await
                            .ok()
                    }
                    .await
                    .is_some();
                    {
                        let mut load = load.lock().unwrap();
                        load.reads += 1;
                        load.failed_reads += usize::from(!ok);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Running { stop, load, tasks }
    }

    fn acked_on_since(&self, port: i32, since: Instant) -> Option<Instant> {
        self.load
            .lock()
            .unwrap()
            .acked
            .iter()
            .find(|(_, p, at)| *p == port && *at >= since)
            .map(|(_, _, at)| *at)
    }

    async fn stop(self) -> Load {
        self.stop.store(true, Ordering::Release);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.load)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

async fn cluster_and_pool(
    table: &str,
    rest: bool,
    tag: (&str, &str),
) -> (PatroniCluster, SwitchablePool) {
    let cluster = PatroniCluster::builder()
        .members(3)
        .synchronous_mode(true)
        .tag(2, tag.0, tag.1)
        .start()
        .await
        .unwrap();
    // Synchronous mode fails over only to the synchronous standby: wait for one.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cluster.cluster_status().await.unwrap();
        if status.members.iter().any(|m| m.role == "sync_standby") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no synchronous standby: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = cluster.leader().await.unwrap().unwrap();
    admin(&cluster.member_url(leader).unwrap())
        .await
        .batch_execute(&format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY)"))
        .await
        .unwrap();
    let classifier =
        diesel_rwsplit::classify::Classifier::builder(diesel_rwsplit::classify::Dialect::Postgres)
            .heavy_reads(2, "analytics")
            .build()
            .unwrap();
    let mut builder = SwitchablePool::builder()
        .nodes(cluster.member_urls())
        .classifier(classifier)
        .monitor_interval(Duration::from_millis(500))
        .primary_checkout_timeout(Duration::from_secs(60));
    if rest {
        builder = builder.patroni(cluster.rest_urls());
    }
    let pool = builder.build().await.unwrap();
    (cluster, pool)
}

/// The new leader got writes within 5 s of being named, no acknowledged write is
/// missing on it, and at most 1% of reads failed.
async fn check(
    cluster: &PatroniCluster,
    pool: &SwitchablePool,
    running: Running,
    table: &str,
    new_leader: usize,
    named_at: Instant,
) {
    let new_port = port_of(&cluster.member_url(new_leader).unwrap());
    common::until("a write on the new leader", || {
        running.acked_on_since(new_port, named_at).is_some()
    })
    .await;
    let first_write = running.acked_on_since(new_port, named_at).unwrap();
    let load = running.stop().await;
    let took = first_write.saturating_duration_since(named_at);
    eprintln!(
        "{table}: first write on the new leader {took:?} after Patroni named it; \
         {} writes acked, {} failed; {} reads, {} failed; pool gap {:?}",
        load.acked.len(),
        load.failed_writes,
        load.reads,
        load.failed_reads,
        pool.stats().last_primary_gap()
    );
    assert!(took <= Duration::from_secs(5), "{took:?}");
    let ids: Vec<i64> = load.acked.iter().map(|(id, _, _)| *id).collect();
    let present: i64 = admin(&cluster.member_url(new_leader).unwrap())
        .await
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE id = ANY($1)"),
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        present,
        ids.len() as i64,
        "acknowledged writes missing on the new leader"
    );
    assert!(
        load.failed_reads * 100 <= load.reads,
        "{} of {} reads failed",
        load.failed_reads,
        load.reads
    );
    assert!(pool
        .topology()
        .primary
        .is_some_and(|p| p.contains(&format!(":{new_port}"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_is_followed() {
    switchover("switched", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_is_followed_through_patronis_rest_api() {
    switchover("switched_rest", true).await;
}

async fn switchover(table: &'static str, rest: bool) {
    let (cluster, pool) = cluster_and_pool(table, rest, ("noloadbalance", "true")).await;
    if rest {
        // Patroni tags member 2 `noloadbalance`: it serves no reads.
        let excluded = port_of(&cluster.member_url(2).unwrap());
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..20 {
            let mut conn = pool.get().await.unwrap();
            let ran: Ran = diesel::sql_query("SELECT inet_server_port() AS port")
                .get_result(&mut conn)
                .await
                .unwrap();
            assert_ne!(ran.port, excluded, "a noloadbalance member served a read");
        }
    }
    let running = Running::start(&pool, table);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = cluster.leader().await.unwrap().unwrap();
    cluster.switchover(None).await.unwrap();
    let (new_leader, named_at) = cluster
        .wait_for_leader(Duration::from_secs(30), Some(old))
        .await
        .unwrap();
    check(&cluster, &pool, running, table, new_leader, named_at).await;
    assert!(pool.stats().topology_changes() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplanned_failover_is_followed_and_the_old_leader_serves_reads_again() {
    failover("failed_over", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplanned_failover_is_followed_through_patronis_rest_api() {
    failover("failed_over_rest", true).await;
}

async fn failover(table: &'static str, rest: bool) {
    let (cluster, pool) = cluster_and_pool(table, rest, ("group", "analytics")).await;
    if rest && cluster.leader().await.unwrap() != Some(2) {
        // Patroni tags member 2 `group: analytics`: heavy reads go there, light
        // reads to the other replica (the default group first).
        let analytics = port_of(&cluster.member_url(2).unwrap());
        let heavy_sql = "SELECT inet_server_port() AS port FROM pg_class a \
             JOIN pg_class b ON a.oid = b.oid GROUP BY 1";
        // Until Patroni's tags have been read (its first REST answer).
        common::until_async("the group tag applied", || async {
            let Ok(mut conn) = pool.get().await else {
                return false;
            };
            diesel::sql_query(heavy_sql)
                .get_result::<Ran>(&mut conn)
                .await
                .is_ok_and(|ran| ran.port == analytics)
        })
        .await;
        let before = pool.stats().group_reads("analytics");
        for heavy in [true, false, true, false, true, false] {
            let sql = if heavy {
                heavy_sql
            } else {
                "SELECT inet_server_port() AS port"
            };
            let mut conn = pool.get().await.unwrap();
            let ran: Ran = diesel::sql_query(sql).get_result(&mut conn).await.unwrap();
            assert_eq!(
                ran.port == analytics,
                heavy,
                "heavy: {heavy}, ran on {}",
                ran.port
            );
        }
        assert_eq!(pool.stats().group_reads("analytics"), before + 3);
    }
    let running = Running::start(&pool, table);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = cluster.kill_leader().await.unwrap();
    let (new_leader, named_at) = cluster
        .wait_for_leader(Duration::from_secs(60), Some(old))
        .await
        .unwrap();
    check(&cluster, &pool, running, table, new_leader, named_at).await;
    cluster.restart_member(old).await.unwrap();
    cluster
        .wait_member_streaming(old, Duration::from_secs(60))
        .await
        .unwrap();
    if old == 2 {
        // Member 2 is tagged `noloadbalance`: it serves no reads by design.
        return;
    }
    let old_port = port_of(&cluster.member_url(old).unwrap());
    common::until_async("the old leader serves reads", || async {
        let Ok(mut conn) = pool.get().await else {
            return false;
        };
        diesel::sql_query("SELECT inet_server_port() AS port")
            .get_result::<Ran>(&mut conn)
            .await
            .is_ok_and(|ran| ran.port == old_port)
    })
    .await;
}
