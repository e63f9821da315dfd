//! `AsyncPgConnection`'s own API on a switchable connection: `build_transaction()`
//! (READ ONLY on replicas), raw `BEGIN READ ONLY`, `notifications_stream()` and
//! `cancel_token()`. Where statements ran is asked of the nodes themselves.

mod common;

use std::time::{Duration, Instant};

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Bool, Integer, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_rwsplit::{rwsplit_error, Error, SwitchReason, SwitchablePool, Target};
use futures_util::StreamExt;

use common::{admin, create_table, port_of, shared_cluster, WAIT};

#[derive(QueryableByName, Debug, PartialEq)]
struct Where {
    #[diesel(sql_type = Integer)]
    port: i32,
    #[diesel(sql_type = Bool)]
    standby: bool,
    #[diesel(sql_type = Text)]
    read_only: String,
    #[diesel(sql_type = Text)]
    isolation: String,
}

const WHERE: &str = "SELECT inet_server_port() AS port, pg_is_in_recovery() AS standby, \
     current_setting('transaction_read_only') AS read_only, \
     current_setting('transaction_isolation') AS isolation";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn pool() -> SwitchablePool {
    let cluster = shared_cluster();
    SwitchablePool::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build()
        .await
        .unwrap()
}

fn replica_ports() -> Vec<i32> {
    shared_cluster()
        .replica_urls()
        .iter()
        .map(|url| port_of(url))
        .collect()
}

