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

    // 2.5 s, rounded up to MariaDB's whole seconds: 3 s, counted from the event's
    // timestamp (whole seconds too), so a new row is applied at least 2 s after it
    // was written. A slow machine only makes that later: the bound cannot fail on
    // load, and the row is not there when asked at once.
    cluster
        .set_replication_delay(0, Duration::from_millis(2500))
        .await
        .unwrap();
    let written = Instant::now();
    exec(&primary, "INSERT INTO t VALUES (3)").await;
    assert_eq!(count(&replica).await, 2);
    cluster
        .wait_for_replica(0, Duration::from_secs(20))
        .await
        .unwrap();
    let took = written.elapsed();
    assert_eq!(count(&replica).await, 3);
    assert!(took >= Duration::from_secs(2), "{took:?}");
    eprintln!("a row applied {took:.2?} after it was written with a 3 s delay");
    cluster
        .set_replication_delay(0, Duration::ZERO)
        .await
        .unwrap();
    // `set_replication_delay` returned once `SQL_Delay` showed 0.
    exec(&primary, "INSERT INTO t VALUES (4)").await;
    cluster.wait_for_replica(0, WAIT).await.unwrap();
    assert_eq!(count(&replica).await, 4);
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

/// The MySQL error code of a statement's failure (never its message text).
async fn refusal(conn: &mut Conn, sql: &str) -> u16 {
    match conn.query_drop(sql).await {
        Ok(()) => panic!("{sql} ran"),
        Err(mysql_async::Error::Server(e)) => e.code,
        Err(other) => panic!("{sql}: expected a server error, got {other:?}"),
    }
}

/// A connection as `user` (no password) through a node's Unix socket, like root's.
async fn connect_local(admin_url: &str, user: &str) -> Conn {
    let admin = Opts::from_url(admin_url).unwrap();
    let opts = mysql_async::OptsBuilder::from_opts(admin).user(Some(user));
    Conn::new(opts).await.unwrap()
}

