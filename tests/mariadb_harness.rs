//! `testing::MariaCluster` against real MariaDB servers: replication, the
//! application account's limits, and every fault the harness injects.

use std::time::{Duration, Instant};

use diesel_rwsplit::testing::MariaCluster;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

const WAIT: Duration = Duration::from_secs(10);

async fn connect(url: &str) -> Conn {
    Conn::new(Opts::from_url(url).unwrap()).await.unwrap()
}

async fn scalar(url: &str, sql: &str) -> Option<String> {
    let mut conn = connect(url).await;
    let value: Option<Option<String>> = conn.query_first(sql).await.unwrap();
    conn.disconnect().await.unwrap();
    value.flatten()
}

async fn exec(url: &str, sql: &str) {
    let mut conn = connect(url).await;
    conn.query_drop(sql).await.unwrap();
    conn.disconnect().await.unwrap();
}

async fn count(url: &str) -> u64 {
    scalar(url, "SELECT COUNT(*) FROM t")
        .await
        .unwrap()
        .parse()
        .unwrap()
}

async fn start(replicas: usize) -> MariaCluster {
    let started = Instant::now();
    let cluster = MariaCluster::builder()
        .replicas(replicas)
        .start()
        .await
        .expect("start a MariaDB cluster (apt-get install mariadb-server)");
    eprintln!(
        "primary + {replicas} replica(s) up in {:.2?}",
        started.elapsed()
    );
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_accounts_and_ports() {
    let cluster = start(2).await;
    let primary = cluster.primary_url();
    let replicas = cluster.replica_urls();
    assert_eq!(replicas.len(), 2);
    assert!(primary.starts_with("mysql://app:"), "{primary}");
    assert!(primary.ends_with(&format!("@127.0.0.1:{}/test", cluster.primary_port())));
    assert!(!format!("{cluster:?}").contains(cluster.app_password()));

    // Each URL reaches the server the harness names.
    assert_eq!(
        scalar(&primary, "SELECT @@port").await,
        Some(cluster.primary_port().to_string())
    );
    for (index, url) in replicas.iter().enumerate() {
        assert_eq!(
            scalar(url, "SELECT @@port").await,
            Some(cluster.replica_port(index).unwrap().to_string())
        );
        assert_eq!(
            scalar(url, "SELECT @@read_only").await.as_deref(),
            Some("1")
        );
        assert_ne!(scalar(url, "SELECT @@port").await.as_deref(), Some("3306"));
    }
    assert_eq!(
        scalar(&cluster.primary_admin_url(), "SELECT CURRENT_USER()")
            .await
            .as_deref(),
        Some("root@localhost")
    );

    // A row written by `app` on the primary reaches both replicas.
    exec(&primary, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT)").await;
    exec(&primary, "INSERT INTO t VALUES (1, 'one')").await;
    cluster.wait_for_replicas(WAIT).await.unwrap();
    let gtid = cluster.primary_gtid().await.unwrap();
    assert!(!gtid.is_empty());
    for (index, url) in replicas.iter().enumerate() {
        assert_eq!(
            scalar(url, "SELECT v FROM t WHERE id = 1").await.as_deref(),
            Some("one")
        );
        assert_eq!(cluster.replica_gtid(index).await.unwrap(), gtid);
    }

    // `app` cannot write on a replica: read_only refuses it with 1290.
    let mut conn = connect(&replicas[0]).await;
    let err = conn
        .query_drop("INSERT INTO t VALUES (2, 'two')")
        .await
        .unwrap_err();
    match err {
        mysql_async::Error::Server(e) => assert_eq!(e.code, 1290, "{e:?}"),
        other => panic!("expected a server error, got {other:?}"),
    }
    conn.disconnect().await.unwrap();
    // Nor anywhere but in `test`, nor as something it is not.
    let mut conn = connect(&primary).await;
    assert!(conn.query_drop("CREATE DATABASE other").await.is_err());
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_delay() {
    let cluster = start(1).await;
    let primary = cluster.primary_url();
    let replica = cluster.replica_url(0).unwrap();
    exec(&primary, "CREATE TABLE t (id INT PRIMARY KEY)").await;
    cluster.wait_for_replicas(WAIT).await.unwrap();

    cluster.pause_replication(0).await.unwrap();
    let before = cluster.replica_gtid(0).await.unwrap();
    exec(&primary, "INSERT INTO t VALUES (1), (2)").await;
    let moved_on = cluster.primary_gtid().await.unwrap();
    assert_ne!(moved_on, before);
    assert!(cluster
        .wait_for_replica(0, Duration::from_millis(300))
        .await
        .is_err());
    assert_eq!(cluster.replica_gtid(0).await.unwrap(), before);
    assert_eq!(count(&replica).await, 0);

    cluster.resume_replication(0).await.unwrap();
    cluster.wait_for_replica(0, WAIT).await.unwrap();
    assert_eq!(cluster.replica_gtid(0).await.unwrap(), moved_on);
    assert_eq!(count(&replica).await, 2);

    // 1.5 s, rounded up to MariaDB's whole seconds: a new row is not there after
    // 1 s, and is there within 5 s, no sooner than 1.5 s after it was written.
    cluster
        .set_replication_delay(0, Duration::from_millis(1500))
        .await
        .unwrap();
    let written = Instant::now();
    exec(&primary, "INSERT INTO t VALUES (3)").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&replica).await, 2);
    cluster
        .wait_for_replica(0, Duration::from_secs(5))
        .await
        .unwrap();
    let took = written.elapsed();
    assert_eq!(count(&replica).await, 3);
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    eprintln!("a row applied {took:.2?} after it was written with a 2 s delay");
    cluster
        .set_replication_delay(0, Duration::ZERO)
        .await
        .unwrap();
    exec(&primary, "INSERT INTO t VALUES (4)").await;
    cluster
        .wait_for_replica(0, Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_freeze_thaw() {
    let cluster = start(1).await;
    let primary = cluster.primary_url();
    let replica = cluster.replica_url(0).unwrap();
    exec(&primary, "CREATE TABLE t (id INT PRIMARY KEY)").await;

    // A stopped replica refuses connections; started again, it catches up.
    let pid = cluster.replica_pid(0).unwrap().unwrap();
    cluster.stop_replica(0).await.unwrap();
    assert!(diesel_rwsplit::testing::process_is_gone(pid));
    assert_eq!(cluster.replica_pid(0).unwrap(), None);
    assert!(Conn::new(Opts::from_url(&replica).unwrap()).await.is_err());
    exec(&primary, "INSERT INTO t VALUES (1)").await;
    cluster.start_replica(0).await.unwrap();
    assert_eq!(cluster.replica_url(0).unwrap(), replica, "same port");
    cluster.wait_for_replicas(WAIT).await.unwrap();
    assert_eq!(count(&replica).await, 1);

    // The primary stopped and started again: the replica reconnects.
    cluster.stop_primary().await.unwrap();
    assert!(Conn::new(Opts::from_url(&primary).unwrap()).await.is_err());
    cluster.start_primary().await.unwrap();
    exec(&primary, "INSERT INTO t VALUES (2)").await;
    cluster.wait_for_replicas(WAIT).await.unwrap();
    assert_eq!(count(&replica).await, 2);

    // A frozen replica accepts no session until thawed.
    cluster.freeze_replica(0).await.unwrap();
    let attempt = tokio::time::timeout(
        Duration::from_millis(500),
        Conn::new(Opts::from_url(&replica).unwrap()),
    )
    .await;
    assert!(attempt.is_err(), "a frozen replica answered");
    cluster.thaw_replica(0).await.unwrap();
    assert_eq!(count(&replica).await, 2);

    let dir = cluster.dir().to_path_buf();
    let pids = [
        cluster.primary_pid().unwrap(),
        cluster.replica_pid(0).unwrap().unwrap(),
    ];
    drop(cluster);
    assert!(!dir.exists());
    assert!(pids
        .iter()
        .all(|p| diesel_rwsplit::testing::process_is_gone(*p)));
}
