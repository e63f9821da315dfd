//! Replication lag under write load, as the lag monitor sees it, and how causal
//! (read-your-writes) reads are served.
//!
//! ```text
//! cargo run --release --example lag_report --features testing [-- SECONDS [WRITERS [TOKEN_EVERY [RATES]]]]
//! ```
//!
//! Defaults: 5 s per load, 8 writer tasks, a causal read after 1 write in 10,
//! loads `100,500,1000,2000` writes/s (RATES is comma-separated).
//!
//! Boots a throwaway `LocalCluster` (primary + 2 streaming replicas) unless
//! `PRIMARY_URL` and `REPLICA_URLS` (comma-separated) point at an existing cluster
//! (the table `lag_report_events` is then created there if missing).
//!
//! The pool polls WAL positions every **10 ms** (`monitor_interval`, default 1 s):
//! lag is measured from LSNs, as the time since the replica first fell behind a
//! primary position the monitor observed, so it is quantised to poll rounds and can
//! under-estimate the true staleness by up to one interval. `causal_wait` is left
//! at its default, 500 ms.
//!
//! For each load, writer tasks, each on its own `pool.get_primary()` connection and
//! paced by a `tokio::time::interval` so that together they make the target rate,
//! insert one small row per tick. After every TOKEN_EVERY-th write the writer takes
//! `conn.causal_token()` and hands the token and the new row's id to a reader task,
//! which calls `pool.get_after(&token)` at once and reads the row back: a row not
//! found is a stale read (there must be none), and the reader notes whether a
//! replica served it. A sampler reads `pool.replication_status()` every 10 ms and
//! records each replica's `lag` (skipped when `None`) and `replay_lag_bytes`.

use std::time::{Duration, Instant, SystemTime};

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::{CausalOutcome, CausalToken, StatsSnapshot, SwitchablePool, Target};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

diesel::table! {
    lag_report_events (id) {
        id -> BigInt,
        writer -> Integer,
        seq -> BigInt,
        payload -> Text,
    }
}

/// The monitor's poll interval, and the sampler's.
const MONITOR_INTERVAL: Duration = Duration::from_millis(10);

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Config {
    seconds: f64,
    writers: usize,
    token_every: u64,
    rates: Vec<u32>,
}

impl Config {
    fn from_args() -> BoxResult<Config> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let seconds = <[String]>::first(&args)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(5.0);
        let writers = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(8);
        let token_every = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
        let rates = match args.get(3) {
            Some(list) => list
                .split(',')
                .map(|r| r.trim().parse())
                .collect::<Result<Vec<u32>, _>>()?,
            None => vec![100, 500, 1000, 2000],
        };
        if seconds <= 0.0 || writers == 0 || token_every == 0 || rates.contains(&0) {
            return Err("SECONDS, WRITERS, TOKEN_EVERY and every rate must be positive".into());
        }
        Ok(Config {
            seconds,
            writers,
            token_every,
            rates,
        })
    }
}

/// One causal read: how long `get_after` took, who served it, whether the row was there.
struct TokenRead {
    waited: Duration,
    on_replica: bool,
    found: bool,
}

