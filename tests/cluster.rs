//! `testing::LocalCluster` against real PostgreSQL servers.

use std::time::{Duration, Instant};

use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::Error;
use tokio_postgres::{Client, NoTls};

const WAIT: Duration = Duration::from_secs(10);

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn count(client: &Client, table: &str, id: i64) -> i64 {
    client
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_row_written_on_the_primary_is_read_back_on_every_replica() {
    let started = Instant::now();
    let cluster = LocalCluster::start(2).await.unwrap();
    eprintln!("1 primary + 2 replicas up in {:?}", started.elapsed());
    assert_eq!(cluster.replica_urls().len(), 2);

    let primary = connect(&cluster.primary_url()).await.unwrap();
    primary
        .batch_execute("CREATE TABLE replicated_row (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    primary
        .execute("INSERT INTO replicated_row VALUES (42)", &[])
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();

    for url in cluster.replica_urls() {
        let replica = connect(&url).await.unwrap();
        let in_recovery: bool = replica
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(in_recovery, "{url} is not a standby");
        assert_eq!(
            count(&replica, "replicated_row", 42).await,
            1,
            "row missing on {url}"
        );
    }
}

#[tokio::test]
async fn a_write_on_a_replica_fails_with_read_only_sqlstate() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let replica = connect(&cluster.replica_url(0).unwrap()).await.unwrap();
    let err = replica
        .batch_execute("CREATE TABLE must_fail (id INT)")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_paused_replica_shows_a_new_row_only_after_resume() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let primary = connect(&cluster.primary_url()).await.unwrap();
    primary
        .batch_execute("CREATE TABLE paused_row (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();

    cluster.pause_replay(0).await.unwrap();
    primary
        .execute("INSERT INTO paused_row VALUES (1)", &[])
        .await
        .unwrap();
    cluster.wait_for_replica(1, WAIT).await.unwrap();

    let paused = connect(&cluster.replica_url(0).unwrap()).await.unwrap();
    let running = connect(&cluster.replica_url(1).unwrap()).await.unwrap();
    assert_eq!(
        count(&running, "paused_row", 1).await,
        1,
        "unpaused replica must see the row"
    );
    // The paused replica receives the WAL but must not show it, however long we look.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&paused, "paused_row", 1).await,
        0,
        "paused replica showed the row"
    );
    assert!(cluster.replay_lsn(0).await.unwrap() < cluster.primary_lsn().await.unwrap());
    assert!(cluster
        .wait_for_replica(0, Duration::from_millis(200))
        .await
        .is_err());

    cluster.resume_replay(0).await.unwrap();
    cluster.wait_for_replica(0, WAIT).await.unwrap();
    assert_eq!(
        count(&paused, "paused_row", 1).await,
        1,
        "resumed replica must show the row"
    );
}

#[tokio::test]
async fn an_apply_delay_holds_rows_back_until_it_is_removed() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let primary = connect(&cluster.primary_url()).await.unwrap();
    primary
        .batch_execute("CREATE TABLE delayed_row (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();

    cluster
        .set_apply_delay(0, Duration::from_secs(30))
        .await
        .unwrap();
    primary
        .execute("INSERT INTO delayed_row VALUES (7)", &[])
        .await
        .unwrap();
    let replica = connect(&cluster.replica_url(0).unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&replica, "delayed_row", 7).await,
        0,
        "a 30 s apply delay let the row through"
    );

    cluster.set_apply_delay(0, Duration::ZERO).await.unwrap();
    cluster.wait_for_replica(0, WAIT).await.unwrap();
    assert_eq!(count(&replica, "delayed_row", 7).await, 1);
}

#[tokio::test]
async fn a_stopped_replica_refuses_connections_and_catches_up_when_started() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let primary = connect(&cluster.primary_url()).await.unwrap();
    primary
        .batch_execute("CREATE TABLE stopped_row (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();
    let url = cluster.replica_url(0).unwrap();
    let open = connect(&url).await.unwrap();
    let pid = cluster.replica_pid(0).unwrap().unwrap();

    cluster.stop_replica(0).await.unwrap();
    assert!(diesel_rwsplit::testing::process_is_gone(pid));
    assert_eq!(cluster.replica_pid(0).unwrap(), None);
    let refused = Instant::now();
    assert!(
        connect(&url).await.is_err(),
        "a stopped replica accepted a connection"
    );
    assert!(
        refused.elapsed() < Duration::from_secs(2),
        "refusal should be immediate"
    );
    let err = open.simple_query("SELECT 1").await.unwrap_err();
    assert!(err.is_closed() || err.code().is_some(), "{err:?}");

    primary
        .execute("INSERT INTO stopped_row VALUES (3)", &[])
        .await
        .unwrap();
    cluster.start_replica(0).await.unwrap();
    cluster.wait_for_replica(0, WAIT).await.unwrap();
    let replica = connect(&url).await.unwrap();
    assert_eq!(
        count(&replica, "stopped_row", 3).await,
        1,
        "restarted replica did not catch up"
    );
}

