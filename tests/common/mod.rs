//! Shared helpers for the integration tests: one replicated cluster per test binary.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::OnceLock;
use std::time::Duration;

use diesel_rwsplit::testing::LocalCluster;
use tokio_postgres::{Client, NoTls};

pub const WAIT: Duration = Duration::from_secs(10);

/// `builder` with short bounds, so that faults are noticed fast: the pool tests'
/// settings on either backend (`tests/maria/mod.rs` uses it too).
pub fn short_bounds<C: diesel_rwsplit::SwitchTarget>(
    builder: diesel_rwsplit::SwitchablePoolBuilder<C>,
) -> diesel_rwsplit::SwitchablePoolBuilder<C> {
    builder
        .replica_connect_timeout(Duration::from_millis(500))
        .replica_checkout_timeout(Duration::from_millis(800))
        .ejection_backoff(Duration::from_millis(100), Duration::from_millis(400))
        .monitor_interval(Duration::from_millis(50))
}

/// A primary + 2 replicas with the example schema, shared by the tests of one
/// binary (each test owns its tables or rows). It is never dropped: the cluster's
/// watchdog stops it when the test binary exits.
pub fn shared_cluster() -> &'static LocalCluster {
    static CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let cluster = LocalCluster::start(2).await.unwrap();
                cluster.apply_example_schema().await.unwrap();
                cluster
            })
        })
        .join()
        .unwrap()
    })
}

pub async fn admin(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Create a table on the primary and wait until every replica has it.
pub async fn create_table(cluster: &LocalCluster, ddl: &str) {
    admin(&cluster.primary_url())
        .await
        .batch_execute(ddl)
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();
}

/// Calls of statements mentioning `needle` (case-insensitive) whose text starts
/// with `verb`, as counted by a node's own pg_stat_statements.
pub async fn statement_calls(url: &str, verb: &str, needle: &str) -> i64 {
    let client = admin(url).await;
    let row = client
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
             WHERE query ILIKE '%' || $1 || '%' AND ltrim(query) ILIKE $2 || '%'",
            &[&needle, &verb],
        )
        .await
        .unwrap();
    row.get(0)
}

/// The port in a `postgres://...@host:PORT/db` URL.
pub fn port_of(url: &str) -> i32 {
    url.rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The port of the server that answers a read on this connection.
pub async fn server_port(conn: &mut diesel_rwsplit::PooledConnection) -> i32 {
    use diesel_async::RunQueryDsl;
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "inet_server_port()",
    ))
    .get_result(conn)
    .await
    .unwrap()
}

/// Poll `condition` every 10 ms until it holds; fail after [`WAIT`].
pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `url` with its user replaced by `user` (`postgres://USER@host:port/db`).
pub fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (_, host) = rest.split_once('@').expect("a URL with a user");
    format!("{scheme}://{user}@{host}")
}

/// Create the login role `name` on the primary and wait until every replica has it.
///
/// pg_stat_statements counts per role, so a test whose pool connects as its own
/// role can count the statements it ran on each node (see
/// [`statement_calls_by`]) even when other tests run the same SQL at the same time.
pub async fn create_role(cluster: &LocalCluster, name: &str) {
    create_table(cluster, &format!("CREATE ROLE {name} LOGIN SUPERUSER")).await;
}

/// Like [`statement_calls`], counting only the statements run by the role `user`.
pub async fn statement_calls_by(url: &str, user: &str, verb: &str, needle: &str) -> i64 {
    let client = admin(url).await;
    let row = client
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
             WHERE query ILIKE '%' || $1 || '%' AND ltrim(query) ILIKE $2 || '%' \
             AND userid = (SELECT oid FROM pg_roles WHERE rolname = $3)",
            &[&needle, &verb, &user],
        )
        .await
        .unwrap();
    row.get(0)
}

/// Insert an event through `conn` (which flips it to the primary if it is on a
/// replica) and check that the write ran on the primary.
pub async fn write_event(
    conn: &mut diesel_rwsplit::PooledConnection,
    cluster: &LocalCluster,
    kind: &str,
) {
    use diesel_async::RunQueryDsl;
    diesel::sql_query("INSERT INTO events (kind) VALUES ($1)")
        .bind::<diesel::sql_types::Text, _>(kind)
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_eq!(server_port(conn).await, port_of(&cluster.primary_url()));
}

/// The backend pid of the session that answers a read on this connection.
pub async fn backend_pid(conn: &mut diesel_rwsplit::PooledConnection) -> i32 {
    use diesel_async::RunQueryDsl;
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "pg_backend_pid()",
    ))
    .get_result(conn)
    .await
    .unwrap()
}

/// End the session `pid` on the node at `url`.
pub async fn terminate(url: &str, pid: i32) {
    let client = admin(url).await;
    tokio_postgres::Client::execute(&client, "SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
}

/// Poll an async `condition` every 10 ms until it holds; fail after [`WAIT`].
pub async fn until_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Write an event on the primary and return the causal token of that write.
pub async fn token_after_write(
    pool: &diesel_rwsplit::SwitchablePool,
    cluster: &LocalCluster,
    kind: &str,
) -> diesel_rwsplit::CausalToken {
    let mut writer = pool.get_primary().await.unwrap();
    write_event(&mut writer, cluster, kind).await;
    writer.causal_token().await.unwrap().unwrap()
}

/// The `rwsplit` command-line tool run as a process (`tests/cli_*.rs`).
#[cfg(feature = "cli")]
pub mod cli {
    use std::io::Write;
    use std::process::{Command, Output, Stdio};

    use serde_json::Value;

    /// Run `rwsplit SUBCOMMAND ARGS` with `stdin` on standard input.
    pub fn run(subcommand: &str, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rwsplit"))
            .arg(subcommand)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rwsplit");
        let written = child.stdin.take().expect("stdin").write_all(stdin);
        // A process that rejects its arguments or stops at the first bad line may exit
        // before reading everything: a closed pipe is fine.
        if let Err(e) = written {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
        }
        child.wait_with_output().expect("wait for rwsplit")
    }

    /// Standard output of a run that must have succeeded.
    pub fn stdout(output: &Output) -> String {
        assert!(
            output.status.success(),
            "exit {:?}, stderr: {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout.clone()).expect("utf-8 output")
    }

    /// Standard output of a run that must have succeeded, as JSON.
    pub fn json(output: &Output) -> Value {
        serde_json::from_str(&stdout(output)).expect("valid JSON")
    }

    pub fn stderr(output: &Output) -> String {
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Exit code 2, nothing on stdout, one `error: ...` on stderr: returns the message.
    pub fn input_error(output: &Output) -> String {
        let stderr = stderr(output);
        assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
        assert!(
            output.stdout.is_empty(),
            "stdout: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }

    /// Deterministic pseudo-random inputs (xorshift from `seed`): `rounds` of them, the
    /// one of round `r` `16 + r * step` bytes long, raw bytes in even rounds and bytes
    /// of `alphabet` in odd ones.
    pub fn noise(seed: u64, rounds: usize, step: usize, alphabet: &[u8]) -> Vec<Vec<u8>> {
        let mut state = seed;
        (0..rounds)
            .map(|round| {
                (0..16 + round * step)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        if round % 2 == 0 {
                            (state >> 24) as u8
                        } else {
                            alphabet[(state >> 40) as usize % alphabet.len()]
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// A JSON object of counts.
    pub fn obj(pairs: &[(&str, u64)]) -> Value {
        Value::Object(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect(),
        )
    }
}
