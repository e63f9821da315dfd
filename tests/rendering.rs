//! Statements rendered to owned SQL + binds (replica reads kept for a retry, and
//! statements that wait for the primary first): custom PostgreSQL types, per-instance
//! SQL, prepared-statement reuse, and a re-run from the same rendering.

mod common;

use std::io::Write;

use common::{admin, create_table, shared_cluster, statement_calls};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{SwitchReason, SwitchablePool, Target};

/// The SQL type `rws_render_mood`, an enum created by the test.
#[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
#[diesel(postgres_type(name = "rws_render_mood"))]
pub struct RwsMood;

#[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = RwsMood)]
enum Mood {
    Happy,
    Sad,
    Calm,
}

impl ToSql<RwsMood, Pg> for Mood {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(match self {
            Mood::Happy => b"happy",
            Mood::Sad => b"sad",
            Mood::Calm => b"calm",
        })?;
        Ok(IsNull::No)
    }
}

impl FromSql<RwsMood, Pg> for Mood {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        match value.as_bytes() {
            b"happy" => Ok(Mood::Happy),
            b"sad" => Ok(Mood::Sad),
            b"calm" => Ok(Mood::Calm),
            other => Err(format!("unknown mood {other:?}").into()),
        }
    }
}

diesel::table! {
    use diesel::sql_types::BigInt;
    use super::RwsMood;

    rws_render_moods (id) {
        id -> BigInt,
        mood -> RwsMood,
    }
}

diesel::table! {
    rws_render_items (id) {
        id -> BigInt,
        label -> Text,
    }
}

diesel::table! {
    rws_render_prepared (id) {
        id -> BigInt,
        label -> Text,
    }
}

diesel::table! {
    rws_render_rerun (id) {
        id -> BigInt,
        label -> Text,
    }
}

fn pool_builder(cluster: &LocalCluster) -> diesel_rwsplit::SwitchablePoolBuilder {
    SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
}

/// The table `name (id, label)` with rows 1..=`rows` labelled "`name` `id`", on
/// every node, and a fresh pool over the cluster.
async fn labelled_table(cluster: &LocalCluster, name: &str, rows: i64) -> SwitchablePool {
    create_table(
        cluster,
        &format!(
            "CREATE TABLE {name} (id BIGINT PRIMARY KEY, label TEXT NOT NULL);
             INSERT INTO {name} SELECT g, '{name} ' || g FROM generate_series(1, {rows}) g;"
        ),
    )
    .await;
    pool_builder(cluster).build().await.unwrap()
}

#[tokio::test]
async fn custom_type_binds_resolve_on_replica_reads_and_on_flipped_writes() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TYPE rws_render_mood AS ENUM ('happy', 'sad', 'calm');
         CREATE TABLE rws_render_moods (id BIGINT PRIMARY KEY, mood rws_render_mood NOT NULL);
         INSERT INTO rws_render_moods VALUES (1, 'happy'), (2, 'sad'), (3, 'sad');",
    )
    .await;

    // A fresh pool knows no type OIDs: its first replica read with a custom-type
    // bind (scalar, then an array whose bytes embed the OID) looks them up.
    let readers = pool_builder(cluster).build().await.unwrap();
    let mut conn = readers.get().await.unwrap();
    let sad: Vec<i64> = rws_render_moods::table
        .filter(rws_render_moods::mood.eq(Mood::Sad))
        .select(rws_render_moods::id)
        .order(rws_render_moods::id)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(sad, [2, 3]);
    let happy_or_calm: Vec<i64> = rws_render_moods::table
        .filter(rws_render_moods::mood.eq_any(vec![Mood::Happy, Mood::Calm]))
        .select(rws_render_moods::id)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(happy_or_calm, [1]);
    assert_eq!(conn.target(), Target::Replica);
    drop(conn);

    // Another fresh pool: a write that flips to the primary resolves them there.
    let writers = pool_builder(cluster).build().await.unwrap();
    let mut conn = writers.get().await.unwrap();
    diesel::insert_into(rws_render_moods::table)
        .values((
            rws_render_moods::id.eq(4),
            rws_render_moods::mood.eq(Mood::Calm),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(conn.target(), Target::Primary);
    let calm: Vec<(i64, Mood)> = rws_render_moods::table
        .filter(rws_render_moods::mood.eq_any(vec![Mood::Calm]))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(calm, [(4, Mood::Calm)]);
    assert_eq!(readers.stats().read_retries(), 0);
}

#[tokio::test]
async fn instances_of_one_query_type_with_different_sql_each_run_their_own() {
    let pool = labelled_table(shared_cluster(), "rws_render_items", 20).await;
    let mut conn = pool.get().await.unwrap();
    // One Rust type, different SQL per instance: `IN ($1, $2, ...)` grows with the
    // list. Each must run its own text, not the first one's.
    for len in [1_i64, 3, 2, 5, 1] {
        let keys: Vec<i64> = (1..=len).map(|k| k * 3).collect();
        let found: Vec<i64> = rws_render_items::table
            .filter(rws_render_items::id.eq_any(&keys))
            .select(rws_render_items::id)
            .order(rws_render_items::id)
            .load(&mut conn)
            .await
            .unwrap();
        assert_eq!(found, keys, "an IN list of {len}");
    }
    assert_eq!(conn.target(), Target::Replica);
}

/// One Rust type with a static query id whose SQL depends on the instance: legal in
/// diesel as long as it says it is not safe to cache prepared.
#[derive(diesel::query_builder::QueryId)]
struct PickRow {
    lock: bool,
}

impl QueryFragment<Pg> for PickRow {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql("SELECT id FROM rws_render_varying WHERE id = 1");
        if self.lock {
            out.push_sql(" FOR UPDATE");
        }
        Ok(())
    }
}