async fn count(conn: &mut diesel_rwsplit::PooledConnection, table: &str) -> i64 {
    diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
        .get_result::<Count>(conn)
        .await
        .unwrap()
        .n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_transaction_runs_on_its_replica_with_one_snapshot() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE ro_snapshot (id BIGSERIAL PRIMARY KEY)",
    )
    .await;
    let pool = pool().await;
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    let writer = admin(&cluster.primary_url()).await;

    let (inside, before, after) = conn
        .build_transaction()
        .repeatable_read()
        .read_only()
        .run(async |conn| {
            let inside: Where = diesel::sql_query(WHERE).get_result(conn).await?;
            let before = diesel::sql_query("SELECT count(*) AS n FROM ro_snapshot")
                .get_result::<Count>(conn)
                .await?
                .n;
            // A write lands on the primary and reaches the replica meanwhile ...
            writer
                .batch_execute("INSERT INTO ro_snapshot DEFAULT VALUES")
                .await
                .unwrap();
            shared_cluster().wait_for_replicas(WAIT).await.unwrap();
            // ... and the transaction's snapshot does not see it.
            let after = diesel::sql_query("SELECT count(*) AS n FROM ro_snapshot")
                .get_result::<Count>(conn)
                .await?
                .n;
            Ok::<_, DieselError>((inside, before, after))
        })
        .await
        .unwrap();
    assert!(replica_ports().contains(&inside.port), "{inside:?}");
    assert!(inside.standby);
    assert_eq!(inside.read_only, "on");
    assert_eq!(inside.isolation, "repeatable read");
    assert_eq!(
        (before, after),
        (0, 0),
        "one snapshot for the whole transaction"
    );

    // It ended on the replica, and the connection stays there.
    assert_eq!(conn.target(), Target::Replica);
    let outside: Where = diesel::sql_query(WHERE)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(outside.port, inside.port);
    assert_eq!(outside.read_only, "on"); // the replica session itself is read-only
    assert_eq!(
        count(&mut conn, "ro_snapshot").await,
        1,
        "committed: a new snapshot"
    );
    let stats = pool.stats();
    assert_eq!(stats.replica_read_only_transactions(), 1);
    assert_eq!(stats.total_switches(), 0);
    assert_eq!(
        stats.checkouts(Target::Primary),
        0,
        "the primary was never touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_inside_a_replica_read_only_transaction_fails_as_on_postgres() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE ro_refused (id BIGSERIAL PRIMARY KEY)",
    )
    .await;
    let pool = pool().await;
    let mut conn = pool.get().await.unwrap();
    let result = conn
        .build_transaction()
        .read_only()
        .run(async |conn| {
            diesel::sql_query("INSERT INTO ro_refused DEFAULT VALUES")
                .execute(conn)
                .await
        })
        .await;
    assert!(
        matches!(
            result,
            Err(DieselError::DatabaseError(
                DatabaseErrorKind::ReadOnlyTransaction,
                _
            ))
        ),
        "{result:?}"
    );
    // Not healed onto the primary: the transaction was the replica's to the end.
    assert_eq!(conn.target(), Target::Replica);
    let stats = pool.stats();
    assert_eq!(stats.switches(SwitchReason::ReplicaRefused), 0);
    let primary = admin(&cluster.primary_url()).await;
    let rows: i64 = primary
        .query_one("SELECT count(*) FROM ro_refused", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    // The connection goes on working on its replica.
    assert_eq!(count(&mut conn, "ro_refused").await, 0);

    // A hook inside one cannot move it either.
    let result = conn
        .build_transaction()
        .read_only()
        .run(async |conn| conn.switch_to_primary().await)
        .await;
    let error = result.unwrap_err();
    assert!(
        matches!(
            rwsplit_error(&error),
            Some(Error::InReplicaTransaction {
                reason: SwitchReason::Explicit
            })
        ),
        "{error:?}"
    );
    assert_eq!(conn.target(), Target::Replica);

    // A nested transaction inside one is a savepoint on the replica.
    let nested: Where = conn
        .build_transaction()
        .read_only()
        .run(async |conn| {
            conn.transaction(async |conn| diesel::sql_query(WHERE).get_result::<Where>(conn).await)
                .await
        })
        .await
        .unwrap();
    assert!(nested.standby && nested.read_only == "on", "{nested:?}");
    assert_eq!(conn.target(), Target::Replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_and_read_write_transactions_run_on_the_primary() {
    let cluster = shared_cluster();
    let pool = pool().await;

    let mut conn = pool.get().await.unwrap();
    let inside: Where = conn
        .build_transaction()
        .serializable()
        .read_only()
        .deferrable()
        .run(async |conn| diesel::sql_query(WHERE).get_result(conn).await)
        .await
        .unwrap();
    assert_eq!(inside.port, port_of(&cluster.primary_url()));
    assert_eq!(
        (inside.read_only.as_str(), inside.isolation.as_str()),
        ("on", "serializable")
    );
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(conn.switch_reason(), Some(SwitchReason::TransactionBegin));

    let mut conn = pool.get().await.unwrap();
    let inside: Where = conn
        .build_transaction()
        .read_write()
        .run(async |conn| diesel::sql_query(WHERE).get_result(conn).await)
        .await
        .unwrap();
    assert_eq!(inside.port, port_of(&cluster.primary_url()));
    assert_eq!(inside.read_only, "off");
    assert_eq!(pool.stats().replica_read_only_transactions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_read_write_transactions_fail_with_a_serialization_failure() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE ssi_skew (class INT NOT NULL, value INT NOT NULL); \
         INSERT INTO ssi_skew VALUES (1, 10), (1, 20), (2, 100), (2, 200)",
    )
    .await;
    let pool = pool().await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    // Write skew: each reads the other's class and inserts into its own. Under
    // SERIALIZABLE one of the two must fail (40001).
    let skew = |read_class: i32, write_class: i32| {
        let pool = pool.clone();
        let barrier = barrier.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            conn.build_transaction()
                .serializable()
                .read_write()
                .run(async |conn| {
                    let sum: Count = diesel::sql_query(
                        "SELECT coalesce(sum(value), 0)::bigint AS n FROM ssi_skew WHERE class = $1",
                    )
                    .bind::<Integer, _>(read_class)
                    .get_result(conn)
                    .await?;
                    barrier.wait().await;
                    diesel::sql_query("INSERT INTO ssi_skew VALUES ($1, $2)")
                        .bind::<Integer, _>(write_class)
                        .bind::<Integer, _>(sum.n as i32)
                        .execute(conn)
                        .await?;
                    barrier.wait().await;
                    Ok::<_, DieselError>(())
                })
                .await
        })
    };
    let (first, second) = tokio::join!(skew(1, 2), skew(2, 1));
    let results = [first.unwrap(), second.unwrap()];
    let failures = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(DieselError::DatabaseError(
                    DatabaseErrorKind::SerializationFailure,
                    _
                ))
            )
        })
        .count();
    assert_eq!(failures, 1, "{results:?}");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_begin_read_only_stays_on_the_replica() {
    let pool = pool().await;
    let mut conn = pool.get().await.unwrap();
    conn.batch_execute("BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .unwrap();
    let inside: Where = diesel::sql_query(WHERE)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert!(
        replica_ports().contains(&inside.port) && inside.standby,
        "{inside:?}"
    );
    assert_eq!(inside.isolation, "repeatable read");
    conn.batch_execute("COMMIT").await.unwrap();
    assert_eq!(conn.target(), Target::Replica);
    let outside: Where = diesel::sql_query(WHERE)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(outside.isolation, "read committed", "the transaction ended");
    assert_eq!(pool.stats().replica_read_only_transactions(), 1);
    // A plain BEGIN still flips.
    conn.batch_execute("BEGIN").await.unwrap();
    assert_eq!(conn.target(), Target::Primary);
    conn.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_arrive_after_listen_on_the_primary() {
    let pool = pool().await;
    let mut listener = pool.get().await.unwrap();
    listener
        .batch_execute("LISTEN rwsplit_surface")
        .await
        .unwrap();
    assert_eq!(listener.target(), Target::Primary);
    assert_eq!(listener.switch_reason(), Some(SwitchReason::SessionState));
    let mut notifier = pool.get().await.unwrap();
    notifier
        .batch_execute("NOTIFY rwsplit_surface, 'hello from another connection'")
        .await
        .unwrap();
    let mut stream = std::pin::pin!(listener.notifications_stream());
    let notification = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a notification within the wait")
        .unwrap()
        .unwrap();
    assert_eq!(notification.channel, "rwsplit_surface");
    assert_eq!(notification.payload, "hello from another connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_token_cancels_a_sleep_on_the_node_the_connection_is_on() {
    let pool = pool().await;
    for flip in [false, true] {
        let mut conn = pool.get().await.unwrap();
        if flip {
            conn.switch_to_primary().await.unwrap();
        }
        let on = conn.target();
        let token = conn.cancel_token();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            diesel_rwsplit::cancel_query(&token).await.unwrap();
        });
        let started = Instant::now();
        let result = diesel::sql_query("SELECT pg_sleep(10)")
            .execute(&mut conn)
            .await;
        let elapsed = started.elapsed();
        canceller.await.unwrap();
        assert!(
            matches!(result, Err(DieselError::DatabaseError(..))),
            "{result:?}"
        );
        assert!(
            elapsed < Duration::from_secs(8),
            "cancelled, not finished: {elapsed:?}"
        );
        // Not retried elsewhere, and the connection still works where it was.
        assert_eq!(pool.stats().read_retries(), 0);
        assert_eq!(conn.target(), on);
        let after: Where = diesel::sql_query(WHERE)
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(after.standby, on == Target::Replica);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn establish_builds_a_single_node_connection_with_build_transaction() {
    let cluster = shared_cluster();
    let mut conn = diesel_rwsplit::SwitchableConnection::<AsyncPgConnection>::establish(
        &cluster.primary_url(),
    )
    .await
    .unwrap();
    let inside: Where = conn
        .build_transaction()
        .read_only()
        .run(async |conn| diesel::sql_query(WHERE).get_result(conn).await)
        .await
        .unwrap();
    assert_eq!(inside.port, port_of(&cluster.primary_url()));
    assert_eq!(inside.read_only, "on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_inside_a_replica_transaction_outlives_it_or_ends_it_behind_diesel() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE ro_guarded (id BIGSERIAL PRIMARY KEY)",
    )
    .await;
    let pool = pool().await;
    let mut conn = pool.get().await.unwrap();
    let refused = |error: &DieselError| match rwsplit_error(error) {
        Some(Error::InReplicaTransaction { reason }) => Some(*reason),
        _ => None,
    };
    // Session state would stay in the pooled replica session: refused, not run.
    let error = conn
        .build_transaction()
        .read_only()
        .run(async |conn| {
            diesel::sql_query("SET default_transaction_read_only = off")
                .execute(conn)
                .await
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused(&error),
        Some(SwitchReason::SessionState),
        "{error:?}"
    );
    // A COMMIT would end the transaction behind diesel's back: refused, raw or not.
    let error = conn
        .build_transaction()
        .read_only()
        .run(async |conn| conn.batch_execute("COMMIT").await)
        .await
        .unwrap_err();
    assert_eq!(
        refused(&error),
        Some(SwitchReason::TransactionControl),
        "{error:?}"
    );
    let error = conn
        .build_transaction()
        .read_only()
        .run(async |conn| diesel::sql_query("COMMIT").execute(conn).await)
        .await
        .unwrap_err();
    assert_eq!(
        refused(&error),
        Some(SwitchReason::TransactionControl),
        "{error:?}"
    );
    // What ends with the transaction is fine inside it.
    let scoped: Where = conn
        .build_transaction()
        .read_only()
        .run(async |conn| {
            diesel::sql_query("SET LOCAL statement_timeout = 5000")
                .execute(conn)
                .await?;
            diesel::sql_query("DECLARE c CURSOR FOR SELECT 1")
                .execute(conn)
                .await?;
            conn.batch_execute("SAVEPOINT s1").await?;
            diesel::sql_query(WHERE).get_result(conn).await
        })
        .await
        .unwrap();
    assert!(scoped.standby, "{scoped:?}");
    // The replica session is as it was: read-only, on the replica, usable.
    assert_eq!(conn.target(), Target::Replica);
    let after: Where = diesel::sql_query(WHERE)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (after.read_only.as_str(), after.isolation.as_str()),
        ("on", "read committed")
    );

    // After a raw read-only transaction ends, a write flips to the primary.
    conn.batch_execute("BEGIN READ ONLY").await.unwrap();
    conn.batch_execute("COMMIT").await.unwrap();
    diesel::sql_query("INSERT INTO ro_guarded DEFAULT VALUES")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(conn.target(), Target::Primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_unpins_the_connection() {
    let cluster = shared_cluster();
    let pool = pool().await;
    let mut conn = pool.get().await.unwrap();
    let result = conn
        .build_transaction()
        .read_only()
        .run(async |conn| {
            let inside: Where = diesel::sql_query(WHERE).get_result(conn).await?;
            // The replica session dies before the COMMIT.
            let pid: i32 = diesel::select(diesel::dsl::sql::<Integer>("pg_backend_pid()"))
                .get_result(conn)
                .await?;
            let replica = cluster
                .replica_urls()
                .into_iter()
                .find(|url| port_of(url) == inside.port)
                .unwrap();
            common::terminate(&replica, pid).await;
            // Rolled back on a dead session: the rollback fails too, and diesel's
            // transaction manager is left in error.
            Err::<(), _>(DieselError::RollbackTransaction)
        })
        .await;
    assert!(
        result.is_err(),
        "the ROLLBACK cannot succeed on a terminated session"
    );
    // Not pinned to the dead session any more: the next read goes elsewhere.
    let after: Where = diesel::sql_query(WHERE)
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(after.read_only, "on");
}
