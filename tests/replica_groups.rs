//! Replica groups: heavy reads (and reads matching a group rule) go to the
//! replicas of a group, everything else prefers the default group, and reads of a
//! group whose replicas are all out fall back to the other replicas, counted.

mod common;

use std::time::{Duration, Instant};

use common::{
    as_user, create_role, create_table, port_of, server_port, shared_cluster, statement_calls_by,
    WAIT,
};
use diesel::sql_types::{BigInt, Integer};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::classify::{Classifier, Dialect};
use diesel_rwsplit::testing::LocalCluster;
use diesel_rwsplit::{SwitchReason, SwitchablePool, SwitchablePoolBuilder, Target};

#[derive(QueryableByName, Debug)]
struct PortCount {
    #[diesel(sql_type = Integer)]
    port: i32,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Replica 2 (index 1) in `analytics`; reads scoring 2 or more (a JOIN and a
/// GROUP BY), and reads of `grp_reports`, go there.
fn builder(primary: String, replicas: Vec<String>) -> SwitchablePoolBuilder {
    let classifier = Classifier::builder(Dialect::Postgres)
        .group_rule(r"(?i)\bgrp_reports\b", "analytics")
        .heavy_reads(2, "analytics")
        .build()
        .unwrap();
    SwitchablePool::<AsyncPgConnection>::builder()
        .primary(primary)
        .replicas(replicas)
        .replica_group(1, "analytics")
        .classifier(classifier)
        .replica_connect_timeout(Duration::from_millis(500))
        .replica_checkout_timeout(Duration::from_millis(800))
        .ejection_backoff(Duration::from_millis(100), Duration::from_millis(400))
        .monitor_interval(Duration::from_millis(50))
}

/// JOIN + GROUP BY: complexity 2. Reports the port of the node that ran it.
const HEAVY: &str = "SELECT inet_server_port() AS port, count(*) AS n \
                     FROM grp_orders o JOIN grp_users u ON u.id = o.user_id GROUP BY u.id";

async fn heavy_read(conn: &mut diesel_rwsplit::PooledConnection) -> i32 {
    let rows: Vec<PortCount> = diesel::sql_query(HEAVY).load(conn).await.unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows.iter().map(|r| r.n).sum::<i64>(), 6);
    rows[0].port
}

const SCHEMA: &str = "CREATE TABLE grp_users (id INT PRIMARY KEY); \
     CREATE TABLE grp_orders (id INT PRIMARY KEY, user_id INT NOT NULL); \
     CREATE TABLE grp_reports (id INT PRIMARY KEY); \
     CREATE TABLE grp_summary (user_id INT, n BIGINT); \
     INSERT INTO grp_users VALUES (1), (2), (3); \
     INSERT INTO grp_orders VALUES (1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3); \
     INSERT INTO grp_reports VALUES (1), (2)";

#[tokio::test]
async fn heavy_reads_and_rule_matches_run_on_the_group_and_light_reads_on_the_default_group() {
    let cluster = shared_cluster();
    create_table(cluster, SCHEMA).await;
    // Its own role, so that pg_stat_statements counts only this test's statements.
    let user = "grp_tester";
    create_role(cluster, user).await;
    let replicas: Vec<String> = cluster
        .replica_urls()
        .iter()
        .map(|u| as_user(u, user))
        .collect();
    let ports: Vec<i32> = replicas.iter().map(|u| port_of(u)).collect();
    let pool = builder(as_user(&cluster.primary_url(), user), replicas.clone())
        .build()
        .await
        .unwrap();

    // Light reads stay in the default group: replica 1 only.
    for _ in 0..10 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(server_port(&mut conn).await, ports[0]);
    }