/// Everything measured at one load.
struct Phase {
    target: u32,
    elapsed: Duration,
    writes: u64,
    write_errors: u64,
    reads: Vec<TokenRead>,
    read_errors: u64,
    lag_ms: Vec<f64>,
    lag_unknown: u64,
    lag_bytes: Vec<u64>,
    polls_seen: u64,
    outcomes: [u64; 3],
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

fn outcomes(stats: &StatsSnapshot) -> [u64; 3] {
    CausalOutcome::ALL.map(|o| stats.causal_reads(o))
}

async fn writer(
    pool: SwitchablePool<AsyncPgConnection>,
    index: usize,
    period: Duration,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
    token_every: u64,
    reads: mpsc::UnboundedSender<BoxResult<TokenRead>>,
) -> BoxResult<(u64, u64)> {
    let mut conn = pool.get_primary().await?;
    let mut tick = tokio::time::interval_at(start, period);
    // A stalled writer catches up: the target is an average rate.
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let (mut writes, mut errors) = (0u64, 0u64);
    let mut seq = 0i64;
    loop {
        tick.tick().await;
        if tokio::time::Instant::now() >= end {
            break;
        }
        seq += 1;
        let inserted: QueryResult<i64> = diesel::insert_into(lag_report_events::table)
            .values((
                lag_report_events::writer.eq(index as i32),
                lag_report_events::seq.eq(seq),
                lag_report_events::payload.eq(format!("w{index}-{seq}")),
            ))
            .returning(lag_report_events::id)
            .get_result(&mut conn)
            .await;
        let id = match inserted {
            Ok(id) => id,
            Err(e) => {
                errors += 1;
                eprintln!("writer {index}: insert failed: {e}");
                continue;
            }
        };
        writes += 1;
        // Stagger the causal reads across writers.
        if (seq as u64 + index as u64) % token_every != 0 {
            continue;
        }
        let token: CausalToken = conn
            .causal_token()
            .await?
            .ok_or("a primary connection gives a token")?;
        let (pool, reads) = (pool.clone(), reads.clone());
        tokio::spawn(async move {
            let _ = reads.send(token_read(&pool, token, id).await);
        });
    }
    Ok((writes, errors))
}

async fn token_read(
    pool: &SwitchablePool<AsyncPgConnection>,
    token: CausalToken,
    id: i64,
) -> BoxResult<TokenRead> {
    let started = Instant::now();
    let mut conn = pool.get_after(&token).await?;
    let waited = started.elapsed();
    let found: Option<i64> = lag_report_events::table
        .find(id)
        .select(lag_report_events::id)
        .first(&mut conn)
        .await
        .optional()?;
    Ok(TokenRead {
        waited,
        on_replica: conn.target() == Target::Replica,
        found: found == Some(id),
    })
}

/// Reads the monitor's view every `MONITOR_INTERVAL` until `end`.
async fn sampler(
    pool: SwitchablePool<AsyncPgConnection>,
    end: tokio::time::Instant,
) -> (Vec<f64>, u64, Vec<u64>, u64) {
    let (mut lag_ms, mut unknown, mut bytes, mut polls) = (Vec::new(), 0u64, Vec::new(), 0u64);
    let mut last_seen: Vec<Option<SystemTime>> = Vec::new();
    let mut tick = tokio::time::interval(MONITOR_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if tokio::time::Instant::now() >= end {
            break;
        }
        let status = pool.replication_status();
        last_seen.resize(status.len(), None);
        for (i, replica) in status.iter().enumerate() {
            match replica.lag {
                Some(lag) => lag_ms.push(lag.as_secs_f64() * 1e3),
                None => unknown += 1,
            }
            if let Some(b) = replica.replay_lag_bytes {
                bytes.push(b);
            }
            if replica.last_seen.is_some() && replica.last_seen != last_seen[i] {
                polls += 1;
                last_seen[i] = replica.last_seen;
            }
        }
    }
    (lag_ms, unknown, bytes, polls)
}

async fn run_phase(
    pool: &SwitchablePool<AsyncPgConnection>,
    config: &Config,
    rate: u32,
    seconds: f64,
) -> BoxResult<Phase> {
    let before = outcomes(&pool.stats());
    let period = Duration::from_secs_f64(config.writers as f64 / rate as f64);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = t0 + Duration::from_secs_f64(seconds);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sampling = tokio::spawn(sampler(pool.clone(), end));
    let mut writers = Vec::new();
    for w in 0..config.writers {
        // Spread the writers' ticks evenly over one period.
        let start = t0 + period.mul_f64(w as f64 / config.writers as f64);
        writers.push(tokio::spawn(writer(
            pool.clone(),
            w,
            period,
            start,
            end,
            config.token_every,
            tx.clone(),
        )));
    }
    drop(tx);
    let (mut writes, mut write_errors) = (0, 0);
    for w in writers {
        let (n, e) = w.await??;
        writes += n;
        write_errors += e;
    }
    // Only ticks due before `end` write: the achieved rate is over the window.
    let elapsed = end.duration_since(t0);
    let overrun = tokio::time::Instant::now().duration_since(end);
    if overrun > Duration::from_millis(250) {
        eprintln!("{rate} writes/s: writers finished {overrun:?} after the window closed");
    }
    let (mut reads, mut read_errors) = (Vec::new(), 0);
    while let Some(read) = rx.recv().await {
        match read {
            Ok(read) => reads.push(read),
            Err(e) => {
                read_errors += 1;
                eprintln!("token read failed: {e}");
            }
        }
    }
    let (mut lag_ms, lag_unknown, lag_bytes, polls_seen) = sampling.await?;
    lag_ms.sort_by(|a, b| a.total_cmp(b));
    let after = outcomes(&pool.stats());
    Ok(Phase {
        target: rate,
        elapsed,
        writes,
        write_errors,
        reads,
        read_errors,
        lag_ms,
        lag_unknown,
        lag_bytes,
        polls_seen,
        outcomes: [0, 1, 2].map(|i| after[i] - before[i]),
    })
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let config = Config::from_args()?;
    let urls = diesel_rwsplit::testing::ClusterUrls::from_env_or_start(2).await?;
    println!("{}", urls.describe());
    let (_cluster, primary_url, replica_urls) = urls.into_parts();
    if replica_urls.is_empty() {
        return Err("REPLICA_URLS names no replica".into());
    }
    let mut setup =
        <AsyncPgConnection as diesel_async::AsyncConnection>::establish(&primary_url).await?;
    diesel::sql_query(
        "CREATE TABLE IF NOT EXISTS lag_report_events (
             id BIGSERIAL PRIMARY KEY,
             writer INT NOT NULL,
             seq BIGINT NOT NULL,
             payload TEXT NOT NULL)",
    )
    .execute(&mut setup)
    .await?;
    let server: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "current_setting('server_version') || ', synchronous_commit=' || \
         current_setting('synchronous_commit') || ', fsync=' || current_setting('fsync')",
    ))
    .get_result(&mut setup)
    .await?;
    drop(setup);

    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(primary_url)
        .replicas(replica_urls.clone())
        .monitor_interval(MONITOR_INTERVAL)
        .primary_max_size(config.writers as u32 + 8)
        .replica_max_size(32)
        .build()
        .await?;
    if !pool.wait_for_replication(Duration::from_secs(10)).await {
        return Err("replicas did not catch up with the table's creation".into());
    }

    // Warm-up (not reported): opens the connections, fills statement caches.
    run_phase(&pool, &config, 200, 1.0).await?;

    let mut phases = Vec::new();
    for &rate in &config.rates {
        if !pool.wait_for_replication(Duration::from_secs(10)).await {
            return Err("replicas did not catch up between loads".into());
        }
        // Let the monitor see the replicas caught up before the next load.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let phase = run_phase(&pool, &config, rate, config.seconds).await?;
        eprintln!(
            "{rate} writes/s: {} writes in {:.2?}, {} token reads",
            phase.writes,
            phase.elapsed,
            phase.reads.len()
        );
        phases.push(phase);
    }

    println!(
        "{} replicas ({server}), monitor_interval {MONITOR_INTERVAL:?}, causal_wait 500 ms (default), \
         {} writers, {:.1} s per load, a token read after 1 write in {}",
        replica_urls.len(),
        config.writers,
        config.seconds,
        config.token_every
    );
    println!();
    println!("| target writes/s | achieved writes/s | lag mean / p99 / max (ms) | lag bytes mean / max | token reads | served by replicas (%) | stale reads |");
    println!("|---:|---:|---|---|---:|---:|---:|");
    for p in &phases {
        let achieved = p.writes as f64 / p.elapsed.as_secs_f64();
        let bytes: Vec<f64> = p.lag_bytes.iter().map(|b| *b as f64).collect();
        let on_replica = p.reads.iter().filter(|r| r.on_replica).count();
        let stale = p.reads.iter().filter(|r| !r.found).count();
        println!(
            "| {} | {:.0}{} | {:.1} / {:.1} / {:.1} | {:.0} / {} | {} | {:.1} | {} |",
            p.target,
            achieved,
            if achieved < 0.95 * p.target as f64 {
                " (short)"
            } else {
                ""
            },
            mean(&p.lag_ms),
            percentile(&p.lag_ms, 99.0),
            p.lag_ms.last().copied().unwrap_or(f64::NAN),
            mean(&bytes),
            p.lag_bytes.iter().max().copied().unwrap_or(0),
            p.reads.len(),
            100.0 * on_replica as f64 / p.reads.len().max(1) as f64,
            stale
        );
    }
    println!();
    println!("Causal reads (`get_after`) by outcome, and how long `get_after` took:");
    println!();
    println!("| target writes/s | monitor | checked | primary | get_after p50 / p99 / max (ms) | lag samples (zero / unknown) | monitor polls/s per replica | write / read errors |");
    println!("|---:|---:|---:|---:|---|---|---:|---|");
    for p in &phases {
        let mut waited: Vec<f64> = p
            .reads
            .iter()
            .map(|r| r.waited.as_secs_f64() * 1e3)
            .collect();
        waited.sort_by(|a, b| a.total_cmp(b));
        let zero = p.lag_ms.iter().filter(|l| **l == 0.0).count();
        println!(
            "| {} | {} | {} | {} | {:.2} / {:.2} / {:.2} | {} ({} / {}) | {:.0} | {} / {} |",
            p.target,
            p.outcomes[0],
            p.outcomes[1],
            p.outcomes[2],
            percentile(&waited, 50.0),
            percentile(&waited, 99.0),
            waited.last().copied().unwrap_or(f64::NAN),
            p.lag_ms.len(),
            zero,
            p.lag_unknown,
            p.polls_seen as f64 / replica_urls.len() as f64 / p.elapsed.as_secs_f64(),
            p.write_errors,
            p.read_errors
        );
    }
    let stale: usize = phases
        .iter()
        .map(|p| p.reads.iter().filter(|r| !r.found).count())
        .sum();
    assert_eq!(stale, 0, "a token read missed its own write");
    Ok(())
}
