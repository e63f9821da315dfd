//! The interlock on MariaDB: a replica-first connection flips to the primary on
//! every statement that must run there, Raise refuses and runs nothing, Observe
//! runs everything on the primary, a lazy primary, and a write the classifier
//! cannot see healed onto the primary. Each case is checked against the nodes:
//! `@@port` of the session that ran it, each node's own general query log and the
//! rows on the primary.

mod maria;

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_rwsplit::classify::{Classifier, Dialect};
use diesel_rwsplit::{
    interlock_refusal, rwsplit_error, Error, InterlockMode, SwitchReason, Target,
};
use maria::{builder, calls_per_node, port_of, scalar, setup, start, Count, Pooled};

/// How a case's statement is sent.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// `sql_query(..).execute`: a prepared statement.
    Execute,
    /// `batch_execute`: the text protocol.
    Batch,
    /// `sql_query(..).load`, rows wanted.
    Load,
}

async fn run(conn: &mut Pooled, via: Via, sql: &str) -> diesel::QueryResult<()> {
    match via {
        Via::Execute => diesel::sql_query(sql).execute(conn).await.map(|_| ()),
        Via::Batch => conn.batch_execute(sql).await,
        Via::Load => diesel::sql_query(sql).load::<Count>(conn).await.map(|_| ()),
    }
}

/// `BEGIN`s and `COMMIT`s the application account sends the primary in the flip
/// test: the raw `BEGIN` and `transaction()`'s; the three `COMMIT`s after raw
/// transaction starts and `transaction()`'s.
const BEGINS: i64 = 2;
const COMMITS: i64 = 3;

