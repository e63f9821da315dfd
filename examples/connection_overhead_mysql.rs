//! Overhead of `SwitchableConnection<AsyncMysqlConnection>` on the read path.
//!
//! ```text
//! cargo run --release --features testing,mysql --example connection_overhead_mysql \
//!     [-- ROUNDS QUERIES_PER_ROUND]
//! ```
//!
//! The MySQL / MariaDB counterpart of `connection_overhead`: one replica of a local
//! `MariaCluster`, one connection each: a plain `AsyncMysqlConnection`, a
//! `SwitchableConnection` from a default `SwitchablePool` (read retry on: every
//! replica read is rendered to owned SQL + binds so that it can be re-run, and its
//! rows are collected before they are yielded), one from a pool with
//! `read_retry(false)`, and the plain connection checked out of an ordinary bb8 pool
//! (a control), all reading a row by primary key with the typed DSL and with
//! `sql_query`. The variants run interleaved, round after round, so machine noise
//! hits them alike; the report gives the median throughput of each and the
//! switchable/plain ratios.
//!
//! `RWSPLIT_OVERHEAD_ONLY=variant:count` (variants `plain`, `switchable`, `no-retry`,
//! `pooled`) runs one variant `count` typed reads after the set-up and exits, for
//! instruction counts (see BENCHMARKS.md).

use std::time::Instant;

use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};
use diesel_rwsplit::testing::MariaCluster;
use diesel_rwsplit::{SwitchablePool, Target};

diesel::table! {
    bench_kv (id) {
        id -> Integer,
        v -> Text,
    }
}

/// A typed row of `bench_kv`.
#[derive(Queryable)]
#[allow(dead_code)]
struct Row {
    id: i32,
    v: String,
}

/// The same row, read through `sql_query`.
#[derive(QueryableByName)]
#[allow(dead_code)]
struct RawRow {
    #[diesel(sql_type = Integer)]
    id: i32,
    #[diesel(sql_type = Text)]
    v: String,
}

const KEYS: i32 = 1000;

type TypedQuery =
    diesel::dsl::Limit<diesel::dsl::Filter<bench_kv::table, diesel::dsl::Eq<bench_kv::id, i32>>>;