/// Replicas are `read_only`, which stops only accounts without `READ ONLY ADMIN`:
/// the application account cannot write there (1290), root can, and a read-only
/// session transaction (what the pool's replica sessions run in) stops both (1792).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_read_only_admin_writes_past_read_only() {
    let cluster = start(1).await;
    let primary = cluster.primary_url();
    let replica = cluster.replica_url(0).unwrap();
    let replica_admin = cluster.replica_admin_url(0).unwrap();
    exec(&primary, "CREATE TABLE t (id INT PRIMARY KEY)").await;
    cluster.wait_for_replicas(WAIT).await.unwrap();

    // `app` holds no global privilege at all: no SUPER, no READ ONLY ADMIN.
    let mut app = connect(&replica).await;
    let global: Vec<String> = app
        .query("SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES")
        .await
        .unwrap();
    assert_eq!(global, ["USAGE"]);
    assert_eq!(
        scalar(&replica, "SELECT @@read_only").await.as_deref(),
        Some("1")
    );
    // MariaDB 10.11 has no `super_read_only` (MySQL's switch that stops SUPER
    // too): unknown system variable.
    assert_eq!(refusal(&mut app, "SELECT @@super_read_only").await, 1193);

    // `app` on the replica: `read_only` refuses its writes (1290), in a read-only
    // session transaction as well (not 1792: `read_only` is checked first).
    assert_eq!(refusal(&mut app, "INSERT INTO t VALUES (1)").await, 1290);
    assert_eq!(refusal(&mut app, "UPDATE t SET id = 2").await, 1290);
    assert_eq!(refusal(&mut app, "CREATE TABLE u (id INT)").await, 1290);
    app.query_drop("SET SESSION TRANSACTION READ ONLY")
        .await
        .unwrap();
    let tx_read_only: Option<String> = app.query_first("SELECT @@tx_read_only").await.unwrap();
    assert_eq!(tx_read_only.as_deref(), Some("1"));
    assert_eq!(refusal(&mut app, "INSERT INTO t VALUES (1)").await, 1290);
    app.disconnect().await.unwrap();

    // `app` on the primary in a read-only session transaction: 1792.
    let mut app = connect(&primary).await;
    app.query_drop("SET SESSION TRANSACTION READ ONLY")
        .await
        .unwrap();
    assert_eq!(refusal(&mut app, "INSERT INTO t VALUES (1)").await, 1792);
    app.disconnect().await.unwrap();

    // Root (every privilege, READ ONLY ADMIN included) writes on the replica despite
    // `read_only`: what `read_only` alone cannot stop. Kept out of the replica's
    // binary log, so that the primary's GTIDs stay in order.
    let mut root = connect(&replica_admin).await;
    root.query_drop("SET SESSION sql_log_bin = 0")
        .await
        .unwrap();
    root.query_drop("INSERT INTO t VALUES (100)").await.unwrap();
    // A read-only session transaction stops even root (1792).
    root.query_drop("SET SESSION TRANSACTION READ ONLY")
        .await
        .unwrap();
    assert_eq!(refusal(&mut root, "INSERT INTO t VALUES (101)").await, 1792);
    root.disconnect().await.unwrap();

    // None of `app`'s refused writes ran; root's did, on the replica alone;
    // replication goes on.
    assert_eq!(count(&replica).await, 1);
    assert_eq!(count(&primary).await, 0);
    exec(&primary, "INSERT INTO t VALUES (1)").await;
    cluster.wait_for_replicas(WAIT).await.unwrap();
    assert_eq!(count(&replica).await, 2);

    // On MariaDB 10.11, READ ONLY ADMIN is the privilege that writes past
    // `read_only`; SUPER no longer implies it (MDEV-29596). Two socket-only
    // accounts made on the replica alone show it (last: the write of `roa` goes
    // into the replica's own binary log, out of step with the primary's GTIDs).
    let mut root = connect(&replica_admin).await;
    root.query_drop("SET SESSION sql_log_bin = 0")
        .await
        .unwrap();
    let version: String = root.query_first("SELECT VERSION()").await.unwrap().unwrap();
    let mut numbers = version
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    for (user, privilege) in [("su", "SUPER"), ("roa", "READ ONLY ADMIN")] {
        for sql in [
            format!("CREATE USER '{user}'@'localhost'"),
            format!("GRANT {privilege} ON *.* TO '{user}'@'localhost'"),
            format!("GRANT INSERT ON test.* TO '{user}'@'localhost'"),
        ] {
            root.query_drop(sql).await.unwrap();
        }
    }
    root.disconnect().await.unwrap();
    let mut su = connect_local(&replica_admin, "su").await;
    if (major, minor) >= (10, 11) {
        assert_eq!(refusal(&mut su, "INSERT INTO t VALUES (103)").await, 1290);
    } else {
        eprintln!("MariaDB {version}: SUPER still implies READ ONLY ADMIN");
    }
    su.disconnect().await.unwrap();
    let mut roa = connect_local(&replica_admin, "roa").await;
    roa.query_drop("INSERT INTO t VALUES (102)").await.unwrap();
    roa.disconnect().await.unwrap();
    assert_eq!(count(&replica).await, 3);
}

/// Processes whose command line names `dir`.
fn processes_naming(dir: &std::path::Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .filter(|pid| !diesel_rwsplit::testing::process_is_gone(*pid))
        .collect()
}

/// A start-up dropped while `mariadb-install-db` writes the primary's data
/// directory kills it before removing the cluster's directory (it used to go on
/// writing there, and the directory was left behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_cancelled_during_install_leaves_nothing() {
    let dir = std::path::PathBuf::from(format!("/tmp/rws-mh-cancel-{}", std::process::id()));
    let installing = async {
        while !dir.join("primary").join("mysql").exists() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::select! {
        started = MariaCluster::builder().replicas(1).dir(&dir).start() => {
            panic!("started before the install was seen: {:?}", started.map(|_| ()));
        }
        () = installing => {}
    }
    assert!(!dir.exists(), "{} was left behind", dir.display());
    assert_eq!(processes_naming(&dir), Vec::<u32>::new());
}