    // Heavy reads run on the analytics replica, whatever replica the connection
    // was checked out on.
    for _ in 0..5 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(heavy_read(&mut conn).await, ports[1]);
        assert_eq!(conn.target(), Target::Replica);
    }

    // A group rule: a light read that names grp_reports.
    let mut conn = pool.get().await.unwrap();
    let rows: Vec<PortCount> =
        diesel::sql_query("SELECT inet_server_port() AS port, count(*) AS n FROM grp_reports")
            .load(&mut conn)
            .await
            .unwrap();
    assert_eq!((rows[0].port, rows[0].n), (ports[1], 2));
    drop(conn);

    // On one connection: a light read on replica 1, then a heavy read moves the
    // connection to the group's replica, where it stays for what follows.
    let mut conn = pool.get().await.unwrap();
    assert_eq!(server_port(&mut conn).await, ports[0]);
    assert_eq!(heavy_read(&mut conn).await, ports[1]);
    assert_eq!(server_port(&mut conn).await, ports[1]);
    assert_eq!(heavy_read(&mut conn).await, ports[1]);
    drop(conn);

    // A heavy statement that writes goes to the primary: a group never weakens
    // the interlock.
    let mut conn = pool.get().await.unwrap();
    let written = diesel::sql_query(
        "INSERT INTO grp_summary SELECT u.id, count(*) FROM grp_orders o \
         JOIN grp_users u ON u.id = o.user_id GROUP BY u.id HAVING count(*) > 1",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(written, 3);
    assert_eq!(conn.target(), Target::Primary);
    assert_eq!(conn.switch_reason(), Some(SwitchReason::WriteStatement));
    // Once on the primary, a heavy read stays there (it reads its own write).
    assert_eq!(heavy_read(&mut conn).await, port_of(&cluster.primary_url()));
    drop(conn);

    // The counters match what ran on each node: 5 + 2 heavy reads and the rule's
    // read on replica 2; none on replica 1 (the heavy read on the primary is no
    // replica read).
    let stats = pool.stats();
    assert_eq!(stats.group_reads("analytics"), 8, "{:?}", stats.groups());
    assert_eq!(stats.group_fallbacks("analytics"), 0);
    let on = |i: usize, needle: &'static str| {
        let url = replicas[i].clone();
        async move { statement_calls_by(&url, user, "SELECT", needle).await }
    };
    assert_eq!(on(1, "JOIN grp_users").await, 7);
    assert_eq!(on(0, "JOIN grp_users").await, 0);
    assert_eq!(on(1, "FROM grp_reports").await, 1);
    let text = pool.to_prometheus();
    for line in [
        "rwsplit_group_reads_total{group=\"analytics\"} 8",
        "rwsplit_group_fallbacks_total{group=\"analytics\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
}

#[tokio::test]
async fn a_pool_without_groups_balances_and_prints_as_before() {
    let cluster = shared_cluster();
    let ports: Vec<i32> = cluster.replica_urls().iter().map(|u| port_of(u)).collect();
    // Heavy-read rules, but no replica in their group: the reads are group
    // fallbacks, balanced over both replicas as every read is.
    let classifier = Classifier::builder(Dialect::Postgres)
        .heavy_reads(1, "analytics")
        .build()
        .unwrap();
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .classifier(classifier)
        .build()
        .await
        .unwrap();
    let mut seen = std::collections::HashMap::<i32, usize>::new();
    for _ in 0..10 {
        let mut conn = pool.get().await.unwrap();
        let port: i32 = diesel::select(diesel::dsl::sql::<Integer>(
            "inet_server_port() FROM generate_series(1, 1) g JOIN generate_series(1, 1) h ON true",
        ))
        .get_result(&mut conn)
        .await
        .unwrap();
        *seen.entry(port).or_default() += 1;
    }
    assert_eq!(seen.get(&ports[0]), Some(&5), "{seen:?}");
    assert_eq!(seen.get(&ports[1]), Some(&5), "{seen:?}");
    assert_eq!(pool.stats().group_fallbacks("analytics"), 10);

    // No group anywhere: no group family in the text.
    let plain = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas(cluster.replica_urls())
        .build()
        .await
        .unwrap();
    assert!(plain.stats().groups().is_empty());
    assert!(!plain.to_prometheus().contains("rwsplit_group_"));
}

#[tokio::test]
async fn a_bad_group_configuration_fails_the_build() {
    let cluster = shared_cluster();
    for (index, group) in [(2, "analytics"), (0, "not a name"), (0, "")] {
        let err = SwitchablePool::<AsyncPgConnection>::builder()
            .primary(cluster.primary_url())
            .replicas(cluster.replica_urls())
            .replica_group(index, group)
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(err, diesel_rwsplit::Error::InvalidConfig(_)),
            "{index} {group:?}: {err:?}"
        );
    }
}

