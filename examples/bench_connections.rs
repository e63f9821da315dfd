//! How many primary connections a read-mostly workload uses: everything on the
//! primary, a naive read/write split, and `SwitchablePool`.
//!
//! ```text
//! cargo run --release --example bench_connections [-- TASKS SECONDS ROUNDS]
//! ```
//!
//! Defaults: 64 tasks, 12 s per set-up and round, 3 rounds. One local cluster
//! (a primary + 2 streaming replicas, `max_connections = 400`) serves every set-up.
//! TASKS concurrent handlers loop over units of work until the time is up: 90% are
//! read-only (2 or 3 point reads by primary key), 10% write (a point read, an
//! `UPDATE ... SET counter = counter + 1` of that row, the row read again).
//!
//! - (a) primary only: one plain bb8 pool of the primary (size TASKS), one
//!   checkout per unit of work;
//! - (b) naive split: a plain bb8 pool of the primary (size TASKS) and one per
//!   replica (TASKS/2 each, replicas taken in turn); every unit checks out one
//!   primary and one replica connection at its start and keeps both to its end;
//!   reads go to the replica connection, the write to the primary one;
//! - (c) `SwitchablePool` (default route replica, interlock `Switch`,
//!   `replica_max_size` TASKS/2, and the primary pool sized for the writes as the
//!   crate's docs advise: `primary_max_size` TASKS/8, 8 for 64 tasks): one `get()`
//!   per unit; a writing unit flips to the primary at its `UPDATE` and keeps it for
//!   the rest of that unit (its last read runs on the primary);
//! - (c-wide) the same with the primary pool left at TASKS, as (a) sizes it.
//!
//! Every pool keeps bb8's defaults otherwise (no `min_idle`: connections open on
//! demand and stay; test on checkout), so a pool opens as many connections as
//! were ever needed at once. A separate tokio-postgres connection per node counts
//! `client backend`s in `pg_stat_activity` (itself excluded) every 50 ms; the pool's
//! lag monitor's own connection (one per node) is a client backend and counts. The
//! handlers also count, client side, how many units at once want or hold a primary
//! connection (from the checkout, or for (c) from the flipping `UPDATE`, to the end
//! of the unit): what a pool must open at least. The set-ups
//! run interleaved, round after round, each with fresh pools after every
//! connection of the previous one has gone; throughput is counted after a 1 s
//! warm-up, connection peaks over the whole run. The report gives medians over the
//! rounds.
//!
//! `RWSPLIT_NODE_CPUS=0.4` (Linux, root, cgroup v1 `cpu` or v2) caps each server at
//! that many CPUs, as if every node had a machine of its own of equal size; the
//! benchmark itself is not capped. Without it the client and all three servers
//! share the machine's cores, so moving reads to replicas adds no capacity.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{SwitchReason, SwitchablePool, Target};

#[path = "support/cpu_cap.rs"]
mod cpu_cap;

