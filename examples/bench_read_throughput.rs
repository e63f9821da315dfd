//! Read throughput through `SwitchablePool` against what users would otherwise
//! deploy: plain connections straight to a replica, and pgpool-II in front of the
//! cluster.
//!
//! ```text
//! cargo run --release --example bench_read_throughput [-- TASKS SECONDS ROUNDS READS_PER_CHECKOUT]
//! bench/pgpool/run.sh [TASKS SECONDS ROUNDS READS_PER_CHECKOUT]   # the same, with pgpool-II
//! ```
//!
//! Defaults: 32 tasks, 5 s per variant and round, 5 rounds, 3 reads per checkout.
//! `RWSPLIT_BENCH_ONLY=i-b,iii` runs only the variants with these labels;
//! `RWSPLIT_NODE_CPUS=0.4` caps each server at that many CPUs (see `support/cpu_cap.rs`).
//! Each task loops: check a connection out of its pool, read READS_PER_CHECKOUT
//! rows by primary key with the typed DSL (`find(id).first()`), give it back. The
//! same diesel-async client code reads
//!
//! - (i) direct: a plain bb8 pool of `AsyncPgConnection`s to replica 1 (size TASKS);
//! - (i-b) direct, both replicas: a plain bb8 pool per replica (TASKS each), taken
//!   in turn (what (iii) does, by hand);
//! - (ii) pgpool-II: a plain bb8 pool (size TASKS) to `PGPOOL_URL`, when set
//!   (`bench/pgpool/run.sh` starts pgpool-II in streaming-replication mode with load
//!   balancing and `backend_weight0 = 0`, so reads go to the replicas only); skipped
//!   otherwise;
//! - (iii) `SwitchablePool`: replica-first connections over both replicas
//!   (`replica_max_size` TASKS, round robin, read retry on, the defaults), reads only:
//!   like for like with (i-b);
//! - (iii-1) the same over replica 1 only: like for like with (i), the same server
//!   and the same number of connections, so that only the client code differs;
//! - (iii-b) (iii) with `read_retry(false)` (reads delegated to the inner connection
//!   instead of being rendered to owned SQL + binds for a possible retry).
//!
//! Every pool keeps bb8's defaults otherwise (test on checkout). The cluster is
//! `PRIMARY_URL` + `REPLICA_URLS` (comma-separated) when set, else a fresh
//! `LocalCluster` with 2 replicas. Pools are built and warmed once; the variants then
//! run interleaved, round after round, in a rotating order; the report gives the
//! median reads/s of each, the ratios, and the benchmark process's own CPU time
//! (user + system, `getrusage`) per read: the client-side cost, which the shared
//! machine's noise does not blur the way it blurs throughput.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::{SwitchablePool, Target};

#[path = "support/cpu_cap.rs"]
mod cpu_cap;

diesel::table! {
    bench_read_items (id) {
        id -> BigInt,
        name -> Text,
        counter -> BigInt,
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;
type PlainPool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;

const ROWS: i64 = 10_000;
const WARMUP: Duration = Duration::from_secs(1);

/// A point read by primary key.
macro_rules! read {
    ($conn:expr, $key:expr) => {
        bench_read_items::table
            .find($key)
            .first::<(i64, String, i64)>($conn)
            .await
            .map(|row| debug_assert_eq!(row.0, $key))
    };
}

/// xorshift64*: per task, no shared state.
struct Rng(u64);

impl Rng {
    fn key(&mut self) -> i64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % ROWS as u64) as i64 + 1
    }
}

enum Variant {
    Direct(PlainPool),
    DirectBoth(Vec<PlainPool>, AtomicUsize),
    Pgpool(PlainPool),
    Switchable(SwitchablePool<AsyncPgConnection>),
    SwitchableOne(SwitchablePool<AsyncPgConnection>),
    SwitchableNoRetry(SwitchablePool<AsyncPgConnection>),
}

