//! How fast a `nodes(urls)` pool follows a Patroni-managed cluster (3 members,
//! synchronous mode) through a planned switchover and an unplanned failover
//! (SIGKILL of the leader's Patroni and PostgreSQL), under one writer and four
//! readers: the time from Patroni naming the new leader to the first acknowledged
//! write on it, and the writes and reads that failed meanwhile. Three ways of
//! following: SQL polling every 100 ms, SQL polling every 1 s, Patroni's REST API.
//!
//! ```text
//! cargo run --release --features testing,patroni --example failover_timing
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Integer};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use diesel_rwsplit::testing::PatroniCluster;
use diesel_rwsplit::SwitchablePool;

#[derive(QueryableByName)]
struct Ran {
    #[diesel(sql_type = Integer)]
    port: i32,
}

#[derive(Default)]
struct Load {
    acked: Vec<(i32, Instant)>,
    failed_writes: usize,
    reads: usize,
    failed_reads: usize,
}

#[derive(Clone, Copy)]
enum Follow {
    Sql(Duration),
    Rest,
}

impl std::fmt::Display for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Follow::Sql(every) => write!(f, "SQL polling every {every:?}"),
            Follow::Rest => f.write_str("Patroni REST API (every 200 ms)"),
        }
    }
}

fn port_of(url: &str) -> i32 {
    url.rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

async fn run(follow: Follow, failover: bool) -> Result<String, Box<dyn std::error::Error>> {
    let cluster = PatroniCluster::builder()
        .members(3)
        .synchronous_mode(true)
        .start()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster
        .cluster_status()
        .await?
        .members
        .iter()
        .any(|m| m.role == "sync_standby")
    {
        if Instant::now() > deadline {
            return Err("no synchronous standby".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = cluster.leader().await?.ok_or("no leader")?;
    let (client, connection) =
        tokio_postgres::connect(&cluster.member_url(leader)?, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE timing (id BIGINT PRIMARY KEY)")
        .await?;
    let mut builder = SwitchablePool::<diesel_async::AsyncPgConnection>::builder()
        .nodes(cluster.member_urls())
        .primary_checkout_timeout(Duration::from_secs(60));
    builder = match follow {
        Follow::Sql(every) => builder.monitor_interval(every),
        Follow::Rest => builder.patroni(cluster.rest_urls()),
    };
    let pool = builder.build().await?;

    let stop = Arc::new(AtomicBool::new(false));
    let load: Arc<Mutex<Load>> = Arc::default();
    let mut tasks = Vec::new();
    {
        let (pool, stop, load) = (pool.clone(), stop.clone(), load.clone());
        tasks.push(tokio::spawn(async move {
            let mut id = 0i64;
            while !AtomicBool::load(&stop, Ordering::Acquire) {
                id += 1;
                let result = async {
                    let mut conn = pool.get().await.ok()?;
                    diesel::sql_query(
                        "INSERT INTO timing (id) VALUES ($1) RETURNING inet_server_port() AS port",
                    )
                    .bind::<BigInt, _>(id)
                    .get_result::<Ran>(&mut conn)
                    .await
                    .ok()
                }
                .await;
                {
                    let mut load = load.lock().unwrap();
                    match result {
                        Some(ran) => load.acked.push((ran.port, Instant::now())),
                        None => load.failed_writes += 1,
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
                    diesel::sql_query("SELECT count(*)::int AS port FROM timing")
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
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = if failover {
        cluster.kill_leader().await?
    } else {
        cluster.switchover(None).await?;
        leader
    };
    let (new_leader, named_at) = cluster
        .wait_for_leader(Duration::from_secs(90), Some(old))
        .await?;
    let new_port = port_of(&cluster.member_url(new_leader)?);
    let first_write = loop {
        let found = load
            .lock()
            .unwrap()
            .acked
            .iter()
            .find(|(port, at)| *port == new_port && *at >= named_at)
            .map(|(_, at)| *at);
        if let Some(at) = found {
            break at;
        }
        if named_at.elapsed() > Duration::from_secs(60) {
            return Err("no write on the new leader within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.store(true, Ordering::Release);
    for task in tasks {
        task.await?;
    }
    let load = load.lock().unwrap();
    Ok(format!(
        "| {} | {follow} | {:.0} ms | {:.1} s | {} of {} | {} of {} |",
        if failover { "failover" } else { "switchover" },
        first_write
            .saturating_duration_since(named_at)
            .as_secs_f64()
            * 1000.0,
        pool.stats()
            .last_primary_gap()
            .unwrap_or_default()
            .as_secs_f64(),
        load.failed_writes,
        load.failed_writes + load.acked.len(),
        load.failed_reads,
        load.reads,
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    for failover in [false, true] {
        for follow in [
            Follow::Sql(Duration::from_millis(100)),
            Follow::Sql(Duration::from_secs(1)),
            Follow::Rest,
        ] {
            let row = run(follow, failover).await?;
            eprintln!("{row}");
            rows.push(row);
        }
    }
    println!("| event | following | named → first write on it | writers without a primary | failed writes | failed reads |");
    println!("|---|---|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
