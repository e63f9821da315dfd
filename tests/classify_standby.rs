//! The PostgreSQL corpus's replica labels, checked empirically: every statement the corpus
//! says may run on a replica runs without error on a real hot standby (loaded with
//! `tests/data/classify/schema.sql` through the primary), `$n` placeholders bound as NULL.

#[path = "data/classify/corpus.rs"]
mod corpus;

use std::time::Duration;

use diesel_rwsplit::classify::{Dialect, Verdict};
use diesel_rwsplit::testing::LocalCluster;
use tokio_postgres::{Client, NoTls};

const SCHEMA: &str = include_str!("data/classify/schema.sql");

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// `$1`, `$2`, ... outside literals become `NULL` (the replica statements of the corpus
/// only use `$n` as placeholders).
fn bind_nulls(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push_str("NULL");
        } else {
            out.push(c);
        }
    }
    out
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Start a `COPY ... TO STDOUT` on its own connection: the server answers with an error
/// or with the start of the data, which is all this check needs.
async fn copy_out(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let client = connect(url).await;
    client
        .batch_execute("SET search_path = rwsplit_corpus, public")
        .await?;
    client.copy_out(sql).await.map(drop)
}

#[tokio::test]
async fn every_replica_labelled_postgres_statement_runs_on_a_hot_standby() {
    let corpus = corpus::load(Dialect::Postgres);
    let cluster = LocalCluster::builder()
        .replicas(1)
        .start()
        .await
        .expect("start a local cluster");
    let primary = connect(&cluster.primary_url()).await;
    primary
        .batch_execute(SCHEMA)
        .await
        .expect("schema.sql on the primary");
    cluster
        .wait_for_replica(0, Duration::from_secs(30))
        .await
        .expect("replica catches up");

    let replica_url = cluster.replica_url(0).expect("replica 0");
    let replica = connect(&replica_url).await;
    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("pg_is_in_recovery")
        .get(0);
    assert!(in_recovery, "replica 0 is not a hot standby");
    replica
        .batch_execute("SET search_path = rwsplit_corpus, public; SET statement_timeout = '10s'")
        .await
        .expect("session settings");

    let mut failures = Vec::new();
    let mut ran = 0;
    for entry in corpus
        .entries
        .iter()
        .filter(|e| e.expected == Verdict::Replica)
    {
        let sql = bind_nulls(&entry.sql);
        let is_copy = sql
            .trim_start()
            .get(..4)
            .is_some_and(|w| w.eq_ignore_ascii_case("copy"));
        let result = if is_copy {
            copy_out(&replica_url, &sql).await
        } else {
            replica.simple_query(&sql).await.map(drop)
        };
        ran += 1;
        if let Err(e) = result {
            failures.push(format!(
                "{}:{}: {}\n    {sql}",
                corpus.path,
                entry.line,
                describe(&e)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} replica-labelled statements failed on the standby:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{ran} replica-labelled statements ran on the standby");
}