impl Variant {
    fn name(&self) -> &'static str {
        match self {
            Variant::Direct(_) => "(i) direct to replica 1",
            Variant::DirectBoth(..) => "(i-b) direct, both replicas in turn",
            Variant::Pgpool(_) => "(ii) pgpool-II",
            Variant::Switchable(_) => "(iii) SwitchablePool, both replicas",
            Variant::SwitchableOne(_) => "(iii-1) SwitchablePool, replica 1 only",
            Variant::SwitchableNoRetry(_) => "(iii-b) SwitchablePool, read_retry(false)",
        }
    }

    /// Check out once and read `keys`.
    async fn request(&self, keys: &[i64]) -> Result<(), Error> {
        let plain = match self {
            Variant::Direct(pool) | Variant::Pgpool(pool) => pool,
            Variant::DirectBoth(pools, next) => {
                &pools[next.fetch_add(1, Ordering::Relaxed) % pools.len()]
            }
            Variant::Switchable(pool)
            | Variant::SwitchableOne(pool)
            | Variant::SwitchableNoRetry(pool) => {
                let mut conn = pool.get().await?;
                for key in keys {
                    read!(&mut conn, *key)?;
                }
                debug_assert_eq!(conn.target(), Target::Replica);
                return Ok(());
            }
        };
        let mut conn = plain.get().await?;
        let conn: &mut AsyncPgConnection = &mut conn;
        for key in keys {
            read!(conn, *key)?;
        }
        Ok(())
    }
}

fn plain_pool(url: &str, size: u32) -> PlainPool {
    bb8::Pool::builder()
        .max_size(size)
        .build_unchecked(AsyncDieselConnectionManager::<AsyncPgConnection>::new(url))
}

/// CPU time (user + system) this process has used so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// What one measurement saw.
struct Measured {
    reads_per_sec: f64,
    /// This process's CPU time per read, in microseconds.
    client_cpu_us: f64,
    errors: u64,
}

