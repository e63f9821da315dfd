//! Volatile user functions read from the catalog, declared to the classifier in one call.

mod common;

use std::time::Duration;

use common::{admin, statement_calls};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::classify::{Classifier, Dialect};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{
    volatile_user_functions, Error, NodeStep, SwitchReason, SwitchablePool, Target,
};

#[derive(diesel::QueryableByName)]
struct Number {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_functions_go_to_the_primary_without_a_replica_round_trip() {
    let cluster = LocalCluster::start(1).await.unwrap();
    admin(&cluster.primary_url())
        .await
        .batch_execute(
            "CREATE SCHEMA billing;
             CREATE TABLE billing.charges (id serial PRIMARY KEY);
             CREATE FUNCTION billing.charge() RETURNS bigint LANGUAGE sql AS
               'INSERT INTO billing.charges DEFAULT VALUES RETURNING id::bigint';
             CREATE FUNCTION \"Mixed\"() RETURNS bigint LANGUAGE sql STABLE AS 'SELECT 1::bigint';
             CREATE FUNCTION twice(x bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS 'SELECT 2 * x';",
        )
        .await
        .unwrap();
    cluster
        .wait_for_replicas(Duration::from_secs(10))
        .await
        .unwrap();

    let functions = volatile_user_functions(&cluster.primary_url())
        .await
        .unwrap();
    assert!(
        functions.contains(&"billing.charge".to_owned()),
        "{functions:?}"
    );
    assert!(
        !functions
            .iter()
            .any(|f| f.contains("Mixed") || f.ends_with(".twice")),
        "{functions:?}"
    );
    assert!(
        !functions.iter().any(|f| f.starts_with("pg_catalog.")),
        "{functions:?}"
    );

    let classifier = Classifier::builder(Dialect::Postgres)
        .write_functions(&functions)
        .build()
        .unwrap();
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .classifier(classifier)
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let rows: Vec<Number> = diesel::sql_query("SELECT billing.charge() AS n /* cat_charge */")
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows[0].n, 1);
    assert_eq!(conn.switch_reason(), Some(SwitchReason::SideEffectFunction));
    // A stable function still reads on the replica.
    let mut reader = pool.get().await.unwrap();
    let rows: Vec<Number> = diesel::sql_query("SELECT \"Mixed\"() AS n")
        .load(&mut reader)
        .await
        .unwrap();
    assert_eq!(rows[0].n, 1);
    assert_eq!(reader.target(), Target::Replica);
    let stats = pool.stats();
    assert_eq!(
        stats.switches(SwitchReason::ReplicaRefused),
        0,
        "no refusal round trip"
    );
    assert_eq!(
        statement_calls(&cluster.primary_url(), "SELECT", "billing.charge()").await,
        1
    );
}

#[tokio::test]
async fn an_unreachable_primary_is_a_typed_error_without_the_password() {
    let error = volatile_user_functions("postgres://app:secret@127.0.0.1:1/db")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Node { step: NodeStep::Catalog, node, .. } if node == "primary (127.0.0.1:1)"),
        "{error:?}"
    );
    assert!(!format!("{error:?} {error}").contains("secret"));
}