diesel::table! {
    bench_items (id) {
        id -> BigInt,
        name -> Text,
        counter -> BigInt,
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;
type PlainPool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;

const ROWS: i64 = 10_000;
const WARMUP: Duration = Duration::from_secs(1);
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const COUNT_CLIENTS: &str = "SELECT count(*) FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";

/// A point read by primary key.
macro_rules! read {
    ($conn:expr, $key:expr) => {
        bench_items::table
            .find($key)
            .first::<(i64, String, i64)>($conn)
            .await
            .map(|row| debug_assert_eq!(row.0, $key))
    };
}

/// A one-row update.
macro_rules! update {
    ($conn:expr, $key:expr) => {
        diesel::update(bench_items::table.find($key))
            .set(bench_items::counter.eq(bench_items::counter + 1))
            .execute($conn)
            .await
            .map(|n| debug_assert_eq!(n, 1))
    };
}

/// What one unit of work does.
#[derive(Clone, Copy)]
enum Unit {
    /// Point reads of these keys (2 or 3 of them).
    Read([i64; 3], usize),
    /// Read the key, update it, read it again.
    Write(i64),
}

/// xorshift64*: per task, no shared state.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn key(&mut self) -> i64 {
        (self.next() % ROWS as u64) as i64 + 1
    }

    fn unit(&mut self) -> Unit {
        if self.next() % 10 == 0 {
            Unit::Write(self.key())
        } else {
            let reads = 2 + (self.next() % 2) as usize;
            Unit::Read([self.key(), self.key(), self.key()], reads)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    PrimaryOnly,
    NaiveSplit,
    Switchable,
    SwitchableWide,
}

impl Setup {
    const ALL: [Setup; 4] = [
        Setup::PrimaryOnly,
        Setup::NaiveSplit,
        Setup::Switchable,
        Setup::SwitchableWide,
    ];

    fn name(self) -> &'static str {
        match self {
            Setup::PrimaryOnly => "(a) primary only",
            Setup::NaiveSplit => "(b) naive split",
            Setup::Switchable => "(c) SwitchablePool",
            Setup::SwitchableWide => "(c-wide) SwitchablePool, primary pool TASKS",
        }
    }

    /// Pool sizes: (primary, per replica).
    fn sizes(self, tasks: u32, replicas: usize) -> (u32, u32) {
        let per_replica = tasks.div_ceil(replicas as u32);
        match self {
            Setup::PrimaryOnly => (tasks, 0),
            Setup::NaiveSplit | Setup::SwitchableWide => (tasks, per_replica),
            Setup::Switchable => (for_writes(tasks), per_replica),
        }
    }
}

/// The primary pool of (c): an eighth of the tasks (at least 2), the concurrent
/// writing units at 10% writes with some headroom.
fn for_writes(tasks: u32) -> u32 {
    (tasks / 8).max(2)
}

/// The pools of one set-up, fresh for each run.
enum Pools {
    PrimaryOnly(PlainPool),
    NaiveSplit {
        primary: PlainPool,
        replicas: Vec<PlainPool>,
        next: AtomicUsize,
    },
    Switchable(SwitchablePool<AsyncPgConnection>),
}

fn plain_pool(url: &str, size: u32) -> PlainPool {
    bb8::Pool::builder()
        .max_size(size)
        .build_unchecked(AsyncDieselConnectionManager::<AsyncPgConnection>::new(url))
}

impl Pools {
    async fn new(
        setup: Setup,
        primary: &str,
        replicas: &[String],
        tasks: u32,
    ) -> Result<Self, Error> {
        let (primary_size, per_replica) = setup.sizes(tasks, replicas.len());
        Ok(match setup {
            Setup::PrimaryOnly => Pools::PrimaryOnly(plain_pool(primary, primary_size)),
            Setup::NaiveSplit => Pools::NaiveSplit {
                primary: plain_pool(primary, primary_size),
                replicas: replicas
                    .iter()
                    .map(|url| plain_pool(url, per_replica))
                    .collect(),
                next: AtomicUsize::new(0),
            },
            Setup::Switchable | Setup::SwitchableWide => Pools::Switchable(
                SwitchablePool::<AsyncPgConnection>::builder()
                    .primary(primary)
                    .replicas(replicas.iter().cloned())
                    .primary_max_size(primary_size)
                    .replica_max_size(per_replica)
                    .build()
                    .await?,
            ),
        })
    }

    /// Run one unit of work; returns the number of statements it ran. `demand`
    /// counts the units that want or hold a primary connection.
    async fn run(&self, unit: Unit, demand: &Gauge) -> Result<u64, Error> {
        match self {
            Pools::PrimaryOnly(pool) => {
                let _wants_primary = demand.enter();
                let mut conn = pool.get().await?;
                let conn: &mut AsyncPgConnection = &mut conn;
                match unit {
                    Unit::Read(keys, n) => {
                        for key in &keys[..n] {
                            read!(conn, *key)?;
                        }
                        Ok(n as u64)
                    }
                    Unit::Write(key) => {
                        read!(conn, key)?;
                        update!(conn, key)?;
                        read!(conn, key)?;
                        Ok(3)
                    }
                }
            }
            Pools::NaiveSplit {
                primary,
                replicas,
                next,
            } => {
                let replica = &replicas[next.fetch_add(1, Ordering::Relaxed) % replicas.len()];
                let _wants_primary = demand.enter();
                let mut primary = primary.get().await?;
                let mut replica = replica.get().await?;
                let primary: &mut AsyncPgConnection = &mut primary;
                let replica: &mut AsyncPgConnection = &mut replica;
                match unit {
                    Unit::Read(keys, n) => {
                        for key in &keys[..n] {
                            read!(replica, *key)?;
                        }
                        Ok(n as u64)
                    }
                    Unit::Write(key) => {
                        read!(replica, key)?;
                        update!(primary, key)?;
                        read!(replica, key)?;
                        Ok(3)
                    }
                }
            }
            Pools::Switchable(pool) => {
                let mut conn = pool.get().await?;
                match unit {
                    Unit::Read(keys, n) => {
                        for key in &keys[..n] {
                            read!(&mut conn, *key)?;
                        }
                        debug_assert_eq!(conn.target(), Target::Replica);
                        Ok(n as u64)
                    }
                    Unit::Write(key) => {
                        read!(&mut conn, key)?;
                        // From here to the end of the unit: the flip checks out a
                        // primary connection at this UPDATE and keeps it.
                        let _wants_primary = demand.enter();
                        update!(&mut conn, key)?;
                        read!(&mut conn, key)?;
                        debug_assert_eq!(conn.target(), Target::Primary);
                        Ok(3)
                    }
                }
            }
        }
    }
}

#[derive(Default)]
struct Counters {
    units: AtomicU64,
    write_units: AtomicU64,
    statements: AtomicU64,
    errors: AtomicU64,
    primary_demand: Gauge,
}

/// A count of units in some state, with its high-water mark.
#[derive(Default)]
struct Gauge {
    now: AtomicI64,
    peak: AtomicI64,
}

impl Gauge {
    fn enter(&self) -> GaugeGuard<'_> {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        GaugeGuard(self)
    }
}

struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Client connections seen on one node during a run.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    peak: i64,
    sum: i64,
    samples: i64,
}

impl Seen {
    fn mean(self) -> f64 {
        self.sum as f64 / self.samples.max(1) as f64
    }
}

/// One sampling connection per node (primary first).
struct Sampler {
    nodes: Vec<Arc<tokio_postgres::Client>>,
}

impl Sampler {
    async fn connect(urls: &[String]) -> Result<Self, Error> {
        let mut nodes = Vec::new();
        for url in urls {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            nodes.push(Arc::new(client));
        }
        Ok(Sampler { nodes })
    }

    async fn counts(nodes: &[Arc<tokio_postgres::Client>]) -> Result<Vec<i64>, Error> {
        let mut counts = Vec::with_capacity(nodes.len());
        for node in nodes {
            counts.push(node.query_one(COUNT_CLIENTS, &[]).await?.get::<_, i64>(0));
        }
        Ok(counts)
    }

    /// Wait until no node has a client connection but the sampler's own.
    async fn wait_idle(&self) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let counts = Self::counts(&self.nodes).await?;
            if counts.iter().all(|c| *c == 0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "client connections still open after the previous set-up: {counts:?}"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sample every node until `stop` is set.
    fn start(&self, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Result<Vec<Seen>, Error>> {
        let nodes = self.nodes.clone();
        tokio::spawn(async move {
            let mut seen = vec![Seen::default(); nodes.len()];
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !AtomicBool::load(&stop, Ordering::Relaxed) {
                tick.tick().await;
                for (seen, count) in seen.iter_mut().zip(Self::counts(&nodes).await?) {
                    seen.peak = seen.peak.max(count);
                    seen.sum += count;
                    seen.samples += 1;
                }
            }
            Ok(seen)
        })
    }
}

struct RunResult {
    units_per_s: f64,
    statements_per_s: f64,
    write_share: f64,
    primary: Seen,
    /// Peak of units that wanted or held a primary connection at once (client side).
    primary_demand: i64,
    replica_peak: i64,
    errors: u64,
    flips: Option<(u64, u64)>,
}

async fn run_setup(
    setup: Setup,
    primary: &str,
    replicas: &[String],
    sampler: &Sampler,
    tasks: usize,
    seconds: u64,
    seed: u64,
) -> Result<RunResult, Error> {
    sampler.wait_idle().await?;
    let pools = Arc::new(Pools::new(setup, primary, replicas, tasks as u32).await?);
    let counters = Arc::new(Counters::default());
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampling = sampler.start(Arc::clone(&stop_sampling));

    let started = Instant::now();
    let deadline = started + WARMUP + Duration::from_secs(seconds);
    let mut handlers = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let (pools, counters) = (Arc::clone(&pools), Arc::clone(&counters));
        let mut rng = Rng((seed ^ (task as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
        handlers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let unit = rng.unit();
                match pools.run(unit, &counters.primary_demand).await {
                    Ok(statements) => {
                        counters.units.fetch_add(1, Ordering::Relaxed);
                        counters.statements.fetch_add(statements, Ordering::Relaxed);
                        if matches!(unit, Unit::Write(_)) {
                            counters.write_units.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        if counters.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("{}: {e}", setup.name());
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep_until((started + WARMUP).into()).await;
    let at_warm = (
        AtomicU64::load(&counters.units, Ordering::Relaxed),
        AtomicU64::load(&counters.statements, Ordering::Relaxed),
        AtomicU64::load(&counters.write_units, Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep_until(deadline.into()).await;
    let at_end = (
        AtomicU64::load(&counters.units, Ordering::Relaxed),
        AtomicU64::load(&counters.statements, Ordering::Relaxed),
        AtomicU64::load(&counters.write_units, Ordering::Relaxed),
        Instant::now(),
    );
    for handler in handlers {
        handler.await?;
    }
    stop_sampling.store(true, Ordering::Relaxed);
    let seen = sampling.await??;
    let flips = match &*pools {
        Pools::Switchable(pool) => {
            let stats = pool.stats();
            Some((
                stats.switches(SwitchReason::WriteStatement),
                stats.total_switches(),
            ))
        }
        _ => None,
    };
    let write_units = AtomicU64::load(&counters.write_units, Ordering::Relaxed);
    if let Some((writes, total)) = flips {
        // Every writing unit flips once, for its UPDATE; nothing else should flip.
        if (writes, total) != (write_units, write_units) {
            eprintln!(
                "{}: {write_units} writing units but {writes} flips for writes, {total} in all",
                setup.name()
            );
        }
    }
    drop(pools);

    let secs = (at_end.3 - at_warm.3).as_secs_f64();
    let units = (at_end.0 - at_warm.0) as f64;
    Ok(RunResult {
        units_per_s: units / secs,
        statements_per_s: (at_end.1 - at_warm.1) as f64 / secs,
        write_share: (at_end.2 - at_warm.2) as f64 / units.max(1.0),
        primary: seen[0],
        primary_demand: AtomicI64::load(&counters.primary_demand.peak, Ordering::Relaxed),
        replica_peak: seen[1..].iter().map(|s| s.peak).sum(),
        errors: AtomicU64::load(&counters.errors, Ordering::Relaxed),
        flips,
    })
}

/// The `index`th numeric argument. (`RunQueryDsl::first` shadows `slice::first`.)
fn arg(args: &[u64], index: usize) -> Option<u64> {
    args.get(index).copied()
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let tasks = arg(&args, 0).unwrap_or(64).max(2) as usize;
    let seconds = arg(&args, 1).unwrap_or(12).max(1);
    let rounds = arg(&args, 2).unwrap_or(3).max(1) as usize;

    let started = Instant::now();
    let cluster = LocalCluster::builder()
        .replicas(2)
        .setting("max_connections", "400")
        .start()
        .await?;
    let primary = cluster.primary_url();
    let replicas = cluster.replica_urls();
    println!(
        "local cluster (1 primary + 2 replicas, max_connections 400) up in {:.1?}",
        started.elapsed()
    );
    let _caps = cpu_cap::from_env(&cluster)?;
    {
        let mut setup = AsyncPgConnection::establish(&primary).await?;
        diesel::sql_query("CREATE TABLE bench_items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, counter BIGINT NOT NULL)")
            .execute(&mut setup)
            .await?;
        diesel::sql_query(format!(
            "INSERT INTO bench_items SELECT g, md5(g::text), 0 FROM generate_series(1, {ROWS}) g"
        ))
        .execute(&mut setup)
        .await?;
        diesel::sql_query("VACUUM ANALYZE bench_items")
            .execute(&mut setup)
            .await?;
    }
    cluster.wait_for_replicas(Duration::from_secs(10)).await?;
    let mut nodes = vec![primary.clone()];
    nodes.extend(replicas.iter().cloned());
    let sampler = Sampler::connect(&nodes).await?;

    let sizes = |setup: Setup| {
        let (primary, per_replica) = setup.sizes(tasks as u32, replicas.len());
        match setup {
            Setup::PrimaryOnly => format!("primary {primary}"),
            Setup::NaiveSplit => format!("primary {primary} + {per_replica} per replica"),
            Setup::Switchable | Setup::SwitchableWide => {
                format!("primary_max_size {primary}, replica_max_size {per_replica}")
            }
        }
    };
    println!(
        "{tasks} tasks, 90% read-only units (2-3 point reads), 10% writing units (read, update, read); \
         {seconds} s + {}s warm-up per set-up, {rounds} rounds, set-ups interleaved",
        WARMUP.as_secs()
    );
    let described: Vec<String> = Setup::ALL
        .iter()
        .map(|s| format!("{} {}", s.name(), sizes(*s)))
        .collect();
    println!("pools: {}", described.join("; "));

    let mut results: Vec<Vec<RunResult>> = Setup::ALL.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for step in 0..Setup::ALL.len() {
            let index = (round + step) % Setup::ALL.len();
            let setup = Setup::ALL[index];
            let seed = 0x5EED_0000 + round as u64;
            let r = run_setup(setup, &primary, &replicas, &sampler, tasks, seconds, seed).await?;
            println!(
                "round {} {:<28} primary: peak {:>3} open (mean {:>5.1}), peak demand {:>3}; replica peak {:>3}; \
                 {:>6.0} units/s, {:>6.0} statements/s, {:.1}% writing, {} errors{}",
                round + 1,
                setup.name(),
                r.primary.peak,
                r.primary.mean(),
                r.primary_demand,
                r.replica_peak,
                r.units_per_s,
                r.statements_per_s,
                r.write_share * 100.0,
                r.errors,
                r.flips.map(|(w, _)| format!(", {w} flips")).unwrap_or_default()
            );
            results[index].push(r);
        }
    }

    let base_peak = median(results[0].iter().map(|r| r.primary.peak as f64));
    let base_units = median(results[0].iter().map(|r| r.units_per_s));
    println!();
    println!(
        "{tasks} tasks, {seconds} s per set-up and round, {rounds} rounds; medians over rounds \
         (max over rounds in brackets)"
    );
    println!(
        "| set-up | pool sizes | peak primary connections (pg_stat_activity) | vs (a) | \
         peak units wanting/holding a primary connection | peak replica connections (sum) | \
         units/s | statements/s | throughput vs (a) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (setup, runs) in Setup::ALL.iter().zip(&results) {
        let peak = median(runs.iter().map(|r| r.primary.peak as f64));
        let max_peak = runs.iter().map(|r| r.primary.peak).max().unwrap_or(0);
        let demand = median(runs.iter().map(|r| r.primary_demand as f64));
        let max_demand = runs.iter().map(|r| r.primary_demand).max().unwrap_or(0);
        let units = median(runs.iter().map(|r| r.units_per_s));
        println!(
            "| {} | {} | {peak:.0} ({max_peak}) | {:.0}% | {demand:.0} ({max_demand}) | {:.0} | {units:.0} | {:.0} | {:.2}x |",
            setup.name(),
            sizes(*setup),
            100.0 * peak / base_peak,
            median(runs.iter().map(|r| r.replica_peak as f64)),
            median(runs.iter().map(|r| r.statements_per_s)),
            units / base_units,
        );
    }
    let errors: u64 = results.iter().flatten().map(|r| r.errors).sum();
    if errors > 0 {
        println!("\n{errors} units of work failed (first error of each run printed on stderr)");
    }
    Ok(())
}
