//! Overhead of the switchable connection on the read path.
//!
//! ```text
//! cargo run --release --example connection_overhead [-- ROUNDS QUERIES_PER_ROUND]
//! ```
//!
//! One replica of a local cluster, one connection each: a plain `AsyncPgConnection`,
//! a `SwitchableConnection` from a default `SwitchablePool` (read retry on: every
//! replica read is rendered to owned SQL + binds so that it can be re-run), and one
//! from a pool with `read_retry(false)`, all reading a row by primary key with the
//! typed DSL and with `sql_query`. The variants run interleaved, round after round,
//! so machine noise hits them alike; the report gives the median throughput of
//! each and the switchable/plain ratios.
//!
//! With `RWSPLIT_OVERHEAD_TLS=1` the cluster has TLS on and the plain and switchable
//! connections all use it, verified against the cluster's CA (`verify-full`): the
//! plain one through tokio-postgres-rustls with the same rustls configuration, the
//! switchable ones through the pool's URL settings.

use std::time::Instant;

use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{SwitchablePool, Target};

diesel::table! {
    bench_kv (id) {
        id -> Integer,
        v -> Text,
    }
}

#[derive(QueryableByName)]
#[allow(dead_code)]
struct Row {
    #[diesel(sql_type = Integer)]
    id: i32,
    #[diesel(sql_type = Text)]
    v: String,
}

const KEYS: i32 = 1000;

async fn typed<C>(conn: &mut C, n: usize) -> f64
where
    C: AsyncConnection<Backend = diesel::pg::Pg> + Send,
    for<'a> diesel::dsl::Limit<diesel::dsl::Find<bench_kv::table, i32>>:
        diesel_async::methods::LoadQuery<'a, C, (i32, String)>,
{
    let started = Instant::now();
    for i in 0..n {
        let key = (i as i32 * 7919) % KEYS + 1;
        let row: (i32, String) = bench_kv::table.find(key).first(conn).await.unwrap();
        assert_eq!(row.0, key);
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn raw<C>(conn: &mut C, n: usize) -> f64
where
    C: AsyncConnection<Backend = diesel::pg::Pg> + Send,
    diesel::query_builder::BoxedSqlQuery<'static, diesel::pg::Pg, diesel::query_builder::SqlQuery>:
        diesel_async::methods::LoadQuery<'static, C, Row>,
{
    let started = Instant::now();
    for i in 0..n {
        let key = (i as i32 * 7919) % KEYS + 1;
        let row: Row = diesel::sql_query("SELECT id, v FROM bench_kv WHERE id = $1")
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

/// A plain `AsyncPgConnection` over TLS verified against `ca`, through
/// tokio-postgres-rustls with the rustls configuration the crate builds for
/// `verify-full` (same provider, same verifier).
async fn plain_over_tls(
    url: &str,
    ca: &std::path::Path,
) -> Result<AsyncPgConnection, Box<dyn std::error::Error>> {
    use diesel_rwsplit::rustls;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    #[allow(deprecated)] // the provider the crate uses (see its TLS docs)
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (client, connection) = tokio_postgres::connect(
        &format!("{url}?sslmode=require"),
        tokio_postgres_rustls::MakeRustlsConnect::new(config),
    )
    .await?;
    Ok(AsyncPgConnection::try_from_client_and_connection(client, connection).await?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = <[usize]>::first(&args).copied().unwrap_or(15);
    let per_round = args.get(1).copied().unwrap_or(2000);

    let tls = std::env::var_os("RWSPLIT_OVERHEAD_TLS").is_some_and(|v| v == "1");
    let cluster = LocalCluster::builder().replicas(1).tls(tls).start().await?;
    // The pool's URLs: with TLS, verified against the cluster's CA.
    let with_tls = |url: String| match cluster.ca_cert_path() {
        Some(ca) => format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display()),
        None => url,
    };
    let mut setup = AsyncPgConnection::establish(&cluster.primary_url()).await?;
    diesel::sql_query("CREATE TABLE IF NOT EXISTS bench_kv (id INT PRIMARY KEY, v TEXT NOT NULL)")
        .execute(&mut setup)
        .await?;
    diesel::sql_query(
        "INSERT INTO bench_kv SELECT g, md5(g::text) FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING",
    )
    .execute(&mut setup)
    .await?;
    cluster
        .wait_for_replicas(std::time::Duration::from_secs(10))
        .await?;

    let mut plain = match cluster.ca_cert_path() {
        Some(ca) => plain_over_tls(&cluster.replica_url(0)?, ca).await?,
        None => AsyncPgConnection::establish(&cluster.replica_url(0)?).await?,
    };
    let replica_url = with_tls(cluster.replica_url(0)?);
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(with_tls(cluster.primary_url()))
        .replicas([replica_url.clone()])
        .replica_max_size(1)
        .build()
        .await?;
    let mut switchable = pool.get().await?;
    let no_retry_pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(with_tls(cluster.primary_url()))
        .replicas([replica_url])
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
            diesel_async::pooled_connection::AsyncDieselConnectionManager::<AsyncPgConnection>::new(
                cluster.replica_url(0)?,
            ),
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
        // `unit-*`: whole units of work, a checkout and three point reads each, so
        // that the pools' own per-checkout costs count too.
        drop((switchable, pooled_plain));
        match variant {
            "plain" => typed(&mut plain, n).await,
            "no-retry" => typed(&mut no_retry, n).await,
            "switchable" => typed(&mut pool.get().await?, n).await,
            "pooled" => typed(&mut bb8_pool.get().await?, n).await,
            "unit-bb8" => {
                for _ in 0..n {
                    typed(&mut bb8_pool.get().await?, 3).await;
                }
                0.0
            }
            "unit-switchable" => {
                for _ in 0..n {
                    typed(&mut pool.get().await?, 3).await;
                }
                0.0
            }
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
        "{rounds} rounds x {per_round} point reads per variant, one replica, one connection each"
    );
    println!("| query | plain (q/s) | plain, from a bb8 pool | ratio | switchable, read retry on | ratio | switchable, read retry off | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (label, base) in [
        ("typed DSL `find(id).first()`", 0),
        ("`sql_query` with a bind", 3),
    ] {
        let (plain, pooled) = (m[base], m[base + 6 - base / 3 * 2]);
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