impl Query for PickRow {
    type SqlType = diesel::sql_types::BigInt;
}

#[tokio::test]
async fn a_query_type_whose_sql_varies_is_judged_per_instance() {
    let pool = labelled_table(shared_cluster(), "rws_render_varying", 3).await;
    let mut conn = pool.get().await.unwrap();
    for _ in 0..3 {
        let id: i64 = PickRow { lock: false }.get_result(&mut conn).await.unwrap();
        assert_eq!(id, 1);
    }
    assert_eq!(conn.target(), Target::Replica);
    // Same type, a locking read this time: it must not inherit the replica verdict
    // of the instances before it (on a replica it would fail, read-only).
    let id: i64 = PickRow { lock: true }.get_result(&mut conn).await.unwrap();
    assert_eq!(id, 1);
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(conn.switch_reason(), Some(SwitchReason::LockingRead));
}

#[tokio::test]
async fn a_rendered_read_reuses_one_prepared_statement_per_query_type() {
    let pool = labelled_table(shared_cluster(), "rws_render_prepared", 50).await;
    let mut conn = pool.get().await.unwrap();
    for key in 1..=50_i64 {
        let (id, label): (i64, String) = rws_render_prepared::table
            .find(key)
            .first(&mut conn)
            .await
            .unwrap();
        assert_eq!((id, label), (key, format!("rws_render_prepared {key}")));
    }
    // 50 reads of one query type on one server session: one prepared statement.
    let prepared: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_prepared_statements \
         WHERE statement LIKE '%rws_render_prepared%' \
         AND statement NOT LIKE '%pg_prepared_statements%'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(prepared.n, 1);
    assert_eq!(conn.target(), Target::Replica);

    // On the primary: the first DELETE flips (it runs from its owned rendering), the
    // next ones of the same type run directly. Keyed by the query's type, both paths
    // find the same prepared statement; keyed by SQL text they would prepare two.
    for key in 1..=3_i64 {
        let deleted = diesel::delete(rws_render_prepared::table.find(key))
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(deleted, 1);
    }
    assert_eq!(conn.switch_reason(), Some(SwitchReason::WriteStatement));
    let prepared: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_prepared_statements \
         WHERE statement LIKE 'DELETE%rws_render_prepared%'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        prepared.n, 1,
        "one prepared DELETE on the primary's session"
    );
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[tokio::test]
async fn a_read_whose_session_was_killed_reruns_the_same_rendering_elsewhere() {
    let cluster = shared_cluster();
    let pool = labelled_table(cluster, "rws_render_rerun", 10).await;
    let mut conn = pool.get().await.unwrap();
    let pid: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid, inet_server_port() AS port")
        .get_result(&mut conn)
        .await
        .unwrap();
    let replica = cluster
        .replica_urls()
        .into_iter()
        .find(|url| url.contains(&format!(":{}/", pid.port)))
        .expect("the connection is on a replica");
    let killer = admin(&replica).await;
    tokio_postgres::Client::query_one(&killer, "SELECT pg_terminate_backend($1)", &[&pid.pid])
        .await
        .unwrap();
    // Wait until the server has really let the session go.
    for _ in 0..200 {
        let alive = tokio_postgres::Client::query_one(
            &killer,
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid.pid],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
        if alive == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let labels: Vec<String> = rws_render_rerun::table
        .filter(rws_render_rerun::id.eq_any(vec![2_i64, 7]))
        .select(rws_render_rerun::label)
        .order(rws_render_rerun::id)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(labels, ["rws_render_rerun 2", "rws_render_rerun 7"]);
    assert_eq!(pool.stats().read_retries(), 1);
    // Another session ran it: the connection now answers from a new backend, and
    // the nodes' own statistics show the read completed once, not on the replica
    // whose session was killed.
    let now: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid, inet_server_port() AS port")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_ne!(
        (now.pid, now.port),
        (pid.pid, pid.port),
        "the read was not moved off the killed session"
    );
    assert_eq!(
        statement_calls(&replica, "select", "rws_render_rerun").await,
        0,
        "the killed replica ran the read"
    );
    let mut elsewhere = 0;
    for url in std::iter::once(cluster.primary_url()).chain(cluster.replica_urls()) {
        if url != replica {
            elsewhere += statement_calls(&url, "select", "rws_render_rerun").await;
        }
    }
    assert_eq!(elsewhere, 1, "the re-run ran exactly once on another node");
    assert_eq!(
        pool.stats().total_switches(),
        0,
        "a retried read is not a flip"
    );
}

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    port: i32,
}