/// Wait until the pool routes reads to both replicas again.
async fn until_both_usable(pool: &SwitchablePool) {
    let deadline = Instant::now() + WAIT;
    while pool.replica_admitted() != [true, true]
        || !pool.replication_status().iter().all(|r| r.healthy)
    {
        assert!(Instant::now() < deadline, "replica 2 not back in rotation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_reads_fall_back_to_the_default_group_when_the_group_is_down() {
    let cluster = LocalCluster::builder().replicas(2).start().await.unwrap();
    create_table(&cluster, SCHEMA).await;
    let ports: Vec<i32> = cluster.replica_urls().iter().map(|u| port_of(u)).collect();
    let pool = builder(cluster.primary_url(), cluster.replica_urls())
        .build()
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    assert_eq!(heavy_read(&mut conn).await, ports[1]);
    drop(conn);
    assert_eq!(pool.stats().group_reads("analytics"), 1);

    // Stopped: heavy reads run on replica 1, counted as group fallbacks.
    cluster.stop_replica(1).await.unwrap();
    for _ in 0..4 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(heavy_read(&mut conn).await, ports[0]);
    }
    let stats = pool.stats();
    assert_eq!(stats.group_reads("analytics"), 1);
    assert_eq!(stats.group_fallbacks("analytics"), 4);
    let calls = |i: usize| {
        let url = cluster.replica_urls()[i].clone();
        async move { common::statement_calls(&url, "SELECT", "JOIN grp_users").await }
    };
    assert_eq!(calls(0).await, 4);

    // Back: the group serves its reads again.
    cluster.start_replica(1).await.unwrap();
    until_both_usable(&pool).await;
    let mut conn = pool.get().await.unwrap();
    assert_eq!(heavy_read(&mut conn).await, ports[1]);
    drop(conn);
    assert_eq!(pool.stats().group_reads("analytics"), 2);

    // Frozen (a hung machine): the checkout of the group's replica gives up after
    // the connect timeout and the read runs on replica 1; later ones do not wait
    // once the replica is out of rotation.
    cluster.freeze_replica(1).await.unwrap();
    let started = Instant::now();
    for _ in 0..3 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(heavy_read(&mut conn).await, ports[0]);
    }
    let elapsed = started.elapsed();
    let stats = pool.stats();
    assert_eq!(stats.group_reads("analytics"), 2);
    assert_eq!(stats.group_fallbacks("analytics"), 7);
    assert_eq!(calls(0).await, 7);
    eprintln!("3 heavy reads with the group's replica frozen: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    cluster.thaw_replica(1).await.unwrap();
}

#[tokio::test]
async fn each_group_keeps_its_own_rotation_and_a_retry_stays_in_the_group() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE grp_rot_users (id INT PRIMARY KEY); \
         CREATE TABLE grp_rot_orders (id INT PRIMARY KEY, user_id INT NOT NULL); \
         INSERT INTO grp_rot_users VALUES (1), (2); \
         INSERT INTO grp_rot_orders VALUES (1, 1), (2, 2)",
    )
    .await;
    let urls = cluster.replica_urls();
    let ports: Vec<i32> = urls.iter().map(|u| port_of(u)).collect();
    // Four node pools over two servers: 0 and 1 (replica 1) in the default
    // group, 2 and 3 (replica 2) in analytics.
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(cluster.primary_url())
        .replicas([&urls[0], &urls[0], &urls[1], &urls[1]])
        .replica_group(2, "analytics")
        .replica_group(3, "analytics")
        .classifier(
            Classifier::builder(Dialect::Postgres)
                .heavy_reads(2, "analytics")
                .build()
                .unwrap(),
        )
        .build()
        .await
        .unwrap();
    let heavy = "SELECT inet_server_port() AS port, count(*) AS n FROM grp_rot_orders o \
                 JOIN grp_rot_users u ON u.id = o.user_id GROUP BY u.id";
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.get().await.unwrap());
    }
    // Round robin over the default group alone.
    assert_eq!(pool.replica_checked_out(), [2, 2, 0, 0]);
    for conn in &mut held {
        let rows: Vec<PortCount> = diesel::sql_query(heavy).load(conn).await.unwrap();
        assert_eq!(rows[0].port, ports[1]);
    }
    // Each moved to the group, round robin over its replicas; the default
    // group's leases went back.
    assert_eq!(pool.replica_checked_out(), [0, 0, 2, 2]);
    assert_eq!(pool.stats().group_reads("analytics"), 4);

    // A read whose group session is lost is retried on another replica of the
    // group first.
    let conn = &mut held[0];
    let pid = common::backend_pid(conn).await;
    common::terminate(&urls[1], pid).await;
    let rows: Vec<PortCount> = diesel::sql_query(heavy).load(conn).await.unwrap();
    assert_eq!(rows[0].port, ports[1]);
    assert_eq!(pool.stats().read_retries(), 1);
    let checked_out = pool.replica_checked_out();
    assert_eq!(checked_out[0] + checked_out[1], 0, "{checked_out:?}");
}

#[tokio::test]
async fn groups_index_the_members_of_a_followed_cluster() {
    let cluster = shared_cluster();
    create_table(
        cluster,
        "CREATE TABLE grp_nodes_a (id INT PRIMARY KEY); CREATE TABLE grp_nodes_b (id INT PRIMARY KEY); \
         INSERT INTO grp_nodes_a VALUES (1); INSERT INTO grp_nodes_b VALUES (1)",
    )
    .await;
    let urls = cluster.replica_urls();
    let ports: Vec<i32> = urls.iter().map(|u| port_of(u)).collect();
    // Members: the primary (index 0, never a reader), replica 1, replica 2.
    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .nodes([cluster.primary_url(), urls[0].clone(), urls[1].clone()])
        .replica_group(2, "analytics")
        .classifier(
            Classifier::builder(Dialect::Postgres)
                .heavy_reads(2, "analytics")
                .build()
                .unwrap(),
        )
        .monitor_interval(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    for _ in 0..4 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(server_port(&mut conn).await, ports[0]);
        let rows: Vec<PortCount> = diesel::sql_query(
            "SELECT inet_server_port() AS port, count(*) AS n FROM grp_nodes_a a \
             JOIN grp_nodes_b b USING (id) GROUP BY 1",
        )
        .load(&mut conn)
        .await
        .unwrap();
        assert_eq!((rows[0].port, rows[0].n), (ports[1], 1));
    }
    assert_eq!(pool.stats().group_reads("analytics"), 4);
}