#[tokio::test]
async fn a_frozen_replica_hangs_new_connections_until_thawed() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let url = cluster.replica_url(0).unwrap();
    cluster.freeze_replica(0).await.unwrap();
    let attempt = tokio::time::timeout(Duration::from_millis(500), connect(&url)).await;
    assert!(attempt.is_err(), "a frozen replica answered: {attempt:?}");
    cluster.thaw_replica(0).await.unwrap();
    let replica = tokio::time::timeout(WAIT, connect(&url))
        .await
        .unwrap()
        .unwrap();
    replica.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_promoted_replica_accepts_writes() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let promoted = connect(&cluster.replica_url(1).unwrap()).await.unwrap();
    assert!(promoted
        .batch_execute("CREATE TABLE before_promotion (id INT)")
        .await
        .is_err());
    cluster.promote_replica(1).await.unwrap();
    promoted
        .batch_execute(
            "CREATE TABLE after_promotion (id INT); INSERT INTO after_promotion VALUES (1)",
        )
        .await
        .unwrap();
    let status = cluster.status().await;
    let roles: Vec<(&str, &str)> = status.iter().map(|n| (n.name.as_str(), n.role)).collect();
    assert_eq!(
        roles,
        [
            ("primary", "primary"),
            ("replica1", "replica"),
            ("replica2", "primary")
        ]
    );
}

#[tokio::test]
async fn two_clusters_run_at_once_on_distinct_ports() {
    let (a, b) = tokio::join!(LocalCluster::start(1), LocalCluster::start(1));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.primary_url(), b.primary_url());
    assert_ne!(a.dir(), b.dir());
    let pa = connect(&a.primary_url()).await.unwrap();
    let pb = connect(&b.primary_url()).await.unwrap();
    pa.batch_execute("CREATE TABLE only_in_a (id INT)")
        .await
        .unwrap();
    let in_b: i64 = pb
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_b, 0, "the clusters share state");
}

#[tokio::test]
async fn drop_stops_every_server_and_removes_the_dir() {
    let cluster = LocalCluster::start(2).await.unwrap();
    let dir = cluster.dir().to_path_buf();
    let mut pids = vec![cluster.primary_pid().unwrap()];
    pids.extend((0..2).map(|i| cluster.replica_pid(i).unwrap().unwrap()));
    cluster.freeze_replica(1).await.unwrap(); // must not block the shutdown
    let started = Instant::now();
    drop(cluster);
    eprintln!("shutdown took {:?}", started.elapsed());
    for pid in pids {
        assert!(
            diesel_rwsplit::testing::process_is_gone(pid),
            "postgres {pid} outlived the drop"
        );
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[tokio::test]
async fn the_example_schema_migrates_and_replicates() {
    let cluster = LocalCluster::start(1).await.unwrap();
    cluster.apply_example_schema().await.unwrap();
    let replica = connect(&cluster.replica_url(0).unwrap()).await.unwrap();
    let tables: i64 = replica
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('users', 'orders', 'events')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 3);
}

#[tokio::test]
async fn missing_binaries_give_the_documented_error() {
    let err = LocalCluster::builder()
        .pg_bindir("/nonexistent/pg/bin")
        .start()
        .await
        .unwrap_err();
    let Error::PgBinariesNotFound { searched } = &err else {
        panic!("unexpected error: {err:?}")
    };
    assert_eq!(searched.len(), 1);
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent/pg/bin") && text.contains("no such directory"),
        "{text}"
    );
    assert!(
        text.contains("apt-get install postgresql") && text.contains("brew install"),
        "{text}"
    );
}

#[tokio::test]
async fn out_of_range_replicas_and_a_used_dir_are_typed_errors() {
    let cluster = LocalCluster::start(0).await.unwrap();
    assert!(matches!(
        cluster.pause_replay(0).await,
        Err(Error::NoSuchReplica {
            index: 0,
            replicas: 0
        })
    ));
    let err = LocalCluster::builder()
        .replicas(0)
        .dir(cluster.dir())
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ClusterDirInUse { .. }), "{err:?}");
    let err = cluster.wait_for_replica(3, WAIT).await.unwrap_err();
    assert!(matches!(err, Error::NoSuchReplica { .. }));
}

#[tokio::test]
async fn the_primary_stops_starts_freezes_and_thaws() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let url = cluster.primary_url();
    let primary = connect(&url).await.unwrap();
    primary
        .batch_execute("CREATE TABLE primary_faults (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    cluster.wait_for_replicas(WAIT).await.unwrap();
    let pid = cluster.primary_pid().unwrap();
    let before_stop = cluster.primary_lsn().await.unwrap();

    cluster.stop_primary().await.unwrap();
    assert!(diesel_rwsplit::testing::process_is_gone(pid));
    assert_eq!(cluster.primary_pid(), None);
    assert!(
        connect(&url).await.is_err(),
        "a stopped primary accepted a connection"
    );
    let err = primary.simple_query("SELECT 1").await.unwrap_err();
    assert!(err.is_closed() || err.code().is_some(), "{err:?}");
    // The shutdown checkpoint reached the standby before the primary exited.
    assert!(cluster.receive_lsn(0).await.unwrap() > before_stop);

    cluster.start_primary().await.unwrap();
    assert_eq!(cluster.primary_url(), url, "same port: replicas follow it");
    let primary = connect(&url).await.unwrap();
    let streaming: i64 = primary
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        streaming, 1,
        "start_primary returned before the replica streams"
    );
    primary
        .execute("INSERT INTO primary_faults VALUES (5)", &[])
        .await
        .unwrap();
    cluster.wait_for_replica(0, WAIT).await.unwrap();
    let replica = connect(&cluster.replica_url(0).unwrap()).await.unwrap();
    assert_eq!(
        count(&replica, "primary_faults", 5).await,
        1,
        "the replica did not catch up with the restarted primary"
    );

    cluster.freeze_primary().await.unwrap();
    let attempt = tokio::time::timeout(Duration::from_millis(500), connect(&url)).await;
    assert!(attempt.is_err(), "a frozen primary answered: {attempt:?}");
    cluster.thaw_primary().await.unwrap();
    let thawed = tokio::time::timeout(WAIT, connect(&url))
        .await
        .unwrap()
        .unwrap();
    thawed.simple_query("SELECT 1").await.unwrap();
}
