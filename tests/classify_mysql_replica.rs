//! The MySQL corpus's replica labels, checked on a real read-only replica session
//! (the MySQL counterpart of `classify_standby.rs`): on a MariaDB GTID replica
//! (`read_only = ON`), as the application account (no SUPER, no READ ONLY ADMIN),
//! in a session made read-only as the switchable connection makes its replica
//! sessions (`SET SESSION TRANSACTION READ ONLY`), no statement the corpus says may
//! run on a replica is refused as a write (error 1792, 1290 or 1836). `?`
//! placeholders are bound as NULL.

#[path = "data/classify/corpus.rs"]
mod corpus;

use std::time::Duration;

use diesel_rwsplit::classify::{Dialect, Verdict};
use diesel_rwsplit::testing::MariaCluster;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

/// Tables and a function the corpus's statements name.
const SCHEMA: &[&str] = &[
    "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(100), email VARCHAR(100), \
     active TINYINT, created_at DATETIME, data JSON, KEY idx_name (name))",
    "CREATE TABLE posts (id INT PRIMARY KEY, user_id INT, title VARCHAR(100), published TINYINT)",
    "CREATE TABLE events (id INT PRIMARY KEY, data JSON)",
    "CREATE TABLE t1 (id INT PRIMARY KEY)",
    "CREATE TABLE t2 (id INT PRIMARY KEY)",
    "CREATE TABLE t (`update` INT)",
    "CREATE TABLE `update` (`update` INT, `delete` INT, `insert` INT, `for` INT)",
    "CREATE TABLE deleted_items (id INT)",
    "CREATE TABLE update_log (id INT)",
    "CREATE FUNCTION my_func(x INT) RETURNS INT DETERMINISTIC RETURN x",
    "GRANT EXECUTE ON test.* TO 'app'@'%'",
];

/// MySQL error codes that mean "refused as a write": a read-only transaction
/// (1792), a `read_only` server (1290), `super_read_only` (1836).
const READ_ONLY_REFUSALS: [u16; 3] = [1792, 1290, 1836];

/// `?` outside literals and identifiers becomes `NULL`.
fn bind_nulls(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"' | '`') => {
                quote = Some(c);
                out.push(c);
            }
            (Some(q), '\\') if q != '`' => {
                out.push(c);
                out.extend(chars.next());
            }
            (Some(q), _) if c == q => {
                quote = None;
                out.push(c);
            }
            (None, '?') => out.push_str("NULL"),
            _ => out.push(c),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_replica_labelled_mysql_statement_is_refused_as_a_write_on_a_read_only_replica() {
    let corpus = corpus::load(Dialect::Mysql);
    let cluster = MariaCluster::start(1)
        .await
        .expect("start a MariaDB cluster (apt-get install mariadb-server)");
    let mut admin = Conn::new(Opts::from_url(&cluster.primary_admin_url()).unwrap())
        .await
        .unwrap();
    for statement in SCHEMA {
        admin.query_drop(*statement).await.unwrap();
    }
    admin.disconnect().await.unwrap();
    cluster
        .wait_for_replicas(Duration::from_secs(30))
        .await
        .unwrap();

    let mut replica = Conn::new(Opts::from_url(&cluster.replica_url(0).unwrap()).unwrap())
        .await
        .unwrap();
    replica
        .query_drop("SET SESSION TRANSACTION READ ONLY")
        .await
        .unwrap();
    // The session really refuses writes, so a refusal below would show.
    let refused = replica
        .query_drop("INSERT INTO t1 VALUES (1)")
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, mysql_async::Error::Server(e) if READ_ONLY_REFUSALS.contains(&e.code)),
        "{refused:?}"
    );

    let (mut ran, mut refusals, mut other) = (0, Vec::new(), Vec::new());
    for entry in corpus
        .entries
        .iter()
        .filter(|e| e.expected == Verdict::Replica)
    {
        let sql = bind_nulls(&entry.sql);
        match replica.query_iter(sql.as_str()).await {
            Ok(mut result) => loop {
                // Drain every result set of a multi-statement text.
                if result.collect::<mysql_async::Row>().await.is_err() || result.is_empty() {
                    break;
                }
            },
            Err(mysql_async::Error::Server(e)) if READ_ONLY_REFUSALS.contains(&e.code) => {
                refusals.push(format!(
                    "{}:{}: {} ({})\n    {sql}",
                    corpus.path, entry.line, e.message, e.code
                ));
                continue;
            }
            Err(e) => {
                // Not a write refusal: MySQL 8 syntax MariaDB lacks (`TABLE t`,
                // `VALUES ROW(..)`), a privilege the application account does not
                // have (`SHOW SLAVE STATUS`), and the like.
                other.push(format!("{}:{}: {e}\n    {sql}", corpus.path, entry.line));
                continue;
            }
        }
        ran += 1;
    }
    let total = ran + refusals.len() + other.len();
    eprintln!(
        "{ran} of {total} replica-labelled statements ran on the read-only replica; \
         {} failed for other reasons:\n{}",
        other.len(),
        other.join("\n")
    );
    assert!(
        refusals.is_empty(),
        "{} replica-labelled statements were refused as writes:\n{}",
        refusals.len(),
        refusals.join("\n")
    );
    assert!(
        ran * 10 >= total * 8,
        "only {ran} of {total} ran: the schema no longer matches the corpus"
    );
}