const SCHEMA: &str = "\
    CREATE TABLE il_rows (id BIGINT PRIMARY KEY, note VARCHAR(20) NOT NULL); \
    INSERT INTO il_rows VALUES (100, 'seed'), (200, 'seed'); \
    CREATE SEQUENCE il_seq";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_primary_only_statement_flips_a_replica_connection_and_stays_there() {
    let cluster = start(1).await;
    setup(&cluster, SCHEMA).await;
    let pool = builder(&cluster).build().await.unwrap();
    let (primary, replica) = (cluster.primary_port(), cluster.replica_port(0).unwrap());

    use SwitchReason::*;
    let cases: &[(&str, Via, SwitchReason)] = &[
        (
            "INSERT INTO il_rows VALUES (1, 'insert')",
            Via::Execute,
            WriteStatement,
        ),
        (
            "UPDATE il_rows SET note = 'update' WHERE id = 1",
            Via::Execute,
            WriteStatement,
        ),
        (
            "REPLACE INTO il_rows VALUES (2, 'replace')",
            Via::Execute,
            WriteStatement,
        ),
        (
            "DELETE FROM il_rows WHERE id = 200",
            Via::Execute,
            WriteStatement,
        ),
        (
            "SELECT id AS n FROM il_rows WHERE id = 100 FOR UPDATE",
            Via::Load,
            LockingRead,
        ),
        (
            "SELECT id AS n FROM il_rows WHERE id = 100 LOCK IN SHARE MODE",
            Via::Load,
            LockingRead,
        ),
        (
            "SELECT id FROM il_rows WHERE id = 100 INTO @il_var",
            Via::Batch,
            SessionState,
        ),
        (
            "SELECT GET_LOCK('il_lock', 0) AS n",
            Via::Execute,
            SideEffectFunction,
        ),
        (
            "SELECT LAST_INSERT_ID(5) AS n",
            Via::Execute,
            SideEffectFunction,
        ),
        (
            "SELECT NEXT VALUE FOR il_seq AS n",
            Via::Execute,
            SideEffectFunction,
        ),
        ("BEGIN", Via::Batch, TransactionBegin),
        ("START TRANSACTION", Via::Batch, TransactionBegin),
    ];
    for (sql, via, reason) in cases {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(
            port_of(&mut conn).await,
            replica,
            "{sql}: starts on the replica"
        );
        assert_eq!(conn.target(), Target::Replica);
        run(&mut conn, *via, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert_eq!(conn.target(), Target::Primary, "{sql}");
        assert_eq!(conn.switch_reason(), Some(*reason), "{sql}");
        assert_eq!(
            port_of(&mut conn).await,
            primary,
            "{sql}: stays on the primary"
        );
        // What the session did is visible on the primary's session: its state is there.
        if sql.contains("INTO @il_var") {
            let got: Count = diesel::sql_query("SELECT CAST(@il_var AS SIGNED) AS n")
                .get_result(&mut conn)
                .await
                .unwrap();
            assert_eq!(got.n, 100, "the variable was set on the primary's session");
        }
        if sql.starts_with("SELECT LAST_INSERT_ID(5)") {
            let got: Count = diesel::sql_query("SELECT CAST(LAST_INSERT_ID() AS SIGNED) AS n")
                .get_result(&mut conn)
                .await
                .unwrap();
            assert_eq!(got.n, 5);
        }
        if matches!(reason, TransactionBegin) {
            conn.batch_execute("COMMIT").await.unwrap();
        }
    }

    // The hooks and the explicit switch.
    let hooks: [(SwitchReason, &str); 3] = [
        (SaveHook, "save"),
        (DeleteHook, "delete"),
        (Explicit, "explicit"),
    ];
    for (reason, which) in hooks {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(port_of(&mut conn).await, replica);
        match which {
            "save" => conn.before_save().await.unwrap(),
            "delete" => conn.before_delete().await.unwrap(),
            _ => conn.switch_to_primary().await.unwrap(),
        }
        assert_eq!(conn.target(), Target::Primary);
        assert_eq!(conn.switch_reason(), Some(reason));
        assert_eq!(port_of(&mut conn).await, primary, "{which}");
    }

    // transaction(): begins on the primary, the write inside commits there.
    let mut conn = pool.get().await.unwrap();
    assert_eq!(port_of(&mut conn).await, replica);
    conn.transaction::<_, diesel::result::Error, _>(async |c| {
        diesel::sql_query("INSERT INTO il_rows VALUES (3, 'txn')")
            .execute(c)
            .await?;
        let port: i64 = diesel::select(diesel::dsl::sql::<BigInt>("CAST(@@port AS SIGNED)"))
            .get_result(c)
            .await?;
        assert_eq!(port, i64::from(cluster.primary_port()));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(conn.switch_reason(), Some(TransactionBegin));
    drop(conn);

    // LOAD DATA is a write: classified so and sent to the primary, where it fails
    // (the application account has no FILE privilege, LOCAL has no file handler).
    let mut conn = pool.get().await.unwrap();
    assert_eq!(port_of(&mut conn).await, replica);
    let load = conn
        .batch_execute("LOAD DATA INFILE '/nonexistent/il.csv' INTO TABLE il_rows")
        .await;
    assert!(load.is_err(), "{load:?}");
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(conn.switch_reason(), Some(WriteStatement));
    assert_eq!(
        port_of(&mut conn).await,
        primary,
        "LOAD DATA ran on the primary"
    );
    drop(conn);

    // LOAD DATA LOCAL likewise. The client has no local-file handler: the driver
    // fails it and closes the session (so no @@port after it; the primary's log
    // below shows where it went).
    let mut conn = pool.get().await.unwrap();
    assert_eq!(port_of(&mut conn).await, replica);
    let load = conn
        .batch_execute("LOAD DATA LOCAL INFILE '/nonexistent/il_local.csv' INTO TABLE il_rows")
        .await;
    assert!(load.is_err(), "{load:?}");
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(conn.switch_reason(), Some(WriteStatement));
    drop(conn);

    let stats = pool.stats();
    assert_eq!(stats.switches(WriteStatement), 6);
    assert_eq!(stats.switches(LockingRead), 2);
    assert_eq!(stats.switches(SessionState), 1);
    assert_eq!(stats.switches(SideEffectFunction), 3);
    assert_eq!(stats.switches(TransactionBegin), 3);
    assert_eq!(stats.switches(SaveHook), 1);
    assert_eq!(stats.switches(DeleteHook), 1);
    assert_eq!(stats.switches(Explicit), 1);
    assert_eq!(stats.total_switches(), 18);
    assert_eq!(stats.switches(ReplicaRefused), 0);

    // The nodes' own logs: each primary-only statement reached the primary only.
    for (verb, needle, on_primary) in [
        ("INSERT", "il_rows", 2),
        ("UPDATE", "il_rows", 1),
        ("REPLACE", "il_rows", 1),
        ("DELETE", "il_rows", 1),
        ("SELECT", "FOR UPDATE", 1),
        ("SELECT", "LOCK IN SHARE MODE", 1),
        ("SELECT", "@il_var", 2),
        ("SELECT", "GET_LOCK", 1),
        ("SELECT", "LAST_INSERT_ID", 2),
        ("SELECT", "il_seq", 1),
        ("LOAD DATA INFILE", "il_rows", 1),
        ("LOAD DATA LOCAL", "il_rows", 1),
        ("START TRANSACTION", "", 1),
        ("BEGIN", "", BEGINS),
        ("COMMIT", "", COMMITS),
    ] {
        let calls = calls_per_node(&cluster, verb, needle).await;
        assert_eq!(calls, [on_primary, 0], "{verb} .. {needle}");
    }
    // The rows: all on the primary, replicated to the replica.
    let primary_url = cluster.primary_admin_url();
    let notes = |id: i64| {
        let url = primary_url.clone();
        async move {
            scalar(
                &url,
                &format!("SELECT COUNT(*) FROM il_rows WHERE id = {id}"),
            )
            .await
        }
    };
    assert_eq!((notes(1).await, notes(2).await, notes(3).await), (1, 1, 1));
    assert_eq!(notes(200).await, 0, "deleted");
    assert_eq!(
        scalar(
            &primary_url,
            "SELECT COUNT(*) FROM il_rows WHERE id = 1 AND note = 'update'"
        )
        .await,
        1
    );
    cluster.wait_for_replicas(maria::WAIT).await.unwrap();
    assert_eq!(
        scalar(
            &cluster.replica_admin_url(0).unwrap(),
            "SELECT COUNT(*) FROM il_rows"
        )
        .await,
        scalar(&primary_url, "SELECT COUNT(*) FROM il_rows").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raise_mode_refuses_and_runs_nothing_anywhere() {
    let cluster = start(1).await;
    setup(&cluster, SCHEMA).await;
    let pool = builder(&cluster)
        .interlock(InterlockMode::Raise)
        .build()
        .await
        .unwrap();
    let replica = cluster.replica_port(0).unwrap();
    let mut conn = pool.get().await.unwrap();
    assert_eq!(port_of(&mut conn).await, replica);

    use SwitchReason::*;
    let cases: &[(&str, Via, SwitchReason)] = &[
        (
            "INSERT INTO il_rows VALUES (1, 'nope')",
            Via::Execute,
            WriteStatement,
        ),
        (
            "REPLACE INTO il_rows VALUES (2, 'nope')",
            Via::Execute,
            WriteStatement,
        ),
        (
            "SELECT id AS n FROM il_rows FOR UPDATE",
            Via::Load,
            LockingRead,
        ),
        (
            "SELECT NEXT VALUE FOR il_seq AS n",
            Via::Load,
            SideEffectFunction,
        ),
        ("START TRANSACTION", Via::Batch, TransactionBegin),
    ];
    for (sql, via, reason) in cases {
        let error = run(&mut conn, *via, sql).await.unwrap_err();
        assert_eq!(interlock_refusal(&error), Some(*reason), "{sql}: {error:?}");
        assert_eq!(conn.target(), Target::Replica, "Raise never flips");
    }
    let txn = conn.transaction::<_, diesel::result::Error, _>(async |c| {
        diesel::sql_query("INSERT INTO il_rows VALUES (3, 'in txn')")
            .execute(c)
            .await?;
        Ok(())
    });
    assert_eq!(
        interlock_refusal(&txn.await.unwrap_err()),
        Some(TransactionBegin)
    );
    assert_eq!(
        interlock_refusal(&conn.before_save().await.unwrap_err()),
        Some(SaveHook)
    );
    assert_eq!(
        interlock_refusal(&conn.before_delete().await.unwrap_err()),
        Some(DeleteHook)
    );
    assert_eq!(conn.target(), Target::Replica);
    // Still a working replica connection.
    let count: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM il_rows")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(count.n, 2);
    assert_eq!(port_of(&mut conn).await, replica);
    drop(conn);

    let primary_url = cluster.primary_admin_url();
    assert_eq!(
        scalar(&primary_url, "SELECT COUNT(*) FROM il_rows").await,
        2,
        "nothing written"
    );
    assert_eq!(
        scalar(&primary_url, "SELECT NEXT VALUE FOR il_seq").await,
        1,
        "the sequence was never advanced"
    );
    for (verb, needle) in [
        ("INSERT", "il_rows"),
        ("REPLACE", "il_rows"),
        ("SELECT", "FOR UPDATE"),
        ("START", "TRANSACTION"),
    ] {
        assert_eq!(
            calls_per_node(&cluster, verb, needle).await,
            [0, 0],
            "{verb} {needle}"
        );
    }
    let stats = pool.stats();
    assert_eq!(stats.refusals(WriteStatement), 2);
    assert_eq!(stats.refusals(LockingRead), 1);
    assert_eq!(stats.refusals(SideEffectFunction), 1);
    assert_eq!(stats.refusals(TransactionBegin), 2);
    assert_eq!(stats.refusals(SaveHook), 1);
    assert_eq!(stats.refusals(DeleteHook), 1);
    assert_eq!(stats.total_switches(), 0);
    assert_eq!(stats.checkouts(Target::Primary), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_runs_everything_on_the_primary_and_counts_would_switch() {
    let cluster = start(1).await;
    setup(
        &cluster,
        "CREATE TABLE il_observe (id BIGINT AUTO_INCREMENT PRIMARY KEY, note TEXT)",
    )
    .await;
    let pool = builder(&cluster)
        .interlock(InterlockMode::Observe)
        .build()
        .await
        .unwrap();
    let primary = cluster.primary_port();
    // 3 read-only units of 2 reads; 2 writing units of read, insert, read.
    for _ in 0..3 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.target(), Target::Primary);
        for _ in 0..2 {
            diesel::sql_query("SELECT COUNT(*) AS n FROM il_observe")
                .get_result::<Count>(&mut conn)
                .await
                .unwrap();
        }
        assert_eq!(conn.would_switch_reason(), None);
    }
    for _ in 0..2 {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SELECT COUNT(*) AS n FROM il_observe")
            .get_result::<Count>(&mut conn)
            .await
            .unwrap();
        diesel::sql_query("INSERT INTO il_observe (note) VALUES (?)")
            .bind::<Text, _>("x")
            .execute(&mut conn)
            .await
            .unwrap();
        diesel::sql_query("SELECT COUNT(*) AS n FROM il_observe")
            .get_result::<Count>(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            conn.would_switch_reason(),
            Some(SwitchReason::WriteStatement)
        );
        assert_eq!(conn.target(), Target::Primary);
    }
    let mut conn = pool.get().await.unwrap();
    assert_eq!(
        port_of(&mut conn).await,
        primary,
        "Observe serves from the primary"
    );
    drop(conn);

    let stats = pool.stats();
    assert_eq!(stats.would_be_statements(Target::Replica), 3 * 2 + 2 + 1);
    assert_eq!(stats.would_be_statements(Target::Primary), 2 * 2);
    assert_eq!(stats.would_switch(SwitchReason::WriteStatement), 2);
    assert_eq!(stats.observed_units(), (6, 4));
    assert_eq!(stats.statements(Target::Replica), 0);
    assert_eq!(stats.total_switches(), 0, "Observe never flips");
    assert_eq!(stats.checkouts(Target::Replica), 0);
    assert_eq!(
        calls_per_node(&cluster, "SELECT", "il_observe").await,
        [10, 0]
    );
    assert_eq!(
        calls_per_node(&cluster, "INSERT", "il_observe").await,
        [2, 0]
    );
    assert_eq!(
        scalar(
            &cluster.primary_admin_url(),
            "SELECT COUNT(*) FROM il_observe"
        )
        .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_down_reads_are_served_and_the_first_write_fails_typed() {
    let cluster = start(1).await;
    setup(
        &cluster,
        "CREATE TABLE il_lazy (id INT); INSERT INTO il_lazy VALUES (1)",
    )
    .await;
    cluster.stop_primary().await.unwrap();
    let pool = builder(&cluster)
        .require_primary_at_build(false)
        .primary_connect_timeout(std::time::Duration::from_millis(500))
        .primary_checkout_timeout(std::time::Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let replica = cluster.replica_port(0).unwrap();
    for _ in 0..3 {
        let mut conn = pool.get().await.unwrap();
        let count: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM il_lazy")
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(count.n, 1);
        assert_eq!(port_of(&mut conn).await, replica);
    }
    let mut conn = pool.get().await.unwrap();
    let write = diesel::sql_query("INSERT INTO il_lazy VALUES (2)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(
        matches!(
            rwsplit_error(&write),
            Some(Error::PrimaryUnavailable { .. })
        ),
        "{write:?}"
    );
    drop(conn);
    let on_replica =
        maria::calls_on(&cluster.replica_admin_url(0).unwrap(), "INSERT", "il_lazy").await;
    assert_eq!(on_replica, 0, "the write never reached the replica");
    assert_eq!(pool.stats().checkouts(Target::Primary), 0);

    // Once the primary is back, the same pool writes there.
    cluster.start_primary().await.unwrap();
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query("INSERT INTO il_lazy VALUES (3)")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(port_of(&mut conn).await, cluster.primary_port());
    assert_eq!(
        scalar(&cluster.primary_admin_url(), "SELECT COUNT(*) FROM il_lazy").await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_classifier_cannot_see_is_refused_by_the_replica_and_healed() {
    // Every node logs the errors it returns (the sql_errlog plugin): a refusal at
    // prepare time leaves no trace in the general query log.
    let cluster = maria::start_with(1, &[("plugin_load_add", "sql_errlog")]).await;
    // A stored function that writes: to the classifier, a SELECT of a user function.
    // SQL SECURITY INVOKER: it runs with the application account's rights, which
    // `read_only` refuses on a replica (a DEFINER function of root would not be).
    // Binary logging wants the creator trusted with a function that writes.
    for url in maria::admin_urls(&cluster) {
        maria::exec(&url, "SET GLOBAL log_bin_trust_function_creators = ON").await;
    }
    setup(
        &cluster,
        "CREATE TABLE il_heal (id BIGINT AUTO_INCREMENT PRIMARY KEY); \
         CREATE FUNCTION il_heal_write() RETURNS BIGINT MODIFIES SQL DATA SQL SECURITY INVOKER \
         BEGIN INSERT INTO il_heal VALUES (NULL); RETURN LAST_INSERT_ID(); END; \
         GRANT EXECUTE ON test.* TO 'app'@'%'",
    )
    .await;
    let classifier = Classifier::builder(Dialect::Mysql).build().unwrap();
    assert_eq!(
        classifier.classify("SELECT il_heal_write() AS n"),
        diesel_rwsplit::classify::Verdict::Replica,
        "the classifier cannot tell"
    );
    let pool = builder(&cluster)
        .classifier(classifier)
        .build()
        .await
        .unwrap();
    let (primary, replica) = (cluster.primary_port(), cluster.replica_port(0).unwrap());

    let mut conn = pool.get().await.unwrap();
    assert_eq!(port_of(&mut conn).await, replica);
    let rows: Vec<Count> = diesel::sql_query("SELECT il_heal_write() AS n")
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, [Count { n: 1 }], "one insert, on the primary");
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(conn.switch_reason(), Some(SwitchReason::ReplicaRefused));
    assert_eq!(port_of(&mut conn).await, primary);
    drop(conn);

    // The nodes' own logs: the replica refused it once as a write (1792, a read-only
    // transaction, or 1290, `read_only`: it fails while being prepared, so only its
    // error log shows it), the primary ran it once and refused nothing.
    let refusals = refused(&cluster, "replica1", "il_heal_write");
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals[0].contains("ERROR 1792:") || refusals[0].contains("ERROR 1290:"),
        "{refusals:?}"
    );
    assert_eq!(
        refused(&cluster, "primary", "il_heal_write"),
        Vec::<String>::new()
    );
    assert_eq!(
        calls_per_node(&cluster, "SELECT", "il_heal_write").await,
        [1, 0]
    );
    assert_eq!(
        scalar(&cluster.primary_admin_url(), "SELECT COUNT(*) FROM il_heal").await,
        1
    );
    cluster.wait_for_replicas(maria::WAIT).await.unwrap();
    assert_eq!(
        scalar(
            &cluster.replica_admin_url(0).unwrap(),
            "SELECT COUNT(*) FROM il_heal"
        )
        .await,
        1,
        "the replica has the row exactly once, by replication"
    );
    let stats = pool.stats();
    assert_eq!(stats.switches(SwitchReason::ReplicaRefused), 1);
    assert_eq!(stats.total_switches(), 1);

    // Remembered: the same statement now goes to the primary directly.
    let mut conn = pool.get().await.unwrap();
    let rows: Vec<Count> = diesel::sql_query("SELECT il_heal_write() AS n")
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, [Count { n: 2 }]);
    assert_eq!(conn.switch_reason(), Some(SwitchReason::ReplicaRefused));
    drop(conn);
    assert_eq!(
        calls_per_node(&cluster, "SELECT", "il_heal_write").await,
        [2, 0]
    );
    assert_eq!(
        refused(&cluster, "replica1", "il_heal_write").len(),
        1,
        "not sent to the replica again"
    );
    assert!(pool.audit_report().to_string().contains("il_heal_write"));

    // Raise mode returns the replica's refusal; nothing is written.
    let strict = builder(&cluster)
        .interlock(InterlockMode::Raise)
        .build()
        .await
        .unwrap();
    let mut conn = strict.get().await.unwrap();
    let error = diesel::sql_query("SELECT il_heal_write() AS n")
        .load::<Count>(&mut conn)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(error, diesel::result::Error::DatabaseError(..)),
        "{error:?}"
    );
    assert_eq!(conn.target(), Target::Replica);
    drop(conn);
    assert_eq!(
        scalar(&cluster.primary_admin_url(), "SELECT COUNT(*) FROM il_heal").await,
        2
    );
    assert_eq!(refused(&cluster, "replica1", "il_heal_write").len(), 2);
    assert_eq!(
        calls_per_node(&cluster, "SELECT", "il_heal_write").await,
        [2, 0]
    );
    cluster.wait_for_replicas(maria::WAIT).await.unwrap();
    assert_eq!(
        scalar(
            &cluster.replica_admin_url(0).unwrap(),
            "SELECT COUNT(*) FROM il_heal"
        )
        .await,
        2,
        "the refused call wrote nothing on the replica"
    );
}

/// The errors node `node` (`primary`, `replica1`, ...) returned to the application
/// account for statements mentioning `needle`, from its own error log (the
/// sql_errlog plugin's `sql_errors.log` in its data directory).
fn refused(
    cluster: &diesel_rwsplit::testing::MariaCluster,
    node: &str,
    needle: &str,
) -> Vec<String> {
    let log = cluster.dir().join(node).join("sql_errors.log");
    std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("{}: {e}", log.display()))
        .lines()
        .filter(|line| line.contains("app[app]") && line.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_exact_under_concurrency() {
    let cluster = start(2).await;
    setup(
        &cluster,
        "CREATE TABLE il_concurrent (id BIGINT AUTO_INCREMENT PRIMARY KEY, worker INT NOT NULL)",
    )
    .await;
    let pool = builder(&cluster).replica_max_size(8).build().await.unwrap();
    let (workers, units) = (8, 9);
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for unit in 0..units {
                let mut conn = pool.get().await.unwrap();
                diesel::sql_query("SELECT COUNT(*) AS n FROM il_concurrent")
                    .get_result::<Count>(&mut conn)
                    .await
                    .unwrap();
                match unit % 3 {
                    0 => {
                        diesel::sql_query("INSERT INTO il_concurrent (worker) VALUES (?)")
                            .bind::<diesel::sql_types::Integer, _>(worker)
                            .execute(&mut conn)
                            .await
                            .unwrap();
                    }
                    1 => conn
                        .transaction::<_, diesel::result::Error, _>(async |c| {
                            diesel::sql_query("SELECT 1 AS il_in_txn")
                                .execute(c)
                                .await
                                .map(|_| ())
                        })
                        .await
                        .unwrap(),
                    _ => {}
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let per_kind = |kind: i32| (0..units).filter(|u| u % 3 == kind).count() as u64;
    let (writes, txns) = (workers as u64 * per_kind(0), workers as u64 * per_kind(1));
    let stats = pool.stats();
    assert_eq!(stats.switches(SwitchReason::WriteStatement), writes);
    assert_eq!(stats.switches(SwitchReason::TransactionBegin), txns);
    assert_eq!(stats.total_switches(), writes + txns);
    assert_eq!(stats.statements(Target::Replica), (workers * units) as u64);
    // The nodes' own logs agree.
    let reads = calls_per_node(&cluster, "SELECT COUNT", "il_concurrent").await;
    assert_eq!(reads[0], 0, "{reads:?}");
    assert_eq!(
        (reads[1] + reads[2]) as u64,
        (workers * units) as u64,
        "{reads:?}"
    );
    assert_eq!(
        calls_per_node(&cluster, "INSERT", "il_concurrent").await,
        [writes as i64, 0, 0]
    );
    assert_eq!(
        calls_per_node(&cluster, "SELECT 1", "il_in_txn").await,
        [txns as i64, 0, 0]
    );
    assert_eq!(
        scalar(
            &cluster.primary_admin_url(),
            "SELECT COUNT(*) FROM il_concurrent"
        )
        .await as u64,
        writes
    );
}