async fn typed<C>(conn: &mut C, n: usize) -> f64
where
    C: AsyncConnection<Backend = diesel::mysql::Mysql> + Send,
    for<'a> TypedQuery: diesel_async::methods::LoadQuery<'a, C, Row>,
{
    let started = Instant::now();
    for i in 0..n {
        let key = (i as i32 * 7919) % KEYS + 1;
        let row: Row = bench_kv::table
            .filter(bench_kv::id.eq(key))
            .first::<Row>(conn)
            .await
            .unwrap();
        assert_eq!(row.id, key);
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn raw<C>(conn: &mut C, n: usize) -> f64
where
    C: AsyncConnection<Backend = diesel::mysql::Mysql> + Send,
    diesel::query_builder::BoxedSqlQuery<
        'static,
        diesel::mysql::Mysql,
        diesel::query_builder::SqlQuery,
    >: diesel_async::methods::LoadQuery<'static, C, RawRow>,
{
    let started = Instant::now();
    for i in 0..n {
        let key = (i as i32 * 7919) % KEYS + 1;
        let row: RawRow = diesel::sql_query("SELECT id, v FROM bench_kv WHERE id = ?")
            .into_boxed()
            .bind::<Integer, _>(key)
            .get_result(conn)
            .await
            .unwrap();
        assert_eq!(row.id, key);
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = <[usize]>::first(&args).copied().unwrap_or(15);
    let per_round = args.get(1).copied().unwrap_or(2000);

    let cluster = MariaCluster::start(1).await?;
    // The table and its rows, as the application's account on the primary.
    let mut setup = AsyncMysqlConnection::establish(&cluster.primary_url()).await?;
    diesel::sql_query("CREATE TABLE IF NOT EXISTS bench_kv (id INT PRIMARY KEY, v TEXT NOT NULL)")
        .execute(&mut setup)
        .await?;
    let values: Vec<String> = (1..=KEYS).map(|k| format!("({k}, MD5('{k}'))")).collect();
    diesel::sql_query(format!(
        "INSERT IGNORE INTO bench_kv (id, v) VALUES {}",
        values.join(", ")
    ))
    .execute(&mut setup)
    .await?;
    drop(setup);
    cluster
        .wait_for_replicas(std::time::Duration::from_secs(20))
        .await?;

    let replica_url = cluster.replica_url(0)?;
    let mut plain = AsyncMysqlConnection::establish(&replica_url).await?;
    let pool = SwitchablePool::<AsyncMysqlConnection>::builder()
        .primary(cluster.primary_url())
        .replicas([replica_url.clone()])
        .replica_max_size(1)
        .build()
        .await?;
    let mut switchable = pool.get().await?;
    let no_retry_pool = SwitchablePool::<AsyncMysqlConnection>::builder()
        .primary(cluster.primary_url())
        .replicas([replica_url.clone()])
        .replica_max_size(1)
        .read_retry(false)
        .build()
        .await?;
    let mut no_retry = no_retry_pool.get().await?;
    // Control: the same plain connection, but checked out of an ordinary bb8 pool
    // (what a diesel-async service uses today), to separate pool costs from ours.
    let bb8_pool = bb8::Pool::builder()
        .max_size(1)
        .build(
            diesel_async::pooled_connection::AsyncDieselConnectionManager::<
                AsyncMysqlConnection,
            >::new(replica_url),
        )
        .await?;
    let mut pooled_plain = bb8_pool.get().await?;

    // Warm all: connections, prepared-statement caches, the verdict cache.
    typed(&mut plain, 200).await;
    typed(&mut switchable, 200).await;
    typed(&mut no_retry, 200).await;
    raw(&mut plain, 200).await;
    raw(&mut switchable, 200).await;
    raw(&mut no_retry, 200).await;
    typed(&mut pooled_plain, 200).await;
    raw(&mut pooled_plain, 200).await;

    // Instruction counting (see BENCHMARKS.md): run one variant N times and exit, so
    // that `valgrind --tool=callgrind` totals can be differenced between two N.
    if let Ok(only) = std::env::var("RWSPLIT_OVERHEAD_ONLY") {
        let (variant, n) = only
            .split_once(':')
            .ok_or("RWSPLIT_OVERHEAD_ONLY=variant:count")?;
        let n: usize = n.parse()?;
        drop((switchable, pooled_plain));
        match variant {
            "plain" => typed(&mut plain, n).await,
            "no-retry" => typed(&mut no_retry, n).await,
            "switchable" => typed(&mut pool.get().await?, n).await,
            "pooled" => typed(&mut bb8_pool.get().await?, n).await,
            other => return Err(format!("unknown variant {other}").into()),
        };
        return Ok(());
    }

    // [typed: plain, switchable, no-retry; raw: plain, switchable, no-retry; pooled typed, pooled raw]
    let mut results: [Vec<f64>; 8] = Default::default();
    for round in 0..rounds {
        // Rotate the order so that none always runs first or last.
        for step in 0..4 {
            match (round + step) % 4 {
                3 => {
                    results[6].push(typed(&mut pooled_plain, per_round).await);
                    results[7].push(raw(&mut pooled_plain, per_round).await);
                }
                0 => {
                    results[0].push(typed(&mut plain, per_round).await);
                    results[3].push(raw(&mut plain, per_round).await);
                }
                1 => {
                    results[1].push(typed(&mut switchable, per_round).await);
                    results[4].push(raw(&mut switchable, per_round).await);
                }
                _ => {
                    results[2].push(typed(&mut no_retry, per_round).await);
                    results[5].push(raw(&mut no_retry, per_round).await);
                }
            }
        }
    }
    assert_eq!(
        switchable.target(),
        Target::Replica,
        "reads must never flip"
    );
    let m: Vec<f64> = results.iter_mut().map(|r| median(r)).collect();
    println!(
        "{rounds} rounds x {per_round} point reads per variant, one MariaDB replica, one connection each"
    );
    println!("| query | plain (q/s) | plain, from a bb8 pool | ratio | switchable, read retry on | ratio | switchable, read retry off | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (label, base, pooled) in [
        ("typed DSL `filter(id.eq(k)).first()`", 0, 6),
        ("`sql_query` with a bind", 3, 7),
    ] {
        let (plain, pooled) = (m[base], m[pooled]);
        let (retry, no_retry) = (m[base + 1], m[base + 2]);
        println!(
            "| {label} | {plain:.0} | {pooled:.0} | {:.3} | {retry:.0} | {:.3} | {no_retry:.0} | {:.3} |",
            pooled / plain,
            retry / plain,
            no_retry / plain
        );
    }
    let stats = pool.stats();
    println!(
        "replica statements: {}, flips: {}",
        stats.statements(Target::Replica),
        stats.total_switches()
    );
    Ok(())
}