/// Reads per second of `tasks` tasks for `run` (after `warmup`), the client CPU
/// per read, and the errors.
async fn measure(
    variant: &Arc<Variant>,
    tasks: usize,
    reads: usize,
    warmup: Duration,
    run: Duration,
    seed: u64,
) -> Measured {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handlers = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let (variant, done, errors, stop) = (
            Arc::clone(variant),
            Arc::clone(&done),
            Arc::clone(&errors),
            Arc::clone(&stop),
        );
        let mut rng = Rng((seed ^ (task as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
        handlers.push(tokio::spawn(async move {
            let mut keys = vec![0; reads];
            while !AtomicBool::load(&stop, Ordering::Relaxed) {
                keys.iter_mut().for_each(|k| *k = rng.key());
                match variant.request(&keys).await {
                    Ok(()) => {
                        done.fetch_add(keys.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("{}: {e}", variant.name());
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    let (from, at, cpu_from) = (
        AtomicU64::load(&done, Ordering::Relaxed),
        Instant::now(),
        process_cpu(),
    );
    tokio::time::sleep(run).await;
    let (to, until, cpu_to) = (
        AtomicU64::load(&done, Ordering::Relaxed),
        Instant::now(),
        process_cpu(),
    );
    stop.store(true, Ordering::Relaxed);
    for handler in handlers {
        let _ = handler.await;
    }
    let reads = (to - from).max(1) as f64;
    Measured {
        reads_per_sec: (to - from) as f64 / (until - at).as_secs_f64(),
        client_cpu_us: (cpu_to - cpu_from).as_secs_f64() * 1e6 / reads,
        errors: AtomicU64::load(&errors, Ordering::Relaxed),
    }
}

/// The `index`th numeric argument. (`RunQueryDsl::first` shadows `slice::first`.)
fn arg(args: &[u64], index: usize) -> Option<u64> {
    args.get(index).copied()
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Create and fill the table on the primary (once), then wait until every replica
/// has all of it.
async fn prepare(primary: &str, replicas: &[String]) -> Result<(), Error> {
    let mut conn = AsyncPgConnection::establish(primary).await?;
    diesel::sql_query("CREATE TABLE IF NOT EXISTS bench_read_items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, counter BIGINT NOT NULL)")
        .execute(&mut conn)
        .await?;
    diesel::sql_query(format!(
        "INSERT INTO bench_read_items SELECT g, md5(g::text), 0 FROM generate_series(1, {ROWS}) g ON CONFLICT DO NOTHING"
    ))
    .execute(&mut conn)
    .await?;
    diesel::sql_query("VACUUM ANALYZE bench_read_items")
        .execute(&mut conn)
        .await?;
    for url in replicas {
        let mut replica = AsyncPgConnection::establish(url).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let rows: Result<i64, _> = bench_read_items::table
                .count()
                .get_result(&mut replica)
                .await;
            if rows.as_ref().is_ok_and(|n| *n >= ROWS) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("replica {url} has not replayed the table: {rows:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// pgpool-II's own view of where SELECTs went (`SHOW pool_nodes`), one line per node.
async fn pool_nodes(url: &str) -> Result<Vec<String>, Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let mut lines = Vec::new();
    for message in client.simple_query("SHOW pool_nodes").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            let field = |name: &str| row.try_get(name).ok().flatten().unwrap_or("?").to_owned();
            lines.push(format!(
                "node {} port {} role {} weight {} select_cnt {}",
                field("node_id"),
                field("port"),
                field("role"),
                field("lb_weight"),
                field("select_cnt")
            ));
        }
    }
    Ok(lines)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let tasks = arg(&args, 0).unwrap_or(32).max(1) as usize;
    let seconds = arg(&args, 1).unwrap_or(5).max(1);
    let rounds = arg(&args, 2).unwrap_or(5).max(1) as usize;
    let reads = arg(&args, 3).unwrap_or(3).max(1) as usize;

    // Keep a cluster we started alive for the whole run.
    let urls = diesel_rwsplit::testing::ClusterUrls::from_env_or_start(2).await?;
    println!("{}", urls.describe());
    let (cluster, primary, replicas) = urls.into_parts();
    let _caps = match &cluster {
        Some(cluster) => cpu_cap::from_env(cluster)?,
        None if std::env::var_os("RWSPLIT_NODE_CPUS").is_some() => {
            return Err("RWSPLIT_NODE_CPUS needs the cluster this example starts itself".into())
        }
        None => Vec::new(),
    };
    if replicas.len() < 2 {
        return Err("this benchmark wants two replicas".into());
    }
    prepare(&primary, &replicas).await?;

    let size = tasks as u32;
    let mut variants = vec![
        Arc::new(Variant::Direct(plain_pool(&replicas[0], size))),
        Arc::new(Variant::DirectBoth(
            replicas.iter().map(|url| plain_pool(url, size)).collect(),
            AtomicUsize::new(0),
        )),
    ];
    let pgpool_url = std::env::var("PGPOOL_URL").ok().filter(|u| !u.is_empty());
    match &pgpool_url {
        Some(url) => variants.push(Arc::new(Variant::Pgpool(plain_pool(url, size)))),
        None => println!(
            "PGPOOL_URL is not set: skipping (ii) pgpool-II (bench/pgpool/run.sh sets it up)"
        ),
    }
    let switchable = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(&primary)
        .replicas(replicas.iter().cloned())
        .primary_max_size(2)
        .replica_max_size(size)
        .build()
        .await?;
    variants.push(Arc::new(Variant::Switchable(switchable.clone())));
    let one = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(&primary)
        .replicas([replicas[0].clone()])
        .primary_max_size(2)
        .replica_max_size(size)
        .build()
        .await?;
    variants.push(Arc::new(Variant::SwitchableOne(one)));
    let no_retry = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(&primary)
        .replicas(replicas.iter().cloned())
        .primary_max_size(2)
        .replica_max_size(size)
        .read_retry(false)
        .build()
        .await?;
    variants.push(Arc::new(Variant::SwitchableNoRetry(no_retry)));

    // `RWSPLIT_BENCH_ONLY=i-b,iii`: only these variants (e.g. to profile one alone).
    if let Ok(only) = std::env::var("RWSPLIT_BENCH_ONLY") {
        let wanted: Vec<String> = only.split(',').map(|l| format!("({})", l.trim())).collect();
        variants.retain(|v| wanted.iter().any(|w| v.name().starts_with(w.as_str())));
        if variants.is_empty() {
            return Err(format!("RWSPLIT_BENCH_ONLY={only} names no variant").into());
        }
    }

    // Warm every pool: connections opened, statements prepared, caches filled.
    for variant in &variants {
        let warm = measure(variant, tasks, reads, Duration::ZERO, WARMUP, 1).await;
        if warm.errors > 0 {
            let errors = warm.errors;
            return Err(format!("{}: {errors} errors while warming up", variant.name()).into());
        }
        println!(
            "warm-up {:<42} {:>8.0} reads/s",
            variant.name(),
            warm.reads_per_sec
        );
    }

    println!(
        "{tasks} tasks, {reads} point reads per checkout, {seconds} s per variant and round, {rounds} rounds, order rotating"
    );
    let mut results: Vec<Vec<f64>> = variants.iter().map(|_| Vec::new()).collect();
    let mut cpu: Vec<Vec<f64>> = variants.iter().map(|_| Vec::new()).collect();
    let mut errors = 0;
    for round in 0..rounds {
        let mut line = format!("round {:>2}:", round + 1);
        for step in 0..variants.len() {
            let index = (round + step) % variants.len();
            let measured = measure(
                &variants[index],
                tasks,
                reads,
                Duration::from_millis(300),
                Duration::from_secs(seconds),
                round as u64 + 7,
            )
            .await;
            errors += measured.errors;
            results[index].push(measured.reads_per_sec);
            cpu[index].push(measured.client_cpu_us);
            line.push_str(&format!(
                "  {} {:.0}",
                variants[index].name().split(' ').next().unwrap_or("?"),
                measured.reads_per_sec
            ));
        }
        println!("{line}");
    }

    let medians: Vec<f64> = results.iter().map(|r| median(r)).collect();
    let median_of = |wanted: fn(&Variant) -> bool| {
        variants
            .iter()
            .position(|v| wanted(v))
            .map_or(f64::NAN, |i| medians[i])
    };
    let direct = median_of(|v| matches!(v, Variant::Direct(_)));
    let direct_both = median_of(|v| matches!(v, Variant::DirectBoth(..)));
    let pgpool = variants
        .iter()
        .position(|v| matches!(**v, Variant::Pgpool(_)))
        .map(|i| medians[i]);
    println!();
    println!("{tasks} tasks, {reads} point reads per checkout, {seconds} s x {rounds} rounds per variant; medians");
    println!("| variant | reads/s (median) | min - max | vs (i) direct, 1 replica | vs (i-b) direct, 2 replicas | vs (ii) pgpool-II | client CPU per read (median) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (((variant, runs), m), cpu) in variants.iter().zip(&results).zip(&medians).zip(&cpu) {
        let min = runs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = runs.iter().copied().fold(0.0, f64::max);
        let vs_pgpool = pgpool.map_or_else(|| "-".to_owned(), |p| format!("{:.2}x", m / p));
        println!(
            "| {} | {m:.0} | {min:.0} - {max:.0} | {:.2}x | {:.2}x | {vs_pgpool} | {:.1} us |",
            variant.name(),
            m / direct,
            m / direct_both,
            median(cpu)
        );
    }
    if pgpool.is_none() {
        println!("| (ii) pgpool-II | skipped: PGPOOL_URL not set | | | | | |");
    }
    let stats = switchable.stats();
    println!(
        "\nSwitchablePool: {} replica statements, {} primary statements, {} flips, {} fallbacks to the primary",
        stats.statements(Target::Replica),
        stats.statements(Target::Primary),
        stats.total_switches(),
        stats.replica_fallbacks()
    );
    if let Some(url) = &pgpool_url {
        match pool_nodes(url).await {
            Ok(lines) => lines.iter().for_each(|l| println!("pgpool-II {l}")),
            Err(e) => println!("pgpool-II: SHOW pool_nodes failed: {e}"),
        }
    }
    if errors > 0 {
        println!("{errors} requests failed (first error of each variant printed on stderr)");
    }
    Ok(())
}
